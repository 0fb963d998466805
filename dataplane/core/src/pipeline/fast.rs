//! The flow cache: later packets of a flow skip the walk.
//!
//! The full walk of a TCP/UDP packet from a pod, the host or the uplink
//! (VXLAN from another node, or an outside client's NodePort flow) notes
//! what it decided: the translation (none, or a conntrack entry's DNAT/SNAT
//! or un-NAT), the output port, and the Ethernet or VXLAN headers it wrote.
//! [`FlowCache`] keeps that per 5-tuple and ingress port, with checksum
//! deltas and the outer IPv4 header's partial sum precomputed. A later
//! packet of the flow is validated, looked up, and patched: a few stores,
//! two RFC 1624 updates and a header copy, byte for byte what the walk
//! would have written (in test builds every batch is also run through a
//! cacheless twin and compared: `Pipeline::process`).
//!
//! Only packets the walk would forward unchanged in shape use it: no SYN,
//! FIN or RST (they move the TCP state), an `Established` (or UDP) entry
//! seen within the shortest conntrack timeout, TTL above 1, no options or
//! fragments, a valid header checksum, within the MTU; anything else takes
//! the walk, which drops or answers it as before.
//!
//! An entry is valid in the tables snapshot it was learnt in
//! ([`Tables::epoch`]) and, for a service flow, while its conntrack entry
//! lives with the same key. Each conntrack insert forgets its two keys here
//! (a flow routed plainly may become a service reply). Memory: a set of 4
//! keys per cache line, 128 bytes of action per entry, sized once. The set
//! hash is not keyed: flows aimed at one set only miss (take the walk).

use core::net::Ipv4Addr;

use super::nat::NO_SLOT;
use super::{Ctx, Packet, Pipeline, Verdict, ENCAP_LEN, ETH, IPV4_MIN};
use crate::conntrack::{Dir, FlowKey};
use crate::tables::{NodeInfo, Tables};
use crate::wire::checksum;
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::ipv4::{self, Ipv4Header};
use crate::wire::l4::{L4Header, Ports, PORTS_LEN};
use crate::wire::tcp::{self, TcpHeader};
use crate::wire::udp::{self, UdpHeader};
use crate::wire::vxlan::{self, OuterHeaders};

/// Ways per set.
const WAYS: usize = 4;
/// Most entries a cache gets (32k flows: 4.5 MiB per worker).
pub const MAX_FLOW_CACHE: usize = 1 << 15;
/// `Action::ct` of a flow without a conntrack entry.
const NO_CT: u32 = u32::MAX;
/// Bytes of the VXLAN action's header: outer Ethernet, IPv4, UDP, VXLAN,
/// then the inner destination and source MACs.
const HDR: usize = ENCAP_LEN + ethernet::ADDRS_LEN;
/// `Action::rw` bits: the source / destination address and port change.
const RW_SRC: u8 = 1;
const RW_DST: u8 = 2;

/// A flow as the cache matches it: addresses, ports, protocol, ingress port.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
#[repr(C, align(16))]
struct Key {
    addrs: u64,
    rest: u64,
}

impl Key {
    fn new(k: &FlowKey, in_port: u16) -> Key {
        Key {
            addrs: u64::from(u32::from(k.src)) << 32 | u64::from(u32::from(k.dst)),
            // The protocol is never 0 here, so no real key is all zeros.
            rest: u64::from(k.sport) << 48
                | u64::from(k.dport) << 32
                | u64::from(k.proto) << 16
                | u64::from(in_port),
        }
    }

    /// Same flow, any ingress port.
    fn same_flow(&self, o: &Key) -> bool {
        self.addrs == o.addrs && self.rest >> 16 == o.rest >> 16
    }
}

/// One set: its keys share a cache line.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Set([Key; WAYS]);

/// What happens to the L2 header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(super) enum L2 {
    /// Nothing learnt.
    #[default]
    None,
    /// New MACs, to a pod or the host (`routed_local`).
    Local,
    /// New MACs, straight back out the uplink (an outside client's reply).
    External,
    /// VXLAN to a remote node (`encapsulated`).
    Encap,
    /// New MACs, out the uplink to the outside (`egress_routed`).
    Egress,
}

