//! The control process in etcd mode, against a real etcd (Debian's
//! etcd-server) and dataplane doubles: registration, leases, the watch
//! (recovering from a compaction and from a lost watch), a node away longer
//! than its liveness lease costing only its own endpoints; and
//! etcd over TLS with client certificates (scripts/provision/etcd-pki.sh
//! makes them with openssl), what it refuses, and the store flags' checks.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kxdp_control::cli::EtcdFlags;
use kxdp_control::cluster::Cluster;
use kxdp_control::etcd::{self, Access, ClusterConfig, EtcdConfig, Registration};
use kxdp_control::store::Source;
use kxdp_proto::control::control_client::ControlClient;
use kxdp_proto::control::{
    AddPodRequest, ApplyClusterRequest, DeleteNetworkPolicyRequest, ListNamespacesRequest,
    ListNetworkPoliciesRequest, ListServicesRequest, NetworkPolicy, UpsertNetworkPolicyRequest,
    UpsertServiceRequest,
};
use kxdp_proto::dataplane::DataplaneState;
use kxdp_testkit::{free_port, TempDir};
use tonic::transport::Channel;
use tonic::Code;

/// etcd members on loopback, random ports, data in a temp dir; killed
/// (by PID, through their Child) on drop.
struct Etcd {
    members: Vec<Option<std::process::Child>>,
    /// How each member was started, to start it again.
    commands: Vec<(Vec<String>, std::path::PathBuf)>,
    access: Access,
    /// The client port of each member.
    ports: Vec<u16>,
    _dir: TempDir,
}

const ETCD: &str = "/usr/bin/etcd";

impl Etcd {
    /// `n` members serving plaintext.
    fn start(n: usize) -> Etcd {
        Etcd::start_with(n, None)
    }

    /// One member serving clients over TLS with `pki`'s certificates
    /// (etcd-pki.sh's), and only clients with a certificate of its CA.
    fn start_tls(pki: &Path) -> Etcd {
        Etcd::start_with(1, Some(pki))
    }

    /// Fails the test when etcd is not installed (it never skips itself).
    fn start_with(n: usize, pki: Option<&Path>) -> Etcd {
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
        let scheme = if pki.is_some() { "https" } else { "http" };
        let tls: Vec<String> = match pki {
            None => Vec::new(),
            Some(pki) => {
                let file = |f: &str| pki.join(f).to_string_lossy().to_string();
                vec![
                    "--client-cert-auth".into(),
                    "--trusted-ca-file".into(),
                    file("ca.pem"),
                    "--cert-file".into(),
                    file("server.pem"),
                    "--key-file".into(),
                    file("server-key.pem"),
                ]
            }
        };
        let commands: Vec<(Vec<String>, std::path::PathBuf)> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let mut args: Vec<String> = vec![
                    "--name".into(),
                    format!("m{i}"),
                    "--data-dir".into(),
                    dir.0.join(format!("m{i}")).to_string_lossy().into(),
                    "--listen-client-urls".into(),
                    format!("{scheme}://127.0.0.1:{client}"),
                    "--advertise-client-urls".into(),
                    format!("{scheme}://127.0.0.1:{client}"),
                    "--listen-peer-urls".into(),
                    format!("http://127.0.0.1:{peer}"),
                    "--initial-advertise-peer-urls".into(),
                    format!("http://127.0.0.1:{peer}"),
                    "--initial-cluster".into(),
                    initial.join(","),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    "--initial-cluster-token".into(),
                    token.clone(),
                ];
                args.extend(tls.iter().cloned());
                (args, dir.0.join(format!("m{i}.log")))
            })
            .collect();
        let members = commands.iter().map(|c| Some(spawn_member(c))).collect();
        let ports: Vec<u16> = ports.iter().map(|(c, _)| *c).collect();
        let access = match pki {
            None => Access::insecure(
                ports
                    .iter()
                    .map(|c| format!("http://127.0.0.1:{c}"))
                    .collect(),
            ),
            Some(pki) => Access::new(
                &format!("https://127.0.0.1:{}", ports[0]),
                &tls_flags(pki, pki),
            )
            .unwrap(),
        };
        Etcd {
            members,
            commands,
            access,
            ports,
            _dir: dir,
        }
    }

    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = etcd::connect(&self.access).await {
                if c.put("/kxdp-test/ready", "1", None).await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "etcd did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts member `i` again on its data (after [`Etcd::kill`]).
    fn restart(&mut self, i: usize) {
        assert!(self.members[i].is_none(), "member {i} still runs");
        self.members[i] = Some(spawn_member(&self.commands[i]));
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

/// An etcd member with `args`, its stderr appended to `log`.
fn spawn_member((args, log): &(Vec<String>, std::path::PathBuf)) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    std::process::Command::new(ETCD)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
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
        reservation_ttl_s: 60,
    }
}

