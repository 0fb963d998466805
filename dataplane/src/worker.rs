//! Worker threads: each is pinned to a core, owns one UMEM and one AF_XDP
//! socket per attached interface (on queue = worker index), and runs
//! RX -> pipeline -> TX in batches.
//!
//! Updates reach a worker only through its command channel, checked between
//! batches: new tables arrive as an `Arc<Tables>` snapshot that replaces the
//! old one at once, and every command is acknowledged after it is applied, so
//! "the reply to a write means every worker has applied it" holds.
//!
//! Flow steering: with several workers, a service flow's conntrack entry
//! lives on one worker (its client side's hash, see `nat.rs`), but the NIC
//! or veth may deliver either direction to any queue. The pipeline answers
//! `Verdict::Handoff(owner)` for such a frame; the worker copies it into a
//! buffer from its own pool and queues it to the owner (a bounded lock-free
//! crossbeam channel), which copies it into its UMEM and runs it as if it
//! had received it (never handing it on: a frame the workers disagree about
//! is dropped as `handoff_loop`, not looped). Buffers go back to the
//! sender's pool, so nothing is allocated after start; a full queue or
//! empty pool is a counted drop.
//!
//! Adaptive polling: the loop busy-polls while frames flow, yields the core
//! whenever a pass drains its rings (so two nodes' workers can share a core
//! with microsecond, not scheduler-slice, hand-offs), and after `IDLE_SPINS`
//! empty passes sleeps in poll(2) on its sockets and an eventfd (commands
//! wake it at once), so an idle dataplane costs nothing.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use crossbeam_channel::{bounded, Receiver, Sender};
use kxdp_core::conntrack::{CtStats, Entry};
use kxdp_core::pipeline::{
    BackendCounters, Counters, DropReason, Packet, Pipeline, ServiceBooks, SvcCounters, Verdict,
    BATCH_SIZE,
};
use kxdp_core::policy::PolicyFlows;
use kxdp_core::tables::{PortId, Tables, MAX_PORTS};
use kxdp_core::trace::{Record, Recorder};

use crate::sys::xsk::{
    self, BindMode, Desc, DescErrors, EventFd, KernelStats, Socket, Umem, FRAME_SIZE, RX_OFFSET,
};

/// Empty passes before sleeping: about 100 us of spinning with a few
/// sockets, long enough to ride out gaps inside a burst.
const IDLE_SPINS: u32 = 2000;
/// Longest sleep; commands and frames wake the worker earlier.
const IDLE_SLEEP_MS: i32 = 100;
/// Distinct TX ports staged per batch before a flush.
const TX_STAGES: usize = 8;
/// Socket slots per worker (frame ownership ids).
const MAX_SLOTS: u16 = 0x3f00;

/// Hand-off buffers per worker: frames it may have in flight to others.
const HANDOFF_POOL: usize = 1024;

/// A frame on its way to the worker that owns its flow.
struct HandoffFrame {
    /// The sending worker (whose pool the buffer goes back to).
    from: u16,
    port: PortId,
    len: u16,
    data: [u8; FRAME_SIZE],
}

/// Both ends of a bounded queue of hand-off buffers.
type Queue = (Sender<Box<HandoffFrame>>, Receiver<Box<HandoffFrame>>);

/// The hand-off queues between a dataplane's workers, made before they
/// start: per worker an inbound queue, a pool of free buffers, an "asleep"
/// flag and the eventfd that wakes it.
pub struct Mesh {
    inbound: Vec<Queue>,
    pools: Vec<Queue>,
    asleep: Vec<AtomicBool>,
    wakes: Vec<Arc<EventFd>>,
}

impl Mesh {
    pub fn new(workers: usize) -> io::Result<Mesh> {
        assert!((1..=64).contains(&workers), "1..=64 workers");
        // One worker hands nothing off: no buffers.
        let pool = if workers > 1 { HANDOFF_POOL } else { 0 };
        let pools = (0..workers)
            .map(|i| {
                let (tx, rx) = bounded(pool.max(1));
                for _ in 0..pool {
                    let f = Box::new(HandoffFrame {
                        from: i as u16,
                        port: 0,
                        len: 0,
                        data: [0; FRAME_SIZE],
                    });
                    tx.try_send(f).expect("sized for the pool");
                }
                (tx, rx)
            })
            .collect();
        // Room for every buffer there is: a send never finds it full.
        let inbound = (0..workers)
            .map(|_| bounded((pool * workers).max(1)))
            .collect();
        let wakes = (0..workers)
            .map(|_| EventFd::new().map(Arc::new))
            .collect::<io::Result<_>>()?;
        Ok(Mesh {
            inbound,
            pools,
            asleep: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            wakes,
        })
    }