/// A flow's precomputed work.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Action {
    /// `Encap`: the headers in front of the inner IPv4 header; else the
    /// new destination and source MACs in the first 12 bytes.
    hdr: [u8; HDR],
    out_port: u16,
    /// `Tables::epoch + 1` when learnt; 0: never.
    stamp: u32,
    /// Conntrack entry `id << 1 | reply`, or [`NO_CT`].
    ct: u32,
    svc: u32,
    /// The backend slot of `svc`'s flow in the snapshot it was learnt in.
    slot: u32,
    new_src: Ipv4Addr,
    new_dst: Ipv4Addr,
    new_sport: u16,
    new_dport: u16,
    /// Partial sum of the outer IPv4 header without its length (`Encap`).
    outer_sum: u32,
    /// Partial sum of the pseudo-header without its length, as received.
    pseudo: u32,
    /// RFC 1624 `~m + m'` of every word the walk changes, folded.
    ip_delta: u16,
    l4_delta: u16,
    rw: u8,
    l2: L2,
    /// Learnt from a VXLAN frame's inner frame: the VTEP that sent it. A
    /// frame from another address misses (takes the walk, which checks
    /// the sender against the inner source).
    decap: Option<Ipv4Addr>,
}

const EMPTY: Action = Action {
    hdr: [0; HDR],
    out_port: 0,
    stamp: 0,
    ct: NO_CT,
    svc: 0,
    slot: NO_SLOT,
    new_src: Ipv4Addr::UNSPECIFIED,
    new_dst: Ipv4Addr::UNSPECIFIED,
    new_sport: 0,
    new_dport: 0,
    outer_sum: 0,
    pseudo: 0,
    ip_delta: 0,
    l4_delta: 0,
    rw: 0,
    l2: L2::None,
    decap: None,
};

/// Where a frame came from, for the fast path.
#[derive(Clone, Copy, Debug)]
pub(super) enum From {
    /// A pod (or the host), which may only send from this address.
    Pod(Ipv4Addr),
    /// The uplink: VXLAN from another node, or an outside client.
    Uplink,
}

/// For a frame on the uplink: where the frame the cache is about starts, its
/// length, and the sending VTEP if decapsulated. VXLAN from another node
/// (outer headers validated as the walk does): the inner frame. Anything
/// else: the frame itself (an outside client's), validated like a pod's.
/// `None`: let the walk decide.
#[inline]
fn uplink_inner(node: &NodeInfo, f: &[u8]) -> Option<(usize, usize, Option<Ipv4Addr>)> {
    let outer = OuterHeaders::new(f.first_chunk::<ENCAP_LEN>()?);
    let ip = outer.ipv4();
    if outer.ethernet().ethertype() != ethernet::ethertype::IPV4
        || !ip.is_v4_without_options()
        || ip.dst_addr() != node.underlay_ip
    {
        return None;
    }
    let udp = outer.udp();
    if ip.protocol() != ipv4::protocol::UDP || udp.ports().dst() != node.vxlan_port {
        return Some((0, f.len(), None));
    }
    let total = ip.total_len() as usize;
    let ulen = udp.len() as usize;
    let vx = outer.vxlan();
    if total < IPV4_MIN
        || ETH + total > f.len()
        || ip.is_fragment()
        || !ip.verify_checksum()
        || ulen < udp::HEADER_LEN + vxlan::HEADER_LEN
        || ulen > total - IPV4_MIN
        || vx.flags() & vxlan::FLAG_I == 0
        || vx.vni() != node.vni
    {
        return None;
    }
    Some((
        ENCAP_LEN,
        ulen - udp::HEADER_LEN - vxlan::HEADER_LEN,
        Some(ip.src_addr()),
    ))
}

/// What the walk decided about the translation, noted for [`FlowCache`].
#[derive(Clone, Copy, Debug, Default)]
pub(super) enum Nat {
    /// Not noted (new flow, reject, hand-off, ...): don't learn.
    #[default]
    None,
    /// No translation: a plain route.
    Plain,
    /// An established entry's translation.
    Ct {
        id: u32,
        dir: Dir,
        svc: u32,
        slot: u32,
        src: Option<(Ipv4Addr, u16)>,
        dst: Option<(Ipv4Addr, u16)>,
    },
}

/// The walk's notes on one packet.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Learn {
    pub nat: Nat,
    pub l2: L2,
}

/// A packet the fast path looked at: its flow and its set.
#[derive(Clone, Copy, Debug)]
pub(super) struct Probe {
    hkey: Key,
    set: usize,
    decap: Option<Ipv4Addr>,
}

