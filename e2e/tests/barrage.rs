//! Hostile input all at once (issue 14): while a byte-checked stream runs
//! between pods on different nodes and established service flows (a
//! ClusterIP from a pod, a NodePort from outside) keep echoing, the
//! underlay sends spoofed VXLAN (from an unknown host, and forged as n2
//! carrying a pod of n1), a pod floods a ClusterIP with SYNs (from its own
//! address and spoofed ones), an outside client floods a NodePort with SYNs
//! from thousands of addresses, and malformed frames come from a pod, from
//! outside and inside n2's VXLAN. Nothing established is disturbed (no
//! reset, no stall), every refused frame is counted under its reason (or as
//! lost in the kernel's rings, counted too), and both dataplanes still take
//! new flows afterwards.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use kxdp_e2e::{
    fix_ipv4_checksum, flood, id_server, malformed_pod_frames, neighbour_mac, open_flow,
    require_root, stream_for, tcp_syn_frame, udp_frame, vxlan_payload, wait_until, Counters, Lab,
    LabOpts, Pinger,
};
use serde_json::json;

const TARGET: u16 = 9000;
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 90);
const NODE_PORT: u16 = 30090;
/// Established flows of each kind kept pinging through the barrage.
const FLOWS: usize = 8;
/// Upper bound of every flood, in seconds (each is bounded in frames too).
const FLOOD_SECS: u64 = 8;

/// A VXLAN frame from `src` to n1's VTEP, outer UDP checksum none.
fn vxlan_frame(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    n1: &kxdp_e2e::NodePlan,
    inner: &[u8],
) -> Vec<u8> {
    let mut f = udp_frame(
        macs.0,
        macs.1,
        src,
        n1.underlay_ip,
        (49152, n1.vxlan_port),
        &vxlan_payload(n1.vni, inner),
    );
    f[40..42].fill(0);
    fix_ipv4_checksum(&mut f);
    f
}

/// The MAC `ns` has resolved for `ip` on `dev`, waiting up to 5 s.
#[track_caller]
fn mac_of(ns: &str, ip: Ipv4Addr, dev: &str) -> [u8; 6] {
    let mut mac = None;
    wait_until(Duration::from_secs(5), || {
        mac = neighbour_mac(ns, ip, dev);
        mac.is_some()
    });
    mac.unwrap_or_else(|| panic!("{ns} has not resolved {ip} on {dev}"))
}

/// What a node counted during the barrage: drops by reason, and the frames
/// its kernel rings lost before the dataplane saw them.
fn grown(lab: &Lab, node: &str, before: &Counters) -> (BTreeMap<String, u64>, u64) {
    let grew = lab.counters(node).drops_since(before);
    let lost = grew
        .iter()
        .filter(|(r, _)| r.starts_with("xsk_"))
        .map(|(_, n)| n)
        .sum();
    eprintln!("{node}: drops during the barrage {grew:?}");
    (grew, lost)
}

#[track_caller]
fn assert_counted(node: &str, grew: &BTreeMap<String, u64>, lost: u64, reason: &str, sent: u64) {
    let got = grew.get(reason).copied().unwrap_or(0);
    assert!(got > 0, "{node}: nothing counted as {reason} ({sent} sent)");
    assert!(
        got + lost >= sent,
        "{node}: {reason} {got} + {lost} lost in the rings < {sent} sent"
    );
}

