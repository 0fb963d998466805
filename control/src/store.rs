//! Where the desired state lives, and how the Control API's writes reach it.
//!
//! One trait, [`DesiredStore`], two stores behind it:
//! - [`FileStore`]: a cluster file (`--cluster`, or the lab's with `--lab`)
//!   held in this process; `ApplyCluster` replaces it, and the pods,
//!   services, network policies and namespace labels registered at run time
//!   are kept beside it ([`crate::runtime`]); each
//!   change is written to the state file first ([`crate::state_file`]).
//! - [`crate::etcd::Store`] (`--store`): writes go to etcd and come back
//!   through its watch, for every node's control process to see.
//!
//! The gRPC handlers ([`crate::api`]) call the trait and never ask which
//! store they have; [`open`] is the one place that does.

use std::path::Path;
use std::sync::Arc;

use kxdp_proto::control::{AddPodRequest, Namespace, NetworkPolicy};
use kxdp_proto::dataplane as pb;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::cli::Args;
use crate::cluster::{Cluster, LAB_CLUSTER_YAML};
use crate::daemon::Config;
use crate::etcd::{self, EtcdConfig, Registration};
use crate::reconcile::{Edit, Shared};
use crate::runtime::{self, PodCheck, Runtime};
use crate::state_file::{Restored, StateFile};
use crate::validate::{self, Problems};

/// The Control API's writes. Each returns the desired generation that holds
/// its result; the caller waits for the dataplanes concerned.
#[tonic::async_trait]
pub trait DesiredStore: Send + Sync {
    /// `AddPod` (a retry of the same pod changes nothing).
    async fn add_pod(&self, req: &AddPodRequest) -> Result<u64, Status>;
    /// `DeletePod`: the generation, and whether the pod existed.
    async fn delete_pod(&self, node: &str, name: &str) -> Result<(u64, bool), Status>;
    /// `UpsertService`.
    async fn upsert_service(&self, service: &pb::Service) -> Result<u64, Status>;
    /// `DeleteService`: the generation, and whether the service existed.
    async fn delete_service(&self, name: &str) -> Result<(u64, bool), Status>;
    /// `UpsertNetworkPolicy`: all of `policies`, or none.
    async fn upsert_policies(&self, policies: &[NetworkPolicy]) -> Result<u64, Status>;
    /// `DeleteNetworkPolicy` of "namespace/name": the generation, and
    /// whether the policy existed.
    async fn delete_policy(&self, name: &str) -> Result<(u64, bool), Status>;
    /// `UpsertNamespace`.
    async fn upsert_namespace(&self, namespace: &Namespace) -> Result<u64, Status>;
    /// `DeleteNamespace`: the generation, and whether it existed.
    async fn delete_namespace(&self, name: &str) -> Result<(u64, bool), Status>;
    /// `ApplyCluster`: a whole cluster file in place of the current one.
    async fn apply_cluster(&self, yaml: &str) -> Result<Applied, Status>;
}

/// What an `ApplyCluster` made the desired state.
pub struct Applied {
    pub generation: u64,
    pub nodes: u32,
    pub pods: u32,
    /// The file's kxdp nodes: the ones the reply waits for.
    pub kxdp: Vec<String>,
}

/// Where the desired state comes from, as `kxdp-control`'s flags say.
#[derive(Debug)]
pub enum Source {
    /// A cluster file, valid for the daemon's `dataplane_dir`
    /// (`Cluster::check_sockets`), held in memory only: nothing survives
    /// the process (tests).
    File(Cluster),
    /// A cluster file with what its state file restored: every change is
    /// written there before it is made (what `kxdp-control` runs).
    Durable(Restored),
    /// Etcd: this node registers itself and programs only its own dataplane.
    Etcd(EtcdConfig),
}

impl Source {
    /// The source `args` names, read and checked (and logged); the error is
    /// the message for a bad-flags exit. `args` passed [`Args::check`].
    pub fn from_args(args: &Args) -> Result<Source, String> {
        match &args.store {
            Some(url) => {
                let source = etcd_source(args, url)?;
                log::info!("store: {url}");
                Ok(source)
            }
            None => {
                let (origin, text, cluster) =
                    cluster_file(args.cluster.as_deref(), &args.dataplane_dir)?;
                log::info!("cluster file: {origin}");
                let restored =
                    StateFile::load(&args.state_file, &text, cluster, &args.dataplane_dir)?;
                Ok(Source::Durable(restored))
            }
        }
    }
}

