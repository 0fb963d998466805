//! Annotated test frames shared by the wire tests (and later pipeline tests).
//! Checksums were computed independently and are cross-checked against
//! etherparse in the per-header tests.

/// ARP request from pod 10.244.1.5 (0a:58:0a:f4:01:05) for its gateway
/// 10.244.1.1, as seen on the pod's veth (no padding).
#[rustfmt::skip]
pub static ARP_REQUEST_FRAME: [u8; 42] = [
    /* eth dst: broadcast */ 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    /* eth src: pod */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05,
    /* ethertype: arp */ 0x08, 0x06,
    /* htype: ethernet */ 0x00, 0x01,
    /* ptype: ipv4 */ 0x08, 0x00,
    /* hlen */ 0x06,
    /* plen */ 0x04,
    /* op: request */ 0x00, 0x01,
    /* sender hw: pod */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05,
    /* sender ip: 10.244.1.5 */ 0x0a, 0xf4, 0x01, 0x05,
    /* target hw: unknown */ 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    /* target ip: 10.244.1.1 */ 0x0a, 0xf4, 0x01, 0x01,
];

/// The ARP payload answering [`ARP_REQUEST_FRAME`]: gateway
/// 0a:58:0a:f4:01:01 is at 10.244.1.1.
#[rustfmt::skip]
pub static ARP_REPLY: [u8; 28] = [
    /* htype: ethernet */ 0x00, 0x01,
    /* ptype: ipv4 */ 0x08, 0x00,
    /* hlen */ 0x06,
    /* plen */ 0x04,
    /* op: reply */ 0x00, 0x02,
    /* sender hw: gateway */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01,
    /* sender ip: 10.244.1.1 */ 0x0a, 0xf4, 0x01, 0x01,
    /* target hw: pod */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05,
    /* target ip: 10.244.1.5 */ 0x0a, 0xf4, 0x01, 0x05,
];

/// Length of the IPv4 packet inside [`UDP_FRAME`] (the rest is padding).
pub const UDP_FRAME_IP_LEN: usize = 32;

/// DNS-port UDP datagram from pod 10.244.1.5:40000 to service 10.96.0.10:53,
/// payload "ping", with Ethernet padding to the 60-byte minimum.
#[rustfmt::skip]
pub static UDP_FRAME: [u8; 60] = [
    /* eth dst: gateway */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01,
    /* eth src: pod */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 32 */ 0x00, 0x20,
    /* ident */ 0x1c, 0x46,
    /* flags DF, frag offset 0 */ 0x40, 0x00,
    /* ttl */ 0x40,
    /* protocol: udp */ 0x11,
    /* header checksum */ 0x08, 0x25,
    /* src: 10.244.1.5 */ 0x0a, 0xf4, 0x01, 0x05,
    /* dst: 10.96.0.10 */ 0x0a, 0x60, 0x00, 0x0a,
    /* udp src port: 40000 */ 0x9c, 0x40,
    /* udp dst port: 53 */ 0x00, 0x35,
    /* udp len: 12 */ 0x00, 0x0c,
    /* udp checksum */ 0x6e, 0x2d,
    /* payload: "ping" */ b'p', b'i', b'n', b'g',
    /* ethernet padding */ 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00,
];

/// Linux-style TCP SYN from pod 10.244.1.5:51000 to pod 10.244.2.7:8080 with
/// MSS, SACK-permitted, timestamp and window-scale options.
#[rustfmt::skip]
pub static TCP_SYN_FRAME: [u8; 74] = [
    /* eth dst: gateway */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01,
    /* eth src: pod */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 60 */ 0x00, 0x3c,
    /* ident */ 0xbe, 0xef,
    /* flags DF */ 0x40, 0x00,
    /* ttl */ 0x40,
    /* protocol: tcp */ 0x06,
    /* header checksum */ 0x62, 0xd9,
    /* src: 10.244.1.5 */ 0x0a, 0xf4, 0x01, 0x05,
    /* dst: 10.244.2.7 */ 0x0a, 0xf4, 0x02, 0x07,
    /* tcp src port: 51000 */ 0xc7, 0x38,
    /* tcp dst port: 8080 */ 0x1f, 0x90,
    /* seq */ 0x12, 0x34, 0x56, 0x78,
    /* ack */ 0x00, 0x00, 0x00, 0x00,
    /* data offset: 10 words */ 0xa0,
    /* flags: SYN */ 0x02,
    /* window: 64240 */ 0xfa, 0xf0,
    /* checksum */ 0x02, 0x65,
    /* urgent pointer */ 0x00, 0x00,
    /* opt MSS 1460 */ 0x02, 0x04, 0x05, 0xb4,
    /* opt SACK permitted */ 0x04, 0x02,
    /* opt timestamps: val 123456, ecr 0 */ 0x08, 0x0a, 0x00, 0x01, 0xe2, 0x40, 0x00, 0x00, 0x00,
    0x00,
    /* opt NOP */ 0x01,
    /* opt window scale 7 */ 0x03, 0x03, 0x07,
];

