//! The scenario table. A scenario names a packet walk and says where the
//! generator and the sink attach on a lab; adding one is an entry here
//! (plus, for a new kind of walk, an `attach` function).

use anyhow::Context;

use super::lab::{link_mac, Lab, Plan, WWW_IP};

/// Where the generator and the sink attach, and what the frames say.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attach {
    pub gen_ns: String,
    pub gen_iface: String,
    pub src_mac: String,
    pub dst_mac: String,
    pub src_ip: String,
    pub dst_ip: String,
    pub dst_port: u16,
    pub sink_ns: String,
    pub sink_iface: String,
    /// What differs from the other datapath, if anything.
    pub note: String,
}

pub type AttachFn = fn(&Lab) -> anyhow::Result<Attach>;

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Generator -> sink packet rate, kxdp vs kernel.
    Pps,
    /// Packet rate of the `pod-svc` walk with the small table and with
    /// 10,000 services / 100,000 endpoints loaded (src/bench/scale.rs).
    SvcScale,
    /// iperf3 through a TCP ClusterIP, pod TSO/GSO off and on (src/bench/tcp.rs).
    Tcp,
    /// Generator -> sink packet rate like [`Kind::Pps`], with the sink on
    /// the underlay right after the entry node's uplink (the switch port
    /// of that node): one forwarding hop. The sink's XDP program takes
    /// every frame the node sends, ARP included, so before it attaches
    /// the harness warms up the same walk to its real destination (which
    /// resolves the node's next hop) and pins that neighbour entry.
    Hop,
}

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub walk: &'static str,
    /// None: not runnable yet; `pending` says what it waits for.
    pub attach: Option<AttachFn>,
    pub pending: &'static str,
    /// Kernel baseline: load kube-proxy's rule set (nftables mode,
    /// `perf/kernel/kube-proxy.nft`) into the kernel nodes for this
    /// scenario, and count conntrack entries after each point.
    pub services: bool,
    pub kind: Kind,
    /// Measured without and with the bench policy set, alternating
    /// (`src/bench/policy.rs`): kxdp with it applied through kxdp-control,
    /// the kernel with Calico's iptables rules for it.
    pub policy: bool,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "pod-pod-local",
        walk: "n1/p1 -> n1/p2: pod to pod on one node (kxdp: routed; kernel: bridged on cni0, as flannel does)",
        attach: Some(pod_pod_local),
        pending: "",
        services: false,
        kind: Kind::Pps,
        policy: false,
    },
    Scenario {
        name: "pod-pod-remote",
        walk: "n1/p1 -> n2/p1: VXLAN between nodes (kernel: flannel.1)",
        attach: Some(pod_pod_remote),
        pending: "",
        services: false,
        kind: Kind::Pps,
        policy: false,
    },
    Scenario {
        name: "pod-svc",
        walk: "n1/p1 -> ClusterIP 10.96.0.20:5201/UDP, one endpoint n2/p1: DNAT + VXLAN on n1 \
               (kernel: kube-proxy nftables DNAT with numgen, conntrack; flannel.1)",
        attach: Some(pod_svc),
        pending: "",
        services: true,
        kind: Kind::Pps,
        policy: false,
    },
    Scenario {
        name: "pod-svc-hop",
        walk: "n1/p1 -> ClusterIP 10.96.0.20:5201/UDP as pod-svc, counted on the underlay right \
               after n1's uplink (sink on the switch's port n1, probes inside VXLAN): one hop with \
               DNAT + VXLAN encap on n1, nothing on n2 \
               (kernel: kube-proxy nftables DNAT with numgen, conntrack; flannel.1)",
        attach: Some(pod_svc_hop),
        pending: "",
        services: true,
        kind: Kind::Hop,
        policy: false,
    },
    Scenario {
        name: "ext-nodeport",
        walk: "outside client -> n1 172.30.0.11:30520/UDP (NodePort, externalTrafficPolicy Cluster) \
               -> n2/p1: DNAT + SNAT to n1 + VXLAN (kernel: kube-proxy nftables, masquerade)",
        attach: Some(ext_nodeport),
        pending: "",
        services: true,
        kind: Kind::Pps,
        policy: false,
    },
    Scenario {
        name: "egress",
        walk: "n1/p1 -> 203.0.113.10:5201/UDP, the lab's outside world behind the router \
               (.254, n1's default route): masquerade on n1 (SNAT to its underlay address, \
               conntrack), counted on the underlay right after n1's uplink (sink on the \
               switch's port n1): one hop \
               (kernel: flannel's --ip-masq rules, nftables masquerade fully-random)",
        attach: Some(egress),
        pending: "",
        services: false,
        kind: Kind::Hop,
        policy: false,
    },
    Scenario {
        name: "svc-scale",
        walk: "pod-svc's walk (n1/p1 -> ClusterIP 10.96.0.20:5201/UDP -> n2/p1) with the bench \
               services only, then with 9,999 more services / 99,990 endpoints loaded \
               (kxdp: kxdpctl apply; kernel: the same services as kube-proxy nftables rules): \
               delivered pps, small vs big table",
        attach: Some(pod_svc),
        pending: "",
        services: true,
        kind: Kind::SvcScale,
        policy: false,
    },
    Scenario {
        name: "tcp-svc",
        walk: "iperf3 n1/p1 -> ClusterIP 10.96.0.21:5201/TCP -> iperf3 -s in n2/p1 (DNAT + VXLAN), \
               pod TSO/GSO off and on (Gbit/s)",
        attach: Some(tcp_svc),
        pending: "",
        services: true,
        kind: Kind::Tcp,
        policy: false,
    },
    Scenario {
        name: "pod-pod-remote-policy",
        walk: "pod-pod-remote (n1/p1 -> n2/p1, UDP 5201) without and with network policy, \
               alternating: namespace bench default-denies ingress and egress, two policies \
               allow exactly this flow (egress of app: gen to app: sink, ingress of app: sink \
               from app: gen, UDP 5201), 200 ipBlock policies select every bench pod and 100 \
               more sit in other namespaces (kernel: Calico's iptables rules and ipsets for \
               them, perf/kernel/calico-policy.iptables, on n1 and n2)",
        attach: Some(pod_pod_remote),
        pending: "",
        services: false,
        kind: Kind::Pps,
        policy: true,
    },
    Scenario {
        name: "pod-svc-policy",
        walk: "pod-svc (n1/p1 -> ClusterIP 10.96.0.20:5201/UDP -> n2/p1) without and with the \
               policy set of pod-pod-remote-policy, alternating: the policies see the backend's \
               pod address after DNAT (kernel: kube-proxy nftables plus Calico's iptables rules)",
        attach: Some(pod_svc),
        pending: "",
        services: true,
        kind: Kind::Pps,
        policy: true,
    },
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

