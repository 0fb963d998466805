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

use std::collections::BTreeMap;

use kxdp_proto::control::AddPodRequest;

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

    /// The run-time pods and services that still fit `cluster` (a new cluster
    /// file): pods of nodes it no longer has as kxdp nodes are left out and
    /// returned as the second value; any other misfit is a problem naming
    /// the pod or service.
    pub fn refit(&self, cluster: &Cluster) -> Result<(Runtime, Vec<PodKey>), Problems> {
        let services = self
            .services
            .iter()
            .map(|(name, s)| {
                RawService::from_proto(&format!("runtime_services[{name}]"), &s.to_proto())
            })
            .collect::<Result<Vec<_>, _>>()?;
        Runtime::fit(cluster, self.pods.values().map(request_of), services)
    }

    /// Run-time pods and services as written (a state file's), checked
    /// against `cluster` as [`Runtime::refit`] checks them.
    pub fn fit(
        cluster: &Cluster,
        pods: impl IntoIterator<Item = AddPodRequest>,
        services: Vec<RawService>,
    ) -> Result<(Runtime, Vec<PodKey>), Problems> {
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
        Problems::result(problems).map(|()| (kept, dropped))
    }
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
}
