//! Network policy (networking.k8s.io/v1 NetworkPolicy): the cluster file's
//! model of namespaces, pod labels and policies, validated as the API
//! server validates them, and compiled into the tables each dataplane
//! matches new flows with (`kxdp_core::policy`).
//!
//! Compilation, per local pod and direction that some policy selects: every
//! rule's peers become prefixes (a selected pod is its /32, an ipBlock its
//! CIDR with each `except` a prefix of its own), and each prefix gets the
//! ports of every rule whose peers hold the addresses that match it longest.
//! Since every CIDR and except is a prefix of the table, "the addresses whose
//! longest match is B" are inside a peer exactly when B is inside its CIDR
//! and inside none of its excepts: one longest-prefix lookup answers for
//! every policy at once. Named ports resolve against the destination pod's
//! container ports: the pod itself for ingress, each peer pod (its /32) for
//! egress.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use kxdp_proto::control as cpb;
use kxdp_proto::dataplane as pb;
use kxdp_proto::policy::PortSpan;
use serde::{Deserialize, Serialize};

use crate::cluster::Pod;
use crate::validate::{check_name, is_dns_label, parse_cidr, Problem};

/// The namespace of a pod or policy that names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The label every namespace carries with its own name (Kubernetes 1.21+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Most policies in a cluster (the API server has no limit; this bounds
/// compile time and memory).
pub const MAX_POLICIES: usize = 10_000;
/// Most namespaces with labels (the file's and the run-time ones together).
pub const MAX_NAMESPACES: usize = 10_000;

pub type Labels = BTreeMap<String, String>;

/// A container port a named policy port may refer to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Proto,
    pub port: u16,
}

/// TCP or UDP (SCTP is refused where it is written).
pub use kxdp_proto::service::Protocol as Proto;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// A label selector: `match_labels` and `match_expressions`, ANDed; empty
/// selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: BTreeSet<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let v = labels.get(&r.key);
                match r.op {
                    Op::In => v.is_some_and(|v| r.values.contains(v)),
                    // Kubernetes: NotIn also holds where the key is absent.
                    Op::NotIn => v.is_none_or(|v| !r.values.contains(v)),
                    Op::Exists => v.is_some(),
                    Op::DoesNotExist => v.is_none(),
                }
            })
    }
}

/// One peer of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods: of the policy's namespace (`namespaces: None`), or of the
    /// namespaces matching a selector; `pods: None` means all of them.
    Pods {
        namespaces: Option<Selector>,
        pods: Option<Selector>,
    },
    Block {
        cidr: Ipv4Net,
        except: Vec<Ipv4Net>,
    },
}

/// A rule's port: a number or range, a container port's name, or every
/// port of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    All(Proto),
    Range(Proto, u16, u16),
    Named(Proto, String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Empty: every peer.
    pub peers: Vec<Peer>,
    /// Empty: every port and protocol.
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// "namespace/name".
    pub name: String,
    pub namespace: String,
    pub pod_selector: Selector,
    /// Effective types (after the API's defaulting).
    pub ingress_type: bool,
    pub egress_type: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

// ---- raw file model ----

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamespace {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawNamedPort {
    pub name: String,
    #[serde(default)]
    pub protocol: Option<String>,
    pub port: i64,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    match_expressions: Vec<RawRequirement>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    values: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    name: String,
    pod_selector: RawSelector,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ingress: Option<Vec<RawIngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    egress: Option<Vec<RawEgressRule>>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawIngressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    from: Vec<RawPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<RawPort>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawEgressRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    to: Vec<RawPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ports: Vec<RawPort>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pod_selector: Option<RawSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace_selector: Option<RawSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ip_block: Option<RawIpBlock>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawIpBlock {
    cidr: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    except: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    String(String),
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end_port: Option<i64>,
}

// ---- validation (as the API server's ValidateNetworkPolicy) ----

/// A label key: an optional DNS-subdomain prefix and '/', then a name of
/// at most 63 characters of alphanumerics, '-', '_' and '.', starting and
/// ending alphanumeric.
fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(|p| p.len() <= 253 && p.split('.').all(is_dns_label))
        && is_label_value(name)
        && !name.is_empty()
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' and '.',
/// starting and ending alphanumeric.
fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// IANA_SVC_NAME: at most 15 lowercase alphanumerics and '-', at least one
/// letter, no '-' at either end nor two in a row.
pub fn is_port_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !n.contains("--")
}

pub fn check_labels(path: &str, labels: &Labels, p: &mut Vec<Problem>) {
    for (k, v) in labels {
        if !is_label_key(k) {
            p.push(Problem::new(
                format!("{path}.{k}"),
                "is not a label key ([prefix/]name: a name of at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric)",
            ));
        }
        if !is_label_value(v) {
            p.push(Problem::new(
                format!("{path}.{k}"),
                format!("{v:?} is not a label value (at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric)"),
            ));
        }
    }
}

fn protocol(path: &str, text: Option<&str>, p: &mut Vec<Problem>) -> Option<Proto> {
    match text.unwrap_or("TCP") {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        "SCTP" => {
            p.push(Problem::new(
                path,
                "SCTP is not supported by kxdp (TCP or UDP)",
            ));
            None
        }
        other => {
            p.push(Problem::new(
                path,
                format!("{other:?} is not a protocol (TCP or UDP)"),
            ));
            None
        }
    }
}

pub fn validate_namespaces(raw: &[RawNamespace], p: &mut Vec<Problem>) -> Vec<Namespace> {
    if raw.len() > MAX_NAMESPACES {
        p.push(Problem::new(
            "namespaces",
            format!("{} namespaces; at most {MAX_NAMESPACES}", raw.len()),
        ));
        return Vec::new();
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, ns) in raw.iter().enumerate() {
        let at = format!("namespaces[{i}]");
        let before = p.len();
        let checked = validate_namespace(&at, ns, p);
        if p.len() == before && !seen.insert(ns.name.as_str()) {
            p.push(Problem::new(
                format!("{at}.name"),
                format!("namespace {} is listed twice", ns.name),
            ));
            continue;
        }
        out.extend(checked);
    }
    out
}

/// One namespace at `at` (`namespaces[3]`, `namespace`).
pub fn validate_namespace(at: &str, ns: &RawNamespace, p: &mut Vec<Problem>) -> Option<Namespace> {
    let before = p.len();
    check_name(&format!("{at}.name"), &ns.name, p);
    check_labels(&format!("{at}.labels"), &ns.labels, p);
    (p.len() == before).then(|| Namespace {
        name: ns.name.clone(),
        labels: ns.labels.clone(),
    })
}

/// A pod's container ports: names unique, protocol TCP or UDP.
pub fn validate_named_ports(
    path: &str,
    raw: &[RawNamedPort],
    p: &mut Vec<Problem>,
) -> Vec<NamedPort> {
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, np) in raw.iter().enumerate() {
        let at = |f: &str| format!("{path}[{i}].{f}");
        let before = p.len();
        if !is_port_name(&np.name) {
            p.push(Problem::new(
                at("name"),
                format!("{:?} is not a port name (IANA_SVC_NAME: at most 15 of a-z, 0-9 and '-', with a letter)", np.name),
            ));
        } else if !names.insert(np.name.as_str()) {
            p.push(Problem::new(
                at("name"),
                format!("port name {} is used twice", np.name),
            ));
        }
        let proto = protocol(&at("protocol"), np.protocol.as_deref(), p);
        if !(1..=65535).contains(&np.port) {
            p.push(Problem::new(
                at("port"),
                format!("{} is out of range 1..=65535", np.port),
            ));
        }
        if let (true, Some(protocol)) = (p.len() == before, proto) {
            out.push(NamedPort {
                name: np.name.clone(),
                protocol,
                port: np.port as u16,
            });
        }
    }
    out
}

fn selector(path: &str, raw: &RawSelector, p: &mut Vec<Problem>) -> Selector {
    check_labels(&format!("{path}.match_labels"), &raw.match_labels, p);
    let mut match_expressions = Vec::new();
    for (i, r) in raw.match_expressions.iter().enumerate() {
        let at = |f: &str| format!("{path}.match_expressions[{i}].{f}");
        if !is_label_key(&r.key) {
            p.push(Problem::new(
                at("key"),
                format!("{:?} is not a label key", r.key),
            ));
        }
        let op = match r.operator.as_str() {
            "In" => Op::In,
            "NotIn" => Op::NotIn,
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            other => {
                p.push(Problem::new(
                    at("operator"),
                    format!("{other:?} is not an operator (In, NotIn, Exists, DoesNotExist)"),
                ));
                continue;
            }
        };
        match op {
            Op::In | Op::NotIn if r.values.is_empty() => p.push(Problem::new(
                at("values"),
                format!("must not be empty for {}", r.operator),
            )),
            Op::Exists | Op::DoesNotExist if !r.values.is_empty() => p.push(Problem::new(
                at("values"),
                format!("must be empty for {}", r.operator),
            )),
            _ => {}
        }
        for (j, v) in r.values.iter().enumerate() {
            if !is_label_value(v) {
                p.push(Problem::new(
                    format!("{}[{j}]", at("values")),
                    format!("{v:?} is not a label value"),
                ));
            }
        }
        match_expressions.push(Requirement {
            key: r.key.clone(),
            op,
            values: r.values.iter().cloned().collect(),
        });
    }
    Selector {
        match_labels: raw.match_labels.clone(),
        match_expressions,
    }
}

fn peer(path: &str, raw: &RawPeer, p: &mut Vec<Problem>) -> Option<Peer> {
    match (&raw.pod_selector, &raw.namespace_selector, &raw.ip_block) {
        (None, None, None) => {
            p.push(Problem::new(
                path,
                "must have pod_selector, namespace_selector or ip_block",
            ));
            None
        }
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            p.push(Problem::new(
                format!("{path}.ip_block"),
                "may not be combined with pod_selector or namespace_selector",
            ));
            None
        }
        (pods, namespaces, None) => Some(Peer::Pods {
            namespaces: namespaces
                .as_ref()
                .map(|s| selector(&format!("{path}.namespace_selector"), s, p)),
            pods: pods
                .as_ref()
                .map(|s| selector(&format!("{path}.pod_selector"), s, p)),
        }),
        (None, None, Some(b)) => {
            let at = format!("{path}.ip_block");
            let cidr = parse_cidr(&format!("{at}.cidr"), &b.cidr, p)?;
            let mut except = Vec::new();
            for (i, e) in b.except.iter().enumerate() {
                let ep = format!("{at}.except[{i}]");
                if let Some(e) = parse_cidr(&ep, e, p) {
                    if e.prefix_len() <= cidr.prefix_len() || !cidr.contains(&e.network()) {
                        p.push(Problem::new(
                            ep,
                            format!("{e} must be a strict subset of cidr {cidr}"),
                        ));
                    } else {
                        except.push(e);
                    }
                }
            }
            Some(Peer::Block { cidr, except })
        }
    }
}

