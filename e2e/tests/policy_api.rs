//! Network policies through the control API (`kxdpctl policy apply/get/
//! delete`) on a real lab: a default deny of ingress written at run time
//! refuses new TCP connections to the pods it selects, a file with one
//! invalid policy applies none, the policy survives a control restart (the
//! state file), and deleting it lets connections through again.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kxdp_e2e::netpol::Proto;
use kxdp_e2e::{
    check, require_root, run_probes, unique_name, wait_until, EchoServers, Lab, LabOpts, Probe,
};

const PORT: u16 = 8080;

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!("{}.yaml", unique_name("kxpol")));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The run-time policies `kxdpctl policy get` lists, by name.
fn runtime_policies(lab: &Lab) -> Vec<String> {
    let v = lab.kxdpctl(&["policy", "get", "--json"]);
    v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"] == "runtime")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_policy_through_the_api_denies_survives_a_control_restart_and_goes_when_deleted() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    // n2's p1 connects to n1's p1 across the nodes (ingress is decided at n1).
    let dst = lab.pod("n1-p1").clone();
    let _servers = EchoServers::start(&[(lab.ns("n1-p1"), dst.ip)], &[PORT]);
    let probe = Probe {
        ns: lab.ns("n2-p1"),
        to: SocketAddr::from((dst.ip, PORT)),
        proto: Proto::Tcp,
    };
    let connects = || run_probes(std::slice::from_ref(&probe))[0];
    assert!(connects(), "n2/p1 -> n1/p1:{PORT} before any policy");

    // Three policies, the second invalid: exit 2 naming it, none applied.
    let bad = TempFile::new(
        "- { name: default/a, pod_selector: {} }\n\
         - { name: default/b, pod_selector: {}, ingress: [ { ports: [ { protocol: SCTP } ] } ] }\n\
         - { name: default/c, pod_selector: {} }\n",
    );
    let out = lab.kxdpctl_raw(&["policy", "apply", "-f", bad.path()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("network_policies[1].ingress[0].ports[0].protocol: SCTP is not supported"),
        "{stderr}"
    );
    assert_eq!(runtime_policies(&lab), Vec::<String>::new());
    assert!(connects(), "nothing was applied");

    // A default deny of ingress for the namespace: new connections fail.
    let deny = TempFile::new(
        "- { name: default/deny-ingress, pod_selector: {}, policy_types: [Ingress] }\n",
    );
    check(
        "kxdpctl policy apply",
        lab.kxdpctl_raw(&["policy", "apply", "-f", deny.path()]),
    );
    assert_eq!(runtime_policies(&lab), vec!["default/deny-ingress"]);
    assert!(
        wait_until(Duration::from_secs(10), || !connects()),
        "n2/p1 -> n1/p1:{PORT} still connects under a default deny"
    );
    let rules = lab.kxdpctl(&["policy", "rules", "--node", "n1", "--json"]);
    let pod = rules["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["ip"] == dst.ip.to_string())
        .unwrap()
        .clone();
    assert_eq!(
        pod["ingress_policies"],
        serde_json::json!(["default/deny-ingress"]),
        "{pod}"
    );

    // A new control process restores it from the state file.
    lab.kill_and_restart_control();
    assert_eq!(runtime_policies(&lab), vec!["default/deny-ingress"]);
    assert!(!connects(), "the policy is lost after a control restart");

    // Deleted: connections work again; deleting again is no error.
    let del = lab.kxdpctl(&["policy", "delete", "default/deny-ingress", "--json"]);
    assert_eq!(del["existed"], true, "{del}");
    assert!(
        wait_until(Duration::from_secs(10), connects),
        "n2/p1 -> n1/p1:{PORT} refused after the policy was deleted"
    );
    let del = lab.kxdpctl(&["policy", "delete", "default/deny-ingress", "--json"]);
    assert_eq!(del["existed"], false, "{del}");
    assert_eq!(runtime_policies(&lab), Vec::<String>::new());
}
