//! Network policy as the pipeline matches it: per local pod and direction,
//! a longest-prefix table from peer addresses to the ports they may use.
//!
//! The control process compiles Kubernetes NetworkPolicies (selectors,
//! ipBlocks with excepts, named ports, port ranges) into these tables, one
//! per pod and direction that some policy selects, so that a lookup is one
//! LPM probe per distinct prefix length and a scan of the matched peer's
//! few port ranges, whatever the number of policies. A new flow is decided
//! once; its verdict lives in its conntrack entry (`pipeline/nat.rs`).

use core::net::Ipv4Addr;

use hashbrown::HashMap;

use crate::prefix::{Lpm, Prefix};

/// Protocol number a [`PortRange`] uses for "every protocol".
pub const ANY_PROTO: u8 = 0;

/// Ports of one protocol a peer may use, and the policy that allows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// IP protocol (6, 17), or [`ANY_PROTO`]: every protocol and port.
    pub proto: u8,
    /// Inclusive; `0..=65535` is every port of `proto`.
    pub first: u16,
    pub last: u16,
    /// Index into [`Policies::names`].
    pub policy: u32,
}

impl PortRange {
    #[inline]
    fn allows(&self, proto: u8, port: Option<u16>) -> bool {
        if self.proto == ANY_PROTO {
            return true;
        }
        if self.proto != proto {
            return false;
        }
        match port {
            Some(p) => self.first <= p && p <= self.last,
            // A protocol without ports matches only "every port".
            None => self.first == 0 && self.last == u16::MAX,
        }
    }
}

/// One pod's peers for one direction.
#[derive(Debug, Clone, Default)]
pub struct RuleTable {
    /// Peer prefix -> (itself, `ranges[start..end]`).
    lpm: Lpm<(Prefix, u32, u32)>,
    ranges: Vec<PortRange>,
    /// The policies selecting the pod this way (indexes into
    /// [`Policies::names`]): what a denial counts against.
    pub selected_by: Vec<u32>,
}

/// The entry of a table that decided a flow: the peer prefix it matched
/// and, if allowed, the port range and policy allowing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    pub peer: Option<Prefix>,
    pub allowed: Option<PortRange>,
}

impl RuleTable {
    /// A table of the pod that `selected_by` select, with no peer yet.
    pub fn new(selected_by: Vec<u32>) -> RuleTable {
        RuleTable {
            selected_by,
            ..RuleTable::default()
        }
    }

    /// Adds a peer prefix with what it may use (empty: nothing, a hole in a
    /// shorter prefix). A prefix given twice keeps the last.
    pub fn insert(&mut self, peer: Prefix, ports: &[PortRange]) {
        let start = self.ranges.len() as u32;
        self.ranges.extend_from_slice(ports);
        self.lpm
            .insert(peer, (peer, start, self.ranges.len() as u32));
    }

    /// The policy that lets `peer` use `proto`/`port` (`None` for a
    /// protocol without ports), if any does.
    #[inline]
    pub fn allows(&self, peer: Ipv4Addr, proto: u8, port: Option<u16>) -> Option<u32> {
        self.matching(peer, proto, port).allowed.map(|r| r.policy)
    }

    /// What decides `peer` using `proto`/`port`: its longest prefix and
    /// the first of its ranges allowing it.
    #[inline]
    pub fn matching(&self, peer: Ipv4Addr, proto: u8, port: Option<u16>) -> Matched {
        let Some(&(prefix, start, end)) = self.lpm.lookup(peer) else {
            return Matched {
                peer: None,
                allowed: None,
            };
        };
        Matched {
            peer: Some(prefix),
            allowed: self.ranges[start as usize..end as usize]
                .iter()
                .find(|r| r.allows(proto, port))
                .copied(),
        }
    }

    pub fn peers(&self) -> usize {
        self.lpm.len()
    }
}

/// A pod's tables; `None`: no policy selects it for that direction, so it
/// is not isolated.
#[derive(Debug, Clone, Default)]
pub struct PodPolicy {
    pub ingress: Option<RuleTable>,
    pub egress: Option<RuleTable>,
}

/// Which way a flow crosses a pod's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// What a policy check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No local pod of the flow is isolated: nothing to track.
    Unrestricted,
    /// An isolated local pod is in it and allows it: track the flow, so
    /// that its replies pass.
    Allowed(Allowing),
    Denied(Direction),
}

/// The policies that allowed a flow, per direction (indexes into
/// [`Policies::names`]); `None` where that way is not isolated, or the
/// node itself is the source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allowing {
    pub egress: Option<u32>,
    pub ingress: Option<u32>,
}

