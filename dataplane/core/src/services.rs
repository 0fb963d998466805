//! Service frontends as the pipeline looks them up: one per (address,
//! protocol, port) a client can send to — each ClusterIP port, each NodePort
//! on each of this node's NodePort addresses, each port on each external or
//! LoadBalancer IP — with its backends and the Maglev tables that pick among
//! them.
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
    /// An outside frontend with `local_only`: what clients inside the
    /// cluster (pods, the node) get instead, over every backend, as
    /// kube-proxy short-circuits them to the cluster-wide endpoints.
    pub internal: Option<(Maglev, Vec<u32>)>,
    /// ClientIP session affinity timeout.
    pub affinity_ns: Option<u64>,
    /// Reached from outside the cluster: a NodePort on one of the node's
    /// addresses, an external IP or a LoadBalancer IP.
    pub node_port: bool,
    /// Local backends only: externalTrafficPolicy Local on an outside
    /// frontend (no SNAT), internalTrafficPolicy Local on a ClusterIP (no
    /// local backend: dropped).
    pub local_only: bool,
    /// Steer this frontend's flows by the client's address alone (not its
    /// port too): set by [`Services::finish`], see [`Services::steer`].
    pub steer_by_ip: bool,
    /// Each backend's new-flow counter: an index into the snapshot's
    /// [`Services::backend_keys`], set by [`Services::finish`].
    pub backend_slots: Vec<u32>,
}

/// Maglev tables of the last snapshot by backend id list, so a snapshot
/// rebuilds only the tables whose backends changed (with 10,000 services,
/// building them all takes ~150 ms: every pod change would pay it).
#[derive(Debug, Default)]
pub struct MaglevCache {
    tables: HashMap<Vec<u64>, Maglev>,
    used: HashMap<Vec<u64>, Maglev>,
}

impl MaglevCache {
    fn get(&mut self, ids: &[u64]) -> Maglev {
        if let Some(m) = self.used.get(ids) {
            return m.clone();
        }
        let m = match self.tables.remove(ids) {
            Some(m) => m,
            None => Maglev::new(ids, Maglev::size_for(ids.len().max(1))),
        };
        self.used.insert(ids.to_vec(), m.clone());
        m
    }

    /// Ends a snapshot's build: keeps the tables it used, drops the rest.
    pub fn finish(&mut self) {
        self.tables = std::mem::take(&mut self.used);
    }

