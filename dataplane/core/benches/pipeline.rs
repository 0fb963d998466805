//! Micro-benchmarks of the pipeline walks: one batch of [`BATCH_SIZE`] (64)
//! frames per iteration, the way a worker calls `Pipeline::process`.
//!
//! Each walk gets a batch of identical frames (local route, encap, decap,
//! ARP reply) in a 64-chunk UMEM, on tables sized like a 250-node cluster
//! with 100 pods on this node. The pipeline rewrites frames in place, so
//! every iteration starts from a fresh copy of the received UMEM, made in
//! the untimed setup of `iter_batched_ref`; the timed part is building the
//! 64 `Packet`s (as a worker does from RX descriptors) and `process`. The
//! `baseline/build_packets` bench times that first part alone.
//!
//! Group `walk` runs with the flow cache (the dataplane's default: the
//! untimed check teaches it, so the timed batches are hits) and group
//! `uncached` without it (every packet takes the full walk), side by side.
//!
//! Throughput is per frame: criterion's "thrpt" is packets per second, and
//! the per-packet time is the median batch time / 64.
//!
//! Groups `walk_policy` and `uncached_policy` run the same flows with every
//! local pod isolated by network policy that allows them (`policy_tables`).
//!
//! `cargo bench -p kxdp-core --bench pipeline -- --warm-up-time 1 --measurement-time 3`

use core::net::Ipv4Addr;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use etherparse::PacketBuilder;
use kxdp_core::pipeline::{Packet, Pipeline, Verdict, BATCH_SIZE};
use kxdp_core::policy::{PodPolicy, PortRange, RuleTable};
use kxdp_core::prefix::Prefix;
use kxdp_core::tables::{LocalPod, NodeInfo, PortId, PortInfo, PortKind, RemoteRoute, Tables};
use kxdp_core::wire::{arp, ethernet, vxlan, EthernetAddress};

/// UMEM chunk size, as the dataplane configures it.
const CHUNK: usize = 2048;
/// Where received frames start in a chunk.
const RX_OFF: usize = 256;
/// Remote nodes in the tables (one /24 route each).
const NODES: u8 = 250;
/// Local pods (ports 1..=PODS).
const PODS: u8 = 100;
/// A monotonic "now" for the ICMP bucket (unused by these walks).
const NOW: u64 = 1_000_000_000_000;
/// UDP payload size: the frames are 64 bytes before encap.
const PAYLOAD: usize = 64 - 14 - 20 - 8;

const UPLINK: PortId = 0;
const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 11);
const VTEP_MAC: EthernetAddress = EthernetAddress([0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0b]);
const UPLINK_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x1e, 0x00, 0x0b]);

fn pod_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, 1 + i)
}
fn pod_mac(i: u8) -> EthernetAddress {
    EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x01, 1 + i])
}
fn port_mac(i: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0x6b, 0x78, 0x64, 0x70, i])
}
/// Node `n` (2..) owns 10.244.n.0/24 behind VTEP 172.31.0.n.
fn vtep_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 31, 0, n)
}
fn vtep_mac(n: u8) -> EthernetAddress {
    EthernetAddress([0x0e, 0x58, 0xac, 0x1f, 0x00, n])
}
fn node_uplink_mac(n: u8) -> EthernetAddress {
    EthernetAddress([0x52, 0x54, 0x00, 0x1f, 0x00, n])
}

/// Node 1 of the cluster: pod `i` (1..=PODS) is 10.244.1.(1+i) on port `i`.
fn tables() -> Tables {
    let mut t = Tables {
        node: Some(NodeInfo {
            underlay_ip: UNDERLAY_IP,
            vtep_mac: VTEP_MAC,
            vni: 1,
            vxlan_port: vxlan::UDP_PORT,
            pod_cidr: Prefix::new(Ipv4Addr::new(10, 244, 1, 0), 24),
            cluster_cidr: Prefix::new(Ipv4Addr::new(10, 244, 0, 0), 16),
            gateway_ip: Ipv4Addr::new(10, 244, 1, 1),
            pod_mtu: 1450,
            service_cidr: None,
            masquerade: false,
        }),
        ..Tables::default()
    };
    t.set_port(
        UPLINK,
        PortInfo {
            kind: PortKind::Uplink,
            mac: UPLINK_MAC,
        },
    );
    for i in 1..=PODS {
        t.set_port(
            PortId::from(i),
            PortInfo {
                kind: PortKind::Pod { ip: pod_ip(i) },
                mac: port_mac(i),
            },
        );
        t.local.insert(
            pod_ip(i),
            LocalPod {
                port: PortId::from(i),
                mac: pod_mac(i),
            },
        );
    }
    for n in 2..2 + NODES {
        t.add_remote(
            Prefix::new(Ipv4Addr::new(10, 244, n, 0), 24),
            RemoteRoute {
                vtep_ip: vtep_ip(n),
                vtep_mac: vtep_mac(n),
                next_hop_mac: Some(node_uplink_mac(n)),
            },
        );
    }
    t
}

