//! The state manager: one thread that owns the desired state, the XDP
//! attachments, the netlink socket and the workers' handles. gRPC handlers
//! send it [`Request`]s; it validates, applies, builds a new `Tables`
//! snapshot and waits until every worker has swapped it in before replying.
//! A worker that does not acknowledge in time makes the write fail, naming
//! it, and leaves the dataplane at generation 0 (see [`WriteError`]).
//!
//! A one-second tick retries pod interfaces that did not exist yet, notices
//! ones that went away, and refreshes underlay next-hop MACs from the
//! kernel's neighbour table (asking the kernel to resolve missing ones).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError};
use kxdp_core::conntrack::{CtStats, Entry};
use kxdp_core::pipeline::{BackendCounters, Counters, DropReason, ServiceBooks, SvcCounters};
use kxdp_core::policy::{PodPolicy, Policies, PolicyFlows, PortRange, RuleTable};
use kxdp_core::prefix::Prefix;
use kxdp_core::services::{Backend, BackendKey, Frontend, FrontendKey, MaglevCache};
use kxdp_core::tables::{
    EgressHop, LocalPod, NodeInfo, PortId, PortInfo, PortKind, RemoteRoute, Tables, MAX_PORTS,
};
use kxdp_core::wire::EthernetAddress;
use kxdp_proto::service::Protocol;
use tokio::sync::oneshot;

use crate::health::{self, HealthChecks};
use crate::liveness::Liveness;
use crate::netlink::{self, Netlink};
use crate::nft::{self, NatOutput};
use crate::state::{Change, FieldError, State, TrafficPolicy};
use crate::sys::xsk::BindMode;
use crate::worker::{
    Command, ConntrackChunk, PortCounters, ServiceStats, WorkerHandle, ACK_TIMEOUT,
};
use crate::xdp::{Attachment, Role, XdpMode};

const TICK: Duration = Duration::from_secs(1);
/// The tick while the kernel resolves a next hop we asked for, so that the
/// first packets towards it wait milliseconds, not a second.
const FAST_TICK: Duration = Duration::from_millis(50);
/// How long after asking fast ticks last at most (a gateway that never
/// answers must not keep the engine at 20 dumps a second).
const FAST_TICKS_FOR: Duration = Duration::from_secs(2);

/// Engine settings from the command line.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub workers: usize,
    pub cores: Vec<usize>,
    pub xdp_mode: XdpMode,
    pub copy_mode: bool,
    /// The workers' flow caches (`kxdp_core::pipeline::FlowCache`).
    pub flow_cache: bool,
    /// Where health check servers run (`health.rs`); `None`: none.
    pub runtime: Option<tokio::runtime::Handle>,
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Refused: nothing was applied.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// Refused: nothing was applied.
    #[error("{0}")]
    Precondition(String),
    /// Applied, but these workers did not acknowledge the new tables within
    /// `ACK_TIMEOUT`: they still have them queued and may swap them in late,
    /// or never. The engine keeps the written state but reports generation
    /// 0 until a later write is acknowledged by every worker, so control
    /// sees a mismatch and syncs again rather than trusting a half-applied
    /// write.
    #[error("{} did not acknowledge generation {generation} within {ACK_TIMEOUT:?}", worker_list(.workers))]
    Unacknowledged {
        workers: Vec<usize>,
        generation: u64,
    },
}

/// "worker 1", "workers 0, 2".
fn worker_list(workers: &[usize]) -> String {
    let ids: Vec<String> = workers.iter().map(|w| w.to_string()).collect();
    let noun = if ids.len() == 1 { "worker" } else { "workers" };
    format!("{noun} {}", ids.join(", "))
}

pub enum Request {
    Sync(Box<State>, oneshot::Sender<Result<u64, WriteError>>),
    Update(u64, Vec<Change>, oneshot::Sender<Result<u64, WriteError>>),
    GetState(oneshot::Sender<StateSnapshot>),
    GetCounters(oneshot::Sender<CountersSnapshot>),
    /// One page: of one service if named, at most `limit` entries, from a
    /// position (`ConntrackCursor`) a previous page ended at.
    ListConntrack(
        ConntrackQuery,
        oneshot::Sender<Result<ConntrackList, FieldError>>,
    ),
    /// Arms a trace or capture on every worker (`watch.rs`).
    Watch(
        crate::watch::WatchQuery,
        oneshot::Sender<Result<crate::watch::Watching, FieldError>>,
    ),
}

/// The state as applied, and how far its interfaces are attached.
#[derive(Debug, Clone)]
pub struct StateSnapshot {
    /// Shared with the engine: taking it copies nothing.
    pub state: Arc<State>,
    pub boot_id: String,
    /// Every pod of the state, by name.
    pub pods: Vec<(String, AttachStatus)>,
    /// Underlay next hops of the remote VTEPs, all on the uplink.
    pub neighbours: Vec<Neigh>,
    pub workers: usize,
    pub uplink_status: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachState {
    Attached,
    /// The interface does not exist (yet); retried every tick.
    Pending,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachStatus {
    pub state: AttachState,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neigh {
    pub next_hop: Ipv4Addr,
    /// `None` while the kernel has not resolved it.
    pub mac: Option<EthernetAddress>,
}

/// What egress (walk 7) takes from the kernel: its main-table routes over
/// the uplink, and the uplink's resolved neighbours (gateways, on-link
/// destinations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Egress {
    routes: Vec<(Prefix, Option<Ipv4Addr>)>,
    neighbours: HashMap<Ipv4Addr, EthernetAddress>,
}

/// Every counter, summed over workers.
#[derive(Debug, Clone, Default)]
pub struct CountersSnapshot {
    /// By attached interface name.
    pub interfaces: Vec<(String, PortCounters)>,
    /// Every drop reason of the counter table, then the kernel's and the
    /// AF_XDP layer's (`xsk_...`), zero or not.
    pub drops: Vec<(&'static str, u64)>,
    /// Every event counter, in the counter table's order, then the AF_XDP
    /// layer's refused completions (not a lost frame).
    pub events: Vec<(&'static str, u64)>,
    pub services: Vec<ServiceCounters>,
    /// New flows allowed and denied per policy of the node's pods, by name.
    pub policies: Vec<(String, PolicyFlows)>,
    pub conntrack_entries: u64,
    pub conntrack_capacity: u64,
    /// The same per worker (whose sum the totals above are), for metrics.
    pub workers: Vec<WorkerCounters>,
    /// Drops by the uplink's XDP program, before any worker (also in
    /// `drops` under the same reason).
    pub xdp_drops: Vec<(&'static str, u64)>,
}

/// One worker's counters: `drops` and `events` in `CountersSnapshot`'s
/// order (less the XDP program's drops), its traffic per interface and its
/// conntrack table.
#[derive(Debug, Clone, Default)]
pub struct WorkerCounters {
    pub drops: Vec<(&'static str, u64)>,
    pub events: Vec<(&'static str, u64)>,
    pub interfaces: Vec<(String, PortCounters)>,
    pub conntrack_entries: u64,
    pub conntrack_capacity: u64,
    pub conntrack: CtStats,
}

#[derive(Debug, Clone, Default)]
pub struct ServiceCounters {
    pub name: String,
    pub totals: SvcCounters,
    /// Per (endpoint, target port, protocol), every pair of the service.
    pub backends: Vec<(Ipv4Addr, u16, Protocol, BackendCounters)>,
}

/// What a `ListConntrack` page asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConntrackQuery {
    pub service: Option<String>,
    /// Entries in the page, at most (1..=`MAX_CONNTRACK_PAGE`).
    pub limit: usize,
    /// Where the previous page ended; `None`: the start.
    pub from: Option<ConntrackCursor>,
}

/// A position in the workers' conntrack tables: worker, then slot. A page
/// token is its text, `"<worker>.<slot>"`, opaque to clients (as
/// Kubernetes' `continue`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackCursor {
    pub worker: usize,
    pub slot: u32,
}

impl std::fmt::Display for ConntrackCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.worker, self.slot)
    }
}

impl std::str::FromStr for ConntrackCursor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let (w, slot) = s.split_once('.').ok_or(())?;
        Ok(ConntrackCursor {
            worker: w.parse().map_err(|_| ())?,
            slot: slot.parse().map_err(|_| ())?,
        })
    }
}