    fn len(&self) -> usize {
        self.wakes.len()
    }
}

/// Commands from the state manager. Each carries its acknowledgement.
pub enum Command {
    Attach {
        port: PortId,
        ifindex: u32,
        mode: BindMode,
        reply: Sender<io::Result<RawFd>>,
    },
    Detach {
        port: PortId,
        reply: Sender<()>,
    },
    Tables {
        tables: Arc<Tables>,
        /// Its service bookkeeping, allocated by the engine: the worker
        /// swaps it in and never allocates for counters.
        books: ServiceBooks,
        /// Acknowledges with the snapshot and books the worker stopped
        /// using (their counts belong to that snapshot).
        reply: Sender<(Arc<Tables>, ServiceBooks)>,
    },
    KernelStats {
        reply: Sender<Vec<(PortId, KernelStats)>>,
    },
    /// Per-service counters, new flows per backend, conntrack fill, copied
    /// into `into`'s buffers (reserved by the engine).
    ServiceStats {
        into: ServiceStats,
        reply: Sender<ServiceStats>,
    },
    /// One chunk of a conntrack listing, copied into `into.entries`
    /// (reserved by the engine: at most its capacity).
    Conntrack {
        service: Option<u32>,
        into: ConntrackChunk,
        reply: Sender<ConntrackChunk>,
    },
    /// Arms a trace or capture (`kxdp_core::trace`): the worker runs its
    /// batches through `rec` and sends what it records to `out` until `rec`
    /// is done, `out` is full or gone, or `deadline` passes. Replaces an
    /// armed one.
    Watch(Box<Watch>),
    Stop,
}

/// An armed trace or capture.
pub struct Watch {
    pub rec: Recorder,
    pub out: Sender<Record>,
    pub deadline: Instant,
}

/// A worker's service-side counters, copied on request.
#[derive(Debug, Default, Clone)]
pub struct ServiceStats {
    pub services: Vec<SvcCounters>,
    /// Per backend slot of `tables` (`Services::backend_keys`).
    pub backends: Vec<BackendCounters>,
    /// New flows per policy of `tables` (`Policies::names`).
    pub policy_flows: Vec<PolicyFlows>,
    /// The snapshot the backend and policy slots are of.
    pub tables: Option<Arc<Tables>>,
    pub conntrack_entries: usize,
    pub conntrack_capacity: usize,
    pub conntrack: CtStats,
}

/// Most conntrack slots one `Command::Conntrack` looks at: a listing costs
/// a worker at most this much between two batches (16k slots, ~1.3 MiB of
/// slab, well under a millisecond), whatever the table's size.
pub const CONNTRACK_CHUNK_SLOTS: u32 = 16_384;

/// A chunk of a worker's conntrack: the entries of slots `from..next`
/// (with their idle time), at most `max` of them (and of the room reserved
/// in `entries`: the worker never grows it).
#[derive(Debug, Default, Clone)]
pub struct ConntrackChunk {
    /// The first slot to look at.
    pub from: u32,
    pub max: usize,
    pub entries: Vec<(Entry, u64)>,
    /// Where to go on; `None`: the table's end.
    pub next: Option<u32>,
}

/// Per-port traffic counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_ring_full: u64,
}

impl std::ops::AddAssign for PortCounters {
    fn add_assign(&mut self, o: PortCounters) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.tx_ring_full += o.tx_ring_full;
    }
}

/// Counters a worker publishes for the manager to read: single writer,
/// relaxed stores of the worker's own plain counters.
pub struct SharedStats {
    drops: [AtomicU64; DropReason::COUNT],
    events: [AtomicU64; Counters::EVENTS],
    ports: Box<[[AtomicU64; 5]]>,
    /// The UMEM's bad descriptors: RX, completions.
    xsk: [AtomicU64; 2],
    /// An on-link egress destination to resolve (`Pipeline::take_unresolved`);
    /// 0: none.
    unresolved: AtomicU32,
    /// When the worker last published (nanoseconds since `start`): its
    /// heartbeat, read by `liveness.rs`.
    heartbeat: AtomicU64,
    start: Instant,
    /// Live conntrack entries.
    conntrack: AtomicU64,
}

