//! The push loop: one reconciler task per kxdp node keeps that node's
//! dataplane at the desired state.
//!
//! Every resync interval (or at once when the desired state changes) a
//! reconciler reads the dataplane's state with `GetState` and sends the full
//! desired state with `Sync` when
//! - this is the first contact since the control process started,
//! - the dataplane's `boot_id` changed (it restarted and lost its state), or
//! - its generation differs from the desired one (an apply, or a foreign write).
//!
//! So a restarted dataplane is pushed again without being asked, and a
//! restarted control process pushes once. A supervisor task starts and stops
//! reconcilers as applies add and remove kxdp nodes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kxdp_proto::dataplane::dataplane_client::DataplaneClient;
use kxdp_proto::dataplane::{DataplaneState, GetStateRequest, PodStatus, SyncRequest};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cluster::Cluster;
use crate::metrics::{StoreHealth, SyncMetrics};
use crate::plan;
use crate::runtime::Runtime;
use crate::state_file::{Restored, StateFile};
use crate::uds;

/// A dataplane that does not answer a read within this is unreachable.
pub const GET_STATE_TIMEOUT: Duration = Duration::from_secs(3);
/// A Sync may re-attach the uplink and waits for every worker: allow more.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(8);

/// The desired state of the whole cluster at one generation.
#[derive(Debug)]
pub struct Desired {
    pub generation: u64,
    pub cluster: Arc<Cluster>,
    /// Pods registered at run time, beside the file's (see [`crate::runtime`]).
    pub runtime: Arc<Runtime>,
    /// What each kxdp node's dataplane must hold, by node name.
    pub states: BTreeMap<String, DataplaneState>,
}

impl Desired {
    pub fn new(cluster: Cluster, generation: u64) -> Desired {
        Desired::with(
            Arc::new(cluster),
            Arc::new(Runtime::default()),
            generation,
            None,
        )
    }

    /// `scope`: only this node's dataplane is ours to program (etcd mode,
    /// where each node runs its own control process); `None`: every kxdp node.
    pub fn with(
        cluster: Arc<Cluster>,
        runtime: Arc<Runtime>,
        generation: u64,
        scope: Option<&str>,
    ) -> Desired {
        let mut states = plan::all_node_states(&cluster, &runtime, generation);
        if let Some(me) = scope {
            states.retain(|name, _| name == me);
        }
        Desired {
            generation,
            cluster,
            runtime,
            states,
        }
    }
}

/// What a run-time edit does to the desired state.
pub enum Edit<T> {
    /// Nothing changes (e.g. an idempotent retry); the generation stays.
    Unchanged(T),
    /// The run-time set becomes this one, at a new generation.
    Changed(Runtime, T),
}

/// The next desired generation: above the previous one and at least the
/// current unix time in milliseconds, so generations keep growing across
/// control restarts (a dataplane's `Update` requires a greater one).
pub fn next_generation(previous: u64) -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now_ms.max(previous + 1)
}

/// Where a node's reconciler stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Not contacted yet.
    #[default]
    Pending,
    /// The last attempt could not reach the dataplane.
    Unreachable(String),
    /// A Sync is in flight.
    Syncing,
    /// The dataplane holds the desired generation.
    Synced,
    /// The dataplane answered but refused the state (a bug, or a version mismatch).
    Failed(String),
}

impl Phase {
    /// The `NodeInfo.status` word.
    pub fn word(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Unreachable(_) => "unreachable",
            Phase::Syncing => "syncing",
            Phase::Synced => "synced",
            Phase::Failed(_) => "failed",
        }
    }

    /// The word plus the error, for messages.
    pub fn describe(&self) -> String {
        match self {
            Phase::Unreachable(e) | Phase::Failed(e) => format!("{}: {e}", self.word()),
            other => other.word().to_string(),
        }
    }
}

/// A kxdp node as its reconciler last saw it.
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    pub phase: Phase,
    /// The dataplane's generation as last read or written; 0 if never.
    pub applied_generation: u64,
    /// The desired generation of the last finished attempt.
    pub attempted_generation: u64,
    pub boot_id: String,
    /// Per-pod attach status from the last `GetState`.
    pub pods: Vec<PodStatus>,
    /// Since when the dataplane has not held the desired generation (from
    /// the reconciler's start); `None` while in sync.
    pub behind_since: Option<Instant>,
    /// When it was last found or made in sync.
    pub last_synced: Option<SystemTime>,
}

