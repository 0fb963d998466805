//! kxdp-control restarting (even killed) re-syncs every node without
//! disturbing established flows: a byte-checked stream through a ClusterIP
//! keeps going across the restart, on the same conntrack entry and backend.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kxdp_e2e::{repo_root, require_root, tcp_connect, tcp_echo_server, Lab, LabOpts, Pattern};

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
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    // Stream until told to stop; read the echo back and check every byte.
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = s.try_clone().unwrap();
    let stop_w = stop.clone();
    let writer = thread::spawn(move || -> Result<u64, String> {
        let mut p = Pattern::new(7);
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop_w.load(Ordering::Relaxed) && Instant::now() < deadline {
            p.fill(&mut buf);
            w.write_all(&buf)
                .map_err(|e| format!("write after {sent} bytes: {e}"))?;
            sent += buf.len() as u64;
            thread::sleep(Duration::from_millis(2));
        }
        w.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
        Ok(sent)
    });
    let reader = thread::spawn(move || -> Result<u64, String> {
        let mut r = s;
        let mut expect = Pattern::new(7);
        let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let mut got = 0u64;
        loop {
            let n = r
                .read(&mut buf)
                .map_err(|e| format!("read after {got} bytes: {e}"))?;
            if n == 0 {
                return Ok(got);
            }
            expect.fill(&mut want[..n]);
            if buf[..n] != want[..n] {
                return Err(format!("echo differs near byte {got}"));
            }
            got += n as u64;
        }
    });

    thread::sleep(Duration::from_millis(500));
    let before = flows(&lab, "n2");
    assert_eq!(before.len(), 1, "one tracked flow on n2: {before:?}");
    let gen = lab.node_info("n2")["desired_generation"].clone();

    let out = lab.lab_sh(&["restart-control", "--kill"], 120);
    assert!(
        out.status.success(),
        "lab.sh restart-control: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Keep streaming a while on the re-synced dataplanes.
    thread::sleep(Duration::from_secs(1));
    let after = flows(&lab, "n2");
    stop.store(true, Ordering::Relaxed);

    let sent = writer.join().unwrap().expect("writer");
    let got = reader.join().unwrap().expect("reader");
    assert_eq!(got, sent, "echoed bytes");
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
