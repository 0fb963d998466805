//! What the daemon's tests share: a dataplane double on a temp Unix socket,
//! a control process started in the test's runtime, and polling helpers.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kxdp_control::cluster::{Cluster, LAB_CLUSTER_YAML};
use kxdp_control::daemon::{self, Config};
use kxdp_control::store::Source;
use kxdp_control::uds;
use kxdp_proto::control::control_client::ControlClient;
use kxdp_proto::control::{AddPodRequest, ListNodesRequest, NodeInfo, UpsertNamespaceRequest};
use kxdp_proto::dataplane::dataplane_server::{Dataplane, DataplaneServer};
use kxdp_proto::dataplane::{
    AttachState, DataplaneState, DropCounter, GetCountersReply, GetCountersRequest, GetStateReply,
    GetStateRequest, PodStatus, SyncRequest, UpdateRequest, WriteReply,
};
use tokio::sync::oneshot;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

pub const TICK: Duration = Duration::from_millis(50);

/// A dataplane that holds what it is sent and records every Sync.
#[derive(Default)]
pub struct FakeDataplane {
    inner: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    boot_id: String,
    state: Option<DataplaneState>,
    syncs: Vec<DataplaneState>,
}

impl FakeDataplane {
    pub fn new(boot_id: &str) -> Arc<FakeDataplane> {
        let fake = FakeDataplane::default();
        fake.inner.lock().unwrap().boot_id = boot_id.into();
        Arc::new(fake)
    }

    /// Looks like a restart to the control process: a new boot_id. The
    /// state is kept, so only the boot_id can trigger the next Sync.
    pub fn restart(&self, boot_id: &str) {
        self.inner.lock().unwrap().boot_id = boot_id.into();
    }

    pub fn syncs(&self) -> Vec<DataplaneState> {
        self.inner.lock().unwrap().syncs.clone()
    }

    /// What it holds now.
    pub fn held(&self) -> Option<DataplaneState> {
        self.inner.lock().unwrap().state.clone()
    }
}

#[tonic::async_trait]
impl Dataplane for FakeDataplane {
    async fn sync(&self, request: Request<SyncRequest>) -> Result<Response<WriteReply>, Status> {
        let state = request
            .into_inner()
            .state
            .ok_or_else(|| Status::invalid_argument("state: missing"))?;
        let mut inner = self.inner.lock().unwrap();
        inner.syncs.push(state.clone());
        inner.state = Some(state.clone());
        Ok(Response::new(WriteReply {
            generation: state.generation,
        }))
    }

    async fn update(&self, _: Request<UpdateRequest>) -> Result<Response<WriteReply>, Status> {
        Err(Status::unimplemented("the control process only syncs"))
    }

    async fn get_state(
        &self,
        _: Request<GetStateRequest>,
    ) -> Result<Response<GetStateReply>, Status> {
        let inner = self.inner.lock().unwrap();
        let pods = inner.state.iter().flat_map(|s| &s.pods).map(|p| PodStatus {
            name: p.name.clone(),
            state: AttachState::Attached as i32,
            detail: String::new(),
        });
        Ok(Response::new(GetStateReply {
            state: inner.state.clone(),
            boot_id: inner.boot_id.clone(),
            pods: pods.collect(),
            workers: 1,
            ..Default::default()
        }))
    }

    async fn list_conntrack(
        &self,
        _: Request<kxdp_proto::dataplane::ListConntrackRequest>,
    ) -> Result<Response<kxdp_proto::dataplane::ListConntrackReply>, Status> {
        Err(Status::unimplemented("not in the test double"))
    }

    async fn watch(
        &self,
        _: Request<kxdp_proto::dataplane::WatchRequest>,
    ) -> Result<Response<kxdp_proto::dataplane::WatchReply>, Status> {
        Err(Status::unimplemented("not in the test double"))
    }

    async fn get_counters(
        &self,
        _: Request<GetCountersRequest>,
    ) -> Result<Response<GetCountersReply>, Status> {
        Ok(Response::new(GetCountersReply {
            drops: vec![DropCounter {
                reason: "no_route".into(),
                packets: 3,
            }],
            counters: vec![kxdp_proto::dataplane::Counter {
                name: "encapsulated".into(),
                value: 42,
            }],
            ..Default::default()
        }))
    }
}

/// A server running in the test: its stop signal and its task.
pub struct Served<T> {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<T>,
}

impl<T> Served<T> {
    /// Signals the server to stop and waits for it; returns what it returned.
    pub async fn stop(self) -> T {
        self.stop.send(()).unwrap();
        self.task.await.unwrap()
    }
}

