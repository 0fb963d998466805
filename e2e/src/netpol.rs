//! An independent model of Kubernetes NetworkPolicy (networking.k8s.io/v1),
//! the oracle of the truth-table test (e2e/tests/netpol.rs).
//!
//! Written from the API reference, not from kxdp's control code: it reads
//! the cluster file's `namespaces`, `pods` and `network_policies` (its own
//! serde types; every other key is ignored) and answers whether a
//! connection from one pod to another is allowed. The rules it follows, all
//! the API's:
//!
//! - A policy applies to the pods of its namespace that its `pod_selector`
//!   selects (`{}`: all of them), for the types in `policy_types`. When
//!   `policy_types` is absent or empty it defaults to `[Ingress]`, plus
//!   `Egress` when the policy has at least one egress rule (an empty
//!   `egress: []` adds nothing).
//! - A pod selected by no policy of a type is not isolated for that type.
//!   Once selected, a connection passes only if some rule of some selecting
//!   policy allows it (rules are additive; no rules = deny all).
//! - A connection needs both the source pod's egress and the destination
//!   pod's ingress to allow it. Replies are part of the connection.
//! - A rule's peers (`from`/`to`): absent or empty = any peer. A
//!   `pod_selector` alone selects pods in the policy's namespace; a
//!   `namespace_selector` alone every pod of the matching namespaces; both in
//!   one peer the matching pods in the matching namespaces; an `ip_block`
//!   the addresses in `cidr` but in none of `except` (matched against pod IPs).
//! - A rule's ports: absent or empty = every port and protocol. A port entry
//!   matches its `protocol` (default TCP) and: every port when `port` is
//!   absent; `port..=end_port` for a number; for a name, the destination
//!   pod's container port of that name and protocol.
//! - Namespaces carry their labels plus `kubernetes.io/metadata.name`.
//!
//! - An end of a connection that is no pod ([`Endpoint::Address`]: an
//!   outside client, a server outside the cluster, a node's address that a
//!   SNAT left) is matched by `ip_block` peers alone, never by a selector;
//!   it has no container ports (a named port never matches it) and no
//!   policies of its own. ICMP (echo) is a protocol no port entry names: only
//!   a rule without `ports` allows it.
//! - Policies see addresses as the pods see them: the destination a pod
//!   sends to (an outside server's, before the node masquerades it), and
//!   the source a pod receives from, after any SNAT on the way
//!   ([`Model::node_port_allowed`]). The API leaves it to the implementation
//!   whether a rewrite happens before or after the policy ("it is not
//!   defined whether this happens before or after NetworkPolicy
//!   processing"); the test passes in the address its implementation
//!   rewrites to, the model takes no side.
//!
//! Self connections (a pod to its own IP) and the node's own traffic to its
//! pods are not modelled: the test expects those to pass whatever the
//! policies say (loopback never leaves the pod; the API exempts the node).
//! A connection the node only forwards (a NodePort's, even SNATed to a
//! node address) is not the node's own.

use serde::Deserialize;

use super::*;

/// Labels of a pod or a namespace.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace has, with its name as the value.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A transport protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP echo: no ports, and no protocol a rule's port entry may name.
    Icmp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Icmp => "ICMP",
        }
    }
}

/// One end of a connection, as a policy sees it.
#[derive(Clone, Copy, Debug)]
pub enum Endpoint<'a> {
    /// A pod of the cluster file.
    Pod(&'a PodDef),
    /// An address no pod has: outside the cluster, or a node's. Only
    /// `ip_block` peers match it.
    Address(Ipv4Addr),
}

impl Endpoint<'_> {
    pub fn ip(self) -> Ipv4Addr {
        match self {
            Endpoint::Pod(p) => p.ip,
            Endpoint::Address(a) => a,
        }
    }
}

/// A NodePort service's `externalTrafficPolicy`, as it reaches the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// The client's address is kept.
    Local,
    /// The node the client connected to SNATs the connection to `snat`
    /// (which of its addresses is the implementation's choice: the test
    /// passes it in).
    Cluster { snat: Ipv4Addr },
}

impl TrafficPolicy {
    /// The source a NodePort's backend sees for `client`.
    pub fn seen(self, client: Ipv4Addr) -> Ipv4Addr {
        match self {
            TrafficPolicy::Local => client,
            TrafficPolicy::Cluster { snat } => snat,
        }
    }
}

