//! `kxdp-bench policy-delivery` (issue 17, "Scale": a policy change
//! reaches every worker in under 10 ms): how long one changed policy takes
//! to reach a node's workers, on a real dataplane with two workers holding
//! a node's share of a big cluster.
//!
//! The cluster: the bench lab's two kxdp nodes plus 98 more nodes
//! (`dataplane: kernel`, so kxdp-control pushes nothing to them, but their
//! pods are peers; their VTEP addresses are extra addresses of n2's uplink
//! so that n1's next hops resolve), 110 pods on every node (n1 and n2: the
//! lab's two plus 108 without an interface, which the dataplane holds as
//! PENDING with their policy tables) in 100 namespaces, and the 1,000
//! policies of control's compile bench (`control/benches/policy.rs`: ten per
//! namespace). The change: `ns-0/web-a0` gains a second port and loses it
//! again, which changes the ingress table of one of n1's pods.
//!
//! 1. **Control, end to end**: `ApplyCluster` with the changed file,
//!    alternating, timed from the request to its reply, which comes when
//!    every reachable kxdp node has applied the generation: the YAML's
//!    parse and validation, the compile of every node's state, the state
//!    file, the push to n1 and n2 and every worker's acknowledgement.
//! 2. **Dataplane only**: control stopped (by its PID), n1's two states
//!    (before and after the change) read back with `GetState`, and the
//!    difference sent as an `Update` (an upsert of each pod whose tables
//!    changed), alternating, timed from the request to the reply, which
//!    comes when both workers acknowledged the new tables. Also a full
//!    `Sync` of the same state, for comparison.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use kxdp_proto::control::control_client::ControlClient;
use kxdp_proto::control::ApplyClusterRequest;
use kxdp_proto::dataplane as pb;
use kxdp_proto::dataplane::dataplane_client::DataplaneClient;
use prost::Message;
use serde::Serialize;

use super::lab::{sh, Lab, CLUSTER_FILE};
use crate::stats::Spread;

/// Nodes in the cluster (the lab's two, the rest `dataplane: kernel`).
pub const NODES: usize = 100;
pub const PODS_PER_NODE: usize = 110;
pub const NAMESPACES: usize = 100;
/// Host part of the first extra node's underlay address (.120 up: clear
/// of the lab's nodes, the outside client .100 and the router .254).
const FIRST_EXTRA_HOST: usize = 120;

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub root: PathBuf,
    pub bin_dir: PathBuf,
    pub prefix: String,
    pub out: PathBuf,
    /// Changes per measurement (alternating before/after).
    pub changes: usize,
    /// `KXDP_LAB_CORES` entry of each node (its workers' cores).
    pub cores: String,
    pub command: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    pub what: String,
    pub n: usize,
    pub median_ms: f64,
    pub p99_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub under_10ms: usize,
    pub bytes: usize,
    pub errors: Vec<String>,
}

impl Timing {
    fn of(what: &str, ms: &[f64], bytes: usize, errors: Vec<String>) -> Timing {
        let mut v = ms.to_vec();
        v.sort_by(f64::total_cmp);
        let s = Spread::of(&v);
        Timing {
            what: what.into(),
            n: v.len(),
            median_ms: s.map_or(0.0, |s| s.median),
            p99_ms: percentile(&v, 0.99),
            min_ms: s.map_or(0.0, |s| s.min),
            max_ms: s.map_or(0.0, |s| s.max),
            under_10ms: v.iter().filter(|&&x| x < 10.0).count(),
            bytes,
            errors,
        }
    }
}

/// The nearest-rank percentile of sorted `v` (0 when empty).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[derive(Debug, Clone, Serialize)]
pub struct DeliveryReport {
    pub date: String,
    pub command: String,
    pub git: String,
    pub host: String,
    pub load_before: String,
    pub load_after: String,
    pub cluster: String,
    pub n1: String,
    pub workers: u32,
    pub changed_pods: Vec<String>,
    pub timings: Vec<Timing>,
    pub notes: Vec<String>,
}