/// One page of conntrack entries, with the service names they refer to.
#[derive(Debug, Clone, Default)]
pub struct ConntrackList {
    /// (entry, idle ns, service name or "").
    pub entries: Vec<(Entry, u64, String)>,
    /// Entries in every worker's table (of any service): a count the
    /// workers keep, so no page has to walk whole tables for it.
    pub total: u64,
    /// Where the next page starts; `None`: this was the last.
    pub next: Option<ConntrackCursor>,
}

struct Port {
    id: PortId,
    ifname: String,
    ifindex: u32,
    mac: EthernetAddress,
    kind: PortKind,
    xdp: Attachment,
}

pub struct Engine {
    cfg: EngineConfig,
    boot_id: String,
    state: Arc<State>,
    netlink: Netlink,
    // Ports before workers: XDP detaches before the sockets close.
    ports: BTreeMap<String, Port>,
    free_ids: Vec<PortId>,
    pod_status: BTreeMap<String, AttachStatus>,
    uplink_status: String,
    /// VXLAN from unknown VTEPs that detached XDP programs dropped (their
    /// counts go with them): keeps `vxlan_unknown_vtep` from going back.
    xdp_unknown_vtep_before: u64,
    neigh: HashMap<Ipv4Addr, Neigh>,
    /// The kernel's routes and neighbours over the uplink, for egress.
    egress: Egress,
    /// Until when to tick fast: a next hop is being resolved.
    resolving_until: Option<Instant>,
    /// Service ids (counters and conntrack entries refer to them): stable
    /// while a service exists; a deleted service's id goes to the next new
    /// one (the lowest free), so ids stay below the most services held.
    service_ids: BTreeMap<String, u32>,
    /// Ids given to new services since the last push that workers may
    /// have counted for before: their counters restart from zero.
    fresh_ids: Vec<u32>,
    /// Service ids the workers' books have room for.
    books_services: usize,
    /// Backend slots of the last snapshot pushed.
    backend_slots: usize,
    /// New flows per backend (`BackendKey`: service id, protocol, address,
    /// port) of the snapshots
    /// workers handed back (the current one's are in their books), for the
    /// backends the state has.
    backend_flows: HashMap<BackendKey, BackendCounters>,
    /// New flows per policy of the snapshots workers handed back, by name,
    /// for the policies of the last snapshot pushed (`policy_names`).
    policy_flows: HashMap<String, PolicyFlows>,
    policy_names: Vec<String>,
    /// Numbers the published snapshots (`Tables::epoch`).
    epoch: u32,
    /// The last snapshot's Maglev tables, reused while their backends stay.
    maglev: MaglevCache,
    /// The node's addresses NodePorts open on (`node_port_addresses`).
    node_port_addrs: Vec<Ipv4Addr>,
    /// The kernel's DNAT of its own NodePorts and external IPs.
    nat_output: NatOutput,
    health: HealthChecks,
    /// Heartbeats and the last acknowledged snapshot, for `/healthz`.
    live: Arc<Liveness>,
    workers: Vec<WorkerHandle>,
}

impl Engine {
    pub fn new(cfg: EngineConfig, boot_id: String) -> anyhow::Result<Engine> {
        let netlink = Netlink::new()?;
        let mut workers = Vec::new();
        let mesh = Arc::new(crate::worker::Mesh::new(cfg.workers)?);
        for i in 0..cfg.workers {
            let core = cfg
                .cores
                .get(i)
                .copied()
                .or_else(|| (!cfg.cores.is_empty()).then(|| cfg.cores[i % cfg.cores.len()]));
            workers.push(WorkerHandle::spawn(i, core, cfg.flow_cache, mesh.clone())?);
        }
        let live = Arc::new(Liveness::new(
            workers.iter().map(|w| w.stats.clone()).collect(),
        ));
        Ok(Engine {
            live,
            boot_id,
            state: Arc::default(),
            netlink,
            ports: BTreeMap::new(),
            free_ids: (0..MAX_PORTS as PortId).rev().collect(),
            pod_status: BTreeMap::new(),
            uplink_status: "not configured".into(),
            xdp_unknown_vtep_before: 0,
            neigh: HashMap::new(),
            egress: Egress::default(),
            resolving_until: None,
            service_ids: BTreeMap::new(),
            fresh_ids: Vec::new(),
            books_services: 0,
            backend_slots: 0,
            backend_flows: HashMap::new(),
            policy_flows: HashMap::new(),
            policy_names: Vec::new(),
            epoch: 0,
            maglev: Default::default(),
            node_port_addrs: Vec::new(),
            nat_output: NatOutput::default(),
            health: HealthChecks::new(cfg.runtime.clone()),
            cfg,
            workers,
        })
    }

    /// What `/healthz` and the systemd notifier read (`liveness.rs`).
    pub fn liveness(&self) -> Arc<Liveness> {
        self.live.clone()
    }

