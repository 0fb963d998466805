//! Frames the dataplane must refuse are dropped and counted by reason, while
//! good traffic keeps flowing and the dataplane keeps running.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::thread;

use kxdp_e2e::{
    check_tcp, in_netns, inject_frames, malformed_pod_frames, neighbour_mac, require_root,
    udp_frame, Lab, LabOpts,
};

const COPIES: usize = 5;

#[test]
fn malformed_frames_are_dropped_by_reason_and_good_traffic_flows() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    // Resolve the gateway first (and check the path works).
    check_tcp(&lab, "n1-p1", "n2-p1", 5001, 1 << 20);
    let p = lab.pod("n1-p1").clone();
    let gw_mac = neighbour_mac(&lab.ns("n1-p1"), p.gateway, "eth0")
        .expect("n1-p1 has resolved its gateway's MAC");

    let cases = malformed_pod_frames(
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
