//! The packet pipeline: a batch of frames in, a verdict per frame out.
//!
//! Pure: no syscalls, no clock (`now` is passed in), no allocation, no locks.
//! Each [`Packet`] is a whole UMEM chunk with the frame at `off..off + len`;
//! the pipeline rewrites in place and may move `off` back (encap, ICMP
//! errors) or forward (decap), so no frame is ever copied.
//!
//! Walks (ARCHITECTURE.md), and the file that holds each:
//! 1. pod -> pod, same node: MACs rewritten, TTL decremented, no NAT
//!    (`ingress.rs` checks a pod's frame, `route.rs` routes it).
//! 2. pod -> pod, other node: LPM on remote pod CIDRs, VXLAN encap to the
//!    node's VTEP; on the receiving node: VNI check, decap, route to the pod
//!    (`route.rs`, `overlay.rs`).
//! 3. pod -> ClusterIP, 4. outside client -> NodeIP:NodePort: conntrack,
//!    Maglev, DNAT (+SNAT), replies translated back (`nat.rs`).
//! 5. host <-> pods and services: the host port (`PortKind::Host`) carries
//!    the node kernel's traffic; pods reach the node at the gateway address
//!    (`route.rs`).
//! 6. ARP for anything in the pod CIDR (the gateway included) is answered
//!    with the pod port's MAC (`proxy_arp.rs`); ICMP time-exceeded,
//!    unreachable and fragmentation-needed are sent where a router would
//!    send them (`icmp_errors.rs`).
//!
//! A frame enters at [`Pipeline::process`]; `one` (here) dispatches it by the
//! kind of port it came in on. Before any walk, a TCP/UDP frame tries the
//! worker's flow cache (`fast.rs`): a flow's later packets get what the walk
//! gave its first one, precomputed, without walking. Counters are declared in
//! `counters.rs`; flow hashes are in `hash.rs`; fragments of translated
//! flows follow their first fragment (`frag.rs`); test builds check every batch
//! against a twin without the cache (`twin.rs`).

use core::net::Ipv4Addr;

mod counters;
mod fast;
mod frag;
mod hash;
mod icmp_errors;
mod ingress;
mod nat;
mod overlay;
mod proxy_arp;
mod route;
#[cfg(test)]
mod twin;

pub use counters::{Counters, DropReason};
pub use fast::{FlowCache, MAX_FLOW_CACHE};
pub use frag::{FRAG_DONE_NS, FRAG_ENTRIES, FRAG_TIMEOUT_NS};
pub use hash::flow_hash;
use hash::{flow_hash_key, mix, mix64};
use ingress::{check_ipv4, complete_partial_checksum};
pub use nat::{BackendCounters, ServiceBooks, SvcCounters, NO_SERVICE, SNAT_PORTS};
use overlay::encap;

use crate::conntrack::{splitmix64, Conntrack, FlowKey, Timeouts};
use crate::tables::{EgressHop, NodeInfo, PortId, PortInfo, PortKind, Tables};
use crate::trace::{NoTrace, Seen, Tracer};
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
/// ClientIP affinity records per worker: clients with a live record (one
/// per frontend they use); past it, a new client's flows are balanced by
/// the hash of its address alone until expired records are swept out.
const AFFINITY_CAPACITY: usize = 1 << 16;
/// Most conntrack slots the GC looks at after a batch, one per frame: a
/// full batch sweeps 256k slots in ~4k batches and never stalls a worker.
const GC_BUDGET: usize = 64;
/// Slots an idle worker sweeps each time it wakes (at least every 100 ms):
/// the default table is swept in about 3 s of idleness.
const IDLE_GC_BUDGET: usize = 8192;

/// What every step of a walk reads, passed as one value: the time, the
/// tables of this batch and this node's config (from the tables).
#[derive(Clone, Copy)]
struct Ctx<'t> {
    now: u64,
    t: &'t Tables,
    node: &'t NodeInfo,
}

