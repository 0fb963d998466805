//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016, section 3.4).
//!
//! A [`Maglev`] is a lookup table of `m` slots (`m` prime), each holding the
//! index of a backend. Every backend has its own permutation of the slots,
//! `offset, offset + skip, offset + 2 * skip, ... (mod m)`, derived from its
//! stable 64-bit id; backends take turns claiming the next free slot of
//! their permutation until the table is full. Hence:
//!
//! - **Even spread.** Every backend owns `floor(m / n)` or `ceil(m / n)`
//!   slots (round-robin filling: slot counts differ by at most one).
//! - **Near-minimal disruption.** When a backend leaves or joins, most slots
//!   keep their backend: the leaver's (or joiner's) share must move, plus a
//!   collateral share. Measured with `m = size_for(n)`, n in 2..=50: on
//!   average 1.6x the minimum moves (p99 2x, worst 3.1x in 127,400 cases;
//!   see `removal_disruption`). Established flows don't care (connection
//!   tracking keeps them); it only affects which backend new flows pick.
//! - **Order independence.** The table, read as slot -> backend *id*,
//!   depends only on the set of ids and `m`: [`Maglev::new`] orders the ids
//!   itself before filling, so callers may pass them in any order and two
//!   nodes with the same set build the same table. [`Maglev::lookup`]
//!   still answers with an index into the caller's slice.
//! - **Deterministic.** No random seeds: the same ids and `m` give the same
//!   table on every node and every run.
//!
//! Building allocates and is meant for the engine thread; [`Maglev::lookup`]
//! is a hash mix and one index, with no allocation.
//!
//! Changing `m` remaps almost every slot, so keep `m` fixed while backends
//! come and go. [`Maglev::size_for`] is stepwise (each size serves a range of
//! backend counts); connection tracking keeps established flows on their
//! backend either way, only new flows are affected.

use core::fmt;

/// Prime table sizes, roughly doubling: [`Maglev::size_for`] picks the
/// smallest that is at least 100 times the backend count. 100x keeps the
/// per-backend share within about 1% of `1/n` (slot counts differ by at most
/// one, so a backend's share is `1/n +- 1/m`) and the disruption of a
/// backend change small, while a table stays 4 bytes per slot.
const SIZES: [usize; 12] = [
    251, 503, 1_009, 2_003, 4_001, 8_009, 16_001, 32_003, 65_537, 131_071, 262_147, MAX_SIZE,
];

/// The largest table [`Maglev::size_for`] picks (2 MiB): 100 slots for
/// each of up to 5,242 backends, above the 5,000 endpoints a service may
/// have (`kxdp_proto::limits::MAX_MAGLEV_TABLE_SIZE`), so no request can
/// make a node build larger tables.
pub const MAX_SIZE: usize = 524_309;

/// Smallest table size, and the minimum slots per backend.
const MIN_SIZE: usize = SIZES[0];
const SLOTS_PER_BACKEND: usize = 100;

/// Marks an unclaimed slot while filling.
const EMPTY: u32 = u32::MAX;

/// Seeds of the two permutation hashes (`offset` and `skip`): arbitrary,
/// distinct, fixed forever (changing them reshuffles every table).
const OFFSET_SEED: u64 = 0x6b78_6470_6d67_6c31; // "kxdpmgl1"
const SKIP_SEED: u64 = 0x6b78_6470_6d67_6c32; // "kxdpmgl2"
/// Seed of the flow-hash mix in [`Maglev::lookup`].
const LOOKUP_SEED: u64 = 0x6b78_6470_6d67_6c33; // "kxdpmgl3"

/// Lookup table: slot -> backend index (into the caller's backend list).
#[derive(Clone, PartialEq, Eq)]
pub struct Maglev {
    /// Shared: a table that did not change is reused by the next snapshot
    /// (`services::MaglevCache`) at the cost of a reference count.
    table: std::sync::Arc<[u32]>,
    backends: u32,
}

