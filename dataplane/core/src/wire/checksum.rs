//! Internet checksum (RFC 1071) and incremental updates (RFC 1624).
//!
//! A full checksum is `finish(sum(header_and_data))` with the checksum field
//! zeroed, or `finish(pseudo_header(..) + sum(segment))` for TCP/UDP. Partial
//! sums are `u32`s that can be added together and folded once at the end.

use core::net::Ipv4Addr;

/// One's-complement sum of `data` taken as big-endian 16-bit words.
///
/// An odd trailing byte is padded with a zero low byte, so when summing a
/// packet in pieces every piece but the last must have an even length.
///
/// The result is already folded to at most `0xFFFF` (but not inverted), so
/// many partial sums can be added in a `u32` before [`fold`]/[`finish`].
/// It is zero only if every byte of `data` is zero.
#[inline]
pub fn sum(data: &[u8]) -> u32 {
    // The sum is taken over little-endian words (a plain load on x86 and
    // ARM) and byte-swapped once at the end: the one's-complement sum is
    // independent of byte order (RFC 1071 section 2.B).
    if let Ok(h) = <&[u8; 20]>::try_from(data) {
        return sum20(h);
    }
    sum_slow(data)
}

/// [`sum`] of exactly 20 bytes (an IPv4 header without options, a TCP
/// header without options): five 32-bit loads, no loop.
#[inline(always)]
pub fn sum20(h: &[u8; 20]) -> u32 {
    let w = |i: usize| u64::from(u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    // Five 32-bit words: < 2^35, no carry lost.
    fold_le(w(0) + w(4) + w(8) + w(12) + w(16))
}

fn sum_slow(data: &[u8]) -> u32 {
    // 64-bit words with end-around carry: 2^64 = 1 (mod 0xFFFF), so this is
    // the same one's-complement sum as 16-bit words, four at a time.
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        let (s, carry) = acc.overflowing_add(w);
        acc = s + u64::from(carry);
    }
    let mut rest = chunks.remainder();
    // At most 7 bytes left, so `tail` itself cannot overflow.
    let mut tail: u64 = 0;
    if rest.len() >= 4 {
        tail += u64::from(u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]));
        rest = &rest[4..];
    }
    if rest.len() >= 2 {
        tail += u64::from(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [last] = rest {
        // The odd byte is the high byte of a big-endian word: the low byte
        // of a little-endian one.
        tail += u64::from(*last);
    }
    let (s, carry) = acc.overflowing_add(tail);
    fold_le(s + u64::from(carry))
}

/// Folds a 64-bit sum of little-endian words to 16 bits with end-around
/// carries and returns it as the big-endian sum.
#[inline]
fn fold_le(acc: u64) -> u32 {
    let mut s = (acc >> 32) + (acc & 0xFFFF_FFFF); // < 2^33
    s = (s >> 32) + (s & 0xFFFF_FFFF); // < 2^32
    s = (s >> 16) + (s & 0xFFFF); // <= 0x1FFFE
    s = (s >> 16) + (s & 0xFFFF); // <= 0xFFFF
    u32::from((s as u16).swap_bytes())
}

/// Folds a 32-bit partial sum into 16 bits with end-around carry.
///
/// Returns the folded sum itself, **not** its complement: a correct packet
/// verifies as `fold(..) == 0xFFFF`. Use [`finish`] to get the value to store
/// in a checksum field.
#[inline]
pub fn fold(sum: u32) -> u16 {
    let s = (sum & 0xFFFF) + (sum >> 16); // <= 0x1FFFE
    let s = (s & 0xFFFF) + (s >> 16); // <= 0xFFFF
    s as u16
}

/// The checksum field value for a partial sum: `!fold(sum)`.
#[inline]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// Partial sum of the IPv4 pseudo-header used by TCP and UDP.
///
/// `len` is the TCP/UDP length (header plus data). The result is below
/// `2^19`, so it can be added to a [`sum`] without overflow.
#[inline]
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u32 {
    let s = u32::from(src);
    let d = u32::from(dst);
    (s >> 16) + (s & 0xFFFF) + (d >> 16) + (d & 0xFFFF) + u32::from(protocol) + u32::from(len)
}

/// Updates checksum `csum` after a 16-bit word changed from `old` to `new`
/// (RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')`).
///
/// The word must sit at an even offset from the start of the checksummed
/// data (true for every header field kxdp rewrites). If the old checksum was
/// correct for data that is not all zeros, the result equals a full
/// recomputation. UDP callers must skip the update when `csum == 0` (no
/// checksum) and store `0xFFFF` if the result is `0`.
#[inline]
pub fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!csum) + u32::from(!old) + u32::from(new);
    !fold(s)
}

