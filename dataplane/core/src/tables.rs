//! The forwarding tables a worker reads: built off the hot path by the
//! dataplane's state manager, shared read-only (`Arc<Tables>`) and swapped
//! between batches, never mutated while a worker uses them.

use core::net::Ipv4Addr;

use hashbrown::HashMap;

use crate::prefix::{Lpm, Prefix};
use crate::wire::EthernetAddress;

/// Index of an attached interface; the same in every worker.
pub type PortId = u16;

/// Most ports a node can attach (uplink + pods, later the host interface).
pub const MAX_PORTS: usize = 1024;

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
    /// ClusterIPs: never egress, even without a frontend.
    pub service_cidr: Option<Prefix>,
    /// Pod egress is SNATed to `underlay_ip` (walk 7).
    pub masquerade: bool,
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

/// How the kernel reaches a destination outside the cluster over the
/// uplink (walk 7): through a gateway, or on the uplink's own subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressHop {
    /// Its MAC; `None` until the kernel resolved it.
    Gateway(Option<EthernetAddress>),
    /// On-link: the destination's own MAC, from [`Tables::neighbours`].
    OnLink,
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
    /// Remote nodes by VTEP (underlay) address, with the pod CIDR their
    /// VXLAN frames may carry inner sources from: decapsulation accepts
    /// nothing else. Kept with `routes` by [`Tables::add_remote`].
    pub vteps: HashMap<Ipv4Addr, Prefix>,
    /// The kernel's routes over the uplink, for egress (walk 7).
    pub egress: Lpm<EgressHop>,
    /// The kernel's resolved neighbours on the uplink, for on-link egress.
    pub neighbours: HashMap<Ipv4Addr, EthernetAddress>,
    /// Egress destinations that keep the pod's address (with masquerade);
    /// the only outside sources the uplink takes for a pod.
    pub non_masquerade: Vec<Prefix>,
    /// The node's addresses that NodePorts open on (`node_port_addresses`;
    /// the underlay address by default): the kernel's own connections to
    /// them come through the host port from that address.
    pub node_port_addrs: Vec<Ipv4Addr>,
    /// Service frontends (ClusterIPs, NodePorts) and their backends.
    pub services: crate::services::Services,
    /// Network policy of the local pods that some policy isolates.
    pub policy: crate::policy::Policies,
    /// Different in every snapshot the engine publishes: conntrack entries
    /// remember the epoch in which their backend was last found serving,
    /// and flow cache entries the epoch they were learnt in: a snapshot
    /// must never change without a new epoch.
    pub epoch: u32,
    /// The state generation these tables were built from (traces show it).
    pub generation: u64,
}

impl Tables {
    #[inline]
    pub fn port(&self, p: PortId) -> Option<&PortInfo> {
        self.ports.get(p as usize).and_then(Option::as_ref)
    }

    /// Adds a remote node: the route to its pod CIDR through its VTEP, and
    /// the VTEP as the one sender of frames from that CIDR.
    pub fn add_remote(&mut self, pod_cidr: Prefix, r: RemoteRoute) {
        self.routes.insert(pod_cidr, r);
        self.vteps.insert(r.vtep_ip, pod_cidr);
    }

    /// Whether a pod's packet to `dst` leaves through the uplink SNATed to
    /// this node's address: outside the cluster and service CIDRs, not
    /// this node's own address, not exempt, and routed over the uplink.
    pub fn masquerades(&self, node: &NodeInfo, dst: Ipv4Addr) -> bool {
        node.masquerade
            && self.is_egress(node, dst)
            && !self.non_masquerade.iter().any(|p| p.contains(dst))
    }

    /// Whether an outside `src` may reach a pod by its own address through
    /// the uplink: only a destination whose egress keeps pod addresses.
    pub fn unmasqueraded_source(&self, node: &NodeInfo, src: Ipv4Addr) -> bool {
        self.is_egress(node, src)
            && (!node.masquerade || self.non_masquerade.iter().any(|p| p.contains(src)))
    }

    /// Whether `dst` is outside the cluster, reached over the uplink.
    pub fn is_egress(&self, node: &NodeInfo, dst: Ipv4Addr) -> bool {
        !node.cluster_cidr.contains(dst)
            && !node.service_cidr.is_some_and(|c| c.contains(dst))
            && !self.is_node_addr(node, dst)
            && self.egress.lookup(dst).is_some()
    }

    /// Whether `a` is one of the node's own addresses that kxdp knows: the
    /// underlay address or a NodePort address.
    #[inline]
    pub fn is_node_addr(&self, node: &NodeInfo, a: Ipv4Addr) -> bool {
        a == node.underlay_ip || self.node_port_addrs.contains(&a)
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
