//! tcp-svc: iperf3 from n1/p1 through the TCP ClusterIP `bench/tcp`
//! (10.96.0.21:5201) to `iperf3 -s -1` in n2/p1, with the two pods' offloads
//! in each of [`MODES`]. Both processes are children of the harness, pinned
//! with taskset, bounded in time and stopped by their PID only.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::run::wait_bounded;
use super::scenarios::Attach;
use crate::stats::Spread;

/// Pod offload settings (`ethtool -K eth0 ...` on the client's and the
/// server's eth0).
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    pub name: &'static str,
    pub features: &'static [&'static str],
    pub what: &'static str,
}

pub const MODES: &[Mode] = &[
    Mode {
        name: "TSO/GSO off",
        features: &["tx", "off", "tso", "off", "gso", "off"],
        what: "ethtool -K eth0 tx off tso off gso off (the lab's default): \
               the stack hands the veth MSS-sized frames",
    },
    Mode {
        name: "TSO/GSO on",
        features: &["tx", "on", "tso", "on", "gso", "on"],
        what: "ethtool -K eth0 tx on tso on gso on (a pod's defaults; TSO needs TX checksum \
               offload, which the lab turns off for AF_XDP): the pod hands its veth up to 64 KiB \
               TCP super-frames with partial checksums",
    },
    Mode {
        name: "GSO on, TSO off",
        features: &["tx", "off", "tso", "off", "gso", "on"],
        what: "ethtool -K eth0 tx off tso off gso on: large skbs inside the pod's stack, \
               segmented in software (with full checksums) before the veth",
    },
];

/// What the lab sets up and what the harness restores afterwards.
pub const LAB_DEFAULT: &[&str] = &["tx", "off", "tso", "off", "gso", "off"];

#[derive(Debug, Clone, Serialize)]
pub struct TcpRun {
    /// Receiver's goodput (iperf3 end.sum_received).
    pub gbps: f64,
    pub sender_gbps: f64,
    pub retransmits: u64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct TcpMeasurement {
    pub runs: Vec<TcpRun>,
    pub gbps: Option<Spread>,
    pub retransmits: Option<Spread>,
    /// `ethtool -k` state of the client's and the server's eth0.
    pub offloads: Vec<String>,
    pub errors: Vec<String>,
}

impl TcpMeasurement {
    pub fn finish(&mut self) {
        self.gbps = Spread::of(&self.runs.iter().map(|r| r.gbps).collect::<Vec<_>>());
        self.retransmits = Spread::of(
            &self
                .runs
                .iter()
                .map(|r| r.retransmits as f64)
                .collect::<Vec<_>>(),
        );
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TcpPoint {
    pub mode: String,
    pub what: String,
    pub kxdp: TcpMeasurement,
    pub kernel: TcpMeasurement,
    pub ratio: Option<f64>,
}

/// The figures of iperf3's `-J` output (client side).
pub fn parse_iperf(json: &str) -> anyhow::Result<TcpRun> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let rx = &v["end"]["sum_received"];
    let tx = &v["end"]["sum_sent"];
    let gbps = rx["bits_per_second"]
        .as_f64()
        .context("iperf3 -J: no end.sum_received.bits_per_second")?
        / 1e9;
    Ok(TcpRun {
        gbps,
        sender_gbps: tx["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
        retransmits: tx["retransmits"].as_u64().unwrap_or(0),
        seconds: rx["seconds"].as_f64().unwrap_or(0.0),
    })
}

fn listening(ns: &str, port: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-Hltn"])
        .arg(format!("sport = :{port}"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("LISTEN"))
        .unwrap_or(false)
}

/// One iperf3 run: server (`-s -1`) in the sink's namespace, client in the
/// generator's, both `taskset -c core`; `-t duration_s`.
pub fn iperf_run(
    a: &Attach,
    core: usize,
    duration_s: u64,
    work: &Path,
    tag: &str,
) -> anyhow::Result<TcpRun> {
    let core = core.to_string();
    let port = a.dst_port.to_string();
    let server_log = work.join(format!("{tag}.iperf-s.log"));
    let client_json = work.join(format!("{tag}.iperf.json"));
    let mut server = Command::new("ip")
        .args(["netns", "exec", &a.sink_ns, "taskset", "-c", &core])
        .args(["iperf3", "-s", "-1", "-p", &port])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&server_log)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    let t0 = Instant::now();
    while !listening(&a.sink_ns, a.dst_port) {
        if let Some(st) = server.try_wait()? {
            bail!("iperf3 -s exited ({st}); log {}", server_log.display());
        }
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = wait_bounded(&mut server, Duration::ZERO);
            bail!("iperf3 -s not listening after 5 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let client = Command::new("ip")
        .args(["netns", "exec", &a.gen_ns, "taskset", "-c", &core])
        .args(["iperf3", "-c", &a.dst_ip, "-p", &port, "-J"])
        .args(["-t", &duration_s.to_string(), "--connect-timeout", "3000"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&client_json)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -c");
    let mut client = match client {
        Ok(c) => c,
        Err(e) => {
            let _ = wait_bounded(&mut server, Duration::ZERO);
            return Err(e);
        }
    };
    let client_st = wait_bounded(&mut client, Duration::from_secs(duration_s + 15));
    // One test and it exits; if the client never got through, stop it.
    let server_st = wait_bounded(&mut server, Duration::from_secs(5));
    let out = std::fs::read_to_string(&client_json).unwrap_or_default();
    let parsed = parse_iperf(&out);
    match (client_st, parsed) {
        (Ok(_), Ok(r)) => {
            if let Err(e) = server_st {
                crate::say!("    {tag}: iperf3 -s: {e:#}");
            }
            let _ = std::fs::remove_file(&server_log);
            Ok(r)
        }
        (Err(e), _) => Err(e.context("iperf3 -c")),
        (Ok(st), Err(e)) => Err(e.context(format!("iperf3 -c exited {st}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iperf3_json() {
        let j = r#"{"start":{},"intervals":[],"end":{
            "sum_sent":{"start":0,"end":3.0,"seconds":3.0,"bytes":1,"bits_per_second":2.5e9,"retransmits":7,"sender":true},
            "sum_received":{"start":0,"end":3.0,"seconds":3.0,"bytes":1,"bits_per_second":2.4e9,"sender":true}}}"#;
        let r = parse_iperf(j).unwrap();
        assert!((r.gbps - 2.4).abs() < 1e-9 && (r.sender_gbps - 2.5).abs() < 1e-9);
        assert_eq!(r.retransmits, 7);
        let e = parse_iperf(
            r#"{"start":{},"end":{},"error":"unable to connect to server: Connection timed out"}"#,
        );
        assert!(format!("{:#}", e.unwrap_err()).contains("unable to connect"));
        assert!(parse_iperf("").is_err());
    }

    #[test]
    fn modes_start_from_the_lab_default() {
        assert_eq!(MODES[0].features, LAB_DEFAULT);
        assert!(MODES
            .iter()
            .any(|m| m.features.contains(&"tso") && m.features.contains(&"on")));
    }
}
