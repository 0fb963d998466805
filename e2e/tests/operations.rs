//! kxdp as a well-run service: JSON logs with one event per state change,
//! and the dataplane running as a plain user with exactly the capabilities
//! its systemd unit grants (vagrant/systemd/kxdp-dataplane.service), which
//! pass traffic, while one capability fewer fails, saying why.

use std::process::Command;

use kxdp_e2e::{check_tcp, check_udp, require_root, unique_name, Lab, LabOpts};
use serde_json::Value;

/// Every line of a daemon's log in the lab's run directory, parsed: a line
/// that is not a JSON object fails the test.
fn json_log(lab: &Lab, name: &str) -> Vec<Value> {
    let path = lab.run_dir.join(format!("{name}.log"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display()));
            assert!(v.is_object(), "{}: not an object: {l}", path.display());
            v
        })
        .collect()
}

/// The events named `event` whose fields match `fields`.
fn events<'a>(log: &'a [Value], event: &str, fields: &[(&str, Value)]) -> Vec<&'a Value> {
    log.iter()
        .filter(|v| v["event"] == event && fields.iter().all(|(k, want)| v[*k] == *want))
        .collect()
}

#[test]
fn json_logs_have_one_event_per_state_change() {
    require_root();
    let lab = Lab::up(LabOpts {
        env: vec![("KXDP_LOG_FORMAT".into(), "json".into())],
        ..LabOpts::default()
    });
    check_udp(&lab, "n1-p1", "n2-p1", 7001, 20);

    let n1 = json_log(&lab, "n1");
    for v in &n1 {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v[key].is_string(), "n1 log: no {key}: {v}");
        }
    }
    let started = events(&n1, "started", &[("node", "n1".into())]);
    assert_eq!(started.len(), 1, "n1: one started event: {n1:#?}");
    let uplink = &lab.node("n1").uplink;
    assert_eq!(
        events(
            &n1,
            "attach",
            &[("kind", "uplink".into()), ("iface", uplink.as_str().into())]
        )
        .len(),
        1,
        "n1: one attach of uplink {uplink}"
    );
    for pod in lab.pods.iter().filter(|p| p.node == "n1") {
        let attach = events(
            &n1,
            "attach",
            &[("kind", "pod".into()), ("pod", pod.name.as_str().into())],
        );
        assert_eq!(attach.len(), 1, "n1: one attach of pod {}", pod.name);
        assert_eq!(attach[0]["iface"], pod.ifname.as_str());
    }
    let syncs = events(&n1, "sync", &[]);
    assert!(!syncs.is_empty(), "n1: no sync event");
    let last = syncs.last().unwrap();
    assert!(last["generation"].as_u64().unwrap_or(0) > 0, "{last}");
    assert_eq!(last["level"], "INFO", "{last}");
    let pods_on_n1 = lab.pods.iter().filter(|p| p.node == "n1").count() as u64;
    assert_eq!(last["pods"].as_u64(), Some(pods_on_n1), "{last}");
    assert!(last["ms"].as_f64().is_some(), "{last}");
    assert!(
        !events(&n1, "neighbour_resolved", &[]).is_empty(),
        "n1 sent to n2: the VTEP's next hop was resolved"
    );

    let control = json_log(&lab, "control");
    let desired = events(&control, "desired", &[]);
    let synced = events(&control, "synced", &[("node", "n1".into())]);
    assert!(!synced.is_empty(), "control: no synced event for n1");
    assert_eq!(
        synced.last().unwrap()["generation"],
        last["generation"],
        "control synced n1 at the generation n1 applied"
    );
    assert!(
        events(
            &control,
            "sync",
            &[("node", "n2".into()), ("reason", "first contact".into())]
        )
        .len()
            == 1,
        "control: one first-contact sync of n2"
    );
    assert!(desired.is_empty() || desired[0]["generation"].is_u64());
    // Nothing per packet: 20 datagrams each way added no event.
    let before = n1.len();
    check_udp(&lab, "n1-p1", "n2-p1", 7002, 50);
    assert_eq!(
        json_log(&lab, "n1").len(),
        before,
        "traffic logged something"
    );
}

