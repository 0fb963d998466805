//! End-to-end test support: a whole kxdp lab per test, brought up by
//! `scripts/lab.sh` with a prefix unique to the test and torn down by a guard.
//!
//! A [`Lab`] is the guard: [`Lab::up`] runs `lab.sh up` (with `KXDP_NO_BUILD=1`,
//! so build first with `cargo build --release --workspace`), and dropping it
//! runs `lab.sh down`, also when the test panics (the dataplane and control
//! logs are printed first). With `KXDP_E2E_KEEP=1` a failed test leaves its lab
//! up for inspection.
//!
//! Traffic helpers open ordinary Rust sockets inside a pod's namespace
//! ([`in_netns`]: a thread that has entered the namespace creates the socket;
//! the socket stays in that namespace whichever thread then uses it), so data
//! can be generated and checked byte for byte. Every socket has timeouts and
//! every command runs under `timeout`: a broken dataplane fails a test, it
//! never hangs it.
//!
//! Tests only send traffic to addresses inside the lab's own namespaces.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use kxdp_testkit::{is_root, require_root, unique_name, NetNs};

/// Fails the test unless it runs as root (it never skips itself).
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root()
    };
}

// ------------------------------------------------------------------ paths

/// The workspace root (this crate's parent directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate has a parent")
        .to_path_buf()
}

/// Where the release binaries are: `KXDP_BIN_DIR`, else
/// `$CARGO_TARGET_DIR/release`, else `target/release`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KXDP_BIN_DIR") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => {
            let t = PathBuf::from(t);
            if t.is_absolute() {
                t
            } else {
                repo_root().join(t)
            }
            .join("release")
        }
        None => repo_root().join("target/release"),
    }
}

// ------------------------------------------------------------------ commands

/// Runs `program args` under `timeout` (SIGTERM after `secs`, SIGKILL 2 s later).
pub fn run_timeout(secs: u64, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("-k")
        .arg("2")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs `program args` in namespace `ns` under `timeout`.
pub fn ns_exec(ns: &str, secs: u64, program: &str, args: &[&str]) -> Output {
    let mut full = vec!["netns", "exec", ns, "timeout", "-k", "2"];
    let secs = secs.to_string();
    full.push(&secs);
    full.push(program);
    full.extend_from_slice(args);
    Command::new("ip")
        .args(&full)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} in {ns}: {e}"))
}