#[test]
fn a_barrage_of_hostile_traffic_disturbs_no_established_flow() {
    require_root!();
    let started = Instant::now();
    let lab = Lab::up(LabOpts::default());
    let (n1, n2) = (lab.node("n1").clone(), lab.node("n2").clone());
    let backends = ["n1-p1", "n2-p1"];
    let _servers: Vec<_> = backends
        .iter()
        .chain(["n2-p2"].iter())
        .map(|p| id_server(&lab.ns(p), lab.pod(p).ip, TARGET, p))
        .collect();
    lab.service_apply(&json!({
        "name": "test/barrage",
        "cluster_ip": CLUSTER_IP.to_string(),
        "ports": [{ "name": "tcp", "protocol": "TCP", "port": 80, "target_port": TARGET, "node_port": NODE_PORT }],
        "endpoints": backends.iter().map(|p| json!({ "ip": lab.pod(p).ip.to_string() })).collect::<Vec<_>>(),
    }));

    // Established flows: a pod to the ClusterIP, the outside to a NodePort.
    let cluster_ip = SocketAddr::from((CLUSTER_IP, 80));
    let node_port = SocketAddr::from((n1.underlay_ip, NODE_PORT));
    let mut pingers = Vec::new();
    for (client, to) in [("n2-p2", cluster_ip), ("ext", node_port)] {
        for i in 0..FLOWS {
            let flow = open_flow(&lab.ns(client), to, &format!("{client}-{i}"))
                .unwrap_or_else(|e| panic!("{client} -> {to}: {e}"));
            pingers.push((
                format!("{client} -> {to} #{i}"),
                Pinger::start(flow, Duration::from_millis(250), Duration::from_secs(120)),
            ));
        }
    }
    // The byte-checked stream: pod to pod across the nodes, through VXLAN.
    let stream = {
        let flow = open_flow(
            &lab.ns("n1-p2"),
            SocketAddr::from((lab.pod("n2-p2").ip, TARGET)),
            "stream",
        )
        .expect("n1-p2 -> n2-p2");
        thread::spawn(move || {
            stream_for(
                flow.stream,
                Duration::from_secs(FLOOD_SECS + 4),
                4 << 20,
                0xba77a6e,
            )
        })
    };

    // MACs the forged frames need: traffic between the two frames' pods
    // makes the pods resolve their gateways and the nodes each other.
    kxdp_e2e::check_tcp(&lab, "n1-p1", "n2-p1", 5201, 4096);
    let (ext, n2_ns, pod) = (lab.ns("ext"), lab.ns("n2"), lab.pod("n1-p1").clone());
    let n1_mac = mac_of(&ext, n1.underlay_ip, "eth0");
    let n1_from_n2 = mac_of(&n2_ns, n1.underlay_ip, &n2.uplink);
    let gw_mac = mac_of(&lab.ns("n1-p1"), pod.gateway, "eth0");
    let stranger = [0x02, 0x6b, 0x78, 0x62, 0x61, 0x72];

    // (a) Spoofed VXLAN from the underlay: from the outside host's own
    // address (no node's VTEP), and forged as n2 carrying a pod of n1.
    let inner = |src: Ipv4Addr| {
        udp_frame(
            n2.vtep_mac,
            n1.vtep_mac,
            src,
            lab.pod("n1-p2").ip,
            (40000, 9),
            b"spoofed",
        )
    };
    let unknown_vtep = vxlan_frame((stranger, n1_mac), lab.ext_ip(), &n1, &inner(pod.ip));
    let forged = vxlan_frame((stranger, n1_mac), n2.underlay_ip, &n1, &inner(pod.ip));
    // (b) A pod's SYNs to the ClusterIP: spoofed sources, and its own.
    let spoofed_syns: Vec<Vec<u8>> = (0..256u16)
        .map(|i| {
            let src = Ipv4Addr::new(10, 244, 1, 100 + (i % 100) as u8);
            tcp_syn_frame(pod.mac, gw_mac, (src, 20000 + i), (CLUSTER_IP, 80))
        })
        .collect();
    let own_syns: Vec<Vec<u8>> = (0..2000u16)
        .map(|i| tcp_syn_frame(pod.mac, gw_mac, (pod.ip, 30000 + i), (CLUSTER_IP, 80)))
        .collect();
    // (c) The outside's SYNs to the NodePort from 4,096 addresses.
    let outside_syns: Vec<Vec<u8>> = (0..4096u16)
        .map(|i| {
            let src = Ipv4Addr::new(198, 18, (i >> 8) as u8, (i & 0xff) as u8);
            tcp_syn_frame(
                stranger,
                n1_mac,
                (src, 40000 + i),
                (n1.underlay_ip, NODE_PORT),
            )
        })
        .collect();
    // (d) Malformed: from a pod of n2, and inside n2's own VXLAN.
    let p = lab.pod("n2-p1").clone();
    let n2_gw = mac_of(&lab.ns("n2-p1"), p.gateway, "eth0");
    let bad = malformed_pod_frames(p.mac, n2_gw, p.ip, lab.pod("n1-p1").ip, lab.pod("n2-p2").ip);
    let truncated = inner(lab.pod("n2-p1").ip)[..14 + 10].to_vec();
    let bad_inside = vxlan_frame((stranger, n1_from_n2), n2.underlay_ip, &n1, &truncated);

    let (b1, b2) = (lab.counters("n1"), lab.counters("n2"));
    const COPIES: usize = 2000;
    let (p1_ns, n2p1_ns) = (lab.ns("n1-p1"), lab.ns("n2-p1"));
    let vxlan_frames = [unknown_vtep, forged];
    let bad_frames: Vec<Vec<u8>> = bad.iter().map(|(_, f)| f.clone()).collect();
    let bad_inside = [bad_inside];
    let sent = thread::scope(|s| {
        [
            s.spawn(|| flood(&ext, "eth0", &vxlan_frames, COPIES, FLOOD_SECS)),
            s.spawn(|| flood(&p1_ns, "eth0", &spoofed_syns, 20, FLOOD_SECS)),
            s.spawn(|| flood(&p1_ns, "eth0", &own_syns, 2, FLOOD_SECS)),
            s.spawn(|| flood(&ext, "eth0", &outside_syns, 2, FLOOD_SECS)),
            s.spawn(|| flood(&n2p1_ns, "eth0", &bad_frames, 200, FLOOD_SECS)),
            s.spawn(|| flood(&n2_ns, &n2.uplink, &bad_inside, COPIES, FLOOD_SECS)),
        ]
        .map(|h| h.join().expect("flood thread") as u64)
    });
    let [vxlan_sent, spoofed_sent, own_sent, outside_sent, bad_sent, bad_inside_sent] = sent;
    eprintln!(
        "sent: {vxlan_sent} spoofed VXLAN, {spoofed_sent} spoofed and {own_sent} own SYNs from \
         a pod, {outside_sent} outside SYNs, {bad_sent} malformed from a pod, \
         {bad_inside_sent} malformed in VXLAN, in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Nothing established was disturbed.
    let streamed = stream
        .join()
        .expect("stream thread")
        .expect("the byte-checked stream across the nodes");
    eprintln!("stream n1-p2 -> n2-p2: {streamed} bytes echoed intact");
    for (what, p) in pingers {
        let r = p.finish();
        assert!(r.error.is_none(), "{what}: {:?}", r.error);
        assert!(r.ok > 4, "{what}: only {} pings", r.ok);
    }

    // Every refused frame counted under its reason (or lost in a ring).
    let (g1, lost1) = grown(&lab, "n1", &b1);
    let (g2, lost2) = grown(&lab, "n2", &b2);
    assert_counted("n1", &g1, lost1, "vxlan_unknown_vtep", vxlan_sent / 2);
    assert_counted("n1", &g1, lost1, "vxlan_spoofed_source", vxlan_sent / 2);
    assert_counted("n1", &g1, lost1, "source_mismatch", spoofed_sent);
    assert_counted("n1", &g1, lost1, "ipv4_truncated", bad_inside_sent);
    let copies = bad_sent / bad.len() as u64;
    let mut per_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for (reason, _) in &bad {
        *per_reason.entry(reason).or_default() += copies;
    }
    for (reason, n) in per_reason {
        assert_counted("n2", &g2, lost2, reason, n);
    }
    let new_flows = lab.counters("n1").service_get("test/barrage", "new_flows");
    eprintln!("test/barrage new flows on n1 (SYN floods included): {new_flows}");

    // Both dataplanes alive and taking new flows.
    assert!(lab.dataplane_alive("n1") && lab.dataplane_alive("n2"));
    for (client, to) in [("n2-p2", cluster_ip), ("ext", node_port)] {
        open_flow(&lab.ns(client), to, "after")
            .unwrap_or_else(|e| panic!("{client} -> {to} after the barrage: {e}"));
    }
    eprintln!("test took {:.1}s", started.elapsed().as_secs_f64());
}

/// SNAT exhaustion (issue 14): an outside SYN flood from 65,536 addresses
/// at a NodePort (Cluster policy, one backend: 4,536 SNAT ports towards it)
/// takes every port with entries that never confirm. New connections from
/// a real client, made while the flood goes on, still get through: a new
/// flow that finds its ports taken reclaims one held unconfirmed for a
/// second (`snat_ports_reclaimed`), and the exhaustion is counted
/// (`nat_ports_exhausted`).
#[test]
fn new_node_port_connections_get_through_a_syn_flood_that_fills_the_snat_ports() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let n1 = lab.node("n1").clone();
    let _server = id_server(&lab.ns("n2-p1"), lab.pod("n2-p1").ip, TARGET, "n2-p1");
    lab.service_apply(&json!({
        "name": "test/snat",
        "cluster_ip": "10.96.0.91",
        "ports": [{ "name": "tcp", "protocol": "TCP", "port": 80, "target_port": TARGET, "node_port": NODE_PORT + 1 }],
        "endpoints": [{ "ip": lab.pod("n2-p1").ip.to_string() }],
    }));
    let node_port = SocketAddr::from((n1.underlay_ip, NODE_PORT + 1));
    let ext = lab.ns("ext");
    open_flow(&ext, node_port, "before").expect("ext -> NodePort before the flood");
    let n1_mac = mac_of(&ext, n1.underlay_ip, "eth0");
    let stranger = [0x02, 0x6b, 0x78, 0x73, 0x6e, 0x74];
    let syns: Vec<Vec<u8>> = (0..65536u32)
        .map(|i| {
            let src = Ipv4Addr::from(0xc612_0000 + i); // 198.18.0.0/15
            tcp_syn_frame(
                stranger,
                n1_mac,
                (src, 40000),
                (n1.underlay_ip, NODE_PORT + 1),
            )
        })
        .collect();
    let before = lab.counters("n1");
    let (flooded, connected) = thread::scope(|s| {
        let flood = s.spawn(|| flood(&ext, "eth0", &syns, 3, FLOOD_SECS));
        // Let the flood fill the ports and its entries age past a second.
        thread::sleep(Duration::from_millis(1500));
        let started = Instant::now();
        let connected: Vec<Result<(), String>> = (0..10)
            .map(|i| open_flow(&ext, node_port, &format!("during-{i}")).map(|_| ()))
            .collect();
        let took = started.elapsed();
        (flood.join().expect("flood thread"), (connected, took))
    });
    let (results, took) = connected;
    let after = lab.counters("n1");
    let grew = after.drops_since(&before);
    let reclaimed = after.get("snat_ports_reclaimed") - before.get("snat_ports_reclaimed");
    eprintln!(
        "{flooded} flood SYNs; 10 connections in {:.2}s: {results:?}; drops {grew:?}; \
         {reclaimed} ports reclaimed",
        took.as_secs_f64()
    );
    assert!(
        grew.get("nat_ports_exhausted").copied().unwrap_or(0) > 0,
        "the flood never filled the ports: {grew:?}"
    );
    for (i, r) in results.iter().enumerate() {
        assert!(r.is_ok(), "connection {i} during the flood: {r:?}");
    }
    assert!(reclaimed > 0, "no port was reclaimed");
}
