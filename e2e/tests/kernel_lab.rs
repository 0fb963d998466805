//! The all-kernel lab (KXDP_KERNEL_NODES="n1 n2"): every node set up as
//! flannel's VXLAN backend does it. It is the baseline kxdp is compared with,
//! and checks the lab's own plumbing with no kxdp process involved.

use kxdp_e2e::{check_tcp, check_udp, check_underlay_vxlan, require_root, Lab, LabOpts};

#[test]
fn kernel_lab_pods_talk_within_and_across_nodes() {
    require_root!();
    let lab = Lab::up(LabOpts::kernel(&["n1", "n2"]));
    check_tcp(&lab, "n1-p1", "n1-p2", 5001, 20 << 20);
    check_tcp(&lab, "n1-p1", "n2-p1", 5002, 20 << 20);
    check_tcp(&lab, "n2-p2", "n1-p2", 5003, 20 << 20);
    check_udp(&lab, "n1-p1", "n1-p2", 6001, 1000);
    check_udp(&lab, "n1-p1", "n2-p1", 6002, 1000);
    check_udp(&lab, "n2-p1", "n1-p1", 6003, 1000);
}

#[test]
fn kernel_lab_underlay_carries_vxlan_with_the_vni() {
    require_root!();
    let lab = Lab::up(LabOpts::kernel(&["n1", "n2"]));
    check_underlay_vxlan(&lab, "n1-p1", "n2-p1", 5004);
}

#[test]
fn lab_up_is_idempotent_and_down_leaves_nothing() {
    require_root!();
    // One kxdp node: its dataplane and kxdp-control write files too.
    let lab = Lab::up(LabOpts::kernel(&["n2"]));
    // `up` again on the same prefix: torn down and made anew.
    let out = lab.lab_sh(&["up"], 120);
    assert!(
        out.status.success(),
        "second up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_tcp(&lab, "n1-p1", "n2-p2", 5001, 1 << 20);
    let status = lab.lab_sh(&["status"], 30);
    assert!(status.status.success(), "status of a lab that is up");
    for _ in 0..2 {
        let out = lab.lab_sh(&["down"], 60);
        assert!(
            out.status.success(),
            "down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let list =
        String::from_utf8(kxdp_e2e::run_timeout(10, "ip", &["netns", "list"]).stdout).unwrap();
    let prefix = format!("{}-", lab.prefix);
    assert!(
        !list.lines().any(|l| l.starts_with(&prefix)),
        "namespaces left: {list}"
    );
    assert!(!lab.run_dir.exists(), "{} left", lab.run_dir.display());
    assert_eq!(
        lab.lab_sh(&["status"], 30).status.code(),
        Some(3),
        "status of a lab that is down"
    );
}
