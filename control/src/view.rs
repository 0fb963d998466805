//! What kxdpctl prints: serializable mirrors of the API's replies (for
//! `--json`; prost types do not derive serde) and plain-text tables.

use kxdp_proto::control::{self as cpb, NodeInfo, PodInfo, PodPolicyInfo, RouteInfo};
use kxdp_proto::dataplane::{self as pb, DataplaneState, GetCountersReply, ListConntrackReply};
use kxdp_proto::service::{Protocol, SessionAffinity, TrafficPolicy};
use serde::Serialize;

use crate::policy::{Labels, RawPolicy};

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
pub struct PoliciesView {
    pub pods: Vec<PodPolicyView>,
}

/// A pod's compiled network policy; a direction without policies is `null`
/// (not isolated).
#[derive(Debug, Serialize)]
pub struct PodPolicyView {
    pub node: String,
    pub pod: String,
    pub namespace: String,
    pub ip: String,
    pub ingress_policies: Vec<String>,
    pub egress_policies: Vec<String>,
    pub ingress: Option<Vec<PolicyPeerView>>,
    pub egress: Option<Vec<PolicyPeerView>>,
}

#[derive(Debug, Serialize)]
pub struct PolicyPeerView {
    pub cidr: String,
    /// "TCP 80", "UDP 53-60", "TCP *", "*" (every protocol), each with the
    /// allowing policy; empty: nothing (an except hole).
    pub ports: Vec<String>,
}

fn policy_peers(t: pb::PolicyTable) -> Vec<PolicyPeerView> {
    let name = |i: u32| t.policies.get(i as usize).cloned().unwrap_or_default();
    t.peers
        .iter()
        .map(|p| PolicyPeerView {
            cidr: format!("{}/{}", std::net::Ipv4Addr::from(p.address), p.prefix_len),
            ports: p
                .ports
                .iter()
                .map(|pp| match kxdp_proto::policy::PortSpan::from_proto(pp) {
                    Ok(span) => format!("{span} ({})", name(pp.policy)),
                    Err((field, why)) => format!("invalid {field}: {why}"),
                })
                .collect(),
        })
        .collect()
}

impl From<PodPolicyInfo> for PodPolicyView {
    fn from(p: PodPolicyInfo) -> Self {
        PodPolicyView {
            node: p.node,
            pod: p.pod,
            namespace: p.namespace,
            ip: p.ip,
            ingress_policies: p.ingress_policies,
            egress_policies: p.egress_policies,
            ingress: p.ingress.map(policy_peers),
            egress: p.egress.map(policy_peers),
        }
    }
}

/// Per pod: who isolates it, then a row per peer prefix and direction.
pub fn policies_text(pods: &[PodPolicyView]) -> String {
    let mut out = String::new();
    for p in pods {
        let isolation = |names: &[String]| {
            if names.is_empty() {
                "not isolated".to_string()
            } else {
                format!("isolated by {}", names.join(", "))
            }
        };
        out.push_str(&format!(
            "{}/{} {} on {}: ingress {}; egress {}\n",
            p.namespace,
            p.pod,
            p.ip,
            p.node,
            isolation(&p.ingress_policies),
            isolation(&p.egress_policies)
        ));
        let mut rows = Vec::new();
        for (dir, peers) in [("ingress", &p.ingress), ("egress", &p.egress)] {
            for peer in peers.iter().flatten() {
                let ports = if peer.ports.is_empty() {
                    "nothing".to_string()
                } else {
                    peer.ports.join(", ")
                };
                rows.push(vec![format!("  {dir}"), peer.cidr.clone(), ports]);
            }
        }
        if !rows.is_empty() {
            out.push_str(&table(&["  DIRECTION", "PEER", "ALLOWS"], &rows));
        }
    }
    if pods.is_empty() {
        out.push_str("no pods\n");
    }
    out
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
    /// Every event counter (encapsulated, routed_local, ...): top-level keys
    /// in JSON, columns in the table, as the dataplane declares them.
    #[serde(flatten)]
    pub events: EventCounters,
    /// Per-service counters; empty when the dataplane has none.
    pub services: Vec<ServiceCountersView>,
    /// Per network policy of the node's pods; empty when none isolates one.
    pub policies: Vec<PolicyCountersView>,
    pub conntrack_entries: u64,
    pub conntrack_capacity: u64,
}

