//! Service load balancing: walks 3 (pod -> ClusterIP) and 4 (outside
//! client -> NodeIP:NodePort, external and LoadBalancer IPs), their
//! replies, and ICMP errors about them.
//!
//! A new flow to a frontend picks a backend (ClientIP affinity, else Maglev
//! over ready backends), is DNATed (and SNATed for NodePort with
//! externalTrafficPolicy Cluster, or for hairpin), and is remembered in the
//! worker's conntrack under both its original and its reply key. Later
//! packets of either direction find the entry and are translated; replies
//! carry the frontend's address, so the client only ever sees it.
//!
//! An established flow keeps its backend while the backend is serving
//! (ready, or terminating). When the backend is gone: TCP gets a reset, UDP
//! is re-balanced to a live backend at once (no stale-entry black hole).

use core::net::Ipv4Addr;

use hashbrown::HashMap;

use super::{Ctx, DropReason, Packet, Pipeline, Verdict, ETH, IPV4_MIN};
use crate::conntrack::{Dir, Entry, FlowKey, InsertError, TcpState};
use crate::policy::{Allowing, Decided, Decision, Direction, PolicyFlows};
use crate::services::{Frontend, FrontendKey};
use crate::tables::{NodeInfo, Tables};
use crate::wire::l4::{L4Header, Ports, PORTS_LEN};
use crate::wire::{checksum, ethernet, icmp, ipv4, tcp, udp, EthernetAddress};

/// SNAT source ports: above Linux's default ephemeral range (32768-60999),
/// so they never collide with the node kernel's own connections from the
/// same (gateway) address.
pub const SNAT_PORTS: (u16, u16) = (61000, 65535);
/// Ports tried for one SNAT before giving up.
const SNAT_TRIES: u16 = 16;
/// How long an unconfirmed flow (no answer, or a handshake not finished)
/// keeps its SNAT port against a new flow that found every port it tried
/// taken: far above any in-cluster handshake, so only what a flood left
/// behind (or a dead backend's SYNs) is reclaimed.
const RECLAIM_AFTER_NS: u64 = 1_000_000_000;
/// Candidates drawn per worker to find one remapped client port that is
/// this worker's: (1 - 1/n)^(8n) < e^-8 that a scan finds none.
const REMAP_SCAN: u16 = 8;
/// Entry flag: source was translated too (address and port, or only the
/// port when the client's reply key was taken).
const F_SNAT: u8 = 1;
/// Entry flag: the client is outside the cluster (arrived on the uplink).
const F_EXTERNAL: u8 = 2;
/// Entry flag: pod egress masqueraded to the node's address (walk 7): no
/// service, no DNAT.
const F_MASQ: u8 = 4;
/// Entry flag: a flow that network policy allowed (no translation),
/// tracked so that its replies pass an isolated pod's policy. `backend`
/// holds the snapshot stamp it was last allowed in ([`validated`]).
const F_POLICY: u8 = 8;
/// `Entry::service` of a flow that is no service's (egress).
pub const NO_SERVICE: u32 = u32::MAX;

/// ClientIP session affinity: the last backend a client used per frontend,
/// until the service's timeout after its last new flow (kube-proxy's
/// `recent` match: each new flow refreshes it).
#[derive(Debug, Clone, Copy)]
struct Affinity {
    backend: (Ipv4Addr, u16),
    expires_ns: u64,
}

/// How often, at most, expired affinity records are swept out: when the
/// table is full and a new client needs a record, or an idle worker
/// maintains its tables. A sweep visits every record (65,536 at most, well
/// under a millisecond), so a flood of new clients costs one a second.
const AFFINITY_SWEEP_NS: u64 = 1_000_000_000;

/// Per-service counters, indexed by the service's stable id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SvcCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub no_endpoint: u64,
}

/// One backend's traffic on a worker: its new flows, and the packets and
/// bytes of its flows both ways (translated, as a service's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendCounters {
    pub new_flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

impl core::ops::AddAssign for BackendCounters {
    fn add_assign(&mut self, o: BackendCounters) {
        self.new_flows += o.new_flows;
        self.packets += o.packets;
        self.bytes += o.bytes;
    }
}

/// An entry's tag (`Conntrack::tag`) when it has no backend slot.
pub(super) const NO_SLOT: u32 = u32::MAX;

/// Where the service machinery keeps its per-worker state.
#[derive(Debug)]
pub struct NatState {
    /// At most `affinity_cap` records in a map sized for twice that, so
    /// that hashbrown always rehashes in place (never allocates) when
    /// removed records' tombstones fill it.
    affinity: HashMap<(FrontendKey, Ipv4Addr), Affinity>,
    affinity_cap: usize,
    /// No sweep of expired records before this.
    affinity_sweep_ns: u64,
    /// Service and backend counters, allocated by the engine.
    pub(super) books: ServiceBooks,
    /// Where counts go for a service index the books have no room for
    /// (none, when the engine sized them for the tables).
    spill: SvcCounters,
}

/// A worker's per-service and per-backend counters, allocated off the
/// worker (by the engine, with each snapshot: [`ServiceBooks::for_tables`])
/// and swapped in with the tables (`Pipeline::swap_books`), so that the
/// worker never allocates for them and they stay as large as the tables
/// need: no map that grows with every backend ever seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ServiceBooks {
    /// By service index: cumulative while an index names one service.
    pub services: Vec<SvcCounters>,
    /// Per backend slot of the snapshot the books were made for
    /// (`Services::backend_keys`), from zero.
    pub backends: Box<[BackendCounters]>,
    /// Service indexes that name a new service in this snapshot (a
    /// deleted service's index reused): their counters start from zero.
    pub fresh: Vec<u32>,
    /// New flows per policy of the snapshot (`Policies::names`), from zero.
    pub policy_flows: Box<[PolicyFlows]>,
}

impl ServiceBooks {
    /// Zeroed books for `t`, with room for `services` service indexes.
    pub fn for_tables(t: &crate::tables::Tables, services: usize) -> ServiceBooks {
        ServiceBooks {
            services: vec![SvcCounters::default(); services.max(t.services.names.len())],
            backends: vec![BackendCounters::default(); t.services.backend_keys.len()]
                .into_boxed_slice(),
            fresh: Vec::new(),
            policy_flows: vec![PolicyFlows::default(); t.policy.names.len()].into_boxed_slice(),
        }
    }
}

impl NatState {
    pub fn new(affinity_cap: usize) -> NatState {
        NatState {
            affinity: HashMap::with_capacity(2 * affinity_cap),
            affinity_cap,
            affinity_sweep_ns: 0,
            books: ServiceBooks::default(),
            spill: SvcCounters::default(),
        }
    }

    /// Takes `fresh` books (made for the tables being swapped in), carries
    /// the service counters over (but those of `fresh.fresh`), and returns
    /// the old books, whose backend counts belong to the old tables. No
    /// allocation: copies within `fresh`, which must hold every service
    /// index the old books did (else the extra ones' counts are dropped).
    pub fn swap_books(&mut self, mut fresh: ServiceBooks) -> ServiceBooks {
        let n = self.books.services.len().min(fresh.services.len());
        fresh.services[..n].copy_from_slice(&self.books.services[..n]);
        for &i in &fresh.fresh {
            if let Some(c) = fresh.services.get_mut(i as usize) {
                *c = SvcCounters::default();
            }
        }
        std::mem::replace(&mut self.books, fresh)
    }
}

