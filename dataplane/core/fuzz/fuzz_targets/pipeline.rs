//! Fuzzes the whole pipeline with one frame per input, on the tables of the
//! pipeline tests' node n1 (src/pipeline/tests.rs): uplink on port 0, pods
//! 10.244.1.2 and 10.244.1.3 on ports 1 and 2, 10.244.2.0/24 behind VTEP
//! 172.30.0.12.
//!
//! Input: byte 0 bits 0-1 pick the port (0 uplink, 1 p1, 2 p2, 3 unknown)
//! and bits 2-3 the tables (0-1 as in the tests, 2 next hop unresolved,
//! 3 no uplink); byte 1 is the receive offset in 8-byte units (32 = 256,
//! the dataplane's); the rest is the frame, cut to fit the 2048-byte chunk.
//! The bytes of the chunk outside the frame are 0xa5.
#![no_main]

use core::net::Ipv4Addr;
use std::sync::OnceLock;

use kxdp_core::conntrack::Timeouts;
use kxdp_core::pipeline::{Packet, Pipeline, Verdict};
use kxdp_core::prefix::Prefix;
use kxdp_core::tables::{EgressHop, LocalPod, NodeInfo, PortInfo, PortKind, RemoteRoute, Tables};
use kxdp_core::wire::{checksum, EthernetAddress};
use libfuzzer_sys::fuzz_target;

const CHUNK: usize = 2048;
const ETH: usize = 14;
/// A fresh pipeline per input (so a crash replays alone), with a small
/// conntrack: the default one (256k flows) costs milliseconds to build.
const CONNTRACK: usize = 64;

fn mac(b: [u8; 6]) -> EthernetAddress {
    EthernetAddress(b)
}

fn fixture(next_hop: bool, uplink: bool) -> Tables {
    let mut t = Tables {
        node: Some(NodeInfo {
            underlay_ip: Ipv4Addr::new(172, 30, 0, 11),
            vtep_mac: mac([0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0b]),
            vni: 1,
            vxlan_port: 4789,
            pod_cidr: Prefix::new(Ipv4Addr::new(10, 244, 1, 0), 24),
            cluster_cidr: Prefix::new(Ipv4Addr::new(10, 244, 0, 0), 16),
            gateway_ip: Ipv4Addr::new(10, 244, 1, 1),
            pod_mtu: 1450,
            service_cidr: Some(Prefix::new(Ipv4Addr::new(10, 96, 0, 0), 12)),
            masquerade: true,
        }),
        ..Tables::default()
    };
    if uplink {
        t.set_port(
            0,
            PortInfo {
                kind: PortKind::Uplink,
                mac: mac([0x52, 0x54, 0x00, 0x1e, 0x00, 0x0b]),
            },
        );
    }
    for (port, last) in [(1u16, 2u8), (2, 3)] {
        let ip = Ipv4Addr::new(10, 244, 1, last);
        t.set_port(
            port,
            PortInfo {
                kind: PortKind::Pod { ip },
                mac: mac([0x02, 0x6b, 0x78, 0x64, 0x70, port as u8]),
            },
        );
        t.local.insert(
            ip,
            LocalPod {
                port,
                mac: mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, last]),
            },
        );
    }
    t.add_remote(
        Prefix::new(Ipv4Addr::new(10, 244, 2, 0), 24),
        RemoteRoute {
            vtep_ip: Ipv4Addr::new(172, 30, 0, 12),
            vtep_mac: mac([0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0c]),
            next_hop_mac: next_hop.then(|| mac([0x52, 0x54, 0x00, 0x1e, 0x00, 0x0c])),
        },
    );
    // Egress (walk 7): the default route through the underlay's router,
    // the underlay on-link, n2's address resolved.
    let router = mac([0x52, 0x54, 0x00, 0x1e, 0x00, 0xfe]);
    t.egress.insert(
        Prefix::new(Ipv4Addr::UNSPECIFIED, 0),
        EgressHop::Gateway(next_hop.then_some(router)),
    );
    t.egress.insert(
        Prefix::new(Ipv4Addr::new(172, 30, 0, 0), 24),
        EgressHop::OnLink,
    );
    t.neighbours.insert(
        Ipv4Addr::new(172, 30, 0, 12),
        mac([0x52, 0x54, 0x00, 0x1e, 0x00, 0x0c]),
    );
    t
}

fn tables(variant: u8) -> &'static Tables {
    static T: OnceLock<[Tables; 3]> = OnceLock::new();
    let all = T.get_or_init(|| {
        [
            fixture(true, true),
            fixture(false, true),
            fixture(true, false),
        ]
    });
    &all[usize::from(variant.saturating_sub(1).min(2))]
}

fn ipv4_header_ok(ip: &[u8]) -> bool {
    let hl = usize::from(ip[0] & 0xf) * 4;
    hl >= 20 && ip.len() >= hl && checksum::fold(checksum::sum(&ip[..hl])) == 0xFFFF
}

fuzz_target!(|data: &[u8]| {
    let [sel, off8, frame @ ..] = data else {
        return;
    };
    let port = u16::from(sel & 3);
    let port = if port == 3 { 7 } else { port };
    let t = tables((sel >> 2) & 3);
    let off = usize::from(*off8) * 8;
    let len = frame.len().min(CHUNK - off);
    let mut chunk = [0xa5u8; CHUNK];
    chunk[off..off + len].copy_from_slice(&frame[..len]);

    let mut pl = Pipeline::with_conntrack(CONNTRACK, Timeouts::default());
    let mut pkts = [Packet::new(&mut chunk, off, len, port)];
    pl.process(1_000_000_000_000, t, &mut pkts);
    let p = &pkts[0];
    let c = pl.counters();
    let drops: u64 = c.drops.iter().sum();
    match p.verdict {
        Verdict::Handoff(w) => panic!("single-worker pipeline handed off to {w}"),
        Verdict::Drop(r) => {
            assert_eq!(c.drop_count(r), 1);
            assert_eq!(drops, 1);
        }
        Verdict::Tx(out) => {
            assert!(t.port(out).is_some(), "Tx to unknown port {out}");
            assert!(p.off + p.len <= CHUNK && p.len >= ETH);
            assert_eq!(
                c.routed_local + c.encapsulated + c.arp_replies + c.egress_routed,
                1
            );
            assert_eq!(drops, c.icmp_errors_sent);
            let f = p.frame();
            if f[12..14] == [0x08, 0x00] {
                let ip = &f[ETH..];
                assert!(ipv4_header_ok(ip), "bad IPv4 header sent");
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                assert_eq!(total, ip.len(), "IPv4 length != frame length");
                if c.encapsulated == 1 {
                    // VXLAN: the inner IPv4 header too.
                    assert!(ipv4_header_ok(&f[50 + ETH..]), "bad inner IPv4 header");
                }
            } else {
                assert_eq!(f[12..14], [0x08, 0x06], "only IPv4 and ARP are sent");
                assert_eq!((out, f.len()), (port, 60), "ARP replies go back, padded");
            }
        }
    }
});
