//! The dataplane's desired state as domain types, converted from the proto
//! at the API edge with `TryFrom` (bad input becomes one [`FieldError`]
//! naming the field), and checked as a whole before anything is applied.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use kxdp_core::prefix::Prefix;
use kxdp_core::wire::EthernetAddress;
use kxdp_proto::dataplane as pb;
use kxdp_proto::policy::PortSpan;

/// A request field that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {msg}")]
pub struct FieldError {
    pub field: String,
    pub msg: String,
}

fn err(field: impl Into<String>, msg: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        msg: msg.into(),
    }
}

fn ip(field: &str, s: &str) -> Result<Ipv4Addr, FieldError> {
    s.parse()
        .map_err(|_| err(field, format!("{s:?} is not an IPv4 address")))
}

fn mac(field: &str, s: &str) -> Result<EthernetAddress, FieldError> {
    let m: EthernetAddress = s.parse().map_err(|_| {
        err(
            field,
            format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
        )
    })?;
    if m.is_multicast() || m.0 == [0; 6] {
        return Err(err(field, format!("{s} is not a unicast MAC address")));
    }
    Ok(m)
}

fn cidr(field: &str, s: &str) -> Result<Prefix, FieldError> {
    let bad = || err(field, format!("{s:?} is not an IPv4 CIDR (a.b.c.d/len)"));
    let (a, l) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let len: u8 = l.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    let p = Prefix::new(addr, len);
    if p.addr != addr {
        return Err(err(
            field,
            format!("{s} has host bits set (did you mean {p}?)"),
        ));
    }
    Ok(p)
}

/// Kernel interface names: 1..=15 bytes, no '/', whitespace or NUL.
fn ifname(field: &str, s: &str) -> Result<String, FieldError> {
    if s.is_empty()
        || s.len() > 15
        || s.chars()
            .any(|c| c == '/' || c.is_whitespace() || c == '\0')
    {
        return Err(err(
            field,
            format!("{s:?} is not a valid interface name (1-15 chars)"),
        ));
    }
    Ok(s.to_string())
}

fn name(field: &str, s: &str) -> Result<String, FieldError> {
    if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(err(field, format!("{s:?} is not a valid name")));
    }
    Ok(s.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCfg {
    pub name: String,
    pub uplink: String,
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: EthernetAddress,
    pub vni: u32,
    pub vxlan_port: u16,
    pub cluster_cidr: Prefix,
    pub pod_cidr: Prefix,
    pub gateway_ip: Ipv4Addr,
    pub pod_mtu: u16,
    /// ClusterIPs come from here; `None`: no services.
    pub service_cidr: Option<Prefix>,
    /// NodePorts, inclusive.
    pub node_ports: (u16, u16),
    /// The dataplane's end of the host veth pair (walk 5).
    pub host_interface: Option<String>,
    /// Pod egress is SNATed to the underlay address (walk 7).
    pub masquerade: bool,
    /// Egress destinations that keep the pod's address.
    pub non_masquerade: Vec<Prefix>,
    /// NodePorts open on the node's addresses inside these; empty: on
    /// `underlay_ip` only.
    pub node_port_addresses: Vec<Prefix>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub name: String,
    pub pod_cidr: Prefix,
    pub vtep_ip: Ipv4Addr,
    pub vtep_mac: EthernetAddress,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub name: String,
    pub ip: Ipv4Addr,
    pub mac: EthernetAddress,
    pub ifname: String,
    /// Network policy compiled for the pod; `None`: not isolated that way.
    pub ingress: Option<PolicyRules>,
    pub egress: Option<PolicyRules>,
}

impl Pod {
    /// Whether `other` is attached the same way: only a change of these
    /// needs the pod's interface detached and attached again.
    pub fn same_interface(&self, other: &Pod) -> bool {
        (&self.name, self.ip, self.mac, &self.ifname)
            == (&other.name, other.ip, other.mac, &other.ifname)
    }
}

/// One pod's policy for one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRules {
    /// The policies selecting the pod this way, "namespace/name": what
    /// `PolicyPort::policy` indexes, and what a denial counts against.
    pub policies: Vec<String>,
    /// Peer prefixes (the longest match wins) and what each may use.
    pub peers: Vec<(Prefix, Vec<PolicyPort>)>,
}

/// Most peer prefixes in one pod's table, and port ranges per peer.
pub const MAX_POLICY_PEERS: usize = 65_536;
pub const MAX_POLICY_PORTS: usize = 1024;

/// Ports a policy peer may use, and the policy allowing it (an index into
/// `PolicyRules::policies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyPort {
    pub span: PortSpan,
    pub policy: u32,
}

/// A service is the type the control process holds too: both write it back
/// to the proto the same way.
pub use kxdp_proto::service::{
    Endpoint, Protocol, Service, ServicePort, SessionAffinity, TrafficPolicy,
    DEFAULT_AFFINITY_TIMEOUT_S, MAX_AFFINITY_TIMEOUT_S,
};

pub const DEFAULT_NODE_PORTS: (u16, u16) = (30000, 32767);
/// Most non-masquerade CIDRs a node takes: new egress flows scan them.
pub const MAX_NON_MASQUERADE: usize = 64;
/// Most NodePort address CIDRs a node takes.
pub const MAX_NODE_PORT_ADDRESSES: usize = 64;

/// One change of an Update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    UpsertRemote(Remote),
    DeleteRemote(String),
    UpsertPod(Pod),
    DeletePod(String),
    UpsertService(Service),
    DeleteService(String),
}

/// Everything the dataplane holds, as the API sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub generation: u64,
    pub node: Option<NodeCfg>,
    pub remotes: BTreeMap<String, Remote>,
    pub pods: BTreeMap<String, Pod>,
    pub services: BTreeMap<String, Service>,
}

