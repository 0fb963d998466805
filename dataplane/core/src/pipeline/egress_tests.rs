//! Walk 7 tests: pod egress through the uplink, masqueraded to the node's
//! address (flannel's `ipMasq`) or not (non-masquerade destinations), the
//! replies and ICMP errors back, and what must never leave with a pod's
//! address. The fixture is `service_tests.rs`' n1 (services included, so
//! egress is checked beside them) plus the kernel's routes over the uplink:
//! a default route through the underlay's router and the underlay /24
//! on-link. Outputs are rebuilt from scratch (`natted`) and compared.

use core::net::Ipv4Addr;

use super::service_tests::{
    delivered, entry, icmp_error_datagram, key, natted, pipeline, ready, send, svc_tables,
    tcp_datagram, tcp_from, tuple, udp_datagram, udp_from, Peer, Svc, HOST_PEER_MAC, HOST_PORT,
    HOST_PORT_MAC, LOCAL_BE, QUOTE, SEC, TCP, UDP,
};
use super::tests::{
    assert_ipv4_checksum, assert_l4_checksum, process_one, total_drops, Out, NEXT_HOP_MAC, P1_IP,
    P1_MAC, P1_PORT, PORT1_MAC, T0,
};
use super::tests::{GATEWAY, REMOTE_UNDERLAY_IP, UNDERLAY_IP, UPLINK, UPLINK_MAC, VXLAN_PORT};
use super::twin::Checked as Pipeline;
use super::*;
use crate::prefix::Prefix;
use crate::wire::tcp::flags::{ACK, PSH, RST, SYN};

const ICMP: u8 = ipv4::protocol::ICMP;
/// The underlay's router (the nodes' default gateway) and its MAC.
const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 254);
const ROUTER_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x1e, 0x00, 0xfe]);
/// A server on the Internet, behind the router.
const WWW: (Ipv4Addr, u16) = (Ipv4Addr::new(203, 0, 113, 10), 80);
/// A network whose hosts see pod addresses (a non-masquerade CIDR).
const FLAT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
/// An on-link underlay host the kernel has no neighbour entry for.
const UNRESOLVED: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 50);

/// n1 with services and the kernel's routes over the uplink.
pub(super) fn world(masquerade: bool, non_masquerade: &[Prefix]) -> Tables {
    with_egress(
        svc_tables(&Svc::new(&[ready(LOCAL_BE)])),
        masquerade,
        non_masquerade,
    )
}

/// `t` with the kernel's routes over the uplink: a default route through
/// the underlay's router and the underlay /24 on-link (n2 resolved).
pub(super) fn with_egress(mut t: Tables, masquerade: bool, non_masquerade: &[Prefix]) -> Tables {
    t.node.as_mut().unwrap().masquerade = masquerade;
    t.egress.insert(
        Prefix::new(Ipv4Addr::UNSPECIFIED, 0),
        EgressHop::Gateway(Some(ROUTER_MAC)),
    );
    t.egress.insert(
        Prefix::new(Ipv4Addr::new(172, 30, 0, 0), 24),
        EgressHop::OnLink,
    );
    t.neighbours.insert(ROUTER_IP, ROUTER_MAC);
    t.neighbours.insert(REMOTE_UNDERLAY_IP, NEXT_HOP_MAC);
    t.non_masquerade = non_masquerade.to_vec();
    t
}

