//! `/metrics` and `/healthz` of the control process (`--metrics-address`,
//! off by default).
//!
//! The reconcilers count their syncs and time them ([`SyncMetrics`], a few
//! updates a second at most); everything else is read at scrape time from
//! what the reconcilers publish anyway (the status map, the desired
//! generation) and from the store's health flags ([`StoreHealth`]).
//! `/healthz` is 200 while every kxdp node's dataplane holds the desired
//! generation or has been behind it for less than [`SYNC_GRACE`], else 503
//! with a JSON body naming the nodes and why.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kxdp_proto::ops::{rfc3339, unix_ms, Request, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::reconcile::{Phase, Shared};

/// How long a node may be behind the desired generation before `/healthz`
/// fails: a Sync waits at most 8 s, and a dataplane that restarts is synced
/// within a resync interval of coming back.
pub const SYNC_GRACE: Duration = Duration::from_secs(30);

type Labels = Vec<(String, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// What the reconcilers count.
#[derive(Debug, Clone)]
pub struct SyncMetrics {
    syncs: Family<Labels, Counter>,
    sync_seconds: HistogramFamily,
}

impl Default for SyncMetrics {
    fn default() -> SyncMetrics {
        SyncMetrics {
            syncs: Family::default(),
            // 1 ms to 8 s: a Sync of a small node takes milliseconds, one
            // that re-attaches an uplink hundreds, the timeout is 8 s.
            sync_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
        }
    }
}

impl SyncMetrics {
    /// A Sync to `node` ended with `result` ("ok", "refused", "unreachable")
    /// after `took`.
    pub fn sync_done(&self, node: &str, result: &str, took: Duration) {
        let labels = vec![
            ("node".to_string(), node.to_string()),
            ("result".to_string(), result.to_string()),
        ];
        self.syncs.get_or_create(&labels).inc();
        self.sync_seconds
            .get_or_create(&vec![("node".to_string(), node.to_string())])
            .observe(took.as_secs_f64());
    }
}

/// The store's health: always up for a file; for etcd, the watch and the
/// lease as their tasks last saw them.
#[derive(Debug, Default)]
pub struct StoreHealth {
    pub watch_up: AtomicBool,
    pub watch_restarts: AtomicU64,
    pub lease_alive: AtomicBool,
    pub lease_failures: AtomicU64,
}

/// Answers one request of the metrics listener.
pub fn handle(req: &Request, shared: &Arc<Shared>) -> Response {
    match req.path.as_str() {
        "/metrics" => Response::metrics(req, encode(shared)),
        "/healthz" | "/livez" => health(shared),
        _ => Response::not_found(),
    }
}

fn encode(shared: &Arc<Shared>) -> String {
    let mut registry = Registry::default();
    registry.register(
        "kxdp_control_syncs",
        "Syncs sent to a node's dataplane, by node and result (ok, refused, unreachable).",
        shared.sync_metrics.syncs.clone(),
    );
    registry.register(
        "kxdp_control_sync_duration_seconds",
        "How long a Sync to a node's dataplane took, by node.",
        shared.sync_metrics.sync_seconds.clone(),
    );
    registry.register_collector(Box::new(Status(shared.clone())));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The reconcilers' status and the store's health, read at scrape time.
struct Status(Arc<Shared>);

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Status")
    }
}

/// A gauge family, integer (`i64`) or not (`f64`).
fn gauges<N>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, N)>,
) -> std::fmt::Result
where
    ConstGauge<N>: EncodeMetric,
{
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn node(name: &str) -> Labels {
    vec![("node".to_string(), name.to_string())]
}

impl Collector for Status {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let shared = &self.0;
        let desired = shared.current().generation;
        let status = shared.status.borrow().clone();
        let per_node = |f: &dyn Fn(&crate::reconcile::NodeStatus) -> i64| {
            status
                .iter()
                .map(|(n, s)| (node(n), f(s)))
                .collect::<Vec<_>>()
        };
        gauge(
            &mut enc,
            "kxdp_control_desired_generation",
            "The desired state's generation (unix milliseconds of the change).",
            desired as i64,
        )?;
        gauges(
            &mut enc,
            "kxdp_control_node_applied_generation",
            "The generation a node's dataplane holds, as last read (0: none).",
            per_node(&|s| s.applied_generation as i64),
        )?;
        gauges(
            &mut enc,
            "kxdp_control_node_generation_lag_seconds",
            "How long a node's dataplane has been behind the desired generation (0: in sync).",
            status
                .iter()
                .map(|(n, s)| {
                    let behind = s.behind_since.map_or(0.0, |t| t.elapsed().as_secs_f64());
                    (node(n), behind)
                })
                .collect::<Vec<_>>(),
        )?;
        gauges(
            &mut enc,
            "kxdp_control_node_reachable",
            "1 when the node's dataplane answered the last attempt.",
            per_node(&|s| {
                let up = !matches!(s.phase, Phase::Unreachable(_) | Phase::Pending);
                i64::from(up)
            }),
        )?;
        gauges(
            &mut enc,
            "kxdp_control_node_synced",
            "1 when the node's dataplane holds the desired generation.",
            per_node(&|s| i64::from(s.phase == Phase::Synced)),
        )?;
        let store = &shared.store_health;
        let etcd = shared.scope.is_some();
        gauges(
            &mut enc,
            "kxdp_control_store_info",
            "Always 1; where the desired state lives (file or etcd).",
            [(
                vec![(
                    "store".to_string(),
                    if etcd { "etcd" } else { "file" }.to_string(),
                )],
                1i64,
            )],
        )?;
        if etcd {
            let flag = |b: &AtomicBool| i64::from(b.load(Ordering::Relaxed));
            gauge(
                &mut enc,
                "kxdp_control_etcd_watch_up",
                "1 while the watch on etcd's /kxdp/ prefix is established.",
                flag(&store.watch_up),
            )?;
            gauge(
                &mut enc,
                "kxdp_control_etcd_lease_alive",
                "1 while this node's pod CIDR lease was last kept alive.",
                flag(&store.lease_alive),
            )?;
            let m = enc.encode_descriptor(
                "kxdp_control_etcd_watch_restarts",
                "Times the etcd watch was lost and the store listed again.",
                None,
                MetricType::Counter,
            )?;
            let restarts = store.watch_restarts.load(Ordering::Relaxed);
            ConstCounter::new(restarts).encode(m)?;
        }
        Ok(())
    }
}

