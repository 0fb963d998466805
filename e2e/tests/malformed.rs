//! Frames the dataplane must refuse are dropped and counted by reason, while
//! good traffic keeps flowing and the dataplane keeps running.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::thread;

use kxdp_e2e::{
    check_tcp, fix_ipv4_checksum, in_netns, inject_frames, neighbour_mac, require_root, udp_frame,
    Lab, LabOpts,
};

const COPIES: usize = 5;

/// The pod's frames, by the drop reason each must be counted under.
fn pod_frames(
    src_mac: [u8; 6],
    gw_mac: [u8; 6],
    src: Ipv4Addr,
    remote: Ipv4Addr,
    local: Ipv4Addr,
) -> Vec<(&'static str, Vec<u8>)> {
    let good = |dst: Ipv4Addr| udp_frame(src_mac, gw_mac, src, dst, (40000, 9), &[0x5a; 32]);
    let mut cases = Vec::new();

    // IPv4 header cut after 10 bytes.
    cases.push(("ipv4_truncated", good(remote)[..14 + 10].to_vec()));

    // IHL 4 (16 bytes): shorter than the fixed header.
    let mut f = good(remote);
    f[14] = 0x44;
    fix_ipv4_checksum(&mut f);
    cases.push(("ipv4_bad_ihl", f));

    // IHL 6: four bytes of options (NOP NOP NOP EOL).
    let mut f = good(remote);
    f.splice(34..34, [1, 1, 1, 0]);
    f[14] = 0x46;
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    cases.push(("ipv4_options", f));

    // Fragments are forwarded, but not a TCP first fragment without the
    // whole TCP header (RFC 1858), nor one reaching past 65,535 bytes.
    let mut f = good(remote);
    f[20] = 0x20;
    f[21] = 0;
    f[23] = 6;
    f[16..18].copy_from_slice(&(20u16 + 12).to_be_bytes());
    f.truncate(14 + 32);
    fix_ipv4_checksum(&mut f);
    cases.push(("fragment_malformed", f));
    let mut f = good(remote);
    f[20..22].copy_from_slice(&0x1ffeu16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    cases.push(("fragment_malformed", f));

    // Wrong header checksum.
    let mut f = good(remote);
    f[24] ^= 0xff;
    cases.push(("ipv4_bad_checksum", f));

    // A destination in the cluster CIDR but in no node's pod CIDR (outside
    // the cluster is egress now: the lab's nodes have a default route).
    cases.push(("no_route", good(Ipv4Addr::new(10, 244, 99, 1))));

    // TTL 1 to a pod on the same node: it would reach 0 on the way.
    let mut f = good(local);
    f[22] = 1;
    fix_ipv4_checksum(&mut f);
    cases.push(("ttl_exceeded", f));

    // Not IPv4, not ARP (IEEE local experimental ethertype).
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&gw_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    cases.push(("unsupported_ethertype", f));
    cases
}

#[test]
fn malformed_frames_are_dropped_by_reason_and_good_traffic_flows() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    // Resolve the gateway first (and check the path works).
    check_tcp(&lab, "n1-p1", "n2-p1", 5001, 1 << 20);
    let p = lab.pod("n1-p1").clone();
    let gw_mac = neighbour_mac(&lab.ns("n1-p1"), p.gateway, "eth0")
        .expect("n1-p1 has resolved its gateway's MAC");

    let cases = pod_frames(
        p.mac,
        gw_mac,
        p.ip,
        lab.pod("n2-p1").ip,
        lab.pod("n1-p2").ip,
    );
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    let mut frames = Vec::new();
    for (reason, f) in &cases {
        for _ in 0..COPIES {
            frames.push(f.clone());
        }
        *expected.entry(reason).or_default() += COPIES as u64;
    }

    // VXLAN from outside (no node's VTEP) with a VNI that is not the
    // cluster's, carrying an otherwise fine frame for n1-p1: the sender
    // alone refuses it (the VNI check is the unit tests').
    let (n1, n2) = (lab.node("n1").clone(), lab.node("n2").clone());
    let inner = udp_frame(
        n2.vtep_mac,
        n1.vtep_mac,
        lab.pod("n2-p1").ip,
        p.ip,
        (40000, 9),
        &[0xa5; 32],
    );
    let wrong_vni = n1.vni + 6;
    let mut vxlan = vec![0x08, 0, 0, 0];
    vxlan.extend_from_slice(&(wrong_vni << 8).to_be_bytes());
    vxlan.extend_from_slice(&inner);
    expected.insert("vxlan_unknown_vtep", COPIES as u64);

    let before = lab.counters("n1");
    let known = before.drops();

    // Good traffic, across the nodes, while the bad frames arrive.
    let traffic = {
        let lab_ns = (lab.ns("n1-p2"), lab.ns("n2-p2"), lab.pod("n2-p2").ip);
        thread::spawn(move || kxdp_e2e::tcp_echo(&lab_ns.0, &lab_ns.1, lab_ns.2, 5002, 20 << 20))
    };
    let sent = inject_frames(&lab.ns("n1-p1"), "eth0", &frames);
    assert_eq!(sent, frames.len());
    let to = (n1.underlay_ip, n1.vxlan_port);
    in_netns(&lab.ns("ext"), move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        for _ in 0..COPIES {
            s.send_to(&vxlan, to).unwrap();
        }
    });
    let took = traffic
        .join()
        .expect("traffic thread")
        .expect("TCP n1-p2 -> n2-p2 during the bad frames");
    eprintln!(
        "TCP during the bad frames: 20 MiB each way intact in {:.2}s",
        took.as_secs_f64()
    );

    let after = lab.counters("n1");
    let grew = after.drops_since(&before);
    eprintln!("n1 drops during the test: {grew:?}");
    let mut unknown_total = 0;
    for (reason, n) in &expected {
        if known.contains_key(*reason) {
            let got = grew.get(*reason).copied().unwrap_or(0);
            assert!(
                got >= *n,
                "{reason}: {got} drops counted, {n} frames sent (all drops: {grew:?})"
            );
        } else {
            eprintln!(
                "note: the dataplane has no drop reason {reason:?}; checked in the total only"
            );
            unknown_total += n;
        }
    }
    let counted: u64 = grew.values().sum();
    let expected_total: u64 = expected.values().sum();
    assert!(counted >= expected_total, "{counted} drops counted, {expected_total} bad frames sent: {grew:?} (unknown reasons: {unknown_total})");
    assert!(lab.dataplane_alive("n1"), "n1's dataplane died");
    assert!(lab.dataplane_alive("n2"), "n2's dataplane died");
    // And it still forwards.
    check_tcp(&lab, "n1-p1", "n2-p1", 5003, 1 << 20);
}