/// Seeds for the randomised tests: a pod's TCP, UDP and ping to the
/// outside, the server's answers to the SNAT ports (identifier) a fresh
/// pipeline picks for them, and a router's error about the UDP flow.
pub(super) fn egress_seeds() -> Vec<(Peer, Vec<u8>)> {
    let t = world(true, &[]);
    let mut pl = pipeline();
    let client = (P1_IP, 40000);
    let syn = tcp_from(Peer::P1, client, WWW, SYN, 1, 0, b"");
    let udp = udp_from(Peer::P1, client, WWW, b"q");
    let ping = Peer::P1.frame(&echo_datagram(P1_IP, WWW.0, 8, 0x4242, 1));
    let tcp_out = egressed(&send(&mut pl, T0, &t, Peer::P1, &syn), ROUTER_MAC);
    let udp_out = egressed(&send(&mut pl, T0, &t, Peer::P1, &udp), ROUTER_MAC);
    let ping_out = egressed(&send(&mut pl, T0, &t, Peer::P1, &ping), ROUTER_MAC);
    let snat = |ip: &[u8]| (tuple(ip).src, tuple(ip).sport);
    let ping_id = u16::from_be_bytes([ping_out[24], ping_out[25]]);
    vec![
        (Peer::P1, syn),
        (Peer::P1, udp),
        (Peer::P1, ping),
        (
            Peer::Client,
            from_router(&echo_datagram(WWW.0, UNDERLAY_IP, 0, ping_id, 1)),
        ),
        (
            Peer::Client,
            from_router(&tcp_datagram(WWW, snat(&tcp_out), 60, SYN | ACK, 5, 2, b"")),
        ),
        (
            Peer::Client,
            from_router(&udp_datagram(WWW, snat(&udp_out), 60, b"a")),
        ),
        (
            Peer::Client,
            from_router(&icmp_error_datagram(
                ROUTER_IP,
                UNDERLAY_IP,
                3,
                1,
                &udp_out[..28],
            )),
        ),
    ]
}

/// A frame from the outside on the uplink, through the router.
pub(super) fn from_router(datagram: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH + datagram.len());
    f.extend_from_slice(&UPLINK_MAC.0);
    f.extend_from_slice(&ROUTER_MAC.0);
    f.extend_from_slice(&ethernet::ethertype::IPV4.to_be_bytes());
    f.extend_from_slice(datagram);
    f
}

/// `out` left through the uplink to `mac`, unencapsulated: its datagram,
/// checksums verified from scratch.
#[track_caller]
pub(super) fn egressed(out: &Out, mac: EthernetAddress) -> Vec<u8> {
    assert_eq!(out.verdict, Verdict::Tx(UPLINK), "out the uplink");
    let f = &out.frame;
    assert_eq!(&f[0..6], &mac.0, "to the next hop");
    assert_eq!(&f[6..12], &UPLINK_MAC.0, "from the uplink");
    let ip = f[ETH..].to_vec();
    assert!(
        !(ip[9] == ipv4::protocol::UDP && ip[22..24] == VXLAN_PORT.to_be_bytes()),
        "not encapsulated"
    );
    assert_ipv4_checksum(&ip);
    if !(ip[9] == ipv4::protocol::UDP && ip[26..28] == [0, 0]) {
        assert_l4_checksum(&ip);
    }
    ip
}

/// `out` reached p1, from its gateway: its datagram.
#[track_caller]
pub(super) fn to_p1(out: &Out) -> Vec<u8> {
    let d = delivered(out);
    assert_eq!(d.port, P1_PORT);
    assert_eq!((d.eth_dst, d.eth_src), (P1_MAC.0, PORT1_MAC.0));
    d.ip
}

#[track_caller]
fn assert_snat_port(port: u16) {
    assert!(
        (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&port),
        "SNAT port {port}"
    );
}

