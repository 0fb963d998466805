//! `kxdpctl trace` and `kxdpctl capture` on a lab node: a traced ClusterIP
//! packet names its backend and its DNAT, and pcapng files written at
//! `drop`, `rx` and `tx` read back with tcpdump with the frames sent and,
//! for drops, the reason of each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use kxdp_e2e::{
    check, hellos, id_server, inject_frames, malformed_pod_frames, neighbour_mac, ns_exec,
    repo_root, require_root, run_timeout, Lab, LabOpts,
};
use kxdp_testkit::TempDir;
use serde_json::Value;

#[test]
fn a_traced_clusterip_packet_names_its_backend_and_the_dnat() {
    require_root!();
    let lab = Lab::up(LabOpts {
        cluster: Some(repo_root().join("config/lab-services.yaml")),
        ..LabOpts::default()
    });
    // default/web: 10.96.0.10:80 -> n1-p1, n2-p1 on 8080.
    let _servers: Vec<_> = ["n1-p1", "n2-p1"]
        .iter()
        .map(|p| id_server(&lab.ns(p), lab.pod(p).ip, 8080, p))
        .collect();
    let client = lab.pod("n1-p2").ip;
    let to = SocketAddr::from(([10, 96, 0, 10], 80));
    let filter = format!("src {client} and dst 10.96.0.10 and proto tcp and port 80");
    let args = [
        "trace", "--node", "n1", "--count", "1", "--match", &filter, "--json",
    ];
    let out = lab.kxdpctl_while(&args, || {
        hellos(&lab.ns("n1-p2"), to, 1, "trace", Duration::from_secs(5));
    });
    let text = check("kxdpctl trace", out);
    let v: Value = serde_json::from_str(&text).expect("trace JSON");
    let packets = v["packets"].as_array().expect("packets");
    assert_eq!(packets.len(), 1, "{text}");
    let steps: Vec<&str> = packets[0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    eprintln!("{}", steps.join("\n"));
    // The first packet of a connection: a SYN, a new flow, a Maglev pick.
    assert!(steps[0].contains("flags SYN ttl 64"), "{steps:?}");
    assert!(
        steps.iter().any(|s| s.starts_with("conntrack: new flow")),
        "{steps:?}"
    );
    let backend = steps
        .iter()
        .find_map(|s| s.strip_prefix("backend: "))
        .unwrap_or_else(|| panic!("no backend in {steps:?}"));
    let (addr, why) = backend
        .split_once(" of default/web (")
        .expect("backend line");
    assert!(why.starts_with("Maglev"), "{backend}");
    let backends = ["n1-p1", "n2-p1"].map(|p| format!("{}:8080", lab.pod(p).ip));
    assert!(
        backends.contains(&addr.to_string()),
        "{addr} is not a web backend"
    );
    let dnat = format!("DNAT: 10.96.0.10:80 -> {addr}");
    assert!(steps.contains(&dnat.as_str()), "{dnat:?} not in {steps:?}");
    let verdict = packets[0]["verdict"].as_str().unwrap();
    assert!(verdict.starts_with("tx "), "{verdict}");
    assert!(packets[0]["generation"].as_u64().unwrap() > 0);
    // A remote backend is reached through VXLAN, a local one directly.
    let remote = addr.starts_with(&lab.pod("n2-p1").ip.to_string());
    let encap = steps.iter().any(|s| s.starts_with("VXLAN encap"));
    assert_eq!(remote, encap, "{steps:?}");

    // Nothing matching: a clear failure, not an empty success.
    let out = lab.kxdpctl_raw(&[
        "trace",
        "--node",
        "n1",
        "--count",
        "1",
        "--timeout",
        "1",
        "--match",
        "port 1",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nothing traced on node n1 within 1 s"),
        "{err}"
    );
    // A bad filter names the field.
    let out = lab.kxdpctl_raw(&["trace", "--node", "n1", "--match", "port eth99"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("filter: port \"eth99\": no such interface"),
        "{err}"
    );
}

/// `tcpdump -r FILE` (with `extra`): one string per packet (its
/// continuation lines joined to it).
fn tcpdump(file: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["-nn", "-r", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let text = check("tcpdump -r", run_timeout(20, "tcpdump", &args));
    let mut packets: Vec<String> = vec![];
    for line in text.lines() {
        match packets.last_mut() {
            Some(p) if line.starts_with(char::is_whitespace) => *p += line,
            _ => packets.push(line.to_string()),
        }
    }
    packets
}

#[test]
fn captures_at_drop_rx_and_tx_read_back_with_tcpdump() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let tmp = TempDir::new("trace-e2e");
    let dir = &tmp.0;
    let p = lab.pod("n1-p1").clone();
    let q = lab.pod("n1-p2").clone();
    let ns = lab.ns("n1-p1");
    // Resolve the gateway (a ping through it, to the other node).
    let remote = lab.pod("n2-p1").ip.to_string();
    check(
        "ping",
        ns_exec(&ns, 10, "ping", &["-c", "1", "-W", "2", &remote]),
    );
    let gw_mac = neighbour_mac(&ns, p.gateway, "eth0").expect("p1 resolved its gateway");

    // Drops: frames whose only fate is a counted drop.
    let keep = [
        "ipv4_truncated",
        "ipv4_bad_ihl",
        "ipv4_options",
        "fragment_malformed",
        "ipv4_bad_checksum",
        "unsupported_ethertype",
    ];
    let bad: Vec<(&str, Vec<u8>)> =
        malformed_pod_frames(p.mac, gw_mac, p.ip, lab.pod("n2-p1").ip, q.ip)
            .into_iter()
            .filter(|(r, _)| keep.contains(r))
            .collect();
    let mut expected: BTreeMap<String, usize> = BTreeMap::new();
    for (r, _) in &bad {
        *expected.entry(format!("drop {r}")).or_default() += 1;
    }
    let file = dir.join("drop.pcapng");
    let count = bad.len().to_string();
    let filter = format!("port {}", p.ifname);
    let args = [
        "capture",
        "--node",
        "n1",
        "--point",
        "drop",
        "--match",
        &filter,
        "--count",
        &count,
        "-w",
        file.to_str().unwrap(),
    ];
    let frames: Vec<Vec<u8>> = bad.iter().map(|(_, f)| f.clone()).collect();
    let mut sent = false;
    let out = lab.kxdpctl_while(&args, || {
        if !sent {
            assert_eq!(inject_frames(&ns, "eth0", &frames), frames.len());
            sent = true;
        }
    });
    let text = check("kxdpctl capture --point drop", out);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let verdict = line.split(": ").nth(1).expect("in PORT worker N: VERDICT");
        let verdict = verdict.split(" (generation").next().unwrap();
        *reasons.entry(verdict.to_string()).or_default() += 1;
    }
    assert_eq!(reasons, expected, "{text}");
    let lines = tcpdump(&file, &["-v"]);
    assert_eq!(lines.len(), bad.len(), "{lines:#?}");
    let checksum = lines.iter().filter(|l| l.contains("bad cksum")).count();
    assert!(checksum >= 1, "tcpdump sees the bad checksum: {lines:#?}");

    // rx and tx: five pings p1 -> p2, as received (TTL 64) and as sent
    // (TTL 63, MACs rewritten).
    let filter = format!("src {} and dst {} and proto icmp", p.ip, q.ip);
    for (point, ttl) in [("rx", 64), ("tx", 63)] {
        let file = dir.join(format!("{point}.pcapng"));
        let args = [
            "capture",
            "--node",
            "n1",
            "--point",
            point,
            "--match",
            &filter,
            "--count",
            "5",
            "-w",
            file.to_str().unwrap(),
        ];
        let out = lab.kxdpctl_while(&args, || {
            ns_exec(
                &ns,
                10,
                "ping",
                &["-c", "5", "-i", "0.2", &q.ip.to_string()],
            );
        });
        let text = check(&format!("kxdpctl capture --point {point}"), out);
        assert!(text.starts_with("5 frames written"), "{text}");
        let lines = tcpdump(&file, &["-v", "-e"]);
        let requests: Vec<_> = lines
            .iter()
            .filter(|l| l.contains(&format!("ttl {ttl},")))
            .collect();
        let replies = lines
            .iter()
            .filter(|l| l.contains(&format!("{} > {}: ICMP echo request", p.ip, q.ip)))
            .count();
        assert_eq!((requests.len(), replies), (5, 5), "{point}: {lines:#?}");
    }
}
