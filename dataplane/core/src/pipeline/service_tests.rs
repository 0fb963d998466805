//! Service walk tests (DESIGN.md walks 3, 4 and 5) over annotated byte
//! vectors: ClusterIP and NodePort load balancing, their replies, rejects,
//! ICMP errors about translated flows, the host interface, connection
//! tracking and the service counters.
//!
//! The fixture is node n1 of `tests.rs` (uplink 0, p1 on port 1, p2 on
//! port 2, n2 owning 10.244.2.0/24) plus the host interface on port 3 and
//! one service, `default/web`: ClusterIP 10.96.0.10 port 80 (TCP and UDP)
//! to target port 8080, NodePort 30080 on n1's 172.30.0.11, with backends
//! p2 (10.244.1.3:8080, local) and/or 10.244.2.2:8080 (on n2) as each test
//! chooses; and `default/empty` (10.96.0.20:80) without endpoints. An
//! outside client 172.30.0.100 reaches the NodePort over the uplink.
//!
//! Every output is checked from scratch: the expected datagram is rebuilt
//! from the input with etherparse (addresses and ports replaced, TTL
//! lowered, IPv4/TCP/UDP checksums computed afresh) and compared byte for
//! byte; IPv4 and transport checksums are also verified by the RFC 1071
//! reference and etherparse (`tests.rs`), ICMP checksums by RFC 1071. The
//! pipeline's incremental updates are never trusted.

use core::net::Ipv4Addr;

use etherparse::{
    ArpOperation, EtherType, IpNumber, Ipv4Header, LinkSlice, NetSlice, SlicedPacket, TcpHeader,
    UdpHeader,
};

use super::tests::{
    assert_ipv4_checksum, assert_l4_checksum, mutated, node, packets, parse_encapped,
    parse_icmp_error, process_batch, process_one, quote_of, sent, tables, total_drops, Out,
    ARP_REQUEST_FOR_GATEWAY, ARP_SPA, ARP_TPA, CHUNK, GATEWAY, INNER_IP, MS, NEXT_HOP_MAC, P1_IP,
    P1_MAC, P1_PORT, P2_IP, P2_MAC, P2_PORT, PORT1_MAC, PORT2_MAC, REMOTE_POD_IP,
    REMOTE_UNDERLAY_IP, REMOTE_VTEP_MAC, RX_OFF, T0, UNDERLAY_IP, UPLINK, UPLINK_MAC, VNI,
    VTEP_MAC, VXLAN_PORT,
};
use super::*;
// Every batch of these tests also runs through a twin without the flow cache.
use super::twin::Checked as Pipeline;
use crate::conntrack::{Entry, FlowKey, TcpState, Timeouts};
use crate::prefix::Prefix;
use crate::services::{Backend, Frontend, FrontendKey};
use crate::wire::tcp::flags::{ACK, FIN, PSH, RST, SYN};
use crate::wire::vectors::XorShift;

// ---------------------------------------------------------------------------
// Fixture: n1 with the host interface and two services
// ---------------------------------------------------------------------------

pub(super) const SEC: u64 = 1_000_000_000;

pub(super) const HOST_PORT: PortId = 3;
/// kxdp's end of the host veth pair.
pub(super) const HOST_PORT_MAC: EthernetAddress =
    EthernetAddress([0x02, 0x6b, 0x78, 0x64, 0x70, 0xfe]);
/// The node kernel's end of the host veth (it has the gateway address).
pub(super) const HOST_PEER_MAC: EthernetAddress =
    EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01]);

pub(super) const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub(super) const SVC_PORT: u16 = 80;
pub(super) const TARGET_PORT: u16 = 8080;
pub(super) const NODE_PORT: u16 = 30080;
/// What pods and the host address: ClusterIP:port.
pub(super) const FRONTEND: (Ipv4Addr, u16) = (CLUSTER_IP, SVC_PORT);
/// What outside clients address: NodeIP:NodePort.
pub(super) const NODE_FRONTEND: (Ipv4Addr, u16) = (UNDERLAY_IP, NODE_PORT);
pub(super) const LOCAL_BE: (Ipv4Addr, u16) = (P2_IP, TARGET_PORT);
pub(super) const REMOTE_BE: (Ipv4Addr, u16) = (REMOTE_POD_IP, TARGET_PORT);
/// `default/web`'s service id, and `default/empty`'s (no endpoints).
pub(super) const WEB: usize = 0;
const EMPTY: usize = 1;
const EMPTY_FRONTEND: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 20), 80);
/// `default/web2` (with `Svc::second_cluster_ip`): web's backends again.
const SECOND_FRONTEND: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 96, 0, 21), 80);

/// A client outside the cluster, on the underlay segment.
pub(super) const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 100);
const CLIENT_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x1e, 0x00, 0x64]);
/// n2's gateway address (it sends n2's ICMP errors).
const REMOTE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 1);

pub(super) const TCP: u8 = ipv4::protocol::TCP;
pub(super) const UDP: u8 = ipv4::protocol::UDP;

fn be(addr: (Ipv4Addr, u16), ready: bool, serving: bool) -> Backend {
    Backend {
        ip: addr.0,
        port: addr.1,
        ready,
        serving,
        local: node().pod_cidr.contains(addr.0),
    }
}

pub(super) fn ready(addr: (Ipv4Addr, u16)) -> Backend {
    be(addr, true, true)
}

/// Terminating but still serving: keeps its flows, gets no new ones.
fn terminating(addr: (Ipv4Addr, u16)) -> Backend {
    be(addr, false, true)
}

/// `default/web` as a test wants it.
#[derive(Debug, Clone)]
pub(super) struct Svc {
    pub(super) backends: Vec<Backend>,
    pub(super) affinity_ns: Option<u64>,
    pub(super) local_only: bool,
    /// Also `default/web2`: ClusterIP 10.96.0.21:80 with the same backends.
    pub(super) second_cluster_ip: bool,
}

impl Svc {
    pub(super) fn new(backends: &[Backend]) -> Svc {
        Svc {
            backends: backends.to_vec(),
            affinity_ns: None,
            local_only: false,
            second_cluster_ip: false,
        }
    }
}

/// n1's tables with the host port and the services, as the engine builds
/// them (`build_services`): one frontend per ClusterIP port and per NodePort.
pub(super) fn svc_tables(s: &Svc) -> Tables {
    let mut t = tables();
    t.set_port(
        HOST_PORT,
        PortInfo {
            kind: PortKind::Host {
                peer_mac: HOST_PEER_MAC,
            },
            mac: HOST_PORT_MAC,
        },
    );
    t.services.cidr = Some(Prefix::new(Ipv4Addr::new(10, 96, 0, 0), 12));
    let web = t.services.add_name("default/web");
    let empty = t.services.add_name("default/empty");
    assert_eq!((web as usize, empty as usize), (WEB, EMPTY));
    for proto in [TCP, UDP] {
        let key = |addr, port| FrontendKey { addr, proto, port };
        t.services.insert(Frontend::new(
            web,
            key(CLUSTER_IP, SVC_PORT),
            s.backends.clone(),
            s.affinity_ns,
            false,
            false,
        ));
        t.services.insert(Frontend::new(
            web,
            key(UNDERLAY_IP, NODE_PORT),
            s.backends.clone(),
            s.affinity_ns,
            true,
            s.local_only,
        ));
        t.services.insert(Frontend::new(
            empty,
            key(EMPTY_FRONTEND.0, EMPTY_FRONTEND.1),
            vec![],
            None,
            false,
            false,
        ));
    }
    if s.second_cluster_ip {
        let web2 = t.services.add_name("default/web2");
        for proto in [TCP, UDP] {
            t.services.insert(Frontend::new(
                web2,
                FrontendKey {
                    addr: SECOND_FRONTEND.0,
                    proto,
                    port: SECOND_FRONTEND.1,
                },
                s.backends.clone(),
                None,
                false,
                false,
            ));
        }
    }
    t.services.finish();
    t
}

fn with_backends(b: &[Backend]) -> Tables {
    svc_tables(&Svc::new(b))
}

/// A pipeline with a small conntrack (the default one is 30 MiB).
pub(super) fn pipeline() -> Pipeline {
    Pipeline::with_conntrack(4096, Timeouts::default())
}

// ---------------------------------------------------------------------------
// Vectors (checksums computed independently, re-checked in
// `service_vectors_are_valid`)
// ---------------------------------------------------------------------------

/// Walk 3: p1 opens 10.244.1.2:40000 -> 10.96.0.10:80, TCP SYN with an MSS
/// option.
#[rustfmt::skip]
static SYN_P1_TO_CLUSTER_IP: [u8; 58] = [
    /* eth dst: port 1 (p1's gateway) */ 0x02, 0x6b, 0x78, 0x64, 0x70, 0x01,
    /* eth src: p1 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 44 */ 0x00, 0x2c,
    /* ident */ 0x11, 0x11,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: tcp */ 0x06,
    /* header checksum */ 0x13, 0x5c,
    /* src: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* dst: 10.96.0.10 (ClusterIP) */ 0x0a, 0x60, 0x00, 0x0a,
    /* tcp src port: 40000 */ 0x9c, 0x40,
    /* tcp dst port: 80 */ 0x00, 0x50,
    /* seq */ 0x0a, 0x0b, 0x0c, 0x0d,
    /* ack */ 0x00, 0x00, 0x00, 0x00,
    /* data offset: 6 words */ 0x60,
    /* flags: SYN */ 0x02,
    /* window: 64240 */ 0xfa, 0xf0,
    /* checksum */ 0xd4, 0x5f,
    /* urgent pointer */ 0x00, 0x00,
    /* option: MSS 1410 */ 0x02, 0x04, 0x05, 0x82,
];

/// The backend p2 answers it: 10.244.1.3:8080 -> 10.244.1.2:40000 SYN+ACK.
#[rustfmt::skip]
static SYNACK_P2_TO_P1: [u8; 58] = [
    /* eth dst: port 2 (p2's gateway) */ 0x02, 0x6b, 0x78, 0x64, 0x70, 0x02,
    /* eth src: p2 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 44 */ 0x00, 0x2c,
    /* ident */ 0x22, 0x22,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: tcp */ 0x06,
    /* header checksum */ 0x00, 0xbe,
    /* src: 10.244.1.3 (p2) */ 0x0a, 0xf4, 0x01, 0x03,
    /* dst: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* tcp src port: 8080 */ 0x1f, 0x90,
    /* tcp dst port: 40000 */ 0x9c, 0x40,
    /* seq */ 0x50, 0x60, 0x70, 0x80,
    /* ack: the SYN's seq + 1 */ 0x0a, 0x0b, 0x0c, 0x0e,
    /* data offset: 6 words */ 0x60,
    /* flags: SYN|ACK */ 0x12,
    /* window: 65160 */ 0xfe, 0x88,
    /* checksum */ 0xef, 0x08,
    /* urgent pointer */ 0x00, 0x00,
    /* option: MSS 1410 */ 0x02, 0x04, 0x05, 0x82,
];

/// The same answer from the backend on n2, 10.244.2.2:8080 ->
/// 10.244.1.2:40000, as n2 encapsulates it (inner TTL already 63).
#[rustfmt::skip]
static VXLAN_SYNACK_FROM_REMOTE: [u8; 108] = [
    /* outer eth dst: n1 uplink */ 0x52, 0x54, 0x00, 0x1e, 0x00, 0x0b,
    /* outer eth src: n2 uplink */ 0x52, 0x54, 0x00, 0x1e, 0x00, 0x0c,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* outer ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 94 */ 0x00, 0x5e,
    /* ident */ 0x00, 0x00,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: udp */ 0x11,
    /* header checksum */ 0xe2, 0x3b,
    /* src: 172.30.0.12 (n2) */ 0xac, 0x1e, 0x00, 0x0c,
    /* dst: 172.30.0.11 (n1) */ 0xac, 0x1e, 0x00, 0x0b,
    /* outer udp src port: 51234 */ 0xc8, 0x22,
    /* outer udp dst port: 4789 */ 0x12, 0xb5,
    /* udp len: 74 */ 0x00, 0x4a,
    /* udp checksum: none */ 0x00, 0x00,
    /* vxlan flags: I */ 0x08,
    /* reserved */ 0x00, 0x00, 0x00,
    /* vni: 1 */ 0x00, 0x00, 0x01,
    /* reserved */ 0x00,
    /* inner eth dst: n1 vtep */ 0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0b,
    /* inner eth src: n2 vtep */ 0x0e, 0x58, 0xac, 0x1e, 0x00, 0x0c,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* inner ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 44 */ 0x00, 0x2c,
    /* ident */ 0x44, 0x44,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 63 */ 0x3f,
    /* protocol: tcp */ 0x06,
    /* header checksum */ 0xde, 0x9c,
    /* src: 10.244.2.2 (backend on n2) */ 0x0a, 0xf4, 0x02, 0x02,
    /* dst: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* tcp src port: 8080 */ 0x1f, 0x90,
    /* tcp dst port: 40000 */ 0x9c, 0x40,
    /* seq */ 0x50, 0x60, 0x70, 0x80,
    /* ack */ 0x0a, 0x0b, 0x0c, 0x0e,
    /* data offset: 6 words */ 0x60,
    /* flags: SYN|ACK */ 0x12,
    /* window: 65160 */ 0xfe, 0x88,
    /* checksum */ 0xee, 0x09,
    /* urgent pointer */ 0x00, 0x00,
    /* option: MSS 1410 */ 0x02, 0x04, 0x05, 0x82,
];

/// Walk 3 over UDP: 10.244.1.2:40000 -> 10.96.0.10:80, "kxdp".
#[rustfmt::skip]
static UDP_P1_TO_CLUSTER_IP: [u8; 46] = [
    /* eth dst: port 1 (p1's gateway) */ 0x02, 0x6b, 0x78, 0x64, 0x70, 0x01,
    /* eth src: p1 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x02,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 32 */ 0x00, 0x20,
    /* ident */ 0x55, 0x55,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: udp */ 0x11,
    /* header checksum */ 0xcf, 0x18,
    /* src: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* dst: 10.96.0.10 (ClusterIP) */ 0x0a, 0x60, 0x00, 0x0a,
    /* udp src port: 40000 */ 0x9c, 0x40,
    /* udp dst port: 80 */ 0x00, 0x50,
    /* udp len: 12 */ 0x00, 0x0c,
    /* udp checksum */ 0x7c, 0xfd,
    /* payload: "kxdp" */ b'k', b'x', b'd', b'p',
];

/// Walk 4: an outside client opens 172.30.0.100:50000 -> 172.30.0.11:30080.
#[rustfmt::skip]
static SYN_CLIENT_TO_NODE_PORT: [u8; 58] = [
    /* eth dst: n1 uplink */ 0x52, 0x54, 0x00, 0x1e, 0x00, 0x0b,
    /* eth src: the client */ 0x52, 0x54, 0x00, 0x1e, 0x00, 0x64,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 44 */ 0x00, 0x2c,
    /* ident */ 0x33, 0x33,
    /* flags DF */ 0x40, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: tcp */ 0x06,
    /* header checksum */ 0xae, 0xed,
    /* src: 172.30.0.100 (client) */ 0xac, 0x1e, 0x00, 0x64,
    /* dst: 172.30.0.11 (n1) */ 0xac, 0x1e, 0x00, 0x0b,
    /* tcp src port: 50000 */ 0xc3, 0x50,
    /* tcp dst port: 30080 */ 0x75, 0x80,
    /* seq */ 0x01, 0x02, 0x03, 0x04,
    /* ack */ 0x00, 0x00, 0x00, 0x00,
    /* data offset: 6 words */ 0x60,
    /* flags: SYN */ 0x02,
    /* window: 64240 */ 0xfa, 0xf0,
    /* checksum */ 0x07, 0xb3,
    /* urgent pointer */ 0x00, 0x00,
    /* option: MSS 1460 */ 0x02, 0x04, 0x05, 0xb4,
];

/// Offset of the quoted datagram in an ICMP error frame.
pub(super) const QUOTE: usize = ETH + 20 + 8;

/// The backend p2 answers the DNATed "kxdp" datagram (as it received it:
/// 10.244.1.2:40000 -> 10.244.1.3:8080, TTL 63) with port unreachable,
/// quoting all of it.
#[rustfmt::skip]
static PORT_UNREACHABLE_P2_TO_P1: [u8; 74] = [
    /* eth dst: port 2 (p2's gateway) */ 0x02, 0x6b, 0x78, 0x64, 0x70, 0x02,
    /* eth src: p2 */ 0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x03,
    /* ethertype: ipv4 */ 0x08, 0x00,
    /* ipv4: ver 4, ihl 5 */ 0x45,
    /* dscp/ecn */ 0x00,
    /* total len: 60 */ 0x00, 0x3c,
    /* ident */ 0x66, 0x66,
    /* flags: none */ 0x00, 0x00,
    /* ttl: 64 */ 0x40,
    /* protocol: icmp */ 0x01,
    /* header checksum */ 0xfc, 0x6e,
    /* src: 10.244.1.3 (p2) */ 0x0a, 0xf4, 0x01, 0x03,
    /* dst: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* icmp type: destination unreachable */ 0x03,
    /* code: port unreachable */ 0x03,
    /* checksum */ 0x15, 0x07,
    /* unused */ 0x00, 0x00, 0x00, 0x00,
    /* quoted ipv4: ver 4, ihl 5, dscp 0, total len 32 */ 0x45, 0x00, 0x00, 0x20,
    /* quoted ident, flags DF */ 0x55, 0x55, 0x40, 0x00,
    /* quoted ttl 63, udp, header checksum */ 0x3f, 0x11, 0xce, 0x8b,
    /* quoted src: 10.244.1.2 (p1) */ 0x0a, 0xf4, 0x01, 0x02,
    /* quoted dst: 10.244.1.3 (p2) */ 0x0a, 0xf4, 0x01, 0x03,
    /* quoted udp ports 40000 -> 8080 */ 0x9c, 0x40, 0x1f, 0x90,
    /* quoted udp len 12, checksum */ 0x00, 0x0c, 0x5c, 0x30,
    /* quoted payload: "kxdp" */ b'k', b'x', b'd', b'p',
];

// ---------------------------------------------------------------------------
// Building inputs with etherparse
// ---------------------------------------------------------------------------

/// RFC 1071 checksum of `data` (a plain reference, not `wire::checksum`).
pub(super) fn rfc1071(data: &[u8]) -> u16 {
    let mut s: u64 = 0;
    for pair in data.chunks(2) {
        s += u64::from(pair[0]) << 8 | pair.get(1).copied().map_or(0, u64::from);
    }
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    !(s as u16)
}

/// Who sends a frame: the port it arrives on and its Ethernet addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Peer {
    P1,
    P2,
    /// The node's kernel, through the host interface.
    Host,
    /// The outside client, on the uplink (not VXLAN).
    Client,
    /// A pod on n2: its frames arrive VXLAN-encapsulated on the uplink.
    Remote,
}

impl Peer {
    fn port(self) -> PortId {
        match self {
            Peer::P1 => P1_PORT,
            Peer::P2 => P2_PORT,
            Peer::Host => HOST_PORT,
            Peer::Client | Peer::Remote => UPLINK,
        }
    }

    /// (source, destination) MACs of the (inner) frame it sends.
    fn macs(self) -> (EthernetAddress, EthernetAddress) {
        match self {
            Peer::P1 => (P1_MAC, PORT1_MAC),
            Peer::P2 => (P2_MAC, PORT2_MAC),
            Peer::Host => (HOST_PEER_MAC, HOST_PORT_MAC),
            Peer::Client => (CLIENT_MAC, UPLINK_MAC),
            Peer::Remote => (REMOTE_VTEP_MAC, VTEP_MAC),
        }
    }

    /// TTL of what it sends as it reaches n1 (n2 routed it once).
    fn ttl(self) -> u8 {
        if self == Peer::Remote {
            63
        } else {
            64
        }
    }

    /// An Ethernet frame carrying `datagram` from this peer.
    pub(super) fn frame(self, datagram: &[u8]) -> Vec<u8> {
        let (src, dst) = self.macs();
        let mut f = Vec::with_capacity(ETH + datagram.len());
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ethernet::ethertype::IPV4.to_be_bytes());
        f.extend_from_slice(datagram);
        if self == Peer::Remote {
            vxlan_from_n2(&f)
        } else {
            f
        }
    }

    /// The IPv4 datagram in a frame this peer sent.
    fn ip(self, frame: &[u8]) -> &[u8] {
        if self == Peer::Remote {
            &frame[INNER_IP..]
        } else {
            &frame[ETH..]
        }
    }

    /// The peer that has this address (clients and backends).
    fn of(ip: Ipv4Addr) -> Peer {
        match ip {
            P1_IP => Peer::P1,
            P2_IP => Peer::P2,
            GATEWAY => Peer::Host,
            CLIENT_IP => Peer::Client,
            REMOTE_POD_IP => Peer::Remote,
            _ => panic!("no peer has {ip}"),
        }
    }
}

/// `inner` as n2 encapsulates it towards n1 (RFC 7348, UDP checksum 0).
fn vxlan_from_n2(inner: &[u8]) -> Vec<u8> {
    let udp_len = (8 + vxlan::HEADER_LEN + inner.len()) as u16;
    let mut ip = Ipv4Header::new(
        udp_len,
        64,
        IpNumber::UDP,
        REMOTE_UNDERLAY_IP.octets(),
        UNDERLAY_IP.octets(),
    )
    .unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let udp = UdpHeader {
        source_port: 51234,
        destination_port: VXLAN_PORT,
        length: udp_len,
        checksum: 0,
    };
    let mut f = Vec::new();
    f.extend_from_slice(&UPLINK_MAC.0);
    f.extend_from_slice(&NEXT_HOP_MAC.0);
    f.extend_from_slice(&ethernet::ethertype::IPV4.to_be_bytes());
    f.extend_from_slice(&ip.to_bytes());
    f.extend_from_slice(&udp.to_bytes());
    f.extend_from_slice(&[vxlan::FLAG_I, 0, 0, 0]);
    f.extend_from_slice(&(VNI << 8).to_be_bytes());
    f.extend_from_slice(inner);
    f
}

fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: IpNumber, len: usize, ttl: u8) -> Ipv4Header {
    let mut ip = Ipv4Header::new(len as u16, ttl, proto, src.octets(), dst.octets()).unwrap();
    // Something not zero, to be carried through unchanged.
    ip.identification = 0x4b58 ^ len as u16;
    ip.header_checksum = ip.calc_header_checksum();
    ip
}

/// A TCP segment (IPv4 datagram) with `flags` (wire::tcp::flags bits).
#[allow(clippy::too_many_arguments)]
pub(super) fn tcp_datagram(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = TcpHeader::new(src.1, dst.1, seq, 64240);
    t.fin = flags & FIN != 0;
    t.syn = flags & SYN != 0;
    t.rst = flags & RST != 0;
    t.psh = flags & PSH != 0;
    t.ack = flags & ACK != 0;
    t.acknowledgment_number = ack;
    let ip = ipv4_header(
        src.0,
        dst.0,
        IpNumber::TCP,
        t.header_len() + payload.len(),
        ttl,
    );
    t.checksum = t.calc_checksum_ipv4(&ip, payload).unwrap();
    let mut d = ip.to_bytes().to_vec();
    d.extend_from_slice(&t.to_bytes());
    d.extend_from_slice(payload);
    d
}

/// A UDP datagram with its checksum.
pub(super) fn udp_datagram(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut u = UdpHeader {
        source_port: src.1,
        destination_port: dst.1,
        length: (8 + payload.len()) as u16,
        checksum: 0,
    };
    let ip = ipv4_header(src.0, dst.0, IpNumber::UDP, 8 + payload.len(), ttl);
    u.checksum = u.calc_checksum_ipv4(&ip, payload).unwrap();
    let mut d = ip.to_bytes().to_vec();
    d.extend_from_slice(&u.to_bytes());
    d.extend_from_slice(payload);
    d
}

/// A TCP segment as `peer` sends it.
#[allow(clippy::too_many_arguments)]
pub(super) fn tcp_from(
    peer: Peer,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    peer.frame(&tcp_datagram(
        src,
        dst,
        peer.ttl(),
        flags,
        seq,
        ack,
        payload,
    ))
}

pub(super) fn udp_from(
    peer: Peer,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    peer.frame(&udp_datagram(src, dst, peer.ttl(), payload))
}

/// An ICMP error (type, code) from `src` to `dst` quoting `quote`.
pub(super) fn icmp_error_datagram(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ty: u8,
    code: u8,
    quote: &[u8],
) -> Vec<u8> {
    let mut icmp = vec![ty, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quote);
    let c = rfc1071(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = ipv4_header(src, dst, IpNumber::ICMP, icmp.len(), 64);
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    let mut d = ip.to_bytes().to_vec();
    d.extend_from_slice(&icmp);
    d
}

// ---------------------------------------------------------------------------
// Running and checking outputs from scratch
// ---------------------------------------------------------------------------

pub(super) fn send(pl: &mut Pipeline, now: u64, t: &Tables, peer: Peer, frame: &[u8]) -> Out {
    process_one(pl, now, t, peer.port(), frame)
}

/// `datagram` as it must leave after NAT: the given source and destination
/// (address, port) put in, TTL lowered by `hops`, every checksum computed
/// afresh by etherparse (a zero UDP checksum stays zero: "none").
pub(super) fn natted(
    datagram: &[u8],
    src: Option<(Ipv4Addr, u16)>,
    dst: Option<(Ipv4Addr, u16)>,
    hops: u8,
) -> Vec<u8> {
    let (mut h, rest) = Ipv4Header::from_slice(datagram).unwrap();
    let payload = &rest[..usize::from(h.total_len) - h.header_len()];
    if let Some((a, _)) = src {
        h.source = a.octets();
    }
    if let Some((a, _)) = dst {
        h.destination = a.octets();
    }
    h.time_to_live -= hops;
    h.header_checksum = h.calc_header_checksum();
    let mut out = h.to_bytes().to_vec();
    match h.protocol {
        IpNumber::TCP => {
            let (mut t, data) = TcpHeader::from_slice(payload).unwrap();
            if let Some((_, p)) = src {
                t.source_port = p;
            }
            if let Some((_, p)) = dst {
                t.destination_port = p;
            }
            t.checksum = t.calc_checksum_ipv4(&h, data).unwrap();
            out.extend_from_slice(&t.to_bytes());
            out.extend_from_slice(data);
        }
        IpNumber::UDP => {
            let (mut u, _) = UdpHeader::from_slice(payload).unwrap();
            let data = &payload[8..usize::from(u.length)];
            if let Some((_, p)) = src {
                u.source_port = p;
            }
            if let Some((_, p)) = dst {
                u.destination_port = p;
            }
            if u.checksum != 0 {
                u.checksum = u.calc_checksum_ipv4(&h, data).unwrap();
            }
            out.extend_from_slice(&u.to_bytes());
            out.extend_from_slice(data);
        }
        p => panic!("natted: protocol {p:?}"),
    }
    out
}

/// A frame the pipeline sent, taken apart.
#[derive(Debug)]
pub(super) struct Delivered {
    pub(super) port: PortId,
    /// Sent VXLAN-encapsulated to n2 (outer headers checked).
    pub(super) encapped: bool,
    /// The (inner) Ethernet addresses.
    pub(super) eth_dst: [u8; 6],
    pub(super) eth_src: [u8; 6],
    /// The (inner) IPv4 datagram.
    pub(super) ip: Vec<u8>,
}

/// Takes a `Tx` output apart (decapsulating VXLAN to n2) and checks, from
/// scratch, its IPv4 header checksum and length and its TCP/UDP/ICMP
/// checksum (a zero UDP checksum is "none" and left to the caller).
#[track_caller]
pub(super) fn delivered(out: &Out) -> Delivered {
    let Verdict::Tx(port) = out.verdict else {
        panic!("not sent: {:?}", out.verdict)
    };
    let f = &out.frame;
    assert!(f.len() >= ETH + 20, "frame too short: {f:02x?}");
    assert_eq!(
        u16::from_be_bytes([f[12], f[13]]),
        ethernet::ethertype::IPV4
    );
    let encapped = port == UPLINK && f[ETH + 16..ETH + 20] == REMOTE_UNDERLAY_IP.octets();
    let inner = if encapped {
        parse_encapped(f).inner
    } else {
        f.clone()
    };
    let ip = inner[ETH..].to_vec();
    assert_ipv4_checksum(&ip);
    let (h, _) = Ipv4Header::from_slice(&ip).unwrap();
    assert_eq!(usize::from(h.total_len), ip.len(), "no trailing bytes");
    assert_eq!(h.ihl(), 5);
    assert!(h.time_to_live >= 1);
    let zero_udp = h.protocol == IpNumber::UDP && ip[26..28] == [0, 0];
    // A fragment's transport checksum is the whole datagram's
    // (`reassembled` checks it).
    if !zero_udp && !h.is_fragmenting_payload() {
        assert_l4_checksum(&ip);
    }
    Delivered {
        port,
        encapped,
        eth_dst: inner[0..6].try_into().unwrap(),
        eth_src: inner[6..12].try_into().unwrap(),
        ip,
    }
}

/// `d` reached `peer`: on its port, with the MACs a router uses towards it.
#[track_caller]
pub(super) fn assert_to(d: &Delivered, peer: Peer) {
    let (port, dst, src, encapped) = match peer {
        Peer::P1 => (P1_PORT, P1_MAC, PORT1_MAC, false),
        Peer::P2 => (P2_PORT, P2_MAC, PORT2_MAC, false),
        Peer::Host => (HOST_PORT, HOST_PEER_MAC, HOST_PORT_MAC, false),
        Peer::Client => (UPLINK, CLIENT_MAC, UPLINK_MAC, false),
        Peer::Remote => (UPLINK, REMOTE_VTEP_MAC, VTEP_MAC, true),
    };
    assert_eq!(
        (d.port, d.encapped),
        (port, encapped),
        "sent to {peer:?}'s port"
    );
    assert_eq!(d.eth_dst, dst.0, "eth dst towards {peer:?}");
    assert_eq!(d.eth_src, src.0, "eth src towards {peer:?}");
}

/// The 5-tuple of a TCP/UDP datagram.
pub(super) fn tuple(ip: &[u8]) -> FlowKey {
    let (h, rest) = Ipv4Header::from_slice(ip).unwrap();
    FlowKey {
        proto: h.protocol.0,
        src: h.source.into(),
        dst: h.destination.into(),
        sport: u16::from_be_bytes([rest[0], rest[1]]),
        dport: u16::from_be_bytes([rest[2], rest[3]]),
    }
}

pub(super) fn key(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> FlowKey {
    FlowKey {
        proto,
        src: src.0,
        dst: dst.0,
        sport: src.1,
        dport: dst.1,
    }
}

/// The conntrack entry `k` (either direction) names.
pub(super) fn entry(pl: &Pipeline, k: FlowKey) -> Option<Entry> {
    let ct = pl.conntrack();
    ct.lookup(&k).map(|(id, _)| *ct.get(id))
}

#[track_caller]
fn tcp_state(pl: &Pipeline, k: FlowKey) -> TcpState {
    entry(pl, k).expect("tracked").tcp
}

/// Checks that `d` is the TCP reset RFC 793 prescribes, from `from` to
/// `to`: RST with `seq` and no ACK, or (`ack` given) RST|ACK with sequence
/// number zero, no payload, checksums verified from scratch.
#[track_caller]
pub(super) fn assert_rst(
    d: &Delivered,
    from: (Ipv4Addr, u16),
    to: (Ipv4Addr, u16),
    seq: u32,
    ack: Option<u32>,
) {
    assert_eq!(tuple(&d.ip), key(TCP, from, to), "reset's addresses");
    let (h, rest) = Ipv4Header::from_slice(&d.ip).unwrap();
    assert_eq!(usize::from(h.total_len), 40, "no options, no payload");
    let (t, payload) = TcpHeader::from_slice(rest).unwrap();
    assert!(payload.is_empty());
    assert!(t.rst, "RST");
    assert!(!(t.syn || t.fin || t.psh || t.urg), "only RST (and ACK)");
    assert_eq!(t.sequence_number, seq, "RST seq");
    match ack {
        Some(a) => {
            assert!(t.ack, "RST|ACK");
            assert_eq!(t.acknowledgment_number, a, "RST ack");
        }
        None => assert!(!t.ack, "no ACK on a reset answering an ACK"),
    }
    assert_l4_checksum(&d.ip);
}

/// The backend a new flow's first packet went to, from its output.
#[track_caller]
pub(super) fn backend_of(out: &Out) -> (Ipv4Addr, u16) {
    let k = tuple(&delivered(out).ip);
    (k.dst, k.dport)
}

/// What [`exchange`] saw.
#[derive(Debug, Clone, Copy)]
pub(super) struct Exchanged {
    pub(super) backend: (Ipv4Addr, u16),
    /// The source the backend saw (the client's, or the SNAT address).
    pub(super) seen_src: (Ipv4Addr, u16),
}

/// Drives one whole TCP connection from `client` at `csrc` to the frontend
/// `fe` through `pl`: SYN, SYN+ACK, ACK, a request, a response, FIN from
/// each side and the last ACK. Checks every packet from scratch: the
/// client's all go to the backend the SYN picked, with the destination (and
/// with `snat`, the source) translated; the backend's come back to the
/// client from `fe`; the conntrack entry follows the handshake to `Closed`.
pub(super) fn exchange(
    pl: &mut Pipeline,
    now: u64,
    t: &Tables,
    client: Peer,
    csrc: (Ipv4Addr, u16),
    fe: (Ipv4Addr, u16),
    snat: bool,
) -> Exchanged {
    let syn = tcp_from(client, csrc, fe, SYN, 0x1000, 0, b"");
    let d = delivered(&send(pl, now, t, client, &syn));
    let k = tuple(&d.ip);
    let backend = (k.dst, k.dport);
    assert_eq!(backend.1, TARGET_PORT);
    let peer = Peer::of(backend.0);
    assert_to(&d, peer);
    let seen_src = (k.src, k.sport);
    if snat {
        assert_eq!(k.src, GATEWAY, "SNAT to the gateway address");
        assert!(
            (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&k.sport),
            "SNAT port {}",
            k.sport
        );
    } else {
        assert_eq!(seen_src, csrc, "the backend sees the client");
    }
    let snat_to = snat.then_some(seen_src);
    assert_eq!(d.ip, natted(client.ip(&syn), snat_to, Some(backend), 1));
    let original = key(TCP, csrc, fe);
    assert_eq!(tcp_state(pl, original), TcpState::SynSent);
    let steps: [(bool, u8, &[u8], TcpState); 7] = [
        (false, SYN | ACK, b"", TcpState::SynRecv),
        (true, ACK, b"", TcpState::Established),
        (
            true,
            PSH | ACK,
            b"GET / HTTP/1.1\r\n\r\n",
            TcpState::Established,
        ),
        (
            false,
            PSH | ACK,
            b"HTTP/1.1 200 OK\r\n\r\n",
            TcpState::Established,
        ),
        (true, FIN | ACK, b"", TcpState::FinWait),
        (false, FIN | ACK, b"", TcpState::Closed),
        (true, ACK, b"", TcpState::Closed),
    ];
    for (i, (from_client, flags, payload, state)) in steps.into_iter().enumerate() {
        let (seq, ack) = (0x2000 + i as u32, 0x3000 + i as u32);
        if from_client {
            let f = tcp_from(client, csrc, fe, flags, seq, ack, payload);
            let d = delivered(&send(pl, now, t, client, &f));
            assert_to(&d, peer);
            assert_eq!(d.ip, natted(client.ip(&f), snat_to, Some(backend), 1));
        } else {
            let f = tcp_from(peer, backend, seen_src, flags, seq, ack, payload);
            let d = delivered(&send(pl, now, t, peer, &f));
            assert_to(&d, client);
            let back_to = snat.then_some(csrc);
            assert_eq!(d.ip, natted(peer.ip(&f), Some(fe), back_to, 1));
        }
        assert_eq!(tcp_state(pl, original), state, "after step {i}");
    }
    Exchanged { backend, seen_src }
}

/// A client source port (from `from`) whose new `proto` flow from `client`
/// to `fe` goes to `backend` under `t` (Maglev is deterministic).
pub(super) fn port_to(
    t: &Tables,
    client: Peer,
    cip: Ipv4Addr,
    fe: (Ipv4Addr, u16),
    proto: u8,
    backend: (Ipv4Addr, u16),
    from: u16,
) -> u16 {
    let mut pl = pipeline();
    (from..from + 1000)
        .find(|&sport| {
            let f = if proto == TCP {
                tcp_from(client, (cip, sport), fe, SYN, 1, 0, b"")
            } else {
                udp_from(client, (cip, sport), fe, b"probe")
            };
            backend_of(&send(&mut pl, T0, t, client, &f)) == backend
        })
        .expect("some port goes to each backend")
}

// ---------------------------------------------------------------------------
// The vectors themselves
// ---------------------------------------------------------------------------

#[test]
fn service_vectors_are_valid() {
    for f in [
        &SYN_P1_TO_CLUSTER_IP[..],
        &SYNACK_P2_TO_P1,
        &UDP_P1_TO_CLUSTER_IP,
        &SYN_CLIENT_TO_NODE_PORT,
        &PORT_UNREACHABLE_P2_TO_P1,
    ] {
        assert_ipv4_checksum(&f[ETH..]);
        assert_l4_checksum(&f[ETH..]);
    }
    assert_ipv4_checksum(&VXLAN_SYNACK_FROM_REMOTE[ETH..]);
    assert_ipv4_checksum(&VXLAN_SYNACK_FROM_REMOTE[INNER_IP..]);
    assert_l4_checksum(&VXLAN_SYNACK_FROM_REMOTE[INNER_IP..]);
    // The quoted datagram is whole, so its own checksums are checkable: it
    // is exactly what the DNAT of the UDP vector must deliver to p2.
    let quoted = &PORT_UNREACHABLE_P2_TO_P1[QUOTE..];
    assert_ipv4_checksum(quoted);
    assert_l4_checksum(quoted);
    assert_eq!(
        quoted,
        natted(&UDP_P1_TO_CLUSTER_IP[ETH..], None, Some(LOCAL_BE), 1)
    );
    // The encapsulation helper builds n2's frames as the vector has them.
    assert_eq!(
        vxlan_from_n2(&VXLAN_SYNACK_FROM_REMOTE[ENCAP_LEN..]),
        VXLAN_SYNACK_FROM_REMOTE
    );
    // Frames built by the helpers are well-formed too.
    for peer in [Peer::P1, Peer::P2, Peer::Host, Peer::Client, Peer::Remote] {
        let f = tcp_from(peer, (P1_IP, 1), FRONTEND, SYN, 7, 0, b"x");
        assert_ipv4_checksum(peer.ip(&f));
        assert_l4_checksum(peer.ip(&f));
        let f = udp_from(peer, (P1_IP, 1), FRONTEND, b"x");
        assert_l4_checksum(peer.ip(&f));
    }
}

// ---------------------------------------------------------------------------
// Walk 3: pod -> ClusterIP
// ---------------------------------------------------------------------------

#[test]
fn walk3_syn_to_a_local_backend_is_dnated_and_the_syn_ack_reverse_translated() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let out = send(&mut pl, T0, &t, Peer::P1, &SYN_P1_TO_CLUSTER_IP);
    assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
    let d = delivered(&out);
    assert_to(&d, Peer::P2);
    // Only the destination changed (and the TTL): 10.244.1.3:8080.
    assert_eq!(
        d.ip,
        natted(&SYN_P1_TO_CLUSTER_IP[ETH..], None, Some(LOCAL_BE), 1)
    );
    let original = key(TCP, (P1_IP, 40000), FRONTEND);
    let e = entry(&pl, original).unwrap();
    assert_eq!(e.reply, key(TCP, LOCAL_BE, (P1_IP, 40000)));
    assert_eq!(e.tcp, TcpState::SynSent);
    assert_eq!(e.in_port, P1_PORT);

    // The SYN+ACK comes back from the ClusterIP.
    let out = send(&mut pl, T0 + 1, &t, Peer::P2, &SYNACK_P2_TO_P1);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let d = delivered(&out);
    assert_to(&d, Peer::P1);
    assert_eq!(
        d.ip,
        natted(&SYNACK_P2_TO_P1[ETH..], Some(FRONTEND), None, 1)
    );
    assert_eq!(tcp_state(&pl, original), TcpState::SynRecv);
    assert_eq!(pl.conntrack().len(), 1);
    let c = pl.counters();
    assert_eq!((c.routed_local, total_drops(c)), (2, 0));
}

#[test]
fn walk3_syn_to_a_remote_backend_is_dnated_and_encapsulated() {
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let out = send(&mut pl, T0, &t, Peer::P1, &SYN_P1_TO_CLUSTER_IP);
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    assert_eq!(out.off, RX_OFF - ENCAP_LEN, "encapsulated in place");
    let d = delivered(&out);
    assert_to(&d, Peer::Remote);
    assert_eq!(
        d.ip,
        natted(&SYN_P1_TO_CLUSTER_IP[ETH..], None, Some(REMOTE_BE), 1)
    );
    // The backend's answer arrives over VXLAN and reaches p1 from the
    // ClusterIP, TTL 63 -> 62.
    let out = send(&mut pl, T0 + 1, &t, Peer::Remote, &VXLAN_SYNACK_FROM_REMOTE);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let d = delivered(&out);
    assert_to(&d, Peer::P1);
    assert_eq!(
        d.ip,
        natted(
            &VXLAN_SYNACK_FROM_REMOTE[INNER_IP..],
            Some(FRONTEND),
            None,
            1
        )
    );
    let c = pl.counters();
    assert_eq!((c.encapsulated, c.decapsulated, total_drops(c)), (1, 1, 0));
    assert_eq!(
        tcp_state(&pl, key(TCP, (P1_IP, 40000), FRONTEND)),
        TcpState::SynRecv
    );
}

#[test]
fn walk3_every_packet_of_a_flow_keeps_its_backend() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let mut seen = Vec::new();
    for (i, sport) in (41000..41040).enumerate() {
        let x = exchange(
            &mut pl,
            T0 + i as u64,
            &t,
            Peer::P1,
            (P1_IP, sport),
            FRONTEND,
            false,
        );
        seen.push(x.backend);
    }
    assert!(seen.contains(&LOCAL_BE) && seen.contains(&REMOTE_BE));
    // One entry per flow, however many packets.
    assert_eq!(pl.conntrack().len(), 40);
    assert_eq!(pl.conntrack().stats().inserts, 40);
    assert_eq!(total_drops(pl.counters()), 0);
}