#[test]
fn a_pods_tcp_connection_to_the_internet_is_masqueraded_both_ways() {
    let t = world(true, &[]);
    let mut pl = pipeline();
    let client = (P1_IP, 40000);
    let syn = tcp_from(Peer::P1, client, WWW, SYN, 0x1000, 0, b"");
    let out = send(&mut pl, T0, &t, Peer::P1, &syn);
    let ip = egressed(&out, ROUTER_MAC);
    let seen = tuple(&ip);
    assert_eq!(seen.src, UNDERLAY_IP, "the server sees the node");
    assert_snat_port(seen.sport);
    let snat = (UNDERLAY_IP, seen.sport);
    assert_eq!(ip, natted(&syn[ETH..], Some(snat), None, 1));
    assert_eq!(pl.counters().egress_flows, 1);
    let e = entry(&pl, key(TCP, client, WWW)).expect("tracked");
    assert_eq!(e.reply, key(TCP, WWW, snat));
    assert_eq!(e.service, NO_SERVICE);

    // The server's answers come back on the uplink to the SNAT port, and
    // the pod's further segments go out the same way (flow cache and walk
    // alike: the twin checks).
    for i in 0..4u32 {
        let reply = from_router(&tcp_datagram(
            WWW,
            snat,
            60,
            if i == 0 { SYN | ACK } else { PSH | ACK },
            0x5000 + i,
            0x1001 + i,
            b"response",
        ));
        let got = to_p1(&send(&mut pl, T0 + u64::from(i), &t, Peer::Client, &reply));
        assert_eq!(got, natted(&reply[ETH..], None, Some(client), 1));
        let seg = tcp_from(
            Peer::P1,
            client,
            WWW,
            PSH | ACK,
            0x1001 + i,
            0x5001 + i,
            b"req",
        );
        let ip = egressed(
            &send(&mut pl, T0 + u64::from(i), &t, Peer::P1, &seg),
            ROUTER_MAC,
        );
        assert_eq!(ip, natted(&seg[ETH..], Some(snat), None, 1));
    }
    assert_eq!(pl.counters().egress_routed, 5);
    assert_eq!(pl.counters().egress_flows, 1);
}

#[test]
fn udp_egress_keeps_a_zero_checksum_zero_and_gets_its_answers() {
    let t = world(true, &[]);
    let mut pl = pipeline();
    let dns = (WWW.0, 53);
    let mut q = udp_from(Peer::P1, (P1_IP, 5353), dns, b"query");
    // "No checksum" (allowed over IPv4) must stay so after NAT.
    q[ETH + 26..ETH + 28].copy_from_slice(&[0, 0]);
    let ip = egressed(&send(&mut pl, T0, &t, Peer::P1, &q), ROUTER_MAC);
    let snat = (tuple(&ip).src, tuple(&ip).sport);
    assert_eq!(snat.0, UNDERLAY_IP);
    assert_eq!(&ip[26..28], &[0, 0], "zero stays zero");
    assert_eq!(ip, natted(&q[ETH..], Some(snat), None, 1));
    let answer = from_router(&udp_datagram(dns, snat, 60, b"answer"));
    let got = to_p1(&send(&mut pl, T0, &t, Peer::Client, &answer));
    assert_eq!(got, natted(&answer[ETH..], None, Some((P1_IP, 5353)), 1));
}

#[test]
fn a_segment_to_the_internet_without_a_tracked_flow_is_reset() {
    let t = world(true, &[]);
    let mut pl = pipeline();
    let ack = tcp_from(Peer::P1, (P1_IP, 40001), WWW, ACK, 7, 9, b"");
    let got = to_p1(&send(&mut pl, T0, &t, Peer::P1, &ack));
    let k = tuple(&got);
    assert_eq!(k, key(TCP, WWW, (P1_IP, 40001)), "reset from the server");
    assert_eq!(got[33] & RST, RST, "a reset");
    assert_eq!(pl.counters().drop_count(DropReason::NoConntrack), 1);
    assert!(entry(&pl, key(TCP, (P1_IP, 40001), WWW)).is_none());
}

/// An ICMP echo (`ty` 8 request, 0 reply) from `src` to `dst`, checksums
/// computed afresh.
pub(super) fn echo_datagram(src: Ipv4Addr, dst: Ipv4Addr, ty: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut d = icmp_error_datagram(src, dst, ty, 0, b"kxdp ping payload");
    d[24..26].copy_from_slice(&id.to_be_bytes());
    d[26..28].copy_from_slice(&seq.to_be_bytes());
    d[22..24].copy_from_slice(&[0, 0]);
    let c = super::service_tests::rfc1071(&d[20..]);
    d[22..24].copy_from_slice(&c.to_be_bytes());
    d
}