/// What the oracle reads of a cluster file.
#[derive(Debug, Default, Deserialize)]
pub struct PolicyFile {
    #[serde(default)]
    pub namespaces: Vec<NamespaceDef>,
    #[serde(default)]
    pub pods: Vec<PodDef>,
    #[serde(default)]
    pub network_policies: Vec<PolicyDef>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceDef {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

/// A pod; keys the oracle does not need (node, mac, ifname) are ignored.
#[derive(Clone, Debug, Deserialize)]
pub struct PodDef {
    pub name: String,
    pub ip: Ipv4Addr,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPort {
    pub name: String,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    pub port: u16,
}

fn default_protocol() -> String {
    "TCP".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDef {
    /// "namespace/name".
    pub name: String,
    pub pod_selector: Selector,
    #[serde(default)]
    pub policy_types: Option<Vec<String>>,
    #[serde(default)]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    #[serde(default)]
    pub from: Vec<Peer>,
    #[serde(default)]
    pub ports: Vec<PortDef>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default)]
    pub to: Vec<Peer>,
    #[serde(default)]
    pub ports: Vec<PortDef>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    #[serde(default)]
    pub pod_selector: Option<Selector>,
    #[serde(default)]
    pub namespace_selector: Option<Selector>,
    #[serde(default)]
    pub ip_block: Option<IpBlock>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: Labels,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpBlock {
    pub cidr: String,
    #[serde(default)]
    pub except: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortDef {
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port: Option<PortValue>,
    #[serde(default)]
    pub end_port: Option<u16>,
}

/// A rule's port: a number or a container port's name.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(u16),
    Name(String),
}

/// The oracle: the cluster's namespaces, pods and policies.
#[derive(Debug)]
pub struct Model {
    namespaces: BTreeMap<String, Labels>,
    pub pods: Vec<PodDef>,
    policies: Vec<PolicyDef>,
}

/// Which side of a connection a policy type governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

impl Model {
    /// Reads a cluster file's text; errors name what is wrong.
    pub fn parse(yaml: &str) -> Result<Model, String> {
        let file: PolicyFile =
            serde_yaml_ng::from_str(yaml).map_err(|e| format!("cluster file: {e}"))?;
        Model::new(file)
    }

    pub fn new(file: PolicyFile) -> Result<Model, String> {
        let mut namespaces = BTreeMap::new();
        for ns in &file.namespaces {
            let mut labels = ns.labels.clone();
            labels.insert(NAMESPACE_NAME_LABEL.into(), ns.name.clone());
            if namespaces.insert(ns.name.clone(), labels).is_some() {
                return Err(format!("namespace {} listed twice", ns.name));
            }
        }
        let implicit = file.pods.iter().map(|p| p.namespace.clone()).chain(
            file.network_policies
                .iter()
                .map(|p| policy_ns(p).to_string()),
        );
        for ns in implicit.collect::<Vec<_>>() {
            namespaces
                .entry(ns.clone())
                .or_insert_with(|| Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns)]));
        }
        for p in &file.network_policies {
            if !p.name.contains('/') {
                return Err(format!("policy {}: name is not namespace/name", p.name));
            }
            for ty in p.policy_types.iter().flatten() {
                if ty != "Ingress" && ty != "Egress" {
                    return Err(format!("policy {}: policy type {ty}", p.name));
                }
            }
            let peers = p
                .ingress
                .iter()
                .flatten()
                .flat_map(|r| r.from.iter().map(|peer| (peer, &r.ports)))
                .chain(
                    p.egress
                        .iter()
                        .flatten()
                        .flat_map(|r| r.to.iter().map(|peer| (peer, &r.ports))),
                );
            for (peer, _) in peers {
                if let Some(b) = &peer.ip_block {
                    parse_cidr(&b.cidr)?;
                    for e in &b.except {
                        parse_cidr(e)?;
                    }
                }
            }
        }
        Ok(Model {
            namespaces,
            pods: file.pods,
            policies: file.network_policies,
        })
    }

    /// The pod with address `ip`.
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodDef> {
        self.pods.iter().find(|p| p.ip == ip)
    }

    /// Whether a new connection from pod `src` to `port`/`proto` of pod
    /// `dst` passes: `src`'s egress and `dst`'s ingress both allow it.
    pub fn allowed(&self, src: &PodDef, dst: &PodDef, port: u16, proto: Proto) -> bool {
        self.connection_allowed(Endpoint::Pod(src), Endpoint::Pod(dst), port, proto)
    }

