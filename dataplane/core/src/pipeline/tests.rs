//! Pipeline walk tests (DESIGN.md "Packet walks" 1, 2 and 6) over annotated
//! byte vectors.
//!
//! The fixture is node n1 of a two-node cluster: underlay 172.30.0.11, pod
//! CIDR 10.244.1.0/24 with pods p1 (10.244.1.2, port 1) and p2 (10.244.1.3,
//! port 2), uplink on port 0, and node n2 (VTEP 172.30.0.12) owning
//! 10.244.2.0/24. Each frame is placed at the receive offset of a 2048-byte
//! chunk, as the dataplane hands them over.
//!
//! Every output is checked from scratch: headers are re-parsed with
//! etherparse, TCP/UDP checksums recomputed by etherparse, IPv4 header
//! checksums by etherparse and the RFC 1071 reference below, ICMP checksums
//! by that reference, and expected frames are built without the pipeline's
//! incremental updates. `wire::checksum` is used only to build inputs.

use core::net::Ipv4Addr;
use std::collections::HashSet;

use etherparse::{
    ArpOperation, EtherType, IpNumber, Ipv4Header, LinkSlice, NetSlice, SlicedPacket,
    TransportSlice,
};

use super::*;
// Every batch of these tests also runs through a twin without the flow cache.
use super::twin::Checked as Pipeline;
use crate::prefix::Prefix;
use crate::tables::{LocalPod, RemoteRoute};
use crate::wire::{checksum, vectors::XorShift};

// ---------------------------------------------------------------------------
// Fixture: node n1
// ---------------------------------------------------------------------------

/// UMEM chunk size used by the dataplane.
pub(super) const CHUNK: usize = 2048;
/// Where received frames start in a chunk (headroom for encap and ICMP).
pub(super) const RX_OFF: usize = 256;
/// An arbitrary monotonic "now" (the ICMP bucket starts full).
pub(super) const T0: u64 = 1_000_000_000_000;
pub(super) const MS: u64 = 1_000_000;

pub(super) const UPLINK: PortId = 0;
pub(super) const P1_PORT: PortId = 1;
pub(super) const P2_PORT: PortId = 2;
/// Not in the tables.
const UNKNOWN_PORT: PortId = 7;

pub(super) const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
pub(super) const REMOTE_UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 12);
pub(super) const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
pub(super) const P1_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub(super) const P2_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
pub(super) const REMOTE_POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
pub(super) const POD_MTU: u16 = 1450;
pub(super) const VNI: u32 = 1;
pub(super) const VXLAN_PORT: u16 = 4789;

pub(super) const VTEP_MAC: EthernetAddress = EthernetAddress([0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0b]);
pub(super) const REMOTE_VTEP_MAC: EthernetAddress =
    EthernetAddress([0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0c]);
/// n1's eth0.
pub(super) const UPLINK_MAC: EthernetAddress =
    EthernetAddress([0x52, 0x54, 0x00, 0x1e, 0x00, 0x0b]);
/// n2's eth0: the underlay next hop towards 172.30.0.12.
pub(super) const NEXT_HOP_MAC: EthernetAddress =
    EthernetAddress([0x52, 0x54, 0x00, 0x1e, 0x00, 0x0c]);
pub(super) const P1_MAC: EthernetAddress = EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02]);
pub(super) const P2_MAC: EthernetAddress = EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03]);
/// Node-side veth of p1: the gateway MAC p1 sees.
pub(super) const PORT1_MAC: EthernetAddress = EthernetAddress([0x02, 0x6b, 0x78, 0x64, 0x70, 0x01]);
/// Node-side veth of p2.
pub(super) const PORT2_MAC: EthernetAddress = EthernetAddress([0x02, 0x6b, 0x78, 0x64, 0x70, 0x02]);

pub(super) fn node() -> NodeInfo {
    NodeInfo {
        underlay_ip: UNDERLAY_IP,
        vtep_mac: VTEP_MAC,
        vni: VNI,
        vxlan_port: VXLAN_PORT,
        pod_cidr: Prefix::new(Ipv4Addr::new(10, 244, 1, 0), 24),
        cluster_cidr: Prefix::new(Ipv4Addr::new(10, 244, 0, 0), 16),
        gateway_ip: GATEWAY,
        pod_mtu: POD_MTU,
        service_cidr: Some(Prefix::new(Ipv4Addr::new(10, 96, 0, 0), 12)),
        masquerade: false,
    }
}

/// n1's tables; `next_hop` is the resolved underlay MAC towards n2, if any.
pub(super) fn tables_with(next_hop: Option<EthernetAddress>) -> Tables {
    // Every snapshot the engine publishes has its own epoch; so does every
    // table built here (tests swap tables to add or remove backends).
    static EPOCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let mut t = Tables {
        node: Some(node()),
        epoch: EPOCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ..Tables::default()
    };
    t.set_port(
        UPLINK,
        PortInfo {
            kind: PortKind::Uplink,
            mac: UPLINK_MAC,
        },
    );
    t.set_port(
        P1_PORT,
        PortInfo {
            kind: PortKind::Pod { ip: P1_IP },
            mac: PORT1_MAC,
        },
    );
    t.set_port(
        P2_PORT,
        PortInfo {
            kind: PortKind::Pod { ip: P2_IP },
            mac: PORT2_MAC,
        },
    );
    t.local.insert(
        P1_IP,
        LocalPod {
            port: P1_PORT,
            mac: P1_MAC,
        },
    );
    t.local.insert(
        P2_IP,
        LocalPod {
            port: P2_PORT,
            mac: P2_MAC,
        },
    );
    t.add_remote(
        Prefix::new(Ipv4Addr::new(10, 244, 2, 0), 24),
        RemoteRoute {
            vtep_ip: REMOTE_UNDERLAY_IP,
            vtep_mac: REMOTE_VTEP_MAC,
            next_hop_mac: next_hop,
        },
    );
    t
}

pub(super) fn tables() -> Tables {
    tables_with(Some(NEXT_HOP_MAC))
}

// ---------------------------------------------------------------------------
// Vectors (checksums computed independently, re-checked in `vectors_are_valid`)
// ---------------------------------------------------------------------------

/// p1 -> p2 UDP, 10.244.1.2:40000 -> 10.244.1.3:5000, "kxdp", padded to the
/// 60-byte Ethernet minimum.
#[rustfmt::skip]
static P1_TO_P2_UDP: [u8; 60] = [
    /* eth dst: port 1 (p1's gateway) */ 0x02, 0x6b, 0x78, 0x64, 0x70, 0x01,
    /* eth src: p1 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 32 */ 0x00, 0x20,
    /* ident */ 0x12, 0x34,
    /* flags DF, frag offset 0 */ 0x40, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: udp */ 0x11,
    /* header checksum */ 0x10, 0xad,
    /* src: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* dst: 10.244.1.3 (p2) */ 0x0a, 0xf4, 0x01, 0x03,
    /* udp src port: 40000 */ 0x9c, 0x40,
    /* udp dst port: 5000 */ 0x13, 0x88,
    /* udp len: 12 */ 0x00, 0x0c,
    /* udp checksum */ 0x68, 0x38,
    /* payload: "kxdp" */ b'k', b'x', b'd', b'p',
    /* ethernet padding */ 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00,
];

/// p1 -> p2 TCP PSH|ACK with 12 bytes of data, 10.244.1.2:51000 ->
/// 10.244.1.3:8080 (veth frames need no padding).
#[rustfmt::skip]
static P1_TO_P2_TCP: [u8; 66] = [
    /* eth dst: port 1 (p1's gateway) */ 0x02, 0x6b, 0x78, 0x64, 0x70, 0x01,
    /* eth src: p1 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 52 */ 0x00, 0x34,
    /* ident */ 0x23, 0x45,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: tcp */ 0x06,
    /* header checksum */ 0xff, 0x92,
    /* src: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* dst: 10.244.1.3 (p2) */ 0x0a, 0xf4, 0x01, 0x03,
    /* tcp src port: 51000 */ 0xc7, 0x38,
    /* tcp dst port: 8080 */ 0x1f, 0x90,
    /* seq */ 0x11, 0x22, 0x33, 0x44,
    /* ack */ 0x55, 0x66, 0x77, 0x88,
    /* data offset: 5 words */ 0x50,
    /* flags: PSH|ACK */ 0x18,
    /* window: 502 */ 0x01, 0xf6,
    /* checksum */ 0xa9, 0xbb,
    /* urgent pointer */ 0x00, 0x00,
    /* data: "hello, pod 2" */ b'h', b'e', b'l', b'l', b'o', b',', b' ', b'p', b'o', b'd', b' ', b'2',
];

/// p1 -> a pod on n2, UDP 10.244.1.2:40000 -> 10.244.2.2:5000, "kxdp".
#[rustfmt::skip]
static P1_TO_REMOTE_UDP: [u8; 46] = [
    /* eth dst: port 1 (p1's gateway) */ 0x02, 0x6b, 0x78, 0x64, 0x70, 0x01,
    /* eth src: p1 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 32 */ 0x00, 0x20,
    /* ident */ 0x43, 0x21,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: udp */ 0x11,
    /* header checksum */ 0xde, 0xc0,
    /* src: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* dst: 10.244.2.2 (pod on n2) */ 0x0a, 0xf4, 0x02, 0x02,
    /* udp src port: 40000 */ 0x9c, 0x40,
    /* udp dst port: 5000 */ 0x13, 0x88,
    /* udp len: 12 */ 0x00, 0x0c,
    /* udp checksum */ 0x67, 0x39,
    /* payload: "kxdp" */ b'k', b'x', b'd', b'p',
];

/// Offset of the inner IPv4 header in [`VXLAN_FROM_REMOTE`].
pub(super) const INNER_IP: usize = ENCAP_LEN + ETH;

/// n2 -> n1 VXLAN (VNI 1) carrying the reply 10.244.2.2:5000 ->
/// 10.244.1.2:40000 "pong", as n2 encapsulates it (inner TTL already
/// decremented once, outer UDP checksum zero).
#[rustfmt::skip]
pub(super) static VXLAN_FROM_REMOTE: [u8; 96] = [
    /* outer eth dst: n1 uplink */ 0x52, 0x54, 0x00, 0x1e, 0x00, 0x0b,
    /* outer eth src: n2 uplink */ 0x52, 0x54, 0x00, 0x1e, 0x00, 0x0c,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* outer ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 82 */ 0x00, 0x52,
    /* ident */ 0x00, 0x00,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: udp */ 0x11,
    /* header checksum */ 0xe2, 0x47,
    /* src: 172.30.0.12 (n2) */ 0xac, 0x1e, 0x00, 0x0c,
    /* dst: 172.30.0.11 (n1) */ 0xac, 0x1e, 0x00, 0x0b,
    /* outer udp src port: 51234 (flow hash) */ 0xc8, 0x22,
    /* outer udp dst port: 4789 */ 0x12, 0xb5,
    /* udp len: 62 */ 0x00, 0x3e,
    /* udp checksum: none */ 0x00, 0x00,
    /* vxlan flags: I */ 0x08,
    /* reserved */ 0x00, 0x00, 0x00,
    /* vni: 1 */ 0x00, 0x00, 0x01,
    /* reserved */ 0x00,
    /* inner eth dst: n1 vtep */ 0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0b,
    /* inner eth src: n2 vtep */ 0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0c,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* inner ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 32 */ 0x00, 0x20,
    /* ident */ 0x55, 0x55,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 63 */ 0x3f,
    /* protocol: udp */ 0x11,
    /* header checksum */ 0xcd, 0x8c,
    /* src: 10.244.2.2 (pod on n2) */ 0x0a, 0xf4, 0x02, 0x02,
    /* dst: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* inner udp src port: 5000 */ 0x13, 0x88,
    /* inner udp dst port: 40000 */ 0x9c, 0x40,
    /* udp len: 12 */ 0x00, 0x0c,
    /* udp checksum */ 0x58, 0x4b,
    /* payload: "pong" */ b'p', b'o', b'n', b'g',
];

/// p1 asks for its gateway 10.244.1.1 (veth frame, no padding).
#[rustfmt::skip]
pub(super) static ARP_REQUEST_FOR_GATEWAY: [u8; 42] = [
    /* eth dst: broadcast */ 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    /* eth src: p1 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02,
    /* ethertype: arp */ 0x08, 0x06,
    /* htype: ethernet */ 0x00, 0x01,
    /* ptype: ipv4 */ 0x08, 0x00,
    /* hlen */ 0x06,
    /* plen */ 0x04,
    /* op: request */ 0x00, 0x01,
    /* sender hw: p1 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02,
    /* sender ip: 10.244.1.2 */ 0x0a, 0xf4, 0x01, 0x02,
    /* target hw: unknown */ 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    /* target ip: 10.244.1.1 (gateway) */ 0x0a, 0xf4, 0x01, 0x01,
];

/// Offset of the target IP in an ARP frame.
pub(super) const ARP_TPA: usize = ETH + 24;
/// Offset of the sender IP in an ARP frame.
pub(super) const ARP_SPA: usize = ETH + 14;

