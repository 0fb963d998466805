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

async fn sync_err(c: &mut DataplaneClient<Channel>, state: pb::DataplaneState) -> tonic::Status {
    c.sync(pb::SyncRequest { state: Some(state) })
        .await
        .expect_err("a sync over a limit was accepted")
}

/// A service of `endpoints` endpoints outside the pod network.
fn big_service(i: u32, endpoints: usize) -> pb::Service {
    pb::Service {
        name: format!("default/big{i}"),
        cluster_ip: std::net::Ipv4Addr::from(0x0a60_0100 + i).to_string(),
        ports: vec![pb::ServicePort {
            protocol: pb::Protocol::Tcp as i32,
            port: 80,
            ..Default::default()
        }],
        endpoints: (0..endpoints as u32)
            .map(|j| pb::Endpoint {
                ip: std::net::Ipv4Addr::from(0xc633_0000 + j).to_string(),
                ready: true,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The API limits (`kxdp_proto::limits`) through the real server: each
/// over-limit write is INVALID_ARGUMENT naming the limit and the value and
/// changes nothing; an oversized message is refused by gRPC; ListConntrack's
/// page size and token are checked and its pages end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_limits_are_refused_whole() {
    use kxdp_proto::limits::*;
    require_root();
    let tag = unique_name("dplim");
    let (node_ns, peer_ns) = node_namespaces(&tag);
    veth(&node_ns, "kxa", &peer_ns, "poda");
    let socket = std::env::temp_dir().join(format!("{tag}.sock"));
    let _dp = Dataplane::start(&node_ns, socket.clone(), &[]);
    let mut c = DataplaneClient::new(kxdp_proto::connect_unix(&socket).await.unwrap())
        .max_encoding_message_size(64 << 20);
    let with_services = |generation, services: Vec<pb::Service>| {
        let mut s = state(generation, vec![pod("p1", "10.244.1.2", "kxa")]);
        s.node.as_mut().unwrap().service_cidr = "10.96.0.0/12".into();
        s.services = services;
        s
    };
    let full: Vec<_> = (0..(MAX_BACKENDS / MAX_ENDPOINTS_PER_SERVICE) as u32)
        .map(|i| big_service(i, MAX_ENDPOINTS_PER_SERVICE))
        .collect();
    let g = c
        .sync(pb::SyncRequest {
            state: Some(with_services(5, full.clone())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.generation, 5);

    let refused = |e: tonic::Status, code: Code, needle: &str| {
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(needle), "{}", e.message());
    };
    // One service over its endpoints: the whole Sync is refused.
    let mut over = full.clone();
    over[0] = big_service(0, MAX_ENDPOINTS_PER_SERVICE + 1);
    let e = sync_err(&mut c, with_services(6, over)).await;
    refused(
        e,
        Code::InvalidArgument,
        "state.services[0].endpoints: 5001 endpoints, over the limit of 5000 per service",
    );
    // An Update that takes the state over the backends summed.
    let e = update(&mut c, 6, pb::change::Op::UpsertService(big_service(99, 1)))
        .await
        .unwrap_err();
    refused(
        e,
        Code::InvalidArgument,
        "services: 250001 backends (endpoints times ports, summed over services), over the limit of 250000",
    );
    // Too many services.
    let many = (0..=MAX_SERVICES as u32)
        .map(|i| big_service(i, 0))
        .collect();
    let e = sync_err(&mut c, with_services(6, many)).await;
    refused(
        e,
        Code::InvalidArgument,
        "20001 services, over the limit of 20000",
    );
    // A message over MAX_MESSAGE_SIZE never reaches the API's code.
    let mut huge = with_services(6, Vec::new());
    huge.pods[0].name = "x".repeat(MAX_MESSAGE_SIZE);
    let e = sync_err(&mut c, huge).await;
    refused(e, Code::OutOfRange, &MAX_MESSAGE_SIZE.to_string());
    let held = get_state(&mut c, true).await;
    assert_eq!(
        held.state.unwrap().generation,
        5,
        "a refused write changed the state"
    );

    // ListConntrack: page size within its limit, tokens checked, pages end.
    let list = |limit: u32, page_token: &str| pb::ListConntrackRequest {
        limit,
        page_token: page_token.into(),
        ..Default::default()
    };
    let e = c
        .list_conntrack(list(MAX_CONNTRACK_PAGE as u32 + 1, ""))
        .await
        .unwrap_err();
    refused(
        e,
        Code::InvalidArgument,
        "limit: 10001 entries, over the limit of 10000 per page",
    );
    let e = c.list_conntrack(list(10, "bogus")).await.unwrap_err();
    refused(e, Code::InvalidArgument, "page_token");
    let e = c.list_conntrack(list(10, "7.0")).await.unwrap_err();
    refused(e, Code::InvalidArgument, "page_token: 7.0 names no worker");
    let page = c.list_conntrack(list(10, "")).await.unwrap().into_inner();
    assert!(
        page.entries.is_empty() && page.next_page_token.is_empty(),
        "{page:?}"
    );
}
