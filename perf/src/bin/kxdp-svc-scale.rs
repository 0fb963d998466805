//! `kxdp-svc-scale`: how long a real kxdp-dataplane takes to accept one
//! atomic Sync of 10,000 services / 100,000 endpoints, what it costs in
//! memory, and whether forwarding goes on meanwhile (issue 3 "Scale",
//! issue 5 `svc-scale`).
//!
//! `run` brings up the namespace lab (`scripts/lab.sh`, its own prefix),
//! stops the lab's kxdp-control (by its PID file: it would re-sync its own
//! state over ours) and talks to node n1's dataplane over its gRPC socket:
//!
//! 1. reads the state control gave it (`GetState`), adds 249 synthetic
//!    remote nodes (pod CIDRs 10.244.3.0/24 ..= 10.244.251.0/24, VTEP = n2's
//!    underlay address, so next hops resolve) to n2: 250 remote nodes;
//! 2. syncs a small state with one real service, `default/echo`
//!    (ClusterIP 10.96.0.10, UDP and TCP 80 -> 8080, endpoints n2/p1 and
//!    n2/p2, where `echo` servers run);
//! 3. starts UDP ping loops from n1/p1: one to the ClusterIP, one to the pod
//!    n2/p1 directly (a probe every `--interval-us`, RTT per probe);
//! 4. `--runs` times: Sync small -> big (grow), big -> big' (replace: every
//!    synthetic service's endpoints shifted by one), big' -> small (shrink),
//!    each timed end to end (the reply comes when every worker has the new
//!    tables), with the dataplane's RSS before and after;
//! 5. checks the big state reads back (`GetState`: service and endpoint
//!    counts) and that the echo ClusterIP answers TCP from the big table;
//! 6. reports loss and RTT of the pings during each sync and outside them.
//!
//! The big state is the small one plus 10,000 services `bench/svc-NNNNN`
//! (ClusterIP 10.100.0.0 + 1 + i, TCP 80 -> 8080) with 10 ready endpoints
//! each, endpoint `g = 10 i + j` in remote node `g % 250`'s pod CIDR.
//!
//! Helpers run inside pod namespaces (`ip netns exec NS kxdp-svc-scale ...`):
//! `echo` (UDP and TCP echo server), `ping` (UDP ping loop, stops when its
//! stdin closes), `tcp-check` (N TCP round trips).

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use kxdp_perf::bench::lab::Lab;
use kxdp_perf::xsk::monotonic_ns;
use kxdp_proto::dataplane as pb;
use kxdp_proto::dataplane::dataplane_client::DataplaneClient;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

/// tonic's default limit on a message it decodes (server and client).
const TONIC_DEFAULT_MAX_DECODE: usize = 4 << 20;
/// What we let our own client decode (GetState of the big table).
const CLIENT_MAX_DECODE: usize = 1 << 30;
const ECHO_CLUSTER_IP: &str = "10.96.0.10";
const ECHO_PORT: u16 = 80;
const ECHO_TARGET: u16 = 8080;
const SYNTH_PREFIX: &str = "bench/svc-";
const PROBE_MAGIC: u32 = 0x4b58_5350; // "KXSP"

#[derive(Parser)]
#[command(
    name = "kxdp-svc-scale",
    about = "Sync time, memory and forwarding during a 10k-service sync"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The whole measurement on a lab of its own; writes <out>.md and <out>.json.
    Run(RunArgs),
    /// Print the size of the big Sync message (no lab needed).
    Size(SizeArgs),
    /// UDP and TCP echo server (inside a pod namespace).
    Echo {
        /// UDP and TCP port to listen on.
        #[arg(long, default_value_t = ECHO_TARGET)]
        port: u16,
        /// Name put in front of TCP replies (which backend answered).
        #[arg(long)]
        name: String,
        /// Exit after this many seconds.
        #[arg(long, default_value_t = 600)]
        duration: u64,
    },
    /// UDP ping loop to ADDR:PORT until stdin closes (or --max-s); JSON on stdout.
    Ping {
        /// Where to ping, ADDR:PORT.
        #[arg(long)]
        to: SocketAddrV4Arg,
        /// Microseconds between pings.
        #[arg(long, default_value_t = 500)]
        interval_us: u64,
        /// Stop after this many seconds even if stdin stays open.
        #[arg(long, default_value_t = 600)]
        max_s: u64,
    },
    /// COUNT TCP connections to ADDR:PORT, one line each way; JSON on stdout.
    TcpCheck {
        /// Where to connect, ADDR:PORT.
        #[arg(long)]
        to: SocketAddrV4Arg,
        /// How many connections.
        #[arg(long, default_value_t = 20)]
        count: u32,
    },
}

