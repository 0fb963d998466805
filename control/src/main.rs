//! kxdp-control: holds the cluster's desired state and keeps every kxdp
//! node's dataplane at it. See the library docs for the parts.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kxdp_control::api::DEFAULT_APPLY_TIMEOUT;
use kxdp_control::cluster::{Cluster, LAB_CLUSTER_YAML};
use kxdp_control::conventions::DEFAULT_DATAPLANE_DIR;
use kxdp_control::daemon::{self, Config};
use kxdp_proto::DEFAULT_CONTROL_SOCKET;

/// The kxdp control process.
///
/// Reads a cluster file (nodes, pods), validates it, computes what each kxdp
/// node's dataplane must hold and pushes it over the dataplane gRPC API. Every
/// resync interval it reads each dataplane's state and pushes the full state
/// again after a dataplane restart (new boot_id), on first contact, or when
/// the generation differs. Serves the Control API (kxdpctl, orchestration) on
/// a root-only Unix socket. Stops cleanly on SIGTERM/SIGINT.
///
/// Exit status: 0 after a clean stop, 2 if the cluster file is invalid, 1 on
/// other errors. Logging: RUST_LOG (default "info").
#[derive(Parser, Debug)]
#[command(name = "kxdp-control", version, verbatim_doc_comment)]
struct Args {
    /// Cluster file (YAML). Default: the embedded two-node lab file
    /// (config/lab-cluster.yaml in the source tree).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,

    /// Unix socket to serve the Control API on (parent dir created 0700, socket 0600).
    #[arg(long, value_name = "SOCK", default_value = DEFAULT_CONTROL_SOCKET)]
    listen: PathBuf,

    /// Directory of the nodes' dataplane sockets: a node without `socket:` in
    /// the cluster file is reached at DIR/<node name>.sock.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATAPLANE_DIR)]
    dataplane_dir: PathBuf,

    /// How often each node's dataplane is checked (and re-pushed if needed).
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    resync_interval_ms: u64,

    /// How long ApplyCluster waits for the reachable nodes to take a new state.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_APPLY_TIMEOUT.as_millis() as u64)]
    apply_timeout_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let (source, text) = match &args.cluster {
        None => (
            "the embedded lab cluster file".to_string(),
            LAB_CLUSTER_YAML.to_string(),
        ),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (path.display().to_string(), text),
            Err(e) => {
                eprintln!("kxdp-control: cannot read {}: {e}", path.display());
                return ExitCode::from(1);
            }
        },
    };
    let cluster = match Cluster::from_yaml(&text)
        .and_then(|c| c.check_sockets(&args.dataplane_dir).map(|()| c))
    {
        Ok(c) => c,
        Err(problems) => {
            eprintln!(
                "kxdp-control: invalid cluster file {source} ({} problems):",
                problems.0.len()
            );
            for p in &problems.0 {
                eprintln!("  {p}");
            }
            return ExitCode::from(2);
        }
    };

    let config = Config {
        listen: args.listen,
        dataplane_dir: args.dataplane_dir,
        resync_interval: Duration::from_millis(args.resync_interval_ms),
        apply_timeout: Duration::from_millis(args.apply_timeout_ms),
    };
    // One thread: the work is a few RPCs a second, and the machine's cores
    // belong to the dataplanes.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kxdp-control: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    log::info!("cluster file: {source}");
    match runtime.block_on(daemon::run(config, cluster, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kxdp-control: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            log::error!("cannot install signal handlers ({e}); stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = int.recv() => log::info!("SIGINT: shutting down"),
    }
}
