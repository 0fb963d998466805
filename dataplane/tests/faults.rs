//! A stuck or dead worker is reported, never hidden: the real binary with a
//! test fault (`--test-fault`, `dataplane/src/fault.rs`) armed.

mod common;

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
