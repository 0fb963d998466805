//! kxdp-dataplane: one node's AF_XDP packet engine and its gRPC API.
//!
//! - [`sys`]: the only unsafe code: AF_XDP sockets, UMEM, rings, poll.
//! - [`xdp`]: the XDP program (bpf/kxdp.bpf.c) loaded with libbpf-rs.
//! - [`worker`]: pinned poll-mode threads running kxdp-core's pipeline.
//! - [`engine`]: the state manager thread; tables reach workers from here.
//! - [`netlink`]: next-hop MACs from the kernel's neighbour table.
//! - [`nft`]: the node kernel's DNAT of its own NodePorts and external IPs.
//! - [`health`]: health check ports of externalTrafficPolicy Local services.
//! - [`metrics`], [`liveness`]: `/metrics` and `/healthz` on
//!   `--metrics-address`; heartbeats, and systemd's READY/WATCHDOG.
//! - [`state`], [`api`]: the API edge (proto -> validated domain types).
//! - [`cli`]: the command line (flags, their environment variables).
//! - [`fault`]: test-only faults (`--test-fault`, hidden).
//!
//! ARCHITECTURE.md at the repository root has the packet walks and threads.
#![deny(unsafe_code)]

pub mod api;
pub mod cli;
pub mod engine;
pub mod fault;
pub mod health;
pub mod liveness;
pub mod metrics;
pub mod netlink;
pub mod nft;
pub mod state;
pub mod sys;
pub mod watch;
pub mod worker;
pub mod xdp;