/// Event counters by name, in the dataplane's order; a map when serialized.
#[derive(Debug, Default)]
pub struct EventCounters(pub Vec<(String, u64)>);

impl Serialize for EventCounters {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            m.serialize_entry(name, value)?;
        }
        m.end()
    }
}

#[derive(Debug, Serialize)]
pub struct ServiceCountersView {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub no_endpoint: u64,
    pub backends: Vec<BackendCountersView>,
}

#[derive(Debug, Serialize)]
pub struct PolicyCountersView {
    pub name: String,
    pub flows_allowed: u64,
    pub flows_denied: u64,
}

#[derive(Debug, Serialize)]
pub struct BackendCountersView {
    pub ip: String,
    pub port: u32,
    /// "TCP" or "UDP" (a backend is ip, port and protocol).
    pub protocol: String,
    pub new_flows: u64,
    pub packets: u64,
    pub bytes: u64,
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
            events: EventCounters(c.counters.into_iter().map(|c| (c.name, c.value)).collect()),
            policies: c
                .policies
                .into_iter()
                .map(|p| PolicyCountersView {
                    name: p.name,
                    flows_allowed: p.flows_allowed,
                    flows_denied: p.flows_denied,
                })
                .collect(),
            services: c
                .services
                .into_iter()
                .map(|s| ServiceCountersView {
                    name: s.name,
                    packets: s.packets,
                    bytes: s.bytes,
                    new_flows: s.new_flows,
                    no_endpoint: s.no_endpoint,
                    backends: s
                        .backends
                        .into_iter()
                        .map(|b| BackendCountersView {
                            protocol: protocol_word(b.protocol),
                            ip: b.ip,
                            port: b.port,
                            new_flows: b.new_flows,
                            packets: b.packets,
                            bytes: b.bytes,
                        })
                        .collect(),
                })
                .collect(),
            conntrack_entries: c.conntrack_entries,
            conntrack_capacity: c.conntrack_capacity,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ServicesView {
    pub services: Vec<ServiceView>,
}

#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub name: String,
    pub cluster_ip: String,
    pub ports: Vec<ServicePortView>,
    /// "None" or "ClientIP".
    pub session_affinity: String,
    pub affinity_timeout_s: u32,
    /// "Cluster" or "Local".
    pub external_traffic_policy: String,
    pub endpoints: Vec<EndpointView>,
    pub ready_endpoints: usize,
    pub external_ips: Vec<String>,
    pub load_balancer_ips: Vec<String>,
    /// "Cluster" or "Local".
    pub internal_traffic_policy: String,
    /// 0: none.
    pub health_check_node_port: u32,
}

#[derive(Debug, Serialize)]
pub struct ServicePortView {
    pub name: String,
    /// "TCP" or "UDP".
    pub protocol: String,
    pub port: u32,
    pub target_port: u32,
    /// 0: none.
    pub node_port: u32,
}

