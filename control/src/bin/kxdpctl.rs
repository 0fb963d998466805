//! kxdpctl: the operator CLI. Talks to kxdp-control's Control API; `validate`,
//! `plan-pods` and `plan-node` work offline on a cluster file.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kxdp_control::cluster::{Cluster, LAB_CLUSTER_YAML};
use kxdp_control::reconcile::code_name;
use kxdp_control::runtime::Runtime;
use kxdp_control::service::RawService;
use kxdp_control::validate::Problems;
use kxdp_control::view::{
    self, ConntrackView, CountersView, DataplaneStateView, NamespaceView, NamespacesView,
    NetworkPoliciesView, NetworkPolicyView, NodeView, NodesView, PodPolicyView, PodView, PodsView,
    PoliciesView, RouteView, RoutesView, ServiceView, ServicesView,
};
use kxdp_control::watch::{self as watch_view, TraceView};
use kxdp_control::{plan, policy, uds};
use kxdp_proto::control::control_client::ControlClient;
use kxdp_proto::control::{
    AddPodRequest, ApplyClusterRequest, ContainerPort, DeleteNamespaceRequest,
    DeleteNetworkPolicyRequest, DeletePodRequest, DeleteServiceRequest, ExplainPolicyRequest,
    GetNodeCountersRequest, ListNamespacesRequest, ListNetworkPoliciesRequest,
    ListNodeConntrackRequest, ListNodesRequest, ListPodsRequest, ListPoliciesRequest,
    ListRoutesRequest, ListServicesRequest, Namespace, UpsertNamespaceRequest,
    UpsertNetworkPolicyRequest, UpsertServiceRequest, WatchNodeRequest,
};
use kxdp_proto::dataplane::{ListConntrackReply, WatchReply, WatchRequest};
use kxdp_proto::DEFAULT_CONTROL_SOCKET;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Operate a kxdp cluster through kxdp-control.
///
/// Exit status: 0 on success, 2 when a cluster file is invalid (or the
/// command line is), 1 on any other error.
#[derive(Parser, Debug)]
#[command(name = "kxdpctl", version, verbatim_doc_comment)]
struct Args {
    /// kxdp-control's Unix socket.
    #[arg(long, global = true, value_name = "SOCK", env = "KXDP_CONTROL_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    control: PathBuf,

    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,

    /// The etcd store, for `init`: https://host:2379[,host:port...] with
    /// --etcd-ca (--etcd-cert, --etcd-key), or http://... with --etcd-insecure.
    #[arg(long, global = true, value_name = "URL", env = "KXDP_STORE")]
    store: Option<String>,

