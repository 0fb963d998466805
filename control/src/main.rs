//! kxdp-control: holds the cluster's desired state and keeps every kxdp
//! node's dataplane at it. See the library docs for the parts.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kxdp_control::cli::Args;
use kxdp_control::daemon::{self, Config};
use kxdp_control::store::Source;

fn main() -> ExitCode {
    let args = Args::parse();
    match args.doc.handled(<Args as clap::CommandFactory>::command()) {
        Ok(true) => return ExitCode::SUCCESS,
        Ok(false) => {}
        Err(e) => {
            eprintln!("kxdp-control: {e}");
            return ExitCode::from(1);
        }
    }
    if let Err(e) = args.check() {
        eprintln!("kxdp-control: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = args.log.init() {
        eprintln!("kxdp-control: {e}");
        return ExitCode::from(2);
    }
    // A panicked reconciler task would silently stop programming its node.
    kxdp_proto::abort_on_panic("kxdp-control");
    let source = match Source::from_args(&args) {
        Ok(source) => source,
        Err(e) => {
            eprintln!("kxdp-control: {e}");
            return ExitCode::from(2);
        }
    };
    serve(daemon::run(config(&args), source, shutdown_signal()))
}

/// The daemon settings both stores share.
fn config(args: &Args) -> Config {
    Config {
        listen: args.listen.clone(),
        dataplane_dir: args.dataplane_dir.clone(),
        resync_interval: Duration::from_millis(args.resync_interval_ms),
        apply_timeout: Duration::from_millis(args.apply_timeout_ms),
        metrics_address: args.metrics_address,
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