#[test]
fn walk3_udp_dnat_keeps_checksums_valid_and_zero_stays_zero() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let out = send(&mut pl, T0, &t, Peer::P1, &UDP_P1_TO_CLUSTER_IP);
    let d = delivered(&out);
    assert_to(&d, Peer::P2);
    assert_eq!(
        d.ip,
        natted(&UDP_P1_TO_CLUSTER_IP[ETH..], None, Some(LOCAL_BE), 1)
    );
    assert_eq!(d.ip, PORT_UNREACHABLE_P2_TO_P1[QUOTE..]);
    let e = entry(&pl, key(UDP, (P1_IP, 40000), FRONTEND)).unwrap();
    assert_eq!(e.tcp, TcpState::None);

    // Checksum 0 ("none") stays 0 both ways.
    let mut zero = UDP_P1_TO_CLUSTER_IP;
    zero[ETH + 26..ETH + 28].fill(0);
    let d = delivered(&send(&mut pl, T0 + 1, &t, Peer::P1, &zero));
    assert_eq!(&d.ip[26..28], &[0, 0], "no checksum stays none");
    assert_eq!(d.ip, natted(&zero[ETH..], None, Some(LOCAL_BE), 1));
    let mut reply = udp_from(Peer::P2, LOCAL_BE, (P1_IP, 40000), b"pong");
    reply[ETH + 26..ETH + 28].fill(0);
    let d = delivered(&send(&mut pl, T0 + 2, &t, Peer::P2, &reply));
    assert_to(&d, Peer::P1);
    assert_eq!(&d.ip[26..28], &[0, 0]);
    assert_eq!(d.ip, natted(&reply[ETH..], Some(FRONTEND), None, 1));

    // A non-zero checksum is right for every payload, both ways, ...
    let mut rng = crate::wire::vectors::XorShift(0x6b78_6470_0000_0003);
    for sport in 20000..20200u16 {
        let mut payload = vec![0u8; 1 + rng.below(40)];
        rng.fill(&mut payload);
        let f = udp_from(Peer::P1, (P1_IP, sport), FRONTEND, &payload);
        let d = delivered(&send(&mut pl, T0 + 3, &t, Peer::P1, &f));
        assert_eq!(d.ip, natted(&f[ETH..], None, Some(LOCAL_BE), 1));
        let r = udp_from(Peer::P2, LOCAL_BE, (P1_IP, sport), &payload);
        let d = delivered(&send(&mut pl, T0 + 3, &t, Peer::P2, &r));
        assert_eq!(d.ip, natted(&r[ETH..], Some(FRONTEND), None, 1));
    }
    // ... including when the translated checksum computes to zero: it is
    // sent as 0xFFFF (RFC 768), never as 0 ("none").
    let sport = 21000;
    let word = (0..=u16::MAX)
        .find(|w| {
            let dn = udp_datagram((P1_IP, sport), LOCAL_BE, 63, &w.to_be_bytes());
            dn[26..28] == [0xff, 0xff]
        })
        .unwrap();
    let f = udp_from(Peer::P1, (P1_IP, sport), FRONTEND, &word.to_be_bytes());
    let d = delivered(&send(&mut pl, T0 + 4, &t, Peer::P1, &f));
    assert_eq!(&d.ip[26..28], &[0xff, 0xff]);
    assert_eq!(d.ip, natted(&f[ETH..], None, Some(LOCAL_BE), 1));
    // And an input whose checksum is 0xFFFF (computed zero) is translated
    // to a valid one.
    let sport = 21001;
    let word = (0..=u16::MAX)
        .find(|w| {
            let dn = udp_datagram((P1_IP, sport), FRONTEND, 64, &w.to_be_bytes());
            dn[26..28] == [0xff, 0xff]
        })
        .unwrap();
    let f = udp_from(Peer::P1, (P1_IP, sport), FRONTEND, &word.to_be_bytes());
    let d = delivered(&send(&mut pl, T0 + 4, &t, Peer::P1, &f));
    assert_eq!(d.ip, natted(&f[ETH..], None, Some(LOCAL_BE), 1));
    assert_eq!(total_drops(pl.counters()), 0);
}

#[test]
fn walk3_udp_to_a_remote_backend_and_back() {
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &UDP_P1_TO_CLUSTER_IP));
    assert_to(&d, Peer::Remote);
    assert_eq!(
        d.ip,
        natted(&UDP_P1_TO_CLUSTER_IP[ETH..], None, Some(REMOTE_BE), 1)
    );
    let r = udp_from(Peer::Remote, REMOTE_BE, (P1_IP, 40000), b"pong");
    let d = delivered(&send(&mut pl, T0, &t, Peer::Remote, &r));
    assert_to(&d, Peer::P1);
    assert_eq!(d.ip, natted(&r[INNER_IP..], Some(FRONTEND), None, 1));
}

// ---------------------------------------------------------------------------
// Backend choice and endpoint changes
// ---------------------------------------------------------------------------

#[test]
fn new_flows_spread_over_both_backends() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let frames: Vec<Vec<u8>> = (10000..11000u16)
        .map(|sport| tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 1, 0, b""))
        .collect();
    let (mut local, mut remote) = (0u64, 0u64);
    for batch in frames.chunks(BATCH_SIZE) {
        let inputs: Vec<(PortId, &[u8])> = batch.iter().map(|f| (P1_PORT, &f[..])).collect();
        for out in process_batch(&mut pl, T0, &t, &inputs) {
            match backend_of(&out) {
                LOCAL_BE => local += 1,
                REMOTE_BE => remote += 1,
                b => panic!("backend {b:?}"),
            }
        }
    }
    assert!(
        (350..=650).contains(&local) && (350..=650).contains(&remote),
        "local {local}, remote {remote}"
    );
    assert_eq!(backend_flows_of(&pl, LOCAL_BE), Some(local));
    assert_eq!(backend_flows_of(&pl, REMOTE_BE), Some(remote));
    assert_eq!(pl.service_counters()[WEB].new_flows, 1000);
    assert_eq!(pl.conntrack().len(), 1000);
}

#[test]
fn terminating_backends_keep_their_flows_but_get_no_new_ones() {
    let both = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let mut flows = Vec::new();
    for sport in 12000..12100u16 {
        let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 1, 0, b"");
        flows.push((sport, backend_of(&send(&mut pl, T0, &both, Peer::P1, &f))));
    }
    assert!(flows.iter().any(|(_, b)| *b == REMOTE_BE));
    // The remote backend starts terminating.
    let t = with_backends(&[ready(LOCAL_BE), terminating(REMOTE_BE)]);
    for &(sport, backend) in &flows {
        // The handshake completes and data flows, on the same backend.
        let peer = Peer::of(backend.0);
        let sa = tcp_from(peer, backend, (P1_IP, sport), SYN | ACK, 9, 2, b"");
        let d = delivered(&send(&mut pl, T0 + SEC, &t, peer, &sa));
        assert_to(&d, Peer::P1);
        assert_eq!(d.ip, natted(peer.ip(&sa), Some(FRONTEND), None, 1));
        let f = tcp_from(
            Peer::P1,
            (P1_IP, sport),
            FRONTEND,
            PSH | ACK,
            2,
            10,
            b"data",
        );
        let d = delivered(&send(&mut pl, T0 + SEC, &t, Peer::P1, &f));
        assert_to(&d, peer);
        assert_eq!(d.ip, natted(&f[ETH..], None, Some(backend), 1));
    }
    // New flows all go to the ready backend.
    for sport in 13000..13100u16 {
        let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 1, 0, b"");
        assert_eq!(
            backend_of(&send(&mut pl, T0 + SEC, &t, Peer::P1, &f)),
            LOCAL_BE
        );
    }
    // UDP too.
    for sport in 13000..13100u16 {
        let f = udp_from(Peer::P1, (P1_IP, sport), FRONTEND, b"q");
        assert_eq!(
            backend_of(&send(&mut pl, T0 + SEC, &t, Peer::P1, &f)),
            LOCAL_BE
        );
    }
    assert_eq!(total_drops(pl.counters()), 0);
}

#[test]
fn a_removed_backends_tcp_flow_is_reset_from_the_cluster_ip() {
    let both = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let gone = port_to(&both, Peer::P1, P1_IP, FRONTEND, TCP, REMOTE_BE, 14000);
    let stays = port_to(&both, Peer::P1, P1_IP, FRONTEND, TCP, LOCAL_BE, 14000);
    for sport in [gone, stays] {
        let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 1, 0, b"");
        delivered(&send(&mut pl, T0, &both, Peer::P1, &f));
        let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, ACK, 2, 0x7777, b"");
        delivered(&send(&mut pl, T0, &both, Peer::P1, &f));
    }
    assert_eq!(pl.conntrack().len(), 2);
    // The remote backend is removed from the tables.
    let t = with_backends(&[ready(LOCAL_BE)]);
    let (seq, ack) = (0x0102_0304, 0xa0b0_c0d0);
    let f = tcp_from(
        Peer::P1,
        (P1_IP, gone),
        FRONTEND,
        PSH | ACK,
        seq,
        ack,
        b"more",
    );
    let out = send(&mut pl, T0 + SEC, &t, Peer::P1, &f);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let d = delivered(&out);
    assert_to(&d, Peer::P1);
    // RFC 793: the segment has an ACK, so the reset's seq is that ack.
    assert_rst(&d, FRONTEND, (P1_IP, gone), ack, None);
    let c = pl.counters();
    assert_eq!(c.drop_count(DropReason::BackendGone), 1);
    assert_eq!((c.resets_sent, total_drops(c)), (1, 1));
    assert!(entry(&pl, key(TCP, (P1_IP, gone), FRONTEND)).is_none());
    assert_eq!(pl.conntrack().len(), 1);
    // The other flow carries on.
    let f = tcp_from(Peer::P1, (P1_IP, stays), FRONTEND, ACK, 3, 0x7777, b"ok");
    let d = delivered(&send(&mut pl, T0 + SEC, &t, Peer::P1, &f));
    assert_eq!(d.ip, natted(&f[ETH..], None, Some(LOCAL_BE), 1));
    // The client reconnects from the same port: a new flow, a live backend.
    let f = tcp_from(Peer::P1, (P1_IP, gone), FRONTEND, SYN, 5, 0, b"");
    assert_eq!(
        backend_of(&send(&mut pl, T0 + SEC, &t, Peer::P1, &f)),
        LOCAL_BE
    );
}

#[test]
fn a_syn_reusing_the_port_of_a_flow_whose_backend_is_gone_opens_a_new_flow() {
    // A client reuses its port right after a clean close (the entry is
    // still `Closed`), while the old backend has been removed: the SYN must
    // start a new connection on a live backend, not be reset.
    let both = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let sport = port_to(&both, Peer::P1, P1_IP, FRONTEND, TCP, REMOTE_BE, 14500);
    let x = exchange(
        &mut pl,
        T0,
        &both,
        Peer::P1,
        (P1_IP, sport),
        FRONTEND,
        false,
    );
    assert_eq!(x.backend, REMOTE_BE);
    let t = with_backends(&[ready(LOCAL_BE)]);
    let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 0x9000, 0, b"");
    let out = send(&mut pl, T0 + SEC, &t, Peer::P1, &f);
    let d = delivered(&out);
    assert_to(&d, Peer::P2);
    assert_eq!(d.ip, natted(&f[ETH..], None, Some(LOCAL_BE), 1));
    assert_eq!(pl.counters().resets_sent, 0);
    assert_eq!(
        tcp_state(&pl, key(TCP, (P1_IP, sport), FRONTEND)),
        TcpState::SynSent
    );
    assert_eq!(pl.conntrack().len(), 1);

    // Likewise when the old backend is only terminating: a reused port is
    // a new connection, and terminating backends get none.
    let sport = port_to(&both, Peer::P1, P1_IP, FRONTEND, TCP, REMOTE_BE, 14600);
    exchange(
        &mut pl,
        T0,
        &both,
        Peer::P1,
        (P1_IP, sport),
        FRONTEND,
        false,
    );
    let t = with_backends(&[ready(LOCAL_BE), terminating(REMOTE_BE)]);
    let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 0x9000, 0, b"");
    let d = delivered(&send(&mut pl, T0 + SEC, &t, Peer::P1, &f));
    assert_to(&d, Peer::P2);
    // But a retransmitted SYN of a connection being opened keeps its backend.
    let sport = port_to(&both, Peer::P1, P1_IP, FRONTEND, TCP, REMOTE_BE, 14700);
    let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 0x9000, 0, b"");
    assert_eq!(
        backend_of(&send(&mut pl, T0, &both, Peer::P1, &f)),
        REMOTE_BE
    );
    assert_eq!(
        backend_of(&send(&mut pl, T0 + SEC, &t, Peer::P1, &f)),
        REMOTE_BE
    );
    assert_eq!(total_drops(pl.counters()), 0);
}

#[test]
fn a_removed_backends_udp_flow_moves_to_a_live_backend_at_once() {
    let both = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let sport = port_to(&both, Peer::P1, P1_IP, FRONTEND, UDP, REMOTE_BE, 15000);
    for _ in 0..2 {
        let f = udp_from(Peer::P1, (P1_IP, sport), FRONTEND, b"q");
        assert_eq!(
            backend_of(&send(&mut pl, T0, &both, Peer::P1, &f)),
            REMOTE_BE
        );
    }
    let t = with_backends(&[ready(LOCAL_BE)]);
    let f = udp_from(Peer::P1, (P1_IP, sport), FRONTEND, b"again");
    let d = delivered(&send(&mut pl, T0 + SEC, &t, Peer::P1, &f));
    assert_to(&d, Peer::P2);
    assert_eq!(d.ip, natted(&f[ETH..], None, Some(LOCAL_BE), 1));
    let e = entry(&pl, key(UDP, (P1_IP, sport), FRONTEND)).unwrap();
    assert_eq!(e.reply, key(UDP, LOCAL_BE, (P1_IP, sport)));
    assert_eq!(pl.conntrack().len(), 1);
    // The new backend's answer is translated.
    let r = udp_from(Peer::P2, LOCAL_BE, (P1_IP, sport), b"answer");
    let d = delivered(&send(&mut pl, T0 + SEC, &t, Peer::P2, &r));
    assert_to(&d, Peer::P1);
    assert_eq!(d.ip, natted(&r[ETH..], Some(FRONTEND), None, 1));
    assert_eq!(backend_flows_of(&pl, REMOTE_BE), Some(1));
    assert_eq!(backend_flows_of(&pl, LOCAL_BE), Some(1));
    assert_eq!(pl.service_counters()[WEB].new_flows, 2);
    assert_eq!(total_drops(pl.counters()), 0);
    // With no live backend left, the flow's next datagram is refused.
    let none = with_backends(&[]);
    let f = udp_from(Peer::P1, (P1_IP, sport), FRONTEND, b"anyone?");
    let out = send(&mut pl, T0 + 2 * SEC, &none, Peer::P1, &f);
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.ty, e.code), (3, 3));
    assert_eq!(e.quote, quote_of(&f, ETH));
    assert_eq!(pl.counters().drop_count(DropReason::NoEndpoint), 1);
    assert!(pl.conntrack().is_empty());
}

#[test]
fn only_serving_terminating_endpoints_take_new_flows_when_none_is_ready() {
    let t = with_backends(&[terminating(LOCAL_BE), terminating(REMOTE_BE)]);
    let mut pl = pipeline();
    let out = send(&mut pl, T0, &t, Peer::P1, &SYN_P1_TO_CLUSTER_IP);
    assert!(
        matches!(out.verdict, Verdict::Tx(P2_PORT) | Verdict::Tx(UPLINK)),
        "{:?}",
        out.verdict
    );
    assert_eq!(pl.service_counters()[WEB].new_flows, 1);
}

#[test]
fn no_ready_endpoint_tcp_gets_a_reset_and_udp_port_unreachable() {
    // Neither ready nor serving (terminating endpoints that still serve take
    // new flows when nothing is ready: see the KEP-1669 test below).
    let gone = |a| be(a, false, false);
    for t in [
        with_backends(&[]),
        with_backends(&[gone(LOCAL_BE), gone(REMOTE_BE)]),
    ] {
        let mut pl = pipeline();
        let out = send(&mut pl, T0, &t, Peer::P1, &SYN_P1_TO_CLUSTER_IP);
        assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
        let d = delivered(&out);
        assert_to(&d, Peer::P1);
        // No ACK on the SYN: RST|ACK, seq 0, ack = its seq + 1 (the SYN).
        assert_rst(&d, FRONTEND, (P1_IP, 40000), 0, Some(0x0a0b_0c0e));
        let c = pl.counters().clone();
        assert_eq!(c.drop_count(DropReason::NoEndpoint), 1);
        assert_eq!((c.resets_sent, total_drops(&c)), (1, 1));
        assert_eq!(pl.service_counters()[WEB].no_endpoint, 1);
        assert_eq!(pl.service_counters()[WEB].new_flows, 0);

        // A SYN with data (TCP Fast Open): ack covers the data too.
        let f = tcp_from(Peer::P1, (P1_IP, 40001), FRONTEND, SYN, 100, 0, b"early");
        let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
        assert_rst(&d, FRONTEND, (P1_IP, 40001), 0, Some(100 + 1 + 5));

        let out = send(&mut pl, T0, &t, Peer::P1, &UDP_P1_TO_CLUSTER_IP);
        assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
        let e = parse_icmp_error(&out.frame);
        assert_eq!((e.eth_dst, e.eth_src), (P1_MAC.0, PORT1_MAC.0));
        // From the address p1 sent to, as the addressed host would answer.
        assert_eq!((e.ip_src, e.ip_dst), (FRONTEND.0, P1_IP));
        assert_eq!((e.ty, e.code), (3, 3), "port unreachable");
        // The quote is the datagram as p1 sent it: to the ClusterIP.
        assert_eq!(e.quote, quote_of(&UDP_P1_TO_CLUSTER_IP, ETH));
        assert_eq!(tuple(&e.quote), key(UDP, (P1_IP, 40000), FRONTEND));
        let c = pl.counters();
        assert_eq!(c.drop_count(DropReason::NoEndpoint), 3);
        assert_eq!(c.icmp_errors_sent, 1);
        assert_eq!(pl.service_counters()[WEB].no_endpoint, 3);
        assert!(pl.conntrack().is_empty());
    }
}

#[test]
fn a_non_syn_segment_without_conntrack_gets_a_reset() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = pipeline();
    // An ACK (a flow this worker never saw, or forgot).
    let f = tcp_from(
        Peer::P1,
        (P1_IP, 40100),
        FRONTEND,
        PSH | ACK,
        5,
        0xdead_beef,
        b"x",
    );
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
    assert_to(&d, Peer::P1);
    assert_rst(&d, FRONTEND, (P1_IP, 40100), 0xdead_beef, None);
    // A FIN with data but no ACK: RST|ACK acknowledging data and FIN.
    let f = tcp_from(Peer::P1, (P1_IP, 40101), FRONTEND, FIN, 1000, 0, b"bye");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
    assert_rst(&d, FRONTEND, (P1_IP, 40101), 0, Some(1000 + 3 + 1));
    // A SYN+ACK is no opening either.
    let f = tcp_from(Peer::P1, (P1_IP, 40102), FRONTEND, SYN | ACK, 1, 77, b"");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
    assert_rst(&d, FRONTEND, (P1_IP, 40102), 77, None);
    // A reset never draws a reset.
    let f = tcp_from(Peer::P1, (P1_IP, 40103), FRONTEND, RST, 1, 0, b"");
    let out = send(&mut pl, T0, &t, Peer::P1, &f);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::NoConntrack));
    let c = pl.counters();
    assert_eq!(c.drop_count(DropReason::NoConntrack), 4);
    assert_eq!((c.resets_sent, total_drops(c)), (3, 4));
    assert!(pl.conntrack().is_empty());
    assert!(pl.backend_flows().is_empty());
}

// ---------------------------------------------------------------------------
// Session affinity
// ---------------------------------------------------------------------------

fn affinity_tables(backends: &[Backend], timeout: u64) -> Tables {
    svc_tables(&Svc {
        backends: backends.to_vec(),
        affinity_ns: Some(timeout),
        local_only: false,
        second_cluster_ip: false,
    })
}

fn syn_backend(pl: &mut Pipeline, now: u64, t: &Tables, sport: u16) -> (Ipv4Addr, u16) {
    let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 1, 0, b"");
    backend_of(&send(pl, now, t, Peer::P1, &f))
}

/// Affinity tables with both backends ready, the backend p1 hashes to under
/// them, and the other one.
fn hashed_and_other(timeout: u64) -> (Tables, (Ipv4Addr, u16), (Ipv4Addr, u16)) {
    let both = affinity_tables(&[ready(LOCAL_BE), ready(REMOTE_BE)], timeout);
    let hashed = syn_backend(&mut pipeline(), T0, &both, 30000);
    let other = if hashed == LOCAL_BE {
        REMOTE_BE
    } else {
        LOCAL_BE
    };
    (both, hashed, other)
}

#[test]
fn client_ip_affinity_holds_within_the_timeout_then_may_change() {
    let timeout = 10800 * SEC;
    let (both, hashed, other) = hashed_and_other(timeout);
    let mut pl = pipeline();
    // While only `other` is ready, p1 is bound to it ...
    let only_other = affinity_tables(&[ready(other)], timeout);
    assert_eq!(syn_backend(&mut pl, T0, &only_other, 30001), other);
    // ... and stays there when `hashed` becomes ready, for every new flow
    // from any port, while within the timeout (refreshed by each flow).
    let mut now = T0;
    for sport in 30002..30050 {
        now += 60 * SEC;
        assert_eq!(syn_backend(&mut pl, now, &both, sport), other);
    }
    now += timeout - 1;
    assert_eq!(syn_backend(&mut pl, now, &both, 30050), other);
    // Idle for the whole timeout: chosen afresh.
    now += timeout;
    assert_eq!(syn_backend(&mut pl, now, &both, 30051), hashed);
    for sport in 30052..30060 {
        assert_eq!(syn_backend(&mut pl, now, &both, sport), hashed);
    }
    // Affinity is per client: the host gets its own choice, p1 keeps its.
    let f = tcp_from(Peer::Host, (GATEWAY, 30100), FRONTEND, SYN, 1, 0, b"");
    let host_be = backend_of(&send(&mut pl, now, &both, Peer::Host, &f));
    for sport in 30101..30110 {
        let f = tcp_from(Peer::Host, (GATEWAY, sport), FRONTEND, SYN, 1, 0, b"");
        assert_eq!(
            backend_of(&send(&mut pl, now, &both, Peer::Host, &f)),
            host_be
        );
    }
    assert_eq!(syn_backend(&mut pl, now, &both, 30060), hashed);
}

/// Affinity records expire: a full table makes room for a new client by
/// sweeping out the expired ones (at most once a second), and an idle
/// worker sweeps them too. Without expiry a table once full would never
/// give another client affinity.
#[test]
fn client_ip_affinity_records_expire_and_make_room() {
    let timeout = 10 * SEC;
    let t = affinity_tables(&[ready(LOCAL_BE), ready(REMOTE_BE)], timeout);
    let mut pl = pipeline();
    pl.set_affinity_capacity(1);
    let host_syn = |pl: &mut Pipeline, now: u64, sport: u16| {
        let f = tcp_from(Peer::Host, (GATEWAY, sport), FRONTEND, SYN, 1, 0, b"");
        backend_of(&send(pl, now, &t, Peer::Host, &f))
    };
    syn_backend(&mut pl, T0, &t, 30000);
    assert_eq!(pl.nat.affinity_clients(), vec![P1_IP]);
    // Full, and p1's record is live: the host gets none.
    host_syn(&mut pl, T0 + SEC, 30001);
    assert_eq!(pl.nat.affinity_clients(), vec![P1_IP]);
    // p1's record expired: swept out, the host's takes its place.
    host_syn(&mut pl, T0 + timeout + SEC, 30002);
    assert_eq!(pl.nat.affinity_clients(), vec![GATEWAY]);
    // An idle worker sweeps expired records (not more than once a second).
    let later = T0 + 2 * timeout + 2 * SEC;
    pl.maintain(later);
    assert_eq!(pl.nat.affinity_clients(), Vec::<Ipv4Addr>::new());
}

