//! What each node must hold, computed from a validated [`Cluster`]: the
//! dataplane state pushed to kxdp nodes, the routes that state implies, and the
//! per-pod plumbing plan the lab script follows. Pure functions, no I/O.

use std::collections::BTreeMap;

use kxdp_proto::control::RouteInfo;
use kxdp_proto::dataplane::{DataplaneState, NodeConfig, Pod, RemoteNode};
use serde::Serialize;

use crate::cluster::{Cluster, DataplaneKind};
use crate::conventions;
use crate::policy;
use crate::runtime::Runtime;

/// The full state for `node`'s dataplane at `generation`, with the run-time
/// pods of `runtime`; `None` when the node is unknown or not served by kxdp
/// (a kernel node gets nothing pushed).
pub fn node_state(
    cluster: &Cluster,
    runtime: &Runtime,
    node: &str,
    generation: u64,
) -> Option<DataplaneState> {
    let mut world = policy_world(cluster, runtime);
    node_state_in(&mut world, cluster, runtime, node, generation)
}

/// Every pod and policy of the cluster, for compiling pods' policy tables.
pub fn policy_world<'a>(cluster: &'a Cluster, runtime: &'a Runtime) -> policy::World<'a> {
    policy::World::new(
        runtime.all_policies(cluster),
        runtime.all_namespaces(cluster),
        runtime.all_pods(cluster),
    )
}

/// [`node_state`] with the cluster's compiled policy tables shared between
/// nodes (pods selected alike share a table).
fn node_state_in(
    world: &mut policy::World<'_>,
    cluster: &Cluster,
    runtime: &Runtime,
    node: &str,
    generation: u64,
) -> Option<DataplaneState> {
    let me = cluster.node(node).filter(|n| n.is_kxdp())?;
    let config = NodeConfig {
        name: me.name.clone(),
        uplink: me.uplink.clone(),
        underlay_ip: me.underlay_ip.to_string(),
        vtep_mac: me.vtep_mac.to_string(),
        vni: cluster.vni,
        vxlan_port: u32::from(cluster.vxlan_port),
        cluster_cidr: cluster.cidr.to_string(),
        pod_cidr: me.pod_cidr.to_string(),
        gateway_ip: me.gateway().to_string(),
        pod_mtu: cluster.pod_mtu(),
        service_cidr: cluster.service_cidr.to_string(),
        node_port_min: u32::from(cluster.node_ports.0),
        node_port_max: u32::from(cluster.node_ports.1),
        host_interface: conventions::HOST_INTERFACE.to_string(),
        masquerade: cluster.ip_masq,
        non_masquerade_cidrs: cluster
            .non_masquerade_cidrs
            .iter()
            .map(ToString::to_string)
            .collect(),
        node_port_addresses: cluster
            .node_port_addresses
            .iter()
            .map(ToString::to_string)
            .collect(),
    };
    // Every other node, whatever forwards for it: kernel nodes are reached
    // through their Linux vxlan device just the same.
    let remote_nodes = cluster
        .nodes
        .iter()
        .filter(|n| n.name != me.name)
        .map(|n| RemoteNode {
            name: n.name.clone(),
            pod_cidr: n.pod_cidr.to_string(),
            vtep_ip: n.underlay_ip.to_string(),
            vtep_mac: n.vtep_mac.to_string(),
        })
        .collect();
    let pods = runtime
        .pods_on(cluster, &me.name)
        .map(|p| {
            let (ingress, egress) = world.pod_tables(p);
            Pod {
                name: p.name.clone(),
                ip: p.ip.to_string(),
                mac: p.mac.to_string(),
                ifname: p.ifname.clone(),
                ingress,
                egress,
            }
        })
        .collect();
    Some(DataplaneState {
        generation,
        node: Some(config),
        remote_nodes,
        // Every service on every node: any pod may address any ClusterIP, and
        // every node opens every NodePort.
        services: runtime
            .all_services(cluster)
            .map(|s| s.to_proto())
            .collect(),
        pods,
    })
}

/// [`node_state`] for every kxdp node, by node name.
pub fn all_node_states(
    cluster: &Cluster,
    runtime: &Runtime,
    generation: u64,
) -> BTreeMap<String, DataplaneState> {
    let mut world = policy_world(cluster, runtime);
    cluster
        .nodes
        .iter()
        .filter_map(|n| {
            Some((
                n.name.clone(),
                node_state_in(&mut world, cluster, runtime, &n.name, generation)?,
            ))
        })
        .collect()
}