/// The L3/L4 facts of a validated IPv4 packet that NAT needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct L4 {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub l4_off: usize,
    pub tcp_flags: Option<u8>,
}

impl L4 {
    fn key(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
        }
    }
}

/// Reads ports (TCP/UDP) of the datagram at `p.off + ETH`. `None` for other
/// protocols or a transport header too short to carry them.
pub(super) fn l4(p: &Packet<'_>) -> Option<L4> {
    let ip_off = p.off + ETH;
    let b = &p.buf[ip_off..p.off + p.len];
    // Fixed-size views: one bounds check each, constant offsets after.
    let h = ipv4::Ipv4Header::new(b.first_chunk::<IPV4_MIN>()?);
    let hl = h.header_len();
    let proto = h.protocol();
    let min = match proto {
        ipv4::protocol::TCP => tcp::HEADER_LEN,
        ipv4::protocol::UDP => udp::HEADER_LEN,
        _ => return None,
    };
    if b.len() < hl + min {
        return None;
    }
    let l4h = b[hl..].first_chunk::<PORTS_LEN>()?;
    let ports = Ports::new(l4h);
    Some(L4 {
        proto,
        src: h.src_addr(),
        dst: h.dst_addr(),
        sport: ports.src(),
        dport: ports.dst(),
        l4_off: ip_off + hl,
        tcp_flags: match proto {
            ipv4::protocol::TCP => Some(tcp::TcpHeader::new(b[hl..].first_chunk()?).flags()),
            _ => None,
        },
    })
}

/// An ICMP echo that walk 7 tracks, as [`L4`]: a request from a pod (the
/// identifier is its source "port") or a reply from outside (its
/// destination's), the other side's port 0. A request's reversed key is
/// then its reply's, as Linux's conntrack pairs them. `None` for anything
/// else, a later fragment included.
pub(super) fn echo(p: &Packet<'_>, external: bool) -> Option<L4> {
    let ip_off = p.off + ETH;
    let b = &p.buf[ip_off..p.off + p.len];
    let h = ipv4::Ipv4Header::new(b.first_chunk::<IPV4_MIN>()?);
    let hl = h.header_len();
    if h.protocol() != ipv4::protocol::ICMP || h.frag_offset() != 0 {
        return None;
    }
    let m = icmp::Icmpv4Packet::new_unchecked(b.get(hl..)?.first_chunk::<{ icmp::HEADER_LEN }>()?);
    let id = m.echo_ident();
    let (sport, dport) = match (m.msg_type(), external) {
        (icmp::msg_type::ECHO_REQUEST, false) => (id, 0),
        (icmp::msg_type::ECHO_REPLY, true) => (0, id),
        _ => return None,
    };
    Some(L4 {
        proto: ipv4::protocol::ICMP,
        src: h.src_addr(),
        dst: h.dst_addr(),
        sport,
        dport,
        l4_off: ip_off + hl,
        tcp_flags: None,
    })
}

/// Rewrites source and/or destination address and port of a TCP/UDP
/// datagram (or an ICMP echo: [`rewrite_echo`]), updating the IPv4 and
/// transport checksums incrementally.
pub(super) fn rewrite(
    p: &mut Packet<'_>,
    l: &L4,
    src: Option<(Ipv4Addr, u16)>,
    dst: Option<(Ipv4Addr, u16)>,
) {
    const CHECKED: &str = "checked by l4()";
    if l.proto == ipv4::protocol::ICMP {
        return rewrite_echo(p, l, src, dst);
    }
    let ip_off = p.off + ETH;
    let (iph, rest) = p.buf[ip_off..].split_at_mut(l.l4_off - ip_off);
    let ip = ipv4::Ipv4Header::new(iph.first_chunk_mut::<IPV4_MIN>().expect(CHECKED));
    if l.proto == ipv4::protocol::TCP {
        let l4h = tcp::TcpHeader::new(rest.first_chunk_mut().expect(CHECKED));
        rewrite_headers(ip, l4h, src, dst);
    } else {
        let l4h = udp::UdpHeader::new(rest.first_chunk_mut().expect(CHECKED));
        rewrite_headers(ip, l4h, src, dst);
    }
}

/// [`rewrite`] of an ICMP echo ([`echo`]): the addresses, and the
/// identifier where it stands for a port (the request's source, the
/// reply's destination). ICMP's checksum covers no pseudo-header, so only
/// the identifier patches it.
fn rewrite_echo(
    p: &mut Packet<'_>,
    l: &L4,
    src: Option<(Ipv4Addr, u16)>,
    dst: Option<(Ipv4Addr, u16)>,
) {
    const CHECKED: &str = "checked by echo()";
    let ip_off = p.off + ETH;
    let (iph, rest) = p.buf[ip_off..].split_at_mut(l.l4_off - ip_off);
    let mut ip = ipv4::Ipv4Header::new(iph.first_chunk_mut::<IPV4_MIN>().expect(CHECKED));
    let mut m = icmp::Icmpv4Packet::new_unchecked(
        rest.first_chunk_mut::<{ icmp::HEADER_LEN }>()
            .expect(CHECKED),
    );
    let mut ipc = ip.checksum();
    let id = if m.msg_type() == icmp::msg_type::ECHO_REQUEST {
        src
    } else {
        dst
    };
    if let Some((_, new)) = id {
        let c = checksum::update_u16(m.checksum(), m.echo_ident(), new);
        m.set_echo_ident(new);
        m.set_checksum(c);
    }
    if let Some((a, _)) = src {
        ipc = checksum::update_u32(ipc, u32::from(ip.src_addr()), u32::from(a));
        ip.set_src_addr(a);
    }
    if let Some((a, _)) = dst {
        ipc = checksum::update_u32(ipc, u32::from(ip.dst_addr()), u32::from(a));
        ip.set_dst_addr(a);
    }
    ip.set_checksum(ipc);
}

/// [`rewrite`] over fixed-size views: the IPv4 header and the transport
/// header.
#[inline(always)]
fn rewrite_headers(
    mut ip: ipv4::Ipv4Header<&mut [u8; IPV4_MIN]>,
    mut l4h: impl L4Header,
    src: Option<(Ipv4Addr, u16)>,
    dst: Option<(Ipv4Addr, u16)>,
) {
    let mut ipc = ip.checksum();
    // UDP checksum 0 means "none": leave it so.
    let mut l4c = l4h.checksum_to_patch();
    let mut patch = |old: (Ipv4Addr, u16), (new_ip, new_port): (Ipv4Addr, u16)| {
        let (old_ip, new_ip32) = (u32::from(old.0), u32::from(new_ip));
        ipc = checksum::update_u32(ipc, old_ip, new_ip32);
        if let Some(c) = &mut l4c {
            *c = checksum::update_u32(*c, old_ip, new_ip32);
            *c = checksum::update_u16(*c, old.1, new_port);
        }
    };
    let mut ports = l4h.ports_mut();
    if let Some(s) = src {
        patch((ip.src_addr(), ports.src()), s);
        ip.set_src_addr(s.0);
        ports.set_src(s.1);
    }
    if let Some(d) = dst {
        patch((ip.dst_addr(), ports.dst()), d);
        ip.set_dst_addr(d.0);
        ports.set_dst(d.1);
    }
    ip.set_checksum(ipc);
    if let Some(c) = l4c {
        l4h.set_patched_checksum(c);
    }
}

