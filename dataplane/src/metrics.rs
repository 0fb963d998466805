//! `/metrics` and `/healthz` on `--metrics-address` (off by default).
//!
//! Nothing is counted for metrics: a scrape asks the engine for the same
//! snapshots the gRPC `GetCounters` and `GetState` calls render (the workers'
//! published counters, merged off the hot path) and encodes them with
//! `prometheus-client` through a [`Collector`] over those snapshots. So a
//! scrape costs the engine what a `kxdpctl counters` does, and the packet
//! path nothing. `/healthz` reads [`Liveness`] alone and answers even while
//! the engine is stuck.
//!
//! Names follow Prometheus' conventions: `kxdp_` prefix, `_total` counters,
//! seconds and bytes, labels from bounded sets (reasons and events of the
//! counter table, worker indexes, attached interfaces, configured services
//! and endpoints).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use kxdp_core::pipeline::{BackendCounters, Counters};
use kxdp_core::policy::PolicyFlows;
use kxdp_proto::ops::{Request, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use crate::engine::{
    self, AttachState, CountersSnapshot, ServiceCounters, StateSnapshot, WorkerCounters,
};
use crate::liveness::Liveness;
use crate::worker::PortCounters;

/// How long a scrape waits for the engine (Prometheus' default scrape
/// timeout is 10 s).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(8);

/// Answers one request of the metrics listener.
pub async fn handle(
    req: Request,
    engine: Sender<engine::Request>,
    live: Arc<Liveness>,
) -> Response {
    match req.path.as_str() {
        "/metrics" => match snapshots(&engine).await {
            Ok((counters, state)) => {
                let m = Exposition {
                    counters,
                    state,
                    live,
                };
                Response::metrics(&req, encode(m))
            }
            Err(e) => Response::new(503, "text/plain", format!("{e}\n")),
        },
        "/healthz" | "/livez" => live.check().response(),
        _ => Response::not_found(),
    }
}

async fn snapshots(
    engine: &Sender<engine::Request>,
) -> Result<(CountersSnapshot, StateSnapshot), String> {
    let (ctx, crx) = oneshot::channel();
    let (stx, srx) = oneshot::channel();
    for r in [
        engine::Request::GetCounters(ctx),
        engine::Request::GetState(stx),
    ] {
        engine
            .send_timeout(r, SCRAPE_TIMEOUT)
            .map_err(|_| "the engine does not take requests".to_string())?;
    }
    let both = async { (crx.await, srx.await) };
    match tokio::time::timeout(SCRAPE_TIMEOUT, both).await {
        Ok((Ok(c), Ok(s))) => Ok((c, s)),
        Ok(_) => Err("the engine dropped the request".into()),
        Err(_) => Err(format!(
            "the engine did not answer within {SCRAPE_TIMEOUT:?}"
        )),
    }
}

/// Encodes `m` as OpenMetrics text.
fn encode(m: Exposition) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(m));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// Everything one scrape exports.
#[derive(Debug)]
struct Exposition {
    counters: CountersSnapshot,
    state: StateSnapshot,
    live: Arc<Liveness>,
}

/// One metric family at a time: a descriptor, then its samples.
struct Out<'a, 'b> {
    enc: &'a mut DescriptorEncoder<'b>,
}

