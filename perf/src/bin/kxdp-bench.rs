//! kxdp-bench: runs named scenarios on the namespace lab, kxdp against the
//! kernel datapath (and testpmd's AF_XDP ceiling), and writes a report.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use kxdp_perf::bench::{delivery, plot, report, run_bench, scenarios, BenchConfig, SwitchRps};

#[derive(Parser)]
#[command(
    name = "kxdp-bench",
    about = "kxdp vs kernel datapath benchmark harness"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

// Parsed once; the size of `Run` does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios and write report.md, report.json and delivered.png.
    Run {
        /// Comma-separated scenario names (see `kxdp-bench list`).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "pod-pod-local,pod-pod-remote,pod-svc,pod-svc-hop,ext-nodeport,svc-scale,tcp-svc"
        )]
        scenarios: Vec<String>,
        /// Ethernet frame sizes in bytes, comma-separated: each is a point.
        #[arg(long, value_delimiter = ',', default_value = "64,1400")]
        sizes: Vec<usize>,
        /// Flow counts (distinct source ports), comma-separated: each is a point.
        #[arg(long, value_delimiter = ',', default_value = "1,1000")]
        flows: Vec<u16>,
        /// Runs per point and datapath (alternating kxdp and kernel); the
        /// report gives their median.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Seconds per run (at most 60).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Results folder (default perf/results/<UTC date-time>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Repository root (scripts/lab.sh); default: found from here.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Lab name prefix (the kernel lab gets "<prefix>k", testpmd "<prefix>c").
        #[arg(long, default_value = "kxbench")]
        prefix: String,
        /// Core of the generator and the sink.
        #[arg(long, default_value_t = 0)]
        gen_core: usize,
        /// Core of all forwarding (both nodes, testpmd, kernel via RPS).
        #[arg(long, default_value_t = 1)]
        fwd_core: usize,
        /// Skip the testpmd ceiling.
        #[arg(long)]
        no_ceiling: bool,
        /// Do not steer the kernel's forwarding to --fwd-core with RPS.
        #[arg(long)]
        no_kernel_rps: bool,
        /// Where the switch (the underlay network) does its receive work:
        /// `none` steers it in neither lab, so it runs in the softirq of the
        /// CPU that transmitted into it; `fwd` steers it to --fwd-core with
        /// RPS in both labs, which reproduces the ext-nodeport receive
        /// livelock of perf/results/2026-11-26-forwarding-core-profiles.md.
        #[arg(long, value_enum, default_value = "none")]
        switch_rps: SwitchRps,
        /// Skip the latency runs at half the maximum rate.
        #[arg(long)]
        no_latency: bool,
        /// Also run every point at each of these offered rates (packets/s,
        /// comma-separated, e.g. 100000,200000): both datapaths, --runs runs
        /// each, the generator capped at the rate. The report adds an
        /// "Offered load sweep" section with each datapath's best delivered rate.
        #[arg(long, value_name = "PPS", value_delimiter = ',', value_parser = positive_pps)]
        offered: Vec<u64>,
        /// Where kxdp-dataplane, kxdp-control and kxdpctl are (passed to
        /// scripts/lab.sh as KXDP_BIN_DIR). Default: $KXDP_BIN_DIR, else
        /// the directory of this kxdp-bench binary.
        #[arg(long, env = "KXDP_BIN_DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// How long one changed network policy takes to reach a node's
    /// workers: kxdp-control's ApplyCluster end to end, then the
    /// dataplane's Update alone (own lab, 2 workers per node; about 5
    /// minutes). Writes JSON to --out.
    PolicyDelivery {
        /// Changes per measurement, alternating (at least 100 for a p99).
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// Results file (default perf/results/policy-delivery-<UTC date-time>.json).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Repository root (scripts/lab.sh); default: found from here.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Lab name prefix.
        #[arg(long, default_value = "kxpold")]
        prefix: String,
        /// The two workers' cores on each node (KXDP_LAB_CORES entry).
        #[arg(long, default_value = "0,1")]
        cores: String,
        /// Where kxdp-dataplane, kxdp-control and kxdpctl are (as for `run`).
        #[arg(long, env = "KXDP_BIN_DIR")]
        bin_dir: Option<PathBuf>,
    },
    /// List the scenarios.
    List,
    /// Redraw DIR/delivered.png from DIR/report.json (a past run).
    Plot {
        /// A results folder, e.g. perf/results/2026-11-26T0515Z.
        dir: PathBuf,
    },
}

