//! Fuzzes sequences of frames through three workers of node n1 with a
//! service (`fixture.rs`: ClusterIP, NodePort, the host port, egress), each
//! worker checked against a twin without the flow cache, hand-offs run by
//! their owner at once as the worker mesh does (and never handed on).
//!
//! Input: byte 0 bit 0 picks the policies (Cluster, Local); then records,
//! each: a selector byte (bits 0-1 the worker, 3 meaning 2; bits 2-4 the
//! port: 0 uplink, 1 p1, 2 p2, 3 host, others unknown; bits 5-7 the
//! length's bits 8-10), the length's low byte, and the frame (cut to what
//! is left). Time advances 1 ms per record.
#![no_main]

use kxdp_core::conntrack::Timeouts;
use kxdp_core::pipeline::{Packet, Pipeline, Verdict};
use kxdp_core::tables::Tables;
use libfuzzer_sys::fuzz_target;

mod fixture;
use fixture::{assert_sent_ipv4_or_arp, services_tables, CHUNK, ETH};

const WORKERS: u16 = 3;
const CONNTRACK: usize = 64;
/// The dataplane's receive offset.
const RX_OFF: usize = 256;
const MAX_RECORDS: usize = 64;

struct Worker {
    pl: Pipeline,
    twin: Pipeline,
}

impl Worker {
    fn new(i: u16) -> Worker {
        let mut pl = Pipeline::with_conntrack(CONNTRACK, Timeouts::default());
        let mut twin = Pipeline::with_conntrack(CONNTRACK, Timeouts::default());
        pl.set_worker(i, WORKERS);
        twin.set_worker(i, WORKERS);
        twin.set_flow_cache(false);
        Worker { pl, twin }
    }

    /// Runs `frame` (from `port`) through the pipeline and its twin, which
    /// must agree; returns the verdict and the frame as it would go on (as
    /// received, for a hand-off).
    fn run(
        &mut self,
        now: u64,
        t: &Tables,
        port: u16,
        frame: &[u8],
        handed: bool,
    ) -> (Verdict, Vec<u8>) {
        let mut a = [0xa5u8; CHUNK];
        let mut b = [0xa5u8; CHUNK];
        a[RX_OFF..RX_OFF + frame.len()].copy_from_slice(frame);
        b[RX_OFF..RX_OFF + frame.len()].copy_from_slice(frame);
        let mut pa = [Packet::new(&mut a, RX_OFF, frame.len(), port)];
        let mut pb = [Packet::new(&mut b, RX_OFF, frame.len(), port)];
        if handed {
            self.pl.process_handed(now, t, &mut pa);
            self.twin.process_handed(now, t, &mut pb);
        } else {
            self.pl.process(now, t, &mut pa);
            self.twin.process(now, t, &mut pb);
        }
        let (p, q) = (&pa[0], &pb[0]);
        assert_eq!(p.verdict, q.verdict, "flow cache and walk disagree");
        match p.verdict {
            Verdict::Drop(_) => (p.verdict, Vec::new()),
            Verdict::Handoff(_) => {
                assert_eq!(
                    p.buf[RX_OFF..RX_OFF + frame.len()],
                    q.buf[RX_OFF..RX_OFF + frame.len()]
                );
                (p.verdict, p.buf[RX_OFF..RX_OFF + frame.len()].to_vec())
            }
            Verdict::Tx(out) => {
                assert_eq!(
                    p.frame(),
                    q.frame(),
                    "flow cache and walk wrote differently"
                );
                assert!(t.port(out).is_some(), "Tx to unknown port {out}");
                assert!(p.off + p.len <= CHUNK && p.len >= ETH);
                let f = p.frame();
                assert_sent_ipv4_or_arp(f);
                (p.verdict, f.to_vec())
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&policy, mut rest)) = data.split_first() else {
        return;
    };
    let t = services_tables(policy & 1 == 1);
    let mut workers: Vec<Worker> = (0..WORKERS).map(Worker::new).collect();
    let mut now = 1_000_000_000_000u64;
    for _ in 0..MAX_RECORDS {
        let &[sel, len_lo, ref tail @ ..] = rest else {
            return;
        };
        let w = usize::from((sel & 3).min(2));
        let port = match (sel >> 2) & 7 {
            p @ 0..=3 => u16::from(p),
            _ => 7,
        };
        let len = (usize::from(sel >> 5) << 8 | usize::from(len_lo))
            .min(tail.len())
            .min(CHUNK - RX_OFF);
        let (frame, next) = tail.split_at(len);
        rest = next;
        now += 1_000_000;
        let (v, handed) = workers[w].run(now, t, port, frame, false);
        if let Verdict::Handoff(to) = v {
            assert!(
                to < WORKERS && usize::from(to) != w,
                "handed to {to} by {w}"
            );
            let (v, _) = workers[usize::from(to)].run(now, t, port, &handed, true);
            assert!(!matches!(v, Verdict::Handoff(_)), "handed on by its owner");
        }
    }
});
