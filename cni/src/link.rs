//! Interfaces, addresses and routes, through iproute2's `ip` and `ethtool`
//! (and util-linux's `nsenter` to run them in the container's namespace).
//!
//! Why commands rather than rtnetlink: they are exactly the commands the
//! namespace lab (`scripts/lab.sh`) runs to build its pods, so a CNI pod and
//! a lab pod are the same thing by construction; they take a netns *path*
//! (`ip link add ... netns PATH`, `nsenter --net=PATH`), so the plugin never
//! switches its own threads' namespaces and stays free of unsafe code; the
//! offloads that AF_XDP needs off are `ethtool -K` features with no
//! rtnetlink equivalent; and an error is the tool's own message. The price is
//! a dozen short-lived processes per ADD, a few milliseconds.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::error::{CniError, Result, IO_FAILURE, SETUP_FAILED};

/// Where a command runs: this process's namespace (the node) or a container's.
#[derive(Clone, Copy, Debug)]
pub enum Ns<'a> {
    Host,
    Container(&'a Path),
}

/// A program by name: from `PATH`, else the usual system directories (a
/// runtime may run plugins with a minimal `PATH`).
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `program args` in `ns`; returns stdout. A failure is SETUP_FAILED
/// naming the command and carrying its stderr.
pub fn run(ns: Ns<'_>, program: &str, args: &[&str]) -> Result<String> {
    let exe = tool(program);
    let mut cmd = match ns {
        Ns::Host => Command::new(&exe),
        Ns::Container(path) => {
            let mut c = Command::new(tool("nsenter"));
            c.arg(format!("--net={}", path.display()))
                .arg("--")
                .arg(&exe);
            c
        }
    };
    cmd.args(args);
    let shown = match ns {
        Ns::Host => format!("{program} {}", args.join(" ")),
        Ns::Container(p) => format!("{program} {} (in {})", args.join(" "), p.display()),
    };
    let out = cmd
        .output()
        .map_err(|e| CniError::new(IO_FAILURE, format!("cannot run {shown}: {e}")))?;
    if !out.status.success() {
        return Err(CniError::new(
            SETUP_FAILED,
            format!(
                "`{shown}` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn ip(ns: Ns<'_>, args: &[&str]) -> Result<String> {
    run(ns, "ip", args)
}

/// One interface from `ip -j -d link show`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Link {
    pub ifindex: u32,
    pub ifname: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub mtu: u32,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub ifalias: Option<String>,
    #[serde(default)]
    pub linkinfo: Option<LinkInfo>,
    #[serde(default)]
    pub num_tx_queues: Option<u32>,
    #[serde(default)]
    pub num_rx_queues: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LinkInfo {
    #[serde(default)]
    pub info_kind: Option<String>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }

    pub fn is_veth(&self) -> bool {
        self.linkinfo
            .as_ref()
            .and_then(|i| i.info_kind.as_deref())
            .is_some_and(|k| k == "veth")
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> Result<T> {
    // `ip -j` prints nothing at all for an empty list on some versions.
    let text = if text.trim().is_empty() { "[]" } else { text };
    serde_json::from_str(text)
        .map_err(|e| CniError::new(SETUP_FAILED, format!("cannot read `{what}` output: {e}")))
}

/// Every interface of `ns`.
pub fn links(ns: Ns<'_>) -> Result<Vec<Link>> {
    parse_json(
        "ip -j -d link show",
        &ip(ns, &["-j", "-d", "link", "show"])?,
    )
}

/// Interface `name` of `ns`, if it exists.
pub fn link(ns: Ns<'_>, name: &str) -> Result<Option<Link>> {
    Ok(links(ns)?.into_iter().find(|l| l.ifname == name))
}

#[derive(Debug, Deserialize)]
struct AddrLink {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    family: String,
    local: String,
    prefixlen: u8,
}

/// The IPv4 addresses (with prefix length) of interface `dev` in `ns`.
pub fn ipv4_addrs(ns: Ns<'_>, dev: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    let all: Vec<AddrLink> =
        parse_json("ip -j addr show", &ip(ns, &["-j", "-4", "addr", "show"])?)?;
    Ok(all
        .into_iter()
        .filter(|l| l.ifname == dev)
        .flat_map(|l| l.addr_info)
        .filter(|a| a.family == "inet")
        .filter_map(|a| Some((a.local.parse().ok()?, a.prefixlen)))
        .collect())
}

/// An IPv4 route from `ip -j route show`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct RouteEntry {
    pub dst: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dev: Option<String>,
}

/// The main table's IPv4 routes in `ns` (`dst` "default" for 0.0.0.0/0).
pub fn ipv4_routes(ns: Ns<'_>) -> Result<Vec<RouteEntry>> {
    parse_json("ip -j route show", &ip(ns, &["-j", "-4", "route", "show"])?)
}

/// `ethtool -K dev <features...> off`.
pub fn offloads_off(ns: Ns<'_>, dev: &str, features: &[&str]) -> Result<()> {
    let mut args = vec!["-K", dev];
    for f in features {
        args.extend_from_slice(&[f, "off"]);
    }
    run(ns, "ethtool", &args).map(|_| ())
}

/// The features of `dev` that `ethtool -k` shows as on, among `names`
/// (ethtool's long names, e.g. "tx-checksumming").
pub fn offloads_on(ns: Ns<'_>, dev: &str, names: &[&str]) -> Result<Vec<String>> {
    let text = run(ns, "ethtool", &["-k", dev])?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, v)| names.contains(&k.trim()) && v.trim().starts_with("on"))
        .map(|(k, _)| k.trim().to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_json_parses() {
        let text = r#"[{"ifindex":2,"link_index":2,"ifname":"kxtest","flags":["BROADCAST","MULTICAST","UP"],
            "mtu":1450,"address":"02:3c:d4:a6:e2:30","linkinfo":{"info_kind":"veth"},
            "num_tx_queues":1,"num_rx_queues":1,"ifalias":"kxdp-cni:abc/eth0"}]"#;
        let links: Vec<Link> = parse_json("t", text).unwrap();
        assert!(links[0].is_veth() && links[0].is_up());
        assert_eq!(links[0].ifalias.as_deref(), Some("kxdp-cni:abc/eth0"));
        let none: Vec<Link> = parse_json("t", "\n").unwrap();
        assert!(none.is_empty());
        let routes: Vec<RouteEntry> = parse_json(
            "t",
            r#"[{"dst":"default","gateway":"10.244.1.1","dev":"eth0","flags":[]}]"#,
        )
        .unwrap();
        assert_eq!(routes[0].gateway.as_deref(), Some("10.244.1.1"));
    }

    #[test]
    fn missing_program_is_an_io_error() {
        let err = run(Ns::Host, "kxdp-no-such-program", &[]).unwrap_err();
        assert_eq!(err.code, IO_FAILURE);
    }

    #[test]
    fn failing_command_is_a_setup_error_with_stderr() {
        let err = run(Ns::Host, "sh", &["-c", "echo nope >&2; exit 3"]).unwrap_err();
        assert_eq!(err.code, SETUP_FAILED);
        assert!(err.msg.contains("nope"), "{err}");
    }
}
