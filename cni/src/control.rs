//! Registering pods with the node's kxdp-control over its Unix socket.
//!
//! Errors map onto CNI codes: a control process that cannot be reached, is
//! overloaded or did not get the pod to the dataplane in time is transient
//! (11, try again later); any other refusal is 101 with the gRPC code in the
//! details.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kxdp_proto::control::control_client::ControlClient;
use kxdp_proto::control::{AddPodRequest, DeletePodRequest, ListPodsRequest, PodInfo};
use tonic::transport::Channel;
use tonic::Code;

use crate::error::{CniError, Result, CONTROL_REFUSED, IO_FAILURE, TRY_AGAIN_LATER};

/// The longest a call may take. AddPod waits until the node's dataplane
/// holds the pod (kxdp-control's apply timeout, 10 s by default).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A client of the control API; each call dials afresh (a plugin run makes
/// one or two calls).
pub struct Control {
    socket: PathBuf,
    runtime: tokio::runtime::Runtime,
}

/// How far a failed call got: whether control may have acted on it.
#[derive(Debug)]
pub struct CallError {
    pub error: CniError,
    /// False when the socket could not be dialed: nothing reached control.
    pub reached: bool,
}

impl Control {
    pub fn new(socket: &Path) -> Result<Control> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::new(IO_FAILURE, format!("cannot start a tokio runtime: {e}")))?;
        Ok(Control {
            socket: socket.to_path_buf(),
            runtime,
        })
    }

    fn call<T, F, Fut>(&self, what: &str, f: F) -> std::result::Result<T, CallError>
    where
        F: FnOnce(ControlClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let socket = self.socket.display().to_string();
        self.runtime.block_on(async {
            let channel = kxdp_proto::connect_unix(self.socket.clone())
                .await
                .map_err(|e| CallError {
                    error: CniError::new(
                        TRY_AGAIN_LATER,
                        format!("kxdp-control is not reachable at {socket}"),
                    )
                    .with_details(error_chain(&e)),
                    reached: false,
                })?;
            match tokio::time::timeout(CALL_TIMEOUT, f(ControlClient::new(channel))).await {
                Err(_) => Err(CallError {
                    error: CniError::new(
                        TRY_AGAIN_LATER,
                        format!("kxdp-control {what}: no answer within {CALL_TIMEOUT:?}"),
                    ),
                    reached: true,
                }),
                Ok(Err(status)) => Err(CallError {
                    error: status_error(what, &status),
                    reached: true,
                }),
                Ok(Ok(reply)) => Ok(reply.into_inner()),
            }
        })
    }

    pub fn add_pod(&self, req: AddPodRequest) -> std::result::Result<u64, CallError> {
        self.call("AddPod", |mut c| async move { c.add_pod(req).await })
            .map(|r| r.generation)
    }

    /// Unregisters a pod; an unknown pod is fine (DeletePod is idempotent).
    ///
    /// A DeletePod that reached control but failed (say, the node's dataplane
    /// did not confirm in time) is looked up again: once control's desired
    /// state no longer holds the pod, it is unregistered, whatever the
    /// dataplane is doing (control pushes the state to it when it can).
    pub fn unregister(&self, node: &str, name: &str) -> Result<()> {
        let req = DeletePodRequest {
            node: node.to_string(),
            name: name.to_string(),
        };
        match self.call("DeletePod", |mut c| async move { c.delete_pod(req).await }) {
            Ok(_) => Ok(()),
            Err(CallError {
                error,
                reached: true,
            }) => match self.find_pod(node, name) {
                Ok(None) => Ok(()),
                _ => Err(error),
            },
            Err(e) => Err(e.error),
        }
    }

    /// The pod `name` on `node`, as control holds it.
    pub fn find_pod(&self, node: &str, name: &str) -> Result<Option<PodInfo>> {
        let req = ListPodsRequest {
            node: node.to_string(),
        };
        self.call("ListPods", |mut c| async move { c.list_pods(req).await })
            .map(|r| {
                r.pods
                    .into_iter()
                    .find(|p| p.node == node && p.name == name)
            })
            .map_err(|e| e.error)
    }
}

fn status_error(what: &str, status: &tonic::Status) -> CniError {
    let code = match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => {
            TRY_AGAIN_LATER
        }
        _ => CONTROL_REFUSED,
    };
    CniError::new(code, format!("kxdp-control {what}: {}", status.message()))
        .with_details(format!("gRPC status {:?}", status.code()))
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        parts.push(e.to_string());
        cur = e.source();
    }
    parts.dedup();
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_statuses_are_try_again_later() {
        let e = status_error("AddPod", &tonic::Status::unavailable("x"));
        assert_eq!(e.code, TRY_AGAIN_LATER);
        let e = status_error("AddPod", &tonic::Status::deadline_exceeded("x"));
        assert_eq!(e.code, TRY_AGAIN_LATER);
        let e = status_error("AddPod", &tonic::Status::invalid_argument("ip: taken"));
        assert_eq!(e.code, CONTROL_REFUSED);
        assert!(e.msg.contains("ip: taken") && e.details.contains("InvalidArgument"));
        let e = status_error("AddPod", &tonic::Status::unimplemented("later"));
        assert_eq!(e.code, CONTROL_REFUSED);
    }

    #[test]
    fn missing_socket_is_unreachable_and_not_reached() {
        let c = Control::new(Path::new("/nonexistent/kxdp/control.sock")).unwrap();
        let e = c
            .add_pod(AddPodRequest::default())
            .expect_err("nothing listens there");
        assert_eq!(e.error.code, TRY_AGAIN_LATER);
        assert!(!e.reached);
    }
}
