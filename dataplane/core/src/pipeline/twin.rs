//! Test builds only: [`Checked`], a pipeline with a twin that has no flow
//! cache. Every batch runs through both, which must decide and write the
//! same; the pipeline's own tests use it under the name `Pipeline`, so every
//! test checks the flow cache against the walk.

use std::ops::{Deref, DerefMut};

use super::*;

/// Methods that change a pipeline's state are forwarded to both here; the
/// rest reach the checked pipeline through `Deref` (a state change made
/// that way to one side only shows up as a disagreement at the next batch).
pub(super) struct Checked {
    pl: Pipeline,
    twin: Pipeline,
}

impl Checked {
    pub fn new() -> Checked {
        Checked::with_conntrack(DEFAULT_CONNTRACK_CAPACITY, Timeouts::default())
    }

    pub fn with_conntrack(capacity: usize, timeouts: Timeouts) -> Checked {
        let mut twin = Pipeline::with_conntrack(capacity, timeouts);
        twin.set_flow_cache(false);
        Checked {
            pl: Pipeline::with_conntrack(capacity, timeouts),
            twin,
        }
    }

    pub fn set_worker(&mut self, index: u16, count: u16) {
        self.pl.set_worker(index, count);
        self.twin.set_worker(index, count);
    }

    pub fn set_seed(&mut self, seed: u64) {
        self.pl.set_seed(seed);
        self.twin.set_seed(seed);
    }

    pub fn set_fragment_table(&mut self, entries: usize) {
        self.pl.set_fragment_table(entries);
        self.twin.set_fragment_table(entries);
    }

    /// Runs the batch through the twin (on a copy) and the pipeline, and
    /// asserts they agree.
    pub fn process(&mut self, now_ns: u64, t: &Tables, pkts: &mut [Packet<'_>]) {
        let out = run_copy(&mut self.twin, now_ns, t, pkts, false);
        self.pl.process(now_ns, t, pkts);
        same(&self.pl, &self.twin, &out, pkts);
    }

    pub fn process_handed(&mut self, now_ns: u64, t: &Tables, pkts: &mut [Packet<'_>]) {
        let out = run_copy(&mut self.twin, now_ns, t, pkts, true);
        self.pl.process_handed(now_ns, t, pkts);
        same(&self.pl, &self.twin, &out, pkts);
    }
}

impl Deref for Checked {
    type Target = Pipeline;
    fn deref(&self) -> &Pipeline {
        &self.pl
    }
}

impl DerefMut for Checked {
    fn deref_mut(&mut self) -> &mut Pipeline {
        &mut self.pl
    }
}

/// Runs a copy of the batch; returns each frame's verdict and bytes.
fn run_copy(
    pl: &mut Pipeline,
    now: u64,
    t: &Tables,
    pkts: &[Packet<'_>],
    handed: bool,
) -> Vec<(Verdict, Vec<u8>)> {
    let mut bufs: Vec<Vec<u8>> = pkts.iter().map(|p| p.buf.to_vec()).collect();
    let mut copy: Vec<Packet<'_>> = bufs
        .iter_mut()
        .zip(pkts)
        .map(|(b, p)| Packet::new(b, p.off, p.len, p.port))
        .collect();
    if handed {
        pl.process_handed(now, t, &mut copy);
    } else {
        pl.process(now, t, &mut copy);
    }
    // A dropped frame's range may be anything (bad descriptors).
    copy.iter()
        .map(|p| match p.verdict {
            Verdict::Drop(_) => (p.verdict, Vec::new()),
            _ => (p.verdict, p.frame().to_vec()),
        })
        .collect()
}

fn same(pl: &Pipeline, twin: &Pipeline, out: &[(Verdict, Vec<u8>)], pkts: &[Packet<'_>]) {
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
        ..pl.counters.clone()
    };
    assert_eq!(mine, twin.counters, "counters");
    assert_eq!(pl.nat.svc, twin.nat.svc, "service counters");
    assert_eq!(pl.ct.stats(), twin.ct.stats(), "conntrack");
    // The walk makes every ICMP error, so both spent the same budgets.
    assert!(pl.icmp == twin.icmp, "ICMP budgets");
}
