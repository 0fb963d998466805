//! Traffic on the uplink that is not kxdp's business stays with the node's
//! kernel while the dataplane is attached.

use std::net::Ipv4Addr;

use kxdp_e2e::{require_root, tcp_echo, udp_echo, Lab, LabOpts};

#[test]
fn uplink_traffic_not_for_kxdp_reaches_the_kernel() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    assert_eq!(lab.node_info("n1")["status"], "synced");
    let n1 = lab.node("n1").underlay_ip;
    // A kernel socket on the node's own address, reached from outside.
    let took = tcp_echo(&lab.ns("ext"), &lab.ns("n1"), n1, 7001, 4 << 20)
        .unwrap_or_else(|e| panic!("TCP ext -> n1 {n1}:7001 with kxdp attached: {e}"));
    eprintln!(
        "tcp ext -> n1: 4 MiB each way in {:.2}s",
        took.as_secs_f64()
    );
    // Node to node over the underlay, UDP on a port other than VXLAN's.
    let r = udp_echo(&lab.ns("n2"), &lab.ns("n1"), n1, 7002, 200, 1400)
        .unwrap_or_else(|e| panic!("UDP n2 -> n1: {e}"));
    assert_eq!(r.corrupt, 0, "{r:?}");
    assert!(r.intact >= 190, "{r:?}");
    let ext: Ipv4Addr = format!(
        "{}.100",
        lab.node("n1")
            .underlay_ip
            .to_string()
            .rsplit_once('.')
            .unwrap()
            .0
    )
    .parse()
    .unwrap();
    tcp_echo(&lab.ns("n1"), &lab.ns("ext"), ext, 7003, 1 << 20)
        .unwrap_or_else(|e| panic!("TCP n1 -> ext: {e}"));
    assert!(lab.dataplane_alive("n1"));
}