/// p1 pings p2: echo request id 0x42 seq 1, "abcdefgh".
#[rustfmt::skip]
static ICMP_ECHO_P1_TO_P2: [u8; 50] = [
    /* eth dst: port 1 (p1's gateway) */ 0x02, 0x6b, 0x78, 0x64, 0x70, 0x01,
    /* eth src: p1 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 36 */ 0x00, 0x24,
    /* ident */ 0x07, 0x77,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: icmp */ 0x01,
    /* header checksum */ 0x1b, 0x76,
    /* src: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* dst: 10.244.1.3 (p2) */ 0x0a, 0xf4, 0x01, 0x03,
    /* icmp type: echo request */ 0x08,
    /* code */ 0x00,
    /* checksum */ 0x66, 0x27,
    /* echo ident */ 0x00, 0x42,
    /* echo seq */ 0x00, 0x01,
    /* data: "abcdefgh" */ b'a', b'b', b'c', b'd', b'e', b'f', b'g', b'h',
];

/// p1 tells p2 "port unreachable" about an earlier p2 -> p1 datagram, with
/// TTL 1: expiring here, it must not draw an ICMP error of its own.
#[rustfmt::skip]
static ICMP_ERROR_P1_TO_P2_TTL1: [u8; 70] = [
    /* eth dst: port 1 (p1's gateway) */ 0x02, 0x6b, 0x78, 0x64, 0x70, 0x01,
    /* eth src: p1 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 56 */ 0x00, 0x38,
    /* ident */ 0x08, 0x88,
    /* flags: none */ 0x00, 0x00,
    /* ttl: 1 */ 0x01,
    /* protocol: icmp */ 0x01,
    /* header checksum */ 0x99, 0x51,
    /* src: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* dst: 10.244.1.3 (p2) */ 0x0a, 0xf4, 0x01, 0x03,
    /* icmp type: destination unreachable */ 0x03,
    /* code: port unreachable */ 0x03,
    /* checksum */ 0x8e, 0x38,
    /* unused */ 0x00, 0x00, 0x00, 0x00,
    /* quoted ipv4: ver 4, ihl 5, dscp 0, total len 32 */ 0x45, 0x00, 0x00, 0x20,
    /* quoted ident, flags DF */ 0x66, 0x66, 0x40, 0x00,
    /* quoted ttl 64, udp, header checksum */ 0x40, 0x11, 0xbc, 0x7a,
    /* quoted src: 10.244.1.3 (p2) */ 0x0a, 0xf4, 0x01, 0x03,
    /* quoted dst: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* quoted udp ports 5000 -> 40000 */ 0x13, 0x88, 0x9c, 0x40,
    /* quoted udp len 12, checksum (opaque) */ 0x00, 0x0c, 0xbe, 0xef,
];

// ---------------------------------------------------------------------------
// Running frames through the pipeline
// ---------------------------------------------------------------------------

/// What `process` left in a chunk for one frame.
#[derive(Debug, Clone)]
pub(super) struct Out {
    pub(super) verdict: Verdict,
    pub(super) off: usize,
    pub(super) frame: Vec<u8>,
}

fn chunk_with(frame: &[u8], off: usize) -> Vec<u8> {
    let mut c = vec![0u8; CHUNK];
    c[off..off + frame.len()].copy_from_slice(frame);
    c
}

/// Runs one batch, each frame at [`RX_OFF`] of its own chunk.
pub(super) fn process_batch(
    pl: &mut Pipeline,
    now: u64,
    t: &Tables,
    inputs: &[(PortId, &[u8])],
) -> Vec<Out> {
    let mut chunks: Vec<Vec<u8>> = inputs.iter().map(|(_, f)| chunk_with(f, RX_OFF)).collect();
    let mut pkts: Vec<Packet<'_>> = chunks
        .iter_mut()
        .zip(inputs)
        .map(|(c, (port, f))| Packet::new(c, RX_OFF, f.len(), *port))
        .collect();
    pl.process(now, t, &mut pkts);
    pkts.iter()
        .map(|p| Out {
            verdict: p.verdict,
            off: p.off,
            frame: p.frame().to_vec(),
        })
        .collect()
}

/// Packets over `chunks`, each frame at [`RX_OFF`]: `(port, len)` per chunk
/// (the randomised tests' batches).
pub(super) fn packets<'a>(chunks: &'a mut [Vec<u8>], meta: &[(PortId, usize)]) -> Vec<Packet<'a>> {
    chunks
        .iter_mut()
        .zip(meta)
        .map(|(c, &(port, len))| Packet::new(c, RX_OFF, len, port))
        .collect()
}

/// `b` changed the way the randomised tests change bytes: a flipped bit, a
/// value from `interesting`, or any value.
pub(super) fn mutated(rng: &mut XorShift, b: u8, interesting: &[u8]) -> u8 {
    match rng.below(3) {
        0 => b ^ (1 << rng.below(8)),
        1 => interesting[rng.below(interesting.len())],
        _ => rng.next_u64() as u8,
    }
}

pub(super) fn process_one(
    pl: &mut Pipeline,
    now: u64,
    t: &Tables,
    port: PortId,
    frame: &[u8],
) -> Out {
    process_batch(pl, now, t, &[(port, frame)]).remove(0)
}

/// One frame through a fresh pipeline; returns its output and counters.
fn run(t: &Tables, port: PortId, frame: &[u8]) -> (Out, Counters) {
    let mut pl = Pipeline::new();
    let out = process_one(&mut pl, T0, t, port, frame);
    (out, pl.counters().clone())
}

pub(super) fn total_drops(c: &Counters) -> u64 {
    c.drops.iter().sum()
}

/// Asserts `frame` on `port` is dropped for `reason`, counted once, and
/// nothing else is counted.
#[track_caller]
fn assert_dropped(t: &Tables, port: PortId, frame: &[u8], reason: DropReason) {
    let (out, c) = run(t, port, frame);
    assert_eq!(out.verdict, Verdict::Drop(reason));
    assert_eq!(c.drop_count(reason), 1, "{reason:?} counted once");
    assert_eq!(total_drops(&c), 1, "only {reason:?} counted: {c:?}");
    assert_eq!(
        (
            c.arp_replies,
            c.icmp_errors_sent,
            c.encapsulated,
            c.routed_local
        ),
        (0, 0, 0, 0)
    );
}

// ---------------------------------------------------------------------------
// Building inputs (wire::checksum is fine here: these are inputs)
// ---------------------------------------------------------------------------

pub(super) fn put_ip(f: &mut [u8], at: usize, ip: Ipv4Addr) {
    f[at..at + 4].copy_from_slice(&ip.octets());
}

/// Recomputes the IPv4 header checksum of the header at `ip_off`.
pub(super) fn fix_ipv4_checksum(f: &mut [u8], ip_off: usize) {
    let hl = (usize::from(f[ip_off] & 0xf) * 4).max(20);
    if f.len() < ip_off + hl {
        return;
    }
    f[ip_off + 10..ip_off + 12].fill(0);
    let c = checksum::finish(checksum::sum(&f[ip_off..ip_off + hl]));
    f[ip_off + 10..ip_off + 12].copy_from_slice(&c.to_be_bytes());
}

/// Recomputes the UDP, TCP or ICMP checksum of the datagram at `ip_off`.
pub(super) fn fix_l4_checksum(f: &mut [u8], ip_off: usize) {
    let hl = usize::from(f[ip_off] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([f[ip_off + 2], f[ip_off + 3]]));
    let proto = f[ip_off + 9];
    let src = Ipv4Addr::new(
        f[ip_off + 12],
        f[ip_off + 13],
        f[ip_off + 14],
        f[ip_off + 15],
    );
    let dst = Ipv4Addr::new(
        f[ip_off + 16],
        f[ip_off + 17],
        f[ip_off + 18],
        f[ip_off + 19],
    );
    let seg = ip_off + hl..ip_off + total;
    let (at, pseudo) = match proto {
        ipv4::protocol::UDP => (
            6,
            checksum::pseudo_header(src, dst, proto, seg.len() as u16),
        ),
        ipv4::protocol::TCP => (
            16,
            checksum::pseudo_header(src, dst, proto, seg.len() as u16),
        ),
        ipv4::protocol::ICMP => (2, 0),
        _ => return,
    };
    if seg.end > f.len() || seg.len() < at + 2 {
        return;
    }
    f[seg.start + at..seg.start + at + 2].fill(0);
    let c = checksum::finish(pseudo + checksum::sum(&f[seg]));
    f[ip_off + hl + at..ip_off + hl + at + 2].copy_from_slice(&c.to_be_bytes());
}

/// `frame` with `edit` applied, then the IPv4 header checksum and the L4
/// checksum of the datagram at `ip_off` made valid again.
pub(super) fn edited(frame: &[u8], ip_off: usize, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut f = frame.to_vec();
    edit(&mut f);
    fix_l4_checksum(&mut f, ip_off);
    fix_ipv4_checksum(&mut f, ip_off);
    f
}

/// `frame` (IPv4 at offset 14) with a new destination address.
fn to_dst(frame: &[u8], dst: Ipv4Addr) -> Vec<u8> {
    edited(frame, ETH, |f| put_ip(f, ETH + 16, dst))
}

fn with_ttl(frame: &[u8], ip_off: usize, ttl: u8) -> Vec<u8> {
    edited(frame, ip_off, |f| f[ip_off + 8] = ttl)
}

/// `frame` (p1 to p2) sent the other way, by p2, with TTL `ttl`.
fn from_p2(frame: &[u8], ttl: u8) -> Vec<u8> {
    edited(frame, ETH, |f| {
        f[..12].copy_from_slice(&[PORT2_MAC.0, P2_MAC.0].concat());
        put_ip(f, ETH + 12, P2_IP);
        put_ip(f, ETH + 16, P1_IP);
        f[ETH + 8] = ttl;
    })
}

