//! kxdp-control restarting (even killed) re-syncs every node without
//! disturbing established flows: a byte-checked stream through a ClusterIP
//! keeps going across the restart, on the same conntrack entry and backend.
//! What the Control API added at run time (pods, services) survives it: the
//! state file (`--state-file`) brings it back, on the dataplanes, with
//! traffic to it working, and none of 50 run-time pods and services is lost.

use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use kxdp_e2e::{
    check, pod_mac_ifname, repo_root, require_root, tcp_connect, tcp_echo_server,
    tcp_send_and_check, EchoStream, Lab, LabOpts,
};
use serde_json::{json, Value};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn flows(lab: &Lab, node: &str) -> Vec<serde_json::Value> {
    let v = lab.kxdpctl(&[
        "conntrack",
        "--node",
        node,
        "--service",
        "default/web",
        "--json",
    ]);
    v["entries"].as_array().cloned().unwrap_or_default()
}

#[test]
fn control_restart_keeps_established_service_flows() {
    require_root!();
    let lab = Lab::up(LabOpts {
        cluster: Some(repo_root().join("config/lab-services.yaml")),
        ..LabOpts::default()
    });
    // Echo servers on both endpoints of default/web (target port 8080);
    // the one the flow does not pick times out on its own.
    let _a = tcp_echo_server(&lab.ns("n1-p1"), Ipv4Addr::new(10, 244, 1, 2), 8080);
    let _b = tcp_echo_server(&lab.ns("n2-p1"), Ipv4Addr::new(10, 244, 2, 2), 8080);
    let s = tcp_connect(
        &lab.ns("n2-p2"),
        SocketAddr::from((VIP, 80)),
        Duration::from_secs(10),
    )
    .expect("connect to the ClusterIP");
    let stream = EchoStream::start(s, 7, Duration::from_secs(60));

    thread::sleep(Duration::from_millis(500));
    let before = flows(&lab, "n2");
    assert_eq!(before.len(), 1, "one tracked flow on n2: {before:?}");
    let gen = lab.node_info("n2")["desired_generation"].clone();

    lab.kill_and_restart_control();
    // Keep streaming a while on the re-synced dataplanes.
    thread::sleep(Duration::from_secs(1));
    let after = flows(&lab, "n2");
    let sent = stream.finish();
    assert!(sent > 1 << 20, "streamed only {sent} bytes");
    assert_eq!(after.len(), 1, "the flow is still tracked: {after:?}");
    assert_eq!(after[0]["backend"], before[0]["backend"], "same backend");
    assert_eq!(after[0]["client"], before[0]["client"]);
    let info = lab.node_info("n2");
    assert_eq!(info["status"], "synced", "{info}");
    assert_ne!(
        info["desired_generation"], gen,
        "a new control process pushes a new generation"
    );
}

/// [`Lab::kill_and_restart_control`], then time for a `GetState` after the Sync
/// (the pods' attach status comes from one).
fn restart_control(lab: &Lab) {
    lab.kill_and_restart_control();
    thread::sleep(Duration::from_millis(2500));
}

/// `kxdpctl pod add` of pod NAME on NODE with the lab's conventions
/// (MAC 0a:58:<ip>, veth kx<hex ip>).
fn pod_add(lab: &Lab, node: &str, name: &str, ip: Ipv4Addr) {
    let (mac, ifname) = pod_mac_ifname(ip);
    check(
        &format!("kxdpctl pod add {node}/{name}"),
        lab.kxdpctl_raw(&[
            "pod",
            "add",
            "--node",
            node,
            "--name",
            name,
            "--ip",
            &ip.to_string(),
            "--mac",
            &mac,
            "--ifname",
            &ifname,
        ]),
    );
}

/// Pod NAME's status as `kxdpctl pods` has it from its dataplane's
/// `GetState` ("attached", "pending"), `None` if control does not know it.
fn pod_status(pods: &[Value], name: &str) -> Option<String> {
    pods.iter()
        .find(|p| p["name"] == name)
        .map(|p| p["status"].as_str().unwrap_or("").to_string())
}