/// A policy's new flows on one worker since a snapshot: `allowed` (the
/// first rule allowing it in its direction is that policy's, as
/// [`Allowing`] names it) and `denied` (counted against every policy isolating the pod that denied
/// it; a retransmitted SYN counts again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyFlows {
    pub allowed: u64,
    pub denied: u64,
}

/// A worker's last policy decision, with what it was made on: what a
/// trace shows of it (`seq` tells a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decided {
    pub seq: u64,
    pub egress_src: Ipv4Addr,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub port: Option<u16>,
    pub from_node: bool,
    pub decision: Decision,
}

impl Default for Decided {
    fn default() -> Decided {
        Decided {
            seq: 0,
            egress_src: Ipv4Addr::UNSPECIFIED,
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            proto: 0,
            port: None,
            from_node: false,
            decision: Decision::Unrestricted,
        }
    }
}

impl core::ops::AddAssign for PolicyFlows {
    fn add_assign(&mut self, o: PolicyFlows) {
        self.allowed += o.allowed;
        self.denied += o.denied;
    }
}

/// The node's local pods that some policy isolates, by address.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub pods: HashMap<Ipv4Addr, PodPolicy>,
    /// Policy names ("namespace/name"), indexed by [`PortRange::policy`].
    pub names: Vec<String>,
}