    #[command(flatten)]
    etcd: kxdp_control::cli::EtcdFlags,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Nodes with their sync status and generations.
    Nodes,
    /// Pods with their dataplane attach status.
    Pods {
        /// Only this node's pods.
        #[arg(long)]
        node: Option<String>,
    },
    /// Routes each kxdp node's dataplane holds: its pod CIDR locally, others over VXLAN.
    Routes {
        /// Only this node's routes.
        #[arg(long)]
        node: Option<String>,
    },
    /// Network policy. Without a subcommand: the rules compiled for each
    /// pod (as `policy rules`); `get`, `apply` and `delete` for the policies.
    Policy {
        #[command(subcommand)]
        cmd: Option<PolicyCmd>,
        /// Only this node's pods (the compiled rules).
        #[arg(long)]
        node: Option<String>,
    },
    /// Namespaces' labels, which network policies' namespace selectors match.
    #[command(subcommand)]
    Namespace(NamespaceCmd),
    /// Why network policy allows or denies a new connection from SRC to DST
    /// on PORT/PROTO (e.g. 80/TCP), as it reaches DST: give a service's
    /// backend, not its ClusterIP.
    Explain {
        /// Source address (a pod, a node, or outside).
        src: String,
        /// Destination address.
        dst: String,
        /// Destination port and protocol, e.g. 5432/TCP or 53/UDP.
        #[arg(value_name = "PORT/PROTO")]
        port: String,
    },
    /// A node's live dataplane counters: interfaces, totals, non-zero drops.
    Counters {
        /// The node whose dataplane to read.
        #[arg(long)]
        node: String,
        /// Show drop reasons with zero packets too (JSON always has every reason).
        #[arg(long)]
        all: bool,
    },
    /// Validate a cluster file and make it the desired state of every node.
    Apply {
        /// The cluster file (YAML).
        file: PathBuf,
    },
    /// Register or remove a pod at run time (what the CNI plugin does).
    #[command(subcommand)]
    Pod(PodCmd),
    /// Services: name, ClusterIP, ports with NodePorts, endpoints ready/total.
    Services,
    /// One service's endpoints with their conditions.
    Backends {
        /// The service, namespace/name.
        service: String,
    },
    /// A node's live connection-tracking entries.
    Conntrack {
        /// The node whose dataplane to read.
        #[arg(long)]
        node: String,
        /// Only this service's entries (namespace/name).
        #[arg(long)]
        service: Option<String>,
        /// At most this many entries, fetched page by page; 0: all of them.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Add, replace or remove a service at run time.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Follow the next packets FILTER matches through a node's pipeline (VPP's
    /// `trace add`): for each, the ingress interface, its headers, each decision
    /// (flow cache, conntrack, backend and why, NAT, encap/decap), the verdict
    /// and the table generation. Exits 1 if nothing matched in time.
    ///
    /// FILTER: terms `src A[/N]`, `dst A[/N]`, `host A[/N]`,
    /// `proto tcp|udp|icmp|arp|N`, `port N` (TCP/UDP, either side), `port IFNAME`
    /// (came in on that interface), joined by `and` (tighter) and `or`.
    /// A VXLAN frame matches if its outer or inner headers do.
    #[command(verbatim_doc_comment)]
    Trace {
        /// The node whose dataplane to trace.
        #[arg(long)]
        node: String,
        /// Packets to follow (at most 100).
        #[arg(long, default_value_t = 10)]
        count: u32,
        /// Only packets this filter matches (see above); default: all.
        #[arg(long = "match", value_name = "FILTER", default_value = "")]
        filter: String,
        /// Seconds to wait for them (at most 60).
        #[arg(long, default_value_t = 10)]
        timeout: u32,
    },
    /// Write the frames a node's pipeline saw at a point to a pcapng file that
    /// tcpdump and Wireshark read, each with a comment naming its ingress and
    /// verdict (the drop reason at `drop`). Points: `rx` (as received), `tx`
    /// (as sent), `drop` (dropped frames, as received), `port IFNAME` (received
    /// on or sent out of that interface). --match as for `trace`, applied to
    /// the frame as received. Exits 1 if nothing was captured in time.
    #[command(verbatim_doc_comment)]
    Capture {
        /// The node whose dataplane to capture on.
        #[arg(long)]
        node: String,
        /// rx, tx, drop, or port IFNAME.
        #[arg(long, num_args = 1..=2, value_names = ["POINT", "IFNAME"], required = true)]
        point: Vec<String>,
        /// Only frames this filter matches (see `kxdpctl trace --help`).
        #[arg(long = "match", value_name = "FILTER", default_value = "")]
        filter: String,
        /// The pcapng file to write.
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        file: PathBuf,
        /// Frames to capture (at most 1000).
        #[arg(long, default_value_t = 100)]
        count: u32,
        /// Seconds to wait for them (at most 60).
        #[arg(long, default_value_t = 10)]
        timeout: u32,
    },
    /// Write FILE's cluster settings (CIDRs, VXLAN, MTU, node ports) as the
    /// etcd store's cluster config, unless it has one (needs --store).
    /// Nodes register themselves; FILE's nodes, pods and services are not used.
    Init {
        /// The cluster file (YAML) whose cluster settings to write.
        file: PathBuf,
        /// Prefix length of each node's pod CIDR.
        #[arg(long, default_value_t = kxdp_control::etcd::DEFAULT_SUBNET_LEN)]
        subnet_len: u8,
    },
    /// Validate a cluster file offline (no kxdp-control needed).
    Validate {
        /// The cluster file (YAML).
        file: PathBuf,
    },
    /// Offline: how to plumb each pod, as JSON (scripts/lab.sh reads it).
    ///
    /// A JSON array, one object per pod:
    /// {node, name, ip, prefix_len, gateway, mac, ifname, mtu, dataplane}.
    /// FILE defaults to the embedded lab cluster file.
    #[command(verbatim_doc_comment)]
    PlanPods {
        /// The cluster file (YAML); default: the embedded lab cluster file.
        file: Option<PathBuf>,
    },
    /// Offline: one JSON object per node (name, underlay_ip, uplink,
    /// pod_cidr, gateway, vtep_mac, dataplane, mtu, underlay_mtu, vni,
    /// vxlan_port): what the lab script builds each node's namespace from.
    PlanNodes {
        /// The cluster file (YAML); default: the embedded lab cluster file.
        file: Option<PathBuf>,
    },
    /// Offline: the DataplaneState that would be pushed to NODE, as JSON.
    ///
    /// The generation is 0 here; kxdp-control stamps its own. FILE defaults
    /// to the embedded lab cluster file.
    PlanNode {
        /// The node whose state to show.
        node: String,
        /// The cluster file (YAML); default: the embedded lab cluster file.
        file: Option<PathBuf>,
    },
    /// Print kxdpctl's man page (roff) to stdout, or with --dir write one
    /// page per command (kxdpctl.1, kxdpctl-nodes.1, ...) into DIR.
    #[command(verbatim_doc_comment)]
    Man {
        /// Write every page into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script for kxdpctl, e.g.
    /// `kxdpctl completions bash > /etc/bash_completion.d/kxdpctl`.
    Completions {
        /// The shell to complete in.
        shell: kxdp_proto::cli::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum PodCmd {
    /// Add a pod beside the cluster file's; returns once its node's
    /// dataplane holds it. Invalid values: exit 2, nothing changed.
    Add {
        /// The node the pod runs on.
        #[arg(long)]
        node: String,
        /// Unique on the node, e.g. "<netns>/<ifname>".
        #[arg(long)]
        name: String,
        /// Inside the node's pod CIDR.
        #[arg(long)]
        ip: String,
        /// The pod's eth0 MAC.
        #[arg(long)]
        mac: String,
        /// The node-side veth name.
        #[arg(long)]
        ifname: String,
        /// Its Kubernetes namespace, which network policies select by.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// A label KEY=VALUE, which network policies select by (repeat for
        /// several).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// A container port NAME:PROTOCOL:PORT (e.g. http:TCP:8080), for
        /// policies' named ports (repeat for several).
        #[arg(long = "port", value_name = "NAME:PROTO:PORT", value_parser = parse_container_port)]
        ports: Vec<ContainerPort>,
    },
    /// Remove a run-time pod; removing an unknown one succeeds.
    Del {
        /// The node the pod runs on.
        #[arg(long)]
        node: String,
        /// The pod's name, as it was added.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum ServiceCmd {
    /// Upsert the service in FILE (one service in the cluster file's
    /// `services:` entry shape); returns once the reachable nodes hold it.
    Apply {
        /// One service, in the cluster file's `services:` entry shape (YAML).
        file: PathBuf,
    },
    /// Remove a run-time service; removing an unknown one succeeds.
    Del {
        /// The service, namespace/name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCmd {
    /// Network policy compiled for each pod: the policies isolating it per
    /// direction, and each peer prefix with the ports it may use (what the
    /// pod's node decides new flows with).
    Rules {
        /// Only this node's pods.
        #[arg(long)]
        node: Option<String>,
    },
    /// Every network policy, the cluster file's and the run-time ones.
    Get,
    /// Upsert the policies in FILE, all or none; returns once the reachable
    /// nodes hold them. Invalid: exit 2, nothing changed.
    Apply {
        /// A YAML list of policies in the cluster file's `network_policies:`
        /// shape; `-` reads stdin.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Remove a run-time policy; removing an unknown one succeeds.
    #[command(visible_alias = "del")]
    Delete {
        /// The policy, NAMESPACE/NAME (NAME alone: namespace "default").
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum NamespaceCmd {
    /// Set a namespace's labels (all of them: labels not given are removed).
    Set {
        /// The namespace.
        name: String,
        /// A label KEY=VALUE (repeat for several).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// Remove a run-time namespace's labels; removing an unknown one succeeds.
    #[command(visible_alias = "del")]
    Delete {
        /// The namespace.
        name: String,
    },
    /// Namespaces with labels, the cluster file's and the run-time ones.
    List,
}

/// Why a command failed, and so its exit status.
enum Failure {
    /// The input was invalid: exit 2.
    Invalid(String),
    /// Anything else: exit 1.
    Other(String),
}

impl Failure {
    fn exit(self) -> ExitCode {
        match self {
            Failure::Invalid(msg) => {
                eprintln!("{msg}");
                ExitCode::from(2)
            }
            Failure::Other(msg) => {
                eprintln!("kxdpctl: {msg}");
                ExitCode::from(1)
            }
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// One Control API call: `rpc!(client, "what", method(request))` gives the
/// reply, or returns the CLI's error naming `what`.
macro_rules! rpc {
    ($client:expr, $what:expr, $method:ident($request:expr)) => {
        $client
            .$method($request)
            .await
            .map_err(|s| rpc_failure($what, &s))?
            .into_inner()
    };
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Failure::Other(format!("cannot start the runtime: {e}")).exit(),
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit(),
    }
}

async fn run(args: Args) -> Result<()> {
    let json = args.json;
    match args.cmd {
        Cmd::Man { dir } => {
            use clap::CommandFactory;
            let written = match &dir {
                Some(dir) => kxdp_proto::cli::man_pages(Args::command(), dir),
                None => kxdp_proto::cli::man(Args::command(), "1", &mut io::stdout().lock()),
            };
            written.map_err(|e| Failure::Other(format!("man page: {e}")))
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            kxdp_proto::cli::completions(shell, Args::command(), &mut io::stdout().lock());
            Ok(())
        }
        Cmd::Validate { file } => {
            let cluster = load(Some(&file))?;
            if json {
                print_json(&serde_json::json!({
                    "ok": true,
                    "nodes": cluster.nodes.len(),
                    "pods": cluster.pods.len(),
                    "services": cluster.services.len(),
                }))
            } else {
                out(&format!(
                    "ok: {} nodes, {} pods, {} services\n",
                    cluster.nodes.len(),
                    cluster.pods.len(),
                    cluster.services.len()
                ))
            }
        }
        Cmd::PlanPods { file } => print_json(&plan::pod_plans(&load(file.as_deref())?)),
        Cmd::PlanNodes { file } => print_json(&plan::node_plans(&load(file.as_deref())?)),
        Cmd::PlanNode { node, file } => {
            let cluster = load(file.as_deref())?;
            let state =
                plan::node_state(&cluster, &Runtime::default(), &node, 0).ok_or_else(|| {
                    match cluster.node(&node) {
                        Some(_) => Failure::Other(format!(
                            "{node} is a kernel node: nothing is pushed to it"
                        )),
                        None => Failure::Other(format!("no node named {node:?}")),
                    }
                })?;
            print_json(&DataplaneStateView::from(state))
        }
        Cmd::Apply { file } => {
            let yaml = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Other(format!("cannot read {}: {e}", file.display())))?;
            let mut client = connect(&args.control).await?;
            let reply = match client.apply_cluster(ApplyClusterRequest { yaml }).await {
                Ok(reply) => reply.into_inner(),
                Err(status) if status.code() == Code::InvalidArgument => {
                    return Err(invalid(
                        &file.display().to_string(),
                        status.message().lines(),
                    ));
                }
                Err(status) => return Err(rpc_failure("apply", &status)),
            };
            let nodes: Vec<NodeView> = list_nodes(&mut client).await?;
            if json {
                #[derive(Serialize)]
                struct Applied {
                    generation: u64,
                    nodes: u32,
                    pods: u32,
                    node_status: Vec<NodeView>,
                }
                print_json(&Applied {
                    generation: reply.generation,
                    nodes: reply.nodes,
                    pods: reply.pods,
                    node_status: nodes,
                })
            } else {
                out(&format!(
                    "applied generation {}: {} nodes, {} pods\n{}",
                    reply.generation,
                    reply.nodes,
                    reply.pods,
                    view::nodes_table(&nodes)
                ))
            }
        }
        Cmd::Pod(PodCmd::Add {
            node,
            name,
            ip,
            mac,
            ifname,
            namespace,
            labels,
            ports,
        }) => {
            let request = AddPodRequest {
                node: node.clone(),
                name: name.clone(),
                ip,
                mac,
                ifname,
                namespace,
                labels: labels.into_iter().collect(),
                ports,
            };
            let reply = match connect(&args.control).await?.add_pod(request).await {
                Ok(reply) => reply.into_inner(),
                Err(status) if status.code() == Code::InvalidArgument => {
                    return Err(invalid_request("pod add", status.message()))
                }
                Err(status) => return Err(rpc_failure("pod add", &status)),
            };
            if json {
                print_json(&serde_json::json!({ "generation": reply.generation }))
            } else {
                out(&format!(
                    "pod {node}/{name} added: generation {}\n",
                    reply.generation
                ))
            }
        }
        Cmd::Pod(PodCmd::Del { node, name }) => {
            let request = DeletePodRequest {
                node: node.clone(),
                name: name.clone(),
            };
            let reply = rpc!(
                connect(&args.control).await?,
                "pod del",
                delete_pod(request)
            );
            if json {
                print_json(&serde_json::json!({
                    "generation": reply.generation,
                    "existed": reply.existed,
                }))
            } else if reply.existed {
                out(&format!(
                    "pod {node}/{name} deleted: generation {}\n",
                    reply.generation
                ))
            } else {
                out(&format!("pod {node}/{name} was not registered\n"))
            }
        }
        Cmd::Init { file, subnet_len } => {
            let cluster = load(Some(&file))?;
            let url = args
                .store
                .ok_or_else(|| Failure::Other("init needs --store https://host:port".into()))?;
            let access = kxdp_control::etcd::Access::new(&url, &args.etcd)
                .map_err(|e| Failure::Invalid(format!("kxdpctl: --store: {e:#}")))?;
            let config = kxdp_control::etcd::ClusterConfig::from_cluster(&cluster, subnet_len);
            let mut client = kxdp_control::etcd::connect(&access)
                .await
                .map_err(|e| Failure::Other(format!("{e:#}")))?;
            let (held, written) = kxdp_control::etcd::init_config(&mut client, &config)
                .await
                .map_err(|e| Failure::Other(format!("{e:#}")))?;
            let text = serde_json::to_string_pretty(&held).unwrap_or_default();
            match (written, held == config) {
                (true, _) => out(&format!("wrote the cluster config:\n{text}\n")),
                (false, true) => out(&format!(
                    "etcd already holds this cluster config:\n{text}\n"
                )),
                (false, false) => Err(Failure::Other(format!(
                    "etcd already holds a different cluster config (left as it is):\n{text}"
                ))),
            }
        }
        Cmd::Services => {
            let services = list_services(&mut connect(&args.control).await?).await?;
            show(json, &ServicesView { services }, |v| {
                view::services_table(&v.services)
            })
        }
        Cmd::Backends { service } => {
            let services = list_services(&mut connect(&args.control).await?).await?;
            let Some(s) = services.into_iter().find(|s| s.name == service) else {
                return Err(Failure::Other(format!("no service named {service:?}")));
            };
            show(json, &s, view::backends_text)
        }
        Cmd::Conntrack {
            node,
            service,
            limit,
        } => {
            let mut client = connect(&args.control).await?;
            let service = service.unwrap_or_default();
            let reply = conntrack_pages(&mut client, &node, &service, limit).await?;
            show(json, &ConntrackView::new(node, reply), view::conntrack_text)
        }
        Cmd::Service(ServiceCmd::Apply { file }) => {
            let name = file.display().to_string();
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Other(format!("cannot read {name}: {e}")))?;
            let service = RawService::from_yaml(&text)
                .and_then(|raw| raw.to_proto())
                .map_err(|p| {
                    let lines: Vec<String> = p.0.iter().map(|p| p.to_string()).collect();
                    invalid(&name, lines.iter().map(String::as_str))
                })?;
            let svc_name = service.name.clone();
            let request = UpsertServiceRequest {
                service: Some(service),
            };
            let reply = match connect(&args.control).await?.upsert_service(request).await {
                Ok(reply) => reply.into_inner(),
                Err(status) if status.code() == Code::InvalidArgument => {
                    return Err(invalid_request("service apply", status.message()))
                }
                Err(status) => return Err(rpc_failure("service apply", &status)),
            };
            if json {
                print_json(&serde_json::json!({ "generation": reply.generation }))
            } else {
                out(&format!(
                    "service {svc_name} applied: generation {}\n",
                    reply.generation
                ))
            }
        }
        Cmd::Service(ServiceCmd::Del { name }) => {
            let reply = rpc!(
                connect(&args.control).await?,
                "service del",
                delete_service(DeleteServiceRequest { name: name.clone() })
            );
            deleted(json, "service", &name, reply.generation, reply.existed)
        }
        Cmd::Nodes => {
            let nodes = list_nodes(&mut connect(&args.control).await?).await?;
            show(json, &NodesView { nodes }, |v| view::nodes_table(&v.nodes))
        }
        Cmd::Pods { node } => {
            let request = ListPodsRequest {
                node: node.unwrap_or_default(),
            };
            let reply = rpc!(
                connect(&args.control).await?,
                "list pods",
                list_pods(request)
            );
            let pods = reply.pods.into_iter().map(PodView::from).collect();
            show(json, &PodsView { pods }, |v| view::pods_table(&v.pods))
        }
        Cmd::Routes { node } => {
            let request = ListRoutesRequest {
                node: node.unwrap_or_default(),
            };
            let reply = rpc!(
                connect(&args.control).await?,
                "list routes",
                list_routes(request)
            );
            let routes = reply.routes.into_iter().map(RouteView::from).collect();
            show(json, &RoutesView { routes }, |v| {
                view::routes_table(&v.routes)
            })
        }
        Cmd::Policy {
            cmd: Some(PolicyCmd::Get),
            ..
        } => {
            let reply = rpc!(
                connect(&args.control).await?,
                "list network policies",
                list_network_policies(ListNetworkPoliciesRequest {})
            );
            let policies = reply
                .policies
                .into_iter()
                .map(NetworkPolicyView::from)
                .collect();
            show(json, &NetworkPoliciesView { policies }, |v| {
                view::network_policies_table(&v.policies)
            })
        }
        Cmd::Policy {
            cmd: Some(PolicyCmd::Apply { file }),
            ..
        } => {
            let (name, text) = read_input(&file)?;
            let policies = policy::policies_from_yaml(&text).map_err(|p| {
                let lines: Vec<String> = p.0.iter().map(|p| p.to_string()).collect();
                invalid_file("policy file", &name, lines.iter().map(String::as_str))
            })?;
            let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
            let request = UpsertNetworkPolicyRequest {
                policies: policies.iter().map(|p| p.to_proto()).collect(),
            };
            let reply = match connect(&args.control)
                .await?
                .upsert_network_policy(request)
                .await
            {
                Ok(reply) => reply.into_inner(),
                Err(status) if status.code() == Code::InvalidArgument => {
                    return Err(invalid_request("policy apply", status.message()))
                }
                Err(status) => return Err(rpc_failure("policy apply", &status)),
            };
            if json {
                print_json(&serde_json::json!({
                    "generation": reply.generation,
                    "policies": names,
                }))
            } else {
                out(&format!(
                    "network policies applied: {}: generation {}\n",
                    names.join(", "),
                    reply.generation
                ))
            }
        }
        Cmd::Policy {
            cmd: Some(PolicyCmd::Delete { name }),
            ..
        } => {
            let (namespace, short) = name.split_once('/').unwrap_or(("", &name));
            let request = DeleteNetworkPolicyRequest {
                namespace: namespace.to_string(),
                name: short.to_string(),
            };
            let reply = rpc!(
                connect(&args.control).await?,
                "policy delete",
                delete_network_policy(request)
            );
            deleted(
                json,
                "network policy",
                &name,
                reply.generation,
                reply.existed,
            )
        }
        Cmd::Namespace(NamespaceCmd::Set { name, labels }) => {
            let request = UpsertNamespaceRequest {
                namespace: Some(Namespace {
                    name: name.clone(),
                    labels: labels.into_iter().collect(),
                    source: String::new(),
                }),
            };
            let reply = match connect(&args.control)
                .await?
                .upsert_namespace(request)
                .await
            {
                Ok(reply) => reply.into_inner(),
                Err(status) if status.code() == Code::InvalidArgument => {
                    return Err(invalid_request("namespace set", status.message()))
                }
                Err(status) => return Err(rpc_failure("namespace set", &status)),
            };
            if json {
                print_json(&serde_json::json!({ "generation": reply.generation }))
            } else {
                out(&format!(
                    "namespace {name} set: generation {}\n",
                    reply.generation
                ))
            }
        }
        Cmd::Namespace(NamespaceCmd::Delete { name }) => {
            let reply = rpc!(
                connect(&args.control).await?,
                "namespace delete",
                delete_namespace(DeleteNamespaceRequest { name: name.clone() })
            );
            deleted(json, "namespace", &name, reply.generation, reply.existed)
        }
        Cmd::Namespace(NamespaceCmd::List) => {
            let reply = rpc!(
                connect(&args.control).await?,
                "list namespaces",
                list_namespaces(ListNamespacesRequest {})
            );
            let namespaces = reply
                .namespaces
                .into_iter()
                .map(NamespaceView::from)
                .collect();
            show(json, &NamespacesView { namespaces }, |v| {
                view::namespaces_table(&v.namespaces)
            })
        }
        Cmd::Policy {
            cmd: None | Some(PolicyCmd::Rules { node: None }),
            node,
        }
        | Cmd::Policy {
            cmd: Some(PolicyCmd::Rules { node }),
            ..
        } => {
            let request = ListPoliciesRequest {
                node: node.unwrap_or_default(),
            };
            let reply = rpc!(
                connect(&args.control).await?,
                "list policies",
                list_policies(request)
            );
            let pods = reply.pods.into_iter().map(PodPolicyView::from).collect();
            show(json, &PoliciesView { pods }, |v| {
                view::policies_text(&v.pods)
            })
        }
        Cmd::Explain { src, dst, port } => {
            let bad =
                || Failure::Invalid(format!("explain: {port:?} is not PORT/PROTO (e.g. 80/TCP)"));
            let (number, proto) = port.split_once('/').ok_or_else(bad)?;
            let protocol = match proto.to_ascii_uppercase().as_str() {
                "TCP" => kxdp_proto::dataplane::Protocol::Tcp,
                "UDP" => kxdp_proto::dataplane::Protocol::Udp,
                _ => return Err(bad()),
            };
            let request = ExplainPolicyRequest {
                src,
                dst,
                protocol: protocol as i32,
                port: number.parse().map_err(|_| bad())?,
            };
            let reply = match connect(&args.control).await?.explain_policy(request).await {
                Ok(reply) => reply.into_inner(),
                Err(status) if status.code() == Code::InvalidArgument => {
                    return Err(invalid_request("explain", status.message()))
                }
                Err(status) => return Err(rpc_failure("explain", &status)),
            };
            #[derive(Serialize)]
            struct Explained {
                allowed: bool,
                reasons: Vec<String>,
            }
            show(
                json,
                &Explained {
                    allowed: reply.allowed,
                    reasons: reply.reasons,
                },
                |e| {
                    let verdict = if e.allowed { "allowed" } else { "denied" };
                    format!("{verdict}\n  {}\n", e.reasons.join("\n  "))
                },
            )
        }
        Cmd::Trace {
            node,
            count,
            filter,
            timeout,
        } => {
            let request = WatchRequest {
                point: String::new(),
                filter: filter.clone(),
                count,
                timeout_ms: timeout.saturating_mul(1000),
            };
            let reply = watch(&args.control, &node, request).await?;
            if reply.records.is_empty() {
                return Err(nothing_matched("traced", &node, &filter, timeout));
            }
            show(json, &TraceView::new(node, reply), watch_view::trace_text)
        }
        Cmd::Capture {
            node,
            point,
            filter,
            file,
            count,
            timeout,
        } => {
            let point = match &point[..] {
                [p] if p != "port" => p.clone(),
                [port, name] if port == "port" => format!("port:{name}"),
                _ => {
                    return Err(Failure::Invalid(
                        "--point: expected rx, tx, drop or port IFNAME".into(),
                    ))
                }
            };
            let request = WatchRequest {
                point: point.clone(),
                filter: filter.clone(),
                count,
                timeout_ms: timeout.saturating_mul(1000),
            };
            let reply = watch(&args.control, &node, request).await?;
            let name = format!("kxdp {node} {point}");
            std::fs::File::create(&file)
                .and_then(|f| {
                    watch_view::write_pcapng(io::BufWriter::new(f), &name, &reply.records)
                })
                .map_err(|e| Failure::Other(format!("{}: {e}", file.display())))?;
            if reply.records.is_empty() {
                return Err(nothing_matched("captured", &node, &filter, timeout));
            }
            let mut text = format!(
                "{} frames written to {}{}\n",
                reply.records.len(),
                file.display(),
                if reply.timed_out {
                    " (timed out before --count)"
                } else {
                    ""
                }
            );
            for r in &reply.records {
                text += &format!("{}\n", watch_view::comment(r));
            }
            out(&text)
        }
        Cmd::Counters { node, all } => {
            let request = GetNodeCountersRequest { node: node.clone() };
            let reply = rpc!(
                connect(&args.control).await?,
                "counters",
                get_node_counters(request)
            );
            show(json, &CountersView::new(node, reply), |v| {
                view::counters_text(v, all)
            })
        }
    }
}

/// A node's `Watch` (trace or capture).
async fn watch(control: &Path, node: &str, request: WatchRequest) -> Result<WatchReply> {
    let request = WatchNodeRequest {
        node: node.into(),
        request: Some(request),
    };
    Ok(rpc!(connect(control).await?, "watch", watch(request)))
}

fn nothing_matched(what: &str, node: &str, filter: &str, timeout: u32) -> Failure {
    let filter = match filter {
        "" => "no filter".to_string(),
        f => format!("filter {f:?}"),
    };
    Failure::Other(format!(
        "nothing {what} on node {node} within {timeout} s ({filter}): no matching traffic?"
    ))
}

/// Reads and validates a cluster file; `None` is the embedded lab file.
fn load(file: Option<&Path>) -> Result<Cluster> {
    let (name, text) = match file {
        None => (
            "the embedded lab cluster file".to_string(),
            LAB_CLUSTER_YAML.to_string(),
        ),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Other(format!("cannot read {}: {e}", path.display())))?;
            (path.display().to_string(), text)
        }
    };
    Cluster::from_yaml(&text).map_err(|p: Problems| {
        let lines: Vec<String> = p.0.iter().map(|p| p.to_string()).collect();
        invalid(&name, lines.iter().map(String::as_str))
    })
}

/// What an idempotent delete says.
fn deleted(json: bool, what: &str, name: &str, generation: u64, existed: bool) -> Result<()> {
    if json {
        print_json(&serde_json::json!({
            "generation": generation,
            "existed": existed,
        }))
    } else if existed {
        out(&format!("{what} {name} deleted: generation {generation}\n"))
    } else {
        out(&format!("{what} {name} was not registered\n"))
    }
}

/// A file's text and the name to give it in messages; `-` is stdin.
fn read_input(file: &Path) -> Result<(String, String)> {
    if file == Path::new("-") {
        let mut text = String::new();
        io::Read::read_to_string(&mut io::stdin(), &mut text)
            .map_err(|e| Failure::Other(format!("cannot read stdin: {e}")))?;
        return Ok(("<stdin>".to_string(), text));
    }
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Other(format!("cannot read {name}: {e}")))?;
    Ok((name, text))
}

/// A request the control process refused as invalid: exit 2, one problem a line.
fn invalid_request(what: &str, message: &str) -> Failure {
    let mut msg = format!("{what}: invalid:");
    for line in message.lines() {
        msg.push_str("\n  ");
        msg.push_str(line);
    }
    Failure::Invalid(msg)
}

fn invalid<'a>(name: &str, problems: impl Iterator<Item = &'a str>) -> Failure {
    invalid_file("cluster file", name, problems)
}

/// An invalid input file (`kind`: "cluster file", "policy file"): exit 2,
/// one problem a line.
fn invalid_file<'a>(kind: &str, name: &str, problems: impl Iterator<Item = &'a str>) -> Failure {
    let lines: Vec<&str> = problems.collect();
    let mut msg = format!(
        "invalid {kind} {name} ({} problem{}):",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    );
    for line in lines {
        msg.push_str("\n  ");
        msg.push_str(line);
    }
    Failure::Invalid(msg)
}

async fn connect(socket: &Path) -> Result<ControlClient<Channel>> {
    match uds::connect(socket).await {
        Ok(channel) => Ok(ControlClient::new(channel)),
        Err(e) => {
            let io = uds::io_cause(&e);
            let cause = io.map_or_else(|| e.to_string(), |io| io.to_string());
            let hint = match io.map(io::Error::kind) {
                Some(io::ErrorKind::PermissionDenied) => "the socket is root-only: run kxdpctl as root",
                Some(io::ErrorKind::ConnectionRefused) => {
                    "the socket is stale: kxdp-control is not running (start it, or pass --control SOCK)"
                }
                _ => "is kxdp-control running? start it, or pass --control SOCK (or set KXDP_CONTROL_SOCKET)",
            };
            Err(Failure::Other(format!(
                "cannot reach kxdp-control at {}: {cause}\nhint: {hint}",
                socket.display()
            )))
        }
    }
}

/// Follows `ListConntrack`'s pages until `limit` entries (0: all) or the
/// last page: each page at most the API's page limit.
async fn conntrack_pages(
    client: &mut ControlClient<Channel>,
    node: &str,
    service: &str,
    limit: u32,
) -> Result<ListConntrackReply> {
    let page_max = kxdp_proto::limits::MAX_CONNTRACK_PAGE as u32;
    let mut out = ListConntrackReply::default();
    let mut page_token = String::new();
    loop {
        let room = match limit {
            0 => page_max,
            n => (n - out.entries.len() as u32).min(page_max),
        };
        let request = ListNodeConntrackRequest {
            node: node.to_string(),
            service: service.to_string(),
            limit: room,
            page_token,
        };
        let page = rpc!(client, "conntrack", list_conntrack(request));
        out.total = page.total;
        out.entries.extend(page.entries);
        page_token = page.next_page_token;
        if page_token.is_empty() || (limit != 0 && out.entries.len() >= limit as usize) {
            return Ok(out);
        }
    }
}

async fn list_services(client: &mut ControlClient<Channel>) -> Result<Vec<ServiceView>> {
    Ok(rpc!(
        client,
        "list services",
        list_services(ListServicesRequest {})
    )
    .services
    .into_iter()
    .map(ServiceView::from)
    .collect())
}

async fn list_nodes(client: &mut ControlClient<Channel>) -> Result<Vec<NodeView>> {
    Ok(rpc!(client, "list nodes", list_nodes(ListNodesRequest {}))
        .nodes
        .into_iter()
        .map(NodeView::from)
        .collect())
}

fn rpc_failure(what: &str, status: &Status) -> Failure {
    Failure::Other(format!(
        "{what}: {}: {}",
        code_name(status.code()),
        status.message()
    ))
}

/// Prints `view` as JSON with --json, else as `text` renders it.
fn show<V: Serialize>(json: bool, view: &V, text: impl FnOnce(&V) -> String) -> Result<()> {
    if json {
        print_json(view)
    } else {
        out(&text(view))
    }
}

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Failure::Other(format!("JSON: {e}")))?;
    out(&format!("{text}\n"))
}

/// Writes to stdout; a closed pipe (`kxdpctl pods | head`) is not an error.
fn out(text: &str) -> Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::Other(format!("stdout: {e}"))),
    }
}