/// A UDP datagram from p1 to `dst` with a `total_len`-byte IPv4 packet.
fn big_udp(dst: Ipv4Addr, total_len: usize, df: bool) -> Vec<u8> {
    let mut f = P1_TO_REMOTE_UDP[..ETH + 28].to_vec();
    f.resize(ETH + total_len, 0);
    for (i, b) in f[ETH + 28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    put_ip(&mut f, ETH + 16, dst);
    f[ETH + 2..ETH + 4].copy_from_slice(&(total_len as u16).to_be_bytes());
    f[ETH + 6] = if df { 0x40 } else { 0x00 };
    f[ETH + 24..ETH + 26].copy_from_slice(&((total_len - 20) as u16).to_be_bytes());
    fix_l4_checksum(&mut f, ETH);
    fix_ipv4_checksum(&mut f, ETH);
    f
}

// ---------------------------------------------------------------------------
// Checking outputs from scratch
// ---------------------------------------------------------------------------

/// Straightforward RFC 1071: the data (checksum included) sums to 0xFFFF.
pub(super) fn rfc1071_ok(data: &[u8]) -> bool {
    let mut s: u64 = 0;
    for pair in data.chunks(2) {
        s += u64::from(pair[0]) << 8 | pair.get(1).copied().map_or(0, u64::from);
    }
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s == 0xFFFF
}

/// The IPv4 header at the start of `ip` has a correct checksum, by the
/// RFC 1071 reference and by etherparse (whose `Ipv4Header` has no field for
/// the reserved flag bit, so it is asked only when that bit is clear).
#[track_caller]
pub(super) fn assert_ipv4_checksum(ip: &[u8]) {
    let (h, _) = Ipv4Header::from_slice(ip).expect("IPv4 header");
    assert!(rfc1071_ok(&ip[..h.header_len()]), "IPv4 header checksum");
    if ip[6] & 0x80 == 0 {
        assert_eq!(
            h.header_checksum,
            h.calc_header_checksum(),
            "IPv4 header checksum"
        );
    }
}

/// The TCP/UDP/ICMP checksum of the datagram `ip` is correct (a UDP checksum
/// must also be present).
#[track_caller]
pub(super) fn assert_l4_checksum(ip: &[u8]) {
    let s = etherparse::Ipv4Slice::from_slice(ip).expect("IPv4 datagram");
    let (src, dst) = (s.header().source(), s.header().destination());
    let payload = s.payload().payload;
    match s.header().protocol() {
        IpNumber::UDP => {
            let u = etherparse::UdpSlice::from_slice(payload).unwrap();
            assert_ne!(u.checksum(), 0, "UDP checksum present");
            let want = u
                .to_header()
                .calc_checksum_ipv4_raw(src, dst, u.payload())
                .unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum");
        }
        IpNumber::TCP => {
            let tcp = etherparse::TcpSlice::from_slice(payload).unwrap();
            assert_eq!(
                tcp.checksum(),
                tcp.calc_checksum_ipv4(src, dst).unwrap(),
                "TCP checksum"
            );
        }
        IpNumber::ICMP => assert!(rfc1071_ok(payload), "ICMP checksum"),
        p => panic!("unexpected protocol {p:?}"),
    }
}

/// What a router makes of `input` (an Ethernet frame with IPv4 at 14):
/// trimmed to the datagram, new MACs, TTL one less and the header checksum
/// computed afresh by etherparse. Everything else is byte for byte the input.
pub(super) fn forwarded(input: &[u8], dst: EthernetAddress, src: EthernetAddress) -> Vec<u8> {
    let (mut h, _) = Ipv4Header::from_slice(&input[ETH..]).unwrap();
    let total = usize::from(h.total_len);
    h.time_to_live -= 1;
    h.header_checksum = h.calc_header_checksum();
    let mut out = Vec::with_capacity(ETH + total);
    out.extend_from_slice(&dst.0);
    out.extend_from_slice(&src.0);
    out.extend_from_slice(&input[12..ETH]);
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(&input[ETH + h.header_len()..ETH + total]);
    out
}

/// The parts of a VXLAN frame, checked against RFC 7348 and n1 -> n2.
pub(super) struct Encapped {
    pub(super) outer_src_port: u16,
    pub(super) inner: Vec<u8>,
}

/// Parses an encapsulated frame sent on the uplink with etherparse and
/// checks every outer field; returns the outer source port and inner frame.
#[track_caller]
pub(super) fn parse_encapped(frame: &[u8]) -> Encapped {
    let sp = SlicedPacket::from_ethernet(frame).expect("outer frame parses");
    let Some(LinkSlice::Ethernet2(eth)) = &sp.link else {
        panic!("outer Ethernet II")
    };
    assert_eq!(
        eth.destination(),
        NEXT_HOP_MAC.0,
        "outer dst MAC = next hop"
    );
    assert_eq!(eth.source(), UPLINK_MAC.0, "outer src MAC = uplink");
    assert_eq!(eth.ether_type(), EtherType::IPV4);
    let Some(NetSlice::Ipv4(ip)) = &sp.net else {
        panic!("outer IPv4")
    };
    let h = ip.header();
    assert_eq!(h.source_addr(), UNDERLAY_IP);
    assert_eq!(h.destination_addr(), REMOTE_UNDERLAY_IP);
    assert_eq!(h.protocol(), IpNumber::UDP);
    assert_eq!(h.ihl(), 5);
    assert!(h.dont_fragment(), "outer DF (RFC 7348 section 4.3)");
    assert!(!h.is_fragmenting_payload());
    assert!(h.ttl() > 1);
    assert_eq!(
        usize::from(h.total_len()),
        frame.len() - ETH,
        "outer total length"
    );
    assert_ipv4_checksum(&frame[ETH..]);
    let Some(TransportSlice::Udp(u)) = &sp.transport else {
        panic!("outer UDP")
    };
    assert_eq!(u.destination_port(), VXLAN_PORT);
    assert!(
        (49152..=65535).contains(&u.source_port()),
        "sport {}",
        u.source_port()
    );
    assert_eq!(
        usize::from(u.length()),
        frame.len() - ETH - 20,
        "UDP length"
    );
    if u.checksum() != 0 {
        let want = u
            .to_header()
            .calc_checksum_ipv4_raw(h.source(), h.destination(), u.payload())
            .unwrap();
        assert_eq!(u.checksum(), want);
    }
    let vx = u.payload();
    assert_eq!(vx[0], vxlan::FLAG_I, "VXLAN flags: I only");
    assert_eq!(&vx[1..4], &[0, 0, 0], "VXLAN reserved");
    assert_eq!(u32::from_be_bytes([0, vx[4], vx[5], vx[6]]), VNI);
    assert_eq!(vx[7], 0, "VXLAN reserved");
    let inner = vx[vxlan::HEADER_LEN..].to_vec();
    // The inner L4 header is the pod's business (routers don't check it):
    // only the inner Ethernet and IPv4 headers must be sound here.
    assert_eq!(
        u16::from_be_bytes([inner[12], inner[13]]),
        ethernet::ethertype::IPV4
    );
    assert_ipv4_checksum(&inner[ETH..]);
    Encapped {
        outer_src_port: u.source_port(),
        inner,
    }
}

/// An ICMP error as the pipeline must build it, parsed with etherparse.
#[derive(Debug)]
pub(super) struct IcmpErr {
    pub(super) eth_dst: [u8; 6],
    pub(super) eth_src: [u8; 6],
    pub(super) ip_src: Ipv4Addr,
    pub(super) ip_dst: Ipv4Addr,
    pub(super) ty: u8,
    pub(super) code: u8,
    pub(super) rest: [u8; 4],
    pub(super) quote: Vec<u8>,
}

/// Parses an ICMP error frame and checks its IPv4 and ICMP checksums and
/// lengths.
#[track_caller]
pub(super) fn parse_icmp_error(frame: &[u8]) -> IcmpErr {
    let sp = SlicedPacket::from_ethernet(frame).expect("ICMP error parses");
    let Some(LinkSlice::Ethernet2(eth)) = &sp.link else {
        panic!("Ethernet II")
    };
    assert_eq!(eth.ether_type(), EtherType::IPV4);
    let Some(NetSlice::Ipv4(ip)) = &sp.net else {
        panic!("IPv4")
    };
    let h = ip.header();
    assert_eq!(h.protocol(), IpNumber::ICMP);
    assert_eq!(h.ihl(), 5);
    assert_eq!(usize::from(h.total_len()), frame.len() - ETH);
    assert!(!h.is_fragmenting_payload());
    assert!(h.ttl() > 1);
    assert_ipv4_checksum(&frame[ETH..]);
    let Some(TransportSlice::Icmpv4(icmp)) = &sp.transport else {
        panic!("ICMPv4")
    };
    assert!(rfc1071_ok(icmp.slice()), "ICMP checksum");
    IcmpErr {
        eth_dst: eth.destination(),
        eth_src: eth.source(),
        ip_src: h.source_addr(),
        ip_dst: h.destination_addr(),
        ty: icmp.type_u8(),
        code: icmp.code_u8(),
        rest: icmp.bytes5to8(),
        quote: icmp.payload().to_vec(),
    }
}

/// The original datagram's IP header and first 8 payload bytes.
pub(super) fn quote_of(input: &[u8], ip_off: usize) -> Vec<u8> {
    let total = usize::from(u16::from_be_bytes([input[ip_off + 2], input[ip_off + 3]]));
    input[ip_off..ip_off + total.min(28)].to_vec()
}

// ---------------------------------------------------------------------------
// The vectors themselves
// ---------------------------------------------------------------------------

#[test]
fn vectors_are_valid() {
    for f in [
        &P1_TO_P2_UDP[..],
        &P1_TO_P2_TCP,
        &P1_TO_REMOTE_UDP,
        &ICMP_ECHO_P1_TO_P2,
        &ICMP_ERROR_P1_TO_P2_TTL1,
    ] {
        assert_ipv4_checksum(&f[ETH..]);
        assert_l4_checksum(&f[ETH..]);
    }
    assert_ipv4_checksum(&VXLAN_FROM_REMOTE[ETH..]);
    assert_ipv4_checksum(&VXLAN_FROM_REMOTE[INNER_IP..]);
    assert_l4_checksum(&VXLAN_FROM_REMOTE[INNER_IP..]);
    // The quoted header inside the ICMP error is itself valid.
    assert_ipv4_checksum(&ICMP_ERROR_P1_TO_P2_TTL1[ETH + 28..]);
    let arp = SlicedPacket::from_ethernet(&ARP_REQUEST_FOR_GATEWAY).unwrap();
    let Some(NetSlice::Arp(a)) = arp.net else {
        panic!("ARP")
    };
    let a = a.to_packet().try_eth_ipv4().unwrap();
    assert_eq!(a.operation, ArpOperation::REQUEST);
    assert_eq!(a.target_ipv4_addr(), GATEWAY);
    // The fixture's VXLAN frame is what the encap walk must produce on n2.
    let e = parse_encapped_towards(&VXLAN_FROM_REMOTE, UNDERLAY_IP);
    assert_eq!(e, VXLAN_FROM_REMOTE[ENCAP_LEN..]);
}

/// Minimal RFC 7348 parse of a frame towards `dst` (used on the input vector,
/// whose direction is n2 -> n1).
fn parse_encapped_towards(frame: &[u8], dst: Ipv4Addr) -> Vec<u8> {
    let sp = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &sp.net else {
        panic!("IPv4")
    };
    assert_eq!(ip.header().destination_addr(), dst);
    let Some(TransportSlice::Udp(u)) = &sp.transport else {
        panic!("UDP")
    };
    assert_eq!(u.destination_port(), VXLAN_PORT);
    u.payload()[vxlan::HEADER_LEN..].to_vec()
}

// ---------------------------------------------------------------------------
// Walk 1: pod -> pod, same node
// ---------------------------------------------------------------------------

#[test]
fn walk1_udp_is_routed_to_p2_and_padding_trimmed() {
    let (out, c) = run(&tables(), P1_PORT, &P1_TO_P2_UDP);
    assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
    assert_eq!(out.off, RX_OFF);
    assert_eq!(out.frame.len(), ETH + 32, "trimmed to 14 + total_len");
    assert_eq!(out.frame, forwarded(&P1_TO_P2_UDP, P2_MAC, PORT2_MAC));
    assert_eq!(&out.frame[..6], &P2_MAC.0, "dst MAC = p2");
    assert_eq!(&out.frame[6..12], &PORT2_MAC.0, "src MAC = port 2");
    assert_eq!(out.frame[ETH + 8], 63, "TTL - 1");
    assert_ipv4_checksum(&out.frame[ETH..]);
    assert_l4_checksum(&out.frame[ETH..]);
    assert_eq!(&out.frame[ETH + 28..], b"kxdp");
    assert_eq!(c.routed_local, 1);
    assert_eq!(total_drops(&c), 0);
}

#[test]
fn walk1_tcp_is_routed_to_p2_with_payload_untouched() {
    let (out, c) = run(&tables(), P1_PORT, &P1_TO_P2_TCP);
    assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
    assert_eq!(out.off, RX_OFF);
    assert_eq!(out.frame.len(), P1_TO_P2_TCP.len(), "nothing to trim");
    assert_eq!(out.frame, forwarded(&P1_TO_P2_TCP, P2_MAC, PORT2_MAC));
    assert_eq!(
        out.frame[ETH + 20..],
        P1_TO_P2_TCP[ETH + 20..],
        "TCP untouched"
    );
    assert_ipv4_checksum(&out.frame[ETH..]);
    assert_l4_checksum(&out.frame[ETH..]);
    assert_eq!(c.routed_local, 1);
}

#[test]
fn walk1_reply_p2_to_p1_and_ttl_2() {
    // The reverse direction, with TTL 2 (the last hop that still forwards).
    let reply = from_p2(&P1_TO_P2_TCP, 2);
    let (out, _) = run(&tables(), P2_PORT, &reply);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    assert_eq!(out.frame, forwarded(&reply, P1_MAC, PORT1_MAC));
    assert_eq!(out.frame[ETH + 8], 1);
    assert_l4_checksum(&out.frame[ETH..]);
}

#[test]
fn walk1_ttl_decrement_checksum_for_every_ttl_and_ident() {
    // The incremental TTL update against etherparse over many headers.
    let t = tables();
    let mut pl = Pipeline::new();
    for ttl in 2..=255u8 {
        for ident in [0u16, 0x00ff, 0xfeff, 0xffff] {
            let f = edited(&P1_TO_P2_UDP, ETH, |f| {
                f[ETH + 8] = ttl;
                f[ETH + 4..ETH + 6].copy_from_slice(&ident.to_be_bytes());
            });
            let out = process_one(&mut pl, T0, &t, P1_PORT, &f);
            assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
            assert_eq!(out.frame, forwarded(&f, P2_MAC, PORT2_MAC), "ttl {ttl}");
        }
    }
}

// ---------------------------------------------------------------------------
// Walk 2: pod -> pod, other node (encap)
// ---------------------------------------------------------------------------

#[test]
fn walk2_encap_builds_an_rfc7348_frame() {
    let (out, c) = run(&tables(), P1_PORT, &P1_TO_REMOTE_UDP);
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    assert_eq!(out.off, RX_OFF - ENCAP_LEN, "off moved back 50");
    assert_eq!(out.frame.len(), P1_TO_REMOTE_UDP.len() + 50);
    let e = parse_encapped(&out.frame);
    assert_eq!(
        e.inner,
        forwarded(&P1_TO_REMOTE_UDP, REMOTE_VTEP_MAC, VTEP_MAC)
    );
    let isp = SlicedPacket::from_ethernet(&e.inner).expect("inner frame parses");
    let Some(TransportSlice::Udp(u)) = isp.transport else {
        panic!("inner UDP")
    };
    assert_eq!(
        (u.source_port(), u.destination_port(), u.payload()),
        (40000, 5000, &b"kxdp"[..])
    );
    assert_eq!(&e.inner[..6], &REMOTE_VTEP_MAC.0, "inner dst = remote VTEP");
    assert_eq!(&e.inner[6..12], &VTEP_MAC.0, "inner src = local VTEP");
    assert_eq!(e.inner[ETH + 8], 63, "inner TTL - 1");
    assert_ipv4_checksum(&e.inner[ETH..]);
    assert_l4_checksum(&e.inner[ETH..]);
    assert_eq!(c.encapsulated, 1);
    assert_eq!(total_drops(&c), 0);
}

#[test]
fn walk2_encap_tcp_and_trims_padding() {
    let mut f = to_dst(&P1_TO_P2_TCP, REMOTE_POD_IP);
    f.extend_from_slice(&[0xee; 8]); // trailing junk after total_len
    let (out, _) = run(&tables(), P1_PORT, &f);
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    let e = parse_encapped(&out.frame);
    assert_eq!(e.inner, forwarded(&f, REMOTE_VTEP_MAC, VTEP_MAC));
    assert_eq!(e.inner.len(), P1_TO_P2_TCP.len());
    assert_l4_checksum(&e.inner[ETH..]);
}

#[test]
fn walk2_encap_at_exactly_the_pod_mtu_fills_the_underlay_mtu() {
    let f = big_udp(REMOTE_POD_IP, usize::from(POD_MTU), true);
    let (out, _) = run(&tables(), P1_PORT, &f);
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    assert_eq!(out.frame.len(), ETH + 1500, "1500-byte underlay packet");
    let e = parse_encapped(&out.frame);
    assert_eq!(e.inner, forwarded(&f, REMOTE_VTEP_MAC, VTEP_MAC));
    assert_l4_checksum(&e.inner[ETH..]);
}

#[test]
fn walk2_outer_source_port_follows_the_inner_flow() {
    let t = tables();
    let mut pl = Pipeline::new();
    let flow = |sport: u16, dport: u16, dst: Ipv4Addr, ident: u16, payload: &[u8; 4]| {
        edited(&P1_TO_REMOTE_UDP, ETH, |f| {
            f[ETH + 20..ETH + 22].copy_from_slice(&sport.to_be_bytes());
            f[ETH + 22..ETH + 24].copy_from_slice(&dport.to_be_bytes());
            f[ETH + 4..ETH + 6].copy_from_slice(&ident.to_be_bytes());
            f[ETH + 28..ETH + 32].copy_from_slice(payload);
            put_ip(f, ETH + 16, dst);
        })
    };
    let mut encap_sport = |f: &[u8]| {
        let out = process_one(&mut pl, T0, &t, P1_PORT, f);
        assert_eq!(out.verdict, Verdict::Tx(UPLINK));
        parse_encapped(&out.frame).outer_src_port
    };
    // Two packets of one flow (different ident and payload): one port.
    let a = encap_sport(&flow(40000, 5000, REMOTE_POD_IP, 1, b"abcd"));
    let b = encap_sport(&flow(40000, 5000, REMOTE_POD_IP, 2, b"wxyz"));
    assert_eq!(a, b);
    // Many flows: spread over the 14-bit range of dynamic ports.
    let mut seen = HashSet::new();
    let mut buckets = [0u32; 16];
    let n = 2000u16;
    for i in 0..n {
        let dst = Ipv4Addr::new(10, 244, 2, 2 + (i % 7) as u8);
        let sp = encap_sport(&flow(32768 + i, 5000 + (i % 3), dst, i, b"kxdp"));
        assert!(sp >= 49152);
        seen.insert(sp);
        buckets[usize::from((sp - 49152) >> 10)] += 1;
    }
    // 2000 uniform draws from 16384 values give ~1880 distinct.
    assert!(
        seen.len() >= 1800,
        "only {} distinct source ports",
        seen.len()
    );
    for (i, &b) in buckets.iter().enumerate() {
        assert!(
            (60..=190).contains(&b),
            "bucket {i}: {b} of {n} (expect ~125)"
        );
    }
}

#[test]
fn walk2_unresolved_next_hop_no_uplink_and_no_headroom() {
    assert_dropped(
        &tables_with(None),
        P1_PORT,
        &P1_TO_REMOTE_UDP,
        DropReason::NeighbourUnresolved,
    );

    let mut no_uplink = tables();
    no_uplink.ports[usize::from(UPLINK)] = None;
    no_uplink.uplink = None;
    assert_dropped(&no_uplink, P1_PORT, &P1_TO_REMOTE_UDP, DropReason::NoUplink);
    // Local routing does not need the uplink.
    let (out, _) = run(&no_uplink, P1_PORT, &P1_TO_P2_UDP);
    assert_eq!(out.verdict, Verdict::Tx(P2_PORT));

    // The uplink's port detached but its id still recorded: still no uplink.
    let mut detached = tables();
    detached.ports[usize::from(UPLINK)] = None;
    assert_dropped(&detached, P1_PORT, &P1_TO_REMOTE_UDP, DropReason::NoUplink);

    // Received too close to the chunk start to prepend 50 bytes.
    let t = tables();
    let mut pl = Pipeline::new();
    let mut c = chunk_with(&P1_TO_REMOTE_UDP, ENCAP_LEN - 1);
    let mut pkts = [Packet::new(
        &mut c,
        ENCAP_LEN - 1,
        P1_TO_REMOTE_UDP.len(),
        P1_PORT,
    )];
    pl.process(T0, &t, &mut pkts);
    assert_eq!(pkts[0].verdict, Verdict::Drop(DropReason::NoHeadroom));
    // ... and exactly enough is enough.
    let mut c = chunk_with(&P1_TO_REMOTE_UDP, ENCAP_LEN);
    let mut pkts = [Packet::new(
        &mut c,
        ENCAP_LEN,
        P1_TO_REMOTE_UDP.len(),
        P1_PORT,
    )];
    pl.process(T0, &t, &mut pkts);
    assert_eq!(pkts[0].verdict, Verdict::Tx(UPLINK));
    assert_eq!(pkts[0].off, 0);
    parse_encapped(pkts[0].frame());
}

#[test]
fn walk2_over_mtu_without_df_is_dropped() {
    let f = big_udp(REMOTE_POD_IP, usize::from(POD_MTU) + 1, false);
    assert_dropped(&tables(), P1_PORT, &f, DropReason::TooBig);
}

// ---------------------------------------------------------------------------
// Walk 2: the receiving node (decap)
// ---------------------------------------------------------------------------

#[test]
fn walk2_decap_delivers_to_the_local_pod() {
    let (out, c) = run(&tables(), UPLINK, &VXLAN_FROM_REMOTE);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    assert_eq!(out.off, RX_OFF + ENCAP_LEN, "off moved forward 50");
    let inner = &VXLAN_FROM_REMOTE[ENCAP_LEN..];
    assert_eq!(out.frame, forwarded(inner, P1_MAC, PORT1_MAC));
    assert_eq!(&out.frame[..6], &P1_MAC.0, "dst MAC = p1");
    assert_eq!(&out.frame[6..12], &PORT1_MAC.0, "src MAC = port 1");
    assert_eq!(out.frame[ETH + 8], 62, "inner TTL - 1");
    assert_ipv4_checksum(&out.frame[ETH..]);
    assert_l4_checksum(&out.frame[ETH..]);
    assert_eq!(&out.frame[ETH + 28..], b"pong");
    assert_eq!((c.decapsulated, c.routed_local), (1, 1));
    assert_eq!(total_drops(&c), 0);
}

#[test]
fn walk2_decap_ignores_outer_padding() {
    let mut f = VXLAN_FROM_REMOTE.to_vec();
    f.extend_from_slice(&[0xaa; 10]);
    let (out, _) = run(&tables(), UPLINK, &f);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    assert_eq!(
        out.frame,
        forwarded(&VXLAN_FROM_REMOTE[ENCAP_LEN..], P1_MAC, PORT1_MAC)
    );
}

/// n2's MAC of its pod 10.244.2.2 (on its port 2) in [`n2_tables`].
const N2_POD_MAC: EthernetAddress = EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x02, 0x02]);

