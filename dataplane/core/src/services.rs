//! Service frontends as the pipeline looks them up: one per (address,
//! protocol, port) a client can send to — each ClusterIP port, and each
//! NodePort on this node's underlay address — with its backends and the
//! Maglev tables that pick among them.
//!
//! Built by the engine from the desired state (off the hot path, may
//! allocate) and carried in the `Tables` snapshot.

use core::net::Ipv4Addr;

use hashbrown::HashMap;

use crate::maglev::Maglev;

/// What a client addresses: destination address, protocol, port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    pub addr: Ipv4Addr,
    pub proto: u8,
    pub port: u16,
}

/// One endpoint of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// New flows may go here.
    pub ready: bool,
    /// Existing flows may stay here (ready, or terminating but serving).
    pub serving: bool,
    /// Runs on this node (for externalTrafficPolicy: Local).
    pub local: bool,
}

impl Backend {
    /// A stable identity for hashing (Maglev permutations, affinity).
    pub fn id(&self) -> u64 {
        (u32::from(self.ip) as u64) << 16 | self.port as u64
    }
}

#[derive(Debug, Clone)]
pub struct Frontend {
    /// Index of the service in `Services::names`, for counters and listing.
    pub service: u32,
    /// The ClusterIP and port, also for NodePort frontends: replies carry
    /// the frontend's own address and port back.
    pub key: FrontendKey,
    /// Backends sorted by id; conntrack entries refer to them by id.
    pub backends: Vec<Backend>,
    /// Picks a new flow's backend: slot -> index into `backends`. Built over
    /// ready backends only (local ones only when `local_only`).
    pub maglev: Maglev,
    pub maglev_index: Vec<u32>,
    /// ClientIP session affinity timeout.
    pub affinity_ns: Option<u64>,
    /// A NodePort frontend (reached on the node's underlay address).
    pub node_port: bool,
    /// externalTrafficPolicy Local: local backends only, no SNAT.
    pub local_only: bool,
}

impl Frontend {
    /// Builds a frontend; `backends` in any order.
    pub fn new(
        service: u32,
        key: FrontendKey,
        mut backends: Vec<Backend>,
        affinity_ns: Option<u64>,
        node_port: bool,
        local_only: bool,
    ) -> Frontend {
        backends.sort_by_key(Backend::id);
        backends.dedup_by_key(|b| b.id());
        let usable = |b: &Backend| !local_only || b.local;
        let mut eligible: Vec<u32> = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.ready && usable(b))
            .map(|(i, _)| i as u32)
            .collect();
        // No ready endpoint: fall back to serving (terminating) ones, as
        // kube-proxy does (KEP-1669), rather than refusing the traffic.
        if eligible.is_empty() {
            eligible = backends
                .iter()
                .enumerate()
                .filter(|(_, b)| b.serving && usable(b))
                .map(|(i, _)| i as u32)
                .collect();
        }
        let ids: Vec<u64> = eligible
            .iter()
            .map(|&i| backends[i as usize].id())
            .collect();
        let maglev = Maglev::new(&ids, Maglev::size_for(ids.len().max(1)));
        Frontend {
            service,
            key,
            backends,
            maglev,
            maglev_index: eligible,
            affinity_ns,
            node_port,
            local_only,
        }
    }

    /// The backend a new flow with this hash goes to.
    #[inline]
    pub fn pick(&self, flow_hash: u64) -> Option<&Backend> {
        let slot = self.maglev.lookup(flow_hash)?;
        self.backends
            .get(*self.maglev_index.get(slot as usize)? as usize)
    }

    /// Whether an existing flow to (ip, port) may continue.
    #[inline]
    pub fn serving(&self, ip: Ipv4Addr, port: u16) -> bool {
        let id = (u32::from(ip) as u64) << 16 | port as u64;
        self.backends
            .binary_search_by_key(&id, Backend::id)
            .is_ok_and(|i| self.backends[i].serving)
    }

    /// A ready backend by address (session affinity must still be valid).
    #[inline]
    pub fn ready(&self, ip: Ipv4Addr, port: u16) -> bool {
        let id = (u32::from(ip) as u64) << 16 | port as u64;
        self.backends
            .binary_search_by_key(&id, Backend::id)
            .is_ok_and(|i| {
                let b = &self.backends[i];
                b.ready && (!self.local_only || b.local)
            })
    }
}