impl Maglev {
    /// Builds the table for backends identified by stable 64-bit ids (the
    /// caller hashes ip:port), table size `m`. Empty `ids` give an empty
    /// table whose lookup is `None` (`m` is then ignored).
    ///
    /// The slot -> id mapping does not depend on the order of `ids` (they are
    /// sorted internally); lookups return indexes into `ids` as passed. Two
    /// equal ids get the same permutation and split its slots between them.
    ///
    /// # Panics
    ///
    /// If `ids` is not empty and `m` is not a prime greater than
    /// `ids.len()`, or does not fit in a `u32` (use [`Maglev::size_for`]).
    pub fn new(ids: &[u64], m: usize) -> Maglev {
        if ids.is_empty() {
            return Maglev {
                table: std::sync::Arc::from([]),
                backends: 0,
            };
        }
        let n = ids.len();
        assert!(
            m > n && u32::try_from(m).is_ok() && is_prime(m),
            "maglev table size {m} must be a prime > {n} backends and fit in u32"
        );
        // Fill in id order (ties by caller index), so the result does not
        // depend on the caller's order.
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by_key(|&i| (ids[i as usize], i));
        let m64 = m as u64;
        // `pos[k]`: the next slot in backend order[k]'s permutation.
        let mut pos: Vec<u64> = order
            .iter()
            .map(|&i| mix64(ids[i as usize] ^ OFFSET_SEED) % m64)
            .collect();
        let skip: Vec<u64> = order
            .iter()
            .map(|&i| mix64(ids[i as usize] ^ SKIP_SEED) % (m64 - 1) + 1)
            .collect();
        let mut table = vec![EMPTY; m];
        let mut filled = 0;
        // Each round gives every backend its next free preferred slot; `m`
        // is prime and `0 < skip < m`, so each permutation visits every slot
        // and the inner search always ends.
        'fill: loop {
            for (k, &backend) in order.iter().enumerate() {
                let mut c = pos[k];
                while table[c as usize] != EMPTY {
                    c += skip[k];
                    if c >= m64 {
                        c -= m64;
                    }
                }
                table[c as usize] = backend;
                c += skip[k];
                if c >= m64 {
                    c -= m64;
                }
                pos[k] = c;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Maglev {
            table: table.into(),
            backends: n as u32,
        }
    }

    /// Whether both share one table (reused, not rebuilt).
    pub fn same_table(&self, other: &Maglev) -> bool {
        std::sync::Arc::ptr_eq(&self.table, &other.table)
    }

    /// Smallest table size from a fixed list of primes (251, 503, 1009, ...,
    /// roughly doubling up to [`MAX_SIZE`]) that is `>= 100 * n`; beyond the
    /// list, [`MAX_SIZE`] (fewer than 100 slots per backend: a coarser
    /// spread, never a larger table), and only for `n >= MAX_SIZE`, which
    /// no API accepts, the smallest prime above `n`.
    pub fn size_for(n: usize) -> usize {
        let want = n.saturating_mul(SLOTS_PER_BACKEND).max(MIN_SIZE);
        match SIZES.iter().find(|&&p| p >= want) {
            Some(&p) => p,
            None if n < MAX_SIZE => MAX_SIZE,
            None => (n + 1..).find(|&p| is_prime(p)).expect("a prime exists"),
        }
    }

    /// The backend (index into the `ids` given to [`Maglev::new`]) for a
    /// flow, or `None` if there are no backends. Any 64-bit flow hash works,
    /// even a weak one: it is mixed before it picks a slot.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> Option<u32> {
        self.table
            .get(fast_range(mix64(flow_hash ^ LOOKUP_SEED), self.table.len()))
            .copied()
    }

    /// Table size `m` (0 for an empty table).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True if there are no backends.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Number of backends the table was built for.
    pub fn backends(&self) -> u32 {
        self.backends
    }
}

/// A summary: the table itself can hold millions of slots.
impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("len", &self.table.len())
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

/// splitmix64's finalizer (Steele, Lea, Flood 2014): a bijective 64-bit mix
/// whose every output bit depends on every input bit.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps a uniform `h` onto `0..n` with a multiply instead of a division
/// (Lemire, "Fast Random Integer Generation in an Interval", 2019).
#[inline]
fn fast_range(h: u64, n: usize) -> usize {
    ((u128::from(h) * n as u128) >> 64) as usize
}

