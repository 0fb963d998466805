//! Every address a node serves (walk 4 beyond the underlay address): NodePorts
//! on the node's other NodePort addresses, external and LoadBalancer IPs
//! from outside and from pods, NodePorts from pods (this node's and
//! another's) and from the node itself, and internalTrafficPolicy Local.
//!
//! The fixture is `service_tests.rs`' n1 and `default/web`, plus the
//! frontends the engine adds for a second NodePort address of the node and
//! for an external IP (`build_services`). Outputs are checked from scratch
//! by the helpers there (`exchange`, `natted`, `delivered`).

use core::net::Ipv4Addr;

use super::egress_tests::{egressed, to_p1, world};
use super::service_tests::{
    assert_to, backend_of, delivered, entry, exchange, key, natted, pipeline, port_to, ready, send,
    svc_tables, tcp_datagram, tcp_from, tuple, udp_from, Peer, Svc, CLIENT_IP, FRONTEND, LOCAL_BE,
    NODE_FRONTEND, NODE_PORT, REMOTE_BE, SVC_PORT, TCP, UDP, WEB,
};
use super::tests::{
    total_drops, GATEWAY, NEXT_HOP_MAC, P1_IP, REMOTE_UNDERLAY_IP, T0, UNDERLAY_IP, UPLINK_MAC,
};
use super::*;
use crate::services::{Frontend, FrontendKey};
use crate::wire::tcp::flags::{ACK, PSH, SYN};

/// A second address of n1 inside its NodePort addresses.
const NODE_ADDR2: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 11);
/// An external IP of `default/web` the underlay routes to n1.
const EXT_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 80);
pub(super) const NODE2_FRONTEND: (Ipv4Addr, u16) = (NODE_ADDR2, NODE_PORT);
pub(super) const EXT_FRONTEND: (Ipv4Addr, u16) = (EXT_IP, SVC_PORT);
/// Every frontend an outside client may reach.
const OUTSIDE: [(Ipv4Addr, u16); 3] = [NODE_FRONTEND, NODE2_FRONTEND, EXT_FRONTEND];

/// `svc_tables(s)` plus NodePorts on `NODE_ADDR2` and the external IP, as
/// the engine builds them; with `itp_local` the ClusterIP frontends are
/// internalTrafficPolicy Local.
pub(super) fn addr_tables(s: &Svc, itp_local: bool) -> Tables {
    let mut t = svc_tables(s);
    for proto in [TCP, UDP] {
        let key = |(addr, port): (Ipv4Addr, u16)| FrontendKey { addr, proto, port };
        for (fe, node_port) in [(NODE2_FRONTEND, true), (EXT_FRONTEND, true)] {
            t.services.insert(Frontend::new(
                WEB as u32,
                key(fe),
                s.backends.clone(),
                s.affinity_ns,
                node_port,
                s.local_only,
            ));
        }
        if itp_local {
            t.services.insert(Frontend::new(
                WEB as u32,
                key(FRONTEND),
                s.backends.clone(),
                s.affinity_ns,
                false,
                true,
            ));
        }
    }
    t.services.finish();
    t.node_port_addrs = vec![UNDERLAY_IP, NODE_ADDR2];
    t
}

/// Seeds for the randomised tests: outside clients' TCP and UDP to the
/// second NodePort address and the external IP, and a pod's to the latter.
pub(super) fn address_seeds() -> Vec<(Peer, Vec<u8>)> {
    let mut seeds = Vec::new();
    for fe in [NODE2_FRONTEND, EXT_FRONTEND] {
        seeds.push((
            Peer::Client,
            tcp_from(Peer::Client, (CLIENT_IP, 50000), fe, SYN, 1, 0, b""),
        ));
        seeds.push((
            Peer::Client,
            udp_from(Peer::Client, (CLIENT_IP, 50001), fe, b"q"),
        ));
    }
    seeds.push((
        Peer::P1,
        tcp_from(Peer::P1, (P1_IP, 40000), EXT_FRONTEND, SYN, 1, 0, b""),
    ));
    seeds
}

pub(super) fn svc(backends: &[(Ipv4Addr, u16)], local_only: bool) -> Svc {
    let mut s = Svc::new(&backends.iter().map(|&b| ready(b)).collect::<Vec<_>>());
    s.local_only = local_only;
    s
}