impl Probe {
    fn key(&self) -> FlowKey {
        let (a, r) = (self.hkey.addrs, self.hkey.rest);
        FlowKey {
            proto: (r >> 16) as u8,
            src: Ipv4Addr::from((a >> 32) as u32),
            dst: Ipv4Addr::from(a as u32),
            sport: (r >> 48) as u16,
            dport: (r >> 32) as u16,
        }
    }
}

/// The per-worker flow cache.
pub struct FlowCache {
    sets: Box<[Set]>,
    actions: Box<[Action]>,
    mask: usize,
    /// Keys the set hash, so that nobody can aim flows at one set.
    pub(super) key: u64,
    /// Picks the way to replace in a full set.
    clock: usize,
    enabled: bool,
}

impl FlowCache {
    /// A cache of `entries` flows, rounded up to a power of two of at least
    /// 4 sets, at most [`MAX_FLOW_CACHE`].
    pub fn new(entries: usize) -> FlowCache {
        let n = entries.clamp(4 * WAYS, MAX_FLOW_CACHE).next_power_of_two();
        FlowCache {
            sets: vec![Set::default(); n / WAYS].into_boxed_slice(),
            actions: vec![EMPTY; n].into_boxed_slice(),
            mask: n / WAYS - 1,
            key: 0,
            clock: 0,
            enabled: true,
        }
    }

    /// The set of a flow, whatever its ingress port.
    #[inline]
    fn set_of(&self, k: &Key) -> usize {
        super::mix(k.addrs ^ self.key, k.rest >> 16) as usize & self.mask
    }

    /// Forgets `k` (from any ingress port): it just became a conntrack key.
    pub(super) fn forget(&mut self, k: &FlowKey) {
        let key = Key::new(k, 0);
        let s = self.set_of(&key);
        for w in 0..WAYS {
            if self.sets[s].0[w].same_flow(&key) {
                self.sets[s].0[w] = Key::default();
                self.actions[s * WAYS + w].stamp = 0;
            }
        }
    }
}

const TOTAL: &str = "within the datagram's total length";

/// Rewrites the ports a flow's action changes and patches the transport
/// checksum with its folded delta.
#[inline(always)]
fn patch_l4(mut l4: impl L4Header, a: &Action) {
    let mut ports = l4.ports_mut();
    if a.rw & RW_SRC != 0 {
        ports.set_src(a.new_sport);
    }
    if a.rw & RW_DST != 0 {
        ports.set_dst(a.new_dport);
    }
    if let Some(c) = l4.checksum_to_patch() {
        l4.set_patched_checksum(apply(c, a.l4_delta));
    }
}

/// RFC 1624 `~m + m'` for a 32-bit field, as `checksum::update_u32` adds it.
fn delta32(old: u32, new: u32) -> u32 {
    u32::from(!(old >> 16) as u16) + u32::from(!(old as u16)) + (new >> 16) + (new & 0xFFFF)
}

/// Applies a folded delta: `checksum::update_*` in one step. One's
/// complement addition is associative, zeros included (a fold is 0 only if
/// every term is), so this equals the walk's updates in sequence.
#[inline(always)]
fn apply(csum: u16, delta: u16) -> u16 {
    !checksum::fold(u32::from(!csum) + u32::from(delta))
}