pub type StatusMap = BTreeMap<String, NodeStatus>;

/// What the API and the reconcilers share.
pub struct Shared {
    pub desired: watch::Sender<Arc<Desired>>,
    pub status: watch::Sender<StatusMap>,
    pub dataplane_dir: PathBuf,
    pub resync_interval: Duration,
    /// The one node this process programs (etcd mode); `None`: all kxdp nodes.
    pub scope: Option<String>,
    /// The reconcilers' sync counts and durations (`/metrics`).
    pub sync_metrics: SyncMetrics,
    /// The etcd store's watch and lease, as its tasks last saw them.
    pub store_health: StoreHealth,
    /// File mode's state file: every change is written there first.
    pub state: Option<StateFile>,
}

impl Shared {
    pub fn new(cluster: Cluster, dataplane_dir: PathBuf, resync_interval: Duration) -> Arc<Shared> {
        Shared::scoped(cluster, dataplane_dir, resync_interval, None)
    }

    pub fn scoped(
        cluster: Cluster,
        dataplane_dir: PathBuf,
        resync_interval: Duration,
        scope: Option<String>,
    ) -> Arc<Shared> {
        Shared::build(
            cluster,
            Runtime::default(),
            dataplane_dir,
            resync_interval,
            scope,
            None,
        )
    }

    /// File mode with a state file: starts at what it restored, and writes
    /// every later change to it before making it.
    pub fn restored(
        restored: Restored,
        dataplane_dir: PathBuf,
        resync_interval: Duration,
    ) -> Arc<Shared> {
        let Restored {
            state,
            cluster,
            runtime,
        } = restored;
        Shared::build(
            cluster,
            runtime,
            dataplane_dir,
            resync_interval,
            None,
            Some(state),
        )
    }

    fn build(
        cluster: Cluster,
        runtime: Runtime,
        dataplane_dir: PathBuf,
        resync_interval: Duration,
        scope: Option<String>,
        state: Option<StateFile>,
    ) -> Arc<Shared> {
        let desired = Desired::with(
            Arc::new(cluster),
            Arc::new(runtime),
            next_generation(0),
            scope.as_deref(),
        );
        Arc::new(Shared {
            desired: watch::Sender::new(Arc::new(desired)),
            status: watch::Sender::new(StatusMap::new()),
            dataplane_dir,
            resync_interval,
            scope,
            sync_metrics: SyncMetrics::default(),
            store_health: StoreHealth::default(),
            state,
        })
    }

    /// Records `runtime` (and a newly applied cluster file) in the state
    /// file, if there is one.
    fn persist(&self, applied: Option<&str>, runtime: &Runtime) -> Result<(), Status> {
        match &self.state {
            Some(state) => state.save(applied, runtime),
            None => Ok(()),
        }
    }

    /// Replaces the whole desired state (etcd mode: what the store holds);
    /// the generation moves only when something changed. Returns the
    /// generation that holds it.
    pub fn replace(&self, cluster: Cluster, runtime: Runtime) -> u64 {
        let mut generation = 0;
        self.desired.send_if_modified(|d| {
            if *d.cluster == cluster && *d.runtime == runtime {
                generation = d.generation;
                return false;
            }
            generation = next_generation(d.generation);
            *d = Arc::new(Desired::with(
                Arc::new(cluster),
                Arc::new(runtime),
                generation,
                self.scope.as_deref(),
            ));
            log_desired(d, "store");
            true
        });
        generation
    }

    /// Makes `cluster` (the file `yaml`) the desired state of every node at
    /// once, keeping the run-time pods that fit it (see [`Runtime::refit`]);
    /// returns the new generation. Wakes every reconciler. Nothing changes
    /// on error (a refit problem, or a state file that cannot be written).
    pub fn set_cluster(&self, cluster: Cluster, yaml: &str) -> Result<u64, Status> {
        let mut result = Ok(0);
        self.desired.send_if_modified(|d| {
            match d
                .runtime
                .refit(&cluster)
                .map_err(Status::from)
                .and_then(|fit| {
                    self.persist(Some(yaml), &fit.0)?;
                    Ok(fit)
                }) {
                Ok((runtime, dropped)) => {
                    for (node, name) in dropped {
                        tracing::info!(event = "runtime_pod_removed", node = %node, pod = %name,
                            "run-time pod {node}/{name} removed with its node");
                    }
                    let generation = next_generation(d.generation);
                    *d = Arc::new(Desired::with(
                        Arc::new(cluster),
                        Arc::new(runtime),
                        generation,
                        self.scope.as_deref(),
                    ));
                    log_desired(d, "apply");
                    result = Ok(generation);
                    true
                }
                Err(e) => {
                    result = Err(e);
                    false
                }
            }
        });
        result
    }