    /// Whether a new connection from `src` to `port`/`proto` of `dst`
    /// passes: the egress of `src` and the ingress of `dst`, for those
    /// that are pods (an address has no policies).
    pub fn connection_allowed(
        &self,
        src: Endpoint<'_>,
        dst: Endpoint<'_>,
        port: u16,
        proto: Proto,
    ) -> bool {
        let egress = match src {
            Endpoint::Pod(s) => self.egress_allowed(s, dst, port, proto),
            Endpoint::Address(_) => true,
        };
        let ingress = match dst {
            Endpoint::Pod(d) => self.ingress_allowed(src, d, port, proto),
            Endpoint::Address(_) => true,
        };
        egress && ingress
    }

    /// Whether an outside `client`'s new connection to a NodePort reaches
    /// `backend` on its target `port`: the backend's ingress decides (no
    /// policy of the cluster applies to the client), on the source the
    /// backend sees, which is the address after SNAT: the client's with
    /// `Local`, the SNAT address with `Cluster`. A NodePort's own port and
    /// the node's address are gone after DNAT: the policy sees the
    /// backend's pod and target port.
    pub fn node_port_allowed(
        &self,
        client: Ipv4Addr,
        etp: TrafficPolicy,
        backend: &PodDef,
        port: u16,
        proto: Proto,
    ) -> bool {
        self.ingress_allowed(Endpoint::Address(etp.seen(client)), backend, port, proto)
    }

    /// `src`'s egress policies towards `dst`.
    pub fn egress_allowed(&self, src: &PodDef, dst: Endpoint<'_>, port: u16, proto: Proto) -> bool {
        let mut isolated = false;
        for p in self.selecting(src, Direction::Egress) {
            isolated = true;
            for rule in p.egress.iter().flatten() {
                if self.peers_match(p, &rule.to, dst) && ports_match(&rule.ports, dst, port, proto)
                {
                    return true;
                }
            }
        }
        !isolated
    }

    /// `dst`'s ingress policies for a connection from `src`.
    pub fn ingress_allowed(
        &self,
        src: Endpoint<'_>,
        dst: &PodDef,
        port: u16,
        proto: Proto,
    ) -> bool {
        let mut isolated = false;
        for p in self.selecting(dst, Direction::Ingress) {
            isolated = true;
            for rule in p.ingress.iter().flatten() {
                if self.peers_match(p, &rule.from, src)
                    && ports_match(&rule.ports, Endpoint::Pod(dst), port, proto)
                {
                    return true;
                }
            }
        }
        !isolated
    }

    /// The policies that select `pod` for `dir`.
    fn selecting<'a>(
        &'a self,
        pod: &'a PodDef,
        dir: Direction,
    ) -> impl Iterator<Item = &'a PolicyDef> + 'a {
        self.policies.iter().filter(move |p| {
            policy_ns(p) == pod.namespace
                && has_type(p, dir)
                && selector_matches(&p.pod_selector, &pod.labels)
        })
    }

    /// Whether `peers` (of policy `p`) name `end`: empty = anyone.
    fn peers_match(&self, p: &PolicyDef, peers: &[Peer], end: Endpoint<'_>) -> bool {
        peers.is_empty() || peers.iter().any(|peer| self.peer_matches(p, peer, end))
    }

    fn peer_matches(&self, p: &PolicyDef, peer: &Peer, end: Endpoint<'_>) -> bool {
        if let Some(b) = &peer.ip_block {
            let ip = end.ip();
            let inside = |c: &str| parse_cidr(c).is_ok_and(|(net, len)| in_cidr(ip, net, len));
            return inside(&b.cidr) && !b.except.iter().any(|e| inside(e));
        }
        // Selectors select pods; an address is none.
        let Endpoint::Pod(pod) = end else {
            return false;
        };
        let ns_ok = match &peer.namespace_selector {
            Some(sel) => self
                .namespaces
                .get(&pod.namespace)
                .is_some_and(|labels| selector_matches(sel, labels)),
            // A pod selector alone: the policy's own namespace.
            None => pod.namespace == policy_ns(p),
        };
        let pod_ok = match &peer.pod_selector {
            Some(sel) => selector_matches(sel, &pod.labels),
            None => true,
        };
        // A peer with neither selector nor block is invalid in the API; it
        // matches nothing here.
        let some_selector = peer.namespace_selector.is_some() || peer.pod_selector.is_some();
        some_selector && ns_ok && pod_ok
    }
}

fn policy_ns(p: &PolicyDef) -> &str {
    p.name.split_once('/').map_or("default", |(ns, _)| ns)
}

