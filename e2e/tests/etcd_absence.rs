//! Etcd mode on real dataplanes: one node's kxdp-control is away longer
//! than its liveness lease while a byte-checked stream on the other node
//! keeps flowing to a healthy backend of a service that also has an
//! endpoint on the absent node; the absent node comes back with the same
//! pod CIDR. The lab's file-mode control is replaced by one etcd-mode
//! control per node (Debian's etcd, on a free loopback port; the test
//! fails when etcd is missing). A network policy written through one
//! node's control process then isolates the other node's pods.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kxdp_e2e::{
    check, pid_alive, pod_mac_ifname, require_root, tcp_connect, tcp_listen, EchoStream, Lab,
    LabOpts,
};
use kxdp_testkit::{free_port, TempDir};
use serde_json::Value;

const ETCD: &str = "/usr/bin/etcd";
const TTL_S: u64 = 3;

/// A child process killed (by its PID) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn etcd(dir: &TempDir) -> (Proc, u16) {
    assert!(
        std::path::Path::new(ETCD).exists(),
        "{ETCD} missing: install Debian's etcd-server (scripts/deps.sh does)"
    );
    let (client, peer) = (free_port(), free_port());
    let log = std::fs::File::create(dir.0.join("etcd.log")).unwrap();
    let child = Command::new(ETCD)
        .args(["--name", "m0", "--data-dir"])
        .arg(dir.0.join("m0"))
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
            &format!("m0=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Ready when its /health says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = std::net::TcpStream::connect(("127.0.0.1", client))
            .and_then(|mut c| {
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                c.write_all(b"GET /health HTTP/1.0\r\n\r\n")?;
                let mut answer = String::new();
                c.read_to_string(&mut answer)?;
                Ok(answer.contains("\"health\":\"true\""))
            })
            .unwrap_or(false);
        if healthy {
            break;
        }
        assert!(Instant::now() < deadline, "etcd did not come up");
        thread::sleep(Duration::from_millis(200));
    }
    (Proc(child), client)
}

