//! The fuzz targets' node: n1 of the pipeline tests (src/pipeline/tests.rs):
//! uplink on port 0, pods 10.244.1.2 and 10.244.1.3 on ports 1 and 2,
//! 10.244.2.0/24 behind VTEP 172.30.0.12, the egress routes of walk 7; with
//! services, also the host port (3) and `default/web`: ClusterIP
//! 10.96.0.10:80 and NodePort 172.30.0.11:30080 (TCP and UDP) to
//! 10.244.1.3:8080 (local) and 10.244.2.2:8080 (remote).
#![allow(dead_code)] // each target uses its part

use core::net::Ipv4Addr;
use std::sync::OnceLock;

use kxdp_core::prefix::Prefix;
use kxdp_core::services::{Backend, Frontend, FrontendKey};
use kxdp_core::tables::{EgressHop, LocalPod, NodeInfo, PortInfo, PortKind, RemoteRoute, Tables};
use kxdp_core::wire::{checksum, EthernetAddress};

pub const CHUNK: usize = 2048;
pub const ETH: usize = 14;

fn mac(b: [u8; 6]) -> EthernetAddress {
    EthernetAddress(b)
}

pub fn fixture(next_hop: bool, uplink: bool) -> Tables {
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

/// [`fixture`] with the host port and `default/web` (`local_only`: both
/// traffic policies Local).
pub fn with_services(local_only: bool) -> Tables {
    let mut t = fixture(true, true);
    t.set_port(
        3,
        PortInfo {
            kind: PortKind::Host {
                peer_mac: mac([0x02, 0x6b, 0x78, 0x6e, 0x6f, 0x64]),
            },
            mac: mac([0x02, 0x6b, 0x78, 0x68, 0x6f, 0x73]),
        },
    );
    t.services.cidr = Some(Prefix::new(Ipv4Addr::new(10, 96, 0, 0), 12));
    let web = t.services.add_name("default/web");
    let backends = vec![
        Backend {
            ip: Ipv4Addr::new(10, 244, 1, 3),
            port: 8080,
            ready: true,
            serving: true,
            local: true,
        },
        Backend {
            ip: Ipv4Addr::new(10, 244, 2, 2),
            port: 8080,
            ready: true,
            serving: true,
            local: false,
        },
    ];
    for proto in [6u8, 17] {
        for (addr, port, node_port) in [
            (Ipv4Addr::new(10, 96, 0, 10), 80, false),
            (Ipv4Addr::new(172, 30, 0, 11), 30080, true),
        ] {
            t.services.insert(Frontend::new(
                web,
                FrontendKey { addr, proto, port },
                backends.clone(),
                None,
                node_port,
                local_only,
            ));
        }
    }
    t.services.finish();
    t
}

pub fn tables(variant: u8) -> &'static Tables {
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

/// [`with_services`]: Cluster (0) or Local (1) policies.
pub fn services_tables(local: bool) -> &'static Tables {
    static T: OnceLock<[Tables; 2]> = OnceLock::new();
    &T.get_or_init(|| [with_services(false), with_services(true)])[usize::from(local)]
}

/// A sent frame is IPv4 with a right header checksum and a length that is
/// the frame's (true), or ARP (false); anything else fails.
pub fn assert_sent_ipv4_or_arp(f: &[u8]) -> bool {
    if f[12..14] == [0x08, 0x00] {
        let ip = &f[ETH..];
        assert!(ipv4_header_ok(ip), "bad IPv4 header sent");
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert_eq!(total, ip.len(), "IPv4 length != frame length");
        true
    } else {
        assert_eq!(f[12..14], [0x08, 0x06], "only IPv4 and ARP are sent");
        false
    }
}

pub fn ipv4_header_ok(ip: &[u8]) -> bool {
    let hl = usize::from(ip[0] & 0xf) * 4;
    hl >= 20 && ip.len() >= hl && checksum::fold(checksum::sum(&ip[..hl])) == 0xFFFF
}
