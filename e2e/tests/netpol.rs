//! The NetworkPolicy truth table (issue 17), as the upstream network-policy
//! e2e suite and Cyclonus build it: namespaces x, y, z (labelled `ns: <name>`)
//! with pods a, b, c each (labelled `pod: <name>`), spread over the kxdp
//! nodes n1 and n2, every pod serving TCP and UDP echo on 80 and 81 (named
//! container ports `serve-<port>-<tcp|udp>`), a ClusterIP service `y/web`
//! whose one backend is y/b, and two NodePort services: `x/np-cluster`
//! (externalTrafficPolicy Cluster, backend x/a on n1) and `x/np-local`
//! (Local, backend x/b on n2), TCP 80 and UDP 81 each. Outside the cluster:
//! the lab's outside client `ext` (172.30.0.100 on the underlay; the lab
//! does not route it to pods, so the test adds its routes to the pod CIDRs
//! through the nodes, and the cluster file lists it in
//! `non_masquerade_cidrs`, the only outside sources kxdp lets reach a pod
//! by its own address), and an echo server on TCP and UDP
//! 80 and 81 at 203.0.113.20 in the outside world `www`, behind the
//! router, which pods reach masqueraded to their node's address.
//!
//! For each scenario the test writes the cluster file with the scenario's
//! policies, `kxdpctl apply`s it, checks that every node holds the new
//! generation, and probes with real connections, all at once: every (source
//! pod, destination pod, port, protocol); every pod to the service's two
//! ports (policies see the backend's pod IP after DNAT); every node to its
//! own pods (always allowed); every pod to the outside server (egress
//! policies see its address, before the masquerade); the outside client to
//! every pod on every port and protocol and with ICMP echo (a pod isolated
//! for ingress answers an echo request only if a rule without ports
//! allows the client); the outside client to both NodePorts on both nodes.
//! The expected matrix comes from the oracle (`kxdp_e2e::netpol`), a
//! separate model of the API; a pod reaching its own IP is loopback and
//! always allowed.
//!
//! What a NodePort's backend sees, and so what its ingress policy decides
//! on (the oracle's rule: the address after SNAT): with eTP Local the
//! outside client's address; with eTP Cluster the address the node the
//! client connected to SNATs to, which in kxdp is that node's gateway
//! address (10.244.1.1 through n1, 10.244.2.1 through n2), for a backend on
//! that node and on the other alike (ARCHITECTURE.md walks 4 and 8; as
//! Antrea SNATs to its gateway antrea-gw0 before its policies). No pod or
//! namespace selector matches it, an ipBlock may; it is not the node's own
//! connection (which is always allowed: kxdp knows those by the host port),
//! only one the node forwards. The anchors differ: kube-proxy masquerades
//! in POSTROUTING, after the filter, so Calico's iptables policy sees the
//! client for a local backend and the ingress node's address for a remote
//! one; Cilium without kube-proxy does not SNAT for a local backend at all.
//! An eTP Local NodePort on a node without a local endpoint drops the
//! client's flow whatever the policies (kube-proxy's rule, not policy's).
//!
//! Mismatched probes are probed once more (a lost first packet; more than a
//! few such is a failure too), then a scenario fails with Cyclonus-style
//! tables and `kxdpctl explain` of the first wrong probes. Every scenario
//! runs, whatever the ones before it did; the test fails at the end naming
//! the failed ones.
//!
//! Established flows across a policy change: kxdp decides them again when
//! the policies change (as Cilium and Calico re-evaluate), so a stream that
//! a new policy denies stops, and resumes once the policy is removed (see
//! `stream_scenarios`).
//!
//! Two workers per dataplane (`KXDP_LAB_QUEUES=2`: either direction of a
//! flow may arrive at either worker, and flows with an isolated pod are
//! steered to their owner): `network_policy_truth_table_two_workers` runs a
//! few of the scenarios and a stream the same way.
//!
//! `KXDP_NETPOL_ONLY=name,name` runs only those scenarios (for debugging).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kxdp_e2e::netpol::{Endpoint, Model, Proto, TrafficPolicy};
use kxdp_e2e::{
    check, ns_exec, ping_probe, require_root, run_probes, tcp_connect, wait_until, EchoServers,
    Lab, LabOpts, Probe, EXT_HOST,
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const POD_LABELS: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];
const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];
/// Probes per scenario that may fail first and pass when probed again (a
/// lost SYN or datagram); more is not loss, and fails the scenario.
const MAX_CLEARED: usize = 4;
/// Wrong probes a failed scenario asks `kxdpctl explain` about.
const EXPLAIN_WRONG: usize = 6;
/// A port no pod serves: the control probes.
const CLOSED_PORT: u16 = 82;
/// The service y/web: TCP 80 and UDP 81 to the same ports of y/b.
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
const SERVICE_BACKEND: &str = "y/b";
const SERVICE_PORTS: [(u16, Proto); 2] = [(80, Proto::Tcp), (81, Proto::Udp)];
/// The outside client `ext` (lab.sh `EXT_HOST` on the underlay /24 of
/// `CLUSTER_HEAD`), in `non_masquerade_cidrs`: it may reach pods directly.
const EXT_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, EXT_HOST);
/// The nodes' gateway addresses (the first of each pod CIDR, as the plan
/// gives them), named by the scenarios' ipBlocks; checked against the plan.
const GATEWAYS: [(&str, Ipv4Addr); 2] = [
    ("n1", Ipv4Addr::new(10, 244, 1, 1)),
    ("n2", Ipv4Addr::new(10, 244, 2, 1)),
];
/// The outside echo server: a second address of the outside world `www`
/// (lab.sh's HTTP server has .10 port 80).
const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