fn port(path: &str, raw: &RawPort, p: &mut Vec<Problem>) -> Option<PortSpec> {
    let proto = protocol(&format!("{path}.protocol"), raw.protocol.as_deref(), p);
    let spec = match (&raw.port, raw.end_port) {
        (None, None) => PortSpec::All(proto?),
        (None, Some(_)) => {
            p.push(Problem::new(
                format!("{path}.end_port"),
                "needs a numeric port",
            ));
            return None;
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                p.push(Problem::new(
                    format!("{path}.end_port"),
                    "may not be used with a named port",
                ));
            }
            if !is_port_name(name) {
                p.push(Problem::new(
                    format!("{path}.port"),
                    format!("{name:?} is neither a port number nor a port name (IANA_SVC_NAME)"),
                ));
                return None;
            }
            PortSpec::Named(proto?, name.clone())
        }
        (Some(IntOrString::Int(n)), end) => {
            if !(1..=65535).contains(n) {
                p.push(Problem::new(
                    format!("{path}.port"),
                    format!("{n} is out of range 1..=65535"),
                ));
                return None;
            }
            let last = match end {
                None => *n,
                Some(e) if (*n..=65535).contains(&e) => e,
                Some(e) => {
                    p.push(Problem::new(
                        format!("{path}.end_port"),
                        format!("{e} must be at least port ({n}) and at most 65535"),
                    ));
                    return None;
                }
            };
            PortSpec::Range(proto?, *n as u16, last as u16)
        }
    };
    Some(spec)
}

fn rule(path: &str, peers: &[RawPeer], ports: &[RawPort], p: &mut Vec<Problem>) -> Rule {
    let peer_word = if path.contains(".ingress[") {
        "from"
    } else {
        "to"
    };
    Rule {
        peers: peers
            .iter()
            .enumerate()
            .filter_map(|(i, r)| peer(&format!("{path}.{peer_word}[{i}]"), r, p))
            .collect(),
        ports: ports
            .iter()
            .enumerate()
            .filter_map(|(i, r)| port(&format!("{path}.ports[{i}]"), r, p))
            .collect(),
    }
}

pub fn validate_policies(raw: &[RawPolicy], p: &mut Vec<Problem>) -> Vec<NetworkPolicy> {
    if raw.len() > MAX_POLICIES {
        p.push(Problem::new(
            "network_policies",
            format!("{} policies; at most {MAX_POLICIES}", raw.len()),
        ));
        return Vec::new();
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, rp) in raw.iter().enumerate() {
        let at = format!("network_policies[{i}]");
        let before = p.len();
        let checked = validate_policy(&at, rp, p);
        if let Some(pol) = checked.filter(|_| p.len() == before) {
            if names.insert(pol.name.clone()) {
                out.push(pol);
            } else {
                p.push(Problem::new(
                    format!("{at}.name"),
                    format!("policy {} is listed twice", pol.name),
                ));
            }
        }
    }
    out
}