/// Panics with the command's output unless it succeeded; returns stdout.
pub fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a new thread that has entered network namespace `ns` (by name,
/// /var/run/netns/NAME) and returns its result. Sockets `f` creates live in
/// `ns` and may be used from any thread afterwards.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let fd = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// True while process `pid` exists and is not a zombie (an exited process
/// stays in /proc until its new parent reaps it).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// A child process stopped (by its PID) and reaped when dropped. Children
/// here run under `timeout`, which passes SIGTERM on to the command it runs,
/// so the guard sends SIGTERM first and SIGKILL only if that did not work.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Waits up to `limit` for the child to exit on its own; stops it after.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                self.stop();
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, up to 2 s to exit, then SIGKILL; reaps the child.
    pub fn stop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------------ the lab

/// How to bring a lab up.
#[derive(Clone, Debug, Default)]
pub struct LabOpts {
    /// Nodes served by the Linux kernel, flannel-style (`KXDP_KERNEL_NODES`).
    pub kernel_nodes: Vec<String>,
    /// Cluster file; default config/lab-cluster.yaml.
    pub cluster: Option<PathBuf>,
    /// `KXDP_XDP_MODE`; default: the dataplane's.
    pub xdp_mode: Option<String>,
    /// `KXDP_LAB_QUEUES`: queues per veth and workers per dataplane
    /// (default 1).
    pub queues: Option<u32>,
}

impl LabOpts {
    /// Default topology with these nodes served by the kernel.
    pub fn kernel(nodes: &[&str]) -> LabOpts {
        LabOpts {
            kernel_nodes: nodes.iter().map(|s| s.to_string()).collect(),
            ..LabOpts::default()
        }
    }
}

/// A node of the lab's plan (`kxdpctl plan-nodes`).
#[derive(Clone, Debug)]
pub struct NodePlan {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    pub uplink: String,
    pub pod_cidr: String,
    pub gateway: Ipv4Addr,
    pub vtep_mac: [u8; 6],
    /// "kxdp" or "kernel".
    pub dataplane: String,
    pub mtu: u32,
    pub vni: u32,
    pub vxlan_port: u16,
}

/// A pod of the lab's plan (`kxdpctl plan-pods`).
#[derive(Clone, Debug)]
pub struct PodPlan {
    pub node: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mac: [u8; 6],
    pub ifname: String,
    pub mtu: u32,
}

/// A running lab; `lab.sh down` when dropped.
pub struct Lab {
    pub prefix: String,
    pub run_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub nodes: Vec<NodePlan>,
    pub pods: Vec<PodPlan>,
    opts: LabOpts,
}

impl Lab {
    /// Brings up a lab with a fresh prefix; panics (after tearing down) if
    /// `lab.sh up` fails.
    pub fn up(opts: LabOpts) -> Lab {
        let prefix = unique_name("kt");
        let mut lab = Lab {
            run_dir: PathBuf::from(format!("/run/kxdp/{prefix}")),
            prefix,
            bin_dir: bin_dir(),
            nodes: Vec::new(),
            pods: Vec::new(),
            opts,
        };
        let started = Instant::now();
        let out = lab.lab_sh(&["up"], 180);
        if !out.status.success() {
            panic!(
                "lab.sh up failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        lab.nodes = read_json(&lab.run_dir.join("nodes.json"))
            .as_array()
            .expect("nodes.json is an array")
            .iter()
            .map(node_plan)
            .collect();
        lab.pods = read_json(&lab.run_dir.join("pods.json"))
            .as_array()
            .expect("pods.json is an array")
            .iter()
            .map(pod_plan)
            .collect();
        eprintln!(
            "lab {} up in {:.1}s ({} nodes, {} pods{})",
            lab.prefix,
            started.elapsed().as_secs_f64(),
            lab.nodes.len(),
            lab.pods.len(),
            if lab.opts.kernel_nodes.is_empty() {
                String::new()
            } else {
                format!(", kernel nodes {:?}", lab.opts.kernel_nodes)
            }
        );
        lab
    }

    /// Runs `scripts/lab.sh ARGS` for this lab, bounded by `secs`.
    pub fn lab_sh(&self, args: &[&str], secs: u64) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.arg("-k")
            .arg("5")
            .arg(secs.to_string())
            .arg(repo_root().join("scripts/lab.sh"))
            .args(args)
            .env("KXDP_LAB_PREFIX", &self.prefix)
            .env("KXDP_RUN_DIR", &self.run_dir)
            .env("KXDP_BIN_DIR", &self.bin_dir)
            .env("KXDP_NO_BUILD", "1")
            .env("KXDP_KERNEL_NODES", self.opts.kernel_nodes.join(" "))
            .stdin(Stdio::null());
        if let Some(c) = &self.opts.cluster {
            cmd.env("KXDP_CLUSTER", c);
        }
        if let Some(m) = &self.opts.xdp_mode {
            cmd.env("KXDP_XDP_MODE", m);
        }
        if let Some(q) = self.opts.queues {
            cmd.env("KXDP_LAB_QUEUES", q.to_string());
        }
        cmd.output().expect("cannot run scripts/lab.sh")
    }

    /// The namespace of `what` ("n1", "n1-p1", "sw", "ext"): `<prefix>-<what>`.
    pub fn ns(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    pub fn node(&self, name: &str) -> &NodePlan {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the lab"))
    }

    /// A pod by "node-pod", e.g. "n1-p1".
    pub fn pod(&self, id: &str) -> &PodPlan {
        self.pods
            .iter()
            .find(|p| format!("{}-{}", p.node, p.name) == id)
            .unwrap_or_else(|| panic!("no pod {id} in the lab"))
    }

    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join("control.sock")
    }

    /// Runs `kxdpctl --control SOCK ARGS` (bounded), returning its output.
    pub fn kxdpctl_raw(&self, args: &[&str]) -> Output {
        let sock = self.control_socket();
        let mut full = vec!["--control", sock.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        run_timeout(20, self.bin_dir.join("kxdpctl").to_str().unwrap(), &full)
    }

    /// Runs `kxdpctl --control SOCK ARGS` (pass `--json`) and parses its output.
    pub fn kxdpctl(&self, args: &[&str]) -> Value {
        let out = check(
            &format!("kxdpctl {}", args.join(" ")),
            self.kxdpctl_raw(args),
        );
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("kxdpctl {}: not JSON ({e}):\n{out}", args.join(" ")))
    }

    /// `kxdpctl counters --node NODE --json`.
    pub fn counters(&self, node: &str) -> Counters {
        Counters(self.kxdpctl(&["counters", "--node", node, "--json"]))
    }

    /// `kxdpctl nodes --json`, as a list.
    pub fn node_infos(&self) -> Vec<Value> {
        list(self.kxdpctl(&["nodes", "--json"]), "nodes")
    }

    /// `kxdpctl pods --json`, as a list.
    pub fn pod_infos(&self) -> Vec<Value> {
        list(self.kxdpctl(&["pods", "--json"]), "pods")
    }

    /// NODE's entry in `kxdpctl nodes --json`.
    pub fn node_info(&self, node: &str) -> Value {
        self.node_infos()
            .into_iter()
            .find(|n| n["name"] == node)
            .unwrap_or_else(|| panic!("kxdpctl nodes: no node {node}"))
    }

    /// The PID of NODE's dataplane, from RUN_DIR/NODE.pid.
    pub fn dataplane_pid(&self, node: &str) -> u32 {
        let path = self.run_dir.join(format!("{node}.pid"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim()
            .parse()
            .expect("pid file holds a number")
    }

    /// True while NODE's dataplane process runs.
    pub fn dataplane_alive(&self, node: &str) -> bool {
        pid_alive(self.dataplane_pid(node))
    }

    /// The cluster file the lab runs from (the generated copy when some nodes
    /// are kernel nodes).
    pub fn cluster_file(&self) -> PathBuf {
        let f = std::fs::read_to_string(self.run_dir.join("cluster-file")).expect("cluster-file");
        PathBuf::from(f.trim())
    }

    /// The tail of every log in the run directory.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let Ok(dir) = std::fs::read_dir(&self.run_dir) else {
            return out;
        };
        let mut logs: Vec<_> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out += &format!("--- {} (last {} lines)\n", log.display(), tail.len());
            for l in tail.into_iter().rev() {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    /// Creates a pod's namespace and veth the way lab.sh does (for a pod about
    /// to be added with `kxdpctl apply`); the namespace goes with the guard.
    pub fn add_pod_netns(&self, node: &str, name: &str, ip: Ipv4Addr) -> NetNs {
        let n = self.node(node);
        let prefix_len: u8 = n.pod_cidr.rsplit_once('/').unwrap().1.parse().unwrap();
        let ns = NetNs::new(&self.ns(&format!("{node}-{name}")));
        let [a, b, c, d] = ip.octets();
        let ifname = format!("kx{:08x}", u32::from(ip));
        let mac = format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
        let node_ns = self.ns(node);
        let mtu = n.mtu.to_string();
        kxdp_testkit::ip(&kxdp_testkit::veth_add_args(
            &node_ns,
            &ifname,
            ns.name(),
            "eth0",
        ));
        kxdp_testkit::ip(&["-n", &node_ns, "link", "set", &ifname, "mtu", &mtu, "up"]);
        check(
            "ethtool",
            ns_exec(&node_ns, 10, "ethtool", &["-K", &ifname, "tx", "off"]),
        );
        ns.ip(&["link", "set", "eth0", "address", &mac, "mtu", &mtu, "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/{prefix_len}"), "dev", "eth0"]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &n.gateway.to_string(),
            "dev",
            "eth0",
        ]);
        check(
            "ethtool",
            ns.exec(
                "ethtool",
                &["-K", "eth0", "tx", "off", "tso", "off", "gso", "off"],
            ),
        );
        ns
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("lab {} logs:\n{}", self.prefix, self.log_tails(40));
            if std::env::var_os("KXDP_E2E_KEEP").is_some_and(|v| v == "1") {
                eprintln!(
                    "KXDP_E2E_KEEP=1: lab {} left up; remove it with: KXDP_LAB_PREFIX={} scripts/lab.sh down",
                    self.prefix, self.prefix
                );
                return;
            }
        }
        let out = self.lab_sh(&["down"], 60);
        if !out.status.success() {
            eprintln!(
                "lab.sh down for {}: {}\n{}",
                self.prefix,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A list reply, whether printed as an array or as `{"<key>": [...]}`.
fn list(v: Value, key: &str) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Object(mut o) => match o.remove(key) {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("plan: no string {key} in {v}"))
}

fn num_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("plan: no number {key} in {v}"))
}

/// Parses "0a:58:0a:f4:01:02".
pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    assert_eq!(parts.len(), 6, "not a MAC: {s}");
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).unwrap_or_else(|_| panic!("not a MAC: {s}"));
    }
    mac
}

fn node_plan(v: &Value) -> NodePlan {
    NodePlan {
        name: str_field(v, "name").to_string(),
        underlay_ip: str_field(v, "underlay_ip").parse().expect("underlay_ip"),
        uplink: v["uplink"].as_str().unwrap_or("eth0").to_string(),
        pod_cidr: str_field(v, "pod_cidr").to_string(),
        gateway: str_field(v, "gateway").parse().expect("gateway"),
        vtep_mac: parse_mac(str_field(v, "vtep_mac")),
        dataplane: v["dataplane"].as_str().unwrap_or("kxdp").to_string(),
        mtu: num_field(v, "mtu") as u32,
        vni: num_field(v, "vni") as u32,
        vxlan_port: num_field(v, "vxlan_port") as u16,
    }
}