/// The per-worker pipeline state: counters, the ICMP error budgets, the
/// connection-tracking table and service affinity.
pub struct Pipeline {
    counters: Counters,
    icmp: icmp_errors::IcmpBudget,
    ct: Conntrack,
    nat: nat::NatState,
    /// This worker's index and the number of workers (flow steering).
    worker: u16,
    workers: u16,
    flows: FlowCache,
    /// First fragments' translations, for the later fragments (`frag.rs`).
    frags: frag::FragTable,
    /// What the walk of the current packet noted for `flows`.
    learn: fast::Learn,
    /// The last on-link egress destination without a neighbour entry, for
    /// the engine to ask the kernel to resolve ([`Pipeline::take_unresolved`]).
    unresolved: Option<Ipv4Addr>,
    /// The last network-policy decision, for a trace.
    decided: crate::policy::Decided,
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
    /// The last on-link egress destination dropped as
    /// `neighbour_unresolved` since the last call: the worker hands it to
    /// the engine, which asks the kernel to resolve it (the kernel would
    /// have sent an ARP request for the packet; the worker cannot).
    pub fn take_unresolved(&mut self) -> Option<Ipv4Addr> {
        self.unresolved.take()
    }

    pub fn new() -> Pipeline {
        Pipeline::with_conntrack(DEFAULT_CONNTRACK_CAPACITY, Timeouts::default())
    }

    /// A pipeline whose conntrack holds `capacity` flows.
    pub fn with_conntrack(capacity: usize, timeouts: Timeouts) -> Pipeline {
        Pipeline {
            counters: Counters::default(),
            icmp: icmp_errors::IcmpBudget::new(),
            ct: Conntrack::new(capacity, timeouts),
            nat: nat::NatState::new(AFFINITY_CAPACITY),
            worker: 0,
            workers: 1,
            // An eighth of the conntrack: the flows that are busy.
            flows: FlowCache::new(capacity / 8),
            frags: frag::FragTable::new(FRAG_ENTRIES),
            learn: fast::Learn::default(),
            unresolved: None,
            decided: Default::default(),
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
    }

    /// Keys every hash that input could be aimed at: the conntrack index,
    /// the flow cache's sets, the ICMP destination budgets and the fragment
    /// table's sets. Pass a random
    /// seed on a dataplane, so that nobody can make flows collide in one
    /// probe run or set, or spend a given pod's ICMP budget. Set once,
    /// before the first packet (tests keep the fixed default).
    pub fn set_seed(&mut self, seed: u64) {
        let mut s = seed;
        self.ct.rekey(splitmix64(&mut s));
        self.flows.key = splitmix64(&mut s);
        self.icmp.key = splitmix64(&mut s);
        self.frags.key = splitmix64(&mut s);
    }

    /// Counts a drop the caller decided on (the worker's hand-off queue).
    pub fn count_drop(&mut self, r: DropReason) {
        self.counters.drops[r as usize] += 1;
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
        &self.nat.books.services
    }

    /// New flows, packets and bytes per backend slot of the tables the
    /// books were swapped in with (`Services::backend_keys` names each slot).
    pub fn backend_counters(&self) -> &[BackendCounters] {
        &self.nat.books.backends
    }

    /// What a tracer may read of this worker.
    #[inline(always)]
    fn seen(&self) -> Seen<'_> {
        Seen {
            ct: &self.ct,
            counters: &self.counters,
            decided: &self.decided,
        }
    }

    /// New flows allowed and denied per policy of the current snapshot.
    pub fn policy_flows(&self) -> &[crate::policy::PolicyFlows] {
        &self.nat.books.policy_flows
    }

    /// Swaps in the service bookkeeping made for the tables being swapped
    /// in (see [`nat::NatState::swap_books`]); returns the old books.
    pub fn swap_books(&mut self, fresh: ServiceBooks) -> ServiceBooks {
        self.nat.swap_books(fresh)
    }

