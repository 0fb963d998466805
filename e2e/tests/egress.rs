//! Pods reach the outside world (issue 12, item 1): the lab's router `P-rt`
//! on the underlay and `P-www` behind it (203.0.113.0/24, HTTP and DNS),
//! which has no route back to the pod CIDRs, so only masqueraded traffic
//! gets answers.
//!
//! The `egress_*` tests run on kxdp nodes: their masquerade uses source
//! ports 61000-65535. The `kernel_egress_*` tests are the same checks on the
//! all-kernel lab, where the nodes run the rules flannel --ip-masq writes
//! (lab.sh `kernel_masq`): the baseline the kxdp tests must match.

use kxdp_e2e::{
    check, check_egress_masqueraded, check_whoami, ns_exec, require_root, ClusterFile, Lab,
    LabOpts, MASQ_PORTS, WWW_IP, WWW_NET,
};

/// One pod on each node.
const PODS: [&str; 2] = ["n1-p1", "n2-p1"];
/// The download through the masquerade.
const DOWNLOAD: usize = 64 << 20;

/// (a) `curl` of the outside server's /whoami from a pod on each node: the
/// server sees the pod's node's underlay address, from a masquerade port.
#[test]
fn egress_curl_from_a_pod_on_each_node_is_seen_from_its_node_address() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    for pod in PODS {
        let node = lab.node(pod.split('-').next().unwrap()).underlay_ip;
        check_whoami(&lab, pod, node, Some(MASQ_PORTS));
    }
}

/// (b) A 64 MiB download from the outside server through the masquerade,
/// on both nodes, arrives byte for byte (SHA-256 of what was served and
/// of what arrived).
#[test]
fn egress_64_mib_download_through_the_masquerade_is_byte_exact() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    for (i, pod) in PODS.iter().enumerate() {
        kxdp_e2e::check_download(&lab, pod, DOWNLOAD, 0x64 + i as u64);
    }
}

/// (c) A DNS query over UDP from a pod on each node to the outside DNS
/// server is answered; the server saw it come from the node.
#[test]
fn egress_dns_query_over_udp_from_a_pod_on_each_node_is_answered() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    for pod in PODS {
        let node = lab.node(pod.split('-').next().unwrap()).underlay_ip;
        kxdp_e2e::check_dns(&lab, pod, node);
    }
}

/// (e) `ping` from a pod on each node to the outside server is answered:
/// a masqueraded ICMP echo (the router has no route back to pods). So is
/// each node's own ping with an identifier in kxdp's range, whose replies
/// the uplink redirects to kxdp, which hands them to the kernel.
#[test]
fn egress_ping_from_a_pod_on_each_node_and_from_the_nodes_is_answered() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    for pod in PODS {
        ping(&lab.ns(pod), None);
    }
    for node in ["n1", "n2"] {
        ping(&lab.ns(node), Some(61234));
    }
}

/// Three echo requests from `ns` to the outside server (with identifier
/// `ident`), all answered.
fn ping(ns: &str, ident: Option<u16>) {
    let target = WWW_IP.to_string();
    let ident = ident.map(|i| i.to_string());
    let mut args = vec!["-n", "-c", "3", "-i", "0.2", "-W", "2"];
    if let Some(i) = &ident {
        args.extend(["-e", i.as_str()]);
    }
    args.push(&target);
    let out = check(
        &format!("{ns}: ping {target}"),
        ns_exec(ns, 15, "ping", &args),
    );
    assert!(out.contains(" 0% packet loss"), "{ns}: {out}");
    eprintln!("{ns}: ping {target} (ident {ident:?}): 3 answered");
}

/// (d) With the outside network in `cluster.non_masquerade_cidrs` (and a
/// route back to the pod CIDRs on the router, as an underlay that knows
/// the pod network has), the server sees the pod's own address.
#[test]
fn egress_non_masquerade_cidrs_keep_the_pod_address() {
    require_root!();
    let file = ClusterFile::lab_with(&format!("  non_masquerade_cidrs: [{WWW_NET}]"));
    let lab = Lab::up(LabOpts {
        cluster: Some(file.path()),
        ..LabOpts::default()
    });
    lab.route_pods_on_router();
    for pod in PODS {
        check_whoami(&lab, pod, lab.pod(pod).ip, None);
    }
}

/// The kernel baseline of (a), (b) and (c): flannel's masquerade rules on
/// both nodes (fully random source ports, so no port range is checked).
#[test]
fn kernel_egress_baseline_masquerades_downloads_and_resolves() {
    require_root!();
    let lab = Lab::up(LabOpts::kernel(&["n1", "n2"]));
    check_egress_masqueraded(&lab, &PODS, None, DOWNLOAD);
}

/// The kernel baseline of (d): flannel's rules with ip-masq-agent's
/// non-masquerade destination returned before the masquerade rule.
#[test]
fn kernel_egress_baseline_non_masquerade_cidrs_keep_the_pod_address() {
    require_root!();
    let file = ClusterFile::lab_with(&format!("  non_masquerade_cidrs: [{WWW_NET}]"));
    let lab = Lab::up(LabOpts {
        cluster: Some(file.path()),
        ..LabOpts::kernel(&["n1", "n2"])
    });
    lab.route_pods_on_router();
    for pod in PODS {
        check_whoami(&lab, pod, lab.pod(pod).ip, None);
    }
}