/// The stamp an entry's `backend` field holds once its backend was found
/// serving in snapshot `t` (epoch + 1, so a fresh entry's 0 never matches).
/// Any new snapshot changes the epoch, so a removed backend is noticed on
/// the flow's next packet.
#[inline]
fn validated(t: &Tables) -> u32 {
    t.epoch.wrapping_add(1)
}

/// Context of a packet entering the service machinery.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ingress {
    /// Arrived on the uplink from outside (not VXLAN): a NodePort client.
    pub external: bool,
    pub in_port: u16,
    /// The frame's Ethernet source (to answer an outside client).
    pub src_mac: EthernetAddress,
}

/// What the service machinery decided.
pub(super) enum Nat {
    /// Not a service packet: route it normally.
    Pass,
    /// Translated: route it (`external_reply`: send straight back out the
    /// uplink to this MAC instead).
    Route {
        external_reply: Option<EthernetAddress>,
    },
    /// Final verdict (dropped, or a reset/unreachable sent back).
    Done(Verdict),
}

impl Pipeline {
    /// Walks 3 and 4 for a validated IPv4 frame at `p.off`.
    pub(super) fn services(&mut self, cx: &Ctx<'_>, p: &mut Packet<'_>, ing: Ingress) -> Nat {
        let Ctx { now, t, node } = *cx;
        let Some(l) = l4(p).or_else(|| echo(p, ing.external)) else {
            if !t.policy.is_empty() {
                if let Err(r) = self.portless_policy(cx, p, ing) {
                    return Nat::Done(Verdict::Drop(r));
                }
            }
            return self.steer_icmp_error(t, node, p);
        };
        let key = l.key();
        if !self.ct.is_empty() {
            if let Some((id, dir)) = self.ct.lookup(&key) {
                if self.ct.expired(id, now) {
                    self.ct.remove(id);
                } else {
                    return self.existing(cx, p, &l, id, dir);
                }
            }
        }
        let fe = t.services.frontend(l.dst, l.proto, l.dport);
        // Not in our table: with several workers it may be another's flow.
        // Nothing is written to the frame before this point but a completed
        // checksum (`complete_partial_checksum`), which the owner keeps.
        if self.workers > 1 {
            if let Some(w) = self.owner(t, node, &key, fe) {
                if w != self.worker {
                    return Nat::Done(Verdict::Handoff(w));
                }
            }
        }
        let Some(fe) = fe else {
            if !ing.external && t.masquerades(node, l.dst) {
                return self.new_masq_flow(cx, p, &l, ing);
            }
            if !t.policy.is_empty() {
                return self.new_policy_flow(cx, &l, ing);
            }
            return Nat::Pass;
        };
        self.new_flow(cx, p, &l, fe, ing)
    }

    fn existing(&mut self, cx: &Ctx<'_>, p: &mut Packet<'_>, l: &L4, id: u32, dir: Dir) -> Nat {
        let Ctx { now, t, .. } = *cx;
        let e = *self.ct.get(id);
        if e.flags & (F_MASQ | F_POLICY) != 0 && e.backend != validated(t) {
            // New tables: a policy change applies to established flows too
            // (as Cilium and Calico re-evaluate), decided again as new.
            let ing = self.ingress_of(&e);
            let src = e.original.src;
            if let Err(r) = self.policy(cx, ing, src, src, &e.original) {
                self.drop_entry(id);
                return Nat::Done(Verdict::Drop(r));
            }
            self.ct.get_mut(id).backend = validated(t);
        }
        if e.flags & F_POLICY != 0 {
            self.ct.touch(id, dir, l.tcp_flags, now);
            self.note_ct(id, dir, (NO_SERVICE, NO_SLOT), None, None);
            return Nat::Route {
                external_reply: None,
            };
        }
        if e.flags & F_MASQ != 0 {
            // No backend to check: the address translation is the flow.
            self.ct.touch(id, dir, l.tcp_flags, now);
            let (src, dst) = match dir {
                Dir::Original => (Some((e.reply.dst, e.reply.dport)), None),
                Dir::Reply => (None, Some((e.original.src, e.original.sport))),
            };
            rewrite(p, l, src, dst);
            self.note_ct(id, dir, (NO_SERVICE, NO_SLOT), src, dst);
            return Nat::Route {
                external_reply: None,
            };
        }
        match dir {
            Dir::Original => {
                // A SYN on a closed entry is a new connection (the client
                // reused its port): it picks a backend afresh, like one on
                // an entry whose backend is gone.
                let syn = l
                    .tcp_flags
                    .is_some_and(|f| f & tcp::flags::SYN != 0 && f & tcp::flags::ACK == 0);
                // Fast path: the backend was found serving in this very
                // snapshot already, so skip the frontend lookup (with 10k
                // services it is the cache misses that cost; see perf/).
                let stamp = validated(t);
                if e.backend == stamp && !(syn && e.tcp == TcpState::Closed) {
                    self.ct.touch(id, Dir::Original, l.tcp_flags, now);
                    let snat = (e.flags & F_SNAT != 0).then_some((e.reply.dst, e.reply.dport));
                    let dnat = Some((e.reply.src, e.reply.sport));
                    rewrite(p, l, snat, dnat);
                    let slot = self.ct.tag(id);
                    self.note_ct(id, Dir::Original, (e.service, slot), snat, dnat);
                    self.count_svc(e.service, slot, p.len);
                    return Nat::Route {
                        external_reply: None,
                    };
                }
                let fe = t
                    .services
                    .frontend(e.original.dst, e.original.proto, e.original.dport);
                let alive = fe.is_some_and(|f| f.serving(e.reply.src, e.reply.sport));
                let mut slot = NO_SLOT;
                if alive {
                    // The policies may have changed with the tables.
                    let seen_src = if e.flags & F_SNAT != 0 {
                        e.reply.dst
                    } else {
                        e.original.src
                    };
                    let ing = self.ingress_of(&e);
                    let to = FlowKey {
                        dst: e.reply.src,
                        dport: e.reply.sport,
                        ..e.original
                    };
                    if let Err(r) = self.policy(cx, ing, e.original.src, seen_src, &to) {
                        self.drop_entry(id);
                        return Nat::Done(Verdict::Drop(r));
                    }
                    slot = fe
                        .and_then(|f| f.backend_slot(e.reply.src, e.reply.sport))
                        .unwrap_or(NO_SLOT);
                    self.ct.get_mut(id).backend = stamp;
                    self.ct.set_tag(id, slot);
                }
                if !alive || (syn && e.tcp == TcpState::Closed) {
                    self.ct.remove(id);
                    if l.proto == ipv4::protocol::UDP || syn {
                        // Re-balance at once instead of black-holing.
                        if let Some(fe) = fe {
                            let ing = self.ingress_of(&e);
                            return self.new_flow(cx, p, l, fe, ing);
                        }
                    }
                    if l.proto == ipv4::protocol::UDP {
                        return Nat::Pass;
                    }
                    return self.reject(
                        cx,
                        p,
                        l,
                        e.flags & F_EXTERNAL != 0,
                        DropReason::BackendGone,
                    );
                }
                self.ct.touch(id, Dir::Original, l.tcp_flags, now);
                let snat = (e.flags & F_SNAT != 0).then_some((e.reply.dst, e.reply.dport));
                let dnat = Some((e.reply.src, e.reply.sport));
                rewrite(p, l, snat, dnat);
                self.note_ct(id, Dir::Original, (e.service, slot), snat, dnat);
                self.count_svc(e.service, slot, p.len);
                Nat::Route {
                    external_reply: None,
                }
            }
            Dir::Reply => {
                self.ct.touch(id, Dir::Reply, l.tcp_flags, now);
                let src = Some((e.original.dst, e.original.dport));
                let dst = Some((e.original.src, e.original.sport));
                rewrite(p, l, src, dst);
                // The slot is of the snapshot the backend was last found
                // serving in: only this one's books have it.
                let slot = if e.backend == validated(t) {
                    self.ct.tag(id)
                } else {
                    NO_SLOT
                };
                self.note_ct(id, Dir::Reply, (e.service, slot), src, dst);
                self.count_svc(e.service, slot, p.len);
                Nat::Route {
                    external_reply: (e.flags & F_EXTERNAL != 0)
                        .then_some(EthernetAddress(e.client_mac)),
                }
            }
        }
    }