fn pod_plan(v: &Value) -> PodPlan {
    let name = str_field(v, "name");
    PodPlan {
        node: str_field(v, "node").to_string(),
        name: name.rsplit('/').next().unwrap_or(name).to_string(),
        ip: str_field(v, "ip").parse().expect("ip"),
        prefix_len: num_field(v, "prefix_len") as u8,
        gateway: str_field(v, "gateway").parse().expect("gateway"),
        mac: parse_mac(str_field(v, "mac")),
        ifname: str_field(v, "ifname").to_string(),
        mtu: num_field(v, "mtu") as u32,
    }
}

// ------------------------------------------------------------------ counters

/// A node's counters (`kxdpctl counters --json`).
#[derive(Clone, Debug)]
pub struct Counters(pub Value);

impl Counters {
    /// Drop counters by reason. Accepts `drops` as a list of
    /// `{reason, packets}` or as a map reason -> packets.
    pub fn drops(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        match &self.0["drops"] {
            Value::Array(list) => {
                for d in list {
                    if let Some(r) = d["reason"].as_str() {
                        out.insert(r.to_string(), d["packets"].as_u64().unwrap_or(0));
                    }
                }
            }
            Value::Object(map) => {
                for (r, n) in map {
                    out.insert(r.clone(), n.as_u64().unwrap_or(0));
                }
            }
            _ => {}
        }
        out
    }

    /// A top-level number such as `encapsulated`; 0 when absent.
    pub fn get(&self, key: &str) -> u64 {
        self.0[key].as_u64().unwrap_or(0)
    }

    pub fn total_drops(&self) -> u64 {
        self.drops().values().sum()
    }

    /// Per-reason increase since `before` (reasons that did not change omitted).
    pub fn drops_since(&self, before: &Counters) -> BTreeMap<String, u64> {
        let old = before.drops();
        self.drops()
            .into_iter()
            .filter_map(|(r, n)| {
                let d = n.saturating_sub(old.get(&r).copied().unwrap_or(0));
                (d > 0).then_some((r, d))
            })
            .collect()
    }
}

// ------------------------------------------------------------------ data

/// A deterministic pseudo-random byte stream (xorshift64*): the sender and the
/// checker produce the same bytes from the same seed, whatever the chunking.
#[derive(Clone, Debug)]
pub struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens on `ip:port` inside `ns`.
pub fn tcp_listen(ns: &str, ip: Ipv4Addr, port: u16) -> TcpListener {
    in_netns(ns, move || {
        TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"))
    })
}

/// Connects from inside `ns`, retrying for up to `limit` (the first SYNs may
/// be lost while neighbours resolve).
pub fn tcp_connect(ns: &str, to: SocketAddr, limit: Duration) -> Result<TcpStream, String> {
    let name = ns.to_string();
    in_netns(ns, move || {
        let deadline = Instant::now() + limit;
        loop {
            match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("connect {to} from {name}: {e}"))
                }
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    })
}

/// Accepts one connection, waiting at most `limit`.
pub fn accept_timeout(l: &TcpListener, limit: Duration) -> Result<TcpStream, String> {
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err("no connection accepted in time".into());
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// An echo server on `ip:port` in `ns` for one connection: everything read is
/// written back; runs on its own thread.
pub fn tcp_echo_server(
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
) -> thread::JoinHandle<Result<u64, String>> {
    let listener = tcp_listen(ns, ip, port);
    thread::spawn(move || {
        let mut s = accept_timeout(&listener, Duration::from_secs(30))?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = s
                .read(&mut buf)
                .map_err(|e| format!("echo server read after {total} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n])
                .map_err(|e| format!("echo server write after {total} bytes: {e}"))?;
            total += n as u64;
        }
        let _ = s.shutdown(Shutdown::Write);
        Ok(total)
    })
}

/// Sends `bytes` pseudo-random bytes over `s` while reading the echo back and
/// checking it byte for byte. Returns the time taken.
pub fn tcp_send_and_check(s: TcpStream, bytes: usize, seed: u64) -> Result<Duration, String> {
    let started = Instant::now();
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = thread::spawn(move || -> Result<(), String> {
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; 32 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len());
            p.fill(&mut buf[..n]);
            w.write_all(&buf[..n])
                .map_err(|e| format!("write after {} bytes: {e}", bytes - left))?;
            left -= n;
        }
        w.shutdown(Shutdown::Write).map_err(|e| e.to_string())
    });
    let mut r = s;
    let mut expect = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    let result = loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(format!("read after {got} of {bytes} bytes: {e}")),
        };
        if got + n > bytes {
            break Err(format!(
                "received {} bytes, more than the {bytes} sent",
                got + n
            ));
        }
        expect.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            break Err(format!("data differs at byte {}", got + i));
        }
        got += n;
    };
    let wrote = writer.join().map_err(|_| "writer panicked".to_string())?;
    result?;
    wrote?;
    if got != bytes {
        return Err(format!("received {got} of {bytes} bytes"));
    }
    Ok(started.elapsed())
}

/// TCP from `client_ns` to an echo server at `server_ip:port` in `server_ns`:
/// `bytes` pseudo-random bytes each way, checked. Returns the time taken.
pub fn tcp_echo(
    client_ns: &str,
    server_ns: &str,
    server_ip: Ipv4Addr,
    port: u16,
    bytes: usize,
) -> Result<Duration, String> {
    let server = tcp_echo_server(server_ns, server_ip, port);
    let stream = tcp_connect(
        client_ns,
        SocketAddr::from((server_ip, port)),
        Duration::from_secs(10),
    );
    let result = stream.and_then(|s| tcp_send_and_check(s, bytes, u64::from(port)));
    let served = server
        .join()
        .map_err(|_| "echo server panicked".to_string())?;
    let took = result?;
    let echoed = served?;
    if echoed != bytes as u64 {
        return Err(format!("server echoed {echoed} of {bytes} bytes"));
    }
    Ok(took)
}

/// UDP echo results.
#[derive(Clone, Debug, Default)]
pub struct UdpReport {
    pub sent: u32,
    /// Echoes that came back intact.
    pub intact: u32,
    /// Echoes whose content differed from what was sent.
    pub corrupt: u32,
}

/// Largest UDP payload that fits a pod MTU without fragmenting.
pub fn max_udp_payload(mtu: u32) -> usize {
    mtu as usize - 20 - 8
}

/// A UDP echo server on `ip:port` in `ns` until the returned flag is set.
pub fn udp_echo_server(
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
    let sock = in_netns(ns, move || {
        UdpSocket::bind((ip, port)).unwrap_or_else(|e| panic!("bind udp {ip}:{port}: {e}"))
    });
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let handle = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        // Bounded even if nobody sets the flag.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    });
    (stop, handle)
}