/// The API's defaulting of `policyTypes`.
fn has_type(p: &PolicyDef, dir: Direction) -> bool {
    match p.policy_types.as_deref() {
        Some(types) if !types.is_empty() => types.iter().any(|t| match dir {
            Direction::Ingress => t == "Ingress",
            Direction::Egress => t == "Egress",
        }),
        _ => match dir {
            Direction::Ingress => true,
            Direction::Egress => p.egress.as_ref().is_some_and(|e| !e.is_empty()),
        },
    }
}

/// A label selector: every `match_labels` pair and every requirement.
pub fn selector_matches(sel: &Selector, labels: &Labels) -> bool {
    sel.match_labels
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().all(|r| {
            let value = labels.get(&r.key);
            match r.operator.as_str() {
                "In" => value.is_some_and(|v| r.values.contains(v)),
                "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                // Invalid in the API; selects nothing.
                _ => false,
            }
        })
}

/// Whether a rule's `ports` let `port`/`proto` of `dst` through. A port
/// entry names TCP, UDP or SCTP, never ICMP; a name resolves against a
/// destination pod's container ports (an address has none).
fn ports_match(ports: &[PortDef], dst: Endpoint<'_>, port: u16, proto: Proto) -> bool {
    ports.is_empty()
        || ports.iter().any(|p| {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            if protocol != proto.as_str() {
                return false;
            }
            match &p.port {
                None => true,
                Some(PortValue::Number(n)) => (*n..=p.end_port.unwrap_or(*n)).contains(&port),
                Some(PortValue::Name(name)) => match dst {
                    Endpoint::Pod(d) => d
                        .ports
                        .iter()
                        .any(|c| &c.name == name && c.protocol == protocol && c.port == port),
                    Endpoint::Address(_) => false,
                },
            }
        })
}

/// "a.b.c.d/len".
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s}: not a CIDR"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("{s}: {e}"))?;
    let len: u8 = len.parse().map_err(|e| format!("{s}: {e}"))?;
    if len > 32 {
        return Err(format!("{s}: prefix length above 32"));
    }
    Ok((ip, len))
}

