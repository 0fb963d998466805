//! Test builds only: every batch also runs through a twin pipeline without
//! the flow cache, which must decide and write the same.

use super::*;

impl Pipeline {
    /// Runs a copy of the batch; returns each frame's verdict and bytes.
    pub(super) fn run_copy(
        &mut self,
        now: u64,
        t: &Tables,
        pkts: &[Packet<'_>],
    ) -> Vec<(Verdict, Vec<u8>)> {
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

    pub(super) fn same_as(&self, twin: &Pipeline, out: &[(Verdict, Vec<u8>)], pkts: &[Packet<'_>]) {
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