type SocketAddrV4Arg = std::net::SocketAddrV4;

#[derive(clap::Args, Clone)]
struct Shape {
    /// Synthetic services in the big state.
    #[arg(long, default_value_t = 10_000)]
    services: u32,
    /// Ready endpoints per synthetic service.
    #[arg(long, default_value_t = 10)]
    endpoints: u32,
    /// Remote nodes in the big state (n2 and synthetic ones).
    #[arg(long, default_value_t = 250)]
    nodes: u32,
}

#[derive(clap::Args)]
struct SizeArgs {
    #[command(flatten)]
    shape: Shape,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    shape: Shape,
    /// Grow / replace / shrink cycles.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Ping interval per loop, microseconds.
    #[arg(long, default_value_t = 500)]
    interval_us: u64,
    /// Seconds of quiet between syncs (ping baseline).
    #[arg(long, default_value_t = 2.0)]
    gap_s: f64,
    /// Output path without extension (default perf/results/svc-scale-<UTC date>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Repository root (scripts/lab.sh); default: found from here.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Name prefix of the lab (its namespaces, run directory).
    #[arg(long, default_value = "kxsvc")]
    prefix: String,
    /// KXDP_LAB_CORES for the lab's dataplanes.
    #[arg(long, default_value = "1 1")]
    cores: String,
    /// Record a `perf record -e cpu-clock` profile of the dataplane during
    /// one extra grow sync (perf report written next to the results).
    #[arg(long)]
    perf_record: bool,
    /// Also try the big Sync with production-length names (expect tonic's
    /// 4 MiB decode limit to refuse it) and report the answer.
    #[arg(long)]
    long_names: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Run(a) => run(a),
        Cmd::Size(a) => {
            let base = lab_like_base();
            for long in [false, true] {
                let st = big_state(&base, &a.shape, 0, long);
                let req = pb::SyncRequest { state: Some(st) };
                let t = Instant::now();
                let bytes = req.encode_to_vec();
                let enc = t.elapsed();
                let t = Instant::now();
                let back = pb::SyncRequest::decode(bytes.as_slice())?;
                let dec = t.elapsed();
                drop(back);
                println!(
                    "{}: {} bytes ({:.2} MiB), encode {:.1} ms, decode {:.1} ms",
                    if long { "long names" } else { "lab names" },
                    bytes.len(),
                    bytes.len() as f64 / (1 << 20) as f64,
                    enc.as_secs_f64() * 1e3,
                    dec.as_secs_f64() * 1e3
                );
            }
            Ok(())
        }
        Cmd::Echo {
            port,
            name,
            duration,
        } => echo(port, &name, duration),
        Cmd::Ping {
            to,
            interval_us,
            max_s,
        } => ping(to, interval_us, max_s),
        Cmd::TcpCheck { to, count } => tcp_check(to, count),
    }
}

// ------------------------------------------------------------------ state

/// A stand-in for the lab's node config (for `size` without a lab).
fn lab_like_base() -> pb::DataplaneState {
    pb::DataplaneState {
        generation: 1,
        node: Some(pb::NodeConfig {
            host_interface: String::new(),
            ..kxdp_testkit::lab::n1()
        }),
        remote_nodes: vec![kxdp_testkit::lab::n2_remote()],
        pods: Vec::new(),
        services: Vec::new(),
    }
}

/// Pod CIDR third octet of remote node `r` (0 = n2).
fn remote_octet(r: u32) -> u32 {
    2 + r
}