fn pod_to_pod(lab: &Lab, src: (&str, &str), dst: (&str, &str)) -> anyhow::Result<Attach> {
    let s = lab.pod(src.0, src.1)?;
    let d = lab.pod(dst.0, dst.1)?;
    let same_node = s.node == d.node;
    let (dst_mac, note) = if lab.kernel && same_node {
        // The pod's own /24 route: it ARPs the peer and the bridge switches.
        (
            d.mac.clone(),
            "kernel: same-subnet pods talk L2 through cni0 (no routing)".to_string(),
        )
    } else {
        (lab.gateway_mac(s)?, String::new())
    };
    Ok(Attach {
        gen_ns: lab.pod_ns(s),
        gen_iface: "eth0".into(),
        src_mac: s.mac.clone(),
        dst_mac,
        src_ip: s.ip.clone(),
        dst_ip: d.ip.clone(),
        dst_port: 5201,
        sink_ns: lab.pod_ns(d),
        sink_iface: "eth0".into(),
        note,
    })
}

fn pod_pod_local(lab: &Lab) -> anyhow::Result<Attach> {
    pod_to_pod(lab, ("n1", "p1"), ("n1", "p2")).context("pod-pod-local")
}

fn pod_pod_remote(lab: &Lab) -> anyhow::Result<Attach> {
    pod_to_pod(lab, ("n1", "p1"), ("n2", "p1")).context("pod-pod-remote")
}

