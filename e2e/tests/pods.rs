//! Pod-to-pod traffic through kxdp: routed on one node, VXLAN between nodes.

use kxdp_e2e::{
    check, check_tcp, check_udp, check_underlay_vxlan, ns_exec, require_root, Lab, LabOpts,
};

#[test]
fn same_node_tcp_and_udp() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let before = lab.counters("n1");
    check_tcp(&lab, "n1-p1", "n1-p2", 5001, 20 << 20);
    check_tcp(&lab, "n1-p2", "n1-p1", 5002, 20 << 20);
    check_udp(&lab, "n1-p1", "n1-p2", 6001, 1000);
    check_udp(&lab, "n1-p2", "n1-p1", 6002, 1000);
    let after = lab.counters("n1");
    assert!(
        after.get("routed_local") > before.get("routed_local"),
        "routed_local did not grow: {:?}",
        after.0
    );
    assert!(lab.dataplane_alive("n1"));
}

#[test]
fn cross_node_tcp_and_udp() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let (b1, b2) = (lab.counters("n1"), lab.counters("n2"));
    check_tcp(&lab, "n1-p1", "n2-p1", 5001, 20 << 20);
    check_tcp(&lab, "n2-p2", "n1-p2", 5002, 20 << 20);
    check_udp(&lab, "n1-p1", "n2-p1", 6001, 1000);
    check_udp(&lab, "n2-p2", "n1-p1", 6002, 1000);
    let (a1, a2) = (lab.counters("n1"), lab.counters("n2"));
    for (node, b, a) in [("n1", &b1, &a1), ("n2", &b2, &a2)] {
        for key in ["encapsulated", "decapsulated"] {
            assert!(
                a.get(key) > b.get(key),
                "{node}: {key} did not grow: {:?}",
                a.0
            );
        }
        // Established flows skip the walk: nearly every one of these
        // packets (all but SYNs, FINs and each direction's first) is a hit.
        let walked = a.get("encapsulated") + a.get("decapsulated")
            - b.get("encapsulated")
            - b.get("decapsulated");
        let hits = a.get("flow_cache_hits") - b.get("flow_cache_hits");
        assert!(
            hits * 10 >= walked * 9,
            "{node}: {hits} flow cache hits of {walked} packets"
        );
        eprintln!(
            "{node}: {hits} flow cache hits of {walked} packets, drops {:?}",
            a.drops_since(b)
        );
    }
}

#[test]
fn underlay_carries_vxlan_with_the_vni() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    check_underlay_vxlan(&lab, "n1-p1", "n2-p1", 5001);
}

/// Pods with TX checksum offload on (a stack's default; the lab turns it
/// off): their TCP and UDP leave with partial checksums, which kxdp must
/// finish, since nothing after an AF_XDP socket would.
#[test]
fn tcp_and_udp_with_tx_checksum_offload_on_in_the_pods() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    for pod in ["n1-p1", "n1-p2", "n2-p1"] {
        let ns = lab.ns(pod);
        check(
            &format!("ethtool -K eth0 tx on in {ns}"),
            ns_exec(&ns, 10, "ethtool", &["-K", "eth0", "tx", "on"]),
        );
        let features = check("ethtool -k", ns_exec(&ns, 10, "ethtool", &["-k", "eth0"]));
        assert!(
            features.lines().any(|l| l.trim() == "tx-checksumming: on"),
            "{pod}: tx checksumming did not turn on:\n{features}"
        );
    }
    check_tcp(&lab, "n1-p1", "n2-p1", 5003, 20 << 20);
    check_tcp(&lab, "n1-p1", "n1-p2", 5004, 20 << 20);
    check_udp(&lab, "n1-p1", "n2-p1", 6003, 1000);
    check_udp(&lab, "n2-p1", "n1-p2", 6004, 1000);
    assert!(lab.dataplane_alive("n1") && lab.dataplane_alive("n2"));
}

/// An operator adopting pods whose veths exist already gives their MAC and
/// node-side veth name in the cluster file; the lab plumbs them so, and
/// kxdp routes to them and back (TCP echo across nodes and on one node).
#[test]
fn a_pod_with_its_own_mac_and_veth_name_in_the_cluster_file() {
    require_root!();
    let text =
        std::fs::read_to_string(kxdp_e2e::repo_root().join("config/lab-cluster.yaml")).unwrap();
    let own =
        "{ name: p2, node: n2, ip: 10.244.2.3, mac: \"02:6b:78:00:00:03\", ifname: adopted0 }";
    let changed = text.replacen("{ name: p2, node: n2, ip: 10.244.2.3 }", own, 1);
    assert_ne!(changed, text, "config/lab-cluster.yaml lacks n2/p2");
    let file = std::env::temp_dir().join(format!("{}-cluster.yaml", kxdp_e2e::unique_name("kc")));
    std::fs::write(&file, changed).unwrap();
    let lab = Lab::up(LabOpts {
        cluster: Some(file.clone()),
        ..LabOpts::default()
    });
    let _ = std::fs::remove_file(&file);

    let link = check(
        "ip link show adopted0 (node n2)",
        ns_exec(&lab.ns("n2"), 5, "ip", &["-br", "link", "show", "adopted0"]),
    );
    assert!(link.starts_with("adopted0"), "{link}");
    let eth0 = check(
        "ip link show eth0 (pod n2-p2)",
        ns_exec(&lab.ns("n2-p2"), 5, "ip", &["-br", "link", "show", "eth0"]),
    );
    assert!(eth0.contains("02:6b:78:00:00:03"), "{eth0}");
    let pod = lab
        .pod_infos()
        .into_iter()
        .find(|p| p["ip"] == "10.244.2.3")
        .expect("kxdpctl pods lists 10.244.2.3");
    assert_eq!(pod["ifname"], "adopted0", "{pod}");
    assert_eq!(pod["mac"], "02:6b:78:00:00:03", "{pod}");

    check_tcp(&lab, "n1-p1", "n2-p2", 5001, 4 << 20);
    check_tcp(&lab, "n2-p1", "n2-p2", 5002, 4 << 20);
}
