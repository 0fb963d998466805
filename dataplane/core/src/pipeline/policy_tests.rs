//! Network policy in the pipeline: new flows decided by the isolated local
//! pods' tables (egress at the source, ingress at the destination), replies
//! of allowed flows passing by their conntrack entry, established packets
//! taking the flow cache, and a policy change deciding established flows
//! again. The fixture is `service_tests.rs`' n1 (p1, p2, the host port,
//! `default/web` with p2 as a backend, n2's pods over VXLAN).

use core::net::Ipv4Addr;

use super::service_tests::{
    delivered, key, pipeline, ready, send, svc_tables, tcp_from, tuple, udp_from, Peer, Svc,
    CLIENT_IP, CLUSTER_IP, LOCAL_BE, SVC_PORT, TARGET_PORT, TCP,
};
use super::tests::{GATEWAY, P1_IP, P2_IP, REMOTE_POD_IP, T0};
use super::*;
use crate::policy::{PodPolicy, PortRange, RuleTable, ANY_PROTO};
use crate::prefix::Prefix;
use crate::wire::tcp::flags::{ACK, PSH, SYN};

fn one(ip: Ipv4Addr) -> Prefix {
    Prefix::new(ip, 32)
}

fn ports(proto: u8, first: u16, last: u16) -> PortRange {
    PortRange {
        proto,
        first,
        last,
        policy: 0,
    }
}

/// `default/web` (backend p2:8080) with these policies.
fn with_policy(pods: &[(Ipv4Addr, PodPolicy)]) -> Tables {
    let mut t = svc_tables(&Svc::new(&[ready(LOCAL_BE)]));
    t.policy.names = vec!["default/test".into()];
    for (ip, p) in pods {
        t.policy.pods.insert(*ip, p.clone());
    }
    t
}

/// p2 takes TCP 8080 from p1 only.
fn p2_from_p1() -> PodPolicy {
    let mut ingress = RuleTable::default();
    ingress.insert(one(P1_IP), &[ports(TCP, 8080, 8080)]);
    PodPolicy {
        ingress: Some(ingress),
        egress: None,
    }
}

/// Denies everything the way it is isolated.
fn deny_all() -> RuleTable {
    RuleTable::default()
}

#[track_caller]
fn assert_dropped_for(out: &super::tests::Out, reason: DropReason) {
    assert_eq!(out.verdict, Verdict::Drop(reason));
}

#[test]
fn ingress_policy_admits_only_what_it_allows_and_replies_pass() {
    let t = with_policy(&[(P2_IP, p2_from_p1())]);
    let mut pl = pipeline();
    let c = (P1_IP, 40000);
    // Allowed: p1 -> p2:8080, then p2's answer and the rest of the flow.
    let syn = tcp_from(Peer::P1, c, LOCAL_BE, SYN, 1, 0, b"");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &syn));
    assert_eq!(tuple(&d.ip), key(TCP, c, LOCAL_BE));
    let syn_ack = tcp_from(Peer::P2, LOCAL_BE, c, SYN | ACK, 9, 2, b"");
    delivered(&send(&mut pl, T0, &t, Peer::P2, &syn_ack));
    assert_eq!(pl.counters().policy_flows_allowed, 1);
    // Another port of p2, or p2 from n2's pod: denied at p2's ingress.
    let other = tcp_from(Peer::P1, (P1_IP, 40001), (P2_IP, 8081), SYN, 1, 0, b"");
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::P1, &other),
        DropReason::PolicyDeniedIngress,
    );
    let remote = tcp_from(
        Peer::Remote,
        (REMOTE_POD_IP, 5000),
        LOCAL_BE,
        SYN,
        1,
        0,
        b"",
    );
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::Remote, &remote),
        DropReason::PolicyDeniedIngress,
    );
    let udp = udp_from(Peer::P1, (P1_IP, 5353), LOCAL_BE, b"x");
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::P1, &udp),
        DropReason::PolicyDeniedIngress,
    );
    assert_eq!(pl.counters().drop_count(DropReason::PolicyDeniedIngress), 3);
    // p2's own new flows are not restricted (no egress policy selects it).
    let out = udp_from(Peer::P2, (P2_IP, 7000), (REMOTE_POD_IP, 53), b"q");
    delivered(&send(&mut pl, T0, &t, Peer::P2, &out));
}

