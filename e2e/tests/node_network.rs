//! Pods and nodes reach the node network (walk 7 and endpoints outside the
//! pod network): the `kubernetes` service, ClusterIP 10.96.0.1:443 to the
//! lab's stand-in API server (`openssl s_server`, TLS, started by `lab.sh
//! up`) on n1's underlay address :6443, answers from every pod on both
//! nodes and from both nodes. n1's pods reach it through n1's host
//! interface, n2's pods and n2 itself masqueraded over the underlay, n1
//! itself through the frontend hairpin.

use std::net::Ipv4Addr;
use std::time::Duration;

use kxdp_e2e::{ns_exec, require_root, wait_until, Lab, LabOpts};
use serde_json::json;

const KUBERNETES: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const API_PORT: u16 = 6443;

/// `curl https://10.96.0.1/` from `ns`: the HTTP status and the body.
fn curl_kubernetes(ns: &str) -> (String, String) {
    let out = ns_exec(
        ns,
        20,
        "curl",
        &[
            "-sk",
            "--max-time",
            "5",
            "--retry",
            "2",
            "--retry-all-errors",
            "-w",
            "\n%{http_code}",
            &format!("https://{KUBERNETES}/"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().to_string(), body.to_string())
}

#[test]
fn the_kubernetes_service_answers_from_every_pod_and_both_nodes() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let n1 = lab.node("n1").underlay_ip;
    // The lab's stand-in API server (`lab.sh`: start_apiserver) on n1.
    let pid = std::fs::read_to_string(lab.run_dir.join("apiserver.pid")).expect("apiserver.pid");
    let accept = format!("{n1}:{API_PORT}");
    let listening = wait_until(Duration::from_secs(10), || {
        let ss = ns_exec(
            &lab.ns("n1"),
            5,
            "ss",
            &["-Hltnp", &format!("sport = :{API_PORT}")],
        );
        let ss = String::from_utf8_lossy(&ss.stdout);
        ss.contains(&accept) && ss.contains(&format!("pid={}", pid.trim()))
    });
    assert!(
        listening,
        "the lab's API server (pid {}) listens on {accept}",
        pid.trim()
    );
    lab.service_apply(&json!({
        "name": "default/kubernetes",
        "cluster_ip": KUBERNETES.to_string(),
        "ports": [{ "name": "https", "protocol": "TCP", "port": 443, "target_port": API_PORT }],
        "endpoints": [{ "ip": n1.to_string(), "node": "n1" }],
    }));
    let before = lab.counters("n2");
    let mut failed = Vec::new();
    for ns in ["n1-p1", "n1-p2", "n2-p1", "n2-p2", "n1", "n2"] {
        let (code, body) = curl_kubernetes(&lab.ns(ns));
        eprintln!("{ns}: https://{KUBERNETES}/ -> {code}");
        // s_server -www answers with its own status page.
        if code != "200" || !body.contains("s_server") {
            failed.push(format!(
                "{ns}: HTTP {code:?}, body {:?}",
                &body[..body.len().min(200)]
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "the kubernetes service failed:\n{}",
        failed.join("\n")
    );
    // n2's pods and n2 itself went out n2's uplink to n1's address (walk 7).
    let sent = lab.counters("n2").get("egress_routed") - before.get("egress_routed");
    assert!(sent >= 3, "n2 sent {sent} packets towards n1's address");
}
