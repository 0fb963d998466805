//! A dataplane that restarts (cleanly or killed) is synced again by
//! kxdp-control without any apply, and traffic flows again.

use kxdp_e2e::{check_tcp, check_udp, pid_alive, require_root, Lab, LabOpts};

#[test]
fn restarted_dataplane_is_resynced_and_forwards() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    check_tcp(&lab, "n1-p1", "n2-p1", 5001, 1 << 20);
    for (round, args) in [
        (1, vec!["restart-node", "n1"]),
        (2, vec!["restart-node", "n1", "--kill"]),
    ] {
        let pid = lab.dataplane_pid("n1");
        let boot = lab.node_info("n1")["boot_id"].clone();
        let gen = lab.node_info("n1")["desired_generation"].clone();
        let out = lab.lab_sh(&args, 120);
        assert!(
            out.status.success(),
            "lab.sh {}: {}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let info = lab.node_info("n1");
        assert_ne!(lab.dataplane_pid("n1"), pid, "round {round}: same pid");
        assert!(!pid_alive(pid), "round {round}: old dataplane still runs");
        assert_ne!(info["boot_id"], boot, "round {round}: boot id unchanged");
        assert_eq!(info["status"], "synced", "round {round}: {info}");
        assert_eq!(
            info["desired_generation"], gen,
            "round {round}: resync must not need an apply"
        );
        check_tcp(&lab, "n1-p1", "n2-p1", 5001 + round, 8 << 20);
        check_tcp(&lab, "n2-p2", "n1-p2", 5101 + round, 8 << 20);
        check_udp(&lab, "n1-p2", "n2-p2", 6001 + round, 500);
    }
}
