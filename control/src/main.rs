//! kxdp-control: holds the cluster's desired state and keeps every kxdp
//! node's dataplane at it. See the library docs for the parts.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kxdp_control::cli::Args;
use kxdp_control::cluster::{Cluster, LAB_CLUSTER_YAML};
use kxdp_control::daemon::{self, Config};

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.check() {
        eprintln!("kxdp-control: {e}");
        return ExitCode::from(2);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if args.store.is_some() {
        return main_etcd(args);
    }

    // check() required one of --cluster, --store, --lab: without --cluster here, --lab.
    let (source, text) = match &args.cluster {
        None => (
            "the built-in lab cluster file (--lab)".to_string(),
            LAB_CLUSTER_YAML.to_string(),
        ),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (path.display().to_string(), text),
            Err(e) => {
                eprintln!(
                    "kxdp-control: cannot read the cluster file {}: {e}",
                    path.display()
                );
                return ExitCode::from(2);
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
    if !kxdp_control::validate::is_dns_label(&name) {
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
            uplink: args.uplink.clone().expect("clap requires it"),
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
