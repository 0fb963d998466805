//! Pods and services registered at run time through the Control API
//! (`AddPod`, the CNI plugin's call; `UpsertService`), kept beside the
//! cluster file's.
//!
//! # The rule between the file and run-time pods
//!
//! - Run-time pods live in their own map, keyed by (node, name). An
//!   `ApplyCluster` replaces the file's pods only: run-time pods survive it.
//! - A run-time pod is validated exactly like a file pod against everything
//!   else (file pods and the other run-time pods): its node exists and is a
//!   kxdp node, its IP is a host address of the node's pod CIDR (not the
//!   network, broadcast or gateway address) and unique cluster-wide, its name
//!   and veth are unique on the node, its MAC is unicast.
//! - An `ApplyCluster` whose file would make a surviving run-time pod invalid
//!   (its IP now outside the node's new pod CIDR, or taken by a file pod, ...)
//!   is refused as a whole, naming the run-time pod (`runtime_pods[n1/x].ip`):
//!   delete the pod first. Run-time pods of a node that the new file removes,
//!   or turns into a kernel node, go with their node (logged).
//! - A run-time pod cannot shadow a file pod: `DeletePod` of a file pod is
//!   refused (FAILED_PRECONDITION), edit the file instead.
//! - Services follow the same rule: run-time services (`UpsertService`)
//!   survive an apply; one the new file would collide with (same name,
//!   ClusterIP or NodePort, an endpoint outside every pod CIDR...) makes the
//!   apply fail naming it (`runtime_services[default/web]...`); a service the
//!   file defines cannot be upserted or deleted through the API.
//! - Network policies (`UpsertNetworkPolicy`) and namespace labels
//!   (`UpsertNamespace`) too: validated as the file's are, kept by
//!   "namespace/name" (by name), surviving an apply; a policy or namespace
//!   the file lists cannot be upserted or deleted through the API, and a
//!   file that lists a run-time one's name is refused naming it
//!   (`runtime_network_policies[x/deny].name`, `runtime_namespaces[x].name`).
//!   Policies compile over the file's and the run-time ones together, and
//!   MAX_POLICIES / MAX_NAMESPACES hold for both together.

use std::collections::BTreeMap;

use kxdp_proto::control::{self as cpb, AddPodRequest};

use kxdp_proto::dataplane as pb;

use crate::cluster::{Cluster, Pod};
use crate::conventions::{self, Mac};
use crate::policy;
use crate::service::{self, RawService, Service, Taken};
use crate::validate::{check_ifname, check_name, parse_ip, parse_unicast_mac, Problem, Problems};

/// (node, name): a pod's identity.
pub type PodKey = (String, String);

/// Everything registered at run time, beside the cluster file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Runtime {
    pub pods: BTreeMap<PodKey, Pod>,
    /// By name.
    pub services: BTreeMap<String, Service>,
    /// By "namespace/name".
    pub policies: BTreeMap<String, policy::NetworkPolicy>,
    /// Namespace labels, by name.
    pub namespaces: BTreeMap<String, policy::Namespace>,
}

/// Run-time objects as written (a state file's, or the current ones for a
/// new cluster file), before [`Runtime::fit`] checks them.
#[derive(Clone, Debug, Default)]
pub struct Written {
    pub pods: Vec<AddPodRequest>,
    pub services: Vec<RawService>,
    pub policies: Vec<policy::RawPolicy>,
    pub namespaces: Vec<policy::RawNamespace>,
}

/// The longest pod name the dataplane takes.
pub const MAX_POD_NAME: usize = 253;