/// One policy at `at` (`network_policies[3]`, `policy`), problems under it.
pub fn validate_policy(at: &str, rp: &RawPolicy, p: &mut Vec<Problem>) -> Option<NetworkPolicy> {
    let at = |f: &str| format!("{at}.{f}");
    let before = p.len();
    let (namespace, name) = match rp.name.split_once('/') {
        Some((ns, n)) => (ns, n),
        None => (DEFAULT_NAMESPACE, rp.name.as_str()),
    };
    check_name(&at("name"), namespace, p);
    check_name(&at("name"), name, p);
    let full = format!("{namespace}/{name}");
    let pod_selector = selector(&at("pod_selector"), &rp.pod_selector, p);
    let has_egress = rp.egress.as_ref().is_some_and(|e| !e.is_empty());
    let (ingress_type, egress_type) = match &rp.policy_types {
        // The API's defaulting: Ingress always, Egress if there are
        // egress rules.
        None => (true, has_egress),
        Some(types) => {
            let mut seen = (false, false);
            for (j, t) in types.iter().enumerate() {
                let slot = match t.as_str() {
                    "Ingress" => &mut seen.0,
                    "Egress" => &mut seen.1,
                    other => {
                        p.push(Problem::new(
                            format!("{}[{j}]", at("policy_types")),
                            format!("{other:?} is not a policy type (Ingress, Egress)"),
                        ));
                        continue;
                    }
                };
                if *slot {
                    p.push(Problem::new(
                        format!("{}[{j}]", at("policy_types")),
                        format!("{t} is listed twice"),
                    ));
                }
                *slot = true;
            }
            if types.is_empty() {
                p.push(Problem::new(at("policy_types"), "must not be empty"));
            }
            seen
        }
    };
    let ingress = rp
        .ingress
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, r)| rule(&at(&format!("ingress[{j}]")), &r.from, &r.ports, p))
        .collect();
    let egress = rp
        .egress
        .iter()
        .flatten()
        .enumerate()
        .map(|(j, r)| rule(&at(&format!("egress[{j}]")), &r.to, &r.ports, p))
        .collect();
    (p.len() == before).then(|| NetworkPolicy {
        name: full,
        namespace: namespace.to_string(),
        pod_selector,
        ingress_type,
        egress_type,
        ingress,
        egress,
    })
}

// ---- the Control API's messages (kxdp.control.v1.NetworkPolicy) ----

impl RawPolicy {
    /// The request's policy in the cluster file's shape, for
    /// [`validate_policy`]; its name is "namespace/name" (a namespace with
    /// a '/' in it is the caller's to refuse first).
    pub fn from_proto(pol: &cpb::NetworkPolicy) -> RawPolicy {
        let peers = |peers: &[cpb::NetworkPolicyPeer]| -> Vec<RawPeer> {
            peers
                .iter()
                .map(|q| RawPeer {
                    pod_selector: q.pod_selector.as_ref().map(RawSelector::from_proto),
                    namespace_selector: q.namespace_selector.as_ref().map(RawSelector::from_proto),
                    ip_block: q.ip_block.as_ref().map(|b| RawIpBlock {
                        cidr: b.cidr.clone(),
                        except: b.except.clone(),
                    }),
                })
                .collect()
        };
        let ports = |ports: &[cpb::NetworkPolicyPort]| -> Vec<RawPort> {
            ports
                .iter()
                .map(|q| RawPort {
                    protocol: Some(q.protocol.clone()).filter(|p| !p.is_empty()),
                    port: q.port.as_ref().map(|p| match p {
                        cpb::network_policy_port::Port::Number(n) => {
                            IntOrString::Int(i64::from(*n))
                        }
                        cpb::network_policy_port::Port::Name(n) => IntOrString::String(n.clone()),
                    }),
                    end_port: Some(i64::from(q.end_port)).filter(|&e| e != 0),
                })
                .collect()
        };
        let ingress: Vec<RawIngressRule> = pol
            .ingress
            .iter()
            .map(|r| RawIngressRule {
                from: peers(&r.from),
                ports: ports(&r.ports),
            })
            .collect();
        let egress: Vec<RawEgressRule> = pol
            .egress
            .iter()
            .map(|r| RawEgressRule {
                to: peers(&r.to),
                ports: ports(&r.ports),
            })
            .collect();
        RawPolicy {
            name: full_name(&pol.namespace, &pol.name),
            pod_selector: pol
                .pod_selector
                .as_ref()
                .map(RawSelector::from_proto)
                .unwrap_or_default(),
            policy_types: Some(pol.policy_types.clone()).filter(|t| !t.is_empty()),
            ingress: Some(ingress).filter(|r| !r.is_empty()),
            egress: Some(egress).filter(|r| !r.is_empty()),
        }
    }