/// The lab's state with 250 remote nodes (n2 plus synthetic ones sharing
/// n2's VTEP) and the echo service: what every sync carries.
fn small_state(base: &pb::DataplaneState, shape: &Shape, generation: u64) -> pb::DataplaneState {
    let mut st = base.clone();
    st.generation = generation;
    st.services.clear();
    let n2 = base
        .remote_nodes
        .iter()
        .find(|r| r.pod_cidr == "10.244.2.0/24")
        .cloned()
        .expect("the lab's n2 is a remote node of n1");
    st.remote_nodes = vec![n2.clone()];
    for r in 1..shape.nodes {
        st.remote_nodes.push(pb::RemoteNode {
            name: format!("r{r:03}"),
            pod_cidr: format!("10.244.{}.0/24", remote_octet(r)),
            vtep_ip: n2.vtep_ip.clone(),
            vtep_mac: n2.vtep_mac.clone(),
        });
    }
    if let Some(n) = st.node.as_mut() {
        if n.service_cidr.is_empty() {
            n.service_cidr = "10.96.0.0/12".into();
        }
    }
    st.services.push(pb::Service {
        name: "default/echo".into(),
        cluster_ip: ECHO_CLUSTER_IP.into(),
        ports: [(pb::Protocol::Udp, "udp"), (pb::Protocol::Tcp, "tcp")]
            .iter()
            .map(|(p, name)| pb::ServicePort {
                name: name.to_string(),
                protocol: *p as i32,
                port: ECHO_PORT as u32,
                target_port: ECHO_TARGET as u32,
                node_port: 0,
            })
            .collect(),
        endpoints: ["10.244.2.2", "10.244.2.3"]
            .iter()
            .map(|ip| pb::Endpoint {
                ip: ip.to_string(),
                node: "n2".into(),
                ready: true,
                serving: true,
                terminating: false,
            })
            .collect(),
        ..Default::default()
    });
    st
}

/// The small state plus `shape.services` synthetic services; `shift`
/// rotates every service's endpoints (a different but equally big table).
/// `long`: production-length service and node names.
fn big_state(
    base: &pb::DataplaneState,
    shape: &Shape,
    shift: u32,
    long: bool,
) -> pb::DataplaneState {
    let mut st = small_state(base, shape, base.generation);
    let node_name = |r: u32| -> String {
        match (r, long) {
            (0, _) => "n2".into(),
            (r, false) => format!("r{r:03}"),
            (r, true) => format!("ip-10-0-{}-{}.eu-west-1.compute.internal", r / 200, r),
        }
    };
    if long {
        for r in st.remote_nodes.iter_mut().skip(1) {
            let i: u32 = r.name[1..].parse().unwrap();
            r.name = node_name(i);
        }
    }
    let base_ip = u32::from(Ipv4Addr::new(10, 100, 0, 0));
    for i in 0..shape.services {
        let endpoints = (0..shape.endpoints)
            .map(|j| {
                let g = i * shape.endpoints + j + shift;
                let r = g % shape.nodes;
                let host = 2 + (g / shape.nodes) % 250;
                pb::Endpoint {
                    ip: format!("10.244.{}.{host}", remote_octet(r)),
                    node: node_name(r),
                    ready: true,
                    serving: true,
                    terminating: false,
                }
            })
            .collect();
        st.services.push(pb::Service {
            name: if long {
                format!("team-{:03}-production/checkout-api-{i:05}", i % 500)
            } else {
                format!("{SYNTH_PREFIX}{i:05}")
            },
            cluster_ip: Ipv4Addr::from(base_ip + 1 + i).to_string(),
            ports: vec![pb::ServicePort {
                name: if long { "http".into() } else { String::new() },
                protocol: pb::Protocol::Tcp as i32,
                port: 80,
                target_port: 8080,
                node_port: 0,
            }],
            endpoints,
            ..Default::default()
        });
    }
    st
}

// ------------------------------------------------------------------ helpers in pods