/// The echo datagram `ip` is `want` but for its TTL (one hop less) and
/// its checksums, which are checked from scratch.
#[track_caller]
fn assert_echo(ip: &[u8], want: &[u8]) {
    assert_ipv4_checksum(ip);
    assert!(super::tests::rfc1071_ok(&ip[20..]), "ICMP checksum");
    assert_eq!(ip[8], want[8] - 1, "TTL");
    assert_eq!(&ip[12..20], &want[12..20], "addresses");
    assert_eq!(&ip[20..22], &want[20..22], "type and code");
    assert_eq!(&ip[24..], &want[24..], "identifier, sequence, payload");
}

#[test]
fn a_pods_ping_to_the_internet_is_masqueraded_both_ways() {
    // One worker and two: the request and its reply meet at one owner.
    for workers in [1u16, 2] {
        let t = world(true, &[]);
        let mut pls: Vec<Pipeline> = (0..workers)
            .map(|i| {
                let mut pl = pipeline();
                pl.set_worker(i, workers);
                pl
            })
            .collect();
        for id in [0x1234u16, 0, 61001] {
            for seq in 1..4u16 {
                let ping = Peer::P1.frame(&echo_datagram(P1_IP, WWW.0, 8, id, seq));
                let (owner, out) = one_owner(&mut pls, &t, Peer::P1, &ping);
                let ip = egressed(&out, ROUTER_MAC);
                let snat = u16::from_be_bytes([ip[24], ip[25]]);
                assert_snat_port(snat);
                assert_echo(&ip, &echo_datagram(UNDERLAY_IP, WWW.0, 8, snat, seq));
                let e = entry(&pls[owner], key(ICMP, (P1_IP, id), (WWW.0, 0))).expect("tracked");
                assert_eq!(e.reply, key(ICMP, (WWW.0, 0), (UNDERLAY_IP, snat)));
                // The reply, to the node's address and that identifier.
                let pong = from_router(&echo_datagram(WWW.0, UNDERLAY_IP, 0, snat, seq));
                let (_, back) = one_owner(&mut pls, &t, Peer::Client, &pong);
                assert_echo(&to_p1(&back), &echo_datagram(WWW.0, P1_IP, 0, id, seq));
            }
        }
        let flows: u64 = pls.iter().map(|pl| pl.counters().egress_flows).sum();
        assert_eq!(flows, 3, "one flow per identifier");
        for pl in &pls {
            assert_eq!(total_drops(pl.counters()), 0);
        }
    }
}

/// Sends `f` to every worker: exactly one keeps it (the others hand it to
/// that one), and its output is returned.
fn one_owner(pls: &mut [Pipeline], t: &Tables, peer: Peer, f: &[u8]) -> (usize, Out) {
    let outs: Vec<Out> = pls.iter_mut().map(|pl| send(pl, T0, t, peer, f)).collect();
    let owners: Vec<usize> = (0..outs.len())
        .filter(|&i| !matches!(outs[i].verdict, Verdict::Handoff(_)))
        .collect();
    assert_eq!(owners.len(), 1, "one owner");
    for (i, o) in outs.iter().enumerate() {
        if let Verdict::Handoff(w) = o.verdict {
            assert_eq!(usize::from(w), owners[0], "worker {i} hands to the owner");
        }
    }
    let owner = owners[0];
    (owner, outs.into_iter().nth(owner).unwrap())
}

#[test]
fn a_ping_reply_no_pod_expects_is_the_node_kernels() {
    // The uplink redirects echo replies to SNAT identifiers, which the
    // kernel's own pings may use too: those go to it, untouched.
    let t = world(true, &[]);
    let mut pl = pipeline();
    let pong = echo_datagram(WWW.0, UNDERLAY_IP, 0, 61234, 7);
    let d = delivered(&send(&mut pl, T0, &t, Peer::Client, &from_router(&pong)));
    assert_eq!(d.port, HOST_PORT);
    assert_eq!(d.ip, pong, "not translated, not a hop");
    assert_eq!(total_drops(pl.counters()), 0);
    assert!(pl.conntrack().is_empty());
}