#[test]
fn outside_clients_reach_every_node_port_address_and_external_ip() {
    // Cluster policy: SNAT to the gateway, any backend (both are hit).
    let t = addr_tables(&svc(&[LOCAL_BE, REMOTE_BE], false), false);
    let mut pl = pipeline();
    for (i, fe) in OUTSIDE.into_iter().enumerate() {
        for be in [LOCAL_BE, REMOTE_BE] {
            let sport = port_to(
                &t,
                Peer::Client,
                CLIENT_IP,
                fe,
                TCP,
                be,
                50000 + 2000 * i as u16,
            );
            let x = exchange(&mut pl, T0, &t, Peer::Client, (CLIENT_IP, sport), fe, true);
            assert_eq!(x.backend, be, "{fe:?}");
        }
    }
    // Local policy: this node's backend only, the client's address kept.
    let t = addr_tables(&svc(&[LOCAL_BE, REMOTE_BE], true), false);
    let mut pl = pipeline();
    for (i, fe) in OUTSIDE.into_iter().enumerate() {
        for sport in 0..8 {
            let csrc = (CLIENT_IP, 51000 + 100 * i as u16 + sport);
            let x = exchange(&mut pl, T0, &t, Peer::Client, csrc, fe, false);
            assert_eq!(x.backend, LOCAL_BE, "{fe:?}");
        }
    }
    assert_eq!(total_drops(pl.counters()), 0);
}

#[test]
fn uplink_traffic_to_a_served_address_on_no_service_port_is_not_ours() {
    let t = addr_tables(&svc(&[LOCAL_BE], false), false);
    let mut pl = pipeline();
    for dst in [
        (EXT_IP, NODE_PORT),
        (NODE_ADDR2, SVC_PORT),
        (Ipv4Addr::new(192, 0, 2, 81), SVC_PORT),
    ] {
        let f = tcp_from(Peer::Client, (CLIENT_IP, 50000), dst, SYN, 1, 0, b"");
        let out = send(&mut pl, T0, &t, Peer::Client, &f);
        assert_eq!(out.verdict, Verdict::Drop(DropReason::NotOurs), "{dst:?}");
    }
    assert!(pl.conntrack().is_empty());
}

#[test]
fn a_pod_reaches_its_own_nodes_node_ports_and_external_ips_without_snat() {
    let t = addr_tables(&svc(&[LOCAL_BE, REMOTE_BE], false), false);
    let mut pl = pipeline();
    for (i, fe) in OUTSIDE.into_iter().enumerate() {
        for be in [LOCAL_BE, REMOTE_BE] {
            let sport = port_to(&t, Peer::P1, P1_IP, fe, TCP, be, 40000 + 2000 * i as u16);
            let x = exchange(&mut pl, T0, &t, Peer::P1, (P1_IP, sport), fe, false);
            assert_eq!(x.backend, be, "{fe:?}");
        }
    }
    assert_eq!(total_drops(pl.counters()), 0);
}

#[test]
fn pods_reaching_an_outside_frontend_of_a_local_policy_get_every_endpoint() {
    // Only n2 has an endpoint: outside clients are dropped here, pods are
    // short-circuited to the cluster-wide endpoints, as kube-proxy does.
    let t = addr_tables(&svc(&[REMOTE_BE], true), false);
    let mut pl = pipeline();
    for (i, fe) in OUTSIDE.into_iter().enumerate() {
        let x = exchange(
            &mut pl,
            T0,
            &t,
            Peer::P1,
            (P1_IP, 40000 + i as u16),
            fe,
            false,
        );
        assert_eq!(x.backend, REMOTE_BE);
        let csrc = (CLIENT_IP, 50000 + i as u16);
        let syn = tcp_from(Peer::Client, csrc, fe, SYN, 0x1000, 0, b"");
        let out = send(&mut pl, T0, &t, Peer::Client, &syn);
        assert_eq!(out.verdict, Verdict::Drop(DropReason::NoLocalEndpoint));
    }
    let c = pl.counters();
    assert_eq!(c.drop_count(DropReason::NoLocalEndpoint), 3);
    assert_eq!((c.resets_sent, total_drops(c)), (0, 3));
}

#[test]
fn the_node_reaches_its_node_ports_from_its_own_addresses_snated_to_the_gateway() {
    // The kernel's `nat output` rule DNATs address:NodePort to the
    // ClusterIP; the source stays the address it was sent to (the underlay
    // one, or a second NodePort address). Replies must come back through
    // the host port, so the flow is SNATed to the gateway.
    let t = addr_tables(&svc(&[LOCAL_BE, REMOTE_BE], false), false);
    let mut pl = pipeline();
    for (i, src) in [UNDERLAY_IP, NODE_ADDR2].into_iter().enumerate() {
        for be in [LOCAL_BE, REMOTE_BE] {
            let from = 45000 + 1000 * i as u16;
            let sport = port_to(&t, Peer::Host, src, FRONTEND, TCP, be, from);
            let x = exchange(&mut pl, T0, &t, Peer::Host, (src, sport), FRONTEND, true);
            assert_eq!(x.backend, be, "from {src}");
        }
    }
    assert_eq!(total_drops(pl.counters()), 0);
    // An address of the node that is no NodePort address is a spoof.
    let mut t = t;
    t.node_port_addrs = vec![UNDERLAY_IP];
    let f = tcp_from(Peer::Host, (NODE_ADDR2, 45999), FRONTEND, SYN, 1, 0, b"");
    let out = send(&mut pl, T0, &t, Peer::Host, &f);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::SourceMismatch));
}