/// A NodePort service of the world: on TCP `node_ports.0` to target port
/// 80 and UDP `node_ports.1` to 81 of its one backend.
struct NodePortService {
    name: &'static str,
    cluster_ip: Ipv4Addr,
    node_ports: (u16, u16),
    local: bool,
    backend: &'static str,
}

const NODE_PORT_SERVICES: [NodePortService; 2] = [
    NodePortService {
        name: "x/np-cluster",
        cluster_ip: Ipv4Addr::new(10, 96, 0, 81),
        node_ports: (30080, 30081),
        local: false,
        backend: "x/a",
    },
    NodePortService {
        name: "x/np-local",
        cluster_ip: Ipv4Addr::new(10, 96, 0, 82),
        node_ports: (30180, 30181),
        local: true,
        backend: "x/b",
    },
];

/// A pod of the test's world.
#[derive(Clone, Debug)]
struct WorldPod {
    /// "x/a": namespace and `pod` label (the upstream suite's names).
    id: String,
    namespace: &'static str,
    label: &'static str,
    /// The kxdp pod name, unique in the cluster: "xa".
    name: String,
    node: &'static str,
    ip: Ipv4Addr,
}

/// Pod k (= 3 × namespace + pod) on n1 when k is even, n2 when odd: every
/// namespace has pods on both nodes, so pairs on one node and across nodes
/// both occur.
fn world() -> Vec<WorldPod> {
    let mut pods = Vec::new();
    for (i, ns) in NAMESPACES.iter().enumerate() {
        for (j, label) in POD_LABELS.iter().enumerate() {
            let k = 3 * i + j;
            let (node, third) = if k % 2 == 0 { ("n1", 1) } else { ("n2", 2) };
            pods.push(WorldPod {
                id: format!("{ns}/{label}"),
                namespace: ns,
                label,
                name: format!("{ns}{label}"),
                node,
                ip: Ipv4Addr::new(10, 244, third, 10 + k as u8),
            });
        }
    }
    pods
}

const CLUSTER_HEAD: &str = "\
cluster:
  cidr: 10.244.0.0/16
  underlay_mtu: 1500
  vxlan: { vni: 1, port: 4789 }
  service_cidr: 10.96.0.0/12
  node_port_range: \"30000-32767\"
  non_masquerade_cidrs: [ 172.30.0.100/32 ]
nodes:
  - { name: n1, underlay_ip: 172.30.0.11, pod_cidr: 10.244.1.0/24 }
  - { name: n2, underlay_ip: 172.30.0.12, pod_cidr: 10.244.2.0/24 }
";

/// The cluster file: with `policies` (YAML list items, or None for the
/// file of today's format: no namespaces, labels, container ports nor
/// policies).
fn cluster_yaml(pods: &[WorldPod], policies: Option<&str>) -> String {
    let mut y = String::from(CLUSTER_HEAD);
    if policies.is_some() {
        y += "namespaces:\n";
        for ns in NAMESPACES {
            let _ = writeln!(y, "  - {{ name: {ns}, labels: {{ ns: {ns} }} }}");
        }
    }
    y += "pods:\n";
    for p in pods {
        let _ = writeln!(
            y,
            "  - name: {}\n    node: {}\n    ip: {}",
            p.name, p.node, p.ip
        );
        if policies.is_some() {
            let _ = writeln!(
                y,
                "    namespace: {}\n    labels: {{ pod: {} }}\n    ports:",
                p.namespace, p.label
            );
            for port in PORTS {
                for proto in PROTOS {
                    let _ = writeln!(
                        y,
                        "      - {{ name: serve-{port}-{}, protocol: {}, port: {port} }}",
                        proto.as_str().to_lowercase(),
                        proto.as_str()
                    );
                }
            }
        }
    }
    let backend = pods.iter().find(|p| p.id == SERVICE_BACKEND).unwrap();
    let _ = write!(
        y,
        "services:
  - name: y/web
    cluster_ip: {SERVICE_IP}
    ports:
      - {{ name: tcp, protocol: TCP, port: 80, target_port: 80 }}
      - {{ name: udp, protocol: UDP, port: 81, target_port: 81 }}
    endpoints: [ {{ ip: {} }} ]
",
        backend.ip
    );
    for np in &NODE_PORT_SERVICES {
        let backend = pods.iter().find(|p| p.id == np.backend).unwrap();
        let _ = write!(
            y,
            "  - name: {}
    cluster_ip: {}
    ports:
      - {{ name: tcp, protocol: TCP, port: 80, target_port: 80, node_port: {} }}
      - {{ name: udp, protocol: UDP, port: 81, target_port: 81, node_port: {} }}
    external_traffic_policy: {}
    endpoints: [ {{ ip: {} }} ]
",
            np.name,
            np.cluster_ip,
            np.node_ports.0,
            np.node_ports.1,
            if np.local { "Local" } else { "Cluster" },
            backend.ip
        );
    }
    if let Some(p) = policies {
        y += "network_policies:\n";
        y += if p.trim().is_empty() { "  []\n" } else { p };
    }
    y
}