#[test]
fn what_masquerade_cannot_translate_never_leaves_with_a_pod_address() {
    let t = world(true, &[]);
    let mut pl = pipeline();
    // An ICMP timestamp request, and an echo reply (to a ping that never
    // reached the pod from outside), have no flow to translate with.
    for ty in [13, 0] {
        let d = echo_datagram(P1_IP, WWW.0, ty, 0x1234, 1);
        let out = send(&mut pl, T0, &t, Peer::P1, &Peer::P1.frame(&d));
        assert_eq!(out.verdict, Verdict::Drop(DropReason::EgressUntranslatable));
    }
    assert_eq!(pl.counters().egress_routed, 0);
    assert!(pl.conntrack().is_empty());
}

#[test]
fn without_masquerade_egress_keeps_the_pod_address_and_its_replies_reach_the_pod() {
    let t = world(false, &[]);
    let mut pl = pipeline();
    let client = (P1_IP, 40002);
    let syn = tcp_from(Peer::P1, client, WWW, SYN, 1, 0, b"");
    let ip = egressed(&send(&mut pl, T0, &t, Peer::P1, &syn), ROUTER_MAC);
    assert_eq!(ip, natted(&syn[ETH..], None, None, 1));
    assert!(entry(&pl, key(TCP, client, WWW)).is_none(), "not tracked");
    let reply = from_router(&tcp_datagram(WWW, client, 60, SYN | ACK, 5, 2, b""));
    let got = to_p1(&send(&mut pl, T0, &t, Peer::Client, &reply));
    assert_eq!(got, natted(&reply[ETH..], None, None, 1));
}

#[test]
fn non_masquerade_destinations_see_the_pod_and_only_they_reach_it() {
    let flat = Prefix::new(Ipv4Addr::new(198, 51, 100, 0), 24);
    let t = world(true, &[flat]);
    let mut pl = pipeline();
    let client = (P1_IP, 40003);
    let to_flat = udp_from(Peer::P1, client, (FLAT, 9), b"hi");
    let ip = egressed(&send(&mut pl, T0, &t, Peer::P1, &to_flat), ROUTER_MAC);
    assert_eq!(ip, natted(&to_flat[ETH..], None, None, 1));
    let back = from_router(&udp_datagram((FLAT, 9), client, 60, b"hello"));
    let got = to_p1(&send(&mut pl, T0, &t, Peer::Client, &back));
    assert_eq!(got, natted(&back[ETH..], None, None, 1));
    // Anyone else is masqueraded, so may not address a pod directly.
    let stranger = from_router(&udp_datagram(WWW, client, 60, b"hello"));
    let out = send(&mut pl, T0, &t, Peer::Client, &stranger);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::NotOurs));
    // Nor can the pod address a masqueraded destination unmasqueraded (a
    // non-SYN has no flow: reset), so nothing leaves with its address.
    assert_eq!(pl.counters().egress_routed, 1);
}

#[test]
fn an_icmp_error_from_a_router_about_an_egress_flow_reaches_the_pod() {
    let t = world(true, &[]);
    let mut pl = pipeline();
    let client = (P1_IP, 40004);
    let q = udp_from(Peer::P1, client, WWW, b"probe");
    let sent = egressed(&send(&mut pl, T0, &t, Peer::P1, &q), ROUTER_MAC);
    assert_eq!(tuple(&sent).src, UNDERLAY_IP);
    assert_snat_port(tuple(&sent).sport);
    // The router says the server is unreachable, quoting what it got.
    let err = from_router(&icmp_error_datagram(
        ROUTER_IP,
        UNDERLAY_IP,
        3,
        1,
        &sent[..28],
    ));
    let got = to_p1(&send(&mut pl, T0, &t, Peer::Client, &err));
    assert_eq!(&got[12..16], &ROUTER_IP.octets(), "from the router itself");
    assert_eq!(&got[16..20], &P1_IP.octets());
    assert!(super::tests::rfc1071_ok(&got[20..]), "ICMP checksum");
    let quoted = &got[QUOTE - ETH..];
    assert_eq!(
        tuple(quoted),
        key(UDP, client, WWW),
        "the pod's own datagram"
    );
    assert!(
        super::tests::rfc1071_ok(&quoted[..20]),
        "quoted header checksum"
    );
    // One about something else stays the node's.
    let other = tcp_datagram((UNDERLAY_IP, 50000), WWW, 63, SYN, 1, 0, b"");
    let err = from_router(&icmp_error_datagram(
        ROUTER_IP,
        UNDERLAY_IP,
        3,
        1,
        &other[..28],
    ));
    let out = send(&mut pl, T0, &t, Peer::Client, &err);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::NotOurs));
}

