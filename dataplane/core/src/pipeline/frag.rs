//! IPv4 fragments (RFC 791): a datagram larger than a link's MTU travels in
//! pieces, and only the first carries the transport header (the ports).
//!
//! Fragments of a flow the pipeline does not translate are routed as a
//! router routes them (TTL, MTU and source checks unchanged). For the flows
//! it translates (services, and whatever else `translate` rewrites), each
//! worker keeps a fragment table, as Cilium's fragment map does: (source,
//! destination, IP id, protocol) as received -> what the first fragment's
//! walk did to its addresses, or the worker it was handed to. Later
//! fragments get the same: their addresses and the IPv4 checksum (the
//! first fragment's incremental transport checksum update already covers
//! the whole datagram), then routing. The table is fixed memory, allocated
//! at start; entries expire and are replaced, never freed.

use super::*;
use crate::wire::ipv4::Ipv4Header;
use crate::wire::{tcp, udp};

/// Fragment-table entries per worker (4 ways per set, 40 bytes each: 320
/// KiB). An entry lives [`FRAG_TIMEOUT_NS`], or [`FRAG_DONE_NS`] after its
/// datagram's last fragment: room for 4,096 datagrams a second whose last
/// fragment never comes, or 800k finished ones a second; beyond that a
/// set's oldest entry is replaced (`fragments_evicted`).
pub const FRAG_ENTRIES: usize = 8192;
const WAYS: usize = 4;
/// How long a first fragment's decision is kept: 2 s. A datagram's
/// fragments leave the sender back to back, so they arrive within
/// microseconds (milliseconds behind a deep queue); 2 s outlives any such
/// gap, while a flood of first fragments whose rest never comes holds an
/// entry at most that long (Linux keeps a reassembly queue 30 s, but it
/// holds the data, and we only need to bridge the gap between fragments).
pub const FRAG_TIMEOUT_NS: u64 = 2_000_000_000;
/// How long an entry lives after its datagram's last fragment (MF clear)
/// went through: a middle fragment the last one overtook still finds it,
/// and finished datagrams make room first.
pub const FRAG_DONE_NS: u64 = 10_000_000;

/// Where a validated IPv4 datagram stands as a fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Frag {
    /// Not a fragment.
    Whole,
    /// MF set, offset 0: the transport header is here, whole.
    First(FragKey),
    /// Offset > 0: no ports. `last`: MF clear.
    Later(FragKey, bool),
}

/// (source, destination, IP id, protocol) of a fragment, as received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FragKey {
    addrs: u64,
    /// `1 << 24 | protocol << 16 | id`: a real key is never all zeros.
    rest: u32,
}

impl FragKey {
    pub(super) fn new(src: Ipv4Addr, dst: Ipv4Addr, id: u16, proto: u8) -> FragKey {
        FragKey {
            addrs: u64::from(u32::from(src)) << 32 | u64::from(u32::from(dst)),
            rest: 1 << 24 | u32::from(proto) << 16 | u32::from(id),
        }
    }

    pub(super) fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addrs as u32)
    }
}

/// Classifies the datagram at `p.off + ETH` (validated by `check_ipv4`: no
/// options). A fragment that could change the transport header at the
/// receiver after a translation is refused (RFC 1858): a first fragment too
/// short to hold the whole TCP/UDP header, a later one that overlaps it, and
/// one reaching past the largest datagram.
pub(super) fn fragment_of(p: &Packet<'_>) -> Result<Frag, DropReason> {
    let h = p.buf[p.off + ETH..]
        .first_chunk::<IPV4_MIN>()
        .expect("validated by check_ipv4");
    let h = Ipv4Header::new(h);
    if !h.is_fragment() {
        return Ok(Frag::Whole);
    }
    let proto = h.protocol();
    let payload = usize::from(h.total_len()) - IPV4_MIN;
    let offset = usize::from(h.frag_offset());
    let l4_min = match proto {
        ipv4::protocol::TCP => tcp::HEADER_LEN,
        ipv4::protocol::UDP => udp::HEADER_LEN,
        _ => 0,
    };
    let first = offset == 0;
    if IPV4_MIN + offset + payload > usize::from(u16::MAX)
        || (first && payload < l4_min)
        || (!first && offset < l4_min)
    {
        return Err(DropReason::FragmentMalformed);
    }
    let key = FragKey::new(h.src_addr(), h.dst_addr(), h.ident(), proto);
    Ok(if first {
        Frag::First(key)
    } else {
        Frag::Later(key, !h.more_frags())
    })
}

