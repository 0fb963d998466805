//! The control process, minus argument parsing: serve the Control API on a
//! Unix socket and run the reconcilers until told to stop.

use std::future::Future;
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

    let supervisor = tokio::spawn(reconcile::supervise(shared.clone()));
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
    for task in tasks {
        task.abort();
        let _ = task.await;
    }
    drop(socket_file);
    log::info!("stopped");
    served.context("control API server failed")
}