#[test]
fn pods_reach_their_own_node_through_the_host_and_other_nodes_masqueraded() {
    let t = world(true, &[]);
    let mut pl = pipeline();
    // This node's underlay address is the kernel's: the host port, no NAT.
    let to_self = tcp_from(Peer::P1, (P1_IP, 40005), (UNDERLAY_IP, 22), SYN, 1, 0, b"");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &to_self));
    assert_eq!(d.port, HOST_PORT);
    assert_eq!((d.eth_dst, d.eth_src), (HOST_PEER_MAC.0, HOST_PORT_MAC.0));
    assert_eq!(d.ip, natted(&to_self[ETH..], None, None, 1));
    // Another node's (on-link, resolved): masqueraded, to its own MAC.
    let to_n2 = tcp_from(
        Peer::P1,
        (P1_IP, 40006),
        (REMOTE_UNDERLAY_IP, 6443),
        SYN,
        1,
        0,
        b"",
    );
    let ip = egressed(&send(&mut pl, T0, &t, Peer::P1, &to_n2), NEXT_HOP_MAC);
    assert_eq!(tuple(&ip).src, UNDERLAY_IP);
    // An on-link host the kernel has not resolved: counted, not sent, and
    // named (once) for the engine to have the kernel resolve it.
    assert_eq!(pl.take_unresolved(), None);
    let to_unknown = udp_from(Peer::P1, (P1_IP, 40007), (UNRESOLVED, 9), b"x");
    let out = send(&mut pl, T0, &t, Peer::P1, &to_unknown);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::NeighbourUnresolved));
    assert_eq!(pl.take_unresolved(), Some(UNRESOLVED));
    assert_eq!(pl.take_unresolved(), None);
}

#[test]
fn the_service_cidr_and_the_cluster_never_egress() {
    let t = world(true, &[]);
    let mut pl = pipeline();
    // A ClusterIP nobody serves is unreachable, not sent to the router.
    let nobody = udp_from(
        Peer::P1,
        (P1_IP, 40008),
        (Ipv4Addr::new(10, 96, 0, 99), 80),
        b"x",
    );
    let out = send(&mut pl, T0, &t, Peer::P1, &nobody);
    assert_ne!(out.verdict, Verdict::Tx(UPLINK));
    // Nor is a pod address of a node that does not exist.
    let nowhere = udp_from(
        Peer::P1,
        (P1_IP, 40009),
        (Ipv4Addr::new(10, 244, 9, 9), 80),
        b"x",
    );
    let out = send(&mut pl, T0, &t, Peer::P1, &nowhere);
    assert_ne!(out.verdict, Verdict::Tx(UPLINK));
    assert_eq!(pl.counters().egress_flows, 0);
}

#[test]
fn egress_flows_expire_and_their_port_serves_again() {
    let t = world(true, &[]);
    let mut pl = pipeline();
    let q = udp_from(Peer::P1, (P1_IP, 40010), WWW, b"a");
    let first = tuple(&egressed(&send(&mut pl, T0, &t, Peer::P1, &q), ROUTER_MAC));
    // After the UDP timeout the entry is gone: a late reply is not ours.
    let late = T0 + 600 * SEC;
    let reply = from_router(&udp_datagram(WWW, (first.src, first.sport), 60, b"b"));
    let out = process_one(&mut pl, late, &t, UPLINK, &reply);
    assert_ne!(out.verdict, Verdict::Tx(P1_PORT));
    // And the pod's next datagram opens a new flow (same port: same hash).
    let again = tuple(&egressed(
        &send(&mut pl, late, &t, Peer::P1, &q),
        ROUTER_MAC,
    ));
    assert_eq!(again.sport, first.sport);
    assert_eq!(pl.counters().egress_flows, 2);
}