/// The cluster file at `path`, or the lab's without one (`--lab`), with
/// where it came from and its text.
fn cluster_file(
    path: Option<&Path>,
    dataplane_dir: &Path,
) -> Result<(String, String, Cluster), String> {
    let (origin, text) = match path {
        None => (
            "the built-in lab cluster file (--lab)".to_string(),
            LAB_CLUSTER_YAML.to_string(),
        ),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (path.display().to_string(), text),
            Err(e) => {
                return Err(format!(
                    "cannot read the cluster file {}: {e}",
                    path.display()
                ))
            }
        },
    };
    match Cluster::from_yaml(&text).and_then(|c| c.check_sockets(dataplane_dir).map(|()| c)) {
        Ok(cluster) => Ok((origin, text, cluster)),
        Err(problems) => {
            let mut message = format!(
                "invalid cluster file {origin} ({} problems):",
                problems.0.len()
            );
            for p in &problems.0 {
                message.push_str(&format!("\n  {p}"));
            }
            Err(message)
        }
    }
}

fn etcd_source(args: &Args, url: &str) -> Result<Source, String> {
    let access = etcd::Access::new(url, &args.etcd).map_err(|e| format!("--store: {e:#}"))?;
    let name = args.node.clone().unwrap_or_default();
    if !validate::is_dns_label(&name) {
        return Err(format!("--node {name:?} is not a DNS label"));
    }
    let bootstrap = match &args.cluster {
        None => None,
        Some(path) => {
            let cluster = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| Cluster::from_yaml(&t).map_err(|p| p.to_string()))
                .map_err(|e| format!("invalid cluster file {}:\n{e}", path.display()))?;
            Some(etcd::ClusterConfig::from_cluster(&cluster, args.subnet_len))
        }
    };
    Ok(Source::Etcd(EtcdConfig {
        access,
        node: Registration {
            name,
            underlay_ip: args.underlay_ip.expect("clap requires it"),
            uplink: args.uplink.clone().expect("clap requires it"),
            vtep_mac: args.vtep_mac,
            lease_ttl_s: args.lease_ttl_s,
            reservation_ttl_s: args.subnet_reservation_ttl_s,
        },
        bootstrap,
    }))
}

/// A store, opened: the desired state it feeds, the store the API writes
/// to, and the tasks that keep it (etcd mode: lease keeper, watch follower),
/// aborted when the daemon stops.
pub struct Opened {
    pub shared: Arc<Shared>,
    pub store: Arc<dyn DesiredStore>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Opens the store `source` names.
pub async fn open(source: Source, config: &Config) -> anyhow::Result<Opened> {
    match source {
        Source::File(cluster) => Ok(FileStore::open(cluster, config)),
        Source::Durable(restored) => Ok(FileStore::restore(restored, config)),
        Source::Etcd(etcd) => etcd::Store::join(etcd, config).await,
    }
}

/// A cluster file's desired state, held in this process.
pub struct FileStore {
    shared: Arc<Shared>,
}

impl FileStore {
    /// Starts at `cluster`, which must be valid for `config.dataplane_dir`;
    /// keeps nothing on disk.
    pub fn open(cluster: Cluster, config: &Config) -> Opened {
        FileStore::opened(Shared::new(
            cluster,
            config.dataplane_dir.clone(),
            config.resync_interval,
        ))
    }

    /// Starts at what a state file restored, and writes every change there.
    pub fn restore(restored: Restored, config: &Config) -> Opened {
        FileStore::opened(Shared::restored(
            restored,
            config.dataplane_dir.clone(),
            config.resync_interval,
        ))
    }

    fn opened(shared: Arc<Shared>) -> Opened {
        let desired = shared.current();
        log::info!(
            "generation {}: {} nodes ({} kxdp), {} pods ({} run-time), {} run-time services, {} run-time network policies",
            desired.generation,
            desired.cluster.nodes.len(),
            desired.states.len(),
            desired.cluster.pods.len() + desired.runtime.pods.len(),
            desired.runtime.pods.len(),
            desired.runtime.services.len(),
            desired.runtime.policies.len()
        );
        Opened {
            store: Arc::new(FileStore {
                shared: shared.clone(),
            }),
            shared,
            tasks: Vec::new(),
        }
    }
}

impl FileStore {
    /// Deletes the run-time object `what` ("service default/web"):
    /// `remove` takes it out of a copy of the run-time set (true if it was
    /// there); one the cluster file holds (`in_file`) is refused.
    fn delete_runtime(
        &self,
        what: &str,
        remove: impl FnOnce(&mut Runtime) -> bool,
        in_file: impl FnOnce(&Cluster) -> bool,
    ) -> Result<(u64, bool), Status> {
        let (generation, existed) = self.shared.edit_runtime(|cluster, runtime| {
            let mut next = runtime.clone();
            if remove(&mut next) {
                return Ok(Edit::Changed(next, true));
            }
            if in_file(cluster) {
                return Err(Status::failed_precondition(format!(
                    "{what} comes from the cluster file: remove it there and apply the file"
                )));
            }
            Ok(Edit::Unchanged(false))
        })?;
        if existed {
            log::info!("{what} deleted: generation {generation}");
        }
        Ok((generation, existed))
    }
}

#[tonic::async_trait]
impl DesiredStore for FileStore {
    async fn add_pod(&self, req: &AddPodRequest) -> Result<u64, Status> {
        let (generation, new) =
            self.shared
                .edit_runtime(|cluster, runtime| -> Result<_, Problems> {
                    match runtime::check_add(cluster, runtime, req)? {
                        PodCheck::Same(_) => Ok(Edit::Unchanged(false)),
                        PodCheck::New(pod) => {
                            let mut next = runtime.clone();
                            next.pods.insert((pod.node.clone(), pod.name.clone()), pod);
                            Ok(Edit::Changed(next, true))
                        }
                    }
                })?;
        if new {
            log::info!(
                "pod {}/{} ({}) added: generation {generation}",
                req.node,
                req.name,
                req.ip
            );
        }
        Ok(generation)
    }

