//! Network policy compile time at scale (issue 17 "Scale": 1,000 policies
//! over 10,000 pods in under 1 s): every kxdp node's desired state, policy
//! tables included, as kxdp-control computes it for each generation.
//!
//! 100 nodes with 100 pods each (10,000 pods) in 100 namespaces
//! `ns-0..ns-99` (labelled `tier: t<n % 4>`); pod `p` of a namespace has
//! labels `app: a<p % 10>`, `role: r<p % 3>` and a named port `web`. Ten
//! policies per namespace (1,000): a default deny of ingress; ingress to
//! `app: aK` from `role` pods of the same namespace on the named port; from
//! namespaces of a tier on TCP 8000-8100 (both selectors); an ipBlock with
//! an except; and egress to the `app` of the next namespace on UDP 53.
//! `compile/all` is `plan::all_node_states`; `compile/empty` the same
//! cluster without policies, for the share of the policy compile.
//!
//! `cargo bench -p kxdp-control --bench policy -- --warm-up-time 1 --measurement-time 10`

use std::fmt::Write as _;

use criterion::{criterion_group, criterion_main, Criterion};
use kxdp_control::cluster::Cluster;
use kxdp_control::plan;
use kxdp_control::runtime::Runtime;

const NODES: usize = 100;
const PODS_PER_NODE: usize = 100;
const NAMESPACES: usize = 100;

fn cluster(with_policies: bool) -> Cluster {
    let mut y =
        String::from("cluster: { cidr: 10.0.0.0/8, service_cidr: 192.168.0.0/16 }\nnodes:\n");
    for n in 0..NODES {
        writeln!(
            y,
            "  - {{ name: n{n}, underlay_ip: 172.16.{}.{}, pod_cidr: 10.{}.{}.0/24 }}",
            n / 250,
            1 + n % 250,
            1 + n / 250,
            n % 250
        )
        .unwrap();
    }
    y.push_str("namespaces:\n");
    for k in 0..NAMESPACES {
        writeln!(y, "  - {{ name: ns-{k}, labels: {{ tier: t{} }} }}", k % 4).unwrap();
    }
    y.push_str("pods:\n");
    for n in 0..NODES {
        for i in 0..PODS_PER_NODE {
            let g = n * PODS_PER_NODE + i;
            let (ns, p) = (g % NAMESPACES, g / NAMESPACES);
            writeln!(
                y,
                "  - {{ name: p{i}, node: n{n}, ip: 10.{}.{}.{}, namespace: ns-{ns}, labels: {{ app: a{}, role: r{} }}, ports: [ {{ name: web, port: {} }} ] }}",
                1 + n / 250,
                n % 250,
                2 + i,
                p % 10,
                p % 3,
                8080 + p % 5
            )
            .unwrap();
        }
    }
    if with_policies {
        y.push_str("network_policies:\n");
        for k in 0..NAMESPACES {
            let next = (k + 1) % NAMESPACES;
            writeln!(y, "  - {{ name: ns-{k}/deny, pod_selector: {{}} }}").unwrap();
            for a in 0..5 {
                writeln!(
                    y,
                    "  - {{ name: ns-{k}/web-a{a}, pod_selector: {{ match_labels: {{ app: a{a} }} }}, ingress: [ {{ from: [ {{ pod_selector: {{ match_labels: {{ role: r{} }} }} }} ], ports: [ {{ port: web }} ] }} ] }}",
                    a % 3
                )
                .unwrap();
            }
            writeln!(
                y,
                "  - {{ name: ns-{k}/tier, pod_selector: {{ match_labels: {{ app: a5 }} }}, ingress: [ {{ from: [ {{ namespace_selector: {{ match_labels: {{ tier: t{} }} }}, pod_selector: {{ match_expressions: [ {{ key: role, operator: In, values: [r0, r1] }} ] }} }} ], ports: [ {{ port: 8000, end_port: 8100 }} ] }} ] }}",
                k % 4
            )
            .unwrap();
            writeln!(
                y,
                "  - {{ name: ns-{k}/block, pod_selector: {{ match_labels: {{ app: a6 }} }}, ingress: [ {{ from: [ {{ ip_block: {{ cidr: 10.0.0.0/8, except: [ 10.1.{}.0/24 ] }} }} ] }} ] }}",
                k % 100
            )
            .unwrap();
            writeln!(
                y,
                "  - {{ name: ns-{k}/egress, pod_selector: {{ match_labels: {{ app: a7 }} }}, policy_types: [Egress], egress: [ {{ to: [ {{ namespace_selector: {{ match_labels: {{ kubernetes.io/metadata.name: ns-{next} }} }}, pod_selector: {{ match_labels: {{ app: a7 }} }} }} ], ports: [ {{ protocol: UDP, port: 53 }} ] }} ] }}"
            )
            .unwrap();
            writeln!(
                y,
                "  - {{ name: ns-{k}/open, pod_selector: {{ match_labels: {{ app: a8 }} }}, ingress: [ {{}} ] }}"
            )
            .unwrap();
        }
    }
    Cluster::from_yaml(&y).unwrap_or_else(|e| panic!("{e}"))
}

fn bench_compile(c: &mut Criterion) {
    let rt = Runtime::default();
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    for (name, with) in [("all", true), ("empty", false)] {
        let cl = cluster(with);
        if with {
            assert_eq!(cl.policies.len(), 1000);
            assert_eq!(cl.pods.len(), 10_000);
            let states = plan::all_node_states(&cl, &rt, 1);
            let isolated = states
                .values()
                .flat_map(|s| &s.pods)
                .filter(|p| p.ingress.is_some() || p.egress.is_some())
                .count();
            let peers: usize = states
                .values()
                .flat_map(|s| &s.pods)
                .flat_map(|p| p.ingress.iter().chain(p.egress.iter()))
                .map(|t| t.peers.len())
                .sum();
            eprintln!("{isolated} of 10000 pods isolated, {peers} peer prefixes in all");
        }
        g.bench_function(name, |b| b.iter(|| plan::all_node_states(&cl, &rt, 1)));
    }
    g.finish();
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
