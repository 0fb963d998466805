//! The control process, minus argument parsing: serve the Control API on a
//! Unix socket and run the reconcilers until told to stop.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kxdp_proto::control::control_server::ControlServer;
use tonic::transport::Server;

use std::sync::Arc;

use crate::api::ControlService;
use crate::cluster::Cluster;
use crate::etcd::{self, ClusterConfig, Registration, Store};
use crate::reconcile::{self, Shared};
use crate::uds;

#[derive(Clone, Debug)]
pub struct Config {
    /// The Control API's socket.
    pub listen: PathBuf,
    /// Where nodes' dataplane sockets are when the cluster file does not say.
    pub dataplane_dir: PathBuf,
    pub resync_interval: Duration,
    pub apply_timeout: Duration,
}

/// Serves until `shutdown` completes, then stops the reconcilers and removes
/// the socket. `cluster` must be valid for `config.dataplane_dir`
/// (`Cluster::check_sockets`).
pub async fn run(
    config: Config,
    cluster: Cluster,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let shared = Shared::new(
        cluster,
        config.dataplane_dir.clone(),
        config.resync_interval,
    );
    {
        let desired = shared.current();
        log::info!(
            "generation {}: {} nodes ({} kxdp), {} pods",
            desired.generation,
            desired.cluster.nodes.len(),
            desired.states.len(),
            desired.cluster.pods.len()
        );
    }
    serve(config, shared, None, Vec::new(), shutdown).await
}

/// How a control process joins an etcd-backed cluster.
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub node: Registration,
    /// Written as the cluster config if etcd has none (`--cluster` given).
    pub bootstrap: Option<ClusterConfig>,
}

/// Etcd mode: registers this node, keeps its lease, follows the store and
/// programs this node's dataplane only, serving the Control API until
/// `shutdown`. The lease is not revoked on a clean stop: a restart within
/// the TTL takes the same pod CIDR back, and a node that stays away is
/// dropped by everyone when it expires.
pub async fn run_etcd(
    config: Config,
    etcd: EtcdConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut client = etcd::connect(&etcd.endpoints).await?;
    let cluster_config = match &etcd.bootstrap {
        Some(bootstrap) => {
            let (cfg, written) = etcd::init_config(&mut client, bootstrap).await?;
            if written {
                log::info!("wrote the cluster config to etcd");
            } else if cfg != *bootstrap {
                log::warn!("etcd already holds a different cluster config; using etcd's");
            }
            cfg
        }
        None => etcd::read_config(&mut client).await?.with_context(|| {
            format!(
                "etcd has no cluster config ({}): start one control process with --cluster FILE, or run kxdpctl --store ... init FILE",
                etcd::CONFIG_KEY
            )
        })?,
    };
    let held = etcd::acquire(&mut client, &cluster_config, &etcd.node).await?;
    log::info!(
        "{}: registered, pod CIDR {} (lease TTL {} s)",
        etcd.node.name,
        held.pod_cidr,
        etcd.node.lease_ttl_s
    );
    let held = Arc::new(tokio::sync::Mutex::new(held));
    let empty = etcd::build(
        &[(
            etcd::CONFIG_KEY.to_string(),
            serde_json::to_vec(&cluster_config)?,
        )]
        .into(),
    )?
    .context("cluster config")?
    .0;
    let shared = Shared::scoped(
        empty,
        config.dataplane_dir.clone(),
        config.resync_interval,
        Some(etcd.node.name.clone()),
    );
    let keeper = tokio::spawn(etcd::keep_alive(
        client.clone(),
        cluster_config,
        etcd.node.clone(),
        held,
    ));
    let follower = tokio::spawn(etcd::follow(client.clone(), shared.clone()));
    let store = Arc::new(Store::new(client));
    serve(
        config,
        shared,
        Some(store),
        vec![keeper, follower],
        shutdown,
    )
    .await
}

async fn serve(
    config: Config,
    shared: Arc<Shared>,
    store: Option<Arc<Store>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (listener, socket_file) = uds::bind(&config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen.display()))?;
    log::info!(
        "serving the control API on {}",
        socket_file.path().display()
    );

    let supervisor = tokio::spawn(reconcile::supervise(shared.clone()));
    let service =
        ControlServer::new(ControlService::new(shared, config.apply_timeout).with_store(store))
            .max_decoding_message_size(kxdp_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(kxdp_proto::MAX_MESSAGE_SIZE);
    let served = Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(uds::incoming(listener), shutdown)
        .await;

    // Aborting the supervisor drops its JoinSet, which aborts the reconcilers.
    supervisor.abort();
    let _ = supervisor.await;
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
    drop(socket_file);
    log::info!("stopped");
    served.context("control API server failed")
}