fn echo(port: u16, name: &str, duration: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(duration);
    let udp = UdpSocket::bind(("0.0.0.0", port)).context("udp bind")?;
    udp.set_read_timeout(Some(Duration::from_millis(200)))?;
    let tcp = TcpListener::bind(("0.0.0.0", port)).context("tcp bind")?;
    tcp.set_nonblocking(true)?;
    let name = name.to_string();
    let t = std::thread::spawn(move || {
        while Instant::now() < deadline {
            match tcp.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut line = String::new();
                    let mut r = std::io::BufReader::new(match s.try_clone() {
                        Ok(c) => c,
                        Err(_) => continue,
                    });
                    if r.read_line(&mut line).is_ok() {
                        let _ = write!(s, "{name} {line}");
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        if let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    }
    let _ = t.join();
    Ok(())
}

/// What `ping` prints: per probe its send time and RTT (-1: no reply).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct PingResult {
    to: String,
    interval_us: u64,
    send_ns: Vec<u64>,
    rtt_ns: Vec<i64>,
}

fn ping(to: std::net::SocketAddrV4, interval_us: u64, max_s: u64) -> anyhow::Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.connect(to)?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            // Any input or EOF on stdin stops the loop.
            let _ = std::io::stdin().read(&mut b);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let rtts: Arc<Mutex<Vec<(u64, i64)>>> = Arc::new(Mutex::new(Vec::new()));
    let rx = {
        let sock = sock.try_clone()?;
        let rtts = rtts.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 64];
            let mut grace: Option<Instant> = None;
            loop {
                if stop.load(Ordering::Relaxed) {
                    // Let the last probes come back.
                    let g = *grace.get_or_insert_with(Instant::now);
                    if g.elapsed() > Duration::from_millis(300) {
                        break;
                    }
                }
                if let Ok(n) = sock.recv(&mut b) {
                    let now = monotonic_ns();
                    if n >= 20 && u32::from_be_bytes(b[0..4].try_into().unwrap()) == PROBE_MAGIC {
                        let seq = u64::from_be_bytes(b[4..12].try_into().unwrap());
                        let sent = u64::from_be_bytes(b[12..20].try_into().unwrap());
                        rtts.lock()
                            .unwrap()
                            .push((seq, now.saturating_sub(sent) as i64));
                    }
                }
            }
        })
    };
    let start = Instant::now();
    let mut send_ns = Vec::new();
    let mut seq = 0u64;
    let interval = Duration::from_micros(interval_us);
    while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(max_s) {
        let due = start + interval * seq as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let t = monotonic_ns();
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&PROBE_MAGIC.to_be_bytes());
        b[4..12].copy_from_slice(&seq.to_be_bytes());
        b[12..20].copy_from_slice(&t.to_be_bytes());
        let _ = sock.send(&b);
        send_ns.push(t);
        seq += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = rx.join();
    let mut rtt_ns = vec![-1i64; send_ns.len()];
    for (s, r) in rtts.lock().unwrap().iter() {
        if let Some(x) = rtt_ns.get_mut(*s as usize) {
            *x = *r;
        }
    }
    let out = PingResult {
        to: to.to_string(),
        interval_us,
        send_ns,
        rtt_ns,
    };
    serde_json::to_writer(std::io::stdout().lock(), &out)?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct TcpCheck {
    to: String,
    ok: u32,
    failed: u32,
    by_backend: BTreeMap<String, u32>,
    errors: Vec<String>,
}

fn tcp_check(to: std::net::SocketAddrV4, count: u32) -> anyhow::Result<()> {
    let mut r = TcpCheck {
        to: to.to_string(),
        ..Default::default()
    };
    for i in 0..count {
        let one = || -> anyhow::Result<String> {
            let mut s = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(1))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            writeln!(s, "hello {i}")?;
            let mut line = String::new();
            std::io::BufReader::new(s).read_line(&mut line)?;
            let want = format!("hello {i}");
            match line.trim_end().split_once(' ') {
                Some((name, rest)) if rest == want => Ok(name.to_string()),
                _ => bail!("unexpected reply {line:?}"),
            }
        };
        match one() {
            Ok(name) => {
                r.ok += 1;
                *r.by_backend.entry(name).or_default() += 1;
            }
            Err(e) => {
                r.failed += 1;
                r.errors.push(e.to_string());
            }
        }
    }
    serde_json::to_writer(std::io::stdout().lock(), &r)?;
    Ok(())
}

// ------------------------------------------------------------------ the run

#[derive(Debug, Clone, Serialize)]
struct SyncMeasure {
    kind: String,
    run: usize,
    generation: u64,
    services: usize,
    endpoints: usize,
    bytes: usize,
    /// Sync RPC, request sent to reply received.
    ms: f64,
    start_ns: u64,
    end_ns: u64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    result: String,
}

#[derive(Debug, Clone, Serialize, Default)]
struct Window {
    sent: usize,
    lost: usize,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    max_us: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    command: String,
    machine: String,
    shape: BTreeMap<String, u32>,
    sync_bytes_lab_names: usize,
    sync_bytes_long_names: usize,
    /// tonic's default decode limit, which the dataplane's server keeps.
    tonic_default_max_decode: usize,
    client_encode_ms: f64,
    client_decode_ms: f64,
    syncs: Vec<SyncMeasure>,
    medians_ms: BTreeMap<String, f64>,
    spreads_ms: BTreeMap<String, (f64, f64)>,
    get_state_ms: f64,
    get_state_bytes: usize,
    read_back_services: usize,
    read_back_endpoints: usize,
    read_back_generation: u64,
    tcp_check_big: TcpCheck,
    tcp_check_small: TcpCheck,
    rss_kib: BTreeMap<String, u64>,
    ping_svc_during: BTreeMap<String, Window>,
    ping_pod_during: BTreeMap<String, Window>,
    ping_svc_quiet: Window,
    ping_pod_quiet: Window,
    long_names_result: Option<String>,
    perf_report: Option<String>,
}