/// A scenario: its policies (None: today's file format, no policy fields).
struct Scenario {
    name: &'static str,
    policies: Option<&'static str>,
}

const DENY_INGRESS_X: &str = "  - name: x/deny-all-ingress
    pod_selector: {}
    policy_types: [Ingress]
";

const ALLOW_INGRESS_X: &str = "  - name: x/allow-all-ingress
    pod_selector: {}
    ingress: [ {} ]
";

/// The stream scenarios: a starting point, the policy added, the policy
/// removed (back to the start).
fn stream_cases() -> [[Scenario; 3]; 2] {
    [
        [
            Scenario {
                name: "stream start: no policies",
                policies: Some(""),
            },
            Scenario {
                name: "policy added while a stream flows (from no policies to default deny \
                       ingress in x; the stream stops)",
                policies: Some(DENY_INGRESS_X),
            },
            Scenario {
                name: "policy removed while a stream flows (back to no policies; the stream \
                       resumes)",
                policies: Some(""),
            },
        ],
        [
            Scenario {
                name: "stream start: x allows all ingress by a policy",
                policies: Some(ALLOW_INGRESS_X),
            },
            Scenario {
                name: "policy replaced while a stream flows (x's allow-all ingress by default \
                       deny ingress; the stream stops)",
                policies: Some(DENY_INGRESS_X),
            },
            Scenario {
                name: "policy replaced back while a stream flows (x allows all ingress again; \
                       the stream resumes)",
                policies: Some(ALLOW_INGRESS_X),
            },
        ],
    ]
}

/// The upstream suite's scenarios, in the cluster file's words.
fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "allow-all (today's file format, no policy fields)",
            policies: None,
        },
        Scenario {
            name: "allow-all (labels and container ports, no policies)",
            policies: Some(""),
        },
        Scenario {
            name: "default deny ingress in x",
            policies: Some(DENY_INGRESS_X),
        },
        Scenario {
            name: "default deny egress in x",
            policies: Some(
                "  - name: x/deny-all-egress
    pod_selector: {}
    policy_types: [Egress]
",
            ),
        },
        Scenario {
            name: "allow ingress to x from namespace y",
            policies: Some(
                "  - name: x/from-y
    pod_selector: {}
    ingress:
      - from: [ { namespace_selector: { match_labels: { ns: y } } } ]
",
            ),
        },
        Scenario {
            name: "to x/a from pod b in namespaces not x (one peer: AND)",
            policies: Some(
                "  - name: x/and
    pod_selector: { match_labels: { pod: a } }
    ingress:
      - from:
          - namespace_selector: { match_expressions: [ { key: ns, operator: NotIn, values: [x] } ] }
            pod_selector: { match_labels: { pod: b } }
",
            ),
        },
        Scenario {
            name: "to x/a from pod b or namespaces not x (two peers: OR)",
            policies: Some(
                "  - name: x/or
    pod_selector: { match_labels: { pod: a } }
    ingress:
      - from:
          - namespace_selector: { match_expressions: [ { key: ns, operator: NotIn, values: [x] } ] }
          - pod_selector: { match_labels: { pod: b } }
",
            ),
        },
        Scenario {
            name: "ipBlock with except (egress of y, ingress of z/c)",
            policies: Some(
                "  - name: y/egress-cidr
    pod_selector: {}
    policy_types: [Egress]
    egress:
      - to: [ { ip_block: { cidr: 10.244.1.0/24, except: [ 10.244.1.10/32 ] } } ]
  - name: z/ingress-cidr
    pod_selector: { match_labels: { pod: c } }
    ingress:
      - from: [ { ip_block: { cidr: 10.244.0.0/16, except: [ 10.244.2.0/24 ] } } ]
",
            ),
        },
        Scenario {
            name: "named ports (ingress of y on serve-81-tcp and serve-80-udp)",
            policies: Some(
                "  - name: y/named
    pod_selector: {}
    ingress:
      - ports: [ { port: serve-81-tcp }, { protocol: UDP, port: serve-80-udp } ]
",
            ),
        },
        Scenario {
            name: "endPort ranges (ingress of z, egress of x/b)",
            policies: Some(
                "  - name: z/range
    pod_selector: {}
    ingress:
      - ports: [ { protocol: TCP, port: 75, end_port: 80 }, { protocol: UDP, port: 81, end_port: 85 } ]
  - name: x/range
    pod_selector: { match_labels: { pod: b } }
    policy_types: [Egress]
    egress:
      - ports: [ { protocol: TCP, port: 81, end_port: 90 }, { protocol: UDP, port: 80, end_port: 80 } ]
",
            ),
        },
        Scenario {
            name: "y allows ingress from its own namespace (y/b reaches itself through y/web)",
            policies: Some(
                "  - name: y/from-y
    pod_selector: {}
    ingress:
      - from: [ { pod_selector: {} } ]
",
            ),
        },
        Scenario {
            name: "egress to a service's backend (x to y/b on TCP 80; y/b from x only)",
            policies: Some(
                "  - name: x/to-web
    pod_selector: {}
    policy_types: [Egress]
    egress:
      - to:
          - namespace_selector: { match_labels: { ns: y } }
            pod_selector: { match_labels: { pod: b } }
        ports: [ { protocol: TCP, port: 80 } ]
  - name: y/web-from-x
    pod_selector: { match_labels: { pod: b } }
    ingress:
      - from: [ { namespace_selector: { match_labels: { ns: x } } } ]
",
            ),
        },
        Scenario {
            name: "NodePorts: x allows ingress from the outside client and n1's gateway \
                   (ipBlock /32s; eTP Local passes, eTP Cluster only through n1)",
            policies: Some(
                "  - name: x/from-ext-and-n1
    pod_selector: {}
    ingress:
      - from: [ { ip_block: { cidr: 172.30.0.100/32 } }, { ip_block: { cidr: 10.244.1.1/32 } } ]
",
            ),
        },
        Scenario {
            name: "NodePorts: x allows ingress from the cluster CIDR but n1's pod CIDR \
                   (ipBlock with except; eTP Cluster only through n2)",
            policies: Some(
                "  - name: x/from-n2-side
    pod_selector: {}
    ingress:
      - from: [ { ip_block: { cidr: 10.244.0.0/16, except: [ 10.244.1.0/24 ] } } ]
",
            ),
        },
        Scenario {
            name: "NodePorts: x allows ingress from every pod only (no NodePort, no outside \
                   client)",
            policies: Some(
                "  - name: x/from-all-pods
    pod_selector: {}
    ingress:
      - from: [ { namespace_selector: {} } ]
",
            ),
        },
        Scenario {
            name: "ICMP: x/a allows every TCP and UDP port from anywhere (a rule with ports: \
                   no echo), x/c allows the outside client (a rule without ports: echo)",
            policies: Some(
                "  - name: x/a-ports
    pod_selector: { match_labels: { pod: a } }
    ingress:
      - ports: [ { protocol: TCP }, { protocol: UDP } ]
  - name: x/c-from-ext
    pod_selector: { match_labels: { pod: c } }
    ingress:
      - from: [ { ip_block: { cidr: 172.30.0.0/24 } } ]
",
            ),
        },
        Scenario {
            name: "egress to the outside world (y: only 203.0.113.0/24 on TCP 80 and UDP 81; \
                   z: everything but 203.0.113.0/24)",
            policies: Some(
                "  - name: y/to-outside
    pod_selector: {}
    policy_types: [Egress]
    egress:
      - to: [ { ip_block: { cidr: 203.0.113.0/24 } } ]
        ports: [ { protocol: TCP, port: 80 }, { protocol: UDP, port: 81 } ]
  - name: z/not-outside
    pod_selector: {}
    policy_types: [Egress]
    egress:
      - to: [ { ip_block: { cidr: 0.0.0.0/0, except: [ 203.0.113.0/24 ] } } ]
",
            ),
        },
    ]
}

