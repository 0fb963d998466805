//! gRPC over Unix sockets with tonic: a client channel to a socket path, and a
//! root-only listening socket for a server.
//!
//! Server side, give the listener to
//! `Server::builder().add_service(..).serve_with_incoming_shutdown(incoming(listener), signal)`
//! and keep the [`SocketFile`] alive until the server has stopped.

use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Channel;

pub use kxdp_proto::CONNECT_TIMEOUT;

/// Connects a tonic channel to the gRPC server on the Unix socket `path`.
///
/// Fails at once (no retry) if nothing listens there; the error's source chain
/// holds the `io::Error` (see [`io_cause`]).
pub async fn connect(path: impl Into<PathBuf>) -> Result<Channel, tonic::transport::Error> {
    kxdp_proto::connect_unix(path).await
}

/// The first `io::Error` in an error's source chain, e.g. "No such file or
/// directory" inside a tonic transport error.
pub fn io_cause<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cur = e.source();
    }
    None
}

pub use kxdp_proto::uds::{bind, SocketFile};

/// The listener as the connection stream tonic's server wants.
pub fn incoming(listener: UnixListener) -> UnixListenerStream {
    UnixListenerStream::new(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxdp_testkit::TempDir;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn bind_creates_private_dir_and_socket_and_cleans_up() {
        let tmp = TempDir::new("bind");
        let dir = tmp.0.join("run");
        let path = dir.join("s.sock");
        let (listener, file) = bind(&path).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A live socket is not stolen.
        assert_eq!(bind(&path).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(listener);
        // Nothing accepts any more: the file is stale and gets replaced.
        let (_listener, file2) = bind(&path).unwrap();
        std::mem::forget(file);
        drop(file2);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn bind_refuses_a_regular_file() {
        let tmp = TempDir::new("bindfile");
        let path = tmp.0.join("not-a-socket");
        fs::write(&path, b"keep me").unwrap();
        assert_eq!(
            bind(&path).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read(&path).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn connect_to_missing_socket_reports_the_io_error() {
        let tmp = TempDir::new("connect");
        let err = connect(tmp.0.join("absent.sock")).await.unwrap_err();
        let io = io_cause(&err).expect("an io::Error in the chain");
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
    }
}
