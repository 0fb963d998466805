//! Connection tracking for service NAT.
//!
//! A [`Conntrack`] remembers, per flow, the translation chosen for its first
//! packet, so that every later packet of the flow (either direction) gets the
//! same one. An [`Entry`] has two keys: `original`, the 5-tuple as the client
//! sent it, and `reply`, the 5-tuple replies arrive with after translation.
//! Both are indexed, so [`Conntrack::lookup`] answers for either direction
//! and says which one it was.
//!
//! # Memory and the hot path
//!
//! Everything is sized in [`Conntrack::new`] and nothing allocates, locks or
//! reads a clock afterwards (time is the caller's `now_ns`, any monotonic
//! nanosecond count):
//!
//! - a slab of `capacity` slots (an entry id is its slot number) with a
//!   pre-allocated free list;
//! - an open-addressing index of 8-byte buckets (32-bit hash, entry id and
//!   direction), linear probing with backward-shift deletion, a power of
//!   two of at least 4 buckets per entry: with two keys per entry the load
//!   stays <= 1/2, so a hit takes ~1.5 probes and a miss ~2.5, in one or two
//!   cache lines. Deletion leaves no tombstones, so the index never needs a
//!   rehash. This replaces `hashbrown::HashMap`, which under insert/remove
//!   churn runs out of room to tombstones and then either rehashes in place
//!   (an O(n) stall) or, when more than half full, *grows* (allocates):
//!   measured by `tests/conntrack_alloc.rs`.
//!
//! Memory: 80 bytes per slot plus 32 to 64 bytes of index per entry (at
//! 256k entries, 20 MiB of slab and 8 MiB of index).
//!
//! # Keeping the table bounded
//!
//! - [`Conntrack::gc`] walks a rotating cursor over a few slots and frees
//!   expired entries; call it once per batch with a small budget.
//! - [`Conntrack::insert`] on a full table first runs the same cursor over
//!   [`EVICT_SCAN`] slots; if nothing there has expired, it evicts, among
//!   [`EVICT_SAMPLE`] random entries, an unconfirmed one (a handshake not
//!   completed, an unanswered datagram: what the kernel's early drop takes)
//!   closest to expiry, sampling up to [`EVICT_SAMPLE_UNCONFIRMED`] more to
//!   find one, and a confirmed one, closest to expiry, only if none turns
//!   up. Never an O(n) scan, and it never fails while the capacity is not
//!   zero.
//!
//! Entry ids stay valid until the entry is removed, expires in `gc`, or is
//! evicted by `insert`: don't keep an id across those calls.
//!
//! # TCP
//!
//! The state machine follows the flags only (no sequence-number checks,
//! like Cilium's): SYN, SYN+ACK (reply direction), ACK make a connection
//! `Established`, and nothing else does (an ACK after a SYN alone leaves it
//! half-open); a FIN
//! from one side makes it `FinWait` (half-closed, still a connection: the
//! established timeout applies); FINs from both sides, or any RST, make it
//! `Closed`, which lasts `tcp_closing_ns` after its last packet. A SYN on a
//! `Closed` entry (a client reusing its port) starts it over. Insert TCP
//! entries as `SynSent` on a SYN and as `Established` when picking up a flow
//! mid-stream (e.g. after a restart). UDP and ICMP entries use
//! [`TcpState::None`].
//!
//! # Hashing
//!
//! The index hash is keyed. [`Conntrack::new`] uses a fixed key; a dataplane
//! facing untrusted clients should use [`Conntrack::with_seed`] with a
//! random seed, so that nobody can aim flows at one probe run.

use core::fmt;
use core::net::Ipv4Addr;

use crate::wire::ipv4::protocol;
use crate::wire::tcp::flags as tcp_flags;

/// Largest supported capacity. Ids take 31 bits in the index, and the index
/// has up to 8 buckets per entry.
pub const MAX_CAPACITY: usize = 1 << 28;

/// Slots the GC cursor inspects, on an insert into a full table, looking for
/// expired entries before it evicts a live one. 64 slots are 5 KiB of slab:
/// a bounded, cache-friendly walk that finds something whenever more than a
/// few percent of the table has expired.
pub const EVICT_SCAN: usize = 64;

/// Live entries sampled to choose an eviction victim when none of the
/// [`EVICT_SCAN`] slots had expired. The victim is the one with the earliest
/// deadline (`last_seen + timeout`): least recently seen within a timeout
/// class, and half-open or closing entries before established ones, so a
/// SYN flood evicts its own entries first. With 8 samples the victim is, in
/// expectation, in the 1/9 of the table closest to expiry (Redis samples 5
/// for its approximated LRU).
pub const EVICT_SAMPLE: usize = 8;

/// More entries sampled, when the first [`EVICT_SAMPLE`] are all confirmed,
/// to find an unconfirmed one to evict instead (a handshake not completed,
/// an unanswered datagram): with a tenth of the table unconfirmed, all 40
/// miss it 1.5% of the time; with a quarter (a SYN flood), never in
/// practice. So a flood of new flows evicts its own kind, not the
/// connections that were answered.
pub const EVICT_SAMPLE_UNCONFIRMED: usize = 32;

/// Seed of [`Conntrack::new`]'s index hash.
const DEFAULT_SEED: u64 = 0x6b78_6470_6374_0001; // "kxdpct"

/// A flow's 5-tuple as seen on the wire. ICMP echo: `sport = dport =` the
/// echo identifier.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FlowKey {
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

impl FlowKey {
    /// The same flow in the other direction.
    pub const fn reversed(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// Which of an entry's keys a packet matched.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dir {
    /// Client to service: matched [`Entry::original`].
    Original,
    /// Backend to client: matched [`Entry::reply`].
    Reply,
}

/// TCP connection state; `None` for UDP and ICMP entries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TcpState {
    /// Not TCP.
    None,
    /// The client's SYN was seen.
    SynSent,
    /// The backend's SYN+ACK was seen.
    SynRecv,
    /// The client acknowledged: the handshake is complete.
    Established,
    /// One side sent FIN; the other may still send.
    FinWait,
    /// Both sides sent FIN, or either sent RST.
    Closed,
}

/// One tracked flow.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// As the client sent it (e.g. client:port -> ClusterIP:port). Must not
    /// change while the entry is in the table (remove and insert instead).
    pub original: FlowKey,
    /// As the reply arrives (e.g. backend:tport -> client:port, or
    /// backend -> snat ip:port). Must not change either.
    pub reply: FlowKey,
    /// Caller's service id.
    pub service: u32,
    /// Caller's backend id.
    pub backend: u32,
    /// TCP state, or [`TcpState::None`].
    pub tcp: TcpState,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// L2 source of the original direction (to answer an outside client).
    pub client_mac: [u8; 6],
    /// Port the original direction arrived on.
    pub in_port: u16,
    /// Caller-defined bits (e.g. SNAT applied, backend gone).
    pub flags: u8,
}

/// Idle timeouts, in nanoseconds since an entry's last packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// `SynSent`, `SynRecv`.
    pub tcp_syn_ns: u64,
    /// `Established`, `FinWait`.
    pub tcp_established_ns: u64,
    /// `Closed` (after FIN from both sides, or RST).
    pub tcp_closing_ns: u64,
    pub udp_ns: u64,
    /// ICMP and any other non-TCP, non-UDP protocol.
    pub icmp_ns: u64,
}

const SEC: u64 = 1_000_000_000;

impl Default for Timeouts {
    /// TCP as Cilium's kube-proxy replacement (`CT_SYN_TIMEOUT` 60 s,
    /// `CT_CONNECTION_LIFETIME_TCP` 21600 s, `CT_CLOSE_TIMEOUT` 10 s): the
    /// 6 h idle limit is far below the kernel's 5 days, which only fills
    /// tables with dead connections. UDP and ICMP as the kernel
    /// (`nf_conntrack_udp_timeout` and `nf_conntrack_icmp_timeout`, 30 s;
    /// Cilium uses 60 s for all non-TCP): DNS, the bulk of short UDP flows,
    /// is done in milliseconds, and streams refresh on every packet.
    fn default() -> Timeouts {
        Timeouts {
            tcp_syn_ns: 60 * SEC,
            tcp_established_ns: 6 * 3600 * SEC,
            tcp_closing_ns: 10 * SEC,
            udp_ns: 30 * SEC,
            icmp_ns: 30 * SEC,
        }
    }
}

