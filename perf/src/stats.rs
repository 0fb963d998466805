//! Sink-side accounting: per-flow sequence tracking (loss, reorder) and a
//! log-linear latency histogram with percentiles. No I/O, no clock.

use serde::{Deserialize, Serialize};

/// Per-flow sequence accounting.
///
/// Sequence numbers start at 0 per flow. A frame above the highest seen so
/// far opens a gap for every number it skips; a frame below it is counted
/// as reordered and closes one gap (it arrived late, not lost). What is
/// still open at the end is lost, as far as the sink can tell: frames lost
/// after the last one received are invisible here, which is why the
/// harness also compares against the generator's sent count. A duplicate
/// looks like a late arrival (the generator never sends one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowSeq {
    pub received: u64,
    /// Highest sequence seen + 1 (0: none yet).
    pub next: u64,
    pub gaps: u64,
    pub reordered: u64,
}

impl FlowSeq {
    pub fn record(&mut self, seq: u64) {
        self.received += 1;
        if seq >= self.next {
            self.gaps += seq - self.next;
            self.next = seq + 1;
        } else {
            self.reordered += 1;
            self.gaps = self.gaps.saturating_sub(1);
        }
    }
}

/// All flows of a run, indexed by flow number.
#[derive(Debug, Clone, Default)]
pub struct Flows {
    flows: Vec<FlowSeq>,
}

/// Totals over the flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTotals {
    pub flows_seen: u64,
    pub received: u64,
    /// Sequence numbers skipped and never filled (loss seen by the sink).
    pub lost: u64,
    pub reordered: u64,
    /// Highest sequence + 1 summed over the flows: what the sink knows was sent.
    pub expected: u64,
}

impl Flows {
    pub fn record(&mut self, flow: u16, seq: u64) {
        let i = usize::from(flow);
        if i >= self.flows.len() {
            self.flows.resize(i + 1, FlowSeq::default());
        }
        self.flows[i].record(seq);
    }

    pub fn get(&self, flow: u16) -> Option<&FlowSeq> {
        self.flows.get(usize::from(flow)).filter(|f| f.received > 0)
    }

    pub fn totals(&self) -> FlowTotals {
        let mut t = FlowTotals::default();
        for f in self.flows.iter().filter(|f| f.received > 0) {
            t.flows_seen += 1;
            t.received += f.received;
            t.lost += f.gaps;
            t.reordered += f.reordered;
            t.expected += f.next;
        }
        t
    }
}

/// Sub-buckets per power of two: relative error below 1/128.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) * SUB as usize) + SUB as usize;

/// A log-linear histogram of u64 values (latency in ns): exact below 256,
/// then 128 buckets per power of two.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }
}

fn bucket_of(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let shift = e - SUB_BITS;
    let mant = v >> shift; // in [SUB, 2*SUB)
    (shift as usize) * SUB as usize + mant as usize
}

/// Smallest and largest value of a bucket.
fn bucket_range(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let mant = i - shift * SUB;
    let lo = mant << shift;
    (lo, lo + ((1u64 << shift) - 1))
}