/// A node's control process in etcd mode, its socket `<dir>/<name>-control.sock`.
async fn start_etcd_control(
    dir: &Path,
    access: &Access,
    node: Registration,
    bootstrap: bool,
) -> Control {
    let listen = dir.join(format!("{}-control.sock", node.name));
    // Its /metrics, for `metrics_text`.
    let metrics = format!("127.0.0.1:{}", free_port());
    std::fs::write(dir.join(format!("{}-metrics", node.name)), &metrics).unwrap();
    let mut config = config(dir, listen, Duration::from_secs(5));
    config.metrics_address = Some(metrics.parse().unwrap());
    let etcd = EtcdConfig {
        access: access.clone(),
        node,
        bootstrap: bootstrap.then(lab_config),
    };
    start(config, Source::Etcd(etcd)).await
}

/// What node `name`'s control process serves on /metrics.
async fn metrics_text(dir: &Path, name: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = std::fs::read_to_string(dir.join(format!("{name}-metrics"))).unwrap();
    let mut c = tokio::net::TcpStream::connect(addr.trim()).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).await.unwrap();
    s
}

/// Node `name` in `dir`: a dataplane double on `<dir>/<name>.sock` and its
/// etcd-mode control process (underlay 172.30.0.<last>).
async fn etcd_node(
    dir: &Path,
    access: &Access,
    name: &str,
    last: u8,
    bootstrap: bool,
) -> (Arc<FakeDataplane>, Served<()>, Control) {
    let fake = FakeDataplane::new(&format!("{name}-1"));
    let served = serve_fake(fake.clone(), dir.join(format!("{name}.sock"))).await;
    let control = start_etcd_control(dir, access, registration(name, last), bootstrap).await;
    (fake, served, control)
}

async fn wait_held(
    what: &str,
    fake: &Arc<FakeDataplane>,
    f: impl Fn(&DataplaneState) -> bool,
) -> DataplaneState {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = fake.held().filter(|s| f(s)) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            fake.held()
        );
        tokio::time::sleep(TICK).await;
    }
}

fn pod_cidr(s: &DataplaneState) -> String {
    s.node.as_ref().unwrap().pod_cidr.clone()
}

/// Host `host` of the pod CIDR the node holding `s` has.
fn pod_ip(s: &DataplaneState, host: u32) -> String {
    let net: ipnet::Ipv4Net = pod_cidr(s).parse().unwrap();
    std::net::Ipv4Addr::from(u32::from(net.network()) + host).to_string()
}

/// Adds pod `cni/eth0` on the node holding `to` (`fake` serves it)
/// through `client`, and waits until that dataplane holds it.
async fn pod_through(
    client: &mut ControlClient<Channel>,
    to: &DataplaneState,
    fake: &Arc<FakeDataplane>,
) -> AddPodRequest {
    let node = &to.node.as_ref().unwrap().name;
    let ip = pod_ip(to, 9);
    let mut req = add_pod_request(node, "cni/eth0", &ip, "veth9");
    req.mac = "0a:58:0a:f4:02:09".into();
    client.add_pod(req.clone()).await.unwrap();
    wait_held(&format!("{node} holds the pod"), fake, |s| {
        s.pods.iter().any(|p| p.ip == ip)
    })
    .await;
    req
}