#[test]
fn client_ip_affinity_moves_when_its_backend_is_not_ready() {
    let timeout = 10800 * SEC;
    let both = affinity_tables(&[ready(LOCAL_BE), ready(REMOTE_BE)], timeout);
    let mut pl = pipeline();
    let first = syn_backend(&mut pl, T0, &both, 31000);
    let second = if first == LOCAL_BE {
        REMOTE_BE
    } else {
        LOCAL_BE
    };
    // `first` starts terminating: new flows go to `second` ...
    let t = affinity_tables(&[terminating(first), ready(second)], timeout);
    for sport in 31001..31010 {
        assert_eq!(syn_backend(&mut pl, T0 + SEC, &t, sport), second);
    }
    // ... while the first flow stays on `first`.
    let peer = Peer::of(first.0);
    let f = tcp_from(Peer::P1, (P1_IP, 31000), FRONTEND, ACK, 2, 3, b"");
    let d = delivered(&send(&mut pl, T0 + SEC, &t, Peer::P1, &f));
    assert_to(&d, peer);
    // `first` is back: the client now sticks to `second`.
    for sport in 31010..31020 {
        assert_eq!(syn_backend(&mut pl, T0 + 2 * SEC, &both, sport), second);
    }
}

#[test]
fn client_ip_affinity_for_outside_clients_of_a_node_port() {
    let t = affinity_tables(&[ready(LOCAL_BE), ready(REMOTE_BE)], 10800 * SEC);
    let mut pl = pipeline();
    let mut seen = std::collections::HashSet::new();
    for sport in 50000..50050 {
        let f = tcp_from(
            Peer::Client,
            (CLIENT_IP, sport),
            NODE_FRONTEND,
            SYN,
            1,
            0,
            b"",
        );
        seen.insert(backend_of(&send(&mut pl, T0, &t, Peer::Client, &f)));
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
}

// ---------------------------------------------------------------------------
// Walk 4: outside client -> NodeIP:NodePort
// ---------------------------------------------------------------------------

#[test]
fn walk4_node_port_cluster_policy_dnats_and_snats_to_a_local_backend() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let out = send(&mut pl, T0, &t, Peer::Client, &SYN_CLIENT_TO_NODE_PORT);
    assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
    let d = delivered(&out);
    assert_to(&d, Peer::P2);
    let k = tuple(&d.ip);
    assert_eq!(k.src, GATEWAY, "SNAT to the gateway");
    assert!((SNAT_PORTS.0..=SNAT_PORTS.1).contains(&k.sport));
    let snat = (GATEWAY, k.sport);
    assert_eq!(
        d.ip,
        natted(
            &SYN_CLIENT_TO_NODE_PORT[ETH..],
            Some(snat),
            Some(LOCAL_BE),
            1
        )
    );
    let e = entry(&pl, key(TCP, (CLIENT_IP, 50000), NODE_FRONTEND)).unwrap();
    assert_eq!(e.reply, key(TCP, LOCAL_BE, snat));
    assert_eq!(e.client_mac, CLIENT_MAC.0);
    assert_eq!(e.in_port, UPLINK);

    // p2 answers the gateway; the client gets it from NodeIP:NodePort,
    // straight out of the uplink to its MAC.
    let r = tcp_from(
        Peer::P2,
        LOCAL_BE,
        snat,
        SYN | ACK,
        0x5555,
        0x0102_0305,
        b"",
    );
    let out = send(&mut pl, T0, &t, Peer::P2, &r);
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    let d = delivered(&out);
    assert_to(&d, Peer::Client);
    assert_eq!(
        d.ip,
        natted(&r[ETH..], Some(NODE_FRONTEND), Some((CLIENT_IP, 50000)), 1)
    );
    assert_eq!(d.ip[8], 63, "TTL decremented");
    // The rest of the connection keeps the backend and the SNAT port.
    let x = exchange(
        &mut pl,
        T0,
        &t,
        Peer::Client,
        (CLIENT_IP, 50001),
        NODE_FRONTEND,
        true,
    );
    assert_eq!(x.backend, LOCAL_BE);
    assert_ne!(x.seen_src, snat, "each flow its own SNAT port");
    assert_eq!(total_drops(pl.counters()), 0);
}

#[test]
fn walk4_node_port_cluster_policy_to_a_remote_backend() {
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let d = delivered(&send(
        &mut pl,
        T0,
        &t,
        Peer::Client,
        &SYN_CLIENT_TO_NODE_PORT,
    ));
    assert_to(&d, Peer::Remote);
    let k = tuple(&d.ip);
    let snat = (GATEWAY, k.sport);
    assert!((SNAT_PORTS.0..=SNAT_PORTS.1).contains(&k.sport));
    assert_eq!(
        d.ip,
        natted(
            &SYN_CLIENT_TO_NODE_PORT[ETH..],
            Some(snat),
            Some(REMOTE_BE),
            1
        )
    );
    // n2 sends the backend's answer to 10.244.1.1 back over VXLAN; n1
    // decapsulates, translates and sends it out to the client (TTL 63 -> 62).
    let r = tcp_from(
        Peer::Remote,
        REMOTE_BE,
        snat,
        SYN | ACK,
        0x5555,
        0x0102_0305,
        b"",
    );
    let d = delivered(&send(&mut pl, T0, &t, Peer::Remote, &r));
    assert_to(&d, Peer::Client);
    assert_eq!(
        d.ip,
        natted(
            &r[INNER_IP..],
            Some(NODE_FRONTEND),
            Some((CLIENT_IP, 50000)),
            1
        )
    );
    assert_eq!(d.ip[8], 62);
    // Whole connections over both backends.
    let both = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut seen = std::collections::HashSet::new();
    for sport in 51000..51020 {
        let x = exchange(
            &mut pl,
            T0,
            &both,
            Peer::Client,
            (CLIENT_IP, sport),
            NODE_FRONTEND,
            true,
        );
        seen.insert(x.backend);
    }
    assert_eq!(seen.len(), 2);
    assert_eq!(total_drops(pl.counters()), 0);
}

#[test]
fn walk4_node_port_udp_cluster_policy() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let f = udp_from(Peer::Client, (CLIENT_IP, 50000), NODE_FRONTEND, b"dns?");
    let d = delivered(&send(&mut pl, T0, &t, Peer::Client, &f));
    assert_to(&d, Peer::P2);
    let k = tuple(&d.ip);
    let snat = (GATEWAY, k.sport);
    assert_eq!(d.ip, natted(&f[ETH..], Some(snat), Some(LOCAL_BE), 1));
    let r = udp_from(Peer::P2, LOCAL_BE, snat, b"dns!");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P2, &r));
    assert_to(&d, Peer::Client);
    assert_eq!(
        d.ip,
        natted(&r[ETH..], Some(NODE_FRONTEND), Some((CLIENT_IP, 50000)), 1)
    );
}

#[test]
fn walk4_node_port_local_policy_keeps_the_client_address() {
    let t = svc_tables(&Svc {
        backends: vec![ready(LOCAL_BE), ready(REMOTE_BE)],
        affinity_ns: None,
        local_only: true,
        second_cluster_ip: false,
    });
    let mut pl = pipeline();
    for sport in 52000..52050 {
        let x = exchange(
            &mut pl,
            T0,
            &t,
            Peer::Client,
            (CLIENT_IP, sport),
            NODE_FRONTEND,
            false,
        );
        assert_eq!(x.backend, LOCAL_BE, "only local endpoints");
        assert_eq!(x.seen_src, (CLIENT_IP, sport), "no SNAT");
    }
    // The annotated SYN: p2 sees 172.30.0.100 itself.
    let d = delivered(&send(
        &mut pl,
        T0,
        &t,
        Peer::Client,
        &SYN_CLIENT_TO_NODE_PORT,
    ));
    assert_eq!(
        d.ip,
        natted(&SYN_CLIENT_TO_NODE_PORT[ETH..], None, Some(LOCAL_BE), 1)
    );
    // The policy is the NodePort's: the ClusterIP still uses both.
    let mut seen = std::collections::HashSet::new();
    for sport in 52000..52050 {
        seen.insert(syn_backend(&mut pl, T0, &t, sport));
    }
    assert_eq!(seen.len(), 2);
}

#[test]
fn walk4_local_policy_falls_back_to_a_serving_terminating_local_endpoint() {
    // KEP-1669: no ready local endpoint, but a serving terminating one.
    let t = svc_tables(&Svc {
        backends: vec![ready(REMOTE_BE), terminating(LOCAL_BE)],
        affinity_ns: None,
        local_only: true,
        second_cluster_ip: false,
    });
    let mut pl = pipeline();
    let out = send(&mut pl, T0, &t, Peer::Client, &SYN_CLIENT_TO_NODE_PORT);
    assert_eq!(
        out.verdict,
        Verdict::Tx(P2_PORT),
        "to the local terminating endpoint"
    );
    assert_eq!(pl.conntrack().len(), 1);
}

#[test]
fn walk4_local_policy_without_a_local_endpoint_drops_outside_clients() {
    // kube-proxy drops them ("has no local endpoints"): the load balancer's
    // health check (`healthCheckNodePort`) is what steers clients away.
    let t = svc_tables(&Svc {
        backends: vec![ready(REMOTE_BE)],
        affinity_ns: None,
        local_only: true,
        second_cluster_ip: false,
    });
    let mut pl = pipeline();
    let syn = send(&mut pl, T0, &t, Peer::Client, &SYN_CLIENT_TO_NODE_PORT);
    let f = udp_from(Peer::Client, (CLIENT_IP, 50002), NODE_FRONTEND, b"dns?");
    let udp = send(&mut pl, T0, &t, Peer::Client, &f);
    for out in [syn, udp] {
        assert_eq!(out.verdict, Verdict::Drop(DropReason::NoLocalEndpoint));
    }
    let c = pl.counters();
    assert_eq!(c.drop_count(DropReason::NoLocalEndpoint), 2);
    assert_eq!(
        (c.resets_sent, c.icmp_errors_sent, total_drops(c)),
        (0, 0, 2)
    );
    assert_eq!(pl.service_counters()[WEB].no_endpoint, 2);
    assert!(pl.conntrack().is_empty());
    // A stray segment of an unknown NodePort flow gets a reset, as always.
    let f = tcp_from(
        Peer::Client,
        (CLIENT_IP, 50001),
        NODE_FRONTEND,
        ACK,
        9,
        99,
        b"",
    );
    let d = delivered(&send(&mut pl, T0, &t, Peer::Client, &f));
    assert_to(&d, Peer::Client);
    assert_rst(&d, NODE_FRONTEND, (CLIENT_IP, 50001), 99, None);
    assert_eq!(pl.counters().drop_count(DropReason::NoConntrack), 1);
}

#[test]
fn a_syn_flood_that_fills_the_snat_ports_cannot_keep_real_clients_out() {
    // NodePort, Cluster policy, one backend: every outside flow takes an
    // SNAT port of 4,536 towards it. A flood of SYNs from 12,000 addresses
    // takes them all; the flood's entries never confirm.
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = Pipeline::with_conntrack(16384, Timeouts::default());
    // A real client's connection, established (its handshake answered).
    let client = (CLIENT_IP, 50000);
    let syn = tcp_from(Peer::Client, client, NODE_FRONTEND, SYN, 0x1000, 0, b"");
    let k = tuple(&delivered(&send(&mut pl, T0, &t, Peer::Client, &syn)).ip);
    let snat = (k.src, k.sport);
    let synack = tcp_from(Peer::P2, LOCAL_BE, snat, SYN | ACK, 0x5000, 0x1001, b"");
    send(&mut pl, T0, &t, Peer::P2, &synack);
    let ack = tcp_from(
        Peer::Client,
        client,
        NODE_FRONTEND,
        ACK,
        0x1001,
        0x5001,
        b"",
    );
    send(&mut pl, T0, &t, Peer::Client, &ack);
    assert_eq!(
        tcp_state(&pl, key(TCP, client, NODE_FRONTEND)),
        TcpState::Established
    );
    let flood = |i: u32| {
        let src = Ipv4Addr::from(0xc612_0000 + i); // 198.18.0.0/15
        tcp_from(Peer::Client, (src, 40000), NODE_FRONTEND, SYN, 1, 0, b"")
    };
    for i in 0..12_000 {
        send(&mut pl, T0, &t, Peer::Client, &flood(i));
    }
    let exhausted = pl.counters().drop_count(DropReason::NatPortsExhausted);
    assert!(exhausted > 1000, "the flood took every port: {exhausted}");
    assert_eq!(pl.counters().snat_ports_reclaimed, 0, "none old enough");
    // A second later, new clients get ports the flood holds unconfirmed.
    let later = T0 + SEC + MS;
    for i in 0..100u16 {
        let csrc = (Ipv4Addr::new(192, 0, 2, 1 + (i % 200) as u8), 51000 + i);
        let syn = tcp_from(Peer::Client, csrc, NODE_FRONTEND, SYN, 1, 0, b"");
        let out = send(&mut pl, later, &t, Peer::Client, &syn);
        assert_eq!(backend_of(&out), LOCAL_BE, "client {csrc:?}");
    }
    let reclaimed = pl.counters().snat_ports_reclaimed;
    assert!(reclaimed > 0 && reclaimed <= 100, "reclaimed {reclaimed}");
    // The real, established flow kept its port throughout.
    let e = entry(&pl, key(TCP, client, NODE_FRONTEND)).expect("kept");
    assert_eq!((e.reply.dst, e.reply.dport), snat);
    assert_eq!(e.tcp, TcpState::Established);
}

#[test]
fn walk4_node_port_without_any_endpoint_refuses_out_the_uplink() {
    let t = svc_tables(&Svc {
        backends: vec![be(REMOTE_BE, false, false)],
        affinity_ns: None,
        local_only: true,
        second_cluster_ip: false,
    });
    let mut pl = pipeline();
    let out = send(&mut pl, T0, &t, Peer::Client, &SYN_CLIENT_TO_NODE_PORT);
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    let d = delivered(&out);
    assert_to(&d, Peer::Client);
    assert_rst(&d, NODE_FRONTEND, (CLIENT_IP, 50000), 0, Some(0x0102_0305));
    let c = pl.counters();
    assert_eq!(c.drop_count(DropReason::NoEndpoint), 1);
    assert_eq!((c.resets_sent, total_drops(c)), (1, 1));
    assert_eq!(pl.service_counters()[WEB].no_endpoint, 1);
    assert!(pl.conntrack().is_empty());
    // UDP: port unreachable from the NodeIP, straight back out the uplink,
    // quoting the client's datagram.
    let f = udp_from(Peer::Client, (CLIENT_IP, 50002), NODE_FRONTEND, b"dns?");
    let out = send(&mut pl, T0, &t, Peer::Client, &f);
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.eth_dst, e.eth_src), (CLIENT_MAC.0, UPLINK_MAC.0));
    assert_eq!((e.ip_src, e.ip_dst), (UNDERLAY_IP, CLIENT_IP));
    assert_eq!((e.ty, e.code), (3, 3));
    assert_eq!(e.quote, quote_of(&f, ETH));
    let c = pl.counters();
    assert_eq!(c.drop_count(DropReason::NoEndpoint), 2);
    assert_eq!(c.icmp_errors_sent, 1);
    assert_eq!(pl.service_counters()[WEB].no_endpoint, 2);
}

#[test]
fn walk4_uplink_traffic_to_the_node_that_is_no_node_port_is_not_ours() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let cases = [
        // SSH to the node (the XDP program passes it; if it came anyway).
        tcp_from(
            Peer::Client,
            (CLIENT_IP, 50000),
            (UNDERLAY_IP, 22),
            SYN,
            1,
            0,
            b"",
        ),
        // A port that is no NodePort, TCP and UDP.
        tcp_from(
            Peer::Client,
            (CLIENT_IP, 50000),
            (UNDERLAY_IP, 30081),
            SYN,
            1,
            0,
            b"",
        ),
        udp_from(Peer::Client, (CLIENT_IP, 50000), (UNDERLAY_IP, 30081), b"x"),
        udp_from(Peer::Client, (CLIENT_IP, 50000), (UNDERLAY_IP, 53), b"x"),
        // The ClusterIP and pods are not reachable from outside.
        tcp_from(Peer::Client, (CLIENT_IP, 50000), FRONTEND, SYN, 1, 0, b""),
        tcp_from(Peer::Client, (CLIENT_IP, 50000), LOCAL_BE, SYN, 1, 0, b""),
        udp_from(Peer::Client, (CLIENT_IP, 50000), REMOTE_BE, b"x"),
        // ICMP to the node.
        Peer::Client.frame(&icmp_error_datagram(CLIENT_IP, UNDERLAY_IP, 8, 0, b"ping")),
    ];
    for (i, f) in cases.iter().enumerate() {
        let out = send(&mut pl, T0, &t, Peer::Client, f);
        assert_eq!(out.verdict, Verdict::Drop(DropReason::NotOurs), "case {i}");
    }
    let c = pl.counters();
    assert_eq!(c.drop_count(DropReason::NotOurs), cases.len() as u64);
    assert_eq!(total_drops(c), cases.len() as u64);
    assert_eq!((c.resets_sent, c.icmp_errors_sent), (0, 0));
    assert!(pl.conntrack().is_empty());
}

// ---------------------------------------------------------------------------
// Hairpin
// ---------------------------------------------------------------------------

#[test]
fn hairpin_a_backend_calling_its_own_service_is_snated() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    // p2 calls 10.96.0.10:80 and lands on itself: it must see the call
    // from the gateway (else it would answer itself directly), and the
    // answer must reach it from the ClusterIP.
    let x = exchange(&mut pl, T0, &t, Peer::P2, (P2_IP, 45000), FRONTEND, true);
    assert_eq!(x.backend, LOCAL_BE);
    // The same through its node's NodePort.
    let x = exchange(
        &mut pl,
        T0,
        &t,
        Peer::P2,
        (P2_IP, 45001),
        NODE_FRONTEND,
        true,
    );
    assert_eq!(x.backend, LOCAL_BE);
    // p1 is no backend: no SNAT for it.
    exchange(&mut pl, T0, &t, Peer::P1, (P1_IP, 45002), FRONTEND, false);
    assert_eq!(total_drops(pl.counters()), 0);
}

// ---------------------------------------------------------------------------
// Source-port clashes
// ---------------------------------------------------------------------------

fn two_cluster_ips(backend: (Ipv4Addr, u16)) -> Tables {
    svc_tables(&Svc {
        second_cluster_ip: true,
        ..Svc::new(&[ready(backend)])
    })
}

/// p1 reuses one source port towards 10.96.0.10 and 10.96.0.21, whose only
/// backend is the same: the second flow's reply key is the first's, so the
/// second gets another source port (in the SNAT range, as the kernel's NAT
/// would pick one) and both connections carry data both ways.
#[test]
fn a_client_port_reused_towards_two_cluster_ips_of_one_backend_gets_another_port() {
    for backend in [LOCAL_BE, REMOTE_BE] {
        let t = two_cluster_ips(backend);
        let peer = Peer::of(backend.0);
        let mut pl = pipeline();
        let csrc = (P1_IP, 40001);
        let mut seen = Vec::new();
        for (i, fe) in [FRONTEND, SECOND_FRONTEND].into_iter().enumerate() {
            let syn = tcp_from(Peer::P1, csrc, fe, SYN, 0x1000, 0, b"");
            let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &syn));
            assert_to(&d, peer);
            let k = tuple(&d.ip);
            assert_eq!((k.dst, k.dport), backend);
            assert_eq!(k.src, P1_IP, "the backend still sees the client");
            if i == 0 {
                assert_eq!(k.sport, csrc.1, "the first flow keeps its port");
            } else {
                assert!(
                    (SNAT_PORTS.0..=SNAT_PORTS.1).contains(&k.sport),
                    "another port: {}",
                    k.sport
                );
            }
            let src = (k.src, k.sport);
            assert_eq!(d.ip, natted(Peer::P1.ip(&syn), Some(src), Some(backend), 1));
            seen.push((fe, src));
        }
        // Each backend reply reaches p1 from its own ClusterIP, on p1's port.
        for (fe, src) in seen.iter().rev().copied() {
            let f = tcp_from(peer, backend, src, SYN | ACK, 9, 0x1001, b"");
            let d = delivered(&send(&mut pl, T0, &t, peer, &f));
            assert_to(&d, Peer::P1);
            assert_eq!(d.ip, natted(peer.ip(&f), Some(fe), Some(csrc), 1));
            let ack = tcp_from(Peer::P1, csrc, fe, ACK, 0x1001, 10, b"x");
            let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &ack));
            assert_eq!(d.ip, natted(Peer::P1.ip(&ack), Some(src), Some(backend), 1));
            assert_eq!(tcp_state(&pl, key(TCP, csrc, fe)), TcpState::Established);
        }
        let c = pl.counters();
        assert_eq!(c.source_ports_remapped, 1);
        assert_eq!(total_drops(c), 0);
    }
}

/// With several workers the new port is one whose replies are steered to
/// the worker holding the flow.
#[test]
fn with_several_workers_a_remapped_port_brings_replies_to_the_flows_worker() {
    let t = two_cluster_ips(REMOTE_BE);
    let peer = Peer::of(REMOTE_BE.0);
    for workers in [3, 8, 16] {
        let mut mesh = Mesh::new(workers);
        for cport in 40000..40030u16 {
            let csrc = (P1_IP, cport);
            let mut owners = Vec::new();
            for fe in [FRONTEND, SECOND_FRONTEND] {
                let syn = tcp_from(Peer::P1, csrc, fe, SYN, 1, 0, b"");
                let (out, owner) = mesh.send(cport as usize, T0, &t, Peer::P1, &syn);
                let k = tuple(&delivered(&out).ip);
                owners.push((fe, (k.src, k.sport), owner));
            }
            assert_ne!(owners[0].1, owners[1].1, "port {cport}: distinct sources");
            for (fe, src, owner) in owners {
                let f = tcp_from(peer, REMOTE_BE, src, SYN | ACK, 9, 2, b"");
                let (out, w) = mesh.send(cport as usize + 1, T0, &t, peer, &f);
                assert_eq!(
                    w, owner,
                    "port {cport}: the reply reaches the flow's worker"
                );
                let d = delivered(&out);
                assert_eq!(d.ip, natted(peer.ip(&f), Some(fe), Some(csrc), 1));
            }
        }
        let remapped: u64 = mesh
            .pls
            .iter()
            .map(|p| p.counters().source_ports_remapped)
            .sum();
        assert_eq!(remapped, 30, "{workers} workers");
    }
}