impl TryFrom<(&str, &pb::NodeConfig)> for NodeCfg {
    type Error = FieldError;
    fn try_from((f, n): (&str, &pb::NodeConfig)) -> Result<Self, FieldError> {
        let at = |x: &str| format!("{f}.{x}");
        if n.vni == 0 || n.vni > 0xFF_FFFF {
            return Err(err(at("vni"), format!("{} is not in 1..=16777215", n.vni)));
        }
        if n.vxlan_port == 0 || n.vxlan_port > 65535 {
            return Err(err(
                at("vxlan_port"),
                format!("{} is not in 1..=65535", n.vxlan_port),
            ));
        }
        if !(68..=kxdp_proto::MAX_POD_MTU).contains(&n.pod_mtu) {
            return Err(err(
                at("pod_mtu"),
                format!(
                    "{} is not in 68..={}: a frame must fit one UMEM chunk (no jumbo frames)",
                    n.pod_mtu,
                    kxdp_proto::MAX_POD_MTU
                ),
            ));
        }
        if n.node_port_addresses.len() > MAX_NODE_PORT_ADDRESSES {
            return Err(err(
                at("node_port_addresses"),
                format!(
                    "{} entries; at most {MAX_NODE_PORT_ADDRESSES}",
                    n.node_port_addresses.len()
                ),
            ));
        }
        if n.non_masquerade_cidrs.len() > MAX_NON_MASQUERADE {
            return Err(err(
                at("non_masquerade_cidrs"),
                format!(
                    "{} entries; at most {MAX_NON_MASQUERADE}",
                    n.non_masquerade_cidrs.len()
                ),
            ));
        }
        Ok(NodeCfg {
            name: name(&at("name"), &n.name)?,
            uplink: ifname(&at("uplink"), &n.uplink)?,
            underlay_ip: ip(&at("underlay_ip"), &n.underlay_ip)?,
            vtep_mac: mac(&at("vtep_mac"), &n.vtep_mac)?,
            vni: n.vni,
            vxlan_port: n.vxlan_port as u16,
            cluster_cidr: cidr(&at("cluster_cidr"), &n.cluster_cidr)?,
            pod_cidr: cidr(&at("pod_cidr"), &n.pod_cidr)?,
            gateway_ip: ip(&at("gateway_ip"), &n.gateway_ip)?,
            pod_mtu: n.pod_mtu as u16,
            service_cidr: if n.service_cidr.is_empty() {
                None
            } else {
                Some(cidr(&at("service_cidr"), &n.service_cidr)?)
            },
            node_ports: match (n.node_port_min, n.node_port_max) {
                (0, 0) => DEFAULT_NODE_PORTS,
                (lo, hi) if lo >= 1 && lo <= hi && hi <= 65535 => (lo as u16, hi as u16),
                (lo, hi) => {
                    return Err(err(
                        at("node_port_min"),
                        format!("{lo}-{hi} is not a port range"),
                    ));
                }
            },
            host_interface: if n.host_interface.is_empty() {
                None
            } else {
                Some(ifname(&at("host_interface"), &n.host_interface)?)
            },
            masquerade: n.masquerade,
            non_masquerade: n
                .non_masquerade_cidrs
                .iter()
                .enumerate()
                .map(|(i, c)| cidr(&at(&format!("non_masquerade_cidrs[{i}]")), c))
                .collect::<Result<_, _>>()?,
            node_port_addresses: n
                .node_port_addresses
                .iter()
                .enumerate()
                .map(|(i, c)| cidr(&at(&format!("node_port_addresses[{i}]")), c))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl TryFrom<(&str, &pb::RemoteNode)> for Remote {
    type Error = FieldError;
    fn try_from((f, r): (&str, &pb::RemoteNode)) -> Result<Self, FieldError> {
        let at = |x: &str| format!("{f}.{x}");
        Ok(Remote {
            name: name(&at("name"), &r.name)?,
            pod_cidr: cidr(&at("pod_cidr"), &r.pod_cidr)?,
            vtep_ip: ip(&at("vtep_ip"), &r.vtep_ip)?,
            vtep_mac: mac(&at("vtep_mac"), &r.vtep_mac)?,
        })
    }
}

impl TryFrom<(&str, &pb::Pod)> for Pod {
    type Error = FieldError;
    fn try_from((f, p): (&str, &pb::Pod)) -> Result<Self, FieldError> {
        let at = |x: &str| format!("{f}.{x}");
        Ok(Pod {
            name: name(&at("name"), &p.name)?,
            ip: ip(&at("ip"), &p.ip)?,
            mac: mac(&at("mac"), &p.mac)?,
            ifname: ifname(&at("ifname"), &p.ifname)?,
            ingress: p
                .ingress
                .as_ref()
                .map(|t| policy_rules(&at("ingress"), t))
                .transpose()?,
            egress: p
                .egress
                .as_ref()
                .map(|t| policy_rules(&at("egress"), t))
                .transpose()?,
        })
    }
}

fn policy_rules(f: &str, t: &pb::PolicyTable) -> Result<PolicyRules, FieldError> {
    if t.peers.len() > MAX_POLICY_PEERS {
        return Err(err(
            format!("{f}.peers"),
            format!(
                "{} peers; at most {MAX_POLICY_PEERS} per pod and direction",
                t.peers.len()
            ),
        ));
    }
    if let Some(i) = t.policies.iter().position(|p| p.is_empty()) {
        return Err(err(format!("{f}.policies[{i}]"), "must name the policy"));
    }
    let mut seen = std::collections::HashSet::new();
    let peers = t
        .peers
        .iter()
        .enumerate()
        .map(|(i, peer)| {
            let at = |x: &str| format!("{f}.peers[{i}].{x}");
            let addr = Ipv4Addr::from(peer.address);
            let len = u8::try_from(peer.prefix_len)
                .ok()
                .filter(|l| *l <= 32)
                .ok_or_else(|| {
                    err(
                        at("prefix_len"),
                        format!("{} is not 0..=32", peer.prefix_len),
                    )
                })?;
            let prefix = Prefix::new(addr, len);
            if prefix.addr != addr {
                return Err(err(
                    at("address"),
                    format!("{addr}/{len} has host bits set"),
                ));
            }
            if !seen.insert(prefix) {
                return Err(err(at("address"), format!("{prefix} is listed twice")));
            }
            if peer.ports.len() > MAX_POLICY_PORTS {
                return Err(err(
                    at("ports"),
                    format!("{} ports; at most {MAX_POLICY_PORTS}", peer.ports.len()),
                ));
            }
            let ports = peer
                .ports
                .iter()
                .enumerate()
                .map(|(j, pp)| policy_port(&at(&format!("ports[{j}]")), pp, t.policies.len()))
                .collect::<Result<_, _>>()?;
            Ok((prefix, ports))
        })
        .collect::<Result<_, _>>()?;
    Ok(PolicyRules {
        policies: t.policies.clone(),
        peers,
    })
}

fn policy_port(f: &str, pp: &pb::PolicyPorts, policies: usize) -> Result<PolicyPort, FieldError> {
    let span = PortSpan::from_proto(pp).map_err(|(field, why)| err(format!("{f}.{field}"), why))?;
    if pp.policy as usize >= policies {
        return Err(err(
            format!("{f}.policy"),
            format!(
                "{} is not an index of the table's {policies} policies",
                pp.policy
            ),
        ));
    }
    Ok(PolicyPort {
        span,
        policy: pp.policy,
    })
}

fn policy_table(rules: &PolicyRules) -> pb::PolicyTable {
    pb::PolicyTable {
        peers: rules
            .peers
            .iter()
            .map(|(prefix, ports)| pb::PolicyPeer {
                address: u32::from(prefix.addr),
                prefix_len: u32::from(prefix.len),
                ports: ports.iter().map(|p| p.span.to_proto(p.policy)).collect(),
            })
            .collect(),
        policies: rules.policies.clone(),
    }
}

/// As the `TryFrom`s above (`Service` is kxdp-proto's, so no `TryFrom` here).
fn service_from_proto(f: &str, sv: &pb::Service) -> Result<Service, FieldError> {
    let at = |x: &str| format!("{f}.{x}");
    kxdp_proto::limits::check_service(
        sv.ports.len(),
        sv.endpoints.len(),
        sv.external_ips.len(),
        sv.load_balancer_ips.len(),
    )
    .map_err(|e| err(at(e.field), e.message))?;
    let mut ports = Vec::new();
    for (i, p) in sv.ports.iter().enumerate() {
        let pf = |x: &str| format!("{f}.ports[{i}].{x}");
        let Ok(Some(protocol)) = Protocol::from_proto(p.protocol) else {
            return Err(err(pf("protocol"), "must be TCP or UDP"));
        };
        let port16 = |field: &str, v: u32| -> Result<u16, FieldError> {
            if (1..=65535).contains(&v) {
                Ok(v as u16)
            } else {
                Err(err(pf(field), format!("{v} is not in 1..=65535")))
            }
        };
        let port = port16("port", p.port)?;
        let target_port = if p.target_port == 0 {
            port
        } else {
            port16("target_port", p.target_port)?
        };
        let node_port = if p.node_port == 0 {
            None
        } else {
            Some(port16("node_port", p.node_port)?)
        };
        if ports
            .iter()
            .any(|q: &ServicePort| q.protocol == protocol && q.port == port)
        {
            return Err(err(
                pf("port"),
                format!("{port}/{protocol} is listed twice"),
            ));
        }
        ports.push(ServicePort {
            name: p.name.clone(),
            protocol,
            port,
            target_port,
            node_port,
        });
    }
    let session_affinity = SessionAffinity::from_proto(sv.session_affinity)
        .ok_or_else(|| err(at("session_affinity"), "unknown value"))?;
    // Without affinity the timeout is not kept (read back as 0).
    let affinity_timeout_s = match (session_affinity, sv.affinity_timeout_s) {
        (SessionAffinity::None, _) => 0,
        (SessionAffinity::ClientIp, 0) => DEFAULT_AFFINITY_TIMEOUT_S,
        (SessionAffinity::ClientIp, t @ 1..=MAX_AFFINITY_TIMEOUT_S) => t,
        (SessionAffinity::ClientIp, t) => {
            return Err(err(
                at("affinity_timeout_s"),
                format!("{t} is not in 1..={MAX_AFFINITY_TIMEOUT_S}"),
            ))
        }
    };
    let external_traffic_policy = TrafficPolicy::from_proto(sv.external_traffic_policy)
        .ok_or_else(|| err(at("external_traffic_policy"), "unknown value"))?;
    let mut endpoints = Vec::new();
    for (i, e) in sv.endpoints.iter().enumerate() {
        let ef = format!("{f}.endpoints[{i}]");
        let eip = ip(&format!("{ef}.ip"), &e.ip)?;
        if endpoints.iter().any(|x: &Endpoint| x.ip == eip) {
            return Err(err(format!("{ef}.ip"), format!("{eip} is listed twice")));
        }
        endpoints.push(Endpoint {
            ip: eip,
            node: e.node.clone(),
            ready: e.ready,
            serving: e.serving || e.ready,
            terminating: e.terminating,
        });
    }
    let internal_traffic_policy = TrafficPolicy::from_proto(sv.internal_traffic_policy)
        .ok_or_else(|| err(at("internal_traffic_policy"), "unknown value"))?;
    let ips = |field: &str, list: &[String]| -> Result<Vec<Ipv4Addr>, FieldError> {
        let mut out: Vec<Ipv4Addr> = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let f = at(&format!("{field}[{i}]"));
            let a = ip(&f, s)?;
            if out.contains(&a) {
                return Err(err(f, format!("{a} is listed twice")));
            }
            out.push(a);
        }
        Ok(out)
    };
    let health_check_node_port = match sv.health_check_node_port {
        0 => None,
        p @ 1..=65535 => Some(p as u16),
        p => {
            return Err(err(
                at("health_check_node_port"),
                format!("{p} is not in 1..=65535"),
            ))
        }
    };
    Ok(Service {
        name: name(&at("name"), &sv.name)?,
        cluster_ip: ip(&at("cluster_ip"), &sv.cluster_ip)?,
        ports,
        session_affinity,
        affinity_timeout_s,
        external_traffic_policy,
        endpoints,
        external_ips: ips("external_ips", &sv.external_ips)?,
        load_balancer_ips: ips("load_balancer_ips", &sv.load_balancer_ips)?,
        internal_traffic_policy,
        health_check_node_port,
    })
}

impl TryFrom<&pb::DataplaneState> for State {
    type Error = FieldError;
    fn try_from(s: &pb::DataplaneState) -> Result<Self, FieldError> {
        let node = s
            .node
            .as_ref()
            .ok_or_else(|| err("state.node", "missing: a sync must carry the node config"))?;
        let mut st = State {
            generation: s.generation,
            node: Some(NodeCfg::try_from(("state.node", node))?),
            ..State::default()
        };
        for (i, r) in s.remote_nodes.iter().enumerate() {
            let f = format!("state.remote_nodes[{i}]");
            let r = Remote::try_from((f.as_str(), r))?;
            if st.remotes.contains_key(&r.name) {
                return Err(err(
                    format!("{f}.name"),
                    format!("duplicate remote node {:?}", r.name),
                ));
            }
            st.remotes.insert(r.name.clone(), r);
        }
        for (i, p) in s.pods.iter().enumerate() {
            let f = format!("state.pods[{i}]");
            let p = Pod::try_from((f.as_str(), p))?;
            if st.pods.contains_key(&p.name) {
                return Err(err(
                    format!("{f}.name"),
                    format!("duplicate pod {:?}", p.name),
                ));
            }
            st.pods.insert(p.name.clone(), p);
        }
        for (i, sv) in s.services.iter().enumerate() {
            let f = format!("state.services[{i}]");
            let sv = service_from_proto(&f, sv)?;
            if st.services.contains_key(&sv.name) {
                return Err(err(
                    format!("{f}.name"),
                    format!("duplicate service {:?}", sv.name),
                ));
            }
            st.services.insert(sv.name.clone(), sv);
        }
        Ok(st)
    }
}

/// Converts an Update's changes, naming `changes[i]` on error.
pub fn changes_from_proto(cs: &[pb::Change]) -> Result<Vec<Change>, FieldError> {
    use pb::change::Op;
    cs.iter()
        .enumerate()
        .map(|(i, c)| {
            let f = format!("changes[{i}]");
            match &c.op {
                None => Err(err(f, "empty change (no op set)")),
                Some(Op::UpsertRemoteNode(r)) => Ok(Change::UpsertRemote(Remote::try_from((
                    format!("{f}.upsert_remote_node").as_str(),
                    r,
                ))?)),
                Some(Op::DeleteRemoteNode(n)) => Ok(Change::DeleteRemote(name(
                    &format!("{f}.delete_remote_node"),
                    n,
                )?)),
                Some(Op::UpsertPod(p)) => Ok(Change::UpsertPod(Pod::try_from((
                    format!("{f}.upsert_pod").as_str(),
                    p,
                ))?)),
                Some(Op::DeletePod(n)) => {
                    Ok(Change::DeletePod(name(&format!("{f}.delete_pod"), n)?))
                }
                Some(Op::UpsertService(sv)) => Ok(Change::UpsertService(service_from_proto(
                    &format!("{f}.upsert_service"),
                    sv,
                )?)),
                Some(Op::DeleteService(n)) => Ok(Change::DeleteService(name(
                    &format!("{f}.delete_service"),
                    n,
                )?)),
            }
        })
        .collect()
}

impl State {
    /// Applies changes to a copy; deleting something absent is an error
    /// (the caller's view of the state is wrong).
    pub fn with_changes(&self, generation: u64, changes: &[Change]) -> Result<State, FieldError> {
        let mut s = self.clone();
        s.generation = generation;
        for (i, c) in changes.iter().enumerate() {
            match c {
                Change::UpsertRemote(r) => {
                    s.remotes.insert(r.name.clone(), r.clone());
                }
                Change::DeleteRemote(n) => {
                    if s.remotes.remove(n).is_none() {
                        return Err(err(
                            format!("changes[{i}].delete_remote_node"),
                            format!("no remote node {n:?}"),
                        ));
                    }
                }
                Change::UpsertPod(p) => {
                    s.pods.insert(p.name.clone(), p.clone());
                }
                Change::DeletePod(n) => {
                    if s.pods.remove(n).is_none() {
                        return Err(err(
                            format!("changes[{i}].delete_pod"),
                            format!("no pod {n:?}"),
                        ));
                    }
                }
                Change::UpsertService(sv) => {
                    s.services.insert(sv.name.clone(), sv.clone());
                }
                Change::DeleteService(n) => {
                    if s.services.remove(n).is_none() {
                        return Err(err(
                            format!("changes[{i}].delete_service"),
                            format!("no service {n:?}"),
                        ));
                    }
                }
            }
        }
        Ok(s)
    }

    /// Whole-state consistency: what no single field can show.
    pub fn validate(&self) -> Result<(), FieldError> {
        let Some(n) = &self.node else {
            return Ok(());
        };
        if !n.cluster_cidr.contains(n.pod_cidr.addr) || n.pod_cidr.len < n.cluster_cidr.len {
            return Err(err(
                "node.pod_cidr",
                format!(
                    "{} is not inside cluster_cidr {}",
                    n.pod_cidr, n.cluster_cidr
                ),
            ));
        }
        if !n.pod_cidr.contains(n.gateway_ip) || n.gateway_ip == n.pod_cidr.addr {
            return Err(err(
                "node.gateway_ip",
                format!(
                    "{} is not a host address of pod_cidr {}",
                    n.gateway_ip, n.pod_cidr
                ),
            ));
        }
        if n.pod_cidr.contains(n.underlay_ip) {
            return Err(err(
                "node.underlay_ip",
                format!("{} is inside the pod CIDR", n.underlay_ip),
            ));
        }
        let mut cidrs: Vec<(&str, Prefix)> = vec![(n.name.as_str(), n.pod_cidr)];
        let mut vteps = BTreeMap::new();
        for r in self.remotes.values() {
            let f = format!("remote_nodes[{}]", r.name);
            if r.name == n.name {
                return Err(err(format!("{f}.name"), "is this node's own name"));
            }
            if r.vtep_ip == n.underlay_ip {
                return Err(err(
                    format!("{f}.vtep_ip"),
                    format!("{} is this node's own underlay address", r.vtep_ip),
                ));
            }
            // A VTEP address names one node: decapsulation checks its
            // frames' sources against that node's pod CIDR.
            if let Some(other) = vteps.insert(r.vtep_ip, r.name.as_str()) {
                return Err(err(
                    format!("{f}.vtep_ip"),
                    format!("{} is also the VTEP of {other}", r.vtep_ip),
                ));
            }
            if let Some((other, _)) = cidrs.iter().find(|(_, c)| c.overlaps(&r.pod_cidr)) {
                return Err(err(
                    format!("{f}.pod_cidr"),
                    format!("{} overlaps the pod CIDR of {other}", r.pod_cidr),
                ));
            }
            cidrs.push((r.name.as_str(), r.pod_cidr));
        }
        let mut ips = BTreeMap::new();
        let mut ifs = BTreeMap::new();
        let bcast =
            Ipv4Addr::from(u32::from(n.pod_cidr.addr) | (u32::MAX >> n.pod_cidr.len.min(31)));
        for p in self.pods.values() {
            let f = format!("pods[{}]", p.name);
            if !n.pod_cidr.contains(p.ip)
                || p.ip == n.pod_cidr.addr
                || p.ip == bcast
                || p.ip == n.gateway_ip
            {
                return Err(err(
                    format!("{f}.ip"),
                    format!(
                        "{} is not a pod address of {} (gateway {})",
                        p.ip, n.pod_cidr, n.gateway_ip
                    ),
                ));
            }
            if let Some(o) = ips.insert(p.ip, &p.name) {
                return Err(err(
                    format!("{f}.ip"),
                    format!("{} is also pod {o}'s address", p.ip),
                ));
            }
            if let Some(o) = ifs.insert(p.ifname.as_str(), &p.name) {
                return Err(err(
                    format!("{f}.ifname"),
                    format!("{} is also pod {o}'s interface", p.ifname),
                ));
            }
            if p.ifname == n.uplink || Some(&p.ifname) == n.host_interface.as_ref() {
                return Err(err(
                    format!("{f}.ifname"),
                    "is the uplink or the host interface",
                ));
            }
        }
        self.validate_services(n)
    }

    fn validate_services(&self, n: &NodeCfg) -> Result<(), FieldError> {
        if self.services.is_empty() {
            return Ok(());
        }
        // The whole state's size: an Update adds to what earlier writes left.
        kxdp_proto::limits::check_services(
            self.services
                .values()
                .map(|sv| (sv.ports.len(), sv.endpoints.len())),
        )
        .map_err(|e| err(e.field, e.message))?;
        let Some(scidr) = n.service_cidr else {
            return Err(err(
                "node.service_cidr",
                "missing: services need a service CIDR",
            ));
        };
        if scidr.overlaps(&n.cluster_cidr) {
            return Err(err(
                "node.service_cidr",
                format!("{scidr} overlaps cluster_cidr {}", n.cluster_cidr),
            ));
        }
        let mut vips = BTreeMap::new();
        let mut node_ports = BTreeMap::new();
        let mut outside = BTreeMap::new();
        let mut health_ports = BTreeMap::new();
        for sv in self.services.values() {
            let f = format!("services[{}]", sv.name);
            let bcast = Ipv4Addr::from(u32::from(scidr.addr) | (u32::MAX >> scidr.len.min(31)));
            if !scidr.contains(sv.cluster_ip)
                || sv.cluster_ip == scidr.addr
                || sv.cluster_ip == bcast
            {
                return Err(err(
                    format!("{f}.cluster_ip"),
                    format!(
                        "{} is not a host address of the service CIDR {scidr}",
                        sv.cluster_ip
                    ),
                ));
            }
            if let Some(o) = vips.insert(sv.cluster_ip, &sv.name) {
                return Err(err(
                    format!("{f}.cluster_ip"),
                    format!("{} is also service {o}'s ClusterIP", sv.cluster_ip),
                ));
            }
            for (i, p) in sv.ports.iter().enumerate() {
                if let Some(np) = p.node_port {
                    if np < n.node_ports.0 || np > n.node_ports.1 {
                        return Err(err(
                            format!("{f}.ports[{i}].node_port"),
                            format!(
                                "{np} is outside the NodePort range {}-{}",
                                n.node_ports.0, n.node_ports.1
                            ),
                        ));
                    }
                    if let Some(o) = node_ports.insert((p.protocol, np), &sv.name) {
                        return Err(err(
                            format!("{f}.ports[{i}].node_port"),
                            format!("{np} is already taken by service {o}"),
                        ));
                    }
                }
            }
            self.validate_outside_ips(n, scidr, sv, &mut outside)?;
            if let Some(hc) = sv.health_check_node_port {
                let field = format!("{f}.health_check_node_port");
                if sv.external_traffic_policy != TrafficPolicy::Local {
                    return Err(err(field, "only with external_traffic_policy Local"));
                }
                if hc < n.node_ports.0 || hc > n.node_ports.1 {
                    return Err(err(
                        field,
                        format!(
                            "{hc} is outside the NodePort range {}-{}",
                            n.node_ports.0, n.node_ports.1
                        ),
                    ));
                }
                if let Some(o) = health_ports.insert(hc, &sv.name) {
                    return Err(err(
                        field,
                        format!("{hc} is already the health check port of service {o}"),
                    ));
                }
            }
            for (i, e) in sv.endpoints.iter().enumerate() {
                // Outside the pod network (a node's address, anything
                // reachable) is fine; unroutable addresses and ClusterIPs not.
                let why = match kxdp_proto::service::unroutable_endpoint(e.ip) {
                    Some(why) => why.to_string(),
                    None if scidr.contains(e.ip) => format!("inside the service CIDR {scidr}"),
                    None => continue,
                };
                return Err(err(
                    format!("{f}.endpoints[{i}].ip"),
                    format!("{} is {why}", e.ip),
                ));
            }
        }
        // A health check port is a TCP port on the NodePort addresses too.
        for (hc, name) in health_ports {
            if let Some(o) = node_ports.get(&(Protocol::Tcp, hc)) {
                return Err(err(
                    format!("services[{name}].health_check_node_port"),
                    format!("{hc} is service {o}'s TCP NodePort"),
                ));
            }
        }
        Ok(())
    }

    /// A service's external and LoadBalancer IPs: routable, outside the
    /// cluster and service CIDRs, not this node's underlay address, and each
    /// (address, protocol, port) served by one service only.
    fn validate_outside_ips<'a>(
        &self,
        n: &NodeCfg,
        scidr: Prefix,
        sv: &'a Service,
        taken: &mut BTreeMap<(Ipv4Addr, Protocol, u16), &'a str>,
    ) -> Result<(), FieldError> {
        let lists = [
            ("external_ips", &sv.external_ips),
            ("load_balancer_ips", &sv.load_balancer_ips),
        ];
        for (field, list) in lists {
            for (i, &a) in list.iter().enumerate() {
                let f = format!("services[{}].{field}[{i}]", sv.name);
                let why = match kxdp_proto::service::unroutable_endpoint(a) {
                    Some(why) => Some(why.to_string()),
                    None if n.cluster_cidr.contains(a) => {
                        Some(format!("inside the cluster CIDR {}", n.cluster_cidr))
                    }
                    None if scidr.contains(a) => Some(format!("inside the service CIDR {scidr}")),
                    None if a == n.underlay_ip => {
                        Some("this node's underlay address (NodePorts live there)".into())
                    }
                    None => None,
                };
                if let Some(why) = why {
                    return Err(err(f, format!("{a} is {why}")));
                }
                for p in &sv.ports {
                    if let Some(o) = taken.insert((a, p.protocol, p.port), &sv.name) {
                        if o != sv.name {
                            return Err(err(
                                f,
                                format!("{a}:{}/{} is also service {o}'s", p.port, p.protocol),
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Back to the proto form, for read-back.
    pub fn to_proto(&self) -> pb::DataplaneState {
        pb::DataplaneState {
            generation: self.generation,
            node: self.node.as_ref().map(|n| pb::NodeConfig {
                name: n.name.clone(),
                uplink: n.uplink.clone(),
                underlay_ip: n.underlay_ip.to_string(),
                vtep_mac: n.vtep_mac.to_string(),
                vni: n.vni,
                vxlan_port: n.vxlan_port as u32,
                cluster_cidr: n.cluster_cidr.to_string(),
                pod_cidr: n.pod_cidr.to_string(),
                gateway_ip: n.gateway_ip.to_string(),
                pod_mtu: n.pod_mtu as u32,
                service_cidr: n.service_cidr.map(|c| c.to_string()).unwrap_or_default(),
                node_port_min: n.node_ports.0 as u32,
                node_port_max: n.node_ports.1 as u32,
                host_interface: n.host_interface.clone().unwrap_or_default(),
                masquerade: n.masquerade,
                non_masquerade_cidrs: n.non_masquerade.iter().map(|p| p.to_string()).collect(),
                node_port_addresses: n
                    .node_port_addresses
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
            }),
            remote_nodes: self
                .remotes
                .values()
                .map(|r| pb::RemoteNode {
                    name: r.name.clone(),
                    pod_cidr: r.pod_cidr.to_string(),
                    vtep_ip: r.vtep_ip.to_string(),
                    vtep_mac: r.vtep_mac.to_string(),
                })
                .collect(),
            pods: self
                .pods
                .values()
                .map(|p| pb::Pod {
                    name: p.name.clone(),
                    ip: p.ip.to_string(),
                    mac: p.mac.to_string(),
                    ifname: p.ifname.clone(),
                    ingress: p.ingress.as_ref().map(policy_table),
                    egress: p.egress.as_ref().map(policy_table),
                })
                .collect(),
            services: self.services.values().map(Service::to_proto).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> pb::DataplaneState {
        pb::DataplaneState {
            generation: 7,
            node: Some(kxdp_testkit::lab::n1()),
            remote_nodes: vec![kxdp_testkit::lab::n2_remote()],
            pods: vec![pb::Pod {
                name: "p1".into(),
                ip: "10.244.1.2".into(),
                mac: "0a:58:0a:f4:01:02".into(),
                ifname: "kx0af40102".into(),
                ..Default::default()
            }],
            services: Vec::new(),
        }
    }

    fn check(s: &pb::DataplaneState) -> Result<State, FieldError> {
        let st = State::try_from(s)?;
        st.validate()?;
        Ok(st)
    }

    #[test]
    fn a_valid_state_round_trips() {
        let s = sample();
        let st = check(&s).unwrap();
        assert_eq!(st.to_proto(), s);
    }

    #[test]
    fn bad_fields_are_named() {
        type Mutation = fn(&mut pb::DataplaneState);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |s| s.node.as_mut().unwrap().underlay_ip = "300.1.1.1".into(),
                "state.node.underlay_ip",
            ),
            (
                |s| {
                    s.node.as_mut().unwrap().non_masquerade_cidrs =
                        vec!["198.51.100.0/24".into(), "198.51.100.1/24".into()]
                },
                "state.node.non_masquerade_cidrs[1]",
            ),
            (
                |s| {
                    s.node.as_mut().unwrap().non_masquerade_cidrs =
                        vec!["10.0.0.0/8".into(); MAX_NON_MASQUERADE + 1]
                },
                "state.node.non_masquerade_cidrs",
            ),
            (|s| s.node.as_mut().unwrap().vni = 0, "state.node.vni"),
            (
                |s| s.node.as_mut().unwrap().pod_mtu = 8950,
                "state.node.pod_mtu",
            ),
            (
                |s| s.node.as_mut().unwrap().pod_mtu = kxdp_proto::MAX_POD_MTU + 1,
                "state.node.pod_mtu",
            ),
            (|s| s.node.as_mut().unwrap().vni = 1 << 24, "state.node.vni"),
            (
                |s| s.node.as_mut().unwrap().vxlan_port = 70000,
                "state.node.vxlan_port",
            ),
            (
                |s| s.node.as_mut().unwrap().pod_cidr = "10.244.1.5/24".into(),
                "state.node.pod_cidr",
            ),
            (
                |s| s.node.as_mut().unwrap().uplink = "a-name-that-is-too-long".into(),
                "state.node.uplink",
            ),
            (
                |s| s.node.as_mut().unwrap().vtep_mac = "01:00:5e:00:00:01".into(),
                "state.node.vtep_mac",
            ),
            (|s| s.node = None, "state.node"),
            (
                |s| s.remote_nodes[0].pod_cidr = "10.244.2.0".into(),
                "state.remote_nodes[0].pod_cidr",
            ),
            (|s| s.pods[0].mac = "zz".into(), "state.pods[0].mac"),
            (|s| s.pods.push(s.pods[0].clone()), "state.pods[1].name"),
            (
                |s| s.node.as_mut().unwrap().pod_cidr = "10.245.1.0/24".into(),
                "node.pod_cidr",
            ),
            (
                |s| s.node.as_mut().unwrap().gateway_ip = "10.244.9.1".into(),
                "node.gateway_ip",
            ),
            (
                |s| s.remote_nodes[0].pod_cidr = "10.244.1.0/25".into(),
                "remote_nodes[n2].pod_cidr",
            ),
            (
                |s| s.remote_nodes[0].vtep_ip = "172.30.0.11".into(),
                "remote_nodes[n2].vtep_ip",
            ),
            (
                |s| {
                    let mut r = s.remote_nodes[0].clone();
                    r.name = "n3".into();
                    r.pod_cidr = "10.244.3.0/24".into();
                    s.remote_nodes.push(r);
                },
                "remote_nodes[n3].vtep_ip",
            ),
            (|s| s.pods[0].ip = "10.244.2.9".into(), "pods[p1].ip"),
            (|s| s.pods[0].ip = "10.244.1.1".into(), "pods[p1].ip"),
            (|s| s.pods[0].ip = "10.244.1.255".into(), "pods[p1].ip"),
            (
                |s| {
                    let mut p = s.pods[0].clone();
                    p.name = "p2".into();
                    p.ifname = "kx2".into();
                    s.pods.push(p);
                },
                "pods[p2].ip",
            ),
            (|s| s.pods[0].ifname = "eth0".into(), "pods[p1].ifname"),
        ];
        for (i, (f, field)) in cases.into_iter().enumerate() {
            let mut s = sample();
            f(&mut s);
            let e = check(&s).expect_err(&format!("case {i} ({field}) accepted"));
            assert_eq!(e.field, field, "case {i}: {e}");
        }
    }

    #[test]
    fn changes_apply_to_a_copy_and_missing_deletes_fail() {
        let st = check(&sample()).unwrap();
        let add = Change::UpsertPod(Pod {
            name: "p2".into(),
            ip: "10.244.1.3".parse().unwrap(),
            mac: "0a:58:0a:f4:01:03".parse().unwrap(),
            ifname: "kx0af40103".into(),
            ingress: None,
            egress: None,
        });
        let next = st
            .with_changes(8, &[add, Change::DeleteRemote("n2".into())])
            .unwrap();
        assert_eq!(next.pods.len(), 2);
        assert!(next.remotes.is_empty());
        assert_eq!(next.generation, 8);
        assert_eq!(st.pods.len(), 1, "original untouched");
        let e = st
            .with_changes(9, &[Change::DeletePod("nope".into())])
            .unwrap_err();
        assert_eq!(e.field, "changes[0].delete_pod");
    }

    fn web(name: &str, vip: &str, node_port: u32) -> pb::Service {
        pb::Service {
            name: name.into(),
            cluster_ip: vip.into(),
            ports: vec![pb::ServicePort {
                name: "http".into(),
                protocol: pb::Protocol::Tcp as i32,
                port: 80,
                target_port: 8080,
                node_port,
            }],
            session_affinity: 0,
            affinity_timeout_s: 0,
            external_traffic_policy: 0,
            endpoints: vec![pb::Endpoint {
                ip: "10.244.1.2".into(),
                node: "n1".into(),
                ready: true,
                serving: true,
                terminating: false,
            }],
            ..Default::default()
        }
    }

    /// Every API limit (`kxdp_proto::limits`) refuses the whole request,
    /// naming the field, the limit and the value; one below each passes.
    #[test]
    fn api_limits_refuse_the_whole_request() {
        use kxdp_proto::limits::*;
        let endpoints = |n: usize| -> Vec<pb::Endpoint> {
            (0..n as u32)
                .map(|i| pb::Endpoint {
                    ip: std::net::Ipv4Addr::from(0x0af4_0000 + 0x100 + i).to_string(),
                    ready: true,
                    ..Default::default()
                })
                .collect()
        };
        let refused = |s: &pb::DataplaneState, field: &str, needle: &str| {
            let e = check(s).expect_err(field);
            assert_eq!(e.field, field, "{e}");
            assert!(e.msg.contains(needle), "{e}");
        };
        // Per service, checked before anything of it is parsed.
        let mut s = sample();
        s.services.push(web("default/web", "10.96.0.10", 0));
        s.services[0].endpoints = endpoints(MAX_ENDPOINTS_PER_SERVICE);
        check(&s).unwrap();
        s.services[0].endpoints = endpoints(MAX_ENDPOINTS_PER_SERVICE + 1);
        refused(
            &s,
            "state.services[0].endpoints",
            "5001 endpoints, over the limit of 5000 per service",
        );
        s.services[0].endpoints = endpoints(1);
        let port = s.services[0].ports[0].clone();
        s.services[0].ports = (1..=MAX_PORTS_PER_SERVICE as u32 + 1)
            .map(|n| pb::ServicePort {
                port: n,
                ..port.clone()
            })
            .collect();
        refused(
            &s,
            "state.services[0].ports",
            "101 ports, over the limit of 100 per service",
        );
        s.services[0].ports = vec![port];
        s.services[0].external_ips = (0..MAX_OUTSIDE_IPS_PER_SERVICE as u32 + 1)
            .map(|i| std::net::Ipv4Addr::from(0xcb00_7100 + i).to_string())
            .collect();
        refused(
            &s,
            "state.services[0].external_ips",
            "65 external and LoadBalancer IPs",
        );
        // The whole state: services, and backends summed over them.
        let mut s = sample();
        s.services = (0..MAX_SERVICES as u32 + 1)
            .map(|i| {
                web(
                    &format!("default/s{i}"),
                    &std::net::Ipv4Addr::from(0x0a60_0100 + i).to_string(),
                    0,
                )
            })
            .collect();
        refused(&s, "services", "20001 services, over the limit of 20000");
        s.services.truncate(MAX_SERVICES);
        check(&s).unwrap();
        let full = |i: u32| {
            let mut sv = web(
                &format!("default/big{i}"),
                &std::net::Ipv4Addr::from(0x0a61_0000 + i).to_string(),
                0,
            );
            sv.endpoints = endpoints(MAX_ENDPOINTS_PER_SERVICE);
            sv
        };
        let mut s = sample();
        s.services = (0..(MAX_BACKENDS / MAX_ENDPOINTS_PER_SERVICE) as u32)
            .map(full)
            .collect();
        let st = check(&s).unwrap();
        // An Update that goes over is refused whole: its result fails validation.
        let over = st
            .with_changes(
                8,
                &[Change::UpsertService(
                    service_from_proto("x", &web("default/one", "10.96.0.9", 0)).unwrap(),
                )],
            )
            .unwrap();
        let e = over.validate().unwrap_err();
        assert_eq!(e.field, "services");
        assert!(e.msg.contains("250001 backends"), "{e}");
        s.services.push(web("default/one", "10.96.0.9", 0));
        refused(&s, "services", "over the limit of 250000");
    }

    #[test]
    fn services_round_trip_and_bad_ones_are_named() {
        let mut s = sample();
        s.services.push(web("default/web", "10.96.0.10", 30080));
        let st = check(&s).unwrap();
        assert_eq!(st.to_proto(), s);
        assert_eq!(st.services["default/web"].ports[0].target_port, 8080);

        type Mutation = fn(&mut pb::DataplaneState);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |s| s.services.push(web("z", "10.96.0.10", 0)),
                "services[z].cluster_ip",
            ),
            (
                |s| s.services.push(web("z", "10.97.0.1", 30080)),
                "services[z].ports[0].node_port",
            ),
            (
                |s| s.services[0].ports[0].node_port = 29999,
                "services[default/web].ports[0].node_port",
            ),
            (
                |s| s.services[0].ports[0].port = 0,
                "state.services[0].ports[0].port",
            ),
            (
                |s| s.services[0].ports[0].port = 70000,
                "state.services[0].ports[0].port",
            ),
            (
                |s| {
                    let p = s.services[0].ports[0].clone();
                    s.services[0].ports.push(p);
                },
                "state.services[0].ports[1].port",
            ),
            (
                |s| s.services[0].ports[0].protocol = 0,
                "state.services[0].ports[0].protocol",
            ),
            // Outside the pod network is fine (a node's address, anything
            // routable); a ClusterIP or a loopback address is not.
            (
                |s| s.services[0].endpoints[0].ip = "10.96.7.7".into(),
                "services[default/web].endpoints[0].ip",
            ),
            (
                |s| s.services[0].endpoints[0].ip = "127.0.0.1".into(),
                "services[default/web].endpoints[0].ip",
            ),
            (
                |s| s.services[0].cluster_ip = "10.244.1.50".into(),
                "services[default/web].cluster_ip",
            ),
            (
                |s| s.services[0].affinity_timeout_s = 99999,
                "state.services[0].affinity_timeout_s",
            ),
            (
                |s| s.node.as_mut().unwrap().service_cidr = String::new(),
                "node.service_cidr",
            ),
            (
                |s| s.node.as_mut().unwrap().service_cidr = "10.240.0.0/12".into(),
                "node.service_cidr",
            ),
            (
                |s| {
                    let sv = s.services[0].clone();
                    s.services.push(sv);
                },
                "state.services[1].name",
            ),
        ];
        for (i, (f, field)) in cases.into_iter().enumerate() {
            let mut s = sample();
            s.services.push(web("default/web", "10.96.0.10", 30080));
            if field.ends_with("affinity_timeout_s") {
                s.services[0].session_affinity = pb::SessionAffinity::ClientIp as i32;
            }
            f(&mut s);
            let e = check(&s).expect_err(&format!("case {i} ({field}) accepted"));
            assert_eq!(e.field, field, "case {i}: {e}");
        }
    }

    #[test]
    fn outside_addresses_policies_and_health_check_ports_are_checked() {
        let mut s = sample();
        s.node.as_mut().unwrap().node_port_addresses = vec!["172.30.0.0/24".into()];
        let mut sv = web("default/web", "10.96.0.10", 30080);
        sv.external_ips = vec!["192.0.2.80".into()];
        sv.load_balancer_ips = vec!["198.51.100.80".into()];
        sv.internal_traffic_policy = pb::TrafficPolicy::Local as i32;
        sv.external_traffic_policy = pb::TrafficPolicy::Local as i32;
        sv.health_check_node_port = 32000;
        s.services.push(sv);
        let st = check(&s).unwrap();
        assert_eq!(st.to_proto(), s, "round trip");
        let w = &st.services["default/web"];
        assert_eq!(w.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(w.health_check_node_port, Some(32000));
        assert_eq!(
            w.outside_ips().collect::<Vec<_>>(),
            [
                Ipv4Addr::new(192, 0, 2, 80),
                Ipv4Addr::new(198, 51, 100, 80)
            ]
        );

        type Mutation = fn(&mut pb::DataplaneState);
        fn other(s: &mut pb::DataplaneState) -> &mut pb::Service {
            s.services.push(web("default/other", "10.96.0.11", 0));
            s.services.last_mut().unwrap()
        }
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |s| s.node.as_mut().unwrap().node_port_addresses = vec!["172.30.0.1/24".into()],
                "state.node.node_port_addresses[0]",
            ),
            (
                |s| s.services[0].external_ips = vec!["10.244.9.9".into()],
                "services[default/web].external_ips[0]",
            ),
            (
                |s| s.services[0].external_ips = vec!["10.96.5.5".into()],
                "services[default/web].external_ips[0]",
            ),
            (
                |s| s.services[0].load_balancer_ips = vec!["172.30.0.11".into()],
                "services[default/web].load_balancer_ips[0]",
            ),
            (
                |s| s.services[0].load_balancer_ips = vec!["224.0.0.5".into()],
                "services[default/web].load_balancer_ips[0]",
            ),
            (
                |s| s.services[0].external_ips = vec!["192.0.2.80".into(); 2],
                "state.services[0].external_ips[1]",
            ),
            (
                |s| s.services[0].external_ips = vec!["nope".into()],
                "state.services[0].external_ips[0]",
            ),
            (
                |s| s.services[0].internal_traffic_policy = 7,
                "state.services[0].internal_traffic_policy",
            ),
            (
                |s| s.services[0].external_traffic_policy = 0,
                "services[default/web].health_check_node_port",
            ),
            (
                |s| s.services[0].health_check_node_port = 29999,
                "services[default/web].health_check_node_port",
            ),
            (
                |s| s.services[0].health_check_node_port = 30080,
                "services[default/web].health_check_node_port",
            ),
            (
                |s| {
                    let o = other(s);
                    o.external_traffic_policy = pb::TrafficPolicy::Local as i32;
                    o.health_check_node_port = 32000;
                },
                "services[default/web].health_check_node_port",
            ),
            (
                |s| other(s).external_ips = vec!["198.51.100.80".into()],
                "services[default/web].load_balancer_ips[0]",
            ),
        ];
        for (i, (f, field)) in cases.into_iter().enumerate() {
            let mut bad = s.clone();
            f(&mut bad);
            let e = check(&bad).expect_err(&format!("case {i} ({field}) accepted"));
            assert_eq!(e.field, field, "case {i}: {e}");
        }
    }

    #[test]
    fn empty_change_is_rejected() {
        let e = changes_from_proto(&[pb::Change { op: None }]).unwrap_err();
        assert_eq!(e.field, "changes[0]");
    }
}