#[cfg(test)]
mod tests {
    //! The reconciler and the API end to end, against an in-test dataplane
    //! double on a temp Unix socket.

    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use kxdp_proto::control::control_client::ControlClient;
    use kxdp_proto::control::{
        AddPodRequest, ApplyClusterRequest, DeletePodRequest, DeleteServiceRequest,
        GetNodeCountersRequest, ListNodeConntrackRequest, ListNodesRequest, ListPodsRequest,
        ListRoutesRequest, ListServicesRequest, NodeInfo, UpsertServiceRequest,
    };
    use kxdp_proto::dataplane::dataplane_server::{Dataplane, DataplaneServer};
    use kxdp_proto::dataplane::{
        AttachState, DataplaneState, DropCounter, GetCountersReply, GetCountersRequest,
        GetStateReply, GetStateRequest, PodStatus, SyncRequest, UpdateRequest, WriteReply,
    };
    use tokio::sync::oneshot;
    use tonic::transport::Channel;
    use tonic::{Code, Request, Response, Status};

    use super::*;
    use kxdp_testkit::TempDir;

    const TICK: Duration = Duration::from_millis(50);

    /// A dataplane that holds what it is sent and records every Sync.
    #[derive(Default)]
    struct FakeDataplane {
        inner: Mutex<FakeState>,
    }

    #[derive(Default)]
    struct FakeState {
        boot_id: String,
        state: Option<DataplaneState>,
        syncs: Vec<DataplaneState>,
    }

    impl FakeDataplane {
        fn new(boot_id: &str) -> Arc<FakeDataplane> {
            let fake = FakeDataplane::default();
            fake.inner.lock().unwrap().boot_id = boot_id.into();
            Arc::new(fake)
        }

        /// Looks like a restart to the control process: a new boot_id. The
        /// state is kept, so only the boot_id can trigger the next Sync.
        fn restart(&self, boot_id: &str) {
            self.inner.lock().unwrap().boot_id = boot_id.into();
        }

        fn syncs(&self) -> Vec<DataplaneState> {
            self.inner.lock().unwrap().syncs.clone()
        }
    }

    #[tonic::async_trait]
    impl Dataplane for FakeDataplane {
        async fn sync(
            &self,
            request: Request<SyncRequest>,
        ) -> Result<Response<WriteReply>, Status> {
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

    /// Serves `fake` on `path` until the sender is dropped or fired.
    async fn serve_fake(
        fake: Arc<FakeDataplane>,
        path: PathBuf,
    ) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
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
        (stop, task)
    }

    type Control = (
        oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
        ControlClient<Channel>,
    );

    async fn start_control(dir: &std::path::Path, cluster: Cluster) -> Control {
        start_control_with(dir, cluster, Duration::from_secs(5)).await
    }