    /// "namespace/name" as written (the namespace may be implicit).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A YAML list of policies in the cluster file's `network_policies:`
/// shape (`kxdpctl policy apply`), validated whole: problems are at
/// `network_policies[i]...`.
pub fn policies_from_yaml(text: &str) -> Result<Vec<NetworkPolicy>, crate::validate::Problems> {
    let raw: Vec<RawPolicy> = serde_yaml_ng::from_str(text).map_err(|e| {
        crate::validate::Problems(vec![Problem::new(
            String::new(),
            format!("YAML: {e} (expected a list of policies, as under the cluster file's network_policies:)"),
        )])
    })?;
    let mut p = Vec::new();
    let policies = validate_policies(&raw, &mut p);
    if raw.is_empty() {
        p.push(Problem::new("network_policies", "no policy in it"));
    }
    crate::validate::Problems::result(p).map(|()| policies)
}

/// "namespace/name" of a policy, the namespace "default" when empty.
pub fn full_name(namespace: &str, name: &str) -> String {
    let namespace = if namespace.is_empty() {
        DEFAULT_NAMESPACE
    } else {
        namespace
    };
    format!("{namespace}/{name}")
}

impl RawSelector {
    fn from_proto(s: &cpb::LabelSelector) -> RawSelector {
        RawSelector {
            match_labels: s.match_labels.clone().into_iter().collect(),
            match_expressions: s
                .match_expressions
                .iter()
                .map(|r| RawRequirement {
                    key: r.key.clone(),
                    operator: r.operator.clone(),
                    values: r.values.clone(),
                })
                .collect(),
        }
    }
}

impl Selector {
    fn to_proto(&self) -> cpb::LabelSelector {
        cpb::LabelSelector {
            match_labels: self.match_labels.clone().into_iter().collect(),
            match_expressions: self
                .match_expressions
                .iter()
                .map(|r| cpb::LabelSelectorRequirement {
                    key: r.key.clone(),
                    operator: format!("{:?}", r.op),
                    values: r.values.iter().cloned().collect(),
                })
                .collect(),
        }
    }
}

impl Rule {
    fn proto_parts(&self) -> (Vec<cpb::NetworkPolicyPeer>, Vec<cpb::NetworkPolicyPort>) {
        use cpb::network_policy_port::Port;
        let peers = self
            .peers
            .iter()
            .map(|q| match q {
                Peer::Pods { namespaces, pods } => cpb::NetworkPolicyPeer {
                    pod_selector: pods.as_ref().map(Selector::to_proto),
                    namespace_selector: namespaces.as_ref().map(Selector::to_proto),
                    ip_block: None,
                },
                Peer::Block { cidr, except } => cpb::NetworkPolicyPeer {
                    ip_block: Some(cpb::IpBlock {
                        cidr: cidr.to_string(),
                        except: except.iter().map(ToString::to_string).collect(),
                    }),
                    ..Default::default()
                },
            })
            .collect();
        let ports = self
            .ports
            .iter()
            .map(|spec| {
                let (proto, port, end_port) = match spec {
                    PortSpec::All(proto) => (proto, None, 0),
                    PortSpec::Range(proto, first, last) => (
                        proto,
                        Some(Port::Number(u32::from(*first))),
                        if last == first { 0 } else { u32::from(*last) },
                    ),
                    PortSpec::Named(proto, name) => (proto, Some(Port::Name(name.clone())), 0),
                };
                cpb::NetworkPolicyPort {
                    protocol: proto.to_string(),
                    port,
                    end_port,
                }
            })
            .collect();
        (peers, ports)
    }
}

impl NetworkPolicy {
    /// The policy as the Control API lists it: effective policy types,
    /// protocols spelled out.
    pub fn to_proto(&self) -> cpb::NetworkPolicy {
        let short = self
            .name
            .split_once('/')
            .map_or(self.name.as_str(), |(_, n)| n);
        let mut policy_types = Vec::new();
        if self.ingress_type {
            policy_types.push("Ingress".to_string());
        }
        if self.egress_type {
            policy_types.push("Egress".to_string());
        }
        cpb::NetworkPolicy {
            namespace: self.namespace.clone(),
            name: short.to_string(),
            pod_selector: Some(self.pod_selector.to_proto()),
            policy_types,
            ingress: self
                .ingress
                .iter()
                .map(|r| {
                    let (from, ports) = r.proto_parts();
                    cpb::NetworkPolicyIngressRule { from, ports }
                })
                .collect(),
            egress: self
                .egress
                .iter()
                .map(|r| {
                    let (to, ports) = r.proto_parts();
                    cpb::NetworkPolicyEgressRule { to, ports }
                })
                .collect(),
            source: String::new(),
        }
    }

    /// In the cluster file's `network_policies:` shape (the state file's).
    pub fn to_raw(&self) -> RawPolicy {
        RawPolicy::from_proto(&self.to_proto())
    }
}

impl Namespace {
    pub fn to_proto(&self) -> cpb::Namespace {
        cpb::Namespace {
            name: self.name.clone(),
            labels: self.labels.clone().into_iter().collect(),
            source: String::new(),
        }
    }

    pub fn to_raw(&self) -> RawNamespace {
        RawNamespace {
            name: self.name.clone(),
            labels: self.labels.clone(),
        }
    }
}

impl RawNamespace {
    pub fn from_proto(ns: &cpb::Namespace) -> RawNamespace {
        RawNamespace {
            name: ns.name.clone(),
            labels: ns.labels.clone().into_iter().collect(),
        }
    }
}

// ---- compilation ----

/// Which way a policy applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    Ingress,
    Egress,
}

/// A port entry of a compiled table: (protocol, first, last), protocol
/// `None` for every protocol and port; the allowing policy's index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Allowed {
    pub proto: Option<Proto>,
    pub first: u16,
    pub last: u16,
    pub policy: usize,
}

impl Allowed {
    /// The entry's ports as the dataplane takes them.
    pub fn span(&self) -> PortSpan {
        match self.proto {
            None => PortSpan::ANY,
            proto => PortSpan {
                proto,
                first: self.first,
                last: self.last,
            },
        }
    }
}

/// One pod's compiled table for one direction: prefix -> what it may use.
pub type Table = Vec<(Ipv4Net, Vec<Allowed>)>;

/// What pods with the same table share: direction, selecting policies, and
/// (only where ingress named ports need them) the pod's own ports.
type Key = (Dir, Vec<usize>, Vec<NamedPort>);

/// Everything a compile needs about the cluster's pods and namespaces.
pub struct World<'a> {
    pub policies: Vec<&'a NetworkPolicy>,
    pods: Vec<&'a Pod>,
    ns_labels: HashMap<&'a str, Labels>,
    /// Policies by namespace: a pod is selected only by its namespace's.
    by_ns: HashMap<&'a str, Vec<usize>>,
    /// Per policy and direction, per rule, per peer: the IPs of the pods it
    /// selects (for pod peers).
    peer_ips: HashMap<(usize, Dir, usize, usize), HashSet<Ipv4Addr>>,
    cache: HashMap<Key, Table>,
    pb_cache: HashMap<Key, pb::PolicyTable>,
}

