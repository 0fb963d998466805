//! Operating kxdp with the real tools: Debian's `prometheus` scrapes a lab
//! node's dataplane and the control process, a query after a known number of
//! packets returns exactly that many more, `promtool check metrics` passes
//! on every endpoint's output, and both `/healthz` answer 200 with their
//! JSON body.
//!
//! The dataplane serves on the loopback of its node's namespace
//! (`lab.sh`: 127.0.0.1:9464 there), the control process on a loopback port
//! of the root namespace (`RUN_DIR/control.metrics`), so each gets a
//! Prometheus server in its own namespace: a free port, a temporary data
//! directory, a 1 s scrape interval, killed by PID when the test ends.

use std::io::Write;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use kxdp_e2e::{check, in_netns, ns_exec, require_root, run_timeout, ChildGuard, Lab, LabOpts};
use kxdp_testkit::{free_port, TempDir};
use serde_json::Value;

/// Datagrams sent from a pod of n1 to a pod of n2: n1 encapsulates each once.
const DATAGRAMS: u64 = 250;

/// A Prometheus server scraping `target` (host:port), in `netns` or the
/// root namespace; stopped by PID (SIGTERM, then SIGKILL) when dropped.
struct Prometheus {
    netns: Option<String>,
    url: String,
    _child: ChildGuard,
    dir: TempDir,
}

impl Prometheus {
    fn start(netns: Option<&str>, target: &str) -> Prometheus {
        let dir = TempDir::new("prom");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: kxdp\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        // A free port of the namespace it runs in (a fresh node namespace
        // has nothing on it; the root namespace's is the kernel's pick).
        let listen = format!("127.0.0.1:{}", free_port());
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={listen}"),
            "--log.level=warn".to_string(),
        ];
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut cmd = match netns {
            // `ip netns exec` execs the program: the PID is Prometheus'.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "prometheus"]);
                c
            }
            None => Command::new("prometheus"),
        };
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run prometheus (Debian package prometheus; scripts/deps.sh installs it)");
        let p = Prometheus {
            netns: netns.map(str::to_string),
            url: format!("http://{listen}"),
            _child: ChildGuard(child),
            dir,
        };
        let ready = wait_for(Duration::from_secs(30), || {
            p.curl(&["-sf", &format!("{}/-/ready", p.url)])
                .status
                .success()
        });
        assert!(ready, "prometheus never became ready: {}", p.log());
        p
    }

    fn curl(&self, args: &[&str]) -> std::process::Output {
        match &self.netns {
            Some(ns) => ns_exec(ns, 10, "curl", args),
            None => run_timeout(10, "curl", args),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The value of an instant query that returns one sample, or None.
    fn query(&self, q: &str) -> Option<f64> {
        let out = self.curl(&[
            "-sfG",
            &format!("{}/api/v1/query", self.url),
            "--data-urlencode",
            &format!("query={q}"),
        ]);
        let body: Value = serde_json::from_slice(&out.stdout).ok()?;
        assert_eq!(body["status"], "success", "{q}: {body}");
        let result = body["data"]["result"].as_array()?;
        assert!(result.len() <= 1, "{q}: more than one series: {body}");
        result.first()?["value"][1].as_str()?.parse().ok()
    }

    /// Polls `q` until `ok` holds for its value (at most `limit`); the last value.
    fn wait_value(&self, q: &str, limit: Duration, ok: impl Fn(f64) -> bool) -> Option<f64> {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.query(q);
            if v.is_some_and(&ok) || Instant::now() >= deadline {
                return v;
            }
            thread::sleep(Duration::from_millis(250));
        }
    }
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(200));
    }
    false
}

