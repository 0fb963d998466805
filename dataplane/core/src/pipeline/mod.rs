//! The packet pipeline: a batch of frames in, a verdict per frame out.
//!
//! Pure: no syscalls, no clock (`now` is passed in), no allocation, no locks.
//! Each [`Packet`] is a whole UMEM chunk with the frame at `off..off + len`;
//! the pipeline rewrites in place and may move `off` back (encap, ICMP
//! errors) or forward (decap), so no frame is ever copied.
//!
//! Walks (DESIGN.md):
//! 1. pod -> pod, same node: MACs rewritten, TTL decremented, no NAT.
//! 2. pod -> pod, other node: LPM on remote pod CIDRs, VXLAN encap to the
//!    node's VTEP; on the receiving node: VNI check, decap, route to the pod.
//! 3. pod -> ClusterIP, 4. outside client -> NodeIP:NodePort: conntrack,
//!    Maglev, DNAT (+SNAT), replies translated back (`nat.rs`).
//! 5. host <-> pods and services: the host port (`PortKind::Host`) carries
//!    the node kernel's traffic; pods reach the node at the gateway address.
//! 6. ARP for anything in the pod CIDR (the gateway included) is answered
//!    with the pod port's MAC; ICMP time-exceeded, unreachable and
//!    fragmentation-needed are sent where a router would send them.
//!
//! Before any walk, a TCP/UDP frame tries the worker's flow cache
//! (`fast.rs`): a flow's later packets get what the walk gave its first one,
//! precomputed, without walking.

use core::net::Ipv4Addr;

mod counters;
mod fast;
mod nat;

pub use counters::{Counters, DropReason};
pub use fast::{FlowCache, MAX_FLOW_CACHE};
pub use nat::{SvcCounters, SNAT_PORTS};

use crate::conntrack::{Conntrack, FlowKey, Timeouts};
use crate::tables::{NodeInfo, PortId, PortInfo, PortKind, Tables};
use crate::wire::{
    arp::{self, ArpPacket},
    checksum,
    ethernet::{self, EthernetFrame},
    icmp::{self, Icmpv4Packet},
    ipv4::{self, Ipv4Packet},
    udp, vxlan, EthernetAddress,
};

/// Frames a worker takes from one RX ring per pass. 64 amortises the ring
/// index updates and the TX kick over enough frames that neither shows in a
/// profile, and a batch of descriptors still fits in L1.
pub const BATCH_SIZE: usize = 64;

const ETH: usize = ethernet::HEADER_LEN;
const IPV4_MIN: usize = 20;
/// Outer headers (Ethernet, IPv4, UDP, VXLAN) in front of an encapsulated frame.
pub const ENCAP_LEN: usize = vxlan::OVERHEAD;
/// IPv4 + ICMP headers an ICMP error puts in front of the quoted datagram.
const ICMP_ERR_HDR: usize = IPV4_MIN + 8;
/// Minimum Ethernet frame without FCS; ARP replies are padded to it.
const ETH_MIN_FRAME: usize = 60;
const OUTER_TTL: u8 = 64;
/// ICMP errors a worker may send per second, and the burst it may save up
/// (routers rate-limit them; RFC 1812 4.3.2.8).
const ICMP_RATE_PER_SEC: u64 = 1000;
const ICMP_BURST: u64 = 100;

/// What to do with a frame once the batch is processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit `off..off + len` of the chunk on this port.
    Tx(PortId),
    Drop(DropReason),
    /// A service packet whose flow belongs to this other worker: pass the
    /// frame as received (`Packet::port`, untouched bytes) to it. Only with
    /// several workers (see [`Pipeline::set_worker`]).
    Handoff(u16),
}

/// One frame in a batch: the whole chunk, where the frame is in it, the port
/// it came in on, and (after `process`) the verdict.
#[derive(Debug)]
pub struct Packet<'a> {
    pub buf: &'a mut [u8],
    pub off: usize,
    pub len: usize,
    pub port: PortId,
    pub verdict: Verdict,
}

impl<'a> Packet<'a> {
    pub fn new(buf: &'a mut [u8], off: usize, len: usize, port: PortId) -> Packet<'a> {
        Packet {
            buf,
            off,
            len,
            port,
            verdict: Verdict::Drop(DropReason::NotConfigured),
        }
    }

    /// The frame bytes.
    pub fn frame(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
}

/// Conntrack entries per worker by default: 256k flows (both keys indexed),
/// about 40 MiB per worker.
pub const DEFAULT_CONNTRACK_CAPACITY: usize = 1 << 18;
/// ClientIP affinity records per worker.
const AFFINITY_CAPACITY: usize = 1 << 16;
/// Most conntrack slots the GC looks at after a batch, one per frame: a
/// full batch sweeps 256k slots in ~4k batches and never stalls a worker.
const GC_BUDGET: usize = 64;
/// Slots an idle worker sweeps each time it wakes (at least every 100 ms):
/// the default table is swept in about 3 s of idleness.
const IDLE_GC_BUDGET: usize = 8192;

/// The per-worker pipeline state: counters, the ICMP token bucket, the
/// connection-tracking table and service affinity.
pub struct Pipeline {
    counters: Counters,
    icmp_tokens: u64,
    icmp_last_ns: u64,
    ct: Conntrack,
    nat: nat::NatState,
    /// This worker's index and the number of workers (flow steering).
    worker: u16,
    workers: u16,
    flows: FlowCache,
    /// What the walk of the current packet noted for `flows`.
    learn: fast::Learn,
    /// Test builds: a twin without the flow cache that runs every batch
    /// too; `process` asserts both did the same.
    #[cfg(test)]
    twin: Option<Box<Pipeline>>,
}

impl core::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Pipeline")
            .field("counters", &self.counters)
            .field("conntrack_entries", &self.ct.len())
            .finish_non_exhaustive()
    }
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline::new()
    }
}

