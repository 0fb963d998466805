//! `kxdp-dataplane`: runs one node's engine and serves its gRPC API.

use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use clap::Parser;
use kxdp_dataplane::cli::Args;
use kxdp_dataplane::engine::{Engine, EngineConfig};
use kxdp_proto::dataplane::dataplane_server::DataplaneServer;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args
        .doc
        .handled(<Args as clap::CommandFactory>::command())?
    {
        return Ok(());
    }
    if let Err(e) = args.log.init() {
        eprintln!("kxdp-dataplane: {e}");
        std::process::exit(2);
    }
    kxdp_proto::abort_on_panic("kxdp-dataplane");
    if let Some(fault) = args.test_fault {
        log::warn!("--test-fault {fault} armed: this process is for tests only");
        kxdp_dataplane::fault::arm(fault);
    }
    let (node, socket) = args.identity()?;
    let boot_id = format!(
        "{:016x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as u64
            ^ ((std::process::id() as u64) << 40)
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let engine = Engine::new(
        EngineConfig {
            workers: usize::from(args.workers),
            cores: args.cores.clone(),
            xdp_mode: args.xdp_mode,
            copy_mode: args.copy,
            flow_cache: !args.no_flow_cache,
            runtime: Some(rt.handle().clone()),
        },
        boot_id.clone(),
    )
    .context("starting the engine (are you root?)")?;
    let live = engine.liveness();
    let (tx, rx) = crossbeam_channel::bounded(64);
    if let Some(addr) = args.metrics_address {
        let listener = {
            let _guard = rt.enter();
            kxdp_proto::ops::bind(addr).with_context(|| format!("--metrics-address {addr}"))?
        };
        log::info!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
        let (tx, live) = (tx.clone(), live.clone());
        rt.spawn(kxdp_proto::ops::serve(listener, move |req| {
            kxdp_dataplane::metrics::handle(req, tx.clone(), live.clone())
        }));
    }
    // READY=1 and WATCHDOG=1 when started as a systemd Type=notify service.
    kxdp_dataplane::liveness::spawn_notifier(live)?;
    let engine_thread = std::thread::Builder::new()
        .name("kxdp-engine".into())
        .spawn(move || engine.run(rx))?;
    let explicit_node = args.node.clone();
    rt.block_on(async move {
        // The socket file goes when `_socket_file` drops, after serving.
        let (listener, _socket_file) = bind(&socket)?;
        tracing::info!(
            event = "started",
            version = env!("CARGO_PKG_VERSION"),
            node = %node,
            socket = %socket.display(),
            boot_id = %boot_id,
            workers = args.workers,
            "kxdp-dataplane {} for node {node} serving on {} (boot id {boot_id}, {} worker(s))",
            env!("CARGO_PKG_VERSION"),
            socket.display(),
            args.workers
        );
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(
                DataplaneServer::new(kxdp_dataplane::api::Service::new(tx, explicit_node))
                    .max_decoding_message_size(kxdp_proto::MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(kxdp_proto::MAX_MESSAGE_SIZE),
            )
            .serve_with_incoming_shutdown(incoming, shutdown())
            .await?;
        anyhow::Ok(())
    })?;
    // The service is gone; the metrics listener's tasks hold engine senders
    // too: they go with the runtime. Then the engine detaches and stops.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    engine_thread
        .join()
        .map_err(|_| anyhow::anyhow!("engine thread panicked"))?;
    tracing::info!(event = "stopped", "stopped");
    Ok(())
}

/// Binds the API socket with the shared root-only binder (0700 directory,
/// 0600 socket, a stale socket replaced, anything else refused); an existing
/// directory is made 0700 too, as the dataplane always did.
fn bind(
    path: &std::path::Path,
) -> anyhow::Result<(tokio::net::UnixListener, kxdp_proto::uds::SocketFile)> {
    if let Some(dir) = path.parent().filter(|d| d.is_dir()) {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    kxdp_proto::uds::bind(path).with_context(|| format!("binding {}", path.display()))
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    log::info!("shutting down");
}
