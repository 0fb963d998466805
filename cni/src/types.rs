//! The network configuration kxdp-cni reads and the result it prints (CNI
//! spec 1.0.0, "Success" result).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{
    CniError, Result, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, UNSUPPORTED_FIELD,
};

/// The CNI versions this plugin speaks: the result format of 1.0.0 only.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];
/// The version used for errors when the configuration does not say.
pub const DEFAULT_VERSION: &str = "1.0.0";
/// kxdp's pod MTU default: a 1500-byte underlay minus the VXLAN headers.
pub const DEFAULT_MTU: u32 = 1450;

/// One plugin's network configuration, as the runtime gives it on stdin
/// (a `.conflist` entry with `cniVersion` and `name` filled in). Unknown
/// fields (`args`, `runtimeConfig`, `capabilities`, ...) are ignored.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The binary the runtime ran (the plugin does not insist on a name).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// This node's name in kxdp-control.
    pub node: String,
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    pub ipam: Option<IpamConf>,
    #[serde(default)]
    pub dns: Dns,
    /// CHECK (and optionally DEL): the result of the ADD.
    pub prev_result: Option<Value>,
}

/// The `ipam` section: only `type` is ours to read, the rest is the IPAM
/// plugin's.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type")]
    pub plugin_type: String,
}

fn default_control_socket() -> PathBuf {
    PathBuf::from(kxdp_proto::DEFAULT_CONTROL_SOCKET)
}

fn default_mtu() -> u32 {
    DEFAULT_MTU
}

impl NetConf {
    /// Parses stdin: not JSON is code 6, a `cniVersion` this plugin does not
    /// speak code 1, anything else wrong code 7. Returns the version to
    /// answer errors in alongside, even when parsing fails.
    pub fn parse(bytes: &[u8]) -> (String, Result<NetConf>) {
        let value: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                return (
                    DEFAULT_VERSION.to_string(),
                    Err(CniError::new(
                        DECODE_FAILURE,
                        format!("the network configuration is not JSON: {e}"),
                    )),
                )
            }
        };
        let version = match value.get("cniVersion") {
            Some(Value::String(v)) => v.clone(),
            Some(_) => {
                return (
                    DEFAULT_VERSION.to_string(),
                    Err(CniError::new(INVALID_CONFIG, "cniVersion: not a string")),
                )
            }
            None => {
                return (
                    DEFAULT_VERSION.to_string(),
                    Err(CniError::new(INVALID_CONFIG, "cniVersion: missing")),
                )
            }
        };
        if !SUPPORTED_VERSIONS.contains(&version.as_str()) {
            let err = CniError::new(
                INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {version:?} is not supported (supported: {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            );
            // Answer in a version the runtime can read, if it speaks one of ours.
            return (DEFAULT_VERSION.to_string(), Err(err));
        }
        let conf = serde_json::from_value::<NetConf>(value)
            .map_err(|e| CniError::new(INVALID_CONFIG, format!("network configuration: {e}")))
            .and_then(|c| c.validate().map(|()| c));
        (version, conf)
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(CniError::new(INVALID_CONFIG, msg));
        if self.name.is_empty() {
            return bad("name: must not be empty".into());
        }
        if self.node.is_empty() {
            return bad("node: missing or empty (this node's name in kxdp-control)".into());
        }
        if self.control_socket.as_os_str().is_empty() {
            return bad("controlSocket: must not be empty".into());
        }
        if !(68..=65535).contains(&self.mtu) {
            return bad(format!("mtu: {} is not in 68..=65535", self.mtu));
        }
        match &self.ipam {
            None => {
                return bad(
                    "ipam: missing (kxdp-cni delegates addressing, e.g. {\"type\": \"host-local\", ...})"
                        .into(),
                )
            }
            Some(ipam) => {
                if ipam.plugin_type.is_empty()
                    || ipam.plugin_type.contains('/')
                    || ipam.plugin_type.starts_with('.')
                {
                    return bad(format!(
                        "ipam.type: {:?} is not a plugin name",
                        ipam.plugin_type
                    ));
                }
            }
        }
        if self.prev_result.as_ref().is_some_and(|v| !v.is_object()) {
            return Err(CniError::new(
                UNSUPPORTED_FIELD,
                "prevResult: not an object",
            ));
        }
        Ok(())
    }

    pub fn ipam_type(&self) -> &str {
        self.ipam.as_ref().map_or("", |i| i.plugin_type.as_str())
    }

    /// The ADD result given back on CHECK (required there).
    pub fn prev_result(&self) -> Result<CniResult> {
        let value = self.prev_result.clone().ok_or_else(|| {
            CniError::new(
                INVALID_CONFIG,
                "prevResult: missing (CHECK needs the ADD's result)",
            )
        })?;
        serde_json::from_value(value)
            .map_err(|e| CniError::new(INVALID_CONFIG, format!("prevResult: {e}")))
    }
}