/// Trial division; only used at build time on table sizes.
// `is_multiple_of` needs Rust 1.87; the workspace's rust-version is 1.85.
#[allow(clippy::manual_is_multiple_of)]
fn is_prime(n: usize) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vectors::XorShift;

    /// Flows sampled per property (>= 100k, as the issue asks).
    const FLOWS: usize = 100_000;

    /// Backend ids as the caller would make them: a hash of ip:port.
    fn ids(n: usize, salt: u64) -> Vec<u64> {
        (0..n as u64)
            .map(|i| mix64(((0x0af4_0100 + i) << 16 | 8080) ^ (salt << 48)))
            .collect()
    }

    fn slot_counts(t: &Maglev) -> Vec<usize> {
        let mut c = vec![0; t.backends() as usize];
        for &b in t.table.iter() {
            c[b as usize] += 1;
        }
        c
    }

    /// The backend *id* each of `FLOWS` random flow hashes goes to.
    fn flow_ids(t: &Maglev, ids: &[u64], seed: u64) -> Vec<u64> {
        let mut rng = XorShift(seed);
        (0..FLOWS)
            .map(|_| ids[t.lookup(rng.next_u64()).unwrap() as usize])
            .collect()
    }

    #[test]
    fn sizes_are_prime_increasing_and_at_least_100x() {
        for w in SIZES.windows(2) {
            assert!(w[0] < w[1]);
        }
        for &p in &SIZES {
            assert!(is_prime(p), "{p}");
        }
        assert!(!is_prime(0) && !is_prime(1) && is_prime(2) && is_prime(3));
        assert!(!is_prime(4) && !is_prime(9) && !is_prime(65_535) && !is_prime(1_048_577));
        assert_eq!(Maglev::size_for(0), 251);
        assert_eq!(Maglev::size_for(1), 251);
        assert_eq!(Maglev::size_for(2), 251);
        assert_eq!(Maglev::size_for(3), 503);
        assert_eq!(Maglev::size_for(10), 1_009);
        assert_eq!(Maglev::size_for(11), 2_003);
        assert_eq!(Maglev::size_for(655), 65_537);
        assert_eq!(Maglev::size_for(5_000), MAX_SIZE);
        for n in [1, 2, 3, 7, 50, 99, 1_000, 2_621, 2_622, 5_000, 5_243] {
            let m = Maglev::size_for(n);
            assert!(m >= 100 * n && m >= 251 && is_prime(m), "{n} -> {m}");
        }
        // Past the list: never larger than MAX_SIZE while it can hold them.
        assert_eq!(Maglev::size_for(5_244), MAX_SIZE);
        assert_eq!(Maglev::size_for(200_000), MAX_SIZE);
        assert_eq!(Maglev::size_for(MAX_SIZE), 524_341);
        assert!(is_prime(524_341));
    }

    #[test]
    fn empty_table_has_no_backend() {
        let t = Maglev::new(&[], 251);
        assert!(t.is_empty());
        assert_eq!((t.len(), t.backends()), (0, 0));
        assert_eq!(t.lookup(0), None);
        assert_eq!(t.lookup(u64::MAX), None);
        // `m` is not checked without backends.
        assert!(Maglev::new(&[], 0).is_empty());
    }

    #[test]
    fn debug_is_a_summary() {
        let t = Maglev::new(&[1, 2, 3], 251);
        assert_eq!(format!("{t:?}"), "Maglev { len: 251, backends: 3, .. }");
    }

    #[test]
    fn one_backend_gets_everything() {
        let t = Maglev::new(&[42], 251);
        assert_eq!((t.len(), t.backends(), t.is_empty()), (251, 1, false));
        let mut rng = XorShift(7);
        for _ in 0..1000 {
            assert_eq!(t.lookup(rng.next_u64()), Some(0));
        }
    }

    #[test]
    #[should_panic(expected = "must be a prime")]
    fn non_prime_size_is_refused() {
        Maglev::new(&[1, 2], 256);
    }

    #[test]
    #[should_panic(expected = "must be a prime")]
    fn size_not_above_backend_count_is_refused() {
        Maglev::new(&[1, 2, 3], 3);
    }

    #[test]
    fn deterministic() {
        let ids = ids(17, 1);
        let m = Maglev::size_for(17);
        assert_eq!(Maglev::new(&ids, m), Maglev::new(&ids, m));
        // Pinned: a change here reshuffles every node's tables, which breaks
        // nothing established but must be deliberate.
        let t = Maglev::new(&[1, 2, 3], 251);
        let head: Vec<u32> = t.table[..12].to_vec();
        assert_eq!(head, [2, 2, 1, 2, 0, 1, 1, 0, 0, 2, 0, 2]);
    }

    /// Property (1): N equal backends, N in 2..=50. Asserted: slot counts
    /// differ by at most one (so `|slots/m - 1/N| <= 1/m < 0.004`), and each
    /// backend's share of 100k random flows is within 0.01 of 1/N and within
    /// 5 binomial standard deviations of its slot share.
    #[test]
    fn equal_backends_share_evenly() {
        let mut worst_rel = 0.0f64;
        for n in 2..=50usize {
            let ids = ids(n, n as u64);
            let m = Maglev::size_for(n);
            let t = Maglev::new(&ids, m);
            assert_eq!((t.len(), t.backends()), (m, n as u32));
            let slots = slot_counts(&t);
            let (lo, hi) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
            assert!(hi - lo <= 1, "n={n} m={m} slots {lo}..={hi}");
            assert_eq!(*lo, m / n);
            let mut flows = vec![0usize; n];
            let mut rng = XorShift(0x5eed ^ n as u64);
            for _ in 0..FLOWS {
                flows[t.lookup(rng.next_u64()).unwrap() as usize] += 1;
            }
            for b in 0..n {
                let share = flows[b] as f64 / FLOWS as f64;
                let p = slots[b] as f64 / m as f64;
                let sigma = (FLOWS as f64 * p * (1.0 - p)).sqrt();
                assert!(
                    (share - 1.0 / n as f64).abs() <= 0.01,
                    "n={n} b={b} {share}"
                );
                assert!(
                    (flows[b] as f64 - FLOWS as f64 * p).abs() <= 5.0 * sigma,
                    "n={n} b={b} flows {} expected {}",
                    flows[b],
                    FLOWS as f64 * p
                );
                worst_rel = worst_rel.max((share * n as f64 - 1.0).abs());
            }
        }
        println!("maglev spread: worst |share*N - 1| over N=2..=50: {worst_rel:.4}");
    }

    /// Sequential and low-entropy flow hashes spread too: lookup mixes them.
    #[test]
    fn weak_flow_hashes_spread() {
        let n = 10;
        let t = Maglev::new(&ids(n, 3), Maglev::size_for(n));
        for stride in [1u64, 1 << 16, 1 << 32] {
            let mut flows = vec![0usize; n];
            for i in 0..FLOWS as u64 {
                flows[t.lookup(i * stride).unwrap() as usize] += 1;
            }
            for &f in &flows {
                let share = f as f64 / FLOWS as f64;
                assert!((share - 0.1).abs() <= 0.01, "stride {stride}: {flows:?}");
            }
        }
    }

    /// Slots that change backend (by id) between two tables of one size.
    fn moved_slots(before: &Maglev, bids: &[u64], after: &Maglev, aids: &[u64]) -> usize {
        assert_eq!(before.len(), after.len());
        (0..before.len())
            .filter(|&s| bids[before.table[s] as usize] != aids[after.table[s] as usize])
            .count()
    }

    /// Moved slots as a multiple of the minimum, over all cases: (mean, max).
    fn summary(ratios: &[f64]) -> (f64, f64) {
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        (mean, ratios.iter().copied().fold(0.0, f64::max))
    }

    /// Property (2): removing one of N backends (N in 2..=50, table size
    /// `size_for(N)` kept). All the removed backend's flows move; others
    /// move only as Maglev's collateral. The minimum is 1/N of all flows.
    ///
    /// Measured (slots moved / minimum, 100 random id sets x every removed
    /// position x N in 2..=50 = 127,400 cases): mean 1.59, p99 1.98, max
    /// 3.07; 0.8% of cases above 2. The ratio grows with N / m (N = 2: 1.00;
    /// N = 50, m = 8009: mean 1.78) and shrinks with a larger table (m =
    /// 1000 N, N = 50: mean 1.26). Rare outliers come from two backends
    /// drawing the same `skip`: their permutations are then translates and
    /// contend in chains (forcing distinct skips made the worst case worse,
    /// since removing one of the pair reshuffles the other).
    ///
    /// Asserted here: mean <= 2x the minimum, every case <= 3.5x, and the
    /// 100k sampled flows agree with the slot counts.
    #[test]
    fn removal_disruption() {
        let mut ratios = Vec::new();
        for n in 2..=50usize {
            let all = ids(n, 100 + n as u64);
            let m = Maglev::size_for(n);
            let before = Maglev::new(&all, m);
            let check_flows = n % 8 == 2;
            let fb = if check_flows {
                flow_ids(&before, &all, 99)
            } else {
                Vec::new()
            };
            for r in [0, n / 2, n - 1] {
                let mut rest = all.clone();
                let gone = rest.remove(r);
                let after = Maglev::new(&rest, m);
                let moved = moved_slots(&before, &all, &after, &rest);
                // The removed backend's slots are all among those moved.
                let its = before.table.iter().filter(|&&b| b as usize == r).count();
                assert!(moved >= its);
                let minimal = 1.0 / n as f64;
                let ratio = moved as f64 / m as f64 / minimal;
                assert!(ratio <= 3.5, "n={n} r={r}: {ratio:.3}x the minimum");
                ratios.push(ratio);
                if check_flows {
                    let fa = flow_ids(&after, &rest, 99);
                    let mut flows_moved = 0;
                    for (a, b) in fb.iter().zip(&fa) {
                        assert_ne!(*b, gone);
                        flows_moved += usize::from(a != b);
                    }
                    let share = flows_moved as f64 / FLOWS as f64;
                    assert!((share - moved as f64 / m as f64).abs() <= 0.01, "n={n}");
                }
            }
        }
        let (mean, max) = summary(&ratios);
        assert!(mean <= 2.0, "mean {mean:.3}x the minimum");
        println!("maglev removal: moved / minimal (1/N): mean {mean:.3}, max {max:.3}");
    }

    /// Property (3): adding a backend to N (N in 1..=49, table size
    /// `size_for(N + 1)` for both) moves the newcomer's share 1/(N+1) plus
    /// collateral. Measured over 4,900 cases: mean 1.49x, p99 1.97x, max
    /// 2.80x the minimum. Asserted: every case moves at least 1/(N+1) - 1/m
    /// and at most 3.5/(N+1); mean <= 2x.
    #[test]
    fn addition_disruption() {
        let mut ratios = Vec::new();
        for n in 1..=49usize {
            let grown = ids(n + 1, 200 + n as u64);
            let ids = &grown[..n];
            let m = Maglev::size_for(n + 1);
            let before = Maglev::new(ids, m);
            let after = Maglev::new(&grown, m);
            let moved = moved_slots(&before, ids, &after, &grown);
            let to_new = after.table.iter().filter(|&&b| b as usize == n).count();
            assert!(to_new <= moved && to_new >= m / (n + 1));
            let minimal = 1.0 / (n + 1) as f64;
            let ratio = moved as f64 / m as f64 / minimal;
            assert!(
                (1.0 - 1.0 / m as f64 / minimal..=3.5).contains(&ratio),
                "n={n}: {ratio:.3}x"
            );
            ratios.push(ratio);
        }
        let (mean, max) = summary(&ratios);
        assert!(mean <= 2.0, "mean {mean:.3}x the minimum");
        println!("maglev addition: moved / minimal (1/(N+1)): mean {mean:.3}, max {max:.3}");
    }

    /// Property (4): the table depends on the set of ids, not their order:
    /// any permutation of the ids gives the same slot -> id table.
    #[test]
    fn order_independent() {
        let mut rng = XorShift(0x0d3d);
        for n in [2usize, 3, 10, 33, 50] {
            let ids = ids(n, 300 + n as u64);
            let m = Maglev::size_for(n);
            let base = Maglev::new(&ids, m);
            let by_id: Vec<u64> = base.table.iter().map(|&b| ids[b as usize]).collect();
            for _ in 0..5 {
                let mut shuffled = ids.clone();
                for i in (1..n).rev() {
                    shuffled.swap(i, rng.below(i + 1));
                }
                let t = Maglev::new(&shuffled, m);
                let t_by_id: Vec<u64> = t.table.iter().map(|&b| shuffled[b as usize]).collect();
                assert_eq!(by_id, t_by_id, "n={n}");
            }
        }
    }

    #[test]
    fn duplicate_ids_share_their_permutation() {
        let t = Maglev::new(&[5, 5, 9], 251);
        let c = slot_counts(&t);
        assert_eq!(c.iter().sum::<usize>(), 251);
        assert!(c.iter().all(|&x| x >= 83), "{c:?}");
    }

    #[test]
    fn large_table_builds() {
        let n = 1_000;
        let m = Maglev::size_for(n);
        assert_eq!(m, 131_071);
        let t = Maglev::new(&ids(n, 4), m);
        let c = slot_counts(&t);
        assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
    }
}