/// What a datagram's later fragments get: what its first one got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// Its addresses after translation; `reply_to`: sent straight back out
    /// the uplink to this MAC (a reply to an outside client), else routed.
    Nat {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        reply_to: Option<EthernetAddress>,
    },
    /// Handed to the worker that owns its flow, whose table has the rest.
    Handoff(u16),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    key: FragKey,
    expires_ns: u64,
    replay: Replay,
}

const FREE: Slot = Slot {
    key: FragKey { addrs: 0, rest: 0 },
    expires_ns: 0,
    replay: Replay::Handoff(0),
};

/// A worker's fragment table: sets of [`WAYS`] slots, picked by a hash
/// keyed with the worker's seed (`Pipeline::set_seed`), so nobody can aim
/// first fragments at the set a given datagram needs.
pub(super) struct FragTable {
    slots: Box<[Slot]>,
    mask: usize,
    pub(super) key: u64,
}

impl FragTable {
    /// A table of `entries` slots, rounded up to a power of two of at
    /// least one set.
    pub(super) fn new(entries: usize) -> FragTable {
        let n = entries.max(WAYS).next_power_of_two();
        FragTable {
            slots: vec![FREE; n].into_boxed_slice(),
            mask: n / WAYS - 1,
            key: 0,
        }
    }

    fn set(&mut self, k: &FragKey) -> &mut [Slot] {
        let s = mix(k.addrs ^ self.key, u64::from(k.rest)) as usize & self.mask;
        &mut self.slots[s * WAYS..(s + 1) * WAYS]
    }

    /// The live entry of `k` at `now`.
    pub(super) fn get(&mut self, k: &FragKey, now: u64) -> Option<Replay> {
        self.set(k)
            .iter()
            .find(|s| s.key == *k && s.expires_ns > now)
            .map(|s| s.replay)
    }

    /// Records what `k`'s first fragment got (again, if a sender reused its
    /// IP id). Takes a free or expired slot of its set, else replaces the
    /// one closest to expiry: `true` if that one was live.
    pub(super) fn insert(&mut self, k: FragKey, replay: Replay, now: u64) -> bool {
        let set = self.set(&k);
        let i = set
            .iter()
            .position(|s| s.key == k)
            .or_else(|| set.iter().position(|s| s.expires_ns <= now))
            .unwrap_or_else(|| {
                (0..WAYS)
                    .min_by_key(|&i| set[i].expires_ns)
                    .expect("WAYS > 0")
            });
        let evicted = set[i].key != k && set[i].expires_ns > now;
        set[i] = Slot {
            key: k,
            expires_ns: now + FRAG_TIMEOUT_NS,
            replay,
        };
        evicted
    }

    /// `k`'s last fragment went through: its entry lives [`FRAG_DONE_NS`]
    /// more at most.
    pub(super) fn finish(&mut self, k: &FragKey, now: u64) {
        if let Some(s) = self.set(k).iter_mut().find(|s| s.key == *k) {
            s.expires_ns = s.expires_ns.min(now + FRAG_DONE_NS);
        }
    }
}

impl Pipeline {
    /// After the first fragment of a datagram was translated (`reply_to`:
    /// sent back out the uplink to that MAC): records its new addresses
    /// for the rest. Nothing if the walk replaced it (a TCP reset).
    pub(super) fn record_fragment(
        &mut self,
        now: u64,
        p: &Packet<'_>,
        k: FragKey,
        reply_to: Option<EthernetAddress>,
    ) {
        let ip = Ipv4Packet::new_unchecked(&p.buf[p.off + ETH..p.off + p.len]);
        if !ip.more_frags() || ip.frag_offset() != 0 {
            return;
        }
        let replay = Replay::Nat {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            reply_to,
        };
        self.record(now, k, replay);
    }

    pub(super) fn record(&mut self, now: u64, k: FragKey, replay: Replay) {
        if self.frags.insert(k, replay, now) {
            self.counters.fragments_evicted += 1;
        }
    }