/// `--label KEY=VALUE` (the control process checks the key and value).
fn parse_label(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// `--port NAME:PROTO:PORT`.
fn parse_container_port(s: &str) -> std::result::Result<ContainerPort, String> {
    let bad = || format!("{s:?} is not NAME:PROTOCOL:PORT (e.g. http:TCP:8080)");
    let mut it = s.splitn(3, ':');
    let (Some(name), Some(proto), Some(port)) = (it.next(), it.next(), it.next()) else {
        return Err(bad());
    };
    let protocol = match proto {
        "TCP" | "tcp" => kxdp_proto::dataplane::Protocol::Tcp,
        "UDP" | "udp" => kxdp_proto::dataplane::Protocol::Udp,
        _ => return Err(format!("{proto:?} is not a protocol (TCP or UDP)")),
    };
    Ok(ContainerPort {
        name: name.to_string(),
        protocol: protocol as i32,
        port: port.parse().map_err(|_| bad())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_argument_has_help() {
        assert_eq!(
            kxdp_proto::cli::undocumented(&Args::command()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir = std::env::temp_dir().join(format!("kxdpctl-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        kxdp_proto::cli::man_pages(Args::command(), &dir).unwrap();
        let page = std::fs::read_to_string(dir.join("kxdpctl-counters.1")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(page.contains("The node whose dataplane to read"), "{page}");
    }
}