/// [`tables`] with every local pod isolated for ingress and egress by a
/// table of 1,001 peers a realistic policy set compiles into: the cluster
/// CIDR on the benchmark's UDP ports, and 1,000 single addresses on TCP
/// 80-90 (not the benchmark's peers), so that a lookup probes two prefix
/// lengths.
fn policy_tables() -> Tables {
    let mut t = tables();
    let mut table = RuleTable::default();
    let range = |proto, first, last| PortRange {
        proto,
        first,
        last,
        policy: 0,
    };
    table.insert(
        Prefix::new(Ipv4Addr::new(10, 244, 0, 0), 16),
        &[range(17, 5000, 5000), range(17, 40000, 40000)],
    );
    for k in 0..1000u32 {
        let ip = Ipv4Addr::new(10, 245, (k / 250) as u8, (k % 250) as u8);
        table.insert(Prefix::new(ip, 32), &[range(6, 80, 90)]);
    }
    t.policy.names = vec!["bench/allow".into()];
    for i in 1..=PODS {
        t.policy.pods.insert(
            pod_ip(i),
            PodPolicy {
                ingress: Some(table.clone()),
                egress: Some(table.clone()),
            },
        );
    }
    t
}

/// A 64-byte UDP frame from pod `i` (as it leaves the pod) to `dst`.
fn udp_from_pod(i: u8, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(pod_mac(i).0, port_mac(i).0)
        .ipv4(pod_ip(i).octets(), dst.octets(), 64)
        .udp(40000, 5000)
        .write(&mut f, &[0x5a; PAYLOAD])
        .unwrap();
    f
}

/// What node 7 sends node 1 for its pod 10.244.7.9 -> pod 1.
fn vxlan_to_pod(i: u8) -> Vec<u8> {
    let mut inner = Vec::new();
    PacketBuilder::ethernet2(vtep_mac(7).0, VTEP_MAC.0)
        .ipv4([10, 244, 7, 9], pod_ip(i).octets(), 63)
        .udp(5000, 40000)
        .write(&mut inner, &[0xa5; PAYLOAD])
        .unwrap();
    let mut vx = vec![0u8; vxlan::HEADER_LEN];
    vxlan::emit_header(&mut vx, 1);
    vx.extend_from_slice(&inner);
    let mut f = Vec::new();
    PacketBuilder::ethernet2(node_uplink_mac(7).0, UPLINK_MAC.0)
        .ipv4(vtep_ip(7).octets(), UNDERLAY_IP.octets(), 64)
        .udp(51234, vxlan::UDP_PORT)
        .write(&mut f, &vx)
        .unwrap();
    f
}

/// Pod `i` asks for its gateway.
fn arp_request(i: u8) -> Vec<u8> {
    let mut f = vec![0u8; ethernet::HEADER_LEN + arp::LEN];
    ethernet::emit(
        &mut f,
        EthernetAddress::BROADCAST,
        pod_mac(i),
        ethernet::ethertype::ARP,
    );
    arp::emit_request(
        &mut f[ethernet::HEADER_LEN..],
        pod_mac(i),
        pod_ip(i),
        Ipv4Addr::new(10, 244, 1, 1),
    );
    f
}

/// A batch's frames, each with the port it arrives on.
type Frames = Vec<(PortId, Vec<u8>)>;

/// A UMEM of 64 chunks as the RX ring hands it over: frame `k` at
/// `RX_OFF` of chunk `k`, received on `ports[k]`.
#[derive(Clone)]
struct Rx {
    umem: Vec<u8>,
    lens: [usize; BATCH_SIZE],
    ports: [PortId; BATCH_SIZE],
}

impl Rx {
    fn new(frames: &[(PortId, Vec<u8>)]) -> Rx {
        assert_eq!(frames.len(), BATCH_SIZE);
        let mut umem = vec![0u8; BATCH_SIZE * CHUNK];
        let mut lens = [0; BATCH_SIZE];
        let mut ports = [0; BATCH_SIZE];
        for (k, (port, f)) in frames.iter().enumerate() {
            let at = k * CHUNK + RX_OFF;
            umem[at..at + f.len()].copy_from_slice(f);
            lens[k] = f.len();
            ports[k] = *port;
        }
        Rx { umem, lens, ports }
    }
}