impl Pipeline {
    /// The fast path for a frame from `from`. `Ok`: done. `Err(Some)`: a
    /// miss the walk may teach. `Err(None)`: not for the cache (the walk
    /// decides everything).
    #[inline(always)]
    pub(super) fn fast_path(
        &mut self,
        cx: &Ctx<'_>,
        from: From,
        p: &mut Packet<'_>,
    ) -> Result<Verdict, Option<Probe>> {
        let Ctx { now, t, node } = *cx;
        if !self.flows.enabled {
            return Err(None);
        }
        // Where the frame the cache is about starts, and its length: after
        // the outer headers of VXLAN from another node.
        let (off, len, decap) = match from {
            From::Pod(_) => (p.off, p.len, None),
            From::Uplink => match uplink_inner(node, &p.buf[p.off..p.off + p.len]) {
                Some((at, len, vtep)) => (p.off + at, len, vtep),
                None => return Err(None),
            },
        };
        let ip_off = off + ETH;
        let frame = &p.buf[off..off + len];
        // Ethernet, IPv4 without options, the first 8 bytes of TCP/UDP.
        let Some(h) = frame.first_chunk::<{ ETH + IPV4_MIN + udp::HEADER_LEN }>() else {
            return Err(None);
        };
        let (eth, rest) = h.split_first_chunk::<ETH>().expect("in h");
        let (ip, l4) = rest.split_first_chunk::<IPV4_MIN>().expect("in h");
        let l4: &[u8; udp::HEADER_LEN] = l4.try_into().expect("in h");
        let ip = Ipv4Header::new(ip);
        if EthernetFrame::new_unchecked(eth).ethertype() != ethernet::ethertype::IPV4
            || !ip.is_v4_without_options()
        {
            return Err(None);
        }
        let total = ip.total_len() as usize;
        let proto = ip.protocol();
        let l4_min = match proto {
            ipv4::protocol::TCP => tcp::HEADER_LEN,
            ipv4::protocol::UDP => udp::HEADER_LEN,
            _ => return Err(None),
        };
        // (Frames on the uplink: only keys the walk forwarded are cached,
        // so an outside client's reach only this node's address.)
        let src_ok = match from {
            From::Pod(ip_) => ip.src_addr() == ip_,
            From::Uplink => true,
        };
        if total < IPV4_MIN + l4_min
            || ETH + total > len
            || ip.is_fragment()
            || ip.ttl() <= 1
            || !src_ok
            || !ip.verify_checksum()
        {
            return Err(None);
        }
        // The transport checksum as received; TCP's header is whole (the
        // length was checked above).
        let l4_csum = if proto == ipv4::protocol::TCP {
            let Some(t) = frame[ETH + IPV4_MIN..].first_chunk::<{ tcp::HEADER_LEN }>() else {
                return Err(None);
            };
            let t = TcpHeader::new(t);
            if t.flags() & (tcp::flags::SYN | tcp::flags::FIN | tcp::flags::RST) != 0 {
                return Err(None);
            }
            t.checksum()
        } else {
            UdpHeader::new(l4).checksum()
        };
        let ports = Ports::new(l4.first_chunk::<PORTS_LEN>().expect("in l4"));
        let hkey = Key {
            addrs: ip.addrs(),
            rest: u64::from(ports.both()) << 32 | u64::from(proto) << 16 | u64::from(p.port),
        };
        let set = self.flows.set_of(&hkey);
        let probe = Probe { hkey, set, decap };
        let Some(way) = self.flows.sets[set].0.iter().position(|k| *k == hkey) else {
            return Err(Some(probe));
        };
        let ai = set * WAYS + way;
        let a = &self.flows.actions[ai];
        if a.stamp != t.epoch.wrapping_add(1)
            || a.decap != decap
            || (a.l2 == L2::Encap && (total > node.pod_mtu as usize || off < ENCAP_LEN))
        {
            return Err(Some(probe));
        }
        let (ct, svc, slot) = (a.ct, a.svc, a.slot);
        if ct != NO_CT {
            let dir = if ct & 1 == 0 {
                Dir::Original
            } else {
                Dir::Reply
            };
            if !self.ct.touch_established(ct >> 1, dir, &probe.key(), now) {
                return Err(Some(probe));
            }
        }
        let a = &self.flows.actions[ai];
        // A pod, or an outside client on a veth of this host, with TX
        // checksum offload leaves the pseudo-header sum for "hardware" to
        // finish: rare, and the walk's code does it. (Decapsulated frames
        // were finished by the sending node.)
        if decap.is_none() {
            let pseudo = checksum::fold(a.pseudo + (total - IPV4_MIN) as u32);
            if l4_csum == pseudo
                || (l4_csum == 0 && pseudo == 0xFFFF && proto == ipv4::protocol::TCP)
            {
                super::complete_partial_checksum(p, ip_off);
            }
        }
        // The datagram: IPv4 header, transport header (lengths checked above).
        let (iph, l4h) = p.buf[ip_off..].split_at_mut(IPV4_MIN);
        let mut ip = Ipv4Header::new(<&mut [u8; IPV4_MIN]>::try_from(iph).expect("checked above"));
        if a.rw & RW_SRC != 0 {
            ip.set_src_addr(a.new_src);
        }
        if a.rw & RW_DST != 0 {
            ip.set_dst_addr(a.new_dst);
        }
        ip.set_ttl(ip.ttl() - 1);
        ip.set_checksum(apply(ip.checksum(), a.ip_delta));
        if a.rw != 0 {
            if proto == ipv4::protocol::TCP {
                patch_l4(TcpHeader::new(l4h.first_chunk_mut().expect(TOTAL)), a);
            } else {
                patch_l4(UdpHeader::new(l4h.first_chunk_mut().expect(TOTAL)), a);
            }
        }
        if decap.is_some() {
            self.counters.decapsulated += 1;
        }
        // Ethernet padding is not part of the datagram.
        p.off = off;
        p.len = ETH + total;
        let (l2, out_port) = (a.l2, a.out_port);
        if l2 == L2::Encap {
            let o = off - ENCAP_LEN;
            let hdr: &mut [u8; HDR] = (&mut p.buf[o..o + HDR]).try_into().expect("headroom");
            *hdr = a.hdr;
            let outer = hdr.first_chunk_mut::<ENCAP_LEN>().expect("in hdr");
            OuterHeaders::new(outer).set_inner_len((ETH + total) as u16, a.outer_sum);
            p.off = o;
            p.len += ENCAP_LEN;
            self.counters.encapsulated += 1;
        } else {
            let eth = p.buf[off..].first_chunk_mut::<ETH>().expect("in frame");
            let macs = a
                .hdr
                .first_chunk::<{ ethernet::ADDRS_LEN }>()
                .expect("in hdr");
            EthernetFrame::new_unchecked(eth).set_addrs(macs);
            match l2 {
                L2::Local => self.counters.routed_local += 1,
                L2::Egress => self.counters.egress_routed += 1,
                _ => {}
            }
        }
        if ct != NO_CT {
            // Sized by the walk that taught the entry (`count_svc`); the
            // vector never shrinks.
            if let Some(c) = self.nat.books.services.get_mut(svc as usize) {
                c.packets += 1;
                c.bytes += len as u64;
            }
            if let Some(b) = self.nat.books.backends.get_mut(slot as usize) {
                b.packets += 1;
                b.bytes += len as u64;
            }
        }
        self.counters.flow_cache_hits += 1;
        Ok(Verdict::Tx(out_port))
    }