    async fn start_control_with(
        dir: &std::path::Path,
        cluster: Cluster,
        apply_timeout: Duration,
    ) -> Control {
        let config = Config {
            listen: dir.join("control/control.sock"),
            dataplane_dir: dir.to_path_buf(),
            resync_interval: TICK,
            apply_timeout,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let listen = config.listen.clone();
        let task = tokio::spawn(run(config, cluster, async {
            let _ = stopped.await;
        }));
        let client = wait_until("control socket", || async {
            uds::connect(&listen).await.ok().map(ControlClient::new)
        })
        .await;
        (stop, task, client)
    }

    /// Polls `f` every tick until it yields `Some`, for at most 5 s.
    async fn wait_until<T, F, Fut>(what: &str, mut f: F) -> T
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

    async fn node_info(client: &mut ControlClient<Channel>, name: &str) -> NodeInfo {
        let nodes = client
            .list_nodes(ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        nodes.into_iter().find(|n| n.name == name).unwrap()
    }

    /// The lab's n1 served by the fake; n2 a kxdp node nobody serves.
    fn cluster_yaml(extra_pod: bool) -> String {
        let mut text = crate::cluster::LAB_CLUSTER_YAML.to_string();
        if extra_pod {
            text.push_str("  - { name: p3, node: n1, ip: 10.244.1.4 }\n");
        }
        text
    }

    #[tokio::test]
    async fn reconciler_and_api_against_a_dataplane_double() {
        let tmp = TempDir::new("e2e");
        let fake = FakeDataplane::new("boot-1");
        let (stop_fake, fake_task) = serve_fake(fake.clone(), tmp.0.join("n1.sock")).await;
        let cluster = Cluster::from_yaml(&cluster_yaml(false)).unwrap();
        let (stop_control, control_task, mut client) = start_control(&tmp.0, cluster).await;

        // (a) First contact syncs the full desired state.
        wait_until("first sync", || async {
            (!fake.syncs().is_empty()).then_some(())
        })
        .await;
        let first = fake.syncs()[0].clone();
        let n1 = wait_until("n1 synced", || {
            let mut c = client.clone();
            async move { Some(node_info(&mut c, "n1").await).filter(|n| n.status == "synced") }
        })
        .await;
        assert_eq!(first.generation, n1.desired_generation);
        assert_eq!(n1.applied_generation, n1.desired_generation);
        assert_eq!(n1.boot_id, "boot-1");
        assert_eq!(first.node.as_ref().unwrap().name, "n1");
        assert_eq!(first.remote_nodes[0].name, "n2");
        assert_eq!(first.pods.len(), 2);
        let n2 = wait_until("n2 unreachable", || {
            let mut c = client.clone();
            async move { Some(node_info(&mut c, "n2").await).filter(|n| n.status == "unreachable") }
        })
        .await;
        assert_eq!(n2.applied_generation, 0);

        // In sync: further resyncs only read.
        tokio::time::sleep(TICK * 5).await;
        assert_eq!(fake.syncs().len(), 1);

        // (b) A restart (new boot_id) is pushed again without any apply.
        fake.restart("boot-2");
        wait_until("resync after restart", || async {
            (fake.syncs().len() == 2).then_some(())
        })
        .await;
        assert_eq!(fake.syncs()[1].generation, first.generation);
        wait_until("boot-2 recorded", || {
            let mut c = client.clone();
            async move { Some(node_info(&mut c, "n1").await).filter(|n| n.boot_id == "boot-2") }
        })
        .await;

        // A real restart: a new process on the same socket, with no state.
        stop_fake.send(()).unwrap();
        fake_task.await.unwrap();
        let fake = FakeDataplane::new("boot-3");
        let (stop_fake, fake_task) = serve_fake(fake.clone(), tmp.0.join("n1.sock")).await;
        wait_until("sync of the restarted dataplane", || async {
            (fake.syncs().len() == 1).then_some(())
        })
        .await;
        assert_eq!(fake.syncs()[0].generation, first.generation);

        // (c) An invalid apply is refused with every problem and changes nothing.
        let bad = cluster_yaml(true)
            .replace("vni: 1,", "vni: 0,")
            .replace("ip: 10.244.2.3", "ip: 10.244.1.3");
        let err = client
            .apply_cluster(ApplyClusterRequest { yaml: bad })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("cluster.vxlan.vni"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("pods[3].ip"), "{}", err.message());
        tokio::time::sleep(TICK * 5).await;
        assert_eq!(fake.syncs().len(), 1);
        assert_eq!(
            node_info(&mut client, "n1").await.desired_generation,
            first.generation
        );

        // (d) A valid apply reaches the dataplane, at a new generation, before
        // the call returns; the unreachable n2 does not hold it up.
        let reply = client
            .apply_cluster(ApplyClusterRequest {
                yaml: cluster_yaml(true),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(reply.generation > first.generation);
        assert_eq!((reply.nodes, reply.pods), (2, 5));
        let last = fake.syncs().last().cloned().unwrap();
        assert_eq!(last.generation, reply.generation);
        assert!(last
            .pods
            .iter()
            .any(|p| p.name == "p3" && p.ifname == "kx0af40104"));

        // Reads.
        let pods = client
            .list_pods(ListPodsRequest { node: "n1".into() })
            .await
            .unwrap()
            .into_inner()
            .pods;
        assert_eq!(pods.len(), 3);
        assert!(pods.iter().all(|p| p.status == "attached"), "{pods:?}");
        let pods = client
            .list_pods(ListPodsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .pods;
        assert!(pods
            .iter()
            .filter(|p| p.node == "n2")
            .all(|p| p.status == "unknown"));
        let routes = client
            .list_routes(ListRoutesRequest { node: "n1".into() })
            .await
            .unwrap()
            .into_inner()
            .routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(
            (routes[0].kind.as_str(), routes[0].prefix.as_str()),
            ("local", "10.244.1.0/24")
        );
        assert_eq!(
            (
                routes[1].kind.as_str(),
                routes[1].via_node.as_str(),
                routes[1].vtep_ip.as_str()
            ),
            ("vxlan", "n2", "172.30.0.12")
        );
        let err = client
            .list_routes(ListRoutesRequest { node: "n9".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        let counters = client
            .get_node_counters(GetNodeCountersRequest { node: "n1".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            counters
                .counters
                .iter()
                .find(|c| c.name == "encapsulated")
                .map(|c| c.value),
            Some(42)
        );
        let err = client
            .get_node_counters(GetNodeCountersRequest { node: "n9".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = client
            .get_node_counters(GetNodeCountersRequest { node: "n2".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);

        // Shutdown removes the socket.
        stop_control.send(()).unwrap();
        control_task.await.unwrap().unwrap();
        assert!(!tmp.0.join("control/control.sock").exists());

        // A restarted control process pushes once on first contact.
        let before = fake.syncs().len();
        let cluster = Cluster::from_yaml(&cluster_yaml(true)).unwrap();
        let (stop_control, control_task, _client) = start_control(&tmp.0, cluster).await;
        wait_until("sync after control restart", || async {
            (fake.syncs().len() == before + 1).then_some(())
        })
        .await;
        assert!(fake.syncs().last().unwrap().generation > reply.generation);
        tokio::time::sleep(TICK * 5).await;
        assert_eq!(fake.syncs().len(), before + 1);
        stop_control.send(()).unwrap();
        control_task.await.unwrap().unwrap();

        stop_fake.send(()).unwrap();
        fake_task.await.unwrap();
    }

    fn add_pod_request(node: &str, name: &str, ip: &str, ifname: &str) -> AddPodRequest {
        AddPodRequest {
            node: node.into(),
            name: name.into(),
            ip: ip.into(),
            mac: "0a:58:0a:f4:01:63".into(),
            ifname: ifname.into(),
        }
    }

    #[tokio::test]
    async fn runtime_pods_are_added_pushed_kept_and_deleted() {
        let tmp = TempDir::new("addpod");
        let fake = FakeDataplane::new("boot-1");
        let (stop_fake, fake_task) = serve_fake(fake.clone(), tmp.0.join("n1.sock")).await;
        let cluster = Cluster::from_yaml(&cluster_yaml(false)).unwrap();
        let (stop_control, control_task, mut client) =
            start_control_with(&tmp.0, cluster, Duration::from_millis(800)).await;
        wait_until("n1 synced", || {
            let mut c = client.clone();
            async move { Some(node_info(&mut c, "n1").await).filter(|n| n.status == "synced") }
        })
        .await;
        let synced = fake.syncs().len();

        // Invalid: every problem named by field, nothing pushed.
        let mut bad = add_pod_request("n1", "cni/eth0", "10.244.2.99", "kx0af40102");
        bad.mac = "ff:ff:ff:ff:ff:ff".into();
        let err = client.add_pod(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        for needle in ["ip: 10.244.2.99 is outside", "mac: ", "ifname: kx0af40102"] {
            assert!(err.message().contains(needle), "{}", err.message());
        }
        assert_eq!(fake.syncs().len(), synced);

        // Valid: the reply comes once n1's dataplane holds the pod.
        let request = add_pod_request("n1", "cni/eth0", "10.244.1.99", "veth99");
        let reply = client.add_pod(request.clone()).await.unwrap().into_inner();
        let held = fake.syncs().last().cloned().unwrap();
        assert_eq!(held.generation, reply.generation);
        assert!(
            held.pods.iter().any(|p| p.name == "cni/eth0"
                && p.ip == "10.244.1.99"
                && p.mac == "0a:58:0a:f4:01:63"
                && p.ifname == "veth99"),
            "{held:?}"
        );
        assert_eq!(held.pods.len(), 3);
        // A retried ADD changes nothing.
        let again = client.add_pod(request.clone()).await.unwrap().into_inner();
        assert_eq!(again.generation, reply.generation);
        assert_eq!(fake.syncs().len(), synced + 1);
        // The same IP under another name is taken.
        let err = client
            .add_pod(add_pod_request("n1", "other", "10.244.1.99", "veth98"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("already used by pod n1/cni/eth0"));

        let pods = client
            .list_pods(ListPodsRequest { node: "n1".into() })
            .await
            .unwrap()
            .into_inner()
            .pods;
        let rt = pods.iter().find(|p| p.name == "cni/eth0").unwrap();
        assert_eq!(
            (rt.ifname.as_str(), rt.status.as_str()),
            ("veth99", "attached")
        );
        assert_eq!(pods.len(), 3);

        // An apply of the file keeps the run-time pod...
        let applied = client
            .apply_cluster(ApplyClusterRequest {
                yaml: cluster_yaml(true),
            })
            .await
            .unwrap()
            .into_inner();
        let held = fake.syncs().last().cloned().unwrap();
        assert_eq!(held.generation, applied.generation);
        assert_eq!(held.pods.len(), 4);
        assert!(held.pods.iter().any(|p| p.name == "cni/eth0"));
        // ...and one whose file would take its IP is refused.
        let err = client
            .apply_cluster(ApplyClusterRequest {
                yaml: format!(
                    "{}  - {{ name: p9, node: n1, ip: 10.244.1.99 }}\n",
                    cluster_yaml(true)
                ),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("runtime_pods[n1/cni/eth0].ip"),
            "{}",
            err.message()
        );

        // A pod on the unreachable n2: accepted, but the wait times out naming n2.
        let err = client
            .add_pod(add_pod_request("n2", "late", "10.244.2.99", "veth97"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(err.message().contains("node n2"), "{}", err.message());

        // Deletes: a file pod is refused, a run-time one goes, again is a no-op.
        let err = client
            .delete_pod(DeletePodRequest {
                node: "n1".into(),
                name: "p1".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        let del = DeletePodRequest {
            node: "n1".into(),
            name: "cni/eth0".into(),
        };
        let reply = client.delete_pod(del.clone()).await.unwrap().into_inner();
        assert!(reply.existed);
        let held = fake.syncs().last().cloned().unwrap();
        assert_eq!(held.generation, reply.generation);
        assert!(!held.pods.iter().any(|p| p.name == "cni/eth0"));
        let reply = client.delete_pod(del).await.unwrap().into_inner();
        assert!(!reply.existed);
        let reply = client
            .delete_pod(DeletePodRequest {
                node: "n9".into(),
                name: "x".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!reply.existed);

        stop_control.send(()).unwrap();
        control_task.await.unwrap().unwrap();
        stop_fake.send(()).unwrap();
        fake_task.await.unwrap();
    }

    #[tokio::test]
    async fn services_are_upserted_listed_pushed_everywhere_and_deleted() {
        let tmp = TempDir::new("svc");
        let fake = FakeDataplane::new("boot-1");
        let (stop_fake, fake_task) = serve_fake(fake.clone(), tmp.0.join("n1.sock")).await;
        let file = format!(
            "{}services:\n  - {{ name: default/web, cluster_ip: 10.96.0.10, ports: [{{ port: 80, node_port: 30080 }}], endpoints: [{{ ip: 10.244.1.2 }}, {{ ip: 10.244.2.2 }}] }}\n",
            cluster_yaml(false)
        );
        let cluster = Cluster::from_yaml(&file).unwrap();
        let (stop_control, control_task, mut client) =
            start_control_with(&tmp.0, cluster, Duration::from_millis(800)).await;
        wait_until("n1 synced", || {
            let mut c = client.clone();
            async move { Some(node_info(&mut c, "n1").await).filter(|n| n.status == "synced") }
        })
        .await;
        let held = fake.syncs().last().cloned().unwrap();
        let node = held.node.as_ref().unwrap();
        assert_eq!(
            (
                node.service_cidr.as_str(),
                node.node_port_min,
                node.node_port_max
            ),
            ("10.96.0.0/12", 30000, 32767)
        );
        assert_eq!(held.services.len(), 1);
        assert_eq!(held.services[0].endpoints[1].node, "n2");

        let api = kxdp_proto::dataplane::Service {
            name: "default/api".into(),
            cluster_ip: "10.96.0.11".into(),
            ports: vec![kxdp_proto::dataplane::ServicePort {
                protocol: kxdp_proto::dataplane::Protocol::Udp as i32,
                port: 53,
                target_port: 5353,
                node_port: 30053,
                ..Default::default()
            }],
            endpoints: vec![kxdp_proto::dataplane::Endpoint {
                ip: "10.244.1.3".into(),
                ready: true,
                serving: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        // Invalid: named, nothing pushed.
        let syncs = fake.syncs().len();
        let mut bad = api.clone();
        bad.cluster_ip = "10.96.0.10".into();
        bad.ports[0].node_port = 99;
        let err = client
            .upsert_service(UpsertServiceRequest { service: Some(bad) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message()
                .contains("service.cluster_ip: 10.96.0.10 is already the ClusterIP"),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("service.ports[0].node_port: 99"),
            "{}",
            err.message()
        );
        assert_eq!(fake.syncs().len(), syncs);

        // Valid: every kxdp node gets it (n1 here; the unreachable n2 does not
        // hold the reply up).
        let reply = client
            .upsert_service(UpsertServiceRequest {
                service: Some(api.clone()),
            })
            .await
            .unwrap()
            .into_inner();
        let held = fake.syncs().last().cloned().unwrap();
        assert_eq!(held.generation, reply.generation);
        let pushed = held
            .services
            .iter()
            .find(|s| s.name == "default/api")
            .unwrap();
        assert_eq!(pushed.endpoints[0].node, "n1");
        assert_eq!(pushed.affinity_timeout_s, 10800);
        // The same again: no new generation.
        let again = client
            .upsert_service(UpsertServiceRequest {
                service: Some(api.clone()),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.generation, reply.generation);

        let listed = client
            .list_services(ListServicesRequest {})
            .await
            .unwrap()
            .into_inner()
            .services;
        assert_eq!(
            listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            vec!["default/web", "default/api"]
        );

        // The file's service is not the API's to delete; the run-time one is.
        let err = client
            .delete_service(DeleteServiceRequest {
                name: "default/web".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        let del = client
            .delete_service(DeleteServiceRequest {
                name: "default/api".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(del.existed);
        let held = fake.syncs().last().cloned().unwrap();
        assert_eq!(held.generation, del.generation);
        assert_eq!(held.services.len(), 1);
        let del = client
            .delete_service(DeleteServiceRequest {
                name: "default/api".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!del.existed);

        // Conntrack is a live read: the dataplane's UNIMPLEMENTED passes through.
        let err = client
            .list_conntrack(ListNodeConntrackRequest {
                node: "n1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
        let err = client
            .list_conntrack(ListNodeConntrackRequest {
                node: "n9".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        stop_control.send(()).unwrap();
        control_task.await.unwrap().unwrap();
        stop_fake.send(()).unwrap();
        fake_task.await.unwrap();
    }

    #[tokio::test]
    async fn apply_names_the_nodes_that_did_not_answer() {
        let tmp = TempDir::new("late");
        // A dataplane that accepts connections but never answers.
        let listener = tokio::net::UnixListener::bind(tmp.0.join("n1.sock")).unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let cluster = Cluster::from_yaml(&cluster_yaml(false)).unwrap();
        let config = Config {
            listen: tmp.0.join("control.sock"),
            dataplane_dir: tmp.0.clone(),
            resync_interval: TICK,
            apply_timeout: Duration::from_millis(300),
        };
        let listen = config.listen.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(config, cluster, async {
            let _ = stopped.await;
        }));
        let mut client = wait_until("control socket", || async {
            uds::connect(&listen).await.ok().map(ControlClient::new)
        })
        .await;
        let err = client
            .apply_cluster(ApplyClusterRequest {
                yaml: cluster_yaml(true),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(err.message().contains("n1"), "{}", err.message());
        assert!(!err.message().contains("n2"), "{}", err.message());
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        hold.abort();
    }

    #[tokio::test]
    async fn kernel_nodes_are_listed_but_never_contacted() {
        let tmp = TempDir::new("kernel");
        let text = cluster_yaml(false).replacen(
            "    pod_cidr: 10.244.2.0/24",
            "    pod_cidr: 10.244.2.0/24\n    dataplane: kernel",
            1,
        );
        let cluster = Cluster::from_yaml(&text).unwrap();
        let (stop, task, mut client) = start_control(&tmp.0, cluster).await;

        let n2 = node_info(&mut client, "n2").await;
        assert_eq!(n2.status, "kernel");
        assert_eq!(
            (n2.dataplane_socket.as_str(), n2.desired_generation),
            ("", 0)
        );
        let pods = client
            .list_pods(ListPodsRequest { node: "n2".into() })
            .await
            .unwrap()
            .into_inner()
            .pods;
        assert!(pods.iter().all(|p| p.status == "kernel"), "{pods:?}");
        let routes = client
            .list_routes(ListRoutesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .routes;
        assert!(routes.iter().all(|r| r.node == "n1"), "{routes:?}");
        let err = client
            .get_node_counters(GetNodeCountersRequest { node: "n2".into() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);

        // Turning n1 into a kernel node too stops its reconciler: the apply
        // has no kxdp node to wait for.
        let reply = client
            .apply_cluster(ApplyClusterRequest {
                yaml: text.replacen(
                    "    uplink: eth0",
                    "    uplink: eth0\n    dataplane: kernel",
                    1,
                ),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(reply.generation > 0);
        assert_eq!(node_info(&mut client, "n1").await.status, "kernel");

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    // ---- etcd mode, against a real etcd (Debian's etcd-server) ----

    /// etcd members on loopback, random ports, data in a temp dir; killed
    /// (by PID, through their Child) on drop.
    struct Etcd {
        members: Vec<Option<std::process::Child>>,
        endpoints: Vec<String>,
        _dir: TempDir,
    }

    const ETCD: &str = "/usr/bin/etcd";

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl Etcd {
        /// Fails the test when etcd is not installed (it never skips itself).
        fn start(n: usize) -> Etcd {
            assert!(
                std::path::Path::new(ETCD).exists(),
                "{ETCD} missing: install Debian's etcd-server (scripts/deps.sh does)"
            );
            let dir = TempDir::new("etcd");
            let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
            let initial: Vec<String> = ports
                .iter()
                .enumerate()
                .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
                .collect();
            let token = dir.0.file_name().unwrap().to_string_lossy().to_string();
            let members = ports
                .iter()
                .enumerate()
                .map(|(i, (client, peer))| {
                    let log = std::fs::File::create(dir.0.join(format!("m{i}.log"))).unwrap();
                    Some(
                        std::process::Command::new(ETCD)
                            .args(["--name", &format!("m{i}")])
                            .arg("--data-dir")
                            .arg(dir.0.join(format!("m{i}")))
                            .args([
                                "--listen-client-urls",
                                &format!("http://127.0.0.1:{client}"),
                                "--advertise-client-urls",
                                &format!("http://127.0.0.1:{client}"),
                                "--listen-peer-urls",
                                &format!("http://127.0.0.1:{peer}"),
                                "--initial-advertise-peer-urls",
                                &format!("http://127.0.0.1:{peer}"),
                                "--initial-cluster",
                                &initial.join(","),
                                "--initial-cluster-state",
                                "new",
                                "--initial-cluster-token",
                                &token,
                            ])
                            .stdout(std::process::Stdio::null())
                            .stderr(log)
                            .spawn()
                            .unwrap(),
                    )
                })
                .collect();
            let endpoints = ports
                .iter()
                .map(|(c, _)| format!("http://127.0.0.1:{c}"))
                .collect();
            Etcd {
                members,
                endpoints,
                _dir: dir,
            }
        }

        async fn ready(&self) {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(mut c) = etcd::connect(&self.endpoints).await {
                    if c.put("/kxdp-test/ready", "1", None).await.is_ok() {
                        return;
                    }
                }
                assert!(Instant::now() < deadline, "etcd did not come up");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }

        fn kill(&mut self, i: usize) {
            if let Some(mut child) = self.members[i].take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            for i in 0..self.members.len() {
                self.kill(i);
            }
        }
    }

    fn lab_config() -> ClusterConfig {
        ClusterConfig::from_cluster(&Cluster::lab(), 24)
    }

    fn registration(name: &str, last: u8) -> Registration {
        Registration {
            name: name.into(),
            underlay_ip: std::net::Ipv4Addr::new(172, 30, 0, last),
            uplink: "eth0".into(),
            vtep_mac: None,
            lease_ttl_s: 2,
        }
    }

    /// A node's control process in etcd mode, its socket `<dir>/<name>-control.sock`.
    async fn start_etcd_control(
        dir: &std::path::Path,
        endpoints: &[String],
        node: Registration,
        bootstrap: bool,
    ) -> Control {
        let config = Config {
            listen: dir.join(format!("{}-control.sock", node.name)),
            dataplane_dir: dir.to_path_buf(),
            resync_interval: TICK,
            apply_timeout: Duration::from_secs(5),
        };
        let etcd = EtcdConfig {
            endpoints: endpoints.to_vec(),
            node,
            bootstrap: bootstrap.then(lab_config),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let listen = config.listen.clone();
        let task = tokio::spawn(run_etcd(config, etcd, async {
            let _ = stopped.await;
        }));
        let client = wait_until("control socket", || async {
            uds::connect(&listen).await.ok().map(ControlClient::new)
        })
        .await;
        (stop, task, client)
    }

    /// What the fake holds now.
    fn held(fake: &FakeDataplane) -> Option<DataplaneState> {
        fake.inner.lock().unwrap().state.clone()
    }

    async fn wait_held(
        what: &str,
        fake: &Arc<FakeDataplane>,
        f: impl Fn(&DataplaneState) -> bool,
    ) -> DataplaneState {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = held(fake).filter(|s| f(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                held(fake)
            );
            tokio::time::sleep(TICK).await;
        }
    }

    fn pod_cidr(s: &DataplaneState) -> String {
        s.node.as_ref().unwrap().pod_cidr.clone()
    }

    #[tokio::test]
    async fn etcd_nodes_register_share_state_restart_and_expire() {
        let etcd = Etcd::start(1);
        etcd.ready().await;
        let _ = env_logger::builder().is_test(true).try_init();
        let tmp = TempDir::new("etcd-nodes");
        let fake_a = FakeDataplane::new("a-1");
        let fake_b = FakeDataplane::new("b-1");
        let (stop_fa, task_fa) = serve_fake(fake_a.clone(), tmp.0.join("a.sock")).await;
        let (stop_fb, task_fb) = serve_fake(fake_b.clone(), tmp.0.join("b.sock")).await;
        let (stop_a, task_a, mut ca) =
            start_etcd_control(&tmp.0, &etcd.endpoints, registration("a", 11), true).await;
        let (stop_b, task_b, mut cb) =
            start_etcd_control(&tmp.0, &etcd.endpoints, registration("b", 12), false).await;

        // Each dataplane gets its own pod CIDR and a route to the other's.
        let a = wait_held("a sees b", &fake_a, |s| s.remote_nodes.len() == 1).await;
        let b = wait_held("b sees a", &fake_b, |s| s.remote_nodes.len() == 1).await;
        assert_ne!(pod_cidr(&a), pod_cidr(&b));
        assert_eq!(a.remote_nodes[0].pod_cidr, pod_cidr(&b));
        assert_eq!(a.remote_nodes[0].vtep_ip, "172.30.0.12");
        assert_eq!(b.remote_nodes[0].name, "a");
        assert_eq!(a.node.as_ref().unwrap().service_cidr, "10.96.0.0/12");
        // Each process programs only its own node.
        assert!(fake_a
            .syncs()
            .iter()
            .all(|s| s.node.as_ref().unwrap().name == "a"));
        let nodes = ca
            .list_nodes(ListNodesRequest {})
            .await
            .unwrap()
            .into_inner()
            .nodes;
        let b_info = nodes.iter().find(|n| n.name == "b").unwrap();
        assert_eq!(b_info.status, "remote");
        let err = ca
            .apply_cluster(ApplyClusterRequest {
                yaml: cluster_yaml(false),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);

        // A pod written through a's API reaches b's dataplane through etcd.
        let b_net: ipnet::Ipv4Net = pod_cidr(&b).parse().unwrap();
        let b_ip = std::net::Ipv4Addr::from(u32::from(b_net.network()) + 9).to_string();
        let mut req = add_pod_request("b", "cni/eth0", &b_ip, "veth9");
        req.mac = "0a:58:0a:f4:02:09".into();
        ca.add_pod(req.clone()).await.unwrap();
        wait_held("b holds the pod", &fake_b, |s| {
            s.pods.iter().any(|p| p.ip == b_ip)
        })
        .await;
        // Invalid through etcd is invalid too, and a retry is a no-op.
        let mut bad = req.clone();
        bad.name = "other".into();
        let err = ca.add_pod(bad).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        ca.add_pod(req.clone()).await.unwrap();
        // A pod on a, through a: the reply waits for a's dataplane.
        let a_net: ipnet::Ipv4Net = pod_cidr(&a).parse().unwrap();
        let a_ip = std::net::Ipv4Addr::from(u32::from(a_net.network()) + 9).to_string();
        let reply = ca
            .add_pod(add_pod_request("a", "cni/eth0", &a_ip, "veth9"))
            .await
            .unwrap()
            .into_inner();
        let now = held(&fake_a).unwrap();
        assert!(now.generation >= reply.generation);
        assert!(now.pods.iter().any(|p| p.ip == a_ip));

        // A service written through b reaches both dataplanes.
        let service = kxdp_proto::dataplane::Service {
            name: "default/web".into(),
            cluster_ip: "10.96.0.10".into(),
            ports: vec![kxdp_proto::dataplane::ServicePort {
                port: 80,
                node_port: 30080,
                ..Default::default()
            }],
            endpoints: vec![kxdp_proto::dataplane::Endpoint {
                ip: a_ip.clone(),
                ready: true,
                serving: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        cb.upsert_service(UpsertServiceRequest {
            service: Some(service),
        })
        .await
        .unwrap();
        let a = wait_held("a holds the service", &fake_a, |s| s.services.len() == 1).await;
        assert_eq!(a.services[0].endpoints[0].node, "a");
        wait_held("b holds the service", &fake_b, |s| s.services.len() == 1).await;
        let listed = ca
            .list_services(ListServicesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.services.len(), 1);

        // b's control process restarts (its dataplane keeps its state): it
        // takes back the same pod CIDR and resyncs b once; a never changes.
        let b_syncs = fake_b.syncs().len();
        stop_b.send(()).unwrap();
        task_b.await.unwrap().unwrap();
        let (stop_b, task_b, _cb) =
            start_etcd_control(&tmp.0, &etcd.endpoints, registration("b", 12), false).await;
        wait_until("b resynced", || async {
            (fake_b.syncs().len() > b_syncs).then_some(())
        })
        .await;
        let b2 = wait_held("b complete again", &fake_b, |s| {
            s.remote_nodes.len() == 1 && s.services.len() == 1 && s.pods.len() == 1
        })
        .await;
        assert_eq!(pod_cidr(&b2), b_net.to_string());
        assert_eq!(
            held(&fake_a).unwrap().remote_nodes[0].pod_cidr,
            b_net.to_string()
        );

        // b disappears for good: its lease expires and a drops its route.
        stop_b.send(()).unwrap();
        task_b.await.unwrap().unwrap();
        let gone = Instant::now();
        wait_held("a drops b", &fake_a, |s| s.remote_nodes.is_empty()).await;
        assert!(
            gone.elapsed() < Duration::from_secs(8),
            "{:?}",
            gone.elapsed()
        );

        stop_a.send(()).unwrap();
        task_a.await.unwrap().unwrap();
        for (stop, task) in [(stop_fa, task_fa), (stop_fb, task_fb)] {
            stop.send(()).unwrap();
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn etcd_concurrent_leases_never_overlap() {
        let etcd = Etcd::start(1);
        etcd.ready().await;
        let mut client = etcd::connect(&etcd.endpoints).await.unwrap();
        let mut config = lab_config();
        // A small cluster CIDR: 8 subnets for 8 nodes asking at once.
        config.cidr = "10.244.0.0/21".into();
        etcd::init_config(&mut client, &config).await.unwrap();
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let endpoints = etcd.endpoints.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    let mut c = etcd::connect(&endpoints).await.unwrap();
                    etcd::acquire(&mut c, &config, &registration(&format!("n{i}"), 20 + i))
                        .await
                        .unwrap()
                        .pod_cidr
                })
            })
            .collect();
        let mut nets = Vec::new();
        for t in tasks {
            nets.push(t.await.unwrap());
        }
        nets.sort();
        nets.dedup();
        assert_eq!(nets.len(), 8, "{nets:?}");
        // The ninth finds none left.
        let err = etcd::acquire(&mut client, &config, &registration("n9", 40))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no free /24"), "{err:#}");
    }

    #[tokio::test]
    async fn etcd_member_death_keeps_the_cluster_working() {
        let mut etcd = Etcd::start(3);
        etcd.ready().await;
        let tmp = TempDir::new("etcd-3");
        let fake_a = FakeDataplane::new("a-1");
        let fake_b = FakeDataplane::new("b-1");
        let (stop_fa, task_fa) = serve_fake(fake_a.clone(), tmp.0.join("a.sock")).await;
        let (stop_fb, task_fb) = serve_fake(fake_b.clone(), tmp.0.join("b.sock")).await;
        let (stop_a, task_a, mut ca) =
            start_etcd_control(&tmp.0, &etcd.endpoints, registration("a", 11), true).await;
        let (stop_b, task_b, _cb) =
            start_etcd_control(&tmp.0, &etcd.endpoints, registration("b", 12), false).await;
        wait_held("a sees b", &fake_a, |s| s.remote_nodes.len() == 1).await;

        // The first member (where clients connect first) dies.
        etcd.kill(0);
        // Writes still go through, and both nodes still see each other after
        // several lease TTLs (keep-alives reach the other members).
        let a = held(&fake_a).unwrap();
        let net: ipnet::Ipv4Net = pod_cidr(&a).parse().unwrap();
        let ip = std::net::Ipv4Addr::from(u32::from(net.network()) + 5).to_string();
        // A try that lands on the dead member costs the client's 5 s request
        // timeout; on a loaded 2-core machine several may in a row.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match ca.add_pod(add_pod_request("a", "p", &ip, "veth5")).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < deadline, "{e:?}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        wait_held("b sees the pod's node and keeps a", &fake_b, |s| {
            s.remote_nodes.len() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(held(&fake_a).unwrap().remote_nodes.len(), 1);
        assert_eq!(held(&fake_b).unwrap().remote_nodes.len(), 1);
        assert!(held(&fake_a).unwrap().pods.iter().any(|p| p.ip == ip));

        for (stop, task) in [(stop_a, task_a), (stop_b, task_b)] {
            stop.send(()).unwrap();
            task.await.unwrap().unwrap();
        }
        for (stop, task) in [(stop_fa, task_fa), (stop_fb, task_fb)] {
            stop.send(()).unwrap();
            task.await.unwrap();
        }
    }
}