impl<'a> World<'a> {
    pub fn new(
        policies: impl Iterator<Item = &'a NetworkPolicy>,
        namespaces: impl Iterator<Item = &'a Namespace>,
        pods: impl Iterator<Item = &'a Pod>,
    ) -> World<'a> {
        let policies: Vec<&NetworkPolicy> = policies.collect();
        let pods: Vec<&Pod> = pods.collect();
        let mut ns_labels: HashMap<&str, Labels> = HashMap::new();
        for p in &pods {
            ns_labels.entry(p.namespace.as_str()).or_default();
        }
        for pol in &policies {
            ns_labels.entry(pol.namespace.as_str()).or_default();
        }
        for ns in namespaces {
            ns_labels.insert(ns.name.as_str(), ns.labels.clone());
        }
        for (name, labels) in ns_labels.iter_mut() {
            labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        }
        let mut by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, pol) in policies.iter().enumerate() {
            by_ns.entry(pol.namespace.as_str()).or_default().push(i);
        }
        let mut w = World {
            policies,
            pods,
            ns_labels,
            by_ns,
            peer_ips: HashMap::new(),
            cache: HashMap::new(),
            pb_cache: HashMap::new(),
        };
        w.resolve_peers();
        w
    }

    fn resolve_peers(&mut self) {
        for (pi, pol) in self.policies.iter().enumerate() {
            for (dir, rules) in [(Dir::Ingress, &pol.ingress), (Dir::Egress, &pol.egress)] {
                for (ri, r) in rules.iter().enumerate() {
                    for (qi, q) in r.peers.iter().enumerate() {
                        if let Peer::Pods { namespaces, pods } = q {
                            let ips = self
                                .pods
                                .iter()
                                .filter(|p| {
                                    let ns_ok = match namespaces {
                                        None => p.namespace == pol.namespace,
                                        Some(s) => s.matches(&self.ns_labels[p.namespace.as_str()]),
                                    };
                                    ns_ok && pods.as_ref().is_none_or(|s| s.matches(&p.labels))
                                })
                                .map(|p| p.ip)
                                .collect();
                            self.peer_ips.insert((pi, dir, ri, qi), ips);
                        }
                    }
                }
            }
        }
    }

    /// The policies selecting `pod` for `dir`, by index.
    pub fn selecting(&self, pod: &Pod, dir: Dir) -> Vec<usize> {
        let Some(mine) = self.by_ns.get(pod.namespace.as_str()) else {
            return Vec::new();
        };
        mine.iter()
            .copied()
            .filter(|&i| {
                let pol = &self.policies[i];
                let typed = match dir {
                    Dir::Ingress => pol.ingress_type,
                    Dir::Egress => pol.egress_type,
                };
                typed && pol.pod_selector.matches(&pod.labels)
            })
            .collect()
    }

    /// `pod`'s table for `dir`; `None` when no policy selects it that way.
    pub fn table(&mut self, pod: &Pod, dir: Dir) -> Option<Table> {
        let key = self.key(pod, dir)?;
        if let Some(t) = self.cache.get(&key) {
            return Some(t.clone());
        }
        let t = self.compile(&key.1, dir, &key.2);
        self.cache.insert(key, t.clone());
        Some(t)
    }

    /// What `pod`'s table for `dir` is cached under; `None` when no policy
    /// selects it that way.
    fn key(&self, pod: &Pod, dir: Dir) -> Option<Key> {
        let selecting = self.selecting(pod, dir);
        if selecting.is_empty() {
            return None;
        }
        // Pods selected by the same policies share a table, unless ingress
        // named ports make theirs differ.
        let uses_names = dir == Dir::Ingress
            && selecting.iter().any(|&i| {
                self.policies[i]
                    .ingress
                    .iter()
                    .any(|r| r.ports.iter().any(|p| matches!(p, PortSpec::Named(..))))
            });
        let own_ports = if uses_names {
            pod.ports.clone()
        } else {
            Vec::new()
        };
        Some((dir, selecting, own_ports))
    }

    fn compile(&self, selecting: &[usize], dir: Dir, own_ports: &[NamedPort]) -> Table {
        // Every prefix the rules name.
        let mut bounds: BTreeSet<Ipv4Net> = BTreeSet::new();
        let all: Ipv4Net = "0.0.0.0/0".parse().expect("literal");
        // Pods whose container ports egress named ports may resolve to.
        let mut named_pods = false;
        for &pi in selecting {
            let pol = &self.policies[pi];
            for (ri, r) in self.rules(pol, dir).iter().enumerate() {
                if r.peers.is_empty() {
                    bounds.insert(all);
                }
                let named = r.ports.iter().any(|p| matches!(p, PortSpec::Named(..)));
                for (qi, q) in r.peers.iter().enumerate() {
                    match q {
                        Peer::Pods { .. } => {
                            bounds.extend(
                                self.peer_ips[&(pi, dir, ri, qi)]
                                    .iter()
                                    .map(|ip| Ipv4Net::from(*ip)),
                            );
                        }
                        Peer::Block { cidr, except } => {
                            bounds.insert(*cidr);
                            bounds.extend(except.iter().copied());
                            named_pods |= named && dir == Dir::Egress;
                        }
                    }
                }
                named_pods |= named && dir == Dir::Egress && r.peers.is_empty();
            }
        }
        let by_ip: HashMap<Ipv4Addr, &Pod> = self.pods.iter().map(|p| (p.ip, *p)).collect();
        if named_pods {
            // An egress named port to an ipBlock: each pod inside it with
            // container ports needs its own /32 to resolve them.
            for p in self.pods.iter().filter(|p| !p.ports.is_empty()) {
                bounds.insert(Ipv4Net::from(p.ip));
            }
        }
        let mut out = Table::new();
        for b in bounds {
            let mut allowed: BTreeSet<Allowed> = BTreeSet::new();
            for &pi in selecting {
                let pol = &self.policies[pi];
                for (ri, r) in self.rules(pol, dir).iter().enumerate() {
                    let holds = r.peers.is_empty()
                        || r.peers.iter().enumerate().any(|(qi, q)| match q {
                            Peer::Pods { .. } => {
                                b.prefix_len() == 32
                                    && self.peer_ips[&(pi, dir, ri, qi)].contains(&b.addr())
                            }
                            Peer::Block { cidr, except } => {
                                covers(cidr, &b) && !except.iter().any(|e| covers(e, &b))
                            }
                        });
                    if !holds {
                        continue;
                    }
                    if r.ports.is_empty() {
                        allowed.insert(Allowed {
                            proto: None,
                            first: 0,
                            last: 0,
                            policy: pi,
                        });
                        continue;
                    }
                    for spec in &r.ports {
                        let (proto, first, last) = match spec {
                            PortSpec::All(pr) => (*pr, 0, u16::MAX),
                            PortSpec::Range(pr, a, z) => (*pr, *a, *z),
                            PortSpec::Named(pr, name) => {
                                let ports: &[NamedPort] = match dir {
                                    Dir::Ingress => own_ports,
                                    Dir::Egress if b.prefix_len() == 32 => {
                                        by_ip.get(&b.addr()).map_or(&[][..], |p| p.ports.as_slice())
                                    }
                                    Dir::Egress => &[],
                                };
                                match ports
                                    .iter()
                                    .find(|np| np.name == *name && np.protocol == *pr)
                                {
                                    Some(np) => (*pr, np.port, np.port),
                                    None => continue,
                                }
                            }
                        };
                        allowed.insert(Allowed {
                            proto: Some(proto),
                            first,
                            last,
                            policy: pi,
                        });
                    }
                }
            }
            out.push((b, allowed.into_iter().collect()));
        }
        out
    }

    fn rules<'p>(&self, pol: &'p NetworkPolicy, dir: Dir) -> &'p [Rule] {
        match dir {
            Dir::Ingress => &pol.ingress,
            Dir::Egress => &pol.egress,
        }
    }

    /// The tables of `pod` as the dataplane takes them.
    pub fn pod_tables(&mut self, pod: &Pod) -> (Option<pb::PolicyTable>, Option<pb::PolicyTable>) {
        (
            self.pb_table(pod, Dir::Ingress),
            self.pb_table(pod, Dir::Egress),
        )
    }

    fn pb_table(&mut self, pod: &Pod, dir: Dir) -> Option<pb::PolicyTable> {
        let key = self.key(pod, dir)?;
        if let Some(t) = self.pb_cache.get(&key) {
            return Some(t.clone());
        }
        let t = match self.cache.get(&key) {
            Some(t) => t.clone(),
            None => self.compile(&key.1, dir, &key.2),
        };
        // Every selecting policy once (what a denial counts against), in
        // the key's order; the ports index them.
        let selecting = &key.1;
        let index = |i: usize| selecting.iter().position(|&p| p == i).unwrap_or(0) as u32;
        let peers = t
            .into_iter()
            .map(|(cidr, ports)| pb::PolicyPeer {
                address: u32::from(cidr.network()),
                prefix_len: u32::from(cidr.prefix_len()),
                ports: ports
                    .into_iter()
                    .map(|a| a.span().to_proto(index(a.policy)))
                    .collect(),
            })
            .collect();
        let t = pb::PolicyTable {
            peers,
            policies: selecting
                .iter()
                .map(|&i| self.policies[i].name.clone())
                .collect(),
        };
        self.pb_cache.insert(key, t.clone());
        Some(t)
    }
}

