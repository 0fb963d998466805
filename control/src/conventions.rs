//! Naming and addressing conventions, in one place.
//!
//! Everything here is derived, never configured per pod, so that the control
//! process, the lab script (through `kxdpctl plan-pods`) and the dataplane
//! agree without a lookup table:
//!
//! | thing | rule | example |
//! |---|---|---|
//! | pod MAC | `0a:58:` + the 4 IP bytes (as the CNI bridge plugin does) | 10.244.1.2 → `0a:58:0a:f4:01:02` |
//! | node-side veth | `kx` + 8 lowercase hex digits of the pod IP | 10.244.1.2 → `kx0af40102` |
//! | default VTEP MAC | `0e:58:` + the 4 underlay IP bytes | 172.30.0.11 → `0e:58:ac:1e:00:0b` |
//! | pod gateway | first host address of the node's pod CIDR | 10.244.1.0/24 → 10.244.1.1 |
//! | pod MTU | underlay MTU − 50 (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8) | 1500 → 1450 |
//! | dataplane socket | `<dataplane dir>/<node name>.sock` | `/run/kxdp/n1.sock` |

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::Ipv4Net;

/// What the pod MTU loses to VXLAN inside the underlay MTU.
pub use kxdp_proto::VXLAN_OVERHEAD;

/// Uplink used when a node does not name one.
pub const DEFAULT_UPLINK: &str = "eth0";

/// Directory holding the dataplane sockets when `--dataplane-dir` is not
/// given: where `kxdp-dataplane` listens by default.
pub const DEFAULT_DATAPLANE_DIR: &str = kxdp_proto::DEFAULT_RUN_DIR;

/// A MAC address. Displays as lowercase colon-separated hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Group (multicast/broadcast) bit of the first octet.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }

    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// The text was not six colon-separated hex octets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a MAC address (six colon-separated hex octets, e.g. 0e:58:ac:1e:00:0b)")]
pub struct ParseMacError;

impl FromStr for Mac {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(ParseMacError)?;
            // from_str_radix alone would accept a sign ("+a").
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ParseMacError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseMacError)?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError);
        }
        Ok(Mac(out))
    }
}

/// A pod's eth0 MAC: `0a:58:` + its IP bytes (locally administered, unicast).
pub fn pod_mac(ip: Ipv4Addr) -> Mac {
    let [a, b, c, d] = ip.octets();
    Mac([0x0a, 0x58, a, b, c, d])
}

/// The node-side veth name of a pod: `kx` + 8 hex digits of its IP, 10
/// characters, inside Linux's 15-character limit and unique per pod IP.
pub fn pod_ifname(ip: Ipv4Addr) -> String {
    format!("kx{:08x}", u32::from(ip))
}

/// The dataplane's end of every node's host veth pair (walk 5). Its peer,
/// [`HOST_PEER`], is the node kernel's side: it carries the pod gateway
/// address, and routes to the cluster and service CIDRs point at it.
pub const HOST_INTERFACE: &str = "kxhost";
/// The kernel's end of the host veth pair.
pub const HOST_PEER: &str = "kxnode";

/// A node's VTEP MAC when the file does not give one: `0e:58:` + underlay IP bytes.
pub fn default_vtep_mac(underlay_ip: Ipv4Addr) -> Mac {
    let [a, b, c, d] = underlay_ip.octets();
    Mac([0x0e, 0x58, a, b, c, d])
}

/// The pods' default gateway: the first host address of the node's pod CIDR.
/// Validation guarantees a prefix of at most /30, so this is a host address.
pub fn gateway(pod_cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr.network()).wrapping_add(1))
}

/// The pods' MTU: room for the VXLAN headers inside the underlay MTU.
pub fn pod_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(VXLAN_OVERHEAD)
}

/// A node's dataplane socket when the file does not give one.
pub fn default_socket(dataplane_dir: &Path, node: &str) -> PathBuf {
    kxdp_proto::dataplane_socket(dataplane_dir, node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_mac_is_0a58_plus_ip() {
        let mac = pod_mac(Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(mac.to_string(), "0a:58:0a:f4:01:02");
        assert!(!mac.is_multicast());
    }

    #[test]
    fn pod_ifname_is_kx_plus_hex_ip() {
        assert_eq!(pod_ifname(Ipv4Addr::new(10, 244, 1, 2)), "kx0af40102");
        assert_eq!(pod_ifname(Ipv4Addr::new(10, 244, 255, 254)), "kx0af4fffe");
        assert!(pod_ifname(Ipv4Addr::new(255, 255, 255, 255)).len() <= 15);
    }

    #[test]
    fn default_vtep_mac_is_0e58_plus_underlay_ip() {
        let mac = default_vtep_mac(Ipv4Addr::new(172, 30, 0, 11));
        assert_eq!(mac.to_string(), "0e:58:ac:1e:00:0b");
    }

    #[test]
    fn gateway_is_first_host() {
        let net: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        assert_eq!(gateway(net), Ipv4Addr::new(10, 244, 1, 1));
    }

    #[test]
    fn pod_mtu_leaves_room_for_vxlan() {
        assert_eq!(pod_mtu(1500), 1450);
        assert_eq!(pod_mtu(9000), 8950);
    }

    #[test]
    fn default_socket_is_dir_slash_name() {
        assert_eq!(
            default_socket(Path::new("/run/kxdp"), "n1"),
            PathBuf::from("/run/kxdp/n1.sock")
        );
    }

    #[test]
    fn mac_parses_and_rejects() {
        let mac: Mac = "0E:58:ac:1e:00:0b".parse().unwrap();
        assert_eq!(mac, Mac([0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0b]));
        for bad in [
            "",
            "0e:58:ac:1e:00",
            "0e:58:ac:1e:00:0b:00",
            "0e-58-ac-1e-00-0b",
            "0e:58:ac:1e:00:g0",
            "e:58:ac:1e:00:0b",
            "+e:58:ac:1e:00:0b",
        ] {
            assert_eq!(bad.parse::<Mac>(), Err(ParseMacError), "{bad}");
        }
        assert!("01:00:5e:00:00:01".parse::<Mac>().unwrap().is_multicast());
    }
}