    /// Serves requests until the channel closes, ticking every second.
    pub fn run(mut self, rx: Receiver<Request>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            self.live.engine_beat();
            match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(req) => {
                    self.handle(req);
                    if self.resolving_until.is_some_and(|t| t > Instant::now()) {
                        next_tick = next_tick.min(Instant::now() + FAST_TICK);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.tick();
                    let fast = self.resolving_until.is_some_and(|t| t > Instant::now());
                    next_tick = Instant::now() + if fast { FAST_TICK } else { TICK };
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.nat_output.clear();
        // Detach XDP first (ports), then stop workers (sockets, UMEMs).
        self.ports.clear();
        self.workers.clear();
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Sync(st, reply) => {
                let started = Instant::now();
                let generation = st.generation;
                let r = self.sync(*st);
                self.log_write("sync", generation, None, started, &r);
                let _ = reply.send(r);
            }
            Request::Update(generation, changes, reply) => {
                let started = Instant::now();
                let r = self.update(generation, &changes);
                self.log_write("update", generation, Some(changes.len()), started, &r);
                let _ = reply.send(r);
            }
            Request::GetState(reply) => {
                let _ = reply.send(self.read_state());
            }
            Request::GetCounters(reply) => {
                let _ = reply.send(self.counters());
            }
            Request::ListConntrack(query, reply) => {
                let _ = reply.send(self.conntrack(query));
            }
            Request::Watch(query, reply) => {
                let ports = self.ports.values().map(|p| (p.ifname.as_str(), p.id));
                let _ = reply.send(crate::watch::arm(&self.workers, ports, query));
            }
        }
    }

    /// One event per write (`sync` or `update`): what it asked for and how
    /// it ended, with what the state holds after it.
    fn log_write(
        &self,
        event: &str,
        generation: u64,
        changes: Option<usize>,
        started: Instant,
        r: &Result<u64, WriteError>,
    ) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let st = &self.state;
        match r {
            Ok(applied) => tracing::info!(
                event,
                generation = applied,
                changes,
                pods = st.pods.len(),
                remotes = st.remotes.len(),
                services = st.services.len(),
                ports = self.ports.len(),
                ms,
                "{event} applied: generation {applied}"
            ),
            Err(e) => tracing::warn!(
                event,
                generation,
                changes,
                error = %e,
                ms,
                "{event} of generation {generation} failed: {e}"
            ),
        }
    }