/// The mirror image of n1: node n2's tables, with its pod 10.244.2.2 on
/// port 2 and n1 its one remote node.
fn n2_tables() -> Tables {
    let mut n2 = tables();
    n2.node = Some(NodeInfo {
        underlay_ip: REMOTE_UNDERLAY_IP,
        vtep_mac: REMOTE_VTEP_MAC,
        pod_cidr: Prefix::new(Ipv4Addr::new(10, 244, 2, 0), 24),
        gateway_ip: Ipv4Addr::new(10, 244, 2, 1),
        ..node()
    });
    n2.local.clear();
    n2.local.insert(
        REMOTE_POD_IP,
        LocalPod {
            port: P2_PORT,
            mac: N2_POD_MAC,
        },
    );
    n2.routes = Default::default();
    n2.vteps.clear();
    n2.add_remote(
        node().pod_cidr,
        RemoteRoute {
            vtep_ip: UNDERLAY_IP,
            vtep_mac: VTEP_MAC,
            next_hop_mac: Some(UPLINK_MAC),
        },
    );
    n2
}

#[test]
fn walk2_encap_then_decap_round_trip() {
    // n1 encapsulates p1 -> 10.244.2.2; the mirror-image node n2 (same
    // pipeline, its own tables) decapsulates it and delivers it.
    let (out, _) = run(&tables(), P1_PORT, &P1_TO_REMOTE_UDP);
    let n2 = n2_tables();
    let pod_mac = N2_POD_MAC;
    let (back, c) = run(&n2, UPLINK, &out.frame);
    assert_eq!(back.verdict, Verdict::Tx(P2_PORT));
    assert_eq!(c.decapsulated, 1);
    let once = forwarded(&P1_TO_REMOTE_UDP, REMOTE_VTEP_MAC, VTEP_MAC);
    assert_eq!(back.frame, forwarded(&once, pod_mac, PORT2_MAC));
    assert_eq!(back.frame[ETH + 8], 62, "decremented on each node");
    assert_l4_checksum(&back.frame[ETH..]);
}

#[test]
fn walk2_decap_rejects() {
    let t = tables();
    let vx = &VXLAN_FROM_REMOTE;
    let outer = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut f = vx.to_vec();
        edit(&mut f);
        fix_ipv4_checksum(&mut f, ETH);
        f
    };
    let vni_off = ETH + 20 + 8 + 4;
    assert_dropped(
        &t,
        UPLINK,
        &outer(&|f| f[vni_off + 2] = 2),
        DropReason::VxlanBadVni,
    );
    assert_dropped(
        &t,
        UPLINK,
        &outer(&|f| f[vni_off..vni_off + 3].copy_from_slice(&[1, 0, 1])),
        DropReason::VxlanBadVni,
    );
    assert_dropped(
        &t,
        UPLINK,
        &outer(&|f| f[ETH + 28] = 0),
        DropReason::VxlanMalformed,
    );
    // UDP to another port (flannel's 8472) is not ours.
    assert_dropped(
        &t,
        UPLINK,
        &outer(&|f| f[ETH + 22..ETH + 24].copy_from_slice(&8472u16.to_be_bytes())),
        DropReason::NotOurs,
    );
    // VXLAN in fragments is never reassembled (a later fragment to the
    // node is the node kernel's, but these tables have no host port).
    assert_dropped(
        &t,
        UPLINK,
        &outer(&|f| f[ETH + 6] = 0x20),
        DropReason::Ipv4Fragment,
    );
    assert_dropped(
        &t,
        UPLINK,
        &outer(&|f| f[ETH + 6..ETH + 8].copy_from_slice(&[0x00, 0xb9])),
        DropReason::ToGateway,
    );
    // Not addressed to this node, not UDP, not IPv4.
    assert_dropped(
        &t,
        UPLINK,
        &outer(&|f| put_ip(f, ETH + 16, Ipv4Addr::new(172, 30, 0, 99))),
        DropReason::NotOurs,
    );
    assert_dropped(
        &t,
        UPLINK,
        &outer(&|f| f[ETH + 9] = ipv4::protocol::TCP),
        DropReason::NotOurs,
    );
    assert_dropped(&t, UPLINK, &ARP_REQUEST_FOR_GATEWAY, DropReason::NotOurs);
    // Outer header damage.
    let mut bad = vx.to_vec();
    bad[ETH + 10] ^= 0x01;
    assert_dropped(&t, UPLINK, &bad, DropReason::Ipv4BadChecksum);
    // UDP length past the IP payload; VXLAN header cut short; no inner frame.
    let udp_len = |len: u16| {
        outer(&move |f: &mut Vec<u8>| f[ETH + 24..ETH + 26].copy_from_slice(&len.to_be_bytes()))
    };
    assert_dropped(&t, UPLINK, &udp_len(63), DropReason::UdpMalformed);
    assert_dropped(&t, UPLINK, &udp_len(7), DropReason::UdpMalformed);
    assert_dropped(&t, UPLINK, &udp_len(12), DropReason::VxlanMalformed);
    assert_dropped(&t, UPLINK, &udp_len(16 + 13), DropReason::EthTruncated);
    // Inner frame damage.
    assert_dropped(
        &t,
        UPLINK,
        &outer(&|f| f[ENCAP_LEN + 12..ENCAP_LEN + 14].copy_from_slice(&[0x86, 0xdd])),
        DropReason::UnsupportedEthertype,
    );
    let mut bad_inner = vx.to_vec();
    bad_inner[INNER_IP + 10] ^= 0x01;
    assert_dropped(&t, UPLINK, &bad_inner, DropReason::Ipv4BadChecksum);
    let inner_frag = edited(vx, INNER_IP, |f| {
        f[INNER_IP + 6] = 0x20;
        f[INNER_IP + 9] = ipv4::protocol::TCP;
    });
    assert_dropped(&t, UPLINK, &inner_frag, DropReason::FragmentMalformed);
}

