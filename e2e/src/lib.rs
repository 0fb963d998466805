//! End-to-end test support: a whole kxdp lab per test, brought up by
//! `scripts/lab.sh` with a prefix unique to the test and torn down by a guard.
//!
//! A [`Lab`] is the guard: [`Lab::up`] runs `lab.sh up` (with `KXDP_NO_BUILD=1`,
//! so build first with `cargo build --release --workspace`), and dropping it
//! runs `lab.sh down`, also when the test panics (the dataplane and control
//! logs are printed first). With `KXDP_E2E_KEEP=1` a failed test leaves its lab
//! up for inspection.
//!
//! Traffic helpers open ordinary Rust sockets inside a pod's namespace
//! ([`in_netns`]: a thread that has entered the namespace creates the socket;
//! the socket stays in that namespace whichever thread then uses it), so data
//! can be generated and checked byte for byte. Every socket has timeouts and
//! every command runs under `timeout`: a broken dataplane fails a test, it
//! never hangs it.
//!
//! Tests only send traffic to addresses inside the lab's own namespaces.
//!
//! One module per part, all re-exported here: `paths`, `commands`, `lab`
//! (the guard), `counters`, `traffic`, `captures`, `frames`, `checks` (what
//! most tests share), `services`, `world` (the outside world and egress),
//! `probes` (many short TCP/UDP probes and pings at once, for truth tables). One is
//! not: `netpol`, the NetworkPolicy oracle (`kxdp_e2e::netpol`), a model of
//! the API kept apart from kxdp's own code.
#![forbid(unsafe_code)]

// The modules' common imports: each module starts with `use super::*`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use kxdp_testkit::{is_root, require_root, unique_name, NetNs};

/// Fails the test unless it runs as root (it never skips itself).
#[macro_export]
macro_rules! require_root {
    () => {
        $crate::require_root()
    };
}

mod captures;
mod checks;
mod commands;
mod counters;
mod frames;
mod lab;
pub mod netpol;
mod paths;
mod probes;
mod services;
mod traffic;
mod world;

pub use captures::*;
pub use checks::*;
pub use commands::*;
pub use counters::*;
pub use frames::*;
pub use lab::*;
pub use paths::*;
pub use probes::*;
pub use services::*;
pub use traffic::*;
pub use world::*;
