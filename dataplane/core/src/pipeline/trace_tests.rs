//! The trace recorder (`crate::trace`) over the service fixture of
//! `service_tests.rs`: what a trace says about a ClusterIP flow, what a
//! capture keeps at each point, and that recording changes nothing.

use super::service_tests::{
    ready, svc_tables, tcp_from, udp_from, Peer, Svc, FRONTEND, REMOTE_BE, TARGET_PORT,
};
use super::tests::{CHUNK, P1_IP, P1_PORT, RX_OFF, T0, UPLINK};
use super::*;
use crate::conntrack::Timeouts;
use crate::trace::{Filter, Mode, NoTrace, Point, Record, Recorder, Tracer};
use crate::wire::tcp::flags::{ACK, SYN};

fn pipeline() -> Pipeline {
    Pipeline::with_conntrack(4096, Timeouts::default())
}

/// Runs `frames` (all from p1) as one batch through `tr`; returns the
/// verdicts and the output frames.
fn run<T: Tracer>(
    pl: &mut Pipeline,
    t: &Tables,
    frames: &[Vec<u8>],
    tr: &mut T,
) -> Vec<(Verdict, Vec<u8>)> {
    let mut chunks: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut c = vec![0u8; CHUNK];
            c[RX_OFF..RX_OFF + f.len()].copy_from_slice(f);
            c
        })
        .collect();
    let mut pkts: Vec<Packet<'_>> = chunks
        .iter_mut()
        .zip(frames)
        .map(|(c, f)| Packet::new(c, RX_OFF, f.len(), P1_PORT))
        .collect();
    pl.process_traced(T0, t, &mut pkts, false, tr);
    pkts.iter()
        .map(|p| (p.verdict, p.frame().to_vec()))
        .collect()
}

fn syn(sport: u16) -> Vec<u8> {
    tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 1, 0, b"")
}

fn ack(sport: u16) -> Vec<u8> {
    tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, ACK, 2, 1, b"x")
}

fn filter(s: &str) -> Filter {
    Filter::parse(s, |n| (n == "p1").then_some(P1_PORT)).unwrap()
}

fn web() -> Tables {
    let mut t = svc_tables(&Svc::new(&[ready(REMOTE_BE)]));
    t.generation = 42;
    t
}

