//! A kxdp node and a flannel-style kernel node in one cluster: the kxdp node
//! speaks the same VXLAN as the Linux vxlan device, both ways.

use kxdp_e2e::{check_tcp, check_udp, check_underlay_vxlan, require_root, Lab, LabOpts};

#[test]
fn kxdp_node_and_kernel_node_interoperate() {
    require_root!();
    let lab = Lab::up(LabOpts::kernel(&["n2"]));
    assert_eq!(lab.node("n1").dataplane, "kxdp");
    assert_eq!(lab.node("n2").dataplane, "kernel");
    check_tcp(&lab, "n1-p1", "n2-p1", 5001, 20 << 20);
    check_tcp(&lab, "n2-p2", "n1-p2", 5002, 20 << 20);
    check_udp(&lab, "n1-p1", "n2-p1", 6001, 1000);
    check_udp(&lab, "n2-p1", "n1-p1", 6002, 1000);
    check_underlay_vxlan(&lab, "n1-p2", "n2-p2", 5003);
    assert!(lab.dataplane_alive("n1"));
}