/// An `--offered` rate: a whole, positive number of packets/s.
fn positive_pps(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("an offered rate must be positive (packets/s)".into()),
        Ok(v) => Ok(v),
        Err(_) => Err("not a whole number of packets/s (e.g. 100000)".into()),
    }
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

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Plot { dir } => {
            let json = dir.join("report.json");
            let text = std::fs::read_to_string(&json)
                .with_context(|| format!("reading {}", json.display()))?;
            let data = plot::PlotData::from_json(&serde_json::from_str(&text)?)
                .with_context(|| format!("{}", json.display()))?;
            let png = dir.join("delivered.png");
            plot::draw(&data, &png)?;
            println!("{}", png.display());
            Ok(())
        }
        Cmd::PolicyDelivery {
            changes,
            out,
            root,
            prefix,
            cores,
            bin_dir,
        } => {
            if !(2..=10_000).contains(&changes) {
                bail!("--changes must be 2..=10000");
            }
            let root = find_root(root)?;
            let out = match out {
                Some(o) => o,
                None => {
                    let stamp = kxdp_perf::bench::lab::sh("date", &["-u", "+%Y-%m-%dT%H%MZ"])?;
                    root.join("perf/results")
                        .join(format!("policy-delivery-{}.json", stamp.trim()))
                }
            };
            let exe_dir = std::env::current_exe()?
                .parent()
                .context("no directory of kxdp-bench")?
                .to_path_buf();
            let bin_dir = std::fs::canonicalize(bin_dir.unwrap_or(exe_dir))?;
            let cfg = delivery::DeliveryConfig {
                root,
                bin_dir,
                prefix,
                out,
                changes,
                cores,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let r = delivery::run_delivery(&cfg)?;
            println!("{}", serde_json::to_string_pretty(&r.timings)?);
            Ok(())
        }
        Cmd::List => {
            for s in scenarios::SCENARIOS {
                let state = if s.attach.is_some() {
                    "available"
                } else {
                    "not yet available"
                };
                println!("{:<16} {state:<18} {}", s.name, s.walk);
            }
            Ok(())
        }
        Cmd::Run {
            scenarios: names,
            sizes,
            flows,
            runs,
            duration,
            out,
            root,
            prefix,
            gen_core,
            fwd_core,
            no_ceiling,
            no_kernel_rps,
            switch_rps,
            no_latency,
            mut offered,
            bin_dir,
        } => {
            if !nix::unistd::geteuid().is_root() {
                bail!("kxdp-bench needs root (namespaces, XDP)");
            }
            if !(duration > 0.0 && duration <= 60.0) {
                bail!("--duration must be in (0, 60] seconds");
            }
            if runs == 0 || runs > 20 {
                bail!("--runs must be 1..=20");
            }
            offered.sort_unstable();
            offered.dedup();
            let root = find_root(root)?;
            let mut list = Vec::new();
            for n in &names {
                list.push(
                    scenarios::find(n).with_context(|| {
                        format!("unknown scenario '{n}' (see `kxdp-bench list`)")
                    })?,
                );
            }
            let out = match out {
                Some(o) => o,
                None => {
                    let stamp = kxdp_perf::bench::lab::sh("date", &["-u", "+%Y-%m-%dT%H%MZ"])?;
                    root.join("perf/results").join(stamp.trim())
                }
            };
            let exe_dir = std::env::current_exe()?
                .parent()
                .context("no directory of kxdp-bench")?
                .to_path_buf();
            let pktgen = exe_dir.join("kxdp-pktgen");
            let bin_dir = std::fs::canonicalize(bin_dir.unwrap_or(exe_dir))?;
            for b in ["kxdp-dataplane", "kxdp-control", "kxdpctl"] {
                if !bin_dir.join(b).exists() {
                    bail!(
                        "{} not found: cargo build --release --workspace, or --bin-dir",
                        bin_dir.join(b).display()
                    );
                }
            }
            if !pktgen.exists() {
                bail!(
                    "{} not found: cargo build --release -p kxdp-perf",
                    pktgen.display()
                );
            }
            let cfg = BenchConfig {
                root,
                out: out.clone(),
                scenarios: list,
                sizes,
                flows,
                runs,
                duration_s: duration,
                prefix,
                pktgen,
                bin_dir,
                gen_core,
                fwd_core,
                ceiling: !no_ceiling,
                kernel_rps: !no_kernel_rps,
                switch_rps,
                latency: !no_latency,
                offered,
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            let r = run_bench(&cfg)?;
            println!("{}", report::headline(&r));
            println!("report: {}", out.join("report.md").display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_argument_has_help() {
        assert_eq!(
            kxdp_proto::cli::undocumented(&Cli::command()),
            Vec::<String>::new()
        );
    }

    /// `kxdp-bench run ARGS`, parsed.
    fn run(args: &[&str]) -> Result<Cmd, clap::Error> {
        let argv = ["kxdp-bench", "run"].iter().chain(args);
        Ok(Cli::try_parse_from(argv)?.cmd)
    }

    fn switch_rps(args: &[&str]) -> Result<SwitchRps, clap::Error> {
        match run(args)? {
            Cmd::Run { switch_rps, .. } => Ok(switch_rps),
            _ => unreachable!("parsed `run`"),
        }
    }

    fn offered(args: &[&str]) -> Result<Vec<u64>, clap::Error> {
        match run(args)? {
            Cmd::Run { offered, .. } => Ok(offered),
            _ => unreachable!("parsed `run`"),
        }
    }

    #[test]
    fn offered_takes_positive_rates_and_nothing_else() {
        assert_eq!(offered(&[]).unwrap(), Vec::<u64>::new());
        assert_eq!(
            offered(&["--offered", "100000,200000,400000"]).unwrap(),
            [100_000, 200_000, 400_000]
        );
        assert_eq!(
            offered(&["--offered", "300000", "--offered=5"]).unwrap(),
            [300_000, 5]
        );
        for bad in [
            "0",
            "100000,0",
            "-5",
            "1e5",
            "100k",
            "abc",
            "100000,,200000",
            "",
        ] {
            let e = offered(&[&format!("--offered={bad}")]).expect_err(bad);
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad}");
            let text = e.to_string();
            assert!(text.contains("--offered <PPS>"), "{bad}: {text}");
            assert!(
                text.contains("must be positive") || text.contains("not a whole number"),
                "{bad}: {text}"
            );
        }
        assert!(offered(&["--offered", "0"])
            .unwrap_err()
            .to_string()
            .contains("invalid value '0' for '--offered <PPS>': an offered rate must be positive"));
        assert!(
            offered(&["--offered", "-5"]).is_err(),
            "taken for an option, still refused"
        );
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("run")
            .expect("run")
            .render_long_help()
            .to_string();
        assert!(help.contains("--offered <PPS>"), "{help}");
        assert!(help.contains("Offered load sweep"), "{help}");
    }

    #[test]
    fn policy_delivery_takes_its_options() {
        let cli = Cli::try_parse_from(["kxdp-bench", "policy-delivery"]).unwrap();
        let Cmd::PolicyDelivery {
            changes,
            prefix,
            cores,
            ..
        } = cli.cmd
        else {
            panic!("parsed `policy-delivery`");
        };
        assert_eq!(
            (changes, prefix.as_str(), cores.as_str()),
            (200, "kxpold", "0,1")
        );
        let cli =
            Cli::try_parse_from(["kxdp-bench", "policy-delivery", "--changes", "150"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::PolicyDelivery { changes: 150, .. }));
        assert!(Cli::try_parse_from(["kxdp-bench", "policy-delivery", "--changes", "x"]).is_err());
    }

    #[test]
    fn switch_rps_defaults_to_none_and_takes_fwd() {
        Cli::command().debug_assert();
        assert_eq!(switch_rps(&[]).unwrap(), SwitchRps::None);
        assert_eq!(
            switch_rps(&["--switch-rps", "none"]).unwrap(),
            SwitchRps::None
        );
        assert_eq!(
            switch_rps(&["--switch-rps", "fwd"]).unwrap(),
            SwitchRps::Fwd
        );
        assert!(switch_rps(&["--switch-rps", "nodes"]).is_err());
    }
}
