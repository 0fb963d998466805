//! The forwarding tables a worker reads: built off the hot path by the
//! dataplane's state manager, shared read-only (`Arc<Tables>`) and swapped
//! between batches, never mutated while a worker uses them.

use core::net::Ipv4Addr;

use hashbrown::HashMap;

use crate::wire::EthernetAddress;

/// Index of an attached interface; the same in every worker.
pub type PortId = u16;

/// Most ports a node can attach (uplink + pods, later the host interface).
pub const MAX_PORTS: usize = 1024;

/// An IPv4 prefix, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    /// A prefix from an address and length; host bits are cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Prefix {
        assert!(len <= 32, "prefix length {len} > 32");
        Prefix {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        }
    }

    #[inline]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl core::fmt::Display for Prefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[inline]
fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

/// Longest-prefix match: one exact-match table per distinct prefix length,
/// probed longest first. Pod CIDRs share one or two lengths, so a lookup is
/// one or two hash probes whatever the number of nodes.
#[derive(Debug, Clone)]
pub struct Lpm<V> {
    levels: Vec<(u8, HashMap<u32, V>)>,
}

impl<V> Default for Lpm<V> {
    fn default() -> Self {
        Lpm { levels: Vec::new() }
    }
}

impl<V> Lpm<V> {
    pub fn insert(&mut self, p: Prefix, v: V) {
        let i = match self.levels.iter().position(|(l, _)| *l == p.len) {
            Some(i) => i,
            None => {
                self.levels.push((p.len, HashMap::new()));
                self.levels.sort_by_key(|l| core::cmp::Reverse(l.0));
                self.levels.iter().position(|(l, _)| *l == p.len).unwrap()
            }
        };
        self.levels[i].1.insert(u32::from(p.addr), v);
    }

    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<&V> {
        let ip = u32::from(ip);
        self.levels
            .iter()
            .find_map(|(len, t)| t.get(&(ip & mask(*len))))
    }

    pub fn len(&self) -> usize {
        self.levels.iter().map(|(_, t)| t.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// This node's own parameters, as the pipeline needs them.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub underlay_ip: Ipv4Addr,
    pub vtep_mac: EthernetAddress,
    pub vni: u32,
    pub vxlan_port: u16,
    pub pod_cidr: Prefix,
    pub cluster_cidr: Prefix,
    pub gateway_ip: Ipv4Addr,
    pub pod_mtu: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Uplink,
    /// A pod's veth; `ip` is the only source address it may send from.
    Pod {
        ip: Ipv4Addr,
    },
    /// The host veth: the node's kernel is at `peer_mac`, with the gateway
    /// address, and reaches pods and ClusterIPs through it.
    Host {
        peer_mac: EthernetAddress,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct PortInfo {
    pub kind: PortKind,
    /// The node-side interface's MAC: the gateway MAC pods see, the outer
    /// source MAC on the uplink.
    pub mac: EthernetAddress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPod {
    pub port: PortId,
    pub mac: EthernetAddress,
}

/// A remote node's pod CIDR, reached through its VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRoute {
    pub vtep_ip: Ipv4Addr,
    /// Inner destination MAC (the remote VTEP's).
    pub vtep_mac: EthernetAddress,
    /// Outer destination MAC: the underlay next hop, resolved from the
    /// kernel's neighbour table; `None` until resolved.
    pub next_hop_mac: Option<EthernetAddress>,
}

/// Everything a worker consults per packet.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// `None` until the first sync: every frame is dropped as unconfigured.
    pub node: Option<NodeInfo>,
    pub uplink: Option<PortId>,
    pub host: Option<PortId>,
    pub ports: Vec<Option<PortInfo>>,
    pub local: HashMap<Ipv4Addr, LocalPod>,
    pub routes: Lpm<RemoteRoute>,
    /// Service frontends (ClusterIPs, NodePorts) and their backends.
    pub services: crate::services::Services,
    /// Different in every snapshot the engine publishes: conntrack entries
    /// remember the epoch in which their backend was last found serving,
    /// and flow cache entries the epoch they were learnt in: a snapshot
    /// must never change without a new epoch.
    pub epoch: u32,
}

impl Tables {
    #[inline]
    pub fn port(&self, p: PortId) -> Option<&PortInfo> {
        self.ports.get(p as usize).and_then(Option::as_ref)
    }

    /// Records an attached port's info.
    pub fn set_port(&mut self, p: PortId, info: PortInfo) {
        let i = p as usize;
        if self.ports.len() <= i {
            self.ports.resize(i + 1, None);
        }
        self.ports[i] = Some(info);
        match info.kind {
            PortKind::Uplink => self.uplink = Some(p),
            PortKind::Host { .. } => self.host = Some(p),
            PortKind::Pod { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_clears_host_bits_and_contains() {
        let p = Prefix::new(Ipv4Addr::new(10, 244, 1, 77), 24);
        assert_eq!(p.addr, Ipv4Addr::new(10, 244, 1, 0));
        assert!(p.contains(Ipv4Addr::new(10, 244, 1, 255)));
        assert!(!p.contains(Ipv4Addr::new(10, 244, 2, 0)));
        assert!(Prefix::new(Ipv4Addr::UNSPECIFIED, 0).contains(Ipv4Addr::BROADCAST));
        assert!(p.overlaps(&Prefix::new(Ipv4Addr::new(10, 244, 0, 0), 16)));
    }

    #[test]
    fn lpm_prefers_the_longest_prefix() {
        let mut t = Lpm::default();
        t.insert(Prefix::new(Ipv4Addr::new(10, 244, 0, 0), 16), 16);
        t.insert(Prefix::new(Ipv4Addr::new(10, 244, 2, 0), 24), 24);
        t.insert(Prefix::new(Ipv4Addr::new(10, 244, 2, 128), 25), 25);
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 2, 200)), Some(&25));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 2, 5)), Some(&24));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 9, 5)), Some(&16));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 245, 0, 1)), None);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn lpm_agrees_with_a_linear_scan() {
        // Property: for random prefixes and addresses, the LPM answer equals
        // the longest matching prefix found by brute force.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = Lpm::default();
        let mut all = Vec::new();
        for i in 0..300 {
            let len = [8u8, 16, 20, 24, 28, 32][(next() % 6) as usize];
            let p = Prefix::new(Ipv4Addr::from((next() as u32) & 0x0aff_ffff), len);
            t.insert(p, i);
            all.retain(|(q, _): &(Prefix, i32)| *q != p);
            all.push((p, i));
        }
        for _ in 0..20_000 {
            let ip = Ipv4Addr::from((next() as u32) & 0x0aff_ffff);
            let want = all
                .iter()
                .filter(|(p, _)| p.contains(ip))
                .max_by_key(|(p, _)| p.len)
                .map(|(_, v)| v);
            assert_eq!(t.lookup(ip), want, "{ip}");
        }
    }
}