impl Default for SharedStats {
    fn default() -> SharedStats {
        SharedStats::new()
    }
}

impl SharedStats {
    pub fn new() -> SharedStats {
        SharedStats::started_at(Instant::now())
    }

    /// Heartbeats counted from `start`.
    pub fn started_at(start: Instant) -> SharedStats {
        SharedStats {
            heartbeat: AtomicU64::new(0),
            start,
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            events: std::array::from_fn(|_| AtomicU64::new(0)),
            ports: (0..MAX_PORTS)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            xsk: std::array::from_fn(|_| AtomicU64::new(0)),
            unresolved: AtomicU32::new(0),
            conntrack: AtomicU64::new(0),
        }
    }

    /// Live conntrack entries, as last published.
    pub fn conntrack_entries(&self) -> u64 {
        self.conntrack.load(Ordering::Relaxed)
    }

    /// The destination the worker last failed to find a neighbour for, once.
    pub fn take_unresolved(&self) -> Option<std::net::Ipv4Addr> {
        let ip = self.unresolved.swap(0, Ordering::Relaxed);
        (ip != 0).then(|| std::net::Ipv4Addr::from(ip))
    }

    /// The worker is polling (once per published pass, never per packet).
    pub fn beat(&self) {
        let ns = self.start.elapsed().as_nanos() as u64;
        self.heartbeat.store(ns, Ordering::Relaxed);
    }

    /// How long ago the worker last beat.
    pub fn heartbeat_age(&self) -> Duration {
        let at = Duration::from_nanos(self.heartbeat.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(at)
    }

    /// Descriptors from the kernel that failed the AF_XDP layer's checks.
    pub fn desc_errors(&self) -> DescErrors {
        DescErrors {
            bad_rx: self.xsk[0].load(Ordering::Relaxed),
            bad_completion: self.xsk[1].load(Ordering::Relaxed),
        }
    }

    /// A copy of the pipeline counters.
    pub fn counters(&self) -> Counters {
        let mut c = Counters::default();
        for (d, s) in c.drops.iter_mut().zip(self.drops.iter()) {
            *d = s.load(Ordering::Relaxed);
        }
        c.set_events(std::array::from_fn(|i| {
            self.events[i].load(Ordering::Relaxed)
        }));
        c
    }

    pub fn port(&self, p: PortId) -> PortCounters {
        let a = &self.ports[p as usize];
        let l = |i: usize| a[i].load(Ordering::Relaxed);
        PortCounters {
            rx_packets: l(0),
            rx_bytes: l(1),
            tx_packets: l(2),
            tx_bytes: l(3),
            tx_ring_full: l(4),
        }
    }
}

/// The manager's handle on a worker.
pub struct WorkerHandle {
    pub index: usize,
    pub core: Option<usize>,
    tx: Sender<Command>,
    wake: Arc<EventFd>,
    pub stats: Arc<SharedStats>,
    thread: Option<JoinHandle<()>>,
}

/// How long the manager waits for a worker to acknowledge a command.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

impl WorkerHandle {
    /// Starts worker `index` of `mesh` (socket queue = index), pinned to
    /// `core`, with or without a flow cache.
    pub fn spawn(
        index: usize,
        core: Option<usize>,
        flow_cache: bool,
        mesh: Arc<Mesh>,
    ) -> io::Result<WorkerHandle> {
        let (tx, rx) = bounded(64);
        let wake = mesh.wakes[index].clone();
        let stats = Arc::new(SharedStats::new());
        let umem = Umem::new()?;
        let mut pipeline = Pipeline::new();
        pipeline.set_worker(index as u16, mesh.len() as u16);
        pipeline.set_flow_cache(flow_cache);
        // std's hasher keys come from the OS's random source.
        pipeline.set_seed(RandomState::new().hash_one(index));
        let w = Worker {
            ports: (0..MAX_PORTS).map(|_| None).collect(),
            active: Vec::new(),
            umem,
            tables: Arc::new(Tables::default()),
            pipeline,
            rx,
            wake: wake.clone(),
            stats: stats.clone(),
            port_counters: vec![PortCounters::default(); MAX_PORTS],
            free_slots: (0..MAX_SLOTS).rev().collect(),
            queue: index as u32,
            start: Instant::now(),
            mesh,
            index,
            handed_to: 0,
            watch: None,
        };
        let thread = std::thread::Builder::new()
            .name(format!("kxdp-worker-{index}"))
            .spawn(move || {
                if let Some(id) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
                        log::warn!("worker {index}: could not pin to core {id}");
                    }
                }
                w.run()
            })?;
        Ok(WorkerHandle {
            index,
            core,
            tx,
            wake,
            stats,
            thread: Some(thread),
        })
    }

    /// Sends a command and wakes the worker if it sleeps. False if the
    /// worker is gone, or its queue stayed full for `ACK_TIMEOUT` (a stuck
    /// worker must not block the engine for good).
    pub fn send(&self, cmd: Command) -> bool {
        let ok = self.tx.send_timeout(cmd, ACK_TIMEOUT).is_ok();
        self.wake.notify();
        ok
    }

    /// Sends a command built around a reply channel and waits for the answer.
    pub fn call<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Option<T> {
        let (rtx, rrx) = bounded(1);
        if !self.send(make(rtx)) {
            return None;
        }
        rrx.recv_timeout(ACK_TIMEOUT).ok()
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    // Sockets before the UMEM: they must close before it is unmapped.
    ports: Vec<Option<Socket>>,
    active: Vec<PortId>,
    umem: Umem,
    tables: Arc<Tables>,
    pipeline: Pipeline,
    rx: Receiver<Command>,
    wake: Arc<EventFd>,
    stats: Arc<SharedStats>,
    port_counters: Vec<PortCounters>,
    free_slots: Vec<u16>,
    queue: u32,
    /// The pipeline's clock origin (`now` is nanoseconds since this).
    start: Instant,
    mesh: Arc<Mesh>,
    index: usize,
    /// Workers handed frames since the last wake-up check (bit per worker).
    handed_to: u64,
    /// An armed trace or capture: checked once per batch.
    watch: Option<Box<Watch>>,
}