/// Serves `fake` on `path` until stopped.
pub async fn serve_fake(fake: Arc<FakeDataplane>, path: PathBuf) -> Served<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    let (listener, file) = uds::bind(&path).unwrap();
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(DataplaneServer::from_arc(fake))
            .serve_with_incoming_shutdown(uds::incoming(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        drop(file);
    });
    Served { stop, task }
}

/// A control process running in the test, and a client of its API.
pub struct Control {
    pub daemon: Served<anyhow::Result<()>>,
    pub client: ControlClient<Channel>,
}

impl Control {
    /// Stops the daemon; it must stop cleanly.
    pub async fn stop(self) {
        self.daemon.stop().await.unwrap();
    }
}

/// Runs the daemon on `config` and `source`; returns once its socket answers.
pub async fn start(config: Config, source: Source) -> Control {
    let (stop, stopped) = oneshot::channel::<()>();
    let listen = config.listen.clone();
    let task = tokio::spawn(daemon::run(config, source, async {
        let _ = stopped.await;
    }));
    let client = wait_until("control socket", || async {
        uds::connect(&listen).await.ok().map(ControlClient::new)
    })
    .await;
    Control {
        daemon: Served { stop, task },
        client,
    }
}

/// The daemon's settings for a test in `dir`: dataplane sockets there, a
/// fast resync.
pub fn config(dir: &Path, listen: PathBuf, apply_timeout: Duration) -> Config {
    Config {
        listen,
        dataplane_dir: dir.to_path_buf(),
        resync_interval: TICK,
        apply_timeout,
        metrics_address: None,
    }
}

/// A file-mode control process, its socket `<dir>/control/control.sock`.
pub async fn start_control(dir: &Path, cluster: Cluster) -> Control {
    start_control_with(dir, cluster, Duration::from_secs(5)).await
}

pub async fn start_control_with(dir: &Path, cluster: Cluster, apply_timeout: Duration) -> Control {
    let listen = dir.join("control/control.sock");
    start(config(dir, listen, apply_timeout), Source::File(cluster)).await
}

/// Polls `f` every half tick until it yields `Some`, for at most 5 s.
pub async fn wait_until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(TICK / 2).await;
    }
}

/// Waits until `name`'s dataplane is synced, as `ListNodes` says.
pub async fn wait_synced(client: &ControlClient<Channel>, name: &str) -> NodeInfo {
    wait_until(&format!("{name} synced"), || {
        let mut c = client.clone();
        async move { Some(node_info(&mut c, name).await).filter(|n| n.status == "synced") }
    })
    .await
}

pub async fn node_info(client: &mut ControlClient<Channel>, name: &str) -> NodeInfo {
    let nodes = client
        .list_nodes(ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    nodes.into_iter().find(|n| n.name == name).unwrap()
}

/// The lab's n1 served by the fake; n2 a kxdp node nobody serves.
pub fn cluster_yaml(extra_pod: bool) -> String {
    let mut text = LAB_CLUSTER_YAML.to_string();
    if extra_pod {
        text.push_str("  - { name: p3, node: n1, ip: 10.244.1.4 }\n");
    }
    text
}

pub fn add_pod_request(node: &str, name: &str, ip: &str, ifname: &str) -> AddPodRequest {
    AddPodRequest {
        node: node.into(),
        name: name.into(),
        ip: ip.into(),
        mac: "0a:58:0a:f4:01:63".into(),
        ifname: ifname.into(),
        ..Default::default()
    }
}

/// `UpsertNamespace` of `name` with the one label `key: value`.
pub fn namespace_labelled(name: &str, key: &str, value: &str) -> UpsertNamespaceRequest {
    UpsertNamespaceRequest {
        namespace: Some(kxdp_proto::control::Namespace {
            name: name.into(),
            labels: [(key.to_string(), value.to_string())].into(),
            source: String::new(),
        }),
    }
}

/// Service `name` at `vip`:80 with one ready, serving endpoint per address.
pub fn web_service(name: &str, vip: &str, ips: &[&str]) -> kxdp_proto::dataplane::Service {
    kxdp_proto::dataplane::Service {
        name: name.into(),
        cluster_ip: vip.into(),
        ports: vec![kxdp_proto::dataplane::ServicePort {
            port: 80,
            ..Default::default()
        }],
        endpoints: ips
            .iter()
            .map(|ip| kxdp_proto::dataplane::Endpoint {
                ip: ip.to_string(),
                ready: true,
                serving: true,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