/// Sends `count` numbered datagrams (sizes up to `max_payload`) from
/// `client_ns` to an echo server at `server_ip:port` in `server_ns`, after a
/// warm-up exchange (until one round trip succeeds, at most 10 s), and counts
/// the echoes that come back intact.
pub fn udp_echo(
    client_ns: &str,
    server_ns: &str,
    server_ip: Ipv4Addr,
    port: u16,
    count: u32,
    max_payload: usize,
) -> Result<UdpReport, String> {
    assert!(max_payload >= 64);
    let (stop, server) = udp_echo_server(server_ns, server_ip, port);
    let result = udp_client(client_ns, server_ip, port, count, max_payload);
    stop.store(true, Ordering::Relaxed);
    server
        .join()
        .map_err(|_| "udp echo server panicked".to_string())?;
    result
}

fn udp_datagram(seq: u32, max_payload: usize) -> Vec<u8> {
    let len = 16 + (seq as usize * 97) % (max_payload - 15);
    let mut d = vec![0u8; len];
    d[..4].copy_from_slice(b"kxdp");
    d[4..8].copy_from_slice(&seq.to_be_bytes());
    d[8..12].copy_from_slice(&(len as u32).to_be_bytes());
    Pattern::new(u64::from(seq) + 1).fill(&mut d[12..]);
    d
}

fn udp_client(
    ns: &str,
    server_ip: Ipv4Addr,
    port: u16,
    count: u32,
    max_payload: usize,
) -> Result<UdpReport, String> {
    let to = SocketAddr::from((server_ip, port));
    let sock = in_netns(ns, move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind udp client");
        s.connect(to).expect("connect udp");
        s
    });
    // Warm-up: until one round trip succeeds.
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    loop {
        let _ = sock.send(b"warm-up");
        if let Ok(n) = sock.recv(&mut buf) {
            if &buf[..n] == b"warm-up" {
                break;
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "UDP {ns} -> {to}: no echo to the warm-up within 10 s"
            ));
        }
    }
    // Drain late warm-up echoes.
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while sock.recv(&mut buf).is_ok() {}

    let rx = sock.try_clone().map_err(|e| e.to_string())?;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let receiver = thread::spawn(move || {
        let mut seen = vec![false; count as usize];
        let mut report = UdpReport::default();
        let mut buf = vec![0u8; 65536];
        let mut finish_by: Option<Instant> = None;
        let hard_deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if finish_by.is_none() && done_rx.try_recv().is_ok() {
                // Everything is sent: stragglers get 2 s.
                finish_by = Some(Instant::now() + Duration::from_secs(2));
            }
            let now = Instant::now();
            if finish_by.is_some_and(|t| now >= t) || now >= hard_deadline {
                break;
            }
            let Ok(n) = rx.recv(&mut buf) else { continue };
            let d = &buf[..n];
            if n < 12 || &d[..4] != b"kxdp" {
                continue;
            }
            let seq = u32::from_be_bytes(d[4..8].try_into().unwrap());
            if seq >= count {
                report.corrupt += 1;
                continue;
            }
            if d != udp_datagram(seq, max_payload).as_slice() {
                report.corrupt += 1;
            } else if !seen[seq as usize] {
                seen[seq as usize] = true;
                report.intact += 1;
                if report.intact == count {
                    break;
                }
            }
        }
        report
    });
    let mut sent = 0;
    for seq in 0..count {
        if sock.send(&udp_datagram(seq, max_payload)).is_ok() {
            sent += 1;
        }
        // Paced: bursts of 16, so socket buffers along the way never overflow.
        if seq % 16 == 15 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let _ = done_tx.send(());
    let mut report = receiver
        .join()
        .map_err(|_| "udp receiver panicked".to_string())?;
    report.sent = sent;
    Ok(report)
}

// ------------------------------------------------------------------ captures

/// A tcpdump running in a namespace, writing a pcap file.
pub struct Capture {
    child: ChildGuard,
    pub path: PathBuf,
}

impl Capture {
    /// Starts `tcpdump -i IFNAME -c COUNT -w FILE FILTER` in `ns`, bounded by
    /// `secs`, and waits until it listens.
    pub fn start(ns: &str, ifname: &str, filter: &str, count: u32, secs: u64) -> Capture {
        let path = std::env::temp_dir().join(format!("{}.pcap", unique_name("kxcap")));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "timeout",
                &secs.to_string(),
                "tcpdump",
                "-i",
                ifname,
            ])
            .args(["-nn", "-U", "-c", &count.to_string(), "-w"])
            .arg(&path)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start tcpdump");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
            }
        });
        let mut child = ChildGuard(child);
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            child.wait_timeout(Duration::ZERO);
            panic!("tcpdump in {ns} on {ifname} did not start listening");
        }
        Capture { child, path }
    }

    /// Waits for tcpdump to finish (its count reached, or its time up) and
    /// returns the frames captured.
    pub fn finish(mut self, limit: Duration) -> Vec<Vec<u8>> {
        self.child.wait_timeout(limit);
        let bytes = std::fs::read(&self.path).unwrap_or_default();
        let _ = std::fs::remove_file(&self.path);
        pcap_frames(&bytes).unwrap_or_else(|e| panic!("pcap {}: {e}", self.path.display()))
    }
}

/// The frames of a pcap file (classic format: 24-byte global header, 16-byte
/// record headers; either byte order, micro- or nanosecond stamps). An empty
/// file is no frames; a record cut short at the end is ignored.
pub fn pcap_frames(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.len() < 24 {
        return Err("shorter than the pcap global header".into());
    }
    let magic = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    let le = match magic {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => return Err(format!("not a pcap file (magic {m:#010x})")),
    };
    let u32_at = |off: usize| {
        let b: [u8; 4] = bytes[off..off + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    let linktype = u32_at(20);
    if linktype != 1 {
        return Err(format!("link type {linktype}, expected 1 (Ethernet)"));
    }
    let mut frames = Vec::new();
    let mut off = 24;
    while off + 16 <= bytes.len() {
        let incl = u32_at(off + 8) as usize;
        let start = off + 16;
        if start + incl > bytes.len() {
            break;
        }
        frames.push(bytes[start..start + incl].to_vec());
        off = start + incl;
    }
    Ok(frames)
}

/// A VXLAN frame seen on the underlay.
#[derive(Clone, Debug)]
pub struct VxlanFrame {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// The first byte of the VXLAN header (0x08: the I flag).
    pub flags: u8,
    pub vni: u32,
    /// The inner Ethernet frame (possibly cut short by the capture's snap length).
    pub inner: Vec<u8>,
}

/// Parses Ethernet / IPv4 / UDP / VXLAN by hand (a capture may cut the
/// frame short); `None` if `frame` is not that.
pub fn parse_vxlan(frame: &[u8]) -> Option<VxlanFrame> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 17 || ip.len() < ihl + 8 + 8 {
        return None;
    }
    let udp = &ip[ihl..];
    let vx = &udp[8..];
    Some(VxlanFrame {
        outer_src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        outer_dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        flags: vx[0],
        vni: u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
        inner: vx[8..].to_vec(),
    })
}

/// Source and destination IPv4 addresses of an inner Ethernet/IPv4 frame.
pub fn inner_ipv4(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    Some((
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    ))
}

// ------------------------------------------------------------------ raw frames

/// The Internet checksum of `data`.
pub fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes the IPv4 header checksum of an Ethernet frame in place.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24] = 0;
    frame[25] = 0;
    let end = (14 + ihl.max(20)).min(frame.len());
    let c = inet_checksum(&frame[14..end]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// A valid Ethernet / IPv4 / UDP frame.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(ports.0, ports.1);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).expect("build frame");
    out
}