/// A packet's fate after the pipeline, without the borrow of its chunk.
#[derive(Clone, Copy)]
struct Out {
    verdict: Verdict,
    desc: Desc,
    /// The frame as received (a hand-off copies it from there).
    input: Desc,
    port: PortId,
}

impl Worker {
    fn run(mut self) {
        let start = self.start;
        let mut idle: u32 = 0;
        loop {
            while let Ok(cmd) = self.rx.try_recv() {
                if !self.handle(cmd) {
                    return;
                }
            }
            let now = start.elapsed().as_nanos() as u64;
            // One worker has nobody to hand it anything.
            let mut work = if self.mesh.len() > 1 {
                self.handoffs_in(now)
            } else {
                0
            };
            for i in 0..self.active.len() {
                work += self.rx_batch(self.active[i], now);
            }
            self.wake_owners();
            self.housekeep();
            // Rings drained (or empty): let a neighbour node's worker sharing
            // this core run now rather than after a scheduler slice; it may be
            // waiting for exactly the frames we just sent it. Returns at once
            // when nothing else is runnable; never taken at full load.
            if work < BATCH_SIZE {
                std::thread::yield_now();
            }
            if work > 0 {
                idle = 0;
                self.publish();
            } else {
                idle += 1;
                if idle >= IDLE_SPINS {
                    // A pass of only bad descriptors does no work: publish
                    // what it counted before sleeping.
                    self.publish();
                    let socks: ArrayVec<&Socket, 256> = self
                        .active
                        .iter()
                        .filter_map(|&p| self.ports[p as usize].as_ref())
                        .take(256)
                        .collect();
                    // Asleep before the last look at the hand-off queue, and
                    // senders look at the flag after queueing (both SeqCst):
                    // one of the two sees the other, so no frame waits.
                    let me = self.index;
                    self.mesh.asleep[me].store(true, Ordering::SeqCst);
                    fence(Ordering::SeqCst);
                    if self.mesh.inbound[me].1.is_empty() {
                        xsk::wait(&socks, &self.wake, IDLE_SLEEP_MS);
                    }
                    self.mesh.asleep[me].store(false, Ordering::Relaxed);
                    self.pipeline.maintain(start.elapsed().as_nanos() as u64);
                    self.publish_conntrack();
                    idle = IDLE_SPINS / 2;
                }
            }
        }
    }

