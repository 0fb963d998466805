//! The dataplane's gRPC service: converts proto requests into domain types
//! (bad input -> INVALID_ARGUMENT naming the field, nothing applied) and
//! hands them to the engine thread, replying when it has applied them. The
//! engine answers reads with domain snapshots, rendered to proto here.

use crossbeam_channel::{Sender, TrySendError};
use kxdp_proto::dataplane as pb;
use kxdp_proto::dataplane::dataplane_server::Dataplane;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::engine::{
    self, AttachState, ConntrackCursor, ConntrackList, ConntrackQuery, CountersSnapshot,
    StateSnapshot, WriteError,
};
use crate::state::{changes_from_proto, State};
use crate::watch;

pub struct Service {
    engine: Sender<engine::Request>,
    /// `--node`: when given, a Sync for any other node is refused.
    node: Option<String>,
}

impl Service {
    pub fn new(engine: Sender<engine::Request>, node: Option<String>) -> Service {
        Service { engine, node }
    }

    /// A Sync names the node it is for; a dataplane told which node it is
    /// takes no other node's state (a control process dialing the wrong
    /// socket, or two dataplanes sharing one, would otherwise swap identities).
    fn check_node(&self, st: &pb::DataplaneState) -> Result<(), Status> {
        let (Some(mine), Some(cfg)) = (&self.node, &st.node) else {
            return Ok(());
        };
        if cfg.name == *mine {
            return Ok(());
        }
        Err(Status::failed_precondition(format!(
            "this dataplane serves node {mine:?} (--node / KXDP_NODE) but was sent node {:?}'s \
             state: point kxdp-control's node {:?} at its own dataplane's socket, or start \
             this dataplane with --node {:?}",
            cfg.name, cfg.name, cfg.name
        )))
    }

    /// Hands a request to the engine thread and awaits its answer without
    /// ever blocking the runtime's thread: the engine's queue is bounded, so
    /// when it is full the wait moves to tokio's blocking pool (the one
    /// runtime thread keeps serving the other calls and the health checks).
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> engine::Request,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        send_to_engine(&self.engine, make(tx)).await?;
        rx.await
            .map_err(|_| Status::internal("dataplane engine dropped the request"))
    }
}

/// Sends without blocking the caller's runtime thread (see `Service::ask`).
async fn send_to_engine(
    engine: &Sender<engine::Request>,
    req: engine::Request,
) -> Result<(), Status> {
    let gone = || Status::unavailable("dataplane engine is shutting down");
    match engine.try_send(req) {
        Ok(()) => Ok(()),
        Err(TrySendError::Disconnected(_)) => Err(gone()),
        Err(TrySendError::Full(req)) => {
            let engine = engine.clone();
            tokio::task::spawn_blocking(move || engine.send(req))
                .await
                .map_err(|_| Status::internal("dataplane engine queue task failed"))?
                .map_err(|_| gone())
        }
    }
}

fn write_status(e: WriteError) -> Status {
    match e {
        WriteError::Invalid(f) => Status::invalid_argument(f.to_string()),
        WriteError::Precondition(m) => Status::failed_precondition(m),
        // INTERNAL, not UNAVAILABLE: the dataplane answered (control reads
        // UNAVAILABLE as "not there" and drops its connection).
        e @ WriteError::Unacknowledged { .. } => Status::internal(e.to_string()),
    }
}