#[test]
fn each_policy_counts_the_flows_it_allows_and_the_denials_of_its_pods() {
    // p2 is isolated by two policies: "x/a" allows p1 TCP 8080, "x/b"
    // (names[1]) allows nothing; p1's egress by "x/c", which allows all.
    let mut t = with_policy(&[]);
    t.policy.names = vec!["x/a".into(), "x/b".into(), "x/c".into()];
    let mut ingress = RuleTable::new(vec![0, 1]);
    ingress.insert(one(P1_IP), &[ports(TCP, 8080, 8080)]);
    let mut egress = RuleTable::new(vec![2]);
    egress.insert(
        Prefix::new(Ipv4Addr::UNSPECIFIED, 0),
        &[PortRange {
            policy: 2,
            ..ports(ANY_PROTO, 0, 0)
        }],
    );
    t.policy.pods.insert(
        P2_IP,
        PodPolicy {
            ingress: Some(ingress),
            egress: None,
        },
    );
    t.policy.pods.insert(
        P1_IP,
        PodPolicy {
            ingress: None,
            egress: Some(egress),
        },
    );
    let mut pl = pipeline();
    pl.swap_books(ServiceBooks::for_tables(&t, 0));
    for sport in [40000, 40001] {
        let syn = tcp_from(Peer::P1, (P1_IP, sport), LOCAL_BE, SYN, 1, 0, b"");
        delivered(&send(&mut pl, T0, &t, Peer::P1, &syn));
    }
    // The same SYN again is its flow's, not a new one.
    let again = tcp_from(Peer::P1, (P1_IP, 40000), LOCAL_BE, SYN, 1, 0, b"");
    delivered(&send(&mut pl, T0, &t, Peer::P1, &again));
    // Denied at p2 (port 8081): against both policies isolating it; a
    // retransmission counts again.
    let denied = tcp_from(Peer::P1, (P1_IP, 40002), (P2_IP, 8081), SYN, 1, 0, b"");
    for _ in 0..2 {
        assert_dropped_for(
            &send(&mut pl, T0, &t, Peer::P1, &denied),
            DropReason::PolicyDeniedIngress,
        );
    }
    let got: Vec<(u64, u64)> = pl
        .policy_flows()
        .iter()
        .map(|f| (f.allowed, f.denied))
        .collect();
    // Each flow is allowed by p1's egress policy and p2's ingress one.
    assert_eq!(got, [(2, 2), (0, 2), (2, 0)]);
}

#[test]
fn the_node_always_reaches_its_pods_but_not_by_address_alone() {
    let isolated = PodPolicy {
        ingress: Some(deny_all()),
        egress: Some(deny_all()),
    };
    let t = with_policy(&[(P2_IP, isolated)]);
    let mut pl = pipeline();
    // The kubelet's probe from the host port, and p2's answer to it.
    let probe = tcp_from(Peer::Host, (GATEWAY, 33000), (P2_IP, 8080), SYN, 1, 0, b"");
    delivered(&send(&mut pl, T0, &t, Peer::Host, &probe));
    let answer = tcp_from(
        Peer::P2,
        (P2_IP, 8080),
        (GATEWAY, 33000),
        SYN | ACK,
        1,
        2,
        b"",
    );
    delivered(&send(&mut pl, T0, &t, Peer::P2, &answer));
    // p2 may not open flows to the node itself (egress deny-all).
    let to_node = tcp_from(Peer::P2, (P2_IP, 5000), (GATEWAY, 22), SYN, 1, 0, b"");
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::P2, &to_node),
        DropReason::PolicyDeniedEgress,
    );
}

