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

    /// Shared store: etcd://host:2379[,host:port...]. This process then
    /// registers --node, takes a pod CIDR lease and programs only that
    /// node's dataplane. With --cluster too, the file's cluster settings
    /// become the cluster config if etcd has none (its nodes and pods are
    /// not used: nodes register themselves).
    #[arg(long, value_name = "URL", requires_all = ["node", "underlay_ip"])]
    store: Option<String>,

    /// Etcd mode: this node's name (a DNS label).
    #[arg(long, value_name = "NAME")]
    node: Option<String>,

    /// Etcd mode: this node's underlay address (VTEP, NodePorts).
    #[arg(long, value_name = "IP")]
    underlay_ip: Option<std::net::Ipv4Addr>,

    /// Etcd mode: the underlay interface.
    #[arg(long, value_name = "IF", default_value = kxdp_control::conventions::DEFAULT_UPLINK)]
    uplink: String,

    /// Etcd mode: VTEP MAC; default 0e:58 + the underlay IP bytes.
    #[arg(long, value_name = "MAC")]
    vtep_mac: Option<kxdp_control::conventions::Mac>,

    /// Etcd mode: TTL of this node's lease; a vanished node's routes go after it.
    #[arg(long, value_name = "S", default_value_t = kxdp_control::etcd::DEFAULT_LEASE_TTL_S, value_parser = clap::value_parser!(i64).range(2..))]
    lease_ttl_s: i64,

    /// Etcd mode, with --cluster: prefix length of each node's pod CIDR.
    #[arg(long, value_name = "LEN", default_value_t = kxdp_control::etcd::DEFAULT_SUBNET_LEN)]
    subnet_len: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if args.store.is_some() {
        return main_etcd(args);
    }

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

    let config = config(&args);
    log::info!("cluster file: {source}");
    serve(daemon::run(config, cluster, shutdown_signal()))
}

/// The daemon settings both store modes share.
fn config(args: &Args) -> Config {
    Config {
        listen: args.listen.clone(),
        dataplane_dir: args.dataplane_dir.clone(),
        resync_interval: Duration::from_millis(args.resync_interval_ms),
        apply_timeout: Duration::from_millis(args.apply_timeout_ms),
    }
}

/// Runs the daemon to completion and maps the outcome to the exit status.
fn serve(daemon: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
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
    match runtime.block_on(daemon) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kxdp-control: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn main_etcd(args: Args) -> ExitCode {
    let url = args.store.clone().unwrap_or_default();
    let endpoints = match kxdp_control::etcd::parse_store_url(&url) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kxdp-control: --store: {e:#}");
            return ExitCode::from(2);
        }
    };
    let name = args.node.clone().unwrap_or_default();
    if !kxdp_control::cluster::is_dns_label(&name) {
        eprintln!("kxdp-control: --node {name:?} is not a DNS label");
        return ExitCode::from(2);
    }
    let bootstrap = match &args.cluster {
        None => None,
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| Cluster::from_yaml(&t).map_err(|p| p.to_string()))
        {
            Ok(c) => Some(kxdp_control::etcd::ClusterConfig::from_cluster(
                &c,
                args.subnet_len,
            )),
            Err(e) => {
                eprintln!(
                    "kxdp-control: invalid cluster file {}:\n{e}",
                    path.display()
                );
                return ExitCode::from(2);
            }
        },
    };
    let etcd = daemon::EtcdConfig {
        endpoints,
        node: kxdp_control::etcd::Registration {
            name,
            underlay_ip: args.underlay_ip.expect("clap requires it"),
            uplink: args.uplink.clone(),
            vtep_mac: args.vtep_mac,
            lease_ttl_s: args.lease_ttl_s,
        },
        bootstrap,
    };
    let config = config(&args);
    log::info!("store: {url}");
    serve(daemon::run_etcd(config, etcd, shutdown_signal()))
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
