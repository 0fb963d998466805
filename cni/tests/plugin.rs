//! kxdp-cni driven as a container runtime drives it: the built binary, the
//! `CNI_*` environment, the network configuration on stdin, the result or
//! error JSON on stdout and the exit status. Real namespaces, the real
//! host-local IPAM plugin, and a control API (a fake here; the real
//! kxdp-control in `real_control.rs`).

mod common;

use std::time::Duration;

use common::*;
use kxdp_testkit::{unique_name, NetNs};
use serde_json::{json, Value};

const IP1: &str = "10.244.1.2";
const HOST1: &str = "kx0af40102";
const MAC1: &str = "0a:58:0a:f4:01:02";

fn cid(tag: &str) -> String {
    format!("ctr-{}", unique_name(tag))
}

/// Asserts that nothing of an attachment is left: no veth on the node, no
/// eth0 in the pod, no lease.
fn assert_nothing_left(world: &World, pod: Option<&NetNs>) {
    assert_eq!(
        world.node_links(),
        Vec::<String>::new(),
        "veths left on the node"
    );
    if let Some(pod) = pod {
        assert!(link(pod, "eth0").is_none(), "eth0 left in the pod");
    }
    assert_eq!(
        world.leases(),
        Vec::<std::net::Ipv4Addr>::new(),
        "leases left in host-local's data dir"
    );
}

#[test]
fn version_lists_the_supported_versions() {
    // No namespaces needed: run it directly, as a runtime probing plugins does.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kxdp-cni"))
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"], json!(["1.0.0"]));
}

#[test]
fn unknown_or_missing_command_is_code_4() {
    for command in [None, Some("GC"), Some("add")] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kxdp-cni"));
        cmd.env_clear().stdin(std::process::Stdio::null());
        if let Some(c) = command {
            cmd.env("CNI_COMMAND", c);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{command:?}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["code"], 4, "{command:?}: {v}");
    }
}

#[test]
fn add_check_del_del() {
    require_env();
    let world = World::new("cn");
    let (control, _served) = FakeControl::serve(&world.socket);
    let pod = NetNs::new(&unique_name("cp"));
    let id = cid("a");

    // ADD
    let result = world.add(&id, &pod).ok();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][0]["name"], HOST1);
    assert!(result["interfaces"][0].get("sandbox").is_none());
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["mac"], MAC1);
    assert_eq!(result["interfaces"][1]["sandbox"], netns_path(&pod));
    assert_eq!(
        result["ips"],
        json!([{"address": format!("{IP1}/24"), "gateway": GATEWAY, "interface": 1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}])
    );
    assert!(result["dns"].is_object());

    // The node's end: named by the convention, up, pod MTU, one queue each
    // way, TX checksum offload off, marked as this attachment's.
    let host = world.node_link(HOST1).expect("host veth");
    assert_eq!(host["linkinfo"]["info_kind"], "veth");
    assert_eq!(host["mtu"], 1450);
    assert_eq!(host["num_tx_queues"], 1);
    assert_eq!(host["num_rx_queues"], 1);
    assert!(host["flags"].as_array().unwrap().contains(&json!("UP")));
    assert_eq!(host["ifalias"], format!("kxdp-cni:{id}/eth0"));
    assert_eq!(result["interfaces"][0]["mac"], host["address"]);
    assert_eq!(
        offloads_on(&world.node, HOST1, &["tx-checksumming"]),
        Vec::<String>::new()
    );

    // The pod's end.
    let eth0 = link(&pod, "eth0").expect("eth0 in the pod");
    assert_eq!(eth0["address"], MAC1);
    assert_eq!(eth0["mtu"], 1450);
    assert_eq!(eth0["num_tx_queues"], 1);
    assert_eq!(eth0["num_rx_queues"], 1);
    assert!(eth0["flags"].as_array().unwrap().contains(&json!("UP")));
    assert_eq!(addrs(&pod, "eth0"), vec![format!("{IP1}/24")]);
    let routes = String::from_utf8(pod.ip(&["-4", "route", "show", "default"]).stdout).unwrap();
    assert!(
        routes.contains(&format!("default via {GATEWAY} dev eth0")),
        "{routes}"
    );
    assert_eq!(
        offloads_on(
            &pod,
            "eth0",
            &[
                "tx-checksumming",
                "tcp-segmentation-offload",
                "generic-segmentation-offload"
            ]
        ),
        Vec::<String>::new()
    );

    // host-local's lease and the registration.
    assert_eq!(
        world.leases(),
        vec![IP1.parse::<std::net::Ipv4Addr>().unwrap()]
    );
    let reg = control.pod(&format!("{id}/eth0")).expect("registered");
    assert_eq!(
        (
            reg.node.as_str(),
            reg.ip.as_str(),
            reg.mac.as_str(),
            reg.ifname.as_str()
        ),
        (NODE, IP1, MAC1, HOST1)
    );

    // CHECK with the ADD's result.
    world.check(&id, &pod, &result).ok();

    // DEL, then DEL again: both succeed, nothing is left.
    assert_eq!(world.del(&id, Some(&netns_path(&pod))).ok(), Value::Null);
    assert_nothing_left(&world, Some(&pod));
    assert!(control.pod(&format!("{id}/eth0")).is_none());
    world.del(&id, Some(&netns_path(&pod))).ok();
    assert_nothing_left(&world, Some(&pod));

    // CHECK after DEL fails.
    world.check(&id, &pod, &result).err(102);
}