/// ICMP error kinds the pipeline originates.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IcmpError {
    TimeExceeded,
    Unreachable(u8),
    FragNeeded(u16),
}

impl Pipeline {
    pub fn new() -> Pipeline {
        Pipeline::with_conntrack(DEFAULT_CONNTRACK_CAPACITY, Timeouts::default())
    }

    /// A pipeline whose conntrack holds `capacity` flows.
    pub fn with_conntrack(capacity: usize, timeouts: Timeouts) -> Pipeline {
        #[allow(unused_mut)]
        let mut pl = Pipeline::bare(capacity, timeouts);
        #[cfg(test)]
        {
            let mut twin = Pipeline::bare(capacity, timeouts);
            twin.set_flow_cache(false);
            pl.twin = Some(Box::new(twin));
        }
        pl
    }

    fn bare(capacity: usize, timeouts: Timeouts) -> Pipeline {
        Pipeline {
            counters: Counters::default(),
            icmp_tokens: ICMP_BURST,
            icmp_last_ns: 0,
            ct: Conntrack::new(capacity, timeouts),
            nat: nat::NatState::new(AFFINITY_CAPACITY),
            worker: 0,
            workers: 1,
            // An eighth of the conntrack: the flows that are busy.
            flows: FlowCache::new(capacity / 8),
            learn: fast::Learn::default(),
            #[cfg(test)]
            twin: None,
        }
    }

    /// Makes this the pipeline of worker `index` of `count`: service flows
    /// whose client side hashes to another worker get
    /// [`Verdict::Handoff`], so each flow's conntrack entry (both
    /// directions) and each client's affinity live on one worker. Set once,
    /// before the first packet.
    pub fn set_worker(&mut self, index: u16, count: u16) {
        assert!(count >= 1 && index < count, "worker {index} of {count}");
        self.worker = index;
        self.workers = count;
        #[cfg(test)]
        if let Some(t) = self.twin.as_mut() {
            t.set_worker(index, count);
        }
    }

