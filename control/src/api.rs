//! The Control gRPC service: what orchestration and kxdpctl call.
//!
//! Reads answer from the desired state and the reconcilers' last view of each
//! dataplane; only `GetNodeCounters` and `ListConntrack` go to a dataplane
//! live.

use std::sync::Arc;
use std::time::Duration;

use kxdp_proto::control::control_server::Control;
use kxdp_proto::control::{
    AddPodReply, AddPodRequest, ApplyClusterReply, ApplyClusterRequest, DeleteNamespaceReply,
    DeleteNamespaceRequest, DeleteNetworkPolicyReply, DeleteNetworkPolicyRequest, DeletePodReply,
    DeletePodRequest, DeleteServiceReply, DeleteServiceRequest, ExplainPolicyReply,
    ExplainPolicyRequest, GetNodeCountersRequest, ListNamespacesReply, ListNamespacesRequest,
    ListNetworkPoliciesReply, ListNetworkPoliciesRequest, ListNodeConntrackRequest, ListNodesReply,
    ListNodesRequest, ListPodsReply, ListPodsRequest, ListPoliciesReply, ListPoliciesRequest,
    ListRoutesReply, ListRoutesRequest, ListServicesReply, ListServicesRequest, NodeInfo, PodInfo,
    PodPolicyInfo, UpsertNamespaceReply, UpsertNamespaceRequest, UpsertNetworkPolicyReply,
    UpsertNetworkPolicyRequest, UpsertServiceReply, UpsertServiceRequest, WatchNodeRequest,
};
use kxdp_proto::dataplane::dataplane_client::DataplaneClient;
use kxdp_proto::dataplane::{
    AttachState, GetCountersReply, GetCountersRequest, ListConntrackReply, ListConntrackRequest,
    PodStatus, WatchReply,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::cluster::{Cluster, DataplaneKind};
use crate::plan;
use crate::policy;
use crate::reconcile::{Phase, Shared, StatusMap};
use crate::store::DesiredStore;
use crate::uds;

/// How long `ApplyCluster` waits for the reachable nodes to take the new state.
pub const DEFAULT_APPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Live reads (counters, conntrack) are cheap on the dataplane: answer fast
/// or not at all.
pub const LIVE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct ControlService {
    /// The desired state (read) and the reconcilers' status (waited on).
    shared: Arc<Shared>,
    /// Where writes go: the file's state in memory, or etcd.
    store: Arc<dyn DesiredStore>,
    apply_timeout: Duration,
}

impl ControlService {
    /// `store` feeds `shared`.
    pub fn new(
        shared: Arc<Shared>,
        store: Arc<dyn DesiredStore>,
        apply_timeout: Duration,
    ) -> ControlService {
        ControlService {
            shared,
            store,
            apply_timeout,
        }
    }

    /// Waits until every kxdp node of `generation` has had an attempt at it;
    /// returns the nodes that were unreachable, or an error naming the nodes
    /// that refused it or did not finish in time.
    async fn wait_for_nodes(
        &self,
        generation: u64,
        nodes: &[String],
    ) -> Result<Vec<String>, Status> {
        let mut rx = self.shared.status.subscribe();
        let attempted = |m: &StatusMap| {
            nodes.iter().all(|n| {
                m.get(n)
                    .is_some_and(|s| s.attempted_generation >= generation)
            })
        };
        let waited = tokio::time::timeout(self.apply_timeout, rx.wait_for(attempted)).await;
        let status = self.shared.status.borrow().clone();
        let phase = |n: &String| status.get(n).map_or(Phase::Pending, |s| s.phase.clone());
        if waited.is_err() {
            let late: Vec<String> = nodes
                .iter()
                .filter(|n| {
                    status
                        .get(*n)
                        .is_none_or(|s| s.attempted_generation < generation)
                })
                .map(|n| format!("{n} ({})", phase(n).describe()))
                .collect();
            return Err(Status::deadline_exceeded(format!(
                "generation {generation} is the desired state, but these nodes did not answer within {:?}: {}",
                self.apply_timeout,
                late.join(", ")
            )));
        }
        let failed: Vec<String> = nodes
            .iter()
            .filter(|n| matches!(phase(n), Phase::Failed(_)))
            .map(|n| format!("{n} ({})", phase(n).describe()))
            .collect();
        if !failed.is_empty() {
            return Err(Status::internal(format!(
                "generation {generation} is the desired state, but these dataplanes refused it: {}",
                failed.join("; ")
            )));
        }
        Ok(nodes
            .iter()
            .filter(|n| matches!(phase(n), Phase::Unreachable(_)))
            .cloned()
            .collect())
    }

    /// Waits until `node`'s dataplane holds `generation` (or a later one).
    /// A node that does not get there in time is DEADLINE_EXCEEDED, one that
    /// refuses it INTERNAL, both naming the node.
    async fn wait_for_node(&self, generation: u64, node: &str) -> Result<(), Status> {
        if !self.shared.current().states.contains_key(node) {
            return Ok(());
        }
        let mut rx = self.shared.status.subscribe();
        let done = |m: &StatusMap| {
            m.get(node).is_some_and(|s| {
                (s.phase == Phase::Synced && s.applied_generation >= generation)
                    || (matches!(s.phase, Phase::Failed(_)) && s.attempted_generation >= generation)
            })
        };
        let waited = tokio::time::timeout(self.apply_timeout, rx.wait_for(done))
            .await
            .map(|_| ());
        let phase = self
            .shared
            .status
            .borrow()
            .get(node)
            .map_or(Phase::Pending, |s| s.phase.clone());
        match (waited, phase) {
            (Err(_), phase) => Err(Status::deadline_exceeded(format!(
                "generation {generation} is the desired state, but node {node}'s dataplane did not take it within {:?} ({})",
                self.apply_timeout,
                phase.describe()
            ))),
            (Ok(_), phase @ Phase::Failed(_)) => Err(Status::internal(format!(
                "generation {generation} is the desired state, but node {node}'s dataplane refused it ({})",
                phase.describe()
            ))),
            (Ok(_), _) => Ok(()),
        }
    }

    /// Like [`Self::wait_for_nodes`] for every kxdp node.
    async fn wait_for_all(&self, generation: u64) -> Result<(), Status> {
        let nodes: Vec<String> = self.shared.current().states.keys().cloned().collect();
        self.wait_for_reachable(generation, &nodes).await
    }

    /// [`Self::wait_for_nodes`], unreachable nodes logged: they get the
    /// state when they answer.
    async fn wait_for_reachable(&self, generation: u64, nodes: &[String]) -> Result<(), Status> {
        let unreachable = self.wait_for_nodes(generation, nodes).await?;
        if !unreachable.is_empty() {
            log::warn!(
                "generation {generation}: unreachable nodes will be synced when they answer: {}",
                unreachable.join(", ")
            );
        }
        Ok(())
    }

    /// A client of `name`'s dataplane, for a live read.
    async fn dataplane_client(&self, name: &str) -> Result<DataplaneClient<Channel>, Status> {
        let desired = self.shared.current();
        let node = desired
            .cluster
            .node(name)
            .ok_or_else(|| Status::not_found(format!("no node named {name:?}")))?;
        if !node.is_kxdp() {
            return Err(Status::failed_precondition(format!(
                "{name} is a kernel node: it has no kxdp dataplane"
            )));
        }
        let socket = node.socket_path(&self.shared.dataplane_dir);
        let channel = uds::connect(&socket).await.map_err(|e| {
            let cause = uds::io_cause(&e).map_or_else(|| e.to_string(), |io| io.to_string());
            Status::unavailable(format!(
                "{name}: dataplane at {} unreachable: {cause}",
                socket.display()
            ))
        })?;
        Ok(DataplaneClient::new(channel)
            .max_decoding_message_size(kxdp_proto::MAX_MESSAGE_SIZE)
            .max_encoding_message_size(kxdp_proto::MAX_MESSAGE_SIZE))
    }

    fn known_node(cluster: &Cluster, name: &str) -> Result<(), Status> {
        if name.is_empty() || cluster.node(name).is_some() {
            Ok(())
        } else {
            Err(Status::not_found(format!("no node named {name:?}")))
        }
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn add_pod(
        &self,
        request: Request<AddPodRequest>,
    ) -> Result<Response<AddPodReply>, Status> {
        let req = request.into_inner();
        let generation = self.store.add_pod(&req).await?;
        self.wait_for_node(generation, &req.node).await?;
        Ok(Response::new(AddPodReply { generation }))
    }

    async fn delete_pod(
        &self,
        request: Request<DeletePodRequest>,
    ) -> Result<Response<DeletePodReply>, Status> {
        let req = request.into_inner();
        let (generation, existed) = self.store.delete_pod(&req.node, &req.name).await?;
        if existed {
            self.wait_for_node(generation, &req.node).await?;
        }
        Ok(Response::new(DeletePodReply {
            generation,
            existed,
        }))
    }

    async fn upsert_service(
        &self,
        request: Request<UpsertServiceRequest>,
    ) -> Result<Response<UpsertServiceReply>, Status> {
        let proto = request
            .into_inner()
            .service
            .ok_or_else(|| Status::invalid_argument("service: missing"))?;
        let generation = self.store.upsert_service(&proto).await?;
        self.wait_for_all(generation).await?;
        Ok(Response::new(UpsertServiceReply { generation }))
    }

    async fn delete_service(
        &self,
        request: Request<DeleteServiceRequest>,
    ) -> Result<Response<DeleteServiceReply>, Status> {
        let name = request.into_inner().name;
        let (generation, existed) = self.store.delete_service(&name).await?;
        if existed {
            self.wait_for_all(generation).await?;
        }
        Ok(Response::new(DeleteServiceReply {
            generation,
            existed,
        }))
    }

    async fn list_services(
        &self,
        _: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesReply>, Status> {
        let desired = self.shared.current();
        let services = desired
            .runtime
            .all_services(&desired.cluster)
            .map(|s| s.to_proto())
            .collect();
        Ok(Response::new(ListServicesReply { services }))
    }

    async fn upsert_network_policy(
        &self,
        request: Request<UpsertNetworkPolicyRequest>,
    ) -> Result<Response<UpsertNetworkPolicyReply>, Status> {
        let policies = request.into_inner().policies;
        let generation = self.store.upsert_policies(&policies).await?;
        self.wait_for_all(generation).await?;
        Ok(Response::new(UpsertNetworkPolicyReply { generation }))
    }

    async fn delete_network_policy(
        &self,
        request: Request<DeleteNetworkPolicyRequest>,
    ) -> Result<Response<DeleteNetworkPolicyReply>, Status> {
        let req = request.into_inner();
        let name = policy::full_name(&req.namespace, &req.name);
        let (generation, existed) = self.store.delete_policy(&name).await?;
        if existed {
            self.wait_for_all(generation).await?;
        }
        Ok(Response::new(DeleteNetworkPolicyReply {
            generation,
            existed,
        }))
    }

    async fn list_network_policies(
        &self,
        _: Request<ListNetworkPoliciesRequest>,
    ) -> Result<Response<ListNetworkPoliciesReply>, Status> {
        let desired = self.shared.current();
        let sourced = |source: &'static str| {
            move |p: &policy::NetworkPolicy| kxdp_proto::control::NetworkPolicy {
                source: source.to_string(),
                ..p.to_proto()
            }
        };
        let policies = (desired.cluster.policies.iter().map(sourced("file")))
            .chain(desired.runtime.policies.values().map(sourced("runtime")))
            .collect();
        Ok(Response::new(ListNetworkPoliciesReply { policies }))
    }

    async fn upsert_namespace(
        &self,
        request: Request<UpsertNamespaceRequest>,
    ) -> Result<Response<UpsertNamespaceReply>, Status> {
        let proto = request
            .into_inner()
            .namespace
            .ok_or_else(|| Status::invalid_argument("namespace: missing"))?;
        let generation = self.store.upsert_namespace(&proto).await?;
        self.wait_for_all(generation).await?;
        Ok(Response::new(UpsertNamespaceReply { generation }))
    }

    async fn delete_namespace(
        &self,
        request: Request<DeleteNamespaceRequest>,
    ) -> Result<Response<DeleteNamespaceReply>, Status> {
        let name = request.into_inner().name;
        let (generation, existed) = self.store.delete_namespace(&name).await?;
        if existed {
            self.wait_for_all(generation).await?;
        }
        Ok(Response::new(DeleteNamespaceReply {
            generation,
            existed,
        }))
    }

    async fn list_namespaces(
        &self,
        _: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesReply>, Status> {
        let desired = self.shared.current();
        let sourced = |source: &'static str| {
            move |n: &policy::Namespace| kxdp_proto::control::Namespace {
                source: source.to_string(),
                ..n.to_proto()
            }
        };
        let namespaces = (desired.cluster.namespaces.iter().map(sourced("file")))
            .chain(desired.runtime.namespaces.values().map(sourced("runtime")))
            .collect();
        Ok(Response::new(ListNamespacesReply { namespaces }))
    }

    async fn list_conntrack(
        &self,
        request: Request<ListNodeConntrackRequest>,
    ) -> Result<Response<ListConntrackReply>, Status> {
        let req = request.into_inner();
        let mut client = self.dataplane_client(&req.node).await?;
        let call = client.list_conntrack(ListConntrackRequest {
            service: req.service,
            limit: req.limit,
            page_token: req.page_token,
        });
        live(&req.node, "ListConntrack", call).await
    }

    async fn watch(
        &self,
        request: Request<WatchNodeRequest>,
    ) -> Result<Response<WatchReply>, Status> {
        let req = request.into_inner();
        let watch = req.request.unwrap_or_default();
        let mut client = self.dataplane_client(&req.node).await?;
        // The dataplane answers within the watch's own timeout (0: its
        // default of 10 s; more than 60 s it refuses).
        let wait = match watch.timeout_ms {
            0 => Duration::from_secs(10),
            ms => Duration::from_millis(ms.into()),
        };
        let call = client.watch(watch);
        live_within(&req.node, "Watch", wait + LIVE_TIMEOUT, call).await
    }

    async fn apply_cluster(
        &self,
        request: Request<ApplyClusterRequest>,
    ) -> Result<Response<ApplyClusterReply>, Status> {
        let applied = self.store.apply_cluster(&request.into_inner().yaml).await?;
        self.wait_for_reachable(applied.generation, &applied.kxdp)
            .await?;
        Ok(Response::new(ApplyClusterReply {
            generation: applied.generation,
            nodes: applied.nodes,
            pods: applied.pods,
        }))
    }

    async fn list_nodes(
        &self,
        _: Request<ListNodesRequest>,
    ) -> Result<Response<ListNodesReply>, Status> {
        let desired = self.shared.current();
        let status = self.shared.status.borrow().clone();
        let nodes = desired
            .cluster
            .nodes
            .iter()
            .map(|n| {
                let mut info = NodeInfo {
                    name: n.name.clone(),
                    underlay_ip: n.underlay_ip.to_string(),
                    pod_cidr: n.pod_cidr.to_string(),
                    vtep_mac: n.vtep_mac.to_string(),
                    ..Default::default()
                };
                match n.dataplane {
                    DataplaneKind::Kernel => info.status = "kernel".into(),
                    DataplaneKind::Kxdp if !desired.states.contains_key(&n.name) => {
                        // Etcd mode: another node's control process programs it.
                        info.status = "remote".into();
                    }
                    DataplaneKind::Kxdp => {
                        info.dataplane_socket = n
                            .socket_path(&self.shared.dataplane_dir)
                            .display()
                            .to_string();
                        info.desired_generation = desired.generation;
                        let s = status.get(&n.name).cloned().unwrap_or_default();
                        info.status = s.phase.word().into();
                        info.applied_generation = s.applied_generation;
                        info.boot_id = s.boot_id;
                    }
                }
                info
            })
            .collect();
        Ok(Response::new(ListNodesReply { nodes }))
    }

    async fn list_pods(
        &self,
        request: Request<ListPodsRequest>,
    ) -> Result<Response<ListPodsReply>, Status> {
        let filter = request.into_inner().node;
        let desired = self.shared.current();
        Self::known_node(&desired.cluster, &filter)?;
        let status = self.shared.status.borrow().clone();
        let pods = desired
            .runtime
            .all_pods(&desired.cluster)
            .filter(|p| filter.is_empty() || p.node == filter)
            .map(|p| {
                let kernel = desired.cluster.node(&p.node).is_some_and(|n| !n.is_kxdp());
                let status = if kernel {
                    "kernel".to_string()
                } else {
                    match status.get(&p.node) {
                        Some(s)
                            if matches!(
                                s.phase,
                                Phase::Synced | Phase::Syncing | Phase::Failed(_)
                            ) =>
                        {
                            s.pods
                                .iter()
                                .find(|ps| ps.name == p.name)
                                .map_or_else(|| "unknown".to_string(), attach_word)
                        }
                        _ => "unknown".to_string(),
                    }
                };
                PodInfo {
                    name: p.name.clone(),
                    node: p.node.clone(),
                    ip: p.ip.to_string(),
                    mac: p.mac.to_string(),
                    ifname: p.ifname.clone(),
                    status,
                }
            })
            .collect();
        Ok(Response::new(ListPodsReply { pods }))
    }

    async fn list_routes(
        &self,
        request: Request<ListRoutesRequest>,
    ) -> Result<Response<ListRoutesReply>, Status> {
        let filter = request.into_inner().node;
        let desired = self.shared.current();
        Self::known_node(&desired.cluster, &filter)?;
        // Kernel nodes have no entry: their routes live in Linux, not kxdp.
        let routes = desired
            .states
            .iter()
            .filter(|(name, _)| filter.is_empty() || **name == filter)
            .flat_map(|(_, state)| plan::routes(state))
            .collect();
        Ok(Response::new(ListRoutesReply { routes }))
    }

    async fn list_policies(
        &self,
        request: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesReply>, Status> {
        let filter = request.into_inner().node;
        let desired = self.shared.current();
        Self::known_node(&desired.cluster, &filter)?;
        let mut world = plan::policy_world(&desired.cluster, &desired.runtime);
        let pods = desired
            .runtime
            .all_pods(&desired.cluster)
            .filter(|p| filter.is_empty() || p.node == filter)
            .map(|p| {
                let names = |idx: Vec<usize>| -> Vec<String> {
                    idx.into_iter()
                        .map(|i| world.policies[i].name.clone())
                        .collect()
                };
                let ingress_policies = names(world.selecting(p, policy::Dir::Ingress));
                let egress_policies = names(world.selecting(p, policy::Dir::Egress));
                let (ingress, egress) = world.pod_tables(p);
                PodPolicyInfo {
                    node: p.node.clone(),
                    pod: p.name.clone(),
                    namespace: p.namespace.clone(),
                    ip: p.ip.to_string(),
                    ingress_policies,
                    egress_policies,
                    ingress,
                    egress,
                }
            })
            .collect();
        Ok(Response::new(ListPoliciesReply { pods }))
    }

    async fn explain_policy(
        &self,
        request: Request<ExplainPolicyRequest>,
    ) -> Result<Response<ExplainPolicyReply>, Status> {
        let r = request.into_inner();
        let mut problems = Vec::new();
        let src = crate::validate::parse_ip("src", &r.src, &mut problems);
        let dst = crate::validate::parse_ip("dst", &r.dst, &mut problems);
        let proto = match kxdp_proto::dataplane::Protocol::try_from(r.protocol) {
            Ok(kxdp_proto::dataplane::Protocol::Tcp) => Some(policy::Proto::Tcp),
            Ok(kxdp_proto::dataplane::Protocol::Udp) => Some(policy::Proto::Udp),
            _ => {
                problems.push(crate::validate::Problem::new(
                    "protocol",
                    "must be TCP or UDP",
                ));
                None
            }
        };
        if !(1..=65535).contains(&r.port) {
            problems.push(crate::validate::Problem::new(
                "port",
                format!("{} is out of range 1..=65535", r.port),
            ));
        }
        let (Some(src), Some(dst), Some(proto), true) = (src, dst, proto, problems.is_empty())
        else {
            return Err(crate::validate::Problems(problems).into());
        };
        let desired = self.shared.current();
        let cluster = &desired.cluster;
        let mut world = plan::policy_world(cluster, &desired.runtime);
        let node_of = |ip| {
            cluster
                .nodes
                .iter()
                .find(|n| n.gateway() == ip || n.underlay_ip == ip)
                .map(|n| n.name.clone())
        };
        let (allowed, mut reasons) =
            policy::explain(&mut world, src, dst, proto, r.port as u16, node_of);
        if cluster.service_cidr.contains(&dst) {
            reasons.push(format!(
                "note: {dst} is a service address: policies see the backend a connection is DNATed to; explain a backend's address"
            ));
        }
        Ok(Response::new(ExplainPolicyReply { allowed, reasons }))
    }

    async fn get_node_counters(
        &self,
        request: Request<GetNodeCountersRequest>,
    ) -> Result<Response<GetCountersReply>, Status> {
        let name = request.into_inner().node;
        let mut client = self.dataplane_client(&name).await?;
        let call = client.get_counters(GetCountersRequest {});
        live(&name, "GetCounters", call).await
    }
}

/// Awaits a live dataplane call with [`LIVE_TIMEOUT`]; the dataplane's status
/// code passes through (UNIMPLEMENTED stays UNIMPLEMENTED), its message
/// prefixed with the node and the call.
async fn live<T>(
    node: &str,
    what: &str,
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    live_within(node, what, LIVE_TIMEOUT, call).await
}

/// [`live`] with its own time limit.
async fn live_within<T>(
    node: &str,
    what: &str,
    limit: Duration,
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<Response<T>, Status> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(status)) => Err(Status::new(
            status.code(),
            format!("{node}: {what}: {}", status.message()),
        )),
        Err(_) => Err(Status::unavailable(format!(
            "{node}: {what}: no reply within {limit:?}"
        ))),
    }
}

/// A pod's attach status as one word, with the detail for failures.
fn attach_word(ps: &PodStatus) -> String {
    match AttachState::try_from(ps.state) {
        Ok(AttachState::Attached) => "attached".into(),
        Ok(AttachState::Pending) => "pending".into(),
        Ok(AttachState::Failed) if ps.detail.is_empty() => "failed".into(),
        Ok(AttachState::Failed) => format!("failed: {}", ps.detail),
        Ok(AttachState::Unspecified) | Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_words() {
        let ps = |state: AttachState, detail: &str| PodStatus {
            name: "p1".into(),
            state: state as i32,
            detail: detail.into(),
        };
        assert_eq!(attach_word(&ps(AttachState::Attached, "")), "attached");
        assert_eq!(
            attach_word(&ps(AttachState::Pending, "no such device")),
            "pending"
        );
        assert_eq!(
            attach_word(&ps(AttachState::Failed, "xsk bind: EBUSY")),
            "failed: xsk bind: EBUSY"
        );
        assert_eq!(attach_word(&ps(AttachState::Unspecified, "")), "unknown");
        assert_eq!(
            attach_word(&PodStatus {
                state: 99,
                ..Default::default()
            }),
            "unknown"
        );
    }
}