#[test]
fn egress_policy_applies_after_service_dnat_and_to_the_backend() {
    // p1 may reach only p2's TCP 8080: the ClusterIP port 80 is not what
    // policy sees, the backend's pod and target port are.
    let mut egress = RuleTable::default();
    egress.insert(one(P2_IP), &[ports(TCP, TARGET_PORT, TARGET_PORT)]);
    let p1 = PodPolicy {
        ingress: None,
        egress: Some(egress),
    };
    let t = with_policy(&[(P1_IP, p1)]);
    let mut pl = pipeline();
    let syn = tcp_from(
        Peer::P1,
        (P1_IP, 41000),
        (CLUSTER_IP, SVC_PORT),
        SYN,
        1,
        0,
        b"",
    );
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &syn));
    assert_eq!(tuple(&d.ip).dst, P2_IP);
    // Not to n2's pod, not UDP to the ClusterIP's backend.
    let other = tcp_from(
        Peer::P1,
        (P1_IP, 41001),
        (REMOTE_POD_IP, 8080),
        SYN,
        1,
        0,
        b"",
    );
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::P1, &other),
        DropReason::PolicyDeniedEgress,
    );
    // The backend's ingress decides too: deny-all on p2 refuses the flow.
    let p2 = PodPolicy {
        ingress: Some(deny_all()),
        egress: None,
    };
    let mut egress = RuleTable::default();
    egress.insert(one(P2_IP), &[ports(ANY_PROTO, 0, 0)]);
    let p1 = PodPolicy {
        ingress: None,
        egress: Some(egress),
    };
    let t = with_policy(&[(P1_IP, p1), (P2_IP, p2)]);
    let syn = tcp_from(
        Peer::P1,
        (P1_IP, 41002),
        (CLUSTER_IP, SVC_PORT),
        SYN,
        1,
        0,
        b"",
    );
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::P1, &syn),
        DropReason::PolicyDeniedIngress,
    );
}

#[test]
fn established_flows_take_the_flow_cache_and_a_policy_change_decides_them_again() {
    let t = with_policy(&[(P2_IP, p2_from_p1())]);
    let mut pl = pipeline();
    let c = (P1_IP, 42000);
    delivered(&send(
        &mut pl,
        T0,
        &t,
        Peer::P1,
        &tcp_from(Peer::P1, c, LOCAL_BE, SYN, 1, 0, b""),
    ));
    delivered(&send(
        &mut pl,
        T0,
        &t,
        Peer::P2,
        &tcp_from(Peer::P2, LOCAL_BE, c, SYN | ACK, 9, 2, b""),
    ));
    let ack = tcp_from(Peer::P1, c, LOCAL_BE, ACK, 2, 10, b"");
    delivered(&send(&mut pl, T0, &t, Peer::P1, &ack));
    let data = tcp_from(Peer::P1, c, LOCAL_BE, PSH | ACK, 2, 10, b"hello");
    for _ in 0..3 {
        delivered(&send(&mut pl, T0, &t, Peer::P1, &data));
    }
    assert!(
        pl.counters().flow_cache_hits >= 2,
        "established packets skip the walk: {:?}",
        pl.counters()
    );
    // The same policy in a new snapshot: the flow goes on.
    let same = with_policy(&[(P2_IP, p2_from_p1())]);
    delivered(&send(&mut pl, T0, &same, Peer::P1, &data));
    // A policy that no longer allows p1: its next packet is dropped, as a
    // new flow's would be (Cilium and Calico decide established flows
    // again), and its entry is gone.
    let mut only_remote = RuleTable::default();
    only_remote.insert(one(REMOTE_POD_IP), &[ports(TCP, 8080, 8080)]);
    let changed = with_policy(&[(
        P2_IP,
        PodPolicy {
            ingress: Some(only_remote),
            egress: None,
        },
    )]);
    assert_dropped_for(
        &send(&mut pl, T0, &changed, Peer::P1, &data),
        DropReason::PolicyDeniedIngress,
    );
    assert!(super::service_tests::entry(&pl, key(TCP, c, LOCAL_BE)).is_none());
    // p2's next segment is no flow of its own that p1's would pass as
    // replies to: a segment without an entry belongs to the flow from its
    // higher port to its lower one, p1's, which p2's ingress denies.
    let reply = tcp_from(Peer::P2, LOCAL_BE, c, ACK, 10, 7, b"late");
    assert_dropped_for(
        &send(&mut pl, T0, &changed, Peer::P2, &reply),
        DropReason::PolicyDeniedIngress,
    );
    assert_dropped_for(
        &send(&mut pl, T0, &changed, Peer::P1, &data),
        DropReason::PolicyDeniedIngress,
    );
}