/// Percentiles of a histogram, in its unit (ns).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub samples: u64,
    pub min: u64,
    pub mean: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[bucket_of(v)] += 1;
        self.total += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// Nearest-rank percentile (`q` in 0..=1): the smallest value with at
    /// least `ceil(q * n)` samples at or below it, reported as the middle
    /// of its bucket and clamped to the observed min/max (rank 1 and rank n
    /// are the exact min and max). None if empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        // The epsilon keeps 0.99 * 200 (197.999...) from rounding the rank up.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64 - 1e-9).ceil() as u64).max(1);
        // The extremes are known exactly.
        if rank == 1 {
            return Some(self.min);
        }
        if rank == self.total {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bucket_range(i);
                return Some((lo + (hi - lo) / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    pub fn percentiles(&self) -> Percentiles {
        if self.total == 0 {
            return Percentiles::default();
        }
        Percentiles {
            samples: self.total,
            min: self.min,
            mean: (self.sum / u128::from(self.total)) as u64,
            p50: self.quantile(0.50).unwrap_or(0),
            p99: self.quantile(0.99).unwrap_or(0),
            p999: self.quantile(0.999).unwrap_or(0),
            max: self.max,
        }
    }
}

/// Median, min and max of a set of figures (median of an even count: the
/// mean of the two middle ones).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_flow_has_no_loss_or_reorder() {
        let mut f = FlowSeq::default();
        for s in 0..100 {
            f.record(s);
        }
        assert_eq!(
            f,
            FlowSeq {
                received: 100,
                next: 100,
                gaps: 0,
                reordered: 0
            }
        );
    }

    #[test]
    fn gaps_count_as_loss_and_late_frames_as_reorders() {
        let mut f = FlowSeq::default();
        for s in [0, 1, 3, 4, 2, 7, 9] {
            f.record(s);
        }
        // 2 came late (reordered, its gap closed); 5, 6 and 8 never came.
        assert_eq!(f.received, 7);
        assert_eq!(f.reordered, 1);
        assert_eq!(f.gaps, 3);
        assert_eq!(f.next, 10);
    }

    #[test]
    fn first_frames_lost_show_as_a_gap() {
        let mut f = FlowSeq::default();
        f.record(5);
        assert_eq!((f.gaps, f.next), (5, 6));
    }

    #[test]
    fn totals_add_up_over_flows() {
        let mut flows = Flows::default();
        for s in 0..10 {
            flows.record(0, s);
            if s != 4 {
                flows.record(3, s);
            }
        }
        flows.record(3, 4); // late
        let t = flows.totals();
        assert_eq!(t.flows_seen, 2);
        assert_eq!(t.received, 20);
        assert_eq!(t.lost, 0);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.expected, 20);
        assert!(flows.get(1).is_none());
        assert_eq!(flows.get(3).unwrap().received, 10);
    }

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        let mut prev_hi = None;
        for i in 0..BUCKETS {
            let (lo, hi) = bucket_range(i);
            assert!(lo <= hi);
            if let Some(p) = prev_hi {
                assert_eq!(lo, p + 1, "bucket {i}");
            }
            prev_hi = Some(hi);
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi), i);
        }
        assert_eq!(prev_hi, Some(u64::MAX));
    }

    #[test]
    fn small_values_have_exact_percentiles() {
        let mut h = Histogram::default();
        for v in 1..=200 {
            h.record(v);
        }
        let p = h.percentiles();
        assert_eq!(p.p50, 100);
        assert_eq!(p.p99, 198);
        assert_eq!(p.p999, 200);
        assert_eq!((p.min, p.max, p.samples), (1, 200, 200));
        assert_eq!(p.mean, 100); // 100.5 truncated
    }

    #[test]
    fn large_values_are_within_one_percent() {
        let mut h = Histogram::default();
        // 1..=100_000 us in ns: p50 = 50 ms, p99 = 99 ms, p999 = 99.9 ms.
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        for (q, want) in [
            (0.5, 50_000_000.0),
            (0.99, 99_000_000.0),
            (0.999, 99_900_000.0),
        ] {
            let got = h.quantile(q).unwrap() as f64;
            assert!(
                (got - want).abs() / want < 0.01,
                "q {q}: got {got}, want {want}"
            );
        }
        assert_eq!(h.quantile(1.0), Some(100_000_000));
        assert_eq!(h.quantile(0.0), Some(1000));
    }

    #[test]
    fn one_outlier_moves_p999_only_when_it_should() {
        let mut h = Histogram::default();
        for _ in 0..999 {
            h.record(10_000);
        }
        h.record(5_000_000);
        let p = h.percentiles();
        assert!((p.p50 as f64 - 10_000.0).abs() < 100.0);
        assert!((p.p999 as f64 - 10_000.0).abs() < 100.0); // rank 999 of 1000
        assert_eq!(p.max, 5_000_000);
        h.record(5_000_000);
        // Now 2 of 1001 are outliers: rank ceil(0.999 * 1001) = 1000.
        assert!(h.percentiles().p999 > 4_900_000);
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.percentiles(), Percentiles::default());
    }

    #[test]
    fn spread_is_median_min_max() {
        assert_eq!(Spread::of(&[]), None);
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
    }
}
