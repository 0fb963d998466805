//! Services and their endpoints, Kubernetes-shaped: parsed (from the cluster
//! file's `services:` or an `UpsertService` request), validated against the
//! rest of the cluster, and converted to the dataplane's proto form.
//!
//! Validation rules (every problem listed, each naming its path):
//! - `name` is `namespace/name`, both DNS labels, unique;
//! - `cluster_ip` is a host address of the service CIDR (not its network or
//!   broadcast address), unique;
//! - at least one port; `port`, `target_port` (default `port`) in 1..=65535;
//!   (protocol, port) unique within the service; port names, when given, DNS
//!   labels unique within the service;
//! - `node_port` (optional) inside the node port range and unique per
//!   (protocol, port) across all services — NodePorts open on every node's
//!   underlay address, so any two collide — and a UDP NodePort must not be
//!   the VXLAN port;
//! - `affinity_timeout_s` in 1..=86400 (default 10800);
//! - `external_ips` and `load_balancer_ips` (addresses the underlay routes to
//!   the nodes) routable, outside the cluster and service CIDRs, no node's
//!   underlay address, unique in their list, and each (address, protocol,
//!   port) of the service's ports served by one service only;
//! - `health_check_node_port` only with `external_traffic_policy: Local`,
//!   inside the node port range, and unique among the TCP NodePorts and
//!   health check ports of all services (it opens on every node);
//! - endpoints inside the cluster CIDR are inside some node's pod CIDR
//!   (which fills `Endpoint.node`); endpoints outside it (a node's address
//!   for hostNetwork pods and the API server, or anything reachable, as an
//!   EndpointSlice may say) are routable and no ClusterIP, their `node` as
//!   given; all unique within the service. An endpoint need not be a known
//!   pod's IP (pods can come and go before endpoints do).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use kxdp_proto::dataplane as pb;
use serde::{Deserialize, Serialize};

use crate::validate::{in_range, is_dns_label, parse_ip, Problem, Problems, PORT_RANGE};

/// The validated service and its enums are kxdp-proto's, shared with the
/// dataplane (which writes the same proto back).
pub use kxdp_proto::service::{
    Endpoint, Protocol, Service, ServicePort, SessionAffinity, TrafficPolicy,
    DEFAULT_AFFINITY_TIMEOUT_S, MAX_AFFINITY_TIMEOUT_S,
};

pub const AFFINITY_TIMEOUT_RANGE: std::ops::RangeInclusive<i64> = 1..=MAX_AFFINITY_TIMEOUT_S as i64;

// ---- raw model: the YAML shape, and what a proto request is read into ----

fn default_timeout() -> i64 {
    i64::from(DEFAULT_AFFINITY_TIMEOUT_S)
}

/// One service as written in YAML (the cluster file's `services:` entries,
/// and `kxdpctl service apply`'s file).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: String,
    pub cluster_ip: String,
    #[serde(default)]
    pub ports: Vec<RawPort>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    #[serde(default = "default_timeout")]
    pub affinity_timeout_s: i64,
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    /// `spec.externalIPs`.
    #[serde(default)]
    pub external_ips: Vec<String>,
    /// A LoadBalancer's `status.loadBalancer.ingress` IPs.
    #[serde(default)]
    pub load_balancer_ips: Vec<String>,
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    #[serde(default)]
    pub health_check_node_port: Option<i64>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPort {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    pub port: i64,
    #[serde(default)]
    pub target_port: Option<i64>,
    #[serde(default)]
    pub node_port: Option<i64>,
}

fn yes() -> bool {
    true
}

/// EndpointSlice conditions default to ready and serving, not terminating.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub ip: String,
    /// Optional: filled from the pod CIDR holding `ip`; if given it must match.
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default = "yes")]
    pub ready: bool,
    #[serde(default = "yes")]
    pub serving: bool,
    #[serde(default)]
    pub terminating: bool,
}

impl RawService {
    /// Reads one service's YAML (`kxdpctl service apply FILE`).
    pub fn from_yaml(text: &str) -> Result<RawService, Problems> {
        serde_yaml_ng::from_str(text)
            .map_err(|e| Problems(vec![Problem::new(String::new(), format!("YAML: {e}"))]))
    }

