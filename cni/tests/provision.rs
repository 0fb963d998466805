//! The provisioning of kxdp nodes outside the namespace lab: `vagrant
//! validate` and the scripts a VM runs (scripts/provision/). They live with
//! kxdp-cni's tests because the CNI plugin is what they set up, and because
//! `cargo test --workspace` is what CI runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use kxdp_testkit::unique_name;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn vagrant_validate() {
    let out = Command::new(repo().join("vagrant/validate.sh"))
        .output()
        .expect("run vagrant/validate.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => assert!(
            text.contains("Vagrantfile validated successfully"),
            "{text}"
        ),
        _ => panic!("vagrant/validate.sh failed ({}):\n{text}", out.status),
    }
}

#[test]
fn cni_config_script_derives_range_and_gateway() {
    let dir = TempDir::new("cc");
    for (cidr, subnet, gw) in [
        ("10.244.2.0/24", "10.244.2.0/24", "10.244.2.1"),
        ("10.244.3.130/25", "10.244.3.128/25", "10.244.3.129"),
    ] {
        let out_file = dir.path().join("10-kxdp.conflist");
        let out = Command::new(repo().join("scripts/provision/cni-config.sh"))
            .args(["n7", "--pod-cidr", cidr, "--mtu", "8950", "--out"])
            .arg(&out_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf: Value =
            serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
        let p = &conf["plugins"][0];
        assert_eq!(p["node"], "n7");
        assert_eq!(p["mtu"], 8950);
        assert_eq!(
            p["ipam"]["ranges"],
            json!([[{"subnet": subnet, "gateway": gw}]])
        );
    }
    let bad = Command::new(repo().join("scripts/provision/cni-config.sh"))
        .args(["n7", "--pod-cidr", "10.244.2.0/31", "--out"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// Deletes a namespace on drop, in case the script under test did not.
struct NsName(String);

impl Drop for NsName {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn cni_pod_script_runs_the_plugin_as_a_runtime() {
    require_env();
    let world = World::new("cn");
    let (control, _served) = FakeControl::serve(&world.socket);

    // The node's conflist as provisioning writes it, its lease directory
    // moved into the test's.
    let conf_path = world.dir.path().join("10-kxdp.conflist");
    let out = Command::new(repo().join("scripts/provision/cni-config.sh"))
        .args(["n1", "--pod-cidr", SUBNET, "--control"])
        .arg(&world.socket)
        .arg("--out")
        .arg(&conf_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut conf: Value =
        serde_json::from_str(&std::fs::read_to_string(&conf_path).unwrap()).unwrap();
    conf["plugins"][0]["ipam"]["dataDir"] = json!(world.data_dir());
    std::fs::write(&conf_path, conf.to_string()).unwrap();

    let bin_dir = Path::new(env!("CARGO_BIN_EXE_kxdp-cni"))
        .parent()
        .unwrap()
        .to_path_buf();
    let pod = NsName(unique_name("vp"));
    let script = |cmd: &str| {
        let out = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", world.node.name()))
            .arg(repo().join("scripts/provision/cni-pod.sh"))
            .args([cmd, &pod.0])
            .env("KXDP_CNI_CONF", &conf_path)
            .env(
                "KXDP_CNI_PATH",
                format!("{}:{CNI_BIN_DIR}", bin_dir.display()),
            )
            .env("KXDP_CNI_STATE", world.dir.path().join("state"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cni-pod.sh {cmd}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let result: Value = serde_json::from_str(&script("add")).unwrap();
    assert_eq!(result["ips"][0]["address"], "10.244.1.2/24");
    assert_eq!(world.node_links(), vec!["kx0af40102"]);
    assert!(control.pod(&format!("kxdp-{}/eth0", pod.0)).is_some());
    script("check");
    script("del");
    assert_eq!(world.node_links(), Vec::<String>::new());
    assert!(world.leases().is_empty());
    assert!(control.pods.lock().unwrap().is_empty());
    assert!(!Path::new(&format!("/var/run/netns/{}", pod.0)).exists());
    // del again: idempotent.
    script("del");
}
