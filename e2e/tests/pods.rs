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