impl Runtime {
    /// Every pod, the file's first (in file order), then the run-time ones
    /// (by node, then name).
    pub fn all_pods<'a>(&'a self, cluster: &'a Cluster) -> impl Iterator<Item = &'a Pod> + 'a {
        cluster.pods.iter().chain(self.pods.values())
    }

    /// The pods on `node`, file pods first.
    pub fn pods_on<'a>(
        &'a self,
        cluster: &'a Cluster,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Pod> + 'a {
        self.all_pods(cluster).filter(move |p| p.node == node)
    }

    /// Every service, the file's first (in file order), then the run-time
    /// ones (by name).
    pub fn all_services<'a>(
        &'a self,
        cluster: &'a Cluster,
    ) -> impl Iterator<Item = &'a Service> + 'a {
        cluster.services.iter().chain(self.services.values())
    }

    /// Every network policy, the file's first, then the run-time ones (by
    /// name).
    pub fn all_policies<'a>(
        &'a self,
        cluster: &'a Cluster,
    ) -> impl Iterator<Item = &'a policy::NetworkPolicy> + 'a {
        cluster.policies.iter().chain(self.policies.values())
    }

    /// Every namespace with labels, the file's first, then the run-time ones.
    pub fn all_namespaces<'a>(
        &'a self,
        cluster: &'a Cluster,
    ) -> impl Iterator<Item = &'a policy::Namespace> + 'a {
        cluster.namespaces.iter().chain(self.namespaces.values())
    }

    /// The run-time objects as written, for a state file or a refit.
    pub fn written(&self) -> Result<Written, Problems> {
        Ok(Written {
            pods: self.pods.values().map(request_of).collect(),
            services: self
                .services
                .iter()
                .map(|(name, s)| {
                    RawService::from_proto(&format!("runtime_services[{name}]"), &s.to_proto())
                })
                .collect::<Result<Vec<_>, _>>()?,
            policies: self.policies.values().map(|p| p.to_raw()).collect(),
            namespaces: self.namespaces.values().map(|n| n.to_raw()).collect(),
        })
    }

    /// The run-time objects that still fit `cluster` (a new cluster file):
    /// pods of nodes it no longer has as kxdp nodes are left out and
    /// returned as the second value; any other misfit is a problem naming
    /// the object.
    pub fn refit(&self, cluster: &Cluster) -> Result<(Runtime, Vec<PodKey>), Problems> {
        Runtime::fit(cluster, self.written()?)
    }

    /// Run-time objects as written (a state file's), checked against
    /// `cluster` as [`Runtime::refit`] checks them.
    pub fn fit(cluster: &Cluster, written: Written) -> Result<(Runtime, Vec<PodKey>), Problems> {
        let Written {
            pods,
            services,
            policies,
            namespaces,
        } = written;
        let mut kept = Runtime::default();
        let mut dropped = Vec::new();
        let mut problems = Vec::new();
        for req in pods {
            let key = (req.node.clone(), req.name.clone());
            if !cluster.node(&req.node).is_some_and(|n| n.is_kxdp()) {
                dropped.push(key);
                continue;
            }
            match check_pod(cluster, &kept, &req) {
                Ok(pod) => {
                    kept.pods.insert(key, pod);
                }
                Err(p) => problems.extend(p.0.into_iter().map(|p| {
                    Problem::new(
                        format!("runtime_pods[{}/{}].{}", req.node, req.name, p.path),
                        format!(
                            "{} (a pod registered at run time: delete it first)",
                            p.message
                        ),
                    )
                })),
            }
        }
        let ctx = cluster.service_context();
        let mut taken = file_services_taken(cluster);
        for raw in services {
            let path = format!("runtime_services[{}]", raw.name);
            let mut p = Vec::new();
            if let Some(s) = service::check(&path, &raw, &ctx, &mut taken, &mut p) {
                kept.services.insert(s.name.clone(), s);
            }
            problems.extend(p.into_iter().map(|p| {
                Problem::new(
                    p.path,
                    format!(
                        "{} (a service registered at run time: delete it first)",
                        p.message
                    ),
                )
            }));
        }
        service::check_totals(
            "runtime_services",
            cluster
                .services
                .iter()
                .chain(kept.services.values())
                .map(service::size),
            &mut problems,
        );
        let first = |p: Problem| {
            Problem::new(
                p.path,
                format!("{} (registered at run time: delete it first)", p.message),
            )
        };
        for raw in policies {
            let mut p = Vec::new();
            let at = format!("runtime_network_policies[{}]", raw.name());
            if let Some(pol) = policy::validate_policy(&at, &raw, &mut p) {
                if let Some(i) = cluster.policies.iter().position(|f| f.name == pol.name) {
                    p.push(Problem::new(
                        format!("{at}.name"),
                        format!("the cluster file's network_policies[{i}] has this name"),
                    ));
                } else {
                    kept.policies.insert(pol.name.clone(), pol);
                }
            }
            problems.extend(p.into_iter().map(first));
        }
        for raw in namespaces {
            let mut p = Vec::new();
            let at = format!("runtime_namespaces[{}]", raw.name);
            if let Some(ns) = policy::validate_namespace(&at, &raw, &mut p) {
                if let Some(i) = cluster.namespaces.iter().position(|f| f.name == ns.name) {
                    p.push(Problem::new(
                        format!("{at}.name"),
                        format!("the cluster file's namespaces[{i}] has this name"),
                    ));
                } else {
                    kept.namespaces.insert(ns.name.clone(), ns);
                }
            }
            problems.extend(p.into_iter().map(first));
        }
        check_policy_totals(
            "runtime_network_policies",
            cluster.policies.len() + kept.policies.len(),
            cluster.namespaces.len() + kept.namespaces.len(),
            &mut problems,
        );
        Problems::result(problems).map(|()| (kept, dropped))
    }
}

/// MAX_POLICIES and MAX_NAMESPACES over the file's and the run-time ones.
fn check_policy_totals(path: &str, policies: usize, namespaces: usize, p: &mut Vec<Problem>) {
    if policies > policy::MAX_POLICIES {
        p.push(Problem::new(
            path,
            format!(
                "{policies} network policies (the cluster file's and run-time ones), over the limit of {}",
                policy::MAX_POLICIES
            ),
        ));
    }
    if namespaces > policy::MAX_NAMESPACES {
        p.push(Problem::new(
            path,
            format!(
                "{namespaces} namespaces with labels (the cluster file's and run-time ones), over the limit of {}",
                policy::MAX_NAMESPACES
            ),
        ));
    }
}

