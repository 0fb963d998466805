//! `kxdp-bench`: runs named scenarios on the namespace lab with kxdp and
//! with the kernel doing the job (flannel-style), plus testpmd's AF_XDP
//! io-forward ceiling, all with the same generator and sink, and writes a
//! report.
//!
//! Both labs are up at once (different prefixes) and every measurement
//! run alternates kxdp, kernel, kxdp, kernel, ... so that whatever else
//! the machine is doing (colleagues compiling) hits both alike.

pub mod ceiling;
pub mod delivery;
pub mod lab;
pub mod plot;
pub mod policy;
pub mod progress;
pub mod report;
pub mod run;
pub mod scale;
pub mod scenarios;
pub mod tcp;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::pktgen::{GenResult, SinkResult};
use crate::stats::Spread;
use lab::Lab;
use run::{run_point, Capture, Point, Tools};
use scenarios::{Attach, Kind, Scenario};

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
    /// kxdp-dataplane, kxdp-control, kxdpctl (lab.sh's `KXDP_BIN_DIR`).
    pub bin_dir: PathBuf,
    pub gen_core: usize,
    pub fwd_core: usize,
    pub ceiling: bool,
    pub kernel_rps: bool,
    pub switch_rps: SwitchRps,
    pub latency: bool,
    /// `--offered`: rates (packets/s, ascending) at which every point is
    /// also run, both datapaths, `runs` runs each; empty: none.
    pub offered: Vec<u64>,
    pub command: String,
}

/// Where the switch namespace (bridge br0, the underlay) does its receive
/// work, in both labs alike (`--switch-rps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SwitchRps {
    // Not doc comments: clap would list them in --help, where the option's
    // own text explains both.
    // Not steered: the softirq of whichever CPU transmitted into it.
    None,
    // RPS to the forwarding core (the ext-nodeport receive livelock).
    Fwd,
}

/// The figures of one measurement run.
#[derive(Debug, Clone, Serialize, Default)]
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
    /// `--offered`: the point at each offered rate (absent without it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub offered: Vec<OfferedPoint>,
}

impl PointResult {
    /// Replaces one datapath's figures, flat out and at every offered
    /// rate, by the reason they do not measure what the point says.
    fn discard(&mut self, kernel: bool, why: &str) {
        let failed = Measurement {
            errors: vec![why.to_string()],
            ..Default::default()
        };
        let sides = std::iter::once((&mut self.kxdp, &mut self.kernel, &mut self.ratio)).chain(
            self.offered
                .iter_mut()
                .map(|o| (&mut o.kxdp, &mut o.kernel, &mut o.ratio)),
        );
        for (k, l, ratio) in sides {
            *if kernel { l } else { k } = failed.clone();
            *ratio = None;
        }
    }
}

/// One point with the generator capped at `offered_pps` (`--offered`).
#[derive(Debug, Clone, Serialize)]
pub struct OfferedPoint {
    pub offered_pps: u64,
    pub kxdp: Measurement,
    pub kernel: Measurement,
    /// kxdp / kernel, medians of delivered pps.
    pub ratio: Option<f64>,
}

/// Each datapath's best median delivered pps at one point, over the
/// flat-out runs and every offered rate, and the ratio of the two bests:
/// capacity against capacity, whatever either does when overloaded.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BestDelivered {
    pub scenario: String,
    pub size: usize,
    pub flows: u16,
    pub kxdp: Option<f64>,
    /// The offered rate of kxdp's best (None: flat out, or no figure).
    pub kxdp_at: Option<u64>,
    pub kernel: Option<f64>,
    /// The offered rate of the kernel's best (None: flat out, or no figure).
    pub kernel_at: Option<u64>,
    pub ratio: Option<f64>,
}