/// ICMP echo request (id 0x42, seq 1, 8 bytes of data) from pod 10.244.1.5
/// to its gateway 10.244.1.1.
#[rustfmt::skip]
pub static ICMP_ECHO_FRAME: [u8; 50] = [
    /* eth dst: gateway */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01,
    /* eth src: pod */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 36 */ 0x00, 0x24,
    /* ident */ 0x00, 0x01,
    /* flags DF */ 0x40, 0x00,
    /* ttl */ 0x40,
    /* protocol: icmp */ 0x01,
    /* header checksum */ 0x22, 0xeb,
    /* src: 10.244.1.5 */ 0x0a, 0xf4, 0x01, 0x05,
    /* dst: 10.244.1.1 */ 0x0a, 0xf4, 0x01, 0x01,
    /* icmp type: echo request */ 0x08,
    /* code */ 0x00,
    /* checksum */ 0x66, 0x27,
    /* echo ident */ 0x00, 0x42,
    /* echo seq */ 0x00, 0x01,
    /* data: "abcdefgh" */ b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h',
];

/// Pod-to-pod UDP (10.244.1.5:40000 -> 10.244.2.7:5000, "kxdp") encapsulated
/// from node 192.168.1.10 to node 192.168.1.11 in VXLAN VNI 1. The outer UDP
/// checksum is zero, as Linux sends it over IPv4.
#[rustfmt::skip]
pub static VXLAN_FRAME: [u8; 96] = [
    /* outer eth dst: node2 */ 0x52, 0x54, 0x00, 0x00, 0x00, 0x02,
    /* outer eth src: node1 */ 0x52, 0x54, 0x00, 0x00, 0x00, 0x01,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* outer ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 82 */ 0x00, 0x52,
    /* ident */ 0x00, 0x00,
    /* flags DF */ 0x40, 0x00,
    /* ttl */ 0x40,
    /* protocol: udp */ 0x11,
    /* header checksum */ 0xb7, 0x35,
    /* src: 192.168.1.10 */ 0xc0, 0xa8, 0x01, 0x0a,
    /* dst: 192.168.1.11 */ 0xc0, 0xa8, 0x01, 0x0b,
    /* outer udp src port: 54321 (flow hash) */ 0xd4, 0x31,
    /* outer udp dst port: 4789 */ 0x12, 0xb5,
    /* udp len: 62 */ 0x00, 0x3e,
    /* udp checksum: none */ 0x00, 0x00,
    /* vxlan flags: I */ 0x08,
    /* reserved */ 0x00, 0x00, 0x00,
    /* vni: 1 */ 0x00, 0x00, 0x01,
    /* reserved */ 0x00,
    /* inner eth dst: pod on node2 */ 0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x07,
    /* inner eth src: pod on node1 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* inner ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 32 */ 0x00, 0x20,
    /* ident */ 0x2a, 0x2a,
    /* flags DF */ 0x40, 0x00,
    /* ttl */ 0x40,
    /* protocol: udp */ 0x11,
    /* header checksum */ 0xf7, 0xaf,
    /* src: 10.244.1.5 */ 0x0a, 0xf4, 0x01, 0x05,
    /* dst: 10.244.2.7 */ 0x0a, 0xf4, 0x02, 0x07,
    /* inner udp src port: 40000 */ 0x9c, 0x40,
    /* inner udp dst port: 5000 */ 0x13, 0x88,
    /* udp len: 12 */ 0x00, 0x0c,
    /* udp checksum */ 0x67, 0x31,
    /* payload: "kxdp" */ b'k', b'x', b'd', b'p',
];

/// Deterministic xorshift64 for property tests, so failures reproduce
/// without a test-only crate.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-enough value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}