#[test]
fn a_flow_that_began_before_the_policy_is_picked_up_mid_stream() {
    let open = svc_tables(&Svc::new(&[ready(LOCAL_BE)]));
    let mut pl = pipeline();
    let c = (P1_IP, 43000);
    let data = tcp_from(Peer::P1, c, LOCAL_BE, PSH | ACK, 2, 10, b"hello");
    delivered(&send(&mut pl, T0, &open, Peer::P1, &data));
    // Now p2 is isolated but takes p1: the next segment is tracked as
    // established, and p2's replies pass although p2 is egress-isolated.
    let mut p2 = p2_from_p1();
    p2.egress = Some(deny_all());
    let t = with_policy(&[(P2_IP, p2)]);
    delivered(&send(&mut pl, T0, &t, Peer::P1, &data));
    let e = super::service_tests::entry(&pl, key(TCP, c, LOCAL_BE)).expect("tracked");
    assert_eq!(e.tcp, crate::conntrack::TcpState::Established);
    let reply = tcp_from(Peer::P2, LOCAL_BE, c, PSH | ACK, 10, 7, b"world");
    delivered(&send(&mut pl, T0, &t, Peer::P2, &reply));
    // A segment p2 sends from its service port on a flow nobody tracked is
    // taken as the reply of a flow from the higher port, p1's, which p2's
    // ingress allows; from a higher port to a lower one it is p2's own
    // flow: denied by its egress.
    let reply = tcp_from(Peer::P2, LOCAL_BE, (P1_IP, 43999), PSH | ACK, 1, 1, b"?");
    delivered(&send(&mut pl, T0, &t, Peer::P2, &reply));
    let e = super::service_tests::entry(&pl, key(TCP, (P1_IP, 43999), LOCAL_BE)).unwrap();
    assert_eq!(e.original, key(TCP, (P1_IP, 43999), LOCAL_BE), "p1's flow");
    let own = tcp_from(Peer::P2, (P2_IP, 50000), (P1_IP, 22), PSH | ACK, 1, 1, b"?");
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::P2, &own),
        DropReason::PolicyDeniedEgress,
    );
}

#[test]
fn protocols_without_ports_need_a_rule_for_every_protocol() {
    let mut t = with_policy(&[(P2_IP, p2_from_p1())]);
    let mut pl = pipeline();
    // An ICMP echo request to p2: no rule for every protocol.
    let ping = icmp_datagram(P1_IP, P2_IP, &echo_request());
    let frame = Peer::P1.frame(&ping);
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::P1, &frame),
        DropReason::PolicyDeniedIngress,
    );
    // With one, it passes; so does GRE (protocol 47).
    let mut all = RuleTable::default();
    all.insert(one(P1_IP), &[ports(ANY_PROTO, 0, 0)]);
    t.policy.pods.get_mut(&P2_IP).unwrap().ingress = Some(all);
    delivered(&send(&mut pl, T0, &t, Peer::P1, &frame));
    let mut gre = ping.clone();
    gre[9] = 47;
    let sum = super::service_tests::rfc1071(&{
        let mut h = gre[..20].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    gre[10..12].copy_from_slice(&sum.to_be_bytes());
    let out = send(&mut pl, T0, &t, Peer::P1, &Peer::P1.frame(&gre));
    assert!(matches!(out.verdict, Verdict::Tx(_)), "{:?}", out.verdict);
    // Without the rule, GRE is denied.
    t.policy.pods.get_mut(&P2_IP).unwrap().ingress = Some(deny_all());
    let out = send(&mut pl, T0, &t, Peer::P1, &Peer::P1.frame(&gre));
    assert_dropped_for(&out, DropReason::PolicyDeniedIngress);
}

#[test]
fn an_outside_hosts_echo_request_never_reaches_a_pod_whatever_its_policy() {
    // The uplink takes VXLAN from VTEPs and NodePort traffic; a frame from
    // outside to a pod's address is not ours (the kernel's, which routes
    // pods only through the host port, whose sources are the node's own).
    // So outside hosts reach pods only through services, where the
    // ingress policy sees them (or the SNAT address).
    let mut t = with_policy(&[(P2_IP, p2_from_p1())]);
    let mut pl = pipeline();
    let frame = Peer::Client.frame(&icmp_datagram(CLIENT_IP, P2_IP, &echo_request()));
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::Client, &frame),
        DropReason::NotOurs,
    );
    let mut from_client = RuleTable::default();
    from_client.insert(one(CLIENT_IP), &[ports(ANY_PROTO, 0, 0)]);
    t.policy.pods.get_mut(&P2_IP).unwrap().ingress = Some(from_client);
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::Client, &frame),
        DropReason::NotOurs,
    );
}