/// Validates an `UpsertNetworkPolicy` request's policies as the cluster
/// file's are validated; problems are at `policies[i].<field>`. A policy
/// the cluster file defines cannot be replaced at run time; each name once.
pub fn check_policies(
    cluster: &Cluster,
    runtime: &Runtime,
    policies: &[cpb::NetworkPolicy],
) -> Result<Vec<policy::NetworkPolicy>, Problems> {
    let mut p = Vec::new();
    if policies.is_empty() {
        p.push(Problem::new("policies", "must not be empty"));
    }
    let mut out: Vec<policy::NetworkPolicy> = Vec::new();
    for (i, proto) in policies.iter().enumerate() {
        let at = format!("policies[{i}]");
        if proto.namespace.contains('/') {
            p.push(Problem::new(
                format!("{at}.namespace"),
                format!("{:?} is not a DNS label", proto.namespace),
            ));
            continue;
        }
        let raw = policy::RawPolicy::from_proto(proto);
        let before = p.len();
        let Some(pol) = policy::validate_policy(&at, &raw, &mut p).filter(|_| p.len() == before)
        else {
            continue;
        };
        if let Some(f) = cluster.policies.iter().position(|f| f.name == pol.name) {
            p.push(Problem::new(
                format!("{at}.name"),
                format!(
                    "{} is the cluster file's network_policies[{f}]: change it there and apply the file",
                    pol.name
                ),
            ));
        } else if out.iter().any(|o| o.name == pol.name) {
            p.push(Problem::new(
                format!("{at}.name"),
                format!("policy {} is listed twice", pol.name),
            ));
        } else {
            out.push(pol);
        }
    }
    let others = runtime
        .policies
        .keys()
        .filter(|k| !out.iter().any(|o| o.name == **k))
        .count();
    check_policy_totals(
        "policies",
        cluster.policies.len() + others + out.len(),
        0,
        &mut p,
    );
    Problems::result(p).map(|()| out)
}

/// Validates an `UpsertNamespace` request (`namespace.<field>`); a
/// namespace the cluster file lists cannot be replaced at run time.
pub fn check_namespace(
    cluster: &Cluster,
    runtime: &Runtime,
    ns: &cpb::Namespace,
) -> Result<policy::Namespace, Problems> {
    let mut p = Vec::new();
    let checked =
        policy::validate_namespace("namespace", &policy::RawNamespace::from_proto(ns), &mut p);
    let ns = checked.ok_or_else(|| Problems(std::mem::take(&mut p)))?;
    if let Some(i) = cluster.namespaces.iter().position(|f| f.name == ns.name) {
        p.push(Problem::new(
            "namespace.name",
            format!(
                "{} is the cluster file's namespaces[{i}]: change it there and apply the file",
                ns.name
            ),
        ));
    }
    let others = runtime.namespaces.keys().filter(|k| **k != ns.name).count();
    check_policy_totals(
        "namespace",
        0,
        cluster.namespaces.len() + others + 1,
        &mut p,
    );
    Problems::result(p).map(|()| ns)
}

/// What the cluster file's services hold.
fn file_services_taken(cluster: &Cluster) -> Taken {
    let mut taken = Taken::default();
    for (i, s) in cluster.services.iter().enumerate() {
        taken.add(s, &format!("the cluster file's services[{i}] ({})", s.name));
    }
    taken
}

/// Validates an `UpsertService` request against the cluster file's services
/// and the other run-time services (the one it replaces, if any, does not
/// collide with it). Problems are at `service.<field>`. A service the cluster
/// file defines cannot be replaced at run time.
pub fn check_service(
    cluster: &Cluster,
    runtime: &Runtime,
    s: &pb::Service,
) -> Result<Service, Problems> {
    let raw = RawService::from_proto("service", s)?;
    if let Some(i) = cluster.services.iter().position(|f| f.name == raw.name) {
        return Err(Problems(vec![Problem::new(
            "service.name",
            format!(
                "{} is the cluster file's services[{i}]: change it there and apply the file",
                raw.name
            ),
        )]));
    }
    let mut taken = file_services_taken(cluster);
    for other in runtime.services.values().filter(|o| o.name != raw.name) {
        taken.add(other, &format!("service {}", other.name));
    }
    let mut p = Vec::new();
    let service = service::check(
        "service",
        &raw,
        &cluster.service_context(),
        &mut taken,
        &mut p,
    )
    .ok_or_else(|| Problems(std::mem::take(&mut p)))?;
    // With it, the whole desired state must stay within the limits.
    let others = runtime.services.values().filter(|o| o.name != raw.name);
    service::check_totals(
        "service",
        cluster
            .services
            .iter()
            .chain(others)
            .chain([&service])
            .map(service::size),
        &mut p,
    );
    Problems::result(p).map(|()| service)
}

/// The request that would register `pod`.
pub fn request_of(pod: &Pod) -> AddPodRequest {
    AddPodRequest {
        node: pod.node.clone(),
        name: pod.name.clone(),
        ip: pod.ip.to_string(),
        mac: pod.mac.to_string(),
        ifname: pod.ifname.clone(),
        namespace: pod.namespace.clone(),
        labels: pod.labels.clone().into_iter().collect(),
        ports: pod
            .ports
            .iter()
            .map(|np| kxdp_proto::control::ContainerPort {
                name: np.name.clone(),
                protocol: match np.protocol {
                    policy::Proto::Tcp => pb::Protocol::Tcp,
                    policy::Proto::Udp => pb::Protocol::Udp,
                } as i32,
                port: u32::from(np.port),
            })
            .collect(),
    }
}