    /// Work for an idle worker: sweeps more of the conntrack than a batch
    /// does, so expired flows leave the table (and the counts) even when no
    /// traffic arrives.
    pub fn maintain(&mut self, now_ns: u64) {
        if !self.ct.is_empty() {
            self.ct.gc(now_ns, IDLE_GC_BUDGET);
        }
        self.nat.sweep_affinity(now_ns);
    }

    /// Runs every packet of the batch and sets its verdict.
    pub fn process(&mut self, now_ns: u64, t: &Tables, pkts: &mut [Packet<'_>]) {
        self.run(now_ns, t, pkts, false, &mut NoTrace);
    }

    /// [`Pipeline::process`] for frames other workers handed here: this
    /// worker owns them, so none is handed on (`handoff_loop`).
    pub fn process_handed(&mut self, now_ns: u64, t: &Tables, pkts: &mut [Packet<'_>]) {
        self.run(now_ns, t, pkts, true, &mut NoTrace);
    }

    /// [`Pipeline::process`] (or `process_handed`) with `tracer` shown
    /// each packet (`crate::trace`): only for batches someone asked to see.
    pub fn process_traced(
        &mut self,
        now_ns: u64,
        t: &Tables,
        pkts: &mut [Packet<'_>],
        handed: bool,
        tracer: &mut impl Tracer,
    ) {
        self.run(now_ns, t, pkts, handed, tracer);
    }

    // Never inlined: one call per batch, and the per-packet loop stays one
    // symbol whose instructions callgrind counts (perf/results/).
    #[inline(never)]
    fn run<T: Tracer>(
        &mut self,
        now_ns: u64,
        t: &Tables,
        pkts: &mut [Packet<'_>],
        handed: bool,
        tr: &mut T,
    ) {
        for p in pkts.iter_mut() {
            tr.before(t, &self.seen(), p);
            p.verdict = match self.one(now_ns, t, p) {
                Verdict::Handoff(_) if handed => Verdict::Drop(DropReason::HandoffLoop),
                v => v,
            };
            match p.verdict {
                Verdict::Drop(r) => self.counters.drops[r as usize] += 1,
                Verdict::Handoff(_) => self.counters.handed_off += 1,
                Verdict::Tx(_) => {}
            }
            tr.after(t, &self.seen(), p);
        }
        // An empty table has nothing to expire: don't touch its memory. One
        // slot per packet (up to GC_BUDGET): a worker under load makes many
        // small batches, and a fixed 64 per call was 3 % of its core.
        if !self.ct.is_empty() {
            self.ct.gc(now_ns, pkts.len().clamp(1, GC_BUDGET));
        }
    }

    // Inlined into the batch loop, as the compiler chose before `run` was
    // generic over its tracer: a call per packet costs ~17 instructions on
    // the decap path (perf/results/trace-off-2026-12-07.md).
    #[inline(always)]
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
        let cx = &Ctx { now, t, node };
        let from = match port.kind {
            PortKind::Pod { ip } => fast::From::Pod(ip),
            PortKind::Uplink => fast::From::Uplink,
            // The node's kernel sends from the gateway address.
            PortKind::Host { .. } => fast::From::Pod(node.gateway_ip),
        };
        let probe = match self.fast_path(cx, from, p) {
            Ok(v) => return v,
            Err(probe) => probe,
        };
        // A TCP/UDP frame the cache could have served, but had no entry
        // (or a stale one) for.
        self.counters.flow_cache_misses += u64::from(probe.is_some());
        self.learn = fast::Learn::default();
        let v = match from {
            fast::From::Pod(ip) => self.on_pod(cx, port, ip, p),
            fast::From::Uplink => self.on_uplink(cx, p),
        };
        if let (Some(probe), Verdict::Tx(out)) = (probe, v) {
            self.learn(t, &probe, p, out);
        }
        v
    }
}

#[cfg(test)]
mod address_tests;
#[cfg(test)]
mod egress_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trace_tests;
