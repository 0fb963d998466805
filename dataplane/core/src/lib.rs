//! kxdp-core: the pure packet pipeline (frames in, verdicts out).
//!
//! No syscalls, no clock, no allocation per packet, no unsafe: the dataplane
//! crate owns all I/O and feeds this crate UMEM chunks; unit tests, fuzzers
//! and benchmarks feed it byte vectors.
//!
//! - [`wire`]: typed views over header bytes (one file per header; `l4` for
//!   what TCP and UDP share).
//! - [`tables`]: what a worker looks up per packet (routes, pods, ports);
//!   [`prefix`]: IPv4 prefixes and the longest-prefix match they use.
//! - [`pipeline`]: the walks, verdicts and drop reasons; [`policy`]: the
//!   network-policy tables it decides new flows with; [`trace`]: what an
//!   operator's trace or capture records of them.
#![forbid(unsafe_code)]

pub mod conntrack;
pub mod maglev;
pub mod pipeline;
pub mod policy;
pub mod prefix;
pub mod services;
pub mod tables;
pub mod trace;
pub mod wire;