#[test]
fn a_trace_names_the_new_flow_its_backend_the_dnat_and_the_encap() {
    let t = web();
    let mut pl = pipeline();
    let mut rec = Recorder::new(Mode::Trace, filter("dst 10.96.0.10 and port 80"), 0, 2);
    let other = tcp_from(Peer::P1, (P1_IP, 999), (REMOTE_BE.0, 22), SYN, 1, 0, b"");
    run(&mut pl, &t, &[syn(40000), other, ack(40000)], &mut rec);
    assert_eq!(rec.remaining(), 0);
    let [first, second]: [Record; 2] = rec.out.try_into().unwrap();
    let text = first.steps.join("\n");
    for want in [
        "in: 0a:58:0a:f4:01:02 -> 02:6b:78:64:70:01 IPv4 10.244.1.2:40000 -> 10.96.0.10:80 TCP flags SYN ttl 64",
        "flow cache: miss, full walk",
        "conntrack: new flow 10.244.1.2:40000 -> 10.96.0.10:80",
        "backend: 10.244.2.2:8080 of default/web (Maglev on the 5-tuple hash over 1 ready backends)",
        "VXLAN encap: VNI 1 to VTEP 172.30.0.12:4789",
        "DNAT: 10.96.0.10:80 -> 10.244.2.2:8080",
        "TTL 64 -> 63",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    assert_eq!(first.verdict, Verdict::Tx(UPLINK));
    assert_eq!((first.generation, first.epoch), (42, t.epoch));
    assert_eq!(first.ingress, P1_PORT);
    // The flow's next packet: a conntrack hit keeping its backend.
    let text = second.steps.join("\n");
    assert!(
        text.contains("conntrack: hit, original direction"),
        "{text}"
    );
    assert!(text.contains("existing flow keeps its backend"), "{text}");
    assert!(
        text.contains(&format!("-> {}:{TARGET_PORT}", REMOTE_BE.0)),
        "{text}"
    );
}

#[test]
fn a_trace_tells_a_flow_cache_hit_from_a_walk() {
    let t = web();
    let mut pl = pipeline();
    let udp = udp_from(Peer::P1, (P1_IP, 5000), REMOTE_BE, b"kxdp");
    let mut steps = vec![];
    for _ in 0..2 {
        let mut rec = Recorder::new(Mode::Trace, Filter::default(), 0, 1);
        run(&mut pl, &t, std::slice::from_ref(&udp), &mut rec);
        steps.push(rec.out.remove(0).steps);
    }
    assert!(
        steps[0].contains(&"flow cache: miss, full walk".to_string()),
        "{steps:?}"
    );
    assert!(
        steps[1].iter().any(|s| s.starts_with("flow cache: hit")),
        "{steps:?}"
    );
}

#[test]
fn a_trace_names_the_policy_rule_that_allowed_or_denied_a_new_flow() {
    use crate::policy::{PodPolicy, PortRange, RuleTable};
    use crate::prefix::Prefix;
    let mut t = web();
    t.policy.names = vec!["x/to-web".into(), "x/deny".into()];
    let mut egress = RuleTable::new(vec![0, 1]);
    let tcp = |first, last| PortRange {
        proto: 6,
        first,
        last,
        policy: 0,
    };
    egress.insert(
        Prefix::new(REMOTE_BE.0, 24),
        &[tcp(TARGET_PORT, TARGET_PORT)],
    );
    // A hole: the backend's /32 may use only another port.
    let mut denying = egress.clone();
    denying.insert(Prefix::new(REMOTE_BE.0, 32), &[tcp(9, 9)]);
    let with = |egress: RuleTable| {
        let mut t = t.clone();
        t.policy.pods.insert(
            P1_IP,
            PodPolicy {
                ingress: None,
                egress: Some(egress),
            },
        );
        t
    };
    let mut pl = pipeline();
    let mut rec = Recorder::new(Mode::Trace, Filter::default(), 0, 1);
    run(&mut pl, &with(egress), &[syn(40000)], &mut rec);
    let text = rec.out.remove(0).steps.join("\n");
    for want in [
        "policy: 10.244.1.2 -> 10.244.2.2:8080/TCP (as the destination sees it: from 10.244.1.2): allowed",
        "policy egress of 10.244.1.2 (isolated by x/to-web, x/deny): allowed by x/to-web (peer 10.244.2.0/24, TCP 8080)",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    let mut rec = Recorder::new(Mode::Trace, Filter::default(), 0, 1);
    let out = run(&mut pl, &with(denying), &[syn(40001)], &mut rec);
    assert_eq!(out[0].0, Verdict::Drop(DropReason::PolicyDeniedEgress));
    let text = rec.out.remove(0).steps.join("\n");
    let want = "policy egress of 10.244.1.2 (isolated by x/to-web, x/deny): denied: the entry of peer 10.244.2.2/32 allows no such port";
    assert!(text.contains(want), "{want:?} not in\n{text}");
    // An established packet is no new decision: no policy line.
    let mut rec = Recorder::new(Mode::Trace, Filter::default(), 0, 1);
    run(
        &mut pl,
        &with(RuleTable::new(vec![0])),
        &[ack(40000)],
        &mut rec,
    );
    let steps = rec.out.remove(0).steps;
    assert!(!steps.iter().any(|s| s.starts_with("policy")), "{steps:?}");
}

#[test]
fn a_capture_keeps_the_frames_of_its_point() {
    let t = web();
    let runt = syn(40001)[..20].to_vec();
    let batch = [syn(40000), runt.clone()];
    let capture = |point| {
        let mut rec = Recorder::new(Mode::Capture(point), Filter::default(), 0, 10);
        let out = run(&mut pipeline(), &t, &batch, &mut rec);
        (rec.out, out)
    };
    let (drops, out) = capture(Point::Drop);
    assert_eq!(drops.len(), 1);
    assert_eq!(drops[0].frame, runt, "a drop is captured as received");
    assert!(matches!(drops[0].verdict, Verdict::Drop(_)));
    let (rx, _) = capture(Point::Rx);
    let frames: Vec<_> = rx.iter().map(|r| r.frame.clone()).collect();
    assert_eq!(frames, batch.to_vec());
    let (tx, _) = capture(Point::Tx);
    assert_eq!(tx.len(), 1);
    assert_eq!(
        tx[0].frame, out[0].1,
        "tx is the frame as sent (encapsulated)"
    );
    let (uplink, _) = capture(Point::Port(UPLINK));
    assert_eq!(uplink.len(), 1, "sent out of the uplink");
    let (p1, _) = capture(Point::Port(P1_PORT));
    assert_eq!(p1.len(), 2, "both came in on p1");
}

#[test]
fn recording_changes_no_verdict_byte_or_counter() {
    let t = web();
    let batch: Vec<Vec<u8>> = (0..20)
        .flat_map(|i| [syn(41000 + i), ack(41000 + i), ack(41000 + i)])
        .collect();
    let (mut a, mut b) = (pipeline(), pipeline());
    let plain = run(&mut a, &t, &batch, &mut NoTrace);
    let mut rec = Recorder::new(Mode::Trace, Filter::default(), 0, 100);
    let traced = run(&mut b, &t, &batch, &mut rec);
    assert_eq!(plain, traced);
    assert_eq!(a.counters(), b.counters());
    assert_eq!(rec.out.len(), 60);
}

#[test]
fn the_filter_language() {
    use crate::trace::Parsed;
    let iface = |n: &str| (n == "p1").then_some(P1_PORT);
    for bad in [
        ("src", "\"src\" needs a value"),
        ("src 10.0.0.300", "expected an IPv4 address or CIDR"),
        ("dst 10.0.0.0/33", "expected an IPv4 address or CIDR"),
        ("proto gre", "expected tcp, udp, icmp, arp or 0-255"),
        ("port 65536", "above 65535"),
        ("port eth9", "no such interface"),
        ("port 80 and", "ends with"),
        ("port 80 port 81", "expected `and` or `or`"),
        ("colour red", "unknown term"),
    ] {
        let e = Filter::parse(bad.0, iface).unwrap_err();
        assert!(e.contains(bad.1), "{bad:?}: {e}");
    }
    let f = syn(40000);
    let h = Parsed::new(&f, 4789).unwrap();
    let m = |s: &str| filter(s).matches(P1_PORT, &h);
    assert!(m(""));
    assert!(m(
        "src 10.244.1.0/24 and dst 10.96.0.10 and proto tcp and port 80"
    ));
    assert!(m("port 40000") && m("port p1") && m("host 10.96.0.10"));
    assert!(!m("proto udp") && !m("dst 10.244.0.0/16") && !m("port 81"));
    assert!(m("proto udp or port 80"), "or");
    assert!(
        !m("proto udp or port 80 and dst 1.2.3.4"),
        "and binds tighter"
    );
    assert!(!filter("port p1").matches(UPLINK, &h));
}