    /// After the walk forwarded a probed packet out of `out_port`: caches
    /// what it did, if it noted enough (`self.learn`).
    pub(super) fn learn(&mut self, t: &Tables, pr: &Probe, p: &Packet<'_>, out_port: u16) {
        let l = core::mem::take(&mut self.learn);
        let (ct, svc, slot, src, dst) = match l.nat {
            Nat::None => return,
            Nat::Plain => (NO_CT, 0, NO_SLOT, None, None),
            Nat::Ct {
                id,
                dir,
                svc,
                slot,
                src,
                dst,
            } => (id << 1 | u32::from(dir == Dir::Reply), svc, slot, src, dst),
        };
        let key = pr.key();
        let mut a = Action {
            out_port,
            pseudo: checksum::pseudo_header(key.src, key.dst, key.proto, 0),
            stamp: t.epoch.wrapping_add(1),
            ct,
            svc,
            slot,
            l2: l.l2,
            decap: pr.decap,
            ..EMPTY
        };
        // The TTL/protocol word drops by 0x0100: `~m + m'` = 0xFEFF.
        let mut ip_sum: u32 = 0xFEFF;
        let mut l4_sum: u32 = 0;
        let mut field = |old: (Ipv4Addr, u16), new: (Ipv4Addr, u16)| {
            let d = delta32(u32::from(old.0), u32::from(new.0));
            ip_sum += d;
            l4_sum += d + u32::from(!old.1) + u32::from(new.1);
        };
        if let Some(s) = src {
            field((key.src, key.sport), s);
            a.rw |= RW_SRC;
            (a.new_src, a.new_sport) = s;
        }
        if let Some(d) = dst {
            field((key.dst, key.dport), d);
            a.rw |= RW_DST;
            (a.new_dst, a.new_dport) = d;
        }
        a.ip_delta = checksum::fold(ip_sum);
        a.l4_delta = checksum::fold(l4_sum);
        let out = p.frame();
        match l.l2 {
            L2::None => return,
            L2::Encap => {
                let Some(h) = out.first_chunk::<HDR>() else {
                    return;
                };
                a.hdr = *h;
                let outer = h.first_chunk::<ENCAP_LEN>().expect("in h");
                a.outer_sum = OuterHeaders::new(outer).ipv4().sum_without_length();
            }
            L2::Local | L2::External | L2::Egress => {
                let Some(eth) = out.first_chunk::<ETH>() else {
                    return;
                };
                let macs = a
                    .hdr
                    .first_chunk_mut::<{ ethernet::ADDRS_LEN }>()
                    .expect("in hdr");
                *macs = EthernetFrame::new_unchecked(eth).addrs();
            }
        }
        let set = &mut self.flows.sets[pr.set].0;
        let way = match set.iter().position(|k| *k == pr.hkey) {
            Some(w) => w,
            None => match (0..WAYS).find(|&w| set[w] == Key::default()) {
                Some(w) => w,
                None => {
                    self.flows.clock = self.flows.clock.wrapping_add(1);
                    self.flows.clock % WAYS
                }
            },
        };
        set[way] = pr.hkey;
        self.flows.actions[pr.set * WAYS + way] = a;
    }

