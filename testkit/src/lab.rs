//! The lab's node n1 (`config/lab-cluster.yaml`) as the dataplane API
//! carries it: what kxdp-control plans for n1 (its `plan` tests hold it to
//! that), and what the dataplane's tests and tools start from.

use kxdp_proto::dataplane as pb;

/// n1's node config.
pub fn n1() -> pb::NodeConfig {
    pb::NodeConfig {
        name: "n1".into(),
        uplink: "eth0".into(),
        underlay_ip: "172.30.0.11".into(),
        vtep_mac: "0e:58:ac:1e:00:0b".into(),
        vni: 1,
        vxlan_port: 4789,
        cluster_cidr: "10.244.0.0/16".into(),
        pod_cidr: "10.244.1.0/24".into(),
        gateway_ip: "10.244.1.1".into(),
        pod_mtu: 1450,
        service_cidr: "10.96.0.0/12".into(),
        host_interface: "kxhost".into(),
        node_port_min: 30000,
        node_port_max: 32767,
        masquerade: true,
        non_masquerade_cidrs: Vec::new(),
        node_port_addresses: Vec::new(),
    }
}

/// n2, as n1 sees it.
pub fn n2_remote() -> pb::RemoteNode {
    pb::RemoteNode {
        name: "n2".into(),
        pod_cidr: "10.244.2.0/24".into(),
        vtep_ip: "172.30.0.12".into(),
        vtep_mac: "0e:58:ac:1e:00:0c".into(),
    }
}
