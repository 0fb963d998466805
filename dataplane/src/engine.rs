//! The state manager: one thread that owns the desired state, the XDP
//! attachments, the netlink socket and the workers' handles. gRPC handlers
//! send it [`Request`]s; it validates, applies, builds a new `Tables`
//! snapshot and waits until every worker has swapped it in before replying.
//!
//! A one-second tick retries pod interfaces that did not exist yet, notices
//! ones that went away, and refreshes underlay next-hop MACs from the
//! kernel's neighbour table (asking the kernel to resolve missing ones).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use kxdp_core::pipeline::{Counters, DropReason};
use kxdp_core::services::{Backend, Frontend, FrontendKey};
use kxdp_core::tables::{
    LocalPod, NodeInfo, PortId, PortInfo, PortKind, RemoteRoute, Tables, MAX_PORTS,
};
use kxdp_core::wire::EthernetAddress;
use kxdp_proto::dataplane as pb;
use tokio::sync::oneshot;

use crate::netlink::{self, Netlink};
use crate::state::{Change, FieldError, State};
use crate::sys::xsk::BindMode;
use crate::worker::{Command, PortCounters, WorkerHandle};
use crate::xdp::{Attachment, Role, XdpMode};

const TICK: Duration = Duration::from_secs(1);

/// Engine settings from the command line.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub workers: usize,
    pub cores: Vec<usize>,
    pub xdp_mode: XdpMode,
    pub copy_mode: bool,
    /// The workers' flow caches (`kxdp_core::pipeline::FlowCache`).
    pub flow_cache: bool,
}

/// Why a write was refused. Nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    Precondition(String),
}

pub enum Request {
    Sync(State, oneshot::Sender<Result<u64, WriteError>>),
    Update(u64, Vec<Change>, oneshot::Sender<Result<u64, WriteError>>),
    /// `true`: the state's generation only (`GetStateRequest.summary`).
    GetState(bool, oneshot::Sender<pb::GetStateReply>),
    GetCounters(oneshot::Sender<pb::GetCountersReply>),
    ListConntrack(
        Option<String>,
        usize,
        oneshot::Sender<pb::ListConntrackReply>,
    ),
}

struct Port {
    id: PortId,
    ifname: String,
    ifindex: u32,
    mac: EthernetAddress,
    kind: PortKind,
    xdp: Attachment,
}

#[derive(Debug, Clone)]
struct Status {
    state: pb::AttachState,
    detail: String,
}

#[derive(Debug, Clone, Copy)]
struct Neigh {
    next_hop: Ipv4Addr,
    mac: Option<EthernetAddress>,
}