// ---------------------------------------------------------------------------
// ICMP errors about translated flows
// ---------------------------------------------------------------------------

/// An ICMP error's quoted IPv4 header and the 8 bytes after it, with its
/// header checksum checked from scratch.
#[track_caller]
fn quoted_tuple(quote: &[u8]) -> (FlowKey, Ipv4Header) {
    assert_ipv4_checksum(quote);
    let (h, _) = Ipv4Header::from_slice(quote).unwrap();
    (tuple(quote), h)
}

#[test]
fn an_icmp_error_from_the_backend_reaches_the_client_about_the_cluster_ip() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    delivered(&send(&mut pl, T0, &t, Peer::P1, &UDP_P1_TO_CLUSTER_IP));
    let out = send(&mut pl, T0, &t, Peer::P2, &PORT_UNREACHABLE_P2_TO_P1);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.eth_dst, e.eth_src), (P1_MAC.0, PORT1_MAC.0));
    assert_eq!(
        (e.ip_src, e.ip_dst),
        (CLUSTER_IP, P1_IP),
        "from the ClusterIP"
    );
    assert_eq!((e.ty, e.code, e.rest), (3, 3, [0; 4]));
    let (q, qh) = quoted_tuple(&e.quote);
    assert_eq!(q, key(UDP, (P1_IP, 40000), FRONTEND), "quotes what p1 sent");
    let sent = PORT_UNREACHABLE_P2_TO_P1;
    assert_eq!(qh.time_to_live, 63);
    assert_eq!(qh.identification, 0x5555);
    assert_eq!(e.quote.len(), 32, "the whole quote is kept");
    assert_eq!(
        &e.quote[24..26],
        &sent[QUOTE + 24..QUOTE + 26],
        "UDP length"
    );
    assert_eq!(&e.quote[28..], b"kxdp");
    // The quoted UDP checksum (bytes 26..28) is left as p2 quoted it: no
    // stack checks it, so it is not checked here (Linux's NAT does update
    // it).
    let (outer, _) = Ipv4Header::from_slice(&out.frame[ETH..]).unwrap();
    assert_eq!(outer.time_to_live, 63);
    assert_eq!(outer.identification, 0x6666);
}

#[test]
fn time_exceeded_about_a_flow_to_a_remote_backend_is_translated() {
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &SYN_P1_TO_CLUSTER_IP));
    // n2 (its gateway address) reports the DNATed SYN expired, quoting its
    // header and 8 bytes, back to p1 over the overlay.
    let err = icmp_error_datagram(REMOTE_GATEWAY, P1_IP, 11, 0, &d.ip[..28]);
    let out = send(&mut pl, T0, &t, Peer::Remote, &Peer::Remote.frame(&err));
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.eth_dst, e.eth_src), (P1_MAC.0, PORT1_MAC.0));
    assert_eq!((e.ty, e.code), (11, 0));
    assert_eq!(e.ip_dst, P1_IP);
    let (q, qh) = quoted_tuple(&e.quote);
    assert_eq!(q, key(TCP, (P1_IP, 40000), FRONTEND));
    assert_eq!(e.quote.len(), 28);
    assert_eq!(
        &e.quote[24..28],
        &SYN_P1_TO_CLUSTER_IP[ETH + 24..ETH + 28],
        "seq"
    );
    assert_eq!(qh.time_to_live, 63);
}

#[test]
fn an_icmp_error_from_the_backend_reaches_an_outside_node_port_client() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let f = udp_from(Peer::Client, (CLIENT_IP, 50000), NODE_FRONTEND, b"dns?");
    let d = delivered(&send(&mut pl, T0, &t, Peer::Client, &f));
    let k = tuple(&d.ip);
    assert_eq!(k.src, GATEWAY);
    // p2 refuses it, to the SNAT address.
    let err = icmp_error_datagram(P2_IP, GATEWAY, 3, 3, &d.ip);
    let out = send(&mut pl, T0, &t, Peer::P2, &Peer::P2.frame(&err));
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.eth_dst, e.eth_src), (CLIENT_MAC.0, UPLINK_MAC.0));
    assert_eq!((e.ip_src, e.ip_dst), (UNDERLAY_IP, CLIENT_IP));
    let (q, _) = quoted_tuple(&e.quote);
    assert_eq!(q, key(UDP, (CLIENT_IP, 50000), NODE_FRONTEND));
}

#[test]
fn an_icmp_error_the_node_sends_about_a_translated_packet_quotes_the_cluster_ip() {
    // p1's datagram to the ClusterIP expires here (TTL 1): the time
    // exceeded must quote what p1 sent, not the backend it was DNATed to,
    // or p1's stack cannot match it to its socket.
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let mut f = UDP_P1_TO_CLUSTER_IP;
    f[ETH + 8] = 1;
    f[ETH + 10..ETH + 12].fill(0);
    let c = rfc1071(&f[ETH..ETH + 20]);
    f[ETH + 10..ETH + 12].copy_from_slice(&c.to_be_bytes());
    let out = send(&mut pl, T0, &t, Peer::P1, &f);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.ty, e.code), (11, 0));
    assert_eq!(e.ip_dst, P1_IP);
    // From the ClusterIP, like the errors about the flow from further on.
    assert_eq!(e.ip_src, CLUSTER_IP);
    let (q, _) = quoted_tuple(&e.quote);
    assert_eq!(q, key(UDP, (P1_IP, 40000), FRONTEND));
    assert_eq!(pl.counters().drop_count(DropReason::TtlExceeded), 1);
}

/// The inner Ethernet frame of a frame sent VXLAN-encapsulated to n2.
fn inner_frame(out: &Out) -> &[u8] {
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    &out.frame[INNER_IP - ETH..]
}

#[test]
fn a_port_unreachable_from_the_client_about_a_reply_reaches_the_backend() {
    // p1's UDP socket is gone when the backend's answer arrives: p1 answers
    // it with port unreachable, to the ClusterIP, quoting the answer as it
    // got it. The backend must get it as about its own answer: to its
    // address, quoting what it sent, so its stack can tell its socket.
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let q = udp_from(Peer::P1, (P1_IP, 40000), FRONTEND, b"query");
    assert!(delivered(&send(&mut pl, T0, &t, Peer::P1, &q)).encapped);
    let a = udp_from(Peer::Remote, REMOTE_BE, (P1_IP, 40000), b"answer");
    let d = delivered(&send(&mut pl, T0, &t, Peer::Remote, &a));
    assert_eq!(tuple(&d.ip), key(UDP, FRONTEND, (P1_IP, 40000)));
    let err = icmp_error_datagram(P1_IP, CLUSTER_IP, 3, 3, &d.ip[..28]);
    let out = send(&mut pl, T0, &t, Peer::P1, &Peer::P1.frame(&err));
    let e = parse_icmp_error(inner_frame(&out));
    assert_eq!((e.ty, e.code), (3, 3));
    assert_eq!((e.ip_src, e.ip_dst), (P1_IP, REMOTE_POD_IP));
    let (qk, _) = quoted_tuple(&e.quote);
    assert_eq!(
        qk,
        key(UDP, REMOTE_BE, (P1_IP, 40000)),
        "quotes what n2/p1 sent"
    );
    assert_eq!(total_drops(pl.counters()), 0);
}

#[test]
fn an_icmp_error_about_a_hairpin_reply_comes_from_the_snat_address() {
    // p2 calls its own service (SNATed to the gateway) and refuses the
    // answer: the error reaches p2-the-backend from the SNAT address.
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let q = udp_from(Peer::P2, (P2_IP, 45000), FRONTEND, b"query");
    let k = tuple(&delivered(&send(&mut pl, T0, &t, Peer::P2, &q)).ip);
    assert_eq!((k.src, k.dst), (GATEWAY, P2_IP));
    let a = udp_from(Peer::P2, LOCAL_BE, (k.src, k.sport), b"answer");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P2, &a));
    assert_eq!(tuple(&d.ip), key(UDP, FRONTEND, (P2_IP, 45000)));
    let err = icmp_error_datagram(P2_IP, CLUSTER_IP, 3, 3, &d.ip[..28]);
    let out = send(&mut pl, T0, &t, Peer::P2, &Peer::P2.frame(&err));
    assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.ip_src, e.ip_dst), (GATEWAY, P2_IP));
    let (qk, _) = quoted_tuple(&e.quote);
    assert_eq!(qk, key(UDP, LOCAL_BE, (GATEWAY, k.sport)));
}

#[test]
fn a_reply_expiring_here_draws_time_exceeded_to_the_backend() {
    // n2/p1's answer arrives with TTL 1 and expires routing to p1: the
    // error goes back to the backend, from this node's gateway (the
    // router), quoting the answer as the backend sent it.
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let q = udp_from(Peer::P1, (P1_IP, 40000), FRONTEND, b"query");
    assert!(delivered(&send(&mut pl, T0, &t, Peer::P1, &q)).encapped);
    let mut inner = udp_datagram(REMOTE_BE, (P1_IP, 40000), 1, b"answer");
    inner[10..12].fill(0);
    let c = rfc1071(&inner[..20]);
    inner[10..12].copy_from_slice(&c.to_be_bytes());
    let out = send(&mut pl, T0, &t, Peer::Remote, &Peer::Remote.frame(&inner));
    let e = parse_icmp_error(inner_frame(&out));
    assert_eq!((e.ty, e.code), (11, 0));
    assert_eq!((e.ip_src, e.ip_dst), (GATEWAY, REMOTE_POD_IP));
    let (qk, _) = quoted_tuple(&e.quote);
    assert_eq!(qk, key(UDP, REMOTE_BE, (P1_IP, 40000)));
    assert_eq!(pl.counters().drop_count(DropReason::TtlExceeded), 1);
}

/// A `total`-byte UDP datagram with DF from `peer`.
fn big_udp_from(peer: Peer, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), total: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..total - 28).map(|i| i as u8).collect();
    udp_from(peer, src, dst, &payload)
}

#[test]
fn frag_needed_about_a_translated_packet_reaches_the_client() {
    // Path MTU discovery through a service: a DF datagram too big for the
    // overlay to a remote backend draws "fragmentation needed" (MTU 1450)
    // that the client can match to what it sent.
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let f = big_udp_from(Peer::P1, (P1_IP, 40000), FRONTEND, 1451);
    let out = send(&mut pl, T0, &t, Peer::P1, &f);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.ty, e.code), (3, 4));
    assert_eq!(e.rest, [0, 0, 0x05, 0xaa], "next-hop MTU 1450");
    assert_eq!(e.ip_dst, P1_IP);
    let (q, _) = quoted_tuple(&e.quote);
    assert_eq!(q, key(UDP, (P1_IP, 40000), FRONTEND));
    // An outside client of a NodePort (SNATed): out the uplink to it.
    let f = big_udp_from(Peer::Client, (CLIENT_IP, 50000), NODE_FRONTEND, 1480);
    let out = send(&mut pl, T0, &t, Peer::Client, &f);
    assert_eq!(out.verdict, Verdict::Tx(UPLINK));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.eth_dst, e.eth_src), (CLIENT_MAC.0, UPLINK_MAC.0));
    assert_eq!((e.ty, e.code), (3, 4));
    assert_eq!((e.ip_src, e.ip_dst), (UNDERLAY_IP, CLIENT_IP));
    let (q, _) = quoted_tuple(&e.quote);
    assert_eq!(q, key(UDP, (CLIENT_IP, 50000), NODE_FRONTEND));
    let c = pl.counters();
    assert_eq!(
        (c.drop_count(DropReason::TooBig), c.icmp_errors_sent),
        (2, 2)
    );
}

#[test]
fn icmp_budgets_are_the_translated_addressees() {
    // Outside clients' datagrams to a NodePort expire here after SNAT, all
    // from the SNAT address: each client's time exceeded still comes out
    // of its own budget, so one client's flood spends only that.
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let expiring = |client: Ipv4Addr| {
        Peer::Client.frame(&udp_datagram((client, 50000), NODE_FRONTEND, 1, b"q"))
    };
    let flood = expiring(CLIENT_IP);
    let other_client = Ipv4Addr::new(172, 30, 0, 101);
    let other = expiring(other_client);
    let mut batch = vec![(UPLINK, &flood[..]); 30];
    batch.push((UPLINK, &other));
    let outs = process_batch(&mut pl, T0, &t, &batch);
    assert_eq!(sent(&outs[..30]), 10, "the flooding client's burst");
    let e = parse_icmp_error(&outs[30].frame);
    assert_eq!((e.eth_dst, e.eth_src), (CLIENT_MAC.0, UPLINK_MAC.0));
    assert_eq!((e.ty, e.code), (11, 0));
    assert_eq!((e.ip_src, e.ip_dst), (UNDERLAY_IP, other_client));
    let (q, _) = quoted_tuple(&e.quote);
    assert_eq!(q, key(UDP, (other_client, 50000), NODE_FRONTEND));
    let c = pl.counters();
    assert_eq!((c.icmp_errors_sent, c.icmp_rate_limited), (11, 20));
}

// ---------------------------------------------------------------------------
// Walk 5: the host interface
// ---------------------------------------------------------------------------

#[test]
fn walk5_the_host_reaches_local_and_remote_pods() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    // A kubelet probe to p1.
    let f = tcp_from(Peer::Host, (GATEWAY, 46000), (P1_IP, 8080), SYN, 1, 0, b"");
    let out = send(&mut pl, T0, &t, Peer::Host, &f);
    assert_eq!(out.verdict, Verdict::Tx(P1_PORT));
    let d = delivered(&out);
    assert_to(&d, Peer::P1);
    assert_eq!(d.ip, natted(&f[ETH..], None, None, 1), "routed, no NAT");
    // And to a pod on n2, over the overlay.
    let f = tcp_from(Peer::Host, (GATEWAY, 46001), REMOTE_BE, SYN, 1, 0, b"");
    let d = delivered(&send(&mut pl, T0, &t, Peer::Host, &f));
    assert_to(&d, Peer::Remote);
    assert_eq!(d.ip, natted(&f[ETH..], None, None, 1));
    // The pods' answers reach the host, with its MAC.
    let r = tcp_from(
        Peer::P1,
        (P1_IP, 8080),
        (GATEWAY, 46000),
        SYN | ACK,
        1,
        2,
        b"",
    );
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &r));
    assert_to(&d, Peer::Host);
    assert_eq!(d.ip, natted(&r[ETH..], None, None, 1));
    let r = tcp_from(
        Peer::Remote,
        REMOTE_BE,
        (GATEWAY, 46001),
        SYN | ACK,
        1,
        2,
        b"",
    );
    let d = delivered(&send(&mut pl, T0, &t, Peer::Remote, &r));
    assert_to(&d, Peer::Host);
    assert_eq!(d.ip, natted(&r[INNER_IP..], None, None, 1));
    // The host sends only from the gateway address (or its own underlay
    // address, answering pods that reach the node there: egress_tests.rs).
    let f = tcp_from(
        Peer::Host,
        (REMOTE_UNDERLAY_IP, 46002),
        (P1_IP, 8080),
        SYN,
        1,
        0,
        b"",
    );
    assert_eq!(
        send(&mut pl, T0, &t, Peer::Host, &f).verdict,
        Verdict::Drop(DropReason::SourceMismatch)
    );
    assert!(pl.conntrack().is_empty(), "no service: nothing tracked");
}

#[test]
fn walk5_the_host_reaches_a_cluster_ip() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let mut seen = std::collections::HashSet::new();
    for sport in 47000..47020 {
        let x = exchange(
            &mut pl,
            T0,
            &t,
            Peer::Host,
            (GATEWAY, sport),
            FRONTEND,
            false,
        );
        seen.insert(x.backend);
    }
    assert_eq!(seen.len(), 2);
    // UDP as well.
    let f = udp_from(Peer::Host, (GATEWAY, 47100), FRONTEND, b"q");
    let d = delivered(&send(&mut pl, T0, &t, Peer::Host, &f));
    let backend = (tuple(&d.ip).dst, TARGET_PORT);
    let peer = Peer::of(backend.0);
    let r = udp_from(peer, backend, (GATEWAY, 47100), b"a");
    let d = delivered(&send(&mut pl, T0, &t, peer, &r));
    assert_to(&d, Peer::Host);
    assert_eq!(d.ip, natted(peer.ip(&r), Some(FRONTEND), None, 1));
    assert_eq!(total_drops(pl.counters()), 0);
}

#[test]
fn walk5_pods_reach_the_node_through_the_host_interface() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let f = tcp_from(Peer::P1, (P1_IP, 40000), (GATEWAY, 10250), SYN, 1, 0, b"");
    let out = send(&mut pl, T0, &t, Peer::P1, &f);
    assert_eq!(out.verdict, Verdict::Tx(HOST_PORT));
    let d = delivered(&out);
    assert_to(&d, Peer::Host);
    assert_eq!(
        d.ip,
        natted(&f[ETH..], None, None, 1),
        "TTL - 1, else as sent"
    );
    // From a pod on n2, over the overlay.
    let f = udp_from(Peer::Remote, (REMOTE_POD_IP, 40000), (GATEWAY, 53), b"q");
    let d = delivered(&send(&mut pl, T0, &t, Peer::Remote, &f));
    assert_to(&d, Peer::Host);
    assert_eq!(d.ip, natted(&f[INNER_IP..], None, None, 1));

    // Without a host interface, the gateway is not reachable.
    let mut none = t.clone();
    none.ports[HOST_PORT as usize] = None;
    none.host = None;
    let f = tcp_from(Peer::P1, (P1_IP, 40000), (GATEWAY, 10250), SYN, 1, 0, b"");
    let out = send(&mut pl, T0, &none, Peer::P1, &f);
    assert_eq!(out.verdict, Verdict::Drop(DropReason::ToGateway));
    assert_eq!(pl.counters().drop_count(DropReason::ToGateway), 1);
}

/// The host asks who has `target` (the kernel's neighbour resolution on
/// the host veth, routed to the cluster and service CIDRs).
fn host_arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = ARP_REQUEST_FOR_GATEWAY.to_vec();
    f[6..12].copy_from_slice(&HOST_PEER_MAC.0);
    f[ETH + 8..ETH + 14].copy_from_slice(&HOST_PEER_MAC.0);
    f[ARP_SPA..ARP_SPA + 4].copy_from_slice(&GATEWAY.octets());
    f[ARP_TPA..ARP_TPA + 4].copy_from_slice(&target.octets());
    f
}

#[test]
fn walk5_arp_on_the_host_interface() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let answered = [
        P1_IP,
        REMOTE_POD_IP,
        Ipv4Addr::new(10, 244, 77, 1),
        CLUSTER_IP,
        Ipv4Addr::new(10, 111, 255, 254),
    ];
    for target in answered {
        let out = send(&mut pl, T0, &t, Peer::Host, &host_arp_request(target));
        assert_eq!(out.verdict, Verdict::Tx(HOST_PORT), "{target}");
        assert_eq!(out.frame.len(), 60);
        let sp = SlicedPacket::from_ethernet(&out.frame).unwrap();
        let Some(LinkSlice::Ethernet2(eth)) = &sp.link else {
            panic!("Ethernet II")
        };
        assert_eq!(eth.destination(), HOST_PEER_MAC.0);
        assert_eq!(eth.source(), HOST_PORT_MAC.0);
        assert_eq!(eth.ether_type(), EtherType::ARP);
        let Some(NetSlice::Arp(a)) = &sp.net else {
            panic!("ARP")
        };
        let a = a.to_packet().try_eth_ipv4().unwrap();
        assert_eq!(a.operation, ArpOperation::REPLY);
        assert_eq!(a.sender_mac, HOST_PORT_MAC.0);
        assert_eq!(a.sender_ipv4_addr(), target);
        assert_eq!(a.target_mac, HOST_PEER_MAC.0);
        assert_eq!(a.target_ipv4_addr(), GATEWAY);
    }
    let ignored = [
        GATEWAY,
        UNDERLAY_IP,
        CLIENT_IP,
        Ipv4Addr::new(10, 112, 0, 1),
        Ipv4Addr::new(10, 245, 0, 1),
    ];
    for target in ignored {
        let out = send(&mut pl, T0, &t, Peer::Host, &host_arp_request(target));
        assert_eq!(
            out.verdict,
            Verdict::Drop(DropReason::ArpIgnored),
            "{target}"
        );
    }
    let c = pl.counters();
    assert_eq!(c.arp_replies, answered.len() as u64);
    assert_eq!(total_drops(c), ignored.len() as u64);
}

// ---------------------------------------------------------------------------
// Connection tracking through the pipeline
// ---------------------------------------------------------------------------