    /// Applies a command; false means stop.
    fn handle(&mut self, cmd: Command) -> bool {
        // Taking a command is polling too: an acknowledged write must not
        // be followed by a stale heartbeat (liveness.rs).
        self.stats.beat();
        match cmd {
            Command::Attach {
                port,
                ifindex,
                mode,
                reply,
            } => {
                let _ = reply.send(self.attach(port, ifindex, mode));
            }
            Command::Detach { port, reply } => {
                self.detach(port);
                let _ = reply.send(());
            }
            Command::Tables {
                tables,
                books,
                reply,
            } => {
                crate::fault::on_tables(self.index);
                let old_books = self.pipeline.swap_books(books);
                let old = std::mem::replace(&mut self.tables, tables);
                // The old snapshot goes back with the acknowledgement: freeing
                // a big one (10k services) takes milliseconds, which belong on
                // the engine thread, not between two batches here.
                let _ = reply.send((old, old_books));
            }
            Command::ServiceStats { mut into, reply } => {
                copy_service_stats(&self.pipeline, &self.tables, &mut into);
                let _ = reply.send(into);
            }
            Command::Conntrack {
                service,
                mut into,
                reply,
            } => {
                let now = self.start.elapsed().as_nanos() as u64;
                conntrack_chunk(self.pipeline.conntrack(), service, now, &mut into);
                let _ = reply.send(into);
            }
            Command::KernelStats { reply } => {
                let v = self
                    .active
                    .iter()
                    .filter_map(|&p| {
                        let s = self.ports[p as usize].as_ref()?;
                        Some((p, s.kernel_stats().ok()?))
                    })
                    .collect();
                let _ = reply.send(v);
            }
            Command::Watch(w) => self.watch = Some(w),
            Command::Stop => return false,
        }
        true
    }

