//! Flow hashes: the VXLAN source port (RFC 7348), backend selection and the
//! flow cache's sets.

use super::*;
use crate::wire::ipv4::Ipv4Header;
use crate::wire::l4::{Ports, PORTS_LEN};

/// Hash of the inner flow (addresses, protocol, ports) of an IPv4 datagram
/// without options. Symmetric flows need not hash alike: each direction is
/// encapsulated by a different node. Fragments hash without ports (a later
/// one has none), as NICs' RSS hashes them: every fragment of a datagram
/// gets one VXLAN source port, so one queue (one worker) on the receiver.
#[inline]
pub fn flow_hash(ip: &[u8]) -> u32 {
    let (h, l4) = ip
        .split_first_chunk::<IPV4_MIN>()
        .expect("a validated IPv4 header");
    let h = Ipv4Header::new(h);
    let proto = h.protocol();
    let ports = match l4.first_chunk::<PORTS_LEN>() {
        Some(p)
            if (proto == ipv4::protocol::TCP || proto == ipv4::protocol::UDP)
                && !h.is_fragment() =>
        {
            Ports::new(p).both() as u64
        }
        _ => 0,
    };
    mix(h.addrs(), (proto as u64) << 32 | ports) as u32
}

/// The same hash over a conntrack key (backend selection).
#[inline]
pub(crate) fn flow_hash_key(k: &FlowKey) -> u32 {
    let a = (u32::from(k.src) as u64) << 32 | u32::from(k.dst) as u64;
    let b = (k.proto as u64) << 32 | (k.sport as u64) << 16 | k.dport as u64;
    mix(a, b) as u32
}

/// A 64-bit finaliser (splitmix64's), for hashing one value.
#[inline]
pub(crate) fn mix64(x: u64) -> u64 {
    mix(x, 0)
}

#[inline]
pub(super) fn mix(a: u64, b: u64) -> u64 {
    let mut h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    h
}
