//! Validation helpers every input edge shares (the cluster file, services,
//! pods registered at run time): problems named by the path of the field,
//! collected rather than stopping at the first, and the checks of names,
//! addresses, ranges and interface names.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::conventions::Mac;

pub const PORT_RANGE: std::ops::RangeInclusive<i64> = 1..=65_535;

/// One thing wrong with an input (a cluster file, a service, a request), at a path such as `nodes[1].pod_cidr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Empty for whole-file (YAML structure) errors.
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a cluster file; displays one per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn result(problems: Vec<Problem>) -> Result<(), Problems> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Problems(problems))
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Invalid input at the API edge: one INVALID_ARGUMENT, one problem per line.
impl From<Problems> for tonic::Status {
    fn from(problems: Problems) -> tonic::Status {
        tonic::Status::invalid_argument(problems.to_string())
    }
}

/// Names become socket file names, pod keys and log fields: keep them DNS
/// labels (RFC 1123), as Kubernetes does for node and pod names.
pub(crate) fn check_name(path: &str, name: &str, p: &mut Vec<Problem>) -> bool {
    if name.is_empty() {
        p.push(Problem::new(path, "must not be empty"));
        return false;
    }
    if !is_dns_label(name) {
        p.push(Problem::new(
            path,
            format!(
                "{name:?} is not a DNS label (a-z, 0-9 and '-', starting and ending with a letter or digit, at most 63 characters)"
            ),
        ));
        return false;
    }
    true
}

pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// An interface name by Linux's rules ([`kxdp_proto::is_ifname`]); false
/// (and a problem at `path`) when it is not one.
pub(crate) fn check_ifname(path: &str, name: &str, p: &mut Vec<Problem>) -> bool {
    let ok = kxdp_proto::is_ifname(name);
    if !ok {
        p.push(Problem::new(
            path,
            format!(
                "{name:?} is not a Linux interface name (1-15 characters, no '/', ':' or spaces)"
            ),
        ));
    }
    ok
}

/// A unicast MAC (an interface's own address), or a problem at `path`.
pub(crate) fn parse_unicast_mac(path: &str, text: &str, p: &mut Vec<Problem>) -> Option<Mac> {
    match text.parse::<Mac>() {
        Ok(mac) if mac.is_multicast() || mac.is_zero() => {
            p.push(Problem::new(path, format!("{mac} is not a unicast MAC")));
            None
        }
        Ok(mac) => Some(mac),
        Err(e) => {
            p.push(Problem::new(path, format!("{text:?} is {e}")));
            None
        }
    }
}

pub(crate) fn parse_ip(path: &str, text: &str, p: &mut Vec<Problem>) -> Option<Ipv4Addr> {
    match text.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            p.push(Problem::new(
                path,
                format!("{text:?} is not an IPv4 address"),
            ));
            None
        }
    }
}

/// Parses `a.b.c.d/len` and insists on the canonical form: host bits set
/// usually mean a typo, and silently truncating would hide it.
pub(crate) fn parse_cidr(path: &str, text: &str, p: &mut Vec<Problem>) -> Option<Ipv4Net> {
    let net: Ipv4Net = match text.parse() {
        Ok(net) => net,
        Err(_) => {
            p.push(Problem::new(
                path,
                format!("{text:?} is not an IPv4 CIDR (a.b.c.d/len)"),
            ));
            return None;
        }
    };
    if net.trunc() != net {
        p.push(Problem::new(
            path,
            format!("{net} has host bits set; did you mean {}?", net.trunc()),
        ));
        return None;
    }
    Some(net)
}

pub(crate) fn in_range(
    path: &str,
    value: i64,
    range: std::ops::RangeInclusive<i64>,
    p: &mut Vec<Problem>,
) -> Option<i64> {
    if range.contains(&value) {
        Some(value)
    } else {
        p.push(Problem::new(
            path,
            format!(
                "{value} is out of range {}..={}",
                range.start(),
                range.end()
            ),
        ));
        None
    }
}