/// The names of the services NODE's dataplane holds (its counters).
fn dataplane_services(lab: &Lab, node: &str) -> Vec<String> {
    let c = lab.counters(node);
    c.0["services"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A byte-checked TCP exchange from CLIENT_NS to VIP:PORT, served by a
/// one-connection echo server on SERVER_IP:TARGET in SERVER_NS.
fn echo_through(
    client_ns: &str,
    vip: SocketAddr,
    servers: &[(String, Ipv4Addr)],
    target: u16,
) -> Result<(), String> {
    let _servers: Vec<_> = servers
        .iter()
        .map(|(ns, ip)| tcp_echo_server(ns, *ip, target))
        .collect();
    let s = tcp_connect(client_ns, vip, Duration::from_secs(10))?;
    tcp_send_and_check(s, 256 * 1024, 11).map(|_| ())
}

#[test]
fn control_restart_keeps_runtime_pods_and_services_and_their_traffic() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    // A pod plugged in as the CNI plugin would (netns, veth), registered at
    // run time; a service at run time whose endpoint it is; and the
    // example service (endpoints: the file's p2 pods).
    let rt_ip = Ipv4Addr::new(10, 244, 1, 50);
    let rt_ns = lab.add_pod_netns("n1", "rt", rt_ip);
    pod_add(&lab, "n1", "rt", rt_ip);
    lab.service_apply(&json!({
        "name": "default/rt",
        "cluster_ip": "10.96.0.30",
        "ports": [{ "port": 80, "target_port": 8080 }],
        "endpoints": [{ "ip": rt_ip.to_string() }],
    }));
    check(
        "kxdpctl service apply config/service-example.yaml",
        lab.kxdpctl_raw(&[
            "service",
            "apply",
            repo_root()
                .join("config/service-example.yaml")
                .to_str()
                .unwrap(),
        ]),
    );
    // Deleted before the restart: must stay deleted.
    lab.service_apply(&json!({
        "name": "default/gone",
        "cluster_ip": "10.96.0.31",
        "ports": [{ "port": 80 }],
        "endpoints": [{ "ip": rt_ip.to_string() }],
    }));
    lab.service_del("default/gone");
    let rt_vip = SocketAddr::from((Ipv4Addr::new(10, 96, 0, 30), 80));
    echo_through(
        &lab.ns("n2-p1"),
        rt_vip,
        &[(rt_ns.name().to_string(), rt_ip)],
        8080,
    )
    .expect("the run-time service before the restart");

    restart_control(&lab);

    assert_eq!(
        pod_status(&lab.pod_infos(), "rt").as_deref(),
        Some("attached"),
        "the run-time pod is still attached on n1"
    );
    for node in ["n1", "n2"] {
        let held = dataplane_services(&lab, node);
        for name in ["default/rt", "default/echo"] {
            assert!(
                held.iter().any(|s| s == name),
                "{node} lost {name}: {held:?}"
            );
        }
        assert!(
            !held.iter().any(|s| s == "default/gone"),
            "{node}: a deleted service came back: {held:?}"
        );
    }
    // Traffic to both, from the other node, through their ClusterIPs.
    echo_through(
        &lab.ns("n2-p1"),
        rt_vip,
        &[(rt_ns.name().to_string(), rt_ip)],
        8080,
    )
    .expect("the run-time service (run-time pod) after the restart");
    echo_through(
        &lab.ns("n2-p1"),
        SocketAddr::from((Ipv4Addr::new(10, 96, 0, 20), 7)),
        &[
            (lab.ns("n1-p2"), Ipv4Addr::new(10, 244, 1, 3)),
            (lab.ns("n2-p2"), Ipv4Addr::new(10, 244, 2, 3)),
        ],
        7,
    )
    .expect("the example service after the restart");
    // And straight to the run-time pod from the other node.
    echo_through(
        &lab.ns("n2-p1"),
        SocketAddr::from((rt_ip, 9000)),
        &[(rt_ns.name().to_string(), rt_ip)],
        9000,
    )
    .expect("pod to run-time pod after the restart");
}

/// The figure: 50 run-time pods and 50 run-time services, a killed
/// and restarted control process, 0 lost (printed as `lost: N of 100`).
#[test]
fn control_restart_loses_none_of_50_runtime_pods_and_services() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    const N: u8 = 50;
    let pod = |i: u8| {
        let node = if i.is_multiple_of(2) { "n1" } else { "n2" };
        let ip = Ipv4Addr::new(10, 244, 1 + i % 2, 100 + i);
        (node, format!("rt-{i}"), ip)
    };
    let started = Instant::now();
    for i in 0..N {
        let (node, name, ip) = pod(i);
        pod_add(&lab, node, &name, ip);
        lab.service_apply(&json!({
            "name": format!("default/rt-{i}"),
            "cluster_ip": format!("10.96.1.{}", 10 + i),
            "ports": [{ "port": 80, "target_port": 8080 }],
            "endpoints": [{ "ip": ip.to_string() }],
        }));
    }
    eprintln!("added {N} pods and {N} services in {:?}", started.elapsed());

    restart_control(&lab);

    let pods = lab.pod_infos();
    let services: Vec<Vec<String>> = ["n1", "n2"]
        .iter()
        .map(|n| dataplane_services(&lab, n))
        .collect();
    let mut lost = Vec::new();
    for i in 0..N {
        let (_, name, _) = pod(i);
        // No veth: the dataplane holds the pod as pending.
        match pod_status(&pods, &name).as_deref() {
            Some("pending") | Some("attached") => {}
            other => lost.push(format!("pod {name}: {other:?}")),
        }
        let svc = format!("default/rt-{i}");
        for (node, held) in ["n1", "n2"].iter().zip(&services) {
            if !held.contains(&svc) {
                lost.push(format!("service {svc} on {node}"));
            }
        }
    }
    eprintln!(
        "control restart with {N} run-time pods and {N} run-time services: lost {} ({:?})",
        lost.len(),
        lost
    );
    assert!(lost.is_empty(), "lost: {lost:?}");
    // Control knows exactly these run-time objects (plus the file's pods).
    let names: Vec<&str> = pods.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("rt-")).count(),
        N as usize
    );
}