/// What one scenario found.
struct Outcome {
    name: String,
    ok: bool,
    report: String,
}

/// The probes of a scenario with what the oracle expects of each.
struct Case {
    probe: Probe,
    /// Row and column of the table ("x/a", "n1", "svc"), and the table
    /// ("80/TCP").
    from: String,
    to: String,
    table: String,
    expect: bool,
    /// For `kxdpctl explain` of a wrong probe: the source pod's address and
    /// the destination pod's (the backend's, through the service); None
    /// from a node.
    explain: Option<(Ipv4Addr, Ipv4Addr)>,
}

fn cases(lab: &Lab, pods: &[WorldPod], model: &Model) -> Vec<Case> {
    let oracle_pod = |p: &WorldPod| {
        model
            .pod_by_ip(p.ip)
            .unwrap_or_else(|| panic!("the oracle lacks {}", p.id))
    };
    let ns_of = |p: &WorldPod| lab.ns(&format!("{}-{}", p.node, p.name));
    let mut cases = Vec::new();
    for port in PORTS {
        for proto in PROTOS {
            let table = format!("{port}/{}", proto.as_str());
            for s in pods {
                for d in pods {
                    let expect =
                        s.id == d.id || model.allowed(oracle_pod(s), oracle_pod(d), port, proto);
                    cases.push(Case {
                        probe: Probe {
                            ns: ns_of(s),
                            to: SocketAddr::from((d.ip, port)),
                            proto,
                        },
                        from: s.id.clone(),
                        to: d.id.clone(),
                        table: table.clone(),
                        expect,
                        explain: Some((s.ip, d.ip)),
                    });
                }
                // Host to pod: a node reaches its own pods, whatever the policies.
                for node in ["n1", "n2"] {
                    if s.node == node {
                        cases.push(Case {
                            probe: Probe {
                                ns: lab.ns(node),
                                to: SocketAddr::from((s.ip, port)),
                                proto,
                            },
                            from: node.to_string(),
                            to: s.id.clone(),
                            table: table.clone(),
                            expect: true,
                            explain: None,
                        });
                    }
                }
            }
        }
    }
    // Controls: nothing listens on CLOSED_PORT, so these probes must fail
    // (a probe that cannot fail would pass every table).
    for (i, s) in pods.iter().enumerate() {
        let d = &pods[(i + 1) % pods.len()];
        for proto in PROTOS {
            cases.push(Case {
                probe: Probe {
                    ns: ns_of(s),
                    to: SocketAddr::from((d.ip, CLOSED_PORT)),
                    proto,
                },
                from: s.id.clone(),
                to: format!("next:{}", proto.as_str()),
                table: format!("{CLOSED_PORT} (nothing listens; to the next pod)"),
                expect: false,
                explain: None,
            });
        }
    }
    let backend = pods.iter().find(|p| p.id == SERVICE_BACKEND).unwrap();
    for (port, proto) in SERVICE_PORTS {
        for s in pods {
            cases.push(Case {
                probe: Probe {
                    ns: ns_of(s),
                    to: SocketAddr::from((SERVICE_IP, port)),
                    proto,
                },
                from: s.id.clone(),
                to: format!("svc:{port}"),
                table: format!(
                    "service y/web {port}/{} (backend {SERVICE_BACKEND})",
                    proto.as_str()
                ),
                // Hairpin (y/b through its own service) included: the
                // API's policies see the client pod and, after DNAT, the
                // backend pod; the SNAT that brings the reply back is an
                // implementation's detail after the decision (kube-proxy
                // masquerades hairpin in POSTROUTING, after the filter
                // chains where Calico's policy sees the pod's own address).
                expect: model.allowed(oracle_pod(s), oracle_pod(backend), port, proto),
                explain: Some((s.ip, backend.ip)),
            });
        }
    }
    let ext = lab.ns("ext");
    let outside = Endpoint::Address(OUTSIDE_IP);
    let client = Endpoint::Address(EXT_IP);
    for port in PORTS {
        for proto in PROTOS {
            let table = format!("{port}/{}", proto.as_str());
            for p in pods {
                let pod = Endpoint::Pod(oracle_pod(p));
                // A pod to the outside server, masqueraded on the way.
                cases.push(Case {
                    probe: Probe {
                        ns: ns_of(p),
                        to: SocketAddr::from((OUTSIDE_IP, port)),
                        proto,
                    },
                    from: p.id.clone(),
                    to: "www".into(),
                    table: table.clone(),
                    expect: model.connection_allowed(pod, outside, port, proto),
                    explain: Some((p.ip, OUTSIDE_IP)),
                });
                // The outside client to the pod, by its own address.
                cases.push(Case {
                    probe: Probe {
                        ns: ext.clone(),
                        to: SocketAddr::from((p.ip, port)),
                        proto,
                    },
                    from: "ext".into(),
                    to: p.id.clone(),
                    table: table.clone(),
                    expect: model.connection_allowed(client, pod, port, proto),
                    explain: Some((EXT_IP, p.ip)),
                });
            }
        }
    }
    for p in pods {
        cases.push(Case {
            probe: Probe {
                ns: ext.clone(),
                to: SocketAddr::from((p.ip, 0)),
                proto: Proto::Icmp,
            },
            from: "ext".into(),
            to: p.id.clone(),
            table: "ICMP echo".into(),
            expect: model.connection_allowed(client, Endpoint::Pod(oracle_pod(p)), 0, Proto::Icmp),
            explain: None,
        });
    }
    for np in &NODE_PORT_SERVICES {
        let backend = pods.iter().find(|p| p.id == np.backend).unwrap();
        for (node, gateway) in GATEWAYS {
            // What the backend sees: the client's address with eTP Local;
            // with eTP Cluster, the address kxdp SNATs to, the gateway of
            // the node the client connected to, for a local and a remote
            // backend alike (dataplane/core/src/pipeline/nat.rs `new_flow`:
            // `snat_ip = node.gateway_ip`; ARCHITECTURE.md walk 4).
            let etp = if np.local {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster { snat: gateway }
            };
            let seen = etp.seen(EXT_IP);
            for (node_port, (port, proto)) in [np.node_ports.0, np.node_ports.1]
                .into_iter()
                .zip(SERVICE_PORTS)
            {
                // eTP Local without an endpoint on the node: kube-proxy's
                // rule drops the flow, whatever the policies.
                let served = !np.local || backend.node == node;
                cases.push(Case {
                    probe: Probe {
                        ns: ext.clone(),
                        to: SocketAddr::from((lab.node(node).underlay_ip, node_port)),
                        proto,
                    },
                    from: "ext".into(),
                    to: format!("{node}:{node_port}"),
                    table: format!(
                        "NodePort {} (backend {} on {}) {port}/{}",
                        np.name,
                        np.backend,
                        backend.node,
                        proto.as_str()
                    ),
                    expect: served
                        && model.node_port_allowed(EXT_IP, etp, oracle_pod(backend), port, proto),
                    explain: Some((seen, backend.ip)),
                });
            }
        }
    }
    cases
}

