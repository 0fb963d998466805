//! What kxdpctl prints: serializable mirrors of the API's replies (for
//! `--json`; prost types do not derive serde) and plain-text tables.

use kxdp_proto::control::{NodeInfo, PodInfo, RouteInfo};
use kxdp_proto::dataplane::{DataplaneState, GetCountersReply};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct NodesView {
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub name: String,
    pub underlay_ip: String,
    pub pod_cidr: String,
    pub vtep_mac: String,
    pub dataplane_socket: String,
    pub status: String,
    pub desired_generation: u64,
    pub applied_generation: u64,
    pub boot_id: String,
}

impl From<NodeInfo> for NodeView {
    fn from(n: NodeInfo) -> Self {
        NodeView {
            name: n.name,
            underlay_ip: n.underlay_ip,
            pod_cidr: n.pod_cidr,
            vtep_mac: n.vtep_mac,
            dataplane_socket: n.dataplane_socket,
            status: n.status,
            desired_generation: n.desired_generation,
            applied_generation: n.applied_generation,
            boot_id: n.boot_id,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct PodsView {
    pub pods: Vec<PodView>,
}

#[derive(Debug, Serialize)]
pub struct PodView {
    pub name: String,
    pub node: String,
    pub ip: String,
    pub mac: String,
    pub ifname: String,
    pub status: String,
}

impl From<PodInfo> for PodView {
    fn from(p: PodInfo) -> Self {
        PodView {
            name: p.name,
            node: p.node,
            ip: p.ip,
            mac: p.mac,
            ifname: p.ifname,
            status: p.status,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RoutesView {
    pub routes: Vec<RouteView>,
}

#[derive(Debug, Serialize)]
pub struct RouteView {
    pub node: String,
    pub prefix: String,
    pub kind: String,
    pub via_node: String,
    pub vtep_ip: String,
    pub vtep_mac: String,
}

impl From<RouteInfo> for RouteView {
    fn from(r: RouteInfo) -> Self {
        RouteView {
            node: r.node,
            prefix: r.prefix,
            kind: r.kind,
            via_node: r.via_node,
            vtep_ip: r.vtep_ip,
            vtep_mac: r.vtep_mac,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CountersView {
    pub node: String,
    pub interfaces: Vec<InterfaceView>,
    /// Every reason, zero or not.
    pub drops: Vec<DropView>,
    pub arp_replies: u64,
    pub icmp_errors_sent: u64,
    pub encapsulated: u64,
    pub decapsulated: u64,
    pub routed_local: u64,
}

#[derive(Debug, Serialize)]
pub struct InterfaceView {
    pub ifname: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_ring_full: u64,
}

#[derive(Debug, Serialize)]
pub struct DropView {
    pub reason: String,
    pub packets: u64,
}

impl CountersView {
    pub fn new(node: String, c: GetCountersReply) -> CountersView {
        CountersView {
            node,
            interfaces: c
                .interfaces
                .into_iter()
                .map(|i| InterfaceView {
                    ifname: i.ifname,
                    rx_packets: i.rx_packets,
                    rx_bytes: i.rx_bytes,
                    tx_packets: i.tx_packets,
                    tx_bytes: i.tx_bytes,
                    tx_ring_full: i.tx_ring_full,
                })
                .collect(),
            drops: c
                .drops
                .into_iter()
                .map(|d| DropView {
                    reason: d.reason,
                    packets: d.packets,
                })
                .collect(),
            arp_replies: c.arp_replies,
            icmp_errors_sent: c.icmp_errors_sent,
            encapsulated: c.encapsulated,
            decapsulated: c.decapsulated,
            routed_local: c.routed_local,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DataplaneStateView {
    pub generation: u64,
    pub node: Option<NodeConfigView>,
    pub remote_nodes: Vec<RemoteNodeView>,
    pub pods: Vec<DataplanePodView>,
}

#[derive(Debug, Serialize)]
pub struct NodeConfigView {
    pub name: String,
    pub uplink: String,
    pub underlay_ip: String,
    pub vtep_mac: String,
    pub vni: u32,
    pub vxlan_port: u32,
    pub cluster_cidr: String,
    pub pod_cidr: String,
    pub gateway_ip: String,
    pub pod_mtu: u32,
}

#[derive(Debug, Serialize)]
pub struct RemoteNodeView {
    pub name: String,
    pub pod_cidr: String,
    pub vtep_ip: String,
    pub vtep_mac: String,
}

#[derive(Debug, Serialize)]
pub struct DataplanePodView {
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub ifname: String,
}

impl From<DataplaneState> for DataplaneStateView {
    fn from(s: DataplaneState) -> Self {
        DataplaneStateView {
            generation: s.generation,
            node: s.node.map(|n| NodeConfigView {
                name: n.name,
                uplink: n.uplink,
                underlay_ip: n.underlay_ip,
                vtep_mac: n.vtep_mac,
                vni: n.vni,
                vxlan_port: n.vxlan_port,
                cluster_cidr: n.cluster_cidr,
                pod_cidr: n.pod_cidr,
                gateway_ip: n.gateway_ip,
                pod_mtu: n.pod_mtu,
            }),
            remote_nodes: s
                .remote_nodes
                .into_iter()
                .map(|r| RemoteNodeView {
                    name: r.name,
                    pod_cidr: r.pod_cidr,
                    vtep_ip: r.vtep_ip,
                    vtep_mac: r.vtep_mac,
                })
                .collect(),
            pods: s
                .pods
                .into_iter()
                .map(|p| DataplanePodView {
                    name: p.name,
                    ip: p.ip,
                    mac: p.mac,
                    ifname: p.ifname,
                })
                .collect(),
        }
    }
}

/// Left-aligned columns, two spaces apart, no trailing spaces; empty cells as "-".
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell(c).chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.iter().map(|c| cell(c)).collect());
    }
    out
}

pub fn nodes_table(nodes: &[NodeView]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let generation = if n.desired_generation == 0 {
                String::new()
            } else {
                format!("{}/{}", n.applied_generation, n.desired_generation)
            };
            vec![
                n.name.clone(),
                n.status.clone(),
                n.underlay_ip.clone(),
                n.pod_cidr.clone(),
                n.vtep_mac.clone(),
                generation,
                n.boot_id.clone(),
                n.dataplane_socket.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "STATUS",
            "UNDERLAY",
            "POD CIDR",
            "VTEP MAC",
            "GEN APPLIED/DESIRED",
            "BOOT ID",
            "SOCKET",
        ],
        &rows,
    )
}

pub fn pods_table(pods: &[PodView]) -> String {
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|p| {
            vec![
                p.node.clone(),
                p.name.clone(),
                p.ip.clone(),
                p.mac.clone(),
                p.ifname.clone(),
                p.status.clone(),
            ]
        })
        .collect();
    table(&["NODE", "POD", "IP", "MAC", "IFNAME", "STATUS"], &rows)
}

pub fn routes_table(routes: &[RouteView]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                r.node.clone(),
                r.prefix.clone(),
                r.kind.clone(),
                r.via_node.clone(),
                r.vtep_ip.clone(),
                r.vtep_mac.clone(),
            ]
        })
        .collect();
    table(
        &["NODE", "PREFIX", "KIND", "VIA NODE", "VTEP IP", "VTEP MAC"],
        &rows,
    )
}

/// Interfaces, totals, then drop reasons: only non-zero ones unless `all`.
pub fn counters_text(c: &CountersView, all: bool) -> String {
    let rows: Vec<Vec<String>> = c
        .interfaces
        .iter()
        .map(|i| {
            vec![
                i.ifname.clone(),
                i.rx_packets.to_string(),
                i.rx_bytes.to_string(),
                i.tx_packets.to_string(),
                i.tx_bytes.to_string(),
                i.tx_ring_full.to_string(),
            ]
        })
        .collect();
    let mut out = format!("node {}\n", c.node);
    out.push_str(&table(
        &[
            "IFNAME",
            "RX PACKETS",
            "RX BYTES",
            "TX PACKETS",
            "TX BYTES",
            "TX RING FULL",
        ],
        &rows,
    ));
    out.push('\n');
    out.push_str(&table(
        &[
            "ENCAPSULATED",
            "DECAPSULATED",
            "ROUTED LOCAL",
            "ARP REPLIES",
            "ICMP ERRORS SENT",
        ],
        &[vec![
            c.encapsulated.to_string(),
            c.decapsulated.to_string(),
            c.routed_local.to_string(),
            c.arp_replies.to_string(),
            c.icmp_errors_sent.to_string(),
        ]],
    ));
    out.push('\n');
    let drops: Vec<Vec<String>> = c
        .drops
        .iter()
        .filter(|d| all || d.packets != 0)
        .map(|d| vec![d.reason.clone(), d.packets.to_string()])
        .collect();
    if drops.is_empty() {
        out.push_str("no drops (--all lists every reason)\n");
    } else {
        out.push_str(&table(&["DROP REASON", "PACKETS"], &drops));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxdp_proto::dataplane::{DropCounter, InterfaceCounters};

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["xyz".into(), "1".into(), "".into()],
                vec!["q".into(), "22".into(), "end".into()],
            ],
        );
        assert_eq!(
            t,
            "A    LONG HEADER  C\nxyz  1            -\nq    22           end\n"
        );
    }

    fn counters() -> CountersView {
        CountersView::new(
            "n1".into(),
            GetCountersReply {
                interfaces: vec![InterfaceCounters {
                    ifname: "eth0".into(),
                    rx_packets: 10,
                    ..Default::default()
                }],
                drops: vec![
                    DropCounter {
                        reason: "no_route".into(),
                        packets: 3,
                    },
                    DropCounter {
                        reason: "bad_vni".into(),
                        packets: 0,
                    },
                ],
                encapsulated: 7,
                ..Default::default()
            },
        )
    }

    #[test]
    fn counters_hide_zero_drops_unless_all() {
        let c = counters();
        let text = counters_text(&c, false);
        assert!(
            text.contains("no_route") && !text.contains("bad_vni"),
            "{text}"
        );
        assert!(text.contains("eth0"));
        let text = counters_text(&c, true);
        assert!(
            text.contains("no_route") && text.contains("bad_vni"),
            "{text}"
        );
    }

    #[test]
    fn counters_json_keeps_every_reason() {
        let json = serde_json::to_value(counters()).unwrap();
        assert_eq!(json["drops"].as_array().unwrap().len(), 2);
        assert_eq!(json["interfaces"][0]["rx_packets"], 10);
        assert_eq!(json["encapsulated"], 7);
    }

    #[test]
    fn dataplane_state_mirror() {
        let state = crate::plan::node_state(
            &crate::cluster::Cluster::lab(),
            &crate::runtime::Runtime::default(),
            "n1",
            9,
        )
        .unwrap();
        let json = serde_json::to_value(DataplaneStateView::from(state)).unwrap();
        assert_eq!(json["generation"], 9);
        assert_eq!(json["node"]["gateway_ip"], "10.244.1.1");
        assert_eq!(json["remote_nodes"][0]["vtep_mac"], "0e:58:ac:1e:00:0c");
        assert_eq!(json["pods"][1]["ifname"], "kx0af40103");
    }
}