/// An ICMP echo request (identifier 0x1234, sequence 1) with its checksum.
fn echo_request() -> Vec<u8> {
    let mut echo = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    let c = super::service_tests::rfc1071(&echo);
    echo[2..4].copy_from_slice(&c.to_be_bytes());
    echo
}

/// An ICMP datagram with a valid header checksum.
fn icmp_datagram(src: Ipv4Addr, dst: Ipv4Addr, icmp: &[u8]) -> Vec<u8> {
    let mut h = etherparse::Ipv4Header::new(
        icmp.len() as u16,
        64,
        etherparse::IpNumber::ICMP,
        src.octets(),
        dst.octets(),
    )
    .unwrap();
    h.header_checksum = h.calc_header_checksum();
    let mut d = h.to_bytes().to_vec();
    d.extend_from_slice(icmp);
    d
}

#[test]
fn udp_flows_of_isolated_pods_take_the_flow_cache_both_ways() {
    let mut all = RuleTable::default();
    all.insert(
        Prefix::new(Ipv4Addr::new(10, 244, 0, 0), 16),
        &[ports(ANY_PROTO, 0, 0)],
    );
    let both = PodPolicy {
        ingress: Some(all.clone()),
        egress: Some(all),
    };
    let t = with_policy(&[(P1_IP, both.clone()), (P2_IP, both)]);
    let mut pl = pipeline();
    let there = udp_from(Peer::P1, (P1_IP, 40000), (P2_IP, 5000), b"ping");
    let back = udp_from(Peer::P2, (P2_IP, 5000), (P1_IP, 40000), b"pong");
    for _ in 0..4 {
        delivered(&send(&mut pl, T0, &t, Peer::P1, &there));
        delivered(&send(&mut pl, T0, &t, Peer::P2, &back));
    }
    // The first packet opens the flow, the second each way teaches the
    // cache; the other five are hits.
    assert_eq!(pl.counters().flow_cache_hits, 5, "{:?}", pl.counters());
    assert_eq!(pl.counters().flow_cache_misses, 3, "{:?}", pl.counters());
    assert_eq!(pl.counters().policy_flows_allowed, 1);
}

#[test]
fn a_pod_calling_itself_through_its_service_is_seen_as_itself() {
    // p2 takes only itself; its hairpin flow is SNATed to the gateway, but
    // its ingress policy sees p2 (kube-proxy masquerades after the filter).
    let mut only_self = RuleTable::default();
    only_self.insert(one(P2_IP), &[ports(TCP, TARGET_PORT, TARGET_PORT)]);
    let t = with_policy(&[(
        P2_IP,
        PodPolicy {
            ingress: Some(only_self),
            egress: None,
        },
    )]);
    let mut pl = pipeline();
    let syn = tcp_from(
        Peer::P2,
        (P2_IP, 44000),
        (CLUSTER_IP, SVC_PORT),
        SYN,
        1,
        0,
        b"",
    );
    let d = delivered(&send(&mut pl, T0, &t, Peer::P2, &syn));
    assert_eq!(tuple(&d.ip).src, GATEWAY, "hairpin SNAT");
    // p1 through the same service: not allowed.
    let syn = tcp_from(
        Peer::P1,
        (P1_IP, 44001),
        (CLUSTER_IP, SVC_PORT),
        SYN,
        1,
        0,
        b"",
    );
    assert_dropped_for(
        &send(&mut pl, T0, &t, Peer::P1, &syn),
        DropReason::PolicyDeniedIngress,
    );
}

#[test]
fn only_new_flows_count_as_allowed_not_their_next_decision() {
    let t = with_policy(&[(P2_IP, p2_from_p1())]);
    let mut pl = pipeline();
    let c = (P1_IP, 45000);
    let data = tcp_from(Peer::P1, c, LOCAL_BE, PSH | ACK, 2, 10, b"x");
    delivered(&send(&mut pl, T0, &t, Peer::P1, &data));
    assert_eq!(pl.counters().policy_flows_allowed, 1);
    // The same policy in three new snapshots: decided again, not new.
    for _ in 0..3 {
        let again = with_policy(&[(P2_IP, p2_from_p1())]);
        delivered(&send(&mut pl, T0, &again, Peer::P1, &data));
    }
    assert_eq!(pl.counters().policy_flows_allowed, 1);
}