    /// Reads a proto service; proto defaults mean what the proto says (0 is
    /// "none" for target/node ports, 10800 for the timeout, TCP for an
    /// unspecified protocol, as Kubernetes defaults it). Unknown enum values
    /// are problems at `path`.
    pub fn from_proto(path: &str, s: &pb::Service) -> Result<RawService, Problems> {
        let mut p = Vec::new();
        let ports = s
            .ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let protocol = match Protocol::from_proto(port.protocol) {
                    Ok(p) => p.unwrap_or_default(),
                    Err(_) => {
                        p.push(Problem::new(
                            format!("{path}.ports[{i}].protocol"),
                            format!("{} is not a protocol (TCP or UDP)", port.protocol),
                        ));
                        Protocol::Tcp
                    }
                };
                RawPort {
                    name: port.name.clone(),
                    protocol,
                    port: i64::from(port.port),
                    target_port: (port.target_port != 0).then_some(i64::from(port.target_port)),
                    node_port: (port.node_port != 0).then_some(i64::from(port.node_port)),
                }
            })
            .collect();
        let session_affinity = match SessionAffinity::from_proto(s.session_affinity) {
            Some(a) => a,
            None => {
                p.push(Problem::new(
                    format!("{path}.session_affinity"),
                    format!("{} is not a session affinity", s.session_affinity),
                ));
                SessionAffinity::None
            }
        };
        let external_traffic_policy = match TrafficPolicy::from_proto(s.external_traffic_policy) {
            Some(t) => t,
            None => {
                p.push(Problem::new(
                    format!("{path}.external_traffic_policy"),
                    format!("{} is not a traffic policy", s.external_traffic_policy),
                ));
                TrafficPolicy::Cluster
            }
        };
        let internal_traffic_policy = match TrafficPolicy::from_proto(s.internal_traffic_policy) {
            Some(t) => t,
            None => {
                p.push(Problem::new(
                    format!("{path}.internal_traffic_policy"),
                    format!("{} is not a traffic policy", s.internal_traffic_policy),
                ));
                TrafficPolicy::Cluster
            }
        };
        let raw = RawService {
            name: s.name.clone(),
            cluster_ip: s.cluster_ip.clone(),
            ports,
            session_affinity,
            affinity_timeout_s: if s.affinity_timeout_s == 0 {
                default_timeout()
            } else {
                i64::from(s.affinity_timeout_s)
            },
            external_traffic_policy,
            endpoints: s
                .endpoints
                .iter()
                .map(|e| RawEndpoint {
                    ip: e.ip.clone(),
                    node: (!e.node.is_empty()).then(|| e.node.clone()),
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                })
                .collect(),
            external_ips: s.external_ips.clone(),
            load_balancer_ips: s.load_balancer_ips.clone(),
            internal_traffic_policy,
            health_check_node_port: (s.health_check_node_port != 0)
                .then_some(i64::from(s.health_check_node_port)),
        };
        Problems::result(p).map(|()| raw)
    }

    /// The proto request for this service, unvalidated (the control process
    /// validates); only values a proto field cannot hold are problems.
    pub fn to_proto(&self) -> Result<pb::Service, Problems> {
        let mut p = Vec::new();
        let mut num = |path: String, v: i64| -> u32 {
            u32::try_from(v).unwrap_or_else(|_| {
                p.push(Problem::new(path, format!("{v} is out of range")));
                0
            })
        };
        let ports = self
            .ports
            .iter()
            .enumerate()
            .map(|(i, port)| pb::ServicePort {
                name: port.name.clone(),
                protocol: pb::Protocol::from(port.protocol) as i32,
                port: num(format!("ports[{i}].port"), port.port),
                target_port: port
                    .target_port
                    .map_or(0, |v| num(format!("ports[{i}].target_port"), v)),
                node_port: port
                    .node_port
                    .map_or(0, |v| num(format!("ports[{i}].node_port"), v)),
            })
            .collect();
        let affinity_timeout_s = num("affinity_timeout_s".into(), self.affinity_timeout_s);
        let health_check_node_port = self
            .health_check_node_port
            .map_or(0, |v| num("health_check_node_port".into(), v));
        let service = pb::Service {
            name: self.name.clone(),
            cluster_ip: self.cluster_ip.clone(),
            ports,
            session_affinity: pb::SessionAffinity::from(self.session_affinity) as i32,
            affinity_timeout_s,
            external_traffic_policy: pb::TrafficPolicy::from(self.external_traffic_policy) as i32,
            endpoints: self
                .endpoints
                .iter()
                .map(|e| pb::Endpoint {
                    ip: e.ip.clone(),
                    node: e.node.clone().unwrap_or_default(),
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                })
                .collect(),
            external_ips: self.external_ips.clone(),
            load_balancer_ips: self.load_balancer_ips.clone(),
            internal_traffic_policy: pb::TrafficPolicy::from(self.internal_traffic_policy) as i32,
            health_check_node_port,
        };
        Problems::result(p).map(|()| service)
    }
}

// ---- validation ----

/// Why `ip` cannot be an endpoint outside the pod network, if it cannot.
pub fn unroutable(ip: Ipv4Addr, service_cidr: Ipv4Net) -> Option<String> {
    if let Some(why) = kxdp_proto::service::unroutable_endpoint(ip) {
        return Some(why.into());
    }
    service_cidr.contains(&ip).then(|| {
        format!("inside the service CIDR {service_cidr}: an endpoint cannot be a ClusterIP")
    })
}

