//! VXLAN (RFC 7348) headers.

use core::borrow::{Borrow, BorrowMut};

use super::ethernet::{self, EthernetFrame};
use super::ipv4::{self, Ipv4Header};
use super::udp::{self, UdpHeader};
use super::{checksum, read_u32, write_u32, Error, Result};

/// IANA-assigned VXLAN UDP destination port.
pub const UDP_PORT: u16 = 4789;

/// Bytes added in front of an inner Ethernet frame by encapsulation: outer
/// Ethernet (14, untagged) + IPv4 without options (20) + UDP (8) + VXLAN (8).
/// The inner frame's MTU must be this much smaller than the underlay's
/// frame size.
pub const OVERHEAD: usize = 14 + 20 + 8 + 8;

/// The "I" flag: the VNI field is valid. RFC 7348 requires it set.
pub const FLAG_I: u8 = 0x08;

/// Largest VNI (24 bits).
pub const MAX_VNI: u32 = 0x00FF_FFFF;

mod field {
    use core::ops::{Range, RangeFrom};
    pub const FLAGS: usize = 0;
    pub const RESERVED0: Range<usize> = 1..4;
    // The VNI is bytes 4..7; read 4..8 as a u32 and drop the reserved byte.
    pub const VNI_RESERVED1: Range<usize> = 4..8;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// A view over a VXLAN header and the inner Ethernet frame after it.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buffer` without validation; see the module docs.
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// `Truncated` if shorter than 8 bytes; `Malformed` if the I flag is
    /// clear. Reserved bits are ignored, as RFC 7348 asks of receivers.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let data = buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if data[field::FLAGS] & FLAG_I == 0 {
            return Err(Error::Malformed);
        }
        Ok(VxlanPacket { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn as_slice(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The fixed 8-byte header (one bounds check).
    #[inline]
    pub fn header(&self) -> VxlanHeader<&[u8; HEADER_LEN]> {
        VxlanHeader::new(self.buffer.as_ref().first_chunk().expect(SHORT))
    }

    pub fn flags(&self) -> u8 {
        self.header().flags()
    }

    /// The 24-bit VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        self.header().vni()
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the VNI, keeping the reserved byte after it.
    ///
    /// Only the low 24 bits are used; VNIs must be validated where they
    /// enter kxdp (control plane). Debug builds assert `vni <= MAX_VNI`.
    pub fn set_vni(&mut self, vni: u32) {
        debug_assert!(vni <= MAX_VNI, "VNI {vni} exceeds 24 bits");
        let h: &mut [u8; HEADER_LEN] = self.buffer.as_mut().first_chunk_mut().expect(SHORT);
        let f = &mut h[field::VNI_RESERVED1];
        let reserved = f[3];
        write_u32(f, (vni << 8) | u32::from(reserved));
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

const SHORT: &str = "VXLAN buffer shorter than a header";

/// A fixed-size view over an 8-byte VXLAN header, for the hot path: the
/// length is the array's, so no field access is bounds-checked.
#[derive(Debug, Clone)]
pub struct VxlanHeader<T: Borrow<[u8; HEADER_LEN]>> {
    buffer: T,
}

impl<T: Borrow<[u8; HEADER_LEN]>> VxlanHeader<T> {
    #[inline(always)]
    pub const fn new(buffer: T) -> Self {
        VxlanHeader { buffer }
    }

    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.buffer.borrow()[field::FLAGS]
    }

    /// The 24-bit VXLAN network identifier.
    #[inline(always)]
    pub fn vni(&self) -> u32 {
        read_u32(&self.buffer.borrow()[field::VNI_RESERVED1]) >> 8
    }
}

mod outer {
    use core::ops::Range;
    pub const ETHERNET: Range<usize> = 0..14;
    pub const IPV4: Range<usize> = 14..34;
    pub const UDP: Range<usize> = 34..42;
    pub const VXLAN: Range<usize> = 42..50;
}

/// A fixed-size view over the [`OVERHEAD`] bytes of outer headers in front
/// of an encapsulated frame: Ethernet, IPv4 without options, UDP, VXLAN.
/// Each comes as its own fixed-size view, with no bounds checks.
#[derive(Debug, Clone)]
pub struct OuterHeaders<T: Borrow<[u8; OVERHEAD]>> {
    buffer: T,
}

impl<T: Borrow<[u8; OVERHEAD]>> OuterHeaders<T> {
    #[inline(always)]
    pub const fn new(buffer: T) -> Self {
        OuterHeaders { buffer }
    }

    #[inline(always)]
    pub fn ethernet(&self) -> EthernetFrame<&[u8; ethernet::HEADER_LEN]> {
        EthernetFrame::new_unchecked(self.buffer.borrow()[outer::ETHERNET].try_into().expect(IN))
    }

    #[inline(always)]
    pub fn ipv4(&self) -> Ipv4Header<&[u8; ipv4::HEADER_LEN]> {
        Ipv4Header::new(self.buffer.borrow()[outer::IPV4].try_into().expect(IN))
    }

    #[inline(always)]
    pub fn udp(&self) -> UdpHeader<&[u8; udp::HEADER_LEN]> {
        UdpHeader::new(self.buffer.borrow()[outer::UDP].try_into().expect(IN))
    }

    #[inline(always)]
    pub fn vxlan(&self) -> VxlanHeader<&[u8; HEADER_LEN]> {
        VxlanHeader::new(self.buffer.borrow()[outer::VXLAN].try_into().expect(IN))
    }
}

impl<T: BorrowMut<[u8; OVERHEAD]>> OuterHeaders<T> {
    /// The four headers' bytes, writable, for their `emit` functions.
    #[allow(clippy::type_complexity)]
    #[inline(always)]
    pub fn split_mut(
        &mut self,
    ) -> (
        &mut [u8; ethernet::HEADER_LEN],
        &mut [u8; ipv4::HEADER_LEN],
        &mut [u8; udp::HEADER_LEN],
        &mut [u8; HEADER_LEN],
    ) {
        let b = self.buffer.borrow_mut();
        let (eth, rest) = b.split_at_mut(outer::IPV4.start);
        let (ip, rest) = rest.split_at_mut(outer::UDP.start - outer::IPV4.start);
        let (udp, vx) = rest.split_at_mut(outer::VXLAN.start - outer::UDP.start);
        (
            eth.try_into().expect(IN),
            ip.try_into().expect(IN),
            udp.try_into().expect(IN),
            vx.try_into().expect(IN),
        )
    }

    /// Sets the outer IPv4 and UDP lengths for an inner frame of
    /// `inner_len` bytes, and the IPv4 checksum from `sum`, the header's
    /// [`Ipv4Header::sum_without_length`].
    #[inline(always)]
    pub fn set_inner_len(&mut self, inner_len: u16, sum: u32) {
        let udp_len = (udp::HEADER_LEN + HEADER_LEN) as u16 + inner_len;
        let ip_len = ipv4::HEADER_LEN as u16 + udp_len;
        let (_, ip, udp, _) = self.split_mut();
        let mut ip = Ipv4Header::new(ip);
        ip.set_total_len(ip_len);
        ip.set_checksum(checksum::finish(sum + u32::from(ip_len)));
        UdpHeader::new(udp).set_len(udp_len);
    }
}

const IN: &str = "a constant range of the outer headers";

/// Writes an 8-byte VXLAN header (flags = I, reserved bits zero) at the
/// start of `buf`. Only the low 24 bits of `vni` are used (see
/// [`VxlanPacket::set_vni`]).
///
/// # Panics
/// If `buf.len() < HEADER_LEN`.
pub fn emit_header(buf: &mut [u8], vni: u32) {
    debug_assert!(vni <= MAX_VNI, "VNI {vni} exceeds 24 bits");
    let h = &mut buf[..HEADER_LEN];
    h[field::FLAGS] = FLAG_I;
    h[field::RESERVED0].fill(0);
    write_u32(&mut h[field::VNI_RESERVED1], vni << 8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::{self, ethertype, EthernetAddress, EthernetFrame};
    use crate::wire::ipv4::{self, protocol, Ipv4Packet};
    use crate::wire::udp::{self, UdpPacket};
    use crate::wire::vectors::VXLAN_FRAME;
    use core::net::Ipv4Addr;

    const NODE1_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x01]);
    const NODE2_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0x00, 0x00, 0x00, 0x02]);
    const NODE1_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 10);
    const NODE2_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 11);
    const VXLAN_AT: usize = 14 + 20 + 8;

    #[test]
    fn overhead() {
        assert_eq!(OVERHEAD, 50);
        assert_eq!(
            OVERHEAD,
            ethernet::HEADER_LEN + ipv4::HEADER_LEN + udp::HEADER_LEN + HEADER_LEN
        );
    }

    /// Decapsulate the vector layer by layer.
    #[test]
    fn parse_full_frame() {
        let outer = EthernetFrame::new_checked(&VXLAN_FRAME[..]).unwrap();
        assert_eq!(outer.dst_addr(), NODE2_MAC);
        assert_eq!(outer.src_addr(), NODE1_MAC);
        assert_eq!(outer.ethertype(), ethertype::IPV4);
        let ip = Ipv4Packet::new_checked(outer.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (NODE1_IP, NODE2_IP));
        assert_eq!(ip.protocol(), protocol::UDP);
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(udp.dst_port(), UDP_PORT);
        assert_eq!(udp.src_port(), 54321);
        assert!(udp.verify_checksum(NODE1_IP, NODE2_IP));
        let vx = VxlanPacket::new_checked(udp.payload()).unwrap();
        assert_eq!(vx.flags(), FLAG_I);
        assert_eq!(vx.vni(), 1);
        assert_eq!(vx.payload().len(), VXLAN_FRAME.len() - OVERHEAD);

        let inner = EthernetFrame::new_checked(vx.payload()).unwrap();
        assert_eq!(inner.src_addr().to_string(), "0a:58:0a:f4:01:05");
        let iip = Ipv4Packet::new_checked(inner.payload()).unwrap();
        assert!(iip.verify_checksum());
        let (s, d) = (iip.src_addr(), iip.dst_addr());
        assert_eq!(
            (s, d),
            (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 7))
        );
        let iudp = UdpPacket::new_checked(iip.payload()).unwrap();
        assert_eq!(iudp.dst_port(), 5000);
        assert!(iudp.verify_checksum(s, d));
        assert_eq!(iudp.payload(), b"kxdp");

        // etherparse sees the same outer stack and the VXLAN payload.
        let sliced = etherparse::SlicedPacket::from_ethernet(&VXLAN_FRAME).unwrap();
        let Some(etherparse::TransportSlice::Udp(u)) = sliced.transport else {
            panic!("not udp")
        };
        assert_eq!(u.destination_port(), UDP_PORT);
        assert_eq!(&u.payload()[HEADER_LEN..], inner.as_slice());
    }

    /// Encapsulate the inner frame with the emit functions; must reproduce
    /// the vector byte for byte.
    #[test]
    fn encapsulate_round_trip() {
        let inner = &VXLAN_FRAME[OVERHEAD..];
        let mut frame = [0u8; VXLAN_FRAME.len()];
        frame[OVERHEAD..].copy_from_slice(inner);
        let udp_len = (udp::HEADER_LEN + HEADER_LEN + inner.len()) as u16;
        ethernet::emit(&mut frame, NODE2_MAC, NODE1_MAC, ethertype::IPV4);
        ipv4::emit_header(
            &mut frame[14..],
            NODE1_IP,
            NODE2_IP,
            protocol::UDP,
            udp_len,
            64,
            0,
            true,
        );
        udp::emit_header(&mut frame[34..], 54321, UDP_PORT, udp_len - 8, 0);
        emit_header(&mut frame[VXLAN_AT..], 1);
        assert_eq!(frame, VXLAN_FRAME);
    }

    /// The fixed-size views read the vector's outer headers, and a
    /// template's lengths and checksum come back from its length-free sum.
    #[test]
    fn outer_headers() {
        let outer: &[u8; OVERHEAD] = VXLAN_FRAME.first_chunk().unwrap();
        let o = OuterHeaders::new(outer);
        assert_eq!(o.ethernet().ethertype(), ethertype::IPV4);
        assert_eq!(o.ethernet().addrs()[..6], NODE2_MAC.0);
        assert_eq!(
            o.ipv4().addrs(),
            u64::from(u32::from(NODE1_IP)) << 32 | 0xc0a8_010b
        );
        assert!(o.ipv4().verify_checksum());
        assert_eq!((o.udp().ports().dst(), o.udp().len()), (UDP_PORT, 62));
        assert_eq!((o.vxlan().flags(), o.vxlan().vni()), (FLAG_I, 1));

        let sum = o.ipv4().sum_without_length();
        let mut template = *outer;
        let mut t = OuterHeaders::new(&mut template);
        let (_, ip, udp, _) = t.split_mut();
        ip[2..4].fill(0xee);
        ip[10..12].fill(0xee);
        udp[4..6].fill(0xee);
        t.set_inner_len((VXLAN_FRAME.len() - OVERHEAD) as u16, sum);
        assert_eq!(template, *outer);
    }

    #[test]
    fn set_vni() {
        let mut buf = VXLAN_FRAME;
        buf[VXLAN_AT + 7] = 0x5a; // reserved byte survives
        let mut vx = VxlanPacket::new_checked(&mut buf[VXLAN_AT..]).unwrap();
        vx.set_vni(MAX_VNI);
        assert_eq!(vx.vni(), MAX_VNI);
        vx.set_vni(0x0012_3456);
        assert_eq!(vx.vni(), 0x0012_3456);
        assert_eq!(buf[VXLAN_AT + 4..VXLAN_AT + 8], [0x12, 0x34, 0x56, 0x5a]);
        let mut vx = VxlanPacket::new_checked(&mut buf[VXLAN_AT..]).unwrap();
        vx.payload_mut()[0] = 0xff;
        assert_eq!(buf[VXLAN_AT + 8], 0xff);
    }

    #[test]
    fn malformed() {
        let vx = &VXLAN_FRAME[VXLAN_AT..];
        for len in 0..HEADER_LEN {
            assert_eq!(
                VxlanPacket::new_checked(&vx[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&vx[..8]);
        b[0] = 0x00;
        assert_eq!(
            VxlanPacket::new_checked(&b[..]).unwrap_err(),
            Error::Malformed
        );
        // Other flag bits set alongside I are tolerated.
        b[0] = 0x88;
        assert_eq!(VxlanPacket::new_checked(&b[..]).unwrap().vni(), 1);
        assert!(VxlanPacket::new_checked(&b[..])
            .unwrap()
            .payload()
            .is_empty());
    }
}
