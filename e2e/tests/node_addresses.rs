//! Every address a node serves (issue 12, item 3), on the namespace lab:
//! NodePorts from pods (their own node's and the other node's) and from the
//! node itself (the dataplane's nftables `nat output` DNAT), an external IP
//! that the outside (`ext`) routes to n2, and an externalTrafficPolicy Local
//! service's health check port (200 where a local endpoint is, 503
//! elsewhere, as kube-proxy answers cloud load balancers).
//!
//! Every backend runs an identity server, so each connection's backend and
//! the client address it saw are checked from the client.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use kxdp_e2e::{
    check, hellos, id_server, ns_exec, require_root, ClusterFile, Hello, IdServer, Lab, LabOpts,
};
use serde_json::{json, Value};

/// The identity servers' port on the pods.
const TARGET: u16 = 9000;
/// Connections per client and frontend.
const N: usize = 20;

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

fn servers(lab: &Lab, pods: &[&str]) -> Vec<IdServer> {
    pods.iter()
        .map(|p| id_server(&lab.ns(p), lab.pod(p).ip, TARGET, p))
        .collect()
}

fn ep(lab: &Lab, pod: &str) -> Value {
    json!({ "ip": lab.pod(pod).ip.to_string() })
}

/// `N` connections from `ns` to `to`, every one answered by one of
/// `backends` and seen from `seen` (the client address the backend saw).
#[track_caller]
fn all_answered(what: &str, ns: &str, to: SocketAddr, backends: &[&str], seen: Ipv4Addr) {
    let results = hellos(ns, to, N, what, Duration::from_secs(60));
    let answered: Vec<Hello> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{what}: {e}")))
        .collect();
    assert_eq!(answered.len(), N, "{what}: ran out of time");
    for h in &answered {
        assert!(
            backends.contains(&h.backend.as_str()),
            "{what}: answered by {}, not one of {backends:?}",
            h.backend
        );
        assert_eq!(h.seen_as.ip(), seen, "{what}: the backend saw {h:?}");
    }
    eprintln!("{what}: {N} connections answered, seen as {seen}");
}

#[test]
fn node_ports_from_pods_to_both_nodes_and_from_the_node_itself() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let pods = ["n1-p1", "n2-p1"];
    let _servers = servers(&lab, &pods);
    lab.service_apply(&json!({
        "name": "test/np",
        "cluster_ip": "10.96.0.70",
        "ports": [{ "name": "tcp", "protocol": "TCP", "port": 80, "target_port": TARGET, "node_port": 30070 }],
        "endpoints": [ep(&lab, "n1-p1"), ep(&lab, "n2-p1")],
    }));
    let (n1, n2) = (lab.node("n1").clone(), lab.node("n2").clone());
    for (client, node, seen) in [
        // A pod to its own node's NodePort: DNAT only, the backend sees the
        // pod.
        ("n1-p2", &n1, lab.pod("n1-p2").ip),
        // To the other node's: masqueraded to n1's address, n2 serves it
        // as an outside client (Cluster policy: SNAT to n2's gateway).
        ("n1-p2", &n2, n2.gateway),
        // The node itself: its kernel DNATs to the ClusterIP (table ip
        // kxdp), kxdp SNATs to the gateway so the answers come back the
        // same way.
        ("n1", &n1, n1.gateway),
    ] {
        let what = format!("{client} -> {} NodePort", node.name);
        all_answered(
            &what,
            &lab.ns(client),
            sa(node.underlay_ip, 30070),
            &pods,
            seen,
        );
    }
    let table = check(
        "nft list table ip kxdp",
        ns_exec(&lab.ns("n1"), 10, "nft", &["list", "table", "ip", "kxdp"]),
    );
    assert!(
        table.contains(&format!(
            "{} . tcp . 30070 : 10.96.0.70 . 80",
            n1.underlay_ip
        )),
        "{table}"
    );
    // Gone with the service.
    lab.service_del("test/np");
    let table = check(
        "nft list tables",
        ns_exec(&lab.ns("n1"), 10, "nft", &["list", "tables"]),
    );
    assert!(!table.contains("kxdp"), "{table}");
}

/// kube-proxy's `--nodeport-addresses`: with the underlay network listed,
/// a second address that n1 gains at run time serves the NodePort to an
/// outside client, to pods of both nodes and to n1 itself (whose kernel
/// sends from that address through the host port).
#[test]
fn node_ports_on_a_second_node_address_answer_everyone() {
    require_root!();
    let file = ClusterFile::lab_with("  node_port_addresses: [172.30.0.0/24]");
    let lab = Lab::up(LabOpts {
        cluster: Some(file.path()),
        ..LabOpts::default()
    });
    let pods = ["n1-p1", "n2-p1"];
    let _servers = servers(&lab, &pods);
    lab.service_apply(&json!({
        "name": "test/np2",
        "cluster_ip": "10.96.0.72",
        "ports": [{ "name": "tcp", "protocol": "TCP", "port": 80, "target_port": TARGET, "node_port": 30072 }],
        "endpoints": [ep(&lab, "n1-p1"), ep(&lab, "n2-p1")],
    }));
    let n1 = lab.node("n1").clone();
    let second: Ipv4Addr = "172.30.0.111".parse().unwrap();
    check(
        "n1: ip addr add 172.30.0.111/24",
        ns_exec(
            &lab.ns("n1"),
            10,
            "ip",
            &["addr", "add", "172.30.0.111/24", "dev", &n1.uplink],
        ),
    );
    // The engine notices the address (its tick) and DNATs it for the kernel.
    let rule = format!("{second} . tcp . 30072 : 10.96.0.72 . 80");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let table = check(
            "nft list table ip kxdp",
            ns_exec(&lab.ns("n1"), 10, "nft", &["list", "table", "ip", "kxdp"]),
        );
        if table.contains(&rule) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no DNAT of the second address after 10 s: {table}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let before = lab.counters("n1");
    for (client, seen) in [
        // From outside (Cluster policy): SNAT to n1's gateway.
        ("ext", n1.gateway),
        // A pod of n1: its own node's NodePort, DNAT only.
        ("n1-p2", lab.pod("n1-p2").ip),
        // A pod of n2: masqueraded to n2's address, then an outside client
        // of n1.
        ("n2-p2", n1.gateway),
        // n1 itself, from its second address: SNAT to the gateway.
        ("n1", n1.gateway),
    ] {
        let what = format!("{client} -> n1's second address NodePort");
        all_answered(&what, &lab.ns(client), sa(second, 30072), &pods, seen);
    }
    let drops = lab.counters("n1").drops_since(&before);
    assert!(
        !drops.contains_key("source_mismatch"),
        "n1 dropped the node's own packets: {drops:?}"
    );
}