    /// Notes for the cache; no-ops cost a store on the walk.
    #[inline]
    pub(super) fn note_l2(&mut self, l2: L2) {
        self.learn.l2 = l2;
    }

    #[inline]
    pub(super) fn note_nat(&mut self, nat: Nat) {
        self.learn.nat = nat;
    }

    /// Turns the flow cache off (`false`) or back on; either way it
    /// starts empty.
    pub fn set_flow_cache(&mut self, on: bool) {
        self.flows.sets.fill(Set::default());
        self.flows.enabled = on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vectors::XorShift;

    /// Another key puts flows in other sets (with 1,024 sets, about one in
    /// 1,024 stays by chance): a flood aimed at one set under one key is
    /// spread under another.
    #[test]
    fn the_set_hash_is_keyed() {
        let a = FlowCache::new(1 << 12);
        let mut b = FlowCache::new(1 << 12);
        b.key = 0x6b78_6470_5e7d_0001;
        let mut rng = XorShift(0x6b78_6470_5e7d_0011);
        let moved = (0..256)
            .filter(|_| {
                let k = Key {
                    addrs: rng.next_u64(),
                    rest: rng.next_u64(),
                };
                a.set_of(&k) != b.set_of(&k)
            })
            .count();
        assert!(moved >= 250, "{moved} of 256 flows changed set");
    }

    /// One folded delta applied once equals the walk's updates one by one
    /// (`rewrite_headers`: source then destination, address then port;
    /// `decrement_ttl`), for every checksum value, 0x0000 and 0xFFFF too.
    #[test]
    fn one_delta_equals_the_updates_in_sequence() {
        let mut rng = XorShift(0xFA57_0000_0000_0001);
        for i in 0..200_000u32 {
            let csum = match i % 4 {
                0 => 0x0000,
                1 => 0xFFFF,
                _ => rng.next_u64() as u16,
            };
            let r = rng.next_u64();
            let (old_a, new_a) = (r as u32, (r >> 32) as u32);
            let r = rng.next_u64();
            let (old_b, new_b) = (r as u32, (r >> 32) as u32);
            let r = rng.next_u64();
            let ports = [
                r as u16,
                (r >> 16) as u16,
                (r >> 32) as u16,
                (r >> 48) as u16,
            ];
            // Sometimes nothing changes: the walk still applies the update.
            let new_a = if i % 7 == 0 { old_a } else { new_a };
            let both = i % 3 != 0;

            let mut ip = checksum::update_u32(csum, old_a, new_a);
            let mut l4 = checksum::update_u32(csum, old_a, new_a);
            l4 = checksum::update_u16(l4, ports[0], ports[1]);
            let mut ip_sum = 0xFEFF + delta32(old_a, new_a);
            let mut l4_sum = delta32(old_a, new_a) + u32::from(!ports[0]) + u32::from(ports[1]);
            if both {
                ip = checksum::update_u32(ip, old_b, new_b);
                l4 = checksum::update_u32(l4, old_b, new_b);
                l4 = checksum::update_u16(l4, ports[2], ports[3]);
                ip_sum += delta32(old_b, new_b);
                l4_sum += delta32(old_b, new_b) + u32::from(!ports[2]) + u32::from(ports[3]);
            }
            ip = !checksum::fold(u32::from(!ip) + 0xFEFF);
            assert_eq!(apply(csum, checksum::fold(ip_sum)), ip, "ip {i}");
            assert_eq!(apply(csum, checksum::fold(l4_sum)), l4, "l4 {i}");
        }
    }
}