fn in_cidr(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream suite's world (test/e2e/network/netpol): namespaces x, y,
    /// z labelled `ns: <name>`, pods a, b, c labelled `pod: <name>` in each,
    /// serving TCP and UDP on 80 and 81 (container ports named
    /// serve-<port>-<tcp|udp>).
    fn world(policies: &str) -> Model {
        let mut yaml = String::from("namespaces:\n");
        for ns in ["x", "y", "z"] {
            yaml += &format!("  - {{ name: {ns}, labels: {{ ns: {ns} }} }}\n");
        }
        yaml += "pods:\n";
        for (i, ns) in ["x", "y", "z"].iter().enumerate() {
            for (j, pod) in ["a", "b", "c"].iter().enumerate() {
                yaml += &format!(
                    "  - name: {pod}\n    namespace: {ns}\n    ip: 10.244.{}.{}\n    \
                     labels: {{ pod: {pod} }}\n    ports:\n",
                    i + 1,
                    j + 2
                );
                for port in [80, 81] {
                    for proto in ["tcp", "udp"] {
                        yaml += &format!(
                            "      - {{ name: serve-{port}-{proto}, protocol: {}, port: {port} }}\n",
                            proto.to_uppercase()
                        );
                    }
                }
            }
        }
        yaml += "network_policies:\n";
        yaml += policies;
        Model::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
    }

    fn pod<'a>(m: &'a Model, id: &str) -> &'a PodDef {
        let (ns, name) = id.split_once('/').unwrap();
        m.pods
            .iter()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap()
    }

    const PODS: [&str; 9] = [
        "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
    ];

    /// The pairs (src, dst) allowed on `port`/`proto`, self pairs left out.
    fn allowed_pairs(m: &Model, port: u16, proto: Proto) -> Vec<String> {
        let mut out = Vec::new();
        for s in PODS {
            for d in PODS {
                if s != d && m.allowed(pod(m, s), pod(m, d), port, proto) {
                    out.push(format!("{s}>{d}"));
                }
            }
        }
        out
    }

    /// Every pair except those whose destination (or source, for egress)
    /// satisfies `denied`.
    fn all_but(denied: impl Fn(&str, &str) -> bool) -> Vec<String> {
        let mut out = Vec::new();
        for s in PODS {
            for d in PODS {
                if s != d && !denied(s, d) {
                    out.push(format!("{s}>{d}"));
                }
            }
        }
        out
    }

    #[test]
    fn no_policy_allows_everything() {
        let m = world("  []\n");
        assert_eq!(allowed_pairs(&m, 80, Proto::Tcp).len(), 72);
        assert_eq!(allowed_pairs(&m, 81, Proto::Udp).len(), 72);
    }

    /// "should support a 'default-deny-ingress' policy".
    #[test]
    fn default_deny_ingress() {
        let m = world("  - { name: x/deny, pod_selector: {} }\n");
        let want = all_but(|_, d| d.starts_with("x/"));
        assert_eq!(allowed_pairs(&m, 80, Proto::Tcp), want);
        assert_eq!(allowed_pairs(&m, 81, Proto::Udp), want);
    }

    /// "should support a 'default-deny-all' policy" for egress only.
    #[test]
    fn default_deny_egress() {
        let m = world("  - { name: x/deny, pod_selector: {}, policy_types: [Egress] }\n");
        assert_eq!(
            allowed_pairs(&m, 80, Proto::Tcp),
            all_but(|s, _| s.starts_with("x/"))
        );
    }

    /// "should enforce policy to allow traffic from pods within server
    /// namespace based on PodSelector": a pod selector alone stays in the
    /// policy's namespace.
    #[test]
    fn pod_selector_alone_is_the_policy_namespace() {
        let m = world(
            "  - name: x/allow-b
    pod_selector: { match_labels: { pod: a } }
    ingress: [ { from: [ { pod_selector: { match_labels: { pod: b } } } ] } ]
",
        );
        let got = allowed_pairs(&m, 80, Proto::Tcp);
        assert!(got.contains(&"x/b>x/a".to_string()));
        assert!(!got.contains(&"y/b>x/a".to_string()));
        assert!(!got.contains(&"x/c>x/a".to_string()));
        assert_eq!(got.len(), 72 - 7, "only x/a's ingress is restricted");
    }

    /// "should enforce policy based on PodSelector and NamespaceSelector"
    /// (one peer: AND) against "PodSelector or NamespaceSelector" (two
    /// peers: OR).
    #[test]
    fn both_selectors_in_one_peer_and_in_two() {
        let and = world(
            "  - name: x/and
    pod_selector: { match_labels: { pod: a } }
    ingress:
      - from:
          - namespace_selector: { match_expressions: [ { key: ns, operator: NotIn, values: [x] } ] }
            pod_selector: { match_labels: { pod: b } }
",
        );
        let ingress_to_xa = |m: &Model| {
            PODS.iter()
                .filter(|s| **s != "x/a" && m.allowed(pod(m, s), pod(m, "x/a"), 80, Proto::Tcp))
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(ingress_to_xa(&and), ["y/b", "z/b"]);
        let or = world(
            "  - name: x/or
    pod_selector: { match_labels: { pod: a } }
    ingress:
      - from:
          - namespace_selector: { match_expressions: [ { key: ns, operator: NotIn, values: [x] } ] }
          - pod_selector: { match_labels: { pod: b } }
",
        );
        assert_eq!(
            ingress_to_xa(&or),
            ["x/b", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"]
        );
    }

    /// "should enforce policy to allow traffic only from a different
    /// namespace, based on NamespaceSelector", with the automatic name label.
    #[test]
    fn namespace_selector_and_the_name_label() {
        let m = world(
            "  - name: x/from-y
    pod_selector: {}
    ingress: [ { from: [ { namespace_selector: { match_labels: { kubernetes.io/metadata.name: y } } } ] } ]
",
        );
        let got = allowed_pairs(&m, 81, Proto::Udp);
        assert_eq!(
            got,
            all_but(|s, d| d.starts_with("x/") && !s.starts_with("y/"))
        );
    }

    /// "should enforce except clause while egress access to server in CIDR
    /// block": the except carves a hole, a /32 except one pod only.
    #[test]
    fn ip_block_with_except() {
        let m = world(
            "  - name: x/cidr
    pod_selector: { match_labels: { pod: a } }
    policy_types: [Egress]
    egress:
      - to: [ { ip_block: { cidr: 10.244.2.0/24, except: [ 10.244.2.3/32 ] } } ]
",
        );
        let xa = pod(&m, "x/a");
        let to = |d: &str| m.allowed(xa, pod(&m, d), 80, Proto::Tcp);
        assert!(to("y/a") && to("y/c"));
        assert!(!to("y/b"), "10.244.2.3 is excepted");
        assert!(!to("x/b") && !to("z/a"), "outside the block");
        // Other pods of x are not selected.
        assert!(m.allowed(pod(&m, "x/b"), pod(&m, "z/a"), 80, Proto::Tcp));
    }

    /// "should allow ingress access on one named port": resolved per
    /// destination pod and protocol.
    #[test]
    fn named_ports_resolve_against_the_destination() {
        let m = world(
            "  - name: x/named
    pod_selector: {}
    ingress: [ { ports: [ { port: serve-81-tcp } ] } ]
",
        );
        let (yb, xa) = (pod(&m, "y/b"), pod(&m, "x/a"));
        assert!(m.allowed(yb, xa, 81, Proto::Tcp));
        assert!(!m.allowed(yb, xa, 80, Proto::Tcp));
        assert!(
            !m.allowed(yb, xa, 81, Proto::Udp),
            "the name is TCP's, and the rule's protocol defaults to TCP"
        );
        // A UDP rule naming a TCP container port matches nothing.
        let m = world(
            "  - name: x/named
    pod_selector: {}
    ingress: [ { ports: [ { protocol: UDP, port: serve-81-tcp } ] } ]
",
        );
        assert!(allowed_pairs(&m, 81, Proto::Udp)
            .iter()
            .all(|p| !p.ends_with(">x/a")));
    }

    /// endPort ranges and protocol-only ports ("should enforce ingress policy
    /// allowing any port traffic to a server on a specific protocol").
    #[test]
    fn port_ranges_and_protocol_only() {
        let m = world(
            "  - name: y/ports
    pod_selector: {}
    ingress: [ { ports: [ { port: 79, end_port: 80 }, { protocol: UDP } ] } ]
",
        );
        let (xa, yc) = (pod(&m, "x/a"), pod(&m, "y/c"));
        assert!(m.allowed(xa, yc, 80, Proto::Tcp));
        assert!(!m.allowed(xa, yc, 81, Proto::Tcp));
        assert!(m.allowed(xa, yc, 81, Proto::Udp) && m.allowed(xa, yc, 80, Proto::Udp));
    }

    /// An egress section without policy_types isolates ingress too (the
    /// defaulting adds Ingress always); `egress: []` adds no Egress.
    #[test]
    fn policy_types_defaulting() {
        let m = world(
            "  - name: x/egress-only-rules
    pod_selector: { match_labels: { pod: a } }
    egress: [ { to: [ { namespace_selector: { match_labels: { ns: y } } } ] } ]
",
        );
        let (xa, xb, ya) = (pod(&m, "x/a"), pod(&m, "x/b"), pod(&m, "y/a"));
        assert!(!m.allowed(xb, xa, 80, Proto::Tcp), "ingress isolated");
        assert!(m.allowed(xa, ya, 80, Proto::Tcp));
        assert!(!m.allowed(xa, xb, 80, Proto::Tcp), "egress isolated");
        let m = world(
            "  - name: x/empty-egress
    pod_selector: { match_labels: { pod: a } }
    ingress: [ {} ]
    egress: []
",
        );
        let (xa, xb) = (pod(&m, "x/a"), pod(&m, "x/b"));
        assert!(
            m.allowed(xa, xb, 80, Proto::Tcp),
            "egress: [] isolates nothing"
        );
        assert!(
            m.allowed(xb, xa, 80, Proto::Tcp),
            "ingress: [{{}}] allows all"
        );
        // Explicit types win over the rules present.
        let m = world(
            "  - name: x/egress-type
    pod_selector: {}
    policy_types: [Egress]
    ingress: [ { from: [ { pod_selector: { match_labels: { pod: nobody } } } ] } ]
    egress: [ {} ]
",
        );
        assert_eq!(allowed_pairs(&m, 80, Proto::Tcp).len(), 72);
    }

    /// "should support denying of egress traffic on the client side (even if
    /// the server explicitly allows this traffic)", and rules being additive
    /// across policies.
    #[test]
    fn both_ends_must_allow_and_rules_add_up() {
        let m = world(
            "  - { name: x/deny-egress, pod_selector: {}, policy_types: [Egress] }
  - name: y/allow-x
    pod_selector: {}
    ingress: [ { from: [ { namespace_selector: { match_labels: { ns: x } } } ] } ]
  - name: y/allow-z-a
    pod_selector: { match_labels: { pod: a } }
    ingress: [ { from: [ { namespace_selector: { match_labels: { ns: z } } } ] } ]
",
        );
        let p = |id| pod(&m, id);
        assert!(!m.allowed(p("x/a"), p("y/a"), 80, Proto::Tcp), "x's egress");
        assert!(
            m.allowed(p("z/b"), p("y/a"), 80, Proto::Tcp),
            "second policy"
        );
        assert!(!m.allowed(p("z/b"), p("y/b"), 80, Proto::Tcp));
        assert!(!m.allowed(p("y/c"), p("y/b"), 80, Proto::Tcp));
    }

    #[test]
    fn selector_operators() {
        let labels = Labels::from([("a".to_string(), "1".to_string())]);
        let sel = |op: &str, values: &[&str]| Selector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: "a".into(),
                operator: op.into(),
                values: values.iter().map(|s| s.to_string()).collect(),
            }],
        };
        assert!(selector_matches(&sel("In", &["1", "2"]), &labels));
        assert!(!selector_matches(&sel("In", &["2"]), &labels));
        assert!(selector_matches(&sel("NotIn", &["2"]), &labels));
        assert!(selector_matches(&sel("NotIn", &["2"]), &Labels::new()));
        assert!(selector_matches(&sel("Exists", &[]), &labels));
        assert!(!selector_matches(&sel("DoesNotExist", &[]), &labels));
        assert!(selector_matches(&Selector::default(), &Labels::new()));
    }

    /// config/policy-example.yaml says what it allows in its comments; the
    /// oracle reads it the same way.
    #[test]
    fn the_example_cluster_file_means_what_it_says() {
        let path = repo_root().join("config/policy-example.yaml");
        let text = std::fs::read_to_string(&path).expect("config/policy-example.yaml");
        let m = Model::parse(&text).unwrap();
        let at = |ip: [u8; 4]| m.pod_by_ip(Ipv4Addr::from(ip)).unwrap();
        let (other, db, frontend, far) = (
            at([10, 244, 1, 2]),
            at([10, 244, 1, 3]),
            at([10, 244, 2, 2]),
            at([10, 244, 2, 3]),
        );
        assert!(m.allowed(frontend, db, 5432, Proto::Tcp));
        assert!(!m.allowed(frontend, db, 5433, Proto::Tcp));
        assert!(!m.allowed(frontend, db, 5432, Proto::Udp));
        assert!(!m.allowed(other, db, 5432, Proto::Tcp), "not a frontend");
        assert!(!m.allowed(db, far, 80, Proto::Tcp), "the db opens nothing");
        assert!(m.allowed(other, far, 80, Proto::Tcp) && m.allowed(far, frontend, 80, Proto::Udp));
    }

    const CLIENT: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 100);
    const SNAT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
    const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

    /// An address that no pod has is matched by ip_block peers only: a
    /// rule allowing every pod of every namespace does not allow it.
    #[test]
    fn an_address_is_matched_by_ip_blocks_alone() {
        let m = world(
            "  - name: x/from-all-pods
    pod_selector: {}
    ingress: [ { from: [ { namespace_selector: {} } ] } ]
",
        );
        let xa = pod(&m, "x/a");
        let from = |ip| m.ingress_allowed(Endpoint::Address(ip), xa, 80, Proto::Tcp);
        assert!(m.allowed(pod(&m, "z/c"), xa, 80, Proto::Tcp));
        assert!(!from(CLIENT) && !from(SNAT));
        let m = world(
            "  - name: x/from-outside
    pod_selector: {}
    ingress: [ { from: [ { ip_block: { cidr: 172.30.0.0/24, except: [ 172.30.0.1/32 ] } } ] } ]
",
        );
        let xa = pod(&m, "x/a");
        let from = |ip| m.ingress_allowed(Endpoint::Address(ip), xa, 80, Proto::Tcp);
        assert!(from(CLIENT));
        assert!(!from(Ipv4Addr::new(172, 30, 0, 1)), "excepted");
        assert!(!from(SNAT), "outside the block");
        assert!(!m.allowed(pod(&m, "y/a"), xa, 80, Proto::Tcp), "pods too");
        // Not isolated: any address.
        assert!(m.ingress_allowed(Endpoint::Address(SNAT), pod(&m, "y/a"), 80, Proto::Tcp));
    }

    /// A NodePort's backend sees the address after SNAT: the client's with
    /// eTP Local, the SNAT address with eTP Cluster; its ingress decides
    /// on that, and on the target port.
    #[test]
    fn a_node_port_backend_sees_the_address_after_snat() {
        let m = world(
            "  - name: x/from-client
    pod_selector: { match_labels: { pod: a } }
    ingress:
      - from: [ { ip_block: { cidr: 172.30.0.100/32 } } ]
        ports: [ { protocol: TCP, port: 80 } ]
  - name: x/from-snat
    pod_selector: { match_labels: { pod: b } }
    ingress: [ { from: [ { ip_block: { cidr: 10.244.1.1/32 } } ] } ]
",
        );
        let (xa, xb, ya) = (pod(&m, "x/a"), pod(&m, "x/b"), pod(&m, "y/a"));
        let local = TrafficPolicy::Local;
        let cluster = TrafficPolicy::Cluster { snat: SNAT };
        let other = TrafficPolicy::Cluster {
            snat: Ipv4Addr::new(10, 244, 2, 1),
        };
        let np = |etp, b, port, proto| m.node_port_allowed(CLIENT, etp, b, port, proto);
        assert!(np(local, xa, 80, Proto::Tcp));
        assert!(!np(local, xa, 81, Proto::Tcp), "the target port");
        assert!(!np(local, xa, 80, Proto::Udp));
        assert!(!np(cluster, xa, 80, Proto::Tcp), "SNATed: not the client");
        assert!(!np(local, xb, 80, Proto::Tcp));
        assert!(np(cluster, xb, 80, Proto::Tcp) && np(cluster, xb, 81, Proto::Udp));
        assert!(!np(other, xb, 80, Proto::Tcp), "another node's address");
        for etp in [local, cluster, other] {
            assert!(np(etp, ya, 81, Proto::Udp), "y/a is not isolated");
        }
    }

    /// Egress to an outside server is decided on its own address (before
    /// the node masquerades it); a named port never matches an address.
    #[test]
    fn egress_to_an_address_before_masquerade() {
        let m = world(
            "  - name: y/to-outside
    pod_selector: {}
    policy_types: [Egress]
    egress:
      - to: [ { ip_block: { cidr: 203.0.113.0/24 } } ]
        ports: [ { protocol: TCP, port: 80 }, { protocol: UDP, port: serve-81-udp } ]
  - name: z/not-outside
    pod_selector: {}
    policy_types: [Egress]
    egress: [ { to: [ { ip_block: { cidr: 0.0.0.0/0, except: [ 203.0.113.0/24 ] } } ] } ]
",
        );
        let out = Endpoint::Address(OUTSIDE);
        let (ya, za, xa) = (pod(&m, "y/a"), pod(&m, "z/a"), pod(&m, "x/a"));
        assert!(m.connection_allowed(Endpoint::Pod(ya), out, 80, Proto::Tcp));
        assert!(!m.connection_allowed(Endpoint::Pod(ya), out, 81, Proto::Udp));
        assert!(
            !m.connection_allowed(Endpoint::Pod(ya), Endpoint::Pod(xa), 81, Proto::Udp),
            "y reaches the outside only"
        );
        assert!(!m.connection_allowed(Endpoint::Pod(za), out, 80, Proto::Tcp));
        assert!(m.allowed(za, xa, 80, Proto::Tcp) && m.allowed(za, ya, 81, Proto::Udp));
        assert!(m.connection_allowed(Endpoint::Pod(xa), out, 81, Proto::Udp));
        // From outside to a pod: the pod's ingress alone.
        assert!(m.connection_allowed(out, Endpoint::Pod(za), 80, Proto::Tcp));
    }

    /// ICMP has no ports: a rule with port entries never allows it, a rule
    /// without them does (for its peers).
    #[test]
    fn icmp_needs_a_rule_without_ports() {
        let m = world(
            "  - name: x/ports-only
    pod_selector: { match_labels: { pod: a } }
    ingress: [ { ports: [ { protocol: TCP }, { protocol: UDP } ] } ]
  - name: x/outside-any
    pod_selector: { match_labels: { pod: b } }
    ingress: [ { from: [ { ip_block: { cidr: 172.30.0.0/24 } } ] } ]
  - { name: x/deny, pod_selector: { match_labels: { pod: c } } }
",
        );
        let ping = |id: &str| {
            m.connection_allowed(
                Endpoint::Address(CLIENT),
                Endpoint::Pod(pod(&m, id)),
                0,
                Proto::Icmp,
            )
        };
        assert!(!ping("x/a"), "every TCP and UDP port is not ICMP");
        assert!(ping("x/b"), "a rule without ports");
        assert!(!ping("x/c"), "default deny");
        assert!(ping("y/a"), "not isolated");
        assert!(!m.allowed(pod(&m, "y/a"), pod(&m, "x/b"), 0, Proto::Icmp));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Model::parse("network_policies: [ { name: p, pod_selector: {} } ]").is_err());
        assert!(Model::parse(
            "network_policies: [ { name: x/p, pod_selector: {}, policy_types: [Sideways] } ]"
        )
        .is_err());
        assert!(Model::parse(
            "network_policies: [ { name: x/p, pod_selector: { matchLabels: {} } } ]"
        )
        .is_err());
    }
}