impl Timeouts {
    /// The shortest of the timeouts.
    pub fn min(&self) -> u64 {
        self.tcp_syn_ns
            .min(self.tcp_established_ns)
            .min(self.tcp_closing_ns)
            .min(self.udp_ns)
            .min(self.icmp_ns)
    }

    /// The idle timeout that applies to `e` in its current state.
    pub fn for_entry(&self, e: &Entry) -> u64 {
        match e.tcp {
            TcpState::None if e.original.proto == protocol::UDP => self.udp_ns,
            TcpState::None => self.icmp_ns,
            TcpState::SynSent | TcpState::SynRecv => self.tcp_syn_ns,
            TcpState::Established | TcpState::FinWait => self.tcp_established_ns,
            TcpState::Closed => self.tcp_closing_ns,
        }
    }
}

/// Why [`Conntrack::insert`] refused an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsertError {
    /// The capacity is zero.
    Full,
    /// One of the entry's keys is already tracked (or both keys are the
    /// same): the caller may pick another SNAT port.
    Exists,
}

impl fmt::Display for InsertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InsertError::Full => f.write_str("connection table has no capacity"),
            InsertError::Exists => f.write_str("flow already tracked"),
        }
    }
}

/// Counters, plain `u64`s for one worker; merge copies off the hot path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtStats {
    /// Successful inserts.
    pub inserts: u64,
    /// Inserts refused with [`InsertError::Exists`].
    pub insert_exists: u64,
    /// Inserts refused with [`InsertError::Full`] (zero capacity only).
    pub insert_full: u64,
    /// Live entries evicted to make room.
    pub evictions: u64,
    /// Expired entries freed, by `gc` or by a full insert.
    pub expirations: u64,
    /// Entries removed by [`Conntrack::remove`].
    pub removals: u64,
}

impl CtStats {
    /// Adds every counter of `other` to `self`.
    pub fn merge(&mut self, other: &CtStats) {
        let CtStats {
            inserts,
            insert_exists,
            insert_full,
            evictions,
            expirations,
            removals,
        } = other;
        self.inserts += inserts;
        self.insert_exists += insert_exists;
        self.insert_full += insert_full;
        self.evictions += evictions;
        self.expirations += expirations;
        self.removals += removals;
    }
}

/// A slab slot. `hashes` are the index hashes of the entry's keys, kept so
/// that removal finds its buckets without rehashing the keys.
#[derive(Clone, Copy)]
struct Slot {
    entry: Entry,
    hashes: [u32; 2],
    /// The caller's word beside the entry (in what would be padding after
    /// it), `u32::MAX` when inserted: [`Conntrack::tag`].
    tag: u32,
    live: bool,
    /// FIN seen from: bit 0 the original side, bit 1 the reply side.
    fins: u8,
    /// A packet of the reply direction was seen (the flow is confirmed:
    /// not a candidate for early eviction, see [`Slot::unconfirmed`]).
    replied: bool,
}

impl Slot {
    /// Not (yet) a two-way flow: a TCP handshake not completed, or a
    /// non-TCP flow never answered. A full table evicts these first, as
    /// the kernel's early drop takes only entries that are not assured.
    fn unconfirmed(&self) -> bool {
        match self.entry.tcp {
            TcpState::SynSent | TcpState::SynRecv => true,
            TcpState::None => !self.replied,
            _ => false,
        }
    }
}

const UNUSED: Slot = Slot {
    entry: Entry {
        original: UNSPECIFIED_KEY,
        reply: UNSPECIFIED_KEY,
        service: 0,
        backend: 0,
        tcp: TcpState::None,
        created_ns: 0,
        last_seen_ns: 0,
        client_mac: [0; 6],
        in_port: 0,
        flags: 0,
    },
    hashes: [0; 2],
    tag: u32::MAX,
    live: false,
    fins: 0,
    replied: false,
};

const UNSPECIFIED_KEY: FlowKey = FlowKey {
    proto: 0,
    src: Ipv4Addr::UNSPECIFIED,
    dst: Ipv4Addr::UNSPECIFIED,
    sport: 0,
    dport: 0,
};

/// An index bucket: `val` is `id << 1 | dir` (dir 0 original, 1 reply), or
/// [`VACANT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    hash: u32,
    val: u32,
}

const VACANT: u32 = u32::MAX;
const EMPTY_BUCKET: Bucket = Bucket {
    hash: 0,
    val: VACANT,
};

/// Fixed-capacity connection table: slab + open-addressing index.
pub struct Conntrack {
    slots: Box<[Slot]>,
    /// Free slot ids; popped from the end (lowest ids first initially).
    free: Vec<u32>,
    buckets: Box<[Bucket]>,
    mask: usize,
    /// Index hash keys, derived from the seed.
    keys: [u64; 4],
    len: usize,
    gc_cursor: usize,
    /// xorshift64 state for eviction sampling.
    rng: u64,
    timeouts: Timeouts,
    /// `timeouts.min()`, for the flow cache's touch.
    min_timeout: u64,
    stats: CtStats,
}

impl Conntrack {
    /// Fixed capacity in entries; both keys of every entry are indexed;
    /// never allocates afterwards. Uses a fixed hash key: see
    /// [`Conntrack::with_seed`].
    ///
    /// # Panics
    ///
    /// If `capacity > MAX_CAPACITY`.
    pub fn new(capacity: usize, timeouts: Timeouts) -> Conntrack {
        Conntrack::with_seed(capacity, timeouts, DEFAULT_SEED)
    }

    /// As [`Conntrack::new`], with the index hash keyed by `seed` (pass a
    /// random one, e.g. from `getrandom`, on a dataplane).
    pub fn with_seed(capacity: usize, timeouts: Timeouts, seed: u64) -> Conntrack {
        assert!(
            capacity <= MAX_CAPACITY,
            "conntrack capacity {capacity} > {MAX_CAPACITY}"
        );
        let nbuckets = (4 * capacity).next_power_of_two().max(8);
        let (keys, rng) = derive_keys(seed);
        Conntrack {
            slots: vec![UNUSED; capacity].into_boxed_slice(),
            free: (0..capacity as u32).rev().collect(),
            buckets: vec![EMPTY_BUCKET; nbuckets].into_boxed_slice(),
            mask: nbuckets - 1,
            keys,
            len: 0,
            gc_cursor: 0,
            rng,
            timeouts,
            min_timeout: timeouts.min(),
            stats: CtStats::default(),
        }
    }

    /// Keys the index hash with `seed`, as [`Conntrack::with_seed`] does,
    /// without allocating the table again.
    ///
    /// # Panics
    ///
    /// If the table holds entries (they were indexed with the old key).
    pub fn rekey(&mut self, seed: u64) {
        assert_eq!(self.len, 0, "rekey of a conntrack table in use");
        (self.keys, self.rng) = derive_keys(seed);
    }