/// The routes a dataplane state implies: its own pod CIDR delivered locally,
/// every remote pod CIDR over VXLAN to that node's VTEP.
pub fn routes(state: &DataplaneState) -> Vec<RouteInfo> {
    let Some(node) = &state.node else {
        return Vec::new();
    };
    let local = RouteInfo {
        node: node.name.clone(),
        prefix: node.pod_cidr.clone(),
        kind: "local".into(),
        via_node: String::new(),
        vtep_ip: String::new(),
        vtep_mac: String::new(),
    };
    let remote = state.remote_nodes.iter().map(|r| RouteInfo {
        node: node.name.clone(),
        prefix: r.pod_cidr.clone(),
        kind: "vxlan".into(),
        via_node: r.name.clone(),
        vtep_ip: r.vtep_ip.clone(),
        vtep_mac: r.vtep_mac.clone(),
    });
    std::iter::once(local).chain(remote).collect()
}

/// How to plumb one pod: everything `scripts/lab.sh` needs to create its
/// namespace and veth pair (`kxdpctl plan-pods` prints a list of these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodPlan {
    pub node: String,
    pub name: String,
    pub ip: String,
    /// Of the node's pod CIDR: the pod's address is `ip/prefix_len`.
    pub prefix_len: u8,
    pub gateway: String,
    pub mac: String,
    /// Node-side veth name.
    pub ifname: String,
    pub mtu: u32,
    /// Who forwards for the pod's node: a kernel node's veth goes on a bridge.
    pub dataplane: DataplaneKind,
}

pub fn pod_plans(cluster: &Cluster) -> Vec<PodPlan> {
    cluster
        .pods
        .iter()
        .filter_map(|p| {
            let node = cluster.node(&p.node)?;
            Some(PodPlan {
                node: node.name.clone(),
                name: p.name.clone(),
                ip: p.ip.to_string(),
                prefix_len: node.pod_cidr.prefix_len(),
                gateway: node.gateway().to_string(),
                mac: p.mac.to_string(),
                ifname: p.ifname.clone(),
                mtu: cluster.pod_mtu(),
                dataplane: node.dataplane,
            })
        })
        .collect()
}

/// How to plumb one node: what `scripts/lab.sh` needs to build its namespace
/// (`kxdpctl plan-nodes` prints a list of these).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodePlan {
    pub name: String,
    pub underlay_ip: String,
    pub uplink: String,
    pub pod_cidr: String,
    pub gateway: String,
    pub vtep_mac: String,
    pub dataplane: DataplaneKind,
    /// Pod MTU (underlay MTU - 50).
    pub mtu: u32,
    pub underlay_mtu: u32,
    pub vni: u32,
    pub vxlan_port: u16,
    pub cluster_cidr: String,
    pub service_cidr: String,
    /// The host veth pair (walk 5): the dataplane's end and the kernel's.
    pub host_interface: String,
    pub host_peer: String,
    /// Pod egress masqueraded (kernel nodes get flannel's rules for it).
    pub ip_masq: bool,
    pub non_masquerade_cidrs: Vec<String>,
}