    fn new_flow(
        &mut self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        l: &L4,
        fe: &Frontend,
        ing: Ingress,
    ) -> Nat {
        let Ctx { now, t, node } = *cx;
        // Only a SYN may open a TCP flow; anything else is stale.
        if let Some(f) = l.tcp_flags {
            if f & tcp::flags::SYN == 0 || f & tcp::flags::ACK != 0 {
                return self.reject(cx, p, l, ing.external, DropReason::NoConntrack);
            }
        }
        let Some(backend) = self.choose(now, fe, l, ing.external) else {
            self.nat.svc_at(fe.service).no_endpoint += 1;
            if fe.drops_without_local(ing.external) {
                return Nat::Done(Verdict::Drop(DropReason::NoLocalEndpoint));
            }
            return self.reject(cx, p, l, ing.external, DropReason::NoEndpoint);
        };
        // SNAT: NodePort with externalTrafficPolicy Cluster (replies must come
        // back through this node), hairpin (a backend calling itself, or
        // the node kernel its own address: from the frontend, so that the
        // kernel's reply comes back through the host port), and backends
        // outside the cluster that egress masquerades (as walk 7 does).
        // The node kernel from its own address: its NodePorts and external
        // IPs, DNATed to the ClusterIP by the dataplane's `nat output` rules
        // (`nft.rs`), keep the address they were sent to; from the gateway,
        // its replies come back through the host port.
        let node_src = !ing.external && t.is_node_addr(node, l.src);
        let masq = t.masquerades(node, backend.0);
        let kernel_hairpin =
            backend.0 == node.underlay_ip && (l.src == node.gateway_ip || node_src);
        let needs_snat = (fe.node_port && !fe.local_only && ing.external)
            || backend.0 == l.src
            || masq
            || kernel_hairpin
            || node_src;
        let snat_ip = if masq {
            node.underlay_ip
        } else if kernel_hairpin {
            l.dst
        } else {
            node.gateway_ip
        };
        // Policies see the backend's address, and the backend's ingress the
        // source it sees: the SNAT address (this node's gateway for a
        // NodePort with eTP Cluster), else the client.
        // A pod calling itself through its service is seen as itself, as
        // kube-proxy's hairpin masquerade comes after the policy's filter.
        let seen_src = if needs_snat && backend.0 != l.src {
            snat_ip
        } else {
            l.src
        };
        let to = FlowKey {
            dst: backend.0,
            dport: backend.1,
            ..l.key()
        };
        let allowed = match self.policy(cx, ing, l.src, seen_src, &to) {
            Ok(allowed) => allowed,
            Err(r) => return Nat::Done(Verdict::Drop(r)),
        };
        let reply = FlowKey {
            proto: l.proto,
            src: backend.0,
            dst: l.src,
            sport: backend.1,
            dport: l.sport,
        };
        let slot = fe.backend_slot(backend.0, backend.1).unwrap_or(NO_SLOT);
        let entry = Entry {
            reply,
            service: fe.service,
            // Chosen from these tables just now: validated in this snapshot.
            backend: validated(t),
            flags: if ing.external { F_EXTERNAL } else { 0 },
            ..new_entry(now, l, ing)
        };
        let inserted = self.insert_flow(now, l, entry, |pl, i, h, e| {
            if needs_snat {
                e.flags |= F_SNAT;
                e.reply.dst = snat_ip;
                e.reply.dport = pl.snat_port(h);
            } else if i > 0 {
                // The reply key is taken: the client reused its port towards
                // another frontend with the same backend. Give this flow
                // another source port, as the kernel's NAT does.
                let Some(port) = pl.remap_port(t, node, reply, h) else {
                    return false;
                };
                e.flags |= F_SNAT;
                e.reply.dport = port;
            }
            true
        });
        let (id, entry) = match inserted {
            Ok(x) => x,
            Err(reason) => return Nat::Done(Verdict::Drop(reason)),
        };
        self.ct.set_tag(id, slot);
        let flags = entry.flags;
        let reply = entry.reply;
        let remapped = !needs_snat && flags & F_SNAT != 0;
        if remapped {
            self.counters.source_ports_remapped += 1;
        }
        self.count_allowed(allowed);
        self.ct.touch(id, Dir::Original, l.tcp_flags, now);
        let snat = (flags & F_SNAT != 0).then_some((reply.dst, reply.dport));
        rewrite(p, l, snat, Some(backend));
        self.nat.svc_at(fe.service).new_flows += 1;
        if let Some(b) = self.nat.books.backends.get_mut(slot as usize) {
            b.new_flows += 1;
        }
        self.count_svc(fe.service, slot, p.len);
        Nat::Route {
            external_reply: None,
        }
    }

