//! What TCP and UDP share: the two ports they both start with, the
//! checksum a NAT patches, and where that checksum is in a segment.

use core::borrow::{Borrow, BorrowMut};
use core::ops::Range;

use super::ipv4::protocol;
use super::{read_u16, read_u32, tcp, udp, write_u16};

mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
}

/// Bytes of the two ports at the start of a TCP or UDP header.
pub const PORTS_LEN: usize = field::DST_PORT.end;

/// A fixed-size view over the source and destination ports a TCP or UDP
/// header starts with (no bounds checks: the length is the array's).
#[derive(Debug, Clone)]
pub struct Ports<T: Borrow<[u8; PORTS_LEN]>> {
    buffer: T,
}

impl<T: Borrow<[u8; PORTS_LEN]>> Ports<T> {
    #[inline(always)]
    pub const fn new(buffer: T) -> Self {
        Ports { buffer }
    }

    #[inline(always)]
    pub fn src(&self) -> u16 {
        read_u16(&self.buffer.borrow()[field::SRC_PORT])
    }

    #[inline(always)]
    pub fn dst(&self) -> u16 {
        read_u16(&self.buffer.borrow()[field::DST_PORT])
    }

    /// Both in one load: the source in the high half.
    #[inline(always)]
    pub fn both(&self) -> u32 {
        read_u32(self.buffer.borrow())
    }
}

impl<T: BorrowMut<[u8; PORTS_LEN]>> Ports<T> {
    #[inline(always)]
    pub fn set_src(&mut self, port: u16) {
        write_u16(&mut self.buffer.borrow_mut()[field::SRC_PORT], port);
    }

    #[inline(always)]
    pub fn set_dst(&mut self, port: u16) {
        write_u16(&mut self.buffer.borrow_mut()[field::DST_PORT], port);
    }
}

/// A fixed-size TCP or UDP header as a NAT rewrites it:
/// [`tcp::TcpHeader`] and [`udp::UdpHeader`].
pub trait L4Header {
    fn ports_mut(&mut self) -> Ports<&mut [u8; PORTS_LEN]>;
    /// The checksum an incremental update patches; `None` where there is
    /// none (UDP's 0).
    fn checksum_to_patch(&self) -> Option<u16>;
    /// Stores a patched checksum as the protocol sends it.
    fn set_patched_checksum(&mut self, c: u16);
}

/// Where a `proto` segment's checksum is: TCP's or UDP's, else `None`.
fn checksum_field(proto: u8) -> Option<Range<usize>> {
    match proto {
        protocol::TCP => Some(tcp::field::CHECKSUM),
        protocol::UDP => Some(udp::field::CHECKSUM),
        _ => None,
    }
}

/// The checksum field of a TCP or UDP segment (the IPv4 payload), or
/// `None` for another protocol or a segment too short to hold it.
pub fn checksum(seg: &[u8], proto: u8) -> Option<u16> {
    seg.get(checksum_field(proto)?).map(read_u16)
}

/// Stores `c` as the checksum field of a TCP or UDP segment, if
/// [`checksum`] finds one.
pub fn set_checksum(seg: &mut [u8], proto: u8, c: u16) {
    if let Some(f) = checksum_field(proto).and_then(|r| seg.get_mut(r)) {
        write_u16(f, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_and_write() {
        let mut b = [0x9c, 0x40, 0x00, 0x35];
        let p = Ports::new(&b);
        assert_eq!((p.src(), p.dst(), p.both()), (40000, 53, 0x9c40_0035));
        let mut p = Ports::new(&mut b);
        p.set_src(53);
        p.set_dst(40000);
        assert_eq!(b, [0x00, 0x35, 0x9c, 0x40]);
    }

    #[test]
    fn checksum_field_by_protocol() {
        let mut seg = [0u8; 20];
        seg[6..8].copy_from_slice(&[0x12, 0x34]);
        seg[16..18].copy_from_slice(&[0x56, 0x78]);
        assert_eq!(checksum(&seg, protocol::UDP), Some(0x1234));
        assert_eq!(checksum(&seg, protocol::TCP), Some(0x5678));
        assert_eq!(checksum(&seg, protocol::ICMP), None);
        assert_eq!(checksum(&seg[..17], protocol::TCP), None);
        set_checksum(&mut seg, protocol::TCP, 0xABCD);
        set_checksum(&mut seg[..17], protocol::TCP, 0x1111);
        assert_eq!(seg[16..18], [0xAB, 0xCD]);
    }
}