#[test]
fn walk2_decap_never_forwards_into_the_overlay_again() {
    // Inner destinations that are not local pods: an unassigned address in
    // this node's CIDR, a pod of n2 (would be re-encapsulated back), and a
    // third node's pod that the tables route.
    let mut t = tables();
    add_n3(&mut t);
    for dst in [
        Ipv4Addr::new(10, 244, 1, 99),
        Ipv4Addr::new(10, 244, 2, 7),
        Ipv4Addr::new(10, 244, 3, 7),
    ] {
        let f = edited(&VXLAN_FROM_REMOTE, INNER_IP, |f| {
            put_ip(f, INNER_IP + 16, dst)
        });
        let (out, c) = run(&t, UPLINK, &f);
        assert_eq!(c.drop_count(DropReason::NoRoute), 1, "{dst}");
        assert_eq!(c.decapsulated, 0, "{dst}");
        // At most an ICMP error goes back to the sender's node; the datagram
        // itself is not sent anywhere.
        assert_eq!(out.verdict, Verdict::Tx(UPLINK), "{dst}");
        let e = parse_encapped(&out.frame);
        let err = parse_icmp_error(&e.inner);
        assert_eq!((err.ty, err.code), (3, 1), "host unreachable");
        assert_eq!((err.ip_src, err.ip_dst), (GATEWAY, REMOTE_POD_IP));
        assert_eq!(err.quote, quote_of(&f, INNER_IP));
        // Without a way back, nothing at all is sent.
        let (out, c) = run(&tables_with(None), UPLINK, &f);
        assert_eq!(out.verdict, Verdict::Drop(DropReason::NoRoute), "{dst}");
        assert_eq!(
            (c.drop_count(DropReason::NoRoute), c.icmp_errors_sent),
            (1, 0)
        );
    }
}

/// n3, a third node: VTEP 172.30.0.13, pods 10.244.3.0/24.
const N3_VTEP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 13);

fn add_n3(t: &mut Tables) {
    t.add_remote(
        Prefix::new(Ipv4Addr::new(10, 244, 3, 0), 24),
        RemoteRoute {
            vtep_ip: N3_VTEP,
            vtep_mac: EthernetAddress([0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0d]),
            next_hop_mac: Some(EthernetAddress([0x52, 0x54, 0x00, 0x1e, 0x00, 0x0d])),
        },
    );
}

/// A VXLAN `frame` as if sent from underlay address `src`.
fn from_underlay(frame: &[u8], src: Ipv4Addr) -> Vec<u8> {
    let mut f = frame.to_vec();
    put_ip(&mut f, ETH + 12, src);
    fix_ipv4_checksum(&mut f, ETH);
    f
}

/// [`VXLAN_FROM_REMOTE`] from n2's VTEP with the inner source `src`.
fn from_n2_with_inner_src(src: Ipv4Addr) -> Vec<u8> {
    edited(&VXLAN_FROM_REMOTE, INNER_IP, |f| {
        put_ip(f, INNER_IP + 12, src)
    })
}

#[test]
fn walk2_decap_only_from_known_vteps() {
    let t = tables();
    // An underlay host that is no node, this node itself, a pod address.
    for src in [Ipv4Addr::new(172, 30, 0, 99), UNDERLAY_IP, REMOTE_POD_IP] {
        let f = from_underlay(&VXLAN_FROM_REMOTE, src);
        assert_dropped(&t, UPLINK, &f, DropReason::VxlanUnknownVtep);
    }
    // Before anything inside is looked at: a wrong VNI from a stranger.
    let mut f = from_underlay(&VXLAN_FROM_REMOTE, Ipv4Addr::new(172, 30, 0, 99));
    f[ETH + 20 + 8 + 6] = 2;
    assert_dropped(&t, UPLINK, &f, DropReason::VxlanUnknownVtep);
}

#[test]
fn walk2_decap_only_from_the_sending_nodes_pod_cidr() {
    let mut t = tables();
    add_n3(&mut t);
    // n2 claiming this node's pods, gateway and CIDR, n3's pod, a
    // ClusterIP, an outside address.
    for src in [
        P1_IP,
        P2_IP,
        GATEWAY,
        Ipv4Addr::new(10, 244, 1, 0),
        Ipv4Addr::new(10, 244, 3, 7),
        Ipv4Addr::new(10, 96, 0, 10),
        Ipv4Addr::new(192, 0, 2, 1),
    ] {
        let f = from_n2_with_inner_src(src);
        assert_dropped(&t, UPLINK, &f, DropReason::VxlanSpoofedSource);
    }
    // n3 sending a pod of n2's.
    let f = from_underlay(&VXLAN_FROM_REMOTE, N3_VTEP);
    assert_dropped(&t, UPLINK, &f, DropReason::VxlanSpoofedSource);
    // n2's own: a pod, its gateway (its host, its SNAT), its CIDR's first
    // address (a flannel-style kernel node's flannel.1).
    for src in [
        REMOTE_POD_IP,
        Ipv4Addr::new(10, 244, 2, 1),
        Ipv4Addr::new(10, 244, 2, 0),
    ] {
        let (out, c) = run(&t, UPLINK, &from_n2_with_inner_src(src));
        assert_eq!(out.verdict, Verdict::Tx(P1_PORT), "{src}");
        assert_eq!((c.decapsulated, total_drops(&c)), (1, 0), "{src}");
    }
}

#[test]
fn walk2_decap_takes_icmp_errors_from_the_remote_gateway() {
    // n1 answers n2's expiring datagram with time exceeded from its
    // gateway, over VXLAN; n2 delivers that error to its pod.
    let (err, _) = run(
        &tables(),
        UPLINK,
        &with_ttl(&VXLAN_FROM_REMOTE, INNER_IP, 1),
    );
    assert_eq!(err.verdict, Verdict::Tx(UPLINK));
    let (out, c) = run(&n2_tables(), UPLINK, &err.frame);
    assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
    assert_eq!((c.decapsulated, total_drops(&c)), (1, 0));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.ip_src, e.ip_dst), (GATEWAY, REMOTE_POD_IP));
    assert_eq!((e.ty, e.code), (11, 0));
}

#[test]
fn walk2_flow_cache_entries_remember_their_vtep() {
    let mut t = tables();
    add_n3(&mut t);
    let mut pl = Pipeline::new();
    for _ in 0..2 {
        let out = process_one(&mut pl, T0, &t, UPLINK, &VXLAN_FROM_REMOTE);
        assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    }
    assert_eq!(pl.counters().flow_cache_hits, 1, "learnt, then hit");
    // The same inner flow from another sender misses, and the walk drops it
    // (the twin checks that the cache agrees).
    let stranger = from_underlay(&VXLAN_FROM_REMOTE, Ipv4Addr::new(172, 30, 0, 99));
    let out = process_one(&mut pl, T0, &t, UPLINK, &stranger);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::VxlanUnknownVtep));
    let n3 = from_underlay(&VXLAN_FROM_REMOTE, N3_VTEP);
    let out = process_one(&mut pl, T0, &t, UPLINK, &n3);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::VxlanSpoofedSource));
    assert_eq!(pl.counters().flow_cache_hits, 1);
    let out = process_one(&mut pl, T0, &t, UPLINK, &VXLAN_FROM_REMOTE);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    assert_eq!(
        pl.counters().flow_cache_hits,
        2,
        "the entry still serves n2"
    );
}

// ---------------------------------------------------------------------------
// Walk 6: ARP
// ---------------------------------------------------------------------------

/// Checks an ARP reply frame from port 1 to p1 saying `ip` is at port 1's MAC.
#[track_caller]
fn assert_arp_reply_to_p1(out: &Out, ip: Ipv4Addr) {
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    assert_eq!(out.off, RX_OFF);
    assert_eq!(out.frame.len(), 60, "padded to the Ethernet minimum");
    assert!(out.frame[42..].iter().all(|&b| b == 0), "zero padding");
    let sp = SlicedPacket::from_ethernet(&out.frame).unwrap();
    let Some(LinkSlice::Ethernet2(eth)) = &sp.link else {
        panic!("Ethernet II")
    };
    assert_eq!(eth.destination(), P1_MAC.0);
    assert_eq!(eth.source(), PORT1_MAC.0);
    assert_eq!(eth.ether_type(), EtherType::ARP);
    let Some(NetSlice::Arp(a)) = &sp.net else {
        panic!("ARP")
    };
    let a = a.to_packet().try_eth_ipv4().expect("Ethernet/IPv4 ARP");
    assert_eq!(a.operation, ArpOperation::REPLY);
    assert_eq!(a.sender_mac, PORT1_MAC.0);
    assert_eq!(a.sender_ipv4_addr(), ip);
    assert_eq!(a.target_mac, P1_MAC.0);
    assert_eq!(a.target_ipv4_addr(), P1_IP);
}

#[test]
fn walk6_arp_for_the_gateway_is_answered() {
    let (out, c) = run(&tables(), P1_PORT, &ARP_REQUEST_FOR_GATEWAY);
    assert_arp_reply_to_p1(&out, GATEWAY);
    assert_eq!(c.arp_replies, 1);
    assert_eq!(total_drops(&c), 0);
}

#[test]
fn walk6_proxy_arp_for_pods_in_the_cidr() {
    for ip in [P2_IP, Ipv4Addr::new(10, 244, 1, 200)] {
        let mut f = ARP_REQUEST_FOR_GATEWAY.to_vec();
        put_ip(&mut f, ARP_TPA, ip);
        let (out, _) = run(&tables(), P1_PORT, &f);
        assert_arp_reply_to_p1(&out, ip);
    }
    // A padded request with junk padding gets a clean reply.
    let mut f = ARP_REQUEST_FOR_GATEWAY.to_vec();
    f.resize(60, 0xa5);
    let (out, _) = run(&tables(), P1_PORT, &f);
    assert_arp_reply_to_p1(&out, GATEWAY);
}

#[test]
fn walk6_arp_ignored_and_malformed() {
    let t = tables();
    let arp = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut f = ARP_REQUEST_FOR_GATEWAY.to_vec();
        edit(&mut f);
        f
    };
    // Outside the pod CIDR: another node's pod, the underlay.
    assert_dropped(
        &t,
        P1_PORT,
        &arp(&|f| put_ip(f, ARP_TPA, REMOTE_POD_IP)),
        DropReason::ArpIgnored,
    );
    assert_dropped(
        &t,
        P1_PORT,
        &arp(&|f| put_ip(f, ARP_TPA, Ipv4Addr::new(172, 30, 0, 1))),
        DropReason::ArpIgnored,
    );
    // Gratuitous ARP (sender == target), as a request.
    assert_dropped(
        &t,
        P1_PORT,
        &arp(&|f| put_ip(f, ARP_TPA, P1_IP)),
        DropReason::ArpIgnored,
    );
    // A reply.
    assert_dropped(
        &t,
        P1_PORT,
        &arp(&|f| f[ETH + 7] = 2),
        DropReason::ArpIgnored,
    );
    // A probe (RFC 5227: sender 0.0.0.0) for the gateway address.
    assert_dropped(
        &t,
        P1_PORT,
        &arp(&|f| put_ip(f, ARP_SPA, Ipv4Addr::UNSPECIFIED)),
        DropReason::ArpIgnored,
    );
    // Malformed: cut short, wrong hardware type, wrong protocol length.
    assert_dropped(
        &t,
        P1_PORT,
        &ARP_REQUEST_FOR_GATEWAY[..41],
        DropReason::ArpMalformed,
    );
    assert_dropped(
        &t,
        P1_PORT,
        &arp(&|f| f[ETH + 1] = 6),
        DropReason::ArpMalformed,
    );
    assert_dropped(
        &t,
        P1_PORT,
        &arp(&|f| f[ETH + 5] = 16),
        DropReason::ArpMalformed,
    );
}

#[test]
fn walk6_arp_reply_needs_room_for_the_minimum_frame() {
    // A 42-byte request at the very end of the chunk: the 60-byte reply
    // does not fit, and nothing past the chunk is written.
    let t = tables();
    let mut pl = Pipeline::new();
    let off = CHUNK - ARP_REQUEST_FOR_GATEWAY.len();
    let mut c = chunk_with(&ARP_REQUEST_FOR_GATEWAY, off);
    let mut pkts = [Packet::new(
        &mut c,
        off,
        ARP_REQUEST_FOR_GATEWAY.len(),
        P1_PORT,
    )];
    pl.process(T0, &t, &mut pkts);
    assert_eq!(pkts[0].verdict, Verdict::Drop(DropReason::NoHeadroom));
}

// ---------------------------------------------------------------------------
// Walk 6: ICMP errors
// ---------------------------------------------------------------------------

#[test]
fn walk6_ttl_expiring_towards_a_pod_sends_time_exceeded() {
    for ttl in [1u8, 0] {
        let f = with_ttl(&P1_TO_P2_UDP, ETH, ttl);
        let (out, c) = run(&tables(), P1_PORT, &f);
        assert_eq!(out.verdict, Verdict::Tx(P1_PORT), "back to p1");
        assert_eq!(out.off, RX_OFF - 28, "IPv4 + ICMP headers in front");
        let e = parse_icmp_error(&out.frame);
        assert_eq!(e.eth_dst, P1_MAC.0);
        assert_eq!(e.eth_src, PORT1_MAC.0);
        assert_eq!((e.ip_src, e.ip_dst), (GATEWAY, P1_IP));
        assert_eq!((e.ty, e.code), (11, 0), "time exceeded in transit");
        assert_eq!(e.rest, [0; 4]);
        assert_eq!(e.quote, quote_of(&f, ETH), "original IP header + 8 bytes");
        assert_eq!(e.quote[8], ttl, "quoted as received");
        assert_eq!(out.frame.len(), ETH + 20 + 8 + 28);
        assert_eq!(c.drop_count(DropReason::TtlExceeded), 1);
        assert_eq!(total_drops(&c), 1);
        assert_eq!(c.icmp_errors_sent, 1);
    }
}