    /// Walk 7: a pod's new flow to an address outside the cluster, SNATed
    /// to this node's underlay address with a port of this worker's class
    /// in [`SNAT_PORTS`] (never one of the node kernel's own). Replies come
    /// back on the uplink to that port and are translated back.
    fn new_masq_flow(&mut self, cx: &Ctx<'_>, p: &mut Packet<'_>, l: &L4, ing: Ingress) -> Nat {
        let Ctx { now, node, t } = *cx;
        if let Some(f) = l.tcp_flags {
            if f & tcp::flags::SYN == 0 || f & tcp::flags::ACK != 0 {
                return self.reject(cx, p, l, false, DropReason::NoConntrack);
            }
        }
        let allowed = match self.policy(cx, ing, l.src, l.src, &l.key()) {
            Ok(allowed) => allowed,
            Err(r) => return Nat::Done(Verdict::Drop(r)),
        };
        let entry = Entry {
            // Policy decided in this snapshot.
            backend: validated(t),
            reply: FlowKey {
                proto: l.proto,
                src: l.dst,
                dst: node.underlay_ip,
                sport: l.dport,
                dport: 0,
            },
            flags: F_SNAT | F_MASQ,
            ..new_entry(now, l, ing)
        };
        let inserted = self.insert_flow(now, l, entry, |pl, _, h, e| {
            e.reply.dport = pl.snat_port(h);
            true
        });
        let (id, entry) = match inserted {
            Ok(x) => x,
            Err(reason) => return Nat::Done(Verdict::Drop(reason)),
        };
        self.counters.egress_flows += 1;
        self.count_allowed(allowed);
        self.ct.touch(id, Dir::Original, l.tcp_flags, now);
        rewrite(p, l, Some((node.underlay_ip, entry.reply.dport)), None);
        Nat::Route {
            external_reply: None,
        }
    }

    /// Network policy for a new flow that no service or masquerade
    /// translates: pod to pod, node to pod, outside to pod. Tracked (both
    /// keys, no translation) when an isolated local pod is in it, so that
    /// replies pass its policy; else routed untracked, as before.
    fn new_policy_flow(&mut self, cx: &Ctx<'_>, l: &L4, ing: Ingress) -> Nat {
        let Ctx { now, t, .. } = *cx;
        if l.proto == ipv4::protocol::ICMP {
            // An echo request: decided, not tracked (its reply is not
            // looked up; echo replies and errors pass, `portless_policy`).
            return match self.policy(cx, ing, l.src, l.src, &l.key()) {
                Ok(_) => Nat::Pass,
                Err(r) => Nat::Done(Verdict::Drop(r)),
            };
        }
        // A segment of a connection we have not seen open (it began before
        // the policy, or before a restart, or its entry went with a policy
        // that denies it now) is picked up mid-stream, as the kernel's
        // conntrack does (`nf_conntrack_tcp_loose`). Which end opened it
        // is unknown: taken to be the one with the higher port (the
        // client's ephemeral one), so that both directions' segments are
        // decided the same way, the server's reply never as a flow of its
        // own that its client's segments would then pass as replies to.
        let mid_stream = l.tcp_flags.is_some_and(|f| f & tcp::flags::SYN == 0);
        let (original, dir) = if mid_stream && l.sport < l.dport {
            (l.key().reversed(), Dir::Reply)
        } else {
            (l.key(), Dir::Original)
        };
        let ing_of_original = if dir == Dir::Reply {
            // The client is the destination: the node only from the host.
            Ingress {
                in_port: if original.src == cx.node.gateway_ip {
                    t.host.unwrap_or(ing.in_port)
                } else {
                    u16::MAX
                },
                ..ing
            }
        } else {
            ing
        };
        let allowed = match self.policy(cx, ing_of_original, original.src, original.src, &original)
        {
            Ok(None) => return Nat::Pass,
            Ok(allowed) => allowed,
            Err(r) => return Nat::Done(Verdict::Drop(r)),
        };
        let mut entry = Entry {
            backend: validated(t),
            flags: F_POLICY,
            original,
            reply: original.reversed(),
            in_port: ing_of_original.in_port,
            ..new_entry(now, l, ing)
        };
        if mid_stream {
            entry.tcp = TcpState::Established;
        }
        // No SNAT to retry with, and nobody's port to reclaim: the reply
        // key is taken only by a service flow whose backend the client
        // also reaches directly from the same port.
        let id = match self.ct.insert(entry, now) {
            Ok(id) => id,
            Err(InsertError::Full) => return Nat::Done(Verdict::Drop(DropReason::ConntrackFull)),
            Err(InsertError::Exists) => {
                return Nat::Done(Verdict::Drop(DropReason::PolicyFlowClash))
            }
        };
        self.flows.forget(&entry.original);
        self.flows.forget(&entry.reply);
        self.ct.touch(id, dir, l.tcp_flags, now);
        self.count_allowed(allowed);
        Nat::Route {
            external_reply: None,
        }
    }

    /// Network policy for a frame without ports: ICMP errors and echo
    /// replies pass (they answer something that passed); any other
    /// protocol needs a rule for every protocol and port. Not tracked.
    fn portless_policy(
        &mut self,
        cx: &Ctx<'_>,
        p: &Packet<'_>,
        ing: Ingress,
    ) -> Result<(), DropReason> {
        let b = &p.buf[p.off + ETH..p.off + p.len];
        let Some(h) = b.first_chunk::<IPV4_MIN>().map(ipv4::Ipv4Header::new) else {
            return Ok(());
        };
        if h.protocol() == ipv4::protocol::ICMP {
            return Ok(());
        }
        let key = FlowKey {
            proto: h.protocol(),
            src: h.src_addr(),
            dst: h.dst_addr(),
            sport: 0,
            dport: 0,
        };
        self.policy(cx, ing, key.src, key.src, &key).map(|_| ())
    }

    /// Decides a new flow `to` (its source is the pod `egress_src`, as
    /// sent; `seen_src` is what the destination sees after any SNAT):
    /// `Ok(Some(allowing))` if an isolated local pod is in it (track it),
    /// `Ok(None)` if none is. Protocols
    /// without ports are matched by protocol alone. Established flows are
    /// decided again with it when the tables change: only new ones count
    /// as allowed (the callers', `count_allowed`), denials all count here.
    /// The decision is kept in `self.decided` for a trace.
    fn policy(
        &mut self,
        cx: &Ctx<'_>,
        ing: Ingress,
        egress_src: Ipv4Addr,
        seen_src: Ipv4Addr,
        to: &FlowKey,
    ) -> Result<Option<Allowing>, DropReason> {
        let t = cx.t;
        if t.policy.is_empty() {
            return Ok(None);
        }
        let port =
            matches!(to.proto, ipv4::protocol::TCP | ipv4::protocol::UDP).then_some(to.dport);
        // The node's own traffic comes through the host port; an address
        // alone (the gateway is also the SNAT address) proves nothing.
        let from_node = t.host == Some(ing.in_port) && !ing.external;
        let decision = t
            .policy
            .decide(egress_src, seen_src, to.dst, to.proto, port, from_node);
        self.decided = Decided {
            seq: self.decided.seq.wrapping_add(1),
            egress_src,
            src: seen_src,
            dst: to.dst,
            proto: to.proto,
            port,
            from_node,
            decision,
        };
        let dir = match decision {
            Decision::Unrestricted => return Ok(None),
            Decision::Allowed(a) => return Ok(Some(a)),
            Decision::Denied(dir) => dir,
        };
        if let Some(table) = t.policy.table(dir, egress_src, to.dst) {
            for &i in &table.selected_by {
                if let Some(c) = self.nat.books.policy_flows.get_mut(i as usize) {
                    c.denied += 1;
                }
            }
        }
        Err(match dir {
            Direction::Egress => DropReason::PolicyDeniedEgress,
            Direction::Ingress => DropReason::PolicyDeniedIngress,
        })
    }