    /// The entry whose original or reply key is `key`: its id, and which
    /// direction `key` is.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<(u32, Dir)> {
        self.find(key, self.hash(key)).map(|v| {
            let dir = if v & 1 == 0 {
                Dir::Original
            } else {
                Dir::Reply
            };
            (v >> 1, dir)
        })
    }

    /// The entry `id`.
    ///
    /// # Panics
    ///
    /// If `id` is not a live entry.
    #[inline]
    pub fn get(&self, id: u32) -> &Entry {
        &self.live_slot(id).entry
    }

    /// The entry `id`, to update its caller-defined fields. Changing its
    /// `original` or `reply` key makes it unreachable by lookup (it is still
    /// removed and expired correctly): remove and insert instead.
    ///
    /// # Panics
    ///
    /// If `id` is not a live entry.
    #[inline]
    pub fn get_mut(&mut self, id: u32) -> &mut Entry {
        &mut self.live_slot_mut(id).entry
    }

    /// Entry `id`'s tag (the pipeline's backend slot).
    ///
    /// # Panics
    ///
    /// If `id` is not a live entry.
    #[inline]
    pub fn tag(&self, id: u32) -> u32 {
        self.live_slot(id).tag
    }

    #[inline]
    pub fn set_tag(&mut self, id: u32, tag: u32) {
        self.live_slot_mut(id).tag = tag;
    }

    /// Inserts `e` and returns its id. If the table is full, first frees
    /// the expired entries among the next [`EVICT_SCAN`] slots of the GC
    /// cursor, and if there are none, evicts the entry closest to expiry
    /// among [`EVICT_SAMPLE`] random ones.
    ///
    /// `Err(Exists)` if either key is already tracked, or if both keys are
    /// equal; `Err(Full)` only if the capacity is zero.
    pub fn insert(&mut self, e: Entry, now_ns: u64) -> Result<u32, InsertError> {
        debug_assert_eq!(
            e.original.proto == protocol::TCP,
            e.tcp != TcpState::None,
            "TCP entries, and only they, have a TCP state"
        );
        let ho = self.hash(&e.original);
        let hr = self.hash(&e.reply);
        if e.original == e.reply
            || self.find(&e.original, ho).is_some()
            || self.find(&e.reply, hr).is_some()
        {
            self.stats.insert_exists += 1;
            return Err(InsertError::Exists);
        }
        if self.free.is_empty() {
            if self.slots.is_empty() {
                self.stats.insert_full += 1;
                return Err(InsertError::Full);
            }
            self.make_room(now_ns);
        }
        let id = self.free.pop().expect("make_room freed a slot");
        self.slots[id as usize] = Slot {
            entry: e,
            hashes: [ho, hr],
            tag: u32::MAX,
            live: true,
            fins: 0,
            replied: false,
        };
        self.index_insert(ho, id << 1);
        self.index_insert(hr, id << 1 | 1);
        self.len += 1;
        self.stats.inserts += 1;
        Ok(id)
    }

    /// Whether entry `id` may give its keys to a new flow: it is closed, or
    /// it has been unconfirmed (see [`Slot::unconfirmed`]) for at least
    /// `grace_ns`, long enough that a real handshake would have finished.
    /// What a SYN flood fills an SNAT port range with.
    ///
    /// # Panics
    ///
    /// If `id` is not a live entry.
    pub fn reclaimable(&self, id: u32, now_ns: u64, grace_ns: u64) -> bool {
        let s = self.live_slot(id);
        s.entry.tcp == TcpState::Closed
            || (s.unconfirmed() && now_ns.saturating_sub(s.entry.created_ns) >= grace_ns)
    }

    /// Removes entry `id` and frees both its keys. Does nothing if `id` is
    /// not live.
    ///
    /// # Panics
    ///
    /// If `id >= capacity`.
    pub fn remove(&mut self, id: u32) {
        if self.slots[id as usize].live {
            self.free_slot(id);
            self.stats.removals += 1;
        }
    }

    /// Marks activity at `now_ns` and advances the TCP state machine with
    /// the flags byte (`tcp_flags`, byte 13 of the TCP header) of a packet
    /// seen in direction `dir`. Non-TCP entries ignore the flags.
    ///
    /// # Panics
    ///
    /// If `id` is not a live entry.
    #[inline]
    pub fn touch(&mut self, id: u32, dir: Dir, tcp_flags: Option<u8>, now_ns: u64) {
        let s = self.live_slot_mut(id);
        s.entry.last_seen_ns = s.entry.last_seen_ns.max(now_ns);
        s.replied |= dir == Dir::Reply;
        let Some(f) = tcp_flags else {
            return;
        };
        // The common case, a segment without SYN, FIN or RST on an
        // established connection, changes nothing (as `tcp_next` would say).
        if f & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0
            && s.entry.tcp == TcpState::Established
        {
            return;
        }
        if s.entry.tcp != TcpState::None {
            (s.entry.tcp, s.fins) = tcp_next(s.entry.tcp, s.fins, dir, f);
        }
    }

    /// The flow cache's touch: if slot `id` is live with `key` as its key in
    /// direction `dir`, is `Established` (or not TCP) and was seen within
    /// the shortest timeout (so it has not expired), marks it seen at
    /// `now_ns` and returns true, as [`Conntrack::touch`] would for a segment
    /// without SYN, FIN or RST. Otherwise changes nothing and returns false.
    #[inline(always)]
    pub fn touch_established(&mut self, id: u32, dir: Dir, key: &FlowKey, now_ns: u64) -> bool {
        let min = self.min_timeout;
        let Some(s) = self.slots.get_mut(id as usize) else {
            return false;
        };
        let k = match dir {
            Dir::Original => &s.entry.original,
            Dir::Reply => &s.entry.reply,
        };
        if !s.live
            || k != key
            || !matches!(s.entry.tcp, TcpState::Established | TcpState::None)
            || now_ns.saturating_sub(s.entry.last_seen_ns) > min
        {
            return false;
        }
        s.entry.last_seen_ns = s.entry.last_seen_ns.max(now_ns);
        s.replied |= dir == Dir::Reply;
        true
    }

    /// True if entry `id` has been idle longer than its timeout at `now_ns`.
    ///
    /// # Panics
    ///
    /// If `id` is not a live entry.
    #[inline]
    pub fn expired(&self, id: u32, now_ns: u64) -> bool {
        self.slot_expired(self.live_slot(id), now_ns)
    }

    /// Incremental GC: looks at up to `budget` slots (at most the capacity)
    /// from a rotating cursor, removes the expired entries among them and
    /// returns how many it removed.
    pub fn gc(&mut self, now_ns: u64, budget: usize) -> usize {
        let cap = self.slots.len();
        let mut left = budget.min(cap);
        let mut removed = 0;
        // Nothing seen within the shortest timeout has expired, whatever
        // its state: most slots are passed over without the state lookup.
        let min_timeout = self.timeouts.min();
        while left > 0 {
            // Up to the end of the slab, then wrap.
            let start = self.gc_cursor;
            let end = cap.min(start + left);
            for id in start..end {
                let s = &self.slots[id];
                if s.live
                    && now_ns.saturating_sub(s.entry.last_seen_ns) > min_timeout
                    && self.slot_expired(s, now_ns)
                {
                    self.free_slot(id as u32);
                    removed += 1;
                }
            }
            left -= end - start;
            self.gc_cursor = if end == cap { 0 } else { end };
        }
        self.stats.expirations += removed as u64;
        removed
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Live entries with their ids, in id order (for listings; walks the
    /// whole slab).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Entry)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live)
            .map(|(id, s)| (id as u32, &s.entry))
    }

    /// The live entries of slots `from..to` (clamped to the slab), for
    /// listing a table in bounded chunks.
    pub fn iter_range(&self, from: u32, to: u32) -> impl Iterator<Item = (u32, &Entry)> {
        let end = (to as usize).min(self.slots.len());
        let start = (from as usize).min(end);
        self.slots[start..end]
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live)
            .map(move |(i, s)| ((start + i) as u32, &s.entry))
    }

    pub fn stats(&self) -> CtStats {
        self.stats
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// New timeouts apply to every entry from the next check on.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
        self.min_timeout = timeouts.min();
    }

    // --- internals ---------------------------------------------------------

    #[inline]
    fn live_slot(&self, id: u32) -> &Slot {
        let s = &self.slots[id as usize];
        assert!(s.live, "conntrack entry {id} is not live");
        s
    }

    #[inline]
    fn live_slot_mut(&mut self, id: u32) -> &mut Slot {
        let s = &mut self.slots[id as usize];
        assert!(s.live, "conntrack entry {id} is not live");
        s
    }

    #[inline]
    fn slot_expired(&self, s: &Slot, now_ns: u64) -> bool {
        now_ns.saturating_sub(s.entry.last_seen_ns) > self.timeouts.for_entry(&s.entry)
    }

    /// When the slot's entry expires.
    fn deadline(&self, s: &Slot) -> u64 {
        s.entry
            .last_seen_ns
            .saturating_add(self.timeouts.for_entry(&s.entry))
    }

    /// Which of two slots to evict first: the lower, unconfirmed before
    /// confirmed, then closest to expiry.
    fn evict_rank(&self, id: usize) -> (bool, u64) {
        let s = &self.slots[id];
        (!s.unconfirmed(), self.deadline(s))
    }

    /// Frees at least one slot of a full table.
    fn make_room(&mut self, now_ns: u64) {
        if self.gc(now_ns, EVICT_SCAN) > 0 {
            return;
        }
        // The table is full: every slot is live. Unconfirmed entries go
        // first (closest to expiry among them); only when a wider sample
        // finds none does a confirmed one, the closest to expiry, go.
        let cap = self.slots.len();
        let mut victim = self.random_below(cap);
        let mut best = self.evict_rank(victim);
        for n in 1..EVICT_SAMPLE + EVICT_SAMPLE_UNCONFIRMED {
            if n >= EVICT_SAMPLE && !best.0 {
                break;
            }
            let id = self.random_below(cap);
            let r = self.evict_rank(id);
            if r < best {
                (victim, best) = (id, r);
            }
        }
        self.free_slot(victim as u32);
        self.stats.evictions += 1;
    }

    fn free_slot(&mut self, id: u32) {
        let s = &mut self.slots[id as usize];
        debug_assert!(s.live);
        s.live = false;
        let [ho, hr] = s.hashes;
        self.index_remove(ho, id << 1);
        self.index_remove(hr, id << 1 | 1);
        self.free.push(id);
        self.len -= 1;
    }

    /// Keyed hash of a 5-tuple (two folded 64x64->128 multiplies, as in
    /// foldhash, crossed so that fixing either half of the key still leaves
    /// the other mixed in).
    #[inline]
    fn hash(&self, k: &FlowKey) -> u32 {
        let a = u64::from(k.src.to_bits()) << 32 | u64::from(k.dst.to_bits());
        let b = u64::from(k.proto) << 32 | u64::from(k.sport) << 16 | u64::from(k.dport);
        let h = folded_mul(a ^ self.keys[0], b ^ self.keys[1])
            ^ folded_mul(b ^ self.keys[2], a ^ self.keys[3]);
        (h ^ (h >> 32)) as u32
    }

    #[inline]
    fn find(&self, key: &FlowKey, h: u32) -> Option<u32> {
        let mut i = h as usize & self.mask;
        loop {
            let b = self.buckets[i];
            if b.val == VACANT {
                return None;
            }
            if b.hash == h {
                let e = &self.slots[(b.val >> 1) as usize].entry;
                let k = if b.val & 1 == 0 {
                    &e.original
                } else {
                    &e.reply
                };
                if k == key {
                    return Some(b.val);
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    fn index_insert(&mut self, h: u32, val: u32) {
        let mut i = h as usize & self.mask;
        while self.buckets[i].val != VACANT {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = Bucket { hash: h, val };
    }

    /// Removes the bucket holding `val` (home `h`), then shifts later
    /// buckets of the run back into the hole when that does not move them
    /// before their home (Knuth 6.4, Algorithm R): no tombstones.
    fn index_remove(&mut self, h: u32, val: u32) {
        let mask = self.mask;
        let mut hole = h as usize & mask;
        while self.buckets[hole].val != val {
            debug_assert_ne!(self.buckets[hole].val, VACANT, "index lost {val}");
            hole = (hole + 1) & mask;
        }
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let b = self.buckets[j];
            if b.val == VACANT {
                break;
            }
            let home = b.hash as usize & mask;
            // Distance from its home to j, versus from the hole to j: the
            // bucket may move back iff the hole is not before its home.
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.buckets[hole] = b;
                hole = j;
            }
        }
        self.buckets[hole] = EMPTY_BUCKET;
    }

    fn random_below(&mut self, n: usize) -> usize {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        ((u128::from(x) * n as u128) >> 64) as usize
    }
}

/// A summary: the slab can hold millions of entries (see [`Conntrack::iter`]).
impl fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conntrack")
            .field("len", &self.len)
            .field("capacity", &self.slots.len())
            .field("buckets", &self.buckets.len())
            .field("timeouts", &self.timeouts)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The TCP state machine: next state and FIN bits after a packet with
/// `flags` in direction `dir`.
fn tcp_next(state: TcpState, fins: u8, dir: Dir, flags: u8) -> (TcpState, u8) {
    use TcpState::*;
    if flags & tcp_flags::RST != 0 {
        return (Closed, fins);
    }
    let syn = flags & tcp_flags::SYN != 0;
    let ack = flags & tcp_flags::ACK != 0;
    let mut state = match (state, dir) {
        // The backend answers the SYN.
        (SynSent, Dir::Reply) if syn && ack => SynRecv,
        // The client acknowledges the SYN+ACK we saw: the handshake is
        // complete. A bare ACK after a SYN alone (no answer seen: spoofed,
        // or a flood) leaves the entry half-open, with the SYN timeout, as
        // the kernel confirms a flow only once its reply direction is seen.
        (SynRecv, Dir::Original) if ack && !syn => Established,
        // The client reuses its port on a closed connection.
        (Closed, Dir::Original) if syn && !ack => return (SynSent, 0),
        (s, _) => s,
    };
    let mut fins = fins;
    if flags & tcp_flags::FIN != 0 && state != Closed && state != None {
        fins |= match dir {
            Dir::Original => 1,
            Dir::Reply => 2,
        };
        state = if fins == 3 { Closed } else { FinWait };
    }
    (state, fins)
}

fn folded_mul(x: u64, y: u64) -> u64 {
    let p = u128::from(x) * u128::from(y);
    p as u64 ^ (p >> 64) as u64
}

/// The index hash keys and the eviction sampler's state for `seed`.
fn derive_keys(seed: u64) -> ([u64; 4], u64) {
    let mut s = seed;
    let keys = [
        splitmix64(&mut s),
        splitmix64(&mut s),
        splitmix64(&mut s),
        splitmix64(&mut s),
    ];
    (keys, splitmix64(&mut s) | 1)
}

/// splitmix64 (Steele, Lea, Flood 2014): derives independent keys from a
/// seed.
pub(crate) fn splitmix64(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vectors::XorShift;
    use std::collections::HashMap;

    use tcp_flags::{ACK, FIN, PSH, RST, SYN};

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_000 * SEC;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);

    fn key(proto: u8, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> FlowKey {
        FlowKey {
            proto,
            src,
            dst,
            sport,
            dport,
        }
    }

    /// client:sport -> ClusterIP:80, DNAT to backend:8080.
    fn entry(proto: u8, sport: u16, now: u64) -> Entry {
        let original = key(proto, CLIENT, sport, CLUSTER_IP, 80);
        let reply = key(proto, BACKEND, 8080, CLIENT, sport);
        Entry {
            original,
            reply,
            service: 3,
            backend: 1,
            tcp: if proto == protocol::TCP {
                TcpState::SynSent
            } else {
                TcpState::None
            },
            created_ns: now,
            last_seen_ns: now,
            client_mac: [2, 0, 0, 0, 0, 1],
            in_port: 1,
            flags: 0,
        }
    }

    /// Short timeouts, distinct per class, for tests.
    fn short() -> Timeouts {
        Timeouts {
            tcp_syn_ns: 60 * MS,
            tcp_established_ns: 1_000 * MS,
            tcp_closing_ns: 10 * MS,
            udp_ns: 30 * MS,
            icmp_ns: 20 * MS,
        }
    }

    /// Structural invariants: every live entry's two keys are in the index
    /// where a probe from their home finds them, and nothing else is.
    fn check_invariants(ct: &Conntrack) {
        let mut in_index = 0;
        for (i, b) in ct.buckets.iter().enumerate() {
            if b.val == VACANT {
                continue;
            }
            in_index += 1;
            let id = b.val >> 1;
            let s = &ct.slots[id as usize];
            assert!(s.live, "bucket {i} points at free slot {id}");
            assert_eq!(s.hashes[(b.val & 1) as usize], b.hash);
            // No vacant bucket between its home and i.
            let mut j = b.hash as usize & ct.mask;
            while j != i {
                assert_ne!(ct.buckets[j].val, VACANT, "bucket {i} unreachable");
                j = (j + 1) & ct.mask;
            }
        }
        assert_eq!(in_index, 2 * ct.len());
        assert_eq!(ct.iter().count(), ct.len());
        assert_eq!(ct.free.len(), ct.capacity() - ct.len());
        for (id, e) in ct.iter() {
            assert_eq!(ct.lookup(&e.original), Some((id, Dir::Original)));
            assert_eq!(ct.lookup(&e.reply), Some((id, Dir::Reply)));
        }
    }

    /// `touch` skips the state machine for segments without SYN, FIN or
    /// RST on established connections: exhaustively, it ends in the state
    /// `tcp_next` gives, for every state, direction, FIN bits and flags.
    #[test]
    fn touch_agrees_with_tcp_next() {
        use TcpState::*;
        let mut ct = Conntrack::new(4, Timeouts::default());
        for state in [SynSent, SynRecv, Established, FinWait, Closed] {
            for fins in 0..4u8 {
                for dir in [Dir::Original, Dir::Reply] {
                    for f in 0..=255u8 {
                        let id = ct.insert(entry(protocol::TCP, 40000, T0), T0).unwrap();
                        let s = &mut ct.slots[id as usize];
                        (s.entry.tcp, s.fins) = (state, fins);
                        ct.touch(id, dir, Some(f), T0 + 1);
                        let s = &ct.slots[id as usize];
                        let want = tcp_next(state, fins, dir, f);
                        assert_eq!(
                            (s.entry.tcp, s.fins),
                            want,
                            "{state:?} {fins} {dir:?} {f:#x}"
                        );
                        assert_eq!(s.entry.last_seen_ns, T0 + 1);
                        ct.remove(id);
                    }
                }
            }
        }
    }

    /// The GC walks exactly `budget` slots from its cursor, wrapping at the
    /// end of the slab, whatever the budget.
    #[test]
    fn gc_cursor_wraps() {
        let mut ct = Conntrack::new(10, short());
        for budget in [0, 1, 3, 7, 10, 25] {
            let before = ct.gc_cursor;
            ct.gc(T0, budget);
            assert_eq!(
                ct.gc_cursor,
                (before + budget.min(10)) % 10,
                "budget {budget}"
            );
        }
        // Expired entries anywhere are found by a wrapping walk.
        for sport in 0..10 {
            ct.insert(entry(protocol::UDP, 1000 + sport, T0), T0)
                .unwrap();
        }
        ct.gc_cursor = 7;
        assert_eq!(ct.gc(T0 + 31 * MS, 5), 5);
        assert_eq!(ct.gc_cursor, 2);
        assert_eq!(ct.gc(T0 + 31 * MS, 100), 5);
        assert!(ct.is_empty());
        check_invariants(&ct);
    }

    #[test]
    fn reversed_swaps_ends() {
        let k = key(6, CLIENT, 40000, CLUSTER_IP, 80);
        assert_eq!(k.reversed(), key(6, CLUSTER_IP, 80, CLIENT, 40000));
        assert_eq!(k.reversed().reversed(), k);
    }

    #[test]
    fn insert_and_lookup_both_directions() {
        let mut ct = Conntrack::new(16, Timeouts::default());
        assert!(ct.is_empty());
        let e = entry(protocol::TCP, 40000, T0);
        let id = ct.insert(e, T0).unwrap();
        assert_eq!((ct.len(), ct.capacity(), ct.is_empty()), (1, 16, false));
        assert_eq!(ct.lookup(&e.original), Some((id, Dir::Original)));
        assert_eq!(ct.lookup(&e.reply), Some((id, Dir::Reply)));
        // The reverse of a key is not the other key (NAT changed it).
        assert_eq!(ct.lookup(&e.original.reversed()), None);
        let got = ct.get(id);
        assert_eq!((got.service, got.backend, got.in_port), (3, 1, 1));
        ct.get_mut(id).flags = 0x5;
        assert_eq!(ct.get(id).flags, 0x5);
        let all: Vec<_> = ct.iter().map(|(i, e)| (i, e.original)).collect();
        assert_eq!(all, [(id, e.original)]);
        assert_eq!(ct.stats().inserts, 1);
        check_invariants(&ct);
    }

    #[test]
    fn remove_frees_both_keys() {
        let mut ct = Conntrack::new(4, Timeouts::default());
        let e = entry(protocol::UDP, 5353, T0);
        let id = ct.insert(e, T0).unwrap();
        ct.remove(id);
        assert!(ct.is_empty());
        assert_eq!(ct.lookup(&e.original), None);
        assert_eq!(ct.lookup(&e.reply), None);
        // Removing again is a no-op.
        ct.remove(id);
        assert_eq!(ct.stats().removals, 1);
        // Both keys can be taken again.
        let id2 = ct.insert(e, T0).unwrap();
        assert_eq!(ct.lookup(&e.reply), Some((id2, Dir::Reply)));
        check_invariants(&ct);
    }

    #[test]
    #[should_panic(expected = "not live")]
    fn get_of_a_removed_entry_panics() {
        let mut ct = Conntrack::new(4, Timeouts::default());
        let id = ct.insert(entry(protocol::UDP, 1, T0), T0).unwrap();
        ct.remove(id);
        ct.get(id);
    }

    #[test]
    fn exists_on_either_key() {
        let mut ct = Conntrack::new(8, Timeouts::default());
        let e = entry(protocol::TCP, 40000, T0);
        ct.insert(e, T0).unwrap();
        // Same original (a second SNAT attempt would pick another port).
        let mut same_original = e;
        same_original.reply.dport = 1;
        assert_eq!(ct.insert(same_original, T0), Err(InsertError::Exists));
        // Same reply: the SNAT port is taken.
        let mut same_reply = e;
        same_reply.original.sport = 1;
        assert_eq!(ct.insert(same_reply, T0), Err(InsertError::Exists));
        // An entry's key that equals another entry's other-direction key.
        let mut crossed = e;
        crossed.original = e.reply;
        crossed.reply = key(6, BACKEND, 1, CLIENT, 2);
        assert_eq!(ct.insert(crossed, T0), Err(InsertError::Exists));
        // Both keys equal.
        let mut degenerate = entry(protocol::UDP, 9, T0);
        degenerate.reply = degenerate.original;
        assert_eq!(ct.insert(degenerate, T0), Err(InsertError::Exists));
        assert_eq!(ct.stats().insert_exists, 4);
        assert_eq!(ct.len(), 1);
        // Other protocol, same addresses and ports: a different flow.
        ct.insert(entry(protocol::UDP, 40000, T0), T0).unwrap();
        check_invariants(&ct);
    }

    #[test]
    fn zero_capacity_is_always_full() {
        let mut ct = Conntrack::new(0, Timeouts::default());
        let e = entry(protocol::UDP, 1, T0);
        assert_eq!(ct.insert(e, T0), Err(InsertError::Full));
        assert_eq!(ct.lookup(&e.original), None);
        assert_eq!(ct.gc(T0, 10), 0);
        assert_eq!(ct.stats().insert_full, 1);
    }

    /// Drives a TCP entry through `steps` of (direction, flags), checking the
    /// state after each.
    fn run_tcp(steps: &[(Dir, u8, TcpState)]) -> (Conntrack, u32) {
        let mut ct = Conntrack::new(4, short());
        let id = ct.insert(entry(protocol::TCP, 40000, T0), T0).unwrap();
        for (i, &(dir, flags, want)) in steps.iter().enumerate() {
            ct.touch(id, dir, Some(flags), T0 + i as u64);
            assert_eq!(ct.get(id).tcp, want, "step {i}: {dir:?} {flags:#04x}");
        }
        (ct, id)
    }

    use Dir::{Original as O, Reply as R};

    #[test]
    fn tcp_handshake_establishes() {
        let (ct, id) = run_tcp(&[
            (O, SYN, TcpState::SynSent),
            // Retransmitted SYN, and junk from the wrong side, change nothing.
            (O, SYN, TcpState::SynSent),
            (R, ACK, TcpState::SynSent),
            (R, SYN | ACK, TcpState::SynRecv),
            (R, SYN | ACK, TcpState::SynRecv),
            (O, ACK, TcpState::Established),
            (O, PSH | ACK, TcpState::Established),
            (R, PSH | ACK, TcpState::Established),
            // A stray SYN does not reopen a live connection.
            (O, SYN, TcpState::Established),
        ]);
        assert_eq!(ct.get(id).last_seen_ns, T0 + 8);
        // Established: the long timeout.
        assert!(!ct.expired(id, T0 + 8 + 1_000 * MS));
        assert!(ct.expired(id, T0 + 8 + 1_000 * MS + 1));
    }

    #[test]
    /// The reply direction must be seen: a SYN then a bare ACK (a spoofed
    /// handshake) stays half-open, with the SYN timeout and first in line
    /// for eviction.
    fn tcp_client_ack_without_seen_syn_ack_stays_half_open() {
        let (ct, id) = run_tcp(&[(O, SYN, TcpState::SynSent), (O, ACK, TcpState::SynSent)]);
        assert!(ct.slots[id as usize].unconfirmed());
    }

    #[test]
    fn tcp_fin_from_both_sides_closes() {
        let (ct, id) = run_tcp(&[
            (O, SYN, TcpState::SynSent),
            (R, SYN | ACK, TcpState::SynRecv),
            (O, ACK, TcpState::Established),
            (O, FIN | ACK, TcpState::FinWait),
            // The same side again: still half-closed.
            (O, FIN | ACK, TcpState::FinWait),
            // The other side keeps sending (half-close).
            (R, PSH | ACK, TcpState::FinWait),
            (R, FIN | ACK, TcpState::Closed),
            (O, ACK, TcpState::Closed),
        ]);
        // Closed: the closing timeout from the last packet.
        let last = T0 + 7;
        assert!(!ct.expired(id, last + 10 * MS));
        assert!(ct.expired(id, last + 10 * MS + 1));
    }

    #[test]
    fn tcp_fin_wait_keeps_the_established_timeout() {
        let (ct, id) = run_tcp(&[
            (O, SYN, TcpState::SynSent),
            (R, SYN | ACK, TcpState::SynRecv),
            (O, ACK, TcpState::Established),
            (R, FIN | ACK, TcpState::FinWait),
        ]);
        assert!(!ct.expired(id, T0 + 3 + 1_000 * MS));
        assert!(ct.expired(id, T0 + 3 + 1_000 * MS + 1));
    }

    #[test]
    fn tcp_rst_closes_from_any_state() {
        for prefix in [
            &[][..],
            &[(R, SYN | ACK, TcpState::SynRecv)][..],
            &[
                (R, SYN | ACK, TcpState::SynRecv),
                (O, ACK, TcpState::Established),
            ][..],
            &[
                (R, SYN | ACK, TcpState::SynRecv),
                (O, ACK, TcpState::Established),
                (O, FIN, TcpState::FinWait),
            ][..],
        ] {
            for dir in [O, R] {
                let mut steps = prefix.to_vec();
                steps.push((dir, RST, TcpState::Closed));
                steps.push((dir, RST | ACK, TcpState::Closed));
                let (ct, id) = run_tcp(&steps);
                let last = T0 + steps.len() as u64 - 1;
                assert!(!ct.expired(id, last + 10 * MS));
                assert!(ct.expired(id, last + 10 * MS + 1));
            }
        }
    }

    #[test]
    fn tcp_syn_on_closed_entry_starts_over() {
        run_tcp(&[
            (O, RST, TcpState::Closed),
            (R, SYN, TcpState::Closed),
            (O, SYN | ACK, TcpState::Closed),
            (O, SYN, TcpState::SynSent),
            (R, SYN | ACK, TcpState::SynRecv),
            (O, ACK, TcpState::Established),
            // The old FIN bits were cleared: one FIN is half-close again.
            (R, FIN, TcpState::FinWait),
        ]);
    }

    #[test]
    fn tcp_syn_timeout() {
        let mut ct = Conntrack::new(4, short());
        let id = ct.insert(entry(protocol::TCP, 1, T0), T0).unwrap();
        assert!(!ct.expired(id, T0 + 60 * MS));
        assert!(ct.expired(id, T0 + 60 * MS + 1));
        ct.touch(id, R, Some(SYN | ACK), T0 + 50 * MS);
        assert_eq!(ct.get(id).tcp, TcpState::SynRecv);
        assert!(!ct.expired(id, T0 + 110 * MS));
        assert!(ct.expired(id, T0 + 110 * MS + 1));
    }

    #[test]
    fn udp_and_icmp_timeouts() {
        let mut ct = Conntrack::new(4, short());
        let udp = ct.insert(entry(protocol::UDP, 53, T0), T0).unwrap();
        let icmp = ct.insert(entry(protocol::ICMP, 7, T0), T0).unwrap();
        assert!(!ct.expired(udp, T0 + 30 * MS) && ct.expired(udp, T0 + 30 * MS + 1));
        assert!(!ct.expired(icmp, T0 + 20 * MS) && ct.expired(icmp, T0 + 20 * MS + 1));
        // Touch refreshes; flags are ignored for non-TCP entries.
        ct.touch(udp, R, Some(RST), T0 + 25 * MS);
        assert_eq!(ct.get(udp).tcp, TcpState::None);
        assert!(!ct.expired(udp, T0 + 55 * MS) && ct.expired(udp, T0 + 55 * MS + 1));
        // Time never runs backwards for an entry.
        ct.touch(udp, O, None, T0);
        assert_eq!(ct.get(udp).last_seen_ns, T0 + 25 * MS);
        // A clock behind last_seen is not an expiry.
        assert!(!ct.expired(udp, 0));
    }

    #[test]
    fn default_timeouts() {
        let t = Timeouts::default();
        assert_eq!(
            [
                t.tcp_syn_ns,
                t.tcp_established_ns,
                t.tcp_closing_ns,
                t.udp_ns,
                t.icmp_ns
            ],
            [60 * SEC, 21_600 * SEC, 10 * SEC, 30 * SEC, 30 * SEC]
        );
        let mut ct = Conntrack::new(1, t);
        assert_eq!(ct.timeouts(), &t);
        ct.set_timeouts(short());
        assert_eq!(ct.timeouts(), &short());
    }

    #[test]
    fn gc_removes_only_expired_and_respects_budget() {
        let mut ct = Conntrack::new(100, short());
        // Ids 0..100: even ones UDP (30 ms), odd ones established TCP (1 s).
        for i in 0..100u16 {
            let mut e = entry(
                if i % 2 == 0 {
                    protocol::UDP
                } else {
                    protocol::TCP
                },
                i,
                T0,
            );
            if e.tcp != TcpState::None {
                e.tcp = TcpState::Established;
            }
            assert_eq!(ct.insert(e, T0).unwrap(), u32::from(i));
        }
        // Nothing has expired yet.
        assert_eq!(ct.gc(T0 + 30 * MS, 1000), 0);
        let now = T0 + 31 * MS;
        // Budget 10 from the cursor (slot 0 after a full round): 5 UDP.
        assert_eq!(ct.gc(now, 10), 5);
        assert_eq!(ct.len(), 95);
        for id in 0..10 {
            assert_eq!(ct.slots[id].live, id % 2 == 1, "{id}");
        }
        // Budget 0 does nothing; the next call continues at slot 10.
        assert_eq!(ct.gc(now, 0), 0);
        assert_eq!(ct.gc(now, 3), 2);
        assert!(!ct.slots[10].live && ct.slots[11].live && !ct.slots[12].live);
        // The rest, in one go; the cursor wraps.
        assert_eq!(ct.gc(now, 1000), 43);
        assert_eq!(ct.len(), 50);
        assert!(ct.iter().all(|(_, e)| e.tcp == TcpState::Established));
        assert_eq!(ct.stats().expirations, 50);
        check_invariants(&ct);
    }

    #[test]
    fn full_table_evicts_expired_first() {
        let mut ct = Conntrack::new(8, short());
        for i in 0..8 {
            let mut e = entry(protocol::TCP, i, T0);
            e.tcp = TcpState::Established;
            ct.insert(e, T0).unwrap();
        }
        // Slot 5 is a UDP entry that expires first.
        ct.remove(5);
        let udp = ct.insert(entry(protocol::UDP, 5, T0), T0).unwrap();
        assert_eq!(udp, 5);
        let now = T0 + 31 * MS;
        let id = ct.insert(entry(protocol::UDP, 100, now), now).unwrap();
        assert_eq!(id, 5, "the expired entry's slot is reused");
        assert_eq!(ct.len(), 8);
        let s = ct.stats();
        assert_eq!((s.expirations, s.evictions), (1, 0));
        check_invariants(&ct);
    }

    #[test]
    fn full_table_evicts_the_entry_closest_to_expiry_among_a_sample() {
        // Capacity 8 = EVICT_SAMPLE: the sample is large enough that the
        // oldest entry is nearly always in it.
        let mut ct = Conntrack::new(8, Timeouts::default());
        for i in 0..8u16 {
            let mut e = entry(protocol::TCP, i, T0);
            e.tcp = TcpState::Established;
            ct.insert(e, T0).unwrap();
            ct.touch(u32::from(i), O, None, T0 + u64::from(i) * SEC);
        }
        // Entry 3 is idle the longest.
        ct.get_mut(3).last_seen_ns = T0 - SEC;
        let now = T0 + 10 * SEC;
        let mut evicted = [0; 8];
        for round in 0..200u16 {
            let e = entry(protocol::UDP, 1000 + round, now);
            let id = ct.insert(e, now).unwrap();
            evicted[id as usize] += 1;
            // Put a long-lived TCP entry back in the freed slot.
            ct.remove(id);
            let mut back = entry(protocol::TCP, 2000 + round, now);
            back.tcp = TcpState::Established;
            let id2 = ct.insert(back, now).unwrap();
            assert_eq!(id2, id);
            ct.get_mut(id2).last_seen_ns = if id == 3 {
                T0 - SEC
            } else {
                T0 + u64::from(id2) * SEC
            };
        }
        // Entry 3 (least recently seen) is the victim in most rounds: it is
        // missed only if none of the 8 samples hits it, (7/8)^8 = 34%.
        assert!(evicted[3] > 100, "{evicted:?}");
        assert_eq!(ct.stats().evictions, 200);
        check_invariants(&ct);
    }

    #[test]
    fn only_closed_and_old_unconfirmed_entries_are_reclaimable() {
        let mut ct = Conntrack::new(64, Timeouts::default());
        let syn = ct.insert(entry(protocol::TCP, 1, T0), T0).unwrap();
        let udp = ct.insert(entry(protocol::UDP, 2, T0), T0).unwrap();
        let mut e = entry(protocol::TCP, 3, T0);
        e.tcp = TcpState::Established;
        let est = ct.insert(e, T0).unwrap();
        let mut e = entry(protocol::TCP, 4, T0);
        e.tcp = TcpState::Closed;
        let closed = ct.insert(e, T0).unwrap();
        let answered = ct.insert(entry(protocol::UDP, 5, T0), T0).unwrap();
        ct.touch(answered, Dir::Reply, None, T0);
        // Young: only the closed one.
        for (id, want) in [(syn, false), (udp, false), (est, false), (closed, true)] {
            assert_eq!(ct.reclaimable(id, T0 + SEC / 2, SEC), want, "{id}");
        }
        // A second on: the unconfirmed ones too, never a confirmed one.
        let later = T0 + SEC;
        for (id, want) in [(syn, true), (udp, true), (est, false), (answered, false)] {
            assert_eq!(ct.reclaimable(id, later, SEC), want, "{id}");
        }
    }

    #[test]
    fn eviction_prefers_half_open_over_established() {
        let mut ct = Conntrack::new(64, Timeouts::default());
        // 32 established connections idle for an hour, 32 fresh SYNs.
        for i in 0..64u16 {
            let mut e = entry(protocol::TCP, i, T0);
            if i % 2 == 0 {
                e.tcp = TcpState::Established;
            } else {
                e.last_seen_ns = T0 + 3600 * SEC;
            }
            ct.insert(e, T0).unwrap();
        }
        let now = T0 + 3600 * SEC;
        for round in 0..16 {
            let mut e = entry(protocol::TCP, 1000 + round, now);
            e.last_seen_ns = now;
            ct.insert(e, now).unwrap();
        }
        // The established connections are all still there.
        let established = ct
            .iter()
            .filter(|(_, e)| e.tcp == TcpState::Established)
            .count();
        assert_eq!(established, 32);
        assert_eq!(ct.stats().evictions, 16);
    }

    /// Established connections close to their timeout (so closer to expiry
    /// than fresh SYNs) and answered UDP flows survive a flood of new
    /// flows while unconfirmed entries (SYN only, unanswered UDP) remain.
    #[test]
    fn eviction_takes_unconfirmed_entries_before_confirmed_ones() {
        let t = Timeouts::default();
        let mut ct = Conntrack::new(64, t);
        let now = T0 + t.tcp_established_ns;
        for i in 0..64u16 {
            let id = match i % 4 {
                // Established, idle almost their whole timeout.
                0 | 1 => {
                    let mut e = entry(protocol::TCP, i, T0 + 10 * SEC);
                    e.tcp = TcpState::Established;
                    ct.insert(e, T0 + 10 * SEC).unwrap()
                }
                // UDP, answered a while ago.
                2 => {
                    let id = ct.insert(entry(protocol::UDP, i, now), now).unwrap();
                    ct.touch(id, Dir::Reply, None, now - 20 * SEC);
                    ct.get_mut(id).last_seen_ns = now - 20 * SEC;
                    id
                }
                // Fresh SYNs.
                _ => ct.insert(entry(protocol::TCP, i, now), now).unwrap(),
            };
            assert!(!ct.expired(id, now));
        }
        let confirmed = |ct: &Conntrack| {
            ct.iter()
                .filter(|(_, e)| e.tcp == TcpState::Established || e.original.sport % 4 == 2)
                .count()
        };
        assert_eq!(confirmed(&ct), 48);
        for round in 0..16 {
            ct.insert(entry(protocol::TCP, 1000 + round * 4 + 3, now), now)
                .unwrap();
        }
        assert_eq!(confirmed(&ct), 48, "a confirmed entry was evicted");
        assert_eq!(ct.stats().evictions, 16);
        check_invariants(&ct);
    }

    #[test]
    fn full_table_never_fails() {
        let mut ct = Conntrack::new(3, Timeouts::default());
        for i in 0..1000 {
            ct.insert(entry(protocol::UDP, i, T0), T0).unwrap();
            assert!(ct.len() <= 3);
        }
        assert_eq!(ct.len(), 3);
        assert_eq!(ct.stats().evictions, 997);
        check_invariants(&ct);
    }

    #[test]
    fn rekey_is_with_seed_without_the_allocation() {
        let mut a = Conntrack::new(16, Timeouts::default());
        a.rekey(7);
        let b = Conntrack::with_seed(16, Timeouts::default(), 7);
        assert_eq!((a.keys, a.rng), (b.keys, b.rng));
        assert_ne!(a.keys, Conntrack::new(16, Timeouts::default()).keys);
    }

    #[test]
    fn seeds_change_the_hash_not_the_behaviour() {
        let a = Conntrack::new(16, Timeouts::default());
        let b = Conntrack::with_seed(16, Timeouts::default(), 1);
        let k = entry(protocol::TCP, 1, T0).original;
        assert_ne!(a.hash(&k), b.hash(&k));
        let mut b = b;
        let id = b.insert(entry(protocol::TCP, 1, T0), T0).unwrap();
        assert_eq!(b.lookup(&k), Some((id, O)));
    }

    /// Typical flows (one client, sequential ports; many clients, one port)
    /// spread over the index: short probe runs at full load.
    #[test]
    fn index_probe_lengths_stay_short() {
        let cap = 4096;
        for pattern in 0..3 {
            let mut ct = Conntrack::new(cap, Timeouts::default());
            for i in 0..cap as u32 {
                let mut e = entry(protocol::TCP, 0, T0);
                match pattern {
                    0 => {
                        e.original.sport = i as u16;
                        e.reply.dport = i as u16;
                    }
                    1 => {
                        e.original.src = Ipv4Addr::from_bits(0x0af4_0000 + i);
                        e.reply.dst = e.original.src;
                    }
                    _ => {
                        // SNAT: one client address, replies to snat ports.
                        e.original.sport = i as u16;
                        e.reply.dst = Ipv4Addr::new(172, 30, 0, 11);
                        e.reply.dport = 40000 + i as u16;
                    }
                }
                ct.insert(e, T0).unwrap();
            }
            // Mean and max distance of each bucket from its home.
            let (mut sum, mut max) = (0usize, 0usize);
            for (i, b) in ct.buckets.iter().enumerate() {
                if b.val != VACANT {
                    let d = i.wrapping_sub(b.hash as usize) & ct.mask;
                    sum += d;
                    max = max.max(d);
                }
            }
            let mean = sum as f64 / (2 * cap) as f64;
            // Linear probing at load a = 1/2: mean displacement
            // (1/(1-a) - 1)/2 = 0.5; the longest run of b buckets is about
            // ln(b) / (a - 1 - ln a) = 50 for b = 16384 (measured: mean 0.51,
            // max 43 for pattern 1).
            assert!(
                mean < 0.75 && max < 100,
                "pattern {pattern}: mean {mean} max {max}"
            );
            check_invariants(&ct);
        }
    }

    /// Property: 100k random operations against a reference model (a
    /// `HashMap` of live entries by id and of keys), with collisions,
    /// expiry, GC and eviction; structural invariants checked regularly.
    #[test]
    fn random_operations_match_a_reference_model() {
        const CAP: usize = 64;
        let mut rng = XorShift(0xc0_17_7a_c4);
        let mut ct = Conntrack::with_seed(CAP, short(), 42);
        // Live entries by id, and the id and direction of every key.
        let mut model: HashMap<u32, Entry> = HashMap::new();
        let mut keys: HashMap<FlowKey, (u32, Dir)> = HashMap::new();
        let mut now = T0;
        // A small universe of ports, so keys collide often.
        let random_key = |rng: &mut XorShift| {
            let proto = [protocol::TCP, protocol::UDP, protocol::ICMP][rng.below(3)];
            let host = |rng: &mut XorShift| Ipv4Addr::new(10, 0, 0, 1 + rng.below(3) as u8);
            key(
                proto,
                host(rng),
                rng.below(40) as u16,
                host(rng),
                rng.below(3) as u16,
            )
        };
        let forget =
            |model: &mut HashMap<u32, Entry>, keys: &mut HashMap<FlowKey, (u32, Dir)>, id: u32| {
                let e = model.remove(&id).unwrap();
                keys.remove(&e.original);
                keys.remove(&e.reply);
            };
        let (mut n_ok, mut n_exists, mut n_evict, mut n_gc) = (0, 0, 0, 0);
        for op in 0..100_000 {
            // Alternate phases: time flowing (entries expire, GC and full
            // inserts find expired ones) and time nearly frozen (the table
            // fills with live entries: evictions).
            let step = if (op / 5_000) % 2 == 0 {
                2 * MS
            } else {
                MS / 100
            };
            now += rng.below(step as usize) as u64;
            match rng.below(10) {
                // insert
                0..=3 => {
                    let original = random_key(&mut rng);
                    let mut reply = random_key(&mut rng);
                    reply.proto = original.proto;
                    let mut e = entry(original.proto, 0, now);
                    e.original = original;
                    e.reply = reply;
                    e.backend = op;
                    let exists = original == reply
                        || keys.contains_key(&original)
                        || keys.contains_key(&reply);
                    // Entries the full-table path may free: expired ones.
                    let expired: Vec<u32> = model
                        .keys()
                        .copied()
                        .filter(|&id| ct.expired(id, now))
                        .collect();
                    let before = ct.stats();
                    match ct.insert(e, now) {
                        Err(InsertError::Exists) => {
                            assert!(exists, "op {op}");
                            n_exists += 1;
                        }
                        Err(InsertError::Full) => panic!("op {op}: full"),
                        Ok(id) => {
                            assert!(!exists, "op {op}: duplicate key accepted");
                            let gone: Vec<u32> = model
                                .keys()
                                .copied()
                                .filter(|&i| !ct.slots[i as usize].live || i == id)
                                .collect();
                            let after = ct.stats();
                            if model.len() < CAP {
                                assert!(gone.is_empty(), "op {op}: freed {gone:?}");
                            } else {
                                let evicted = after.evictions - before.evictions;
                                let expirations = after.expirations - before.expirations;
                                assert_eq!(gone.len() as u64, evicted + expirations);
                                if evicted == 0 {
                                    assert!(gone.iter().all(|g| expired.contains(g)));
                                } else {
                                    assert_eq!((evicted, expirations), (1, 0));
                                    n_evict += 1;
                                }
                            }
                            for g in gone {
                                forget(&mut model, &mut keys, g);
                            }
                            model.insert(id, e);
                            keys.insert(original, (id, Dir::Original));
                            keys.insert(reply, (id, Dir::Reply));
                            n_ok += 1;
                        }
                    }
                }
                // remove
                4 => {
                    if let Some(&id) = model.keys().nth(rng.below(model.len().max(1))) {
                        ct.remove(id);
                        forget(&mut model, &mut keys, id);
                    }
                }
                // touch
                5 | 6 => {
                    if let Some(&id) = model.keys().nth(rng.below(model.len().max(1))) {
                        let dir = if rng.below(2) == 0 { O } else { R };
                        let flags = [
                            None,
                            Some(SYN),
                            Some(SYN | ACK),
                            Some(ACK),
                            Some(FIN),
                            Some(RST),
                        ][rng.below(6)];
                        ct.touch(id, dir, flags, now);
                        let m = model.get_mut(&id).unwrap();
                        m.last_seen_ns = m.last_seen_ns.max(now);
                        let got = ct.get(id);
                        assert_eq!(got.last_seen_ns, m.last_seen_ns);
                        assert_eq!((got.original, got.reply), (m.original, m.reply));
                        assert_eq!(got.tcp == TcpState::None, m.tcp == TcpState::None);
                        m.tcp = got.tcp;
                    }
                }
                // gc
                7 => {
                    let expired: Vec<u32> = model
                        .keys()
                        .copied()
                        .filter(|&id| ct.expired(id, now))
                        .collect();
                    let removed = ct.gc(now, rng.below(20));
                    let gone: Vec<u32> = model
                        .keys()
                        .copied()
                        .filter(|&i| !ct.slots[i as usize].live)
                        .collect();
                    assert_eq!(gone.len(), removed);
                    assert!(gone.iter().all(|g| expired.contains(g)));
                    for g in gone {
                        forget(&mut model, &mut keys, g);
                    }
                    n_gc += removed;
                }
                // lookup
                _ => {
                    let k = random_key(&mut rng);
                    assert_eq!(ct.lookup(&k), keys.get(&k).copied(), "op {op}");
                }
            }
            assert_eq!(ct.len(), model.len());
            if op % 1000 == 0 {
                check_invariants(&ct);
                for (id, e) in ct.iter() {
                    assert_eq!(model[&id].backend, e.backend);
                }
            }
        }
        check_invariants(&ct);
        // Every path was exercised.
        assert!(n_ok > 10_000 && n_exists > 1_000, "{n_ok} {n_exists}");
        assert!(n_evict > 100 && n_gc > 1_000, "{n_evict} {n_gc}");
        let s = ct.stats();
        assert_eq!(
            s.inserts - s.evictions - s.expirations - s.removals,
            ct.len() as u64
        );
    }

    /// Churn far beyond the capacity through every path (insert, remove,
    /// GC, eviction): the index never degrades (no tombstones).
    #[test]
    fn churn_keeps_the_index_clean() {
        let cap = 1000;
        let mut ct = Conntrack::new(cap, short());
        let mut rng = XorShift(99);
        let mut now = T0;
        let mut ids = Vec::with_capacity(cap);
        for round in 0..10 * cap as u32 {
            now += MS / 10;
            let mut e = entry(protocol::UDP, 0, now);
            e.original.src = Ipv4Addr::from_bits(rng.next_u64() as u32);
            e.original.sport = round as u16;
            e.reply.dst = e.original.src;
            e.reply.dport = round as u16;
            if let Ok(id) = ct.insert(e, now) {
                ids.push(id);
            }
            if rng.below(3) == 0 && !ids.is_empty() {
                let id = ids.swap_remove(rng.below(ids.len()));
                ct.remove(id);
            }
            ct.gc(now, 4);
        }
        check_invariants(&ct);
        let s = ct.stats();
        assert!(s.evictions + s.expirations > 0);
    }

    #[test]
    fn stats_merge_adds_every_field() {
        let a = CtStats {
            inserts: 1,
            insert_exists: 2,
            insert_full: 3,
            evictions: 4,
            expirations: 5,
            removals: 6,
        };
        let mut m = a;
        m.merge(&a);
        assert_eq!(
            m,
            CtStats {
                inserts: 2,
                insert_exists: 4,
                insert_full: 6,
                evictions: 8,
                expirations: 10,
                removals: 12,
            }
        );
    }

    #[test]
    fn debug_is_a_summary() {
        let ct = Conntrack::new(3, Timeouts::default());
        let d = format!("{ct:?}");
        assert!(
            d.starts_with("Conntrack { len: 0, capacity: 3, buckets: 16, "),
            "{d}"
        );
    }

    #[test]
    fn slot_and_bucket_sizes() {
        assert_eq!(core::mem::size_of::<Bucket>(), 8);
        // The module docs' memory figures.
        assert!(core::mem::size_of::<Slot>() <= 80);
    }
}