#[test]
fn a_pod_reaches_its_nodes_other_addresses_through_the_host_port() {
    // A hostNetwork server on the second address: the node's, not the
    // uplink's (nor a masqueraded egress destination).
    let t = addr_tables(&svc(&[LOCAL_BE], false), false);
    let mut pl = pipeline();
    let f = tcp_from(Peer::P1, (P1_IP, 40000), (NODE_ADDR2, 22), SYN, 1, 0, b"");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
    assert_to(&d, Peer::Host);
    assert_eq!(tuple(&d.ip), key(TCP, (P1_IP, 40000), (NODE_ADDR2, 22)));
    assert!(pl.conntrack().is_empty());
}

#[test]
fn a_pod_reaches_another_nodes_node_port_masqueraded_to_this_nodes_address() {
    // n2's NodePort is no frontend here: the pod's flow leaves the uplink
    // to n2 (on-link) as this node's, and n2 serves it as an outside client.
    let t = world(true, &[]);
    let mut pl = pipeline();
    let client = (P1_IP, 40000);
    let n2 = (REMOTE_UNDERLAY_IP, NODE_PORT);
    let syn = tcp_from(Peer::P1, client, n2, SYN, 0x1000, 0, b"");
    let ip = egressed(&send(&mut pl, T0, &t, Peer::P1, &syn), NEXT_HOP_MAC);
    let seen = tuple(&ip);
    assert_eq!(seen.src, UNDERLAY_IP, "n2 sees n1's address");
    let snat = (UNDERLAY_IP, seen.sport);
    assert!((SNAT_PORTS.0..=SNAT_PORTS.1).contains(&snat.1));
    assert_eq!(ip, natted(&syn[ETH..], Some(snat), None, 1));
    // n2 answers from its NodePort, on the uplink, not encapsulated.
    for (i, flags) in [SYN | ACK, PSH | ACK].into_iter().enumerate() {
        let mut reply = Vec::new();
        reply.extend_from_slice(&UPLINK_MAC.0);
        reply.extend_from_slice(&NEXT_HOP_MAC.0);
        reply.extend_from_slice(&ethernet::ethertype::IPV4.to_be_bytes());
        reply.extend_from_slice(&tcp_datagram(
            n2,
            snat,
            64,
            flags,
            7 + i as u32,
            0x1001,
            b"ok",
        ));
        let got = to_p1(&send(&mut pl, T0, &t, Peer::Client, &reply));
        assert_eq!(got, natted(&reply[ETH..], None, Some(client), 1));
    }
    assert_eq!(
        entry(&pl, key(TCP, client, n2)).unwrap().reply,
        key(TCP, n2, snat)
    );
}

#[test]
fn internal_traffic_policy_local_keeps_cluster_ip_flows_on_this_node() {
    let t = addr_tables(&svc(&[LOCAL_BE, REMOTE_BE], false), true);
    let mut pl = pipeline();
    for sport in 0..32 {
        let f = tcp_from(Peer::P1, (P1_IP, 40000 + sport), FRONTEND, SYN, 1, 0, b"");
        assert_eq!(backend_of(&send(&mut pl, T0, &t, Peer::P1, &f)), LOCAL_BE);
        let f = tcp_from(
            Peer::Host,
            (GATEWAY, 41000 + sport),
            FRONTEND,
            SYN,
            1,
            0,
            b"",
        );
        assert_eq!(backend_of(&send(&mut pl, T0, &t, Peer::Host, &f)), LOCAL_BE);
    }
    // Outside frontends keep their own (Cluster) policy.
    let sport = port_to(
        &t,
        Peer::Client,
        CLIENT_IP,
        NODE_FRONTEND,
        TCP,
        REMOTE_BE,
        50000,
    );
    let x = exchange(
        &mut pl,
        T0,
        &t,
        Peer::Client,
        (CLIENT_IP, sport),
        NODE_FRONTEND,
        true,
    );
    assert_eq!(x.backend, REMOTE_BE);

    // No local endpoint: dropped and counted, neither reset nor unreachable.
    let t = addr_tables(&svc(&[REMOTE_BE], false), true);
    let mut pl = pipeline();
    let tcp = tcp_from(Peer::P1, (P1_IP, 40000), FRONTEND, SYN, 1, 0, b"");
    let udp = udp_from(Peer::P1, (P1_IP, 40001), FRONTEND, b"dns?");
    for f in [tcp, udp] {
        let out = send(&mut pl, T0, &t, Peer::P1, &f);
        assert_eq!(out.verdict, Verdict::Drop(DropReason::NoLocalEndpoint));
    }
    let c = pl.counters();
    assert_eq!(c.drop_count(DropReason::NoLocalEndpoint), 2);
    assert_eq!((c.resets_sent, c.icmp_errors_sent), (0, 0));
    assert_eq!(pl.service_counters()[WEB].no_endpoint, 2);
    assert!(pl.conntrack().is_empty());
}
