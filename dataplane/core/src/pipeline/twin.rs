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
    /// What the engine does with books: the backend slots of the tables
    /// the books were made for, and new flows per backend of earlier ones.
    keys: Vec<crate::services::BackendKey>,
    flows: std::collections::HashMap<crate::services::BackendKey, BackendCounters>,
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
            keys: Vec::new(),
            flows: Default::default(),
        }
    }

    /// New flows per (service, backend address, port), nonzero ones, as
    /// the engine sums them over the books of every snapshot.
    pub fn backend_flows(&self) -> std::collections::HashMap<crate::services::BackendKey, u64> {
        let mut all: std::collections::HashMap<_, u64> = self
            .backend_counters()
            .into_iter()
            .map(|(k, c)| (k, c.new_flows))
            .collect();
        all.retain(|_, n| *n > 0);
        all
    }

    /// Every counter per backend, summed over the books of every snapshot.
    pub fn backend_counters(
        &self,
    ) -> std::collections::HashMap<crate::services::BackendKey, BackendCounters> {
        let mut all = self.flows.clone();
        for (k, c) in self.keys.iter().zip(self.pl.backend_counters()) {
            let a = all.entry(*k).or_default();
            a.new_flows += c.new_flows;
            a.packets += c.packets;
            a.bytes += c.bytes;
        }
        all
    }

    /// Gives both books made for `t` when it is laid out otherwise than the
    /// tables of their books, as the worker does when it swaps tables in.
    fn fit_books(&mut self, t: &Tables) {
        if self.keys == t.services.backend_keys
            && self.pl.service_counters().len() >= t.services.names.len()
        {
            return;
        }
        self.flows = self.backend_counters();
        self.pl.swap_books(ServiceBooks::for_tables(t, 0));
        self.twin.swap_books(ServiceBooks::for_tables(t, 0));
        self.keys = t.services.backend_keys.clone();
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

    /// Both with an affinity table of `records` (the default's is large).
    pub fn set_affinity_capacity(&mut self, records: usize) {
        self.pl.nat = nat::NatState::new(records);
        self.twin.nat = nat::NatState::new(records);
    }

    pub fn maintain(&mut self, now_ns: u64) {
        self.pl.maintain(now_ns);
        self.twin.maintain(now_ns);
    }

    /// Runs the batch through the twin (on a copy) and the pipeline, and
    /// asserts they agree.
    pub fn process(&mut self, now_ns: u64, t: &Tables, pkts: &mut [Packet<'_>]) {
        self.fit_books(t);
        let out = run_copy(&mut self.twin, now_ns, t, pkts, false);
        self.pl.process(now_ns, t, pkts);
        same(&self.pl, &self.twin, &out, pkts);
    }

    pub fn process_handed(&mut self, now_ns: u64, t: &Tables, pkts: &mut [Packet<'_>]) {
        self.fit_books(t);
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
        flow_cache_misses: 0,
        ..pl.counters.clone()
    };
    assert_eq!(mine, twin.counters, "counters");
    assert_eq!(pl.nat.books, twin.nat.books, "service counters");
    assert_eq!(pl.ct.stats(), twin.ct.stats(), "conntrack");
    // The walk makes every ICMP error, so both spent the same budgets.
    assert!(pl.icmp == twin.icmp, "ICMP budgets");
}