/// `config/bench-services.yaml`'s service: `bench/svc`, ClusterIP
/// 10.96.0.20:5201/UDP, NodePort 30520, one endpoint: n2/p1 (the sink).
pub const SVC_CLUSTER_IP: &str = "10.96.0.20";
pub const SVC_PORT: u16 = 5201;
pub const SVC_NODE_PORT: u16 = 30520;
pub const SVC_ENDPOINT: (&str, &str) = ("n2", "p1");
/// The node the service traffic enters (and whose conntrack is counted).
pub const ENTRY_NODE: &str = "n1";

/// `config/bench-services.yaml`'s TCP service: `bench/tcp`, ClusterIP
/// 10.96.0.21:5201/TCP, one endpoint: n2/p1 (iperf3 -s).
pub const TCP_CLUSTER_IP: &str = "10.96.0.21";
pub const TCP_PORT: u16 = 5201;

/// tcp-svc: iperf3 client in n1/p1, server in n2/p1 (the generator and
/// sink fields say where the client and the server run).
fn tcp_svc(lab: &Lab) -> anyhow::Result<Attach> {
    // pod-svc's client and endpoint, the TCP service instead of the UDP one.
    let a = pod_svc(lab).context("tcp-svc")?;
    Ok(Attach {
        dst_ip: TCP_CLUSTER_IP.into(),
        dst_port: TCP_PORT,
        note: if lab.kernel {
            "iperf3 -c / -s; kernel: kube-proxy nftables rule set on n1 and n2".into()
        } else {
            "iperf3 -c / -s".into()
        },
        ..a
    })
}

/// n1/p1 -> the ClusterIP, through its gateway (as for pod-pod-remote);
/// the sink sits on the endpoint's eth0.
fn pod_svc(lab: &Lab) -> anyhow::Result<Attach> {
    let s = lab.pod(ENTRY_NODE, "p1").context("pod-svc")?;
    let d = lab.pod(SVC_ENDPOINT.0, SVC_ENDPOINT.1).context("pod-svc")?;
    Ok(Attach {
        gen_ns: lab.pod_ns(s),
        gen_iface: "eth0".into(),
        src_mac: s.mac.clone(),
        dst_mac: lab.gateway_mac(s)?,
        src_ip: s.ip.clone(),
        dst_ip: SVC_CLUSTER_IP.into(),
        dst_port: SVC_PORT,
        sink_ns: lab.pod_ns(d),
        sink_iface: "eth0".into(),
        note: if lab.kernel {
            "kernel: kube-proxy nftables rule set (perf/kernel/kube-proxy.nft) on n1 and n2".into()
        } else {
            String::new()
        },
    })
}

/// pod-svc's frames, with the sink on the switch (`<prefix>-sw`) end of
/// n1's uplink veth: the bridge port named after the node.
fn pod_svc_hop(lab: &Lab) -> anyhow::Result<Attach> {
    let a = pod_svc(lab).context("pod-svc-hop")?;
    lab.node(ENTRY_NODE).context("pod-svc-hop")?;
    Ok(Attach {
        sink_ns: lab.switch_ns(),
        sink_iface: ENTRY_NODE.into(),
        note: if lab.kernel {
            "kernel: kube-proxy nftables rule set on n1 and n2; n1 encapsulates through \
             flannel.1; the sink takes the VXLAN frames on the switch port"
                .into()
        } else {
            "the sink takes n1's VXLAN frames on the switch port".into()
        },
        ..a
    })
}

/// The outside world's port the egress probes go to.
pub const EGRESS_PORT: u16 = 5201;

/// egress's frames to their real destination: n1/p1 to the outside
/// world's server through its gateway; the sink on the server's eth0,
/// behind the router.
fn egress_world(lab: &Lab) -> anyhow::Result<Attach> {
    // pod-svc's client and gateway, the outside world instead of the service.
    let a = pod_svc(lab).context("egress")?;
    Ok(Attach {
        dst_ip: WWW_IP.into(),
        dst_port: EGRESS_PORT,
        sink_ns: lab.www_ns(),
        sink_iface: "eth0".into(),
        note: String::new(),
        ..a
    })
}