    /// Counts a new flow that `policy` allowed (`Some`: tracked) as
    /// `policy_flows_allowed`, and for the policy allowing it each way.
    fn count_allowed(&mut self, allowed: Option<Allowing>) {
        let Some(a) = allowed else {
            return;
        };
        self.counters.policy_flows_allowed += 1;
        for id in [a.egress, a.ingress].into_iter().flatten() {
            if let Some(c) = self.nat.books.policy_flows.get_mut(id as usize) {
                c.allowed += 1;
            }
        }
    }

    /// Where an entry's flow came in: what its new flow was decided with.
    fn ingress_of(&self, e: &Entry) -> Ingress {
        Ingress {
            external: e.flags & F_EXTERNAL != 0,
            in_port: e.in_port,
            src_mac: EthernetAddress(e.client_mac),
        }
    }

    /// Removes entry `id` and forgets its keys in the flow cache.
    fn drop_entry(&mut self, id: u32) {
        let old = *self.ct.get(id);
        self.ct.remove(id);
        self.flows.forget(&old.original);
        self.flows.forget(&old.reply);
    }

    /// Inserts a new flow's `entry`, trying up to [`SNAT_TRIES`] reply
    /// keys: `pick(self, try, hash, entry)` sets the reply side of each
    /// try from a hash that differs per try (false: skip the try). When
    /// every try is taken, the tries are walked again and the first whose
    /// holder is closed, or unconfirmed for [`RECLAIM_AFTER_NS`], gives its
    /// keys up (`snat_ports_reclaimed`), as the kernel's early drop frees
    /// unassured entries. Forgets the keys in the flow cache (either may
    /// be a plainly routed flow's).
    fn insert_flow(
        &mut self,
        now: u64,
        l: &L4,
        entry: Entry,
        pick: impl Fn(&Self, u16, u16, &mut Entry) -> bool,
    ) -> Result<(u32, Entry), DropReason> {
        let base = super::flow_hash_key(&l.key()) as u16;
        for reclaim in [false, true] {
            for i in 0..SNAT_TRIES {
                let mut e = entry;
                let h = base.wrapping_add(i.wrapping_mul(7919));
                if !pick(self, i, h, &mut e) {
                    continue;
                }
                if reclaim && !self.reclaim(&e.reply, now) {
                    continue;
                }
                match self.ct.insert(e, now) {
                    Ok(id) => {
                        self.flows.forget(&e.original);
                        self.flows.forget(&e.reply);
                        return Ok((id, e));
                    }
                    Err(InsertError::Exists) => continue,
                    Err(InsertError::Full) => return Err(DropReason::ConntrackFull),
                }
            }
        }
        Err(DropReason::NatPortsExhausted)
    }

    /// Frees `key` for a new flow if the entry holding it may give it up
    /// (`Conntrack::reclaimable`); true if `key` is free now.
    fn reclaim(&mut self, key: &FlowKey, now: u64) -> bool {
        let Some((id, _)) = self.ct.lookup(key) else {
            return true;
        };
        if !self.ct.reclaimable(id, now, RECLAIM_AFTER_NS) {
            return false;
        }
        let old = *self.ct.get(id);
        self.ct.remove(id);
        self.flows.forget(&old.original);
        self.flows.forget(&old.reply);
        self.counters.snat_ports_reclaimed += 1;
        true
    }

    /// An SNAT port of this worker's class, so that its replies are
    /// steered back here (see `side`), drawn from `h`.
    fn snat_port(&self, h: u16) -> u16 {
        let per = (SNAT_PORTS.1 - SNAT_PORTS.0 + 1) / self.workers;
        SNAT_PORTS.0 + (h % per) * self.workers + self.worker
    }

    /// A port in [`SNAT_PORTS`] for the client side of `reply` whose replies
    /// are steered to this worker: drawn from `seed` on, skipping ports of
    /// other workers (one in `workers` is ours, so the scan almost never
    /// runs out). Only the client's port changes, not its address.
    fn remap_port(
        &self,
        t: &Tables,
        node: &NodeInfo,
        mut reply: FlowKey,
        seed: u16,
    ) -> Option<u16> {
        let range = SNAT_PORTS.1 - SNAT_PORTS.0 + 1;
        (0..REMAP_SCAN * self.workers).find_map(|k| {
            reply.dport = SNAT_PORTS.0 + seed.wrapping_add(k.wrapping_mul(613)) % range;
            let owner = self.owner(t, node, &reply, None);
            owner
                .is_none_or(|w| w == self.worker)
                .then_some(reply.dport)
        })
    }

    /// Notes an established entry's translation for the flow cache, if its
    /// state lets later packets skip the walk (`Conntrack::touch_established`).
    fn note_ct(
        &mut self,
        id: u32,
        dir: Dir,
        (svc, slot): (u32, u32),
        src: Option<(Ipv4Addr, u16)>,
        dst: Option<(Ipv4Addr, u16)>,
    ) {
        if matches!(self.ct.get(id).tcp, TcpState::Established | TcpState::None) {
            self.note_nat(super::fast::Nat::Ct {
                id,
                dir,
                svc,
                slot,
                src,
                dst,
            });
        }
    }

    /// The worker that owns the flow `l` belongs to, if it is a service
    /// flow: the one its client side hashes to. A packet to a frontend shows
    /// the client as its source; a reply, as its destination (an SNAT port
    /// of this node, or anything a backend sends to).
    fn owner(
        &self,
        t: &Tables,
        node: &NodeInfo,
        l: &FlowKey,
        fe: Option<&Frontend>,
    ) -> Option<u16> {
        if let Some(fe) = fe {
            return Some(self.side(node, l.src, l.sport, fe.steer_by_ip));
        }
        if is_snat_addr(node, l.dst) && is_snat_port(l.dport) {
            return Some(self.side(node, l.dst, l.dport, false));
        }
        if t.masquerades(node, l.dst) {
            return Some(self.side(node, l.src, l.sport, false));
        }
        if let Some(&by_ip) = t.services.steer.get(&(l.src, l.sport, l.proto)) {
            return Some(self.side(node, l.dst, l.dport, by_ip));
        }
        // A flow that policy tracks: both directions must meet its entry.
        if !t.policy.isolated(l.src) && !t.policy.isolated(l.dst) {
            return None;
        }
        // To a backend directly (DNATed on another node): as its replies
        // are steered, by the client side.
        if let Some(&by_ip) = t.services.steer.get(&(l.dst, l.dport, l.proto)) {
            return Some(self.side(node, l.src, l.sport, by_ip));
        }
        // Else by the lesser side, which both directions agree on.
        let (ip, port) = (l.src, l.sport).min((l.dst, l.dport));
        Some(self.side(node, ip, port, false))
    }