/// Every kxdp node in sync, or behind for less than [`SYNC_GRACE`].
fn health(shared: &Arc<Shared>) -> Response {
    let desired = shared.current().generation;
    let status = shared.status.borrow().clone();
    let mut reasons = Vec::new();
    let nodes: Vec<serde_json::Value> = status
        .iter()
        .map(|(name, s)| {
            let behind = s.behind_since.map(|t| t.elapsed());
            if behind.is_some_and(|b| b > SYNC_GRACE) {
                reasons.push(format!(
                    "node {name} is {} and has not held generation {desired} for {:.0}s",
                    s.phase.describe(),
                    behind.unwrap_or_default().as_secs_f64()
                ));
            }
            serde_json::json!({
                "node": name,
                "status": s.phase.word(),
                "appliedGeneration": s.applied_generation,
                "lastSynced": s.last_synced.map(system_ms).map(rfc3339),
                "behindSeconds": behind.map_or(0.0, |b| b.as_secs_f64()),
            })
        })
        .collect();
    let healthy = reasons.is_empty();
    let body = serde_json::json!({
        "healthy": healthy,
        "reasons": reasons,
        "currentTime": rfc3339(unix_ms()),
        "desiredGeneration": desired,
        "nodes": nodes,
    });
    Response::json(if healthy { 200 } else { 503 }, &body)
}

fn system_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Instant helpers the reconcilers use to keep `behind_since`.
pub fn behind(since: Option<Instant>, synced: bool) -> Option<Instant> {
    if synced {
        None
    } else {
        Some(since.unwrap_or_else(Instant::now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Cluster, LAB_CLUSTER_YAML};
    use crate::reconcile::NodeStatus;

    fn shared() -> Arc<Shared> {
        let cluster = Cluster::from_yaml(LAB_CLUSTER_YAML).unwrap();
        Shared::new(cluster, "/nonexistent".into(), Duration::from_secs(1))
    }

    #[test]
    fn metrics_name_nodes_and_count_syncs() {
        let s = shared();
        s.status.send_modify(|m| {
            m.insert(
                "n1".into(),
                NodeStatus {
                    phase: Phase::Synced,
                    applied_generation: 42,
                    ..Default::default()
                },
            );
        });
        s.sync_metrics
            .sync_done("n1", "ok", Duration::from_millis(3));
        let om = encode(&s);
        for line in [
            "kxdp_control_syncs_total{node=\"n1\",result=\"ok\"} 1",
            "kxdp_control_sync_duration_seconds_count{node=\"n1\"} 1",
            "kxdp_control_node_applied_generation{node=\"n1\"} 42",
            "kxdp_control_node_synced{node=\"n1\"} 1",
            "kxdp_control_node_reachable{node=\"n1\"} 1",
            "kxdp_control_store_info{store=\"file\"} 1",
        ] {
            assert!(om.contains(line), "no {line:?} in\n{om}");
        }
    }

    #[test]
    fn healthz_fails_for_a_node_behind_longer_than_the_grace() {
        let s = shared();
        let set = |since: Option<Instant>, phase: Phase| {
            s.status.send_modify(|m| {
                m.insert(
                    "n1".into(),
                    NodeStatus {
                        phase,
                        behind_since: since,
                        ..Default::default()
                    },
                );
            });
        };
        set(Some(Instant::now()), Phase::Pending);
        assert_eq!(health(&s).status, 200);
        set(None, Phase::Synced);
        assert_eq!(health(&s).status, 200);
        let long_ago = Instant::now() - SYNC_GRACE - Duration::from_secs(1);
        set(
            Some(long_ago),
            Phase::Unreachable("connect: refused".into()),
        );
        let r = health(&s);
        assert_eq!(r.status, 503);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["nodes"][0]["status"], "unreachable");
        let why = v["reasons"][0].as_str().unwrap();
        assert!(
            why.starts_with("node n1 is unreachable: connect: refused"),
            "{why}"
        );
    }
}