    /// Applies `edit` to the run-time set atomically (validation and change
    /// under one lock, so two concurrent edits cannot both pass a uniqueness
    /// check); returns the generation that holds the result, new or current.
    /// The change is written to the state file first, if there is one.
    pub fn edit_runtime<T, E: Into<Status>>(
        &self,
        edit: impl FnOnce(&Cluster, &Runtime) -> Result<Edit<T>, E>,
    ) -> Result<(u64, T), Status> {
        let mut result = None;
        self.desired
            .send_if_modified(|d| match edit(&d.cluster, &d.runtime) {
                Ok(Edit::Unchanged(v)) => {
                    result = Some(Ok((d.generation, v)));
                    false
                }
                Ok(Edit::Changed(runtime, v)) => {
                    if let Err(e) = self.persist(None, &runtime) {
                        result = Some(Err(e));
                        return false;
                    }
                    let generation = next_generation(d.generation);
                    *d = Arc::new(Desired::with(
                        d.cluster.clone(),
                        Arc::new(runtime),
                        generation,
                        self.scope.as_deref(),
                    ));
                    log_desired(d, "runtime");
                    result = Some(Ok((generation, v)));
                    true
                }
                Err(e) => {
                    result = Some(Err(e.into()));
                    false
                }
            });
        result.expect("the edit ran")
    }

    pub fn current(&self) -> Arc<Desired> {
        self.desired.borrow().clone()
    }
}

/// Runs until aborted: keeps one reconciler per kxdp node of the desired
/// state. Aborting it aborts the reconcilers too.
pub async fn supervise(shared: Arc<Shared>) {
    let mut tasks = JoinSet::new();
    let mut running: HashMap<String, AbortHandle> = HashMap::new();
    let mut desired_rx = shared.desired.subscribe();
    loop {
        let desired = desired_rx.borrow_and_update().clone();
        running.retain(|name, task| {
            if desired.states.contains_key(name) {
                return true;
            }
            // Its dataplane keeps the last state it was given.
            log::info!("{name}: no longer a kxdp node; stopping its reconciler");
            task.abort();
            shared.status.send_modify(|m| {
                m.remove(name);
            });
            false
        });
        for name in desired.states.keys() {
            if running.contains_key(name) {
                continue;
            }
            shared.status.send_modify(|m| {
                let status = NodeStatus {
                    behind_since: Some(Instant::now()),
                    ..NodeStatus::default()
                };
                m.insert(name.clone(), status);
            });
            let reconciler = NodeReconciler::new(name.clone(), shared.clone());
            running.insert(name.clone(), tasks.spawn(reconciler.run()));
        }
        while tasks.try_join_next().is_some() {}
        if desired_rx.changed().await.is_err() {
            return;
        }
    }
}

enum PassError {
    Unreachable(String),
    Failed(String),
}

impl PassError {
    fn from_status(what: &str, status: &Status) -> PassError {
        let text = format!("{what}: {}: {}", code_name(status.code()), status.message());
        // Transport-level trouble means "not there (any more)"; anything else
        // is an answer, and a refusal.
        match status.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
                PassError::Unreachable(text)
            }
            _ => PassError::Failed(text),
        }
    }

    fn phase(self) -> Phase {
        match self {
            PassError::Unreachable(e) => Phase::Unreachable(e),
            PassError::Failed(e) => Phase::Failed(e),
        }
    }
}

