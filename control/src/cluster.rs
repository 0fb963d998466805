//! The cluster file: a YAML model of nodes and pods, parsed into raw structs
//! and then validated into typed domain structs.
//!
//! Validation reports every problem it finds, each naming its path in the file
//! (`nodes[1].pod_cidr: ...`), and yields a [`Cluster`] only when there are none:
//! a file with any problem is never partly applied. Structural errors (YAML
//! syntax, unknown or missing fields, wrong types) come from serde_yaml_ng, with
//! a line and column, and stop at the first one.

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::conventions::{self, Mac};
use crate::policy::{
    self, Labels, NamedPort, Namespace, NetworkPolicy, RawNamedPort, RawNamespace, RawPolicy,
};
use crate::service::{self, RawService, Service};
use crate::validate::{
    check_ifname, check_name, in_range, parse_cidr, parse_ip, parse_unicast_mac, Problem, Problems,
    PORT_RANGE,
};

/// The two-node namespace lab's cluster file, the default desired state.
pub const LAB_CLUSTER_YAML: &str = include_str!("../../config/lab-cluster.yaml");

/// Underlay MTU bounds: 576 is the IPv4 minimum every host must accept; the
/// largest is what one of kxdp's frames holds (`kxdp_proto::MAX_UNDERLAY_MTU`).
pub const UNDERLAY_MTU_RANGE: std::ops::RangeInclusive<i64> =
    576..=kxdp_proto::MAX_UNDERLAY_MTU as i64;
/// VNI 0 is reserved by flannel and Linux treats it as "unset"; 24 bits wide.
pub const VNI_RANGE: std::ops::RangeInclusive<i64> = 1..=16_777_215;
/// Longest pod CIDR prefix: a /30 still holds the gateway and one pod.
pub const MAX_POD_PREFIX: u8 = 30;
/// Longest service CIDR prefix: a /30 still holds two ClusterIPs.
pub const MAX_SERVICE_PREFIX: u8 = 30;
/// Kubernetes' defaults.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
pub const DEFAULT_NODE_PORT_RANGE: &str = "30000-32767";
/// Most `non_masquerade_cidrs` (the dataplane's limit).
pub const MAX_NON_MASQUERADE: usize = 64;
/// Most `node_port_addresses` (the dataplane's limit).
pub const MAX_NODE_PORT_ADDRESSES: usize = 64;

/// A validated cluster: every invariant in the module docs holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    pub cidr: Ipv4Net,
    pub underlay_mtu: u32,
    pub vni: u32,
    pub vxlan_port: u16,
    /// In file order.
    pub nodes: Vec<Node>,
    /// In file order.
    pub pods: Vec<Pod>,
    /// ClusterIPs come from here; never overlaps `cidr`.
    pub service_cidr: Ipv4Net,
    /// NodePorts (inclusive).
    pub node_ports: (u16, u16),
    /// In file order.
    pub services: Vec<Service>,
    /// Pod egress is SNATed to the node's address (flannel's `ipMasq`).
    pub ip_masq: bool,
    /// Egress destinations that keep the pod's address (ip-masq-agent's
    /// `nonMasqueradeCIDRs`).
    pub non_masquerade_cidrs: Vec<Ipv4Net>,
    /// NodePorts open on every node address inside these (kube-proxy's
    /// `--nodeport-addresses`); empty: on the underlay address only.
    pub node_port_addresses: Vec<Ipv4Net>,
    /// Etcd mode: nodes whose control process is away (its liveness lease
    /// lapsed). They keep their pod CIDR and routes; their endpoints are not
    /// ready, as Kubernetes marks an unreachable node's pods. Always empty
    /// from a cluster file.
    pub unreachable: Vec<String>,
    /// Namespaces with labels (others exist where pods or policies name
    /// them, labelled only with their name).
    pub namespaces: Vec<Namespace>,
    /// NetworkPolicies, in file order.
    pub policies: Vec<NetworkPolicy>,
}

/// Who forwards a node's pod traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    /// kxdp-dataplane, programmed by this control process.
    #[default]
    Kxdp,
    /// A flannel-style node served by the Linux vxlan device: nothing is
    /// pushed to it, but other nodes route to its pod CIDR.
    Kernel,
}

impl fmt::Display for DataplaneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataplaneKind::Kxdp => "kxdp",
            DataplaneKind::Kernel => "kernel",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub uplink: String,
    pub pod_cidr: Ipv4Net,
    pub vtep_mac: Mac,
    pub dataplane: DataplaneKind,
    /// Explicit dataplane socket; `None` means the convention's default.
    pub socket: Option<PathBuf>,
}

impl Node {
    pub fn gateway(&self) -> Ipv4Addr {
        conventions::gateway(self.pod_cidr)
    }

    pub fn is_kxdp(&self) -> bool {
        self.dataplane == DataplaneKind::Kxdp
    }

    /// Where this node's dataplane API listens.
    pub fn socket_path(&self, dataplane_dir: &Path) -> PathBuf {
        match &self.socket {
            Some(path) => path.clone(),
            None => conventions::default_socket(dataplane_dir, &self.name),
        }
    }
}

/// A pod: from the cluster file (MAC and veth name follow the conventions)
/// or registered at run time (the CNI plugin says what they are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// The pod's eth0 MAC.
    pub mac: Mac,
    /// The node-side veth name.
    pub ifname: String,
    /// Kubernetes namespace ("default" unless given) and labels, which
    /// network policies select pods by.
    pub namespace: String,
    pub labels: Labels,
    /// Container ports, for policies' named ports.
    pub ports: Vec<NamedPort>,
}

impl Cluster {
    /// Parses and validates a cluster file's text.
    pub fn from_yaml(text: &str) -> Result<Cluster, Problems> {
        let raw: RawFile = serde_yaml_ng::from_str(text).map_err(|e| {
            Problems(vec![Problem {
                path: String::new(),
                message: format!("YAML: {e}"),
            }])
        })?;
        validate(raw)
    }