    /// Tables held.
    pub fn len(&self) -> usize {
        self.tables.len() + self.used.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Frontend {
    /// Builds a frontend; `backends` in any order.
    pub fn new(
        service: u32,
        key: FrontendKey,
        backends: Vec<Backend>,
        affinity_ns: Option<u64>,
        node_port: bool,
        local_only: bool,
    ) -> Frontend {
        let mut cache = MaglevCache::default();
        Frontend::with_cache(
            service,
            key,
            backends,
            affinity_ns,
            node_port,
            local_only,
            &mut cache,
        )
    }

    /// [`Frontend::new`], taking its Maglev table from `cache` when the
    /// same backends had one.
    pub fn with_cache(
        service: u32,
        key: FrontendKey,
        mut backends: Vec<Backend>,
        affinity_ns: Option<u64>,
        node_port: bool,
        local_only: bool,
        cache: &mut MaglevCache,
    ) -> Frontend {
        backends.sort_by_key(Backend::id);
        backends.dedup_by_key(|b| b.id());
        let (maglev, maglev_index) = eligible(&backends, local_only, cache);
        let internal = (node_port && local_only).then(|| eligible(&backends, false, cache));
        Frontend {
            service,
            key,
            backends,
            maglev,
            maglev_index,
            internal,
            affinity_ns,
            node_port,
            local_only,
            steer_by_ip: affinity_ns.is_some(),
            backend_slots: Vec::new(),
        }
    }

    /// The new-flow counter of backend (ip, port), if it has one.
    #[inline]
    pub fn backend_slot(&self, ip: Ipv4Addr, port: u16) -> Option<u32> {
        let id = (u32::from(ip) as u64) << 16 | port as u64;
        let i = self.backends.binary_search_by_key(&id, Backend::id).ok()?;
        self.backend_slots.get(i).copied()
    }

    /// The backend a new flow with this hash goes to.
    #[inline]
    pub fn pick(&self, flow_hash: u64) -> Option<&Backend> {
        self.pick_for(flow_hash, true)
    }

    /// [`Frontend::pick`] for a client outside the cluster (`external`) or
    /// inside it (which gets `internal` where there is one).
    #[inline]
    pub fn pick_for(&self, flow_hash: u64, external: bool) -> Option<&Backend> {
        let (maglev, index) = match &self.internal {
            Some((m, i)) if !external => (m, i),
            _ => (&self.maglev, &self.maglev_index),
        };
        let slot = maglev.lookup(flow_hash)?;
        self.backends.get(*index.get(slot as usize)? as usize)
    }

    /// Whether an existing flow to (ip, port) may continue.
    #[inline]
    pub fn serving(&self, ip: Ipv4Addr, port: u16) -> bool {
        let id = (u32::from(ip) as u64) << 16 | port as u64;
        self.backends
            .binary_search_by_key(&id, Backend::id)
            .is_ok_and(|i| self.backends[i].serving)
    }

    /// A ready backend by address (session affinity must still be valid)
    /// for a client outside the cluster or inside it (see `internal`).
    #[inline]
    pub fn ready(&self, ip: Ipv4Addr, port: u16, external: bool) -> bool {
        let id = (u32::from(ip) as u64) << 16 | port as u64;
        let local_only = self.local_only && (external || self.internal.is_none());
        self.backends
            .binary_search_by_key(&id, Backend::id)
            .is_ok_and(|i| {
                let b = &self.backends[i];
                b.ready && (!local_only || b.local)
            })
    }

    /// Whether a new flow that found no backend is dropped (as kube-proxy
    /// does), not refused: internalTrafficPolicy Local without a local
    /// backend, for everyone; externalTrafficPolicy Local without one, for
    /// outside clients while the service has backends elsewhere (a load
    /// balancer's health check, `healthCheckNodePort`, steers them away; a
    /// service without any backend is refused everywhere).
    #[inline]
    pub fn drops_without_local(&self, external: bool) -> bool {
        self.local_only
            && (!self.node_port || (external && self.backends.iter().any(|b| b.ready || b.serving)))
    }
}

/// The Maglev table of `backends` (sorted) that new flows may go to, and
/// their indexes: ready ones (local ones only if `local_only`), else serving
/// ones.
fn eligible(backends: &[Backend], local_only: bool, cache: &mut MaglevCache) -> (Maglev, Vec<u32>) {
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
    (cache.get(&ids), eligible)
}

/// All frontends of this node.
#[derive(Debug, Clone, Default)]
pub struct Services {
    pub frontends: HashMap<FrontendKey, Frontend>,
    /// Service names by index (counters, listing).
    pub names: Vec<String>,
    /// The service CIDR: ClusterIPs live here.
    pub cidr: Option<crate::prefix::Prefix>,
    /// Every backend (address, port, protocol) -> steer its flows by the
    /// client's address alone. Only packets from these can be replies of a
    /// service flow without SNAT, so only these are steered by destination.
    pub steer: HashMap<(Ipv4Addr, u16, u8), bool>,
    /// The [`BackendKey`] of each new-flow counter slot, set by
    /// [`Services::finish`]: a worker counts new flows per backend into an
    /// array of this length, allocated with the snapshot by the engine
    /// (`Pipeline::swap_books`), so the worker never allocates for it;
    /// every frontend of a service and protocol shares the slot of a
    /// backend.
    pub backend_keys: Vec<BackendKey>,
}

/// A backend's new-flow counter: (service index, IP protocol, backend
/// address, backend port). The protocol keeps a backend serving TCP and UDP
/// on one port apart.
pub type BackendKey = (u32, u8, Ipv4Addr, u16);

impl Services {
    #[inline]
    pub fn frontend(&self, addr: Ipv4Addr, proto: u8, port: u16) -> Option<&Frontend> {
        if self.frontends.is_empty() {
            return None;
        }
        self.frontends.get(&FrontendKey { addr, proto, port })
    }

    pub fn insert(&mut self, f: Frontend) {
        self.frontends.insert(f.key, f);
    }

    /// Settles how flows are steered to workers, once every frontend is in.
    ///
    /// With several workers, a flow's conntrack entry lives on the worker
    /// its client side hashes to, and both directions are sent there. A
    /// reply only shows the backend and the client, so a backend must imply
    /// one way of hashing the client: by address and port (spreads one
    /// client's flows), or by address alone (ClientIP affinity needs all of
    /// a client's flows on one worker, whose affinity table decides). Every
    /// frontend sharing a backend, directly or through other frontends, must
    /// agree, so frontends are grouped by shared backends (union-find) and a
    /// group steers by address alone if any member has affinity.
    pub fn finish(&mut self) {
        let keys: Vec<FrontendKey> = self.frontends.keys().copied().collect();
        let mut parent: Vec<usize> = (0..keys.len()).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        let mut first: HashMap<(Ipv4Addr, u16, u8), usize> = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            for b in &self.frontends[k].backends {
                let j = *first.entry((b.ip, b.port, k.proto)).or_insert(i);
                let (a, c) = (root(&mut parent, i), root(&mut parent, j));
                parent[a] = c;
            }
        }
        let mut by_ip = vec![false; keys.len()];
        for (i, k) in keys.iter().enumerate() {
            if self.frontends[k].affinity_ns.is_some() {
                let r = root(&mut parent, i);
                by_ip[r] = true;
            }
        }
        for (i, k) in keys.iter().enumerate() {
            let r = root(&mut parent, i);
            if let Some(f) = self.frontends.get_mut(k) {
                f.steer_by_ip = by_ip[r];
            }
        }
        self.steer = first
            .into_iter()
            .map(|(b, i)| (b, by_ip[root(&mut parent, i)]))
            .collect();
        let mut slots: HashMap<BackendKey, u32> = HashMap::new();
        let keys = &mut self.backend_keys;
        keys.clear();
        for f in self.frontends.values_mut() {
            f.backend_slots = f
                .backends
                .iter()
                .map(|b| {
                    let k = (f.service, f.key.proto, b.ip, b.port);
                    *slots.entry(k).or_insert_with(|| {
                        keys.push(k);
                        (keys.len() - 1) as u32
                    })
                })
                .collect();
        }
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
        assert!(!f.ready(Ipv4Addr::new(10, 244, 1, 3), 8080, false));
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
        // Clients inside the cluster get every backend (kube-proxy's
        // short-circuit).
        let mut seen = [0usize; 256];
        for h in 0..1000u64 {
            let h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(f.pick_for(h, true).unwrap().ip.octets()[3], 3);
            seen[f.pick_for(h, false).unwrap().ip.octets()[3] as usize] += 1;
        }
        assert!(seen[2] > 300 && seen[3] > 300, "{} {}", seen[2], seen[3]);
        let remote = Ipv4Addr::new(10, 244, 1, 2);
        assert!(f.ready(remote, 8080, false) && !f.ready(remote, 8080, true));
        // externalTrafficPolicy Local: outside clients are dropped where no
        // local backend is, not refused (the service has backends).
        assert!(!f.drops_without_local(false) && f.drops_without_local(true));
        let remote_only = vec![be(2, true, true, false)];
        let f = Frontend::new(0, key(), remote_only, None, true, true);
        assert!(f.pick_for(1, true).is_none() && f.drops_without_local(true));
        // Without any backend it is refused, like every service.
        let f = Frontend::new(0, key(), vec![be(2, false, false, false)], None, true, true);
        assert!(!f.drops_without_local(true) && !f.drops_without_local(false));
        // internalTrafficPolicy Local: one picker, local only, for everyone.
        let f = Frontend::new(0, key(), vec![be(2, true, true, false)], None, false, true);
        assert!(f.internal.is_none() && f.drops_without_local(false));
        assert!(f.pick_for(7, false).is_none() && f.pick_for(7, true).is_none());
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

    #[test]
    fn frontends_sharing_backends_agree_on_steering() {
        let fe = |addr: u8, last: &[u8], affinity: bool| {
            let key = FrontendKey {
                addr: Ipv4Addr::new(10, 96, 0, addr),
                proto: 6,
                port: 80,
            };
            let b = last.iter().map(|&l| be(l, true, true, true)).collect();
            Frontend::new(0, key, b, affinity.then_some(1), false, false)
        };
        let mut s = Services::default();
        // A shares a backend with B, B with C; only C has affinity. D is
        // on its own without; E on its own with.
        s.insert(fe(1, &[2, 3], false));
        s.insert(fe(2, &[3, 4], false));
        s.insert(fe(3, &[4, 5], true));
        s.insert(fe(4, &[6], false));
        s.insert(fe(5, &[7], true));
        s.finish();
        let by_ip = |addr: u8| {
            s.frontend(Ipv4Addr::new(10, 96, 0, addr), 6, 80)
                .unwrap()
                .steer_by_ip
        };
        assert_eq!(
            [by_ip(1), by_ip(2), by_ip(3), by_ip(4), by_ip(5)],
            [true, true, true, false, true]
        );
        for (last, want) in [
            (2, true),
            (3, true),
            (4, true),
            (5, true),
            (6, false),
            (7, true),
        ] {
            let k = (Ipv4Addr::new(10, 244, 1, last), 8080, 6);
            assert_eq!(s.steer.get(&k), Some(&want), "backend .{last}");
        }
        assert_eq!(s.steer.len(), 6);
        // Another protocol on the same address and port is another backend.
        assert!(!s
            .steer
            .contains_key(&(Ipv4Addr::new(10, 244, 1, 2), 8080, 17)));
    }

    #[test]
    fn a_rebuild_reuses_the_tables_of_unchanged_backends_and_drops_the_rest() {
        let backends = |lasts: &[u8]| -> Vec<Backend> {
            lasts.iter().map(|&l| be(l, true, true, true)).collect()
        };
        let mut cache = MaglevCache::default();
        let a1 = Frontend::with_cache(0, key(), backends(&[2, 3]), None, false, false, &mut cache);
        let b1 = Frontend::with_cache(1, key(), backends(&[4, 5]), None, false, false, &mut cache);
        cache.finish();
        assert_eq!(cache.len(), 2);
        // Next snapshot: a unchanged, b changed.
        let a2 = Frontend::with_cache(0, key(), backends(&[3, 2]), None, false, false, &mut cache);
        let b2 = Frontend::with_cache(1, key(), backends(&[4, 6]), None, false, false, &mut cache);
        cache.finish();
        assert!(a2.maglev.same_table(&a1.maglev), "reused");
        assert!(!b2.maglev.same_table(&b1.maglev));
        assert_eq!(cache.len(), 2, "b's old table is gone");
        // A reused table picks exactly what a fresh one does.
        let fresh = Frontend::new(0, key(), backends(&[2, 3]), None, false, false);
        let fresh_b = Frontend::new(1, key(), backends(&[4, 6]), None, false, false);
        for h in 0..5000u64 {
            let h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            assert_eq!(a2.pick(h), fresh.pick(h));
            assert_eq!(b2.pick(h), fresh_b.pick(h));
        }
    }
}
