//! IPAM delegation, as the spec's "Delegated plugins" section describes it:
//! the IPAM plugin named in `ipam.type` is looked up on `CNI_PATH` and run
//! with this plugin's environment (only `CNI_COMMAND` changed for a rollback)
//! and the same network configuration on stdin; its result or error JSON is
//! read from its stdout.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::{IpNet, Ipv4Net};

use crate::env::{self, CniEnv};
use crate::error::{CniError, Result, INVALID_ENV, IO_FAILURE, IPAM_FAILED};
use crate::types::{CniResult, Dns, Route};

/// Finds plugin `name` on `CNI_PATH`: the first executable regular file.
pub fn find_plugin(name: &str, path: &[PathBuf]) -> Result<PathBuf> {
    path.iter()
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            let dirs: Vec<String> = path.iter().map(|d| d.display().to_string()).collect();
            CniError::new(
                INVALID_ENV,
                format!(
                    "IPAM plugin {name:?} not found on CNI_PATH ({}); Debian's containernetworking-plugins installs host-local in /usr/lib/cni",
                    dirs.join(":")
                ),
            )
        })
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs the IPAM plugin for `command` with `config` on stdin. ADD returns
/// its parsed result; DEL and CHECK an empty one. A CNI error from the plugin
/// is passed on with its own code, its message prefixed with the plugin name.
pub fn exec(
    plugin: &str,
    command: env::Command,
    cni_env: &CniEnv,
    config: &[u8],
) -> Result<Option<CniResult>> {
    let exe = find_plugin(plugin, &cni_env.path)?;
    // The environment is inherited as the runtime gave it; CNI_COMMAND is set
    // explicitly because a rollback runs DEL inside an ADD.
    let mut child = Command::new(&exe)
        .env("CNI_COMMAND", command.as_str())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::new(IO_FAILURE, format!("cannot run {}: {e}", exe.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading stdin closes the pipe: its exit
        // status and output then tell what happened, not this write.
        let _ = stdin.write_all(config);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(IO_FAILURE, format!("waiting for {}: {e}", exe.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(match serde_json::from_str::<CniError>(&stdout) {
            Ok(mut e) => {
                e.msg = format!("IPAM {plugin} {}: {}", command.as_str(), e.msg);
                e
            }
            Err(_) => CniError::new(
                IPAM_FAILED,
                format!("IPAM {plugin} {} failed ({})", command.as_str(), out.status),
            )
            .with_details(format!(
                "stdout: {} stderr: {}",
                stdout.trim(),
                stderr.trim()
            )),
        });
    }
    if command != env::Command::Add {
        return Ok(None);
    }
    serde_json::from_str::<CniResult>(&stdout)
        .map(Some)
        .map_err(|e| {
            CniError::new(
                IPAM_FAILED,
                format!("IPAM {plugin} ADD: result is not a CNI result: {e}"),
            )
            .with_details(stdout.trim().to_string())
        })
}

/// What kxdp takes from an IPAM result: one IPv4 address and its gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The pod's address with the prefix length of its range.
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// Routes the IPAM configuration asked for (besides the default route).
    pub routes: Vec<Route>,
    pub dns: Dns,
}

impl Lease {
    /// kxdp is IPv4-only and gives a pod one address: anything else in the
    /// result is refused (the caller releases the lease). Without a gateway
    /// in the result, the first host of the range is the gateway (kxdp's
    /// convention).
    pub fn from_result(result: &CniResult) -> Result<Lease> {
        let bad = |msg: String| Err(CniError::new(IPAM_FAILED, msg));
        let mut v4 = Vec::new();
        for ip in &result.ips {
            match ip.address.parse::<IpNet>() {
                Ok(IpNet::V4(net)) => v4.push((net, ip)),
                Ok(IpNet::V6(_)) => {
                    return bad(format!(
                        "IPAM gave the IPv6 address {}: kxdp is IPv4-only",
                        ip.address
                    ))
                }
                Err(_) => return bad(format!("IPAM address {:?} is not ADDR/LEN", ip.address)),
            }
        }
        let (address, ip) = match v4.as_slice() {
            [one] => *one,
            [] => return bad("IPAM gave no IPv4 address".into()),
            _ => {
                return bad(format!(
                    "IPAM gave {} IPv4 addresses: kxdp gives a pod one",
                    v4.len()
                ))
            }
        };
        if address.prefix_len() > 30 || address.addr() == address.network() {
            return bad(format!(
                "IPAM address {address}: not a host address of a range with room for a gateway"
            ));
        }
        let gateway = match &ip.gateway {
            Some(gw) => match gw.parse::<Ipv4Addr>() {
                Ok(gw) => gw,
                Err(_) => return bad(format!("IPAM gateway {gw:?} is not an IPv4 address")),
            },
            None => Ipv4Addr::from(u32::from(address.network()) + 1),
        };
        if gateway == address.addr() || !address.contains(&gateway) {
            return bad(format!(
                "IPAM gateway {gateway} is not another address of {}",
                address.trunc()
            ));
        }
        Ok(Lease {
            address,
            gateway,
            routes: result.routes.clone(),
            dns: result.dns.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::IpConfig;

    fn result(ips: &[(&str, Option<&str>)]) -> CniResult {
        CniResult {
            cni_version: "1.0.0".into(),
            ips: ips
                .iter()
                .map(|(a, g)| IpConfig {
                    address: a.to_string(),
                    gateway: g.map(str::to_string),
                    interface: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn one_ipv4_lease() {
        let l = Lease::from_result(&result(&[("10.244.1.2/24", Some("10.244.1.1"))])).unwrap();
        assert_eq!(l.address.to_string(), "10.244.1.2/24");
        assert_eq!(l.gateway, Ipv4Addr::new(10, 244, 1, 1));
    }

    #[test]
    fn missing_gateway_is_the_first_host() {
        let l = Lease::from_result(&result(&[("10.244.7.9/24", None)])).unwrap();
        assert_eq!(l.gateway, Ipv4Addr::new(10, 244, 7, 1));
    }

    #[test]
    fn unusable_results_are_refused() {
        for ips in [
            vec![],
            vec![("fd00::2/64", None)],
            vec![("10.244.1.2/24", None), ("10.244.1.3/24", None)],
            vec![("10.244.1.2/32", None)],
            vec![("10.244.1.0/24", None)],
            vec![("10.244.1.2/24", Some("10.244.2.1"))],
            vec![("10.244.1.2/24", Some("10.244.1.2"))],
            vec![("10.244.1.2", None)],
        ] {
            let err = Lease::from_result(&result(&ips)).unwrap_err();
            assert_eq!(err.code, IPAM_FAILED, "{ips:?}");
        }
    }

    #[test]
    fn plugin_lookup_searches_cni_path_in_order() {
        let err = find_plugin("no-such-plugin", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert_eq!(err.code, INVALID_ENV);
        assert!(err.msg.contains("/nonexistent"), "{err}");
        // /bin/sh stands in for a plugin: the first directory holding it wins.
        let found = find_plugin(
            "sh",
            &[PathBuf::from("/nonexistent"), PathBuf::from("/bin")],
        );
        assert_eq!(found.unwrap(), PathBuf::from("/bin/sh"));
    }
}
