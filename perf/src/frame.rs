//! Probe frames: building them (etherparse), patching the per-packet fields
//! in place, and finding the probe again in a received frame.
//!
//! A probe is the first [`PROBE_LEN`] bytes of the L4 payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | magic `0x4b58` ("KX") |
//! | 2..4 | flow index (big endian) |
//! | 4..12 | per-flow sequence number, from 0 |
//! | 12..20 | CLOCK_MONOTONIC at the generator, ns |
//!
//! The rest of the payload is zero padding up to the requested frame size.
//! The L4 checksum is kept valid with an incremental update (RFC 1624):
//! each flow's template is built with sequence and timestamp 0, so the new
//! checksum is the template's plus the words of the two fields.

use std::net::Ipv4Addr;

use anyhow::{bail, Context};
use etherparse::PacketBuilder;

/// Magic at the start of every probe.
pub const MAGIC: u16 = 0x4b58;
/// Bytes of probe at the start of the L4 payload.
pub const PROBE_LEN: usize = 20;
const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const UDP_LEN: usize = 8;
const TCP_LEN: usize = 20;
/// Default VXLAN port: probes inside VXLAN to this port are found too.
pub const VXLAN_PORT: u16 = 4789;

/// Transport of the generated frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Proto {
    Udp,
    TcpSyn,
}

impl std::str::FromStr for Proto {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Proto> {
        match s {
            "udp" => Ok(Proto::Udp),
            "tcp-syn" | "tcp" => Ok(Proto::TcpSyn),
            _ => bail!("unknown protocol '{s}' (udp|tcp-syn)"),
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Udp => "udp",
            Proto::TcpSyn => "tcp-syn",
        })
    }
}

impl Proto {
    fn l4_len(self) -> usize {
        match self {
            Proto::Udp => UDP_LEN,
            Proto::TcpSyn => TCP_LEN,
        }
    }

    /// Offset of the L4 checksum in the frame.
    fn csum_off(self) -> usize {
        ETH_LEN
            + IPV4_LEN
            + match self {
                Proto::Udp => 6,
                Proto::TcpSyn => 16,
            }
    }

    /// Offset of the probe (L4 payload) in the frame.
    pub fn payload_off(self) -> usize {
        ETH_LEN + IPV4_LEN + self.l4_len()
    }

    /// Smallest frame that holds a probe.
    pub fn min_frame(self) -> usize {
        self.payload_off() + PROBE_LEN
    }
}

/// What every generated frame has in common.
#[derive(Debug, Clone)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub dst_port: u16,
    /// Flow i uses source port `src_port_base + i`.
    pub src_port_base: u16,
    /// Ethernet frame length without FCS.
    pub size: usize,
    pub flows: u16,
    pub proto: Proto,
}

impl FrameSpec {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.flows == 0 {
            bail!("--flows must be at least 1");
        }
        if self.size < self.proto.min_frame() {
            bail!(
                "--size {} is too small for a {} probe (at least {} bytes)",
                self.size,
                self.proto,
                self.proto.min_frame()
            );
        }
        if self.size > 1514 {
            bail!("--size {} is above 1514 (no jumbo frames)", self.size);
        }
        if u32::from(self.src_port_base) + u32::from(self.flows) > 65536 {
            bail!(
                "source ports {}+{} overflow",
                self.src_port_base,
                self.flows
            );
        }
        Ok(())
    }
}

/// One flow's frame with sequence 0 and timestamp 0, and its L4 checksum.
#[derive(Debug, Clone)]
pub struct Template {
    pub bytes: Vec<u8>,
    proto: Proto,
    /// The template's L4 checksum (seq = ts = 0).
    csum: u16,
}