/// [`BestDelivered`] of every point of `r` that has an offered-load sweep.
pub fn best_delivered(r: &Report) -> Vec<BestDelivered> {
    // The highest median of (offered rate or None for flat out, median).
    fn best<'a>(
        flat: &'a Measurement,
        sweep: impl Iterator<Item = (u64, &'a Measurement)>,
    ) -> (Option<f64>, Option<u64>) {
        std::iter::once((None, flat))
            .chain(sweep.map(|(rate, m)| (Some(rate), m)))
            .filter_map(|(at, m)| m.median().map(|v| (v, at)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map_or((None, None), |(v, at)| (Some(v), at))
    }
    r.points
        .iter()
        .filter(|p| !p.offered.is_empty())
        .map(|p| {
            let (kxdp, kxdp_at) = best(&p.kxdp, p.offered.iter().map(|o| (o.offered_pps, &o.kxdp)));
            let (kernel, kernel_at) = best(
                &p.kernel,
                p.offered.iter().map(|o| (o.offered_pps, &o.kernel)),
            );
            BestDelivered {
                scenario: p.scenario.clone(),
                size: p.size,
                flows: p.flows,
                kxdp,
                kxdp_at,
                kernel,
                kernel_at,
                ratio: over(kxdp, kernel),
            }
        })
        .collect()
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
    /// `uptime` before and after the whole run.
    pub uptime_before: String,
    pub uptime_after: String,
    pub notes: Vec<String>,
    /// svc-scale: the table switches and the big/small ratios per point.
    pub scale_switches: Vec<scale::Switch>,
    pub scale: Vec<ScaleSummary>,
    pub scale_errors: Vec<String>,
    /// tcp-svc: one point per offload mode.
    pub tcp: Vec<tcp::TcpPoint>,
    /// One-hop scenarios: a frame of the entry node's uplink as tcpdump
    /// saw it on the switch port during the next-hop warm-up (the outer
    /// headers, which the sink's first-probe record does not show).
    pub underlay_frames: Vec<SinkSaw>,
    /// One-hop scenarios against the testpmd ceiling of the same run.
    pub hop_vs_ceiling: Vec<HopVsCeiling>,
    /// `--offered`: each point's best delivered rate per datapath.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub offered_best: Vec<BestDelivered>,
    /// The policy scenarios: with/without ratios, checks, switches.
    pub policy: policy::PolicyReport,
}

/// A one-hop scenario's point beside the AF_XDP ceiling at the same
/// frame size and flow count (medians of delivered pps).
#[derive(Debug, Clone, Serialize)]
pub struct HopVsCeiling {
    pub scenario: String,
    pub size: usize,
    pub flows: u16,
    pub kxdp: Option<f64>,
    pub kernel: Option<f64>,
    pub ceiling: Option<f64>,
    pub kxdp_over_kernel: Option<f64>,
    pub kxdp_over_ceiling: Option<f64>,
    pub kernel_over_ceiling: Option<f64>,
}

/// Every [`Kind::Hop`] point of `r` beside the ceiling point with the same
/// frame size and flows.
pub fn hop_vs_ceiling(r: &Report) -> Vec<HopVsCeiling> {
    r.points
        .iter()
        .filter(|p| scenarios::find(&p.scenario).is_some_and(|s| s.kind == Kind::Hop))
        .map(|p| {
            let ceiling = r
                .ceiling
                .iter()
                .find(|c| c.size == p.size && c.flows == p.flows)
                .and_then(|c| c.testpmd.median());
            HopVsCeiling {
                scenario: p.scenario.clone(),
                size: p.size,
                flows: p.flows,
                kxdp: p.kxdp.median(),
                kernel: p.kernel.median(),
                ceiling,
                kxdp_over_kernel: p.ratio,
                kxdp_over_ceiling: over(p.kxdp.median(), ceiling),
                kernel_over_ceiling: over(p.kernel.median(), ceiling),
            }
        })
        .collect()
}

/// svc-scale at one point: delivered pps with the big table over the small.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleSummary {
    pub size: usize,
    pub flows: u16,
    pub kxdp_big_over_small: Option<f64>,
    pub kernel_big_over_small: Option<f64>,
    pub kxdp_over_kernel_small: Option<f64>,
    pub kxdp_over_kernel_big: Option<f64>,
}

/// One run of `p` (flat out, or capped at `p.rate`): its figures, printed.
fn run_once(tools: &Tools, a: &Attach, p: Point, tag: &str) -> anyhow::Result<RunFigures> {
    let r = run_point(tools, a, p, tag).map(|(g, s)| RunFigures::of(&g, &s));
    match &r {
        Ok(f) => crate::say!(
            "    {tag}: {}sent {:.0} pps, delivered {:.0} pps, lost {:.2}%, p50 {:.0} us p99 {:.0} us",
            p.rate.map(|x| format!("at {x} pps: ")).unwrap_or_default(),
            f.gen_pps,
            f.delivered_pps,
            f.lost_pct,
            f.p50_us,
            f.p99_us
        ),
        Err(e) => crate::say!("    {tag}: error: {e:#}"),
    }
    r
}

/// One run of `p` into `m`'s runs (or its errors).
fn measure(tools: &Tools, a: &Attach, p: Point, tag: &str, m: &mut Measurement) {
    match run_once(tools, a, p, tag) {
        Ok(f) => m.runs.push(f),
        Err(e) => m.errors.push(format!("{e:#}")),
    }
}

/// `cfg.runs` runs of `p` alternating kxdp and kernel, raw files tagged
/// `<tag>-r<run>-<datapath>`; both measurements finished.
fn alternate(
    cfg: &BenchConfig,
    tools: &Tools,
    (ak, al): (&Attach, &Attach),
    p: Point,
    tag: &str,
) -> (Measurement, Measurement) {
    let mut mk = Measurement::default();
    let mut ml = Measurement::default();
    for r in 0..cfg.runs {
        measure(tools, ak, p, &format!("{tag}-r{r}-kxdp"), &mut mk);
        measure(tools, al, p, &format!("{tag}-r{r}-kernel"), &mut ml);
    }
    mk.finish();
    ml.finish();
    (mk, ml)
}

fn half_rate(tools: &Tools, a: &Attach, base: Point, tag: &str, m: &mut Measurement) {
    let Some(med) = m.median() else { return };
    let rate = (med / 2.0).max(1000.0) as u64;
    let p = Point {
        rate: Some(rate),
        duration_s: base.duration_s.min(2.0),
        ..base
    };
    match run_once(tools, a, p, tag) {
        Ok(f) => m.at_half_rate = Some((rate, f)),
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

fn uptime() -> String {
    lab::sh("uptime", &[])
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn git_info(root: &std::path::Path, bin_dir: &std::path::Path) -> String {
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
    let bin = bin_dir.join("kxdp-dataplane");
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
        "{} ({} modified tracked files in the work tree); kxdp-dataplane binary {} built {built}",
        rev.trim(),
        dirty,
        bin.display()
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
    let uptime_before = uptime();
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
        git: git_info(&cfg.root, &cfg.bin_dir),
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
        uptime_before,
        uptime_after: String::new(),
        notes: Vec::new(),
        scale_switches: Vec::new(),
        scale: Vec::new(),
        scale_errors: Vec::new(),
        tcp: Vec::new(),
        underlay_frames: Vec::new(),
        hop_vs_ceiling: Vec::new(),
        offered_best: Vec::new(),
        policy: Default::default(),
    };
    report.pinning.push(Pinning {
        process: "kxdp-pktgen gen and sink".into(),
        cores: cfg.gen_core.to_string(),
        how: format!("taskset -c {} inside `ip netns exec`", cfg.gen_core),
    });

    progress::start(total_points(cfg, &runnable));
    if !runnable.is_empty() {
        let fwd = cfg.fwd_core.to_string();
        let cores = format!("{fwd} {fwd}");
        crate::say!("==> lab {} (kxdp, KXDP_LAB_CORES=\"{cores}\")", cfg.prefix);
        let kx = Lab::up(
            &cfg.root,
            &cfg.prefix,
            false,
            &cores,
            &work,
            &cfg.bin_dir,
            &[],
        )?;
        let kprefix = format!("{}k", cfg.prefix);
        crate::say!("==> lab {kprefix} (kernel: KXDP_KERNEL_NODES=\"n1 n2\")");
        let kl = match Lab::up(&cfg.root, &kprefix, true, &cores, &work, &cfg.bin_dir, &[]) {
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
            crate::say!("==> testpmd ceiling: {e:#}");
            report
                .notes
                .push(format!("The testpmd ceiling could not be measured: {e:#}"));
        }
    }
    progress::finish();
    report.load_after = loadavg();
    report.uptime_after = uptime();
    report.hop_vs_ceiling = hop_vs_ceiling(&report);
    report.offered_best = best_delivered(&report);
    report::write(cfg, &report)?;
    Ok(report)
}

/// The points a run measures, for the progress bar: each scenario's (size,
/// flows) points (svc-scale: each flow count with the small and the big
/// table; tcp-svc: one per offload mode), and the ceiling's.
fn total_points(cfg: &BenchConfig, runnable: &[&Scenario]) -> u64 {
    let grid = cfg.sizes.len() * cfg.flows.len();
    let scenarios: usize = runnable
        .iter()
        .map(|s| match s.kind {
            Kind::Tcp => tcp::MODES.len(),
            Kind::SvcScale => 2 * cfg.flows.len(),
            _ => grid,
        })
        .sum();
    (scenarios + if cfg.ceiling { grid } else { 0 }) as u64
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
    let switch = cfg.switch_rps == SwitchRps::Fwd;
    let steered = Steered {
        gen_core: cfg.gen_core,
        fwd_core: cfg.fwd_core,
        kernel_rps: cfg.kernel_rps,
        switch_rps: cfg.switch_rps,
        kernel_nodes: kl.steer_rps(cfg.fwd_core, cfg.kernel_rps, false)?.len(),
        kernel_switch: kl.steer_rps(cfg.fwd_core, false, switch)?.len(),
        kxdp_switch: kx.steer_rps(cfg.fwd_core, false, switch)?.len(),
    };
    let (pinning, not_pinned) = steered.entries();
    report.pinning.extend(pinning);
    report.not_pinned.extend(not_pinned);
    report.not_pinned.push(format!(
        "AF_XDP copy-mode receive on a veth (kxdp's XDP program on the pod veth and the copy \
         into its UMEM) runs in the softirq of the CPU that transmitted the frame: for the first \
         hop that is the generator's sendto() on core {}{}; RPS does not apply to it (XDP runs \
         before RPS). Threaded NAPI could move it, but a kthread sharing a core with a \
         busy-polling worker made every AF_XDP forwarder slower in a trial, so it is not used.",
        cfg.gen_core,
        if switch {
            format!(
                " (ext-nodeport: the switch's softirq, on core {} by --switch-rps fwd)",
                cfg.fwd_core
            )
        } else {
            String::new()
        }
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
            crate::say!(
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
        if s.kind == Kind::Tcp {
            run_tcp(cfg, tools, kx, kl, &ak, &al, report);
            continue;
        }
        if s.kind == Kind::Hop {
            if let Err(e) = prepare_hop(tools, s, kx, kl, report) {
                crate::say!("==> {}: skipped: {e:#}", s.name);
                report
                    .notes
                    .push(format!("{} was not measured: {e:#}", s.name));
                continue;
            }
        }
        if s.policy {
            let base = s.name.trim_end_matches("-policy");
            policy::run_policy(cfg, tools, (kx, &ak), (kl, &al), s, base, report);
            continue;
        }
        crate::say!("==> {}: warm-up", s.name);
        warm_up(tools, s.name, &ak, &al, report);
        if s.kind == Kind::SvcScale {
            run_svc_scale(cfg, tools, (kx, &ak), (kl, &al), report);
            continue;
        }
        for &size in &cfg.sizes {
            for &flows in &cfg.flows {
                let p = point(
                    cfg,
                    tools,
                    (kx, &ak),
                    (kl, &al),
                    (s.name, s.name, s.services),
                    size,
                    flows,
                );
                report.points.push(p);
            }
        }
    }
    if kube_proxy_loaded {
        kl.unload_kube_proxy();
    }
    Ok(())
}

/// What `run_labs` steered with RPS, for the report's Cores table.
struct Steered {
    gen_core: usize,
    fwd_core: usize,
    kernel_rps: bool,
    switch_rps: SwitchRps,
    /// Interfaces steered: of the kernel lab's node namespaces, of its
    /// switch namespace, of the kxdp lab's switch namespace.
    kernel_nodes: usize,
    kernel_switch: usize,
    kxdp_switch: usize,
}

impl Steered {
    /// The Cores table's entries: (pinned, not pinned).
    fn entries(&self) -> (Vec<Pinning>, Vec<String>) {
        let mask = 1u64 << self.fwd_core;
        let mut pinned = Vec::new();
        let mut not_pinned = Vec::new();
        if self.kernel_rps {
            pinned.push(Pinning {
                process: "kernel lab: forwarding (softirq) of n1 and n2".into(),
                cores: self.fwd_core.to_string(),
                how: format!(
                    "RPS: rps_cpus = {mask:x} on rx-0 of all {} interfaces of the node namespaces",
                    self.kernel_nodes
                ),
            });
        } else {
            not_pinned.push(format!(
                "Kernel forwarding was not steered (--no-kernel-rps): it runs in the generator's \
                 sendto() softirq on core {}.",
                self.gen_core
            ));
        }
        match self.switch_rps {
            SwitchRps::Fwd => pinned.push(Pinning {
                process: "the switch (bridge br0, the underlay) of both labs: its softirq".into(),
                cores: self.fwd_core.to_string(),
                how: format!(
                    "--switch-rps fwd: RPS rps_cpus = {mask:x} on rx-0 of all interfaces of the \
                     switch namespace ({} in the kxdp lab, {} in the kernel lab); the outside \
                     client's frames are switched on the forwarding core, which livelocks kxdp \
                     in ext-nodeport (perf/results/2026-11-26-forwarding-core-profiles.md)",
                    self.kxdp_switch, self.kernel_switch
                ),
            }),
            SwitchRps::None => not_pinned.push(format!(
                "The switch (bridge br0, the underlay) is not steered in either lab \
                 (--switch-rps none): its receive work runs in the softirq of the CPU that \
                 transmitted into it, core {} (the generator's) for the outside client's frames \
                 and the core a node forwarded on for the frames it forwards; the same in both \
                 labs.",
                self.gen_core
            )),
        }
        (pinned, not_pinned)
    }
}

/// Before a [`Kind::Hop`] scenario: the warm-up of the same frames to
/// their real destination (the sink on the endpoint pod, or on the outside
/// world's server for egress), which makes the entry node resolve its next
/// hop (n2's VTEP, or the router, through the kernel's neighbour table on
/// both datapaths), while tcpdump on the switch port records one of the
/// entry node's frames; then that neighbour entry is made permanent,
/// because the hop's sink takes the node's ARP probes and a dynamic entry
/// would fail during the runs.
fn prepare_hop(
    tools: &Tools,
    s: &Scenario,
    kx: &Lab,
    kl: &Lab,
    report: &mut Report,
) -> anyhow::Result<()> {
    let prep = scenarios::hop_prep(s).context("no next-hop warm-up walk")?;
    let rk = (prep.resolve)(kx)?;
    let rl = (prep.resolve)(kl)?;
    if let Some(p) = scenarios::sink_pod(kl, &rl) {
        kl.pin_neighbour(p)?;
    }
    for (lab, a) in [(kx, &rk), (kl, &rl)] {
        if a.sink_ns == lab.www_ns() {
            lab.pin_world_neighbour()?;
        }
        if prep.resolve_next_hop {
            lab.resolve_uplink_neighbour(scenarios::ENTRY_NODE, &(prep.next_hop)(lab)?)?;
        }
    }
    let node = scenarios::ENTRY_NODE;
    let mut caps = Vec::new();
    for (lab, dp) in [(kx, "kxdp"), (kl, "kernel")] {
        let tag = format!("{}-{dp}-underlay", s.name);
        match Capture::start(&lab.switch_ns(), node, prep.capture, 10, &tools.work, &tag) {
            Ok(c) => caps.push((dp, lab, c)),
            Err(e) => report
                .notes
                .push(format!("{}: tcpdump on {dp}'s switch port: {e:#}", s.name)),
        }
    }
    let label = format!("{} (next-hop warm-up, sink on {})", s.name, rk.sink_ns);
    crate::say!("==> {label}");
    warm_up(tools, &label, &rk, &rl, report);
    for (dp, lab, c) in caps {
        let frame = c.finish(Duration::from_secs(12));
        crate::say!("    {dp} uplink frame on the switch port: {frame}");
        report.underlay_frames.push(SinkSaw {
            scenario: s.name.into(),
            datapath: dp.into(),
            sent: format!("tcpdump -i {node} in {}", lab.switch_ns()),
            received: frame,
        });
    }
    for (lab, dp) in [(kx, "kxdp"), (kl, "kernel")] {
        let next_hop = (prep.next_hop)(lab)?;
        let done = lab
            .pin_uplink_neighbour(node, &next_hop)
            .with_context(|| format!("{dp}: {node}'s next hop {next_hop}"))?;
        crate::say!("    {dp}: {done}");
        report.notes.push(format!(
            "{} ({dp}): before the sink attached to the switch port, {done} (the sink takes \
             {node}'s ARP probes too).",
            s.name
        ));
    }
    Ok(())
}

/// A 1 s run at 10 kpps on each datapath (ARP, next hops); records what
/// the sink saw of the first probe.
fn warm_up(tools: &Tools, name: &str, ak: &Attach, al: &Attach, report: &mut Report) {
    let warm = Point {
        size: 64,
        flows: 1,
        rate: Some(10_000),
        duration_s: 1.0,
    };
    for (a, dp) in [(ak, "kxdp"), (al, "kernel")] {
        let slug: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        match run_point(tools, a, warm, &format!("{slug}-{dp}-warmup")) {
            Ok((_, sink)) => {
                let received = sink
                    .first_probe
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "no probe".into());
                crate::say!("    warm-up {dp}: sink saw {received}");
                report.sink_saw.push(SinkSaw {
                    scenario: name.into(),
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
            Err(e) => crate::say!("    warm-up {dp}: {e:#}"),
        }
    }
}

/// One point: `--runs` flat-out runs alternating kxdp and kernel, the
/// conntrack count (`services`), the half-rate latency runs, then `--runs`
/// runs alternating at each `--offered` rate.
/// `names`: (scenario as reported, tag prefix of the raw files, services).
fn point(
    cfg: &BenchConfig,
    tools: &Tools,
    (kx, ak): (&Lab, &Attach),
    (kl, al): (&Lab, &Attach),
    (name, tag, services): (&str, &str, bool),
    size: usize,
    flows: u16,
) -> PointResult {
    crate::say!("==> {name} {size}B {flows} flows");
    let p = Point {
        size,
        flows,
        rate: None,
        duration_s: cfg.duration_s,
    };
    let (mut mk, mut ml) = alternate(cfg, tools, (ak, al), p, &format!("{tag}-{size}-{flows}"));
    let conntrack = services.then(|| {
        let node = scenarios::ENTRY_NODE;
        let mut c = ConntrackCounts {
            node: node.into(),
            ..Default::default()
        };
        for (lab, a, slot) in [(kx, ak, &mut c.kxdp), (kl, al, &mut c.kernel)] {
            match lab.conntrack_entries(node, &a.src_ip, &a.dst_ip, a.dst_port) {
                Ok(n) => *slot = Some(n),
                Err(e) => c.errors.push(format!("{e:#}")),
            }
        }
        crate::say!(
            "    conntrack on {node}: kxdp {:?}, kernel {:?} entries",
            c.kxdp,
            c.kernel
        );
        c
    });
    if cfg.latency {
        let base = format!("{tag}-{size}-{flows}-half");
        half_rate(tools, ak, p, &format!("{base}-kxdp"), &mut mk);
        half_rate(tools, al, p, &format!("{base}-kernel"), &mut ml);
    }
    let offered = cfg
        .offered
        .iter()
        .map(|&rate| {
            crate::say!("==> {name} {size}B {flows} flows, offered {rate} pps");
            let at = Point {
                rate: Some(rate),
                ..p
            };
            let (kxdp, kernel) = alternate(
                cfg,
                tools,
                (ak, al),
                at,
                &format!("{tag}-{size}-{flows}-at{rate}"),
            );
            OfferedPoint {
                offered_pps: rate,
                ratio: over(kxdp.median(), kernel.median()),
                kxdp,
                kernel,
            }
        })
        .collect();
    progress::point_done(&format!("{name} {size}B {flows} flows"));
    PointResult {
        scenario: name.into(),
        size,
        flows,
        ratio: over(mk.median(), ml.median()),
        kxdp: mk,
        kernel: ml,
        conntrack,
        offered,
    }
}

fn over(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// svc-scale: every point with the small table on both datapaths, then
/// the big table loaded into both (kxdpctl apply; nft -f), every point
/// again, then the small table back. 64 B frames (the smallest of --sizes).
fn run_svc_scale(
    cfg: &BenchConfig,
    tools: &Tools,
    (kx, ak): (&Lab, &Attach),
    (kl, al): (&Lab, &Attach),
    report: &mut Report,
) {
    let size = cfg.sizes.iter().copied().min().unwrap_or(64);
    let services = scale::BASE_SERVICES + scale::EXTRA_SERVICES;
    let endpoints = scale::BASE_ENDPOINTS + scale::EXTRA_SERVICES * scale::ENDPOINTS_PER_SERVICE;
    let small_name = format!("svc-scale, {} services", scale::BASE_SERVICES);
    let big_name = format!("svc-scale, {services} services / {endpoints} endpoints");
    let mut small = Vec::new();
    for &flows in &cfg.flows {
        small.push(point(
            cfg,
            tools,
            (kx, ak),
            (kl, al),
            (&small_name, "svc-scale-small", true),
            size,
            flows,
        ));
    }
    let yaml_path = tools.work.join("svc-scale-cluster.yaml");
    let nft_path = tools.work.join("svc-scale.nft");
    let original = kx.cluster_file();
    let prepared = (|| -> anyhow::Result<()> {
        let base =
            std::fs::read_to_string(original.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?)?;
        std::fs::write(
            &yaml_path,
            scale::big_cluster_yaml(&base, scale::EXTRA_SERVICES)?,
        )?;
        std::fs::write(&nft_path, scale::big_nft(scale::EXTRA_SERVICES))?;
        Ok(())
    })();
    let mut big_kx = prepared.as_ref().map(|_| ()).map_err(|e| format!("{e:#}"));
    let mut big_kl = big_kx.clone();
    if big_kx.is_ok() {
        crate::say!(
            "==> svc-scale: kxdp: kxdpctl apply ({services} services / {endpoints} endpoints)"
        );
        match scale::kxdp_apply(kx, &yaml_path, "small -> big") {
            Ok(sw) => {
                crate::say!("    {:.2} s: {}", sw.seconds, sw.detail);
                report.scale_switches.push(sw);
            }
            Err(e) => big_kx = Err(format!("kxdp: switching to the big table: {e:#}")),
        }
        crate::say!("==> svc-scale: kernel: nft -f (the same services as kube-proxy rules)");
        match scale::kernel_load(kl, &nft_path) {
            Ok(sw) => {
                crate::say!("    {:.1} s: {}", sw.seconds, sw.detail);
                report.scale_switches.push(sw);
            }
            Err(e) => big_kl = Err(format!("kernel: loading the big rule set: {e:#}")),
        }
    }
    for e in [&big_kx, &big_kl]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
    {
        crate::say!("==> svc-scale: {e}");
        report.scale_errors.push(e.clone());
    }
    let mut big = Vec::new();
    if big_kx.is_ok() || big_kl.is_ok() {
        warm_up(tools, "svc-scale-big", ak, al, report);
        for &flows in &cfg.flows {
            let mut p = point(
                cfg,
                tools,
                (kx, ak),
                (kl, al),
                (&big_name, "svc-scale-big", true),
                size,
                flows,
            );
            // A datapath that did not get the big table measured the small one.
            if let Err(e) = &big_kx {
                p.discard(false, e);
            }
            if let Err(e) = &big_kl {
                p.discard(true, e);
            }
            big.push(p);
        }
    }
    // Back to the small table, whatever happened.
    if let Ok(file) = &original {
        crate::say!("==> svc-scale: back to the small table");
        match scale::kxdp_apply(kx, file, "big -> small") {
            Ok(sw) => report.scale_switches.push(sw),
            Err(e) => report
                .scale_errors
                .push(format!("kxdp: back to the small table: {e:#}")),
        }
    }
    let t0 = std::time::Instant::now();
    match kl.load_kube_proxy() {
        Ok(_) => report.scale_switches.push(scale::Switch {
            datapath: "kernel".into(),
            what: "big -> small".into(),
            seconds: t0.elapsed().as_secs_f64(),
            detail: "nft delete table ip kube-proxy, nft -f perf/kernel/kube-proxy.nft, per node"
                .into(),
        }),
        Err(e) => report
            .scale_errors
            .push(format!("kernel: back to the small rule set: {e:#}")),
    }
    let _ = std::fs::remove_file(&yaml_path);
    let _ = std::fs::remove_file(&nft_path);
    for s in &small {
        let b = big.iter().find(|b| b.flows == s.flows);
        report.scale.push(ScaleSummary {
            size,
            flows: s.flows,
            kxdp_big_over_small: over(b.and_then(|b| b.kxdp.median()), s.kxdp.median()),
            kernel_big_over_small: over(b.and_then(|b| b.kernel.median()), s.kernel.median()),
            kxdp_over_kernel_small: s.ratio,
            kxdp_over_kernel_big: b.and_then(|b| b.ratio),
        });
    }
    report.points.extend(small);
    report.points.extend(big);
}

/// tcp-svc: for each offload mode, set it on both pods' eth0 in both labs,
/// then `--runs` iperf3 runs alternating kxdp and kernel; the lab default
/// afterwards.
fn run_tcp(
    cfg: &BenchConfig,
    tools: &Tools,
    kx: &Lab,
    kl: &Lab,
    ak: &Attach,
    al: &Attach,
    report: &mut Report,
) {
    let dur = cfg.duration_s.ceil().max(1.0) as u64;
    report.pinning.push(Pinning {
        process: "tcp-svc: iperf3 -c (n1/p1) and iperf3 -s -1 (n2/p1)".into(),
        cores: cfg.gen_core.to_string(),
        how: format!("taskset -c {} inside `ip netns exec`", cfg.gen_core),
    });
    for mode in tcp::MODES {
        crate::say!("==> tcp-svc: {}", mode.name);
        let mut mk = tcp::TcpMeasurement::default();
        let mut ml = tcp::TcpMeasurement::default();
        for (lab, a, m) in [(kx, ak, &mut mk), (kl, al, &mut ml)] {
            for ns in [&a.gen_ns, &a.sink_ns] {
                match lab.set_offloads(ns, "eth0", mode.features) {
                    Ok(st) => {
                        crate::say!("    {ns} eth0: {st}");
                        m.offloads.push(format!("{ns} eth0: {st}"));
                    }
                    Err(e) => m.errors.push(format!("ethtool in {ns}: {e:#}")),
                }
            }
        }
        let slug: String = mode
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        for r in 0..cfg.runs {
            for (a, m, dp) in [(ak, &mut mk, "kxdp"), (al, &mut ml, "kernel")] {
                let tag = format!("tcp-svc-{slug}-r{r}-{dp}");
                match tcp::iperf_run(a, cfg.gen_core, dur, &tools.work, &tag) {
                    Ok(run) => {
                        crate::say!(
                            "    {tag}: {:.2} Gbit/s, {} retransmits",
                            run.gbps,
                            run.retransmits
                        );
                        m.runs.push(run);
                    }
                    Err(e) => {
                        crate::say!("    {tag}: error: {e:#}");
                        m.errors.push(format!("run {r}: {e:#}"));
                    }
                }
            }
        }
        mk.finish();
        ml.finish();
        let ratio = over(mk.gbps.map(|s| s.median), ml.gbps.map(|s| s.median));
        progress::point_done(&format!("tcp-svc {}", mode.name));
        report.tcp.push(tcp::TcpPoint {
            mode: mode.name.into(),
            what: mode.what.into(),
            kxdp: mk,
            kernel: ml,
            ratio,
        });
    }
    for (lab, a) in [(kx, ak), (kl, al)] {
        for ns in [&a.gen_ns, &a.sink_ns] {
            if let Err(e) = lab.set_offloads(ns, "eth0", tcp::LAB_DEFAULT) {
                report
                    .notes
                    .push(format!("tcp-svc: restoring {ns} eth0 offloads: {e:#}"));
            }
        }
    }
}

fn run_ceiling(cfg: &BenchConfig, tools: &Tools, report: &mut Report) -> anyhow::Result<()> {
    crate::say!("==> testpmd AF_XDP io-forward ceiling");
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
            crate::say!("==> testpmd {size}B {flows} flows");
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
            progress::point_done(&format!("testpmd {size}B {flows} flows"));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(pps: &[f64]) -> Measurement {
        Measurement {
            delivered_pps: Spread::of(pps),
            ..Default::default()
        }
    }

    fn report() -> Report {
        Report {
            date: "d".into(),
            command: String::new(),
            host: String::new(),
            git: String::new(),
            runs: 3,
            duration_s: 3.0,
            walks: Vec::new(),
            attach: Vec::new(),
            pinning: Vec::new(),
            not_pinned: Vec::new(),
            points: Vec::new(),
            ceiling: Vec::new(),
            ceiling_command: None,
            pending: Vec::new(),
            sink_saw: Vec::new(),
            kernel_services: Vec::new(),
            load_before: String::new(),
            load_after: String::new(),
            uptime_before: String::new(),
            uptime_after: String::new(),
            notes: Vec::new(),
            scale_switches: Vec::new(),
            scale: Vec::new(),
            scale_errors: Vec::new(),
            tcp: Vec::new(),
            underlay_frames: Vec::new(),
            hop_vs_ceiling: Vec::new(),
            offered_best: Vec::new(),
            policy: Default::default(),
        }
    }

    fn point(scenario: &str, size: usize, flows: u16, kxdp: f64, kernel: f64) -> PointResult {
        PointResult {
            scenario: scenario.into(),
            size,
            flows,
            kxdp: measured(&[kxdp]),
            kernel: measured(&[kernel]),
            ratio: Some(kxdp / kernel),
            conntrack: None,
            offered: Vec::new(),
        }
    }

    #[test]
    fn one_hop_points_sit_beside_the_ceiling_of_the_same_point() {
        let mut r = report();
        r.points.push(point("pod-svc", 64, 1, 300e3, 100e3));
        r.points.push(point("pod-svc-hop", 64, 1, 330e3, 110e3));
        r.points
            .push(point("pod-svc-hop", 1400, 1000, 150e3, 100e3));
        r.ceiling.push(CeilingResult {
            size: 64,
            flows: 1,
            testpmd: measured(&[300e3, 200e3, 400e3]),
        });
        let h = hop_vs_ceiling(&r);
        assert_eq!(h.len(), 2, "only pod-svc-hop points");
        assert_eq!((h[0].size, h[0].flows), (64, 1));
        assert!((h[0].kxdp_over_ceiling.unwrap() - 1.1).abs() < 1e-9);
        assert!((h[0].kernel_over_ceiling.unwrap() - 110.0 / 300.0).abs() < 1e-9);
        assert!((h[0].kxdp_over_kernel.unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(h[1].ceiling, None, "no ceiling at 1400 B 1000 flows");
        assert_eq!(h[1].kxdp_over_ceiling, None);
        r.hop_vs_ceiling = h;
        let md = report::hop_section(&r);
        assert!(md.contains(
            "| pod-svc-hop | 64 B | 1 | 330 k | 110 k | 3.00x | 300 k | **1.10x** | 0.37x |"
        ));
        assert!(md.contains(
            "- pod-svc-hop 64 B 1 flows: kxdp one hop 330 k pps vs AF_XDP ceiling 300 k pps: \
             1.10x (at or above the ceiling)"
        ));
        assert!(md.contains("| pod-svc-hop | 1400 B | 1000 | 150 k | 100 k | 1.50x | – | – | – |"));
        assert!(report::hop_section(&report()).is_empty());
    }

    /// Runs of a datapath that all got `sent` pps offered and delivered
    /// `delivered`, finished.
    fn ran(sent: f64, delivered: &[f64]) -> Measurement {
        let mut m = Measurement {
            runs: delivered
                .iter()
                .map(|&d| RunFigures {
                    gen_pps: sent,
                    delivered_pps: d,
                    lost_pct: (sent - d) * 100.0 / sent,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        m.finish();
        m
    }

    fn at(rate: u64, kxdp: Measurement, kernel: Measurement) -> OfferedPoint {
        OfferedPoint {
            offered_pps: rate,
            ratio: over(kxdp.median(), kernel.median()),
            kxdp,
            kernel,
        }
    }

    /// ext-nodeport as in 2026-11-26T0436Z: the kernel collapses flat out,
    /// its best is at 200 k offered.
    fn swept() -> PointResult {
        let kxdp = ran(990e3, &[280e3, 275e3, 292e3]);
        let kernel = ran(990e3, &[40e3, 38e3, 41e3]);
        PointResult {
            scenario: "ext-nodeport".into(),
            size: 64,
            flows: 1,
            ratio: over(kxdp.median(), kernel.median()),
            kxdp,
            kernel,
            conntrack: None,
            offered: vec![
                at(
                    100_000,
                    ran(100e3, &[100e3, 100e3, 99e3]),
                    ran(100e3, &[100e3, 99e3, 100e3]),
                ),
                at(
                    200_000,
                    ran(200e3, &[200e3, 199e3, 200e3]),
                    ran(200e3, &[120e3, 118e3, 121e3]),
                ),
            ],
        }
    }

    #[test]
    fn the_sweep_compares_best_delivered_not_the_collapse() {
        let mut r = report();
        r.points.push(point("pod-svc", 64, 1, 300e3, 100e3));
        r.points.push(swept());
        let mut failed = point("pod-svc-hop", 1400, 1000, 600e3, 300e3);
        failed.offered.push(at(
            100_000,
            ran(100e3, &[100e3]),
            Measurement {
                errors: vec!["boom".into()],
                ..Default::default()
            },
        ));
        failed.kernel = Measurement::default();
        r.points.push(failed);
        let best = best_delivered(&r);
        assert_eq!(best.len(), 2, "only the swept points: {best:?}");
        let b = &best[0];
        assert_eq!((b.kxdp, b.kxdp_at), (Some(280e3), None), "kxdp: flat out");
        assert_eq!(
            (b.kernel, b.kernel_at),
            (Some(120e3), Some(200_000)),
            "kernel: at 200 k"
        );
        assert!((b.ratio.unwrap() - 280.0 / 120.0).abs() < 1e-9);
        assert_eq!((best[1].kxdp, best[1].kxdp_at), (Some(600e3), None));
        assert_eq!((best[1].kernel, best[1].ratio), (None, None));
        r.offered_best = best;

        let md = report::offered_section(&r);
        assert!(md.starts_with("## Offered load sweep\n"));
        assert!(md.contains(
            "the capacity comparison that does not depend on either datapath's overload behaviour"
        ));
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(
            rows[1..],
            [
                "| ext-nodeport | 64 B | 1 | 100 k | 100 k | 100 k [99 k – 100 k] | 0.0% | \
                 100 k | 100 k [99 k – 100 k] | 0.0% | 1.00x |",
                "| ext-nodeport | 64 B | 1 | 200 k | 200 k | 200 k [199 k – 200 k] | 0.0% | \
                 200 k | 120 k [118 k – 121 k] | 40.0% | 1.67x |",
                "| ext-nodeport | 64 B | 1 | flat out | 990 k | 280 k [275 k – 292 k] | 71.7% | \
                 990 k | 40 k [38 k – 41 k] | 96.0% | 7.00x |",
                "| pod-svc-hop | 1400 B | 1000 | 100 k | 100 k | 100 k [100 k – 100 k] | 0.0% | \
                 – | failed | – | – |",
                "| pod-svc-hop | 1400 B | 1000 | flat out | – | 600 k [600 k – 600 k] | – | \
                 – | – | – | 2.00x |",
            ]
        );
        assert!(md.contains(
            "- ext-nodeport 64 B 1 flows: best delivered, kxdp 280 k (flat out) / \
             kernel 120 k (offered 200 k): **2.33x**\n"
        ));
        assert!(md.contains(
            "- pod-svc-hop 1400 B 1000 flows: best delivered, kxdp 600 k (flat out) / kernel –: –\n"
        ));
        assert!(!md.contains("pod-svc |"), "no sweep, no rows");
        assert_eq!(
            report::errors(&r),
            ["pod-svc-hop 1400B 1000 flows at 100000 pps offered kernel: boom"]
        );
    }

    #[test]
    fn without_a_sweep_nothing_changes() {
        let mut r = report();
        r.points.push(point("ext-nodeport", 64, 1, 280e3, 40e3));
        assert!(best_delivered(&r).is_empty());
        assert!(report::offered_section(&r).is_empty());
        let json = serde_json::to_value(&r).unwrap();
        assert!(json.get("offered_best").is_none());
        assert!(json["points"][0].get("offered").is_none());
        assert!(json["points"][0].get("ratio").is_some());
    }

    #[test]
    fn discarding_a_datapath_takes_its_sweep_too() {
        let mut p = swept();
        p.discard(true, "kernel: no big table");
        assert_eq!(p.ratio, None);
        assert_eq!(p.kernel.errors, ["kernel: no big table"]);
        assert_eq!(p.kxdp.median(), Some(280e3), "kxdp kept");
        for o in &p.offered {
            assert_eq!((o.ratio, o.kernel.median()), (None, None));
            assert_eq!(o.kernel.errors, ["kernel: no big table"]);
            assert!(o.kxdp.median().is_some());
        }
    }

    fn steered(kernel_rps: bool, switch_rps: SwitchRps) -> Steered {
        let on = switch_rps == SwitchRps::Fwd;
        Steered {
            gen_core: 0,
            fwd_core: 1,
            kernel_rps,
            switch_rps,
            kernel_nodes: if kernel_rps { 8 } else { 0 },
            kernel_switch: if on { 6 } else { 0 },
            kxdp_switch: if on { 6 } else { 0 },
        }
    }

    #[test]
    fn the_cores_table_says_where_the_switch_runs() {
        let (pinned, not_pinned) = steered(true, SwitchRps::None).entries();
        assert_eq!(pinned.len(), 1, "only the kernel nodes: {pinned:?}");
        assert_eq!(
            pinned[0].process,
            "kernel lab: forwarding (softirq) of n1 and n2"
        );
        assert_eq!(
            pinned[0].how,
            "RPS: rps_cpus = 2 on rx-0 of all 8 interfaces of the node namespaces"
        );
        assert_eq!(not_pinned.len(), 1);
        assert!(not_pinned[0].contains("not steered in either lab (--switch-rps none)"));
        assert!(not_pinned[0].contains("core 0 (the generator's) for the outside client's"));
        assert!(not_pinned[0].contains("the same in both labs"));

        let (pinned, not_pinned) = steered(true, SwitchRps::Fwd).entries();
        assert_eq!(pinned.len(), 2);
        assert_eq!((pinned[1].cores.as_str(), not_pinned.len()), ("1", 0));
        assert!(pinned[1].how.contains("--switch-rps fwd: RPS rps_cpus = 2"));
        assert!(pinned[1]
            .how
            .contains("(6 in the kxdp lab, 6 in the kernel lab)"));

        let (pinned, not_pinned) = steered(false, SwitchRps::Fwd).entries();
        assert_eq!(pinned.len(), 1, "the switch only: {pinned:?}");
        assert!(pinned[0].process.starts_with("the switch"));
        assert!(not_pinned[0].starts_with("Kernel forwarding was not steered (--no-kernel-rps)"));
    }
}