    fn attach(&mut self, port: PortId, ifindex: u32, mode: BindMode) -> io::Result<RawFd> {
        if (port as usize) >= MAX_PORTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "port id out of range",
            ));
        }
        self.detach(port);
        let slot = self
            .free_slots
            .pop()
            .ok_or_else(|| io::Error::other("no free socket slots"))?;
        let share = self
            .active
            .iter()
            .find_map(|&p| self.ports[p as usize].as_ref());
        let sock = match Socket::new(&self.umem, ifindex, self.queue, share, slot, mode) {
            Ok(s) => s,
            Err(e) => {
                self.free_slots.push(slot);
                return Err(e);
            }
        };
        let fd = sock.fd();
        self.ports[port as usize] = Some(sock);
        self.active.push(port);
        self.housekeep();
        Ok(fd)
    }

    fn detach(&mut self, port: PortId) {
        if let Some(sock) = self.ports.get_mut(port as usize).and_then(Option::take) {
            self.free_slots.push(sock.slot());
            sock.close(&mut self.umem);
            self.active.retain(|&p| p != port);
        }
    }

    /// Reclaims completed TX frames and keeps every fill ring stocked.
    fn housekeep(&mut self) {
        let n = self.active.len().max(1);
        // Share the UMEM: half of it for fill rings, the rest in flight.
        let target = ((xsk::FRAME_COUNT / 2 / n) as u32).min(xsk::RING_SIZE);
        for &p in &self.active {
            let Some(s) = self.ports[p as usize].as_mut() else {
                continue;
            };
            if s.tx_pending() {
                s.kick_tx();
            }
            s.complete(&mut self.umem);
            if s.in_fill < target && s.refill(&mut self.umem, target - s.in_fill) > 0 {
                s.kick_fill();
            }
        }
    }

    /// Receives one batch on `port`, runs the pipeline and applies verdicts.
    fn rx_batch(&mut self, port: PortId, now: u64) -> usize {
        let mut descs = [Desc::default(); BATCH_SIZE];
        let Some(sock) = self.ports[port as usize].as_mut() else {
            return 0;
        };
        let n = sock.recv(&mut self.umem, &mut descs);
        if n == 0 {
            return 0;
        }
        let pc = &mut self.port_counters[port as usize];
        pc.rx_packets += n as u64;
        pc.rx_bytes += descs[..n].iter().map(|d| d.len as u64).sum::<u64>();
        self.run_batch(&descs[..n], &[port; BATCH_SIZE][..n], now, false);
        n
    }

    /// Runs frames other workers handed over (flows this one owns), each
    /// copied into a chunk of this worker's UMEM as if received here.
    fn handoffs_in(&mut self, now: u64) -> usize {
        let mut descs = [Desc::default(); BATCH_SIZE];
        let mut ports = [0 as PortId; BATCH_SIZE];
        let mut n = 0;
        while n < BATCH_SIZE {
            let Ok(f) = self.mesh.inbound[self.index].1.try_recv() else {
                break;
            };
            let len = f.len as usize;
            match self.umem.alloc() {
                Some(base) if len <= FRAME_SIZE - RX_OFFSET => {
                    let chunk = self.umem.chunk_mut(base);
                    chunk[RX_OFFSET..RX_OFFSET + len].copy_from_slice(&f.data[..len]);
                    descs[n] = Desc {
                        addr: base + RX_OFFSET as u64,
                        len: len as u32,
                    };
                    ports[n] = f.port;
                    n += 1;
                }
                got => {
                    if let Some(base) = got {
                        self.umem.release(base);
                    }
                    self.pipeline.count_drop(DropReason::HandoffFull);
                }
            }
            // Back to the sender's pool, which has room for all its buffers.
            let _ = self.mesh.pools[f.from as usize].0.try_send(f);
        }
        if n > 0 {
            self.run_batch(&descs[..n], &ports[..n], now, true);
        }
        n
    }

    /// Runs the pipeline over user-held frames (`ports[i]` is where frame
    /// `i` came in) and applies the verdicts; `handed`: frames other
    /// workers handed here, which are never handed on.
    fn run_batch(&mut self, descs: &[Desc], ports: &[PortId], now: u64, handed: bool) {
        let mut outs: ArrayVec<Out, BATCH_SIZE> = ArrayVec::new();
        {
            let mut chunks: ArrayVec<&mut [u8], BATCH_SIZE> = ArrayVec::new();
            self.umem.chunks_mut(descs, &mut chunks);
            let mut pkts: ArrayVec<Packet<'_>, BATCH_SIZE> = chunks
                .into_iter()
                .zip(descs.iter().zip(ports))
                .map(|(buf, (d, &port))| Packet::new(buf, d.offset(), d.len as usize, port))
                .collect();
            // The one test of a trace per batch: untraced batches run a
            // pipeline whose trace hooks compiled to nothing.
            match self.watch.as_deref_mut() {
                Some(w) => {
                    w.rec.set_handed(handed);
                    let t = &self.tables;
                    self.pipeline
                        .process_traced(now, t, &mut pkts, handed, &mut w.rec);
                }
                None if handed => self.pipeline.process_handed(now, &self.tables, &mut pkts),
                None => self.pipeline.process(now, &self.tables, &mut pkts),
            }
            for (p, d) in pkts.iter().zip(descs.iter()) {
                let base = (d.chunk() * FRAME_SIZE) as u64;
                outs.push(Out {
                    verdict: p.verdict,
                    desc: Desc {
                        addr: base + p.off as u64,
                        len: p.len as u32,
                    },
                    input: *d,
                    port: p.port,
                });
            }
        }
        self.apply(&outs);
        if self.watch.is_some() {
            self.deliver();
        }
    }

    /// Sends an armed trace's records; disarms it when it is done, its
    /// reader is gone or full, or its time is up.
    fn deliver(&mut self) {
        let Some(w) = self.watch.as_deref_mut() else {
            return;
        };
        let mut done = w.rec.remaining() == 0 || Instant::now() >= w.deadline;
        let unix_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        for mut r in w.rec.out.drain(..) {
            r.unix_ns = unix_ns;
            if w.out.try_send(r).is_err() {
                done = true;
                break;
            }
        }
        if done {
            self.watch = None;
        }
    }

    /// Queues a frame, as received, to the worker that owns its flow.
    fn handoff(&mut self, to: u16, port: PortId, input: Desc) {
        let (me, to) = (self.index, to as usize);
        let Ok(mut f) = self.mesh.pools[me].1.try_recv() else {
            self.pipeline.count_drop(DropReason::HandoffFull);
            return;
        };
        let (off, len) = (input.offset(), input.len as usize);
        f.data[..len].copy_from_slice(&self.umem.chunk_mut(input.addr)[off..off + len]);
        f.port = port;
        f.len = len as u16;
        match self.mesh.inbound[to].0.try_send(f) {
            Ok(()) => self.handed_to |= 1 << to,
            Err(e) => {
                let _ = self.mesh.pools[me].0.try_send(e.into_inner());
                self.pipeline.count_drop(DropReason::HandoffFull);
            }
        }
    }

    /// Wakes the workers this pass handed frames to, if they sleep.
    fn wake_owners(&mut self) {
        if self.handed_to == 0 {
            return;
        }
        fence(Ordering::SeqCst);
        for w in 0..self.mesh.len() {
            if self.handed_to & (1 << w) != 0 && self.mesh.asleep[w].load(Ordering::SeqCst) {
                self.mesh.wakes[w].notify();
            }
        }
        self.handed_to = 0;
    }

    /// Applies a batch's verdicts: drops free their chunk, transmissions are
    /// grouped per port and queued with one kick per port.
    fn apply(&mut self, outs: &[Out]) {
        let mut stages: ArrayVec<(PortId, ArrayVec<Desc, BATCH_SIZE>), TX_STAGES> = ArrayVec::new();
        for o in outs {
            match o.verdict {
                Verdict::Drop(_) => self.umem.release(o.desc.addr),
                Verdict::Handoff(to) => {
                    self.handoff(to, o.port, o.input);
                    self.umem.release(o.desc.addr);
                }
                Verdict::Tx(port) => {
                    let i = match stages.iter().position(|(p, _)| *p == port) {
                        Some(i) => i,
                        None => {
                            if stages.is_full() {
                                self.flush(&mut stages);
                            }
                            stages.push((port, ArrayVec::new()));
                            stages.len() - 1
                        }
                    };
                    stages[i].1.push(o.desc);
                }
            }
        }
        self.flush(&mut stages);
    }

    fn flush(&mut self, stages: &mut ArrayVec<(PortId, ArrayVec<Desc, BATCH_SIZE>), TX_STAGES>) {
        for (port, descs) in stages.drain(..) {
            let pc = &mut self.port_counters[port as usize];
            let sent = match self.ports.get_mut(port as usize).and_then(Option::as_mut) {
                Some(sock) => {
                    let sent = sock.send(&mut self.umem, &descs);
                    sock.kick_tx();
                    sent
                }
                None => 0,
            };
            pc.tx_packets += sent as u64;
            pc.tx_bytes += descs[..sent].iter().map(|d| d.len as u64).sum::<u64>();
            pc.tx_ring_full += (descs.len() - sent) as u64;
            for d in &descs[sent..] {
                self.umem.release(d.addr);
            }
        }
    }

    /// Publishes counters for the manager (relaxed stores, one writer).
    fn publish_conntrack(&self) {
        let n = self.pipeline.conntrack().len() as u64;
        self.stats.conntrack.store(n, Ordering::Relaxed);
    }

    fn publish(&mut self) {
        self.stats.beat();
        if let Some(ip) = self.pipeline.take_unresolved() {
            self.stats
                .unresolved
                .store(u32::from(ip), Ordering::Relaxed);
        }
        let c = self.pipeline.counters();
        for (s, v) in self.stats.drops.iter().zip(c.drops.iter()) {
            s.store(*v, Ordering::Relaxed);
        }
        for (s, v) in self.stats.events.iter().zip(c.events()) {
            s.store(v, Ordering::Relaxed);
        }
        self.publish_conntrack();
        let e = self.umem.desc_errors();
        for (s, v) in self.stats.xsk.iter().zip([e.bad_rx, e.bad_completion]) {
            s.store(v, Ordering::Relaxed);
        }
        for &p in &self.active {
            let pc = &self.port_counters[p as usize];
            let a = &self.stats.ports[p as usize];
            for (s, v) in a.iter().zip([
                pc.rx_packets,
                pc.rx_bytes,
                pc.tx_packets,
                pc.tx_bytes,
                pc.tx_ring_full,
            ]) {
                s.store(v, Ordering::Relaxed);
            }
        }
    }
}