    fn sync(&mut self, st: State) -> Result<u64, WriteError> {
        st.validate()?;
        let node = st.node.as_ref().expect("a sync carries the node config");
        match self.netlink.link(&node.uplink) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(WriteError::Invalid(FieldError {
                    field: "state.node.uplink".into(),
                    msg: format!(
                        "no interface {:?} in the dataplane's network namespace",
                        node.uplink
                    ),
                }))
            }
            Err(e) => {
                return Err(WriteError::Precondition(format!(
                    "looking up the uplink: {e}"
                )))
            }
        }
        self.apply(st)
    }

    fn update(&mut self, generation: u64, changes: &[Change]) -> Result<u64, WriteError> {
        if self.state.node.is_none() {
            return Err(WriteError::Precondition(
                "no node config yet: Sync first".into(),
            ));
        }
        if generation <= self.state.generation {
            return Err(WriteError::Invalid(FieldError {
                field: "generation".into(),
                msg: format!(
                    "{generation} is not greater than the current generation {}",
                    self.state.generation
                ),
            }));
        }
        let next = self.state.with_changes(generation, changes)?;
        next.validate()?;
        self.apply(next)
    }

    /// Makes `next` (already validated) the state: re-attaches what changed,
    /// then publishes new tables to every worker. Returns the generation
    /// every worker has.
    fn apply(&mut self, next: State) -> Result<u64, WriteError> {
        let old_node = self.state.node.clone();
        let uplink_changed = old_node
            .as_ref()
            .map(|n| (&n.uplink, n.underlay_ip, n.vxlan_port))
            != next
                .node
                .as_ref()
                .map(|n| (&n.uplink, n.underlay_ip, n.vxlan_port));
        if uplink_changed {
            if let Some(n) = &old_node {
                self.detach(&n.uplink.clone());
            }
        }
        let old_host = old_node.as_ref().and_then(|n| n.host_interface.clone());
        let new_host = next.node.as_ref().and_then(|n| n.host_interface.clone());
        if let Some(h) = old_host.filter(|h| Some(h) != new_host.as_ref()) {
            self.detach(&h);
        }
        // Pods gone or changed lose their attachment (a new policy table is
        // no change of the pod's interface: it just goes into the tables).
        let stale: Vec<String> = self
            .state
            .pods
            .values()
            .filter(|p| !next.pods.get(&p.name).is_some_and(|n| n.same_interface(p)))
            .map(|p| p.ifname.clone())
            .collect();
        for ifname in stale {
            self.detach(&ifname);
        }
        self.pod_status
            .retain(|name, _| next.pods.contains_key(name));
        self.state = Arc::new(next);
        self.assign_service_ids();
        self.reconcile_ports();
        self.refresh_neighbours();
        self.refresh_addresses();
        self.sync_uplink_maps();
        self.publish()?;
        self.sync_host_services();
        Ok(self.state.generation)
    }

    /// Gives the state's services ids: a service keeps its id while it
    /// exists; a new one takes the lowest free id. So ids (and the counters
    /// workers keep by id) stay below the most services ever held at once,
    /// within `MAX_SERVICES`, instead of growing with every service ever seen.
    fn assign_service_ids(&mut self) {
        let live = &self.state.services;
        let gone: std::collections::BTreeSet<u32> = self
            .service_ids
            .iter()
            .filter(|(name, _)| !live.contains_key(*name))
            .map(|(_, id)| *id)
            .collect();
        self.service_ids.retain(|name, _| live.contains_key(name));
        self.backend_flows
            .retain(|(id, _, _, _), _| !gone.contains(id));
        let mut used: std::collections::BTreeSet<u32> =
            self.service_ids.values().copied().collect();
        let mut next = 0;
        for name in live.keys() {
            if self.service_ids.contains_key(name) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            used.insert(next);
            self.service_ids.insert(name.clone(), next);
            if (next as usize) < self.books_services {
                self.fresh_ids.push(next);
            }
        }
        // Kept counts only for backends the state still has: they do not
        // pile up as pods come and go.
        let ids = &self.service_ids;
        let backends: std::collections::HashSet<BackendKey> = live
            .values()
            .flat_map(|sv| {
                let id = ids[&sv.name];
                sv.endpoints.iter().flat_map(move |e| {
                    sv.ports
                        .iter()
                        .map(move |p| (id, p.protocol.ip_proto(), e.ip, p.target_port))
                })
            })
            .collect();
        self.backend_flows.retain(|k, _| backends.contains(k));
    }

    /// The node's addresses inside `node_port_addresses` (its underlay
    /// address alone when none is given), loopback aside; true if they
    /// changed.
    fn refresh_addresses(&mut self) -> bool {
        let Some(node) = &self.state.node else {
            return false;
        };
        let mut addrs = if node.node_port_addresses.is_empty() {
            vec![node.underlay_ip]
        } else {
            match self.netlink.addresses() {
                Ok(all) => all
                    .into_iter()
                    .map(|(_, ip)| ip)
                    .filter(|ip| {
                        !ip.is_loopback()
                            && node.node_port_addresses.iter().any(|c| c.contains(*ip))
                    })
                    .collect(),
                Err(e) => {
                    log::warn!("address dump: {e}");
                    return false;
                }
            }
        };
        addrs.sort_unstable();
        addrs.dedup();
        if addrs == self.node_port_addrs {
            return false;
        }
        log::info!("NodePort addresses: {addrs:?}");
        self.node_port_addrs = addrs;
        true
    }

    /// Every outside frontend, (address, protocol, port), with the
    /// ClusterIP and port it stands for: NodePorts on each NodePort
    /// address, every port on each external and LoadBalancer IP.
    fn outside_frontends(&self) -> Vec<nft::Dnat> {
        let mut out = Vec::new();
        for s in self.state.services.values() {
            for p in &s.ports {
                let to = (s.cluster_ip, p.port);
                let proto = p.protocol.ip_proto();
                if let Some(np) = p.node_port {
                    for &a in &self.node_port_addrs {
                        out.push(((a, proto, np), to));
                    }
                }
                for a in s.outside_ips() {
                    out.push(((a, proto, p.port), to));
                }
            }
        }
        out
    }

    /// What serves the node's kernel and the load balancers rather than
    /// the uplink: the DNAT of its own outside frontends (only with a host
    /// interface, its way to ClusterIPs) and the health check ports.
    fn sync_host_services(&mut self) {
        let Some(node) = &self.state.node else { return };
        let rules = if node.host_interface.is_some() {
            self.outside_frontends()
        } else {
            Vec::new()
        };
        self.nat_output.sync(&rules);
        let mut want = BTreeMap::new();
        for s in self.state.services.values() {
            let Some(port) = s.health_check_node_port else {
                continue;
            };
            let local_endpoints = s
                .endpoints
                .iter()
                .filter(|e| e.ready && !e.terminating)
                .filter(|e| node.pod_cidr.contains(e.ip) || e.ip == node.underlay_ip)
                .count();
            for &a in &self.node_port_addrs {
                let w = health::Want {
                    service: s.name.clone(),
                    local_endpoints,
                };
                want.insert((a, port), w);
            }
        }
        self.health.sync(&want);
    }

    /// Tells the uplink's XDP program which outside frontends to redirect
    /// and which VTEPs' VXLAN to take.
    fn sync_uplink_maps(&self) {
        let Some(node) = &self.state.node else { return };
        let Some(up) = self.ports.get(&node.uplink) else {
            return;
        };
        let ports: Vec<(Ipv4Addr, u8, u16)> = self
            .outside_frontends()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        if let Err(e) = up.xdp.set_node_ports(&ports) {
            log::error!("NodePorts on the uplink: {e}");
        }
        let vteps: Vec<Ipv4Addr> = self.state.remotes.values().map(|r| r.vtep_ip).collect();
        if let Err(e) = up.xdp.set_vteps(&vteps) {
            log::error!("VTEPs on the uplink: {e}");
        }
    }

    /// Attaches whatever the state names and is not attached yet.
    fn reconcile_ports(&mut self) {
        let Some(node) = self.state.node.clone() else {
            return;
        };
        if !self.ports.contains_key(&node.uplink) {
            let role = Role::Uplink {
                vtep_ip: node.underlay_ip,
                vxlan_port: node.vxlan_port,
                pod_cidr: node.pod_cidr,
            };
            self.uplink_status = match self.attach(&node.uplink, PortKind::Uplink, role) {
                Ok(Some(mode)) => {
                    self.sync_uplink_maps();
                    tracing::info!(event = "attach", iface = %node.uplink, kind = "uplink", mode,
                        "uplink {} attached ({mode} XDP)", node.uplink);
                    format!("attached ({mode} XDP)")
                }
                Ok(None) => "pending: interface not found".into(),
                Err(e) => {
                    tracing::warn!(event = "attach_failed", iface = %node.uplink, kind = "uplink",
                        error = %e, "uplink {}: {e}", node.uplink);
                    format!("failed: {e}")
                }
            };
        }
        if let Some(h) = node.host_interface.clone() {
            if !self.ports.contains_key(&h) {
                match peer_mac(&h) {
                    Some(peer_mac) => match self.attach(&h, PortKind::Host { peer_mac }, Role::Pod)
                    {
                        Ok(Some(mode)) => tracing::info!(event = "attach", iface = %h,
                            kind = "host", mode, "host interface {h} attached ({mode} XDP)"),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(event = "attach_failed", iface = %h,
                            kind = "host", error = %e, "host interface {h}: {e}"),
                    },
                    None => log::debug!("host interface {h}: no veth peer yet"),
                }
            }
        }
        let pods: Vec<_> = self.state.pods.values().cloned().collect();
        for p in pods {
            let attached = self
                .ports
                .get(&p.ifname)
                .is_some_and(|port| port.kind == PortKind::Pod { ip: p.ip });
            if attached {
                continue;
            }
            let st = match self.attach(&p.ifname, PortKind::Pod { ip: p.ip }, Role::Pod) {
                Ok(Some(mode)) => AttachStatus {
                    state: AttachState::Attached,
                    detail: format!("{mode} XDP"),
                },
                Ok(None) => AttachStatus {
                    state: AttachState::Pending,
                    detail: format!("interface {} not found", p.ifname),
                },
                Err(e) => AttachStatus {
                    state: AttachState::Failed,
                    detail: e,
                },
            };
            if self.pod_status.get(&p.name) != Some(&st) {
                let (pod, iface) = (&p.name, &p.ifname);
                match st.state {
                    AttachState::Attached => tracing::info!(event = "attach", iface = %iface,
                        kind = "pod", pod = %pod, mode = %st.detail, "pod {pod} attached on {iface}"),
                    AttachState::Pending => {
                        tracing::info!(event = "attach_pending", iface = %iface,
                        kind = "pod", pod = %pod, "pod {pod}: {}", st.detail)
                    }
                    AttachState::Failed => tracing::warn!(event = "attach_failed", iface = %iface,
                        kind = "pod", pod = %pod, error = %st.detail, "pod {pod}: {}", st.detail),
                }
            }
            self.pod_status.insert(p.name.clone(), st);
        }
    }

    /// Attaches XDP and one AF_XDP socket per worker to `ifname`.
    /// Ok(None): the interface does not exist (yet).
    fn attach(
        &mut self,
        ifname: &str,
        kind: PortKind,
        role: Role,
    ) -> Result<Option<&'static str>, String> {
        let link = match self.netlink.link(ifname) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("netlink: {e}")),
        };
        let id = self.free_ids.pop().ok_or("too many ports")?;
        let xdp = match Attachment::attach(link.ifindex, self.cfg.xdp_mode) {
            Ok(x) => x,
            Err(e) => {
                self.free_ids.push(id);
                return Err(e.to_string());
            }
        };
        let mode = if self.cfg.copy_mode {
            BindMode::Copy
        } else {
            BindMode::Auto
        };
        let mut fail = None;
        for w in &self.workers {
            let r = w.call(|reply| Command::Attach {
                port: id,
                ifindex: link.ifindex,
                mode,
                reply,
            });
            match r {
                Some(Ok(fd)) => {
                    if let Err(e) = xdp.set_socket(w.index as u32, fd) {
                        fail = Some(e.to_string());
                        break;
                    }
                }
                Some(Err(e)) => {
                    fail = Some(format!("AF_XDP socket on {ifname} queue {}: {e}", w.index));
                    break;
                }
                None => {
                    fail = Some(format!("worker {} did not answer", w.index));
                    break;
                }
            }
        }
        if fail.is_none() {
            if let Err(e) = xdp.set_role(Some(role)) {
                fail = Some(e.to_string());
            }
        }
        if let Some(e) = fail {
            for w in &self.workers {
                w.call(|reply| Command::Detach { port: id, reply });
            }
            self.free_ids.push(id);
            return Err(e);
        }
        let mode = xdp.mode_name();
        self.ports.insert(
            ifname.to_string(),
            Port {
                id,
                ifname: ifname.to_string(),
                ifindex: link.ifindex,
                mac: EthernetAddress(link.mac),
                kind,
                xdp,
            },
        );
        Ok(Some(mode))
    }

    fn detach(&mut self, ifname: &str) {
        let Some(port) = self.ports.remove(ifname) else {
            return;
        };
        // Stop redirecting first, so no frame lands on a closing socket.
        let _ = port.xdp.set_role(None);
        for w in &self.workers {
            port.xdp.clear_socket(w.index as u32);
        }
        // Workers forget the port before its sockets close.
        self.publish_without(port.id);
        for w in &self.workers {
            w.call(|reply| Command::Detach {
                port: port.id,
                reply,
            });
        }
        self.free_ids.push(port.id);
        self.xdp_unknown_vtep_before += port.xdp.unknown_vtep_drops();
        tracing::info!(event = "detach", iface = %port.ifname, "detached {}", port.ifname);
    }

    fn tick(&mut self) {
        if self.state.node.is_none() {
            return;
        }
        // Interfaces that went away (pod deleted under us) become pending.
        let gone: Vec<String> = self
            .ports
            .values()
            .filter(
                |p| !matches!(self.netlink.link(&p.ifname), Ok(Some(l)) if l.ifindex == p.ifindex),
            )
            .map(|p| p.ifname.clone())
            .collect();
        let mut changed = !gone.is_empty();
        for ifname in gone {
            tracing::warn!(event = "interface_gone", iface = %ifname, "interface {ifname} went away");
            self.detach(&ifname);
        }
        let before = self.ports.len();
        self.reconcile_ports();
        changed |= self.ports.len() != before;
        changed |= self.refresh_neighbours();
        if self.refresh_addresses() {
            changed = true;
            self.sync_uplink_maps();
            self.sync_host_services();
        }
        if changed {
            // A worker that missed it is logged and the generation reset there.
            let _ = self.publish();
        }
    }

    /// Updates next-hop MACs for every remote VTEP; true if any changed.
    fn refresh_neighbours(&mut self) -> bool {
        let Some(node) = self.state.node.clone() else {
            return false;
        };
        let Some(uplink) = self.ports.get(&node.uplink).map(|p| p.ifindex) else {
            return false;
        };
        let table = match self.netlink.neighbours() {
            Ok(t) => t,
            Err(e) => {
                log::warn!("neighbour dump: {e}");
                return false;
            }
        };
        let mut asked = false;
        // On-link destinations the workers found no neighbour for.
        let wanted: Vec<Ipv4Addr> = self
            .workers
            .iter()
            .filter_map(|w| w.stats.take_unresolved())
            .collect();
        let mut egress = Egress {
            routes: Vec::new(),
            neighbours: table
                .iter()
                .filter(|n| n.ifindex == uplink && netlink::state_usable(n.state))
                .filter_map(|n| Some((n.ip, EthernetAddress(n.mac?))))
                .collect(),
        };
        match self.netlink.routes() {
            Ok(routes) => {
                for r in routes.into_iter().filter(|r| r.oif == uplink) {
                    egress
                        .routes
                        .push((Prefix::new(r.dst, r.prefix_len), r.gateway));
                    if let Some(gw) = r.gateway.filter(|g| !egress.neighbours.contains_key(g)) {
                        asked = true;
                        if let Err(e) = self.netlink.resolve(uplink, gw) {
                            log::warn!("resolving gateway {gw}: {e}");
                        }
                    }
                }
            }
            Err(e) => log::warn!("route dump: {e}"),
        }
        for ip in wanted {
            let on_link = egress
                .routes
                .iter()
                .filter(|(p, _)| p.contains(ip))
                .max_by_key(|(p, _)| p.len)
                .is_some_and(|(_, g)| g.is_none());
            if on_link && !egress.neighbours.contains_key(&ip) {
                asked = true;
                if let Err(e) = self.netlink.resolve(uplink, ip) {
                    log::warn!("resolving on-link {ip}: {e}");
                }
            }
        }
        egress
            .routes
            .sort_unstable_by_key(|(p, g)| (u32::from(p.addr), p.len, *g));
        let mut changed = egress != self.egress;
        if changed {
            log::info!(
                "egress: {} routes over the uplink, {} neighbours",
                egress.routes.len(),
                egress.neighbours.len()
            );
        }
        self.egress = egress;
        let mut next = HashMap::new();
        for r in self.state.remotes.values() {
            let next_hop = match self.netlink.route_get(r.vtep_ip) {
                Ok(ri) => {
                    if ri.oif != uplink {
                        log::warn!(
                            "route to VTEP {} leaves via ifindex {}, not the uplink",
                            r.vtep_ip,
                            ri.oif
                        );
                    }
                    ri.gateway.unwrap_or(r.vtep_ip)
                }
                Err(e) => {
                    log::warn!("no route to VTEP {}: {e}", r.vtep_ip);
                    continue;
                }
            };
            let mac = table
                .iter()
                .find(|n| n.ifindex == uplink && n.ip == next_hop && netlink::state_usable(n.state))
                .and_then(|n| n.mac)
                .map(EthernetAddress);
            if mac.is_none() {
                asked = true;
                if let Err(e) = self.netlink.resolve(uplink, next_hop) {
                    log::warn!("resolving {next_hop}: {e}");
                }
            }
            next.insert(r.vtep_ip, Neigh { next_hop, mac });
        }
        for (vtep, n) in &next {
            let Some(mac) = n.mac else { continue };
            if self.neigh.get(vtep).and_then(|o| o.mac) != Some(mac) {
                tracing::info!(event = "neighbour_resolved", vtep = %vtep, next_hop = %n.next_hop,
                    mac = %mac, "VTEP {vtep}: next hop {} is at {mac}", n.next_hop);
            }
        }
        changed |= next.len() != self.neigh.len()
            || next.iter().any(|(k, v)| {
                self.neigh.get(k).map(|o| (o.next_hop, o.mac)) != Some((v.next_hop, v.mac))
            });
        self.neigh = next;
        // Asked the kernel to resolve something: look again soon, for a
        // while; all resolved: back to the slow tick.
        self.resolving_until = match (asked, self.resolving_until) {
            (false, _) => None,
            (true, None) => Some(Instant::now() + FAST_TICKS_FOR),
            (true, until) => until,
        };
        changed
    }

    fn build_tables(&mut self, without: Option<PortId>) -> Tables {
        let mut t = Tables::default();
        let Some(n) = &self.state.node else { return t };
        t.node = Some(NodeInfo {
            underlay_ip: n.underlay_ip,
            vtep_mac: n.vtep_mac,
            vni: n.vni,
            vxlan_port: n.vxlan_port,
            pod_cidr: n.pod_cidr,
            cluster_cidr: n.cluster_cidr,
            gateway_ip: n.gateway_ip,
            pod_mtu: n.pod_mtu,
            service_cidr: n.service_cidr,
            masquerade: n.masquerade,
        });
        for p in self.ports.values().filter(|p| Some(p.id) != without) {
            t.set_port(
                p.id,
                PortInfo {
                    kind: p.kind,
                    mac: p.mac,
                },
            );
            if let PortKind::Pod { ip } = p.kind {
                if let Some(pod) = self
                    .state
                    .pods
                    .values()
                    .find(|x| x.ip == ip && x.ifname == p.ifname)
                {
                    t.local.insert(
                        ip,
                        LocalPod {
                            port: p.id,
                            mac: pod.mac,
                        },
                    );
                }
            }
        }
        for r in self.state.remotes.values() {
            t.add_remote(
                r.pod_cidr,
                RemoteRoute {
                    vtep_ip: r.vtep_ip,
                    vtep_mac: r.vtep_mac,
                    next_hop_mac: self.neigh.get(&r.vtep_ip).and_then(|n| n.mac),
                },
            );
        }
        for (prefix, gateway) in &self.egress.routes {
            let hop = match gateway {
                Some(g) => EgressHop::Gateway(self.egress.neighbours.get(g).copied()),
                None => EgressHop::OnLink,
            };
            t.egress.insert(*prefix, hop);
        }
        t.neighbours = self
            .egress
            .neighbours
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        t.non_masquerade = n.non_masquerade.clone();
        t.node_port_addrs = self.node_port_addrs.clone();
        self.build_services(&mut t);
        t.policy = build_policy(self.state.pods.values());
        t
    }

    fn build_services(&mut self, t: &mut Tables) {
        let Some(n) = &self.state.node else { return };
        t.services.cidr = n.service_cidr;
        let max_id = self.service_ids.values().max().map_or(0, |m| m + 1);
        t.services.names = vec![String::new(); max_id as usize];
        for (name, id) in &self.service_ids {
            t.services.names[*id as usize] = name.clone();
        }
        let cache = &mut self.maglev;
        for sv in self.state.services.values() {
            let id = self.service_ids[&sv.name];
            let affinity = sv.affinity().map(|s| s as u64 * 1_000_000_000);
            let local = sv.external_traffic_policy == TrafficPolicy::Local;
            let internal_local = sv.internal_traffic_policy == TrafficPolicy::Local;
            for port in &sv.ports {
                let backends: Vec<Backend> = sv
                    .endpoints
                    .iter()
                    .map(|e| Backend {
                        ip: e.ip,
                        port: port.target_port,
                        ready: e.ready && !e.terminating,
                        serving: e.serving || e.ready,
                        local: n.pod_cidr.contains(e.ip) || e.ip == n.underlay_ip,
                    })
                    .collect();
                let key = FrontendKey {
                    addr: sv.cluster_ip,
                    proto: port.protocol.ip_proto(),
                    port: port.port,
                };
                t.services.insert(Frontend::with_cache(
                    id,
                    key,
                    backends.clone(),
                    affinity,
                    false,
                    internal_local,
                    cache,
                ));
                // Outside frontends: the NodePort on each NodePort address,
                // the port on each external and LoadBalancer IP.
                let node_ports = port
                    .node_port
                    .into_iter()
                    .flat_map(|np| self.node_port_addrs.iter().map(move |&a| (a, np)));
                let outside = sv.outside_ips().map(|a| (a, port.port));
                for (addr, at) in node_ports.chain(outside) {
                    let key = FrontendKey {
                        addr,
                        proto: port.protocol.ip_proto(),
                        port: at,
                    };
                    t.services.insert(Frontend::with_cache(
                        id,
                        key,
                        backends.clone(),
                        affinity,
                        true,
                        local,
                        cache,
                    ));
                }
            }
        }
        t.services.finish();
        cache.finish();
    }

    /// Publishes the state's tables. A worker that misses them makes the
    /// state's generation 0 (see `WriteError::Unacknowledged`). Only this
    /// last snapshot of a write decides: a worker handles commands in order,
    /// so one that acknowledges it has handled every earlier one too.
    fn publish(&mut self) -> Result<(), WriteError> {
        let t = self.build_tables(None);
        self.live
            .set_attached(self.uplink_status.starts_with("attached"));
        let Err(workers) = self.push(t) else {
            self.live.applied(self.state.generation, self.epoch);
            return Ok(());
        };
        self.live.unacknowledged();
        let generation = self.state.generation;
        tracing::error!(event = "workers_behind", generation, workers = %worker_list(&workers),
            "{} did not acknowledge generation {generation} within {ACK_TIMEOUT:?}: \
             reporting generation 0 until a write reaches every worker", worker_list(&workers));
        let e = WriteError::Unacknowledged {
            workers,
            generation,
        };
        if generation != 0 {
            Arc::make_mut(&mut self.state).generation = 0;
        }
        Err(e)
    }

    /// Tables without a port about to close; the `publish` that follows in
    /// the same write or tick is the one whose acknowledgement counts.
    fn publish_without(&mut self, port: PortId) {
        let t = self.build_tables(Some(port));
        if let Err(workers) = self.push(t) {
            log::warn!(
                "{} did not acknowledge tables without port {port}",
                worker_list(&workers)
            );
        }
    }

    /// Sends the snapshot to every worker, then waits up to `ACK_TIMEOUT` in
    /// all for each to swap it in (a stuck worker delays no other's swap).
    /// Err: the workers that did not acknowledge.
    fn push(&mut self, mut t: Tables) -> Result<(), Vec<usize>> {
        self.epoch = self.epoch.wrapping_add(1);
        t.epoch = self.epoch;
        t.generation = self.state.generation;
        let t = Arc::new(t);
        // The workers' counters for it, allocated here, never on a worker.
        self.books_services = self.books_services.max(t.services.names.len());
        self.backend_slots = t.services.backend_keys.len();
        let fresh = std::mem::take(&mut self.fresh_ids);
        let acks: Vec<_> = self
            .workers
            .iter()
            .map(|w| {
                let (reply, ack) = bounded(1);
                let mut books = ServiceBooks::for_tables(&t, self.books_services);
                books.fresh = fresh.clone();
                let sent = w.send(Command::Tables {
                    tables: t.clone(),
                    books,
                    reply,
                });
                (w.index, sent.then_some(ack))
            })
            .collect();
        let deadline = Instant::now() + ACK_TIMEOUT;
        // An acknowledgement carries the worker's old snapshot and books:
        // their backend counts are kept (but those of reused ids), and they
        // are freed here, on the engine thread.
        let mut missed = Vec::new();
        for (index, ack) in acks {
            match ack.and_then(|a| a.recv_deadline(deadline).ok()) {
                Some((old, books)) => {
                    self.keep_backend_flows(&old, &books.backends, &fresh);
                    add_policy_flows(&mut self.policy_flows, &old, &books.policy_flows);
                }
                None => missed.push(index),
            }
        }
        // Kept counts only for the policies of the node's pods now.
        let names: std::collections::HashSet<&str> =
            t.policy.names.iter().map(String::as_str).collect();
        self.policy_flows.retain(|n, _| names.contains(n.as_str()));
        self.policy_names.clone_from(&t.policy.names);
        if missed.is_empty() {
            Ok(())
        } else {
            Err(missed)
        }
    }

    /// Adds what a worker counted per backend slot of `tables` into the
    /// kept totals, but those of ids in `skip` (now another service's).
    fn keep_backend_flows(&mut self, tables: &Tables, flows: &[BackendCounters], skip: &[u32]) {
        add_backend_flows(&mut self.backend_flows, tables, flows, skip);
    }

    /// Per-service counters merged over workers, and each worker's
    /// service-side stats (conntrack fill among them; a worker that did
    /// not answer has default ones).
    fn service_counters(&self) -> (Vec<ServiceCounters>, Vec<ServiceStats>) {
        let slots = self.backend_slots;
        let stats: Vec<ServiceStats> = self
            .workers
            .iter()
            .map(|w| {
                w.call(|reply| Command::ServiceStats {
                    into: ServiceStats {
                        services: Vec::with_capacity(self.books_services),
                        backends: Vec::with_capacity(slots),
                        policy_flows: Vec::with_capacity(self.policy_names.len()),
                        ..Default::default()
                    },
                    reply,
                })
                .unwrap_or_default()
            })
            .collect();
        let mut flows = self.backend_flows.clone();
        for s in &stats {
            if let Some(t) = &s.tables {
                add_backend_flows(&mut flows, t, &s.backends, &[]);
            }
        }
        let services = self
            .state
            .services
            .values()
            .map(|sv| {
                let id = self.service_ids[&sv.name];
                let mut c = ServiceCounters {
                    name: sv.name.clone(),
                    ..Default::default()
                };
                for x in stats.iter().filter_map(|s| s.services.get(id as usize)) {
                    c.totals.packets += x.packets;
                    c.totals.bytes += x.bytes;
                    c.totals.new_flows += x.new_flows;
                    c.totals.no_endpoint += x.no_endpoint;
                }
                for e in &sv.endpoints {
                    for p in &sv.ports {
                        let key = (id, p.protocol.ip_proto(), e.ip, p.target_port);
                        let n = flows.get(&key).copied().unwrap_or_default();
                        c.backends.push((e.ip, p.target_port, p.protocol, n));
                    }
                }
                c
            })
            .collect();
        (services, stats)
    }

    /// One page of the workers' conntrack entries: each worker is asked
    /// for bounded chunks (`CONNTRACK_CHUNK_SLOTS` slots, at most the
    /// page's room in entries, copied into a buffer reserved here), from
    /// where the previous page ended, until the page is full or every table
    /// has been walked. No worker spends more than one chunk's time on it
    /// between two of its batches.
    fn conntrack(&self, q: ConntrackQuery) -> Result<ConntrackList, FieldError> {
        let names: HashMap<u32, &String> =
            self.service_ids.iter().map(|(n, id)| (*id, n)).collect();
        let sid = match &q.service {
            Some(name) => match self.service_ids.get(name) {
                Some(id) => Some(*id),
                None => return Ok(ConntrackList::default()),
            },
            None => None,
        };
        let mut at = q.from.unwrap_or_default();
        if at.worker >= self.workers.len().max(1) {
            return Err(FieldError {
                field: "page_token".into(),
                msg: format!("{at} names no worker of this dataplane"),
            });
        }
        let mut out = ConntrackList {
            total: self
                .workers
                .iter()
                .map(|w| w.stats.conntrack_entries())
                .sum(),
            ..Default::default()
        };
        while let Some(w) = self.workers.get(at.worker) {
            let room = q.limit - out.entries.len();
            if room == 0 {
                out.next = Some(at);
                break;
            }
            let chunk = w.call(|reply| Command::Conntrack {
                service: sid,
                into: ConntrackChunk {
                    from: at.slot,
                    max: room,
                    entries: Vec::with_capacity(room),
                    next: None,
                },
                reply,
            });
            let next = chunk.as_ref().and_then(|c| c.next);
            for (e, idle_ns) in chunk.into_iter().flat_map(|c| c.entries) {
                let name = names.get(&e.service).map(|s| s.to_string());
                out.entries.push((e, idle_ns, name.unwrap_or_default()));
            }
            at = match next {
                Some(slot) => ConntrackCursor {
                    worker: at.worker,
                    slot,
                },
                None => ConntrackCursor {
                    worker: at.worker + 1,
                    slot: 0,
                },
            };
        }
        Ok(out)
    }

    fn read_state(&self) -> StateSnapshot {
        let pending = AttachStatus {
            state: AttachState::Pending,
            detail: String::new(),
        };
        StateSnapshot {
            state: self.state.clone(),
            boot_id: self.boot_id.clone(),
            pods: self
                .state
                .pods
                .keys()
                .map(|name| {
                    let st = self.pod_status.get(name).unwrap_or(&pending);
                    (name.clone(), st.clone())
                })
                .collect(),
            neighbours: self.neigh.values().copied().collect(),
            workers: self.workers.len(),
            uplink_status: self.uplink_status.clone(),
        }
    }

    fn counters(&self) -> CountersSnapshot {
        let (services, service_stats) = self.service_counters();
        let policies = self.policy_counters(&service_stats);
        let workers: Vec<WorkerCounters> = self
            .workers
            .iter()
            .zip(service_stats)
            .map(|(w, ss)| self.worker_counters(w, ss))
            .collect();
        // The uplink's XDP program drops strangers' VXLAN before a worker
        // sees it: the same reason, counted earlier.
        let xdp_unknown_vtep = self.xdp_unknown_vtep_before
            + self
                .ports
                .values()
                .map(|p| p.xdp.unknown_vtep_drops())
                .sum::<u64>();
        let xdp_drops = vec![(DropReason::VxlanUnknownVtep.name(), xdp_unknown_vtep)];
        let mut total = workers.first().cloned().unwrap_or_default();
        for w in workers.iter().skip(1) {
            sum_into(&mut total.drops, &w.drops);
            sum_into(&mut total.events, &w.events);
            sum_into(&mut total.interfaces, &w.interfaces);
            total.conntrack_entries += w.conntrack_entries;
            total.conntrack_capacity += w.conntrack_capacity;
        }
        sum_into(&mut total.drops, &xdp_drops);
        CountersSnapshot {
            interfaces: total.interfaces,
            drops: total.drops,
            events: total.events,
            services,
            policies,
            conntrack_entries: total.conntrack_entries,
            conntrack_capacity: total.conntrack_capacity,
            workers,
            xdp_drops,
        }
    }

    /// New flows per policy of the node's pods, by name: the kept counts
    /// and the workers' current ones (`stats`).
    fn policy_counters(&self, stats: &[ServiceStats]) -> Vec<(String, PolicyFlows)> {
        let mut flows = self.policy_flows.clone();
        for s in stats {
            if let Some(t) = &s.tables {
                add_policy_flows(&mut flows, t, &s.policy_flows);
            }
        }
        let mut out: Vec<(String, PolicyFlows)> = self
            .policy_names
            .iter()
            .map(|n| (n.clone(), flows.get(n).copied().unwrap_or_default()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Worker `w`'s counters, with its service-side stats `ss`.
    fn worker_counters(&self, w: &WorkerHandle, ss: ServiceStats) -> WorkerCounters {
        let c = w.stats.counters();
        let interfaces = self
            .ports
            .values()
            .map(|p| (p.ifname.clone(), w.stats.port(p.id)))
            .collect();
        // Drops the kernel counts before a frame reaches a worker, and the
        // descriptors it returned that the AF_XDP layer refused.
        let mut k = [0u64; 4];
        for (_, s) in w
            .call(|reply| Command::KernelStats { reply })
            .unwrap_or_default()
        {
            k[0] += s.rx_dropped;
            k[1] += s.rx_ring_full;
            k[2] += s.rx_fill_ring_empty;
            k[3] += s.tx_invalid;
        }
        let e = w.stats.desc_errors();
        let kernel = [
            "xsk_rx_dropped",
            "xsk_rx_ring_full",
            "xsk_fill_ring_empty",
            "xsk_tx_invalid",
        ]
        .into_iter()
        .zip(k)
        .chain([("xsk_bad_rx_desc", e.bad_rx)]);
        WorkerCounters {
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name(), c.drop_count(*r)))
                .chain(kernel)
                .collect(),
            events: Counters::EVENT_NAMES
                .into_iter()
                .zip(c.events())
                .chain([("xsk_bad_completion", e.bad_completion)])
                .collect(),
            interfaces,
            conntrack_entries: ss.conntrack_entries as u64,
            conntrack_capacity: ss.conntrack_capacity as u64,
            conntrack: ss.conntrack,
        }
    }
}