/// What a table gives `peer` for `proto`/`port`: the allowing policy's
/// index, or `None` (longest match, as the dataplane looks it up).
pub fn table_allows(t: &Table, peer: Ipv4Addr, proto: Proto, port: u16) -> Option<usize> {
    let (_, allowed) = t
        .iter()
        .filter(|(net, _)| net.contains(&peer))
        .max_by_key(|(net, _)| net.prefix_len())?;
    allowed
        .iter()
        .find(|a| match a.proto {
            None => true,
            Some(p) => p == proto && a.first <= port && port <= a.last,
        })
        .map(|a| a.policy)
}

/// Why a new connection `src -> dst` (`proto`/`port`, as it reaches the
/// destination pod: after service DNAT) is allowed or denied: the verdict and
/// one line per direction. `node_of`: the node whose gateway is `src`, if
/// any (the node itself always reaches its own pods).
pub fn explain(
    w: &mut World<'_>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: Proto,
    port: u16,
    node_of: impl Fn(Ipv4Addr) -> Option<String>,
) -> (bool, Vec<String>) {
    let find = |ip: Ipv4Addr| w.pods.iter().find(|p| p.ip == ip).copied();
    let (src_pod, dst_pod) = (find(src), find(dst));
    let mut allowed = true;
    let mut why = Vec::new();
    let what = format!("{dst}:{port}/{proto}");
    let name = |p: &Pod| format!("pod {}/{} ({} on {})", p.namespace, p.name, p.ip, p.node);
    let names = |w: &World<'_>, idx: &[usize]| {
        idx.iter()
            .map(|&i| w.policies[i].name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match src_pod {
        None => why.push(format!(
            "egress: {src} is not a pod; no egress policy applies"
        )),
        Some(p) => {
            let selecting = w.selecting(p, Dir::Egress);
            if selecting.is_empty() {
                why.push(format!(
                    "egress: {} is not isolated for egress (no policy selects it)",
                    name(p)
                ));
            } else {
                let t = w.table(p, Dir::Egress).unwrap_or_default();
                match table_allows(&t, dst, proto, port) {
                    Some(i) => why.push(format!(
                        "egress: {} may reach {what}: allowed by {}",
                        name(p),
                        w.policies[i].name
                    )),
                    None => {
                        allowed = false;
                        why.push(format!(
                            "egress: DENIED: {} is isolated for egress by {} and none allows {what}",
                            name(p),
                            names(w, &selecting)
                        ));
                    }
                }
            }
        }
    }
    match dst_pod {
        None => why.push(format!(
            "ingress: {dst} is not a pod; no ingress policy applies"
        )),
        Some(p) => {
            let selecting = w.selecting(p, Dir::Ingress);
            if selecting.is_empty() {
                why.push(format!(
                    "ingress: {} is not isolated for ingress (no policy selects it)",
                    name(p)
                ));
            } else if node_of(src).as_deref() == Some(p.node.as_str()) {
                why.push(format!(
                    "ingress: {src} is node {}'s own address: a node always reaches its pods",
                    p.node
                ));
            } else {
                let t = w.table(p, Dir::Ingress).unwrap_or_default();
                match table_allows(&t, src, proto, port) {
                    Some(i) => why.push(format!(
                        "ingress: {} takes {src} on {port}/{proto}: allowed by {}",
                        name(p),
                        w.policies[i].name
                    )),
                    None => {
                        allowed = false;
                        why.push(format!(
                            "ingress: DENIED: {} is isolated for ingress by {} and none allows {src} on {port}/{proto}",
                            name(p),
                            names(w, &selecting)
                        ));
                    }
                }
            }
        }
    }
    (allowed, why)
}

/// Whether `outer` holds all of `inner`.
fn covers(outer: &Ipv4Net, inner: &Ipv4Net) -> bool {
    outer.prefix_len() <= inner.prefix_len() && outer.contains(&inner.network())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;

    const BASE: &str = "\
cluster: { cidr: 10.244.0.0/16 }
nodes:
  - { name: n1, underlay_ip: 172.30.0.11, pod_cidr: 10.244.1.0/24 }
  - { name: n2, underlay_ip: 172.30.0.12, pod_cidr: 10.244.2.0/24 }
namespaces:
  - { name: x, labels: { team: blue } }
  - { name: y, labels: { team: red } }
pods:
  - { name: xa, node: n1, ip: 10.244.1.2, namespace: x, labels: { app: a },
      ports: [ { name: web, protocol: TCP, port: 80 }, { name: dns, protocol: UDP, port: 53 } ] }
  - { name: xb, node: n1, ip: 10.244.1.3, namespace: x, labels: { app: b },
      ports: [ { name: web, protocol: TCP, port: 8080 } ] }
  - { name: ya, node: n2, ip: 10.244.2.2, namespace: y, labels: { app: a } }
  - { name: yb, node: n2, ip: 10.244.2.3, namespace: y, labels: { app: b },
      ports: [ { name: web, port: 81 } ] }
";

    fn cluster(policies: &str) -> Cluster {
        Cluster::from_yaml(&format!("{BASE}network_policies:\n{policies}"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(policies: &str) -> String {
        Cluster::from_yaml(&format!("{BASE}network_policies:\n{policies}"))
            .expect_err("invalid")
            .to_string()
    }

    fn pod<'c>(c: &'c Cluster, name: &str) -> &'c Pod {
        c.pods.iter().find(|p| p.name == name).unwrap()
    }

    /// The ports (proto, first, last) the table lets `peer` use.
    fn lookup(t: &Table, peer: &str) -> Vec<(Option<Proto>, u16, u16)> {
        let ip: Ipv4Addr = peer.parse().unwrap();
        t.iter()
            .filter(|(net, _)| net.contains(&ip))
            .max_by_key(|(net, _)| net.prefix_len())
            .map(|(_, a)| a.iter().map(|a| (a.proto, a.first, a.last)).collect())
            .unwrap_or_default()
    }

    fn tables(c: &Cluster, name: &str) -> (Option<Table>, Option<Table>) {
        let mut w = World::new(c.policies.iter(), c.namespaces.iter(), c.pods.iter());
        let p = pod(c, name);
        (w.table(p, Dir::Ingress), w.table(p, Dir::Egress))
    }

    #[test]
    fn policy_types_default_as_the_api_does() {
        let c = cluster(
            "  - { name: x/a, pod_selector: {} }
  - { name: x/b, pod_selector: {}, egress: [ {} ] }
  - { name: x/c, pod_selector: {}, egress: [] }
  - { name: x/d, pod_selector: {}, policy_types: [Egress] }
",
        );
        let types: Vec<(bool, bool)> = c
            .policies
            .iter()
            .map(|p| (p.ingress_type, p.egress_type))
            .collect();
        assert_eq!(
            types,
            [(true, false), (true, true), (true, false), (false, true)]
        );
    }

    #[test]
    fn default_deny_and_unselected_pods() {
        let c = cluster("  - { name: x/deny, pod_selector: { match_labels: { app: a } } }\n");
        let (ingress, egress) = tables(&c, "xa");
        let ingress = ingress.expect("isolated for ingress");
        assert!(lookup(&ingress, "10.244.1.3").is_empty());
        assert!(lookup(&ingress, "8.8.8.8").is_empty());
        assert!(egress.is_none(), "not isolated for egress");
        // Another pod of x, and the same labels in y: not selected.
        assert_eq!(tables(&c, "xb"), (None, None));
        assert_eq!(tables(&c, "ya"), (None, None));
    }

    #[test]
    fn peers_by_namespace_pod_or_both() {
        let c = cluster(
            "  - name: x/peers
    pod_selector: { match_labels: { app: a } }
    ingress:
      - from: [ { namespace_selector: { match_labels: { team: red } }, pod_selector: { match_labels: { app: b } } } ]
        ports: [ { port: 80 } ]
      - from: [ { pod_selector: { match_expressions: [ { key: app, operator: In, values: [b] } ] } } ]
        ports: [ { protocol: UDP } ]
",
        );
        let t = tables(&c, "xa").0.unwrap();
        // yb: both selectors hold.
        assert_eq!(lookup(&t, "10.244.2.3"), [(Some(Proto::Tcp), 80, 80)]);
        // ya: its namespace matches, its labels do not.
        assert!(lookup(&t, "10.244.2.2").is_empty());
        // xb: the policy's own namespace, by pod selector alone.
        assert_eq!(lookup(&t, "10.244.1.3"), [(Some(Proto::Udp), 0, u16::MAX)]);
        // The namespace's automatic name label selects too.
        let c = cluster(
            "  - name: x/by-name
    pod_selector: {}
    ingress: [ { from: [ { namespace_selector: { match_labels: { kubernetes.io/metadata.name: y } } } ] } ]
",
        );
        let t = tables(&c, "xb").0.unwrap();
        assert_eq!(lookup(&t, "10.244.2.2"), [(None, 0, 0)]);
        assert_eq!(lookup(&t, "10.244.2.3"), [(None, 0, 0)]);
        assert!(lookup(&t, "10.244.1.2").is_empty());
    }

    #[test]
    fn ip_blocks_with_excepts_and_rules_add_up() {
        let c = cluster(
            "  - name: x/blocks
    pod_selector: { match_labels: { app: a } }
    policy_types: [Egress]
    egress:
      - to: [ { ip_block: { cidr: 10.244.0.0/16, except: [ 10.244.2.0/24 ] } } ]
        ports: [ { port: 80, end_port: 90 } ]
      - to: [ { ip_block: { cidr: 10.244.2.0/25 } } ]
        ports: [ { protocol: UDP, port: 53 } ]
",
        );
        let (ingress, egress) = tables(&c, "xa");
        assert!(ingress.is_none());
        let t = egress.unwrap();
        assert_eq!(lookup(&t, "10.244.1.3"), [(Some(Proto::Tcp), 80, 90)]);
        assert!(lookup(&t, "10.244.2.200").is_empty(), "the except hole");
        assert_eq!(lookup(&t, "10.244.2.2"), [(Some(Proto::Udp), 53, 53)]);
        assert!(lookup(&t, "10.245.0.1").is_empty());
        assert_eq!(lookup(&t, "10.244.3.1"), [(Some(Proto::Tcp), 80, 90)]);
    }

    #[test]
    fn named_ports_resolve_against_the_destination_pod() {
        let c = cluster(
            "  - name: x/named
    pod_selector: {}
    ingress: [ { ports: [ { port: web }, { protocol: UDP, port: dns } ] } ]
    egress: [ { to: [ { ip_block: { cidr: 10.244.0.0/16 } } ], ports: [ { port: web } ] } ]
",
        );
        // Ingress: each selected pod's own port.
        assert_eq!(
            lookup(&tables(&c, "xa").0.unwrap(), "1.2.3.4"),
            [(Some(Proto::Tcp), 80, 80), (Some(Proto::Udp), 53, 53)]
        );
        assert_eq!(
            lookup(&tables(&c, "xb").0.unwrap(), "1.2.3.4"),
            [(Some(Proto::Tcp), 8080, 8080)]
        );
        // Egress: each destination pod's, nothing where there is none.
        let e = tables(&c, "xa").1.unwrap();
        assert_eq!(lookup(&e, "10.244.2.3"), [(Some(Proto::Tcp), 81, 81)]);
        assert_eq!(lookup(&e, "10.244.1.3"), [(Some(Proto::Tcp), 8080, 8080)]);
        assert!(lookup(&e, "10.244.2.2").is_empty(), "ya has no port web");
        assert!(lookup(&e, "10.244.3.9").is_empty(), "not a pod");
    }

    #[test]
    fn an_empty_rule_allows_everything_and_the_node_table_is_shared() {
        let c = cluster("  - { name: x/all, pod_selector: {}, ingress: [ {} ] }\n");
        let t = tables(&c, "xa").0.unwrap();
        assert_eq!(lookup(&t, "8.8.8.8"), [(None, 0, 0)]);
        assert_eq!(tables(&c, "xa"), tables(&c, "xb"));
    }

    #[test]
    fn explain_names_the_deciding_policy() {
        let c = cluster(
            "  - name: x/web
    pod_selector: { match_labels: { app: a } }
    ingress: [ { from: [ { namespace_selector: { match_labels: { team: red } } } ], ports: [ { port: web } ] } ]
  - { name: y/lock, pod_selector: {}, policy_types: [Egress] }
",
        );
        let mut w = World::new(c.policies.iter(), c.namespaces.iter(), c.pods.iter());
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let no_node = |_| None;
        // yb -> xa:80: yb's egress is locked by y/lock.
        let (ok, why) = explain(
            &mut w,
            ip("10.244.2.3"),
            ip("10.244.1.2"),
            Proto::Tcp,
            80,
            no_node,
        );
        assert!(!ok);
        assert!(
            why[0].contains("egress: DENIED") && why[0].contains("y/lock"),
            "{why:?}"
        );
        assert!(why[1].contains("allowed by x/web"), "{why:?}");
        // xb -> xa:80: xb is not in a red namespace.
        let (ok, why) = explain(
            &mut w,
            ip("10.244.1.3"),
            ip("10.244.1.2"),
            Proto::Tcp,
            80,
            no_node,
        );
        assert!(!ok);
        assert!(why[0].contains("not isolated for egress"), "{why:?}");
        assert!(
            why[1].contains("ingress: DENIED") && why[1].contains("x/web"),
            "{why:?}"
        );
        // The node's own gateway reaches xa whatever x/web says.
        let n1 = |a: Ipv4Addr| (a == ip("10.244.1.1")).then(|| "n1".to_string());
        let (ok, why) = explain(
            &mut w,
            ip("10.244.1.1"),
            ip("10.244.1.2"),
            Proto::Udp,
            9,
            n1,
        );
        assert!(ok, "{why:?}");
        assert!(why[1].contains("always reaches its pods"), "{why:?}");
    }

    #[test]
    fn invalid_policies_are_refused_with_their_paths() {
        let cases = [
            (
                "  - { name: x/s, pod_selector: {}, ingress: [ { ports: [ { protocol: SCTP } ] } ] }\n",
                "network_policies[0].ingress[0].ports[0].protocol: SCTP is not supported",
            ),
            (
                "  - { name: x/o, pod_selector: { match_expressions: [ { key: a, operator: Is, values: [b] } ] } }\n",
                "network_policies[0].pod_selector.match_expressions[0].operator",
            ),
            (
                "  - { name: x/v, pod_selector: { match_expressions: [ { key: a, operator: Exists, values: [b] } ] } }\n",
                "must be empty for Exists",
            ),
            (
                "  - { name: x/e, pod_selector: {}, egress: [ { to: [ { ip_block: { cidr: 10.0.0.0/8, except: [ 11.0.0.0/16 ] } } ] } ] }\n",
                "network_policies[0].egress[0].to[0].ip_block.except[0]: 11.0.0.0/16 must be a strict subset",
            ),
            (
                "  - { name: x/c, pod_selector: {}, ingress: [ { from: [ { ip_block: { cidr: 10.0.0.0/8 }, pod_selector: {} } ] } ] }\n",
                "may not be combined",
            ),
            (
                "  - { name: x/p, pod_selector: {}, ingress: [ { from: [ {} ] } ] }\n",
                "network_policies[0].ingress[0].from[0]: must have pod_selector",
            ),
            (
                "  - { name: x/r, pod_selector: {}, ingress: [ { ports: [ { port: 90, end_port: 80 } ] } ] }\n",
                "end_port: 80 must be at least port",
            ),
            (
                "  - { name: x/n, pod_selector: {}, ingress: [ { ports: [ { port: web, end_port: 80 } ] } ] }\n",
                "may not be used with a named port",
            ),
            (
                "  - { name: x/t, pod_selector: {}, policy_types: [Ingress, Ingress] }\n",
                "Ingress is listed twice",
            ),
            (
                "  - { name: x/d, pod_selector: {} }\n  - { name: x/d, pod_selector: {} }\n",
                "policy x/d is listed twice",
            ),
            (
                "  - { name: x/l, pod_selector: { match_labels: { -bad: x } } }\n",
                "is not a label key",
            ),
            (
                "  - { name: x/u, pod_selector: {}, unknown: 1 }\n",
                "unknown field",
            ),
        ];
        for (policy, needle) in cases {
            let p = problems(policy);
            assert!(p.contains(needle), "{policy}: {p}");
        }
    }

    /// Every feature of the format, for the conversions.
    const RICH: &str = "  - name: x/rich
    pod_selector: { match_labels: { app: a }, match_expressions: [ { key: tier, operator: NotIn, values: [b, a] } ] }
    policy_types: [Ingress, Egress]
    ingress:
      - from:
          - pod_selector: { match_labels: { app: b } }
          - namespace_selector: { match_expressions: [ { key: team, operator: Exists } ] }
          - namespace_selector: { match_labels: { team: red } }
            pod_selector: { match_expressions: [ { key: app, operator: DoesNotExist } ] }
          - ip_block: { cidr: 10.244.0.0/16, except: [ 10.244.1.0/24, 10.244.2.3/32 ] }
        ports:
          - { protocol: TCP, port: 80 }
          - { protocol: UDP, port: 81, end_port: 90 }
          - { port: web }
          - { protocol: UDP }
      - {}
    egress:
      - to: [ { ip_block: { cidr: 0.0.0.0/0 } } ]
        ports: [ { port: 53, protocol: UDP }, { port: 443, end_port: 443 } ]
  - { name: y/deny, pod_selector: {} }
  - { name: allow-all-egress, pod_selector: {}, policy_types: [Egress], egress: [ {} ] }
";

    /// A policy goes through the Control API's message and the cluster
    /// file's shape (the state file's) and comes back the same.
    #[test]
    fn policies_convert_to_the_api_and_back() {
        let c = cluster(RICH);
        assert_eq!(c.policies.len(), 3);
        for pol in &c.policies {
            let proto = pol.to_proto();
            let mut p = Vec::new();
            let back = validate_policy("policy", &RawPolicy::from_proto(&proto), &mut p);
            assert!(p.is_empty(), "{p:?}");
            assert_eq!(back.as_ref(), Some(pol));
            // Through the state file's JSON, as a list for `policy apply`.
            let json = serde_json::to_string(&[pol.to_raw()]).unwrap();
            assert_eq!(policies_from_yaml(&json).unwrap(), vec![pol.clone()]);
        }
        let proto = c.policies[0].to_proto();
        assert_eq!(
            (proto.namespace.as_str(), proto.name.as_str()),
            ("x", "rich")
        );
        assert_eq!(proto.policy_types, ["Ingress", "Egress"]);
        let ports = &proto.ingress[0].ports;
        assert_eq!(ports[1].end_port, 90);
        assert_eq!(
            ports[2].port,
            Some(cpb::network_policy_port::Port::Name("web".into()))
        );
        assert_eq!((ports[3].protocol.as_str(), &ports[3].port), ("UDP", &None));
        // The API's defaulting shows in the listing: Ingress only.
        let deny = c.policies[1].to_proto();
        assert_eq!(
            (deny.namespace.as_str(), &deny.policy_types),
            ("y", &vec!["Ingress".to_string()])
        );
        assert_eq!(c.policies[2].name, "default/allow-all-egress");
        let proto = c.policies[2].to_proto();
        assert_eq!(proto.namespace, "default");
        // An empty namespace in a request is "default".
        let mut bare = proto.clone();
        bare.namespace.clear();
        assert_eq!(
            RawPolicy::from_proto(&bare).name(),
            "default/allow-all-egress"
        );
    }

    #[test]
    fn a_policy_file_is_a_list_and_refused_whole() {
        let e = policies_from_yaml("{ name: x/a, pod_selector: {} }").unwrap_err();
        assert!(e.to_string().contains("expected a list of policies"), "{e}");
        let e = policies_from_yaml("[]").unwrap_err();
        assert!(e.to_string().contains("no policy in it"), "{e}");
        let e = policies_from_yaml(
            "- { name: x/a, pod_selector: {} }\n- { name: x/b, pod_selector: {}, ingress: [ { ports: [ { protocol: SCTP } ] } ] }\n- { name: x/c, pod_selector: {} }\n",
        )
        .unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(
            e.0[0].path,
            "network_policies[1].ingress[0].ports[0].protocol"
        );
    }
}
