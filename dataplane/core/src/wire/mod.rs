//! Typed, zero-copy views over packet headers.
//!
//! Each header has one file with a `XPacket<T: AsRef<[u8]>>` view that reads
//! and writes fields at fixed offsets (listed once, in that file's `field`
//! module). Nothing here allocates, casts bytes to structs, or uses `unsafe`.
//!
//! The hot path uses fixed-size views over arrays instead: `Ipv4Header`,
//! `UdpHeader`, `TcpHeader`, `VxlanHeader`, [`l4::Ports`],
//! [`vxlan::OuterHeaders`] (and `EthernetFrame` over a `[u8; 14]`). The
//! caller takes the array once (`first_chunk`, `try_into` on a slice of
//! known length) and every field after that is read at a constant offset
//! into it: no bounds checks, no panics. An `XPacket`'s fixed fields are
//! read through its `header()`. [`l4`] holds what TCP and UDP share.
//!
//! # Which calls can panic
//!
//! - `new_checked` never panics. After it returns `Ok`, every getter,
//!   `payload()`, `payload_mut()`, checksum method and fixed-size setter is
//!   panic-free.
//! - `new_unchecked` does no validation: getters on a view over a buffer that
//!   `new_checked` would reject may panic on an out-of-bounds index. Use it
//!   only on buffers you have just sized yourself (e.g. right after `emit_*`).
//! - Setters that take a length assert the bounds that keep the view valid,
//!   and panic otherwise: [`ipv4::Ipv4Packet::set_total_len`] and
//!   [`udp::UdpPacket::set_len`]. Both document their `# Panics`.
//!   [`vxlan::VxlanPacket::set_vni`] and [`vxlan::emit_header`] use the low
//!   24 bits of the VNI and only `debug_assert!` that it fits.
//! - The free `emit*` functions panic if `buf` is shorter than the bytes they
//!   write (the header's `HEADER_LEN`, or `arp::LEN`); size buffers from
//!   those consts. `ipv4::emit_header` and `udp::emit_header` also panic if
//!   the resulting length does not fit the 16-bit length field.
//!
//! Checksum helpers are in [`checksum`]; all multi-byte fields are network
//! byte order on the wire and host integers in the API.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod l4;
pub mod tcp;
pub mod udp;
pub mod vxlan;

#[cfg(test)]
pub(crate) mod vectors;

pub use ethernet::{EthernetAddress, ParseEthernetAddressError};

use core::fmt;

/// Why a buffer could not be viewed as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header (or than a length it declares).
    Truncated,
    /// A field has a value the view does not accept (bad version, length...).
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated packet"),
            Error::Malformed => f.write_str("malformed packet"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

// Field accessors. Callers pass `&data[field::X]` with a constant range, so
// the optimiser sees the length and drops the inner bounds checks.

#[inline]
fn read_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

#[inline]
fn read_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[inline]
fn write_u16(b: &mut [u8], value: u16) {
    b[..2].copy_from_slice(&value.to_be_bytes());
}

#[inline]
fn write_u32(b: &mut [u8], value: u32) {
    b[..4].copy_from_slice(&value.to_be_bytes());
}

#[inline]
fn read_ipv4(b: &[u8]) -> core::net::Ipv4Addr {
    core::net::Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

#[inline]
fn write_ipv4(b: &mut [u8], addr: core::net::Ipv4Addr) {
    b[..4].copy_from_slice(&addr.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display() {
        assert_eq!(Error::Truncated.to_string(), "truncated packet");
        assert_eq!(Error::Malformed.to_string(), "malformed packet");
        let e: &dyn std::error::Error = &Error::Malformed;
        assert!(e.source().is_none());
    }
}