/// egress: the sink on the switch end of n1's uplink, so only n1's work is
/// measured. A sink behind the router would add the router's kernel
/// forwarding, which runs in the softirq of whoever sent into the switch
/// (kxdp's worker, or the kernel node's forwarding core) and costs both
/// datapaths the same fixed work that is not the node's.
fn egress(lab: &Lab) -> anyhow::Result<Attach> {
    let a = egress_world(lab)?;
    Ok(Attach {
        sink_ns: lab.switch_ns(),
        sink_iface: ENTRY_NODE.into(),
        note: if lab.kernel {
            "kernel: flannel's masquerade rules (lab.sh kernel_masq, table flannel-ipv4) on n1; \
             the sink takes n1's frames to the router on the switch port"
                .into()
        } else {
            "the sink takes n1's masqueraded frames to the router on the switch port".into()
        },
        ..a
    })
}

/// What a [`Kind::Hop`] scenario needs before its sink attaches to the
/// switch port: the walk to the real destination, whose warm-up makes the
/// entry node resolve its next hop; a tcpdump filter for one of the entry
/// node's frames on the switch port; and that next hop's underlay address,
/// whose neighbour entry is then pinned.
#[derive(Clone, Copy)]
pub struct HopPrep {
    pub resolve: AttachFn,
    pub capture: &'static str,
    pub next_hop: fn(&Lab) -> anyhow::Result<String>,
    /// Have the entry node's kernel resolve the next hop first: a node's
    /// default router is resolved by its own traffic long before a pod
    /// sends (a VTEP is left to the datapath).
    pub resolve_next_hop: bool,
}

pub fn hop_prep(s: &Scenario) -> Option<HopPrep> {
    match (s.kind, s.name) {
        (Kind::Hop, "pod-svc-hop") => Some(HopPrep {
            resolve: pod_svc,
            capture: "udp dst port 4789",
            next_hop: |lab| Ok(lab.node(SVC_ENDPOINT.0)?.underlay_ip.clone()),
            resolve_next_hop: false,
        }),
        (Kind::Hop, "egress") => Some(HopPrep {
            resolve: egress_world,
            capture: "udp and dst host 203.0.113.10",
            next_hop: Lab::router_ip,
            resolve_next_hop: true,
        }),
        _ => None,
    }
}

/// The outside client (P-ext) -> n1's underlay address and NodePort, to
/// n1's uplink MAC; the sink sits on the endpoint's eth0.
fn ext_nodeport(lab: &Lab) -> anyhow::Result<Attach> {
    let d = lab
        .pod(SVC_ENDPOINT.0, SVC_ENDPOINT.1)
        .context("ext-nodeport")?;
    let entry = lab.node(ENTRY_NODE).context("ext-nodeport")?;
    let ext_ns = lab.ext_ns();
    Ok(Attach {
        gen_ns: ext_ns.clone(),
        gen_iface: "eth0".into(),
        src_mac: link_mac(&ext_ns, "eth0")?,
        dst_mac: lab.uplink_mac(ENTRY_NODE)?,
        src_ip: lab.ext_ip()?,
        dst_ip: entry.underlay_ip.clone(),
        dst_port: SVC_NODE_PORT,
        sink_ns: lab.pod_ns(d),
        sink_iface: "eth0".into(),
        note: if lab.kernel {
            "kernel: kube-proxy nftables rule set (perf/kernel/kube-proxy.nft) on n1 and n2; \
             masquerade to flannel.1's address"
                .into()
        } else {
            String::new()
        },
    })
}