/// [`update_u16`] for a 32-bit field (e.g. an IPv4 address in the IPv4
/// header or in the TCP/UDP pseudo-header), treated as two 16-bit words.
#[inline]
pub fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!csum)
        + u32::from(!(old >> 16) as u16)
        + u32::from(!(old as u16))
        + (new >> 16)
        + (new & 0xFFFF);
    !fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vectors::XorShift;

    /// Straightforward RFC 1071 reference.
    fn reference_sum(data: &[u8]) -> u32 {
        let mut s: u64 = 0;
        for pair in data.chunks(2) {
            let hi = u64::from(pair[0]) << 8;
            let lo = pair.get(1).copied().map_or(0, u64::from);
            s += hi | lo;
        }
        while s > 0xFFFF {
            s = (s & 0xFFFF) + (s >> 16);
        }
        s as u32
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: sum 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(finish(sum(&data)), !0xddf2);
    }

    #[test]
    fn sum_edge_cases() {
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0; 13]), 0);
        assert_eq!(sum(&[0xab]), 0xab00);
        assert_eq!(sum(&[0xff; 64]), 0xFFFF);
        // Carries out of every 64-bit add.
        assert_eq!(sum(&[0xff; 4096]), reference_sum(&[0xff; 4096]));
        assert_eq!(fold(0xFFFF_FFFF), 0xFFFF);
        assert_eq!(fold(0x0001_FFFF), 0x0001);
        assert_eq!(finish(0), 0xFFFF);
    }

    #[test]
    fn sum_matches_reference_for_all_lengths_and_alignments() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut buf = [0u8; 300];
        for _ in 0..20 {
            rng.fill(&mut buf);
            for start in 0..8 {
                for end in start..buf.len() {
                    let d = &buf[start..end];
                    assert_eq!(sum(d), reference_sum(d), "start {start} end {end}");
                }
            }
        }
    }

    #[test]
    fn partial_sums_compose() {
        let mut rng = XorShift(7);
        let mut buf = [0u8; 257];
        rng.fill(&mut buf);
        for split in (0..buf.len()).step_by(2) {
            let (a, b) = buf.split_at(split);
            assert_eq!(fold(sum(a) + sum(b)), fold(sum(&buf)));
        }
    }

    #[test]
    fn pseudo_header_matches_bytes() {
        let src = Ipv4Addr::new(10, 244, 1, 5);
        let dst = Ipv4Addr::new(10, 96, 0, 10);
        let bytes = [10, 244, 1, 5, 10, 96, 0, 10, 0, 17, 0x01, 0x2c];
        assert_eq!(
            fold(pseudo_header(src, dst, 17, 300)),
            fold(reference_sum(&bytes))
        );
    }

    /// Property: incremental update == full recomputation, for random
    /// buffers (odd and even lengths) and random 16/32-bit fields at even
    /// offsets.
    #[test]
    fn incremental_update_matches_full_recompute() {
        let mut rng = XorShift(0xC0FF_EE00_1234_5678);
        let mut buf = [0u8; 128];
        for _ in 0..50_000 {
            let len = 8 + rng.below(buf.len() - 8);
            let data = &mut buf[..len];
            rng.fill(data);
            // RFC 1624's one ambiguity (0x0000 vs 0xFFFF) needs all-zero data;
            // real headers never are, so keep a nonzero byte outside the field.
            data[len - 1] |= 1;
            let before = finish(sum(data));

            let off = 2 * rng.below((len - 5) / 2);
            if rng.next_u64() & 1 == 0 {
                let old = u16::from_be_bytes([data[off], data[off + 1]]);
                let new = rng.next_u64() as u16;
                data[off..off + 2].copy_from_slice(&new.to_be_bytes());
                assert_eq!(update_u16(before, old, new), finish(sum(data)));
            } else {
                let old =
                    u32::from_be_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
                let new = rng.next_u64() as u32;
                data[off..off + 4].copy_from_slice(&new.to_be_bytes());
                assert_eq!(update_u32(before, old, new), finish(sum(data)));
            }
        }
    }

    #[test]
    fn incremental_update_identity_and_inverse() {
        let mut rng = XorShift(42);
        for _ in 0..10_000 {
            let c = rng.next_u64() as u16;
            let a = rng.next_u64() as u32;
            let b = rng.next_u64() as u32;
            if c != 0xFFFF {
                assert_eq!(update_u32(c, a, a), c);
            }
            // 0x0000 and 0xFFFF are both one's-complement zero.
            let back = update_u32(update_u32(c, a, b), b, a);
            assert_eq!(back % 0xFFFF, c % 0xFFFF);
        }
    }
}