/// Runs one batch: builds the descriptors' `Packet`s and processes them.
/// Returns the verdict of the last frame.
#[inline(always)]
fn run_batch(pl: &mut Pipeline, t: &Tables, rx: &mut Rx) -> Verdict {
    let (lens, ports) = (rx.lens, rx.ports);
    let mut it = rx.umem.chunks_exact_mut(CHUNK).enumerate();
    let mut pkts: [Packet<'_>; BATCH_SIZE] = core::array::from_fn(|_| {
        let (k, c) = it.next().unwrap();
        Packet::new(c, RX_OFF, lens[k], ports[k])
    });
    pl.process(NOW, t, &mut pkts);
    pkts[BATCH_SIZE - 1].verdict
}

fn bench_walks(c: &mut Criterion) {
    let t = tables();
    // Batches cycle over pods 1..=64 (and, for encap, 64 remote nodes).
    let walks: [(&str, Verdict, Frames); 4] = [
        (
            "local_route",
            Verdict::Tx(1),
            (0..BATCH_SIZE as u8)
                .map(|k| {
                    let (src, dst) = (1 + k, 1 + (k + 1) % BATCH_SIZE as u8);
                    (PortId::from(src), udp_from_pod(src, pod_ip(dst)))
                })
                .collect(),
        ),
        (
            "encap",
            Verdict::Tx(UPLINK),
            (0..BATCH_SIZE as u8)
                .map(|k| {
                    let dst = Ipv4Addr::new(10, 244, 2 + k * 3, 9);
                    (PortId::from(1 + k), udp_from_pod(1 + k, dst))
                })
                .collect(),
        ),
        (
            "decap",
            Verdict::Tx(BATCH_SIZE as PortId),
            (0..BATCH_SIZE as u8)
                .map(|k| (UPLINK, vxlan_to_pod(1 + k)))
                .collect(),
        ),
        (
            "arp_reply",
            Verdict::Tx(BATCH_SIZE as PortId),
            (0..BATCH_SIZE as u8)
                .map(|k| (PortId::from(1 + k), arp_request(1 + k)))
                .collect(),
        ),
    ];

    // `walk`: with the flow cache (the dataplane's default; the untimed
    // check below teaches it); `uncached`: every packet takes the full walk.
    // `*_policy`: the same frames with every local pod isolated both ways
    // by network policy that allows them (tracked flows, issue 17's goal:
    // established packets within 5 % of no policy).
    let with_policy = policy_tables();
    for (group, cached, t) in [
        ("walk", true, &t),
        ("walk_policy", true, &with_policy),
        ("uncached", false, &t),
        ("uncached_policy", false, &with_policy),
    ] {
        let walks = if t.policy.is_empty() {
            &walks[..]
        } else {
            // ARP is no flow: nothing for policy to decide.
            &walks[..3]
        };
        bench_group(c, t, walks, group, cached);
    }

    // What the timed closure costs without `process`: building 64 Packets.
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));
    let template = Rx::new(&walks[0].2);
    g.bench_function("build_packets", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |rx| {
                let (lens, ports) = (rx.lens, rx.ports);
                let mut it = rx.umem.chunks_exact_mut(CHUNK).enumerate();
                let pkts: [Packet<'_>; BATCH_SIZE] = core::array::from_fn(|_| {
                    let (k, c) = it.next().unwrap();
                    Packet::new(c, RX_OFF, lens[k], ports[k])
                });
                black_box(pkts);
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// The walks in criterion group `group`, with the flow cache or without.
fn bench_group(
    c: &mut Criterion,
    t: &Tables,
    walks: &[(&str, Verdict, Frames)],
    group: &str,
    cached: bool,
) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));
    for (name, want, frames) in walks {
        let template = Rx::new(frames);
        let mut pl = Pipeline::new();
        pl.set_flow_cache(cached);
        // Every frame takes the walk being measured (checked once, untimed).
        let mut rx = Rx::new(frames);
        let mut it = rx.umem.chunks_exact_mut(CHUNK).enumerate();
        let mut pkts: Vec<Packet<'_>> = (0..BATCH_SIZE)
            .map(|_| {
                let (k, c) = it.next().unwrap();
                Packet::new(c, RX_OFF, template.lens[k], template.ports[k])
            })
            .collect();
        pl.process(NOW, t, &mut pkts);
        assert!(
            pkts.iter().all(|p| matches!(p.verdict, Verdict::Tx(_))),
            "{name}: {:?}",
            pkts.iter().map(|p| p.verdict).collect::<Vec<_>>()
        );
        assert_eq!(pkts[BATCH_SIZE - 1].verdict, *want, "{name}");

        g.bench_function(*name, |b| {
            b.iter_batched_ref(
                || template.clone(),
                |rx| black_box(run_batch(&mut pl, t, rx)),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench_walks);
criterion_main!(benches);