/// Pods the sink may sit in (for the kernel's neighbour entries).
pub fn sink_pod<'a>(lab: &'a Lab, a: &Attach) -> Option<&'a Plan> {
    lab.pods.iter().find(|p| lab.pod_ns(p) == a.sink_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_pending_ones_say_why() {
        for (i, s) in SCENARIOS.iter().enumerate() {
            assert!(SCENARIOS[i + 1..].iter().all(|o| o.name != s.name));
            assert_eq!(s.attach.is_none(), !s.pending.is_empty(), "{}", s.name);
        }
        for name in ["pod-pod-local", "pod-pod-remote", "pod-svc", "ext-nodeport"] {
            assert!(find(name).unwrap().attach.is_some(), "{name}");
        }
        assert!(find("pod-svc").unwrap().services);
        assert!(!find("pod-pod-remote").unwrap().services);
        assert_eq!(find("svc-scale").unwrap().kind, Kind::SvcScale);
        assert_eq!(find("tcp-svc").unwrap().kind, Kind::Tcp);
        let hop = find("pod-svc-hop").unwrap();
        assert_eq!(hop.kind, Kind::Hop);
        assert!(hop.services);
        for s in SCENARIOS {
            assert_eq!(s.kind == Kind::Hop, hop_prep(s).is_some(), "{}", s.name);
        }
        let egress = find("egress").unwrap();
        assert_eq!(egress.kind, Kind::Hop);
        assert!(!egress.services);
        assert!(hop_prep(egress).unwrap().capture.contains(WWW_IP));
        assert!(SCENARIOS.iter().all(|s| s.attach.is_some()));
        let with: Vec<&str> = SCENARIOS
            .iter()
            .filter(|s| s.policy)
            .map(|s| s.name)
            .collect();
        assert_eq!(with, ["pod-pod-remote-policy", "pod-svc-policy"]);
        assert!(find("pod-svc-policy").unwrap().services);
        assert!(find("nope").is_none());
    }

    fn repo_file(path: &str) -> String {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The scenarios, the bench cluster file and the kernel's kube-proxy
    /// rule set must describe the same service.
    #[test]
    fn service_constants_match_the_cluster_file_and_the_kernel_rule_set() {
        let yaml = repo_file(super::super::lab::CLUSTER_FILE);
        let nft = repo_file(super::super::lab::KUBE_PROXY_NFT);
        let endpoint = "10.244.2.2"; // n2/p1 in the cluster file
        assert!(yaml.contains(&format!(
            "- {{ name: {}, node: {}, ip: {endpoint},",
            SVC_ENDPOINT.1, SVC_ENDPOINT.0
        )));
        assert!(yaml.contains(&format!("cluster_ip: {SVC_CLUSTER_IP}")));
        assert!(yaml.contains(&format!(
            "protocol: UDP, port: {SVC_PORT}, target_port: {SVC_PORT}, node_port: {SVC_NODE_PORT}"
        )));
        assert!(yaml.contains(&format!("- {{ ip: {endpoint} }}")));
        assert!(yaml.contains("external_traffic_policy: Cluster"));
        assert!(nft.contains(&format!(
            "{SVC_CLUSTER_IP} . udp . {SVC_PORT} : goto service-"
        )));
        assert!(nft.contains(&format!("udp . {SVC_NODE_PORT} : goto external-")));
        assert!(nft.contains(&format!("dnat to {endpoint}:{SVC_PORT}")));
        assert!(nft.contains("numgen random mod 1 vmap"));
        assert!(nft.contains("masquerade fully-random"));
        assert!(nft.contains("elements = { $NODE_IP }"));
    }

    /// tcp-svc's service: in the cluster file and in kube-proxy's rule set.
    #[test]
    fn tcp_service_matches_the_cluster_file_and_the_kernel_rule_set() {
        let yaml = repo_file(super::super::lab::CLUSTER_FILE);
        let nft = repo_file(super::super::lab::KUBE_PROXY_NFT);
        let endpoint = "10.244.2.2"; // n2/p1
        let at = yaml
            .find(&format!("cluster_ip: {TCP_CLUSTER_IP}"))
            .expect("bench/tcp in the cluster file");
        let svc = &yaml[at..];
        assert!(svc.contains(&format!(
            "protocol: TCP, port: {TCP_PORT}, target_port: {TCP_PORT} }}"
        )));
        assert!(svc.contains(&format!("- {{ ip: {endpoint} }}")));
        assert!(nft.contains(&format!(
            "{TCP_CLUSTER_IP} . tcp . {TCP_PORT} : goto service-"
        )));
        assert!(nft.contains(&format!("meta l4proto tcp dnat to {endpoint}:{TCP_PORT}")));
        assert!(nft.contains(&format!(
            "elements = {{ {SVC_CLUSTER_IP}, {TCP_CLUSTER_IP} }}"
        )));
        assert_ne!(TCP_CLUSTER_IP, SVC_CLUSTER_IP);
    }
}