impl Template {
    /// Builds flow `flow` of `spec`.
    pub fn build(spec: &FrameSpec, flow: u16) -> anyhow::Result<Template> {
        spec.validate()?;
        let payload_len = spec.size - spec.proto.payload_off();
        let mut payload = vec![0u8; payload_len];
        payload[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        payload[2..4].copy_from_slice(&flow.to_be_bytes());
        let sport = spec.src_port_base + flow;
        let ip = PacketBuilder::ethernet2(spec.src_mac, spec.dst_mac).ipv4(
            spec.src_ip.octets(),
            spec.dst_ip.octets(),
            64,
        );
        let mut bytes = Vec::with_capacity(spec.size);
        match spec.proto {
            Proto::Udp => ip
                .udp(sport, spec.dst_port)
                .write(&mut bytes, &payload)
                .context("building UDP frame")?,
            Proto::TcpSyn => ip
                .tcp(sport, spec.dst_port, 1, 64240)
                .syn()
                .write(&mut bytes, &payload)
                .context("building TCP SYN frame")?,
        }
        debug_assert_eq!(bytes.len(), spec.size);
        let off = spec.proto.csum_off();
        let csum = u16::from_be_bytes([bytes[off], bytes[off + 1]]);
        Ok(Template {
            bytes,
            proto: spec.proto,
            csum,
        })
    }

    /// Bytes that differ between flows and packets (headers and probe):
    /// copying this prefix over a frame that already holds any flow's
    /// template of the same spec makes it this flow's.
    pub fn head_len(&self) -> usize {
        self.proto.payload_off() + PROBE_LEN
    }

    /// Writes this flow's headers and the probe (`seq`, `ts_ns`) into
    /// `frame`, which holds a template of the same spec (padding included).
    pub fn write_into(&self, frame: &mut [u8], seq: u64, ts_ns: u64) {
        let head = self.head_len();
        frame[..head].copy_from_slice(&self.bytes[..head]);
        let p = self.proto.payload_off();
        frame[p + 4..p + 12].copy_from_slice(&seq.to_be_bytes());
        frame[p + 12..p + 20].copy_from_slice(&ts_ns.to_be_bytes());
        // RFC 1624: HC' = ~(~HC + m') where the old words were all 0.
        let mut sum = u32::from(!self.csum);
        for v in [seq, ts_ns] {
            sum += (v >> 48) as u32 & 0xffff;
            sum += (v >> 32) as u32 & 0xffff;
            sum += (v >> 16) as u32 & 0xffff;
            sum += v as u32 & 0xffff;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let mut csum = !(sum as u16);
        if csum == 0 && self.proto == Proto::Udp {
            // 0 means "no checksum" in UDP over IPv4.
            csum = 0xffff;
        }
        let c = self.proto.csum_off();
        frame[c..c + 2].copy_from_slice(&csum.to_be_bytes());
    }
}

/// A probe found in a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub flow: u16,
    pub seq: u64,
    pub ts_ns: u64,
    /// True when it was found inside a VXLAN packet.
    pub encapsulated: bool,
}

/// Finds the probe in an Ethernet/IPv4/{UDP,TCP} frame, looking once inside
/// VXLAN (UDP to `vxlan_port`) so that a sink on an underlay sees it too.
/// Fixed-offset parsing: this runs per received frame in the sink.
pub fn parse_probe(frame: &[u8], vxlan_port: u16) -> Option<Probe> {
    parse_at(frame, vxlan_port, false)
}

fn parse_at(frame: &[u8], vxlan_port: u16, inner: bool) -> Option<Probe> {
    if frame.len() < ETH_LEN + IPV4_LEN || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETH_LEN..];
    if ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < IPV4_LEN || total < ihl || total > ip.len() {
        return None;
    }
    // Fragments other than the first carry no L4 header.
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return None;
    }
    let l4 = &ip[ihl..total];
    let payload = match ip[9] {
        17 => {
            if l4.len() < UDP_LEN {
                return None;
            }
            let dport = u16::from_be_bytes([l4[2], l4[3]]);
            if dport == vxlan_port && !inner && l4.len() >= UDP_LEN + 8 {
                return parse_at(&l4[UDP_LEN + 8..], vxlan_port, true);
            }
            &l4[UDP_LEN..]
        }
        6 => {
            if l4.len() < TCP_LEN {
                return None;
            }
            let doff = usize::from(l4[12] >> 4) * 4;
            if doff < TCP_LEN || doff > l4.len() {
                return None;
            }
            &l4[doff..]
        }
        _ => return None,
    };
    if payload.len() < PROBE_LEN || payload[0..2] != MAGIC.to_be_bytes() {
        return None;
    }
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[o..o + 8]);
        u64::from_be_bytes(b)
    };
    Some(Probe {
        flow: u16::from_be_bytes([payload[2], payload[3]]),
        seq: u64_at(4),
        ts_ns: u64_at(12),
        encapsulated: inner,
    })
}

