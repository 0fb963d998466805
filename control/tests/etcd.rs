//! The control process in etcd mode, against a real etcd (Debian's
//! etcd-server) and dataplane doubles: registration, leases, the watch.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kxdp_control::cluster::Cluster;
use kxdp_control::etcd::{self, ClusterConfig, EtcdConfig, Registration};
use kxdp_control::store::Source;
use kxdp_proto::control::{ApplyClusterRequest, ListServicesRequest, UpsertServiceRequest};
use kxdp_proto::dataplane::DataplaneState;
use kxdp_testkit::TempDir;
use tonic::Code;

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
    dir: &Path,
    endpoints: &[String],
    node: Registration,
    bootstrap: bool,
) -> Control {
    let listen = dir.join(format!("{}-control.sock", node.name));
    let etcd = EtcdConfig {
        endpoints: endpoints.to_vec(),
        node,
        bootstrap: bootstrap.then(lab_config),
    };
    start(
        config(dir, listen, Duration::from_secs(5)),
        Source::Etcd(etcd),
    )
    .await
}

/// Node `name` in `dir`: a dataplane double on `<dir>/<name>.sock` and its
/// etcd-mode control process (underlay 172.30.0.<last>).
async fn etcd_node(
    dir: &Path,
    endpoints: &[String],
    name: &str,
    last: u8,
    bootstrap: bool,
) -> (Arc<FakeDataplane>, Served<()>, Control) {
    let fake = FakeDataplane::new(&format!("{name}-1"));
    let served = serve_fake(fake.clone(), dir.join(format!("{name}.sock"))).await;
    let control = start_etcd_control(dir, endpoints, registration(name, last), bootstrap).await;
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

#[tokio::test]
async fn etcd_nodes_register_share_state_restart_and_expire() {
    let etcd = Etcd::start(1);
    etcd.ready().await;
    let _ = env_logger::builder().is_test(true).try_init();
    let tmp = TempDir::new("etcd-nodes");
    let (fake_a, served_a, control_a) = etcd_node(&tmp.0, &etcd.endpoints, "a", 11, true).await;
    let (fake_b, served_b, control_b) = etcd_node(&tmp.0, &etcd.endpoints, "b", 12, false).await;
    let (mut ca, mut cb) = (control_a.client.clone(), control_b.client.clone());

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
    let now = fake_a.held().unwrap();
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
    control_b.stop().await;
    let control_b = start_etcd_control(&tmp.0, &etcd.endpoints, registration("b", 12), false).await;
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

    // b disappears for good: its lease expires and a drops its route.
    control_b.stop().await;
    let gone = Instant::now();
    wait_held("a drops b", &fake_a, |s| s.remote_nodes.is_empty()).await;
    assert!(
        gone.elapsed() < Duration::from_secs(8),
        "{:?}",
        gone.elapsed()
    );

    control_a.stop().await;
    served_a.stop().await;
    served_b.stop().await;
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
    let (fake_a, served_a, control_a) = etcd_node(&tmp.0, &etcd.endpoints, "a", 11, true).await;
    let (fake_b, served_b, control_b) = etcd_node(&tmp.0, &etcd.endpoints, "b", 12, false).await;
    let mut ca = control_a.client.clone();
    wait_held("a sees b", &fake_a, |s| s.remote_nodes.len() == 1).await;

    // The first member (where clients connect first) dies.
    etcd.kill(0);
    // Writes still go through, and both nodes still see each other after
    // several lease TTLs (keep-alives reach the other members).
    let a = fake_a.held().unwrap();
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
    assert_eq!(fake_a.held().unwrap().remote_nodes.len(), 1);
    assert_eq!(fake_b.held().unwrap().remote_nodes.len(), 1);
    assert!(fake_a.held().unwrap().pods.iter().any(|p| p.ip == ip));

    control_a.stop().await;
    control_b.stop().await;
    served_a.stop().await;
    served_b.stop().await;
}
