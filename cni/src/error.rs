//! The CNI error result and its codes.
//!
//! Codes 1-99 are the spec's well-known ones and mean exactly what the spec
//! says; 100 and up are this plugin's own (the spec leaves them to plugins).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Incompatible CNI version.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// Unsupported field in the network configuration.
pub const UNSUPPORTED_FIELD: u32 = 2;
/// Container unknown or does not exist (the runtime need not call DEL).
pub const UNKNOWN_CONTAINER: u32 = 3;
/// Invalid necessary environment variables (CNI_COMMAND, CNI_CONTAINERID, ...).
pub const INVALID_ENV: u32 = 4;
/// I/O failure: reading stdin, running a program.
pub const IO_FAILURE: u32 = 5;
/// Failed to decode content: the configuration is not JSON.
pub const DECODE_FAILURE: u32 = 6;
/// Invalid network config: JSON, but not a valid kxdp-cni configuration.
pub const INVALID_CONFIG: u32 = 7;
/// Try again later: a transient condition (kxdp-control unreachable, busy).
pub const TRY_AGAIN_LATER: u32 = 11;

/// Setting up or tearing down an interface, address or route failed (an
/// `ip`/`ethtool` command refused it).
pub const SETUP_FAILED: u32 = 100;
/// kxdp-control refused the pod (details carry the gRPC status code).
pub const CONTROL_REFUSED: u32 = 101;
/// CHECK found the container's networking not as ADD left it.
pub const CHECK_FAILED: u32 = 102;
/// The IPAM plugin failed without a CNI error, or its result is unusable
/// (no IPv4 address, an IPv6 one: kxdp is IPv4-only).
pub const IPAM_FAILED: u32 = 103;

/// A CNI error: printed as the spec's error JSON on stdout, exit status 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// Appends a line to the details (e.g. what rollback could not undo).
    pub fn add_details(&mut self, more: &str) {
        if !self.details.is_empty() {
            self.details.push_str("; ");
        }
        self.details.push_str(more);
    }

    /// The spec's error JSON for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            #[serde(flatten)]
            err: &'a CniError,
        }
        serde_json::to_string(&Out {
            cni_version,
            err: self,
        })
        .unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"{cni_version}","code":{},"msg":"error"}}"#,
                self.code
            )
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

pub type Result<T> = std::result::Result<T, CniError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::new(INVALID_CONFIG, "ipam: missing").with_details("x");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 7);
        assert_eq!(v["msg"], "ipam: missing");
        assert_eq!(v["details"], "x");
    }

    #[test]
    fn empty_details_are_left_out() {
        let e = CniError::new(TRY_AGAIN_LATER, "busy");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).unwrap();
        assert!(v.get("details").is_none());
    }
}
