//! kxdp's performance tools: an AF_XDP packet generator and sink
//! (`kxdp-pktgen`) and a harness that runs named scenarios on the namespace
//! lab against the kernel datapath and writes a report (`kxdp-bench`).
//!
//! `unsafe` code lives only in [`xsk`].
#![deny(unsafe_code)]

pub mod bench;
pub mod frame;
pub mod pktgen;
pub mod stats;
#[allow(unsafe_code)]
pub mod xsk;