    /// A later fragment (no ports) gets its first fragment's decision, as
    /// `translate` answers: `Ok(true)` translated, to route; `Ok(false)` no
    /// entry: a plainly routed datagram's (or a translated one's whose
    /// first fragment this worker has not seen: routed as it is, its
    /// receiver cannot complete it); `Err` decided here. Without an entry,
    /// one to a ClusterIP can go nowhere: dropped as
    /// `fragment_without_first` (out of order, expired, evicted, or the
    /// first was refused).
    pub(super) fn replay_fragment(
        &mut self,
        cx: &Ctx<'_>,
        p: &mut Packet<'_>,
        k: FragKey,
        last: bool,
    ) -> Result<bool, Verdict> {
        let Ctx { now, t, .. } = *cx;
        let Some(r) = self.frags.get(&k, now) else {
            if t.services.cidr.is_some_and(|c| c.contains(k.dst())) {
                return Err(Verdict::Drop(DropReason::FragmentWithoutFirst));
            }
            return Ok(false);
        };
        if last {
            self.frags.finish(&k, now);
        }
        match r {
            Replay::Handoff(w) => Err(Verdict::Handoff(w)),
            Replay::Nat { src, dst, reply_to } => {
                Ipv4Packet::new_unchecked(&mut p.buf[p.off + ETH..p.off + p.len])
                    .rewrite_addrs(src, dst);
                self.counters.fragments_translated += 1;
                match reply_to {
                    None => Ok(true),
                    Some(mac) => Err(self.reply_external(t, p, mac)),
                }
            }
        }
    }

    /// Makes the fragment table `entries` slots (tests: a full table).
    #[cfg(test)]
    pub(super) fn set_fragment_table(&mut self, entries: usize) {
        let key = self.frags.key;
        self.frags = FragTable::new(entries);
        self.frags.key = key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u16) -> FragKey {
        FragKey::new(
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 96, 0, 10),
            id,
            ipv4::protocol::UDP,
        )
    }

    fn nat(last: u8) -> Replay {
        Replay::Nat {
            src: Ipv4Addr::new(10, 244, 1, 2),
            dst: Ipv4Addr::new(10, 244, 2, last),
            reply_to: None,
        }
    }

    #[test]
    fn entries_live_their_timeout_or_until_shortly_after_the_last_fragment() {
        let mut t = FragTable::new(64);
        assert!(!t.insert(key(1), nat(1), 1_000));
        assert_eq!(t.get(&key(1), 1_000 + FRAG_TIMEOUT_NS - 1), Some(nat(1)));
        assert_eq!(t.get(&key(1), 1_000 + FRAG_TIMEOUT_NS), None);
        assert_eq!(t.get(&key(2), 1_000), None, "another IP id");
        t.insert(key(3), nat(3), 1_000);
        t.finish(&key(3), 5_000);
        assert_eq!(t.get(&key(3), 5_000 + FRAG_DONE_NS - 1), Some(nat(3)));
        assert_eq!(t.get(&key(3), 5_000 + FRAG_DONE_NS), None);
        // A reused IP id records afresh.
        t.insert(key(1), nat(9), 2_000);
        assert_eq!(t.get(&key(1), 2_000), Some(nat(9)));
    }

    #[test]
    fn a_full_set_gives_up_its_oldest_entry_expired_ones_first() {
        let mut t = FragTable::new(WAYS);
        for id in 0..WAYS as u16 {
            assert!(!t.insert(key(id), nat(id as u8), 100 + u64::from(id)));
        }
        assert!(t.insert(key(10), nat(10), 200), "a live entry replaced");
        assert_eq!(t.get(&key(0), 200), None, "the oldest");
        for id in 1..WAYS as u16 {
            assert_eq!(t.get(&key(id), 200), Some(nat(id as u8)));
        }
        // Past every entry's timeout: an expired slot is reused silently.
        assert!(!t.insert(key(11), nat(11), 200 + FRAG_TIMEOUT_NS));
    }

    #[test]
    fn a_slot_is_40_bytes() {
        // FRAG_ENTRIES' memory figure.
        assert_eq!(core::mem::size_of::<Slot>(), 40);
    }

    #[test]
    fn the_set_hash_is_keyed() {
        let mut a = FragTable::new(1 << 12);
        let mut b = FragTable::new(1 << 12);
        b.key = 0x6b78_6470_f4a9_0001;
        let moved = (0..256u16)
            .filter(|&id| {
                let k = key(id);
                let sa = a.set(&k).as_ptr() as usize - a.slots.as_ptr() as usize;
                let sb = b.set(&k).as_ptr() as usize - b.slots.as_ptr() as usize;
                sa != sb
            })
            .count();
        assert!(moved >= 250, "{moved} of 256 keys changed set");
    }
}