#[test]
fn with_two_workers_egress_flows_and_their_replies_meet_at_one_owner() {
    let t = world(true, &[]);
    let mut pls: Vec<Pipeline> = (0..2)
        .map(|i| {
            let mut pl = pipeline();
            pl.set_worker(i, 2);
            pl
        })
        .collect();
    for sport in 41000..41016u16 {
        let syn = tcp_from(Peer::P1, (P1_IP, sport), WWW, SYN, 1, 0, b"");
        // Whichever worker gets the SYN, exactly one keeps it.
        let outs: Vec<Out> = pls
            .iter_mut()
            .map(|pl| send(pl, T0, &t, Peer::P1, &syn))
            .collect();
        let owners: Vec<usize> = (0..2)
            .filter(|&i| !matches!(outs[i].verdict, Verdict::Handoff(_)))
            .collect();
        assert_eq!(owners.len(), 1, "one owner for port {sport}");
        let owner = owners[0];
        let Verdict::Handoff(w) = outs[1 - owner].verdict else {
            unreachable!()
        };
        assert_eq!(usize::from(w), owner);
        let ip = egressed(&outs[owner], ROUTER_MAC);
        let snat = (tuple(&ip).src, tuple(&ip).sport);
        // The reply names its owner by the SNAT port's class.
        let reply = from_router(&tcp_datagram(WWW, snat, 60, SYN | ACK, 5, 2, b""));
        let other = send(&mut pls[1 - owner], T0, &t, Peer::Client, &reply);
        assert_eq!(other.verdict, Verdict::Handoff(owner as u16));
        let got = to_p1(&send(&mut pls[owner], T0, &t, Peer::Client, &reply));
        assert_eq!(tuple(&got), key(TCP, WWW, (P1_IP, sport)));
    }
}

// ---------------------------------------------------------------------------
// Endpoints outside the pod network: the `kubernetes` service
// ---------------------------------------------------------------------------

/// `default/kubernetes`: ClusterIP 10.96.0.1:443 to the API server at
/// `apiserver`:6443 (a node's address).
const KUBERNETES: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 1), 443);

fn with_apiserver(apiserver: Ipv4Addr) -> Tables {
    use crate::services::{Backend, Frontend, FrontendKey};
    let mut t = world(true, &[]);
    let id = t.services.add_name("default/kubernetes");
    t.services.insert(Frontend::new(
        id,
        FrontendKey {
            addr: KUBERNETES.0,
            proto: TCP,
            port: KUBERNETES.1,
        },
        vec![Backend {
            ip: apiserver,
            port: 6443,
            ready: true,
            serving: true,
            local: apiserver == UNDERLAY_IP,
        }],
        None,
        false,
        false,
    ));
    t.services.finish();
    t
}

/// A frame from the node's kernel on the host port.
fn from_host(datagram: &[u8]) -> Vec<u8> {
    Peer::Host.frame(datagram)
}

#[test]
fn pods_reach_an_api_server_on_their_own_node_through_the_host() {
    let t = with_apiserver(UNDERLAY_IP);
    let mut pl = pipeline();
    let client = (P1_IP, 40100);
    let syn = tcp_from(Peer::P1, client, KUBERNETES, SYN, 1, 0, b"");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &syn));
    assert_eq!(d.port, HOST_PORT, "to the kernel, which owns the address");
    let api = (UNDERLAY_IP, 6443);
    assert_eq!(d.ip, natted(&syn[ETH..], None, Some(api), 1), "DNAT only");
    // The kernel answers from its underlay address through the host port.
    let synack = from_host(&tcp_datagram(api, client, 64, SYN | ACK, 9, 2, b""));
    let got = to_p1(&send(&mut pl, T0, &t, Peer::Host, &synack));
    assert_eq!(got, natted(&synack[ETH..], Some(KUBERNETES), None, 1));
    // Anything else from the host must still come from the gateway.
    let spoof = from_host(&tcp_datagram((P1_IP, 1), client, 64, SYN, 9, 2, b""));
    let out = send(&mut pl, T0, &t, Peer::Host, &spoof);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::SourceMismatch));
}