/// Probes every case; mismatches are probed once more. Returns the results
/// and how many mismatches the second probe cleared.
fn probe_cases(cases: &[Case]) -> (Vec<bool>, Vec<usize>) {
    let probes: Vec<Probe> = cases.iter().map(|c| c.probe.clone()).collect();
    let mut got = run_probes(&probes);
    let again: Vec<usize> = (0..cases.len())
        .filter(|&i| got[i] != cases[i].expect)
        .collect();
    let mut cleared = Vec::new();
    if !again.is_empty() {
        let retry: Vec<Probe> = again.iter().map(|&i| probes[i].clone()).collect();
        for (&i, ok) in again.iter().zip(run_probes(&retry)) {
            if ok == cases[i].expect {
                cleared.push(i);
            }
            got[i] = ok;
        }
    }
    (got, cleared)
}

/// Cyclonus-style tables, one per port/protocol: rows are sources, columns
/// destinations. `.` allowed and `X` denied as expected; `A` allowed but the
/// oracle denies it, `D` denied but the oracle allows it.
fn tables(cases: &[Case], got: &[bool]) -> String {
    let mut by_table: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, c) in cases.iter().enumerate() {
        by_table.entry(&c.table).or_default().push(i);
    }
    let mut out = String::new();
    for (table, idx) in by_table {
        let mut rows: Vec<&str> = Vec::new();
        let mut cols: Vec<&str> = Vec::new();
        let mut cell = BTreeMap::new();
        for &i in &idx {
            let c = &cases[i];
            if !rows.contains(&c.from.as_str()) {
                rows.push(&c.from);
            }
            if !cols.contains(&c.to.as_str()) {
                cols.push(&c.to);
            }
            let mark = match (c.expect, got[i]) {
                (true, true) => '.',
                (false, false) => 'X',
                (false, true) => 'A',
                (true, false) => 'D',
            };
            cell.insert((c.from.as_str(), c.to.as_str()), mark);
        }
        // Pods first, then the nodes (host to pod).
        rows.sort_by_key(|r| !r.contains('/'));
        let wrong = idx.iter().filter(|&&i| got[i] != cases[i].expect).count();
        let _ = writeln!(out, "  {table}: {wrong} wrong of {}", idx.len());
        let width = cols.iter().map(|c| c.len()).max().unwrap_or(1).max(1);
        let _ = write!(out, "    {:>6} |", "");
        for c in &cols {
            let _ = write!(out, " {c:>width$}");
        }
        out.push('\n');
        for r in &rows {
            let _ = write!(out, "    {r:>6} |");
            for c in &cols {
                let m = cell.get(&(*r, *c)).copied().unwrap_or(' ');
                let _ = write!(out, " {m:>width$}");
            }
            out.push('\n');
        }
    }
    out
}

