//! Harness for driving kxdp-cni as a container runtime does: the built
//! binary, a clean environment with the `CNI_*` variables, the network
//! configuration on stdin, stdout and the exit status read back.
//!
//! Each test gets its own "node" namespace (the plugin runs inside it, as on
//! a node, so host veths of parallel tests never meet), pod namespaces, a
//! host-local data directory, and a control API: an in-process fake, or the
//! real kxdp-control binary with a fake dataplane.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kxdp_proto::control::control_server::{Control, ControlServer};
use kxdp_proto::control::*;
use kxdp_proto::dataplane::dataplane_server::{Dataplane, DataplaneServer};
use kxdp_proto::dataplane::{
    AttachState, DataplaneState, GetCountersReply, GetCountersRequest, GetStateReply,
    GetStateRequest, ListConntrackReply, ListConntrackRequest, PodStatus, SyncRequest,
    UpdateRequest, WriteReply,
};
use kxdp_testkit::{unique_name, NetNs};
use serde_json::Value;
use tonic::{Request, Response, Status};

/// Where Debian's containernetworking-plugins puts host-local.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
pub const SUBNET: &str = "10.244.1.0/24";
pub const GATEWAY: &str = "10.244.1.1";
pub const NODE: &str = "n1";

/// Fails the test unless namespace tests can run here: root, and host-local
/// (Debian's containernetworking-plugins, which scripts/deps.sh installs).
/// A test that cannot run fails; it never passes by skipping itself.
#[track_caller]
pub fn require_env() {
    kxdp_testkit::require_root();
    let path = Path::new(CNI_BIN_DIR).join("host-local");
    assert!(
        path.exists(),
        "no {}: install Debian's containernetworking-plugins (scripts/deps.sh does)",
        path.display()
    );
}

pub use kxdp_testkit::TempDir;