    /// The embedded lab cluster.
    pub fn lab() -> Cluster {
        Cluster::from_yaml(LAB_CLUSTER_YAML).expect("the embedded lab cluster file is valid")
    }

    pub fn pod_mtu(&self) -> u32 {
        conventions::pod_mtu(self.underlay_mtu)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// What a service is validated against.
    pub fn service_context(&self) -> service::Context<'_> {
        service::Context {
            cluster_cidr: self.cidr,
            service_cidr: self.service_cidr,
            node_ports: self.node_ports,
            vxlan_port: self.vxlan_port,
            nodes: self
                .nodes
                .iter()
                .map(|n| (n.name.as_str(), n.pod_cidr))
                .collect(),
            underlay: self
                .nodes
                .iter()
                .map(|n| (n.name.as_str(), n.underlay_ip))
                .collect(),
            unreachable: self.unreachable.iter().map(String::as_str).collect(),
        }
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Checks what validation cannot see without the control process's
    /// `--dataplane-dir`: two kxdp nodes must not share a dataplane socket, or
    /// their states would overwrite each other on one dataplane.
    pub fn check_sockets(&self, dataplane_dir: &Path) -> Result<(), Problems> {
        let mut seen: HashMap<PathBuf, usize> = HashMap::new();
        let mut problems = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.is_kxdp() {
                continue;
            }
            let path = node.socket_path(dataplane_dir);
            if let Some(&j) = seen.get(&path) {
                problems.push(Problem::new(
                    format!("nodes[{i}].socket"),
                    format!(
                        "{} is also the dataplane socket of nodes[{j}] ({})",
                        path.display(),
                        self.nodes[j].name
                    ),
                ));
            } else {
                seen.insert(path, i);
            }
        }
        Problems::result(problems)
    }
}

// ---- raw file model: what serde reads, before any checking ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    cluster: RawCluster,
    nodes: Vec<RawNode>,
    #[serde(default)]
    pods: Vec<RawPod>,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    namespaces: Vec<RawNamespace>,
    #[serde(default)]
    network_policies: Vec<RawPolicy>,
}

// Numbers are i64 so out-of-range values (even negative ones) get our
// message with the allowed range, not a serde type error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCluster {
    cidr: String,
    underlay_mtu: i64,
    vxlan: RawVxlan,
    service_cidr: String,
    node_port_range: String,
    ip_masq: bool,
    non_masquerade_cidrs: Vec<String>,
    node_port_addresses: Vec<String>,
}

