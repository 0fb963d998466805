//! The dataplane's gRPC API against the real binary in a real namespace:
//! invalid writes are refused with the field named and change nothing;
//! accepted writes are visible in the state read-back.

mod common;

use std::time::{Duration, Instant};

use common::{node_namespaces, pod, state, Dataplane};
use kxdp_proto::dataplane as pb;
use kxdp_proto::dataplane::dataplane_client::DataplaneClient;
use kxdp_testkit::{require_root, unique_name, veth};
use tonic::transport::Channel;
use tonic::Code;

async fn get(c: &mut DataplaneClient<Channel>) -> pb::GetStateReply {
    get_state(c, false).await
}

async fn get_state(c: &mut DataplaneClient<Channel>, summary: bool) -> pb::GetStateReply {
    c.get_state(pb::GetStateRequest { summary })
        .await
        .unwrap()
        .into_inner()
}

fn pod_state(r: &pb::GetStateReply, name: &str) -> pb::AttachState {
    let p = r.pods.iter().find(|p| p.name == name).expect("pod listed");
    pb::AttachState::try_from(p.state).unwrap()
}

async fn update(
    c: &mut DataplaneClient<Channel>,
    generation: u64,
    op: pb::change::Op,
) -> Result<u64, tonic::Status> {
    c.update(pb::UpdateRequest {
        generation,
        changes: vec![pb::Change { op: Some(op) }],
    })
    .await
    .map(|r| r.into_inner().generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_validated_atomic_and_read_back() {
    require_root();
    let tag = unique_name("dp");
    let (node_ns, peer_ns) = node_namespaces(&tag);
    veth(&node_ns, "kxa", &peer_ns, "poda");
    let socket = std::env::temp_dir().join(format!("{tag}.sock"));
    let _dp = Dataplane::start(&node_ns, socket.clone(), &[]);
    let mut c = DataplaneClient::new(kxdp_proto::connect_unix(&socket).await.unwrap());

    let empty = get(&mut c).await;
    assert_eq!(empty.state.as_ref().unwrap().generation, 0);
    assert!(!empty.boot_id.is_empty());

    // Invalid syncs: the field is named, nothing is applied.
    let mut bad = state(5, vec![pod("p1", "10.244.1.2", "kxa")]);
    bad.node.as_mut().unwrap().uplink = "eth9".into();
    let e = c
        .sync(pb::SyncRequest { state: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("state.node.uplink"), "{}", e.message());
    let mut bad = state(5, vec![pod("p1", "10.245.1.2", "kxa")]);
    bad.remote_nodes.clear();
    let e = c
        .sync(pb::SyncRequest { state: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("pods[p1].ip"), "{}", e.message());
    let e = c.sync(pb::SyncRequest { state: None }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Another node's state: this dataplane was started as --node n1.
    let mut other = state(5, vec![pod("p1", "10.244.1.2", "kxa")]);
    other.node.as_mut().unwrap().name = "n7".into();
    let e = c
        .sync(pb::SyncRequest { state: Some(other) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("serves node \"n1\"") && e.message().contains("node \"n7\""),
        "{}",
        e.message()
    );
    assert_eq!(
        get(&mut c).await.state,
        empty.state,
        "refused syncs changed the state"
    );

    // Update before any sync: refused.
    let e = update(&mut c, 9, pb::change::Op::DeletePod("p1".into()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // A valid sync is read back exactly, and the pod's veth gets attached.
    let want = state(5, vec![pod("p1", "10.244.1.2", "kxa")]);
    let g = c
        .sync(pb::SyncRequest {
            state: Some(want.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.generation, 5);
    let got = get(&mut c).await;
    assert_eq!(got.state.as_ref(), Some(&want));
    assert_eq!(pod_state(&got, "p1"), pb::AttachState::Attached);
    // A poller's summary: the generation and the pods' status, no contents.
    let brief = get_state(&mut c, true).await;
    let held = brief.state.as_ref().expect("a state");
    assert_eq!(held.generation, 5);
    assert!(held.node.is_none() && held.pods.is_empty() && held.remote_nodes.is_empty());
    assert_eq!(pod_state(&brief, "p1"), pb::AttachState::Attached);
    assert_eq!(brief.boot_id, got.boot_id);
    assert!(
        got.uplink_status.starts_with("attached"),
        "{}",
        got.uplink_status
    );

    // Updates: stale generation, bad field, missing delete -> refused, unchanged.
    let e = update(&mut c, 5, pb::change::Op::DeletePod("p1".into()))
        .await
        .unwrap_err();
    assert!(e.message().contains("generation"), "{}", e.message());
    let e = update(
        &mut c,
        6,
        pb::change::Op::UpsertPod(pod("p2", "10.244.1.2", "kxb")),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("pods[p2].ip"),
        "duplicate IP: {}",
        e.message()
    );
    let e = update(&mut c, 6, pb::change::Op::DeleteRemoteNode("n7".into()))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("changes[0].delete_remote_node"),
        "{}",
        e.message()
    );
    let e = c
        .update(pb::UpdateRequest {
            generation: 6,
            changes: vec![pb::Change { op: None }],
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("changes[0]"), "{}", e.message());
    assert_eq!(
        get(&mut c).await.state.as_ref(),
        Some(&want),
        "refused updates changed the state"
    );

    // A pod whose veth does not exist yet is accepted as pending and
    // attached once the interface appears.
    let g = update(
        &mut c,
        6,
        pb::change::Op::UpsertPod(pod("p2", "10.244.1.3", "kxb")),
    )
    .await
    .unwrap();
    assert_eq!(g, 6);
    let got = get(&mut c).await;
    assert_eq!(got.state.as_ref().unwrap().pods.len(), 2);
    assert_eq!(pod_state(&got, "p2"), pb::AttachState::Pending);
    veth(&node_ns, "kxb", &peer_ns, "podb");
    let deadline = Instant::now() + Duration::from_secs(5);
    while pod_state(&get(&mut c).await, "p2") != pb::AttachState::Attached {
        assert!(Instant::now() < deadline, "p2 never attached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Deleting a pod detaches it; counters list every drop reason.
    update(&mut c, 7, pb::change::Op::DeletePod("p1".into()))
        .await
        .unwrap();
    let got = get(&mut c).await;
    assert!(got.pods.iter().all(|p| p.name != "p1"));
    let counters = c
        .get_counters(pb::GetCountersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(counters.drops.iter().any(|d| d.reason == "no_route"));
    for reason in ["xsk_rx_ring_full", "xsk_bad_rx_desc"] {
        assert!(
            counters.drops.iter().any(|d| d.reason == reason),
            "{reason}"
        );
    }
    assert!(counters
        .counters
        .iter()
        .any(|c| c.name == "xsk_bad_completion"));
    assert!(counters.interfaces.iter().any(|i| i.ifname == "kxb"));
    assert!(
        counters.interfaces.iter().all(|i| i.ifname != "kxa"),
        "detached port still listed"
    );
}