impl Policies {
    /// The table that decides `dir` for a flow from `egress_src` to `dst`
    /// (the source's egress, the destination's ingress), if isolated.
    #[inline]
    pub fn table(&self, dir: Direction, egress_src: Ipv4Addr, dst: Ipv4Addr) -> Option<&RuleTable> {
        match dir {
            Direction::Egress => self.pods.get(&egress_src)?.egress.as_ref(),
            Direction::Ingress => self.pods.get(&dst)?.ingress.as_ref(),
        }
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Whether `ip` is a local pod isolated in some direction.
    #[inline]
    pub fn isolated(&self, ip: Ipv4Addr) -> bool {
        !self.pods.is_empty() && self.pods.contains_key(&ip)
    }

    /// Decides a new flow `src -> dst` (`port`: the destination port, `None`
    /// for a protocol without ports), as its packets show it after any
    /// service DNAT and SNAT: `egress_src` is the source before SNAT (the
    /// pod whose egress policy applies), `src` after it (what the
    /// destination's ingress policy sees). `from_node`: the source is this
    /// node itself, which always reaches its own pods (the kubelet's
    /// probes), as the Kubernetes API documents.
    pub fn decide(
        &self,
        egress_src: Ipv4Addr,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        port: Option<u16>,
        from_node: bool,
    ) -> Decision {
        if self.pods.is_empty() {
            return Decision::Unrestricted;
        }
        let mut allowing = Allowing::default();
        if let Some(t) = self.table(Direction::Egress, egress_src, dst) {
            match t.allows(dst, proto, port) {
                Some(id) => allowing.egress = Some(id),
                None => return Decision::Denied(Direction::Egress),
            }
        }
        if let Some(t) = self.table(Direction::Ingress, egress_src, dst) {
            match t.allows(src, proto, port) {
                Some(id) => allowing.ingress = Some(id),
                None if from_node => {}
                None => return Decision::Denied(Direction::Ingress),
            }
        }
        // A pod isolated only the other way still needs the flow tracked:
        // its replies are that way.
        if self.isolated(egress_src) || self.isolated(dst) {
            Decision::Allowed(allowing)
        } else {
            Decision::Unrestricted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn pfx(s: &str) -> Prefix {
        let (a, l) = s.split_once('/').unwrap();
        Prefix::new(ip(a), l.parse().unwrap())
    }

    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ICMP: u8 = 1;

    fn range(proto: u8, first: u16, last: u16, policy: u32) -> PortRange {
        PortRange {
            proto,
            first,
            last,
            policy,
        }
    }

    /// ipBlock 10.0.0.0/8 except 10.1.0.0/16 (TCP 80-90, policy 0), and a
    /// pod 10.1.2.3 inside the hole allowed UDP 53 by policy 1.
    fn table() -> RuleTable {
        let mut t = RuleTable::default();
        t.insert(pfx("10.0.0.0/8"), &[range(TCP, 80, 90, 0)]);
        t.insert(pfx("10.1.0.0/16"), &[]);
        t.insert(pfx("10.1.2.3/32"), &[range(UDP, 53, 53, 1)]);
        t
    }

    #[test]
    fn longest_match_decides_and_excepts_are_holes() {
        let t = table();
        assert_eq!(t.allows(ip("10.9.9.9"), TCP, Some(80)), Some(0));
        assert_eq!(t.allows(ip("10.9.9.9"), TCP, Some(90)), Some(0));
        assert_eq!(t.allows(ip("10.9.9.9"), TCP, Some(91)), None);
        assert_eq!(t.allows(ip("10.9.9.9"), TCP, Some(79)), None);
        assert_eq!(t.allows(ip("10.9.9.9"), UDP, Some(80)), None);
        // The except hole, at its first and last address.
        assert_eq!(t.allows(ip("10.1.0.0"), TCP, Some(80)), None);
        assert_eq!(t.allows(ip("10.1.255.255"), TCP, Some(80)), None);
        // Just outside the hole.
        assert_eq!(t.allows(ip("10.2.0.0"), TCP, Some(80)), Some(0));
        assert_eq!(t.allows(ip("10.0.255.255"), TCP, Some(80)), Some(0));
        // A pod inside the hole, by its own rule only.
        assert_eq!(t.allows(ip("10.1.2.3"), UDP, Some(53)), Some(1));
        assert_eq!(t.allows(ip("10.1.2.3"), TCP, Some(80)), None);
        // Outside every prefix.
        assert_eq!(t.allows(ip("192.168.0.1"), TCP, Some(80)), None);
    }

    #[test]
    fn protocols_without_ports_need_every_port_or_every_protocol() {
        let mut t = RuleTable::default();
        t.insert(pfx("10.0.0.0/8"), &[range(TCP, 0, u16::MAX, 0)]);
        t.insert(pfx("10.0.0.1/32"), &[range(ANY_PROTO, 0, 0, 1)]);
        assert_eq!(t.allows(ip("10.0.0.2"), TCP, Some(1)), Some(0));
        assert_eq!(t.allows(ip("10.0.0.2"), ICMP, None), None);
        assert_eq!(t.allows(ip("10.0.0.1"), ICMP, None), Some(1));
        assert_eq!(t.allows(ip("10.0.0.1"), UDP, Some(9)), Some(1));
    }

    #[test]
    fn decisions_check_egress_then_ingress_and_exempt_the_node() {
        let a = ip("10.244.1.2");
        let b = ip("10.244.1.3");
        let c = ip("10.244.1.4");
        let node = ip("10.244.1.1");
        let mut p = Policies::default();
        assert_eq!(
            p.decide(a, a, b, TCP, Some(80), false),
            Decision::Unrestricted
        );
        // b: ingress only from a on TCP 80; a: egress anywhere on TCP.
        let mut only_a = RuleTable::default();
        only_a.insert(Prefix::new(a, 32), &[range(TCP, 80, 80, 3)]);
        p.pods.insert(
            b,
            PodPolicy {
                ingress: Some(only_a),
                egress: None,
            },
        );
        assert_eq!(
            p.decide(a, a, b, TCP, Some(80), false),
            Decision::Allowed(Allowing {
                egress: None,
                ingress: Some(3)
            })
        );
        assert_eq!(
            p.decide(c, c, b, TCP, Some(80), false),
            Decision::Denied(Direction::Ingress)
        );
        assert_eq!(
            p.decide(a, a, b, TCP, Some(81), false),
            Decision::Denied(Direction::Ingress)
        );
        // The node reaches its pods whatever their policy says.
        assert_eq!(
            p.decide(node, node, b, TCP, Some(22), true),
            Decision::Allowed(Allowing::default())
        );
        // b's own flows are not restricted (egress not isolated), but they
        // are tracked: their replies come back through b's ingress.
        assert_eq!(
            p.decide(b, b, c, UDP, Some(9), false),
            Decision::Allowed(Allowing::default())
        );
        // a and c are not isolated at all.
        assert_eq!(
            p.decide(a, a, c, TCP, Some(80), false),
            Decision::Unrestricted
        );
        // Egress denial wins before ingress is looked at.
        let mut deny_all = RuleTable::default();
        deny_all.insert(pfx("0.0.0.0/0"), &[]);
        p.pods.insert(
            a,
            PodPolicy {
                ingress: None,
                egress: Some(deny_all),
            },
        );
        assert_eq!(
            p.decide(a, a, b, TCP, Some(80), false),
            Decision::Denied(Direction::Egress)
        );
        // SNAT: egress is the client's, ingress sees the SNAT address.
        assert_eq!(
            p.decide(c, node, b, TCP, Some(80), false),
            Decision::Denied(Direction::Ingress)
        );
    }
}
