//! Flow hashes: the VXLAN source port (RFC 7348), backend selection and the
//! flow cache's sets.

use super::*;

/// Hash of the inner flow (addresses, protocol, ports) of an IPv4 datagram
/// without options. Symmetric flows need not hash alike: each direction is
/// encapsulated by a different node.
#[inline]
pub fn flow_hash(ip: &[u8]) -> u32 {
    let h: &[u8; 20] = ip[..20].try_into().expect("a validated IPv4 header");
    let src = u32::from_be_bytes([h[12], h[13], h[14], h[15]]) as u64;
    let dst = u32::from_be_bytes([h[16], h[17], h[18], h[19]]) as u64;
    let proto = h[9];
    let ports = match ip.get(20..24) {
        Some(p) if proto == ipv4::protocol::TCP || proto == ipv4::protocol::UDP => {
            u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as u64
        }
        _ => 0,
    };
    mix(src << 32 | dst, (proto as u64) << 32 | ports) as u32
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