/// A CNI 1.0.0 success result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The container's namespace; absent for a host interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length, e.g. "10.244.1.2/24".
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// VERSION's answer.
pub fn version_json() -> String {
    serde_json::json!({
        "cniVersion": DEFAULT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "cniVersion": "1.0.0", "name": "kxdp", "type": "kxdp-cni", "node": "n1",
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]},
        "runtimeConfig": {"whatever": 1}
    }"#;

    fn parse(text: &str) -> Result<NetConf> {
        NetConf::parse(text.as_bytes()).1
    }

    #[test]
    fn good_config_gets_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.mtu, 1450);
        assert_eq!(c.control_socket, PathBuf::from("/run/kxdp/control.sock"));
        assert_eq!(c.ipam_type(), "host-local");
        assert!(c.dns.is_empty());
    }

    #[test]
    fn error_codes_follow_the_spec() {
        assert_eq!(parse("{not json").unwrap_err().code, DECODE_FAILURE);
        assert_eq!(parse("").unwrap_err().code, DECODE_FAILURE);
        let v = |from: &str, to: &str| parse(&GOOD.replace(from, to)).unwrap_err().code;
        assert_eq!(v("\"1.0.0\"", "\"0.2.0\""), INCOMPATIBLE_VERSION);
        assert_eq!(v("\"1.0.0\"", "1"), INVALID_CONFIG);
        assert_eq!(v("\"node\": \"n1\",", ""), INVALID_CONFIG);
        assert_eq!(v("\"node\": \"n1\"", "\"node\": \"\""), INVALID_CONFIG);
        assert_eq!(v("\"host-local\"", "\"../evil\""), INVALID_CONFIG);
        assert_eq!(
            v("\"node\": \"n1\",", "\"node\": \"n1\", \"mtu\": 20,"),
            INVALID_CONFIG
        );
        assert_eq!(
            v("\"node\": \"n1\",", "\"node\": \"n1\", \"prevResult\": 3,"),
            UNSUPPORTED_FIELD
        );
    }

    #[test]
    fn missing_ipam_is_invalid_config() {
        let text = r#"{"cniVersion": "1.0.0", "name": "kxdp", "type": "kxdp-cni", "node": "n1"}"#;
        let err = parse(text).unwrap_err();
        assert_eq!(err.code, INVALID_CONFIG);
        assert!(err.msg.contains("ipam"), "{err}");
    }

    #[test]
    fn result_round_trips_in_spec_form() {
        let r = CniResult {
            cni_version: "1.0.0".into(),
            interfaces: vec![
                Interface {
                    name: "kx0af40102".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:f4:01:02".into(),
                    sandbox: Some("/var/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.2/24".into(),
                gateway: Some("10.244.1.1".into()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.244.1.1".into()),
            }],
            dns: Dns::default(),
        };
        let v: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/p");
        assert!(v["interfaces"][0].get("sandbox").is_none());
        assert_eq!(v["dns"], serde_json::json!({}));
        let back: CniResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn version_lists_1_0_0() {
        let v: Value = serde_json::from_str(&version_json()).unwrap();
        assert_eq!(v["supportedVersions"], serde_json::json!(["1.0.0"]));
    }
}