    async fn delete_pod(&self, node: &str, name: &str) -> Result<(u64, bool), Status> {
        self.delete_runtime(
            &format!("pod {node}/{name}"),
            |rt| {
                rt.pods
                    .remove(&(node.to_string(), name.to_string()))
                    .is_some()
            },
            |c| c.pods.iter().any(|p| p.node == node && p.name == name),
        )
    }

    async fn upsert_service(&self, proto: &pb::Service) -> Result<u64, Status> {
        let (generation, name) =
            self.shared
                .edit_runtime(|cluster, runtime| -> Result<_, Problems> {
                    let service = runtime::check_service(cluster, runtime, proto)?;
                    let name = service.name.clone();
                    if runtime.services.get(&name) == Some(&service) {
                        return Ok(Edit::Unchanged(name));
                    }
                    let mut next = runtime.clone();
                    next.services.insert(name.clone(), service);
                    Ok(Edit::Changed(next, name))
                })?;
        log::info!("service {name} upserted: generation {generation}");
        Ok(generation)
    }

    async fn delete_service(&self, name: &str) -> Result<(u64, bool), Status> {
        self.delete_runtime(
            &format!("service {name}"),
            |rt| rt.services.remove(name).is_some(),
            |c| c.service(name).is_some(),
        )
    }

    async fn upsert_policies(&self, protos: &[NetworkPolicy]) -> Result<u64, Status> {
        let (generation, names) =
            self.shared
                .edit_runtime(|cluster, runtime| -> Result<_, Problems> {
                    let policies = runtime::check_policies(cluster, runtime, protos)?;
                    let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
                    if policies
                        .iter()
                        .all(|p| runtime.policies.get(&p.name) == Some(p))
                    {
                        return Ok(Edit::Unchanged(names));
                    }
                    let mut next = runtime.clone();
                    next.policies
                        .extend(policies.into_iter().map(|p| (p.name.clone(), p)));
                    Ok(Edit::Changed(next, names))
                })?;
        log::info!(
            "network policies {} upserted: generation {generation}",
            names.join(", ")
        );
        Ok(generation)
    }

    async fn delete_policy(&self, name: &str) -> Result<(u64, bool), Status> {
        self.delete_runtime(
            &format!("network policy {name}"),
            |rt| rt.policies.remove(name).is_some(),
            |c| c.policies.iter().any(|p| p.name == name),
        )
    }

    async fn upsert_namespace(&self, proto: &Namespace) -> Result<u64, Status> {
        let (generation, name) =
            self.shared
                .edit_runtime(|cluster, runtime| -> Result<_, Problems> {
                    let ns = runtime::check_namespace(cluster, runtime, proto)?;
                    let name = ns.name.clone();
                    if runtime.namespaces.get(&name) == Some(&ns) {
                        return Ok(Edit::Unchanged(name));
                    }
                    let mut next = runtime.clone();
                    next.namespaces.insert(name.clone(), ns);
                    Ok(Edit::Changed(next, name))
                })?;
        log::info!("namespace {name} upserted: generation {generation}");
        Ok(generation)
    }

    async fn delete_namespace(&self, name: &str) -> Result<(u64, bool), Status> {
        self.delete_runtime(
            &format!("namespace {name}"),
            |rt| rt.namespaces.remove(name).is_some(),
            |c| c.namespaces.iter().any(|n| n.name == name),
        )
    }

    async fn apply_cluster(&self, yaml: &str) -> Result<Applied, Status> {
        let cluster = Cluster::from_yaml(yaml)?;
        cluster.check_sockets(&self.shared.dataplane_dir)?;
        let (nodes, pods) = (cluster.nodes.len() as u32, cluster.pods.len() as u32);
        let kxdp = cluster
            .nodes
            .iter()
            .filter(|n| n.is_kxdp())
            .map(|n| n.name.clone())
            .collect();
        let generation = self.shared.set_cluster(cluster, yaml)?;
        log::info!("applied cluster file: generation {generation}, {nodes} nodes, {pods} pods");
        Ok(Applied {
            generation,
            nodes,
            pods,
            kxdp,
        })
    }
}
