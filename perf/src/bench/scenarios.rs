//! The scenario table. A scenario names a packet walk and says where the
//! generator and the sink attach on a lab; adding one is an entry here
//! (plus, for a new kind of walk, an `attach` function).

use anyhow::Context;

use super::lab::{Lab, Plan};

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

#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub walk: &'static str,
    /// None: not runnable yet; `pending` says what it waits for.
    pub attach: Option<AttachFn>,
    pub pending: &'static str,
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "pod-pod-local",
        walk: "n1/p1 -> n1/p2: pod to pod on one node (kxdp: routed; kernel: bridged on cni0, as flannel does)",
        attach: Some(pod_pod_local),
        pending: "",
    },
    Scenario {
        name: "pod-pod-remote",
        walk: "n1/p1 -> n2/p1: VXLAN between nodes (kernel: flannel.1)",
        attach: Some(pod_pod_remote),
        pending: "",
    },
    Scenario {
        name: "pod-svc",
        walk: "pod -> ClusterIP with backends only on the other node (DNAT + VXLAN)",
        attach: None,
        pending: "services in the dataplane and the lab (service issue)",
    },
    Scenario {
        name: "ext-nodeport",
        walk: "outside client -> NodeIP:NodePort -> backend on the other node (DNAT + SNAT)",
        attach: None,
        pending: "NodePort in the dataplane and the lab (service issue)",
    },
    Scenario {
        name: "svc-scale",
        walk: "per-packet cost with 1 vs 10,000 services / 100,000 endpoints",
        attach: None,
        pending: "services, and a way to load 10,000 of them into the lab",
    },
    Scenario {
        name: "tcp-svc",
        walk: "iperf3 through a ClusterIP, pod TSO/GSO off and on (Gbps)",
        attach: None,
        pending: "services in the dataplane and the lab (service issue)",
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
        assert!(find("pod-pod-remote").unwrap().attach.is_some());
        assert!(find("pod-svc").unwrap().attach.is_none());
        assert!(find("nope").is_none());
    }
}