    /// The worker a flow's client side maps to. An SNAT port carries its
    /// worker in its class (`new_flow` picks it so); any other client hashes
    /// by address and port, or by address alone (`Services::finish`).
    fn side(&self, node: &NodeInfo, ip: Ipv4Addr, port: u16, by_ip: bool) -> u16 {
        if is_snat_addr(node, ip) && is_snat_port(port) {
            return (port - SNAT_PORTS.0) % self.workers;
        }
        let x = if by_ip {
            u32::from(ip) as u64
        } else {
            (u32::from(ip) as u64) << 16 | port as u64
        };
        // Multiply-shift onto 0..workers from the mixed high bits.
        (((super::mix64(x) >> 32) * self.workers as u64) >> 32) as u16
    }

    /// Steering for an ICMP error about a service flow: the entry it needs
    /// (found by the quoted datagram) may be another worker's.
    fn steer_icmp_error(&self, t: &Tables, node: &NodeInfo, p: &Packet<'_>) -> Nat {
        if self.workers == 1 {
            return Nat::Pass;
        }
        let Some((q, _, _)) = quoted_flow(p) else {
            return Nat::Pass;
        };
        // The quoted datagram reversed is a key of the flow's entry (its
        // reply key about a request, its original key about a reply): the
        // error belongs where a packet with that key is steered.
        let k = q.reversed();
        if !self.ct.is_empty() && self.ct.lookup(&k).is_some() {
            return Nat::Pass;
        }
        let fe = t.services.frontend(k.dst, k.proto, k.dport);
        match self.owner(t, node, &k, fe) {
            Some(w) if w != self.worker => Nat::Done(Verdict::Handoff(w)),
            _ => Nat::Pass,
        }
    }

    /// Picks a ready backend: the client's affinity backend if still ready
    /// and fresh, else Maglev on the flow hash.
    fn choose(
        &mut self,
        now: u64,
        fe: &Frontend,
        l: &L4,
        external: bool,
    ) -> Option<(Ipv4Addr, u16)> {
        if let Some(timeout) = fe.affinity_ns {
            let k = (fe.key, l.src);
            let expires_ns = now.saturating_add(timeout);
            if let Some(a) = self.nat.affinity.get_mut(&k) {
                if now < a.expires_ns && fe.ready(a.backend.0, a.backend.1, external) {
                    a.expires_ns = expires_ns;
                    return Some(a.backend);
                }
            }
            // Affinity hashes the client only, so a new client's flows agree.
            let b = fe.pick_for(super::mix64(u32::from(l.src) as u64), external)?;
            let backend = (b.ip, b.port);
            if self.nat.affinity.len() >= self.nat.affinity_cap
                && !self.nat.affinity.contains_key(&k)
            {
                self.nat.sweep_affinity(now);
            }
            if self.nat.affinity.len() < self.nat.affinity_cap || self.nat.affinity.contains_key(&k)
            {
                self.nat.affinity.insert(
                    k,
                    Affinity {
                        backend,
                        expires_ns,
                    },
                );
            }
            return Some(backend);
        }
        let h = super::flow_hash_key(&l.key()) as u64;
        fe.pick_for(h | h << 32, external).map(|b| (b.ip, b.port))
    }

    /// Refuses a service packet the way a host would: TCP reset for TCP,
    /// ICMP port unreachable otherwise; counted as `reason`.
    fn reject(
        &mut self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        l: &L4,
        external: bool,
        reason: DropReason,
    ) -> Nat {
        if l.proto == ipv4::protocol::TCP {
            if l.tcp_flags.is_some_and(|f| f & tcp::flags::RST != 0) {
                return Nat::Done(Verdict::Drop(reason));
            }
            self.counters.drops[reason as usize] += 1;
            self.counters.resets_sent += 1;
            let mac = self.sender_mac(p);
            tcp_reset(p, l);
            return if external {
                Nat::Route {
                    external_reply: Some(mac),
                }
            } else {
                Nat::Route {
                    external_reply: None,
                }
            };
        }
        let unreachable = super::IcmpError::Unreachable(icmp::code::PORT_UNREACHABLE);
        // An outside client gets it from the NodeIP, back out the uplink.
        let outside = external.then(|| self.sender_mac(p));
        Nat::Done(self.icmp_error_to(cx, p, unreachable, reason, outside))
    }

    /// The frame's Ethernet source: where a reply to an outside client goes.
    fn sender_mac(&self, p: &Packet<'_>) -> EthernetAddress {
        ethernet::EthernetFrame::new_unchecked(&p.buf[p.off..p.off + ETH]).src_addr()
    }

    /// Counts a translated packet of `service` and its backend `slot`.
    pub(super) fn count_svc(&mut self, service: u32, slot: u32, len: usize) {
        if service == NO_SERVICE {
            return;
        }
        let c = self.nat.svc_at(service);
        c.packets += 1;
        c.bytes += len as u64;
        if let Some(b) = self.nat.books.backends.get_mut(slot as usize) {
            b.packets += 1;
            b.bytes += len as u64;
        }
    }

    /// Translates an ICMP error (from a backend, or one we make) whose
    /// quoted datagram is a tracked flow's translated packet, so the client
    /// sees the frontend's address in both the outer and the quoted headers.
    /// Returns the MAC to send it straight back out the uplink to when the
    /// client is outside the cluster (NodePort).
    pub(super) fn icmp_error_nat(&mut self, p: &mut Packet<'_>) -> Option<EthernetAddress> {
        let ip_off = p.off + ETH;
        let end = p.off + p.len;
        // The quoted datagram is what the backend got: client -> backend, so
        // its reverse is the entry's reply key.
        let (quoted, q, qhl) = quoted_flow(p)?;
        let (id, dir) = self.ct.lookup(&quoted.reversed())?;
        let e = *self.ct.get(id);
        // The quoted datagram and the error's own addresses, as the error's
        // addressee knows them. About a request (quoted as the backend got
        // it): the client's request to the frontend; the error goes to the
        // client from the frontend (whoever on the way sent it: the client
        // may be outside, where pod addresses mean nothing). About a reply
        // (quoted as the client got it, from the frontend): the backend's
        // reply; the error goes to the backend, from the SNAT address if the
        // client sent it, else from the router that did (Linux's NAT).
        let (outer_src, icmp_off) = {
            let ip = ipv4::Ipv4Packet::new_unchecked(&p.buf[ip_off..end]);
            (ip.src_addr(), ip_off + ip.header_len())
        };
        let (qsrc, qdst, from, to) = match dir {
            Dir::Reply => (
                (e.original.src, e.original.sport),
                (e.original.dst, e.original.dport),
                // Egress: a router on the way says so itself, as Linux's
                // masquerade leaves it.
                if e.flags & F_MASQ != 0 {
                    outer_src
                } else {
                    e.original.dst
                },
                e.original.src,
            ),
            Dir::Original => (
                (e.reply.src, e.reply.sport),
                (e.reply.dst, e.reply.dport),
                if outer_src == e.original.src {
                    e.reply.dst
                } else {
                    outer_src
                },
                e.reply.src,
            ),
        };
        ipv4::Ipv4Packet::new_unchecked(&mut p.buf[q..end]).rewrite_addrs(qsrc.0, qdst.0);
        {
            // TCP and UDP both start with the two ports.
            let mut ports = udp::UdpPacket::new_unchecked(&mut p.buf[q + qhl..end]);
            ports.set_src_port(qsrc.1);
            ports.set_dst_port(qdst.1);
        }
        let tot = {
            let mut ip = ipv4::Ipv4Packet::new_unchecked(&mut p.buf[ip_off..end]);
            ip.rewrite_addrs(from, to);
            ip.total_len() as usize
        };
        // The quoted transport checksum is stale now; the ICMP checksum
        // covers everything, so recompute it whole (errors are rare).
        let icmp_end = (ip_off + tot).min(end);
        icmp::Icmpv4Packet::new_unchecked(&mut p.buf[icmp_off..icmp_end]).fill_checksum();
        (dir == Dir::Reply && e.flags & F_EXTERNAL != 0).then_some(EthernetAddress(e.client_mac))
    }
}