/// What a service is checked against: the cluster's addressing.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub node_ports: (u16, u16),
    pub vxlan_port: u16,
    /// Every node's (name, pod CIDR), kernel nodes included.
    pub nodes: Vec<(&'a str, Ipv4Net)>,
    /// Every node's (name, underlay address): no external IP may be one.
    pub underlay: Vec<(&'a str, Ipv4Addr)>,
    /// Nodes that are away (etcd mode: liveness lease lapsed): their
    /// endpoints are taken as not ready and not serving, whatever they say.
    pub unreachable: Vec<&'a str>,
}

/// What the services checked so far hold, with who holds it ("services[0]
/// (default/web)"), so a later one can be told what it collides with.
#[derive(Debug, Default)]
pub struct Taken {
    names: HashMap<String, String>,
    cluster_ips: HashMap<Ipv4Addr, String>,
    node_ports: HashMap<(Protocol, u16), String>,
    /// External and LoadBalancer IPs' (address, protocol, port).
    outside: HashMap<(Ipv4Addr, Protocol, u16), String>,
}

impl Taken {
    /// Records a valid service as taken by `who`.
    pub fn add(&mut self, s: &Service, who: &str) {
        self.names.insert(s.name.clone(), who.to_string());
        self.cluster_ips.insert(s.cluster_ip, who.to_string());
        for p in &s.ports {
            if let Some(np) = p.node_port {
                self.node_ports.insert((p.protocol, np), who.to_string());
            }
            for a in s.outside_ips() {
                self.outside
                    .insert((a, p.protocol, p.port), who.to_string());
            }
        }
        if let Some(hc) = s.health_check_node_port {
            self.node_ports.insert((Protocol::Tcp, hc), who.to_string());
        }
    }
}

/// The whole desired state's services against the API limits (how many,
/// their backends summed): one problem at `path` if over.
pub fn check_totals(
    path: &str,
    services: impl IntoIterator<Item = (usize, usize)>,
    p: &mut Vec<Problem>,
) {
    if let Err(e) = kxdp_proto::limits::check_services(services) {
        p.push(Problem::new(path, e.message));
    }
}

/// A validated service's (ports, endpoints), for [`check_totals`].
pub fn size(s: &Service) -> (usize, usize) {
    (s.ports.len(), s.endpoints.len())
}

/// `namespace/name`, both DNS labels.
pub fn is_service_name(name: &str) -> bool {
    match name.split_once('/') {
        Some((ns, n)) => is_dns_label(ns) && is_dns_label(n),
        None => false,
    }
}

/// Validates `raw` at `path` (e.g. `services[2]`) against `ctx` and what
/// `taken` holds; on success records it in `taken` as `path (name)`.
/// Problems are appended to `p`.
pub fn check(
    path: &str,
    raw: &RawService,
    ctx: &Context<'_>,
    taken: &mut Taken,
    p: &mut Vec<Problem>,
) -> Option<Service> {
    let before = p.len();
    let at = |field: &str| format!("{path}.{field}");
    let who = format!("{path} ({})", raw.name);
    // Over a limit: nothing more of it is worth reading.
    if let Err(e) = kxdp_proto::limits::check_service(
        raw.ports.len(),
        raw.endpoints.len(),
        raw.external_ips.len(),
        raw.load_balancer_ips.len(),
    ) {
        p.push(Problem::new(at(e.field), e.message));
        return None;
    }

    if !is_service_name(&raw.name) {
        p.push(Problem::new(
            at("name"),
            format!(
                "{:?} is not namespace/name (two DNS labels: a-z, 0-9 and '-')",
                raw.name
            ),
        ));
    } else if let Some(other) = taken.names.get(&raw.name) {
        p.push(Problem::new(
            at("name"),
            format!("duplicate service name {} (also {other})", raw.name),
        ));
    } else {
        taken.names.insert(raw.name.clone(), who.clone());
    }

    let cluster_ip = parse_ip(&at("cluster_ip"), &raw.cluster_ip, p);
    if let Some(ip) = cluster_ip {
        let net = ctx.service_cidr;
        if !net.contains(&ip) {
            p.push(Problem::new(
                at("cluster_ip"),
                format!("{ip} is outside the service CIDR {net}"),
            ));
        } else if ip == net.network() || ip == net.broadcast() {
            p.push(Problem::new(
                at("cluster_ip"),
                format!(
                    "{ip} is the {} address of the service CIDR {net}",
                    if ip == net.network() {
                        "network"
                    } else {
                        "broadcast"
                    }
                ),
            ));
        } else if let Some(other) = taken.cluster_ips.get(&ip) {
            p.push(Problem::new(
                at("cluster_ip"),
                format!("{ip} is already the ClusterIP of {other}"),
            ));
        } else {
            taken.cluster_ips.insert(ip, who.clone());
        }
    }

    if raw.ports.is_empty() {
        p.push(Problem::new(at("ports"), "at least one port is required"));
    }
    let mut ports = Vec::with_capacity(raw.ports.len());
    let mut seen: HashMap<(Protocol, i64), usize> = HashMap::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let (lo, hi) = ctx.node_ports;
    for (i, port) in raw.ports.iter().enumerate() {
        let at = |field: &str| format!("{path}.ports[{i}].{field}");
        let start = p.len();
        if !port.name.is_empty() {
            if !is_dns_label(&port.name) {
                p.push(Problem::new(
                    at("name"),
                    format!("{:?} is not a DNS label", port.name),
                ));
            } else if let Some(j) = names.insert(&port.name, i) {
                p.push(Problem::new(
                    at("name"),
                    format!("duplicate port name {} (also ports[{j}])", port.name),
                ));
            }
        }
        let number = in_range(&at("port"), port.port, PORT_RANGE, p);
        if let Some(j) = seen.insert((port.protocol, port.port), i) {
            p.push(Problem::new(
                at("port"),
                format!(
                    "duplicate {}/{} (also ports[{j}])",
                    port.port, port.protocol
                ),
            ));
        }
        let target = match port.target_port {
            Some(t) => in_range(&at("target_port"), t, PORT_RANGE, p),
            None => number,
        };
        let node_port = match port.node_port {
            None => None,
            Some(np) if np < i64::from(lo) || np > i64::from(hi) => {
                p.push(Problem::new(
                    at("node_port"),
                    format!("{np} is outside the node port range {lo}-{hi}"),
                ));
                None
            }
            Some(np) => {
                let np = np as u16;
                let key = (port.protocol, np);
                if port.protocol == Protocol::Udp && np == ctx.vxlan_port {
                    p.push(Problem::new(
                        at("node_port"),
                        format!("{np}/UDP is the cluster's VXLAN port"),
                    ));
                } else if let Some(other) = taken.node_ports.get(&key) {
                    p.push(Problem::new(
                        at("node_port"),
                        format!("{np}/{} is already taken by {other}", port.protocol),
                    ));
                } else {
                    taken.node_ports.insert(key, who.clone());
                }
                Some(np)
            }
        };
        if let (true, Some(number), Some(target)) = (p.len() == start, number, target) {
            ports.push(ServicePort {
                name: port.name.clone(),
                protocol: port.protocol,
                port: number as u16,
                target_port: target as u16,
                node_port,
            });
        }
    }

    let timeout = in_range(
        &at("affinity_timeout_s"),
        raw.affinity_timeout_s,
        AFFINITY_TIMEOUT_RANGE,
        p,
    );
    let external_ips = check_outside_ips(
        path,
        "external_ips",
        &raw.external_ips,
        &ports,
        ctx,
        taken,
        &who,
        p,
    );
    let load_balancer_ips = check_outside_ips(
        path,
        "load_balancer_ips",
        &raw.load_balancer_ips,
        &ports,
        ctx,
        taken,
        &who,
        p,
    );
    let health_check_node_port = match raw.health_check_node_port {
        None => None,
        Some(_) if raw.external_traffic_policy != TrafficPolicy::Local => {
            p.push(Problem::new(
                at("health_check_node_port"),
                "only with external_traffic_policy: Local",
            ));
            None
        }
        Some(hc) if hc < i64::from(lo) || hc > i64::from(hi) => {
            p.push(Problem::new(
                at("health_check_node_port"),
                format!("{hc} is outside the node port range {lo}-{hi}"),
            ));
            None
        }
        Some(hc) => {
            // A TCP port on the nodes' NodePort addresses, like a NodePort.
            let key = (Protocol::Tcp, hc as u16);
            if let Some(other) = taken.node_ports.get(&key) {
                p.push(Problem::new(
                    at("health_check_node_port"),
                    format!("{hc}/TCP is already taken by {other}"),
                ));
            } else {
                taken.node_ports.insert(key, who.clone());
            }
            Some(hc as u16)
        }
    };

    let mut endpoints = Vec::with_capacity(raw.endpoints.len());
    let mut ips: HashSet<Ipv4Addr> = HashSet::new();
    for (i, e) in raw.endpoints.iter().enumerate() {
        let at = |field: &str| format!("{path}.endpoints[{i}].{field}");
        let Some(ip) = parse_ip(&at("ip"), &e.ip, p) else {
            continue;
        };
        if !ips.insert(ip) {
            p.push(Problem::new(at("ip"), format!("duplicate endpoint {ip}")));
            continue;
        }
        if !ctx.cluster_cidr.contains(&ip) {
            // Outside the pod network: a node's address (hostNetwork pods,
            // the API server) or anything reachable, as EndpointSlices allow.
            if let Some(why) = unroutable(ip, ctx.service_cidr) {
                p.push(Problem::new(at("ip"), format!("{ip} is {why}")));
                continue;
            }
            let node = e.node.clone().unwrap_or_default();
            let away = ctx.unreachable.contains(&node.as_str());
            endpoints.push(Endpoint {
                ip,
                node,
                ready: e.ready && !away,
                serving: e.serving && !away,
                terminating: e.terminating,
            });
            continue;
        }
        let Some(&(node, net)) = ctx.nodes.iter().find(|(_, net)| net.contains(&ip)) else {
            p.push(Problem::new(
                at("ip"),
                format!("{ip} is in no node's pod CIDR, so no node can hold it"),
            ));
            continue;
        };
        if ip == net.network() || ip == net.broadcast() || ip == crate::conventions::gateway(net) {
            p.push(Problem::new(
                at("ip"),
                format!("{ip} is not a pod address of node {node}'s pod CIDR {net}"),
            ));
            continue;
        }
        if let Some(given) = e.node.as_deref().filter(|g| *g != node) {
            p.push(Problem::new(
                at("node"),
                format!("{ip} is in node {node}'s pod CIDR {net}, not on {given}"),
            ));
            continue;
        }
        // An unreachable node's pods are not ready (Kubernetes' node
        // lifecycle controller marks them so): traffic goes to the others.
        let away = ctx.unreachable.contains(&node);
        endpoints.push(Endpoint {
            ip,
            node: node.to_string(),
            ready: e.ready && !away,
            serving: e.serving && !away,
            terminating: e.terminating,
        });
    }

    match (p.len() == before, cluster_ip, timeout) {
        (true, Some(cluster_ip), Some(timeout)) => Some(Service {
            name: raw.name.clone(),
            cluster_ip,
            ports,
            session_affinity: raw.session_affinity,
            affinity_timeout_s: timeout as u32,
            external_traffic_policy: raw.external_traffic_policy,
            endpoints,
            external_ips,
            load_balancer_ips,
            internal_traffic_policy: raw.internal_traffic_policy,
            health_check_node_port,
        }),
        _ => None,
    }
}

/// A service's external (or LoadBalancer) IPs at `path.field`: addresses
/// the underlay routes to the nodes, so routable and outside the cluster
/// and service CIDRs, no node's underlay address, unique in the list; each
/// (address, protocol, port) of the service's `ports` served by it alone.
#[allow(clippy::too_many_arguments)]
fn check_outside_ips(
    path: &str,
    field: &str,
    list: &[String],
    ports: &[ServicePort],
    ctx: &Context<'_>,
    taken: &mut Taken,
    who: &str,
    p: &mut Vec<Problem>,
) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for (i, text) in list.iter().enumerate() {
        let at = format!("{path}.{field}[{i}]");
        let Some(ip) = parse_ip(&at, text, p) else {
            continue;
        };
        let why = if let Some(why) = kxdp_proto::service::unroutable_endpoint(ip) {
            Some(why.to_string())
        } else if ctx.cluster_cidr.contains(&ip) {
            Some(format!("inside the cluster CIDR {}", ctx.cluster_cidr))
        } else if ctx.service_cidr.contains(&ip) {
            Some(format!("inside the service CIDR {}", ctx.service_cidr))
        } else if let Some((node, _)) = ctx.underlay.iter().find(|(_, a)| *a == ip) {
            Some(format!(
                "node {node}'s underlay address (its NodePorts live there)"
            ))
        } else if out.contains(&ip) {
            Some("listed twice".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            p.push(Problem::new(at, format!("{ip} is {why}")));
            continue;
        }
        for port in ports {
            let key = (ip, port.protocol, port.port);
            match taken.outside.get(&key) {
                Some(other) if other != who => p.push(Problem::new(
                    at.clone(),
                    format!(
                        "{ip}:{}/{} is already served by {other}",
                        port.port, port.protocol
                    ),
                )),
                _ => {
                    taken.outside.insert(key, who.to_string());
                }
            }
        }
        out.push(ip);
    }
    out
}

/// Parses `lo-hi` (e.g. "30000-32767"), 1 <= lo <= hi <= 65535.
pub fn parse_port_range(path: &str, text: &str, p: &mut Vec<Problem>) -> Option<(u16, u16)> {
    let parsed = text
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((lo, hi)) if lo >= 1 && lo <= hi => Some((lo, hi)),
        _ => {
            p.push(Problem::new(
                path,
                format!("{text:?} is not a port range lo-hi with 1 <= lo <= hi <= 65535"),
            ));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, LAB_CLUSTER_YAML};

    const WEB: &str = "
services:
  - name: default/web
    cluster_ip: 10.96.0.10
    ports:
      - { name: http, protocol: TCP, port: 80, target_port: 8080, node_port: 30080 }
      - { name: dns, protocol: UDP, port: 53 }
    session_affinity: ClientIP
    affinity_timeout_s: 600
    external_traffic_policy: Local
    endpoints:
      - { ip: 10.244.1.2 }
      - { ip: 10.244.2.77, ready: false, serving: true, terminating: true }
";

    /// The lab file without its service_cidr and node_port_range lines.
    fn lab_without_service_settings() -> String {
        LAB_CLUSTER_YAML
            .lines()
            .filter(|l| !l.starts_with("  service_cidr:") && !l.starts_with("  node_port_range:"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn lab_with_services(services: &str) -> String {
        format!("{LAB_CLUSTER_YAML}{services}")
    }

    fn problems_of(text: &str) -> Problems {
        match Cluster::from_yaml(text) {
            Ok(_) => panic!("expected problems:\n{text}"),
            Err(p) => p,
        }
    }

    fn assert_problem(text: &str, path: &str, needle: &str) {
        let p = problems_of(text);
        assert!(
            p.0.iter()
                .any(|x| x.path == path && x.message.contains(needle)),
            "no problem at {path} mentioning {needle:?}; got:\n{p}"
        );
    }

    /// WEB with one edit.
    fn web(from: &str, to: &str) -> String {
        assert!(WEB.contains(from), "{from}");
        lab_with_services(&WEB.replacen(from, to, 1))
    }

    /// The cluster file (`kxdpctl apply`) refuses what the APIs refuse.
    #[test]
    fn a_cluster_file_over_the_api_limits_is_refused() {
        use kxdp_proto::limits::MAX_ENDPOINTS_PER_SERVICE;
        let endpoints: String = (0..=MAX_ENDPOINTS_PER_SERVICE as u32)
            .map(|j| {
                format!(
                    "      - {{ ip: {} }}\n",
                    std::net::Ipv4Addr::from(0xc633_0000 + j)
                )
            })
            .collect();
        let text = lab_with_services(&format!(
            "services:\n  - name: default/big\n    cluster_ip: 10.96.0.10\n    ports: [{{ port: 80 }}]\n    endpoints:\n{endpoints}"
        ));
        assert_problem(
            &text,
            "services[0].endpoints",
            "5001 endpoints, over the limit of 5000 per service",
        );
        let many: String = (0..=kxdp_proto::limits::MAX_SERVICES as u32)
            .map(|i| {
                format!(
                    "  - {{ name: default/s{i}, cluster_ip: {}, ports: [{{ port: 80 }}] }}\n",
                    std::net::Ipv4Addr::from(0x0a60_0100 + i)
                )
            })
            .collect();
        assert_problem(
            &lab_with_services(&format!("services:\n{many}")),
            "services",
            "20001 services, over the limit of 20000",
        );
    }

    /// The `kubernetes` service: its endpoint is the API server on a
    /// node's address, outside the pod network.
    #[test]
    fn an_endpoint_may_be_a_node_address_or_outside_the_cluster() {
        let c = Cluster::from_yaml(&lab_with_services(
            "services:\n  - name: default/kubernetes\n    cluster_ip: 10.96.0.1\n    \
             ports: [{ name: https, protocol: TCP, port: 443, target_port: 6443 }]\n    \
             endpoints: [{ ip: 172.30.0.11, node: n1 }, { ip: 203.0.113.10 }]\n",
        ))
        .unwrap();
        let s = c.service("default/kubernetes").unwrap();
        let got: Vec<(Ipv4Addr, &str)> = s
            .endpoints
            .iter()
            .map(|e| (e.ip, e.node.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (Ipv4Addr::new(172, 30, 0, 11), "n1"),
                (Ipv4Addr::new(203, 0, 113, 10), "")
            ]
        );
    }

    #[test]
    fn a_service_parses_with_defaults_and_node_filled_in() {
        let c = Cluster::from_yaml(&lab_with_services(WEB)).unwrap();
        assert_eq!(c.service_cidr.to_string(), "10.96.0.0/12");
        assert_eq!(c.node_ports, (30000, 32767));
        let s = c.service("default/web").unwrap();
        assert_eq!(s.cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(
            s.ports[0],
            ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: 8080,
                node_port: Some(30080),
            }
        );
        assert_eq!((s.ports[1].target_port, s.ports[1].node_port), (53, None));
        assert_eq!(s.session_affinity, SessionAffinity::ClientIp);
        assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
        // Conditions default to ready/serving, not terminating; the node comes
        // from the pod CIDR, whether or not the IP is a known pod's.
        assert_eq!(
            s.endpoints[0],
            Endpoint {
                ip: Ipv4Addr::new(10, 244, 1, 2),
                node: "n1".into(),
                ready: true,
                serving: true,
                terminating: false,
            }
        );
        assert_eq!(s.endpoints[1].node, "n2");
        assert!(!s.endpoints[1].ready && s.endpoints[1].terminating);

        let minimal = lab_with_services(
            "services:\n  - { name: a/b, cluster_ip: 10.96.0.1, ports: [{ port: 80 }] }\n",
        );
        let c = Cluster::from_yaml(&minimal).unwrap();
        let s = &c.services[0];
        assert_eq!(s.affinity_timeout_s, 10800);
        assert_eq!(s.session_affinity, SessionAffinity::None);
        assert_eq!(s.ports[0].protocol, Protocol::Tcp);
        assert_eq!(s.ports[0].target_port, 80);
    }

    #[test]
    fn proto_round_trip() {
        let c = Cluster::from_yaml(&lab_with_services(WEB)).unwrap();
        let s = c.service("default/web").unwrap();
        let proto = s.to_proto();
        assert_eq!(proto.ports[1].protocol, pb::Protocol::Udp as i32);
        assert_eq!(proto.endpoints[1].node, "n2");
        let raw = RawService::from_proto("service", &proto).unwrap();
        let mut taken = Taken::default();
        let mut p = Vec::new();
        let back = check("service", &raw, &c.service_context(), &mut taken, &mut p).unwrap();
        assert_eq!(&back, s);
        // Proto zeros mean the defaults.
        let raw = RawService::from_proto(
            "service",
            &pb::Service {
                name: "a/b".into(),
                cluster_ip: "10.96.0.2".into(),
                ports: vec![pb::ServicePort {
                    port: 80,
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(raw.affinity_timeout_s, 10800);
        assert_eq!(raw.ports[0].protocol, Protocol::Tcp);
        assert_eq!(
            (raw.ports[0].target_port, raw.ports[0].node_port),
            (None, None)
        );
        // Unknown enum values are named.
        let bad = pb::Service {
            ports: vec![pb::ServicePort {
                protocol: 9,
                ..Default::default()
            }],
            session_affinity: 7,
            ..Default::default()
        };
        let p = RawService::from_proto("service", &bad).unwrap_err();
        assert!(
            p.0.iter().any(|x| x.path == "service.ports[0].protocol"),
            "{p}"
        );
        assert!(
            p.0.iter().any(|x| x.path == "service.session_affinity"),
            "{p}"
        );
        // YAML -> proto for kxdpctl.
        let raw = RawService::from_yaml(
            "{ name: a/b, cluster_ip: 10.96.0.2, ports: [{ port: 80, node_port: 30001 }] }",
        )
        .unwrap();
        let proto = raw.to_proto().unwrap();
        assert_eq!(
            (proto.ports[0].node_port, proto.ports[0].target_port),
            (30001, 0)
        );
        let raw =
            RawService::from_yaml("{ name: a/b, cluster_ip: x, ports: [{ port: -1 }] }").unwrap();
        assert!(raw.to_proto().is_err());
    }

    #[test]
    fn external_and_load_balancer_ips_policies_and_health_check_ports() {
        let ok = web(
            "    external_traffic_policy: Local\n",
            "    external_traffic_policy: Local\n    internal_traffic_policy: Local\n    external_ips: [192.0.2.80]\n    load_balancer_ips: [198.51.100.80]\n    health_check_node_port: 32000\n",
        );
        let c = Cluster::from_yaml(&ok).unwrap();
        let s = c.service("default/web").unwrap();
        assert_eq!(s.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(s.health_check_node_port, Some(32000));
        assert_eq!(
            s.outside_ips().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["192.0.2.80", "198.51.100.80"]
        );
        // Through the proto and back (kxdpctl, UpsertService).
        let raw = RawService::from_proto("service", &s.to_proto()).unwrap();
        assert_eq!(raw.to_proto().unwrap(), s.to_proto());

        let bad = |from: &str, to: &str| ok.replacen(from, to, 1);
        for (text, path, needle) in [
            (
                bad("[192.0.2.80]", "[10.244.1.50]"),
                "services[0].external_ips[0]",
                "cluster CIDR",
            ),
            (
                bad("[192.0.2.80]", "[10.96.7.7]"),
                "services[0].external_ips[0]",
                "service CIDR",
            ),
            (
                bad("[192.0.2.80]", "[172.30.0.12]"),
                "services[0].external_ips[0]",
                "node n2's underlay",
            ),
            (
                bad("[198.51.100.80]", "[127.0.0.1]"),
                "services[0].load_balancer_ips[0]",
                "not a routable",
            ),
            (
                bad("[192.0.2.80]", "[192.0.2.80, 192.0.2.80]"),
                "services[0].external_ips[1]",
                "listed twice",
            ),
            (
                bad(
                    "external_traffic_policy: Local",
                    "external_traffic_policy: Cluster",
                ),
                "services[0].health_check_node_port",
                "only with external_traffic_policy: Local",
            ),
            (
                bad(
                    "health_check_node_port: 32000",
                    "health_check_node_port: 29000",
                ),
                "services[0].health_check_node_port",
                "outside the node port range",
            ),
            (
                bad(
                    "health_check_node_port: 32000",
                    "health_check_node_port: 30080",
                ),
                "services[0].health_check_node_port",
                "already taken by services[0]",
            ),
        ] {
            assert_problem(&text, path, needle);
        }
        // Across services: an external IP's port, a health check port.
        let two = format!(
            "{ok}  - name: default/other\n    cluster_ip: 10.96.0.11\n    ports: [{{ port: 80 }}, {{ port: 81, node_port: 32000 }}]\n    external_ips: [198.51.100.80]\n"
        );
        assert_problem(
            &two,
            "services[1].ports[1].node_port",
            "already taken by services[0]",
        );
        assert_problem(
            &two,
            "services[1].external_ips[0]",
            "already served by services[0]",
        );
        // The NodePort addresses are CIDRs.
        let c = Cluster::from_yaml(&ok.replacen(
            "  vxlan:",
            "  node_port_addresses: [172.30.0.0/24]\n  vxlan:",
            1,
        ))
        .unwrap();
        assert_eq!(c.node_port_addresses[0].to_string(), "172.30.0.0/24");
        assert_problem(
            &ok.replacen(
                "  vxlan:",
                "  node_port_addresses: [172.30.0.1/24]\n  vxlan:",
                1,
            ),
            "cluster.node_port_addresses[0]",
            "",
        );
    }

    #[test]
    fn service_cidr_and_node_port_range() {
        let c = Cluster::from_yaml(&lab_without_service_settings().replacen(
            "  vxlan:",
            "  service_cidr: 10.100.0.0/16\n  node_port_range: \"20000-20010\"\n  vxlan:",
            1,
        ))
        .unwrap();
        assert_eq!(c.node_ports, (20000, 20010));
        assert_eq!(c.service_cidr.to_string(), "10.100.0.0/16");
        let with = |line: &str| {
            lab_without_service_settings().replacen("  vxlan:", &format!("  {line}\n  vxlan:"), 1)
        };
        assert_problem(
            &with("service_cidr: 10.244.0.0/12"),
            "cluster.service_cidr",
            "host bits set",
        );
        assert_problem(
            &with("service_cidr: 10.244.128.0/20"),
            "cluster.service_cidr",
            "overlaps cluster.cidr 10.244.0.0/16",
        );
        assert_problem(
            &with("service_cidr: 10.0.0.0/8"),
            "cluster.service_cidr",
            "overlaps cluster.cidr",
        );
        assert_problem(
            &with("service_cidr: 172.30.0.0/24"),
            "cluster.service_cidr",
            "underlay_ip 172.30.0.11",
        );
        assert_problem(
            &with("service_cidr: 10.96.0.0/31"),
            "cluster.service_cidr",
            "too small",
        );
        for bad in [
            "\"32767-30000\"",
            "\"0-10\"",
            "\"30000\"",
            "\"a-b\"",
            "\"1-65536\"",
        ] {
            assert_problem(
                &with(&format!("node_port_range: {bad}")),
                "cluster.node_port_range",
                "not a port range",
            );
        }
    }

    #[test]
    fn every_service_rule() {
        let s = "services[0]";
        let at = |f: &str| format!("{s}.{f}");
        assert_problem(
            &web("name: default/web", "name: web"),
            &at("name"),
            "not namespace/name",
        );
        assert_problem(
            &web("name: default/web", "name: Default/web"),
            &at("name"),
            "namespace/name",
        );
        assert_problem(
            &web("cluster_ip: 10.96.0.10", "cluster_ip: 10.97"),
            &at("cluster_ip"),
            "not an IPv4",
        );
        assert_problem(
            &web("cluster_ip: 10.96.0.10", "cluster_ip: 10.112.0.1"),
            &at("cluster_ip"),
            "outside the service CIDR 10.96.0.0/12",
        );
        assert_problem(
            &web("cluster_ip: 10.96.0.10", "cluster_ip: 10.96.0.0"),
            &at("cluster_ip"),
            "network address",
        );
        assert_problem(
            &web("cluster_ip: 10.96.0.10", "cluster_ip: 10.111.255.255"),
            &at("cluster_ip"),
            "broadcast address",
        );
        assert_problem(
            &web("port: 80,", "port: 0,"),
            &at("ports[0].port"),
            "out of range 1..=65535",
        );
        assert_problem(
            &web("port: 80,", "port: 65536,"),
            &at("ports[0].port"),
            "out of range",
        );
        assert_problem(
            &web("target_port: 8080", "target_port: 70000"),
            &at("ports[0].target_port"),
            "out of range",
        );
        assert_problem(
            &web("protocol: UDP, port: 53", "protocol: TCP, port: 80"),
            &at("ports[1].port"),
            "duplicate 80/TCP (also ports[0])",
        );
        // The same number on another protocol is fine.
        assert!(
            Cluster::from_yaml(&web("protocol: UDP, port: 53", "protocol: UDP, port: 80")).is_ok()
        );
        assert_problem(
            &web("name: dns,", "name: http,"),
            &at("ports[1].name"),
            "duplicate port name http",
        );
        assert_problem(
            &web("node_port: 30080", "node_port: 29999"),
            &at("ports[0].node_port"),
            "outside the node port range 30000-32767",
        );
        assert_problem(
            &web("node_port: 30080", "node_port: 32768"),
            &at("ports[0].node_port"),
            "outside the node port range",
        );
        assert_problem(
            &web("affinity_timeout_s: 600", "affinity_timeout_s: 0"),
            &at("affinity_timeout_s"),
            "1..=86400",
        );
        assert_problem(
            &web("affinity_timeout_s: 600", "affinity_timeout_s: 86401"),
            &at("affinity_timeout_s"),
            "1..=86400",
        );
        assert_problem(
            &web("{ ip: 10.244.1.2 }", "{ ip: 10.96.5.5 }"),
            &at("endpoints[0].ip"),
            "inside the service CIDR 10.96.0.0/12",
        );
        for bad in [
            "127.0.0.1",
            "169.254.1.1",
            "224.0.0.5",
            "0.0.0.0",
            "255.255.255.255",
        ] {
            assert_problem(
                &web("{ ip: 10.244.1.2 }", &format!("{{ ip: {bad} }}")),
                &at("endpoints[0].ip"),
                "not a routable endpoint address",
            );
        }
        assert_problem(
            &web("{ ip: 10.244.1.2 }", "{ ip: 10.244.9.2 }"),
            &at("endpoints[0].ip"),
            "in no node's pod CIDR",
        );
        assert_problem(
            &web("{ ip: 10.244.1.2 }", "{ ip: 10.244.1.1 }"),
            &at("endpoints[0].ip"),
            "not a pod address",
        );
        assert_problem(
            &web("{ ip: 10.244.1.2 }", "{ ip: 10.244.2.77 }"),
            &at("endpoints[1].ip"),
            "duplicate endpoint",
        );
        assert_problem(
            &web("{ ip: 10.244.1.2 }", "{ ip: 10.244.1.2, node: n2 }"),
            &at("endpoints[0].node"),
            "not on n2",
        );
        assert_problem(&web("ports:\n      - { name: http, protocol: TCP, port: 80, target_port: 8080, node_port: 30080 }\n      - { name: dns, protocol: UDP, port: 53 }\n", "ports: []\n"), &at("ports"), "at least one port");
        // Structure: unknown protocol / affinity / fields are YAML errors.
        for (from, to) in [
            ("protocol: UDP", "protocol: SCTP"),
            ("ClientIP", "Sticky"),
            (
                "external_traffic_policy: Local",
                "external_traffic_policy: local",
            ),
            ("port: 53 }", "port: 53, colour: red }"),
        ] {
            let p = problems_of(&web(from, to));
            assert!(p.to_string().contains("line"), "{p}");
        }
    }

    #[test]
    fn collisions_between_services() {
        let two = |second: &str| {
            lab_with_services(&format!(
                "{WEB}  - {{ name: default/api, cluster_ip: 10.96.0.11, ports: [{second}] }}\n"
            ))
        };
        assert!(Cluster::from_yaml(&two("{ port: 80, node_port: 30081 }")).is_ok());
        assert_problem(
            &two("{ port: 80, node_port: 30080 }"),
            "services[1].ports[0].node_port",
            "30080/TCP is already taken by services[0] (default/web)",
        );
        // NodePorts are per protocol.
        assert!(Cluster::from_yaml(&two("{ port: 80, protocol: UDP, node_port: 30080 }")).is_ok());
        let p = lab_with_services(&format!(
            "{WEB}  - {{ name: default/web, cluster_ip: 10.96.0.10, ports: [{{ port: 1 }}] }}\n"
        ));
        assert_problem(
            &p,
            "services[1].name",
            "duplicate service name default/web (also services[0]",
        );
        assert_problem(
            &p,
            "services[1].cluster_ip",
            "10.96.0.10 is already the ClusterIP of services[0]",
        );
        // A UDP NodePort on the VXLAN port.
        let text = format!(
            "{}services:\n  - {{ name: a/b, cluster_ip: 10.96.0.1, ports: [{{ port: 80, protocol: UDP, node_port: 4789 }}] }}\n",
            lab_without_service_settings()
        )
        .replacen("  vxlan:", "  node_port_range: \"4000-5000\"\n  vxlan:", 1);
        assert_problem(&text, "services[0].ports[0].node_port", "VXLAN port");
    }

    #[test]
    fn all_service_problems_at_once() {
        let text = web("cluster_ip: 10.96.0.10", "cluster_ip: 10.1.0.1")
            .replacen("node_port: 30080", "node_port: 1", 1)
            .replacen("{ ip: 10.244.1.2 }", "{ ip: 127.0.0.1 }", 1);
        let p = problems_of(&text);
        let paths: Vec<&str> = p.0.iter().map(|x| x.path.as_str()).collect();
        for want in [
            "services[0].cluster_ip",
            "services[0].ports[0].node_port",
            "services[0].endpoints[0].ip",
        ] {
            assert!(paths.contains(&want), "{want}: {p}");
        }
    }
}