/// A host route in `ns` to `dst` via `gateway`.
fn route(ns: &str, dst: Ipv4Addr, gateway: Ipv4Addr) {
    let (dst, gw) = (format!("{dst}/32"), gateway.to_string());
    check(
        &format!("{ns}: ip route add {dst} via {gw}"),
        ns_exec(ns, 10, "ip", &["route", "add", &dst, "via", &gw]),
    );
}

#[test]
fn an_external_ip_routed_by_ext_to_n2_reaches_the_service() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let pods = ["n1-p1", "n2-p2"];
    let _servers = servers(&lab, &pods);
    let ext_ip: Ipv4Addr = "198.51.100.80".parse().unwrap();
    lab.service_apply(&json!({
        "name": "test/ext",
        "cluster_ip": "10.96.0.71",
        "ports": [{ "name": "tcp", "protocol": "TCP", "port": 80, "target_port": TARGET }],
        "external_ips": [ext_ip.to_string()],
        "endpoints": [ep(&lab, "n1-p1"), ep(&lab, "n2-p2")],
    }));
    let (n1, n2) = (lab.node("n1").clone(), lab.node("n2").clone());
    // The outside routes the external IP to n2: no ARP for it anywhere.
    route(&lab.ns("ext"), ext_ip, n2.underlay_ip);
    // n1 needs a route to the address to pick a source, as a node's default
    // route gives it.
    route(&lab.ns("n1"), ext_ip, n2.underlay_ip);
    for (client, seen) in [
        // Cluster policy: SNAT to the gateway of n2, where it entered.
        ("ext", n2.gateway),
        // Pods get the service at its external IP too (kube-proxy's
        // short-cut), with their own address.
        ("n1-p2", lab.pod("n1-p2").ip),
        // So does the node itself, through its nftables DNAT and the host
        // port.
        ("n1", n1.gateway),
    ] {
        let what = format!("{client} -> external IP");
        all_answered(&what, &lab.ns(client), sa(ext_ip, 80), &pods, seen);
    }
}

/// `curl` from `ns` to `http://ip:port/healthz`: (status, body).
fn curl(ns: &str, ip: Ipv4Addr, port: u16) -> (u16, Value) {
    let url = format!("http://{ip}:{port}/healthz");
    let out = check(
        &format!("curl {url}"),
        ns_exec(
            ns,
            15,
            "curl",
            &["-sS", "-m", "5", "-w", "\\n%{http_code}", &url],
        ),
    );
    let (body, code) = out.trim_end().rsplit_once('\n').expect("body and status");
    (
        code.parse().expect("status code"),
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{url}: {body:?}: {e}")),
    )
}

#[test]
fn local_policy_health_check_is_200_where_a_local_endpoint_is_and_503_elsewhere() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let _servers = servers(&lab, &["n1-p1"]);
    lab.service_apply(&json!({
        "name": "test/lb",
        "cluster_ip": "10.96.0.72",
        "ports": [{ "name": "tcp", "protocol": "TCP", "port": 80, "target_port": TARGET, "node_port": 30072 }],
        "external_traffic_policy": "Local",
        "health_check_node_port": 32072,
        "endpoints": [ep(&lab, "n1-p1")],
    }));
    let ext = lab.ns("ext");
    let (n1, n2) = (lab.node("n1").clone(), lab.node("n2").clone());
    for (node, status, local) in [(&n1, 200, 1), (&n2, 503, 0)] {
        let (code, body) = curl(&ext, node.underlay_ip, 32072);
        eprintln!("{} health check: {code} {body}", node.name);
        assert_eq!(code, status, "{}: {body}", node.name);
        assert_eq!(body["service"]["namespace"], "test");
        assert_eq!(body["service"]["name"], "lb");
        assert_eq!(body["localEndpoints"], local);
    }
    // The NodePort itself keeps the client's address where it is served.
    all_answered(
        "ext -> n1 NodePort (Local)",
        &ext,
        sa(n1.underlay_ip, 30072),
        &["n1-p1"],
        lab.ext_ip(),
    );
    // The endpoint moves to n2: the answers follow.
    let _more = servers(&lab, &["n2-p1"]);
    lab.service_apply(&json!({
        "name": "test/lb",
        "cluster_ip": "10.96.0.72",
        "ports": [{ "name": "tcp", "protocol": "TCP", "port": 80, "target_port": TARGET, "node_port": 30072 }],
        "external_traffic_policy": "Local",
        "health_check_node_port": 32072,
        "endpoints": [ep(&lab, "n2-p1")],
    }));
    assert_eq!(curl(&ext, n1.underlay_ip, 32072).0, 503);
    assert_eq!(curl(&ext, n2.underlay_ip, 32072).0, 200);
}