#[test]
fn walk6_ttl_expiring_towards_another_node_sends_time_exceeded() {
    let f = with_ttl(&P1_TO_P2_TCP, ETH, 1);
    let f = to_dst(&f, REMOTE_POD_IP);
    let (out, c) = run(&tables(), P1_PORT, &f);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.ty, e.code), (11, 0));
    assert_eq!(e.quote, quote_of(&f, ETH));
    assert_eq!(c.drop_count(DropReason::TtlExceeded), 1);
    assert_eq!(c.encapsulated, 0);
}

#[test]
fn walk6_decapsulated_ttl_expiry_goes_back_over_the_overlay() {
    let f = with_ttl(&VXLAN_FROM_REMOTE, INNER_IP, 1);
    let (out, c) = run(&tables(), UPLINK, &f);
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    let enc = parse_encapped(&out.frame);
    let e = parse_icmp_error(&enc.inner);
    assert_eq!(e.eth_dst, REMOTE_VTEP_MAC.0);
    assert_eq!(e.eth_src, VTEP_MAC.0);
    assert_eq!((e.ip_src, e.ip_dst), (GATEWAY, REMOTE_POD_IP));
    assert_eq!((e.ty, e.code), (11, 0));
    assert_eq!(e.quote, quote_of(&f, INNER_IP));
    assert_eq!(c.drop_count(DropReason::TtlExceeded), 1);
    assert!(out.off + out.frame.len() <= CHUNK);
}

#[test]
fn walk6_no_route_sends_unreachable() {
    // Outside the cluster: net unreachable; inside it but no node: host.
    for (dst, code) in [
        (Ipv4Addr::new(10, 250, 0, 1), icmp::code::NET_UNREACHABLE),
        (Ipv4Addr::new(8, 8, 8, 8), icmp::code::NET_UNREACHABLE),
        (Ipv4Addr::new(10, 244, 9, 9), icmp::code::HOST_UNREACHABLE),
        (Ipv4Addr::new(10, 244, 1, 99), icmp::code::HOST_UNREACHABLE),
    ] {
        let f = to_dst(&P1_TO_P2_UDP, dst);
        let (out, c) = run(&tables(), P1_PORT, &f);
        assert_eq!(out.verdict, Verdict::Tx(P1_PORT), "{dst}");
        let e = parse_icmp_error(&out.frame);
        assert_eq!((e.ip_src, e.ip_dst), (GATEWAY, P1_IP));
        assert_eq!((e.ty, e.code), (3, code), "{dst}");
        assert_eq!(e.quote, quote_of(&f, ETH));
        assert_eq!(c.drop_count(DropReason::NoRoute), 1);
        assert_eq!(c.icmp_errors_sent, 1);
    }
}

#[test]
fn walk6_df_over_the_pod_mtu_sends_frag_needed() {
    let f = big_udp(REMOTE_POD_IP, usize::from(POD_MTU) + 1, true);
    let (out, c) = run(&tables(), P1_PORT, &f);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.ip_src, e.ip_dst), (GATEWAY, P1_IP));
    assert_eq!((e.ty, e.code), (3, 4), "fragmentation needed");
    assert_eq!(e.rest, [0, 0, 0x05, 0xaa], "next-hop MTU 1450 (RFC 1191)");
    assert_eq!(e.quote, quote_of(&f, ETH));
    assert_eq!(c.drop_count(DropReason::TooBig), 1);
    assert_eq!(c.encapsulated, 0);
}

#[test]
fn walk6_echo_requests_get_errors_but_icmp_errors_never_do() {
    let t = tables();
    // An echo request is not an error: its expiry is reported.
    let echo = with_ttl(&ICMP_ECHO_P1_TO_P2, ETH, 1);
    let (out, c) = run(&t, P1_PORT, &echo);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    assert_eq!(parse_icmp_error(&out.frame).quote, quote_of(&echo, ETH));
    assert_eq!(c.icmp_errors_sent, 1);
    // An ICMP error expiring, or unroutable, is dropped silently.
    let (out, c) = run(&t, P1_PORT, &ICMP_ERROR_P1_TO_P2_TTL1);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::TtlExceeded));
    assert_eq!(
        (c.drop_count(DropReason::TtlExceeded), c.icmp_errors_sent),
        (1, 0)
    );
    let unroutable = to_dst(
        &with_ttl(&ICMP_ERROR_P1_TO_P2_TTL1, ETH, 64),
        Ipv4Addr::new(10, 250, 0, 1),
    );
    let (out, c) = run(&t, P1_PORT, &unroutable);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::NoRoute));
    assert_eq!(
        (c.drop_count(DropReason::NoRoute), c.icmp_errors_sent),
        (1, 0)
    );
    // Time exceeded (type 11) is an error too.
    let te = edited(&ICMP_ERROR_P1_TO_P2_TTL1, ETH, |f| f[ETH + 20] = 11);
    assert_eq!(
        run(&t, P1_PORT, &te).0.verdict,
        Verdict::Drop(DropReason::TtlExceeded)
    );
}

#[test]
fn walk6_icmp_about_an_icmp_datagram_without_a_header() {
    // Protocol ICMP but no ICMP header at all (total_len 20): whatever the
    // chunk holds after the datagram must not decide the verdict.
    let f = edited(&ICMP_ECHO_P1_TO_P2[..ETH + 20], ETH, |f| {
        f[ETH + 2..ETH + 4].copy_from_slice(&20u16.to_be_bytes());
        f[ETH + 8] = 1;
    });
    let t = tables();
    let mut verdicts = Vec::new();
    for junk in [0u8, 3, 8, 11] {
        let mut pl = Pipeline::new();
        let mut c = chunk_with(&f, RX_OFF);
        c[RX_OFF + f.len()..].fill(junk);
        let mut pkts = [Packet::new(&mut c, RX_OFF, f.len(), P1_PORT)];
        pl.process(T0, &t, &mut pkts);
        verdicts.push(pkts[0].verdict);
    }
    assert!(
        verdicts.iter().all(|v| *v == verdicts[0]),
        "verdict depends on bytes past the frame: {verdicts:?}"
    );
    // No ICMP header, so it cannot be told from an error: no error about it.
    assert_eq!(verdicts[0], Verdict::Drop(DropReason::TtlExceeded));
}

#[test]
fn walk6_icmp_errors_need_headroom() {
    // Too close to the chunk start for 28 more bytes: dropped, no error.
    let t = tables();
    let f = with_ttl(&P1_TO_P2_UDP, ETH, 1);
    let mut pl = Pipeline::new();
    let mut c = chunk_with(&f, 27);
    let mut pkts = [Packet::new(&mut c, 27, f.len(), P1_PORT)];
    pl.process(T0, &t, &mut pkts);
    assert_eq!(pkts[0].verdict, Verdict::Drop(DropReason::TtlExceeded));
    assert_eq!(pl.counters().icmp_errors_sent, 0);
    assert_eq!(pl.counters().drop_count(DropReason::TtlExceeded), 1);
}

#[test]
fn walk6_icmp_errors_are_rate_limited_per_destination() {
    let t = tables();
    let f = with_ttl(&P1_TO_P2_UDP, ETH, 1);
    let mut pl = Pipeline::new();
    // p1's burst: 10 errors, then drops counted as rate-limited.
    let batch: Vec<(PortId, &[u8])> = vec![(P1_PORT, &f[..]); 150];
    let outs = process_batch(&mut pl, T0, &t, &batch);
    assert!(
        outs[..10].iter().all(|o| o.verdict == Verdict::Tx(P1_PORT)),
        "burst"
    );
    assert!(outs[10..]
        .iter()
        .all(|o| o.verdict == Verdict::Drop(DropReason::TtlExceeded)));
    let c = pl.counters();
    assert_eq!(
        (
            c.icmp_errors_sent,
            c.icmp_rate_limited,
            c.icmp_global_limited
        ),
        (10, 140, 0)
    );
    assert_eq!(
        c.drop_count(DropReason::TtlExceeded),
        150,
        "every expiry counted once"
    );
}

/// How many of `outs` were sent.
pub(super) fn sent(outs: &[Out]) -> usize {
    outs.iter()
        .filter(|o| matches!(o.verdict, Verdict::Tx(_)))
        .count()
}

#[test]
fn walk6_icmp_budgets_refill_with_time() {
    let t = tables();
    let f = with_ttl(&P1_TO_P2_UDP, ETH, 1);
    let mut pl = Pipeline::new();
    let batch: Vec<(PortId, &[u8])> = vec![(P1_PORT, &f[..]); 20];
    assert_eq!(sent(&process_batch(&mut pl, T0, &t, &batch)), 10);
    // A token every 100 ms: none after 99 ms, one at 100 ms, two more at
    // 300 ms (the 99 ms were not lost).
    assert_eq!(sent(&process_batch(&mut pl, T0 + 99 * MS, &t, &batch)), 0);
    assert_eq!(sent(&process_batch(&mut pl, T0 + 100 * MS, &t, &batch)), 1);
    assert_eq!(sent(&process_batch(&mut pl, T0 + 300 * MS, &t, &batch)), 2);
    // A long idle refills to the burst, no more.
    let later = T0 + 3_600_000 * MS;
    assert_eq!(sent(&process_batch(&mut pl, later, &t, &batch)), 10);
    assert_eq!(pl.counters().icmp_errors_sent, 23);
    assert_eq!(pl.counters().icmp_rate_limited, 20 * 5 - 23);
}

#[test]
fn walk6_one_pods_flood_spends_only_its_own_icmp_budget() {
    let t = tables();
    let flood = with_ttl(&P1_TO_P2_UDP, ETH, 1);
    let p2 = from_p2(&P1_TO_P2_TCP, 1);
    // Whatever the key, p1 and p2 have buckets of their own (one in 1024
    // keys would give them one to share).
    for seed in [0, 1, 0x6b78_6470_1c3b_0003] {
        let mut pl = Pipeline::new();
        pl.set_seed(seed);
        // p1 floods expiring datagrams; p2's one expires after them, in
        // the same batch.
        let mut batch: Vec<(PortId, &[u8])> = vec![(P1_PORT, &flood[..]); 200];
        batch.push((P2_PORT, &p2));
        let outs = process_batch(&mut pl, T0, &t, &batch);
        assert_eq!(sent(&outs[..200]), 10, "p1's burst only");
        let out = &outs[200];
        assert_eq!(out.verdict, Verdict::Tx(P2_PORT), "seed {seed:#x}");
        let e = parse_icmp_error(&out.frame);
        assert_eq!((e.eth_dst, e.eth_src), (P2_MAC.0, PORT2_MAC.0));
        assert_eq!((e.ip_src, e.ip_dst), (GATEWAY, P2_IP));
        assert_eq!((e.ty, e.code), (11, 0));
        assert_eq!(e.quote, quote_of(&p2, ETH));
        let c = pl.counters();
        assert_eq!((c.icmp_errors_sent, c.icmp_rate_limited), (11, 190));
        assert_eq!(c.drop_count(DropReason::TtlExceeded), 201);
    }
}

/// A datagram from `src`, a pod on n2, that expires here (TTL 1) on its way
/// to p1: its time exceeded goes back to `src` over the overlay.
fn expiring_from_remote(src: Ipv4Addr) -> Vec<u8> {
    edited(&VXLAN_FROM_REMOTE, INNER_IP, |f| {
        f[INNER_IP + 8] = 1;
        put_ip(f, INNER_IP + 12, src);
    })
}

#[test]
fn walk6_frag_needed_is_never_rate_limited() {
    let t = tables();
    let mut pl = Pipeline::new();
    let expiring = with_ttl(&P1_TO_P2_UDP, ETH, 1);
    let too_big = big_udp(REMOTE_POD_IP, usize::from(POD_MTU) + 1, true);
    let assert_frag_needed = |out: &Out| {
        assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
        let e = parse_icmp_error(&out.frame);
        assert_eq!((e.ip_src, e.ip_dst), (GATEWAY, P1_IP));
        assert_eq!((e.ty, e.code, e.rest), (3, 4, [0, 0, 0x05, 0xaa]));
        assert_eq!(e.quote, quote_of(&too_big, ETH));
    };
    // p1's own flood of expiring datagrams spends its budget, not its
    // path MTU discovery.
    let batch: Vec<(PortId, &[u8])> =
        [(P1_PORT, &expiring[..]), (P1_PORT, &too_big[..])].repeat(100);
    let outs = process_batch(&mut pl, T0, &t, &batch);
    outs.iter().skip(1).step_by(2).for_each(assert_frag_needed);
    assert_eq!(sent(&outs), 10 + 100);
    assert_eq!(pl.counters().icmp_rate_limited, 90);
    // Many pods' errors spend the worker's budget (100, of which p1 took
    // 10: Frag Needed took none); then p2's time exceeded is refused, and
    // p1's Frag Needed still goes out.
    let remotes: Vec<Vec<u8>> = (2..22)
        .map(|i| expiring_from_remote(Ipv4Addr::new(10, 244, 2, i)))
        .collect();
    let batch: Vec<(PortId, &[u8])> = remotes
        .iter()
        .flat_map(|f| [(UPLINK, &f[..]); 10])
        .collect();
    let outs = process_batch(&mut pl, T0, &t, &batch);
    assert_eq!(sent(&outs), 90, "the worker's budget, spent");
    let p2 = from_p2(&P1_TO_P2_TCP, 1);
    let before = pl.counters().icmp_global_limited;
    let outs = process_batch(&mut pl, T0, &t, &[(P2_PORT, &p2), (P1_PORT, &too_big)]);
    assert_eq!(outs[0].verdict, Verdict::Drop(DropReason::TtlExceeded));
    assert_eq!(pl.counters().icmp_global_limited, before + 1);
    assert_frag_needed(&outs[1]);
    assert_eq!(pl.counters().drop_count(DropReason::TooBig), 101);
}

