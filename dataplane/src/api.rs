//! The dataplane's gRPC service: converts proto requests into domain types
//! (bad input -> INVALID_ARGUMENT naming the field, nothing applied) and
//! hands them to the engine thread, replying when it has applied them.

use crossbeam_channel::Sender;
use kxdp_proto::dataplane as pb;
use kxdp_proto::dataplane::dataplane_server::Dataplane;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::engine::{self, WriteError};
use crate::state::{changes_from_proto, State};

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

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> engine::Request,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.engine
            .send(make(tx))
            .map_err(|_| Status::unavailable("dataplane engine is shutting down"))?;
        rx.await
            .map_err(|_| Status::internal("dataplane engine dropped the request"))
    }
}

fn write_status(e: WriteError) -> Status {
    match e {
        WriteError::Invalid(f) => Status::invalid_argument(f.to_string()),
        WriteError::Precondition(m) => Status::failed_precondition(m),
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
            .ask(|tx| engine::Request::Sync(st, tx))
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
        Ok(Response::new(
            self.ask(|tx| engine::Request::GetState(summary, tx))
                .await?,
        ))
    }

    async fn list_conntrack(
        &self,
        req: Request<pb::ListConntrackRequest>,
    ) -> Result<Response<pb::ListConntrackReply>, Status> {
        let req = req.into_inner();
        let service = (!req.service.is_empty()).then_some(req.service);
        let limit = if req.limit == 0 {
            1000
        } else {
            req.limit.min(100_000)
        } as usize;
        Ok(Response::new(
            self.ask(|tx| engine::Request::ListConntrack(service, limit, tx))
                .await?,
        ))
    }

    async fn get_counters(
        &self,
        _: Request<pb::GetCountersRequest>,
    ) -> Result<Response<pb::GetCountersReply>, Status> {
        Ok(Response::new(self.ask(engine::Request::GetCounters).await?))
    }
}