impl Out<'_, '_> {
    /// A counter family: `name` without `_total` (the encoder adds it).
    fn counters<L: prometheus_client::encoding::EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, u64)>,
    ) -> std::fmt::Result {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in samples {
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge family, integer (`i64`) or not (`f64`).
    fn gauges<L, N>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (L, N)>,
    ) -> std::fmt::Result
    where
        L: prometheus_client::encoding::EncodeLabelSet,
        ConstGauge<N>: EncodeMetric,
    {
        let mut m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in samples {
            ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// A gauge without labels.
    fn gauge(&mut self, name: &str, help: &str, v: i64) -> std::fmt::Result {
        let m = self
            .enc
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        ConstGauge::new(v).encode(m)
    }
}

type Labels = Vec<(&'static str, String)>;

fn worker(i: usize) -> (&'static str, String) {
    ("worker", i.to_string())
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let mut out = Out { enc: &mut enc };
        let c = &self.counters;
        let per_worker = || c.workers.iter().enumerate();

        out.counters(
            "kxdp_drops",
            "Frames dropped, by reason (the counter table's drop reasons and the AF_XDP socket's xsk_ ones) and worker.",
            per_worker().flat_map(|(i, w)| {
                w.drops
                    .iter()
                    .map(move |(r, v)| (vec![("reason", r.to_string()), worker(i)], *v))
            }),
        )?;
        out.counters(
            "kxdp_xdp_drops",
            "Frames the uplink's XDP program dropped before any worker saw them, by reason.",
            c.xdp_drops
                .iter()
                .map(|(r, v)| (vec![("reason", r.to_string())], *v)),
        )?;
        // One family per event counter of the counter table, by worker.
        let events = c.workers.first().map(|w| w.events.len()).unwrap_or(0);
        for e in 0..events {
            let name = c.workers[0].events[e].0;
            let help = Counters::EVENT_NAMES
                .iter()
                .position(|n| *n == name)
                .map(|i| Counters::EVENT_HELP[i].trim())
                .filter(|h| !h.is_empty())
                .unwrap_or(name);
            let samples: Vec<(Labels, u64)> = per_worker()
                .map(|(i, w)| (vec![worker(i)], w.events[e].1))
                .collect();
            out.counters(&format!("kxdp_{name}"), help, samples)?;
        }
        type PortField = fn(&PortCounters) -> u64;
        let port_families: [(&str, &str, PortField); 5] = [
            ("rx_packets", "Frames received from", |p| p.rx_packets),
            ("rx_bytes", "Bytes received from", |p| p.rx_bytes),
            ("tx_packets", "Frames sent on", |p| p.tx_packets),
            ("tx_bytes", "Bytes sent on", |p| p.tx_bytes),
            ("tx_ring_full", "Frames not sent (TX ring full) on", |p| {
                p.tx_ring_full
            }),
        ];
        for (field, what, f) in port_families {
            let samples = per_worker().flat_map(|(i, w)| {
                w.interfaces
                    .iter()
                    .map(move |(n, p)| (vec![("interface", n.clone()), worker(i)], f(p)))
            });
            let help = format!("{what} an attached interface, by interface and worker.");
            out.counters(&format!("kxdp_interface_{field}"), &help, samples)?;
        }

        let ct =
            |f: fn(&WorkerCounters) -> u64| per_worker().map(move |(i, w)| (vec![worker(i)], f(w)));
        out.gauges(
            "kxdp_conntrack_entries",
            "Live conntrack entries, by worker.",
            ct(|w| w.conntrack_entries).map(|(l, v)| (l, v as i64)),
        )?;
        out.gauges(
            "kxdp_conntrack_capacity",
            "Conntrack slots, by worker.",
            ct(|w| w.conntrack_capacity).map(|(l, v)| (l, v as i64)),
        )?;
        type CtField = fn(&WorkerCounters) -> u64;
        let ct_families: [(&str, &str, CtField); 3] = [
            ("inserts", "Conntrack entries created", |w| {
                w.conntrack.inserts
            }),
            (
                "evictions",
                "Live conntrack entries evicted to make room (table full)",
                |w| w.conntrack.evictions,
            ),
            ("expirations", "Expired conntrack entries freed", |w| {
                w.conntrack.expirations
            }),
        ];
        for (field, what, f) in ct_families {
            let help = format!("{what}, by worker.");
            out.counters(&format!("kxdp_conntrack_{field}"), &help, ct(f))?;
        }

        type SvcField = fn(&ServiceCounters) -> u64;
        let svc_families: [(&str, &str, SvcField); 4] = [
            ("packets", "Packets of a service's translated flows", |s| {
                s.totals.packets
            }),
            ("bytes", "Bytes of a service's translated flows", |s| {
                s.totals.bytes
            }),
            ("new_flows", "New flows to a service's frontends", |s| {
                s.totals.new_flows
            }),
            (
                "no_endpoint",
                "New flows to a service without a ready endpoint",
                |s| s.totals.no_endpoint,
            ),
        ];
        for (field, what, f) in svc_families {
            let samples = c
                .services
                .iter()
                .map(|s| (vec![("service", s.name.clone())], f(s)));
            let help = format!("{what}, by service (namespace/name).");
            out.counters(&format!("kxdp_service_{field}"), &help, samples)?;
        }
        type BackendField = fn(&BackendCounters) -> u64;
        let backend_families: [(&str, &str, BackendField); 3] = [
            ("new_flows", "New flows sent to a service's endpoint", |b| {
                b.new_flows
            }),
            (
                "packets",
                "Packets of a service's flows to and from an endpoint, translated",
                |b| b.packets,
            ),
            (
                "bytes",
                "Bytes of a service's flows to and from an endpoint, translated",
                |b| b.bytes,
            ),
        ];
        for (field, what, f) in backend_families {
            out.counters(
                &format!("kxdp_backend_{field}"),
                &format!("{what}, by service, endpoint address, target port and protocol."),
                c.services.iter().flat_map(|s| {
                    s.backends.iter().map(move |(ip, port, proto, n)| {
                        (
                            vec![
                                ("service", s.name.clone()),
                                ("backend", ip.to_string()),
                                ("port", port.to_string()),
                                ("protocol", proto.to_string()),
                            ],
                            f(n),
                        )
                    })
                }),
            )?;
        }

        for (field, what, f) in [
            ("allowed", "New flows a network policy allowed (the first allowing one counts)", (|p| p.allowed) as fn(&PolicyFlows) -> u64),
            ("denied", "New flows denied at a pod a network policy isolates (each isolating policy counts)", |p| p.denied),
        ] {
            out.counters(
                &format!("kxdp_network_policy_flows_{field}"),
                &format!("{what}, by policy (namespace/name)."),
                c.policies
                    .iter()
                    .map(|(name, p)| (vec![("policy", name.clone())], f(p))),
            )?;
        }

        let (generation, epoch) = self.live.table();
        out.gauge(
            "kxdp_table_generation",
            "The state generation of the last tables every worker acknowledged (0: none, or a worker missed the last).",
            generation as i64,
        )?;
        out.gauge(
            "kxdp_table_epoch",
            "The number of the last table snapshot every worker acknowledged.",
            epoch as i64,
        )?;
        out.gauge("kxdp_workers", "Worker threads.", self.state.workers as i64)?;
        out.gauge(
            "kxdp_uplink_attached",
            "1 when the uplink is attached (XDP program and AF_XDP sockets).",
            i64::from(self.live.attached()),
        )?;
        let pods = |s: AttachState| {
            self.state
                .pods
                .iter()
                .filter(|(_, st)| st.state == s)
                .count() as i64
        };
        out.gauges(
            "kxdp_pods",
            "Pods of the synced state, by attach state.",
            [
                ("attached", AttachState::Attached),
                ("pending", AttachState::Pending),
                ("failed", AttachState::Failed),
            ]
            .map(|(n, s)| (vec![("state", n.to_string())], pods(s))),
        )?;
        out.gauges(
            "kxdp_worker_last_poll_age_seconds",
            "Seconds since each worker last polled its rings (its heartbeat; /healthz fails above 3).",
            self.live
                .worker_ages()
                .into_iter()
                .enumerate()
                .map(|(i, a)| (vec![worker(i)], a.as_secs_f64())),
        )?;
        out.gauge(
            "kxdp_healthy",
            "1 when /healthz answers 200.",
            i64::from(self.live.check().healthy),
        )?;
        if let Some(rss) = resident_bytes() {
            out.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss as i64,
            )?;
        }
        out.gauges(
            "kxdp_build_info",
            "Always 1; the version of this kxdp-dataplane.",
            [(
                vec![("version", env!("CARGO_PKG_VERSION").to_string())],
                1i64,
            )],
        )?;
        Ok(())
    }
}

/// The process's resident set (`VmRSS` of /proc/self/status), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kxdp_proto::service::Protocol;

    /// The metric names a scrape can export, for tests and docs: every family
    /// `encode` writes (counters with their `_total`).
    fn family_names(exposition: &str) -> Vec<String> {
        let mut names = Vec::new();
        for l in exposition.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                let mut n = name.to_string();
                if kind == "counter" && !n.ends_with("_total") {
                    n.push_str("_total");
                }
                names.push(n);
            }
        }
        names
    }

    fn exposition() -> Exposition {
        let w = |k: u64| WorkerCounters {
            drops: vec![("no_route", k), ("xsk_rx_dropped", 0)],
            events: Counters::EVENT_NAMES.iter().map(|n| (*n, k)).collect(),
            interfaces: vec![(
                "eth0".into(),
                PortCounters {
                    rx_packets: k,
                    ..Default::default()
                },
            )],
            conntrack_entries: k,
            conntrack_capacity: 100,
            ..Default::default()
        };
        Exposition {
            counters: CountersSnapshot {
                workers: vec![w(3), w(4)],
                xdp_drops: vec![("vxlan_unknown_vtep", 2)],
                services: vec![ServiceCounters {
                    name: "default/web".into(),
                    backends: vec![(
                        "10.244.1.5".parse().unwrap(),
                        80,
                        Protocol::Udp,
                        BackendCounters {
                            new_flows: 9,
                            packets: 20,
                            bytes: 2000,
                        },
                    )],
                    ..Default::default()
                }],
                policies: vec![(
                    "x/deny".into(),
                    PolicyFlows {
                        allowed: 5,
                        denied: 6,
                    },
                )],
                ..Default::default()
            },
            state: StateSnapshot {
                state: Default::default(),
                boot_id: "x".into(),
                pods: Vec::new(),
                neighbours: Vec::new(),
                workers: 2,
                uplink_status: String::new(),
            },
            live: Arc::new(Liveness::new(Vec::new())),
        }
    }

    #[test]
    fn every_counter_is_exported_by_worker_with_conventional_names() {
        let om = encode(exposition());
        assert!(om.ends_with("# EOF\n"), "{om}");
        for line in [
            "kxdp_drops_total{reason=\"no_route\",worker=\"0\"} 3",
            "kxdp_drops_total{reason=\"no_route\",worker=\"1\"} 4",
            "kxdp_xdp_drops_total{reason=\"vxlan_unknown_vtep\"} 2",
            "kxdp_encapsulated_total{worker=\"1\"} 4",
            "kxdp_flow_cache_hits_total{worker=\"0\"} 3",
            "kxdp_interface_rx_packets_total{interface=\"eth0\",worker=\"1\"} 4",
            "kxdp_conntrack_entries{worker=\"0\"} 3",
            "kxdp_backend_new_flows_total{service=\"default/web\",backend=\"10.244.1.5\",port=\"80\",protocol=\"UDP\"} 9",
            "kxdp_backend_packets_total{service=\"default/web\",backend=\"10.244.1.5\",port=\"80\",protocol=\"UDP\"} 20",
            "kxdp_backend_bytes_total{service=\"default/web\",backend=\"10.244.1.5\",port=\"80\",protocol=\"UDP\"} 2000",
            "kxdp_workers 2",
            "kxdp_network_policy_flows_allowed_total{policy=\"x/deny\"} 5",
            "kxdp_network_policy_flows_denied_total{policy=\"x/deny\"} 6",
        ] {
            assert!(om.contains(line), "no {line:?} in\n{om}");
        }
        let names = family_names(&om);
        for n in Counters::EVENT_NAMES {
            assert!(names.contains(&format!("kxdp_{n}_total")), "{n}");
        }
        // One family per name (promtool refuses a second HELP line).
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a family twice in {names:?}");
        // The classic text format names counter families with their _total.
        let text = kxdp_proto::ops::openmetrics_to_text(&om);
        assert!(text.contains("# TYPE kxdp_drops_total counter\n"), "{text}");
        assert!(!text.contains("# EOF"));
    }
}