/// The top-level sections of a cluster file, in order: (key, text with
/// its key line).
fn sections(yaml: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in yaml.lines() {
        let top = !line.starts_with([' ', '#', '-']) && line.contains(':');
        if top {
            let key = line.split(':').next().unwrap_or("").trim().to_string();
            out.push((key, String::new()));
        }
        if let Some((_, text)) = out.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    out
}

/// The big cluster built on the bench file `base`, with `ns-0/web-a0`
/// changed (`changed`) or not.
pub fn cluster_yaml(base: &str, changed: bool) -> anyhow::Result<String> {
    let secs = sections(base);
    let get = |k: &str| {
        secs.iter()
            .find(|(key, _)| key == k)
            .map(|(_, t)| t.clone())
            .with_context(|| format!("the bench cluster file has no `{k}:`"))
    };
    let (cluster, mut nodes, mut pods, services) = (
        get("cluster")?,
        get("nodes")?,
        get("pods")?,
        get("services")?,
    );
    if secs.iter().any(|(k, _)| k == "network_policies") {
        bail!("the bench cluster file already has policies");
    }
    for k in 3..=NODES {
        let host = FIRST_EXTRA_HOST + k - 3;
        let _ = writeln!(
            nodes,
            "  - {{ name: n{k}, underlay_ip: 172.30.0.{host}, pod_cidr: 10.244.{k}.0/24, dataplane: kernel }}"
        );
    }
    let mut g = 0usize;
    for n in 1..=NODES {
        // n1 and n2 keep the lab's two pods (.2 and .3).
        let (count, first) = if n <= 2 {
            (PODS_PER_NODE - 2, 10)
        } else {
            (PODS_PER_NODE, 2)
        };
        for i in 0..count {
            let (ns, p) = (g % NAMESPACES, g / NAMESPACES);
            let _ = writeln!(
                pods,
                "  - {{ name: s{i}, node: n{n}, ip: 10.244.{n}.{}, namespace: ns-{ns}, labels: {{ app: a{}, role: r{} }}, ports: [ {{ name: web, port: {} }} ] }}",
                first + i,
                p % 10,
                p % 3,
                8080 + p % 5
            );
            g += 1;
        }
    }
    let mut y = String::new();
    y.push_str(&cluster);
    y.push_str(&nodes);
    y.push_str(&pods);
    y.push_str(&services);
    y.push_str("namespaces:\n");
    for k in 0..NAMESPACES {
        let _ = writeln!(y, "  - {{ name: ns-{k}, labels: {{ tier: t{} }} }}", k % 4);
    }
    y.push_str("network_policies:\n");
    for k in 0..NAMESPACES {
        let next = (k + 1) % NAMESPACES;
        let _ = writeln!(y, "  - {{ name: ns-{k}/deny, pod_selector: {{}} }}");
        for a in 0..5 {
            let ports = if changed && k == 0 && a == 0 {
                "[ { port: web }, { protocol: TCP, port: 8443 } ]"
            } else {
                "[ { port: web } ]"
            };
            let _ = writeln!(
                y,
                "  - {{ name: ns-{k}/web-a{a}, pod_selector: {{ match_labels: {{ app: a{a} }} }}, ingress: [ {{ from: [ {{ pod_selector: {{ match_labels: {{ role: r{} }} }} }} ], ports: {ports} }} ] }}",
                a % 3
            );
        }
        let _ = writeln!(
            y,
            "  - {{ name: ns-{k}/tier, pod_selector: {{ match_labels: {{ app: a5 }} }}, ingress: [ {{ from: [ {{ namespace_selector: {{ match_labels: {{ tier: t{} }} }}, pod_selector: {{ match_expressions: [ {{ key: role, operator: In, values: [r0, r1] }} ] }} }} ], ports: [ {{ port: 8000, end_port: 8100 }} ] }} ] }}",
            k % 4
        );
        let _ = writeln!(
            y,
            "  - {{ name: ns-{k}/block, pod_selector: {{ match_labels: {{ app: a6 }} }}, ingress: [ {{ from: [ {{ ip_block: {{ cidr: 10.0.0.0/8, except: [ 10.244.{}.0/24 ] }} }} ] }} ] }}",
            1 + k % NODES
        );
        let _ = writeln!(
            y,
            "  - {{ name: ns-{k}/egress, pod_selector: {{ match_labels: {{ app: a7 }} }}, policy_types: [Egress], egress: [ {{ to: [ {{ namespace_selector: {{ match_labels: {{ kubernetes.io/metadata.name: ns-{next} }} }}, pod_selector: {{ match_labels: {{ app: a7 }} }} }} ], ports: [ {{ protocol: UDP, port: 53 }} ] }} ] }}"
        );
        let _ = writeln!(
            y,
            "  - {{ name: ns-{k}/open, pod_selector: {{ match_labels: {{ app: a8 }} }}, ingress: [ {{}} ] }}"
        );
    }
    Ok(y)
}

/// The `ms=` of each "NODE: generation N applied" line of kxdp-control's log.
pub fn pushed_ms(log: &str, node: &str) -> Vec<f64> {
    let head = format!("{node}: generation ");
    log.lines()
        .filter(|l| l.contains(&head) && l.contains(" applied "))
        .filter_map(|l| {
            let at = l.find(" ms=")?;
            l[at + 4..].split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// The pods of `after` that differ from `before` (by name), as upserts.
pub fn changed_pods(before: &pb::DataplaneState, after: &pb::DataplaneState) -> Vec<pb::Pod> {
    after
        .pods
        .iter()
        .filter(|p| before.pods.iter().find(|b| b.name == p.name) != Some(*p))
        .cloned()
        .collect()
}

/// `n` calls of `call(i)` (its request's size and the gRPC result), each
/// timed from the call to the reply.
fn timed(
    what: &str,
    n: usize,
    mut call: impl FnMut(usize) -> (usize, Result<(), tonic::Status>),
) -> Timing {
    let mut ms = Vec::new();
    let mut errors = Vec::new();
    let mut bytes = 0;
    for i in 0..n {
        let t = Instant::now();
        let (size, r) = call(i);
        let elapsed = t.elapsed().as_secs_f64() * 1e3;
        bytes = bytes.max(size);
        match r {
            Ok(()) => ms.push(elapsed),
            Err(s) => errors.push(format!("call {i}: {:?}: {}", s.code(), s.message())),
        }
    }
    let t = Timing::of(what, &ms, bytes, errors);
    crate::say!("    median {:.2} ms, p99 {:.2} ms", t.median_ms, t.p99_ms);
    t
}

fn update_of(pods: &[pb::Pod]) -> Vec<pb::Change> {
    pods.iter()
        .map(|p| pb::Change {
            op: Some(pb::change::Op::UpsertPod(p.clone())),
        })
        .collect()
}

fn peers(st: &pb::DataplaneState) -> (usize, usize) {
    let isolated = st
        .pods
        .iter()
        .filter(|p| p.ingress.is_some() || p.egress.is_some())
        .count();
    let peers = st
        .pods
        .iter()
        .flat_map(|p| p.ingress.iter().chain(p.egress.iter()))
        .map(|t| t.peers.len())
        .sum();
    (isolated, peers)
}

pub fn run_delivery(cfg: &DeliveryConfig) -> anyhow::Result<DeliveryReport> {
    if !nix::unistd::geteuid().is_root() {
        bail!("kxdp-bench policy-delivery needs root (the lab)");
    }
    // The lab log and the two cluster files (1.6 MB each): not results.
    let work = std::env::temp_dir().join(format!("kxdp-bench-{}", cfg.prefix));
    std::fs::create_dir_all(&work)?;
    let load_before = super::loadavg();
    let cores = format!("{0} {0}", cfg.cores);
    crate::say!(
        "==> lab {} (kxdp, 2 workers per node: KXDP_LAB_QUEUES=2, KXDP_LAB_CORES=\"{cores}\")",
        cfg.prefix
    );
    let lab = Lab::up(
        &cfg.root,
        &cfg.prefix,
        false,
        &cores,
        &work,
        &cfg.bin_dir,
        &[("KXDP_LAB_QUEUES", "2")],
    )?;
    let r = measure(cfg, &lab, &work);
    // Control's own account of each push (its log goes with the lab).
    let log = std::fs::read_to_string(lab.run_dir.join("control.log")).unwrap_or_default();
    crate::say!("==> lab down");
    lab.down();
    let mut rep = r?;
    let mut pushes = Vec::new();
    for node in ["n1", "n2"] {
        let ms = pushed_ms(&log, node);
        pushes.push(Timing::of(
            &format!(
                "control's push to {node} (its log's `generation N applied ... ms=`: the \
                 Sync or Update it sent, until the reply), during the ApplyCluster runs"
            ),
            &ms,
            0,
            Vec::new(),
        ));
    }
    rep.timings.splice(1..1, pushes);
    rep.load_before = load_before;
    rep.load_after = super::loadavg();
    let json = serde_json::to_string_pretty(&rep)?;
    std::fs::write(&cfg.out, json)?;
    crate::say!("==> wrote {}", cfg.out.display());
    Ok(rep)
}

fn measure(cfg: &DeliveryConfig, lab: &Lab, work: &Path) -> anyhow::Result<DeliveryReport> {
    let base = std::fs::read_to_string(cfg.root.join(CLUSTER_FILE))?;
    let files: Vec<PathBuf> = [false, true]
        .iter()
        .map(|&changed| -> anyhow::Result<PathBuf> {
            let f = work.join(format!("delivery-{}.yaml", if changed { "b" } else { "a" }));
            std::fs::write(&f, cluster_yaml(&base, changed)?)?;
            Ok(f)
        })
        .collect::<anyhow::Result<_>>()?;
    let yamls: Vec<String> = files
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<_, _>>()?;
    // The extra nodes' VTEPs answer on n2's uplink.
    let n2 = lab.node("n2")?;
    for k in 3..=NODES {
        let ip = format!("172.30.0.{}/32", FIRST_EXTRA_HOST + k - 3);
        sh(
            "ip",
            &[
                "-n",
                &lab.node_ns("n2"),
                "addr",
                "add",
                &ip,
                "dev",
                &n2.uplink,
            ],
        )?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let control_sock = lab.run_dir.join("control.sock");
    let mut control = rt.block_on(async {
        let ch = kxdp_proto::connect_unix(control_sock.clone()).await?;
        anyhow::Ok(
            ControlClient::new(ch)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
    })?;
    let mut apply = |i: usize| -> anyhow::Result<f64> {
        let req = ApplyClusterRequest {
            yaml: yamls[i % 2].clone(),
        };
        let t = Instant::now();
        rt.block_on(control.apply_cluster(req))
            .map_err(|s| anyhow::anyhow!("ApplyCluster: {:?}: {}", s.code(), s.message()))?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    crate::say!("==> ApplyCluster: the big cluster (first time)");
    let first = apply(0)?;
    crate::say!("    {first:.0} ms");
    let mut timings = Vec::new();
    let mut notes = vec![format!(
        "the first ApplyCluster (2 services, 4 pods -> {} pods, 1,000 policies): {first:.0} ms",
        NODES * PODS_PER_NODE
    )];
    crate::say!(
        "==> ApplyCluster with ns-0/web-a0 changed, {} times",
        cfg.changes
    );
    let mut ms = Vec::new();
    let mut errors = Vec::new();
    for i in 1..=cfg.changes {
        match apply(i) {
            Ok(t) => ms.push(t),
            Err(e) => errors.push(format!("change {i}: {e:#}")),
        }
    }
    let t = Timing::of(
        "control end to end: ApplyCluster, one policy changed, until every kxdp node applied it",
        &ms,
        yamls[1].len(),
        errors,
    );
    crate::say!("    median {:.1} ms, p99 {:.1} ms", t.median_ms, t.p99_ms);
    timings.push(t);

    // n1's two states, as control pushed them.
    let n1_sock = lab.run_dir.join("n1.sock");
    let mut dp = rt.block_on(async {
        let ch = kxdp_proto::connect_unix(n1_sock.clone()).await?;
        anyhow::Ok(
            DataplaneClient::new(ch)
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        )
    })?;
    let mut get = || -> anyhow::Result<(pb::DataplaneState, u32)> {
        let r = rt
            .block_on(dp.get_state(pb::GetStateRequest::default()))?
            .into_inner();
        Ok((r.state.context("n1 has no state")?, r.workers))
    };
    // The last change applied was `changes` % 2.
    let (now, workers) = get()?;
    apply(cfg.changes + 1)?;
    let (other, _) = get()?;
    let (sa, sb) = if cfg.changes.is_multiple_of(2) {
        (now, other)
    } else {
        (other, now)
    };
    let (a_to_b, b_to_a) = (changed_pods(&sa, &sb), changed_pods(&sb, &sa));
    if a_to_b.is_empty() {
        bail!("the change did not change n1's state");
    }
    let (isolated, npeers) = peers(&sa);
    let n1 = format!(
        "{} pods ({isolated} isolated, {npeers} peer prefixes in their tables), {} remote nodes, \
         {} services; {} workers",
        sa.pods.len(),
        sa.remote_nodes.len(),
        sa.services.len(),
        workers
    );
    crate::say!("    n1: {n1}");
    let changed: Vec<String> = a_to_b.iter().map(|p| p.name.clone()).collect();
    crate::say!("    the change upserts {changed:?} on n1");

    let pid = std::fs::read_to_string(lab.run_dir.join("control.pid"))?
        .trim()
        .parse::<i32>()?;
    crate::say!(
        "==> stopping the lab's kxdp-control (pid {pid}): it would sync its own state back"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
    for _ in 0..50 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut generation = rt
        .block_on(dp.get_state(pb::GetStateRequest { summary: true }))?
        .into_inner()
        .state
        .map_or(0, |s| s.generation);
    // Start from `sa` on n1.
    generation += 1;
    rt.block_on(dp.sync(pb::SyncRequest {
        state: Some(pb::DataplaneState {
            generation,
            ..sa.clone()
        }),
    }))?;
    crate::say!("==> Update with the change, {} times", cfg.changes);
    let t = timed(
        "dataplane: Update (the changed pods' upserts) until both workers acknowledged",
        cfg.changes,
        |i| {
            generation += 1;
            let req = pb::UpdateRequest {
                generation,
                changes: update_of(if i % 2 == 0 { &a_to_b } else { &b_to_a }),
            };
            (req.encoded_len(), rt.block_on(dp.update(req)).map(drop))
        },
    );
    timings.push(t);
    let syncs = (cfg.changes / 5).max(10);
    crate::say!("==> Sync of the whole state with the change, {syncs} times");
    let t = timed(
        "dataplane: Sync (the whole state, one policy changed) until both workers acknowledged",
        syncs,
        |i| {
            generation += 1;
            let st = if i % 2 == 0 { &sb } else { &sa };
            let req = pb::SyncRequest {
                state: Some(pb::DataplaneState {
                    generation,
                    ..st.clone()
                }),
            };
            (req.encoded_len(), rt.block_on(dp.sync(req)).map(drop))
        },
    );
    timings.push(t);
    notes.push(format!(
        "n1's kxdp-control was stopped (pid {pid}) before the dataplane-only runs; the lab was \
         taken down after them."
    ));
    Ok(DeliveryReport {
        date: sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])?
            .trim()
            .to_string(),
        command: cfg.command.clone(),
        git: super::git_info(&cfg.root, &cfg.bin_dir),
        host: super::host_info(),
        load_before: String::new(),
        load_after: String::new(),
        cluster: format!(
            "{NODES} nodes (n1, n2: kxdp; 98 dataplane: kernel), {} pods in {NAMESPACES} \
             namespaces, 1,000 policies; YAML {} bytes",
            NODES * PODS_PER_NODE,
            yamls[0].len()
        ),
        n1,
        workers,
        changed_pods: changed,
        timings,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_pushes_are_read_from_its_log() {
        let log = "\
2026-12-07T20:10:09.980971Z  INFO kxdp_control::reconcile: n2: syncing generation 5 (it holds generation 4) event=\"resync\"
2026-12-07T20:10:09.993038Z  INFO kxdp_control::reconcile: n2: generation 5 applied event=\"synced\" node=n2 generation=5 ms=7.477904
2026-12-07T20:10:09.994170Z  INFO kxdp_control::reconcile: n1: generation 5 applied event=\"synced\" node=n1 generation=5 ms=13.293738
2026-12-07T20:10:10.994170Z  INFO kxdp_control::reconcile: n1: generation 6 applied event=\"synced\" node=n1 generation=6 ms=14.5
";
        assert_eq!(pushed_ms(log, "n1"), [13.293738, 14.5]);
        assert_eq!(pushed_ms(log, "n2"), [7.477904]);
        assert!(pushed_ms(log, "n3").is_empty());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v[..10], 0.99), 10.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }

    #[test]
    fn the_big_cluster_keeps_the_lab_and_changes_one_policy() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let base = std::fs::read_to_string(root.join(CLUSTER_FILE)).unwrap();
        let a = cluster_yaml(&base, false).unwrap();
        let b = cluster_yaml(&base, true).unwrap();
        assert_eq!(a.matches("/web-a").count(), 500);
        assert_eq!(a.matches("\n  - { name: ns-").count(), NAMESPACES * 11);
        assert_eq!(a.matches(", node: n").count(), NODES * PODS_PER_NODE);
        assert!(a.contains("- { name: p1, node: n2, ip: 10.244.2.2,"));
        assert!(a.contains("name: n100, underlay_ip: 172.30.0.217, pod_cidr: 10.244.100.0/24"));
        let diff: Vec<(&str, &str)> = a.lines().zip(b.lines()).filter(|(x, y)| x != y).collect();
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert!(diff[0].1.contains("name: ns-0/web-a0,") && diff[0].1.contains("8443"));
        assert!(cluster_yaml(&a, false).is_err(), "policies twice");
    }
}