impl Default for RawCluster {
    fn default() -> Self {
        RawCluster {
            cidr: "10.244.0.0/16".into(),
            underlay_mtu: 1500,
            vxlan: RawVxlan::default(),
            service_cidr: DEFAULT_SERVICE_CIDR.into(),
            node_port_range: DEFAULT_NODE_PORT_RANGE.into(),
            ip_masq: true,
            non_masquerade_cidrs: Vec::new(),
            node_port_addresses: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawVxlan {
    vni: i64,
    port: i64,
}

impl Default for RawVxlan {
    fn default() -> Self {
        RawVxlan { vni: 1, port: 4789 }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    underlay_ip: String,
    #[serde(default)]
    uplink: Option<String>,
    pod_cidr: String,
    #[serde(default)]
    vtep_mac: Option<String>,
    #[serde(default)]
    dataplane: DataplaneKind,
    #[serde(default)]
    socket: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPod {
    name: String,
    node: String,
    ip: String,
    /// The pod's eth0 MAC, for a pod that exists already; default 0a:58 + IP.
    #[serde(default)]
    mac: Option<String>,
    /// Its node-side veth, for a pod that exists already; default kx + hex IP.
    #[serde(default)]
    ifname: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Labels,
    /// Container ports (named ports for network policies).
    #[serde(default)]
    ports: Vec<RawNamedPort>,
}

// ---- validation ----

pub(crate) fn check_underlay_mtu(mtu: i64, p: &mut Vec<Problem>) -> Option<i64> {
    if mtu > *UNDERLAY_MTU_RANGE.end() && mtu <= 9216 {
        p.push(Problem::new(
            "cluster.underlay_mtu",
            format!(
                "{mtu} is out of range {}..={}: a kxdp frame holds one 2048-byte buffer \
                 less the kernel's 256-byte headroom, so jumbo frames are not carried; \
                 set the underlay MTU to {} or less",
                UNDERLAY_MTU_RANGE.start(),
                UNDERLAY_MTU_RANGE.end(),
                UNDERLAY_MTU_RANGE.end()
            ),
        ));
        return None;
    }
    in_range("cluster.underlay_mtu", mtu, UNDERLAY_MTU_RANGE, p)
}

fn validate(raw: RawFile) -> Result<Cluster, Problems> {
    let mut problems = Vec::new();
    let p = &mut problems;

    let cidr = parse_cidr("cluster.cidr", &raw.cluster.cidr, p);
    let underlay_mtu = check_underlay_mtu(raw.cluster.underlay_mtu, p);
    let vni = in_range("cluster.vxlan.vni", raw.cluster.vxlan.vni, VNI_RANGE, p);
    let port = in_range("cluster.vxlan.port", raw.cluster.vxlan.port, PORT_RANGE, p);

    if raw.nodes.is_empty() {
        p.push(Problem::new("nodes", "at least one node is required"));
    }
    let nodes = validate_nodes(&raw.nodes, cidr, p);
    let pod_cidrs: Vec<Option<Ipv4Net>> = nodes.iter().map(|n| n.pod_cidr).collect();
    let pods = validate_pods(&raw.pods, &raw.nodes, &pod_cidrs, p);
    let namespaces = policy::validate_namespaces(&raw.namespaces, p);
    let policies = policy::validate_policies(&raw.network_policies, p);

    let service_cidr = parse_cidr("cluster.service_cidr", &raw.cluster.service_cidr, p);
    if let Some(net) = service_cidr {
        if net.prefix_len() > MAX_SERVICE_PREFIX {
            p.push(Problem::new(
                "cluster.service_cidr",
                format!("{net} is too small: a service CIDR needs at most a /{MAX_SERVICE_PREFIX}"),
            ));
        }
        if let Some(c) = cidr.filter(|c| c.contains(&net.network()) || net.contains(&c.network())) {
            p.push(Problem::new(
                "cluster.service_cidr",
                format!("{net} overlaps cluster.cidr {c}"),
            ));
        }
        for (i, n) in raw.nodes.iter().enumerate() {
            if let Some(ip) = n
                .underlay_ip
                .parse::<Ipv4Addr>()
                .ok()
                .filter(|ip| net.contains(ip))
            {
                p.push(Problem::new(
                    "cluster.service_cidr",
                    format!("{net} holds nodes[{i}] ({}) underlay_ip {ip}", n.name),
                ));
            }
        }
    }
    let node_ports =
        service::parse_port_range("cluster.node_port_range", &raw.cluster.node_port_range, p);
    let non_masquerade_cidrs = cidr_list(
        "cluster.non_masquerade_cidrs",
        &raw.cluster.non_masquerade_cidrs,
        MAX_NON_MASQUERADE,
        p,
    );
    let node_port_addresses = cidr_list(
        "cluster.node_port_addresses",
        &raw.cluster.node_port_addresses,
        MAX_NODE_PORT_ADDRESSES,
        p,
    );
    let services = match (cidr, service_cidr, node_ports, port) {
        (Some(cidr), Some(service_cidr), Some(node_ports), Some(vxlan_port)) => {
            let ctx = service::Context {
                cluster_cidr: cidr,
                service_cidr,
                node_ports,
                vxlan_port: vxlan_port as u16,
                nodes: raw
                    .nodes
                    .iter()
                    .zip(&pod_cidrs)
                    .filter_map(|(n, c)| Some((n.name.as_str(), (*c)?)))
                    .collect(),
                underlay: raw
                    .nodes
                    .iter()
                    .filter_map(|n| Some((n.name.as_str(), n.underlay_ip.parse().ok()?)))
                    .collect(),
                unreachable: Vec::new(),
            };
            let mut taken = service::Taken::default();
            service::check_totals(
                "services",
                raw.services
                    .iter()
                    .map(|s| (s.ports.len(), s.endpoints.len())),
                p,
            );
            raw.services
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    service::check(&format!("services[{i}]"), s, &ctx, &mut taken, p)
                })
                .collect()
        }
        // The services cannot be checked without the addressing; the
        // problems with it are reported already.
        _ => Vec::new(),
    };

    match (
        problems.is_empty(),
        cidr,
        underlay_mtu,
        vni,
        port,
        service_cidr,
        node_ports,
    ) {
        (
            true,
            Some(cidr),
            Some(mtu),
            Some(vni),
            Some(port),
            Some(service_cidr),
            Some(node_ports),
        ) => Ok(Cluster {
            cidr,
            underlay_mtu: mtu as u32,
            vni: vni as u32,
            vxlan_port: port as u16,
            nodes: nodes.into_iter().filter_map(|n| n.node).collect(),
            pods,
            service_cidr,
            node_ports,
            services,
            ip_masq: raw.cluster.ip_masq,
            non_masquerade_cidrs,
            node_port_addresses,
            unreachable: Vec::new(),
            namespaces,
            policies,
        }),
        _ => Err(Problems(problems)),
    }
}

/// A list of at most `max` CIDRs at `path`, each parsed (problems named
/// `path[i]`).
fn cidr_list(path: &str, list: &[String], max: usize, p: &mut Vec<Problem>) -> Vec<Ipv4Net> {
    if list.len() > max {
        p.push(Problem::new(
            path,
            format!("{} entries; at most {max}", list.len()),
        ));
    }
    list.iter()
        .enumerate()
        .filter_map(|(i, c)| parse_cidr(&format!("{path}[{i}]"), c, p))
        .collect()
}

/// One raw node's outcome: the node if it has no problem, and its pod CIDR if
/// that parsed (its pods are checked against it even when the node has other
/// problems, so one mistake does not hide the next).
struct CheckedNode {
    node: Option<Node>,
    pod_cidr: Option<Ipv4Net>,
}

fn validate_nodes(
    raw: &[RawNode],
    cidr: Option<Ipv4Net>,
    p: &mut Vec<Problem>,
) -> Vec<CheckedNode> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut macs: HashMap<Mac, usize> = HashMap::new();
    let mut sockets: HashMap<&str, usize> = HashMap::new();
    let mut pod_cidrs: Vec<(usize, Ipv4Net)> = Vec::new();
    let mut out = Vec::with_capacity(raw.len());

    for (i, node) in raw.iter().enumerate() {
        let at = |field: &str| format!("nodes[{i}].{field}");
        let before = p.len();

        if check_name(&at("name"), &node.name, p) {
            if let Some(&j) = names.get(node.name.as_str()) {
                p.push(Problem::new(
                    at("name"),
                    format!("duplicate node name {} (also nodes[{j}])", node.name),
                ));
            } else {
                names.insert(&node.name, i);
            }
        }

        let underlay_ip = parse_ip(&at("underlay_ip"), &node.underlay_ip, p);
        if let Some(ip) = underlay_ip {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                p.push(Problem::new(
                    at("underlay_ip"),
                    format!("{ip} is not a unicast host address"),
                ));
            } else if let Some(c) = cidr.filter(|c| c.contains(&ip)) {
                p.push(Problem::new(
                    at("underlay_ip"),
                    format!("{ip} is inside cluster.cidr {c}; the underlay must be outside the pod network"),
                ));
            }
            if let Some(&j) = ips.get(&ip) {
                p.push(Problem::new(
                    at("underlay_ip"),
                    format!("{ip} is also nodes[{j}] ({}) underlay_ip", raw[j].name),
                ));
            } else {
                ips.insert(ip, i);
            }
        }

        let uplink = node
            .uplink
            .clone()
            .unwrap_or_else(|| conventions::DEFAULT_UPLINK.into());
        check_ifname(&at("uplink"), &uplink, p);

        let pod_cidr = parse_cidr(&at("pod_cidr"), &node.pod_cidr, p);
        if let Some(net) = pod_cidr {
            if net.prefix_len() > MAX_POD_PREFIX {
                p.push(Problem::new(
                    at("pod_cidr"),
                    format!("{net} is too small: a pod CIDR needs at most a /{MAX_POD_PREFIX} (gateway + pods)"),
                ));
            }
            if let Some(c) = cidr.filter(|c| !c.contains(&net)) {
                p.push(Problem::new(
                    at("pod_cidr"),
                    format!("{net} is outside cluster.cidr {c}"),
                ));
            }
            for &(j, other) in &pod_cidrs {
                if net.contains(&other.network()) || other.contains(&net.network()) {
                    p.push(Problem::new(
                        at("pod_cidr"),
                        format!(
                            "{net} overlaps nodes[{j}] ({}) pod_cidr {other}",
                            raw[j].name
                        ),
                    ));
                }
            }
            pod_cidrs.push((i, net));
        }

        let vtep_mac = match &node.vtep_mac {
            Some(text) => parse_unicast_mac(&at("vtep_mac"), text, p),
            None => underlay_ip.map(conventions::default_vtep_mac),
        };
        if let Some(mac) = vtep_mac {
            if let Some(&j) = macs.get(&mac) {
                p.push(Problem::new(
                    at("vtep_mac"),
                    format!("{mac} is also nodes[{j}] ({}) vtep_mac", raw[j].name),
                ));
            } else {
                macs.insert(mac, i);
            }
        }

        if let Some(socket) = &node.socket {
            if node.dataplane == DataplaneKind::Kernel {
                p.push(Problem::new(
                    at("socket"),
                    "a node with dataplane: kernel has no kxdp dataplane socket",
                ));
            } else if !Path::new(socket).is_absolute() {
                p.push(Problem::new(
                    at("socket"),
                    format!("{socket:?} is not an absolute path"),
                ));
            } else if let Some(&j) = sockets.get(socket.as_str()) {
                p.push(Problem::new(
                    at("socket"),
                    format!("{socket} is also nodes[{j}] ({}) socket", raw[j].name),
                ));
            } else {
                sockets.insert(socket, i);
            }
        }

        let checked = match (p.len() == before, underlay_ip, pod_cidr, vtep_mac) {
            (true, Some(underlay_ip), Some(pod_cidr), Some(vtep_mac)) => Some(Node {
                name: node.name.clone(),
                underlay_ip,
                uplink,
                pod_cidr,
                vtep_mac,
                dataplane: node.dataplane,
                socket: node.socket.as_ref().map(PathBuf::from),
            }),
            _ => None,
        };
        out.push(CheckedNode {
            node: checked,
            pod_cidr,
        });
    }
    out
}

fn validate_pods(
    raw: &[RawPod],
    raw_nodes: &[RawNode],
    pod_cidrs: &[Option<Ipv4Net>],
    p: &mut Vec<Problem>,
) -> Vec<Pod> {
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut names: HashMap<(&str, &str), usize> = HashMap::new();
    // Per node: a veth name or a MAC given twice would make two pods one.
    let mut ifnames: HashMap<(&str, String), usize> = HashMap::new();
    let mut macs: HashMap<(&str, Mac), usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());