/// All frontends of this node.
#[derive(Debug, Clone, Default)]
pub struct Services {
    pub frontends: HashMap<FrontendKey, Frontend>,
    /// Service names by index (counters, listing).
    pub names: Vec<String>,
    /// Every backend IP: only packets from these can be service replies,
    /// so other traffic skips the reverse conntrack lookup.
    pub backend_ips: hashbrown::HashSet<Ipv4Addr>,
    /// The service CIDR: ClusterIPs live here.
    pub cidr: Option<crate::tables::Prefix>,
}

impl Services {
    #[inline]
    pub fn frontend(&self, addr: Ipv4Addr, proto: u8, port: u16) -> Option<&Frontend> {
        if self.frontends.is_empty() {
            return None;
        }
        self.frontends.get(&FrontendKey { addr, proto, port })
    }

    pub fn insert(&mut self, f: Frontend) {
        for b in &f.backends {
            self.backend_ips.insert(b.ip);
        }
        self.frontends.insert(f.key, f);
    }

    /// Registers a service name, returning its index.
    pub fn add_name(&mut self, name: &str) -> u32 {
        self.names.push(name.to_string());
        (self.names.len() - 1) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn be(last: u8, ready: bool, serving: bool, local: bool) -> Backend {
        Backend {
            ip: Ipv4Addr::new(10, 244, 1, last),
            port: 8080,
            ready,
            serving,
            local,
        }
    }

    fn key() -> FrontendKey {
        FrontendKey {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            proto: 6,
            port: 80,
        }
    }

    #[test]
    fn only_ready_backends_get_new_flows() {
        let f = Frontend::new(
            0,
            key(),
            vec![
                be(2, true, true, true),
                be(3, false, true, true),
                be(4, true, true, false),
            ],
            None,
            false,
            false,
        );
        let mut seen = [0usize; 256];
        for h in 0..10_000u64 {
            let b = f.pick(h.wrapping_mul(0x9E37_79B9_7F4A_7C15)).unwrap();
            seen[b.ip.octets()[3] as usize] += 1;
        }
        assert_eq!(seen[3], 0, "terminating backend got new flows");
        assert!(seen[2] > 3000 && seen[4] > 3000, "{} {}", seen[2], seen[4]);
        assert!(
            f.serving(Ipv4Addr::new(10, 244, 1, 3), 8080),
            "terminating keeps flows"
        );
        assert!(!f.ready(Ipv4Addr::new(10, 244, 1, 3), 8080));
        assert!(!f.serving(Ipv4Addr::new(10, 244, 1, 9), 8080));
    }

    #[test]
    fn local_policy_picks_local_backends_only() {
        let f = Frontend::new(
            0,
            key(),
            vec![be(2, true, true, false), be(3, true, true, true)],
            None,
            true,
            true,
        );
        for h in 0..1000u64 {
            assert_eq!(f.pick(h * 7919).unwrap().ip, Ipv4Addr::new(10, 244, 1, 3));
        }
    }

    #[test]
    fn no_ready_backend_falls_back_to_serving_ones_then_nothing() {
        // KEP-1669: terminating-but-serving endpoints take traffic when no
        // endpoint is ready.
        let f = Frontend::new(0, key(), vec![be(2, false, true, true)], None, false, false);
        assert_eq!(f.pick(42).unwrap().ip, Ipv4Addr::new(10, 244, 1, 2));
        let f = Frontend::new(
            0,
            key(),
            vec![be(2, false, false, true)],
            None,
            false,
            false,
        );
        assert!(f.pick(42).is_none());
        let f = Frontend::new(0, key(), vec![], None, false, false);
        assert!(f.pick(42).is_none());
    }
}