#[test]
fn two_pods_get_their_own_address_veth_and_registration() {
    require_env();
    let world = World::new("cn");
    let (control, _served) = FakeControl::serve(&world.socket);
    let (pa, pb) = (
        NetNs::new(&unique_name("cp")),
        NetNs::new(&unique_name("cp")),
    );
    let (a, b) = (cid("a"), cid("b"));
    let ra = world.add(&a, &pa).ok();
    let rb = world.add(&b, &pb).ok();
    assert_eq!(ra["ips"][0]["address"], "10.244.1.2/24");
    assert_eq!(rb["ips"][0]["address"], "10.244.1.3/24");
    let mut links = world.node_links();
    links.sort();
    assert_eq!(links, vec!["kx0af40102", "kx0af40103"]);
    assert_eq!(control.pods.lock().unwrap().len(), 2);

    // Deleting one leaves the other whole.
    world.del(&a, Some(&netns_path(&pa))).ok();
    assert_eq!(world.node_links(), vec!["kx0af40103"]);
    assert_eq!(
        world.leases(),
        vec!["10.244.1.3".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    world.check(&b, &pb, &rb).ok();
    world.del(&b, Some(&netns_path(&pb))).ok();
    assert_nothing_left(&world, Some(&pb));
}

#[test]
fn a_second_add_of_the_same_attachment_fails_and_leaves_the_first_alone() {
    require_env();
    let world = World::new("cn");
    let (_control, _served) = FakeControl::serve(&world.socket);
    let pod = NetNs::new(&unique_name("cp"));
    let id = cid("a");
    let first = world.add(&id, &pod).ok();
    let again = world.add(&id, &pod);
    assert!(!again.success, "{}", again.stdout);
    // The failure undid nothing of the first ADD: its lease, veth and CHECK hold.
    assert_eq!(world.node_links(), vec![HOST1]);
    assert_eq!(world.leases().len(), 1);
    world.check(&id, &pod, &first).ok();
    world.del(&id, Some(&netns_path(&pod))).ok();
    assert_nothing_left(&world, Some(&pod));
}

#[test]
fn del_of_something_never_added_succeeds() {
    require_env();
    let world = World::new("cn");
    let (control, _served) = FakeControl::serve(&world.socket);
    let pod = NetNs::new(&unique_name("cp"));
    let missing = format!("/var/run/netns/{}", unique_name("gone"));
    // An existing netns without our interface, a netns that is gone, none at all.
    for netns in [Some(netns_path(&pod)), Some(missing), None] {
        world.del(&cid("n"), netns.as_deref()).ok();
    }
    assert_nothing_left(&world, Some(&pod));
    assert_eq!(
        control.calls().len(),
        3,
        "one DeletePod each: {:?}",
        control.calls()
    );
}

#[test]
fn del_after_the_netns_is_gone_cleans_up() {
    require_env();
    let world = World::new("cn");
    let (control, _served) = FakeControl::serve(&world.socket);
    let pod = NetNs::new(&unique_name("cp"));
    let path = netns_path(&pod);
    let id = cid("a");
    world.add(&id, &pod).ok();
    drop(pod); // the runtime removed the sandbox before DEL: the veth pair goes with it
    world.del(&id, Some(&path)).ok();
    assert_nothing_left(&world, None);
    assert!(control.pods.lock().unwrap().is_empty());
}

#[test]
fn bad_configuration_and_environment_give_the_spec_codes() {
    require_env();
    let world = World::new("cn");
    let (control, _served) = FakeControl::serve(&world.socket);
    let pod = NetNs::new(&unique_name("cp"));
    let ns = netns_path(&pod);
    let id = cid("b");

    // Not JSON: 6.
    world.cni("ADD", &id, Some(&ns), "{\"cniVersion\": ").err(6);
    world.cni("ADD", &id, Some(&ns), "").err(6);
    // No ipam section: 7.
    let mut conf = world.conf();
    conf.as_object_mut().unwrap().remove("ipam");
    let v = world.cni("ADD", &id, Some(&ns), &conf.to_string()).err(7);
    assert!(v["msg"].as_str().unwrap().contains("ipam"), "{v}");
    // No node: 7.
    let mut conf = world.conf();
    conf.as_object_mut().unwrap().remove("node");
    world.cni("ADD", &id, Some(&ns), &conf.to_string()).err(7);
    // An MTU no link takes: 7.
    let mut conf = world.conf();
    conf["mtu"] = json!(10);
    world.cni("ADD", &id, Some(&ns), &conf.to_string()).err(7);
    // A cniVersion it does not speak: 1.
    for version in ["0.2.0", "0.4.0", "2.0.0"] {
        let mut conf = world.conf();
        conf["cniVersion"] = json!(version);
        world.cni("ADD", &id, Some(&ns), &conf.to_string()).err(1);
    }
    // No CNI_NETNS on ADD: 4.
    let v = world
        .cni("ADD", &id, None, &world.conf().to_string())
        .err(4);
    assert!(v["msg"].as_str().unwrap().contains("CNI_NETNS"), "{v}");
    // A netns that does not exist: 3 (unknown container), nothing leased.
    let gone = format!("/var/run/netns/{}", unique_name("gone"));
    world
        .cni("ADD", &id, Some(&gone), &world.conf().to_string())
        .err(3);
    // An IPAM plugin that is nowhere on CNI_PATH: 4.
    let mut conf = world.conf();
    conf["ipam"]["type"] = json!("no-such-ipam");
    world.cni("ADD", &id, Some(&ns), &conf.to_string()).err(4);
    // CHECK without prevResult: 7.
    world
        .cni("CHECK", &id, Some(&ns), &world.conf().to_string())
        .err(7);

    assert_nothing_left(&world, Some(&pod));
    assert!(
        control.calls().is_empty(),
        "control was called: {:?}",
        control.calls()
    );
}

#[test]
fn control_unreachable_fails_add_and_leaves_nothing_behind() {
    require_env();
    let world = World::new("cn"); // nothing listens on world.socket
    let pod = NetNs::new(&unique_name("cp"));
    let v = world.add(&cid("u"), &pod).err(11);
    assert!(v["msg"].as_str().unwrap().contains("not reachable"), "{v}");
    assert!(
        v["details"].as_str().unwrap().contains("rolled back"),
        "{v}"
    );
    assert_nothing_left(&world, Some(&pod));
    // Once control is there, the same pod goes through.
    let (_control, _served) = FakeControl::serve(&world.socket);
    let id = cid("u");
    world.add(&id, &pod).ok();
    assert_eq!(world.leases().len(), 1);
    world.del(&id, Some(&netns_path(&pod))).ok();
    assert_nothing_left(&world, Some(&pod));
}

#[test]
fn control_refusing_the_pod_fails_add_and_rolls_back() {
    require_env();
    let world = World::new("cn");
    let (control, _served) = FakeControl::serve(&world.socket);
    *control.refuse_add.lock().unwrap() = Some(tonic::Status::invalid_argument(
        "ip: 10.244.1.2 is taken by pod n1/x",
    ));
    let pod = NetNs::new(&unique_name("cp"));
    let id = cid("r");
    let v = world.add(&id, &pod).err(101);
    assert!(v["msg"].as_str().unwrap().contains("is taken"), "{v}");
    assert!(
        v["details"].as_str().unwrap().contains("InvalidArgument"),
        "{v}"
    );
    assert_nothing_left(&world, Some(&pod));
    // The rollback unregistered the pod (control might have recorded it).
    assert_eq!(
        control.calls(),
        vec![format!("AddPod {id}/eth0"), format!("DeletePod {id}/eth0")]
    );
}

#[test]
fn control_unimplemented_is_a_clean_error_with_rollback() {
    require_env();
    let world = World::new("cn");
    let (control, _served) = FakeControl::serve(&world.socket);
    *control.refuse_add.lock().unwrap() = Some(tonic::Status::unimplemented(
        "AddPod is not implemented yet",
    ));
    let pod = NetNs::new(&unique_name("cp"));
    let v = world.add(&cid("i"), &pod).err(101);
    assert!(
        v["details"].as_str().unwrap().contains("Unimplemented"),
        "{v}"
    );
    assert_nothing_left(&world, Some(&pod));
}

#[test]
fn check_reports_what_changed() {
    require_env();
    let world = World::new("cn");
    let (control, _served) = FakeControl::serve(&world.socket);
    let pod = NetNs::new(&unique_name("cp"));
    let id = cid("c");
    let result = world.add(&id, &pod).ok();
    world.check(&id, &pod, &result).ok();

    pod.ip(&["route", "del", "default"]);
    let v = world.check(&id, &pod, &result).err(102);
    assert!(v["msg"].as_str().unwrap().contains("default route"), "{v}");
    pod.ip(&["route", "add", "default", "via", GATEWAY, "dev", "eth0"]);
    world.check(&id, &pod, &result).ok();

    world.node.ip(&["link", "set", HOST1, "down"]);
    let v = world.check(&id, &pod, &result).err(102);
    assert!(v["msg"].as_str().unwrap().contains("down"), "{v}");
    world.node.ip(&["link", "set", HOST1, "up"]);

    control.pods.lock().unwrap().clear();
    let v = world.check(&id, &pod, &result).err(102);
    assert!(v["msg"].as_str().unwrap().contains("not registered"), "{v}");

    world.del(&id, Some(&netns_path(&pod))).ok();
    assert_nothing_left(&world, Some(&pod));
}

#[test]
fn pod_traffic_reaches_the_node_end() {
    // The pod's frames come out of the node's veth end: an ARP for the
    // gateway from eth0 shows up there (the dataplane's XDP program would
    // answer it). Kernel only: no dataplane in this test.
    require_env();
    let world = World::new("cn");
    let (_control, _served) = FakeControl::serve(&world.socket);
    let pod = NetNs::new(&unique_name("cp"));
    let id = cid("t");
    world.add(&id, &pod).ok();
    // A node-side address in the pod CIDR stands in for the dataplane's
    // proxy ARP; the kernel then answers the pod's ping of it.
    world
        .node
        .ip(&["addr", "add", &format!("{GATEWAY}/32"), "dev", HOST1]);
    world
        .node
        .ip(&["route", "add", &format!("{IP1}/32"), "dev", HOST1]);
    let ok = pod.run(|| {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        s.connect((GATEWAY, 9)).unwrap();
        s.send(b"x").is_ok()
    });
    assert!(ok);
    wait_for(
        "the gateway's neighbour entry",
        Duration::from_secs(5),
        || {
            let out =
                String::from_utf8_lossy(&pod.ip(&["neigh", "show", GATEWAY]).stdout).into_owned();
            out.contains("lladdr")
        },
    );
    world.del(&id, Some(&netns_path(&pod))).ok();
    assert_nothing_left(&world, Some(&pod));
}

#[test]
fn the_shipped_conflist_works_as_a_runtime_reads_it() {
    require_env();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/10-kxdp.conflist");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(list["cniVersion"], "1.0.0");
    assert_eq!(list["name"], "kxdp");
    let plugins = list["plugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 1);
    assert_eq!(plugins[0]["type"], "kxdp-cni");

    // What libcni hands the plugin: its entry plus the list's cniVersion and
    // name. Only the machine-specific paths are redirected into the test's.
    let world = World::new("cn");
    let (_control, _served) = FakeControl::serve(&world.socket);
    let mut conf = plugins[0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    assert_eq!(conf["node"], NODE);
    assert_eq!(conf["ipam"]["ranges"][0][0]["subnet"], SUBNET);
    conf["controlSocket"] = json!(world.socket);
    conf["ipam"]["dataDir"] = json!(world.data_dir());

    let pod = NetNs::new(&unique_name("cp"));
    let id = cid("s");
    let ns = netns_path(&pod);
    let result = world.cni("ADD", &id, Some(&ns), &conf.to_string()).ok();
    assert_eq!(result["ips"][0]["address"], format!("{IP1}/24"));
    let mut check = conf.clone();
    check["prevResult"] = result;
    world.cni("CHECK", &id, Some(&ns), &check.to_string()).ok();
    world.cni("DEL", &id, Some(&ns), &conf.to_string()).ok();
    assert_nothing_left(&world, Some(&pod));
}