/// The conntrack entry of a new flow `l` from `ing` at `now`, before its
/// reply side, service and flags are known: no service, no translation.
fn new_entry(now: u64, l: &L4, ing: Ingress) -> Entry {
    Entry {
        original: l.key(),
        reply: l.key().reversed(),
        service: NO_SERVICE,
        backend: 0,
        // UDP entries have no TCP state (and the UDP timeout).
        tcp: if l.proto == ipv4::protocol::TCP {
            TcpState::SynSent
        } else {
            TcpState::None
        },
        created_ns: now,
        last_seen_ns: now,
        client_mac: ing.src_mac.0,
        in_port: ing.in_port,
        flags: 0,
    }
}

/// An address this node SNATs to: its gateway (NodePort, hairpin), its
/// underlay address (masquerade) or a frontend (the kernel's hairpin).
#[inline]
fn is_snat_addr(node: &NodeInfo, ip: Ipv4Addr) -> bool {
    ip == node.gateway_ip
        || ip == node.underlay_ip
        || node.service_cidr.is_some_and(|c| c.contains(ip))
}

/// An SNAT source port of ours.
#[inline]
fn is_snat_port(port: u16) -> bool {
    (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&port)
}

/// The TCP/UDP flow an ICMP error (unreachable, time exceeded) quotes, with
/// the quoted IPv4 header's offset and length. `None` for anything else.
fn quoted_flow(p: &Packet<'_>) -> Option<(FlowKey, usize, usize)> {
    let ip_off = p.off + ETH;
    let end = p.off + p.len;
    let ip = ipv4::Ipv4Packet::new_unchecked(&p.buf[ip_off..end]);
    let icmp_off = ip_off + ip.header_len();
    if ip.protocol() != ipv4::protocol::ICMP || end < icmp_off + icmp::HEADER_LEN + IPV4_MIN + 8 {
        return None;
    }
    let ty = icmp::Icmpv4Packet::new_unchecked(&p.buf[icmp_off..end]).msg_type();
    if ty != icmp::msg_type::DEST_UNREACHABLE && ty != icmp::msg_type::TIME_EXCEEDED {
        return None;
    }
    let q = icmp_off + icmp::HEADER_LEN;
    let quoted = ipv4::Ipv4Packet::new_unchecked(&p.buf[q..end]);
    let qhl = quoted.header_len();
    if quoted.version() != 4 || qhl < IPV4_MIN || end < q + qhl + 8 {
        return None;
    }
    let qproto = quoted.protocol();
    if qproto != ipv4::protocol::TCP && qproto != ipv4::protocol::UDP {
        return None;
    }
    // TCP and UDP both start with the two ports.
    let ports = udp::UdpPacket::new_unchecked(&p.buf[q + qhl..end]);
    let key = FlowKey {
        proto: qproto,
        src: quoted.src_addr(),
        dst: quoted.dst_addr(),
        sport: ports.src_port(),
        dport: ports.dst_port(),
    };
    Some((key, q, qhl))
}

impl NatState {
    /// Drops the expired affinity records, at most once per
    /// [`AFFINITY_SWEEP_NS`].
    pub(super) fn sweep_affinity(&mut self, now: u64) {
        if now < self.affinity_sweep_ns || self.affinity.is_empty() {
            return;
        }
        self.affinity_sweep_ns = now.saturating_add(AFFINITY_SWEEP_NS);
        self.affinity.retain(|_, a| now < a.expires_ns);
    }

    /// The clients holding an affinity record, expired or not.
    #[cfg(test)]
    pub(super) fn affinity_clients(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<_> = self.affinity.keys().map(|(_, c)| *c).collect();
        v.sort();
        v
    }

    /// A service's counters; never allocates (see `spill`).
    #[inline]
    fn svc_at(&mut self, id: u32) -> &mut SvcCounters {
        match self.books.services.get_mut(id as usize) {
            Some(c) => c,
            None => &mut self.spill,
        }
    }
}

/// Turns a TCP segment into the RST its sender would get from the addressed
/// host (RFC 793 "Reset Generation"), in place, swapping addresses and ports.
fn tcp_reset(p: &mut Packet<'_>, l: &L4) {
    let ip_off = p.off + ETH;
    let t = l.l4_off;
    let (seq, ack, flags, data_off) = {
        let seg = tcp::TcpPacket::new_unchecked(&p.buf[t..t + tcp::HEADER_LEN]);
        (
            seg.seq_number(),
            seg.ack_number(),
            seg.flags(),
            seg.header_len(),
        )
    };
    let tot = ipv4::Ipv4Packet::new_unchecked(&p.buf[ip_off..t]).total_len() as usize;
    let seg_len = tot.saturating_sub(t - ip_off + data_off) as u32
        + u32::from(flags & tcp::flags::SYN != 0)
        + u32::from(flags & tcp::flags::FIN != 0);
    let (rseq, rack, rflags) = if flags & tcp::flags::ACK != 0 {
        (ack, 0, tcp::flags::RST)
    } else {
        (
            0,
            seq.wrapping_add(seg_len),
            tcp::flags::RST | tcp::flags::ACK,
        )
    };
    // Options never reach here (check_ipv4 drops them), so the TCP header
    // already starts 20 bytes into the datagram.
    debug_assert_eq!(t, ip_off + IPV4_MIN);
    ipv4::emit_header(
        &mut p.buf[ip_off..],
        l.dst,
        l.src,
        ipv4::protocol::TCP,
        20,
        64,
        0,
        true,
    );
    let mut seg = tcp::TcpPacket::new_unchecked(&mut p.buf[t..t + tcp::HEADER_LEN]);
    seg.set_src_port(l.dport);
    seg.set_dst_port(l.sport);
    seg.set_seq_number(rseq);
    seg.set_ack_number(rack);
    seg.set_header_len(tcp::HEADER_LEN);
    seg.set_flags(rflags);
    seg.set_window(0);
    seg.set_urgent(0);
    seg.fill_checksum(l.dst, l.src);
    p.len = ETH + IPV4_MIN + tcp::HEADER_LEN;
}
