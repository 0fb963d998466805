//! A policy table's port entry (`PolicyPorts`) in one encoding: control
//! writes it, the dataplane reads it, kxdpctl shows it.

use std::fmt;

use crate::dataplane as pb;
use crate::service::Protocol;

/// What a peer may use: a protocol's inclusive port range (`0..=65535`:
/// every port of it), or every protocol and port (`proto` `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpan {
    pub proto: Option<Protocol>,
    pub first: u16,
    pub last: u16,
}

impl PortSpan {
    /// Every protocol and port.
    pub const ANY: PortSpan = PortSpan {
        proto: None,
        first: 0,
        last: u16::MAX,
    };

    /// The entry on the wire, allowed by the table's policy `policy`.
    pub fn to_proto(self, policy: u32) -> pb::PolicyPorts {
        let (port, end_port) = match (self.proto, self.first, self.last) {
            (None, ..) | (_, 0, u16::MAX) => (0, 0),
            (_, f, l) if f == l => (u32::from(f), 0),
            (_, f, l) => (u32::from(f), u32::from(l)),
        };
        pb::PolicyPorts {
            protocol: self.proto.map_or(pb::Protocol::Unspecified, Into::into) as i32,
            port,
            end_port,
            policy,
        }
    }

    /// The entry read back: `Err((field, why))` for what the contract does
    /// not allow (a port without a protocol, a range that is not one).
    pub fn from_proto(pp: &pb::PolicyPorts) -> Result<PortSpan, (&'static str, String)> {
        let proto = Protocol::from_proto(pp.protocol)
            .map_err(|_| ("protocol", "must be TCP, UDP or unspecified".to_string()))?;
        let (first, last) = match (proto, pp.port, pp.end_port) {
            (None, 0, 0) => return Ok(PortSpan::ANY),
            (None, ..) => {
                return Err((
                    "port",
                    "a port needs a protocol (unspecified means every protocol and port)".into(),
                ))
            }
            (_, 0, 0) => (0, u16::MAX),
            (_, p @ 1..=65535, 0) => (p as u16, p as u16),
            (_, p @ 1..=65535, e @ 1..=65535) if e >= p => (p as u16, e as u16),
            (_, p, e) => {
                return Err((
                    "end_port",
                    format!("{p}..={e} is not a port range inside 1..=65535"),
                ))
            }
        };
        Ok(PortSpan { proto, first, last })
    }

    /// The IP protocol number, 0 for every protocol.
    pub fn ip_proto(self) -> u8 {
        self.proto.map_or(0, Protocol::ip_proto)
    }
}

/// `*` (everything), `TCP *` (every port), `TCP 80`, `UDP 81-90`.
impl fmt::Display for PortSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.proto, self.first, self.last) {
            (None, ..) => f.write_str("*"),
            (Some(p), 0, u16::MAX) => write!(f, "{p} *"),
            (Some(p), a, z) if a == z => write!(f, "{p} {a}"),
            (Some(p), a, z) => write!(f, "{p} {a}-{z}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_span_comes_back_as_it_went() {
        let tcp = Some(Protocol::Tcp);
        for span in [
            PortSpan::ANY,
            PortSpan {
                proto: tcp,
                first: 0,
                last: u16::MAX,
            },
            PortSpan {
                proto: tcp,
                first: 80,
                last: 80,
            },
            PortSpan {
                proto: Some(Protocol::Udp),
                first: 81,
                last: 90,
            },
            PortSpan {
                proto: tcp,
                first: 1,
                last: u16::MAX,
            },
        ] {
            assert_eq!(PortSpan::from_proto(&span.to_proto(3)), Ok(span), "{span}");
            assert_eq!(span.to_proto(3).policy, 3);
        }
    }

    #[test]
    fn what_the_contract_does_not_allow_is_refused_naming_the_field() {
        let pp = |protocol: pb::Protocol, port, end_port| pb::PolicyPorts {
            protocol: protocol as i32,
            port,
            end_port,
            policy: 0,
        };
        let field = |p| PortSpan::from_proto(&p).unwrap_err().0;
        assert_eq!(field(pp(pb::Protocol::Unspecified, 80, 0)), "port");
        assert_eq!(field(pp(pb::Protocol::Tcp, 90, 80)), "end_port");
        assert_eq!(field(pp(pb::Protocol::Tcp, 70_000, 0)), "end_port");
        assert_eq!(field(pp(pb::Protocol::Tcp, 0, 80)), "end_port");
        let mut bad = pp(pb::Protocol::Tcp, 80, 0);
        bad.protocol = 9;
        assert_eq!(field(bad), "protocol");
    }

    #[test]
    fn spans_read_as_kxdpctl_shows_them() {
        let s = |proto, first, last| PortSpan { proto, first, last }.to_string();
        assert_eq!(PortSpan::ANY.to_string(), "*");
        assert_eq!(s(Some(Protocol::Tcp), 0, u16::MAX), "TCP *");
        assert_eq!(s(Some(Protocol::Udp), 53, 53), "UDP 53");
        assert_eq!(s(Some(Protocol::Tcp), 81, 90), "TCP 81-90");
    }
}
