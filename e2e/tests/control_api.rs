//! The control API through kxdpctl: invalid cluster files change nothing;
//! a valid one that adds a pod makes it reachable.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use kxdp_e2e::{require_root, tcp_echo, unique_name, wait_until, Lab, LabOpts};
use serde_yaml_ng::Value as Yaml;

struct TempFile(PathBuf);

impl TempFile {
    fn yaml(doc: &Yaml) -> TempFile {
        let path = std::env::temp_dir().join(format!("{}.yaml", unique_name("kxcl")));
        std::fs::write(&path, serde_yaml_ng::to_string(doc).unwrap()).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn generations(lab: &Lab) -> Vec<(String, u64)> {
    lab.node_infos()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["desired_generation"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn pod_set(lab: &Lab) -> Vec<String> {
    let mut pods: Vec<String> = lab
        .pod_infos()
        .iter()
        .map(|p| {
            format!(
                "{}/{}/{}",
                p["node"].as_str().unwrap(),
                p["name"].as_str().unwrap(),
                p["ip"].as_str().unwrap()
            )
        })
        .collect();
    pods.sort();
    pods
}

#[test]
fn invalid_apply_changes_nothing_and_valid_apply_adds_a_pod() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let text = std::fs::read_to_string(lab.cluster_file()).unwrap();
    let base: Yaml = serde_yaml_ng::from_str(&text).unwrap();
    let gens = generations(&lab);
    let pods = pod_set(&lab);

    let mut overlap = base.clone();
    overlap["nodes"][1]["pod_cidr"] = overlap["nodes"][0]["pod_cidr"].clone();
    let mut outside = base.clone();
    outside["pods"][0]["ip"] = "10.244.9.2".into();
    let mut duplicate = base.clone();
    duplicate["pods"][1]["ip"] = duplicate["pods"][0]["ip"].clone();

    for (what, doc, field) in [
        ("overlapping pod CIDRs", overlap, "pod_cidr"),
        ("pod outside its node's CIDR", outside, "pods[0].ip"),
        ("duplicate pod IP", duplicate, "pods[1].ip"),
    ] {
        let file = TempFile::yaml(&doc);
        let out = lab.kxdpctl_raw(&["apply", file.0.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("apply ({what}): {}\n{stderr}", out.status);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{what}: exit status (stderr: {stderr})"
        );
        assert!(
            stderr.contains(field),
            "{what}: the message should name {field}: {stderr}"
        );
        assert_eq!(generations(&lab), gens, "{what}: generations changed");
        assert_eq!(pod_set(&lab), pods, "{what}: pods changed");
    }

    // A new pod on n1, plumbed first the way lab.sh does it.
    let ip = Ipv4Addr::new(10, 244, 1, 4);
    let _ns = lab.add_pod_netns("n1", "p3", ip);
    let mut added = base.clone();
    let mut pod = serde_yaml_ng::Mapping::new();
    pod.insert("name".into(), "p3".into());
    pod.insert("node".into(), "n1".into());
    pod.insert("ip".into(), ip.to_string().into());
    added["pods"]
        .as_sequence_mut()
        .unwrap()
        .push(Yaml::Mapping(pod));
    let file = TempFile::yaml(&added);
    let out = lab.kxdpctl_raw(&["apply", file.0.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "valid apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_gens = generations(&lab);
    for ((n, old), (_, new)) in gens.iter().zip(&new_gens) {
        assert!(
            new > old,
            "{n}: generation {old} -> {new} after a valid apply"
        );
    }
    let listed = wait_until(Duration::from_secs(15), || {
        lab.pod_infos().iter().any(|p| {
            p["name"] == "p3"
                && p["node"] == "n1"
                && p["status"]
                    .as_str()
                    .unwrap_or("")
                    .eq_ignore_ascii_case("attached")
        })
    });
    assert!(listed, "p3 not listed as attached: {:?}", lab.pod_infos());
    let ok = wait_until(Duration::from_secs(15), || {
        lab.node_info("n1")["status"] == "synced"
    });
    assert!(ok, "n1 not synced after apply");

    let p3 = lab.ns("n1-p3");
    tcp_echo(&lab.ns("n2-p1"), &p3, ip, 5001, 4 << 20)
        .unwrap_or_else(|e| panic!("n2-p1 -> new pod p3: {e}"));
    tcp_echo(&p3, &lab.ns("n1-p1"), lab.pod("n1-p1").ip, 5002, 4 << 20)
        .unwrap_or_else(|e| panic!("new pod p3 -> n1-p1: {e}"));
}