pub fn node_plans(cluster: &Cluster) -> Vec<NodePlan> {
    cluster
        .nodes
        .iter()
        .map(|n| NodePlan {
            name: n.name.clone(),
            underlay_ip: n.underlay_ip.to_string(),
            uplink: n.uplink.clone(),
            pod_cidr: n.pod_cidr.to_string(),
            gateway: n.gateway().to_string(),
            vtep_mac: n.vtep_mac.to_string(),
            dataplane: n.dataplane,
            mtu: cluster.pod_mtu(),
            underlay_mtu: cluster.underlay_mtu,
            vni: cluster.vni,
            vxlan_port: cluster.vxlan_port,
            cluster_cidr: cluster.cidr.to_string(),
            service_cidr: cluster.service_cidr.to_string(),
            host_interface: conventions::HOST_INTERFACE.to_string(),
            host_peer: conventions::HOST_PEER.to_string(),
            ip_masq: cluster.ip_masq,
            non_masquerade_cidrs: cluster
                .non_masquerade_cidrs
                .iter()
                .map(ToString::to_string)
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::LAB_CLUSTER_YAML;

    #[test]
    fn node_plans_cover_every_node_in_file_order() {
        let c = Cluster::from_yaml(LAB_CLUSTER_YAML).unwrap();
        let v = node_plans(&c);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].name, "n1");
        assert_eq!(v[0].gateway, "10.244.1.1");
        assert_eq!(v[1].vtep_mac, "0e:58:ac:1e:00:0c");
        assert_eq!(v[1].mtu, 1450);
        let j = serde_json::to_value(&v[0]).unwrap();
        for k in [
            "name",
            "underlay_ip",
            "uplink",
            "pod_cidr",
            "gateway",
            "vtep_mac",
            "dataplane",
            "mtu",
            "underlay_mtu",
            "vni",
            "vxlan_port",
            "ip_masq",
            "non_masquerade_cidrs",
        ] {
            assert!(j.get(k).is_some(), "missing {k}");
        }
        assert_eq!(j["ip_masq"], true);
        assert_eq!(j["non_masquerade_cidrs"], serde_json::json!([]));
    }

    #[test]
    fn n1_state_from_the_lab_file() {
        let state = node_state(&Cluster::lab(), &Runtime::default(), "n1", 7).unwrap();
        assert_eq!(state.generation, 7);
        assert_eq!(state.node.unwrap(), kxdp_testkit::lab::n1());
        assert_eq!(state.remote_nodes, vec![kxdp_testkit::lab::n2_remote()]);
        assert_eq!(
            state.pods,
            vec![
                Pod {
                    name: "p1".into(),
                    ip: "10.244.1.2".into(),
                    mac: "0a:58:0a:f4:01:02".into(),
                    ifname: "kx0af40102".into(),
                    ..Default::default()
                },
                Pod {
                    name: "p2".into(),
                    ip: "10.244.1.3".into(),
                    mac: "0a:58:0a:f4:01:03".into(),
                    ifname: "kx0af40103".into(),
                    ..Default::default()
                },
            ]
        );
    }

    #[test]
    fn kernel_nodes_get_no_plan_but_are_remotes() {
        let text = LAB_CLUSTER_YAML.replacen(
            "    pod_cidr: 10.244.2.0/24",
            "    pod_cidr: 10.244.2.0/24\n    dataplane: kernel",
            1,
        );
        let cluster = Cluster::from_yaml(&text).unwrap();
        assert!(node_state(&cluster, &Runtime::default(), "n2", 1).is_none());
        let all = all_node_states(&cluster, &Runtime::default(), 1);
        assert_eq!(all.keys().collect::<Vec<_>>(), vec!["n1"]);
        let n1 = &all["n1"];
        assert_eq!(n1.remote_nodes.len(), 1);
        assert_eq!(n1.remote_nodes[0].name, "n2");
        assert_eq!(n1.remote_nodes[0].vtep_ip, "172.30.0.12");
    }

    #[test]
    fn unknown_node_has_no_plan() {
        assert!(node_state(&Cluster::lab(), &Runtime::default(), "n9", 1).is_none());
    }

    #[test]
    fn routes_are_local_plus_one_per_remote() {
        let state = node_state(&Cluster::lab(), &Runtime::default(), "n2", 1).unwrap();
        let routes = routes(&state);
        assert_eq!(routes.len(), 2);
        assert_eq!(
            (routes[0].prefix.as_str(), routes[0].kind.as_str()),
            ("10.244.2.0/24", "local")
        );
        assert_eq!(routes[1].prefix, "10.244.1.0/24");
        assert_eq!(routes[1].kind, "vxlan");
        assert_eq!(routes[1].via_node, "n1");
        assert_eq!(routes[1].vtep_ip, "172.30.0.11");
        assert_eq!(routes[1].vtep_mac, "0e:58:ac:1e:00:0b");
        assert!(routes.iter().all(|r| r.node == "n2"));
    }

    #[test]
    fn pod_plans_follow_the_conventions() {
        let plans = pod_plans(&Cluster::lab());
        assert_eq!(plans.len(), 4);
        assert_eq!(
            plans[2],
            PodPlan {
                node: "n2".into(),
                name: "p1".into(),
                ip: "10.244.2.2".into(),
                prefix_len: 24,
                gateway: "10.244.2.1".into(),
                mac: "0a:58:0a:f4:02:02".into(),
                ifname: "kx0af40202".into(),
                mtu: 1450,
                dataplane: DataplaneKind::Kxdp,
            }
        );
        let json = serde_json::to_value(&plans[0]).unwrap();
        for key in [
            "node",
            "name",
            "ip",
            "prefix_len",
            "gateway",
            "mac",
            "ifname",
            "mtu",
        ] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        assert_eq!(json["dataplane"], "kxdp");
    }
}
