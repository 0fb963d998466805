//! What the dataplane's integration tests share: the real binary in a
//! namespace, and the states they write to it.
// Each test binary uses its own part of this.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kxdp_proto::dataplane as pb;
use kxdp_testkit::{veth, NetNs};

/// A node namespace whose uplink `eth0` (192.0.2.11/24) has a peer in a
/// second namespace, as `state`'s node config expects.
pub fn node_namespaces(tag: &str) -> (NetNs, NetNs) {
    let node_ns = NetNs::new(&format!("{tag}-n"));
    let peer_ns = NetNs::new(&format!("{tag}-p"));
    veth(&node_ns, "eth0", &peer_ns, "peer0");
    node_ns.ip(&["addr", "add", "192.0.2.11/24", "dev", "eth0"]);
    (node_ns, peer_ns)
}

/// A dataplane process in a namespace, killed on drop. Its stderr goes to a
/// file beside the socket, shown if the test fails.
pub struct Dataplane {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Dataplane {
    /// Starts it as node n1 with `extra` arguments; returns once it serves.
    pub fn start(ns: &NetNs, socket: PathBuf, extra: &[&str]) -> Dataplane {
        Dataplane::start_with_env(ns, socket, extra, &[])
    }

    /// The same, with `env` added to its environment.
    pub fn start_with_env(
        ns: &NetNs,
        socket: PathBuf,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Dataplane {
        let log = socket.with_extension("log");
        let stderr = std::fs::File::create(&log).expect("dataplane log file");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                env!("CARGO_BIN_EXE_kxdp-dataplane"),
                "--node",
                "n1",
                "--socket",
            ])
            .arg(&socket)
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start kxdp-dataplane");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "dataplane socket never appeared");
            std::thread::sleep(Duration::from_millis(50));
        }
        Dataplane { child, socket, log }
    }

    /// How it ended, if it did within `limit`.
    pub fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for kxdp-dataplane") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        if std::thread::panicking() {
            eprintln!("kxdp-dataplane's log:\n{}", self.log());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The lab's n1 on this test's TEST-NET underlay, without a host interface
/// or services (its NodePort range stays explicit: read-back reports the
/// effective one).
pub fn node(uplink: &str) -> pb::NodeConfig {
    pb::NodeConfig {
        uplink: uplink.into(),
        underlay_ip: "192.0.2.11".into(),
        vtep_mac: "0e:58:c0:00:02:0b".into(),
        service_cidr: String::new(),
        host_interface: String::new(),
        ..kxdp_testkit::lab::n1()
    }
}

pub fn pod(name: &str, ip: &str, ifname: &str) -> pb::Pod {
    pb::Pod {
        name: name.into(),
        ip: ip.into(),
        mac: "0a:58:0a:f4:01:02".into(),
        ifname: ifname.into(),
        ..Default::default()
    }
}

pub fn state(generation: u64, pods: Vec<pb::Pod>) -> pb::DataplaneState {
    pb::DataplaneState {
        generation,
        node: Some(node("eth0")),
        remote_nodes: vec![pb::RemoteNode {
            vtep_ip: "192.0.2.12".into(),
            vtep_mac: "0e:58:c0:00:02:0c".into(),
            ..kxdp_testkit::lab::n2_remote()
        }],
        pods,
        services: Vec::new(),
    }
}