#[test]
fn fin_and_rst_close_entries_from_either_side() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    // 64 slots: one batch's GC looks at all of them.
    let mut pl = Pipeline::with_conntrack(GC_BUDGET, Timeouts::default());
    let open = |pl: &mut Pipeline, sport: u16| {
        let c = (P1_IP, sport);
        for (peer, src, dst, flags) in [
            (Peer::P1, c, FRONTEND, SYN),
            (Peer::P2, LOCAL_BE, c, SYN | ACK),
            (Peer::P1, c, FRONTEND, ACK),
        ] {
            let f = tcp_from(peer, src, dst, flags, 1, 1, b"");
            delivered(&send(pl, T0, &t, peer, &f));
        }
        assert_eq!(tcp_state(pl, key(TCP, c, FRONTEND)), TcpState::Established);
    };
    let state = |pl: &Pipeline, sport| tcp_state(pl, key(TCP, (P1_IP, sport), FRONTEND));
    // The backend closes first.
    open(&mut pl, 48000);
    let f = tcp_from(Peer::P2, LOCAL_BE, (P1_IP, 48000), FIN | ACK, 1, 1, b"");
    delivered(&send(&mut pl, T0, &t, Peer::P2, &f));
    assert_eq!(state(&pl, 48000), TcpState::FinWait);
    let f = tcp_from(Peer::P1, (P1_IP, 48000), FRONTEND, FIN | ACK, 1, 1, b"");
    delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
    assert_eq!(state(&pl, 48000), TcpState::Closed);
    // A reset from the client, and one from the backend: both forwarded.
    open(&mut pl, 48001);
    let f = tcp_from(Peer::P1, (P1_IP, 48001), FRONTEND, RST, 1, 0, b"");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
    assert_eq!(d.ip, natted(&f[ETH..], None, Some(LOCAL_BE), 1));
    assert_eq!(state(&pl, 48001), TcpState::Closed);
    open(&mut pl, 48002);
    let f = tcp_from(Peer::P2, LOCAL_BE, (P1_IP, 48002), RST | ACK, 1, 1, b"");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P2, &f));
    assert_eq!(d.ip, natted(&f[ETH..], Some(FRONTEND), None, 1));
    assert_eq!(state(&pl, 48002), TcpState::Closed);
    assert_eq!(pl.conntrack().len(), 3);
    // Closed entries go after the closing timeout (10 s); the GC runs
    // after every batch.
    let closing = pl.conntrack().timeouts().tcp_closing_ns;
    gc_tick(&mut pl, T0 + closing - 1, &t);
    assert_eq!(pl.conntrack().len(), 3);
    gc_tick(&mut pl, T0 + closing + 1, &t);
    assert!(pl.conntrack().is_empty());
}

/// A batch of [`GC_BUDGET`] frames nobody sent (dropped: unknown port), so
/// that the GC after it looks at [`GC_BUDGET`] slots: one per frame.
fn gc_tick(pl: &mut Pipeline, now: u64, t: &Tables) {
    let junk = [0u8; 60];
    let batch: Vec<(PortId, &[u8])> = (0..GC_BUDGET).map(|_| (99, &junk[..])).collect();
    process_batch(pl, now, t, &batch);
}

#[test]
fn expired_entries_are_collected_over_time() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    // The dataplane's default table: 256k slots, 64 looked at per batch.
    let mut pl = Pipeline::new();
    let to = *pl.conntrack().timeouts();
    for sport in 49000..49010 {
        let f = udp_from(Peer::P1, (P1_IP, sport), FRONTEND, b"q");
        delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
        let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 1, 0, b"");
        delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
    }
    for sport in 49100..49105 {
        exchange(&mut pl, T0, &t, Peer::P1, (P1_IP, sport), FRONTEND, false);
        let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 1, 0, b"");
        let be = backend_of(&send(&mut pl, T0, &t, Peer::P1, &f));
        let r = tcp_from(Peer::of(be.0), be, (P1_IP, sport), SYN | ACK, 9, 2, b"");
        delivered(&send(&mut pl, T0, &t, Peer::of(be.0), &r));
        let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, ACK, 2, 10, b"");
        delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
    }
    assert_eq!(pl.conntrack().len(), 25);
    // Runs full batches at `now` (the GC runs after each) until `n` more
    // entries are gone; returns how many batches that took. Each batch
    // looks at GC_BUDGET slots, so one turn of the cursor over the whole
    // table takes capacity / GC_BUDGET batches.
    let turn = pl.conntrack().capacity() / GC_BUDGET;
    let sweep = |pl: &mut Pipeline, now: u64, n: usize| {
        let target = pl.conntrack().len() - n;
        for batches in 1..=turn + 1 {
            gc_tick(pl, now, &t);
            let left = pl.conntrack().len();
            assert!(left >= target, "only expired entries go");
            if left == target {
                return batches;
            }
        }
        panic!("not collected within a turn of the cursor");
    };
    // UDP after 30 s idle: collected over time, not by one batch (the
    // cursor was elsewhere), and within one turn.
    assert!(sweep(&mut pl, T0 + to.udp_ns + 1, 10) > 1);
    // Half-open after 60 s.
    sweep(&mut pl, T0 + to.tcp_syn_ns + 1, 10);
    assert_eq!(pl.conntrack().len(), 5, "established stay");
    // Established after 6 h idle.
    sweep(&mut pl, T0 + to.tcp_established_ns + 1, 5);
    assert!(pl.conntrack().is_empty());
    assert_eq!(pl.conntrack().stats().expirations, 25);
}

#[test]
fn a_flow_seen_after_its_entry_expired_starts_afresh() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = Pipeline::new();
    let f = udp_from(Peer::P1, (P1_IP, 49500), FRONTEND, b"q");
    let first = backend_of(&send(&mut pl, T0, &t, Peer::P1, &f));
    // The GC has not reached it (a fresh table's cursor is far away), but
    // the lookup sees it expired and the datagram is a new flow.
    let later = T0 + 31 * SEC;
    let again = backend_of(&send(&mut pl, later, &t, Peer::P1, &f));
    assert_eq!(again, first, "same hash, same backend");
    assert_eq!(pl.conntrack().len(), 1);
    assert_eq!(
        entry(&pl, key(UDP, (P1_IP, 49500), FRONTEND))
            .unwrap()
            .created_ns,
        later
    );
    assert_eq!(pl.service_counters()[WEB].new_flows, 2);
    // A TCP segment of an expired flow is no SYN: reset.
    let f = tcp_from(Peer::P1, (P1_IP, 49501), FRONTEND, SYN, 1, 0, b"");
    delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
    let f = tcp_from(Peer::P1, (P1_IP, 49501), FRONTEND, ACK, 2, 3, b"");
    let d = delivered(&send(&mut pl, T0 + 61 * SEC, &t, Peer::P1, &f));
    assert_rst(&d, FRONTEND, (P1_IP, 49501), 3, None);
}

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

#[test]
fn service_and_backend_counters_add_up() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let mut packets = 0u64;
    let mut bytes = 0u64;
    // Counts one translated frame of `len` bytes on the wire (the inner
    // frame for VXLAN).
    let mut count = |peer: Peer, f: &[u8]| {
        packets += 1;
        bytes += (if peer == Peer::Remote {
            f.len() - ENCAP_LEN
        } else {
            f.len()
        }) as u64;
    };
    for sport in 53000..53020u16 {
        let c = (P1_IP, sport);
        let f = tcp_from(Peer::P1, c, FRONTEND, SYN, 1, 0, b"");
        let backend = backend_of(&send(&mut pl, T0, &t, Peer::P1, &f));
        count(Peer::P1, &f);
        let peer = Peer::of(backend.0);
        let r = tcp_from(peer, backend, c, SYN | ACK, 1, 2, b"");
        delivered(&send(&mut pl, T0, &t, peer, &r));
        count(peer, &r);
        let f = tcp_from(Peer::P1, c, FRONTEND, PSH | ACK, 2, 2, &[7u8; 100]);
        delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
        count(Peer::P1, &f);
    }
    for sport in 53000..53010u16 {
        let f = udp_from(Peer::Host, (GATEWAY, sport), FRONTEND, b"q");
        delivered(&send(&mut pl, T0, &t, Peer::Host, &f));
        count(Peer::Host, &f);
    }
    for sport in 53000..53003u16 {
        let f = tcp_from(Peer::P1, (P1_IP, sport), EMPTY_FRONTEND, SYN, 1, 0, b"");
        delivered(&send(&mut pl, T0, &t, Peer::P1, &f));
    }
    let f = udp_from(Peer::P1, (P1_IP, 53003), EMPTY_FRONTEND, b"q");
    parse_icmp_error(&send(&mut pl, T0, &t, Peer::P1, &f).frame);

    let web = pl.service_counters()[WEB];
    let empty = pl.service_counters()[EMPTY];
    assert_eq!(web.new_flows, 30);
    assert_eq!(web.no_endpoint, 0);
    assert_eq!(web.packets, packets);
    assert_eq!(web.bytes, bytes);
    let per_backend: u64 = pl.backend_flows().values().sum();
    assert_eq!(per_backend, web.new_flows);
    // Every translated packet of web's flows, walked or cached, counts for
    // its backend too (the empty service's have none).
    let backends = pl.backend_counters();
    let sum = |f: fn(&BackendCounters) -> u64| backends.values().map(f).sum::<u64>();
    assert_eq!(
        (sum(|c| c.packets), sum(|c| c.bytes)),
        (web.packets, web.bytes)
    );
    // TCP: SYN, SYN+ACK and data per flow; UDP: one datagram.
    for ((_, proto, _, _), c) in &backends {
        let per_flow = if *proto == TCP { 3 } else { 1 };
        assert_eq!(c.packets, per_flow * c.new_flows, "{backends:?}");
    }
    // Two backends, each counted apart for TCP and for UDP (one port).
    assert_eq!(pl.backend_flows().len(), 4);
    let by_proto = |proto: u8| -> u64 {
        let flows = pl.backend_flows();
        flows
            .iter()
            .filter(|((_, p, _, _), _)| *p == proto)
            .map(|(_, n)| n)
            .sum()
    };
    assert_eq!((by_proto(6), by_proto(17)), (20, 10));
    assert_eq!(pl.conntrack().stats().inserts, web.new_flows);
    assert_eq!(
        empty,
        SvcCounters {
            no_endpoint: 4,
            ..SvcCounters::default()
        }
    );
    let c = pl.counters();
    assert_eq!(c.drop_count(DropReason::NoEndpoint), 4);
    assert_eq!((c.resets_sent, c.icmp_errors_sent), (3, 1));
}

// ---------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------

/// The randomised tests' tables: services in every policy, egress, and the
/// node's other addresses.
fn robustness_configs() -> Vec<Tables> {
    vec![
        with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]),
        with_backends(&[ready(LOCAL_BE)]),
        with_backends(&[ready(REMOTE_BE), terminating(LOCAL_BE)]),
        with_backends(&[]),
        svc_tables(&Svc {
            backends: vec![ready(LOCAL_BE), ready(REMOTE_BE)],
            affinity_ns: Some(10 * SEC),
            local_only: true,
            second_cluster_ip: true,
        }),
        // Egress (walk 7): masqueraded, and not.
        egress_tests::with_egress(
            with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]),
            true,
            &[],
        ),
        egress_tests::with_egress(with_backends(&[ready(LOCAL_BE)]), false, &[]),
        // A second NodePort address and an external IP; Local policies
        // (eTP and iTP) on them.
        address_tests::addr_tables(&address_tests::svc(&[LOCAL_BE, REMOTE_BE], false), false),
        address_tests::addr_tables(&address_tests::svc(&[LOCAL_BE, REMOTE_BE], true), true),
    ]
}

/// The randomised tests' seed frames: every walk's, both directions.
fn robustness_seeds() -> Vec<(Peer, Vec<u8>)> {
    let mut seeds: Vec<(Peer, Vec<u8>)> = vec![
        (Peer::P1, SYN_P1_TO_CLUSTER_IP.to_vec()),
        (Peer::P2, SYNACK_P2_TO_P1.to_vec()),
        (Peer::Remote, VXLAN_SYNACK_FROM_REMOTE.to_vec()),
        (Peer::P1, UDP_P1_TO_CLUSTER_IP.to_vec()),
        (Peer::Client, SYN_CLIENT_TO_NODE_PORT.to_vec()),
        (Peer::P2, PORT_UNREACHABLE_P2_TO_P1.to_vec()),
        (Peer::Host, host_arp_request(CLUSTER_IP)),
        (
            Peer::Host,
            tcp_from(Peer::Host, (GATEWAY, 40000), FRONTEND, SYN, 1, 0, b""),
        ),
        (
            Peer::P2,
            tcp_from(Peer::P2, LOCAL_BE, (GATEWAY, 61000), SYN | ACK, 1, 2, b""),
        ),
        (
            Peer::Client,
            udp_from(Peer::Client, (CLIENT_IP, 50000), NODE_FRONTEND, b"q"),
        ),
    ];
    // Fragments: a datagram's first and later ones, to a frontend and back
    // (some arrive in order within a batch, so later ones are translated).
    let frag_seeds = [
        (Peer::P1, (P1_IP, 40000), FRONTEND),
        (Peer::P2, LOCAL_BE, (P1_IP, 40000)),
        (Peer::Remote, REMOTE_BE, (P1_IP, 40000)),
        (Peer::Client, (CLIENT_IP, 50000), NODE_FRONTEND),
    ];
    for (peer, src, dst) in frag_seeds {
        for f in fragments(&big_datagram(src, dst, peer.ttl(), 0x7a7a, 1500)) {
            seeds.push((peer, peer.frame(&f)));
        }
    }
    seeds.extend(egress_tests::egress_seeds());
    seeds.extend(address_tests::address_seeds());
    seeds
}

/// Copies a random seed into `chunk`, mostly changed a little where the
/// service machinery looks (ports, flags, addresses), sometimes anywhere,
/// checksums mostly made right again, sometimes cut short: (in port, length).
fn random_frame(
    rng: &mut XorShift,
    seeds: &[(Peer, Vec<u8>)],
    chunk: &mut [u8],
) -> (PortId, usize) {
    let (peer, s) = &seeds[rng.below(seeds.len())];
    let f = &mut chunk[RX_OFF..RX_OFF + s.len()];
    f.copy_from_slice(s);
    let ip = if *peer == Peer::Remote { INNER_IP } else { ETH };
    for _ in 0..rng.below(4) {
        let i = if rng.below(3) == 0 || f.len() <= ip + 20 {
            rng.below(f.len())
        } else {
            ip + 12 + rng.below(f.len() - ip - 12)
        };
        f[i] = mutated(rng, f[i], &[0, 1, 2, 0x10, 0x12, 0x14, 0x20, 0x50, 0xff]);
    }
    if f.len() >= ip + 20 && rng.below(4) != 0 {
        super::tests::fix_l4_checksum(f, ip);
        super::tests::fix_ipv4_checksum(f, ip);
    }
    let len = if rng.below(8) == 0 {
        rng.below(s.len() + 1)
    } else {
        s.len()
    };
    (peer.port(), len)
}

/// What any frame the pipeline sends must be: to a known port, inside its
/// chunk, ARP back where it came from, IPv4 with right checksums and
/// lengths (inside VXLAN too).
#[track_caller]
fn assert_sane_tx(t: &Tables, p: &Packet<'_>, in_port: PortId) {
    let Verdict::Tx(port) = p.verdict else {
        unreachable!("only sends are checked")
    };
    assert!(t.port(port).is_some(), "Tx to unknown port {port}");
    assert!(p.off + p.len <= p.buf.len());
    let f = p.frame();
    match u16::from_be_bytes([f[12], f[13]]) {
        ethernet::ethertype::ARP => {
            assert_eq!((port, f.len()), (in_port, 60));
        }
        ethernet::ethertype::IPV4 => {
            assert_ipv4_checksum(&f[ETH..]);
            let (h, _) = Ipv4Header::from_slice(&f[ETH..]).unwrap();
            assert_eq!(usize::from(h.total_len), f.len() - ETH);
            if port == UPLINK && h.destination == REMOTE_UNDERLAY_IP.octets() {
                let inner = parse_encapped(f).inner;
                let (ih, _) = Ipv4Header::from_slice(&inner[ETH..]).unwrap();
                assert_eq!(usize::from(ih.total_len), inner.len() - ETH);
            }
        }
        other => panic!("sent ethertype {other:#06x}"),
    }
}

#[test]
fn random_and_mutated_service_frames_never_panic_and_stay_sane() {
    const CHUNK: usize = 2048;
    let configs = robustness_configs();
    let seeds = robustness_seeds();
    let mut rng = XorShift(0x6b78_6470_0000_0005);
    let mut pl = pipeline();
    let mut now = T0;
    let (mut txs, mut frames) = (0u64, 0u64);
    let mut chunks: Vec<Vec<u8>> = (0..BATCH_SIZE).map(|_| vec![0u8; CHUNK]).collect();
    while frames < 20_000 {
        let t = &configs[rng.below(configs.len())];
        let n = 1 + rng.below(BATCH_SIZE);
        let meta: Vec<(PortId, usize)> = chunks
            .iter_mut()
            .take(n)
            .map(|c| random_frame(&mut rng, &seeds, c))
            .collect();
        let mut pkts = packets(&mut chunks, &meta);
        now += rng.below(200 * MS as usize) as u64;
        pl.process(now, t, &mut pkts);
        for (p, &(in_port, _)) in pkts.iter().zip(&meta) {
            if let Verdict::Tx(_) = p.verdict {
                txs += 1;
                assert_sane_tx(t, p, in_port);
            }
        }
        frames += n as u64;
    }
    let c = pl.counters();
    assert!(
        txs > 1000 && c.resets_sent > 100 && c.icmp_errors_sent > 10,
        "{txs} {c:?}"
    );
    assert!(
        c.fragments_translated > 10
            && c.drop_count(DropReason::FragmentWithoutFirst) > 10
            && c.drop_count(DropReason::FragmentMalformed) > 0,
        "{c:?}"
    );
    assert!(
        c.egress_flows > 10 && c.egress_routed > 100,
        "egress: {c:?}"
    );
    assert!(!pl.backend_flows().is_empty());
}

/// Issue 14's fuzzing over sequences, on stable Rust: random and mutated
/// frames of every walk reach three workers (each checked against its
/// cache-less twin) at random, as a NIC's queues would deliver them; what a
/// worker hands off is run by its owner in the next batch, under the same
/// tables, as the worker mesh does. The owner keeps what it is handed
/// (never hands it on: a ping-pong would loop), and everything sent is sane.
#[test]
fn random_frame_sequences_through_three_workers_meet_their_owners() {
    const WORKERS: u16 = 3;
    let configs = robustness_configs();
    let seeds = robustness_seeds();
    let mut rng = XorShift(0x6b78_6470_0000_0014);
    let mut pls: Vec<Pipeline> = (0..WORKERS)
        .map(|i| {
            let mut pl = pipeline();
            pl.set_worker(i, WORKERS);
            pl
        })
        .collect();
    let mut now = T0;
    let (mut frames, mut handed, mut txs) = (0u64, 0u64, 0u64);
    let mut chunks: Vec<Vec<u8>> = (0..BATCH_SIZE).map(|_| vec![0u8; CHUNK]).collect();
    while frames < 20_000 {
        // A run of batches under one snapshot (tables change between runs,
        // as the engine publishes).
        let t = &configs[rng.below(configs.len())];
        for _ in 0..1 + rng.below(8) {
            now += rng.below(50 * MS as usize) as u64;
            // Hand-offs queued for each worker: (in port, frame as received).
            let mut inbound: Vec<Vec<(PortId, Vec<u8>)>> = vec![Vec::new(); WORKERS as usize];
            for (w, pl) in pls.iter_mut().enumerate() {
                let n = rng.below(BATCH_SIZE / 2);
                let meta: Vec<(PortId, usize)> = chunks
                    .iter_mut()
                    .take(n)
                    .map(|c| random_frame(&mut rng, &seeds, c))
                    .collect();
                let received: Vec<Vec<u8>> = meta
                    .iter()
                    .zip(&chunks)
                    .map(|(&(_, len), c)| c[RX_OFF..RX_OFF + len].to_vec())
                    .collect();
                let mut pkts = packets(&mut chunks, &meta);
                pl.process(now, t, &mut pkts);
                for ((p, &(in_port, len)), rx) in pkts.iter().zip(&meta).zip(&received) {
                    match p.verdict {
                        Verdict::Handoff(to) => {
                            assert_ne!(usize::from(to), w, "handed to itself");
                            assert!(to < WORKERS, "handed to worker {to}");
                            // As received: nothing but a completed
                            // checksum may have been written.
                            let f = p.buf[RX_OFF..RX_OFF + len].to_vec();
                            assert_eq!(f.len(), rx.len());
                            inbound[usize::from(to)].push((in_port, f));
                        }
                        Verdict::Tx(_) => {
                            txs += 1;
                            assert_sane_tx(t, p, in_port);
                        }
                        Verdict::Drop(_) => {}
                    }
                }
                frames += n as u64;
            }
            for (w, queue) in inbound.into_iter().enumerate() {
                for batch in queue.chunks(BATCH_SIZE) {
                    let meta: Vec<(PortId, usize)> =
                        batch.iter().map(|(port, f)| (*port, f.len())).collect();
                    for (c, (_, f)) in chunks.iter_mut().zip(batch) {
                        c[RX_OFF..RX_OFF + f.len()].copy_from_slice(f);
                    }
                    let mut pkts = packets(&mut chunks, &meta);
                    pls[w].process_handed(now, t, &mut pkts);
                    for (p, &(in_port, _)) in pkts.iter().zip(&meta) {
                        handed += 1;
                        match p.verdict {
                            Verdict::Handoff(to) => {
                                panic!("worker {w} handed a frame it was handed on to {to}")
                            }
                            Verdict::Tx(_) => {
                                txs += 1;
                                assert_sane_tx(t, p, in_port);
                            }
                            Verdict::Drop(_) => {}
                        }
                    }
                }
            }
        }
    }
    let sum = |f: fn(&Counters) -> u64| pls.iter().map(|pl| f(pl.counters())).sum::<u64>();
    let (resets, egress, translated) = (
        sum(|c| c.resets_sent),
        sum(|c| c.egress_flows),
        sum(|c| c.fragments_translated),
    );
    eprintln!(
        "{frames} frames, {handed} handed off, {txs} sent, {resets} resets, \
         {egress} egress flows, {translated} fragments translated"
    );
    assert!(handed > 1000 && txs > 1000, "{handed} handed, {txs} sent");
    // Workers may disagree on a frame's owner (fragments of datagrams that
    // share an IP id, mutated here): the loop is cut and counted.
    let loops = sum(|c| c.drop_count(DropReason::HandoffLoop));
    eprintln!("{loops} hand-off loops cut");
    assert!(loops > 0, "the seeds make workers disagree now and then");
    assert!(resets > 100 && egress > 10 && translated > 0);
    for pl in &pls {
        assert!(!pl.conntrack().is_empty(), "every worker owns flows");
    }
}