/// Applies `yaml` and waits until every node holds the new generation.
fn apply(lab: &Lab, dir: &Path, tag: &str, yaml: &str) -> Result<(), String> {
    let file = dir.join(format!("{tag}.yaml"));
    std::fs::write(&file, yaml).map_err(|e| format!("{}: {e}", file.display()))?;
    let out = lab.kxdpctl_raw(&["apply", file.to_str().unwrap()]);
    if !out.status.success() {
        return Err(format!(
            "kxdpctl apply refused the scenario's file ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let synced = wait_until(Duration::from_secs(10), || {
        lab.node_infos().iter().all(|n| {
            let (applied, desired) = (
                n["applied_generation"].as_u64(),
                n["desired_generation"].as_u64(),
            );
            n["status"] == "synced" && applied.is_some() && applied >= desired
        })
    });
    if !synced {
        return Err(format!(
            "nodes not synced after apply: {:?}",
            lab.node_infos()
        ));
    }
    Ok(())
}

/// Applies a scenario and checks its truth table.
fn run_scenario(lab: &Lab, dir: &Path, pods: &[WorldPod], s: &Scenario, tag: &str) -> Outcome {
    let started = Instant::now();
    let yaml = cluster_yaml(pods, s.policies);
    let fail = |report: String| Outcome {
        name: s.name.to_string(),
        ok: false,
        report,
    };
    let model = match Model::parse(&yaml) {
        Ok(m) => m,
        Err(e) => return fail(format!("the oracle cannot read the file: {e}")),
    };
    if let Err(e) = apply(lab, dir, tag, &yaml) {
        return fail(e);
    }
    let applied = started.elapsed();
    let (ok, report) = check_matrix(lab, pods, &model);
    Outcome {
        name: s.name.to_string(),
        ok,
        report: format!("applied in {:.1}s; {report}", applied.as_secs_f64()),
    }
}

/// Probes everything and compares with `model`: whether all matched, and
/// the report with the tables.
fn check_matrix(lab: &Lab, pods: &[WorldPod], model: &Model) -> (bool, String) {
    let started = Instant::now();
    let cases = cases(lab, pods, model);
    let (got, cleared) = probe_cases(&cases);
    let wrong = (0..cases.len())
        .filter(|&i| got[i] != cases[i].expect)
        .count();
    let denied = cases.iter().filter(|c| !c.expect).count();
    let mut report = format!(
        "{} probes ({denied} expected denied) in {:.1}s, {wrong} wrong, {} cleared by a second \
         probe\n",
        cases.len(),
        started.elapsed().as_secs_f64(),
        cleared.len()
    );
    for &i in &cleared {
        let c = &cases[i];
        let _ = writeln!(
            report,
            "  cleared: {} -> {} {} (expected {})",
            c.from,
            c.to,
            c.table,
            if c.expect { "allowed" } else { "denied" }
        );
    }
    report += &tables(&cases, &got);
    // What kxdp says of the first few wrong probes.
    for c in (0..cases.len())
        .filter(|&i| got[i] != cases[i].expect)
        .map(|i| &cases[i])
        .take(EXPLAIN_WRONG)
    {
        let Some((src, dst)) = c.explain else {
            continue;
        };
        let port = format!("{}/{}", c.probe.to.port(), c.probe.proto.as_str());
        let out = lab.kxdpctl_raw(&["explain", &src.to_string(), &dst.to_string(), &port]);
        let _ = writeln!(
            report,
            "  kxdpctl explain {src} {dst} {port} ({} -> {}, expected {}):\n{}{}",
            c.from,
            c.to,
            if c.expect { "allowed" } else { "denied" },
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if cleared.len() > MAX_CLEARED {
        let _ = writeln!(
            report,
            "  {} probes failed first and passed on the second probe: more than the {MAX_CLEARED} \
             a lost packet explains",
            cleared.len()
        );
    }
    (wrong == 0 && cleared.len() <= MAX_CLEARED, report)
}

/// A TCP stream through the echo server of `to`: a writer sends a counter
/// every 20 ms, a reader counts the echo. Broken or stalled, it stops
/// counting; the caller reports what it saw.
struct Stream {
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<Option<String>>>,
}

impl Stream {
    fn start(s: TcpStream) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicU64::new(0));
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut w = s.try_clone().unwrap();
        let stop_w = stop.clone();
        let writer = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(100);
            let mut n = 0u64;
            while !stop_w.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Err(e) = w.write_all(&n.to_be_bytes()) {
                    return Some(format!("write after {n} messages: {e}"));
                }
                n += 1;
                thread::sleep(Duration::from_millis(20));
            }
            let _ = w.shutdown(Shutdown::Write);
            None
        });
        let (stop_r, count) = (stop.clone(), echoed.clone());
        let reader = thread::spawn(move || {
            let mut r = s;
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(100);
            while Instant::now() < deadline {
                match r.read(&mut buf) {
                    Ok(0) => return None,
                    Ok(n) => {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if stop_r.load(Ordering::Relaxed) {
                            return Some("no EOF after the writer stopped".into());
                        }
                    }
                    Err(e) => return Some(format!("read: {e}")),
                }
            }
            None
        });
        Stream {
            stop,
            echoed,
            threads: vec![writer, reader],
        }
    }

    /// Bytes echoed so far, and whether more arrive within `wait`.
    fn flowing(&self, wait: Duration) -> (u64, bool) {
        let before = self.echoed.load(Ordering::Relaxed);
        thread::sleep(wait);
        let after = self.echoed.load(Ordering::Relaxed);
        (after, after > before)
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .drain(..)
            .filter_map(|t| t.join().expect("stream thread"))
            .collect()
    }
}