/// Sends raw Ethernet frames out of `ifname` in `ns` through an AF_PACKET
/// socket (Debian's /usr/bin/python3, standard library only). Returns how
/// many were sent.
pub fn inject_frames(ns: &str, ifname: &str, frames: &[Vec<u8>]) -> usize {
    const SCRIPT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
n = 0
for line in sys.stdin:
    line = line.strip()
    if line:
        s.send(bytes.fromhex(line))
        n += 1
print(n)
"#;
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut child = Command::new("ip")
        .args([
            "netns", "exec", ns, "timeout", "20", python, "-c", SCRIPT, ifname,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start python3");
    let mut text = String::new();
    for f in frames {
        for b in f {
            text += &format!("{b:02x}");
        }
        text.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .expect("write frames");
    let out = child.wait_with_output().expect("python3");
    let stdout = check(&format!("inject frames in {ns}"), out);
    stdout.trim().parse().unwrap_or(0)
}

/// The MAC that `ns` has resolved for `ip` on `dev` (its neighbour table).
pub fn neighbour_mac(ns: &str, ip: Ipv4Addr, dev: &str) -> Option<[u8; 6]> {
    let out = ns_exec(
        ns,
        10,
        "ip",
        &["neigh", "show", &ip.to_string(), "dev", dev],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "lladdr" {
            return words.next().map(parse_mac);
        }
    }
    None
}

/// Waits until `cond` holds, polling every 200 ms, at most `limit`.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

// ------------------------------------------------------------------ checks

/// TCP from pod `from` to pod `to` ("n1-p1", ...): `bytes` each way through an
/// echo server on `port`, checked byte for byte; panics with context.
pub fn check_tcp(lab: &Lab, from: &str, to: &str, port: u16, bytes: usize) {
    let dst = lab.pod(to).ip;
    match tcp_echo(&lab.ns(from), &lab.ns(to), dst, port, bytes) {
        Ok(took) => eprintln!(
            "tcp {from} -> {to} ({dst}:{port}): {bytes} bytes each way intact in {:.2}s ({:.0} Mbit/s)",
            took.as_secs_f64(),
            (2 * bytes) as f64 * 8.0 / took.as_secs_f64() / 1e6
        ),
        Err(e) => panic!("tcp {from} -> {to} ({dst}:{port}): {e}"),
    }
}

/// UDP from pod `from` to pod `to`: `count` numbered datagrams up to the pod
/// MTU, echoed back; at least 95% must come back, and all of them intact.
pub fn check_udp(lab: &Lab, from: &str, to: &str, port: u16, count: u32) {
    let dst = lab.pod(to).ip;
    let mtu = lab.pod(from).mtu.min(lab.pod(to).mtu);
    let r = udp_echo(
        &lab.ns(from),
        &lab.ns(to),
        dst,
        port,
        count,
        max_udp_payload(mtu),
    )
    .unwrap_or_else(|e| panic!("udp {from} -> {to}: {e}"));
    eprintln!("udp {from} -> {to} ({dst}:{port}): {r:?}");
    assert_eq!(r.corrupt, 0, "udp {from} -> {to}: corrupt echoes: {r:?}");
    assert_eq!(r.sent, count, "udp {from} -> {to}: not all sent: {r:?}");
    assert!(
        r.intact >= count * 95 / 100,
        "udp {from} -> {to}: only {} of {count} echoes came back: {r:?}",
        r.intact
    );
}

/// Captures the underlay at `from`'s node switch port while TCP runs from pod
/// `from` to pod `to` (on another node), and checks the VXLAN frames: UDP to
/// the VXLAN port, the I flag alone, the cluster's VNI, between the two
/// nodes' underlay addresses, carrying the pods' packets. Both directions.
pub fn check_underlay_vxlan(lab: &Lab, from: &str, to: &str, port: u16) {
    let (a, b) = (lab.pod(from), lab.pod(to));
    let (na, nb) = (lab.node(&a.node), lab.node(&b.node));
    assert_ne!(
        na.name, nb.name,
        "check_underlay_vxlan needs pods on two nodes"
    );
    let filter = format!("udp dst port {}", na.vxlan_port);
    let cap = Capture::start(&lab.ns("sw"), &na.name, &filter, 40, 30);
    check_tcp(lab, from, to, port, 2 << 20);
    let frames = cap.finish(Duration::from_secs(20));
    assert!(
        !frames.is_empty(),
        "no VXLAN frame captured on switch port {}",
        na.name
    );
    let (mut out, mut back) = (0, 0);
    for f in &frames {
        let v =
            parse_vxlan(f).unwrap_or_else(|| panic!("captured frame is not IPv4/UDP: {f:02x?}"));
        assert_eq!(v.dst_port, na.vxlan_port, "{v:?}");
        assert_eq!(v.flags, 0x08, "VXLAN flags must be the I flag alone: {v:?}");
        assert_eq!(v.vni, na.vni, "VNI: {v:?}");
        let inner =
            inner_ipv4(&v.inner).unwrap_or_else(|| panic!("inner frame is not IPv4: {v:?}"));
        if (v.outer_src, v.outer_dst) == (na.underlay_ip, nb.underlay_ip) {
            assert_eq!(inner, (a.ip, b.ip), "inner addresses {from} -> {to}: {v:?}");
            assert_eq!(
                v.inner[..6],
                nb.vtep_mac,
                "inner destination MAC is {}'s VTEP MAC",
                nb.name
            );
            out += 1;
        } else if (v.outer_src, v.outer_dst) == (nb.underlay_ip, na.underlay_ip) {
            assert_eq!(inner, (b.ip, a.ip), "inner addresses {to} -> {from}: {v:?}");
            assert_eq!(
                v.inner[..6],
                na.vtep_mac,
                "inner destination MAC is {}'s VTEP MAC",
                na.name
            );
            back += 1;
        }
    }
    eprintln!(
        "underlay {}: {} VXLAN frames, {out} {} -> {}, {back} back, VNI {}",
        na.name,
        frames.len(),
        na.name,
        nb.name,
        na.vni
    );
    assert!(
        out > 0 && back > 0,
        "VXLAN both ways between {} and {}",
        na.name,
        nb.name
    );
}

// ------------------------------------------------------------------ services

impl Lab {
    /// The outside client's address: .100 of the underlay /24.
    pub fn ext_ip(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.nodes[0].underlay_ip.octets();
        Ipv4Addr::new(a, b, c, 100)
    }

    /// Writes `svc` (one service in the cluster file's `services:` entry
    /// shape, given as JSON) to a temporary YAML file and runs
    /// `kxdpctl service apply FILE`.
    pub fn service_apply_raw(&self, svc: &Value) -> Output {
        let path = std::env::temp_dir().join(format!("{}.yaml", unique_name("kxsvc")));
        std::fs::write(
            &path,
            serde_yaml_ng::to_string(svc).expect("service as YAML"),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = self.kxdpctl_raw(&["service", "apply", path.to_str().expect("utf-8 path")]);
        let _ = std::fs::remove_file(&path);
        out
    }

    /// `kxdpctl service apply` of `svc`; panics unless it succeeds. Returns
    /// how long the command took (it returns once the nodes hold the service).
    pub fn service_apply(&self, svc: &Value) -> Duration {
        let started = Instant::now();
        let out = self.service_apply_raw(svc);
        check(&format!("kxdpctl service apply {svc}"), out);
        started.elapsed()
    }

    /// `kxdpctl service del NAME`; panics unless it succeeds.
    pub fn service_del(&self, name: &str) {
        check(
            &format!("kxdpctl service del {name}"),
            self.kxdpctl_raw(&["service", "del", name]),
        );
    }

    /// `kxdpctl services --json`, as a list.
    pub fn services(&self) -> Vec<Value> {
        list(self.kxdpctl(&["services", "--json"]), "services")
    }

    /// `kxdpctl conntrack --node NODE --service SERVICE --json`: the entries.
    pub fn conntrack(&self, node: &str, service: &str) -> Vec<Value> {
        list(
            self.kxdpctl(&[
                "conntrack",
                "--node",
                node,
                "--service",
                service,
                "--limit",
                "10000",
                "--json",
            ]),
            "entries",
        )
    }
}

impl Counters {
    /// The per-service counters of `name` (`services[]`), `Null` if absent.
    pub fn service(&self, name: &str) -> Value {
        self.0["services"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// A number of service `name`'s counters (`new_flows`, `no_endpoint`,
    /// `packets`, ...); 0 when absent.
    pub fn service_get(&self, name: &str, key: &str) -> u64 {
        self.service(name)[key].as_u64().unwrap_or(0)
    }

    /// New flows service `name` sent to backend `ip:port`; 0 when absent.
    pub fn backend_new_flows(&self, name: &str, ip: Ipv4Addr, port: u16) -> u64 {
        self.service(name)["backends"]
            .as_array()
            .and_then(|l| {
                l.iter().find(|b| {
                    b["ip"].as_str() == Some(&ip.to_string())
                        && b["port"].as_u64() == Some(port.into())
                })
            })
            .and_then(|b| b["new_flows"].as_u64())
            .unwrap_or(0)
    }
}

/// How long an identity server (TCP or UDP) runs at most, whoever forgets to
/// stop it.
const ID_SERVER_LIMIT: Duration = Duration::from_secs(300);
/// At most this many connections per identity server.
const ID_SERVER_MAX_CONNS: usize = 5000;

/// What an [`IdServer`] saw of one connection, recorded when it ends.
#[derive(Clone, Debug)]
pub struct Served {
    /// The client address as the backend saw it (after any SNAT).
    pub peer: SocketAddr,
    /// The client's hello line, without the newline.
    pub hello: String,
    /// Bytes echoed after the hello line.
    pub echoed: u64,
    /// Why the connection ended other than by the client's EOF.
    pub error: Option<String>,
}

/// A TCP server that tells who it is: for each connection it reads one line
/// (the hello), answers `"<id> <peer ip:port> <hello>\n"` and then echoes
/// everything else until EOF. Bounded: it stops when dropped or after 5
/// minutes, its connections notice within 200 ms.
pub struct IdServer {
    pub id: String,
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<std::sync::Mutex<Vec<Served>>>,
    handle: Option<thread::JoinHandle<()>>,
}

/// Starts an [`IdServer`] named `id` on `ip:port` inside `ns`.
pub fn id_server(ns: &str, ip: Ipv4Addr, port: u16, id: &str) -> IdServer {
    let listener = tcp_listen(ns, ip, port);
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (flag, log, name) = (stop.clone(), served.clone(), id.to_string());
    let handle = thread::spawn(move || {
        let deadline = Instant::now() + ID_SERVER_LIMIT;
        let mut conns = Vec::new();
        while !flag.load(Ordering::Relaxed)
            && Instant::now() < deadline
            && conns.len() < ID_SERVER_MAX_CONNS
        {
            match listener.accept() {
                Ok((s, peer)) => {
                    let (flag, log, name) = (flag.clone(), log.clone(), name.clone());
                    conns.push(thread::spawn(move || {
                        let served = serve_id(s, peer, &name, &flag, deadline);
                        log.lock().unwrap().push(served);
                    }));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(2));
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
            // Reap finished connection threads as we go.
            conns.retain(|h| !h.is_finished());
        }
        for h in conns {
            let _ = h.join();
        }
    });
    IdServer {
        id: id.to_string(),
        addr: SocketAddr::from((ip, port)),
        stop,
        served,
        handle: Some(handle),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn serve_id(
    mut s: TcpStream,
    peer: SocketAddr,
    id: &str,
    stop: &AtomicBool,
    deadline: Instant,
) -> Served {
    let mut served = Served {
        peer,
        hello: String::new(),
        echoed: 0,
        error: None,
    };
    let setup = s
        .set_nonblocking(false)
        .and_then(|_| s.set_nodelay(true))
        .and_then(|_| s.set_read_timeout(Some(Duration::from_millis(200))))
        .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)));
    if let Err(e) = setup {
        served.error = Some(format!("socket setup: {e}"));
        return served;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut line = Vec::new();
    let mut hello_done = false;
    loop {
        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            served.error = Some("server stopped".into());
            return served;
        }
        let n = match s.read(&mut buf) {
            Ok(0) => {
                if !hello_done {
                    served.error = Some("EOF before the hello line".into());
                }
                let _ = s.shutdown(Shutdown::Write);
                return served;
            }
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => {
                served.error = Some(format!("read: {e}"));
                return served;
            }
        };
        let mut data = &buf[..n];
        if !hello_done {
            line.extend_from_slice(data);
            let Some(pos) = line.iter().position(|&b| b == b'\n') else {
                if line.len() > 1024 {
                    served.error = Some("hello line longer than 1024 bytes".into());
                    return served;
                }
                continue;
            };
            served.hello = String::from_utf8_lossy(&line[..pos]).into_owned();
            let answer = format!("{id} {peer} {}\n", served.hello);
            if let Err(e) = s.write_all(answer.as_bytes()) {
                served.error = Some(format!("write the answer: {e}"));
                return served;
            }
            hello_done = true;
            let rest = line.split_off(pos + 1);
            if let Err(e) = s.write_all(&rest) {
                served.error = Some(format!("echo: {e}"));
                return served;
            }
            served.echoed += rest.len() as u64;
            data = &[];
        }
        if !data.is_empty() {
            if let Err(e) = s.write_all(data) {
                served.error = Some(format!("echo after {} bytes: {e}", served.echoed));
                return served;
            }
            served.echoed += data.len() as u64;
        }
    }
}

impl IdServer {
    /// The connections that have ended so far.
    pub fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }

    /// Stops accepting, ends open connections, waits for the threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for IdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An identity server's answer to a hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The id of the server that answered.
    pub backend: String,
    /// The client address as that server saw it.
    pub seen_as: SocketAddr,
    /// The client socket's own address.
    pub local: SocketAddr,
}

fn parse_answer(answer: &str, hello: &str, local: SocketAddr) -> Result<Hello, String> {
    let line = answer
        .strip_suffix('\n')
        .ok_or_else(|| format!("answer {answer:?} does not end with a newline"))?;
    let mut words = line.splitn(3, ' ');
    let (Some(id), Some(peer), Some(echo)) = (words.next(), words.next(), words.next()) else {
        return Err(format!("answer {answer:?}: not '<id> <peer> <hello>'"));
    };
    if echo != hello {
        return Err(format!(
            "answer {answer:?} echoes another hello than {hello:?}"
        ));
    }
    Ok(Hello {
        backend: id.to_string(),
        seen_as: peer
            .parse()
            .map_err(|e| format!("answer {answer:?}: peer {peer:?}: {e}"))?,
        local,
    })
}

/// One short connection to `to`, from the calling thread's namespace: one
/// connect attempt (3 s), the hello `HELLO <tag>`, half-close, the answer
/// read to EOF (5 s). Call it inside [`in_netns`].
pub fn hello_once(to: SocketAddr, tag: &str) -> Result<Hello, String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .map_err(|e| format!("connect {to}: {e}"))?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let hello = format!("HELLO {tag}");
    s.write_all(format!("{hello}\n").as_bytes())
        .map_err(|e| format!("{local} -> {to}: write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("{local} -> {to}: shutdown: {e}"))?;
    let mut answer = Vec::new();
    (&s).take(4096)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{local} -> {to}: read the answer: {e}"))?;
    parse_answer(&String::from_utf8_lossy(&answer), &hello, local)
        .map_err(|e| format!("{local} -> {to}: {e}"))
}

/// `count` [`hello_once`] connections one after the other from `ns` to `to`,
/// tags `<tag>-<i>`; stops early (fewer results) after `limit`.
pub fn hellos(
    ns: &str,
    to: SocketAddr,
    count: usize,
    tag: &str,
    limit: Duration,
) -> Vec<Result<Hello, String>> {
    let tag = tag.to_string();
    in_netns(ns, move || {
        let deadline = Instant::now() + limit;
        let mut out = Vec::with_capacity(count);
        for i in 0..count {
            if Instant::now() >= deadline {
                break;
            }
            out.push(hello_once(to, &format!("{tag}-{i}")));
        }
        out
    })
}

/// A long-lived connection to an [`IdServer`], past its hello.
pub struct Flow {
    pub stream: TcpStream,
    pub hello: Hello,
    seq: u64,
}

/// Opens a [`Flow`] from `ns` to `to` (one connect attempt): sends the hello
/// and reads the answer line, nothing more.
pub fn open_flow(ns: &str, to: SocketAddr, tag: &str) -> Result<Flow, String> {
    let tag = tag.to_string();
    let mut s = in_netns(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .map_err(|e| format!("connect {to}: {e}"))
    })?;
    let local = s.local_addr().map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let hello = format!("HELLO {tag}");
    s.write_all(format!("{hello}\n").as_bytes())
        .map_err(|e| format!("{local} -> {to}: write: {e}"))?;
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while answer.last() != Some(&b'\n') {
        if answer.len() > 1024 {
            return Err(format!("{local} -> {to}: answer line too long"));
        }
        match s.read(&mut byte) {
            Ok(0) => return Err(format!("{local} -> {to}: EOF before the answer")),
            Ok(_) => answer.push(byte[0]),
            Err(e) => return Err(format!("{local} -> {to}: read the answer: {e}")),
        }
    }
    let hello = parse_answer(&String::from_utf8_lossy(&answer), &hello, local)
        .map_err(|e| format!("{local} -> {to}: {e}"))?;
    Ok(Flow {
        stream: s,
        hello,
        seq: 0,
    })
}

impl Flow {
    /// One round trip of 16 numbered bytes through the echo, within
    /// `limit`. An end of stream is `UnexpectedEof`, other data `InvalidData`.
    pub fn ping(&mut self, limit: Duration) -> std::io::Result<()> {
        self.seq += 1;
        let mut msg = [0u8; 16];
        msg[..8].copy_from_slice(b"kxdpping");
        msg[8..].copy_from_slice(&self.seq.to_be_bytes());
        self.stream.set_read_timeout(Some(limit))?;
        self.stream.write_all(&msg)?;
        let mut back = [0u8; 16];
        self.stream.read_exact(&mut back)?;
        if back != msg {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("ping {} came back as {back:02x?}", self.seq),
            ));
        }
        Ok(())
    }
}

/// What a [`Pinger`] saw.
#[derive(Clone, Debug, Default)]
pub struct PingReport {
    pub ok: u64,
    pub last_ok: Option<Instant>,
    /// The first failed ping (the pinger stops there).
    pub error: Option<PingError>,
}

/// A failed ping.
#[derive(Clone, Debug)]
pub struct PingError {
    /// When the ping was sent.
    pub sent: Instant,
    /// When it failed.
    pub seen: Instant,
    pub kind: std::io::ErrorKind,
    pub message: String,
}

/// Pings a [`Flow`] every `interval` on its own thread until stopped, until
/// `limit`, or until the first failure.
pub struct Pinger {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<PingReport>>,
}

impl Pinger {
    pub fn start(mut flow: Flow, interval: Duration, limit: Duration) -> Pinger {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let deadline = Instant::now() + limit;
            let mut report = PingReport::default();
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                let at = Instant::now();
                // Generous: the lab may share its cores with other work; a
                // black hole still shows as a timeout, a reset as a reset.
                match flow.ping(Duration::from_secs(3)) {
                    Ok(()) => {
                        report.ok += 1;
                        report.last_ok = Some(Instant::now());
                    }
                    Err(e) => {
                        report.error = Some(PingError {
                            sent: at,
                            seen: Instant::now(),
                            kind: e.kind(),
                            message: e.to_string(),
                        });
                        break;
                    }
                }
                thread::sleep(interval);
            }
            report
        });
        Pinger {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the pinger and returns its report.
    pub fn finish(mut self) -> PingReport {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// True for the ways a reset or closed TCP connection shows on a client:
/// ECONNRESET, ECONNABORTED, EPIPE, or EOF.
pub fn is_connection_end(kind: std::io::ErrorKind) -> bool {
    matches!(
        kind,
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    )
}

/// Streams pseudo-random data over `s` (an echo, e.g. a [`Flow`]'s stream)
/// for `duration` at about `bytes_per_sec`, checking the echo byte for byte
/// as it comes back. Returns the bytes sent (all of which came back intact).
pub fn stream_for(
    s: TcpStream,
    duration: Duration,
    bytes_per_sec: u64,
    seed: u64,
) -> Result<u64, String> {
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = thread::spawn(move || -> Result<u64, String> {
        const CHUNK: u64 = 16 * 1024;
        let started = Instant::now();
        let mut p = Pattern::new(seed);
        let mut buf = vec![0u8; CHUNK as usize];
        let mut sent = 0u64;
        while started.elapsed() < duration {
            let allowed = (bytes_per_sec as f64 * started.elapsed().as_secs_f64()) as u64 + CHUNK;
            if sent + CHUNK > allowed {
                thread::sleep(Duration::from_millis(1));
                continue;
            }
            p.fill(&mut buf);
            w.write_all(&buf)
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            sent += CHUNK;
        }
        w.shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown after {sent} bytes: {e}"))?;
        Ok(sent)
    });
    let mut r = s;
    let mut expect = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    let result = loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(format!("read after {got} bytes: {e}")),
        };
        expect.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            break Err(format!("data differs at byte {}", got + i as u64));
        }
        got += n as u64;
    };
    let sent = writer.join().map_err(|_| "writer panicked".to_string())?;
    result?;
    let sent = sent?;
    if got != sent {
        return Err(format!("received {got} of {sent} bytes"));
    }
    Ok(sent)
}

/// A UDP server that tells who it is: each datagram is answered with
/// `"<id> <peer ip:port> "` followed by the datagram. Stops when dropped or
/// after 5 minutes.
pub struct UdpIdServer {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

/// Starts a [`UdpIdServer`] named `id` on `ip:port` inside `ns`.
pub fn udp_id_server(ns: &str, ip: Ipv4Addr, port: u16, id: &str) -> UdpIdServer {
    let sock = in_netns(ns, move || {
        UdpSocket::bind((ip, port)).unwrap_or_else(|e| panic!("bind udp {ip}:{port}: {e}"))
    });
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (flag, id) = (stop.clone(), id.to_string());
    let handle = thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + ID_SERVER_LIMIT;
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut answer = format!("{id} {from} ").into_bytes();
                answer.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&answer, from);
            }
        }
    });
    UdpIdServer {
        stop,
        handle: Some(handle),
    }
}

