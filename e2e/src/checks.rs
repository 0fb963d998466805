//! The checks most tests share: TCP and UDP between pods, VXLAN on the underlay.

use super::*;

/// TCP from pod `from` to pod `to` ("n1-p1", ...): `bytes` each way through an
/// echo server on `port`, checked byte for byte; panics with context.
pub fn check_tcp(lab: &Lab, from: &str, to: &str, port: u16, bytes: usize) {
    let dst = lab.pod(to).ip;
    match tcp_echo(&lab.ns(from), &lab.ns(to), dst, port, bytes) {
        Ok(took) => eprintln!(
            "tcp {from} -> {to} ({dst}:{port}): {bytes} bytes each way intact in {:.2}s ({:.0} Mbit/s)",
            took.as_secs_f64(),
            (2 * bytes) as f64 * 8.0 / took.as_secs_f64() / 1e6
        ),
        Err(e) => panic!("tcp {from} -> {to} ({dst}:{port}): {e}"),
    }
}

/// UDP from pod `from` to pod `to`: `count` numbered datagrams up to the pod
/// MTU, echoed back; at least 95% must come back, and all of them intact.
pub fn check_udp(lab: &Lab, from: &str, to: &str, port: u16, count: u32) {
    let dst = lab.pod(to).ip;
    let mtu = lab.pod(from).mtu.min(lab.pod(to).mtu);
    let r = udp_echo(
        &lab.ns(from),
        &lab.ns(to),
        dst,
        port,
        count,
        max_udp_payload(mtu),
    )
    .unwrap_or_else(|e| panic!("udp {from} -> {to}: {e}"));
    eprintln!("udp {from} -> {to} ({dst}:{port}): {r:?}");
    assert_eq!(r.corrupt, 0, "udp {from} -> {to}: corrupt echoes: {r:?}");
    assert_eq!(r.sent, count, "udp {from} -> {to}: not all sent: {r:?}");
    assert!(
        r.intact >= count * 95 / 100,
        "udp {from} -> {to}: only {} of {count} echoes came back: {r:?}",
        r.intact
    );
}

/// Captures the underlay at `from`'s node switch port while TCP runs from pod
/// `from` to pod `to` (on another node), and checks the VXLAN frames: UDP to
/// the VXLAN port, the I flag alone, the cluster's VNI, between the two
/// nodes' underlay addresses, carrying the pods' packets. Both directions.
pub fn check_underlay_vxlan(lab: &Lab, from: &str, to: &str, port: u16) {
    let (a, b) = (lab.pod(from), lab.pod(to));
    let (na, nb) = (lab.node(&a.node), lab.node(&b.node));
    assert_ne!(
        na.name, nb.name,
        "check_underlay_vxlan needs pods on two nodes"
    );
    let filter = format!("udp dst port {}", na.vxlan_port);
    let cap = Capture::start(&lab.ns("sw"), &na.name, &filter, 40, 30);
    check_tcp(lab, from, to, port, 2 << 20);
    let frames = cap.finish(Duration::from_secs(20));
    assert!(
        !frames.is_empty(),
        "no VXLAN frame captured on switch port {}",
        na.name
    );
    let (mut out, mut back) = (0, 0);
    for f in &frames {
        let v =
            parse_vxlan(f).unwrap_or_else(|| panic!("captured frame is not IPv4/UDP: {f:02x?}"));
        assert_eq!(v.dst_port, na.vxlan_port, "{v:?}");
        assert_eq!(v.flags, 0x08, "VXLAN flags must be the I flag alone: {v:?}");
        assert_eq!(v.vni, na.vni, "VNI: {v:?}");
        let inner =
            inner_ipv4(&v.inner).unwrap_or_else(|| panic!("inner frame is not IPv4: {v:?}"));
        if (v.outer_src, v.outer_dst) == (na.underlay_ip, nb.underlay_ip) {
            assert_eq!(inner, (a.ip, b.ip), "inner addresses {from} -> {to}: {v:?}");
            assert_eq!(
                v.inner[..6],
                nb.vtep_mac,
                "inner destination MAC is {}'s VTEP MAC",
                nb.name
            );
            out += 1;
        } else if (v.outer_src, v.outer_dst) == (nb.underlay_ip, na.underlay_ip) {
            assert_eq!(inner, (b.ip, a.ip), "inner addresses {to} -> {from}: {v:?}");
            assert_eq!(
                v.inner[..6],
                na.vtep_mac,
                "inner destination MAC is {}'s VTEP MAC",
                na.name
            );
            back += 1;
        }
    }
    eprintln!(
        "underlay {}: {} VXLAN frames, {out} {} -> {}, {back} back, VNI {}",
        na.name,
        frames.len(),
        na.name,
        nb.name,
        na.vni
    );
    assert!(
        out > 0 && back > 0,
        "VXLAN both ways between {} and {}",
        na.name,
        nb.name
    );
}