/// Writes the `sequence` fuzz target's seeds (`fuzz/corpus/sequence`):
/// the randomised tests' seed frames as records (`fuzz_targets/sequence.rs`
/// has the format), all of them spread over the three workers, and each on
/// every worker in turn; under both policies.
#[test]
#[ignore = "writes files; run by hand when the seeds change"]
fn write_sequence_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sequence");
    std::fs::create_dir_all(&dir).unwrap();
    let record = |worker: usize, port: PortId, f: &[u8]| {
        let port = if port <= 3 { port as u8 } else { 4 };
        let mut r = vec![
            worker as u8 | port << 2 | ((f.len() >> 8) as u8) << 5,
            f.len() as u8,
        ];
        r.extend_from_slice(f);
        r
    };
    let seeds = robustness_seeds();
    for policy in [0u8, 1] {
        let mut all = vec![policy];
        for (i, (peer, f)) in seeds.iter().enumerate() {
            all.extend(record(i % 3, peer.port(), f));
        }
        std::fs::write(dir.join(format!("all_policy{policy}")), all).unwrap();
    }
    for (i, (peer, f)) in seeds.iter().enumerate() {
        let mut each = vec![0u8];
        for w in 0..3 {
            each.extend(record(w, peer.port(), f));
        }
        std::fs::write(dir.join(format!("seed{i:02}_on_each_worker")), each).unwrap();
    }
}

/// New flows to a backend, over every service (the table keys by service too).
fn backend_flows_of(pl: &Pipeline, be: (Ipv4Addr, u16)) -> Option<u64> {
    let flows = pl.backend_flows();
    let mut hits = flows
        .iter()
        .filter(|((_, _, ip, port), _)| (*ip, *port) == be)
        .map(|(_, n)| *n);
    let first = hits.next();
    assert!(
        hits.next().is_none(),
        "one service per backend in these tests"
    );
    first
}

// ---------------------------------------------------------------------------
// Several workers: flow steering. A frame may arrive at any worker (a NIC's
// RSS, a veth's queue choice); the one that does not own its flow hands it,
// untouched, to the one that does, which must then never hand it on.
// ---------------------------------------------------------------------------

/// `n` workers' pipelines, with the worker's hand-off done by hand.
struct Mesh {
    pls: Vec<Pipeline>,
    handoffs: u64,
}

impl Mesh {
    fn new(n: u16) -> Mesh {
        let pls = (0..n)
            .map(|i| {
                let mut pl = pipeline();
                pl.set_worker(i, n);
                pl
            })
            .collect();
        Mesh { pls, handoffs: 0 }
    }

    /// One frame from `peer` arriving at worker `at`; returns the output and
    /// the worker that produced it.
    #[track_caller]
    fn send(&mut self, at: usize, now: u64, t: &Tables, peer: Peer, frame: &[u8]) -> (Out, usize) {
        let at = at % self.pls.len();
        let out = one_checked(&mut self.pls[at], now, t, peer.port(), frame);
        let Verdict::Handoff(w) = out.verdict else {
            return (out, at);
        };
        let w = w as usize;
        assert!(w != at && w < self.pls.len(), "hand-off from {at} to {w}");
        self.handoffs += 1;
        let out = one_checked(&mut self.pls[w], now, t, peer.port(), frame);
        assert!(
            !matches!(out.verdict, Verdict::Handoff(_)),
            "worker {w} handed on what {at} gave it: {:?}",
            out.verdict
        );
        (out, w)
    }

    /// The workers holding an entry for `k`.
    fn holders(&self, k: FlowKey) -> Vec<usize> {
        (0..self.pls.len())
            .filter(|&i| entry(&self.pls[i], k).is_some())
            .collect()
    }
}

/// One frame through `pl`; a handed-off frame must be left as it came.
#[track_caller]
fn one_checked(pl: &mut Pipeline, now: u64, t: &Tables, port: PortId, frame: &[u8]) -> Out {
    let mut c = vec![0u8; CHUNK];
    c[RX_OFF..RX_OFF + frame.len()].copy_from_slice(frame);
    let mut pkts = [Packet::new(&mut c, RX_OFF, frame.len(), port)];
    pl.process(now, t, &mut pkts);
    let p = &pkts[0];
    let out = Out {
        verdict: p.verdict,
        off: p.off,
        frame: p.frame().to_vec(),
    };
    if let Verdict::Handoff(_) = out.verdict {
        assert_eq!(
            &c[RX_OFF..RX_OFF + frame.len()],
            frame,
            "a handed-off frame is untouched"
        );
    }
    out
}

#[test]
fn with_several_workers_every_packet_of_a_flow_is_translated_wherever_it_arrives() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    for n in 2..=4u16 {
        let mut mesh = Mesh::new(n);
        // The oracle: one worker, which sees every packet of every flow.
        let mut one = pipeline();
        let mut owners = vec![0usize; n as usize];
        for (client, cip) in [(Peer::P1, P1_IP), (Peer::Host, GATEWAY)] {
            for sport in 40000..40064u16 {
                let csrc = (cip, sport);
                // Maglev is deterministic: a fresh pipeline shows the backend.
                let syn = tcp_from(client, csrc, FRONTEND, SYN, 0x2000, 0, b"");
                let backend = backend_of(&send(&mut pipeline(), T0, &t, client, &syn));
                let peer = Peer::of(backend.0);
                let steps: [(bool, u8, &[u8]); 8] = [
                    (true, SYN, b""),
                    (false, SYN | ACK, b""),
                    (true, ACK, b""),
                    (true, PSH | ACK, b"GET / HTTP/1.1\r\n\r\n"),
                    (false, PSH | ACK, b"HTTP/1.1 200 OK\r\n\r\n"),
                    (true, FIN | ACK, b""),
                    (false, FIN | ACK, b""),
                    (true, ACK, b""),
                ];
                for (i, (from_client, flags, payload)) in steps.into_iter().enumerate() {
                    let (seq, ack) = (0x2000 + i as u32, 0x3000 + i as u32);
                    let (who, f) = if from_client {
                        (
                            client,
                            tcp_from(client, csrc, FRONTEND, flags, seq, ack, payload),
                        )
                    } else {
                        (
                            peer,
                            tcp_from(peer, backend, csrc, flags, seq, ack, payload),
                        )
                    };
                    // Arrives wherever the queue choice puts it.
                    let at = (sport as usize).wrapping_mul(7) + i * 3;
                    let (got, _) = mesh.send(at, T0, &t, who, &f);
                    let want = send(&mut one, T0, &t, who, &f);
                    assert_eq!(got.verdict, want.verdict, "{n} workers, {sport}, step {i}");
                    assert_eq!(got.frame, want.frame, "{n} workers, {sport}, step {i}");
                }
                let holders = mesh.holders(key(TCP, csrc, FRONTEND));
                assert_eq!(holders.len(), 1, "one entry, on one worker: {holders:?}");
                owners[holders[0]] += 1;
            }
        }
        assert!(mesh.handoffs > 0);
        assert!(
            owners.iter().all(|&o| o > 128 / (n as usize * 3)),
            "{n} workers share the flows: {owners:?}"
        );
        let handed: u64 = mesh.pls.iter().map(|p| p.counters().handed_off).sum();
        assert_eq!(handed, mesh.handoffs, "each hand-off counted once");
        // A VXLAN frame handed off is decapsulated (and counted) by its owner only.
        let decap: u64 = mesh.pls.iter().map(|p| p.counters().decapsulated).sum();
        assert!(one.counters().decapsulated > 0);
        assert_eq!(decap, one.counters().decapsulated, "{n} workers");
    }
}

#[test]
fn with_several_workers_node_port_snat_replies_come_back_to_the_flows_worker() {
    for backend in [LOCAL_BE, REMOTE_BE] {
        let t = with_backends(&[ready(backend)]);
        let peer = Peer::of(backend.0);
        let n = 3u16;
        let mut mesh = Mesh::new(n);
        for cport in 50000..50060u16 {
            let csrc = (CLIENT_IP, cport);
            let syn = tcp_from(Peer::Client, csrc, NODE_FRONTEND, SYN, 7, 0, b"");
            let (out, owner) = mesh.send(cport as usize, T0, &t, Peer::Client, &syn);
            let d = delivered(&out);
            assert_to(&d, peer);
            let k = tuple(&d.ip);
            assert_eq!(k.src, GATEWAY, "SNAT to the gateway address");
            assert!((SNAT_PORTS.0..=SNAT_PORTS.1).contains(&k.sport));
            assert_eq!(
                (k.sport - SNAT_PORTS.0) as usize % n as usize,
                owner,
                "the SNAT port names its worker"
            );
            assert_eq!(
                d.ip,
                natted(
                    Peer::Client.ip(&syn),
                    Some((k.src, k.sport)),
                    Some(backend),
                    1
                )
            );
            // The reply arrives at another worker than the SYN did.
            let f = tcp_from(peer, backend, (k.src, k.sport), SYN | ACK, 9, 8, b"");
            let (out, w) = mesh.send(cport as usize + 1, T0, &t, peer, &f);
            assert_eq!(w, owner);
            assert_eq!(out.verdict, Verdict::Tx(UPLINK));
            let (h, _) = Ipv4Header::from_slice(&out.frame[ETH..]).unwrap();
            assert_eq!(out.frame[..6], CLIENT_MAC.0, "straight back to the client");
            let back = tuple(&out.frame[ETH..ETH + h.total_len as usize]);
            assert_eq!(back, key(TCP, NODE_FRONTEND, csrc));
            assert_ipv4_checksum(&out.frame[ETH..]);
            assert_l4_checksum(&out.frame[ETH..]);
        }
        assert!(
            mesh.handoffs >= 40,
            "replies handed over: {}",
            mesh.handoffs
        );
    }
}

#[test]
fn with_several_workers_client_ip_affinity_holds_for_all_of_a_clients_flows() {
    let timeout = 10800 * SEC;
    let (both, _, other) = hashed_and_other(timeout);
    let only_other = affinity_tables(&[ready(other)], timeout);
    let mut mesh = Mesh::new(4);
    let f = tcp_from(Peer::P1, (P1_IP, 30001), FRONTEND, SYN, 1, 0, b"");
    let (out, owner) = mesh.send(0, T0, &only_other, Peer::P1, &f);
    assert_eq!(backend_of(&out), other);
    // `hashed` is ready again: every new flow of p1, from any port and
    // arriving at any worker, still goes to `other` (one worker's affinity
    // table decides for the client).
    for sport in 30002..30100u16 {
        let f = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 1, 0, b"");
        let (out, w) = mesh.send(sport as usize, T0 + SEC, &both, Peer::P1, &f);
        assert_eq!((backend_of(&out), w), (other, owner), "port {sport}");
    }
    assert!(mesh.handoffs > 0);
}

#[test]
fn with_several_workers_an_icmp_error_about_a_flow_reaches_its_worker() {
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut mesh = Mesh::new(2);
    for sport in 40000..40040u16 {
        let syn = tcp_from(Peer::P1, (P1_IP, sport), FRONTEND, SYN, 0x1000, 0, b"");
        let (out, owner) = mesh.send(sport as usize, T0, &t, Peer::P1, &syn);
        let d = delivered(&out);
        // n2 reports the DNATed SYN expired; it arrives at either worker.
        let err = icmp_error_datagram(REMOTE_GATEWAY, P1_IP, 11, 0, &d.ip[..28]);
        let (out, w) = mesh.send(
            sport as usize / 3,
            T0,
            &t,
            Peer::Remote,
            &Peer::Remote.frame(&err),
        );
        assert_eq!((out.verdict, w), (Verdict::Tx(P1_PORT), owner));
        let e = parse_icmp_error(&out.frame);
        let (q, _) = quoted_tuple(&e.quote);
        assert_eq!(
            q,
            key(TCP, (P1_IP, sport), FRONTEND),
            "quoted as p1 sent it"
        );
    }
    assert!(mesh.handoffs >= 10, "{}", mesh.handoffs);
    // And about replies: p1 refuses the backend's answer, from either worker.
    let before = mesh.handoffs;
    for sport in 41000..41040u16 {
        let q = udp_from(Peer::P1, (P1_IP, sport), FRONTEND, b"query");
        let (_, owner) = mesh.send(sport as usize, T0, &t, Peer::P1, &q);
        let a = udp_from(Peer::Remote, REMOTE_BE, (P1_IP, sport), b"answer");
        let (out, w) = mesh.send(sport as usize / 5, T0, &t, Peer::Remote, &a);
        assert_eq!(w, owner);
        let d = delivered(&out);
        let err = icmp_error_datagram(P1_IP, CLUSTER_IP, 3, 3, &d.ip[..28]);
        let (out, w) = mesh.send(sport as usize / 3, T0, &t, Peer::P1, &Peer::P1.frame(&err));
        assert_eq!(w, owner);
        let (qk, _) = quoted_tuple(&parse_icmp_error(inner_frame(&out)).quote);
        assert_eq!(qk, key(UDP, REMOTE_BE, (P1_IP, sport)));
    }
    assert!(mesh.handoffs >= before + 20, "{}", mesh.handoffs);
}

#[test]
fn with_several_workers_traffic_of_no_service_flow_is_never_handed_off() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut mesh = Mesh::new(4);
    for at in 0..4 {
        for sport in 1000..1040u16 {
            for (peer, src, dst) in [
                (Peer::P1, (P1_IP, sport), (P2_IP, 9000)),
                (Peer::P2, (P2_IP, 9000), (P1_IP, sport)),
                (Peer::P1, (P1_IP, sport), (REMOTE_POD_IP, 9000)),
                (Peer::Remote, (REMOTE_POD_IP, 9000), (P1_IP, sport)),
            ] {
                let f = udp_from(peer, src, dst, b"direct");
                let (out, w) = mesh.send(at, T0, &t, peer, &f);
                assert_eq!(w, at);
                assert!(matches!(out.verdict, Verdict::Tx(_)), "{:?}", out.verdict);
            }
        }
    }
    assert_eq!(mesh.handoffs, 0);
}

// ---------------------------------------------------------------------------
// TX checksum offload: partial checksums from pods and the host
// ---------------------------------------------------------------------------

/// `frame` (from `peer`, TCP or UDP) as a stack with TX checksum offload
/// sends it: the checksum field holds the folded pseudo-header sum.
fn with_partial_checksum(peer: Peer, frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let ip = f.len() - peer.ip(frame).len();
    let (h, _) = Ipv4Header::from_slice(&f[ip..]).unwrap();
    let l4_len = h.total_len as u32 - 20;
    let word = |b: [u8; 4]| {
        u32::from(u16::from_be_bytes([b[0], b[1]])) + u32::from(u16::from_be_bytes([b[2], b[3]]))
    };
    let mut sum = word(h.source) + word(h.destination) + u32::from(h.protocol.0) + l4_len;
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    let at = ip + 20 + if h.protocol == IpNumber::TCP { 16 } else { 6 };
    f[at..at + 2].copy_from_slice(&(sum as u16).to_be_bytes());
    f
}

#[test]
fn partial_checksums_from_pods_and_the_host_are_completed() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let cases = [
        (
            Peer::P1,
            tcp_from(Peer::P1, (P1_IP, 40000), FRONTEND, SYN, 1, 0, b""),
        ),
        (
            Peer::P1,
            tcp_from(Peer::P1, (P1_IP, 40001), FRONTEND, SYN, 1, 0, b""),
        ),
        (
            Peer::Host,
            udp_from(Peer::Host, (GATEWAY, 40002), FRONTEND, b"from the node"),
        ),
        (
            Peer::P1,
            udp_from(Peer::P1, (P1_IP, 40003), (P2_IP, 9000), b"pod to pod, odd"),
        ),
        (
            Peer::P1,
            tcp_from(
                Peer::P1,
                (P1_IP, 40004),
                (REMOTE_POD_IP, 9000),
                ACK,
                5,
                6,
                b"to n2",
            ),
        ),
    ];
    for (peer, full) in cases {
        let partial = with_partial_checksum(peer, &full);
        assert_ne!(partial, full);
        // The same output as for the fully checksummed frame, byte for byte
        // (`delivered` also verifies the checksum from scratch).
        let want = delivered(&send(&mut pipeline(), T0, &t, peer, &full));
        let got = delivered(&send(&mut pipeline(), T0, &t, peer, &partial));
        assert_eq!((got.port, &got.ip), (want.port, &want.ip), "{peer:?}");
    }
    // UDP without a checksum (0) stays without one.
    let mut none = udp_from(Peer::P1, (P1_IP, 40005), (P2_IP, 9000), b"no checksum");
    let at = ETH + 20 + 6;
    none[at..at + 2].fill(0);
    let out = send(&mut pipeline(), T0, &t, Peer::P1, &none);
    assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
    assert_eq!(&out.frame[at..at + 2], &[0, 0]);
}

/// An outside client on a veth of this host with TX checksum offload: its
/// NodePort frames are completed as pods' are, by the walk and by the flow
/// cache, so the backend gets the same bytes as from a client without it.
#[test]
fn partial_checksums_from_outside_clients_are_completed() {
    for backend in [LOCAL_BE, REMOTE_BE] {
        let t = with_backends(&[ready(backend)]);
        let peer = Peer::of(backend.0);
        let (mut whole, mut offloaded) = (pipeline(), pipeline());
        let csrc = (CLIENT_IP, 50000);
        let steps: [(u8, &[u8]); 4] = [(SYN, b""), (ACK, b"x"), (PSH | ACK, b"odd"), (ACK, b"yz")];
        for (i, (flags, payload)) in steps.into_iter().enumerate() {
            let full = tcp_from(
                Peer::Client,
                csrc,
                NODE_FRONTEND,
                flags,
                1 + i as u32,
                7,
                payload,
            );
            let partial = with_partial_checksum(Peer::Client, &full);
            assert_ne!(partial, full);
            let want = delivered(&send(&mut whole, T0, &t, Peer::Client, &full));
            let got = delivered(&send(&mut offloaded, T0, &t, Peer::Client, &partial));
            assert_eq!((got.port, &got.ip), (want.port, &want.ip), "step {i}");
            if i == 0 {
                let k = tuple(&want.ip);
                let synack = tcp_from(peer, backend, (k.src, k.sport), SYN | ACK, 9, 2, b"");
                for pl in [&mut whole, &mut offloaded] {
                    assert_eq!(send(pl, T0, &t, peer, &synack).verdict, Verdict::Tx(UPLINK));
                }
            }
        }
        let full = udp_from(Peer::Client, (CLIENT_IP, 50001), NODE_FRONTEND, b"udp, odd");
        let partial = with_partial_checksum(Peer::Client, &full);
        let want = delivered(&send(&mut whole, T0, &t, Peer::Client, &full));
        let got = delivered(&send(&mut offloaded, T0, &t, Peer::Client, &partial));
        assert_eq!((got.port, &got.ip), (want.port, &want.ip), "udp");
        assert!(
            offloaded.counters().flow_cache_hits > 0,
            "the cache saw some"
        );
        assert_eq!(total_drops(offloaded.counters()), 0);
    }
}

// ---------------------------------------------------------------------------
// The flow cache (fast.rs). Every batch of every test here also runs through
// a twin pipeline without the cache (`Pipeline::process` in test builds),
// which must decide and write the same; these tests make sure the cache is
// used, and cover what could make it stale.
// ---------------------------------------------------------------------------

#[test]
fn established_flows_in_both_directions_take_the_flow_cache() {
    for backend in [LOCAL_BE, REMOTE_BE] {
        let t = with_backends(&[ready(backend)]);
        let mut pl = pipeline();
        let csrc = (P1_IP, 42000);
        let peer = Peer::of(backend.0);
        send(
            &mut pl,
            T0,
            &t,
            Peer::P1,
            &tcp_from(Peer::P1, csrc, FRONTEND, SYN, 1, 0, b""),
        );
        send(
            &mut pl,
            T0,
            &t,
            peer,
            &tcp_from(peer, backend, csrc, SYN | ACK, 1, 2, b""),
        );
        let before = pl.counters().flow_cache_hits;
        for i in 0..20u32 {
            let f = tcp_from(Peer::P1, csrc, FRONTEND, ACK, 2 + i, 2, b"data");
            let d = delivered(&send(&mut pl, T0 + u64::from(i), &t, Peer::P1, &f));
            assert_to(&d, peer);
            assert_eq!(d.ip, natted(Peer::P1.ip(&f), None, Some(backend), 1));
            // The backend's replies too: from its pod, or decapsulated.
            let r = tcp_from(peer, backend, csrc, ACK, 2, 3 + i, b"reply");
            let d = delivered(&send(&mut pl, T0 + u64::from(i), &t, peer, &r));
            assert_to(&d, Peer::P1);
            assert_eq!(d.ip, natted(peer.ip(&r), Some(FRONTEND), None, 1));
        }
        // The first ACK of each direction takes the walk and teaches the cache.
        assert_eq!(
            pl.counters().flow_cache_hits - before,
            2 * 19,
            "{backend:?}"
        );
        assert_eq!(
            tcp_state(&pl, key(TCP, csrc, FRONTEND)),
            TcpState::Established
        );
        // A FIN is not for the cache: it moves the state.
        let fin = tcp_from(Peer::P1, csrc, FRONTEND, FIN | ACK, 30, 2, b"");
        let hits = pl.counters().flow_cache_hits;
        send(&mut pl, T0 + 30, &t, Peer::P1, &fin);
        assert_eq!(pl.counters().flow_cache_hits, hits);
        assert_eq!(tcp_state(&pl, key(TCP, csrc, FRONTEND)), TcpState::FinWait);
    }
}

#[test]
fn a_plainly_routed_flow_that_becomes_a_service_reply_is_translated() {
    // p2 (the backend) talks to p1:5555 directly; the cache learns that
    // route. Then p1 opens a UDP flow from 5555 to the service: p2's next
    // datagram to p1:5555 is that flow's reply and must come from the
    // frontend, not be routed as learnt.
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let direct = udp_from(Peer::P2, LOCAL_BE, (P1_IP, 5555), b"direct");
    for _ in 0..3 {
        let d = delivered(&send(&mut pl, T0, &t, Peer::P2, &direct));
        assert_eq!(d.ip, natted(Peer::P2.ip(&direct), None, None, 1));
    }
    assert_eq!(pl.counters().flow_cache_hits, 2);
    let req = udp_from(Peer::P1, (P1_IP, 5555), FRONTEND, b"request");
    let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &req));
    assert_to(&d, Peer::P2);
    let d = delivered(&send(&mut pl, T0, &t, Peer::P2, &direct));
    assert_to(&d, Peer::P1);
    assert_eq!(d.ip, natted(Peer::P2.ip(&direct), Some(FRONTEND), None, 1));
}