/// What `AddPod` does with a request, once valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodCheck {
    /// A new pod.
    New(Pod),
    /// The same pod is already registered with the same values (a retried ADD).
    Same(Pod),
}

/// Validates an `AddPod` request against the cluster file and the run-time
/// pods. Problems name the request's fields (`ip`, `mac`, ...).
pub fn check_add(
    cluster: &Cluster,
    runtime: &Runtime,
    req: &AddPodRequest,
) -> Result<PodCheck, Problems> {
    let key = (req.node.clone(), req.name.clone());
    if let Some(existing) = runtime.pods.get(&key) {
        if request_of(existing) == normalised(req) {
            return Ok(PodCheck::Same(existing.clone()));
        }
        return Err(Problems(vec![Problem::new(
            "name",
            format!(
                "pod {} is already registered on node {} (ip {}, mac {}, ifname {}); delete it first",
                req.name, req.node, existing.ip, existing.mac, existing.ifname
            ),
        )]));
    }
    check_pod(cluster, runtime, req).map(PodCheck::New)
}

/// The request with its MAC in canonical (lowercase) form, for comparison.
fn normalised(req: &AddPodRequest) -> AddPodRequest {
    let mut r = req.clone();
    if let Ok(mac) = r.mac.parse::<Mac>() {
        r.mac = mac.to_string();
    }
    if r.namespace.is_empty() {
        r.namespace = policy::DEFAULT_NAMESPACE.to_string();
    }
    for c in &mut r.ports {
        if c.protocol == pb::Protocol::Unspecified as i32 {
            c.protocol = pb::Protocol::Tcp as i32;
        }
    }
    r
}

/// Validates one pod against the file's pods and `runtime`'s pods (the pod's
/// own key in `runtime`, if any, is not a collision).
pub fn check_pod(
    cluster: &Cluster,
    runtime: &Runtime,
    req: &AddPodRequest,
) -> Result<Pod, Problems> {
    let mut p = Vec::new();
    let key = (req.node.clone(), req.name.clone());
    // Every other pod: all the file's, and the run-time ones but this one.
    let others: Vec<&Pod> = cluster
        .pods
        .iter()
        .chain(
            runtime
                .pods
                .iter()
                .filter(|(k, _)| **k != key)
                .map(|(_, p)| p),
        )
        .collect();

    // node
    let node = if req.node.is_empty() {
        p.push(Problem::new("node", "must not be empty"));
        None
    } else {
        match cluster.node(&req.node) {
            None => {
                let known: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
                p.push(Problem::new(
                    "node",
                    format!(
                        "unknown node {} (nodes are: {})",
                        req.node,
                        known.join(", ")
                    ),
                ));
                None
            }
            Some(n) if !n.is_kxdp() => {
                p.push(Problem::new(
                    "node",
                    format!("{} is a kernel node: kxdp does not serve its pods", n.name),
                ));
                None
            }
            Some(n) => Some(n),
        }
    };

    // name
    if !is_runtime_pod_name(&req.name) {
        p.push(Problem::new(
            "name",
            format!(
                "{:?} is not a pod name (1-{MAX_POD_NAME} printable characters, no spaces)",
                req.name
            ),
        ));
    } else if others
        .iter()
        .any(|o| o.node == req.node && o.name == req.name)
    {
        p.push(Problem::new(
            "name",
            format!(
                "duplicate pod name {} on node {} (a cluster file pod)",
                req.name, req.node
            ),
        ));
    }

    // ip
    let ip = parse_ip("ip", &req.ip, &mut p);
    if let (Some(ip), Some(n)) = (ip, node) {
        let net = n.pod_cidr;
        let name = &n.name;
        if !net.contains(&ip) {
            p.push(Problem::new(
                "ip",
                format!("{ip} is outside node {name}'s pod_cidr {net}"),
            ));
        } else if ip == net.network() {
            p.push(Problem::new(
                "ip",
                format!("{ip} is the network address of node {name}'s pod_cidr {net}"),
            ));
        } else if ip == net.broadcast() {
            p.push(Problem::new(
                "ip",
                format!("{ip} is the broadcast address of node {name}'s pod_cidr {net}"),
            ));
        } else if ip == conventions::gateway(net) {
            p.push(Problem::new(
                "ip",
                format!("{ip} is node {name}'s pod gateway (first host of {net})"),
            ));
        }
    }
    if let Some(ip) = ip {
        if let Some(o) = others.iter().find(|o| o.ip == ip) {
            p.push(Problem::new(
                "ip",
                format!("{ip} is already used by pod {}/{}", o.node, o.name),
            ));
        }
    }

    // mac
    let mac = parse_unicast_mac("mac", &req.mac, &mut p);

    // ifname
    if check_ifname("ifname", &req.ifname, &mut p) {
        if let Some(n) = node {
            if req.ifname == n.uplink {
                p.push(Problem::new(
                    "ifname",
                    format!("{} is node {}'s uplink", req.ifname, n.name),
                ));
            } else if let Some(o) = others
                .iter()
                .find(|o| o.node == n.name && o.ifname == req.ifname)
            {
                p.push(Problem::new(
                    "ifname",
                    format!(
                        "{} is already pod {}/{}'s interface",
                        req.ifname, o.node, o.name
                    ),
                ));
            }
        }
    }

    // what policies select it by
    let namespace = if req.namespace.is_empty() {
        policy::DEFAULT_NAMESPACE.to_string()
    } else {
        req.namespace.clone()
    };
    check_name("namespace", &namespace, &mut p);
    let labels: policy::Labels = req.labels.clone().into_iter().collect();
    policy::check_labels("labels", &labels, &mut p);
    let raw_ports: Vec<policy::RawNamedPort> = req
        .ports
        .iter()
        .map(|c| policy::RawNamedPort {
            name: c.name.clone(),
            protocol: match kxdp_proto::dataplane::Protocol::try_from(c.protocol) {
                Ok(kxdp_proto::dataplane::Protocol::Udp) => Some("UDP".into()),
                Ok(_) => None,
                Err(_) => Some(format!("protocol {}", c.protocol)),
            },
            port: i64::from(c.port),
        })
        .collect();
    let ports = policy::validate_named_ports("ports", &raw_ports, &mut p);

    match (p.is_empty(), node, ip, mac) {
        (true, Some(_), Some(ip), Some(mac)) => Ok(Pod {
            name: req.name.clone(),
            node: req.node.clone(),
            ip,
            mac,
            ifname: req.ifname.clone(),
            namespace,
            labels,
            ports,
        }),
        _ => Err(Problems(p)),
    }
}

