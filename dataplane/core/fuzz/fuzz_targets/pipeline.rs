//! Fuzzes the whole pipeline with one frame per input, on the tables of the
//! pipeline tests' node n1 (src/pipeline/tests.rs): uplink on port 0, pods
//! 10.244.1.2 and 10.244.1.3 on ports 1 and 2, 10.244.2.0/24 behind VTEP
//! 172.30.0.12.
//!
//! Input: byte 0 bits 0-1 pick the port (0 uplink, 1 p1, 2 p2, 3 unknown)
//! and bits 2-3 the tables (0-1 as in the tests, 2 next hop unresolved,
//! 3 no uplink); byte 1 is the receive offset in 8-byte units (32 = 256,
//! the dataplane's); the rest is the frame, cut to fit the 2048-byte chunk.
//! The bytes of the chunk outside the frame are 0xa5.
#![no_main]

use kxdp_core::conntrack::Timeouts;
use kxdp_core::pipeline::{Packet, Pipeline, Verdict};
use libfuzzer_sys::fuzz_target;

mod fixture;
use fixture::{assert_sent_ipv4_or_arp, ipv4_header_ok, tables, CHUNK, ETH};

/// A fresh pipeline per input (so a crash replays alone), with a small
/// conntrack: the default one (256k flows) costs milliseconds to build.
const CONNTRACK: usize = 64;

fuzz_target!(|data: &[u8]| {
    let [sel, off8, frame @ ..] = data else {
        return;
    };
    let port = u16::from(sel & 3);
    let port = if port == 3 { 7 } else { port };
    let t = tables((sel >> 2) & 3);
    let off = usize::from(*off8) * 8;
    let len = frame.len().min(CHUNK - off);
    let mut chunk = [0xa5u8; CHUNK];
    chunk[off..off + len].copy_from_slice(&frame[..len]);

    let mut pl = Pipeline::with_conntrack(CONNTRACK, Timeouts::default());
    let mut pkts = [Packet::new(&mut chunk, off, len, port)];
    pl.process(1_000_000_000_000, t, &mut pkts);
    let p = &pkts[0];
    let c = pl.counters();
    let drops: u64 = c.drops.iter().sum();
    match p.verdict {
        Verdict::Handoff(w) => panic!("single-worker pipeline handed off to {w}"),
        Verdict::Drop(r) => {
            assert_eq!(c.drop_count(r), 1);
            assert_eq!(drops, 1);
        }
        Verdict::Tx(out) => {
            assert!(t.port(out).is_some(), "Tx to unknown port {out}");
            assert!(p.off + p.len <= CHUNK && p.len >= ETH);
            assert_eq!(
                c.routed_local + c.encapsulated + c.arp_replies + c.egress_routed,
                1
            );
            assert_eq!(drops, c.icmp_errors_sent);
            let f = p.frame();
            if assert_sent_ipv4_or_arp(f) {
                if c.encapsulated == 1 {
                    // VXLAN: the inner IPv4 header too.
                    assert!(ipv4_header_ok(&f[50 + ETH..]), "bad inner IPv4 header");
                }
            } else {
                assert_eq!((out, f.len()), (port, 60), "ARP replies go back, padded");
            }
        }
    }
});