/// Policies added and removed while a stream flows. kxdp decides an
/// established flow again when the policy tables change (main's
/// pipeline/nat.rs: "a policy change applies to established flows too (as
/// Cilium and Calico re-evaluate), decided again as new"), so: new flows
/// match the oracle in both states, the stream z/a -> x/b:80 stops once
/// "default deny ingress in x" is in place, and it resumes (TCP
/// retransmits) once the policy is gone.
///
/// Run from two starting points: no policies at all (the stream's flow is
/// not one any policy decided), and x allowing all ingress by a policy (a
/// flow its ingress policy allowed).
fn stream_scenarios(
    lab: &Lab,
    dir: &Path,
    pods: &[WorldPod],
    [base, added, removed]: &[Scenario; 3],
) -> Vec<Outcome> {
    let mut out = vec![run_scenario(lab, dir, pods, base, "stream-base")];
    let (src, dst) = (
        pods.iter().find(|p| p.id == "z/a").unwrap(),
        pods.iter().find(|p| p.id == "x/b").unwrap(),
    );
    let ns = lab.ns(&format!("{}-{}", src.node, src.name));
    let (stream, local) =
        match tcp_connect(&ns, SocketAddr::from((dst.ip, 80)), Duration::from_secs(5)) {
            Ok(s) => {
                let local = s.local_addr().ok();
                (Stream::start(s), local)
            }
            Err(e) => {
                out.push(Outcome {
                    name: added.name.into(),
                    ok: false,
                    report: format!("cannot open the stream z/a -> x/b:80: {e}"),
                });
                return out;
            }
        };
    let (before, was_flowing) = stream.flowing(Duration::from_millis(300));
    let mut first = run_scenario(lab, dir, pods, added, "stream-added");
    let (n, flowing) = stream.flowing(Duration::from_secs(1));
    first.report.insert_str(
        0,
        &format!(
            "stream z/a -> x/b:80: {before} bytes echoed before the policy (flowing: \
             {was_flowing}); {n} after it, still flowing: {flowing} (expected: no)\n"
        ),
    );
    first.ok &= was_flowing && !flowing;
    if flowing {
        first.report += &stream_diagnosis(lab, local);
    }
    let mut second = run_scenario(lab, dir, pods, removed, "stream-removed");
    let removed_at = Instant::now();
    let resumed = wait_until(Duration::from_secs(20), || {
        stream.flowing(Duration::from_millis(200)).1
    });
    let (n, _) = stream.flowing(Duration::ZERO);
    let errors = stream.finish();
    second.report.insert_str(
        0,
        &format!(
            "stream z/a -> x/b:80 after the removal: resumed: {resumed} (in {:.1}s), {n} bytes \
             echoed; its end: {errors:?}\n",
            removed_at.elapsed().as_secs_f64()
        ),
    );
    second.ok &= resumed;
    out.extend([first, second]);
    out
}