/// A system user made for one test, removed when dropped.
struct TestUser(String);

impl TestUser {
    fn new() -> TestUser {
        let name = unique_name("kxdpt");
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ])
            .output()
            .expect("useradd (package passwd)");
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestUser(name)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).status();
    }
}

/// The unit's `AmbientCapabilities=`, as setpriv names them ("net_admin").
fn unit_capabilities() -> Vec<String> {
    let path = kxdp_e2e::repo_root().join("vagrant/systemd/kxdp-dataplane.service");
    let unit = std::fs::read_to_string(&path).expect("the dataplane's unit");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants capabilities");
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities");
    assert_eq!(line, bounding, "ambient and bounding sets differ");
    line.split_whitespace()
        .map(|c| c.strip_prefix("CAP_").expect("CAP_ names").to_lowercase())
        .collect()
}

/// Capability numbers (linux/capability.h) of the names the unit may use.
fn cap_bit(name: &str) -> u32 {
    match name {
        "net_admin" => 12,
        "net_raw" => 13,
        "ipc_lock" => 14,
        "sys_admin" => 21,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("capability {other}: add its number"),
    }
}

/// A line of /proc/PID/status, e.g. "CapEff".
fn status_field(pid: u32, key: &str) -> String {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the dataplane runs");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn lab_as(user: &TestUser, caps: &[String]) -> Lab {
    Lab::up(LabOpts {
        env: vec![
            ("KXDP_DATAPLANE_USER".into(), user.0.clone()),
            ("KXDP_DATAPLANE_CAPS".into(), caps.join(",")),
        ],
        ..LabOpts::default()
    })
}

#[test]
fn the_dataplane_runs_with_only_its_units_capabilities() {
    require_root();
    let caps = unit_capabilities();
    let user = TestUser::new();
    let lab = lab_as(&user, &caps);
    let pid = lab.dataplane_pid("n1");
    let uid = status_field(pid, "Uid");
    assert!(
        uid.split_whitespace().all(|u| u != "0"),
        "the dataplane runs as root: Uid {uid}"
    );
    let want = caps.iter().fold(0u64, |m, c| m | 1 << cap_bit(c));
    for key in ["CapEff", "CapBnd", "CapAmb"] {
        let have = u64::from_str_radix(&status_field(pid, key), 16).unwrap();
        assert_eq!(
            have, want,
            "{key} {have:#x}, the unit's {caps:?} are {want:#x}"
        );
    }
    for pod in lab.pod_infos() {
        assert_eq!(pod["status"], "attached", "{pod}");
    }
    check_tcp(&lab, "n1-p1", "n2-p1", 7003, 1 << 20);
    check_tcp(&lab, "n1-p1", "n1-p2", 7004, 1 << 20);
}

#[test]
fn without_cap_net_raw_the_dataplane_attaches_nothing_and_says_why() {
    require_root();
    let caps: Vec<String> = unit_capabilities()
        .into_iter()
        .filter(|c| c != "net_raw")
        .collect();
    let user = TestUser::new();
    let lab = lab_as(&user, &caps);
    for pod in lab.pod_infos().iter().filter(|p| p["node"] == "n1") {
        let status = pod["status"].as_str().unwrap_or_default();
        assert!(
            status.starts_with("failed: AF_XDP socket")
                && status.contains("Operation not permitted"),
            "{pod}"
        );
    }
    let log = std::fs::read_to_string(lab.run_dir.join("n1.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("event=\"attach_failed\"")
            && l.contains("kind=\"uplink\"")
            && l.contains("Operation not permitted")),
        "no attach_failed event for the uplink:\n{log}"
    );
}