impl Drop for UdpIdServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Parses a [`UdpIdServer`] answer: (id, peer as seen, the datagram sent).
pub fn parse_udp_answer(answer: &[u8]) -> Option<(String, SocketAddr, Vec<u8>)> {
    let sp1 = answer.iter().position(|&b| b == b' ')?;
    let sp2 = sp1 + 1 + answer[sp1 + 1..].iter().position(|&b| b == b' ')?;
    let id = std::str::from_utf8(&answer[..sp1]).ok()?.to_string();
    let peer = std::str::from_utf8(&answer[sp1 + 1..sp2])
        .ok()?
        .parse()
        .ok()?;
    Some((id, peer, answer[sp2 + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_chunking_independent() {
        let mut a = Pattern::new(7);
        let mut whole = vec![0u8; 1000];
        a.fill(&mut whole);
        let mut b = Pattern::new(7);
        let mut parts = vec![0u8; 1000];
        let (x, y) = parts.split_at_mut(333);
        b.fill(x);
        b.fill(y);
        assert_eq!(whole, parts);
        assert_ne!(whole[..8], whole[8..16]);
    }

    #[test]
    fn identity_answers_parse() {
        let local: SocketAddr = "10.244.2.3:40000".parse().unwrap();
        let h = parse_answer("n1-p1 10.244.1.1:61000 HELLO x-1\n", "HELLO x-1", local).unwrap();
        assert_eq!(h.backend, "n1-p1");
        assert_eq!(h.seen_as, "10.244.1.1:61000".parse().unwrap());
        assert_eq!(h.local, local);
        assert!(parse_answer("n1-p1 10.244.1.1:61000 HELLO x-2\n", "HELLO x-1", local).is_err());
        assert!(parse_answer("n1-p1 10.244.1.1:61000 HELLO x-1", "HELLO x-1", local).is_err());
        assert!(parse_answer("", "HELLO x-1", local).is_err());
        let (id, peer, payload) = parse_udp_answer(b"n2-p1 10.244.2.3:5000 seq 7").unwrap();
        assert_eq!((id.as_str(), payload.as_slice()), ("n2-p1", &b"seq 7"[..]));
        assert_eq!(peer, "10.244.2.3:5000".parse().unwrap());
        assert!(parse_udp_answer(b"garbage").is_none());
    }

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071 style example: a valid header sums to zero.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = inet_checksum(&h);
        assert_eq!(c, 0xb861);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(inet_checksum(&h), 0);
    }

    #[test]
    fn pcap_roundtrip_and_vxlan_parse() {
        let inner = udp_frame(
            [2; 6],
            [4; 6],
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 2, 2),
            (1000, 2000),
            b"hello",
        );
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vx.extend_from_slice(&inner);
        let outer = udp_frame(
            [6; 6],
            [8; 6],
            Ipv4Addr::new(172, 30, 0, 11),
            Ipv4Addr::new(172, 30, 0, 12),
            (50000, 4789),
            &vx,
        );
        // Global header: magic, version 2.4, zone, sigfigs, snaplen, Ethernet.
        let mut file = Vec::new();
        file.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        file.extend_from_slice(&2u16.to_le_bytes());
        file.extend_from_slice(&4u16.to_le_bytes());
        for w in [0u32, 0, 65535, 1] {
            file.extend_from_slice(&w.to_le_bytes());
        }
        assert_eq!(file.len(), 24);
        for w in [1u32, 2, outer.len() as u32, outer.len() as u32] {
            file.extend_from_slice(&w.to_le_bytes());
        }
        file.extend_from_slice(&outer);
        let frames = pcap_frames(&file).unwrap();
        assert_eq!(frames.len(), 1);
        let v = parse_vxlan(&frames[0]).unwrap();
        assert_eq!((v.flags, v.vni, v.dst_port), (0x08, 1, 4789));
        assert_eq!(v.outer_src, Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(
            inner_ipv4(&v.inner),
            Some((Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2)))
        );
    }
}