/// Writes `default/web` (one endpoint, `a_ip` on node a) through `client`
/// and waits until both dataplanes hold it.
async fn service_through(
    client: &mut ControlClient<Channel>,
    a_ip: &str,
    fake_a: &Arc<FakeDataplane>,
    fake_b: &Arc<FakeDataplane>,
) {
    let mut service = web_service("default/web", "10.96.0.10", &[a_ip]);
    service.ports[0].node_port = 30080;
    client
        .upsert_service(UpsertServiceRequest {
            service: Some(service),
        })
        .await
        .unwrap();
    let a = wait_held("a holds the service", fake_a, |s| s.services.len() == 1).await;
    assert_eq!(a.services[0].endpoints[0].node, "a");
    wait_held("b holds the service", fake_b, |s| s.services.len() == 1).await;
}

#[tokio::test]
async fn etcd_nodes_register_share_state_restart_and_expire() {
    let etcd = Etcd::start(1);
    etcd.ready().await;
    kxdp_proto::logging::init_for_tests();
    let tmp = TempDir::new("etcd-nodes");
    let (fake_a, served_a, control_a) = etcd_node(&tmp.0, &etcd.access, "a", 11, true).await;
    let (fake_b, served_b, control_b) = etcd_node(&tmp.0, &etcd.access, "b", 12, false).await;
    let (mut ca, mut cb) = (control_a.client.clone(), control_b.client.clone());

    // Each dataplane gets its own pod CIDR and a route to the other's.
    let a = wait_held("a sees b", &fake_a, |s| s.remote_nodes.len() == 1).await;
    let b = wait_held("b sees a", &fake_b, |s| s.remote_nodes.len() == 1).await;
    assert_ne!(pod_cidr(&a), pod_cidr(&b));
    // The store's health in /metrics: the watch is up, the lease kept alive.
    wait_until("a's etcd watch and lease in its metrics", || async {
        let m = metrics_text(&tmp.0, "a").await;
        [
            "kxdp_control_store_info{store=\"etcd\"} 1",
            "kxdp_control_etcd_watch_up 1",
            "kxdp_control_etcd_lease_alive 1",
            "kxdp_control_node_synced{node=\"a\"} 1",
        ]
        .iter()
        .all(|l| m.contains(l))
        .then_some(())
    })
    .await;
    assert_eq!(a.remote_nodes[0].pod_cidr, pod_cidr(&b));
    assert_eq!(a.remote_nodes[0].vtep_ip, "172.30.0.12");
    assert_eq!(b.remote_nodes[0].name, "a");
    assert_eq!(a.node.as_ref().unwrap().service_cidr, "10.96.0.0/12");
    // Each process programs only its own node.
    assert!(fake_a
        .syncs()
        .iter()
        .all(|s| s.node.as_ref().unwrap().name == "a"));
    assert_eq!(node_info(&mut ca, "b").await.status, "remote");
    let err = ca
        .apply_cluster(ApplyClusterRequest {
            yaml: cluster_yaml(false),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A pod written through a's API reaches b's dataplane through etcd.
    let b_net: ipnet::Ipv4Net = pod_cidr(&b).parse().unwrap();
    let req = pod_through(&mut ca, &b, &fake_b).await;
    // Invalid through etcd is invalid too, and a retry is a no-op.
    let mut bad = req.clone();
    bad.name = "other".into();
    let err = ca.add_pod(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    ca.add_pod(req.clone()).await.unwrap();
    // A pod on a, through a: the reply waits for a's dataplane.
    let a_ip = pod_ip(&a, 9);
    let reply = ca
        .add_pod(add_pod_request("a", "cni/eth0", &a_ip, "veth9"))
        .await
        .unwrap()
        .into_inner();
    let now = fake_a.held().unwrap();
    assert!(now.generation >= reply.generation);
    assert!(now.pods.iter().any(|p| p.ip == a_ip));

    // A service written through b reaches both dataplanes.
    service_through(&mut cb, &a_ip, &fake_a, &fake_b).await;
    let listed = ca
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.services.len(), 1);

    // b's control process restarts (its dataplane keeps its state): it
    // takes back the same pod CIDR and resyncs b once; a never changes.
    let b_syncs = fake_b.syncs().len();
    control_b.stop().await;
    let control_b = start_etcd_control(&tmp.0, &etcd.access, registration("b", 12), false).await;
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
        fake_a.held().unwrap().remote_nodes[0].pod_cidr,
        b_net.to_string()
    );

    // b disappears for good: its reservation (here 4 s) expires and a
    // drops its route. Its liveness (2 s) lapses first, which keeps it.
    control_b.stop().await;
    let short = Registration {
        reservation_ttl_s: 4,
        ..registration("b", 12)
    };
    let control_b = start_etcd_control(&tmp.0, &etcd.access, short, false).await;
    wait_held("b back", &fake_b, |s| pod_cidr(s) == b_net.to_string()).await;
    control_b.stop().await;
    let gone = Instant::now();
    wait_held("a drops b", &fake_a, |s| s.remote_nodes.is_empty()).await;
    assert!(
        gone.elapsed() < Duration::from_secs(12),
        "{:?}",
        gone.elapsed()
    );

    control_a.stop().await;
    served_a.stop().await;
    served_b.stop().await;
}

/// Service `name` in `s`, with each endpoint's (ip, ready, serving).
/// A policy and namespace labels written through one node's control
/// process reach the other node's compiled rules, are listed by both, and
/// go from both when deleted through the other.
#[tokio::test]
async fn etcd_network_policies_written_through_one_node_reach_every_node() {
    let etcd = Etcd::start(1);
    etcd.ready().await;
    let tmp = TempDir::new("etcd-netpol");
    let (fake_a, served_a, control_a) = etcd_node(&tmp.0, &etcd.access, "a", 11, true).await;
    let (fake_b, served_b, control_b) = etcd_node(&tmp.0, &etcd.access, "b", 12, false).await;
    let (mut ca, mut cb) = (control_a.client.clone(), control_b.client.clone());
    wait_held("a sees b", &fake_a, |s| s.remote_nodes.len() == 1).await;
    let b = wait_held("b sees a", &fake_b, |s| s.remote_nodes.len() == 1).await;
    pod_through(&mut cb, &b, &fake_b).await;

    ca.upsert_namespace(namespace_labelled("default", "team", "blue"))
        .await
        .unwrap();
    ca.upsert_network_policy(UpsertNetworkPolicyRequest {
        policies: vec![NetworkPolicy {
            name: "deny".into(),
            ..Default::default()
        }],
    })
    .await
    .unwrap();
    let held = wait_held("b's pod isolated", &fake_b, |s| {
        s.pods.iter().all(|p| p.ingress.is_some())
    })
    .await;
    assert_eq!(held.pods[0].ingress.as_ref().unwrap().peers, vec![]);
    let listed = cb
        .list_network_policies(ListNetworkPoliciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .policies;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0].name.as_str(), listed[0].source.as_str()),
        ("deny", "runtime")
    );
    let namespaces = cb
        .list_namespaces(ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .namespaces;
    assert_eq!(namespaces[0].labels["team"], "blue");

    // An invalid one is refused before it reaches etcd.
    let err = cb
        .upsert_network_policy(UpsertNetworkPolicyRequest {
            policies: vec![NetworkPolicy {
                name: "x".into(),
                policy_types: vec!["Sideways".into()],
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("policies[0].policy_types[0]"),
        "{}",
        err.message()
    );

    let del = cb
        .delete_network_policy(DeleteNetworkPolicyRequest {
            namespace: "default".into(),
            name: "deny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(del.existed);
    wait_held("b's pod open again", &fake_b, |s| {
        s.pods.iter().all(|p| p.ingress.is_none())
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ca
        .list_network_policies(ListNetworkPoliciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .policies
        .is_empty()
    {
        assert!(Instant::now() < deadline, "a still lists the policy");
        tokio::time::sleep(TICK).await;
    }
    control_a.stop().await;
    control_b.stop().await;
    served_a.stop().await;
    served_b.stop().await;
}

fn endpoints_of(s: &DataplaneState, name: &str) -> Option<Vec<(String, bool, bool)>> {
    s.services.iter().find(|x| x.name == name).map(|x| {
        x.endpoints
            .iter()
            .map(|e| (e.ip.clone(), e.ready, e.serving))
            .collect()
    })
}

#[tokio::test]
async fn etcd_a_node_away_past_its_lease_costs_only_its_endpoints_and_keeps_its_cidr() {
    let etcd = Etcd::start(1);
    etcd.ready().await;
    kxdp_proto::logging::init_for_tests();
    let tmp = TempDir::new("etcd-away");
    let (fake_a, served_a, control_a) = etcd_node(&tmp.0, &etcd.access, "a", 11, true).await;
    let (fake_b, served_b, control_b) = etcd_node(&tmp.0, &etcd.access, "b", 12, false).await;
    let mut ca = control_a.client.clone();
    let a = wait_held("a sees b", &fake_a, |s| s.remote_nodes.len() == 1).await;
    let b = wait_held("b sees a", &fake_b, |s| s.remote_nodes.len() == 1).await;
    let (a_ip, b_ip) = (pod_ip(&a, 9), pod_ip(&b, 9));
    // default/web: one endpoint on each node; default/local: on a only.
    for s in [
        web_service("default/web", "10.96.0.10", &[&a_ip, &b_ip]),
        web_service("default/local", "10.96.0.11", &[&a_ip]),
    ] {
        ca.upsert_service(UpsertServiceRequest { service: Some(s) })
            .await
            .unwrap();
    }
    let all_ready = vec![(a_ip.clone(), true, true), (b_ip.clone(), true, true)];
    wait_held("a holds both services", &fake_a, |s| {
        endpoints_of(s, "default/web") == Some(all_ready.clone())
            && endpoints_of(s, "default/local").is_some()
    })
    .await;
    let syncs_before = fake_a.syncs().len();

    // b's control process is away for three liveness TTLs (2 s each).
    control_b.stop().await;
    let away = Instant::now();
    let b_away = vec![(a_ip.clone(), true, true), (b_ip.clone(), false, false)];
    wait_held("a takes b's endpoint as not ready", &fake_a, |s| {
        endpoints_of(s, "default/web") == Some(b_away.clone())
    })
    .await;
    while away.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(TICK).await;
    }
    // Everything a was sent meanwhile kept both services, a's endpoint
    // ready, and b's route and CIDR.
    let meanwhile = fake_a.syncs();
    assert!(meanwhile.len() > syncs_before, "a was never told");
    for s in &meanwhile[syncs_before..] {
        let web = endpoints_of(s, "default/web").expect("default/web kept");
        assert!(web.contains(&(a_ip.clone(), true, true)), "{web:?}");
        assert_eq!(
            endpoints_of(s, "default/local"),
            Some(vec![(a_ip.clone(), true, true)])
        );
        assert_eq!(s.remote_nodes.len(), 1, "b's route kept");
        assert_eq!(s.remote_nodes[0].pod_cidr, pod_cidr(&b));
    }

    // b comes back: the same pod CIDR, and its endpoint is ready again.
    let control_b = start_etcd_control(&tmp.0, &etcd.access, registration("b", 12), false).await;
    wait_held("a takes b's endpoint as ready again", &fake_a, |s| {
        endpoints_of(s, "default/web") == Some(all_ready.clone())
    })
    .await;
    let b2 = wait_held("b synced again", &fake_b, |s| s.services.len() == 2).await;
    assert_eq!(pod_cidr(&b2), pod_cidr(&b), "b's pod CIDR is unchanged");

    control_a.stop().await;
    control_b.stop().await;
    served_a.stop().await;
    served_b.stop().await;
}

#[tokio::test]
async fn etcd_watch_recovers_from_a_compaction_with_a_full_list() {
    let etcd = Etcd::start(1);
    etcd.ready().await;
    kxdp_proto::logging::init_for_tests();
    let mut client = etcd::connect(&etcd.access).await.unwrap();
    etcd::init_config(&mut client, &lab_config()).await.unwrap();
    let listed = etcd::list(&mut client).await.unwrap();
    // After the listing: a service written, and etcd compacted past the
    // listed revision, so a watch from there cannot be served.
    use prost::Message;
    let svc = web_service("default/x", "10.96.0.12", &[]);
    client
        .put("/kxdp/services/default/x", svc.encode_to_vec(), None)
        .await
        .unwrap();
    // One more write (outside /kxdp/), so that compacting at its revision
    // removes the service's: the watch from listed + 1 is compacted away.
    let rev = client
        .put("/kxdp-test/bump", "1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert!(rev > listed.1 + 1);
    client.compact(rev, None).await.unwrap();

    let shared = kxdp_control::reconcile::Shared::scoped(
        Cluster::lab(),
        std::path::PathBuf::from("/nonexistent"),
        TICK,
        Some("a".into()),
    );
    let follower = tokio::spawn(etcd::follow_from(
        client.clone(),
        shared.clone(),
        Some(listed),
    ));
    let mut rx = shared.desired.subscribe();
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|d| d.runtime.services.contains_key("default/x")),
    )
    .await;
    follower.abort();
    assert!(
        got.is_ok(),
        "the watch from a compacted revision never recovered: {:?}",
        shared.current().runtime
    );
}

#[tokio::test]
async fn etcd_a_lost_watch_is_followed_again_after_etcd_restarts() {
    let mut etcd = Etcd::start(1);
    etcd.ready().await;
    kxdp_proto::logging::init_for_tests();
    let tmp = TempDir::new("etcd-lost-watch");
    let (fake_a, served_a, control_a) = etcd_node(&tmp.0, &etcd.access, "a", 11, true).await;
    let a = wait_held("a registered", &fake_a, |s| s.node.is_some()).await;
    // etcd goes away (every watch with it) and comes back on its data.
    etcd.kill(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    etcd.restart(0);
    etcd.ready().await;
    // A write straight to etcd reaches a's dataplane: a watches again.
    let mut client = etcd::connect(&etcd.access).await.unwrap();
    let ip = pod_ip(&a, 7);
    let req = add_pod_request("a", "after", &ip, "veth7");
    use prost::Message;
    client
        .put("/kxdp/pods/a/after", req.encode_to_vec(), None)
        .await
        .unwrap();
    wait_held("a holds the pod written after the restart", &fake_a, |s| {
        s.pods.iter().any(|p| p.ip == ip)
    })
    .await;
    // a is still registered (its leases outlived the outage) with its CIDR.
    assert_eq!(pod_cidr(&fake_a.held().unwrap()), pod_cidr(&a));
    control_a.stop().await;
    served_a.stop().await;
}

#[tokio::test]
async fn etcd_concurrent_leases_never_overlap() {
    let etcd = Etcd::start(1);
    etcd.ready().await;
    let mut client = etcd::connect(&etcd.access).await.unwrap();
    let mut config = lab_config();
    // A small cluster CIDR: 8 subnets for 8 nodes asking at once.
    config.cidr = "10.244.0.0/21".into();
    etcd::init_config(&mut client, &config).await.unwrap();
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let access = etcd.access.clone();
            let config = config.clone();
            tokio::spawn(async move {
                let mut c = etcd::connect(&access).await.unwrap();
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
    let (fake_a, served_a, control_a) = etcd_node(&tmp.0, &etcd.access, "a", 11, true).await;
    let (fake_b, served_b, control_b) = etcd_node(&tmp.0, &etcd.access, "b", 12, false).await;
    let mut ca = control_a.client.clone();
    wait_held("a sees b", &fake_a, |s| s.remote_nodes.len() == 1).await;

    // The first member (where clients connect first) dies.
    etcd.kill(0);
    // Writes still go through, and both nodes still see each other after
    // several lease TTLs (keep-alives reach the other members).
    let a = fake_a.held().unwrap();
    let ip = pod_ip(&a, 5);
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
    assert_eq!(fake_a.held().unwrap().remote_nodes.len(), 1);
    assert_eq!(fake_b.held().unwrap().remote_nodes.len(), 1);
    assert!(fake_a.held().unwrap().pods.iter().any(|p| p.ip == ip));

    control_a.stop().await;
    control_b.stop().await;
    served_a.stop().await;
    served_b.stop().await;
}

/// A CA and etcd's and a client's certificates, made by
/// scripts/provision/etcd-pki.sh in `dir`.
fn pki(dir: &Path) -> std::path::PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/provision/etcd-pki.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "etcd-pki.sh: {out:?}");
    dir.to_path_buf()
}

/// TLS flags trusting `ca`'s CA, with `client`'s client certificate.
fn tls_flags(ca: &Path, client: &Path) -> EtcdFlags {
    EtcdFlags {
        etcd_ca: Some(ca.join("ca.pem")),
        etcd_cert: Some(client.join("client.pem")),
        etcd_key: Some(client.join("client-key.pem")),
        etcd_insecure: false,
    }
}

#[tokio::test]
async fn etcd_over_tls_with_client_certificates_shares_state() {
    let tmp = TempDir::new("etcd-tls");
    let etcd = Etcd::start_tls(&pki(&tmp.0.join("pki")));
    etcd.ready().await;
    let (fake_a, served_a, control_a) = etcd_node(&tmp.0, &etcd.access, "a", 11, true).await;
    let (fake_b, served_b, control_b) = etcd_node(&tmp.0, &etcd.access, "b", 12, false).await;
    let a = wait_held("a sees b", &fake_a, |s| s.remote_nodes.len() == 1).await;
    let b = wait_held("b sees a", &fake_b, |s| s.remote_nodes.len() == 1).await;
    assert_eq!(b.remote_nodes[0].pod_cidr, pod_cidr(&a));
    pod_through(&mut control_a.client.clone(), &b, &fake_b).await;
    service_through(
        &mut control_b.client.clone(),
        &pod_ip(&a, 9),
        &fake_a,
        &fake_b,
    )
    .await;
    control_a.stop().await;
    control_b.stop().await;
    served_a.stop().await;
    served_b.stop().await;
}

/// What a control process joining through `access` fails with.
async fn join_error(dir: &Path, access: &Access) -> String {
    let etcd = EtcdConfig {
        access: access.clone(),
        node: registration("a", 11),
        bootstrap: Some(lab_config()),
    };
    let listen = dir.join("refused-control.sock");
    let config = config(dir, listen, Duration::from_secs(5));
    let never = std::future::pending::<()>();
    let run = kxdp_control::daemon::run(config, Source::Etcd(etcd), never);
    let e = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the join neither failed nor finished")
        .expect_err("joined");
    format!("{e:#}")
}

#[tokio::test]
async fn a_tls_etcd_refuses_other_cas_clients_and_plaintext() {
    let tmp = TempDir::new("etcd-tls-refused");
    let good = pki(&tmp.0.join("pki"));
    let other = pki(&tmp.0.join("other"));
    let etcd = Etcd::start_tls(&good);
    etcd.ready().await;
    let url = format!("https://127.0.0.1:{}", etcd.ports[0]);
    let refused = format!("cannot connect to etcd at {url} (etcd closed the connection");

    // A client certificate of another CA: etcd ends the connection.
    let access = Access::new(&url, &tls_flags(&good, &other)).unwrap();
    let e = join_error(&tmp.0, &access).await;
    assert!(
        e.contains(&refused) && e.contains("check --etcd-cert"),
        "{e}"
    );
    // No client certificate at all.
    let mut flags = tls_flags(&good, &good);
    (flags.etcd_cert, flags.etcd_key) = (None, None);
    let e = join_error(&tmp.0, &Access::new(&url, &flags).unwrap()).await;
    assert!(e.contains(&refused), "{e}");
    // Trusting another CA: etcd's own certificate is refused.
    let access = Access::new(&url, &tls_flags(&other, &good)).unwrap();
    let e = join_error(&tmp.0, &access).await;
    assert!(
        e.contains(&format!("cannot connect to etcd at {url}"))
            && e.contains("invalid peer certificate: UnknownIssuer"),
        "{e}"
    );
    // Plaintext to the TLS port.
    let plain = format!("http://127.0.0.1:{}", etcd.ports[0]);
    let e = join_error(&tmp.0, &Access::insecure(vec![plain.clone()])).await;
    assert!(
        e.contains(&format!("cannot connect to etcd at {plain}"))
            && e.contains("if it serves TLS, use https://"),
        "{e}"
    );
    // None of them wrote anything.
    let mut client = etcd::connect(&etcd.access).await.unwrap();
    assert!(etcd::read_config(&mut client).await.unwrap().is_none());
}

/// kxdp-control with these store flags (and nothing from the environment):
/// its exit status and stderr.
fn control_with(store_flags: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kxdp-control"))
        .env_clear()
        .args(store_flags)
        .args("--node n1 --underlay-ip 192.0.2.1 --uplink eth1".split(' '))
        .args(["--listen", "/nonexistent/control.sock"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_store_flags_stop_kxdp_control_at_startup_with_exit_2() {
    let tmp = TempDir::new("etcd-flags");
    let pki = pki(&tmp.0.join("pki"));
    let file = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client-key.pem"));
    let missing = file("missing.pem");
    let https = "https://127.0.0.1:1";
    for (flags, says) in [
        (vec!["--store", "http://127.0.0.1:1"], "--etcd-insecure"),
        (vec!["--store", "etcd://127.0.0.1:1"], "https://host:port"),
        (vec!["--store", https], "needs --etcd-ca"),
        (
            vec!["--store", https, "--etcd-ca", &ca, "--etcd-cert", &cert],
            "--etcd-cert needs --etcd-key",
        ),
        (
            vec!["--store", https, "--etcd-ca", &ca, "--etcd-key", &key],
            "--etcd-key needs --etcd-cert",
        ),
        (
            vec!["--store", https, "--etcd-ca", &missing],
            "cannot read --etcd-ca",
        ),
        (
            vec!["--store", https, "--etcd-ca", &key],
            "no PEM CERTIFICATE",
        ),
        (
            vec!["--store", https, "--etcd-ca", &ca, "--etcd-insecure"],
            "--etcd-insecure is for an http:// store",
        ),
        (
            vec![
                "--store",
                "http://127.0.0.1:1",
                "--etcd-insecure",
                "--etcd-ca",
                &ca,
            ],
            "are for an https:// store",
        ),
        (
            vec!["--cluster", "x.yaml", "--etcd-insecure"],
            "need --store",
        ),
    ] {
        let (code, stderr) = control_with(&flags);
        assert_eq!(code, Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
}