/// Run-time pod names are what the CNI makes of the container (e.g.
/// "<netns>/<ifname>"), not DNS labels: what the dataplane takes as a name.
pub fn is_runtime_pod_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_POD_NAME && name.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::LAB_CLUSTER_YAML;

    fn req(node: &str, name: &str, ip: &str) -> AddPodRequest {
        AddPodRequest {
            node: node.into(),
            name: name.into(),
            ip: ip.into(),
            mac: "0a:58:0a:f4:01:09".into(),
            ifname: "veth1234".into(),
            ..Default::default()
        }
    }

    fn problems(r: Result<PodCheck, Problems>) -> Problems {
        match r {
            Ok(ok) => panic!("expected problems, got {ok:?}"),
            Err(p) => p,
        }
    }

    fn has(p: &Problems, path: &str, needle: &str) -> bool {
        p.0.iter()
            .any(|x| x.path == path && x.message.contains(needle))
    }

    #[test]
    fn a_valid_pod_is_new_then_same() {
        let c = Cluster::lab();
        let mut rt = Runtime::default();
        let r = req("n1", "cni-abc/eth0", "10.244.1.9");
        let PodCheck::New(pod) = check_add(&c, &rt, &r).unwrap() else {
            panic!()
        };
        assert_eq!(pod.ifname, "veth1234");
        rt.pods
            .insert(("n1".into(), "cni-abc/eth0".into()), pod.clone());
        // A retried ADD (MAC in upper case) is the same pod.
        let mut again = r.clone();
        again.mac = again.mac.to_uppercase();
        assert_eq!(check_add(&c, &rt, &again).unwrap(), PodCheck::Same(pod));
        // The same name with other values is refused.
        let mut other = r.clone();
        other.ip = "10.244.1.10".into();
        assert!(has(
            &problems(check_add(&c, &rt, &other)),
            "name",
            "already registered"
        ));
        assert_eq!(rt.pods_on(&c, "n1").count(), 3);
    }

    #[test]
    fn every_field_is_checked_and_named() {
        let c = Cluster::lab();
        let rt = Runtime::default();
        let p = problems(check_add(
            &c,
            &rt,
            &AddPodRequest {
                node: "n1".into(),
                name: "has space".into(),
                ip: "10.244.2.9".into(),
                mac: "01:00:5e:00:00:01".into(),
                ifname: "a-very-long-interface".into(),
                ..Default::default()
            },
        ));
        assert!(has(&p, "name", "not a pod name"), "{p}");
        assert!(has(&p, "ip", "outside node n1's pod_cidr"), "{p}");
        assert!(has(&p, "mac", "not a unicast MAC"), "{p}");
        assert!(has(&p, "ifname", "not a Linux interface name"), "{p}");

        let p = problems(check_add(&c, &rt, &req("n9", "x", "10.244.1.9")));
        assert!(
            has(&p, "node", "unknown node n9 (nodes are: n1, n2)"),
            "{p}"
        );
        let p = problems(check_add(&c, &rt, &req("", "x", "10.244.1.9")));
        assert!(has(&p, "node", "must not be empty"), "{p}");
        for (ip, needle) in [
            ("10.244.1.0", "network address"),
            ("10.244.1.255", "broadcast address"),
            ("10.244.1.1", "pod gateway"),
            ("10.244.1.2", "already used by pod n1/p1"),
            ("10.244.1", "not an IPv4 address"),
        ] {
            let p = problems(check_add(&c, &rt, &req("n1", "x", ip)));
            assert!(has(&p, "ip", needle), "{ip}: {p}");
        }
        let p = problems(check_add(&c, &rt, &req("n1", "p1", "10.244.1.9")));
        assert!(has(&p, "name", "duplicate pod name p1 on node n1"), "{p}");
        let mut r = req("n1", "x", "10.244.1.9");
        r.mac = "00:00:00:00:00:00".into();
        assert!(has(&problems(check_add(&c, &rt, &r)), "mac", "unicast"));
        r.mac = "zz".into();
        assert!(has(&problems(check_add(&c, &rt, &r)), "mac", "not a MAC"));
        let mut r = req("n1", "x", "10.244.1.9");
        r.ifname = "kx0af40102".into();
        assert!(has(
            &problems(check_add(&c, &rt, &r)),
            "ifname",
            "already pod n1/p1's interface"
        ));
        r.ifname = "eth0".into();
        assert!(has(
            &problems(check_add(&c, &rt, &r)),
            "ifname",
            "n1's uplink"
        ));
        r.ifname = String::new();
        assert!(has(&problems(check_add(&c, &rt, &r)), "ifname", "1-15"));
    }

    #[test]
    fn kernel_nodes_take_no_runtime_pods() {
        let text = LAB_CLUSTER_YAML.replacen(
            "    pod_cidr: 10.244.2.0/24",
            "    pod_cidr: 10.244.2.0/24\n    dataplane: kernel",
            1,
        );
        let c = Cluster::from_yaml(&text).unwrap();
        let p = problems(check_add(
            &c,
            &Runtime::default(),
            &req("n2", "x", "10.244.2.9"),
        ));
        assert!(has(&p, "node", "kernel node"), "{p}");
    }

    #[test]
    fn refit_keeps_drops_and_refuses() {
        let c = Cluster::lab();
        let mut rt = Runtime::default();
        for (node, ip, ifname) in [("n1", "10.244.1.9", "va"), ("n2", "10.244.2.9", "vb")] {
            let mut r = req(node, "x", ip);
            r.ifname = ifname.into();
            let PodCheck::New(pod) = check_add(&c, &rt, &r).unwrap() else {
                panic!()
            };
            rt.pods.insert((node.into(), "x".into()), pod);
        }
        // Same file: everything stays.
        assert_eq!(rt.refit(&c).unwrap(), (rt.clone(), vec![]));
        // n2 gone: its pod goes with it.
        let text = LAB_CLUSTER_YAML
            .replace(
                "  - name: n2\n    underlay_ip: 172.30.0.12\n    pod_cidr: 10.244.2.0/24\n",
                "",
            )
            .replace("  - { name: p1, node: n2, ip: 10.244.2.2 }\n", "")
            .replace("  - { name: p2, node: n2, ip: 10.244.2.3 }\n", "");
        let (kept, dropped) = rt.refit(&Cluster::from_yaml(&text).unwrap()).unwrap();
        assert_eq!(dropped, vec![("n2".to_string(), "x".to_string())]);
        assert_eq!(kept.pods.len(), 1);
        // A file pod taking n1/x's IP: refused, naming the run-time pod.
        let text = format!("{LAB_CLUSTER_YAML}  - {{ name: p9, node: n1, ip: 10.244.1.9 }}\n");
        let p = rt.refit(&Cluster::from_yaml(&text).unwrap()).unwrap_err();
        assert!(
            has(&p, "runtime_pods[n1/x].ip", "already used by pod n1/p9"),
            "{p}"
        );
    }

    fn svc(name: &str, ip: &str, node_port: u32) -> pb::Service {
        pb::Service {
            name: name.into(),
            cluster_ip: ip.into(),
            ports: vec![pb::ServicePort {
                protocol: pb::Protocol::Tcp as i32,
                port: 80,
                node_port,
                ..Default::default()
            }],
            endpoints: vec![pb::Endpoint {
                ip: "10.244.2.50".into(),
                ready: true,
                serving: true,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// The API limits hold for the whole desired state: a run-time service
    /// that would take it over is refused, naming the limit and the value.
    #[test]
    fn runtime_services_keep_the_whole_state_within_the_limits() {
        use kxdp_proto::limits::{MAX_BACKENDS, MAX_ENDPOINTS_PER_SERVICE};
        let c = Cluster::from_yaml(LAB_CLUSTER_YAML).unwrap();
        let mut rt = Runtime::default();
        // Unique endpoints outside the pod network, as many as a service may have.
        let big = |i: u32| {
            let mut s = svc(&format!("default/big{i}"), &format!("10.96.1.{i}"), 0);
            s.endpoints = (0..MAX_ENDPOINTS_PER_SERVICE as u32)
                .map(|j| pb::Endpoint {
                    ip: std::net::Ipv4Addr::from(0xc633_0000 + j).to_string(),
                    ..s.endpoints[0].clone()
                })
                .collect();
            s
        };
        for i in 1..=(MAX_BACKENDS / MAX_ENDPOINTS_PER_SERVICE) as u32 {
            let s = check_service(&c, &rt, &big(i)).unwrap();
            rt.services.insert(s.name.clone(), s);
        }
        // Replacing one is fine; one more backend anywhere is not.
        assert!(check_service(&c, &rt, &big(1)).is_ok());
        let p = check_service(&c, &rt, &svc("default/one", "10.96.0.99", 0)).unwrap_err();
        assert!(
            has(&p, "service", "250001 backends (endpoints times ports, summed over services), over the limit of 250000"),
            "{p}"
        );
        // One service over its own limit: refused before anything else.
        let mut s = big(99);
        s.endpoints.push(pb::Endpoint {
            ip: "10.244.2.60".into(),
            ..s.endpoints[0].clone()
        });
        let p = check_service(&c, &Runtime::default(), &s).unwrap_err();
        assert!(
            has(
                &p,
                "service.endpoints",
                "5001 endpoints, over the limit of 5000 per service"
            ),
            "{p}"
        );
    }

    #[test]
    fn runtime_services_are_checked_against_the_file_and_each_other() {
        let file = format!(
            "{LAB_CLUSTER_YAML}services:\n  - {{ name: default/web, cluster_ip: 10.96.0.10, ports: [{{ port: 80, node_port: 30080 }}] }}\n"
        );
        let c = Cluster::from_yaml(&file).unwrap();
        let mut rt = Runtime::default();
        let s = check_service(&c, &rt, &svc("default/api", "10.96.0.11", 30081)).unwrap();
        assert_eq!(s.endpoints[0].node, "n2");
        rt.services.insert(s.name.clone(), s);
        // Replacing itself is no collision.
        assert!(check_service(&c, &rt, &svc("default/api", "10.96.0.11", 30081)).is_ok());
        let p = check_service(&c, &rt, &svc("default/web", "10.96.0.12", 0)).unwrap_err();
        assert!(
            has(&p, "service.name", "the cluster file's services[0]"),
            "{p}"
        );
        let p = check_service(&c, &rt, &svc("default/x", "10.96.0.10", 30080)).unwrap_err();
        assert!(
            has(&p, "service.cluster_ip", "the cluster file's services[0]"),
            "{p}"
        );
        assert!(
            has(
                &p,
                "service.ports[0].node_port",
                "30080/TCP is already taken"
            ),
            "{p}"
        );
        let p = check_service(&c, &rt, &svc("default/x", "10.96.0.11", 30081)).unwrap_err();
        assert!(has(&p, "service.cluster_ip", "service default/api"), "{p}");
        assert!(
            has(&p, "service.ports[0].node_port", "service default/api"),
            "{p}"
        );
        assert_eq!(rt.all_services(&c).count(), 2);

        // A file that takes the run-time service's ClusterIP is refused.
        assert!(rt.refit(&c).is_ok());
        let clash = format!(
            "{LAB_CLUSTER_YAML}services:\n  - {{ name: default/web, cluster_ip: 10.96.0.11, ports: [{{ port: 80 }}] }}\n"
        );
        let p = rt.refit(&Cluster::from_yaml(&clash).unwrap()).unwrap_err();
        assert!(
            has(
                &p,
                "runtime_services[default/api].cluster_ip",
                "delete it first"
            ),
            "{p}"
        );
    }

    fn deny(namespace: &str, name: &str) -> cpb::NetworkPolicy {
        cpb::NetworkPolicy {
            namespace: namespace.into(),
            name: name.into(),
            ..Default::default()
        }
    }

    /// The lab with file policy default/file and namespace x listed.
    fn with_file_policy() -> Cluster {
        Cluster::from_yaml(&format!(
            "{LAB_CLUSTER_YAML}namespaces:\n  - {{ name: x, labels: {{ team: a }} }}\nnetwork_policies:\n  - {{ name: file, pod_selector: {{}} }}\n"
        ))
        .unwrap()
    }

    #[test]
    fn runtime_policies_are_validated_as_the_files_and_named() {
        let c = with_file_policy();
        let mut rt = Runtime::default();
        let ok = check_policies(&c, &rt, &[deny("", "deny")]).unwrap();
        assert_eq!(ok[0].name, "default/deny");
        rt.policies.insert(ok[0].name.clone(), ok[0].clone());
        // Replacing itself is fine.
        assert!(check_policies(&c, &rt, &[deny("default", "deny")]).is_ok());

        let mut bad = deny("x", "bad");
        bad.ingress.push(cpb::NetworkPolicyIngressRule {
            from: vec![cpb::NetworkPolicyPeer::default()],
            ports: vec![cpb::NetworkPolicyPort {
                protocol: "SCTP".into(),
                ..Default::default()
            }],
        });
        bad.pod_selector = Some(cpb::LabelSelector {
            match_expressions: vec![cpb::LabelSelectorRequirement {
                key: "app".into(),
                operator: "Is".into(),
                values: vec!["a".into()],
            }],
            ..Default::default()
        });
        // One invalid policy among valid ones: refused whole, each problem named.
        let p = check_policies(&c, &rt, &[deny("x", "fine"), bad, deny("x", "fine2")]).unwrap_err();
        assert!(
            has(
                &p,
                "policies[1].ingress[0].from[0]",
                "must have pod_selector"
            ),
            "{p}"
        );
        assert!(
            has(&p, "policies[1].ingress[0].ports[0].protocol", "SCTP"),
            "{p}"
        );
        assert!(
            has(
                &p,
                "policies[1].pod_selector.match_expressions[0].operator",
                "not an operator"
            ),
            "{p}"
        );
        assert_eq!(p.0.len(), 3, "{p}");

        let p = check_policies(&c, &rt, &[deny("default", "file")]).unwrap_err();
        assert!(
            has(
                &p,
                "policies[0].name",
                "the cluster file's network_policies[0]"
            ),
            "{p}"
        );
        let p = check_policies(&c, &rt, &[deny("x", "a"), deny("x", "a")]).unwrap_err();
        assert!(has(&p, "policies[1].name", "listed twice"), "{p}");
        let p = check_policies(&c, &rt, &[deny("x/y", "a")]).unwrap_err();
        assert!(has(&p, "policies[0].namespace", "not a DNS label"), "{p}");
        let p = check_policies(&c, &rt, &[deny("x", "Not_A_Name")]).unwrap_err();
        assert!(has(&p, "policies[0].name", "Not_A_Name"), "{p}");
        let p = check_policies(&c, &rt, &[]).unwrap_err();
        assert!(has(&p, "policies", "must not be empty"), "{p}");

        // The limit counts the file's and the run-time ones together.
        let mut full = Runtime::default();
        for i in 1..policy::MAX_POLICIES {
            let mut pol = ok[0].clone();
            pol.name = format!("default/p{i}");
            full.policies.insert(pol.name.clone(), pol);
        }
        assert!(check_policies(&c, &full, &[deny("", "p1")]).is_ok());
        let p = check_policies(&c, &full, &[deny("", "one-more")]).unwrap_err();
        assert!(has(&p, "policies", "10001 network policies"), "{p}");
    }

    #[test]
    fn runtime_namespaces_and_policies_survive_an_apply_that_fits() {
        let c = with_file_policy();
        let mut rt = Runtime::default();
        let ns = |name: &str, k: &str| cpb::Namespace {
            name: name.into(),
            labels: [(k.to_string(), "v".to_string())].into(),
            source: String::new(),
        };
        let n = check_namespace(&c, &rt, &ns("y", "team")).unwrap();
        rt.namespaces.insert(n.name.clone(), n);
        let p = check_namespace(&c, &rt, &ns("x", "team")).unwrap_err();
        assert!(
            has(&p, "namespace.name", "the cluster file's namespaces[0]"),
            "{p}"
        );
        let p = check_namespace(&c, &rt, &ns("y", "-bad")).unwrap_err();
        assert!(has(&p, "namespace.labels.-bad", "not a label key"), "{p}");
        for pol in check_policies(&c, &rt, &[deny("y", "deny")]).unwrap() {
            rt.policies.insert(pol.name.clone(), pol);
        }
        assert_eq!(rt.all_policies(&c).count(), 2);
        assert_eq!(rt.all_namespaces(&c).count(), 2);
        assert_eq!(rt.refit(&c).unwrap(), (rt.clone(), vec![]));
        // A file that takes their names is refused naming them.
        let clash = format!(
            "{LAB_CLUSTER_YAML}namespaces:\n  - {{ name: y }}\nnetwork_policies:\n  - {{ name: y/deny, pod_selector: {{}} }}\n"
        );
        let p = rt.refit(&Cluster::from_yaml(&clash).unwrap()).unwrap_err();
        assert!(
            has(
                &p,
                "runtime_network_policies[y/deny].name",
                "delete it first"
            ),
            "{p}"
        );
        assert!(
            has(&p, "runtime_namespaces[y].name", "delete it first"),
            "{p}"
        );
    }

    /// A run-time policy compiles with the file's: it isolates the lab's n1/p1.
    #[test]
    fn runtime_policies_reach_the_plan() {
        let c = Cluster::lab();
        let plain = crate::plan::node_state(&c, &Runtime::default(), "n1", 1).unwrap();
        assert!(plain.pods.iter().all(|p| p.ingress.is_none()));
        let mut rt = Runtime::default();
        for pol in check_policies(&c, &rt, &[deny("", "deny")]).unwrap() {
            rt.policies.insert(pol.name.clone(), pol);
        }
        let state = crate::plan::node_state(&c, &rt, "n1", 1).unwrap();
        let table = state.pods[0].ingress.clone().expect("isolated");
        assert!(table.peers.is_empty(), "{table:?}");
        assert!(state.pods[0].egress.is_none());

        // From the namespaces labelled team=blue: none until a run-time
        // namespace carries the label, then the four pods of "default".
        let mut from_blue = deny("", "from-blue");
        from_blue.ingress.push(cpb::NetworkPolicyIngressRule {
            from: vec![cpb::NetworkPolicyPeer {
                namespace_selector: Some(cpb::LabelSelector {
                    match_labels: [("team".to_string(), "blue".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ports: vec![],
        });
        for pol in check_policies(&c, &rt, &[from_blue]).unwrap() {
            rt.policies.insert(pol.name.clone(), pol);
        }
        let peers = |rt: &Runtime| {
            let state = crate::plan::node_state(&c, rt, "n1", 1).unwrap();
            state.pods[0].ingress.clone().unwrap().peers.len()
        };
        assert_eq!(peers(&rt), 0);
        let blue = cpb::Namespace {
            name: "default".into(),
            labels: [("team".to_string(), "blue".to_string())].into(),
            source: String::new(),
        };
        let ns = check_namespace(&c, &rt, &blue).unwrap();
        rt.namespaces.insert(ns.name.clone(), ns);
        assert_eq!(peers(&rt), 4);
    }
}