    for (i, pod) in raw.iter().enumerate() {
        let at = |field: &str| format!("pods[{i}].{field}");
        let before = p.len();

        check_name(&at("name"), &pod.name, p);

        let node_index = raw_nodes.iter().position(|n| n.name == pod.node);
        if pod.node.is_empty() {
            p.push(Problem::new(at("node"), "must not be empty"));
        } else if node_index.is_none() {
            let known: Vec<&str> = raw_nodes.iter().map(|n| n.name.as_str()).collect();
            p.push(Problem::new(
                at("node"),
                format!(
                    "unknown node {} (nodes are: {})",
                    pod.node,
                    known.join(", ")
                ),
            ));
        }
        let pod_cidr = node_index.and_then(|j| pod_cidrs[j]);

        if !pod.name.is_empty() && node_index.is_some() {
            let key = (pod.node.as_str(), pod.name.as_str());
            if let Some(&j) = names.get(&key) {
                p.push(Problem::new(
                    at("name"),
                    format!(
                        "duplicate pod name {} on node {} (also pods[{j}])",
                        pod.name, pod.node
                    ),
                ));
            } else {
                names.insert(key, i);
            }
        }

        let ip = parse_ip(&at("ip"), &pod.ip, p);
        if let Some(ip) = ip {
            if let Some(net) = pod_cidr {
                let node = &pod.node;
                if !net.contains(&ip) {
                    p.push(Problem::new(
                        at("ip"),
                        format!("{ip} is outside node {node}'s pod_cidr {net}"),
                    ));
                } else if ip == net.network() {
                    p.push(Problem::new(
                        at("ip"),
                        format!("{ip} is the network address of node {node}'s pod_cidr {net}"),
                    ));
                } else if ip == net.broadcast() {
                    p.push(Problem::new(
                        at("ip"),
                        format!("{ip} is the broadcast address of node {node}'s pod_cidr {net}"),
                    ));
                } else if ip == conventions::gateway(net) {
                    p.push(Problem::new(
                        at("ip"),
                        format!("{ip} is node {node}'s pod gateway (first host of {net})"),
                    ));
                }
            }
            if let Some(&j) = ips.get(&ip) {
                p.push(Problem::new(
                    at("ip"),
                    format!(
                        "{ip} is already used by pods[{j}] ({}/{})",
                        raw[j].node, raw[j].name
                    ),
                ));
            } else {
                ips.insert(ip, i);
            }
        }

        let namespace = pod
            .namespace
            .clone()
            .unwrap_or_else(|| policy::DEFAULT_NAMESPACE.to_string());
        check_name(&at("namespace"), &namespace, p);
        policy::check_labels(&at("labels"), &pod.labels, p);
        let ports = policy::validate_named_ports(&at("ports"), &pod.ports, p);
        let mac = match (&pod.mac, ip) {
            (Some(text), _) => parse_unicast_mac(&at("mac"), text, p),
            (None, ip) => ip.map(conventions::pod_mac),
        };
        let ifname = match (&pod.ifname, ip) {
            (Some(name), _) => check_ifname(&at("ifname"), name, p).then(|| name.clone()),
            (None, ip) => ip.map(conventions::pod_ifname),
        };
        if let (Some(name), Some(j)) = (&ifname, node_index) {
            let node = &raw_nodes[j];
            if name
                == node
                    .uplink
                    .as_deref()
                    .unwrap_or(conventions::DEFAULT_UPLINK)
            {
                p.push(Problem::new(
                    at("ifname"),
                    format!("{name} is node {}'s uplink", node.name),
                ));
            } else if let Some(&k) = ifnames.get(&(pod.node.as_str(), name.clone())) {
                p.push(Problem::new(
                    at("ifname"),
                    format!("{name} is also pods[{k}]'s interface on node {}", pod.node),
                ));
            } else {
                ifnames.insert((pod.node.as_str(), name.clone()), i);
            }
        }
        if let (Some(mac), Some(_)) = (mac, node_index) {
            if let Some(&k) = macs.get(&(pod.node.as_str(), mac)) {
                p.push(Problem::new(
                    at("mac"),
                    format!("{mac} is also pods[{k}]'s MAC on node {}", pod.node),
                ));
            } else {
                macs.insert((pod.node.as_str(), mac), i);
            }
        }

        if let (true, Some(ip), Some(_), Some(mac), Some(ifname)) =
            (p.len() == before, ip, pod_cidr, mac, ifname)
        {
            out.push(Pod {
                name: pod.name.clone(),
                node: pod.node.clone(),
                ip,
                mac,
                ifname,
                namespace,
                labels: pod.labels.clone(),
                ports,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_with(edit: impl FnOnce(&mut String)) -> String {
        let mut text = LAB_CLUSTER_YAML.to_string();
        edit(&mut text);
        text
    }

    fn replaced(from: &str, to: &str) -> String {
        assert!(LAB_CLUSTER_YAML.contains(from), "lab file lacks {from:?}");
        lab_with(|t| *t = t.replacen(from, to, 1))
    }

    /// Validates `text`, expecting failure, and asserts one problem is at
    /// `path` and mentions `needle`.
    fn assert_problem(text: &str, path: &str, needle: &str) {
        let problems = match Cluster::from_yaml(text) {
            Ok(_) => panic!("expected a problem at {path}, but the file is valid:\n{text}"),
            Err(p) => p,
        };
        assert!(
            problems
                .0
                .iter()
                .any(|p| p.path == path && p.message.contains(needle)),
            "no problem at {path} mentioning {needle:?}; got:\n{problems}"
        );
    }

    const MINIMAL: &str = "
nodes:
  - { name: a, underlay_ip: 192.168.0.1, pod_cidr: 10.244.0.0/24 }
";

    #[test]
    fn lab_file_is_valid() {
        let c = Cluster::lab();
        assert_eq!(c.cidr, "10.244.0.0/16".parse::<Ipv4Net>().unwrap());
        assert_eq!((c.underlay_mtu, c.vni, c.vxlan_port), (1500, 1, 4789));
        assert_eq!(c.pod_mtu(), 1450);
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.pods.len(), 4);
        let n1 = c.node("n1").unwrap();
        assert_eq!(n1.uplink, "eth0");
        assert_eq!(n1.vtep_mac.to_string(), "0e:58:ac:1e:00:0b");
        assert_eq!(n1.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(n1.dataplane, DataplaneKind::Kxdp);
        assert_eq!(
            n1.socket_path(Path::new("/run/kxdp")),
            PathBuf::from("/run/kxdp/n1.sock")
        );
        assert_eq!(c.pods_on("n2").count(), 2);
        assert!(c.check_sockets(Path::new("/run/kxdp")).is_ok());
    }

    #[test]
    fn example_files_are_valid() {
        let c = Cluster::from_yaml(include_str!("../../config/lab-services.yaml")).unwrap();
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[0].endpoints[1].node, "n2");
        let policy = Cluster::from_yaml(include_str!("../../config/policy-example.yaml")).unwrap();
        assert_eq!(policy.policies.len(), 1);
        assert!(policy.policies[0].egress_type && policy.policies[0].egress.is_empty());
        assert_eq!(policy.pods[1].namespace, "shop");
        // The same lab, nodes and pods, as the default file.
        let lab = Cluster::lab();
        assert_eq!((&c.nodes, &c.pods), (&lab.nodes, &lab.pods));
        assert!(lab.services.is_empty());
        let raw = crate::service::RawService::from_yaml(include_str!(
            "../../config/service-example.yaml"
        ))
        .unwrap();
        let mut p = Vec::new();
        let s = crate::service::check(
            "service",
            &raw,
            &lab.service_context(),
            &mut crate::service::Taken::default(),
            &mut p,
        );
        assert!(s.is_some(), "{p:?}");
    }

    #[test]
    fn defaults_fill_a_minimal_file() {
        let c = Cluster::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.cidr.to_string(), "10.244.0.0/16");
        assert_eq!((c.underlay_mtu, c.vni, c.vxlan_port), (1500, 1, 4789));
        assert!(c.pods.is_empty());
    }

    #[test]
    fn explicit_fields_are_kept() {
        let text = "
cluster: { cidr: 10.200.0.0/16, underlay_mtu: 1700, vxlan: { vni: 42, port: 8472 } }
nodes:
  - name: a
    underlay_ip: 192.168.0.1
    uplink: ens3
    pod_cidr: 10.200.0.0/24
    vtep_mac: 02:00:00:00:00:01
    socket: /tmp/a.sock
  - { name: b, underlay_ip: 192.168.0.2, pod_cidr: 10.200.1.0/24, dataplane: kernel }
";
        let c = Cluster::from_yaml(text).unwrap();
        assert_eq!(
            (c.underlay_mtu, c.vni, c.vxlan_port, c.pod_mtu()),
            (1700, 42, 8472, 1650)
        );
        let a = c.node("a").unwrap();
        assert_eq!(a.uplink, "ens3");
        assert_eq!(a.vtep_mac.to_string(), "02:00:00:00:00:01");
        assert_eq!(
            a.socket_path(Path::new("/run/kxdp")),
            PathBuf::from("/tmp/a.sock")
        );
        assert_eq!(c.node("b").unwrap().dataplane, DataplaneKind::Kernel);
    }

    #[test]
    fn yaml_syntax_error_has_line() {
        let text = lab_with(|t| t.push_str("  - { name: p3, node: n1, ip: [\n"));
        let problems = Cluster::from_yaml(&text).unwrap_err();
        assert_eq!(problems.0.len(), 1);
        assert!(problems.0[0].message.contains("line"), "{problems}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let text = replaced("    uplink: eth0", "    uplink: eth0\n    colour: blue");
        let problems = Cluster::from_yaml(&text).unwrap_err().to_string();
        assert!(
            problems.contains("nodes[0]") && problems.contains("colour"),
            "{problems}"
        );
        assert!(problems.contains("line"), "{problems}");

        let problems = Cluster::from_yaml(&replaced("vni: 1,", "vnid: 1,"))
            .unwrap_err()
            .to_string();
        assert!(problems.contains("vnid"), "{problems}");
        let problems = Cluster::from_yaml(&format!("{MINIMAL}ingresses: []\n"))
            .unwrap_err()
            .to_string();
        assert!(problems.contains("ingresses"), "{problems}");
    }

    #[test]
    fn missing_required_field_is_rejected() {
        let problems = Cluster::from_yaml(&replaced("    pod_cidr: 10.244.2.0/24\n", ""))
            .unwrap_err()
            .to_string();
        assert!(problems.contains("pod_cidr"), "{problems}");
    }

    #[test]
    fn bad_dataplane_kind_is_rejected() {
        let text = replaced("    uplink: eth0", "    uplink: eth0\n    dataplane: dpdk");
        let problems = Cluster::from_yaml(&text).unwrap_err().to_string();
        assert!(
            problems.contains("dpdk") && problems.contains("kernel"),
            "{problems}"
        );
    }

    #[test]
    fn cidr_syntax() {
        assert_problem(
            &replaced("cidr: 10.244.0.0/16", "cidr: 10.244.0.0"),
            "cluster.cidr",
            "not an IPv4 CIDR",
        );
        assert_problem(
            &replaced("cidr: 10.244.0.0/16", "cidr: 10.244.0.0/33"),
            "cluster.cidr",
            "not an IPv4 CIDR",
        );
        assert_problem(
            &replaced("pod_cidr: 10.244.2.0/24", "pod_cidr: fd00::/64"),
            "nodes[1].pod_cidr",
            "not an IPv4 CIDR",
        );
    }

    #[test]
    fn non_canonical_cidr() {
        assert_problem(
            &replaced("cidr: 10.244.0.0/16", "cidr: 10.244.0.1/16"),
            "cluster.cidr",
            "host bits set; did you mean 10.244.0.0/16",
        );
        assert_problem(
            &replaced("pod_cidr: 10.244.1.0/24", "pod_cidr: 10.244.1.5/24"),
            "nodes[0].pod_cidr",
            "host bits set",
        );
    }

    #[test]
    fn pod_cidr_outside_cluster_cidr() {
        assert_problem(
            &replaced("pod_cidr: 10.244.2.0/24", "pod_cidr: 10.245.2.0/24"),
            "nodes[1].pod_cidr",
            "outside cluster.cidr 10.244.0.0/16",
        );
    }

    #[test]
    fn pod_cidr_too_small() {
        assert_problem(
            &replaced("pod_cidr: 10.244.2.0/24", "pod_cidr: 10.244.2.0/31"),
            "nodes[1].pod_cidr",
            "too small",
        );
    }

    #[test]
    fn pod_cidrs_overlap() {
        let text = replaced("pod_cidr: 10.244.2.0/24", "pod_cidr: 10.244.1.0/24");
        assert_problem(
            &text,
            "nodes[1].pod_cidr",
            "10.244.1.0/24 overlaps nodes[0] (n1) pod_cidr 10.244.1.0/24",
        );
        // Containment in either direction is an overlap.
        assert_problem(
            &replaced("pod_cidr: 10.244.2.0/24", "pod_cidr: 10.244.0.0/23"),
            "nodes[1].pod_cidr",
            "overlaps nodes[0] (n1)",
        );
    }

    #[test]
    fn duplicate_node_name() {
        assert_problem(
            &replaced("name: n2", "name: n1"),
            "nodes[1].name",
            "duplicate node name n1 (also nodes[0])",
        );
    }

    #[test]
    fn duplicate_underlay_ip() {
        assert_problem(
            &replaced("underlay_ip: 172.30.0.12", "underlay_ip: 172.30.0.11"),
            "nodes[1].underlay_ip",
            "172.30.0.11 is also nodes[0] (n1) underlay_ip",
        );
    }

    #[test]
    fn bad_underlay_ip() {
        assert_problem(
            &replaced("underlay_ip: 172.30.0.12", "underlay_ip: 172.30.0"),
            "nodes[1].underlay_ip",
            "not an IPv4 address",
        );
        assert_problem(
            &replaced("underlay_ip: 172.30.0.12", "underlay_ip: 224.0.0.1"),
            "nodes[1].underlay_ip",
            "not a unicast host address",
        );
        assert_problem(
            &replaced("underlay_ip: 172.30.0.12", "underlay_ip: 10.244.9.1"),
            "nodes[1].underlay_ip",
            "inside cluster.cidr",
        );
    }

    #[test]
    fn duplicate_vtep_mac() {
        // n2's explicit MAC equals n1's default one.
        let text = replaced(
            "    pod_cidr: 10.244.2.0/24",
            "    pod_cidr: 10.244.2.0/24\n    vtep_mac: 0e:58:ac:1e:00:0b",
        );
        assert_problem(
            &text,
            "nodes[1].vtep_mac",
            "0e:58:ac:1e:00:0b is also nodes[0] (n1) vtep_mac",
        );
    }

    #[test]
    fn bad_vtep_mac() {
        let with = |mac: &str| {
            replaced(
                "    pod_cidr: 10.244.2.0/24",
                &format!("    pod_cidr: 10.244.2.0/24\n    vtep_mac: \"{mac}\""),
            )
        };
        assert_problem(
            &with("0e:58:ac:1e:00"),
            "nodes[1].vtep_mac",
            "not a MAC address",
        );
        assert_problem(
            &with("01:00:5e:00:00:01"),
            "nodes[1].vtep_mac",
            "not a unicast MAC",
        );
        assert_problem(
            &with("00:00:00:00:00:00"),
            "nodes[1].vtep_mac",
            "not a unicast MAC",
        );
    }

    #[test]
    fn bad_uplink() {
        assert_problem(
            &replaced("uplink: eth0 ", "uplink: a-very-long-interface-name "),
            "nodes[0].uplink",
            "not a Linux interface name",
        );
        assert_problem(
            &replaced("uplink: eth0 ", "uplink: \"eth0:1\" "),
            "nodes[0].uplink",
            "not a Linux interface name",
        );
    }

    #[test]
    fn socket_rules() {
        let with = |extra: &str| {
            replaced(
                "    pod_cidr: 10.244.2.0/24",
                &format!("    pod_cidr: 10.244.2.0/24\n{extra}"),
            )
        };
        assert_problem(
            &with("    socket: run/n2.sock"),
            "nodes[1].socket",
            "not an absolute path",
        );
        assert_problem(
            &with("    dataplane: kernel\n    socket: /run/n2.sock"),
            "nodes[1].socket",
            "dataplane: kernel",
        );
        // Explicit duplicates are caught by validation...
        let text = replaced(
            "    uplink: eth0",
            "    uplink: eth0\n    socket: /run/x.sock",
        );
        let text = text.replacen(
            "    pod_cidr: 10.244.2.0/24",
            "    pod_cidr: 10.244.2.0/24\n    socket: /run/x.sock",
            1,
        );
        assert_problem(
            &text,
            "nodes[1].socket",
            "/run/x.sock is also nodes[0] (n1) socket",
        );
        // ...and collisions with a default path once the directory is known.
        let c = Cluster::from_yaml(&with("    socket: /run/kxdp/n1.sock")).unwrap();
        let problems = c.check_sockets(Path::new("/run/kxdp")).unwrap_err();
        assert_eq!(problems.0[0].path, "nodes[1].socket");
        assert!(
            problems.0[0].message.contains("nodes[0] (n1)"),
            "{problems}"
        );
        assert!(c.check_sockets(Path::new("/elsewhere")).is_ok());
    }

    #[test]
    fn vni_range() {
        assert_problem(
            &replaced("vni: 1,", "vni: 0,"),
            "cluster.vxlan.vni",
            "0 is out of range 1..=16777215",
        );
        assert_problem(
            &replaced("vni: 1,", "vni: 16777216,"),
            "cluster.vxlan.vni",
            "out of range",
        );
        assert!(Cluster::from_yaml(&replaced("vni: 1,", "vni: 16777215,")).is_ok());
    }

    #[test]
    fn port_range() {
        assert_problem(
            &replaced("port: 4789", "port: 0"),
            "cluster.vxlan.port",
            "out of range 1..=65535",
        );
        assert_problem(
            &replaced("port: 4789", "port: 65536"),
            "cluster.vxlan.port",
            "out of range",
        );
        assert_problem(
            &replaced("port: 4789", "port: -1"),
            "cluster.vxlan.port",
            "out of range",
        );
    }

    #[test]
    fn masquerade_is_on_by_default_and_its_exceptions_are_checked() {
        let c = Cluster::from_yaml(LAB_CLUSTER_YAML).unwrap();
        assert!(c.ip_masq && c.non_masquerade_cidrs.is_empty());
        let c = Cluster::from_yaml(&replaced(
            "underlay_mtu: 1500",
            "underlay_mtu: 1500\n  ip_masq: false\n  non_masquerade_cidrs: [198.51.100.0/24]",
        ))
        .unwrap();
        assert!(!c.ip_masq);
        assert_eq!(
            c.non_masquerade_cidrs,
            vec!["198.51.100.0/24".parse().unwrap()]
        );
        assert_problem(
            &replaced(
                "underlay_mtu: 1500",
                "underlay_mtu: 1500\n  non_masquerade_cidrs: [198.51.100.0/33]",
            ),
            "cluster.non_masquerade_cidrs[0]",
            "198.51.100.0/33",
        );
        let many: Vec<String> = (0..65).map(|i| format!("10.{i}.0.0/16")).collect();
        assert_problem(
            &replaced(
                "underlay_mtu: 1500",
                &format!(
                    "underlay_mtu: 1500\n  non_masquerade_cidrs: [{}]",
                    many.join(", ")
                ),
            ),
            "cluster.non_masquerade_cidrs",
            "65 entries; at most 64",
        );
    }

    #[test]
    fn underlay_mtu_range() {
        assert_problem(
            &replaced("underlay_mtu: 1500", "underlay_mtu: 575"),
            "cluster.underlay_mtu",
            "576..=1778",
        );
        assert_problem(
            &replaced("underlay_mtu: 1500", "underlay_mtu: 1779"),
            "cluster.underlay_mtu",
            "576..=1778",
        );
        // A jumbo MTU says why it cannot be carried.
        assert_problem(
            &replaced("underlay_mtu: 1500", "underlay_mtu: 9000"),
            "cluster.underlay_mtu",
            "jumbo frames are not carried; set the underlay MTU to 1778 or less",
        );
        assert_eq!(
            Cluster::from_yaml(&replaced("underlay_mtu: 1500", "underlay_mtu: 1778"))
                .unwrap()
                .pod_mtu(),
            1728
        );
        assert_eq!(
            Cluster::from_yaml(&replaced("underlay_mtu: 1500", "underlay_mtu: 576"))
                .unwrap()
                .pod_mtu(),
            526
        );
    }

    #[test]
    fn no_nodes() {
        assert_problem("nodes: []\n", "nodes", "at least one node");
    }

    #[test]
    fn pod_on_unknown_node() {
        assert_problem(
            &replaced("{ name: p2, node: n2,", "{ name: p2, node: n3,"),
            "pods[3].node",
            "unknown node n3 (nodes are: n1, n2)",
        );
    }

    #[test]
    fn an_existing_pod_keeps_its_own_mac_and_veth() {
        let c = Cluster::from_yaml(&replaced(
            "ip: 10.244.2.3 }",
            "ip: 10.244.2.3, mac: \"02:aa:bb:cc:dd:ee\", ifname: veth9f3a }",
        ))
        .unwrap();
        let p = c
            .pods
            .iter()
            .find(|p| p.ip.to_string() == "10.244.2.3")
            .unwrap();
        assert_eq!(p.mac.to_string(), "02:aa:bb:cc:dd:ee");
        assert_eq!(p.ifname, "veth9f3a");
        // The others keep the conventions.
        let q = c
            .pods
            .iter()
            .find(|p| p.ip.to_string() == "10.244.2.2")
            .unwrap();
        assert_eq!(q.mac.to_string(), "0a:58:0a:f4:02:02");
        assert_eq!(q.ifname, "kx0af40202");
    }

    #[test]
    fn pod_mac_and_ifname_are_checked() {
        let with =
            |extra: &str| replaced("ip: 10.244.2.3 }", &format!("ip: 10.244.2.3, {extra} }}"));
        assert_problem(
            &with("mac: \"01:00:5e:00:00:01\""),
            "pods[3].mac",
            "not a unicast MAC",
        );
        assert_problem(&with("mac: nope"), "pods[3].mac", "not a MAC address");
        // Another pod's conventional MAC on the same node.
        assert_problem(
            &with("mac: \"0a:58:0a:f4:02:02\""),
            "pods[3].mac",
            "also pods[2]'s MAC on node n2",
        );
        assert_problem(
            &with("ifname: \"a/b\""),
            "pods[3].ifname",
            "not a Linux interface name",
        );
        assert_problem(
            &with("ifname: kx0af40202"),
            "pods[3].ifname",
            "also pods[2]'s interface on node n2",
        );
        assert_problem(&with("ifname: eth0"), "pods[3].ifname", "node n2's uplink");
        // The same name on another node is another interface.
        assert!(Cluster::from_yaml(&with("ifname: kx0af40102")).is_ok());
    }

    #[test]
    fn pod_ip_outside_its_node() {
        assert_problem(
            &replaced("ip: 10.244.2.3", "ip: 10.244.1.9"),
            "pods[3].ip",
            "10.244.1.9 is outside node n2's pod_cidr 10.244.2.0/24",
        );
    }

    #[test]
    fn pod_ip_reserved_addresses() {
        assert_problem(
            &replaced("ip: 10.244.2.3", "ip: 10.244.2.0"),
            "pods[3].ip",
            "network address",
        );
        assert_problem(
            &replaced("ip: 10.244.2.3", "ip: 10.244.2.255"),
            "pods[3].ip",
            "broadcast address",
        );
        assert_problem(
            &replaced("ip: 10.244.2.3", "ip: 10.244.2.1"),
            "pods[3].ip",
            "pod gateway",
        );
        assert_problem(
            &replaced("ip: 10.244.2.3", "ip: 10.244.2"),
            "pods[3].ip",
            "not an IPv4 address",
        );
    }

    #[test]
    fn duplicate_pod_ip() {
        assert_problem(
            &replaced("ip: 10.244.1.3", "ip: 10.244.1.2"),
            "pods[1].ip",
            "10.244.1.2 is already used by pods[0] (n1/p1)",
        );
    }

    #[test]
    fn duplicate_pod_name_on_a_node() {
        assert_problem(
            &replaced("{ name: p2, node: n1,", "{ name: p1, node: n1,"),
            "pods[1].name",
            "duplicate pod name p1 on node n1 (also pods[0])",
        );
        // The same name on two nodes is fine (the lab has p1 on both).
        assert!(Cluster::from_yaml(LAB_CLUSTER_YAML).is_ok());
    }

    #[test]
    fn empty_names() {
        assert_problem(
            &replaced("name: n2", "name: \"\""),
            "nodes[1].name",
            "must not be empty",
        );
        assert_problem(
            &replaced("{ name: p2, node: n2,", "{ name: \"\", node: n2,"),
            "pods[3].name",
            "must not be empty",
        );
        assert_problem(
            &replaced("{ name: p2, node: n2,", "{ name: p2, node: \"\","),
            "pods[3].node",
            "must not be empty",
        );
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in ["N1", "n_1", "-n1", "n1-", "n.1"] {
            assert_problem(
                &replaced("name: n2", &format!("name: \"{bad}\"")),
                "nodes[1].name",
                "not a DNS label",
            );
        }
        let long = "a".repeat(64);
        assert_problem(
            &replaced(
                "{ name: p2, node: n2,",
                &format!("{{ name: {long}, node: n2,"),
            ),
            "pods[3].name",
            "not a DNS label",
        );
        assert!(crate::validate::is_dns_label(&"a".repeat(63)));
        assert!(crate::validate::is_dns_label("node-1"));
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let text = LAB_CLUSTER_YAML
            .replacen("vni: 1,", "vni: 0,", 1)
            .replacen("pod_cidr: 10.244.2.0/24", "pod_cidr: 10.244.1.0/24", 1)
            .replacen("ip: 10.244.2.3", "ip: 10.244.9.3", 1);
        let problems = Cluster::from_yaml(&text).unwrap_err();
        let paths: Vec<&str> = problems.0.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.contains(&"cluster.vxlan.vni"), "{problems}");
        assert!(paths.contains(&"nodes[1].pod_cidr"), "{problems}");
        assert!(paths.contains(&"pods[3].ip"), "{problems}");
        // One per line, each "path: message".
        assert_eq!(problems.to_string().lines().count(), problems.0.len());
    }
}