/// Adds `b`'s values into `a`'s entries of the same name (same order, as
/// every worker lists the same names; a name `a` lacks is appended).
fn sum_into<K: PartialEq + Clone, V: Copy + std::ops::AddAssign>(
    a: &mut Vec<(K, V)>,
    b: &[(K, V)],
) {
    for (k, v) in b {
        match a.iter_mut().find(|(x, _)| x == k) {
            Some((_, x)) => *x += *v,
            None => a.push((k.clone(), *v)),
        }
    }
}

/// The MAC of a veth's peer (the kernel side of the host interface), from
/// sysfs: `iflink` names the peer's ifindex. `None` if not a veth pair here.
fn peer_mac(ifname: &str) -> Option<EthernetAddress> {
    let base = std::path::Path::new("/sys/class/net");
    let iflink = std::fs::read_to_string(base.join(ifname).join("iflink")).ok()?;
    let own = std::fs::read_to_string(base.join(ifname).join("ifindex")).ok()?;
    if iflink.trim() == own.trim() {
        return None;
    }
    for dev in std::fs::read_dir(base).ok()?.flatten() {
        let idx = std::fs::read_to_string(dev.path().join("ifindex")).unwrap_or_default();
        if idx.trim() == iflink.trim() {
            let mac = std::fs::read_to_string(dev.path().join("address")).ok()?;
            return mac.trim().parse().ok();
        }
    }
    None
}

