//! kxdp's control process and operator CLI, as a library.
//!
//! The control process holds the desired state of the cluster — a declarative
//! cluster file, the lab's by default — computes what each node's dataplane
//! must hold, pushes it over gRPC on Unix sockets, and pushes it again after
//! either side restarts. Orchestration and `kxdpctl` call its Control API.
//!
//! - [`cluster`]: the cluster file, parsed and validated into typed structs.
//! - [`conventions`]: derived names and addresses (pod MAC, veth name, gateway, MTU).
//! - [`plan`]: per-node dataplane state, routes, and the lab's pod plumbing plan.
//! - [`policy`]: NetworkPolicies, namespaces and labels: validation, and the
//!   per-pod tables they compile into.
//! - [`service`]: services and endpoints: YAML/proto shapes, validation.
//! - [`runtime`]: pods, services, network policies and namespace labels
//!   registered at run time (AddPod, UpsertService, UpsertNetworkPolicy,
//!   UpsertNamespace), beside the file's.
//! - [`state_file`]: file mode's durable run-time state (`--state-file`).
//! - [`store`]: where the desired state lives: the `DesiredStore` trait, the
//!   file store, and which one the flags chose.
//! - [`reconcile`]: one push loop per kxdp node.
//! - [`api`]: the Control gRPC service.
//! - [`cli`]: `kxdp-control`'s flags and their environment variables.
//! - [`etcd`]: the etcd store: node registration, pod CIDR leases, watch.
//! - [`daemon`]: the process: socket, server, reconcilers, shutdown.
//! - [`metrics`]: `/metrics` and `/healthz` on `--metrics-address`.
//! - [`uds`]: tonic over Unix sockets (client channel, root-only listener).
//! - [`validate`]: problems by field path, and the checks every input shares.
//! - [`view`]: what `kxdpctl` prints (JSON mirrors of the replies, tables).
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod cluster;
pub mod conventions;
pub mod daemon;
pub mod etcd;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod reconcile;
pub mod runtime;
pub mod service;
pub mod state_file;
pub mod store;
pub mod uds;
pub mod validate;
pub mod view;
pub mod watch;
