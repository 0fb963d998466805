//! The control process, minus argument parsing: serve the Control API on a
//! Unix socket and run the reconcilers until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kxdp_proto::control::control_server::ControlServer;
use tonic::transport::Server;

use crate::api::ControlService;
use crate::reconcile;
use crate::store::{self, Opened, Source};
use crate::uds;

#[derive(Clone, Debug)]
pub struct Config {
    /// The Control API's socket.
    pub listen: PathBuf,
    /// Where nodes' dataplane sockets are when the cluster file does not say.
    pub dataplane_dir: PathBuf,
    pub resync_interval: Duration,
    pub apply_timeout: Duration,
    /// Where `/metrics` and `/healthz` are served; `None`: nowhere.
    pub metrics_address: Option<SocketAddr>,
}

/// Opens the store `source` names (etcd mode: registers this node), serves
/// the Control API and runs the reconcilers until `shutdown` completes, then
/// stops them and removes the socket.
pub async fn run(
    config: Config,
    source: Source,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Opened {
        shared,
        store,
        tasks,
    } = store::open(source, &config).await?;
    let (listener, socket_file) = uds::bind(&config.listen)
        .with_context(|| format!("cannot listen on {}", config.listen.display()))?;
    log::info!(
        "serving the control API on {}",
        socket_file.path().display()
    );

    let metrics = match config.metrics_address {
        Some(addr) => {
            let listener =
                kxdp_proto::ops::bind(addr).with_context(|| format!("--metrics-address {addr}"))?;
            log::info!("metrics on http://{addr}/metrics, health on http://{addr}/healthz");
            let shared = shared.clone();
            Some(tokio::spawn(kxdp_proto::ops::serve(listener, move |req| {
                let r = crate::metrics::handle(&req, &shared);
                async move { r }
            })))
        }
        None => None,
    };
    let supervisor = tokio::spawn(reconcile::supervise(shared.clone()));
    // systemd (Type=notify): ready once the API is served; WATCHDOG=1 while
    // this runtime runs (one thread: a hung reconciler stops the pings).
    let _ = kxdp_proto::ops::sd_notify("READY=1\nSTATUS=serving the control API");
    let watchdog = kxdp_proto::ops::watchdog_interval().map(|w| {
        tokio::spawn(async move {
            loop {
                let _ = kxdp_proto::ops::sd_notify("WATCHDOG=1");
                tokio::time::sleep(kxdp_proto::ops::ping_every(Some(w))).await;
            }
        })
    });
    let service = ControlServer::new(ControlService::new(shared, store, config.apply_timeout))
        .max_decoding_message_size(kxdp_proto::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(kxdp_proto::MAX_MESSAGE_SIZE);
    let served = Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(uds::incoming(listener), shutdown)
        .await;

    // Aborting the supervisor drops its JoinSet, which aborts the reconcilers.
    supervisor.abort();
    let _ = supervisor.await;
    for task in metrics.into_iter().chain(watchdog) {
        task.abort();
    }
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
    drop(socket_file);
    log::info!("stopped");
    served.context("control API server failed")
}