#[test]
fn walk6_icmp_rate_is_kept_under_steady_demand() {
    // p1 and p2 spend their bursts, then each has two expiries every 1.5 ms
    // for 3 s: each bucket allows 10/s, so ~30 errors each, whatever the
    // polling cadence.
    let t = tables();
    let f1 = with_ttl(&P1_TO_P2_UDP, ETH, 1);
    let f2 = from_p2(&P1_TO_P2_UDP, 1);
    let mut pl = Pipeline::new();
    let burst: Vec<(PortId, &[u8])> = [(P1_PORT, &f1[..]), (P2_PORT, &f2[..])].repeat(10);
    assert_eq!(sent(&process_batch(&mut pl, T0, &t, &burst)), 20);
    let mut to = [0, 0];
    for i in 1..=2000u64 {
        for o in process_batch(&mut pl, T0 + i * 1_500_000, &t, &burst[..4]) {
            match o.verdict {
                Verdict::Tx(P1_PORT) => to[0] += 1,
                Verdict::Tx(P2_PORT) => to[1] += 1,
                _ => {}
            }
        }
    }
    assert_eq!(to, [30, 30], "errors to p1 and p2 in 3 s at 10/s each");
}

// ---------------------------------------------------------------------------
// Malformed frames and configuration
// ---------------------------------------------------------------------------

/// Frames from p1 that must be dropped, with the reason.
fn malformed_from_p1() -> Vec<(&'static str, Vec<u8>, DropReason)> {
    let u = &P1_TO_P2_UDP[..ETH + 32];
    let with_hdr = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut f = u.to_vec();
        edit(&mut f);
        fix_ipv4_checksum(&mut f, ETH);
        f
    };
    // A 24-byte header: Router Alert (RFC 2113) before the UDP header.
    let mut options = u[..ETH + 20].to_vec();
    options.extend_from_slice(&[0x94, 0x04, 0x00, 0x00]);
    options.extend_from_slice(&u[ETH + 20..]);
    options[ETH] = 0x46;
    options[ETH + 3] = 36;
    fix_ipv4_checksum(&mut options, ETH);
    let mut bad_sum = u.to_vec();
    bad_sum[ETH + 10] ^= 0x80;
    vec![
        ("empty", vec![], DropReason::EthTruncated),
        ("13 bytes", u[..13].to_vec(), DropReason::EthTruncated),
        ("header only", u[..ETH].to_vec(), DropReason::Ipv4Truncated),
        (
            "19 IPv4 bytes",
            u[..ETH + 19].to_vec(),
            DropReason::Ipv4Truncated,
        ),
        (
            "version 6 in IPv4",
            with_hdr(&|f| f[ETH] = 0x65),
            DropReason::Ipv4BadVersion,
        ),
        (
            "version 0",
            with_hdr(&|f| f[ETH] = 0x05),
            DropReason::Ipv4BadVersion,
        ),
        (
            "ihl 4",
            with_hdr(&|f| f[ETH] = 0x44),
            DropReason::Ipv4BadIhl,
        ),
        (
            "ihl 0",
            with_hdr(&|f| f[ETH] = 0x40),
            DropReason::Ipv4BadIhl,
        ),
        (
            "ihl past the end",
            with_hdr(&|f| f[ETH] = 0x4f),
            DropReason::Ipv4Truncated,
        ),
        (
            "total_len > frame",
            with_hdr(&|f| f[ETH + 3] = 33),
            DropReason::Ipv4Truncated,
        ),
        (
            "total_len < header",
            with_hdr(&|f| f[ETH + 3] = 19),
            DropReason::Ipv4BadLength,
        ),
        ("options", options, DropReason::Ipv4Options),
        (
            "first UDP fragment without the whole UDP header",
            with_hdr(&|f| {
                f[ETH + 6] = 0x20;
                f[ETH + 3] = 27;
            }),
            DropReason::FragmentMalformed,
        ),
        (
            "first TCP fragment without the whole TCP header",
            with_hdr(&|f| {
                f[ETH + 6] = 0x20;
                f[ETH + 9] = ipv4::protocol::TCP;
            }),
            DropReason::FragmentMalformed,
        ),
        (
            "later TCP fragment overlapping the TCP header",
            with_hdr(&|f| {
                f[ETH + 6..ETH + 8].copy_from_slice(&[0x00, 0x02]);
                f[ETH + 9] = ipv4::protocol::TCP;
            }),
            DropReason::FragmentMalformed,
        ),
        (
            "last fragment past 65,535 bytes",
            with_hdr(&|f| f[ETH + 6..ETH + 8].copy_from_slice(&[0x1f, 0xfe])),
            DropReason::FragmentMalformed,
        ),
        ("bad header checksum", bad_sum, DropReason::Ipv4BadChecksum),
        (
            "ipv6 ethertype",
            with_hdr(&|f| f[12..14].copy_from_slice(&[0x86, 0xdd])),
            DropReason::UnsupportedEthertype,
        ),
        (
            "vlan tag",
            with_hdr(&|f| f[12..14].copy_from_slice(&[0x81, 0x00])),
            DropReason::UnsupportedEthertype,
        ),
        (
            "spoofed source (p2's)",
            with_hdr(&|f| put_ip(f, ETH + 12, P2_IP)),
            DropReason::SourceMismatch,
        ),
        (
            "spoofed source (outside)",
            with_hdr(&|f| put_ip(f, ETH + 12, Ipv4Addr::new(1, 2, 3, 4))),
            DropReason::SourceMismatch,
        ),
        (
            "to the gateway",
            with_hdr(&|f| put_ip(f, ETH + 16, GATEWAY)),
            DropReason::ToGateway,
        ),
        (
            "limited broadcast",
            with_hdr(&|f| put_ip(f, ETH + 16, Ipv4Addr::BROADCAST)),
            DropReason::Ipv4Martian,
        ),
        (
            "multicast",
            with_hdr(&|f| put_ip(f, ETH + 16, Ipv4Addr::new(224, 0, 0, 251))),
            DropReason::Ipv4Martian,
        ),
        (
            "unspecified",
            with_hdr(&|f| put_ip(f, ETH + 16, Ipv4Addr::UNSPECIFIED)),
            DropReason::Ipv4Martian,
        ),
    ]
}

#[test]
fn malformed_frames_get_their_exact_reason() {
    let t = tables();
    for (name, f, reason) in malformed_from_p1() {
        let (out, c) = run(&t, P1_PORT, &f);
        assert_eq!(out.verdict, Verdict::Drop(reason), "{name}");
        assert_eq!(c.drop_count(reason), 1, "{name}");
        assert_eq!(total_drops(&c), 1, "{name}");
        assert_eq!(c.icmp_errors_sent, 0, "{name}");
    }
}

#[test]
fn malformed_frames_do_not_disturb_their_batch() {
    let t = tables();
    let good: Vec<(PortId, Vec<u8>)> = vec![
        (P1_PORT, P1_TO_P2_UDP.to_vec()),
        (P1_PORT, P1_TO_REMOTE_UDP.to_vec()),
        (UPLINK, VXLAN_FROM_REMOTE.to_vec()),
        (P1_PORT, ARP_REQUEST_FOR_GATEWAY.to_vec()),
        (P1_PORT, P1_TO_P2_TCP.to_vec()),
        (P1_PORT, with_ttl(&P1_TO_P2_UDP, ETH, 1)),
    ];
    let bad = malformed_from_p1();
    // Interleave: good, bad, bad, good, ...
    let mut batch: Vec<(PortId, &[u8], Option<usize>)> = Vec::new();
    let mut bi = bad.iter();
    for (i, (port, f)) in good.iter().enumerate() {
        batch.push((*port, f, Some(i)));
        for _ in 0..4 {
            if let Some((_, f, _)) = bi.next() {
                batch.push((P1_PORT, f, None));
            }
        }
    }
    for (_, f, _) in bi {
        batch.push((P1_PORT, f, None));
    }
    let inputs: Vec<(PortId, &[u8])> = batch.iter().map(|(p, f, _)| (*p, *f)).collect();
    let mut pl = Pipeline::new();
    let outs = process_batch(&mut pl, T0, &t, &inputs);
    let mut bad_reasons = bad.iter().map(|(_, _, r)| *r);
    for ((port, f, good_i), out) in batch.iter().zip(&outs) {
        match good_i {
            Some(_) => {
                let (alone, _) = run(&t, *port, f);
                assert_eq!(out.verdict, alone.verdict);
                assert!(matches!(out.verdict, Verdict::Tx(_)));
                assert_eq!((out.off, &out.frame), (alone.off, &alone.frame));
            }
            None => assert_eq!(out.verdict, Verdict::Drop(bad_reasons.next().unwrap())),
        }
    }
    let c = pl.counters();
    assert_eq!(
        total_drops(c),
        bad.len() as u64 + 1,
        "malformed + the TTL expiry"
    );
    assert_eq!(
        (
            c.routed_local,
            c.encapsulated,
            c.decapsulated,
            c.arp_replies
        ),
        (4, 1, 1, 1)
    );
}

#[test]
fn configuration_drops() {
    // Before the first sync.
    assert_dropped(
        &Tables::default(),
        P1_PORT,
        &P1_TO_P2_UDP,
        DropReason::NotConfigured,
    );
    assert_dropped(
        &Tables::default(),
        UPLINK,
        &VXLAN_FROM_REMOTE,
        DropReason::NotConfigured,
    );
    // Ports the tables do not know: past the end, or a hole.
    let t = tables();
    assert_dropped(&t, UNKNOWN_PORT, &P1_TO_P2_UDP, DropReason::UnknownPort);
    assert_dropped(&t, PortId::MAX, &P1_TO_P2_UDP, DropReason::UnknownPort);
    let mut holes = tables();
    holes.set_port(
        5,
        PortInfo {
            kind: PortKind::Pod {
                ip: Ipv4Addr::new(10, 244, 1, 9),
            },
            mac: PORT1_MAC,
        },
    );
    assert_dropped(&holes, 4, &P1_TO_P2_UDP, DropReason::UnknownPort);
    // A local pod whose port is gone: host unreachable back to the sender.
    let mut gone = tables();
    gone.ports[usize::from(P2_PORT)] = None;
    let (out, c) = run(&gone, P1_PORT, &P1_TO_P2_UDP);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.ty, e.code), (3, 1));
    assert_eq!(c.drop_count(DropReason::NoRoute), 1);
}

#[test]
fn frame_ranges_outside_the_chunk_are_rejected() {
    let t = tables();
    let mut pl = Pipeline::new();
    let mut c = chunk_with(&P1_TO_P2_UDP, RX_OFF);
    for (off, len) in [
        (CHUNK - 10, 60),
        (CHUNK, 14),
        (CHUNK + 1, 0),
        (usize::MAX, 60),
        (RX_OFF, usize::MAX),
        (usize::MAX, usize::MAX),
    ] {
        let mut pkts = [Packet::new(&mut c, off, len, P1_PORT)];
        pl.process(T0, &t, &mut pkts);
        assert_eq!(
            pkts[0].verdict,
            Verdict::Drop(DropReason::EthTruncated),
            "{off}+{len}"
        );
    }
}

// ---------------------------------------------------------------------------
// Counters and drop reasons
// ---------------------------------------------------------------------------