/// The gRPC status code as the proto spells it, e.g. `INVALID_ARGUMENT`.
pub fn code_name(code: Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

struct NodeReconciler {
    name: String,
    shared: Arc<Shared>,
    client: Option<(PathBuf, DataplaneClient<Channel>)>,
    /// The boot_id of the dataplane we last synced or found in sync.
    last_boot: Option<String>,
    /// The last phase logged, by word, so each transition logs once.
    logged: &'static str,
}

impl NodeReconciler {
    fn new(name: String, shared: Arc<Shared>) -> NodeReconciler {
        NodeReconciler {
            name,
            shared,
            client: None,
            last_boot: None,
            logged: Phase::Pending.word(),
        }
    }

    async fn run(mut self) {
        let mut desired_rx = self.shared.desired.subscribe();
        loop {
            let desired = desired_rx.borrow_and_update().clone();
            if let (Some(state), Some(node)) = (
                desired.states.get(&self.name),
                desired.cluster.node(&self.name),
            ) {
                let socket = node.socket_path(&self.shared.dataplane_dir);
                let phase = match self.pass(&socket, state).await {
                    Ok(()) => Phase::Synced,
                    Err(e) => {
                        if matches!(e, PassError::Unreachable(_)) {
                            self.client = None;
                        }
                        e.phase()
                    }
                };
                self.log_transition(&socket, &phase);
                self.update(|s| {
                    let synced = phase == Phase::Synced;
                    s.behind_since = crate::metrics::behind(s.behind_since, synced);
                    if synced {
                        s.last_synced = Some(SystemTime::now());
                    }
                    s.phase = phase;
                    s.attempted_generation = desired.generation;
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(self.shared.resync_interval) => {}
                changed = desired_rx.changed() => if changed.is_err() { return },
            }
        }
    }

    /// One look at the dataplane, and a Sync if it needs one.
    async fn pass(&mut self, socket: &Path, state: &DataplaneState) -> Result<(), PassError> {
        let generation = state.generation;
        let reply = self.get_state(socket).await?;
        let boot_id = reply.boot_id.clone();
        let held = reply.state.as_ref().map_or(0, |s| s.generation);
        self.record_reply(reply);

        let reason = match &self.last_boot {
            None => "first contact".to_string(),
            Some(b) if *b != boot_id => format!("dataplane restarted (boot_id {b} -> {boot_id})"),
            Some(_) if held != generation => format!("it holds generation {held}"),
            Some(_) => return Ok(()),
        };
        // A dataplane that keeps refusing is retried every pass; say so once.
        let event = if self.last_boot.is_none() {
            "sync"
        } else {
            "resync"
        };
        if self.logged == Phase::Failed(String::new()).word() {
            tracing::debug!(event, node = %self.name, generation, reason = %reason,
                "{}: syncing generation {generation} ({reason})", self.name);
        } else {
            tracing::info!(event, node = %self.name, generation, reason = %reason,
                "{}: syncing generation {generation} ({reason})", self.name);
        }
        self.update(|s| s.phase = Phase::Syncing);
        let client = self.client(socket).await?;
        let request = SyncRequest {
            state: Some(state.clone()),
        };
        let started = Instant::now();
        let reply = tokio::time::timeout(SYNC_TIMEOUT, client.sync(request)).await;
        let result = match &reply {
            Ok(Ok(_)) => "ok",
            Ok(Err(status)) => match PassError::from_status("Sync", status) {
                PassError::Unreachable(_) => "unreachable",
                PassError::Failed(_) => "refused",
            },
            Err(_) => "unreachable",
        };
        let metrics = &self.shared.sync_metrics;
        metrics.sync_done(&self.name, result, started.elapsed());
        let written = match reply {
            Ok(Ok(reply)) => reply.into_inner().generation,
            Ok(Err(status)) => return Err(PassError::from_status("Sync", &status)),
            Err(_) => {
                return Err(PassError::Unreachable(format!(
                    "Sync: no reply within {SYNC_TIMEOUT:?}"
                )))
            }
        };
        tracing::info!(event = "synced", node = %self.name, generation = written,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "{}: generation {written} applied", self.name);
        self.last_boot = Some(boot_id);
        self.update(|s| s.applied_generation = written);
        // Refresh the pods' attach status right away, so a listing just after
        // an apply shows the new pods; best effort.
        if let Ok(reply) = self.get_state(socket).await {
            self.record_reply(reply);
        }
        Ok(())
    }

    async fn client(&mut self, socket: &Path) -> Result<&mut DataplaneClient<Channel>, PassError> {
        if self.client.as_ref().is_some_and(|(path, _)| path != socket) {
            self.client = None;
        }
        if self.client.is_none() {
            let channel = uds::connect(socket).await.map_err(|e| {
                let cause = uds::io_cause(&e).map_or_else(|| e.to_string(), |io| io.to_string());
                PassError::Unreachable(format!("connect: {cause}"))
            })?;
            let client = DataplaneClient::new(channel)
                .max_decoding_message_size(kxdp_proto::MAX_MESSAGE_SIZE)
                .max_encoding_message_size(kxdp_proto::MAX_MESSAGE_SIZE);
            self.client = Some((socket.to_path_buf(), client));
        }
        Ok(&mut self.client.as_mut().expect("just connected").1)
    }

    /// Reads the dataplane's state. A cached connection that fails is retried
    /// once on a fresh one: after a dataplane restart the old connection is
    /// dead but the new process is there, which is no reason to report it
    /// unreachable.
    async fn get_state(
        &mut self,
        socket: &Path,
    ) -> Result<kxdp_proto::dataplane::GetStateReply, PassError> {
        let cached = self.client.is_some();
        match self.get_state_once(socket).await {
            Err(PassError::Unreachable(_)) if cached => {
                self.client = None;
                self.get_state_once(socket).await
            }
            other => other,
        }
    }

    async fn get_state_once(
        &mut self,
        socket: &Path,
    ) -> Result<kxdp_proto::dataplane::GetStateReply, PassError> {
        let client = self.client(socket).await?;
        match tokio::time::timeout(
            GET_STATE_TIMEOUT,
            client.get_state(GetStateRequest { summary: true }),
        )
        .await
        {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(PassError::from_status("GetState", &status)),
            Err(_) => Err(PassError::Unreachable(format!(
                "GetState: no reply within {GET_STATE_TIMEOUT:?}"
            ))),
        }
    }

    fn record_reply(&self, reply: kxdp_proto::dataplane::GetStateReply) {
        let held = reply.state.as_ref().map_or(0, |s| s.generation);
        self.update(|s| {
            s.applied_generation = held;
            s.boot_id = reply.boot_id;
            s.pods = reply.pods;
        });
    }

    fn update(&self, f: impl FnOnce(&mut NodeStatus)) {
        self.shared.status.send_modify(|m| {
            if let Some(s) = m.get_mut(&self.name) {
                f(s);
            }
        });
    }

    /// Logs phase changes, not every retry.
    fn log_transition(&mut self, socket: &Path, phase: &Phase) {
        let word = phase.word();
        if word == self.logged {
            return;
        }
        match phase {
            Phase::Unreachable(e) => tracing::warn!(
                event = "unreachable", node = %self.name, error = %e,
                "{}: dataplane at {} unreachable ({e}); retrying every {:?} \
                 (kxdp-dataplane --node {} listens at {} unless given --socket)",
                self.name,
                socket.display(),
                self.shared.resync_interval,
                self.name,
                kxdp_proto::dataplane_socket(kxdp_proto::DEFAULT_RUN_DIR, &self.name).display()
            ),
            Phase::Failed(e) => tracing::error!(event = "refused", node = %self.name, error = %e,
                "{}: dataplane refused the state: {e}", self.name),
            Phase::Synced => tracing::info!(event = "in_sync", node = %self.name,
                "{}: in sync", self.name),
            Phase::Pending | Phase::Syncing => {}
        }
        self.logged = word;
    }
}

/// The one event of a change of the desired state: its generation, what
/// changed it (`store`: etcd's contents; `apply`: an ApplyCluster;
/// `runtime`: a pod or service added or removed) and how many nodes it
/// programs.
fn log_desired(d: &Desired, source: &str) {
    let generation = d.generation;
    tracing::info!(
        event = "desired",
        generation,
        source,
        nodes = d.states.len(),
        "desired state: generation {generation} ({source})"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_grow_and_follow_the_clock() {
        let first = next_generation(0);
        // 2020-01-01 in ms: generations are wall-clock based.
        assert!(first > 1_577_836_800_000);
        let far_future = u64::MAX / 2;
        assert_eq!(next_generation(far_future), far_future + 1);
        assert!(next_generation(first) > first);
    }

    #[test]
    fn code_names_match_the_proto_spelling() {
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[test]
    fn desired_plans_only_kxdp_nodes() {
        let text = crate::cluster::LAB_CLUSTER_YAML.replacen(
            "    pod_cidr: 10.244.2.0/24",
            "    pod_cidr: 10.244.2.0/24\n    dataplane: kernel",
            1,
        );
        let desired = Desired::new(Cluster::from_yaml(&text).unwrap(), 5);
        assert_eq!(desired.states.keys().collect::<Vec<_>>(), vec!["n1"]);
        assert_eq!(desired.states["n1"].generation, 5);
    }
}