/// For a stream that outlived its deny: each node's conntrack entries
/// naming the stream's client address `local`, and its policy counters.
fn stream_diagnosis(lab: &Lab, local: Option<SocketAddr>) -> String {
    let mut out = String::new();
    for node in ["n1", "n2"] {
        let ct = lab.kxdpctl(&["conntrack", "--node", node, "--limit", "10000", "--json"]);
        let needle = local.map_or("?".into(), |a| a.to_string());
        let entries: Vec<String> = ct["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e.to_string())
            .filter(|e| e.contains(&needle))
            .collect();
        let _ = writeln!(
            out,
            "  {node} conntrack entries naming {needle}: {entries:?}"
        );
        let counters = lab.counters(node);
        let mut policy: Vec<String> = counters
            .drops()
            .into_iter()
            .filter(|(r, _)| r.contains("policy"))
            .map(|(r, n)| format!("drop {r}={n}"))
            .collect();
        policy_counters(&counters.0, "", &mut policy);
        let _ = writeln!(out, "  {node} policy counters: {policy:?}");
    }
    out
}

/// Every numeric field whose path names a policy.
fn policy_counters(v: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                policy_counters(v, &format!("{path}.{k}"), out);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                policy_counters(v, &format!("{path}[{i}]"), out);
            }
        }
        serde_json::Value::Number(n) if path.contains("policy") => {
            out.push(format!("{path}={n}"));
        }
        _ => {}
    }
}

/// Brings the lab up from the world's cluster file (`queues` workers per
/// dataplane), with the echo servers in every pod and in the outside world,
/// and the outside client's routes to the pod CIDRs; runs the scenarios
/// `pick` selects and the stream cases `streams` of [`stream_cases`]
/// (those `KXDP_NETPOL_ONLY` leaves), and fails naming the failed ones.
fn truth_table(queues: Option<u32>, pick: impl Fn(&str) -> bool, streams: &[usize]) {
    require_root!();
    let started = Instant::now();
    let pods = world();
    let dir = kxdp_testkit::TempDir::new("netpol");
    let base = dir.path().join("base.yaml");
    std::fs::write(&base, cluster_yaml(&pods, None)).unwrap();
    let lab = Lab::up(LabOpts {
        cluster: Some(base),
        queues,
        ..LabOpts::default()
    });
    assert_eq!(lab.ext_ip(), EXT_IP, "the outside client's address");
    for (node, gateway) in GATEWAYS {
        assert_eq!(lab.node(node).gateway, gateway, "{node}'s gateway");
    }
    lab.route_pods_from("ext");
    let www = lab.ns("www");
    check(
        "the outside echo server's address",
        ns_exec(
            &www,
            5,
            "ip",
            &["addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "eth0"],
        ),
    );
    let mut servers: Vec<(String, Ipv4Addr)> = pods
        .iter()
        .map(|p| (lab.ns(&format!("{}-{}", p.node, p.name)), p.ip))
        .collect();
    servers.push((www, OUTSIDE_IP));
    let _servers = EchoServers::start(&servers, &PORTS);
    // The pods' answers to the outside client leave by the node kernel's
    // neighbour entry for it (walk 7), which the first probes would
    // otherwise wait for: a ping to one pod of each node until answered.
    for node in ["n1", "n2"] {
        let pod = pods.iter().find(|p| p.node == node).unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || ping_probe(
                &lab.ns("ext"),
                pod.ip.into()
            )),
            "the outside client does not reach {} ({}) directly",
            pod.id,
            pod.ip
        );
    }

    let only: Option<Vec<String>> = std::env::var("KXDP_NETPOL_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let wanted = |name: &str| {
        only.as_ref()
            .is_none_or(|o| o.iter().any(|w| name.contains(w.as_str())))
    };
    let report = |o: &Outcome| {
        eprintln!(
            "scenario {:?}: {}\n{}",
            o.name,
            if o.ok { "PASS" } else { "FAIL" },
            o.report
        );
    };
    let mut outcomes = Vec::new();
    for (i, s) in scenarios().iter().enumerate() {
        if pick(s.name) && wanted(s.name) {
            outcomes.push(run_scenario(&lab, dir.path(), &pods, s, &format!("s{i}")));
            report(outcomes.last().unwrap());
        }
    }
    if wanted("stream") {
        let cases = stream_cases();
        for o in streams
            .iter()
            .flat_map(|&i| stream_scenarios(&lab, dir.path(), &pods, &cases[i]))
        {
            report(&o);
            outcomes.push(o);
        }
    }
    eprintln!(
        "summary ({:.0}s, {} worker(s) per dataplane):",
        started.elapsed().as_secs_f64(),
        queues.unwrap_or(1)
    );
    for o in &outcomes {
        eprintln!("  {} {}", if o.ok { "PASS" } else { "FAIL" }, o.name);
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.name.as_str())
        .collect();
    assert!(
        !outcomes.is_empty(),
        "KXDP_NETPOL_ONLY selected no scenario"
    );
    assert!(failed.is_empty(), "scenarios failed: {failed:?}");
}

#[test]
fn network_policy_truth_table() {
    truth_table(None, |_| true, &[0, 1]);
}

/// Two workers per dataplane: a flow's directions arrive at either worker
/// and flows with an isolated pod are steered to their owner, so these
/// must be decided as with one: deny, ipBlock (pods, the outside client,
/// NodePorts through both nodes), egress to the outside world, and the
/// stream whose flow a policy allowed across its replacement by a deny.
#[test]
fn network_policy_truth_table_two_workers() {
    truth_table(
        Some(2),
        |name| {
            [
                "default deny ingress in x",
                "default deny egress in x",
                "ipBlock with except",
                "NodePorts: x allows ingress from the outside client",
                "egress to the outside world",
            ]
            .iter()
            .any(|w| name.starts_with(w))
        },
        &[1],
    );
}