fn find_root(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(r) = given {
        return Ok(r);
    }
    let mut here = std::env::current_dir()?;
    loop {
        if here.join("scripts/lab.sh").exists() {
            return Ok(here);
        }
        if !here.pop() {
            break;
        }
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    match manifest.parent() {
        Some(p) if p.join("scripts/lab.sh").exists() => Ok(p.to_path_buf()),
        _ => bail!("cannot find scripts/lab.sh: pass --root"),
    }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn read_pid(path: &Path) -> anyhow::Result<u32> {
    std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .parse()
        .with_context(|| format!("pid in {}", path.display()))
}

/// Stops a process we started (lab's control), by PID; waits up to 10 s.
fn stop_pid(pid: u32) {
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Helper {
    child: Child,
    what: String,
}

impl Helper {
    fn spawn(ns: &str, args: &[&str], what: &str) -> anyhow::Result<Helper> {
        let exe = std::env::current_exe()?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(&exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Helper {
            child,
            what: what.to_string(),
        })
    }

    /// Closes stdin and waits (bounded) for its JSON.
    fn finish<T: for<'de> Deserialize<'de>>(mut self) -> anyhow::Result<T> {
        drop(self.child.stdin.take());
        let mut out = String::new();
        let mut stdout = self.child.stdout.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let reader = std::thread::spawn(move || {
            let _ = stdout.read_to_string(&mut out);
            out
        });
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("{} did not finish", self.what);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = reader.join().unwrap();
        serde_json::from_str(&out).with_context(|| format!("{} output", self.what))
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(st: &pb::DataplaneState) -> (usize, usize) {
    (
        st.services.len(),
        st.services.iter().map(|s| s.endpoints.len()).sum(),
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn window(p: &PingResult, ranges: &[(u64, u64)], inside: bool) -> Window {
    let mut rtts: Vec<f64> = Vec::new();
    let mut w = Window::default();
    for (s, r) in p.send_ns.iter().zip(&p.rtt_ns) {
        let hit = ranges.iter().any(|(a, b)| s >= a && s <= b);
        if hit != inside {
            continue;
        }
        w.sent += 1;
        if *r < 0 {
            w.lost += 1;
        } else {
            rtts.push(*r as f64 / 1e3);
        }
    }
    if !rtts.is_empty() {
        rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let q = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
        w.p50_us = Some(q(0.5));
        w.p99_us = Some(q(0.99));
        w.max_us = rtts.last().copied();
    }
    w
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("kxdp-svc-scale run needs root (namespaces, XDP)");
    }
    let root = find_root(a.root.clone())?;
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()?
        .stdout;
    let date = String::from_utf8_lossy(&date).trim().to_string();
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| root.join(format!("perf/results/svc-scale-{date}")));
    let work = PathBuf::from(format!("/tmp/kxdp-svc-scale-{}", a.prefix));
    std::fs::create_dir_all(&work)?;
    eprintln!("==> lab up ({}), logs in {}", a.prefix, work.display());
    // The binaries lab.sh runs: $KXDP_BIN_DIR, else next to this one.
    let bin_dir = match std::env::var_os("KXDP_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of kxdp-svc-scale")?
            .to_path_buf(),
    };
    let lab = Lab::up(&root, &a.prefix, false, &a.cores, &work, &bin_dir, &[])?;
    let r = measure(&a, &root, &lab, &out, &work, &date);
    eprintln!("==> lab down");
    lab.down();
    r
}

fn measure(
    a: &RunArgs,
    root: &Path,
    lab: &Lab,
    out: &Path,
    work: &Path,
    date: &str,
) -> anyhow::Result<()> {
    // kxdp-control would put its own state back: stop it (we started it).
    let control = read_pid(&lab.run_dir.join("control.pid"))?;
    eprintln!("==> stopping the lab's kxdp-control (pid {control})");
    stop_pid(control);
    let dp_pid = read_pid(&lab.run_dir.join("n1.pid"))?;
    let comm = std::fs::read_to_string(format!("/proc/{dp_pid}/comm")).unwrap_or_default();
    if !comm.starts_with("kxdp-dataplane") {
        bail!("pid {dp_pid} of n1 is {comm:?}, not kxdp-dataplane");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sock = lab.run_dir.join("n1.sock");
    let mut client: DataplaneClient<Channel> = rt.block_on(async {
        let ch = kxdp_proto::connect_unix(sock.clone()).await?;
        anyhow::Ok(DataplaneClient::new(ch).max_decoding_message_size(CLIENT_MAX_DECODE))
    })?;
    let base = rt
        .block_on(client.get_state(pb::GetStateRequest::default()))?
        .into_inner()
        .state
        .context("n1 has no state: did control sync it?")?;
    eprintln!(
        "==> n1 holds generation {}: {} remote node(s), {} pod(s), {} service(s)",
        base.generation,
        base.remote_nodes.len(),
        base.pods.len(),
        base.services.len()
    );
    let mut gen = base.generation;
    let mut syncs: Vec<SyncMeasure> = Vec::new();
    let rss = || status_kib(dp_pid, "VmRSS:");
    let mut rss_kib = BTreeMap::new();
    rss_kib.insert("0 as synced by control".to_string(), rss());

    let mut do_sync = |client: &mut DataplaneClient<Channel>,
                       mut st: pb::DataplaneState,
                       kind: &str,
                       run: usize|
     -> anyhow::Result<SyncMeasure> {
        gen += 1;
        st.generation = gen;
        let (services, endpoints) = count(&st);
        let req = pb::SyncRequest { state: Some(st) };
        let bytes = req.encoded_len();
        let rss_before_kib = rss();
        let start_ns = monotonic_ns();
        let t = Instant::now();
        let r = rt.block_on(client.sync(req));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let end_ns = monotonic_ns();
        let result = match r {
            Ok(rep) => format!("ok (generation {})", rep.into_inner().generation),
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
        };
        let m = SyncMeasure {
            kind: kind.to_string(),
            run,
            generation: gen,
            services,
            endpoints,
            bytes,
            ms,
            start_ns,
            end_ns,
            rss_before_kib,
            rss_after_kib: rss(),
            result,
        };
        eprintln!(
            "    {kind:<8} run {run}: {services} services / {endpoints} endpoints, {:.2} MiB: {ms:.0} ms, RSS {} -> {} MiB: {}",
            bytes as f64 / (1 << 20) as f64,
            m.rss_before_kib / 1024,
            m.rss_after_kib / 1024,
            m.result
        );
        Ok(m)
    };

    // Echo servers on n2's pods, then the small state with the echo service.
    let pod_ns =
        |node: &str, name: &str| -> anyhow::Result<String> { Ok(lab.pod_ns(lab.pod(node, name)?)) };
    let mut helpers = Vec::new();
    for p in ["p1", "p2"] {
        helpers.push(Helper::spawn(
            &pod_ns("n2", p)?,
            &["echo", "--name", &format!("n2/{p}"), "--duration", "900"],
            "echo",
        )?);
    }
    let small = small_state(&base, &a.shape, 0);
    let m = do_sync(&mut client, small.clone(), "small", 0)?;
    syncs.push(m);
    std::thread::sleep(Duration::from_millis(500));
    rss_kib.insert("1 small state (1 service, 250 remotes)".into(), rss());
    let client_ns = pod_ns("n1", "p1")?;
    let tcp_to = format!("{ECHO_CLUSTER_IP}:{ECHO_PORT}");
    let tcp_check_small: TcpCheck = Helper::spawn(
        &client_ns,
        &["tcp-check", "--to", &tcp_to, "--count", "20"],
        "tcp-check",
    )?
    .finish()?;
    eprintln!("==> TCP through the echo ClusterIP, small table: {tcp_check_small:?}");

    // Client-side encode/decode cost of the big message (same prost code as the server).
    let big0 = big_state(&base, &a.shape, 0, false);
    let req = pb::SyncRequest {
        state: Some(big0.clone()),
    };
    let t = Instant::now();
    let bytes = req.encode_to_vec();
    let client_encode_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    drop(pb::SyncRequest::decode(bytes.as_slice())?);
    let client_decode_ms = t.elapsed().as_secs_f64() * 1e3;
    let sync_bytes_lab_names = bytes.len();
    let sync_bytes_long_names = pb::SyncRequest {
        state: Some(big_state(&base, &a.shape, 0, true)),
    }
    .encoded_len();
    drop(bytes);

    let interval = a.interval_us.to_string();
    let ping_svc = Helper::spawn(
        &client_ns,
        &["ping", "--to", &tcp_to, "--interval-us", &interval],
        "ping (ClusterIP)",
    )?;
    let ping_pod = Helper::spawn(
        &client_ns,
        &[
            "ping",
            "--to",
            &format!("10.244.2.2:{ECHO_TARGET}"),
            "--interval-us",
            &interval,
        ],
        "ping (pod)",
    )?;
    let gap = Duration::from_secs_f64(a.gap_s);
    std::thread::sleep(gap);

    let mut get_state_ms = 0.0;
    let mut get_state_bytes = 0;
    let mut read_back = (0, 0, 0);
    let mut tcp_check_big = TcpCheck::default();
    let mut perf_report = None;
    for run in 1..=a.runs {
        let m = do_sync(
            &mut client,
            big_state(&base, &a.shape, 0, false),
            "grow",
            run,
        )?;
        let ok = m.result.starts_with("ok");
        syncs.push(m);
        if !ok {
            bail!("the big sync was refused: {}", syncs.last().unwrap().result);
        }
        std::thread::sleep(gap);
        if run == 1 {
            rss_kib.insert("2 big state, after the first grow".into(), rss());
            let t = Instant::now();
            let rep = rt.block_on(client.get_state(pb::GetStateRequest::default()))?;
            get_state_ms = t.elapsed().as_secs_f64() * 1e3;
            let rep = rep.into_inner();
            get_state_bytes = rep.encoded_len();
            let st = rep.state.unwrap_or_default();
            let (s, e) = count(&st);
            read_back = (s, e, st.generation);
            eprintln!(
                "==> GetState: {s} services, {e} endpoints, generation {} ({get_state_bytes} bytes, {get_state_ms:.0} ms)",
                st.generation
            );
            tcp_check_big = Helper::spawn(
                &client_ns,
                &["tcp-check", "--to", &tcp_to, "--count", "20"],
                "tcp-check",
            )?
            .finish()?;
            eprintln!("==> TCP through the echo ClusterIP, big table: {tcp_check_big:?}");
            std::thread::sleep(gap);
        }
        let m = do_sync(
            &mut client,
            big_state(&base, &a.shape, 1 + run as u32, false),
            "replace",
            run,
        )?;
        syncs.push(m);
        std::thread::sleep(gap);
        if run == 1 {
            rss_kib.insert("3 big state, after a replace".into(), rss());
        }
        let m = do_sync(&mut client, small.clone(), "shrink", run)?;
        syncs.push(m);
        std::thread::sleep(gap);
    }
    rss_kib.insert("4 small state again, at the end".into(), rss());

    let mut long_names_result = None;
    if a.long_names {
        let m = do_sync(&mut client, big_state(&base, &a.shape, 0, true), "long", 0)?;
        long_names_result = Some(format!("{} bytes: {}", m.bytes, m.result));
        let refused = !m.result.starts_with("ok");
        syncs.push(m);
        std::thread::sleep(gap);
        if !refused {
            let m = do_sync(&mut client, small.clone(), "shrink", 0)?;
            syncs.push(m);
            std::thread::sleep(gap);
        }
    }

    if a.perf_record {
        let data = work.join("perf.data");
        let mut rec = Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "4000",
                "--call-graph",
                "dwarf,32768",
                "-p",
            ])
            .arg(dp_pid.to_string())
            .arg("-o")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("perf record")?;
        std::thread::sleep(Duration::from_millis(500));
        let m = do_sync(
            &mut client,
            big_state(&base, &a.shape, 0, false),
            "profiled",
            0,
        )?;
        syncs.push(m);
        std::thread::sleep(Duration::from_millis(300));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(rec.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = rec.wait();
        let txt = work.join("perf-report.txt");
        let o = Command::new("perf")
            .args([
                "report",
                "--no-children",
                "--sort",
                "comm,symbol",
                "--stdio",
                "-g",
                "none",
                "--percent-limit",
                "0.5",
                "-i",
            ])
            .arg(&data)
            .output()?;
        std::fs::write(&txt, &o.stdout)?;
        let o2 = Command::new("perf")
            .args([
                "report",
                "--children",
                "--sort",
                "symbol",
                "--stdio",
                "-g",
                "none",
                "--percent-limit",
                "2",
                "-i",
            ])
            .arg(&data)
            .output()?;
        std::fs::write(work.join("perf-report-children.txt"), &o2.stdout)?;
        perf_report = Some(txt.display().to_string());
        let m = do_sync(&mut client, small.clone(), "shrink", 0)?;
        syncs.push(m);
        std::thread::sleep(gap);
    }
    rss_kib.insert("5 peak (VmHWM)".into(), status_kib(dp_pid, "VmHWM:"));

    let svc: PingResult = ping_svc.finish()?;
    let pod: PingResult = ping_pod.finish()?;
    for h in helpers {
        h.kill();
    }

    // Windows: each sync of the measured cycles, 10 ms either side.
    let margin = 10_000_000;
    let mut during_svc = BTreeMap::new();
    let mut during_pod = BTreeMap::new();
    let all: Vec<(u64, u64)> = syncs
        .iter()
        .filter(|m| m.kind != "small")
        .map(|m| (m.start_ns - margin, m.end_ns + margin))
        .collect();
    for kind in ["grow", "replace", "shrink", "long", "profiled"] {
        let r: Vec<(u64, u64)> = syncs
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| (m.start_ns - margin, m.end_ns + margin))
            .collect();
        if r.is_empty() {
            continue;
        }
        during_svc.insert(kind.to_string(), window(&svc, &r, true));
        during_pod.insert(kind.to_string(), window(&pod, &r, true));
    }
    // Quiet: after the pings started, outside every sync window.
    let quiet_svc = window(&svc, &all, false);
    let quiet_pod = window(&pod, &all, false);

    let mut medians_ms = BTreeMap::new();
    let mut spreads_ms = BTreeMap::new();
    for kind in ["grow", "replace", "shrink"] {
        let mut v: Vec<f64> = syncs
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| m.ms)
            .collect();
        if v.is_empty() {
            continue;
        }
        medians_ms.insert(kind.to_string(), median(&mut v));
        spreads_ms.insert(kind.to_string(), (v[0], v[v.len() - 1]));
    }
    let machine = format!(
        "{} cores ({}), {} MiB RAM, kernel {}; shared with other sessions' builds",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim(),
        status_meminfo_mib(),
        String::from_utf8_lossy(&Command::new("uname").arg("-r").output()?.stdout).trim()
    );
    let mut shape = BTreeMap::new();
    shape.insert("services".into(), a.shape.services);
    shape.insert("endpoints_per_service".into(), a.shape.endpoints);
    shape.insert("remote_nodes".into(), a.shape.nodes);
    let report = Report {
        date: date.to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        shape,
        sync_bytes_lab_names,
        sync_bytes_long_names,
        tonic_default_max_decode: TONIC_DEFAULT_MAX_DECODE,
        client_encode_ms,
        client_decode_ms,
        syncs,
        medians_ms,
        spreads_ms,
        get_state_ms,
        get_state_bytes,
        read_back_services: read_back.0,
        read_back_endpoints: read_back.1,
        read_back_generation: read_back.2,
        tcp_check_big,
        tcp_check_small,
        rss_kib,
        ping_svc_during: during_svc,
        ping_pod_during: during_pod,
        ping_svc_quiet: quiet_svc,
        ping_pod_quiet: quiet_pod,
        long_names_result,
        perf_report,
    };
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = out.with_extension("json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    std::fs::write(work.join("ping-svc.json"), serde_json::to_string(&svc)?)?;
    std::fs::write(work.join("ping-pod.json"), serde_json::to_string(&pod)?)?;
    eprintln!(
        "==> wrote {} (raw pings in {})",
        json.display(),
        work.display()
    );
    let _ = root;
    println!("{}", serde_json::to_string_pretty(&summary(&report))?);
    Ok(())
}

fn status_meminfo_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

fn summary(r: &Report) -> serde_json::Value {
    serde_json::json!({
        "medians_ms": r.medians_ms,
        "spreads_ms": r.spreads_ms,
        "bytes": r.sync_bytes_lab_names,
        "bytes_long_names": r.sync_bytes_long_names,
        "rss_kib": r.rss_kib,
        "get_state_ms": r.get_state_ms,
        "read_back": [r.read_back_services, r.read_back_endpoints, r.read_back_generation],
        "tcp_check_big": r.tcp_check_big,
        "ping_svc_during": r.ping_svc_during,
        "ping_pod_during": r.ping_pod_during,
        "ping_svc_quiet": r.ping_svc_quiet,
        "ping_pod_quiet": r.ping_pod_quiet,
        "long_names": r.long_names_result,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_argument_has_help() {
        use clap::CommandFactory;
        assert_eq!(
            kxdp_proto::cli::undocumented(&super::Cli::command()),
            Vec::<String>::new()
        );
    }
}
