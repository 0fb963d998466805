//! Root-only: kxdp-pktgen gen -> sink over a veth pair between two
//! namespaces this test creates. Fails when not root.
use std::process::Command;
use std::time::{Duration, Instant};

use kxdp_perf::pktgen::{GenResult, SinkResult};
use kxdp_testkit::{require_root, unique_name, veth, NetNs};

const BIN: &str = env!("CARGO_BIN_EXE_kxdp-pktgen");

fn mac(ns: &NetNs, ifname: &str) -> String {
    let out = ns.ip(&["-j", "link", "show", ifname]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["address"].as_str().expect("address").to_string()
}

#[test]
fn gen_to_sink_over_veth_delivers_every_packet() {
    require_root();
    let tag = unique_name("pg");
    let a = NetNs::new(&format!("{tag}-a"));
    let b = NetNs::new(&format!("{tag}-b"));
    veth(&a, &format!("{tag}a"), &b, &format!("{tag}b"));
    let (ia, ib) = (format!("{tag}a"), format!("{tag}b"));
    let (ma, mb) = (mac(&a, &ia), mac(&b, &ib));
    let dir = std::env::temp_dir().join(format!("{tag}-out"));
    std::fs::create_dir_all(&dir).unwrap();
    let ready = dir.join("ready");
    let sink_json = dir.join("sink.json");
    let gen_json = dir.join("gen.json");

    let mut sink = Command::new("ip")
        .args(["netns", "exec", b.name(), BIN, "sink", "--iface", &ib])
        .args([
            "--duration",
            "15",
            "--idle-exit-ms",
            "1500",
            "--expect-flows",
            "8",
        ])
        .arg("--ready-file")
        .arg(&ready)
        .arg("--json")
        .arg(&sink_json)
        .spawn()
        .expect("start sink");
    let t0 = Instant::now();
    while !ready.exists() {
        if let Some(st) = sink.try_wait().unwrap() {
            panic!("sink exited before it was ready: {st}");
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "sink not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    const N: u64 = 20_000;
    let gen = Command::new("ip")
        .args(["netns", "exec", a.name(), BIN, "gen", "--iface", &ia])
        .args(["--src-mac", &ma, "--dst-mac", &mb])
        .args(["--src-ip", "10.254.0.1", "--dst-ip", "10.254.0.2"])
        .args(["--dst-port", "9", "--flows", "8", "--size", "128"])
        .args([
            "--rate",
            "20000",
            "--count",
            &N.to_string(),
            "--duration",
            "5",
        ])
        .arg("--json")
        .arg(&gen_json)
        .status()
        .expect("run gen");
    assert!(gen.success(), "gen failed: {gen}");
    let st = sink.wait().expect("sink");
    assert!(st.success(), "sink failed: {st}");

    let g: GenResult = serde_json::from_slice(&std::fs::read(&gen_json).unwrap()).unwrap();
    let s: SinkResult = serde_json::from_slice(&std::fs::read(&sink_json).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(g.sent, N);
    assert_eq!(g.completed, N);
    assert_eq!(s.probes, N, "sink: {s:?}");
    assert_eq!(s.flows.flows_seen, 8);
    assert_eq!(s.flows.lost, 0);
    assert_eq!(s.flows.reordered, 0);
    assert_eq!(s.flows.expected, N);
    assert_eq!(s.bytes, N * 128);
    assert!(s.latency_ns.samples == N && s.latency_ns.p50 > 0);
    assert!(s.latency_ns.p50 <= s.latency_ns.p99 && s.latency_ns.p99 <= s.latency_ns.max);
}