/// The (inner, if encapsulated) headers of a probe frame as the sink saw
/// them: which addresses and ports the datapath left on it, and whether
/// its checksums are still right. Parsed once per run (the first probe),
/// not per frame.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProbeHeaders {
    pub proto: String,
    pub src: std::net::SocketAddrV4,
    pub dst: std::net::SocketAddrV4,
    pub ttl: u8,
    pub encapsulated: bool,
    pub ipv4_checksum_ok: bool,
    /// None: UDP without a checksum (0).
    pub l4_checksum_ok: Option<bool>,
}

impl std::fmt::Display for ProbeHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ok = |b: bool| if b { "ok" } else { "BAD" };
        write!(
            f,
            "{} {} -> {}, ttl {}{}, ipv4 csum {}, l4 csum {}",
            self.proto,
            self.src,
            self.dst,
            self.ttl,
            if self.encapsulated { ", in VXLAN" } else { "" },
            ok(self.ipv4_checksum_ok),
            self.l4_checksum_ok.map(ok).unwrap_or("none")
        )
    }
}

/// [`ProbeHeaders`] of `frame`, if it holds a probe ([`parse_probe`]).
pub fn probe_headers(frame: &[u8], vxlan_port: u16) -> Option<ProbeHeaders> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let probe = parse_probe(frame, vxlan_port)?;
    let mut inner = frame;
    if probe.encapsulated {
        let ihl = usize::from(frame[ETH_LEN] & 0x0f) * 4;
        inner = &frame[ETH_LEN + ihl + UDP_LEN + 8..];
    }
    let p = SlicedPacket::from_ethernet(inner).ok()?;
    let Some(NetSlice::Ipv4(ip)) = &p.net else {
        return None;
    };
    let iph = ip.header().to_header();
    let ipv4_checksum_ok = iph.calc_header_checksum() == iph.header_checksum;
    let addr = |a: [u8; 4], port| std::net::SocketAddrV4::new(Ipv4Addr::from(a), port);
    let (proto, sport, dport, l4_checksum_ok) = match p.transport? {
        TransportSlice::Udp(u) => {
            let h = u.to_header();
            let ok = (h.checksum != 0)
                .then(|| h.calc_checksum_ipv4(&iph, u.payload()).ok() == Some(h.checksum));
            ("udp", h.source_port, h.destination_port, ok)
        }
        TransportSlice::Tcp(t) => {
            let h = t.to_header();
            let ok = h.calc_checksum_ipv4(&iph, t.payload()).ok() == Some(h.checksum);
            ("tcp", h.source_port, h.destination_port, Some(ok))
        }
        _ => return None,
    };
    Some(ProbeHeaders {
        proto: proto.into(),
        src: addr(iph.source, sport),
        dst: addr(iph.destination, dport),
        ttl: iph.time_to_live,
        encapsulated: probe.encapsulated,
        ipv4_checksum_ok,
        l4_checksum_ok,
    })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC address '{s}': expected six hex bytes separated by ':'");
    }
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("MAC address '{s}'"))?;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{SlicedPacket, TransportSlice};

    fn spec(proto: Proto, size: usize, flows: u16) -> FrameSpec {
        FrameSpec {
            src_mac: [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02],
            dst_mac: [0x02, 0, 0, 0, 0, 1],
            src_ip: Ipv4Addr::new(10, 244, 1, 2),
            dst_ip: Ipv4Addr::new(10, 244, 2, 2),
            dst_port: 5201,
            src_port_base: 10000,
            size,
            flows,
            proto,
        }
    }

    /// Checksums as etherparse computes them from scratch.
    fn reference_csum(frame: &[u8]) -> (u16, u16) {
        let p = SlicedPacket::from_ethernet(frame).expect("parses");
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("not ipv4")
        };
        let iph = ip.header().to_header();
        match p.transport.expect("transport") {
            TransportSlice::Udp(u) => {
                let h = u.to_header();
                let sent = h.checksum;
                let want = h.calc_checksum_ipv4(&iph, u.payload()).unwrap();
                (sent, want)
            }
            TransportSlice::Tcp(t) => {
                let h = t.to_header();
                let sent = h.checksum;
                let want = h.calc_checksum_ipv4(&iph, t.payload()).unwrap();
                (sent, want)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn builds_frames_of_the_requested_size_that_etherparse_accepts() {
        for proto in [Proto::Udp, Proto::TcpSyn] {
            for size in [proto.min_frame(), 64.max(proto.min_frame()), 1400] {
                let t = Template::build(&spec(proto, size, 4), 3).unwrap();
                assert_eq!(t.bytes.len(), size);
                let p = SlicedPacket::from_ethernet(&t.bytes).unwrap();
                match (proto, p.transport.unwrap()) {
                    (Proto::Udp, TransportSlice::Udp(u)) => {
                        assert_eq!(u.source_port(), 10003);
                        assert_eq!(u.destination_port(), 5201);
                    }
                    (Proto::TcpSyn, TransportSlice::Tcp(t)) => {
                        assert!(t.syn() && !t.ack());
                        assert_eq!(t.source_port(), 10003);
                    }
                    (p, t) => panic!("{p}: got {t:?}"),
                }
                let (sent, want) = reference_csum(&t.bytes);
                assert_eq!(sent, want);
            }
        }
    }

    #[test]
    fn sixty_four_byte_udp_fits_and_tcp_needs_more() {
        assert!(Proto::Udp.min_frame() <= 64);
        assert!(spec(Proto::Udp, 64, 1).validate().is_ok());
        assert!(spec(Proto::TcpSyn, 64, 1).validate().is_err());
        assert!(spec(Proto::Udp, 1515, 1).validate().is_err());
        assert!(spec(Proto::Udp, 64, 0).validate().is_err());
    }

    #[test]
    fn patched_probes_keep_checksums_valid_and_parse_back() {
        for proto in [Proto::Udp, Proto::TcpSyn] {
            let s = spec(proto, 128, 1000);
            let base = Template::build(&s, 0).unwrap();
            let mut frame = base.bytes.clone();
            let cases = [
                (7u16, 0u64, 0u64),
                (999, 1, 123_456_789),
                (42, u64::MAX, u64::MAX),
                (1, 0xffff_0000_ffff_0000, 0x0001_0002_0003_0004),
            ];
            for (flow, seq, ts) in cases {
                let t = Template::build(&s, flow).unwrap();
                t.write_into(&mut frame, seq, ts);
                let (sent, want) = reference_csum(&frame);
                assert_eq!(sent, want, "{proto} flow {flow} seq {seq:#x} ts {ts:#x}");
                let probe = parse_probe(&frame, VXLAN_PORT).unwrap();
                assert_eq!(
                    probe,
                    Probe {
                        flow,
                        seq,
                        ts_ns: ts,
                        encapsulated: false
                    }
                );
            }
        }
    }

    #[test]
    fn finds_probes_inside_vxlan_and_ignores_other_frames() {
        let inner = Template::build(&spec(Proto::Udp, 64, 1), 0).unwrap();
        let mut inner_frame = inner.bytes.clone();
        inner.write_into(&mut inner_frame, 5, 6);
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vxlan.extend_from_slice(&inner_frame);
        let mut outer = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([172, 30, 0, 11], [172, 30, 0, 12], 64)
            .udp(49152, VXLAN_PORT)
            .write(&mut outer, &vxlan)
            .unwrap();
        let p = parse_probe(&outer, VXLAN_PORT).unwrap();
        assert_eq!((p.flow, p.seq, p.ts_ns, p.encapsulated), (0, 5, 6, true));
        // Other port: the VXLAN header is taken as payload, no magic.
        assert_eq!(parse_probe(&outer, 8472), None);
        // ARP, truncated and magic-less frames.
        let mut arp = vec![0u8; 60];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(parse_probe(&arp, VXLAN_PORT), None);
        assert_eq!(parse_probe(&inner_frame[..40], VXLAN_PORT), None);
        let mut plain = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([1, 1, 1, 1], [2, 2, 2, 2], 64)
            .udp(1, 2)
            .write(&mut plain, &[0u8; 32])
            .unwrap();
        assert_eq!(parse_probe(&plain, VXLAN_PORT), None);
    }

    /// Rewrites a probe frame as a NAT would: addresses and ports, checksums
    /// recomputed (`fix`) or left stale.
    fn nat(frame: &[u8], src: ([u8; 4], u16), dst: ([u8; 4], u16), fix: bool) -> Vec<u8> {
        let mut f = frame.to_vec();
        let ip = ETH_LEN;
        f[ip + 12..ip + 16].copy_from_slice(&src.0);
        f[ip + 16..ip + 20].copy_from_slice(&dst.0);
        let l4 = ip + IPV4_LEN;
        f[l4..l4 + 2].copy_from_slice(&src.1.to_be_bytes());
        f[l4 + 2..l4 + 4].copy_from_slice(&dst.1.to_be_bytes());
        f[ip + 8] -= 1; // routed: TTL
        if fix {
            let (ipv4_csum, l4_csum) = {
                let p = SlicedPacket::from_ethernet(&f).unwrap();
                let Some(etherparse::NetSlice::Ipv4(v4)) = &p.net else {
                    panic!()
                };
                let mut iph = v4.header().to_header();
                iph.header_checksum = iph.calc_header_checksum();
                let Some(TransportSlice::Udp(u)) = p.transport else {
                    panic!()
                };
                let sum = u.to_header().calc_checksum_ipv4(&iph, u.payload()).unwrap();
                (iph.header_checksum, sum)
            };
            f[ip + 10..ip + 12].copy_from_slice(&ipv4_csum.to_be_bytes());
            f[l4 + 6..l4 + 8].copy_from_slice(&l4_csum.to_be_bytes());
        }
        f
    }

    #[test]
    fn probes_survive_dnat_and_snat_and_their_headers_say_what_was_done() {
        // ext-nodeport: 172.30.0.100:10007 -> 172.30.0.11:30520 becomes
        // 10.244.1.1:61234 -> 10.244.2.2:5201 (NodePort DNAT + SNAT).
        let mut s = spec(Proto::Udp, 64, 8);
        s.src_ip = Ipv4Addr::new(172, 30, 0, 100);
        s.dst_ip = Ipv4Addr::new(172, 30, 0, 11);
        s.dst_port = 30520;
        let t = Template::build(&s, 7).unwrap();
        let mut frame = t.bytes.clone();
        t.write_into(&mut frame, 9, 1234);
        let sent = probe_headers(&frame, VXLAN_PORT).unwrap();
        assert_eq!(sent.src.to_string(), "172.30.0.100:10007");
        assert_eq!(sent.dst.to_string(), "172.30.0.11:30520");
        assert!(sent.ipv4_checksum_ok && sent.l4_checksum_ok == Some(true));
        let natted = nat(
            &frame,
            ([10, 244, 1, 1], 61234),
            ([10, 244, 2, 2], 5201),
            true,
        );
        let p = parse_probe(&natted, VXLAN_PORT).unwrap();
        assert_eq!((p.flow, p.seq, p.ts_ns), (7, 9, 1234));
        let h = probe_headers(&natted, VXLAN_PORT).unwrap();
        assert_eq!(
            h.to_string(),
            "udp 10.244.1.1:61234 -> 10.244.2.2:5201, ttl 63, ipv4 csum ok, l4 csum ok"
        );
        // A NAT that forgot the checksums: the probe is still found, and
        // the headers say the checksums are wrong.
        let bad = nat(
            &frame,
            ([10, 244, 1, 1], 61234),
            ([10, 244, 2, 2], 5201),
            false,
        );
        assert!(parse_probe(&bad, VXLAN_PORT).is_some());
        let h = probe_headers(&bad, VXLAN_PORT).unwrap();
        assert!(!h.ipv4_checksum_ok);
        assert_eq!(h.l4_checksum_ok, Some(false));
        // Inside VXLAN: the inner headers.
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vxlan.extend_from_slice(&natted);
        let mut outer = Vec::new();
        PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([172, 30, 0, 11], [172, 30, 0, 12], 64)
            .udp(49152, VXLAN_PORT)
            .write(&mut outer, &vxlan)
            .unwrap();
        let h = probe_headers(&outer, VXLAN_PORT).unwrap();
        assert!(h.encapsulated);
        assert_eq!(h.dst.to_string(), "10.244.2.2:5201");
        assert_eq!(probe_headers(&frame[..40], VXLAN_PORT), None);
    }

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("0a:58:0A:f4:01:02").unwrap(),
            [0x0a, 0x58, 0x0a, 0xf4, 1, 2]
        );
        assert!(parse_mac("0a:58:0a:f4:01").is_err());
        assert!(parse_mac("0a:58:0a:f4:01:zz").is_err());
    }
}
