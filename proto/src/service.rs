//! A service as both servers hold it once checked: typed, defaults filled
//! in. Each parses and validates the proto its own way (the control process
//! lists every problem, the dataplane names the first bad field); both write
//! it back with [`Service::to_proto`], and the enums' proto numbers and
//! Kubernetes words are spelled here once.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::dataplane as pb;

/// Kubernetes' default and maximum ClientIP affinity timeouts; the proto's
/// `affinity_timeout_s: 0` means the default.
pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// Why `ip` cannot be an endpoint outside the pod network, if it cannot:
/// what the API server refuses for EndpointSlices. (Both daemons also
/// refuse ClusterIPs.)
pub fn unroutable_endpoint(ip: Ipv4Addr) -> Option<&'static str> {
    (ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast())
    .then_some(
        "not a routable endpoint address (unspecified, loopback, link-local, multicast or broadcast)",
    )
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SessionAffinity {
    #[default]
    None,
    #[serde(rename = "ClientIP")]
    ClientIp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub ports: Vec<ServicePort>,
    pub session_affinity: SessionAffinity,
    /// Seconds; means something with ClientIP affinity only.
    pub affinity_timeout_s: u32,
    pub external_traffic_policy: TrafficPolicy,
    pub endpoints: Vec<Endpoint>,
    /// `spec.externalIPs`: served like NodePorts on every port.
    pub external_ips: Vec<Ipv4Addr>,
    /// A LoadBalancer's ingress IPs: served as `external_ips` are.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// Local: ClusterIP traffic goes to this node's endpoints only.
    pub internal_traffic_policy: TrafficPolicy,
    /// With external_traffic_policy Local: kube-proxy's health check port.
    pub health_check_node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: u16,
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// The node whose pod CIDR holds `ip`.
    pub node: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Service {
    /// The proto form: every default spelled out.
    pub fn to_proto(&self) -> pb::Service {
        pb::Service {
            name: self.name.clone(),
            cluster_ip: self.cluster_ip.to_string(),
            ports: self
                .ports
                .iter()
                .map(|p| pb::ServicePort {
                    name: p.name.clone(),
                    protocol: pb::Protocol::from(p.protocol) as i32,
                    port: u32::from(p.port),
                    target_port: u32::from(p.target_port),
                    node_port: p.node_port.map_or(0, u32::from),
                })
                .collect(),
            session_affinity: pb::SessionAffinity::from(self.session_affinity) as i32,
            affinity_timeout_s: self.affinity_timeout_s,
            external_traffic_policy: pb::TrafficPolicy::from(self.external_traffic_policy) as i32,
            endpoints: self
                .endpoints
                .iter()
                .map(|e| pb::Endpoint {
                    ip: e.ip.to_string(),
                    node: e.node.clone(),
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                })
                .collect(),
            external_ips: self.external_ips.iter().map(ToString::to_string).collect(),
            load_balancer_ips: self
                .load_balancer_ips
                .iter()
                .map(ToString::to_string)
                .collect(),
            internal_traffic_policy: pb::TrafficPolicy::from(self.internal_traffic_policy) as i32,
            health_check_node_port: self.health_check_node_port.map_or(0, u32::from),
        }
    }

    /// Every address outside clients reach the service at besides the
    /// nodes' NodePorts: its external IPs, then its LoadBalancer IPs.
    pub fn outside_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.external_ips
            .iter()
            .chain(&self.load_balancer_ips)
            .copied()
    }

    /// The ClientIP affinity timeout in seconds; `None`: no affinity.
    pub fn affinity(&self) -> Option<u32> {
        (self.session_affinity == SessionAffinity::ClientIp).then_some(self.affinity_timeout_s)
    }
}

impl Protocol {
    /// From the proto's number: `Ok(None)` for PROTOCOL_UNSPECIFIED, `Err`
    /// for a number the contract does not define.
    pub fn from_proto(v: i32) -> Result<Option<Protocol>, prost::UnknownEnumValue> {
        Ok(match pb::Protocol::try_from(v)? {
            pb::Protocol::Unspecified => None,
            pb::Protocol::Tcp => Some(Protocol::Tcp),
            pb::Protocol::Udp => Some(Protocol::Udp),
        })
    }

    /// The IP protocol number.
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl SessionAffinity {
    /// `None` for a number the contract does not define.
    pub fn from_proto(v: i32) -> Option<SessionAffinity> {
        match pb::SessionAffinity::try_from(v).ok()? {
            pb::SessionAffinity::None => Some(SessionAffinity::None),
            pb::SessionAffinity::ClientIp => Some(SessionAffinity::ClientIp),
        }
    }
}

impl TrafficPolicy {
    /// `None` for a number the contract does not define.
    pub fn from_proto(v: i32) -> Option<TrafficPolicy> {
        match pb::TrafficPolicy::try_from(v).ok()? {
            pb::TrafficPolicy::Cluster => Some(TrafficPolicy::Cluster),
            pb::TrafficPolicy::Local => Some(TrafficPolicy::Local),
        }
    }
}

impl From<Protocol> for pb::Protocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Udp => pb::Protocol::Udp,
        }
    }
}

impl From<SessionAffinity> for pb::SessionAffinity {
    fn from(a: SessionAffinity) -> Self {
        match a {
            SessionAffinity::None => pb::SessionAffinity::None,
            SessionAffinity::ClientIp => pb::SessionAffinity::ClientIp,
        }
    }
}

impl From<TrafficPolicy> for pb::TrafficPolicy {
    fn from(p: TrafficPolicy) -> Self {
        match p {
            TrafficPolicy::Cluster => pb::TrafficPolicy::Cluster,
            TrafficPolicy::Local => pb::TrafficPolicy::Local,
        }
    }
}

/// The Kubernetes words, as YAML spells them.
impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

impl fmt::Display for SessionAffinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SessionAffinity::None => "None",
            SessionAffinity::ClientIp => "ClientIP",
        })
    }
}

impl fmt::Display for TrafficPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_the_proto() {
        for p in [Protocol::Tcp, Protocol::Udp] {
            assert_eq!(
                Protocol::from_proto(pb::Protocol::from(p) as i32),
                Ok(Some(p))
            );
        }
        assert_eq!(Protocol::from_proto(0), Ok(None));
        assert!(Protocol::from_proto(9).is_err());
        for a in [SessionAffinity::None, SessionAffinity::ClientIp] {
            let v = pb::SessionAffinity::from(a) as i32;
            assert_eq!(SessionAffinity::from_proto(v), Some(a));
        }
        for t in [TrafficPolicy::Cluster, TrafficPolicy::Local] {
            let v = pb::TrafficPolicy::from(t) as i32;
            assert_eq!(TrafficPolicy::from_proto(v), Some(t));
        }
        assert_eq!(SessionAffinity::from_proto(9), None);
        assert_eq!(TrafficPolicy::from_proto(9), None);
    }
}
