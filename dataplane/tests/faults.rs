//! A stuck or dead worker is reported, never hidden: the real binary with a
//! test fault (`--test-fault`, `dataplane/src/fault.rs`) armed.

mod common;

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{node_namespaces, state, Dataplane};
use kxdp_proto::dataplane as pb;
use kxdp_proto::dataplane::dataplane_client::DataplaneClient;
use kxdp_testkit::{require_root, unique_name, NetNs};
use tonic::transport::Channel;
use tonic::Code;

/// The worker's stall: longer than the engine's 5 s acknowledgement timeout.
const STALL_SECS: u64 = 8;

/// A dataplane with `fault` armed, in fresh namespaces, and a client on it.
async fn faulty(tag: &str, fault: &str) -> ((NetNs, NetNs), Dataplane, DataplaneClient<Channel>) {
    let tag = unique_name(tag);
    let namespaces = node_namespaces(&tag);
    let socket = std::env::temp_dir().join(format!("{tag}.sock"));
    let dp = Dataplane::start(&namespaces.0, socket.clone(), &["--test-fault", fault]);
    let c = DataplaneClient::new(kxdp_proto::connect_unix(&socket).await.unwrap());
    (namespaces, dp, c)
}

async fn sync(c: &mut DataplaneClient<Channel>, generation: u64) -> Result<u64, tonic::Status> {
    let request = pb::SyncRequest {
        state: Some(state(generation, Vec::new())),
    };
    c.sync(request).await.map(|r| r.into_inner().generation)
}

async fn generation(c: &mut DataplaneClient<Channel>) -> u64 {
    let r = c.get_state(pb::GetStateRequest { summary: true }).await;
    r.unwrap().into_inner().state.unwrap().generation
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_a_worker_does_not_acknowledge_fails_naming_the_worker() {
    require_root();
    let fault = format!("stall:0:{STALL_SECS}");
    let (_ns, _dp, mut c) = faulty("stall", &fault).await;

    let start = Instant::now();
    let e = sync(&mut c, 5)
        .await
        .expect_err("a stalled worker's write succeeded");
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(
        e.message()
            .contains("worker 0 did not acknowledge generation 5 within 5s"),
        "{}",
        e.message()
    );
    assert!(
        start.elapsed() < Duration::from_secs(STALL_SECS),
        "answered only after the stall: {:?}",
        start.elapsed()
    );
    // Nothing vouches for generation 5: a control process would sync again.
    assert_eq!(generation(&mut c).await, 0);

    // The worker comes back and handles its queue: the next Sync succeeds.
    assert_eq!(sync(&mut c, 5).await.expect("sync after the stall"), 5);
    assert_eq!(generation(&mut c).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_ends_the_process() {
    require_root();
    let (_ns, mut dp, mut c) = faulty("panic", "panic:0").await;

    let write = tokio::time::timeout(Duration::from_secs(10), sync(&mut c, 5)).await;
    assert!(
        !matches!(write, Ok(Ok(_))),
        "a write succeeded though its worker died"
    );
    let status = dp
        .exit_within(Duration::from_secs(10))
        .expect("kxdp-dataplane still runs 10 s after its worker panicked");
    // SIGABRT: not a clean exit, so systemd's Restart=on-failure restarts it.
    assert_eq!(status.signal(), Some(6), "{status:?}");
    let log = dp.log();
    assert!(
        log.contains("thread kxdp-worker-0 panicked: aborting"),
        "{log}"
    );
}

/// `/healthz` of a dataplane in `ns` (on `--metrics-address 127.0.0.1:9464`
/// there): status code and JSON body.
fn healthz(ns: &NetNs) -> (u16, serde_json::Value) {
    let out = ns.exec(
        "curl",
        &[
            "-sS",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
            "http://127.0.0.1:9464/healthz",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("curl: {text} {}", String::from_utf8_lossy(&out.stderr)));
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (code.trim().parse().expect("an HTTP status"), body)
}

/// What arrives on a notify socket within `window`.
fn notifications(sock: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    got
}

fn has(messages: &[String], what: &str) -> bool {
    messages.iter().any(|m| m.lines().any(|l| l == what))
}

/// The systemd side: `/healthz` and sd_notify's READY=1 and WATCHDOG=1, with
/// worker 0 stopped by the stall fault for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_and_the_watchdog_stops_while_a_worker_is_stopped() {
    require_root();
    let tag = unique_name("hz");
    let namespaces = node_namespaces(&tag);
    let node = &namespaces.0;
    let dir = kxdp_testkit::TempDir::new(&tag);
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let socket = dir.path().join("dp.sock");
    let fault = format!("stall:0:{STALL_SECS}");
    let _dp = Dataplane::start_with_env(
        node,
        socket.clone(),
        &[
            "--test-fault",
            &fault,
            "--metrics-address",
            "127.0.0.1:9464",
        ],
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut c = DataplaneClient::new(kxdp_proto::connect_unix(&socket).await.unwrap());

    // Alive but not synced: healthy, pinging, not ready.
    let (code, body) = healthz(node);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["workers"][0]["state"], "polling", "{body}");
    let got = notifications(&notify, Duration::from_millis(1500));
    assert!(has(&got, "WATCHDOG=1"), "{got:?}");
    assert!(!has(&got, "READY=1"), "ready before any sync: {got:?}");

    // The first tables stall worker 0: /healthz turns 503 naming it, and
    // the watchdog pings stop (systemd would restart the process).
    let write = tokio::spawn(async move {
        let r = sync(&mut c, 5).await;
        (c, r)
    });
    let deadline = Instant::now() + Duration::from_secs(STALL_SECS - 1);
    let body = loop {
        let (code, body) = healthz(node);
        if code == 503 {
            break body;
        }
        assert!(Instant::now() < deadline, "/healthz stayed {code}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(body["healthy"], false, "{body}");
    assert_eq!(body["workers"][0]["state"], "stuck", "{body}");
    let why = body["reasons"][0].as_str().unwrap_or_default();
    assert!(why.starts_with("worker 0 has not polled for"), "{body}");
    notifications(&notify, Duration::from_millis(600));
    let got = notifications(&notify, Duration::from_millis(1500));
    assert!(!has(&got, "WATCHDOG=1"), "pinged while stuck: {got:?}");

    // The write fails (unacknowledged): still unhealthy after the stall.
    let (mut c, r) = write.await.unwrap();
    assert!(r.is_err(), "{r:?}");
    let (code, body) = healthz(node);
    assert_eq!(code, 503, "{body}");
    assert!(body.to_string().contains("not acknowledged"), "{body}");

    // A write every worker takes: healthy, READY=1 (synced and attached),
    // and the pings again.
    assert_eq!(sync(&mut c, 6).await.expect("sync after the stall"), 6);
    let (code, body) = healthz(node);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["generation"], 6, "{body}");
    assert_eq!(body["attached"], true, "{body}");
    assert!(body["lastUpdated"].is_string(), "{body}");
    let got = notifications(&notify, Duration::from_millis(2500));
    assert!(has(&got, "READY=1"), "{got:?}");
    let pings = got.iter().filter(|m| m.as_str() == "WATCHDOG=1").count();
    assert!(pings >= 2, "{got:?}");
}