#[test]
fn pods_reach_an_api_server_on_another_node_masqueraded() {
    let t = with_apiserver(REMOTE_UNDERLAY_IP);
    let mut pl = pipeline();
    let client = (P1_IP, 40101);
    let api = (REMOTE_UNDERLAY_IP, 6443);
    let syn = tcp_from(Peer::P1, client, KUBERNETES, SYN, 1, 0, b"");
    let ip = egressed(&send(&mut pl, T0, &t, Peer::P1, &syn), NEXT_HOP_MAC);
    let k = tuple(&ip);
    assert_eq!((k.dst, k.dport), api);
    assert_eq!(
        k.src, UNDERLAY_IP,
        "the other node's kernel answers this node"
    );
    assert_snat_port(k.sport);
    assert_eq!(
        ip,
        natted(&syn[ETH..], Some((k.src, k.sport)), Some(api), 1)
    );
    let synack = from_router(&tcp_datagram(
        api,
        (k.src, k.sport),
        64,
        SYN | ACK,
        9,
        2,
        b"",
    ));
    let got = to_p1(&send(&mut pl, T0, &t, Peer::Client, &synack));
    assert_eq!(
        got,
        natted(&synack[ETH..], Some(KUBERNETES), Some(client), 1)
    );
}

#[test]
fn the_node_reaches_the_api_server_on_its_own_address_through_the_service() {
    let t = with_apiserver(UNDERLAY_IP);
    let mut pl = pipeline();
    // The kernel sends from the gateway address (its route to the service
    // CIDR is the host veth); its own address would answer it locally, so
    // the flow is SNATed to the frontend, which it routes back to us.
    let client = (GATEWAY, 50000);
    let api = (UNDERLAY_IP, 6443);
    let syn = from_host(&tcp_datagram(client, KUBERNETES, 64, SYN, 1, 0, b""));
    let d = delivered(&send(&mut pl, T0, &t, Peer::Host, &syn));
    assert_eq!(d.port, HOST_PORT);
    let k = tuple(&d.ip);
    assert_eq!((k.src, k.dst, k.dport), (KUBERNETES.0, api.0, api.1));
    assert_snat_port(k.sport);
    let synack = from_host(&tcp_datagram(
        api,
        (k.src, k.sport),
        64,
        SYN | ACK,
        9,
        2,
        b"",
    ));
    let d = delivered(&send(&mut pl, T0, &t, Peer::Host, &synack));
    assert_eq!(d.port, HOST_PORT);
    assert_eq!(
        d.ip,
        natted(&synack[ETH..], Some(KUBERNETES), Some(client), 1)
    );
}

#[test]
fn the_node_reaches_an_api_server_on_another_node_masqueraded() {
    let t = with_apiserver(REMOTE_UNDERLAY_IP);
    let mut pl = pipeline();
    let client = (GATEWAY, 50001);
    let api = (REMOTE_UNDERLAY_IP, 6443);
    let syn = from_host(&tcp_datagram(client, KUBERNETES, 64, SYN, 1, 0, b""));
    let ip = egressed(&send(&mut pl, T0, &t, Peer::Host, &syn), NEXT_HOP_MAC);
    let k = tuple(&ip);
    assert_eq!((k.src, k.dst, k.dport), (UNDERLAY_IP, api.0, api.1));
    // The answer comes back on the uplink and goes to the kernel.
    let synack = from_router(&tcp_datagram(
        api,
        (k.src, k.sport),
        64,
        SYN | ACK,
        9,
        2,
        b"",
    ));
    let d = delivered(&send(&mut pl, T0, &t, Peer::Client, &synack));
    assert_eq!((d.port, d.eth_dst), (HOST_PORT, HOST_PEER_MAC.0));
    assert_eq!(
        d.ip,
        natted(&synack[ETH..], Some(KUBERNETES), Some(client), 1)
    );
}