#[test]
fn counters_merge_sums_every_field() {
    let mut a = Counters::default();
    let mut b = Counters::default();
    for (i, r) in DropReason::ALL.iter().enumerate() {
        a.drops[*r as usize] = i as u64;
        b.drops[*r as usize] = 1000 * i as u64 + 1;
    }
    a.arp_replies = 1;
    a.icmp_errors_sent = 2;
    a.icmp_rate_limited = 3;
    a.icmp_global_limited = 11;
    a.encapsulated = 4;
    a.decapsulated = 5;
    a.routed_local = 6;
    a.resets_sent = 7;
    a.handed_off = 8;
    a.flow_cache_hits = 9;
    a.source_ports_remapped = 10;
    a.egress_flows = 15;
    a.egress_routed = 16;
    a.fragments_translated = 12;
    a.fragments_evicted = 13;
    a.fragments_to_host = 14;
    a.snat_ports_reclaimed = 17;
    a.policy_flows_allowed = 18;
    a.flow_cache_misses = 19;
    b.arp_replies = 10;
    b.icmp_errors_sent = 20;
    b.icmp_rate_limited = 30;
    b.icmp_global_limited = 110;
    b.encapsulated = 40;
    b.decapsulated = 50;
    b.routed_local = 60;
    b.resets_sent = 70;
    b.handed_off = 80;
    b.flow_cache_hits = 90;
    b.source_ports_remapped = 100;
    b.egress_flows = 150;
    b.egress_routed = 160;
    b.fragments_translated = 120;
    b.fragments_evicted = 130;
    b.fragments_to_host = 140;
    b.snat_ports_reclaimed = 170;
    b.policy_flows_allowed = 180;
    b.flow_cache_misses = 190;
    let mut m = a.clone();
    m.merge(&b);
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(m.drop_count(*r), 1001 * i as u64 + 1, "{r:?}");
    }
    let Counters {
        drops: _,
        arp_replies,
        icmp_errors_sent,
        icmp_rate_limited,
        icmp_global_limited,
        encapsulated,
        decapsulated,
        routed_local,
        resets_sent,
        handed_off,
        flow_cache_hits,
        source_ports_remapped,
        egress_flows,
        egress_routed,
        fragments_translated,
        fragments_evicted,
        fragments_to_host,
        snat_ports_reclaimed,
        policy_flows_allowed,
        flow_cache_misses,
    } = m;
    assert_eq!(
        [
            arp_replies,
            icmp_errors_sent,
            icmp_rate_limited,
            icmp_global_limited,
            encapsulated,
            decapsulated,
            routed_local,
            resets_sent,
            handed_off,
            flow_cache_hits,
            source_ports_remapped,
            fragments_translated,
            fragments_evicted,
            fragments_to_host,
            egress_flows,
            egress_routed,
            snat_ports_reclaimed,
            policy_flows_allowed,
            flow_cache_misses
        ],
        [11, 22, 33, 121, 44, 55, 66, 77, 88, 99, 110, 132, 143, 154, 165, 176, 187, 198, 209]
    );
    // Merging nothing changes nothing.
    let mut z = a.clone();
    z.merge(&Counters::default());
    assert_eq!(z, a);
}

/// Every variant, by exhaustive match: adding a variant without listing it
/// here fails to compile, and the test then checks `ALL` and `name()`.
fn variant_index(r: DropReason) -> usize {
    use DropReason::*;
    match r {
        NotConfigured => 0,
        UnknownPort => 1,
        EthTruncated => 2,
        UnsupportedEthertype => 3,
        ArpMalformed => 4,
        ArpIgnored => 5,
        Ipv4Truncated => 6,
        Ipv4BadVersion => 7,
        Ipv4BadIhl => 8,
        Ipv4BadLength => 9,
        Ipv4BadChecksum => 10,
        Ipv4Options => 11,
        Ipv4Fragment => 12,
        Ipv4Martian => 13,
        SourceMismatch => 14,
        TtlExceeded => 15,
        NoRoute => 16,
        ToGateway => 17,
        TooBig => 18,
        NeighbourUnresolved => 19,
        NoUplink => 20,
        NotOurs => 21,
        UdpMalformed => 22,
        VxlanMalformed => 23,
        VxlanBadVni => 24,
        VxlanUnknownVtep => 25,
        VxlanSpoofedSource => 26,
        NoHeadroom => 27,
        NoEndpoint => 28,
        BackendGone => 29,
        NoConntrack => 30,
        ConntrackFull => 31,
        HandoffFull => 32,
        NatPortsExhausted => 33,
        EgressUntranslatable => 34,
        FragmentWithoutFirst => 35,
        FragmentMalformed => 36,
        NoLocalEndpoint => 37,
        HandoffLoop => 38,
        PolicyDeniedEgress => 39,
        PolicyDeniedIngress => 40,
        PolicyFlowClash => 41,
    }
}

#[test]
fn drop_reasons_are_all_listed_in_order_with_unique_snake_case_names() {
    assert_eq!(DropReason::ALL.len(), DropReason::COUNT);
    // The number of arms in `variant_index`: ALL can't leave one out.
    assert_eq!(DropReason::COUNT, 42);
    let mut names = HashSet::new();
    for (i, r) in DropReason::ALL.iter().enumerate() {
        assert_eq!(*r as usize, i, "ALL in discriminant order");
        assert_eq!(variant_index(*r), i, "{r:?}");
        let n = r.name();
        assert!(names.insert(n), "duplicate name {n}");
        assert!(
            !n.is_empty()
                && n.starts_with(|c: char| c.is_ascii_lowercase())
                && !n.ends_with('_')
                && !n.contains("__")
                && n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{n} is not snake_case"
        );
        // The name is the variant's, in snake_case.
        let debug = format!("{r:?}");
        let mut snake = String::new();
        for (j, ch) in debug.chars().enumerate() {
            if ch.is_ascii_uppercase() && j > 0 {
                snake.push('_');
            }
            snake.push(ch.to_ascii_lowercase());
        }
        assert_eq!(n, snake, "{r:?}");
    }
}

// ---------------------------------------------------------------------------
// Robustness: random and mutated frames
// ---------------------------------------------------------------------------

/// The good vectors, with the port each arrives on.
fn seeds() -> Vec<(&'static str, PortId, Vec<u8>)> {
    vec![
        ("p1_to_p2_udp", P1_PORT, P1_TO_P2_UDP.to_vec()),
        ("p1_to_p2_tcp", P1_PORT, P1_TO_P2_TCP.to_vec()),
        ("p1_to_remote_udp", P1_PORT, P1_TO_REMOTE_UDP.to_vec()),
        ("vxlan_from_remote", UPLINK, VXLAN_FROM_REMOTE.to_vec()),
        (
            "arp_request_for_gateway",
            P1_PORT,
            ARP_REQUEST_FOR_GATEWAY.to_vec(),
        ),
        ("icmp_echo_p1_to_p2", P1_PORT, ICMP_ECHO_P1_TO_P2.to_vec()),
        (
            "icmp_error_p1_to_p2_ttl1",
            P1_PORT,
            ICMP_ERROR_P1_TO_P2_TTL1.to_vec(),
        ),
        ("p1_ttl1_to_p2", P1_PORT, with_ttl(&P1_TO_P2_UDP, ETH, 1)),
        ("p1_df_too_big", P1_PORT, big_udp(REMOTE_POD_IP, 1451, true)),
        (
            "vxlan_ttl1",
            UPLINK,
            with_ttl(&VXLAN_FROM_REMOTE, INNER_IP, 1),
        ),
        (
            "p1_first_fragment_to_p2",
            P1_PORT,
            edited(&P1_TO_P2_UDP[..ETH + 32], ETH, |f| f[ETH + 6] = 0x20),
        ),
        (
            "p1_later_fragment_to_remote",
            P1_PORT,
            edited(&P1_TO_REMOTE_UDP, ETH, |f| f[ETH + 7] = 0xb9),
        ),
        (
            "vxlan_inner_last_fragment",
            UPLINK,
            edited(&VXLAN_FROM_REMOTE, INNER_IP, |f| f[INNER_IP + 7] = 0x01),
        ),
        (
            "uplink_later_fragment_to_the_node",
            UPLINK,
            edited(&VXLAN_FROM_REMOTE, ETH, |f| f[ETH + 6] = 0x21),
        ),
    ]
}

/// Checks what the pipeline may promise about any frame, good or not.
#[track_caller]
fn assert_sane(t: &Tables, p: &Packet<'_>, input_port: PortId) {
    match p.verdict {
        Verdict::Drop(_) => {}
        Verdict::Handoff(w) => panic!("hand-off to worker {w} from a single-worker pipeline"),
        Verdict::Tx(port) => {
            assert!(t.port(port).is_some(), "Tx to unknown port {port}");
            let end = p.off.checked_add(p.len).expect("frame end overflows");
            assert!(
                end <= p.buf.len(),
                "frame {}..{end} outside the chunk",
                p.off
            );
            let f = p.frame();
            assert!(f.len() >= ETH);
            match u16::from_be_bytes([f[12], f[13]]) {
                ethernet::ethertype::ARP => {
                    assert_eq!(port, input_port, "ARP replies go back");
                    assert_eq!(f.len(), 60);
                }
                ethernet::ethertype::IPV4 => {
                    // Every IPv4 header sent is valid, outer and inner.
                    assert_ipv4_checksum(&f[ETH..]);
                    let (h, _) = Ipv4Header::from_slice(&f[ETH..]).unwrap();
                    assert_eq!(usize::from(h.total_len), f.len() - ETH, "no trailing bytes");
                    if port == UPLINK {
                        let e = parse_encapped(f);
                        assert_ipv4_checksum(&e.inner[ETH..]);
                    } else {
                        assert_eq!(
                            t.port(port).unwrap().kind,
                            PortKind::Pod {
                                ip: h.destination.into()
                            }
                        );
                    }
                }
                other => panic!("sent ethertype {other:#06x}"),
            }
        }
    }
}

#[test]
fn random_and_mutated_frames_never_panic_and_stay_sane() {
    let seeds = seeds();
    let configs = [tables(), tables_with(None), {
        let mut t = tables();
        t.ports[0] = None;
        t.uplink = None;
        t
    }];
    let mut rng = XorShift(0x6b78_6470_0000_0001);
    let mut now = T0;
    let mut chunks: Vec<Vec<u8>> = (0..BATCH_SIZE).map(|_| vec![0u8; CHUNK]).collect();
    let mut pl = Pipeline::new();
    let mut frames = 0;
    let mut txs = 0u64;
    let mut drops = 0u64;
    while frames < 20_000 {
        let t = &configs[rng.below(configs.len())];
        let n = 1 + rng.below(BATCH_SIZE);
        let mut meta = Vec::with_capacity(n);
        for c in chunks.iter_mut().take(n) {
            // Old contents stay: the pipeline must not read past the frame.
            let (port, off, len) = match rng.below(8) {
                // Pure noise, any length, any port.
                0 => {
                    let len = rng.below(1601);
                    let off = rng.below(CHUNK + 1 - len);
                    rng.fill(&mut c[off..off + len]);
                    (rng.below(4) as PortId, off, len)
                }
                // Random offset and length, possibly outside the chunk.
                1 => {
                    let (_, port, s) = &seeds[rng.below(seeds.len())];
                    let off = rng.below(CHUNK + 1);
                    let n = s.len().min(CHUNK - off);
                    c[off..off + n].copy_from_slice(&s[..n]);
                    (*port, off, rng.below(1601))
                }
                // A good vector, mutated.
                _ => {
                    let (_, port, s) = &seeds[rng.below(seeds.len())];
                    let off = if rng.below(4) == 0 {
                        rng.below(CHUNK - s.len() + 1)
                    } else {
                        RX_OFF
                    };
                    let f = &mut c[off..off + s.len()];
                    f.copy_from_slice(s);
                    for _ in 0..1 + rng.below(6) {
                        let i = rng.below(f.len());
                        f[i] = mutated(&mut rng, f[i], &[0, 1, 5, 0x20, 0x40, 0x45, 0x80, 0xff]);
                    }
                    // Often make the headers' checksums valid again, so the
                    // mutation reaches the deeper checks.
                    if rng.below(2) == 0 && f.len() >= ETH + 20 {
                        fix_ipv4_checksum(f, ETH);
                        if *port == UPLINK && f.len() >= INNER_IP + 20 {
                            fix_ipv4_checksum(f, INNER_IP);
                        }
                    }
                    let len = match rng.below(4) {
                        0 => rng.below(s.len() + 1),
                        1 => (s.len() + rng.below(64)).min(CHUNK - off),
                        _ => s.len(),
                    };
                    (*port, off, len)
                }
            };
            meta.push((port, off, len));
        }
        let mut pkts: Vec<Packet<'_>> = chunks
            .iter_mut()
            .zip(&meta)
            .map(|(c, &(port, off, len))| Packet::new(c, off, len, port))
            .collect();
        now += rng.below(2_000_000) as u64;
        pl.process(now, t, &mut pkts);
        for (p, &(port, ..)) in pkts.iter().zip(&meta) {
            assert_sane(t, p, port);
            match p.verdict {
                Verdict::Tx(_) => txs += 1,
                Verdict::Drop(_) => drops += 1,
                Verdict::Handoff(_) => unreachable!("checked by assert_sane"),
            }
        }
        frames += n;
    }
    // Bookkeeping holds over the whole run: every frame is sent or dropped,
    // each sent frame counted by its walk, each drop by its reason (an ICMP
    // error counts the original's drop and is sent).
    let c = pl.counters();
    assert_eq!(txs + drops, frames as u64);
    assert_eq!(txs, c.routed_local + c.encapsulated + c.arp_replies);
    assert_eq!(total_drops(c), drops + c.icmp_errors_sent);
    // The mutations reached every walk.
    assert!(
        c.routed_local > 100 && c.encapsulated > 100 && c.decapsulated > 100,
        "{c:?}"
    );
    assert!(c.arp_replies > 100 && c.icmp_errors_sent > 100, "{c:?}");
}

/// Writes the fuzz target's seed corpus from the vectors:
/// `cargo test -p kxdp-core -- --ignored write_fuzz_seeds`.
/// Format (fuzz/fuzz_targets/pipeline.rs): byte 0 is the port (0 uplink,
/// 1 p1; upper bits 0: these tables), byte 1 the receive offset in 8-byte
/// units (32 = 256), the rest the frame.
#[test]
#[ignore]
fn write_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/pipeline");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, port, frame) in seeds() {
        let mut data = vec![port as u8, (RX_OFF / 8) as u8];
        data.extend_from_slice(&frame);
        std::fs::write(dir.join(name), data).unwrap();
    }
}