/// One plugin run's outcome.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts success and returns stdout's JSON (Null when empty).
    pub fn ok(&self) -> Value {
        assert!(
            self.success,
            "expected success: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Asserts a spec error JSON with `code` and a non-zero exit; returns it.
    pub fn err(&self, code: u64) -> Value {
        assert!(
            !self.success,
            "expected failure with code {code}: stdout {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(v["code"], code, "wrong code: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "no msg: {v}"
        );
        assert!(v["cniVersion"].is_string(), "no cniVersion: {v}");
        v
    }
}

/// One test's world: a node namespace, a host-local data dir, a control socket.
pub struct World {
    pub node: NetNs,
    pub dir: TempDir,
    pub socket: PathBuf,
    pub network: String,
    pub mtu: u32,
}

impl World {
    pub fn new(tag: &str) -> World {
        let node = NetNs::new(&unique_name(tag));
        let dir = TempDir::new(tag);
        let socket = dir.path().join("control.sock");
        World {
            node,
            dir,
            socket,
            network: "kxdp".into(),
            mtu: 1450,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The network configuration a runtime hands the plugin (a conflist
    /// entry with cniVersion and name filled in).
    pub fn conf(&self) -> Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.network,
            "type": "kxdp-cni",
            "node": NODE,
            "controlSocket": self.socket,
            "mtu": self.mtu,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                "dataDir": self.data_dir(),
            },
        })
    }

    /// Runs the plugin inside the node namespace with a runtime's
    /// environment only. `netns`: CNI_NETNS (None: unset).
    pub fn cni(&self, command: &str, cid: &str, netns: Option<&str>, stdin: &str) -> Run {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.node.name()))
            .arg(env!("CARGO_BIN_EXE_kxdp-cni"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", "eth0")
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
            )
            .env("CNI_PATH", format!("/nonexistent:{CNI_BIN_DIR}"));
        if let Some(ns) = netns {
            cmd.env("CNI_NETNS", ns);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kxdp-cni");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn add(&self, cid: &str, pod: &NetNs) -> Run {
        self.cni("ADD", cid, Some(&netns_path(pod)), &self.conf().to_string())
    }

    pub fn del(&self, cid: &str, netns: Option<&str>) -> Run {
        self.cni("DEL", cid, netns, &self.conf().to_string())
    }

    pub fn check(&self, cid: &str, pod: &NetNs, prev: &Value) -> Run {
        let mut conf = self.conf();
        conf["prevResult"] = prev.clone();
        self.cni("CHECK", cid, Some(&netns_path(pod)), &conf.to_string())
    }

    /// The addresses host-local holds leased (one file per address).
    pub fn leases(&self) -> Vec<Ipv4Addr> {
        let dir = self.data_dir().join(&self.network);
        let mut out: Vec<Ipv4Addr> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The node namespace's interfaces other than lo, by name.
    pub fn node_links(&self) -> Vec<String> {
        links(&self.node)
            .into_iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .filter(|n| n != "lo")
            .collect()
    }

    pub fn node_link(&self, name: &str) -> Option<Value> {
        links(&self.node).into_iter().find(|l| l["ifname"] == name)
    }
}

pub fn netns_path(ns: &NetNs) -> String {
    format!("/var/run/netns/{}", ns.name())
}

/// `ip -j -d link show` in `ns`.
pub fn links(ns: &NetNs) -> Vec<Value> {
    let out = ns.ip(&["-j", "-d", "link", "show"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn link(ns: &NetNs, name: &str) -> Option<Value> {
    links(ns).into_iter().find(|l| l["ifname"] == name)
}

/// `ip -j -4 addr show dev` addresses as "a.b.c.d/len".
pub fn addrs(ns: &NetNs, dev: &str) -> Vec<String> {
    let out = ns.ip(&["-j", "-4", "addr", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The features of `dev` in `ns` that `ethtool -k` shows as on, among `names`.
pub fn offloads_on(ns: &NetNs, dev: &str, names: &[&str]) -> Vec<String> {
    let out = ns.exec("ethtool", &["-k", dev]);
    assert!(out.status.success(), "ethtool -k {dev}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, v)| names.contains(&k.trim()) && v.trim().starts_with("on"))
        .map(|(k, _)| k.trim().to_string())
        .collect()
}

pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ------------------------------------------------------------ a tonic server on a thread

/// A gRPC server on a Unix socket, on its own thread and runtime; stopped on drop.
pub struct Served {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(path: &Path, routes: tonic::service::Routes) -> Served {
    let _ = std::fs::remove_file(path);
    let path = path.to_path_buf();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::UnixListener::bind(&path).unwrap();
            ready_tx.send(()).unwrap();
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
    });
    ready_rx.recv().expect("server thread started");
    Served {
        stop: Some(stop),
        thread: Some(thread),
    }
}

// ------------------------------------------------------------ fake control

/// A control API that keeps run-time pods in a map, as kxdp-control's
/// AddPod/DeletePod/ListPods do, and can be told to refuse AddPod.
#[derive(Default)]
pub struct FakeControl {
    pub pods: Mutex<BTreeMap<(String, String), AddPodRequest>>,
    pub refuse_add: Mutex<Option<Status>>,
    pub calls: Mutex<Vec<String>>,
}

impl FakeControl {
    pub fn serve(path: &Path) -> (Arc<FakeControl>, Served) {
        let fake = Arc::new(FakeControl::default());
        let served = serve(
            path,
            tonic::service::Routes::new(ControlServer::from_arc(fake.clone())),
        );
        (fake, served)
    }

    pub fn pod(&self, name: &str) -> Option<AddPodRequest> {
        self.pods
            .lock()
            .unwrap()
            .get(&(NODE.to_string(), name.to_string()))
            .cloned()
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl Control for FakeControl {
    async fn add_pod(&self, r: Request<AddPodRequest>) -> Result<Response<AddPodReply>, Status> {
        let r = r.into_inner();
        self.calls
            .lock()
            .unwrap()
            .push(format!("AddPod {}", r.name));
        if let Some(status) = self.refuse_add.lock().unwrap().clone() {
            return Err(status);
        }
        if r.node != NODE {
            return Err(Status::invalid_argument(format!(
                "node: unknown node {}",
                r.node
            )));
        }
        let mut pods = self.pods.lock().unwrap();
        let key = (r.node.clone(), r.name.clone());
        if pods.get(&key).is_some_and(|p| *p != r) {
            return Err(Status::invalid_argument(
                "name: registered with other values",
            ));
        }
        pods.insert(key, r);
        Ok(Response::new(AddPodReply { generation: 2 }))
    }

    async fn delete_pod(
        &self,
        r: Request<DeletePodRequest>,
    ) -> Result<Response<DeletePodReply>, Status> {
        let r = r.into_inner();
        self.calls
            .lock()
            .unwrap()
            .push(format!("DeletePod {}", r.name));
        let existed = self
            .pods
            .lock()
            .unwrap()
            .remove(&(r.node, r.name))
            .is_some();
        Ok(Response::new(DeletePodReply {
            generation: 3,
            existed,
        }))
    }

    async fn list_pods(
        &self,
        r: Request<ListPodsRequest>,
    ) -> Result<Response<ListPodsReply>, Status> {
        let node = r.into_inner().node;
        let pods = self
            .pods
            .lock()
            .unwrap()
            .values()
            .filter(|p| node.is_empty() || p.node == node)
            .map(|p| PodInfo {
                name: p.name.clone(),
                node: p.node.clone(),
                ip: p.ip.clone(),
                mac: p.mac.clone(),
                ifname: p.ifname.clone(),
                status: "unknown".into(),
            })
            .collect();
        Ok(Response::new(ListPodsReply { pods }))
    }

    async fn apply_cluster(
        &self,
        _: Request<ApplyClusterRequest>,
    ) -> Result<Response<ApplyClusterReply>, Status> {
        unimplemented()
    }
    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesReply>, Status> {
        unimplemented()
    }
    async fn list_routes(
        &self,
        _: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesReply>, Status> {
        unimplemented()
    }
    async fn list_policies(
        &self,
        _: Request<kxdp_proto::control::ListPoliciesRequest>,
    ) -> Result<Response<kxdp_proto::control::ListPoliciesReply>, Status> {
        unimplemented()
    }
    async fn explain_policy(
        &self,
        _: Request<kxdp_proto::control::ExplainPolicyRequest>,
    ) -> Result<Response<kxdp_proto::control::ExplainPolicyReply>, Status> {
        unimplemented()
    }
    async fn upsert_network_policy(
        &self,
        _: Request<UpsertNetworkPolicyRequest>,
    ) -> Result<Response<UpsertNetworkPolicyReply>, Status> {
        unimplemented()
    }
    async fn delete_network_policy(
        &self,
        _: Request<DeleteNetworkPolicyRequest>,
    ) -> Result<Response<DeleteNetworkPolicyReply>, Status> {
        unimplemented()
    }
    async fn list_network_policies(
        &self,
        _: Request<ListNetworkPoliciesRequest>,
    ) -> Result<Response<ListNetworkPoliciesReply>, Status> {
        unimplemented()
    }
    async fn upsert_namespace(
        &self,
        _: Request<UpsertNamespaceRequest>,
    ) -> Result<Response<UpsertNamespaceReply>, Status> {
        unimplemented()
    }
    async fn delete_namespace(
        &self,
        _: Request<DeleteNamespaceRequest>,
    ) -> Result<Response<DeleteNamespaceReply>, Status> {
        unimplemented()
    }
    async fn list_namespaces(
        &self,
        _: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesReply>, Status> {
        unimplemented()
    }
    async fn get_node_counters(
        &self,
        _: Request<GetNodeCountersRequest>,
    ) -> Result<Response<GetCountersReply>, Status> {
        unimplemented()
    }
    async fn upsert_service(
        &self,
        _: Request<UpsertServiceRequest>,
    ) -> Result<Response<UpsertServiceReply>, Status> {
        unimplemented()
    }
    async fn delete_service(
        &self,
        _: Request<DeleteServiceRequest>,
    ) -> Result<Response<DeleteServiceReply>, Status> {
        unimplemented()
    }
    async fn list_services(
        &self,
        _: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesReply>, Status> {
        unimplemented()
    }
    async fn list_conntrack(
        &self,
        _: Request<ListNodeConntrackRequest>,
    ) -> Result<Response<ListConntrackReply>, Status> {
        unimplemented()
    }

    async fn watch(
        &self,
        _: Request<WatchNodeRequest>,
    ) -> Result<Response<kxdp_proto::dataplane::WatchReply>, Status> {
        unimplemented()
    }
}

// ------------------------------------------------------------ fake dataplane + real control

/// A dataplane API that takes every Sync and reports its pods attached: lets
/// the real kxdp-control finish AddPod without XDP.
#[derive(Default)]
pub struct FakeDataplane {
    state: Mutex<Option<DataplaneState>>,
}

impl FakeDataplane {
    pub fn serve(path: &Path) -> (Arc<FakeDataplane>, Served) {
        let fake = Arc::new(FakeDataplane::default());
        let served = serve(
            path,
            tonic::service::Routes::new(DataplaneServer::from_arc(fake.clone())),
        );
        (fake, served)
    }

    /// The pods the last Sync gave, by name.
    pub fn pods(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .iter()
            .flat_map(|s| &s.pods)
            .map(|p| p.name.clone())
            .collect()
    }
}

#[tonic::async_trait]
impl Dataplane for FakeDataplane {
    async fn sync(&self, r: Request<SyncRequest>) -> Result<Response<WriteReply>, Status> {
        let state = r.into_inner().state.unwrap_or_default();
        let generation = state.generation;
        *self.state.lock().unwrap() = Some(state);
        Ok(Response::new(WriteReply { generation }))
    }
    async fn update(&self, _: Request<UpdateRequest>) -> Result<Response<WriteReply>, Status> {
        unimplemented()
    }
    async fn get_state(
        &self,
        _: Request<GetStateRequest>,
    ) -> Result<Response<GetStateReply>, Status> {
        let state = self.state.lock().unwrap().clone();
        let pods = state
            .iter()
            .flat_map(|s| &s.pods)
            .map(|p| PodStatus {
                name: p.name.clone(),
                state: AttachState::Attached as i32,
                detail: String::new(),
            })
            .collect();
        Ok(Response::new(GetStateReply {
            state,
            boot_id: "fake".into(),
            pods,
            workers: 1,
            ..Default::default()
        }))
    }
    async fn get_counters(
        &self,
        _: Request<GetCountersRequest>,
    ) -> Result<Response<GetCountersReply>, Status> {
        unimplemented()
    }
    async fn list_conntrack(
        &self,
        _: Request<ListConntrackRequest>,
    ) -> Result<Response<ListConntrackReply>, Status> {
        unimplemented()
    }

    async fn watch(
        &self,
        _: Request<kxdp_proto::dataplane::WatchRequest>,
    ) -> Result<Response<kxdp_proto::dataplane::WatchReply>, Status> {
        unimplemented()
    }
}

/// The kxdp-control binary to test against: KXDP_CONTROL_BIN, else the
/// newer of target/debug and target/release (this suite does not build it).
pub fn control_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KXDP_CONTROL_BIN") {
        return Some(PathBuf::from(p));
    }
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    ["debug", "release"]
        .iter()
        .map(|p| target.join(p).join("kxdp-control"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

/// A real kxdp-control process, killed on drop.
pub struct RealControl {
    child: Child,
    pub log: PathBuf,
}

impl RealControl {
    /// Starts `bin` with a one-node cluster (node n1, kxdp, pod CIDR SUBNET,
    /// dataplane at `dataplane_socket`) serving on `world.socket`.
    pub fn start(bin: &Path, world: &World, dataplane_socket: &Path) -> RealControl {
        let cluster = world.dir.path().join("cluster.yaml");
        std::fs::write(
            &cluster,
            format!(
                "cluster:\n  cidr: 10.244.0.0/16\n  underlay_mtu: 1500\n  vxlan: {{ vni: 1, port: 4789 }}\n\
                 nodes:\n  - name: {NODE}\n    underlay_ip: 172.30.0.11\n    pod_cidr: {SUBNET}\n    \
                 dataplane: kxdp\n    socket: {}\npods: []\n",
                dataplane_socket.display()
            ),
        )
        .unwrap();
        let log = world.dir.path().join("control.log");
        let child = Command::new(bin)
            .arg("--cluster")
            .arg(&cluster)
            .arg("--listen")
            .arg(&world.socket)
            .arg("--dataplane-dir")
            .arg(world.dir.path())
            // Its own: the default (/var/lib/kxdp) is the node's, shared.
            .arg("--state-file")
            .arg(world.dir.path().join("control-state.json"))
            .args(["--resync-interval-ms", "100", "--apply-timeout-ms", "3000"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut control = RealControl { child, log };
        wait_for("kxdp-control's socket", Duration::from_secs(10), || {
            if let Ok(Some(status)) = control.child.try_wait() {
                panic!("kxdp-control exited ({status}): {}", control.log_text());
            }
            world.socket.exists()
        });
        control
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RealControl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ListPods on control at `socket`: the pods of NODE as (name, ip, mac, ifname).
pub fn control_pods(socket: &Path) -> Vec<(String, String, String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let channel = kxdp_proto::connect_unix(socket.to_path_buf())
            .await
            .unwrap();
        let mut client = kxdp_proto::control::control_client::ControlClient::new(channel);
        client
            .list_pods(ListPodsRequest { node: NODE.into() })
            .await
            .unwrap()
            .into_inner()
            .pods
            .into_iter()
            .map(|p| (p.name, p.ip, p.mac, p.ifname))
            .collect()
    })
}