pub struct Engine {
    cfg: EngineConfig,
    boot_id: String,
    state: State,
    netlink: Netlink,
    // Ports before workers: XDP detaches before the sockets close.
    ports: BTreeMap<String, Port>,
    free_ids: Vec<PortId>,
    pod_status: BTreeMap<String, Status>,
    uplink_status: String,
    neigh: HashMap<Ipv4Addr, Neigh>,
    /// Stable service ids (counters and conntrack entries refer to them);
    /// never reused while the process runs.
    service_ids: BTreeMap<String, u32>,
    /// Numbers the published snapshots (`Tables::epoch`).
    epoch: std::cell::Cell<u32>,
    /// The last snapshot's Maglev tables, reused while their backends stay.
    maglev: std::cell::RefCell<kxdp_core::services::MaglevCache>,
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
        Ok(Engine {
            cfg,
            boot_id,
            state: State::default(),
            netlink,
            ports: BTreeMap::new(),
            free_ids: (0..MAX_PORTS as PortId).rev().collect(),
            pod_status: BTreeMap::new(),
            uplink_status: "not configured".into(),
            neigh: HashMap::new(),
            service_ids: BTreeMap::new(),
            epoch: std::cell::Cell::new(0),
            maglev: Default::default(),
            workers,
        })
    }

    /// Serves requests until the channel closes, ticking every second.
    pub fn run(mut self, rx: Receiver<Request>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
                Ok(req) => self.handle(req),
                Err(RecvTimeoutError::Timeout) => {
                    self.tick();
                    next_tick = Instant::now() + TICK;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Detach XDP first (ports), then stop workers (sockets, UMEMs).
        self.ports.clear();
        self.workers.clear();
    }

    fn handle(&mut self, req: Request) {
        match req {
            Request::Sync(st, reply) => {
                let r = self.sync(st);
                let _ = reply.send(r);
            }
            Request::Update(generation, changes, reply) => {
                let r = self.update(generation, &changes);
                let _ = reply.send(r);
            }
            Request::GetState(summary, reply) => {
                let _ = reply.send(self.read_state(summary));
            }
            Request::GetCounters(reply) => {
                let _ = reply.send(self.counters());
            }
            Request::ListConntrack(service, limit, reply) => {
                let _ = reply.send(self.conntrack(service, limit));
            }
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
        self.apply(st);
        Ok(self.state.generation)
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
        self.apply(next);
        Ok(self.state.generation)
    }

    /// Makes `next` (already validated) the state: re-attaches what changed,
    /// then publishes new tables to every worker.
    fn apply(&mut self, next: State) {
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
        // Pods gone or changed lose their attachment.
        let stale: Vec<String> = self
            .state
            .pods
            .values()
            .filter(|p| next.pods.get(&p.name) != Some(p))
            .map(|p| p.ifname.clone())
            .collect();
        for ifname in stale {
            self.detach(&ifname);
        }
        self.pod_status
            .retain(|name, _| next.pods.contains_key(name));
        self.state = next;
        for name in self.state.services.keys() {
            let next_id = self.service_ids.len() as u32;
            self.service_ids.entry(name.clone()).or_insert(next_id);
        }
        self.reconcile_ports();
        self.refresh_neighbours();
        self.sync_node_ports();
        self.publish();
    }

    /// Tells the uplink's XDP program which NodePorts to redirect.
    fn sync_node_ports(&self) {
        let Some(node) = &self.state.node else { return };
        let Some(up) = self.ports.get(&node.uplink) else {
            return;
        };
        let ports: Vec<(u8, u16)> = self
            .state
            .services
            .values()
            .flat_map(|s| {
                s.ports
                    .iter()
                    .filter_map(|(_, p)| p.node_port.map(|np| (p.proto, np)))
            })
            .collect();
        if let Err(e) = up.xdp.set_node_ports(&ports) {
            log::error!("NodePorts on the uplink: {e}");
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
            };
            self.uplink_status = match self.attach(&node.uplink, PortKind::Uplink, role) {
                Ok(Some(mode)) => {
                    self.sync_node_ports();
                    format!("attached ({mode} XDP)")
                }
                Ok(None) => "pending: interface not found".into(),
                Err(e) => format!("failed: {e}"),
            };
        }
        if let Some(h) = node.host_interface.clone() {
            if !self.ports.contains_key(&h) {
                match peer_mac(&h) {
                    Some(peer_mac) => match self.attach(&h, PortKind::Host { peer_mac }, Role::Pod)
                    {
                        Ok(Some(_)) => log::info!("host interface {h} attached"),
                        Ok(None) => {}
                        Err(e) => log::warn!("host interface {h}: {e}"),
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
                Ok(Some(mode)) => Status {
                    state: pb::AttachState::Attached,
                    detail: format!("{mode} XDP"),
                },
                Ok(None) => Status {
                    state: pb::AttachState::Pending,
                    detail: format!("interface {} not found", p.ifname),
                },
                Err(e) => Status {
                    state: pb::AttachState::Failed,
                    detail: e,
                },
            };
            let prev = self.pod_status.get(&p.name);
            if prev.map(|s| (s.state, &s.detail)) != Some((st.state, &st.detail)) {
                if st.state == pb::AttachState::Attached {
                    log::info!("pod {} attached on {}", p.name, p.ifname);
                } else {
                    log::warn!("pod {}: {}", p.name, st.detail);
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
        log::info!("detached {}", port.ifname);
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
            log::warn!("interface {ifname} went away");
            self.detach(&ifname);
        }
        let before = self.ports.len();
        self.reconcile_ports();
        changed |= self.ports.len() != before;
        changed |= self.refresh_neighbours();
        if changed {
            self.publish();
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
                if let Err(e) = self.netlink.resolve(uplink, next_hop) {
                    log::warn!("resolving {next_hop}: {e}");
                }
            }
            next.insert(r.vtep_ip, Neigh { next_hop, mac });
        }
        let changed = next.len() != self.neigh.len()
            || next.iter().any(|(k, v)| {
                self.neigh.get(k).map(|o| (o.next_hop, o.mac)) != Some((v.next_hop, v.mac))
            });
        self.neigh = next;
        changed
    }

    fn build_tables(&self, without: Option<PortId>) -> Tables {
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
        self.build_services(&mut t, n);
        for r in self.state.remotes.values() {
            t.routes.insert(
                r.pod_cidr,
                RemoteRoute {
                    vtep_ip: r.vtep_ip,
                    vtep_mac: r.vtep_mac,
                    next_hop_mac: self.neigh.get(&r.vtep_ip).and_then(|n| n.mac),
                },
            );
        }
        t
    }

    fn build_services(&self, t: &mut Tables, n: &crate::state::NodeCfg) {
        t.services.cidr = n.service_cidr;
        let max_id = self.service_ids.values().max().map_or(0, |m| m + 1);
        t.services.names = vec![String::new(); max_id as usize];
        for (name, id) in &self.service_ids {
            t.services.names[*id as usize] = name.clone();
        }
        let mut cache = self.maglev.borrow_mut();
        let cache = &mut *cache;
        for sv in self.state.services.values() {
            let id = self.service_ids[&sv.name];
            let affinity = sv.affinity_s.map(|s| s as u64 * 1_000_000_000);
            for (_, port) in &sv.ports {
                let backends: Vec<Backend> = sv
                    .endpoints
                    .iter()
                    .map(|e| Backend {
                        ip: e.ip,
                        port: port.target_port,
                        ready: e.ready && !e.terminating,
                        serving: e.serving || e.ready,
                        local: n.pod_cidr.contains(e.ip),
                    })
                    .collect();
                let key = FrontendKey {
                    addr: sv.cluster_ip,
                    proto: port.proto,
                    port: port.port,
                };
                t.services.insert(Frontend::with_cache(
                    id,
                    key,
                    backends.clone(),
                    affinity,
                    false,
                    false,
                    cache,
                ));
                if let Some(np) = port.node_port {
                    let key = FrontendKey {
                        addr: n.underlay_ip,
                        proto: port.proto,
                        port: np,
                    };
                    t.services.insert(Frontend::with_cache(
                        id, key, backends, affinity, true, sv.local, cache,
                    ));
                }
            }
        }
        t.services.finish();
        cache.finish();
    }

    fn publish(&self) {
        self.push(self.build_tables(None));
    }

    fn publish_without(&self, port: PortId) {
        self.push(self.build_tables(Some(port)));
    }

    /// Sends the snapshot to every worker and waits for each to swap it in.
    fn push(&self, mut t: Tables) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        t.epoch = self.epoch.get();
        let t = Arc::new(t);
        for w in &self.workers {
            let acked = w.call(|reply| Command::Tables {
                tables: t.clone(),
                reply,
            });
            if acked.is_none() {
                log::error!("worker {} did not acknowledge new tables", w.index);
            }
        }
    }

    /// Per-service counters merged over workers, and conntrack fill.
    fn service_counters(&self) -> (Vec<pb::ServiceCounters>, u64, u64) {
        let stats: Vec<_> = self
            .workers
            .iter()
            .filter_map(|w| w.call(|reply| Command::ServiceStats { reply }))
            .collect();
        let (mut entries, mut cap) = (0, 0);
        let mut flows: HashMap<(u32, Ipv4Addr, u16), u64> = HashMap::new();
        for s in &stats {
            entries += s.conntrack_entries as u64;
            cap += s.conntrack_capacity as u64;
            for (k, v) in &s.backend_flows {
                *flows.entry(*k).or_default() += v;
            }
        }
        let services = self
            .state
            .services
            .values()
            .map(|sv| {
                let id = self.service_ids[&sv.name] as usize;
                let mut c = pb::ServiceCounters {
                    name: sv.name.clone(),
                    ..Default::default()
                };
                for s in &stats {
                    if let Some(x) = s.services.get(id) {
                        c.packets += x.packets;
                        c.bytes += x.bytes;
                        c.new_flows += x.new_flows;
                        c.no_endpoint += x.no_endpoint;
                    }
                }
                for e in &sv.endpoints {
                    for (_, p) in &sv.ports {
                        c.backends.push(pb::BackendCounters {
                            ip: e.ip.to_string(),
                            port: p.target_port as u32,
                            new_flows: flows
                                .get(&(id as u32, e.ip, p.target_port))
                                .copied()
                                .unwrap_or(0),
                        });
                    }
                }
                c
            })
            .collect();
        (services, entries, cap)
    }

    fn conntrack(&self, service: Option<String>, limit: usize) -> pb::ListConntrackReply {
        let names: HashMap<u32, &String> =
            self.service_ids.iter().map(|(n, id)| (*id, n)).collect();
        let sid = match &service {
            Some(name) => match self.service_ids.get(name) {
                Some(id) => Some(*id),
                None => return pb::ListConntrackReply::default(),
            },
            None => None,
        };
        let mut out = pb::ListConntrackReply::default();
        for w in &self.workers {
            let Some((entries, total)) = w.call(|reply| Command::Conntrack {
                service: sid,
                limit,
                reply,
            }) else {
                continue;
            };
            out.total += total as u64;
            for (e, idle_ns) in entries {
                if out.entries.len() >= limit {
                    break;
                }
                let ap = |ip: Ipv4Addr, port: u16| format!("{ip}:{port}");
                let snat = e.reply.dst != e.original.src || e.reply.dport != e.original.sport;
                out.entries.push(pb::ConntrackEntry {
                    protocol: if e.original.proto == 6 {
                        pb::Protocol::Tcp
                    } else {
                        pb::Protocol::Udp
                    } as i32,
                    client: ap(e.original.src, e.original.sport),
                    service: ap(e.original.dst, e.original.dport),
                    backend: ap(e.reply.src, e.reply.sport),
                    snat: if snat {
                        ap(e.reply.dst, e.reply.dport)
                    } else {
                        String::new()
                    },
                    state: if e.original.proto == 6 {
                        format!("{:?}", e.tcp).to_lowercase()
                    } else {
                        "udp".into()
                    },
                    idle_ms: idle_ns / 1_000_000,
                    service_name: names
                        .get(&e.service)
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                });
            }
        }
        out
    }

    fn read_state(&self, summary: bool) -> pb::GetStateReply {
        let pods = self
            .state
            .pods
            .keys()
            .map(|name| {
                let st = self.pod_status.get(name);
                pb::PodStatus {
                    name: name.clone(),
                    state: st.map_or(pb::AttachState::Pending, |s| s.state) as i32,
                    detail: st.map(|s| s.detail.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let uplink = self
            .state
            .node
            .as_ref()
            .map(|n| n.uplink.clone())
            .unwrap_or_default();
        let neighbours = self
            .neigh
            .values()
            .map(|n| pb::NeighbourStatus {
                ip: n.next_hop.to_string(),
                mac: n.mac.map(|m| m.to_string()).unwrap_or_default(),
                ifname: uplink.clone(),
            })
            .collect();
        let state = if summary {
            pb::DataplaneState {
                generation: self.state.generation,
                ..Default::default()
            }
        } else {
            self.state.to_proto()
        };
        pb::GetStateReply {
            state: Some(state),
            boot_id: self.boot_id.clone(),
            pods,
            neighbours,
            workers: self.workers.len() as u32,
            uplink_status: self.uplink_status.clone(),
        }
    }

    fn counters(&self) -> pb::GetCountersReply {
        let mut c = Counters::default();
        for w in &self.workers {
            c.merge(&w.stats.counters());
        }
        let interfaces = self
            .ports
            .values()
            .map(|p| {
                let mut s = PortCounters::default();
                for w in &self.workers {
                    let x = w.stats.port(p.id);
                    s.rx_packets += x.rx_packets;
                    s.rx_bytes += x.rx_bytes;
                    s.tx_packets += x.tx_packets;
                    s.tx_bytes += x.tx_bytes;
                    s.tx_ring_full += x.tx_ring_full;
                }
                pb::InterfaceCounters {
                    ifname: p.ifname.clone(),
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                    tx_ring_full: s.tx_ring_full,
                }
            })
            .collect();
        let (services, conntrack_entries, conntrack_capacity) = self.service_counters();
        // Drops the kernel counts before a frame reaches a worker.
        let mut k = [0u64; 4];
        for w in &self.workers {
            for (_, s) in w
                .call(|reply| Command::KernelStats { reply })
                .unwrap_or_default()
            {
                k[0] += s.rx_dropped;
                k[1] += s.rx_ring_full;
                k[2] += s.rx_fill_ring_empty;
                k[3] += s.tx_invalid;
            }
        }
        let kernel = [
            "xsk_rx_dropped",
            "xsk_rx_ring_full",
            "xsk_fill_ring_empty",
            "xsk_tx_invalid",
        ]
        .iter()
        .zip(k)
        .map(|(r, n)| pb::DropCounter {
            reason: r.to_string(),
            packets: n,
        });
        pb::GetCountersReply {
            interfaces,
            drops: DropReason::ALL
                .iter()
                .map(|r| pb::DropCounter {
                    reason: r.name().to_string(),
                    packets: c.drop_count(*r),
                })
                .chain(kernel)
                .collect(),
            counters: Counters::EVENT_NAMES
                .iter()
                .zip(c.events())
                .map(|(name, value)| pb::Counter {
                    name: name.to_string(),
                    value,
                })
                .collect(),
            services,
            conntrack_entries,
            conntrack_capacity,
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
