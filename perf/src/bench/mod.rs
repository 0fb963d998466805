//! `kxdp-bench`: runs named scenarios on the namespace lab with kxdp and
//! with the kernel doing the job (flannel-style), plus testpmd's AF_XDP
//! io-forward ceiling, all with the same generator and sink, and writes a
//! report.
//!
//! Both labs are up at once (different prefixes) and every measurement
//! run alternates kxdp, kernel, kxdp, kernel, ... so that whatever else
//! the machine is doing (colleagues compiling) hits both alike.

pub mod ceiling;
pub mod lab;
pub mod plot;
pub mod report;
pub mod run;
pub mod scenarios;

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use crate::pktgen::{GenResult, SinkResult};
use crate::stats::Spread;
use lab::Lab;
use run::{run_point, Point, Tools};
use scenarios::{Attach, Scenario};

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub root: PathBuf,
    pub out: PathBuf,
    pub scenarios: Vec<&'static Scenario>,
    pub sizes: Vec<usize>,
    pub flows: Vec<u16>,
    pub runs: usize,
    pub duration_s: f64,
    pub prefix: String,
    pub pktgen: PathBuf,
    pub gen_core: usize,
    pub fwd_core: usize,
    pub ceiling: bool,
    pub kernel_rps: bool,
    pub latency: bool,
    pub command: String,
}

/// The figures of one measurement run.
#[derive(Debug, Clone, Serialize)]
pub struct RunFigures {
    pub sent: u64,
    pub gen_pps: f64,
    pub received: u64,
    /// Probes received / generator time: what the datapath delivered.
    pub delivered_pps: f64,
    pub lost_pct: f64,
    pub reordered: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub sink_xsk_drops: u64,
}

impl RunFigures {
    fn of(g: &GenResult, s: &SinkResult) -> RunFigures {
        let lost = g.sent.saturating_sub(s.probes);
        RunFigures {
            sent: g.sent,
            gen_pps: g.pps,
            received: s.probes,
            delivered_pps: if g.elapsed_s > 0.0 {
                s.probes as f64 / g.elapsed_s
            } else {
                0.0
            },
            lost_pct: if g.sent > 0 {
                lost as f64 * 100.0 / g.sent as f64
            } else {
                0.0
            },
            reordered: s.flows.reordered,
            p50_us: s.latency_ns.p50 as f64 / 1e3,
            p99_us: s.latency_ns.p99 as f64 / 1e3,
            p999_us: s.latency_ns.p999 as f64 / 1e3,
            sink_xsk_drops: s.xsk.rx_dropped,
        }
    }
}

/// One datapath at one point: its runs and their spread.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Measurement {
    pub runs: Vec<RunFigures>,
    pub delivered_pps: Option<Spread>,
    pub gen_pps: Option<Spread>,
    pub lost_pct: Option<Spread>,
    /// A run at half the median delivered rate (p99 "below the knee").
    pub at_half_rate: Option<(u64, RunFigures)>,
    pub errors: Vec<String>,
}

impl Measurement {
    fn finish(&mut self) {
        let pick =
            |f: fn(&RunFigures) -> f64| Spread::of(&self.runs.iter().map(f).collect::<Vec<_>>());
        self.delivered_pps = pick(|r| r.delivered_pps);
        self.gen_pps = pick(|r| r.gen_pps);
        self.lost_pct = pick(|r| r.lost_pct);
    }