/// `promtool check metrics` on `exposition` (it exits non-zero on any lint
/// problem or parse error).
fn promtool_check(what: &str, exposition: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed on {what}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A sample's value in a text exposition (labels exactly as given).
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn prometheus_scrapes_exact_counters_and_promtool_accepts_every_endpoint() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let n1 = lab.ns("n1");
    let control = std::fs::read_to_string(lab.run_dir.join("control.metrics")).unwrap();
    let control = control.trim().to_string();
    let dataplane = "127.0.0.1:9464";
    let scrape_dp = |path: &str| {
        check(
            "curl the dataplane",
            ns_exec(
                &n1,
                10,
                "curl",
                &["-sS", &format!("http://{dataplane}{path}")],
            ),
        )
    };
    let scrape_control = |path: &str| {
        check(
            "curl kxdp-control",
            run_timeout(10, "curl", &["-sS", &format!("http://{control}{path}")]),
        )
    };

    // Both endpoints pass promtool's lint, and both are healthy.
    let dp_text = scrape_dp("/metrics");
    let control_text = scrape_control("/metrics");
    promtool_check("the dataplane's /metrics", &dp_text);
    promtool_check("kxdp-control's /metrics", &control_text);
    for name in [
        "kxdp_drops_total{reason=\"no_route\",worker=\"0\"}",
        "kxdp_encapsulated_total{worker=\"0\"}",
        "kxdp_flow_cache_hits_total{worker=\"0\"}",
        "kxdp_handed_off_total{worker=\"0\"}",
        "kxdp_conntrack_evictions_total{worker=\"0\"}",
        "kxdp_workers",
        "kxdp_uplink_attached",
    ] {
        assert!(sample(&dp_text, name).is_some(), "no {name} in\n{dp_text}");
    }
    assert_eq!(sample(&dp_text, "kxdp_uplink_attached"), Some(1.0));
    assert_eq!(
        sample(&control_text, "kxdp_control_node_synced{node=\"n1\"}"),
        Some(1.0),
        "{control_text}"
    );
    for (what, body) in [
        ("dataplane", scrape_dp("/healthz")),
        ("control", scrape_control("/healthz")),
    ] {
        let v: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
        assert_eq!(v["healthy"], true, "{what}: {v}");
        assert!(v["currentTime"].is_string(), "{what}: {v}");
    }

    let prom_dp = Prometheus::start(Some(&n1), dataplane);
    let prom_control = Prometheus::start(None, &control);

    // Datagrams first until one is counted (the way to n2 is resolved),
    // then a baseline that Prometheus has scraped too.
    let (from, to) = (lab.pod("n1-p1").clone(), lab.pod("n2-p1").clone());
    let sock = in_netns(&lab.ns("n1-p1"), move || {
        UdpSocket::bind((from.ip, 0)).expect("bind in the pod")
    });
    let encapsulated = || {
        sample(
            &scrape_dp("/metrics"),
            "kxdp_encapsulated_total{worker=\"0\"}",
        )
    };
    let send = |n: u64| {
        for i in 0..n {
            let payload = format!("kxdp metrics test {i}");
            sock.send_to(payload.as_bytes(), (to.ip, 9)).unwrap();
        }
    };
    let first = encapsulated().unwrap();
    let warm = wait_for(Duration::from_secs(10), || {
        send(1);
        thread::sleep(Duration::from_millis(300));
        encapsulated().unwrap() > first
    });
    assert!(warm, "no warm-up datagram was encapsulated");
    // Whatever was still in flight is counted by now.
    thread::sleep(Duration::from_secs(1));
    let base = encapsulated().unwrap();
    let q = "sum(kxdp_encapsulated_total)";
    let seen = prom_dp.wait_value(q, Duration::from_secs(20), |v| v == base);
    assert_eq!(
        seen,
        Some(base),
        "prometheus never scraped the baseline {base}"
    );

    send(DATAGRAMS);
    let want = base + DATAGRAMS as f64;
    let got = prom_dp.wait_value(q, Duration::from_secs(20), |v| v >= want);
    assert_eq!(
        got,
        Some(want),
        "{q}: {got:?} after {DATAGRAMS} datagrams from a baseline of {base}"
    );
    eprintln!("{q}: {base} before, {got:?} after {DATAGRAMS} datagrams");
    // Exact, and it stays exact (nothing else crosses to n2 meanwhile).
    thread::sleep(Duration::from_secs(2));
    assert_eq!(prom_dp.query(q), Some(want));
    assert_eq!(prom_dp.query("kxdp_workers"), Some(1.0));
    assert_eq!(prom_dp.query("kxdp_uplink_attached"), Some(1.0));

    // The control process, scraped as well.
    let synced = prom_control.wait_value(
        "kxdp_control_node_synced{node=\"n1\"}",
        Duration::from_secs(20),
        |v| v == 1.0,
    );
    assert_eq!(synced, Some(1.0));
    let syncs = prom_control.query("sum(kxdp_control_syncs_total{node=\"n1\",result=\"ok\"})");
    assert!(syncs.is_some_and(|v| v >= 1.0), "{syncs:?}");
    let lag = prom_control.query("kxdp_control_node_generation_lag_seconds{node=\"n2\"}");
    assert_eq!(lag, Some(0.0));
}
