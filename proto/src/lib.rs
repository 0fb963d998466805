//! kxdp's gRPC contract: generated types and services for the dataplane API
//! (`kxdp.dataplane.v1`) and the control API (`kxdp.control.v1`).
//!
//! Nothing here validates: each server converts these types into its own
//! domain types with `TryFrom` at the API edge. The pipeline never sees them.
//! The one domain type both servers share, [`service::Service`], is here
//! with its conversion back to the proto.
#![forbid(unsafe_code)]

/// Generated code, nested as the proto packages are (cross-package paths rely on it).
pub mod kxdp {
    pub mod dataplane {
        pub mod v1 {
            tonic::include_proto!("kxdp.dataplane.v1");
        }
    }
    pub mod control {
        pub mod v1 {
            tonic::include_proto!("kxdp.control.v1");
        }
    }
}

pub mod cli;
pub mod limits;
pub mod logging;
pub mod ops;
pub mod policy;
pub mod service;
pub mod uds;

pub use kxdp::control::v1 as control;
pub use kxdp::dataplane::v1 as dataplane;

/// Linux's rules for an interface name (the kernel's `dev_valid_name`):
/// 1-15 bytes, not "." or "..", no '/', ':' or whitespace. A pod's `ifname`
/// in either API follows them.
pub fn is_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// VXLAN's overhead inside the underlay MTU: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Largest underlay MTU kxdp carries. A frame must fit in one 2048-byte UMEM
/// chunk after the kernel's 256-byte receive headroom: 1792 bytes, an
/// Ethernet header and 1778 of IPv4. kxdp has no multi-buffer frames, so a
/// larger (jumbo) MTU is refused where it is configured instead of being
/// dropped at the socket (the dataplane asserts its chunk layout matches).
pub const MAX_UNDERLAY_MTU: u32 = 1778;
/// Largest pod MTU: [`MAX_UNDERLAY_MTU`] less the VXLAN headers.
pub const MAX_POD_MTU: u32 = MAX_UNDERLAY_MTU - VXLAN_OVERHEAD;

/// A panic in any thread ends the process, as `panic = "abort"` would, but
/// in every profile (so the debug-build tests see what production does) and
/// without making `cargo test --release` build every dependency twice. A dead
/// worker, engine or reconciler would otherwise leave a process that still
/// answers gRPC but does nothing, which no service manager restarts.
pub fn abort_on_panic(process: &'static str) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        let thread = std::thread::current();
        log::error!(
            "thread {} panicked: aborting, so that the service manager restarts {process}",
            thread.name().unwrap_or("<unnamed>")
        );
        std::process::abort();
    }));
}

/// Where the daemons' sockets live by default.
pub const DEFAULT_RUN_DIR: &str = "/run/kxdp";
/// Default Unix socket of the control API.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/kxdp/control.sock";

/// The socket of node `node`'s dataplane API in `dir`: `kxdp-dataplane`
/// listens there by default and `kxdp-control` dials it, so the two meet
/// without either being told.
pub fn dataplane_socket(dir: impl AsRef<std::path::Path>, node: &str) -> std::path::PathBuf {
    dir.as_ref().join(format!("{node}.sock"))
}

pub use limits::MAX_MESSAGE_SIZE;

/// How long dialing a local Unix socket may take: a live server accepts at once.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A gRPC channel over a Unix socket (the dataplane's and control's APIs).
pub async fn connect_unix(
    path: impl Into<std::path::PathBuf>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path: std::path::PathBuf = path.into();
    // The URI is a placeholder required by the HTTP/2 layer; the connector
    // ignores it and dials the socket.
    tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}