#[test]
fn a_new_table_snapshot_is_not_served_from_the_flow_cache() {
    // A UDP flow to a remote backend, cached; the next snapshot has only
    // the local backend: the flow's next datagram is re-balanced to it.
    let t1 = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let req = udp_from(Peer::P1, (P1_IP, 6000), FRONTEND, b"q");
    for _ in 0..3 {
        assert_to(
            &delivered(&send(&mut pl, T0, &t1, Peer::P1, &req)),
            Peer::Remote,
        );
    }
    assert_eq!(pl.counters().flow_cache_hits, 1);
    let t2 = with_backends(&[ready(LOCAL_BE)]);
    let d = delivered(&send(&mut pl, T0, &t2, Peer::P1, &req));
    assert_to(&d, Peer::P2);
    assert_eq!(pl.counters().flow_cache_hits, 1);
}

#[test]
fn an_expired_entry_is_not_served_from_the_flow_cache() {
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let req = udp_from(Peer::P1, (P1_IP, 6001), FRONTEND, b"q");
    for _ in 0..3 {
        send(&mut pl, T0, &t, Peer::P1, &req);
    }
    let udp = pl.conntrack().timeouts().udp_ns;
    let inserts = pl.conntrack().stats().inserts;
    // Past the UDP timeout the entry is dead: the datagram opens a new flow.
    send(&mut pl, T0 + udp + 1, &t, Peer::P1, &req);
    assert_eq!(pl.conntrack().stats().inserts, inserts + 1);
}

#[test]
fn mutated_frames_of_cached_flows_get_what_the_walk_gives_them() {
    // Flows of every cached kind are established in one snapshot; then
    // 20,000 frames of them, unchanged or with a few bytes changed (in the
    // outer and inner headers mostly), go through the same pipeline. The
    // twin without the cache (`Pipeline::process` in test builds) must
    // decide and write the same for every one: a check the fast path
    // forgot would show here.
    const CHUNK: usize = 2048;
    let t = with_backends(&[ready(REMOTE_BE)]);
    let mut pl = pipeline();
    let csrc = (P1_IP, 43000);
    send(
        &mut pl,
        T0,
        &t,
        Peer::P1,
        &tcp_from(Peer::P1, csrc, FRONTEND, SYN, 1, 0, b""),
    );
    let synack = tcp_from(Peer::Remote, REMOTE_BE, csrc, SYN | ACK, 1, 2, b"");
    send(&mut pl, T0, &t, Peer::Remote, &synack);
    let ack = tcp_from(Peer::P1, csrc, FRONTEND, ACK, 2, 2, b"data");
    send(&mut pl, T0, &t, Peer::P1, &ack);
    let client = udp_from(Peer::Client, (CLIENT_IP, 50001), NODE_FRONTEND, b"q");
    let d = delivered(&send(&mut pl, T0, &t, Peer::Client, &client));
    let snat = tuple(&d.ip);
    let seeds: Vec<(Peer, Vec<u8>)> = vec![
        (Peer::P1, ack),
        (
            Peer::Remote,
            tcp_from(Peer::Remote, REMOTE_BE, csrc, ACK, 2, 6, b"reply"),
        ),
        (
            Peer::P1,
            udp_from(Peer::P1, (P1_IP, 7000), (P2_IP, 7001), b"local"),
        ),
        (
            Peer::P1,
            udp_from(Peer::P1, (P1_IP, 7002), (REMOTE_POD_IP, 7003), b"away"),
        ),
        (
            Peer::Remote,
            udp_from(Peer::Remote, (REMOTE_POD_IP, 7004), (P1_IP, 7005), b"in"),
        ),
        (Peer::Client, client),
        (
            Peer::Remote,
            udp_from(
                Peer::Remote,
                REMOTE_BE,
                (snat.src, snat.sport),
                b"nodeport reply",
            ),
        ),
    ];
    let mut rng = crate::wire::vectors::XorShift(0x6b78_6470_0000_0006);
    let mut now = T0;
    let mut frames = 0;
    let mut chunks: Vec<Vec<u8>> = (0..BATCH_SIZE).map(|_| vec![0u8; CHUNK]).collect();
    while frames < 20_000 {
        let n = 1 + rng.below(BATCH_SIZE);
        let mut meta = Vec::with_capacity(n);
        for c in chunks.iter_mut().take(n) {
            let (peer, s) = &seeds[rng.below(seeds.len())];
            let f = &mut c[RX_OFF..RX_OFF + s.len()];
            f.copy_from_slice(s);
            // Half unchanged (cache hits); the rest with 1-3 bytes changed
            // in the first 80 bytes (all headers, outer and inner).
            if rng.below(2) == 0 {
                for _ in 0..1 + rng.below(3) {
                    let i = rng.below(f.len().min(80));
                    f[i] = mutated(
                        &mut rng,
                        f[i],
                        &[0, 1, 2, 0x10, 0x12, 0x14, 0x20, 0x45, 0xff],
                    );
                }
                // Often with checksums made right again, so the change
                // gets past the header check.
                let ip = if *peer == Peer::Remote { INNER_IP } else { ETH };
                if rng.below(3) != 0 {
                    super::tests::fix_l4_checksum(f, ip);
                    super::tests::fix_ipv4_checksum(f, ip);
                    if ip != ETH {
                        super::tests::fix_ipv4_checksum(f, ETH);
                    }
                }
            }
            let len = if rng.below(16) == 0 {
                rng.below(s.len() + 1)
            } else {
                s.len()
            };
            meta.push((peer.port(), len));
        }
        let mut pkts = packets(&mut chunks, &meta);
        now += rng.below(MS as usize) as u64;
        pl.process(now, &t, &mut pkts);
        frames += n;
    }
    let c = pl.counters();
    assert!(c.flow_cache_hits > 5_000, "{c:?}");
    assert!(super::tests::total_drops(c) > 1_000, "{c:?}");
}

// ---------------------------------------------------------------------------
// Fragments: routed as a router routes them; those of translated flows get
// their first fragment's translation (`frag.rs`).
// ---------------------------------------------------------------------------

/// Payload bytes per fragment in these tests: a 3,000-byte UDP payload
/// makes three fragments, each within the pod MTU.
const FRAG_PAYLOAD: usize = 1400;

/// Sets the checksum of the 20-byte IPv4 header `d` starts with (RFC 1071
/// reference, not `wire::checksum`).
fn set_ipv4_checksum(d: &mut [u8]) {
    d[10..12].fill(0);
    let c = rfc1071(&d[..20]);
    d[10..12].copy_from_slice(&c.to_be_bytes());
}

/// A UDP datagram of `len` payload bytes with IP id `id`.
fn big_datagram(
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    id: u16,
    len: usize,
) -> Vec<u8> {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 + usize::from(id)) as u8).collect();
    let mut d = udp_datagram(src, dst, ttl, &payload);
    d[4..6].copy_from_slice(&id.to_be_bytes());
    set_ipv4_checksum(&mut d);
    d
}

/// `datagram` cut as a sender's IP layer cuts it: fragments of at most
/// [`FRAG_PAYLOAD`] bytes, MF on all but the last, offsets in 8-byte units,
/// DF clear, each header checksum computed afresh.
fn fragments(datagram: &[u8]) -> Vec<Vec<u8>> {
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let payload = &datagram[20..total];
    payload
        .chunks(FRAG_PAYLOAD)
        .enumerate()
        .map(|(i, piece)| {
            let off = i * FRAG_PAYLOAD;
            let mf = off + piece.len() < payload.len();
            let mut f = datagram[..20].to_vec();
            f[2..4].copy_from_slice(&((20 + piece.len()) as u16).to_be_bytes());
            let flags = if mf { 0x2000 } else { 0 } | (off / 8) as u16;
            f[6..8].copy_from_slice(&flags.to_be_bytes());
            set_ipv4_checksum(&mut f);
            f.extend_from_slice(piece);
            f
        })
        .collect()
}

/// Reassembles IPv4 fragments as a receiver does (any order), checking
/// that they belong together and leave no hole; the whole datagram's
/// header and transport checksums are then verified from scratch.
#[track_caller]
fn reassembled(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut sorted: Vec<&Vec<u8>> = frags.iter().collect();
    let offset = |f: &[u8]| usize::from(u16::from_be_bytes([f[6], f[7]]) & 0x1fff) * 8;
    sorted.sort_by_key(|f| offset(f));
    let head = sorted[0];
    let mut payload = Vec::new();
    for (i, f) in sorted.iter().enumerate() {
        assert_ipv4_checksum(f);
        assert_eq!(f[4..6], head[4..6], "one IP id");
        assert_eq!(f[9], head[9], "one protocol");
        assert_eq!(f[12..20], head[12..20], "one source and destination");
        assert_eq!(offset(f), payload.len(), "no hole, no overlap");
        let mf = f[6] & 0x20 != 0;
        assert_eq!(mf, i + 1 < sorted.len(), "MF on all but the last");
        payload.extend_from_slice(&f[20..]);
    }
    let mut d = head[..20].to_vec();
    d[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    d[6..8].fill(0);
    set_ipv4_checksum(&mut d);
    d.extend_from_slice(&payload);
    assert_ipv4_checksum(&d);
    assert_l4_checksum(&d);
    d
}

/// Sends every fragment of `datagram` from `from` (in `order`) and returns
/// what came out, checked towards `to`; the reassembled datagram.
#[track_caller]
fn through(
    pl: &mut Pipeline,
    now: u64,
    t: &Tables,
    from: Peer,
    to: Peer,
    datagram: &[u8],
    order: &[usize],
) -> Vec<u8> {
    let frags = fragments(datagram);
    assert_eq!(frags.len(), order.len());
    let outs: Vec<Vec<u8>> = order
        .iter()
        .map(|&i| {
            let d = delivered(&send(pl, now, t, from, &from.frame(&frags[i])));
            assert_to(&d, to);
            d.ip
        })
        .collect();
    reassembled(&outs)
}

/// A datagram with TTL one less and new addresses (and ports), as the
/// receiver reassembles it after NAT: `natted` without the DF bit the
/// fragments lost.
fn natted_whole(
    datagram: &[u8],
    src: Option<(Ipv4Addr, u16)>,
    dst: Option<(Ipv4Addr, u16)>,
) -> Vec<u8> {
    let mut d = datagram.to_vec();
    d[6..8].fill(0);
    set_ipv4_checksum(&mut d);
    natted(&d, src, dst, 1)
}

#[test]
fn plainly_routed_fragments_go_where_their_datagram_goes() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    // To a pod on this node: each fragment exactly as a router forwards it.
    let d = big_datagram((P1_IP, 7000), (P2_IP, 7001), 64, 0x1001, 3000);
    for f in fragments(&d) {
        let frame = Peer::P1.frame(&f);
        let out = send(&mut pl, T0, &t, Peer::P1, &frame);
        assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
        assert_eq!(
            out.frame,
            super::tests::forwarded(&frame, P2_MAC, PORT2_MAC)
        );
    }
    // To another node, all with one VXLAN source port (one queue there).
    let d = big_datagram((P1_IP, 7002), (REMOTE_POD_IP, 7003), 64, 0x1002, 3000);
    let mut sports = Vec::new();
    let mut inner = Vec::new();
    for f in fragments(&d) {
        let out = send(&mut pl, T0, &t, Peer::P1, &Peer::P1.frame(&f));
        let e = parse_encapped(&out.frame);
        sports.push(e.outer_src_port);
        inner.push(e.inner[ETH..].to_vec());
    }
    sports.dedup();
    assert_eq!(sports.len(), 1, "one outer source port: {sports:?}");
    assert_eq!(reassembled(&inner), natted_whole(&d, None, None));
    // From another node, decapsulated to the pod, in any order.
    let d = big_datagram((REMOTE_POD_IP, 7004), (P1_IP, 7005), 63, 0x1003, 3000);
    let got = through(&mut pl, T0, &t, Peer::Remote, Peer::P1, &d, &[2, 0, 1]);
    assert_eq!(got, natted_whole(&d, None, None));
    let c = pl.counters();
    assert_eq!((c.routed_local, c.encapsulated, c.decapsulated), (6, 3, 3));
    assert_eq!((c.fragments_translated, total_drops(c)), (0, 0), "{c:?}");
    assert!(pl.conntrack().is_empty());
}

#[test]
fn later_fragments_get_no_icmp_errors_and_too_big_ones_are_dropped() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    // No route: the first fragment draws the error, the others never do.
    let nowhere = Ipv4Addr::new(10, 244, 99, 1);
    let d = big_datagram((P1_IP, 7000), (nowhere, 7001), 64, 0x2001, 3000);
    let frags = fragments(&d);
    let out = send(&mut pl, T0, &t, Peer::P1, &Peer::P1.frame(&frags[0]));
    let e = parse_icmp_error(&out.frame);
    assert_eq!((e.ty, e.code, e.ip_dst), (3, 1, P1_IP));
    for f in &frags[1..] {
        let out = send(&mut pl, T0, &t, Peer::P1, &Peer::P1.frame(f));
        assert_eq!(out.verdict, Verdict::Drop(DropReason::NoRoute));
    }
    assert_eq!(pl.counters().icmp_errors_sent, 1);
    // A fragment over the pod MTU without DF: dropped as any datagram.
    let big = fragments(&big_datagram(
        (P1_IP, 7000),
        (REMOTE_POD_IP, 7001),
        64,
        0x2002,
        1500,
    ));
    let mut f = big[0].clone();
    let extra = usize::from(super::tests::POD_MTU) + 10 - f.len();
    f.extend(std::iter::repeat_n(0x5a, extra));
    let len = f.len() as u16;
    f[2..4].copy_from_slice(&len.to_be_bytes());
    set_ipv4_checksum(&mut f);
    let out = send(&mut pl, T0, &t, Peer::P1, &Peer::P1.frame(&f));
    assert_eq!(out.verdict, Verdict::Drop(DropReason::TooBig));
}

/// A 3-fragment UDP datagram from p1 through the ClusterIP to `backend`
/// (`to`), and a 3-fragment reply back, both checked whole after
/// reassembly against what NAT must make of them.
fn fragmented_exchange(backend: (Ipv4Addr, u16), to: Peer) {
    let t = with_backends(&[ready(backend)]);
    let mut pl = pipeline();
    let csrc = (P1_IP, 40100);
    let req = big_datagram(csrc, FRONTEND, 64, 0x3001, 3000);
    let got = through(&mut pl, T0, &t, Peer::P1, to, &req, &[0, 1, 2]);
    assert_eq!(got, natted_whole(&req, None, Some(backend)));
    let reply = big_datagram(backend, csrc, to.ttl(), 0x3002, 3000);
    let got = through(&mut pl, T0, &t, to, Peer::P1, &reply, &[0, 1, 2]);
    assert_eq!(got, natted_whole(&reply, Some(FRONTEND), None));
    let c = pl.counters();
    assert_eq!(c.fragments_translated, 4, "two later fragments each way");
    assert_eq!(total_drops(c), 0, "{c:?}");
    assert_eq!(pl.service_counters()[WEB].new_flows, 1);
}

#[test]
fn a_fragmented_datagram_through_a_cluster_ip_to_a_local_backend_and_back() {
    fragmented_exchange(LOCAL_BE, Peer::P2);
}

#[test]
fn a_fragmented_datagram_through_a_cluster_ip_to_a_remote_backend_and_back() {
    fragmented_exchange(REMOTE_BE, Peer::Remote);
}

#[test]
fn a_fragmented_node_port_datagram_and_its_reply_to_the_outside_client() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let csrc = (CLIENT_IP, 50100);
    let req = big_datagram(csrc, NODE_FRONTEND, 64, 0x4001, 3000);
    let frags = fragments(&req);
    let mut outs = Vec::new();
    for f in &frags {
        let d = delivered(&send(&mut pl, T0, &t, Peer::Client, &Peer::Client.frame(f)));
        assert_to(&d, Peer::P2);
        outs.push(d.ip);
    }
    let got = reassembled(&outs);
    let k = tuple(&got);
    let snat = (GATEWAY, k.sport);
    assert_eq!(got, natted_whole(&req, Some(snat), Some(LOCAL_BE)));
    // The reply's fragments go straight back out the uplink to the client.
    let reply = big_datagram(LOCAL_BE, snat, 64, 0x4002, 3000);
    let got = through(&mut pl, T0, &t, Peer::P2, Peer::Client, &reply, &[0, 1, 2]);
    assert_eq!(got, natted_whole(&reply, Some(NODE_FRONTEND), Some(csrc)));
    assert_eq!(pl.counters().fragments_translated, 4);
}

#[test]
fn the_node_kernels_own_later_fragments_reach_it_through_the_host_port() {
    // The XDP program sends every later UDP fragment to the node's address
    // here; the kernel got the first one itself.
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let d = big_datagram((CLIENT_IP, 53), (UNDERLAY_IP, 41000), 64, 0x5001, 3000);
    let frags = fragments(&d);
    for f in &frags[1..] {
        let frame = Peer::Client.frame(f);
        let out = send(&mut pl, T0, &t, Peer::Client, &frame);
        assert_eq!(out.verdict, Verdict::Tx(HOST_PORT));
        // Not a router hop: only the MACs change.
        let mut want = frame.clone();
        want[..6].copy_from_slice(&HOST_PEER_MAC.0);
        want[6..12].copy_from_slice(&HOST_PORT_MAC.0);
        assert_eq!(out.frame, want);
    }
    let c = pl.counters();
    assert_eq!(
        (c.fragments_to_host, c.routed_local, total_drops(c)),
        (2, 2, 0)
    );
}

#[test]
fn later_fragments_before_their_first_are_dropped_and_counted() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    let req = big_datagram((P1_IP, 40200), FRONTEND, 64, 0x6001, 3000);
    let frags = fragments(&req);
    let out = send(&mut pl, T0, &t, Peer::P1, &Peer::P1.frame(&frags[1]));
    assert_eq!(out.verdict, Verdict::Drop(DropReason::FragmentWithoutFirst));
    // The first and the last still go (the backend cannot complete it).
    for f in [&frags[0], &frags[2]] {
        let d = delivered(&send(&mut pl, T0, &t, Peer::P1, &Peer::P1.frame(f)));
        assert_to(&d, Peer::P2);
        assert_eq!(d.ip[16..20], P2_IP.octets(), "translated");
    }
    let c = pl.counters();
    assert_eq!(c.drop_count(DropReason::FragmentWithoutFirst), 1);
    assert_eq!((c.fragments_translated, c.icmp_errors_sent), (1, 0));
}

#[test]
fn fragment_entries_expire() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let run = |gap: u64, order: [usize; 3]| {
        let mut pl = pipeline();
        let req = big_datagram((P1_IP, 40300), FRONTEND, 64, 0x7001, 3000);
        let frags = fragments(&req);
        let mut now = T0;
        let verdicts: Vec<Verdict> = order
            .iter()
            .map(|&i| {
                let v = send(&mut pl, now, &t, Peer::P1, &Peer::P1.frame(&frags[i])).verdict;
                now += gap;
                v
            })
            .collect();
        verdicts
    };
    let without = Verdict::Drop(DropReason::FragmentWithoutFirst);
    let to_p2 = Verdict::Tx(P2_PORT);
    // Within the timeout; past it.
    assert_eq!(run(FRAG_TIMEOUT_NS / 2 - 1, [0, 1, 2]), [to_p2; 3]);
    assert_eq!(run(FRAG_TIMEOUT_NS, [0, 1, 2]), [to_p2, without, without]);
    // After the last fragment, a middle one it overtook has a little while.
    assert_eq!(run(FRAG_DONE_NS - 1, [0, 2, 1]), [to_p2; 3]);
    assert_eq!(run(FRAG_DONE_NS, [0, 2, 1]), [to_p2, to_p2, without]);
}

#[test]
fn a_full_fragment_table_gives_up_its_oldest_datagram() {
    let t = with_backends(&[ready(LOCAL_BE)]);
    let mut pl = pipeline();
    // One set of four: five datagrams in flight.
    pl.set_fragment_table(4);
    let reqs: Vec<Vec<Vec<u8>>> = (0..5u16)
        .map(|i| {
            fragments(&big_datagram(
                (P1_IP, 40400),
                FRONTEND,
                64,
                0x8000 + i,
                3000,
            ))
        })
        .collect();
    for (i, f) in reqs.iter().enumerate() {
        let out = send(&mut pl, T0 + i as u64, &t, Peer::P1, &Peer::P1.frame(&f[0]));
        assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
    }
    assert_eq!(pl.counters().fragments_evicted, 1);
    let now = T0 + 10;
    let out = send(&mut pl, now, &t, Peer::P1, &Peer::P1.frame(&reqs[0][1]));
    assert_eq!(out.verdict, Verdict::Drop(DropReason::FragmentWithoutFirst));
    for f in &reqs[1..] {
        let out = send(&mut pl, now, &t, Peer::P1, &Peer::P1.frame(&f[1]));
        assert_eq!(out.verdict, Verdict::Tx(P2_PORT));
    }
    assert_eq!(pl.counters().fragments_translated, 4);
}

#[test]
fn with_several_workers_later_fragments_follow_their_first_to_its_worker() {
    let t = with_backends(&[ready(LOCAL_BE), ready(REMOTE_BE)]);
    let mut mesh = Mesh::new(2);
    let mut one = pipeline();
    let mut handed = 0;
    for sport in 40500..40516u16 {
        let req = big_datagram((P1_IP, sport), FRONTEND, 64, sport, 3000);
        let frags = fragments(&req);
        let before = mesh.handoffs;
        let mut outs = Vec::new();
        for f in &frags {
            // All of a datagram arrive on one queue (worker 0 here).
            let frame = Peer::P1.frame(f);
            let (got, _) = mesh.send(0, T0, &t, Peer::P1, &frame);
            let want = send(&mut one, T0, &t, Peer::P1, &frame);
            assert_eq!((got.verdict, &got.frame), (want.verdict, &want.frame));
            outs.push(delivered(&got).ip);
        }
        let whole = reassembled(&outs);
        let backend = (tuple(&whole).dst, tuple(&whole).dport);
        assert_eq!(whole, natted_whole(&req, None, Some(backend)));
        match mesh.handoffs - before {
            0 => {}
            3 => handed += 1,
            n => panic!("{n} of a datagram's 3 fragments handed off"),
        }
    }
    assert!(handed > 0 && handed < 16, "{handed} datagrams handed off");
}