/// Copies a worker's service counters into the engine's buffers (no
/// allocation while they are large enough), with the snapshot whose backend
/// slots they count.
fn copy_service_stats(pl: &Pipeline, tables: &Arc<Tables>, into: &mut ServiceStats) {
    into.services.clear();
    into.services.extend_from_slice(pl.service_counters());
    into.backends.clear();
    into.backends.extend_from_slice(pl.backend_counters());
    into.policy_flows.clear();
    into.policy_flows.extend_from_slice(pl.policy_flows());
    into.tables = Some(tables.clone());
    let ct = pl.conntrack();
    into.conntrack_entries = ct.len();
    into.conntrack_capacity = ct.capacity();
    into.conntrack = ct.stats();
}

/// Fills `into` from slot `into.from` on: entries (of `service` if given)
/// until its reserved capacity is reached or [`CONNTRACK_CHUNK_SLOTS`]
/// slots were looked at, whichever comes first; `next` says where to go on.
fn conntrack_chunk(
    ct: &kxdp_core::conntrack::Conntrack,
    service: Option<u32>,
    now: u64,
    into: &mut ConntrackChunk,
) {
    into.entries.clear();
    let want = into.max.min(into.entries.capacity());
    let end = into.from.saturating_add(CONNTRACK_CHUNK_SLOTS);
    into.next = (end < ct.capacity() as u32).then_some(end);
    for (id, e) in ct.iter_range(into.from, end) {
        if service.is_some_and(|s| e.service != s) {
            continue;
        }
        if into.entries.len() == want {
            into.next = Some(id);
            return;
        }
        into.entries.push((*e, now.saturating_sub(e.last_seen_ns)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxdp_core::conntrack::{Conntrack, FlowKey, TcpState, Timeouts};
    use std::net::Ipv4Addr;

    fn entry(i: u32, service: u32) -> Entry {
        let key = |src: u32, dst: u32| FlowKey {
            proto: 17,
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            sport: 1000 + (i % 50_000) as u16,
            dport: 53,
        };
        Entry {
            original: key(0x0af4_0000 + i, 0x0a60_000a),
            reply: key(0x0af4_ff00, 0x0af4_0000 + i),
            service,
            backend: 0,
            tcp: TcpState::None,
            created_ns: 0,
            last_seen_ns: 0,
            client_mac: [0; 6],
            in_port: 1,
            flags: 0,
        }
    }

    /// Walks a table the way the engine pages it: chunks of at most
    /// CONNTRACK_CHUNK_SLOTS slots and the room given, each entry once,
    /// never more than the room, and filtered by service.
    #[test]
    fn conntrack_chunks_are_bounded_and_list_each_entry_once() {
        let cap = 3 * CONNTRACK_CHUNK_SLOTS as usize;
        let mut ct = Conntrack::new(cap, Timeouts::default());
        for i in 0..cap as u32 / 2 {
            ct.insert(entry(i, i % 3), 0).unwrap();
        }
        for (service, want) in [(None, cap / 2), (Some(1), cap / 6)] {
            let mut seen = std::collections::HashSet::new();
            let (mut from, mut calls) = (Some(0), 0);
            while let Some(slot) = from {
                let mut c = ConntrackChunk {
                    from: slot,
                    max: 1000,
                    entries: Vec::with_capacity(1000),
                    next: None,
                };
                conntrack_chunk(&ct, service, 0, &mut c);
                assert!(c.entries.len() <= 1000);
                let next = c.next.unwrap_or(cap as u32);
                assert!(
                    next > slot && next - slot <= CONNTRACK_CHUNK_SLOTS,
                    "{slot} -> {next}"
                );
                for (e, _) in &c.entries {
                    assert!(service.is_none_or(|s| e.service == s));
                    assert!(seen.insert(e.original.src), "listed twice");
                }
                from = c.next;
                calls += 1;
            }
            assert_eq!(seen.len(), want, "{service:?}");
            assert!(calls >= 3, "{calls}");
        }
    }
}