    pub fn median(&self) -> Option<f64> {
        self.delivered_pps.map(|s| s.median)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PointResult {
    pub scenario: String,
    pub size: usize,
    pub flows: u16,
    pub kxdp: Measurement,
    pub kernel: Measurement,
    pub ratio: Option<f64>,
    /// Service scenarios: conntrack entries of the scenario's flows on the
    /// entry node after the point's flat-out runs.
    pub conntrack: Option<ConntrackCounts>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ConntrackCounts {
    pub node: String,
    pub kxdp: Option<u64>,
    pub kernel: Option<u64>,
    pub errors: Vec<String>,
}

/// The first probe of a scenario's warm-up as the sink saw it.
#[derive(Debug, Clone, Serialize)]
pub struct SinkSaw {
    pub scenario: String,
    pub datapath: String,
    pub sent: String,
    pub received: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingResult {
    pub size: usize,
    pub flows: u16,
    pub testpmd: Measurement,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub scenario: String,
    pub walk: String,
    pub waits_for: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Pinning {
    pub process: String,
    pub cores: String,
    pub how: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub command: String,
    pub host: String,
    pub git: String,
    pub runs: usize,
    pub duration_s: f64,
    pub walks: Vec<(String, String)>,
    pub attach: Vec<(String, String, Attach)>,
    pub pinning: Vec<Pinning>,
    pub not_pinned: Vec<String>,
    pub points: Vec<PointResult>,
    pub ceiling: Vec<CeilingResult>,
    pub ceiling_command: Option<String>,
    pub pending: Vec<Pending>,
    /// What the sink saw of each scenario's warm-up (after NAT).
    pub sink_saw: Vec<SinkSaw>,
    /// Commands that set the kernel baseline's services up.
    pub kernel_services: Vec<String>,
    pub load_before: String,
    pub load_after: String,
    pub notes: Vec<String>,
}

fn measure(
    tools: &Tools,
    a: &Attach,
    p: Point,
    tag: &str,
    m: &mut Measurement,
) -> Option<(GenResult, SinkResult)> {
    match run_point(tools, a, p, tag) {
        Ok((g, s)) => {
            let f = RunFigures::of(&g, &s);
            eprintln!(
                "    {tag}: sent {:.0} pps, delivered {:.0} pps, lost {:.2}%, p99 {:.0} us",
                f.gen_pps, f.delivered_pps, f.lost_pct, f.p99_us
            );
            m.runs.push(f);
            Some((g, s))
        }
        Err(e) => {
            eprintln!("    {tag}: error: {e:#}");
            m.errors.push(format!("{e:#}"));
            None
        }
    }
}

fn half_rate(tools: &Tools, a: &Attach, base: Point, tag: &str, m: &mut Measurement) {
    let Some(med) = m.median() else { return };
    let rate = (med / 2.0).max(1000.0) as u64;
    let p = Point {
        rate: Some(rate),
        duration_s: base.duration_s.min(2.0),
        ..base
    };
    match run_point(tools, a, p, tag) {
        Ok((g, s)) => {
            let f = RunFigures::of(&g, &s);
            eprintln!(
                "    {tag}: at {rate} pps: delivered {:.0} pps, lost {:.2}%, p50 {:.0} us p99 {:.0} us",
                f.delivered_pps, f.lost_pct, f.p50_us, f.p99_us
            );
            m.at_half_rate = Some((rate, f));
        }
        Err(e) => m.errors.push(format!("half-rate run: {e:#}")),
    }
}

fn host_info() -> String {
    let kernel = lab::sh("uname", &["-r"]).unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!("Linux {}, {cpus} CPUs ({model})", kernel.trim())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn git_info(root: &std::path::Path) -> String {
    let rev = lab::sh(
        "git",
        &[
            "-C",
            &root.to_string_lossy(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    )
    .unwrap_or_default();
    let dirty = lab::sh(
        "git",
        &[
            "-C",
            &root.to_string_lossy(),
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )
    .map(|s| s.lines().count())
    .unwrap_or(0);
    let bin = root.join("target/release/kxdp-dataplane");
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            lab::sh(
                "date",
                &["-u", "-d", &format!("@{}", d.as_secs()), "+%Y-%m-%dT%H:%MZ"],
            )
            .unwrap_or_default()
            .trim()
            .to_string()
        })
        .unwrap_or_else(|| "?".into());
    format!(
        "{} ({} modified tracked files in the work tree); kxdp-dataplane binary built {built}",
        rev.trim(),
        dirty
    )
}

/// Runs everything `cfg` asks for and writes the report. Returns it.
pub fn run_bench(cfg: &BenchConfig) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let work = cfg.out.join("raw");
    std::fs::create_dir_all(&work)?;
    let tools = Tools {
        pktgen: cfg.pktgen.clone(),
        gen_core: cfg.gen_core,
        work: work.clone(),
    };
    let load_before = loadavg();
    let runnable: Vec<&Scenario> = cfg
        .scenarios
        .iter()
        .copied()
        .filter(|s| s.attach.is_some())
        .collect();
    let pending = cfg
        .scenarios
        .iter()
        .filter(|s| s.attach.is_none())
        .map(|s| Pending {
            scenario: s.name.into(),
            walk: s.walk.into(),
            waits_for: s.pending.into(),
        })
        .collect();
    let mut report = Report {
        date: lab::sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .unwrap_or_default()
            .trim()
            .to_string(),
        command: cfg.command.clone(),
        host: host_info(),
        git: git_info(&cfg.root),
        runs: cfg.runs,
        duration_s: cfg.duration_s,
        walks: cfg
            .scenarios
            .iter()
            .map(|s| (s.name.to_string(), s.walk.to_string()))
            .collect(),
        attach: Vec::new(),
        pinning: Vec::new(),
        not_pinned: Vec::new(),
        points: Vec::new(),
        ceiling: Vec::new(),
        ceiling_command: None,
        pending,
        sink_saw: Vec::new(),
        kernel_services: Vec::new(),
        load_before,
        load_after: String::new(),
        notes: Vec::new(),
    };
    report.pinning.push(Pinning {
        process: "kxdp-pktgen gen and sink".into(),
        cores: cfg.gen_core.to_string(),
        how: format!("taskset -c {} inside `ip netns exec`", cfg.gen_core),
    });

    if !runnable.is_empty() {
        let fwd = cfg.fwd_core.to_string();
        let cores = format!("{fwd} {fwd}");
        eprintln!("==> lab {} (kxdp, KXDP_LAB_CORES=\"{cores}\")", cfg.prefix);
        let kx = Lab::up(&cfg.root, &cfg.prefix, false, &cores, &work)?;
        let kprefix = format!("{}k", cfg.prefix);
        eprintln!("==> lab {kprefix} (kernel: KXDP_KERNEL_NODES=\"n1 n2\")");
        let kl = match Lab::up(&cfg.root, &kprefix, true, &cores, &work) {
            Ok(l) => l,
            Err(e) => {
                kx.down();
                return Err(e);
            }
        };
        let result = run_labs(cfg, &tools, &kx, &kl, &runnable, &mut report);
        kx.down();
        kl.down();
        result?;
    }

    if cfg.ceiling {
        if let Err(e) = run_ceiling(cfg, &tools, &mut report) {
            eprintln!("==> testpmd ceiling: {e:#}");
            report
                .notes
                .push(format!("The testpmd ceiling could not be measured: {e:#}"));
        }
    }
    report.load_after = loadavg();
    report::write(cfg, &report)?;
    Ok(report)
}

fn run_labs(
    cfg: &BenchConfig,
    tools: &Tools,
    kx: &Lab,
    kl: &Lab,
    scenarios: &[&Scenario],
    report: &mut Report,
) -> anyhow::Result<()> {
    report.pinning.push(Pinning {
        process: "kxdp-dataplane of n1 and of n2 (one worker each)".into(),
        cores: cfg.fwd_core.to_string(),
        how: format!(
            "KXDP_LAB_CORES=\"{0} {0}\" (lab.sh -> kxdp-dataplane --cores)",
            cfg.fwd_core
        ),
    });
    if cfg.kernel_rps {
        let set = kl.steer_rps(cfg.fwd_core, true)?;
        report.pinning.push(Pinning {
            process: "kernel forwarding (softirq) of n1, n2 and the switch".into(),
            cores: cfg.fwd_core.to_string(),
            how: format!(
                "RPS: rps_cpus = {:x} on rx-0 of all {} interfaces of the node and switch namespaces",
                1u64 << cfg.fwd_core,
                set.len()
            ),
        });
        let set = kx.steer_rps(cfg.fwd_core, false)?;
        report.pinning.push(Pinning {
            process: "kxdp lab: the switch (bridge br0) namespace's softirq".into(),
            cores: cfg.fwd_core.to_string(),
            how: format!(
                "RPS: rps_cpus = {:x} on rx-0 of its {} ports, as in the kernel lab: the switch's \
                 work for the outside client's frames (ext-nodeport), and with it n1's XDP \
                 receive of them, runs on the forwarding core in both labs",
                1u64 << cfg.fwd_core,
                set.len()
            ),
        });
    } else {
        report.not_pinned.push(
            "Kernel forwarding was not steered (--no-kernel-rps): it runs in the generator's \
             sendto() softirq on the generator's core."
                .into(),
        );
    }
    report.not_pinned.push(format!(
        "AF_XDP copy-mode receive on a veth (kxdp's XDP program on the pod veth and the copy \
         into its UMEM) runs in the softirq of the CPU that transmitted the frame: for the first \
         hop that is the generator's sendto() on core {}; RPS does not apply to it (XDP runs \
         before RPS). Threaded NAPI could move it, but a kthread sharing a core with a \
         busy-polling worker made every AF_XDP forwarder slower in a trial, so it is not used.",
        cfg.gen_core
    ));
    report.not_pinned.push(
        "kxdp-control (idle during measurement) and the colleagues' builds are not pinned: \
         they run wherever the scheduler puts them."
            .into(),
    );

    let mut kube_proxy_loaded = false;
    for s in scenarios {
        let attach = s.attach.expect("runnable");
        let ak = attach(kx)?;
        let al = attach(kl)?;
        if s.services && !kube_proxy_loaded {
            eprintln!(
                "==> kernel lab: kube-proxy (nftables mode) rule set {}",
                lab::KUBE_PROXY_NFT
            );
            let cmds = kl.load_kube_proxy()?;
            if report.kernel_services.is_empty() {
                report.kernel_services = cmds;
            }
            kube_proxy_loaded = true;
        } else if !s.services && kube_proxy_loaded {
            kl.unload_kube_proxy();
            kube_proxy_loaded = false;
        }
        if let Some(p) = scenarios::sink_pod(kl, &al) {
            kl.pin_neighbour(p)?;
        }
        report
            .attach
            .push((s.name.to_string(), "kxdp".into(), ak.clone()));
        report
            .attach
            .push((s.name.to_string(), "kernel".into(), al.clone()));
        eprintln!("==> {}: warm-up", s.name);
        let warm = Point {
            size: 64,
            flows: 1,
            rate: Some(10_000),
            duration_s: 1.0,
        };
        for (a, dp) in [(&ak, "kxdp"), (&al, "kernel")] {
            match run_point(tools, a, warm, &format!("{}-{dp}-warmup", s.name)) {
                Ok((_, sink)) => {
                    let received = sink
                        .first_probe
                        .map(|h| h.to_string())
                        .unwrap_or_else(|| "no probe".into());
                    eprintln!("    warm-up {dp}: sink saw {received}");
                    report.sink_saw.push(SinkSaw {
                        scenario: s.name.into(),
                        datapath: dp.into(),
                        sent: format!(
                            "udp {}:{} -> {}:{}",
                            a.src_ip,
                            crate::pktgen::DEFAULT_SRC_PORT,
                            a.dst_ip,
                            a.dst_port
                        ),
                        received,
                    });
                }
                Err(e) => eprintln!("    warm-up {dp}: {e:#}"),
            }
        }
        for &size in &cfg.sizes {
            for &flows in &cfg.flows {
                eprintln!("==> {} {size}B {flows} flows", s.name);
                let p = Point {
                    size,
                    flows,
                    rate: None,
                    duration_s: cfg.duration_s,
                };
                let mut mk = Measurement::default();
                let mut ml = Measurement::default();
                for r in 0..cfg.runs {
                    let base = format!("{}-{size}-{flows}-r{r}", s.name);
                    measure(tools, &ak, p, &format!("{base}-kxdp"), &mut mk);
                    measure(tools, &al, p, &format!("{base}-kernel"), &mut ml);
                }
                mk.finish();
                ml.finish();
                let conntrack = s.services.then(|| {
                    let node = scenarios::ENTRY_NODE;
                    let mut c = ConntrackCounts {
                        node: node.into(),
                        ..Default::default()
                    };
                    for (lab, a, slot) in [(kx, &ak, &mut c.kxdp), (kl, &al, &mut c.kernel)] {
                        match lab.conntrack_entries(node, &a.src_ip, &a.dst_ip, a.dst_port) {
                            Ok(n) => *slot = Some(n),
                            Err(e) => c.errors.push(format!("{e:#}")),
                        }
                    }
                    eprintln!(
                        "    conntrack on {node}: kxdp {:?}, kernel {:?} entries",
                        c.kxdp, c.kernel
                    );
                    c
                });
                if cfg.latency {
                    let base = format!("{}-{size}-{flows}-half", s.name);
                    half_rate(tools, &ak, p, &format!("{base}-kxdp"), &mut mk);
                    half_rate(tools, &al, p, &format!("{base}-kernel"), &mut ml);
                }
                let ratio = match (mk.median(), ml.median()) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
                report.points.push(PointResult {
                    scenario: s.name.into(),
                    size,
                    flows,
                    kxdp: mk,
                    kernel: ml,
                    ratio,
                    conntrack,
                });
            }
        }
    }
    if kube_proxy_loaded {
        kl.unload_kube_proxy();
    }
    Ok(())
}

fn run_ceiling(cfg: &BenchConfig, tools: &Tools, report: &mut Report) -> anyhow::Result<()> {
    eprintln!("==> testpmd AF_XDP io-forward ceiling");
    let tp = ceiling::Testpmd::start(&format!("{}c", cfg.prefix), cfg.fwd_core, &tools.work)?;
    report.ceiling_command = Some(tp.command.clone());
    report.pinning.push(Pinning {
        process: "dpdk-testpmd (main and forwarding lcore)".into(),
        cores: cfg.fwd_core.to_string(),
        how: format!("taskset -c {0} and --lcores '0@{0},1@{0}'", cfg.fwd_core),
    });
    let a = tp.attach()?;
    report
        .attach
        .push(("ceiling".into(), "testpmd".into(), a.clone()));
    let _ = run_point(
        tools,
        &a,
        Point {
            size: 64,
            flows: 1,
            rate: Some(10_000),
            duration_s: 1.0,
        },
        "ceiling-warmup",
    );
    for &size in &cfg.sizes {
        for &flows in &cfg.flows {
            eprintln!("==> testpmd {size}B {flows} flows");
            let p = Point {
                size,
                flows,
                rate: None,
                duration_s: cfg.duration_s,
            };
            let mut m = Measurement::default();
            for r in 0..cfg.runs {
                measure(
                    tools,
                    &a,
                    p,
                    &format!("ceiling-{size}-{flows}-r{r}"),
                    &mut m,
                );
            }
            m.finish();
            if cfg.latency {
                half_rate(
                    tools,
                    &a,
                    p,
                    &format!("ceiling-{size}-{flows}-half"),
                    &mut m,
                );
            }
            report.ceiling.push(CeilingResult {
                size,
                flows,
                testpmd: m,
            });
        }
    }
    tp.stop();
    Ok(())
}
