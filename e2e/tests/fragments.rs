//! IPv4 fragments through kxdp: a pod's UDP datagram larger than the pod
//! MTU (1450) leaves its namespace in fragments; kxdp gives the later ones
//! the first one's ClusterIP translation on the client's node, carries them
//! over VXLAN to a backend on the other node, and does the same for the
//! fragmented answer. Checked with a 4 KB datagram and an identity server,
//! then with a real DNS server (dnsmasq) as a pod behind a ClusterIP on port
//! 53 and `dig` asking over UDP only for an answer larger than the MTU.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use kxdp_e2e::{
    check, in_netns, ns_exec, parse_udp_answer, require_root, udp_id_server, wait_until,
    ChildGuard, Lab, LabOpts,
};
use serde_json::json;

const CLIENT: &str = "n1-p1";
const BACKEND: &str = "n2-p1";

/// A run-time UDP service `name` at `cluster_ip:port` to `BACKEND`'s
/// `target_port`.
fn udp_service(lab: &Lab, name: &str, cluster_ip: &str, port: u16, target_port: u16) {
    lab.service_apply(&json!({
        "name": name,
        "cluster_ip": cluster_ip,
        "ports": [{ "name": "udp", "protocol": "UDP", "port": port, "target_port": target_port }],
        "endpoints": [{ "ip": lab.pod(BACKEND).ip.to_string() }],
    }));
}

#[test]
fn a_4k_udp_datagram_through_a_cluster_ip_arrives_whole_on_the_other_node_and_back() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let port = 9053;
    let _server = udp_id_server(&lab.ns(BACKEND), lab.pod(BACKEND).ip, port, BACKEND);
    let cluster_ip: Ipv4Addr = "10.96.0.50".parse().unwrap();
    udp_service(&lab, "default/frag", "10.96.0.50", 9999, port);
    let before = lab.counters("n1");

    let client_ip = lab.pod(CLIENT).ip;
    let sock = in_netns(&lab.ns(CLIENT), move || {
        UdpSocket::bind((client_ip, 0)).expect("bind the client socket")
    });
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let me = sock.local_addr().unwrap();
    let payload: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    let to = SocketAddr::from((cluster_ip, 9999));
    let mut buf = vec![0u8; 65536];
    // The first datagrams may meet next hops being resolved: a few tries.
    let answer = (0..5).find_map(|_| {
        sock.send_to(&payload, to).expect("send");
        sock.recv_from(&mut buf).ok()
    });
    let Some((n, from)) = answer else {
        panic!(
            "no answer through {to}; n1 drops since: {:?}\n{}",
            lab.counters("n1").drops_since(&before),
            lab.log_tails(30)
        );
    };
    assert_eq!(from, to, "the answer comes from the ClusterIP");
    assert!(n > 4096, "a fragmented answer: {n} bytes");
    let (id, seen, echoed) = parse_udp_answer(&buf[..n]).expect("an identity answer");
    assert_eq!(id, BACKEND, "answered by the backend on n2");
    assert_eq!(seen, me, "the backend saw the client's own address");
    assert!(echoed == payload, "all 4096 bytes arrived whole, in order");

    let after = lab.counters("n1");
    let translated = after.get("fragments_translated") - before.get("fragments_translated");
    // Each way: 3 fragments at MTU 1450, the two later ones translated.
    assert!(
        translated >= 4,
        "n1 translated {translated} later fragments"
    );
    let drops = after.drops_since(&before);
    assert!(
        !drops.contains_key("fragment_without_first") && !drops.contains_key("ipv4_fragment"),
        "{drops:?}"
    );
}

/// A TXT answer of `STRINGS` strings of `STRING_LEN` bytes: about 3 KB, more
/// than two pod MTUs.
const STRINGS: usize = 12;
const STRING_LEN: usize = 250;

#[test]
fn dig_gets_a_dns_answer_larger_than_the_mtu_over_udp_through_a_cluster_ip() {
    require_root!();
    let lab = Lab::up(LabOpts::default());
    let server = lab.pod(BACKEND).ip.to_string();
    let strings: Vec<String> = (0..STRINGS)
        .map(|i| {
            let c = (b'a' + i as u8) as char;
            c.to_string().repeat(STRING_LEN)
        })
        .collect();
    let quoted: Vec<String> = strings.iter().map(|s| format!("\"{s}\"")).collect();
    let txt = format!("--txt-record=big.kxdp.test,{}", quoted.join(","));
    // Stopped by its PID (the guard) when the test ends, passes or fails;
    // the lab's namespaces go with `lab`.
    let mut dnsmasq = ChildGuard(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns(BACKEND),
                "timeout",
                "-k",
                "2",
                "120",
            ])
            .args([
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--pid-file=",
                "--bind-interfaces",
                &format!("--listen-address={server}"),
                "--port=53",
                "--edns-packet-max=4096",
                &txt,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq"),
    );
    let up = wait_until(Duration::from_secs(10), || {
        let out = ns_exec(
            &lab.ns(BACKEND),
            5,
            "dig",
            &[
                "+short",
                "+notcp",
                "+time=1",
                "+tries=1",
                &format!("@{server}"),
                "big.kxdp.test",
                "TXT",
            ],
        );
        out.status.success() && !out.stdout.is_empty()
    });
    assert!(
        up,
        "dnsmasq answers in its own namespace ({:?})",
        dnsmasq.0.try_wait()
    );
    udp_service(&lab, "default/dns", "10.96.0.53", 53, 53);
    let before = lab.counters("n1");

    let out = check(
        "dig from n1-p1",
        ns_exec(
            &lab.ns(CLIENT),
            30,
            "dig",
            &[
                "+notcp",
                "+ignore",
                "+bufsize=4096",
                "+time=2",
                "+tries=5",
                "@10.96.0.53",
                "big.kxdp.test",
                "TXT",
            ],
        ),
    );
    let flags = out
        .lines()
        .find(|l| l.starts_with(";; flags:"))
        .unwrap_or_else(|| panic!("no header in dig's answer:\n{out}"));
    assert!(
        flags.contains("ANSWER: 1,"),
        "one TXT record: {flags}\n{out}"
    );
    let header_flags = flags
        .trim_start_matches(";; flags:")
        .split(';')
        .next()
        .unwrap_or_default();
    assert!(
        !header_flags.split_whitespace().any(|f| f == "tc"),
        "not truncated: {flags}"
    );
    let size: usize = out
        .lines()
        .find_map(|l| l.strip_prefix(";; MSG SIZE  rcvd: "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no size in dig's answer:\n{out}"));
    assert!(
        size > STRINGS * STRING_LEN,
        "a {size}-byte answer, larger than two pod MTUs (1450)"
    );
    for s in &strings {
        assert!(out.contains(s.as_str()), "every TXT string arrived:\n{out}");
    }
    let after = lab.counters("n1");
    let translated = after.get("fragments_translated") - before.get("fragments_translated");
    assert!(
        translated >= 2,
        "n1 translated {translated} later fragments"
    );
    dnsmasq.stop();
}