#[derive(Debug, Serialize)]
pub struct EndpointView {
    pub ip: String,
    pub node: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// Unspecified reads as TCP, as Kubernetes defaults it.
fn protocol_word(p: i32) -> String {
    match Protocol::from_proto(p) {
        Ok(p) => p.unwrap_or_default().to_string(),
        Err(_) => format!("protocol {p}"),
    }
}

impl From<pb::Service> for ServiceView {
    fn from(s: pb::Service) -> Self {
        let endpoints: Vec<EndpointView> = s
            .endpoints
            .into_iter()
            .map(|e| EndpointView {
                ip: e.ip,
                node: e.node,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
            })
            .collect();
        ServiceView {
            name: s.name,
            cluster_ip: s.cluster_ip,
            ports: s
                .ports
                .into_iter()
                .map(|p| ServicePortView {
                    name: p.name,
                    protocol: protocol_word(p.protocol),
                    port: p.port,
                    target_port: if p.target_port == 0 {
                        p.port
                    } else {
                        p.target_port
                    },
                    node_port: p.node_port,
                })
                .collect(),
            session_affinity: SessionAffinity::from_proto(s.session_affinity)
                .unwrap_or_default()
                .to_string(),
            affinity_timeout_s: s.affinity_timeout_s,
            external_traffic_policy: TrafficPolicy::from_proto(s.external_traffic_policy)
                .unwrap_or_default()
                .to_string(),
            ready_endpoints: endpoints.iter().filter(|e| e.ready).count(),
            endpoints,
            external_ips: s.external_ips,
            load_balancer_ips: s.load_balancer_ips,
            internal_traffic_policy: TrafficPolicy::from_proto(s.internal_traffic_policy)
                .unwrap_or_default()
                .to_string(),
            health_check_node_port: s.health_check_node_port,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ConntrackView {
    pub node: String,
    /// Entries in the table, of which `entries` is the listed part.
    pub total: u64,
    pub entries: Vec<ConntrackEntryView>,
}

#[derive(Debug, Serialize)]
pub struct ConntrackEntryView {
    pub protocol: String,
    pub client: String,
    pub service: String,
    pub backend: String,
    pub snat: String,
    pub state: String,
    pub idle_ms: u64,
    pub service_name: String,
}

impl ConntrackView {
    pub fn new(node: String, r: ListConntrackReply) -> ConntrackView {
        ConntrackView {
            node,
            total: r.total,
            entries: r
                .entries
                .into_iter()
                .map(|e| ConntrackEntryView {
                    protocol: protocol_word(e.protocol),
                    client: e.client,
                    service: e.service,
                    backend: e.backend,
                    snat: e.snat,
                    state: e.state,
                    idle_ms: e.idle_ms,
                    service_name: e.service_name,
                })
                .collect(),
        }
    }
}

/// "80/TCP->8080" plus ":30080" for a NodePort, comma-separated.
fn ports_cell(ports: &[ServicePortView]) -> String {
    ports
        .iter()
        .map(|p| {
            let mut s = format!("{}/{}", p.port, p.protocol);
            if p.target_port != p.port {
                s.push_str(&format!("->{}", p.target_port));
            }
            if p.node_port != 0 {
                s.push_str(&format!(" np:{}", p.node_port));
            }
            s
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// "Local/Cluster hc:32000": external and internal traffic policy, and the
/// health check port if any.
fn policies_cell(s: &ServiceView) -> String {
    let mut c = format!(
        "{}/{}",
        s.external_traffic_policy, s.internal_traffic_policy
    );
    if s.health_check_node_port != 0 {
        c.push_str(&format!(" hc:{}", s.health_check_node_port));
    }
    c
}

pub fn services_table(services: &[ServiceView]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.cluster_ip.clone(),
                ports_cell(&s.ports),
                format!("{}/{}", s.ready_endpoints, s.endpoints.len()),
                if s.session_affinity == "ClientIP" {
                    format!("ClientIP {}s", s.affinity_timeout_s)
                } else {
                    s.session_affinity.clone()
                },
                policies_cell(s),
                s.external_ips
                    .iter()
                    .chain(&s.load_balancer_ips)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "CLUSTER IP",
            "PORTS (port/proto->target np:nodeport)",
            "ENDPOINTS READY/TOTAL",
            "AFFINITY",
            "POLICY EXT/INT (hc:port)",
            "EXTERNAL/LB IPS",
        ],
        &rows,
    )
}

/// One service's endpoints with their conditions.
pub fn backends_text(s: &ServiceView) -> String {
    let targets: Vec<String> = s
        .ports
        .iter()
        .map(|p| format!("{}/{}", p.target_port, p.protocol))
        .collect();
    let mut out = format!(
        "service {} ({}), target ports {}\n",
        s.name,
        s.cluster_ip,
        targets.join(", ")
    );
    if s.endpoints.is_empty() {
        out.push_str("no endpoints\n");
        return out;
    }
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let rows: Vec<Vec<String>> = s
        .endpoints
        .iter()
        .map(|e| {
            vec![
                e.ip.clone(),
                e.node.clone(),
                yes(e.ready),
                yes(e.serving),
                yes(e.terminating),
            ]
        })
        .collect();
    out.push_str(&table(
        &["ENDPOINT", "NODE", "READY", "SERVING", "TERMINATING"],
        &rows,
    ));
    out
}

pub fn conntrack_text(c: &ConntrackView) -> String {
    let rows: Vec<Vec<String>> = c
        .entries
        .iter()
        .map(|e| {
            vec![
                e.protocol.clone(),
                e.client.clone(),
                e.service.clone(),
                e.backend.clone(),
                e.snat.clone(),
                e.state.clone(),
                e.idle_ms.to_string(),
                e.service_name.clone(),
            ]
        })
        .collect();
    let mut out = format!(
        "node {}: {} of {} entries\n",
        c.node,
        c.entries.len(),
        c.total
    );
    out.push_str(&table(
        &[
            "PROTO", "CLIENT", "SERVICE", "BACKEND", "SNAT", "STATE", "IDLE MS", "NAME",
        ],
        &rows,
    ));
    out
}

#[derive(Debug, Serialize)]
pub struct DataplaneStateView {
    pub generation: u64,
    pub node: Option<NodeConfigView>,
    pub remote_nodes: Vec<RemoteNodeView>,
    pub pods: Vec<DataplanePodView>,
    pub services: Vec<ServiceView>,
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
    pub service_cidr: String,
    pub node_port_min: u32,
    pub node_port_max: u32,
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
                service_cidr: n.service_cidr,
                node_port_min: n.node_port_min,
                node_port_max: n.node_port_max,
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
            services: s.services.into_iter().map(ServiceView::from).collect(),
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

#[derive(Debug, Serialize)]
pub struct NetworkPoliciesView {
    pub policies: Vec<NetworkPolicyView>,
}

/// A policy as `ListNetworkPolicies` gives it: where it comes from, and
/// the policy in the cluster file's `network_policies:` shape.
#[derive(Debug, Serialize)]
pub struct NetworkPolicyView {
    pub name: String,
    /// "file" or "runtime".
    pub source: String,
    pub policy: RawPolicy,
    #[serde(skip)]
    row: Vec<String>,
}

impl From<cpb::NetworkPolicy> for NetworkPolicyView {
    fn from(p: cpb::NetworkPolicy) -> Self {
        let name = crate::policy::full_name(&p.namespace, &p.name);
        let row = vec![
            name.clone(),
            p.source.clone(),
            p.policy_types.join(","),
            p.pod_selector
                .as_ref()
                .map_or_else(String::new, selector_text),
            p.ingress.len().to_string(),
            p.egress.len().to_string(),
        ];
        let policy = RawPolicy::from_proto(&p);
        NetworkPolicyView {
            name,
            source: p.source,
            policy,
            row,
        }
    }
}

/// `app=web,tier In (a,b)`; "(all)" for the empty selector.
fn selector_text(s: &cpb::LabelSelector) -> String {
    let sorted: Labels = s.match_labels.clone().into_iter().collect();
    let mut parts: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for r in &s.match_expressions {
        parts.push(if r.values.is_empty() {
            format!("{} {}", r.key, r.operator)
        } else {
            format!("{} {} ({})", r.key, r.operator, r.values.join(","))
        });
    }
    if parts.is_empty() {
        "(all)".into()
    } else {
        parts.join(",")
    }
}

pub fn network_policies_table(policies: &[NetworkPolicyView]) -> String {
    let rows: Vec<Vec<String>> = policies.iter().map(|p| p.row.clone()).collect();
    table(
        &[
            "POLICY",
            "SOURCE",
            "TYPES",
            "POD SELECTOR",
            "INGRESS RULES",
            "EGRESS RULES",
        ],
        &rows,
    )
}

#[derive(Debug, Serialize)]
pub struct NamespacesView {
    pub namespaces: Vec<NamespaceView>,
}

#[derive(Debug, Serialize)]
pub struct NamespaceView {
    pub name: String,
    pub source: String,
    pub labels: Labels,
}

impl From<cpb::Namespace> for NamespaceView {
    fn from(n: cpb::Namespace) -> Self {
        NamespaceView {
            name: n.name,
            source: n.source,
            labels: n.labels.into_iter().collect(),
        }
    }
}

pub fn namespaces_table(namespaces: &[NamespaceView]) -> String {
    let rows: Vec<Vec<String>> = namespaces
        .iter()
        .map(|n| {
            let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![n.name.clone(), n.source.clone(), labels.join(",")]
        })
        .collect();
    table(&["NAMESPACE", "SOURCE", "LABELS"], &rows)
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
    let headers: Vec<String> = c
        .events
        .0
        .iter()
        .map(|(name, _)| name.replace('_', " ").to_uppercase())
        .collect();
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let values: Vec<String> = c.events.0.iter().map(|(_, v)| v.to_string()).collect();
    out.push_str(&table(&headers, &[values]));
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
    if !c.services.is_empty() || c.conntrack_capacity != 0 {
        out.push('\n');
        out.push_str(&format!(
            "conntrack: {} entries of {}\n",
            c.conntrack_entries, c.conntrack_capacity
        ));
    }
    if !c.services.is_empty() {
        let rows: Vec<Vec<String>> = c
            .services
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.packets.to_string(),
                    s.bytes.to_string(),
                    s.new_flows.to_string(),
                    s.no_endpoint.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["SERVICE", "PACKETS", "BYTES", "NEW FLOWS", "NO ENDPOINT"],
            &rows,
        ));
        let rows: Vec<Vec<String>> = c
            .services
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(|b| {
                    vec![
                        format!("{}:{}/{}", b.ip, b.port, b.protocol),
                        s.name.clone(),
                        b.packets.to_string(),
                        b.bytes.to_string(),
                        b.new_flows.to_string(),
                    ]
                })
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["BACKEND", "SERVICE", "PACKETS", "BYTES", "NEW FLOWS"],
            &rows,
        ));
    }
    if !c.policies.is_empty() {
        let rows: Vec<Vec<String>> = c
            .policies
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.flows_allowed.to_string(),
                    p.flows_denied.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(&["POLICY", "FLOWS ALLOWED", "FLOWS DENIED"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxdp_proto::dataplane::{Counter, DropCounter, InterfaceCounters};

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
                counters: vec![
                    Counter {
                        name: "encapsulated".into(),
                        value: 7,
                    },
                    Counter {
                        name: "flow_cache_hits".into(),
                        value: 5,
                    },
                ],
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
        assert!(text.contains("FLOW CACHE HITS"), "{text}");
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
        assert_eq!(json["flow_cache_hits"], 5);
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

    #[test]
    fn service_views_and_tables() {
        let text = format!(
            "{}services:\n  - {{ name: default/web, cluster_ip: 10.96.0.10, session_affinity: ClientIP, ports: [{{ port: 80, target_port: 8080, node_port: 30080 }}, {{ port: 53, protocol: UDP }}], endpoints: [{{ ip: 10.244.1.2 }}, {{ ip: 10.244.2.2, ready: false, terminating: true }}] }}\n",
            crate::cluster::LAB_CLUSTER_YAML
        );
        let c = crate::cluster::Cluster::from_yaml(&text).unwrap();
        let v = ServiceView::from(c.services[0].to_proto());
        assert_eq!(v.ready_endpoints, 1);
        let t = services_table(&[v]);
        assert!(t.contains("80/TCP->8080 np:30080, 53/UDP"), "{t}");
        assert!(t.contains("1/2") && t.contains("ClientIP 10800s"), "{t}");
        let v = ServiceView::from(c.services[0].to_proto());
        let b = backends_text(&v);
        assert!(b.contains("10.244.2.2  n2    no     yes      yes"), "{b}");
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["ports"][0]["node_port"], 30080);
        assert_eq!(json["endpoints"][1]["terminating"], true);
    }

    #[test]
    fn counters_show_services_when_present() {
        let mut c = counters();
        assert!(!counters_text(&c, false).contains("SERVICE"));
        c.services.push(ServiceCountersView {
            name: "default/web".into(),
            packets: 10,
            bytes: 1000,
            new_flows: 2,
            no_endpoint: 0,
            backends: vec![
                BackendCountersView {
                    ip: "10.244.1.2".into(),
                    port: 8080,
                    protocol: "TCP".into(),
                    new_flows: 2,
                    packets: 6,
                    bytes: 600,
                },
                BackendCountersView {
                    ip: "10.244.1.2".into(),
                    port: 8080,
                    protocol: "UDP".into(),
                    new_flows: 5,
                    packets: 4,
                    bytes: 400,
                },
            ],
        });
        c.conntrack_capacity = 65536;
        let t = counters_text(&c, false);
        let row = |b: &str| -> Vec<String> {
            let line = t.lines().find(|l| l.starts_with(b)).unwrap_or_default();
            line.split_whitespace().map(String::from).collect()
        };
        assert_eq!(
            row("10.244.1.2:8080/TCP"),
            ["10.244.1.2:8080/TCP", "default/web", "6", "600", "2"],
            "{t}"
        );
        assert_eq!(
            row("10.244.1.2:8080/UDP"),
            ["10.244.1.2:8080/UDP", "default/web", "4", "400", "5"],
            "{t}"
        );
        assert!(t.contains("conntrack: 0 entries of 65536"), "{t}");
        assert!(!t.contains("POLICY"), "{t}");
        c.policies.push(PolicyCountersView {
            name: "x/deny".into(),
            flows_allowed: 3,
            flows_denied: 7,
        });
        let t = counters_text(&c, false);
        let row = t
            .lines()
            .find(|l| l.starts_with("x/deny"))
            .unwrap_or_default();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["x/deny", "3", "7"],
            "{t}"
        );
    }

    #[test]
    fn conntrack_view() {
        let v = ConntrackView::new(
            "n1".into(),
            ListConntrackReply {
                entries: vec![pb::ConntrackEntry {
                    protocol: pb::Protocol::Tcp as i32,
                    client: "10.244.1.2:40000".into(),
                    service: "10.96.0.10:80".into(),
                    backend: "10.244.2.2:8080".into(),
                    state: "established".into(),
                    service_name: "default/web".into(),
                    ..Default::default()
                }],
                total: 7,
                next_page_token: String::new(),
            },
        );
        let t = conntrack_text(&v);
        assert!(t.starts_with("node n1: 1 of 7 entries"), "{t}");
        assert!(t.contains("TCP    10.244.1.2:40000"), "{t}");
    }

    #[test]
    fn network_policies_and_namespaces_as_tables() {
        let c =
            crate::cluster::Cluster::from_yaml(include_str!("../../config/policy-example.yaml"))
                .unwrap();
        let mut p = c.policies[0].to_proto();
        p.source = "file".into();
        p.pod_selector
            .as_mut()
            .unwrap()
            .match_expressions
            .push(cpb::LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: vec!["a".into(), "b".into()],
            });
        let v = NetworkPolicyView::from(p);
        assert_eq!(v.name, "shop/db");
        let text = network_policies_table(&[v]);
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "shop/db  file    Ingress,Egress  app=db,tier In (a,b)  1              0"
        );
        let ns = NamespaceView::from(c.namespaces[0].to_proto());
        assert_eq!(
            namespaces_table(&[ns]).lines().nth(1).unwrap(),
            "shop       -       team=shop"
        );
    }
}