/// Adds what was counted per backend slot of `tables` into `into`, keyed
/// by `BackendKey`; ids in `skip` are left out.
fn add_backend_flows(
    into: &mut HashMap<BackendKey, BackendCounters>,
    tables: &Tables,
    counted: &[BackendCounters],
    skip: &[u32],
) {
    for (k, &n) in tables.services.backend_keys.iter().zip(counted) {
        if n != BackendCounters::default() && !skip.contains(&k.0) {
            *into.entry(*k).or_default() += n;
        }
    }
}

/// Adds the flows a worker counted per policy of `tables` into `into`, by
/// policy name.
fn add_policy_flows(
    into: &mut HashMap<String, PolicyFlows>,
    tables: &Tables,
    flows: &[PolicyFlows],
) {
    for (name, f) in tables.policy.names.iter().zip(flows) {
        if *f != PolicyFlows::default() {
            match into.get_mut(name) {
                Some(c) => *c += *f,
                None => {
                    into.insert(name.clone(), *f);
                }
            }
        }
    }
}

/// The pipeline's policy tables for the pods some policy isolates, with
/// policy names interned (per snapshot: ids are only the counters' index).
fn build_policy<'a>(pods: impl Iterator<Item = &'a crate::state::Pod>) -> Policies {
    let mut out = Policies::default();
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut table = |rules: &'a crate::state::PolicyRules, names: &mut Vec<String>| {
        // The table's own policy indexes, as node-wide ids.
        let id: Vec<u32> = rules
            .policies
            .iter()
            .map(|name| {
                *ids.entry(name.as_str()).or_insert_with(|| {
                    names.push(name.clone());
                    names.len() as u32 - 1
                })
            })
            .collect();
        let mut t = RuleTable::new(id.clone());
        let mut ranges = Vec::new();
        for (prefix, ports) in &rules.peers {
            ranges.clear();
            ranges.extend(ports.iter().map(|p| PortRange {
                proto: p.span.ip_proto(),
                first: p.span.first,
                last: p.span.last,
                policy: id[p.policy as usize],
            }));
            t.insert(*prefix, &ranges);
        }
        t
    };
    for pod in pods.filter(|p| p.ingress.is_some() || p.egress.is_some()) {
        let ingress = pod.ingress.as_ref().map(|r| table(r, &mut out.names));
        let egress = pod.egress.as_ref().map(|r| table(r, &mut out.names));
        out.pods.insert(pod.ip, PodPolicy { ingress, egress });
    }
    out
}
