//! kxdp's gRPC contract: generated types and services for the dataplane API
//! (`kxdp.dataplane.v1`) and the control API (`kxdp.control.v1`).
//!
//! Nothing here validates: each server converts these types into its own
//! domain types with `TryFrom` at the API edge. The pipeline never sees them.
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

pub use kxdp::control::v1 as control;
pub use kxdp::dataplane::v1 as dataplane;

/// Default Unix socket of a node's dataplane API.
pub const DEFAULT_DATAPLANE_SOCKET: &str = "/run/kxdp/dataplane.sock";
/// Default Unix socket of the control API.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/kxdp/control.sock";
