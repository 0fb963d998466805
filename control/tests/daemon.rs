//! The reconciler and the API end to end, against an in-test dataplane
//! double on a temp Unix socket: a control process with a cluster file.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kxdp_control::cluster::Cluster;
use kxdp_control::state_file::StateFile;
use kxdp_control::store::Source;
use kxdp_proto::control::control_client::ControlClient;
use kxdp_proto::control::{
    ApplyClusterRequest, DeleteNamespaceRequest, DeleteNetworkPolicyRequest, DeletePodRequest,
    DeleteServiceRequest, GetNodeCountersRequest, IpBlock, ListNamespacesRequest,
    ListNetworkPoliciesRequest, ListNodeConntrackRequest, ListPodsRequest, ListRoutesRequest,
    ListServicesRequest, Namespace, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer,
    UpsertNamespaceRequest, UpsertNetworkPolicyRequest, UpsertServiceRequest,
};
use kxdp_testkit::TempDir;
use tonic::transport::Channel;
use tonic::Code;

#[tokio::test]
async fn reconciler_and_api_against_a_dataplane_double() {
    let (tmp, fake, served) = fake_n1("e2e").await;
    let cluster = Cluster::from_yaml(&cluster_yaml(false)).unwrap();
    let control = start_control(&tmp.0, cluster).await;
    let mut client = control.client.clone();

    // (a) First contact syncs the full desired state.
    wait_until("first sync", || async {
        (!fake.syncs().is_empty()).then_some(())
    })
    .await;
    let first = fake.syncs()[0].clone();
    let n1 = wait_synced(&client, "n1").await;
    assert_eq!(first.generation, n1.desired_generation);
    assert_eq!(n1.applied_generation, n1.desired_generation);
    assert_eq!(n1.boot_id, "boot-1");
    assert_eq!(first.node.as_ref().unwrap().name, "n1");
    assert_eq!(first.remote_nodes[0].name, "n2");
    assert_eq!(first.pods.len(), 2);
    let n2 = wait_until("n2 unreachable", || {
        let mut c = client.clone();
        async move { Some(node_info(&mut c, "n2").await).filter(|n| n.status == "unreachable") }
    })
    .await;
    assert_eq!(n2.applied_generation, 0);

    // In sync: further resyncs only read.
    tokio::time::sleep(TICK * 5).await;
    assert_eq!(fake.syncs().len(), 1);

    // (b) A restart (new boot_id) is pushed again without any apply.
    fake.restart("boot-2");
    wait_until("resync after restart", || async {
        (fake.syncs().len() == 2).then_some(())
    })
    .await;
    assert_eq!(fake.syncs()[1].generation, first.generation);
    wait_until("boot-2 recorded", || {
        let mut c = client.clone();
        async move { Some(node_info(&mut c, "n1").await).filter(|n| n.boot_id == "boot-2") }
    })
    .await;

    // A real restart: a new process on the same socket, with no state.
    served.stop().await;
    let fake = FakeDataplane::new("boot-3");
    let served = serve_fake(fake.clone(), tmp.0.join("n1.sock")).await;
    wait_until("sync of the restarted dataplane", || async {
        (fake.syncs().len() == 1).then_some(())
    })
    .await;
    assert_eq!(fake.syncs()[0].generation, first.generation);

    // (c) An invalid apply is refused with every problem and changes nothing.
    let bad = cluster_yaml(true)
        .replace("vni: 1,", "vni: 0,")
        .replace("ip: 10.244.2.3", "ip: 10.244.1.3");
    let err = client
        .apply_cluster(ApplyClusterRequest { yaml: bad })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("cluster.vxlan.vni"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("pods[3].ip"), "{}", err.message());
    tokio::time::sleep(TICK * 5).await;
    assert_eq!(fake.syncs().len(), 1);
    assert_eq!(
        node_info(&mut client, "n1").await.desired_generation,
        first.generation
    );

    // (d) A valid apply reaches the dataplane, at a new generation, before
    // the call returns; the unreachable n2 does not hold it up.
    let reply = client
        .apply_cluster(ApplyClusterRequest {
            yaml: cluster_yaml(true),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.generation > first.generation);
    assert_eq!((reply.nodes, reply.pods), (2, 5));
    let last = fake.syncs().last().cloned().unwrap();
    assert_eq!(last.generation, reply.generation);
    assert!(last
        .pods
        .iter()
        .any(|p| p.name == "p3" && p.ifname == "kx0af40104"));

    // Reads.
    let pods = client
        .list_pods(ListPodsRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner()
        .pods;
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|p| p.status == "attached"), "{pods:?}");
    let pods = client
        .list_pods(ListPodsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pods;
    assert!(pods
        .iter()
        .filter(|p| p.node == "n2")
        .all(|p| p.status == "unknown"));
    let routes = client
        .list_routes(ListRoutesRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner()
        .routes;
    assert_eq!(routes.len(), 2);
    assert_eq!(
        (routes[0].kind.as_str(), routes[0].prefix.as_str()),
        ("local", "10.244.1.0/24")
    );
    assert_eq!(
        (
            routes[1].kind.as_str(),
            routes[1].via_node.as_str(),
            routes[1].vtep_ip.as_str()
        ),
        ("vxlan", "n2", "172.30.0.12")
    );
    let err = client
        .list_routes(ListRoutesRequest { node: "n9".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let counters = client
        .get_node_counters(GetNodeCountersRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        counters
            .counters
            .iter()
            .find(|c| c.name == "encapsulated")
            .map(|c| c.value),
        Some(42)
    );
    let err = client
        .get_node_counters(GetNodeCountersRequest { node: "n9".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_node_counters(GetNodeCountersRequest { node: "n2".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    // Shutdown removes the socket.
    control.stop().await;
    assert!(!tmp.0.join("control/control.sock").exists());

    // A restarted control process pushes once on first contact.
    let before = fake.syncs().len();
    let cluster = Cluster::from_yaml(&cluster_yaml(true)).unwrap();
    let control = start_control(&tmp.0, cluster).await;
    wait_until("sync after control restart", || async {
        (fake.syncs().len() == before + 1).then_some(())
    })
    .await;
    assert!(fake.syncs().last().unwrap().generation > reply.generation);
    tokio::time::sleep(TICK * 5).await;
    assert_eq!(fake.syncs().len(), before + 1);
    control.stop().await;

    served.stop().await;
}

#[tokio::test]
async fn runtime_pods_are_added_pushed_kept_and_deleted() {
    let (tmp, fake, served) = fake_n1("addpod").await;
    let cluster = Cluster::from_yaml(&cluster_yaml(false)).unwrap();
    let control = start_control_with(&tmp.0, cluster, Duration::from_millis(800)).await;
    let mut client = control.client.clone();
    wait_synced(&client, "n1").await;
    let synced = fake.syncs().len();

    // Invalid: every problem named by field, nothing pushed.
    let mut bad = add_pod_request("n1", "cni/eth0", "10.244.2.99", "kx0af40102");
    bad.mac = "ff:ff:ff:ff:ff:ff".into();
    let err = client.add_pod(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for needle in ["ip: 10.244.2.99 is outside", "mac: ", "ifname: kx0af40102"] {
        assert!(err.message().contains(needle), "{}", err.message());
    }
    assert_eq!(fake.syncs().len(), synced);

    // Valid: the reply comes once n1's dataplane holds the pod.
    let request = add_pod_request("n1", "cni/eth0", "10.244.1.99", "veth99");
    let reply = client.add_pod(request.clone()).await.unwrap().into_inner();
    let held = fake.syncs().last().cloned().unwrap();
    assert_eq!(held.generation, reply.generation);
    assert!(
        held.pods.iter().any(|p| p.name == "cni/eth0"
            && p.ip == "10.244.1.99"
            && p.mac == "0a:58:0a:f4:01:63"
            && p.ifname == "veth99"),
        "{held:?}"
    );
    assert_eq!(held.pods.len(), 3);
    // A retried ADD changes nothing.
    let again = client.add_pod(request.clone()).await.unwrap().into_inner();
    assert_eq!(again.generation, reply.generation);
    assert_eq!(fake.syncs().len(), synced + 1);
    // The same IP under another name is taken.
    let err = client
        .add_pod(add_pod_request("n1", "other", "10.244.1.99", "veth98"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("already used by pod n1/cni/eth0"));

    let pods = client
        .list_pods(ListPodsRequest { node: "n1".into() })
        .await
        .unwrap()
        .into_inner()
        .pods;
    let rt = pods.iter().find(|p| p.name == "cni/eth0").unwrap();
    assert_eq!(
        (rt.ifname.as_str(), rt.status.as_str()),
        ("veth99", "attached")
    );
    assert_eq!(pods.len(), 3);

    // An apply of the file keeps the run-time pod...
    let applied = client
        .apply_cluster(ApplyClusterRequest {
            yaml: cluster_yaml(true),
        })
        .await
        .unwrap()
        .into_inner();
    let held = fake.syncs().last().cloned().unwrap();
    assert_eq!(held.generation, applied.generation);
    assert_eq!(held.pods.len(), 4);
    assert!(held.pods.iter().any(|p| p.name == "cni/eth0"));
    // ...and one whose file would take its IP is refused.
    let err = client
        .apply_cluster(ApplyClusterRequest {
            yaml: format!(
                "{}  - {{ name: p9, node: n1, ip: 10.244.1.99 }}\n",
                cluster_yaml(true)
            ),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("runtime_pods[n1/cni/eth0].ip"),
        "{}",
        err.message()
    );

    // A pod on the unreachable n2: accepted, but the wait times out naming n2.
    let err = client
        .add_pod(add_pod_request("n2", "late", "10.244.2.99", "veth97"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("node n2"), "{}", err.message());

    // Deletes: a file pod is refused, a run-time one goes, again is a no-op.
    let err = client
        .delete_pod(DeletePodRequest {
            node: "n1".into(),
            name: "p1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let del = DeletePodRequest {
        node: "n1".into(),
        name: "cni/eth0".into(),
    };
    let reply = client.delete_pod(del.clone()).await.unwrap().into_inner();
    assert!(reply.existed);
    let held = fake.syncs().last().cloned().unwrap();
    assert_eq!(held.generation, reply.generation);
    assert!(!held.pods.iter().any(|p| p.name == "cni/eth0"));
    let reply = client.delete_pod(del).await.unwrap().into_inner();
    assert!(!reply.existed);
    let reply = client
        .delete_pod(DeletePodRequest {
            node: "n9".into(),
            name: "x".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.existed);

    control.stop().await;
    served.stop().await;
}

#[tokio::test]
async fn services_are_upserted_listed_pushed_everywhere_and_deleted() {
    let (tmp, fake, served) = fake_n1("svc").await;
    let file = format!(
        "{}services:\n  - {{ name: default/web, cluster_ip: 10.96.0.10, ports: [{{ port: 80, node_port: 30080 }}], endpoints: [{{ ip: 10.244.1.2 }}, {{ ip: 10.244.2.2 }}] }}\n",
        cluster_yaml(false)
    );
    let cluster = Cluster::from_yaml(&file).unwrap();
    let control = start_control_with(&tmp.0, cluster, Duration::from_millis(800)).await;
    let mut client = control.client.clone();
    wait_synced(&client, "n1").await;
    let held = fake.syncs().last().cloned().unwrap();
    let node = held.node.as_ref().unwrap();
    assert_eq!(
        (
            node.service_cidr.as_str(),
            node.node_port_min,
            node.node_port_max
        ),
        ("10.96.0.0/12", 30000, 32767)
    );
    assert_eq!(held.services.len(), 1);
    assert_eq!(held.services[0].endpoints[1].node, "n2");

    let api = kxdp_proto::dataplane::Service {
        name: "default/api".into(),
        cluster_ip: "10.96.0.11".into(),
        ports: vec![kxdp_proto::dataplane::ServicePort {
            protocol: kxdp_proto::dataplane::Protocol::Udp as i32,
            port: 53,
            target_port: 5353,
            node_port: 30053,
            ..Default::default()
        }],
        endpoints: vec![kxdp_proto::dataplane::Endpoint {
            ip: "10.244.1.3".into(),
            ready: true,
            serving: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    // Invalid: named, nothing pushed.
    let syncs = fake.syncs().len();
    let mut bad = api.clone();
    bad.cluster_ip = "10.96.0.10".into();
    bad.ports[0].node_port = 99;
    let err = client
        .upsert_service(UpsertServiceRequest { service: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("service.cluster_ip: 10.96.0.10 is already the ClusterIP"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("service.ports[0].node_port: 99"),
        "{}",
        err.message()
    );
    assert_eq!(fake.syncs().len(), syncs);

    // Valid: every kxdp node gets it (n1 here; the unreachable n2 does not
    // hold the reply up).
    let reply = client
        .upsert_service(UpsertServiceRequest {
            service: Some(api.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let held = fake.syncs().last().cloned().unwrap();
    assert_eq!(held.generation, reply.generation);
    let pushed = held
        .services
        .iter()
        .find(|s| s.name == "default/api")
        .unwrap();
    assert_eq!(pushed.endpoints[0].node, "n1");
    assert_eq!(pushed.affinity_timeout_s, 10800);
    // The same again: no new generation.
    let again = client
        .upsert_service(UpsertServiceRequest {
            service: Some(api.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.generation, reply.generation);

    let listed = client
        .list_services(ListServicesRequest {})
        .await
        .unwrap()
        .into_inner()
        .services;
    assert_eq!(
        listed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["default/web", "default/api"]
    );

    // The file's service is not the API's to delete; the run-time one is.
    let err = client
        .delete_service(DeleteServiceRequest {
            name: "default/web".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let del = client
        .delete_service(DeleteServiceRequest {
            name: "default/api".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(del.existed);
    let held = fake.syncs().last().cloned().unwrap();
    assert_eq!(held.generation, del.generation);
    assert_eq!(held.services.len(), 1);
    let del = client
        .delete_service(DeleteServiceRequest {
            name: "default/api".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!del.existed);

    // Conntrack is a live read: the dataplane's UNIMPLEMENTED passes through.
    let err = client
        .list_conntrack(ListNodeConntrackRequest {
            node: "n1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = client
        .list_conntrack(ListNodeConntrackRequest {
            node: "n9".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    control.stop().await;
    served.stop().await;
}

#[tokio::test]
async fn apply_names_the_nodes_that_did_not_answer() {
    let tmp = TempDir::new("late");
    // A dataplane that accepts connections but never answers.
    let listener = tokio::net::UnixListener::bind(tmp.0.join("n1.sock")).unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let cluster = Cluster::from_yaml(&cluster_yaml(false)).unwrap();
    let config = config(
        &tmp.0,
        tmp.0.join("control.sock"),
        Duration::from_millis(300),
    );
    let control = start(config, Source::File(cluster)).await;
    let mut client = control.client.clone();
    let err = client
        .apply_cluster(ApplyClusterRequest {
            yaml: cluster_yaml(true),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("n1"), "{}", err.message());
    assert!(!err.message().contains("n2"), "{}", err.message());
    control.stop().await;
    hold.abort();
}

#[tokio::test]
async fn kernel_nodes_are_listed_but_never_contacted() {
    let tmp = TempDir::new("kernel");
    let text = cluster_yaml(false).replacen(
        "    pod_cidr: 10.244.2.0/24",
        "    pod_cidr: 10.244.2.0/24\n    dataplane: kernel",
        1,
    );
    let cluster = Cluster::from_yaml(&text).unwrap();
    let control = start_control(&tmp.0, cluster).await;
    let mut client = control.client.clone();

    let n2 = node_info(&mut client, "n2").await;
    assert_eq!(n2.status, "kernel");
    assert_eq!(
        (n2.dataplane_socket.as_str(), n2.desired_generation),
        ("", 0)
    );
    let pods = client
        .list_pods(ListPodsRequest { node: "n2".into() })
        .await
        .unwrap()
        .into_inner()
        .pods;
    assert!(pods.iter().all(|p| p.status == "kernel"), "{pods:?}");
    let routes = client
        .list_routes(ListRoutesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .routes;
    assert!(routes.iter().all(|r| r.node == "n1"), "{routes:?}");
    let err = client
        .get_node_counters(GetNodeCountersRequest { node: "n2".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Turning n1 into a kernel node too stops its reconciler: the apply
    // has no kxdp node to wait for.
    let reply = client
        .apply_cluster(ApplyClusterRequest {
            yaml: text.replacen(
                "    uplink: eth0",
                "    uplink: eth0\n    dataplane: kernel",
                1,
            ),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.generation > 0);
    assert_eq!(node_info(&mut client, "n1").await.status, "kernel");

    control.stop().await;
}

/// A file-mode control process with a state file at `state`, as
/// `kxdp-control --cluster FILE --state-file STATE` runs.
async fn start_durable(dir: &std::path::Path, state: &std::path::Path) -> Control {
    let yaml = cluster_yaml(false);
    let restored = StateFile::load(state, &yaml, Cluster::from_yaml(&yaml).unwrap(), dir).unwrap();
    start(
        config(
            dir,
            dir.join("control/control.sock"),
            Duration::from_secs(5),
        ),
        Source::Durable(restored),
    )
    .await
}

#[tokio::test]
async fn a_restarted_control_process_pushes_the_runtime_objects_it_had() {
    let (tmp, fake, served) = fake_n1("durable").await;
    let state = tmp.0.join("state/control-state.json");
    let control = start_durable(&tmp.0, &state).await;
    let mut client = control.client.clone();
    wait_synced(&client, "n1").await;
    client
        .add_pod(add_pod_request("n1", "cni/eth0", "10.244.1.9", "veth9"))
        .await
        .unwrap();
    client
        .add_pod(add_pod_request("n1", "gone", "10.244.1.10", "veth10"))
        .await
        .unwrap();
    client
        .delete_pod(DeletePodRequest {
            node: "n1".into(),
            name: "gone".into(),
        })
        .await
        .unwrap();
    client
        .upsert_service(UpsertServiceRequest {
            service: Some(web_service("default/web", "10.96.0.10", &["10.244.1.9"])),
        })
        .await
        .unwrap();
    let before = fake.held().unwrap();

    // A write that cannot be recorded is refused and changes nothing.
    std::fs::create_dir(tmp.0.join("state/.control-state.json.tmp")).unwrap();
    let err = client
        .add_pod(add_pod_request("n1", "unrecorded", "10.244.1.11", "veth11"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert!(err.message().contains("control-state.json"), "{err:?}");
    let pods = client
        .list_pods(ListPodsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pods;
    assert!(!pods.iter().any(|p| p.name == "unrecorded"), "{pods:?}");
    std::fs::remove_dir(tmp.0.join("state/.control-state.json.tmp")).unwrap();

    // The process goes away and a new one starts: one Sync, with the same
    // pods and services as before.
    control.stop().await;
    let syncs = fake.syncs().len();
    let control = start_durable(&tmp.0, &state).await;
    wait_until("resync by the new process", || async {
        (fake.syncs().len() > syncs).then_some(())
    })
    .await;
    let after = fake.held().unwrap();
    assert!(after.generation > before.generation);
    assert_eq!(after.pods, before.pods);
    assert_eq!(after.services, before.services);
    assert!(after.pods.iter().any(|p| p.name == "cni/eth0"));
    assert!(!after.pods.iter().any(|p| p.name == "gone"));
    assert_eq!(after.services.len(), 1);
    control.stop().await;
    served.stop().await;
}

fn deny_ingress(namespace: &str, name: &str) -> NetworkPolicy {
    NetworkPolicy {
        namespace: namespace.into(),
        name: name.into(),
        ..Default::default()
    }
}

async fn runtime_policies(client: &mut ControlClient<Channel>) -> Vec<(String, String, String)> {
    client
        .list_network_policies(ListNetworkPoliciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .policies
        .into_iter()
        .map(|p| (p.namespace, p.name, p.source))
        .collect()
}

/// Policies and namespace labels through the API: all or nothing, pushed
/// compiled, listed, kept across a restart by the state file, deleted.
#[tokio::test]
async fn network_policies_and_namespaces_are_upserted_kept_and_deleted() {
    let (tmp, fake, served) = fake_n1("netpol").await;
    let state = tmp.0.join("state/control-state.json");
    let control = start_durable(&tmp.0, &state).await;
    let mut client = control.client.clone();
    wait_synced(&client, "n1").await;
    assert!(fake
        .held()
        .unwrap()
        .pods
        .iter()
        .all(|p| p.ingress.is_none()));

    // One invalid policy of three: refused whole, named, nothing pushed.
    let syncs = fake.syncs().len();
    let mut bad = deny_ingress("default", "bad");
    bad.ingress.push(NetworkPolicyIngressRule {
        from: vec![NetworkPolicyPeer {
            ip_block: Some(IpBlock {
                cidr: "10.0.0.0/8".into(),
                except: vec!["11.0.0.0/16".into()],
            }),
            ..Default::default()
        }],
        ports: vec![],
    });
    let err = client
        .upsert_network_policy(UpsertNetworkPolicyRequest {
            policies: vec![deny_ingress("", "a"), bad, deny_ingress("", "c")],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("policies[1].ingress[0].from[0].ip_block.except[0]: 11.0.0.0/16 must be a strict subset"),
        "{}",
        err.message()
    );
    assert_eq!(fake.syncs().len(), syncs);
    assert_eq!(runtime_policies(&mut client).await, vec![]);

    // Valid: every pod of "default" on n1 is isolated for ingress.
    let reply = client
        .upsert_network_policy(UpsertNetworkPolicyRequest {
            policies: vec![deny_ingress("", "deny")],
        })
        .await
        .unwrap()
        .into_inner();
    let held = fake.held().unwrap();
    assert_eq!(held.generation, reply.generation);
    assert!(held
        .pods
        .iter()
        .all(|p| p.ingress.is_some() && p.egress.is_none()));
    let ns = client
        .upsert_namespace(namespace_labelled("default", "team", "blue"))
        .await
        .unwrap()
        .into_inner();
    assert!(ns.generation > reply.generation);
    let err = client
        .upsert_namespace(UpsertNamespaceRequest {
            namespace: Some(Namespace {
                name: "Bad".into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("namespace.name"),
        "{}",
        err.message()
    );

    // A new process restores both from the state file and pushes them.
    control.stop().await;
    let syncs = fake.syncs().len();
    let control = start_durable(&tmp.0, &state).await;
    let mut client = control.client.clone();
    wait_until("resync by the new process", || async {
        (fake.syncs().len() > syncs).then_some(())
    })
    .await;
    assert!(fake
        .held()
        .unwrap()
        .pods
        .iter()
        .all(|p| p.ingress.is_some()));
    assert_eq!(
        runtime_policies(&mut client).await,
        vec![("default".into(), "deny".into(), "runtime".into())]
    );
    let namespaces = client
        .list_namespaces(ListNamespacesRequest {})
        .await
        .unwrap()
        .into_inner()
        .namespaces;
    assert_eq!(namespaces.len(), 1);
    assert_eq!(namespaces[0].labels["team"], "blue");

    // Deleted: not isolated any more; deleting again is no error.
    let del = client
        .delete_network_policy(DeleteNetworkPolicyRequest {
            namespace: String::new(),
            name: "deny".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(del.existed);
    let held = fake.held().unwrap();
    assert_eq!(held.generation, del.generation);
    assert!(held.pods.iter().all(|p| p.ingress.is_none()));
    for _ in 0..2 {
        let del = client
            .delete_network_policy(DeleteNetworkPolicyRequest {
                namespace: "default".into(),
                name: "deny".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!del.existed);
    }
    let del = client
        .delete_namespace(DeleteNamespaceRequest {
            name: "default".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(del.existed);
    control.stop().await;
    served.stop().await;
}

/// A new temp dir with the lab's n1 served there by a fresh double.
async fn fake_n1(tag: &str) -> (TempDir, Arc<FakeDataplane>, Served<()>) {
    let tmp = TempDir::new(tag);
    let fake = FakeDataplane::new("boot-1");
    let served = serve_fake(fake.clone(), tmp.0.join("n1.sock")).await;
    (tmp, fake, served)
}