/// Node `node`'s etcd-mode control process, serving `<run>/<node>-etcd.sock`.
fn control(lab: &Lab, port: u16, node: &str, cluster: &str) -> Proc {
    let n = lab.node(node);
    // A killed predecessor leaves its socket behind.
    let _ = std::fs::remove_file(socket(lab, node));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(lab.run_dir.join(format!("{node}-etcd-control.log")))
        .unwrap();
    let child = Command::new(lab.bin_dir.join("kxdp-control"))
        .args([
            "--store",
            &format!("http://127.0.0.1:{port}"),
            "--etcd-insecure",
        ])
        .args(["--cluster", cluster, "--node", node, "--uplink", "eth0"])
        .args(["--underlay-ip", &n.underlay_ip.to_string()])
        .args(["--lease-ttl-s", &TTL_S.to_string()])
        .arg("--listen")
        .arg(socket(lab, node))
        .arg("--dataplane-dir")
        .arg(&lab.run_dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket(lab, node).exists() {
        assert!(
            Instant::now() < deadline,
            "{node}'s etcd-mode control did not start"
        );
        thread::sleep(Duration::from_millis(100));
    }
    Proc(child)
}

fn socket(lab: &Lab, node: &str) -> std::path::PathBuf {
    lab.run_dir.join(format!("{node}-etcd.sock"))
}

fn ctl_raw(lab: &Lab, node: &str, args: &[&str]) -> std::process::Output {
    let sock = socket(lab, node);
    let mut full = vec!["--control", sock.to_str().unwrap()];
    full.extend_from_slice(args);
    Command::new(lab.bin_dir.join("kxdpctl"))
        .args(&full)
        .output()
        .unwrap()
}

fn ctl(lab: &Lab, node: &str, args: &[&str]) -> String {
    check(
        &format!("kxdpctl ({node}) {}", args.join(" ")),
        ctl_raw(lab, node, args),
    )
}

fn json(lab: &Lab, node: &str, args: &[&str]) -> Value {
    serde_json::from_str(&ctl(lab, node, args)).unwrap()
}

fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// `node`'s pod CIDR as its own control process has it ("" until it answers).
fn pod_cidr(lab: &Lab, node: &str) -> String {
    let out = ctl_raw(lab, node, &["nodes", "--json"]);
    let Ok(nodes) = serde_json::from_slice::<Value>(&out.stdout) else {
        eprintln!("kxdpctl nodes: {}", String::from_utf8_lossy(&out.stderr));
        return String::new();
    };
    nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .map(|n| n["pod_cidr"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

/// Echo server on `ip:port` in `ns` for any number of connections, until `stop`.
fn echo_server(ns: &str, ip: Ipv4Addr, port: u16, stop: Arc<AtomicBool>) {
    let l = tcp_listen(ns, ip, port);
    l.set_nonblocking(true).unwrap();
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    thread::spawn(move || {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = s.shutdown(Shutdown::Write);
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    });
}

#[test]
fn etcd_a_node_away_past_its_lease_keeps_other_nodes_flows_and_its_cidr() {
    require_root!();
    let dir = TempDir::new("etcd-absence");
    // n1 takes 10.244.0.0/24 from etcd first, n2 10.244.1.0/24: the lab is
    // numbered so.
    let text = std::fs::read_to_string(kxdp_e2e::repo_root().join("config/lab-cluster.yaml"))
        .unwrap()
        .replace("10.244.1.", "10.244.0.")
        .replace("10.244.2.", "10.244.1.");
    let cluster = dir.0.join("cluster.yaml");
    std::fs::write(&cluster, text).unwrap();
    let lab = Lab::up(LabOpts {
        cluster: Some(cluster.clone()),
        ..LabOpts::default()
    });
    let (_etcd, port) = etcd(&dir);
    // The lab's file-mode control goes; one etcd-mode control per node.
    let pid: u32 = std::fs::read_to_string(lab.run_dir.join("control.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    check(
        "kill the lab's control",
        Command::new("kill").arg(pid.to_string()).output().unwrap(),
    );
    wait("the lab's control to stop", 10, || !pid_alive(pid));
    let cluster = cluster.to_str().unwrap();
    let mut c1 = Some(control(&lab, port, "n1", cluster));
    wait("n1 registered", 20, || {
        pod_cidr(&lab, "n1") == "10.244.0.0/24"
    });
    let _c2 = control(&lab, port, "n2", cluster);
    wait("n2 registered", 20, || {
        pod_cidr(&lab, "n2") == "10.244.1.0/24"
    });
    for (node, ip) in [
        ("n1", "10.244.0.2"),
        ("n1", "10.244.0.3"),
        ("n2", "10.244.1.2"),
        ("n2", "10.244.1.3"),
    ] {
        let a: Ipv4Addr = ip.parse().unwrap();
        let name = if a.octets()[3] == 2 { "p1" } else { "p2" };
        let (mac, ifname) = pod_mac_ifname(a);
        ctl(
            &lab,
            node,
            &[
                "pod", "add", "--node", node, "--name", name, "--ip", ip, "--mac", &mac,
                "--ifname", &ifname,
            ],
        );
    }
    let svc = dir.0.join("web.yaml");
    std::fs::write(
        &svc,
        "name: default/web\ncluster_ip: 10.96.0.10\nports: [{ port: 80, target_port: 8080 }]\n\
         endpoints: [{ ip: 10.244.0.2 }, { ip: 10.244.1.2 }]\n",
    )
    .unwrap();
    ctl(&lab, "n2", &["service", "apply", svc.to_str().unwrap()]);

    let stop_servers = Arc::new(AtomicBool::new(false));
    let healthy = Ipv4Addr::new(10, 244, 1, 2);
    echo_server(
        &lab.ns("n1-p1"),
        Ipv4Addr::new(10, 244, 0, 2),
        8080,
        stop_servers.clone(),
    );
    echo_server(&lab.ns("n2-p1"), healthy, 8080, stop_servers.clone());
    // A flow from n2-p2 that Maglev gives to n2-p1 (the healthy backend).
    let vip = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 10), 80));
    let mut stream = None;
    for _ in 0..20 {
        let s = tcp_connect(&lab.ns("n2-p2"), vip, Duration::from_secs(10)).expect("connect");
        let local = s.local_addr().unwrap();
        let ct = json(
            &lab,
            "n2",
            &[
                "conntrack",
                "--node",
                "n2",
                "--service",
                "default/web",
                "--json",
            ],
        );
        let to_healthy = ct["entries"].as_array().into_iter().flatten().any(|e| {
            e["client"].as_str() == Some(&local.to_string())
                && e["backend"]
                    .as_str()
                    .is_some_and(|b| b.starts_with("10.244.1.2:"))
        });
        if to_healthy {
            stream = Some(s);
            break;
        }
    }
    let s = stream.expect("no flow landed on n2-p1 in 20 tries");
    let stream = EchoStream::start(s, 5, Duration::from_secs(90));

    // n1's control process goes away for three liveness TTLs.
    drop(c1.take());
    let backends = |node: &str| json(&lab, node, &["backends", "default/web", "--json"]);
    wait("n2 takes n1's endpoint as not ready", 20, || {
        let b = backends("n2");
        b["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["ip"] == "10.244.0.2" && e["ready"] == false)
    });
    thread::sleep(Duration::from_secs(3 * TTL_S));
    let b = backends("n2");
    let eps = b["endpoints"].as_array().cloned().unwrap_or_default();
    assert!(
        eps.iter()
            .any(|e| e["ip"] == "10.244.1.2" && e["ready"] == true),
        "the healthy endpoint stays: {b}"
    );
    // n1 comes back with the same pod CIDR.
    let _c1 = control(&lab, port, "n1", cluster);
    wait("n1 back with its CIDR", 20, || {
        pod_cidr(&lab, "n1") == "10.244.0.0/24"
    });
    wait("n2 takes n1's endpoint as ready again", 20, || {
        backends("n2")["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| e["ready"] == true)
    });
    thread::sleep(Duration::from_secs(1));
    let sent = stream.finish();
    stop_servers.store(true, Ordering::Relaxed);
    assert!(sent > 1 << 20, "streamed only {sent} bytes");

    // A network policy written through n1's control process reaches the
    // rules n2's compiles for its own pods (through etcd and its watch).
    let deny = dir.0.join("deny.yaml");
    std::fs::write(&deny, "- { name: default/deny, pod_selector: {} }\n").unwrap();
    ctl(
        &lab,
        "n1",
        &["policy", "apply", "-f", deny.to_str().unwrap()],
    );
    wait("n2's pods isolated by default/deny", 20, || {
        let rules = json(&lab, "n2", &["policy", "rules", "--node", "n2", "--json"]);
        let isolated = rules["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["ingress_policies"] == serde_json::json!(["default/deny"]))
            .count();
        isolated == 2
    });
    eprintln!(
        "streamed {sent} bytes across n1's {}s absence, all echoed intact",
        3 * TTL_S
    );
}