#[tonic::async_trait]
impl Dataplane for Service {
    async fn sync(
        &self,
        req: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let st = req
            .into_inner()
            .state
            .ok_or_else(|| Status::invalid_argument("state: missing"))?;
        self.check_node(&st)?;
        let st = State::try_from(&st).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let generation = self
            .ask(|tx| engine::Request::Sync(Box::new(st), tx))
            .await?
            .map_err(write_status)?;
        Ok(Response::new(pb::WriteReply { generation }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let req = req.into_inner();
        let changes = changes_from_proto(&req.changes)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let generation = self
            .ask(|tx| engine::Request::Update(req.generation, changes, tx))
            .await?
            .map_err(write_status)?;
        Ok(Response::new(pb::WriteReply { generation }))
    }

    async fn get_state(
        &self,
        req: Request<pb::GetStateRequest>,
    ) -> Result<Response<pb::GetStateReply>, Status> {
        let summary = req.into_inner().summary;
        let snap = self.ask(engine::Request::GetState).await?;
        Ok(Response::new(state_reply(snap, summary)))
    }

    async fn list_conntrack(
        &self,
        req: Request<pb::ListConntrackRequest>,
    ) -> Result<Response<pb::ListConntrackReply>, Status> {
        let query = conntrack_query(req.into_inner())?;
        let list = self
            .ask(|tx| engine::Request::ListConntrack(query, tx))
            .await?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(conntrack_reply(list)))
    }

    async fn get_counters(
        &self,
        _: Request<pb::GetCountersRequest>,
    ) -> Result<Response<pb::GetCountersReply>, Status> {
        let counters = self.ask(engine::Request::GetCounters).await?;
        Ok(Response::new(counters_reply(counters)))
    }

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<pb::WatchReply>, Status> {
        let query = watch::query(req.into_inner())?;
        let armed = self
            .ask(|tx| engine::Request::Watch(query, tx))
            .await?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let reply = tokio::task::spawn_blocking(move || watch::collect(armed))
            .await
            .map_err(|_| Status::internal("the trace's collecting task failed"))?;
        Ok(Response::new(reply))
    }
}

/// A `ListConntrack` request as the engine takes it: the page size within
/// its limit, the page token parsed.
fn conntrack_query(req: pb::ListConntrackRequest) -> Result<ConntrackQuery, Status> {
    use kxdp_proto::limits::{DEFAULT_CONNTRACK_PAGE, MAX_CONNTRACK_PAGE};
    let limit = match req.limit as usize {
        0 => DEFAULT_CONNTRACK_PAGE,
        n if n > MAX_CONNTRACK_PAGE => {
            return Err(Status::invalid_argument(format!(
                "limit: {n} entries, over the limit of {MAX_CONNTRACK_PAGE} per page"
            )))
        }
        n => n,
    };
    let from = match req.page_token.as_str() {
        "" => None,
        t => Some(t.parse::<ConntrackCursor>().map_err(|()| {
            Status::invalid_argument(format!(
                "page_token: {t:?} is not a token this dataplane gave"
            ))
        })?),
    };
    Ok(ConntrackQuery {
        service: (!req.service.is_empty()).then_some(req.service),
        limit,
        from,
    })
}

/// `summary`: the state's generation only, not its contents.
fn state_reply(s: StateSnapshot, summary: bool) -> pb::GetStateReply {
    let uplink = s.state.node.as_ref().map(|n| n.uplink.clone());
    let state = if summary {
        pb::DataplaneState {
            generation: s.state.generation,
            ..Default::default()
        }
    } else {
        s.state.to_proto()
    };
    pb::GetStateReply {
        state: Some(state),
        boot_id: s.boot_id,
        pods: s
            .pods
            .into_iter()
            .map(|(name, st)| pb::PodStatus {
                name,
                state: match st.state {
                    AttachState::Attached => pb::AttachState::Attached,
                    AttachState::Pending => pb::AttachState::Pending,
                    AttachState::Failed => pb::AttachState::Failed,
                } as i32,
                detail: st.detail,
            })
            .collect(),
        neighbours: s
            .neighbours
            .iter()
            .map(|n| pb::NeighbourStatus {
                ip: n.next_hop.to_string(),
                mac: n.mac.map(|m| m.to_string()).unwrap_or_default(),
                ifname: uplink.clone().unwrap_or_default(),
            })
            .collect(),
        workers: s.workers as u32,
        uplink_status: s.uplink_status,
    }
}

fn counters_reply(c: CountersSnapshot) -> pb::GetCountersReply {
    pb::GetCountersReply {
        interfaces: c
            .interfaces
            .into_iter()
            .map(|(ifname, s)| pb::InterfaceCounters {
                ifname,
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                tx_ring_full: s.tx_ring_full,
            })
            .collect(),
        drops: c
            .drops
            .into_iter()
            .map(|(reason, packets)| pb::DropCounter {
                reason: reason.to_string(),
                packets,
            })
            .collect(),
        counters: c
            .events
            .into_iter()
            .map(|(name, value)| pb::Counter {
                name: name.to_string(),
                value,
            })
            .collect(),
        services: c
            .services
            .into_iter()
            .map(|sv| pb::ServiceCounters {
                name: sv.name,
                packets: sv.totals.packets,
                bytes: sv.totals.bytes,
                new_flows: sv.totals.new_flows,
                no_endpoint: sv.totals.no_endpoint,
                backends: sv
                    .backends
                    .into_iter()
                    .map(|(ip, port, protocol, c)| pb::BackendCounters {
                        ip: ip.to_string(),
                        port: port as u32,
                        new_flows: c.new_flows,
                        protocol: pb::Protocol::from(protocol) as i32,
                        packets: c.packets,
                        bytes: c.bytes,
                    })
                    .collect(),
            })
            .collect(),
        conntrack_entries: c.conntrack_entries,
        conntrack_capacity: c.conntrack_capacity,
        policies: c
            .policies
            .into_iter()
            .map(|(name, f)| pb::PolicyCounters {
                name,
                flows_allowed: f.allowed,
                flows_denied: f.denied,
            })
            .collect(),
    }
}

fn conntrack_reply(l: ConntrackList) -> pb::ListConntrackReply {
    let ap = |ip: std::net::Ipv4Addr, port: u16| format!("{ip}:{port}");
    let entries = l
        .entries
        .into_iter()
        .map(|(e, idle_ns, service_name)| {
            let tcp = e.original.proto == 6;
            let snat = e.reply.dst != e.original.src || e.reply.dport != e.original.sport;
            pb::ConntrackEntry {
                protocol: if tcp {
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
                state: if tcp {
                    format!("{:?}", e.tcp).to_lowercase()
                } else {
                    "udp".into()
                },
                idle_ms: idle_ns / 1_000_000,
                service_name,
            }
        })
        .collect();
    pb::ListConntrackReply {
        entries,
        total: l.total,
        next_page_token: l.next.map(|c| c.to_string()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// A full engine queue makes a call wait off the runtime's one thread:
    /// the runtime keeps running other tasks meanwhile.
    #[test]
    fn a_full_engine_queue_does_not_block_the_runtime() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        tx.send(engine::Request::GetState(oneshot::channel().0))
            .unwrap();
        let drained = Arc::new(AtomicBool::new(false));
        let engine = {
            let drained = drained.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(1000));
                drained.store(true, Ordering::SeqCst);
                (rx.recv().is_ok(), rx.recv().is_ok())
            })
        };
        rt.block_on(async move {
            let send = tokio::spawn(async move {
                send_to_engine(&tx, engine::Request::GetState(oneshot::channel().0)).await
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                !drained.load(Ordering::SeqCst),
                "the runtime's thread was blocked until the engine drained its queue"
            );
            send.await.unwrap().unwrap();
        });
        assert_eq!(engine.join().unwrap(), (true, true));
    }
}
