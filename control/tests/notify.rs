//! The real kxdp-control under a stand-in for systemd: READY=1 on
//! `$NOTIFY_SOCKET` once it serves, WATCHDOG=1 every half `$WATCHDOG_USEC`,
//! and `/metrics` and `/healthz` on `--metrics-address`, with no dataplane
//! anywhere (every node unreachable, within the grace period).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kxdp_testkit::{free_port, TempDir};

/// Killed (by PID) and reaped when dropped.
struct Control(Child);

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    let code = s.split(' ').nth(1).unwrap().parse().unwrap();
    let body = s.split_once("\r\n\r\n").unwrap().1.to_string();
    (code, body)
}

#[test]
fn control_tells_systemd_it_is_ready_and_alive_and_serves_metrics() {
    let dir = TempDir::new("ctlnotify");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _control = Control(
        Command::new(env!("CARGO_BIN_EXE_kxdp-control"))
            .arg("--lab")
            .arg("--listen")
            .arg(dir.path().join("control.sock"))
            .arg("--dataplane-dir")
            .arg(dir.path())
            .arg("--state-file")
            .arg(dir.path().join("control-state.json"))
            .args(["--metrics-address", &addr])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("WATCHDOG_USEC", "1000000")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start kxdp-control"),
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = notify.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let pings = got.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
        if got.iter().any(|m| m.starts_with("READY=1\n")) && pings >= 3 {
            break;
        }
    }
    assert!(got.iter().any(|m| m.starts_with("READY=1\n")), "{got:?}");
    let pings = got.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
    assert!(pings >= 3, "{got:?}");

    let (code, body) = get(&addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("kxdp_control_node_reachable{node=\"n1\"} 0"),
        "{body}"
    );
    // No Sync was sent yet (no dataplane): that family comes with the first.
    assert!(!body.contains("kxdp_control_syncs_total"), "{body}");
    assert!(
        body.contains("kxdp_control_store_info{store=\"file\"} 1"),
        "{body}"
    );
    let (code, body) = get(&addr, "/healthz");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nodes"][0]["node"], "n1", "{v}");
    assert_eq!(v["nodes"][0]["status"], "unreachable", "{v}");
    assert_eq!(get(&addr, "/nope").0, 404);
}