    /// Counts a drop the caller decided on (the worker's hand-off queue).
    pub fn count_drop(&mut self, r: DropReason) {
        self.counters.drops[r as usize] += 1;
        #[cfg(test)]
        if let Some(t) = self.twin.as_mut() {
            t.count_drop(r);
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The connection-tracking table (listing, counts; off the hot path).
    pub fn conntrack(&self) -> &Conntrack {
        &self.ct
    }

    /// Per-service counters by service id.
    pub fn service_counters(&self) -> &[SvcCounters] {
        &self.nat.svc
    }

    /// New flows per backend (ip, port).
    /// New flows per (service id, backend ip, backend port).
    pub fn backend_flows(&self) -> &hashbrown::HashMap<(u32, Ipv4Addr, u16), u64> {
        &self.nat.backend_flows
    }

    /// Work for an idle worker: sweeps more of the conntrack than a batch
    /// does, so expired flows leave the table (and the counts) even when no
    /// traffic arrives.
    pub fn maintain(&mut self, now_ns: u64) {
        if !self.ct.is_empty() {
            self.ct.gc(now_ns, IDLE_GC_BUDGET);
        }
        #[cfg(test)]
        if let Some(t) = self.twin.as_mut() {
            t.maintain(now_ns);
        }
    }

    /// Makes room for `n` services' counters (called when tables change,
    /// never per packet).
    pub fn reserve_services(&mut self, n: usize) {
        if self.nat.svc.len() < n {
            self.nat.svc.resize(n, SvcCounters::default());
        }
        #[cfg(test)]
        if let Some(t) = self.twin.as_mut() {
            t.reserve_services(n);
        }
    }

    /// Runs every packet of the batch and sets its verdict.
    pub fn process(&mut self, now_ns: u64, t: &Tables, pkts: &mut [Packet<'_>]) {
        #[cfg(test)]
        let twin = self.twin.take().map(|mut tw| {
            let out = tw.run_copy(now_ns, t, pkts);
            (tw, out)
        });
        self.run(now_ns, t, pkts);
        #[cfg(test)]
        if let Some((tw, out)) = twin {
            self.same_as(&tw, &out, pkts);
            self.twin = Some(tw);
        }
    }

    fn run(&mut self, now_ns: u64, t: &Tables, pkts: &mut [Packet<'_>]) {
        for p in pkts.iter_mut() {
            p.verdict = self.one(now_ns, t, p);
            match p.verdict {
                Verdict::Drop(r) => self.counters.drops[r as usize] += 1,
                Verdict::Handoff(_) => self.counters.handed_off += 1,
                Verdict::Tx(_) => {}
            }
        }
        // An empty table has nothing to expire: don't touch its memory. One
        // slot per packet (up to GC_BUDGET): a worker under load makes many
        // small batches, and a fixed 64 per call was 3 % of its core.
        if !self.ct.is_empty() {
            self.ct.gc(now_ns, pkts.len().clamp(1, GC_BUDGET));
        }
    }

    fn one(&mut self, now: u64, t: &Tables, p: &mut Packet<'_>) -> Verdict {
        let Some(node) = &t.node else {
            return Verdict::Drop(DropReason::NotConfigured);
        };
        let Some(port) = t.port(p.port) else {
            return Verdict::Drop(DropReason::UnknownPort);
        };
        // Checked: `off`/`len` come from ring descriptors, so never let
        // their sum wrap (a panic in debug, a bogus slice in release).
        if p.len < ETH || p.off.checked_add(p.len).is_none_or(|end| end > p.buf.len()) {
            return Verdict::Drop(DropReason::EthTruncated);
        }
        let from = match port.kind {
            PortKind::Pod { ip } => fast::From::Pod(ip),
            PortKind::Uplink => fast::From::Uplink,
            // The node's kernel sends from the gateway address.
            PortKind::Host { .. } => fast::From::Pod(node.gateway_ip),
        };
        let probe = match self.fast_path(now, t, node, from, p) {
            Ok(v) => return v,
            Err(probe) => probe,
        };
        self.learn = fast::Learn::default();
        let v = match from {
            fast::From::Pod(ip) => self.on_pod(now, t, node, port, ip, p),
            fast::From::Uplink => self.on_uplink(now, t, node, p),
        };
        if let (Some(probe), Verdict::Tx(out)) = (probe, v) {
            self.learn(t, &probe, p, out);
        }
        v
    }

    fn on_pod(
        &mut self,
        now: u64,
        t: &Tables,
        node: &NodeInfo,
        port: &PortInfo,
        pod_ip: Ipv4Addr,
        p: &mut Packet<'_>,
    ) -> Verdict {
        let eth = EthernetFrame::new_unchecked(&p.buf[p.off..p.off + p.len]);
        match eth.ethertype() {
            ethernet::ethertype::IPV4 => {}
            ethernet::ethertype::ARP => return self.arp(t, node, port, p),
            _ => return Verdict::Drop(DropReason::UnsupportedEthertype),
        }
        if let Err(r) = check_ipv4(p, p.off + ETH) {
            return Verdict::Drop(r);
        }
        let ip = Ipv4Packet::new_unchecked(&p.buf[p.off + ETH..p.off + p.len]);
        if ip.src_addr() != pod_ip {
            return Verdict::Drop(DropReason::SourceMismatch);
        }
        let ing = nat::Ingress {
            external: false,
            in_port: p.port,
            src_mac: eth.src_addr(),
        };
        complete_partial_checksum(p, p.off + ETH);
        self.service_then_route(now, t, node, p, ing)
    }

    /// Service translation (walks 3-4 and their replies), then routing.
    fn service_then_route(
        &mut self,
        now: u64,
        t: &Tables,
        node: &NodeInfo,
        p: &mut Packet<'_>,
        ing: nat::Ingress,
    ) -> Verdict {
        match self.services(now, t, node, p, ing) {
            nat::Nat::Pass => {
                if let Some(mac) = self.icmp_error_nat(p) {
                    return self.reply_external(t, p, mac);
                }
                self.note_nat(fast::Nat::Plain);
            }
            nat::Nat::Route {
                external_reply: None,
            } => {}
            nat::Nat::Route {
                external_reply: Some(mac),
            } => return self.reply_external(t, p, mac),
            nat::Nat::Done(v) => return v,
        }
        if ing.external {
            // An outside client reaches only service frontends.
            let dst = Ipv4Packet::new_unchecked(&p.buf[p.off + ETH..p.off + p.len]).dst_addr();
            if !t.local.contains_key(&dst) && t.routes.lookup(dst).is_none() {
                return Verdict::Drop(DropReason::NotOurs);
            }
        }
        self.route(now, t, node, p, true)
    }

    /// Sends a translated reply straight back out the uplink to the outside
    /// client's (or its router's) MAC, as a router one hop away would.
    fn reply_external(&mut self, t: &Tables, p: &mut Packet<'_>, mac: EthernetAddress) -> Verdict {
        let Some((uplink, info)) = t.uplink.and_then(|u| t.port(u).map(|i| (u, *i))) else {
            return Verdict::Drop(DropReason::NoUplink);
        };
        let ip_off = p.off + ETH;
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut p.buf[ip_off..p.off + p.len]);
            if ip.ttl() <= 1 {
                return Verdict::Drop(DropReason::TtlExceeded);
            }
            ip.decrement_ttl();
        }
        let total = Ipv4Packet::new_unchecked(&p.buf[ip_off..p.off + p.len]).total_len() as usize;
        p.len = ETH + total;
        let mut eth = EthernetFrame::new_unchecked(&mut p.buf[p.off..p.off + p.len]);
        eth.set_dst_addr(mac);
        eth.set_src_addr(info.mac);
        self.note_l2(fast::L2::External);
        Verdict::Tx(uplink)
    }

    /// Routes the IPv4 datagram of a validated frame at `p.off` to a local pod
    /// or a remote node. `forwarded`: decrement TTL (false for errors we made).
    fn route(
        &mut self,
        now: u64,
        t: &Tables,
        node: &NodeInfo,
        p: &mut Packet<'_>,
        forwarded: bool,
    ) -> Verdict {
        let ip_off = p.off + ETH;
        let (dst, ttl, total_len, df) = {
            let ip = Ipv4Packet::new_unchecked(&p.buf[ip_off..p.off + p.len]);
            (
                ip.dst_addr(),
                ip.ttl(),
                ip.total_len() as usize,
                ip.dont_frag(),
            )
        };
        // Ethernet padding is not part of the datagram; don't carry it on.
        p.len = ETH + total_len;
        if dst == node.gateway_ip {
            // Walk 5: to the node itself, through the host interface.
            let host = t.host.and_then(|h| t.port(h).map(|i| (h, *i)));
            let Some((
                h,
                PortInfo {
                    kind: PortKind::Host { peer_mac },
                    mac,
                },
            )) = host
            else {
                return Verdict::Drop(DropReason::ToGateway);
            };
            return self.deliver(now, t, node, p, forwarded, (h, peer_mac, mac));
        }
        if dst.is_broadcast() || dst.is_multicast() || dst.is_unspecified() {
            return Verdict::Drop(DropReason::Ipv4Martian);
        }
        // Local pods are in this node's pod CIDR (the state checks it): skip
        // the map lookup for anything else.
        let local = node.pod_cidr.contains(dst).then(|| t.local.get(&dst));
        if let Some(lp) = local.flatten() {
            let Some(out) = t.port(lp.port) else {
                return self.icmp_error(
                    now,
                    t,
                    node,
                    p,
                    IcmpError::Unreachable(icmp::code::HOST_UNREACHABLE),
                    DropReason::NoRoute,
                );
            };
            return self.deliver(now, t, node, p, forwarded, (lp.port, lp.mac, out.mac));
        }
        let Some(r) = t.routes.lookup(dst) else {
            let code = if node.cluster_cidr.contains(dst) {
                icmp::code::HOST_UNREACHABLE
            } else {
                icmp::code::NET_UNREACHABLE
            };
            return self.icmp_error(
                now,
                t,
                node,
                p,
                IcmpError::Unreachable(code),
                DropReason::NoRoute,
            );
        };
        if forwarded && ttl <= 1 {
            return self.icmp_error(
                now,
                t,
                node,
                p,
                IcmpError::TimeExceeded,
                DropReason::TtlExceeded,
            );
        }
        if total_len > node.pod_mtu as usize {
            if df {
                return self.icmp_error(
                    now,
                    t,
                    node,
                    p,
                    IcmpError::FragNeeded(node.pod_mtu),
                    DropReason::TooBig,
                );
            }
            return Verdict::Drop(DropReason::TooBig);
        }
        let uplink = t.uplink.and_then(|u| t.port(u).map(|i| (u, i)));
        let (Some(uplink), Some(nh)) = (uplink, r.next_hop_mac) else {
            // An uplink id whose port info is gone (detached) is no uplink.
            return Verdict::Drop(if uplink.is_none() {
                DropReason::NoUplink
            } else {
                DropReason::NeighbourUnresolved
            });
        };
        if p.off < ENCAP_LEN {
            return Verdict::Drop(DropReason::NoHeadroom);
        }
        if forwarded {
            Ipv4Packet::new_unchecked(&mut p.buf[ip_off..p.off + p.len]).decrement_ttl();
        }
        let hash = flow_hash(&p.buf[ip_off..p.off + p.len]);
        {
            let mut inner = EthernetFrame::new_unchecked(&mut p.buf[p.off..p.off + p.len]);
            inner.set_dst_addr(r.vtep_mac);
            inner.set_src_addr(node.vtep_mac);
        }
        encap(p, node, uplink.1.mac, nh, r.vtep_ip, hash);
        self.counters.encapsulated += 1;
        if forwarded {
            self.note_l2(fast::L2::Encap);
        }
        Verdict::Tx(uplink.0)
    }

    /// Delivers the datagram at `p.off` on a port of this node (a pod, the
    /// host): `(port, destination MAC, our port MAC)`. A router hop: TTL
    /// decremented (time exceeded at 1) unless we made the packet ourselves.
    fn deliver(
        &mut self,
        now: u64,
        t: &Tables,
        node: &NodeInfo,
        p: &mut Packet<'_>,
        forwarded: bool,
        (port, dst_mac, src_mac): (PortId, EthernetAddress, EthernetAddress),
    ) -> Verdict {
        let ip_off = p.off + ETH;
        if forwarded {
            let mut ip = Ipv4Packet::new_unchecked(&mut p.buf[ip_off..p.off + p.len]);
            if ip.ttl() <= 1 {
                return self.icmp_error(
                    now,
                    t,
                    node,
                    p,
                    IcmpError::TimeExceeded,
                    DropReason::TtlExceeded,
                );
            }
            ip.decrement_ttl();
        }
        let mut eth = EthernetFrame::new_unchecked(&mut p.buf[p.off..p.off + p.len]);
        eth.set_dst_addr(dst_mac);
        eth.set_src_addr(src_mac);
        self.counters.routed_local += 1;
        if forwarded {
            self.note_l2(fast::L2::Local);
        }
        Verdict::Tx(port)
    }

    fn on_uplink(&mut self, now: u64, t: &Tables, node: &NodeInfo, p: &mut Packet<'_>) -> Verdict {
        let eth = EthernetFrame::new_unchecked(&p.buf[p.off..p.off + p.len]);
        if eth.ethertype() != ethernet::ethertype::IPV4 {
            return Verdict::Drop(DropReason::NotOurs);
        }
        let ip_off = p.off + ETH;
        if let Err(r) = check_ipv4(p, ip_off) {
            return Verdict::Drop(r);
        }
        let ip = Ipv4Packet::new_unchecked(&p.buf[ip_off..p.off + p.len]);
        if ip.dst_addr() != node.underlay_ip {
            return Verdict::Drop(DropReason::NotOurs);
        }
        let proto = ip.protocol();
        let ip_payload_off = ip_off + ip.header_len();
        let ip_end = ip_off + ip.total_len() as usize;
        let vxlan_port = proto == ipv4::protocol::UDP
            && p.buf[ip_payload_off..ip_end].len() >= 4
            && u16::from_be_bytes([p.buf[ip_payload_off + 2], p.buf[ip_payload_off + 3]])
                == node.vxlan_port;
        if !vxlan_port {
            if proto != ipv4::protocol::TCP && proto != ipv4::protocol::UDP {
                return Verdict::Drop(DropReason::NotOurs);
            }
            // Walk 4: an outside client to NodeIP:NodePort.
            let ing = nat::Ingress {
                external: true,
                in_port: p.port,
                src_mac: eth.src_addr(),
            };
            return self.service_then_route(now, t, node, p, ing);
        }
        let Ok(u) = udp::UdpPacket::new_checked(&p.buf[ip_payload_off..ip_end]) else {
            return Verdict::Drop(DropReason::UdpMalformed);
        };
        let vx_off = ip_payload_off + udp::HEADER_LEN;
        let vx_end = ip_payload_off + u.len() as usize;
        let Ok(vx) = vxlan::VxlanPacket::new_checked(&p.buf[vx_off..vx_end]) else {
            return Verdict::Drop(DropReason::VxlanMalformed);
        };
        if vx.vni() != node.vni {
            return Verdict::Drop(DropReason::VxlanBadVni);
        }
        // Decap: the inner frame becomes the packet, in place.
        p.off = vx_off + vxlan::HEADER_LEN;
        p.len = vx_end - p.off;
        if p.len < ETH {
            return Verdict::Drop(DropReason::EthTruncated);
        }
        let inner = EthernetFrame::new_unchecked(&p.buf[p.off..p.off + p.len]);
        if inner.ethertype() != ethernet::ethertype::IPV4 {
            return Verdict::Drop(DropReason::UnsupportedEthertype);
        }
        if let Err(r) = check_ipv4(p, p.off + ETH) {
            return Verdict::Drop(r);
        }
        self.counters.decapsulated += 1;
        // Replies from remote backends come back to this node's gateway
        // address (SNAT) or to a local client: translate before routing.
        let src_mac = EthernetFrame::new_unchecked(&p.buf[p.off..p.off + ETH]).src_addr();
        let ing = nat::Ingress {
            external: false,
            in_port: p.port,
            src_mac,
        };
        match self.services(now, t, node, p, ing) {
            nat::Nat::Pass => {
                if let Some(mac) = self.icmp_error_nat(p) {
                    return self.reply_external(t, p, mac);
                }
                self.note_nat(fast::Nat::Plain);
            }
            nat::Nat::Route {
                external_reply: None,
            } => return self.route(now, t, node, p, true),
            nat::Nat::Route {
                external_reply: Some(mac),
            } => return self.reply_external(t, p, mac),
            nat::Nat::Done(v) => {
                if let Verdict::Handoff(_) = v {
                    // The owner decapsulates (and counts) it again.
                    self.counters.decapsulated -= 1;
                }
                return v;
            }
        }
        // An ICMP error may have been translated: read the destination again.
        let dst = Ipv4Packet::new_unchecked(&p.buf[p.off + ETH..p.off + p.len]).dst_addr();
        // Only local pods and this node (its gateway address, the host
        // interface) are reached through the overlay; no transit.
        if !t.local.contains_key(&dst) && dst != node.gateway_ip {
            self.counters.decapsulated -= 1;
            return self.icmp_error(
                now,
                t,
                node,
                p,
                IcmpError::Unreachable(icmp::code::HOST_UNREACHABLE),
                DropReason::NoRoute,
            );
        }
        self.route(now, t, node, p, true)
    }

    /// Answers ARP requests from a pod for addresses in the pod CIDR (the
    /// gateway and, as proxy ARP, other pods: every pod packet is routed).
    fn arp(&mut self, t: &Tables, node: &NodeInfo, port: &PortInfo, p: &mut Packet<'_>) -> Verdict {
        let a = p.off + ETH;
        let Ok(req) = ArpPacket::new_checked(&p.buf[a..p.off + p.len]) else {
            return Verdict::Drop(DropReason::ArpMalformed);
        };
        let (sender_hw, sender_ip, target_ip) =
            (req.sender_hw_addr(), req.sender_ip(), req.target_ip());
        // The host interface reaches every pod and ClusterIP through us; a
        // pod reaches its own pod CIDR (the gateway included).
        let answerable = match port.kind {
            PortKind::Host { .. } => {
                target_ip != node.gateway_ip
                    && (node.cluster_cidr.contains(target_ip)
                        || t.services.cidr.is_some_and(|c| c.contains(target_ip)))
            }
            _ => node.pod_cidr.contains(target_ip),
        };
        if req.operation() != arp::op::REQUEST
            || sender_ip.is_unspecified()
            || sender_ip == target_ip
            || !answerable
        {
            return Verdict::Drop(DropReason::ArpIgnored);
        }
        if p.off + ETH_MIN_FRAME > p.buf.len() {
            return Verdict::Drop(DropReason::NoHeadroom);
        }
        ethernet::emit(
            &mut p.buf[p.off..],
            sender_hw,
            port.mac,
            ethernet::ethertype::ARP,
        );
        arp::emit_reply(&mut p.buf[a..], port.mac, target_ip, sender_hw, sender_ip);
        p.buf[a + arp::LEN..p.off + ETH_MIN_FRAME].fill(0);
        p.len = ETH_MIN_FRAME;
        self.counters.arp_replies += 1;
        Verdict::Tx(p.port)
    }

    /// Turns the frame into an ICMP error about it, addressed to its source,
    /// and routes that; the original counts as dropped for `reason`.
    fn icmp_error(
        &mut self,
        now: u64,
        t: &Tables,
        node: &NodeInfo,
        p: &mut Packet<'_>,
        kind: IcmpError,
        reason: DropReason,
    ) -> Verdict {
        self.icmp_error_to(now, t, node, p, kind, reason, None)
    }

    /// As [`Pipeline::icmp_error`]; with `outside`, the frame came from
    /// outside the cluster (a NodePort client, or its router, at that MAC):
    /// the error comes from the address it was sent to and goes straight
    /// back out the uplink.
    #[allow(clippy::too_many_arguments)]
    fn icmp_error_to(
        &mut self,
        now: u64,
        t: &Tables,
        node: &NodeInfo,
        p: &mut Packet<'_>,
        kind: IcmpError,
        reason: DropReason,
        outside: Option<EthernetAddress>,
    ) -> Verdict {
        // An error is not what the flow's next packet gets.
        self.note_nat(fast::Nat::None);
        let ip_off = p.off + ETH;
        let (src, dst, header_len, total_len, proto) = {
            let ip = Ipv4Packet::new_unchecked(&p.buf[ip_off..p.off + p.len]);
            (
                ip.src_addr(),
                ip.dst_addr(),
                ip.header_len(),
                ip.total_len() as usize,
                ip.protocol(),
            )
        };
        // Never about ICMP errors, martian sources, or from too little headroom.
        // The ICMP type is read inside the datagram only, never from the
        // chunk bytes after it; one too short to have a type counts as an
        // error.
        let icmp_type = p.buf[..ip_off + total_len].get(ip_off + header_len);
        let about_icmp_error = proto == ipv4::protocol::ICMP
            && icmp_type.is_none_or(|ty| {
                !matches!(
                    *ty,
                    icmp::msg_type::ECHO_REQUEST | icmp::msg_type::ECHO_REPLY
                )
            });
        if about_icmp_error
            || src.is_unspecified()
            || src.is_broadcast()
            || src.is_multicast()
            || p.off < ICMP_ERR_HDR
        {
            return Verdict::Drop(reason);
        }
        if !self.icmp_allowed(now) {
            self.counters.icmp_rate_limited += 1;
            return Verdict::Drop(reason);
        }
        self.counters.drops[reason as usize] += 1;
        let quote = total_len.min(header_len + 8);
        // The quoted datagram stays where it is; the new headers go in front.
        let new_off = p.off - ICMP_ERR_HDR;
        let icmp_off = new_off + ETH + IPV4_MIN;
        let icmp_len = 8 + quote;
        {
            let (ty, code, rest) = match kind {
                IcmpError::TimeExceeded => (
                    icmp::msg_type::TIME_EXCEEDED,
                    icmp::code::TTL_EXCEEDED_IN_TRANSIT,
                    0u32,
                ),
                IcmpError::Unreachable(c) => (icmp::msg_type::DEST_UNREACHABLE, c, 0),
                IcmpError::FragNeeded(mtu) => (
                    icmp::msg_type::DEST_UNREACHABLE,
                    icmp::code::FRAG_NEEDED,
                    mtu as u32,
                ),
            };
            let b = &mut p.buf[icmp_off..icmp_off + icmp_len];
            b[0] = ty;
            b[1] = code;
            b[2..4].fill(0);
            b[4..8].copy_from_slice(&rest.to_be_bytes());
            Icmpv4Packet::new_unchecked(b).fill_checksum();
        }
        // Port unreachable is what the addressed host says, so it comes from
        // the address the client sent to (a ClusterIP, the NodeIP): the node's
        // own kernel would drop one from its own gateway address as martian.
        // Router errors (TTL, no route, too big) come from the gateway.
        let host_error = matches!(kind, IcmpError::Unreachable(icmp::code::PORT_UNREACHABLE));
        ipv4::emit_header(
            &mut p.buf[new_off + ETH..],
            if outside.is_some() || host_error {
                dst
            } else {
                node.gateway_ip
            },
            src,
            ipv4::protocol::ICMP,
            icmp_len as u16,
            OUTER_TTL,
            0,
            false,
        );
        p.buf[new_off + 12..new_off + 14].copy_from_slice(&ethernet::ethertype::IPV4.to_be_bytes());
        p.off = new_off;
        p.len = ETH + IPV4_MIN + icmp_len;
        self.counters.icmp_errors_sent += 1;
        // About a translated packet (DNATed, SNATed): quote it as the
        // client sent it, or the client cannot match the error to its flow.
        let sent = match outside.or_else(|| self.icmp_error_nat(p)) {
            Some(mac) => self.reply_external(t, p, mac),
            None => self.route(now, t, node, p, false),
        };
        match sent {
            v @ Verdict::Tx(_) => v,
            // The error itself could not be delivered: the original's drop
            // is already counted; don't count this one twice. (Routing never
            // hands off.)
            Verdict::Drop(_) | Verdict::Handoff(_) => {
                self.counters.icmp_errors_sent -= 1;
                self.counters.drops[reason as usize] -= 1;
                Verdict::Drop(reason)
            }
        }
    }

    fn icmp_allowed(&mut self, now: u64) -> bool {
        const NS_PER_TOKEN: u64 = 1_000_000_000 / ICMP_RATE_PER_SEC;
        let elapsed = now.saturating_sub(self.icmp_last_ns);
        let refill = elapsed / NS_PER_TOKEN;
        if refill > 0 {
            self.icmp_tokens = (self.icmp_tokens + refill).min(ICMP_BURST);
            // Keep the part of a token not yet earned: setting this to `now`
            // would drop it and, polled every 1.5 ms, cut the rate by a third.
            self.icmp_last_ns += refill * NS_PER_TOKEN;
        }
        if self.icmp_tokens == 0 {
            return false;
        }
        self.icmp_tokens -= 1;
        true
    }
}

/// Validates the IPv4 header at `ip_off` of a frame: the checks a router
/// makes before forwarding. Options and fragments are not forwarded.
fn check_ipv4(p: &Packet<'_>, ip_off: usize) -> Result<(), DropReason> {
    let end = p.off + p.len;
    let b = &p.buf[ip_off.min(end)..end];
    if b.len() < IPV4_MIN {
        return Err(DropReason::Ipv4Truncated);
    }
    if b[0] >> 4 != 4 {
        return Err(DropReason::Ipv4BadVersion);
    }
    if b[0] & 0xf < 5 {
        return Err(DropReason::Ipv4BadIhl);
    }
    let ip = match Ipv4Packet::new_checked(b) {
        Ok(ip) => ip,
        Err(crate::wire::Error::Truncated) => return Err(DropReason::Ipv4Truncated),
        Err(crate::wire::Error::Malformed) => return Err(DropReason::Ipv4BadLength),
    };
    if !ip.verify_checksum() {
        return Err(DropReason::Ipv4BadChecksum);
    }
    if ip.has_options() {
        return Err(DropReason::Ipv4Options);
    }
    if ip.is_fragment() {
        return Err(DropReason::Ipv4Fragment);
    }
    Ok(())
}

/// Finishes a TCP/UDP checksum the sender left to "hardware": a pod or the
/// host with TX checksum offload on its veth sends the folded pseudo-header
/// sum in the checksum field, for the NIC to finish over the segment. An
/// AF_XDP frame carries no CHECKSUM_PARTIAL mark and nothing downstream
/// would finish it, so kxdp does, as the NIC would. (A complete checksum
/// that happens to equal that value is recomputed to itself.) Costs a
/// pseudo-header sum per packet, and a pass over the segment only for such
/// frames. Needs a validated IPv4 header without options at `ip_off`.
fn complete_partial_checksum(p: &mut Packet<'_>, ip_off: usize) {
    let h: &[u8; 20] = p.buf[ip_off..ip_off + IPV4_MIN]
        .try_into()
        .expect("validated by check_ipv4");
    let proto = h[9];
    let at = match proto {
        ipv4::protocol::TCP => 16,
        ipv4::protocol::UDP => 6,
        _ => return,
    };
    let total = u16::from_be_bytes([h[2], h[3]]) as usize;
    let l4_len = total - IPV4_MIN;
    if l4_len < at + 2 {
        return;
    }
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
    let c = ip_off + IPV4_MIN + at;
    let field = u16::from_be_bytes([p.buf[c], p.buf[c + 1]]);
    let pseudo = checksum::fold(checksum::pseudo_header(src, dst, proto, l4_len as u16));
    // One's complement has two zeros; the sender's fold may pick either.
    let partial =
        field == pseudo || (field == 0 && pseudo == 0xFFFF && proto == ipv4::protocol::TCP);
    if !partial {
        return;
    }
    // The field holds the pseudo-header sum: summing the segment with it
    // in place gives the whole sum.
    let seg = &p.buf[ip_off + IPV4_MIN..ip_off + total];
    let mut sum = checksum::finish(checksum::sum(seg));
    if proto == ipv4::protocol::UDP && sum == 0 {
        sum = 0xFFFF;
    }
    p.buf[c..c + 2].copy_from_slice(&sum.to_be_bytes());
}

/// Writes the outer Ethernet/IPv4/UDP/VXLAN headers in front of the frame
/// and moves `p.off` back over them (RFC 7348 section 5).
fn encap(
    p: &mut Packet<'_>,
    node: &NodeInfo,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    vtep: Ipv4Addr,
    hash: u32,
) {
    let inner_len = p.len;
    let o = p.off - ENCAP_LEN;
    let b = &mut p.buf[o..o + ENCAP_LEN];
    ethernet::emit(b, dst_mac, src_mac, ethernet::ethertype::IPV4);
    let udp_len = (udp::HEADER_LEN + vxlan::HEADER_LEN + inner_len) as u16;
    ipv4::emit_header(
        &mut b[ETH..],
        node.underlay_ip,
        vtep,
        ipv4::protocol::UDP,
        udp_len,
        OUTER_TTL,
        0,
        true,
    );
    // Source port from the inner flow's hash, in the dynamic range, so
    // underlay ECMP/RSS spreads flows; checksum zero (allowed over IPv4).
    let sport = 0xC000 | (hash as u16 & 0x3FFF);
    udp::emit_header(
        &mut b[ETH + IPV4_MIN..],
        sport,
        node.vxlan_port,
        udp_len - 8,
        0,
    );
    vxlan::emit_header(&mut b[ETH + IPV4_MIN + udp::HEADER_LEN..], node.vni);
    p.off = o;
    p.len = inner_len + ENCAP_LEN;
}

/// Hash of the inner flow (addresses, protocol, ports) of an IPv4 datagram
/// without options. Symmetric flows need not hash alike: each direction is
/// encapsulated by a different node.
#[inline]
pub fn flow_hash(ip: &[u8]) -> u32 {
    let h: &[u8; 20] = ip[..20].try_into().expect("a validated IPv4 header");
    let src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as u64;
    let dst = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as u64;
    let proto = h[9];
    let ports = match ip.get(20..24) {
        Some(p) if proto == ipv4::protocol::TCP || proto == ipv4::protocol::UDP => {
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as u64
        }
        _ => 0,
    };
    mix(src << 32 | dst, (proto as u64) << 32 | ports) as u32
}

/// The same hash over a conntrack key (backend selection).
#[inline]
pub(crate) fn flow_hash_key(k: &FlowKey) -> u32 {
    let a = (u32::from(k.src) as u64) << 32 | u32::from(k.dst) as u64;
    let b = (k.proto as u64) << 32 | (k.sport as u64) << 16 | k.dport as u64;
    mix(a, b) as u32
}

/// A 64-bit finaliser (splitmix64's), for hashing one value.
#[inline]
pub(crate) fn mix64(x: u64) -> u64 {
    mix(x, 0)
}

#[inline]
fn mix(a: u64, b: u64) -> u64 {
    let mut h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    h
}

#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;

/// The flow cache's check in test builds: every batch also runs through a
/// twin pipeline without it, which must decide and write the same.
#[cfg(test)]
impl Pipeline {
    /// Runs a copy of the batch; returns each frame's verdict and bytes.
    fn run_copy(&mut self, now: u64, t: &Tables, pkts: &[Packet<'_>]) -> Vec<(Verdict, Vec<u8>)> {
        let mut bufs: Vec<Vec<u8>> = pkts.iter().map(|p| p.buf.to_vec()).collect();
        let mut copy: Vec<Packet<'_>> = bufs
            .iter_mut()
            .zip(pkts)
            .map(|(b, p)| Packet::new(b, p.off, p.len, p.port))
            .collect();
        self.run(now, t, &mut copy);
        // A dropped frame's range may be anything (bad descriptors).
        copy.iter()
            .map(|p| match p.verdict {
                Verdict::Drop(_) => (p.verdict, Vec::new()),
                _ => (p.verdict, p.frame().to_vec()),
            })
            .collect()
    }

    fn same_as(&self, twin: &Pipeline, out: &[(Verdict, Vec<u8>)], pkts: &[Packet<'_>]) {
        for (i, (p, (v, f))) in pkts.iter().zip(out).enumerate() {
            assert_eq!(
                p.verdict, *v,
                "frame {i}: the flow cache and the walk disagree"
            );
            if !matches!(v, Verdict::Drop(_)) {
                assert_eq!(
                    p.frame(),
                    &f[..],
                    "frame {i}: the flow cache wrote other bytes"
                );
            }
        }
        // The twin has no cache: all else must agree.
        let mine = Counters {
            flow_cache_hits: 0,
            ..self.counters.clone()
        };
        assert_eq!(mine, twin.counters, "counters");
        assert_eq!(self.nat.svc, twin.nat.svc, "service counters");
        assert_eq!(self.ct.stats(), twin.ct.stats(), "conntrack");
    }
}
