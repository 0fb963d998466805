//! UDP (RFC 768) over IPv4.

use core::net::Ipv4Addr;

use core::borrow::{Borrow, BorrowMut};

use super::checksum;
use super::ipv4::protocol;
use super::l4::{L4Header, Ports, PORTS_LEN};
use super::{read_u16, write_u16, Error, Result};

pub(super) mod field {
    use core::ops::Range;
    pub const SRC_PORT: Range<usize> = 0..2;
    pub const DST_PORT: Range<usize> = 2..4;
    /// Both: [`super::super::l4::Ports`].
    pub const PORTS: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const CHECKSUM: Range<usize> = 6..8;
}

pub const HEADER_LEN: usize = field::CHECKSUM.end;

/// A view over a UDP datagram. The buffer may be longer than the UDP
/// length field; bytes past it are ignored.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

// `len` is the UDP length field, not a container size.
#[allow(clippy::len_without_is_empty)]
impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buffer` without validation; see the module docs.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// `Truncated` if shorter than 8 bytes or than the length field;
    /// `Malformed` if the length field is below 8.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let data = buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = usize::from(read_u16(&data[field::LENGTH]));
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len > data.len() {
            return Err(Error::Truncated);
        }
        Ok(UdpPacket { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn as_slice(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The fixed 8-byte header (one bounds check).
    #[inline]
    pub fn header(&self) -> UdpHeader<&[u8; HEADER_LEN]> {
        UdpHeader::new(self.buffer.as_ref().first_chunk().expect(SHORT))
    }

    pub fn src_port(&self) -> u16 {
        self.header().ports().src()
    }

    pub fn dst_port(&self) -> u16 {
        self.header().ports().dst()
    }

    /// Header plus payload, in bytes.
    pub fn len(&self) -> u16 {
        self.header().len()
    }

    /// 0 means the sender did not compute a checksum.
    pub fn checksum(&self) -> u16 {
        self.header().checksum()
    }

    /// Bytes `8..len`.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..usize::from(self.len())]
    }

    fn compute_sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let len = self.len();
        let data = &self.buffer.as_ref()[..usize::from(len)];
        checksum::pseudo_header(src, dst, protocol::UDP, len) + checksum::sum(data)
    }

    /// True if the checksum is correct for the given IPv4 addresses, or is
    /// 0 (none).
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || checksum::fold(self.compute_sum(src, dst)) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// The fixed 8-byte header, writable (one bounds check).
    #[inline]
    pub fn header_mut(&mut self) -> UdpHeader<&mut [u8; HEADER_LEN]> {
        UdpHeader::new(self.buffer.as_mut().first_chunk_mut().expect(SHORT))
    }

    pub fn set_src_port(&mut self, value: u16) {
        self.header_mut().ports_mut().set_src(value);
    }

    pub fn set_dst_port(&mut self, value: u16) {
        self.header_mut().ports_mut().set_dst(value);
    }

    /// Sets the length field.
    ///
    /// # Panics
    /// If `len < 8` or `len` is more than the buffer length.
    pub fn set_len(&mut self, len: u16) {
        let len_usize = usize::from(len);
        assert!(
            len_usize >= HEADER_LEN && len_usize <= self.buffer.as_ref().len(),
            "UDP len {len} outside 8..=buffer length"
        );
        self.header_mut().set_len(len);
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.header_mut().set_checksum(value);
    }

    /// Computes the checksum over the pseudo-header and `len` bytes. A
    /// result of 0 is stored as 0xFFFF (0 would mean "no checksum").
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = checksum::finish(self.compute_sum(src, dst));
        self.set_checksum(if c == 0 { 0xFFFF } else { c });
    }

    /// Bytes `8..len`.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

const SHORT: &str = "UDP buffer shorter than a header";

/// A fixed-size view over an 8-byte UDP header, for the hot path: the
/// length is the array's, so no field access is bounds-checked. The
/// payload and whether the length fits a buffer are [`UdpPacket`]'s.
#[derive(Debug, Clone)]
pub struct UdpHeader<T: Borrow<[u8; HEADER_LEN]>> {
    buffer: T,
}

// `len` is the UDP length field, not a container size.
#[allow(clippy::len_without_is_empty)]
impl<T: Borrow<[u8; HEADER_LEN]>> UdpHeader<T> {
    #[inline(always)]
    pub const fn new(buffer: T) -> Self {
        UdpHeader { buffer }
    }

    #[inline(always)]
    fn bytes(&self) -> &[u8; HEADER_LEN] {
        self.buffer.borrow()
    }

    /// The source and destination ports ([`L4Header::ports_mut`] to write).
    #[inline(always)]
    pub fn ports(&self) -> Ports<&[u8; PORTS_LEN]> {
        Ports::new(self.bytes()[field::PORTS].try_into().expect("4 bytes"))
    }

    /// Header plus payload, in bytes.
    #[inline(always)]
    pub fn len(&self) -> u16 {
        read_u16(&self.bytes()[field::LENGTH])
    }

    /// 0 means the sender did not compute a checksum.
    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        read_u16(&self.bytes()[field::CHECKSUM])
    }
}

impl<T: BorrowMut<[u8; HEADER_LEN]>> UdpHeader<T> {
    #[inline(always)]
    fn bytes_mut(&mut self) -> &mut [u8; HEADER_LEN] {
        self.buffer.borrow_mut()
    }

    /// Sets the length field; nothing here knows the buffer it describes.
    #[inline(always)]
    pub fn set_len(&mut self, len: u16) {
        write_u16(&mut self.bytes_mut()[field::LENGTH], len);
    }

    #[inline(always)]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.bytes_mut()[field::CHECKSUM], value);
    }
}

impl<T: BorrowMut<[u8; HEADER_LEN]>> L4Header for UdpHeader<T> {
    #[inline(always)]
    fn ports_mut(&mut self) -> Ports<&mut [u8; PORTS_LEN]> {
        Ports::new(
            (&mut self.bytes_mut()[field::PORTS])
                .try_into()
                .expect("4 bytes"),
        )
    }

    /// 0 means "no checksum": nothing to patch.
    #[inline(always)]
    fn checksum_to_patch(&self) -> Option<u16> {
        Some(self.checksum()).filter(|&c| c != 0)
    }

    /// A computed 0 is sent as 0xFFFF (0 would mean "none").
    #[inline(always)]
    fn set_patched_checksum(&mut self, c: u16) {
        self.set_checksum(if c == 0 { 0xFFFF } else { c });
    }
}

/// Writes an 8-byte UDP header with `len = 8 + payload_len` at the start of
/// `buf`. Pass `checksum` 0 and call [`UdpPacket::fill_checksum`] once the
/// payload is in place, or leave it 0 (allowed over IPv4, as for VXLAN).
///
/// # Panics
/// If `buf.len() < HEADER_LEN` or `payload_len > 65535 - 8`.
pub fn emit_header(buf: &mut [u8], src_port: u16, dst_port: u16, payload_len: u16, checksum: u16) {
    let len = payload_len
        .checked_add(HEADER_LEN as u16)
        .expect("UDP payload_len too large for len");
    let h = &mut buf[..HEADER_LEN];
    write_u16(&mut h[field::SRC_PORT], src_port);
    write_u16(&mut h[field::DST_PORT], dst_port);
    write_u16(&mut h[field::LENGTH], len);
    write_u16(&mut h[field::CHECKSUM], checksum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Ipv4Packet;
    use crate::wire::vectors::{XorShift, UDP_FRAME, VXLAN_FRAME};

    const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const DNS_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const UDP_AT: usize = 14 + 20;

    #[test]
    fn getters() {
        let ip = Ipv4Packet::new_checked(&UDP_FRAME[14..]).unwrap();
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(udp.src_port(), 40000);
        assert_eq!(udp.dst_port(), 53);
        assert_eq!(udp.len(), 12);
        assert_eq!(udp.checksum(), 0x6e2d);
        assert_eq!(udp.payload(), b"ping");
        assert!(udp.verify_checksum(POD_IP, DNS_SVC));
        assert!(!udp.verify_checksum(POD_IP, Ipv4Addr::new(10, 96, 0, 11)));

        // Over the padded rest of the frame, payload still stops at len.
        let padded = UdpPacket::new_checked(&UDP_FRAME[UDP_AT..]).unwrap();
        assert_eq!(padded.payload(), b"ping");
        assert!(padded.verify_checksum(POD_IP, DNS_SVC));
    }

    #[test]
    fn zero_checksum_means_none() {
        let outer = UdpPacket::new_checked(&VXLAN_FRAME[UDP_AT..]).unwrap();
        assert_eq!(outer.checksum(), 0);
        assert!(outer.verify_checksum(Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8)));
    }

    #[test]
    fn emit_and_fill_round_trip() {
        let mut buf = [0u8; 12];
        emit_header(&mut buf, 40000, 53, 4, 0);
        buf[8..].copy_from_slice(b"ping");
        let mut udp = UdpPacket::new_checked(&mut buf[..]).unwrap();
        udp.fill_checksum(POD_IP, DNS_SVC);
        assert_eq!(buf[..], UDP_FRAME[UDP_AT..UDP_AT + 12]);

        let mut hdr = [0u8; HEADER_LEN];
        emit_header(&mut hdr, 40000, 53, 4, 0x6e2d);
        assert_eq!(hdr[..], UDP_FRAME[UDP_AT..UDP_AT + 8]);
    }

    #[test]
    fn setters() {
        let mut buf = UDP_FRAME;
        let mut udp = UdpPacket::new_checked(&mut buf[UDP_AT..]).unwrap();
        udp.set_src_port(1);
        udp.set_dst_port(2);
        udp.set_len(10);
        udp.payload_mut().copy_from_slice(b"hi");
        udp.fill_checksum(POD_IP, DNS_SVC);
        assert_eq!((udp.src_port(), udp.dst_port(), udp.len()), (1, 2, 10));
        assert_eq!(udp.payload(), b"hi");
        assert!(udp.verify_checksum(POD_IP, DNS_SVC));
        udp.set_checksum(0x1234);
        assert_eq!(udp.checksum(), 0x1234);
        assert!(!udp.verify_checksum(POD_IP, DNS_SVC));
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        let mut buf = [0u8; 12];
        buf.copy_from_slice(&UDP_FRAME[UDP_AT..UDP_AT + 12]);
        // Add the checksum into a payload word: the new sum is 0xFFFF, so
        // the computed checksum is 0.
        let word = u16::from_be_bytes([buf[8], buf[9]]);
        let patched = checksum::fold(u32::from(word) + 0x6e2d);
        buf[8..10].copy_from_slice(&patched.to_be_bytes());
        let mut udp = UdpPacket::new_checked(&mut buf[..]).unwrap();
        udp.fill_checksum(POD_IP, DNS_SVC);
        assert_eq!(udp.checksum(), 0xFFFF);
        assert!(udp.verify_checksum(POD_IP, DNS_SVC));

        let (h, payload) = etherparse::UdpHeader::from_slice(&buf).unwrap();
        let theirs = h
            .calc_checksum_ipv4_raw(POD_IP.octets(), DNS_SVC.octets(), payload)
            .unwrap();
        assert_eq!(theirs, 0xFFFF);
    }

    #[test]
    #[should_panic(expected = "outside 8..=buffer")]
    fn set_len_past_buffer_panics() {
        let mut buf = [0u8; 12];
        emit_header(&mut buf, 1, 2, 4, 0);
        UdpPacket::new_checked(&mut buf[..]).unwrap().set_len(13);
    }

    #[test]
    #[should_panic(expected = "outside 8..=buffer")]
    fn set_len_below_header_panics() {
        let mut buf = [0u8; 12];
        emit_header(&mut buf, 1, 2, 4, 0);
        UdpPacket::new_checked(&mut buf[..]).unwrap().set_len(7);
    }

    #[test]
    fn malformed() {
        let udp = &UDP_FRAME[UDP_AT..UDP_AT + 12];
        for len in 0..HEADER_LEN {
            assert_eq!(
                UdpPacket::new_checked(&udp[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        // Length field past the buffer.
        assert_eq!(
            UdpPacket::new_checked(&udp[..11]).unwrap_err(),
            Error::Truncated
        );
        // Length field below the header.
        for bad in 0..8u8 {
            let mut b = [0u8; 12];
            b.copy_from_slice(udp);
            b[5] = bad;
            assert_eq!(
                UdpPacket::new_checked(&b[..]).unwrap_err(),
                Error::Malformed
            );
        }
        // A bare header is fine.
        let mut b = [0u8; 8];
        emit_header(&mut b, 1, 2, 0, 0);
        assert!(UdpPacket::new_checked(&b[..]).unwrap().payload().is_empty());
    }

    /// Build with etherparse, NAT with our setters and incremental updates,
    /// and check etherparse computes the same checksum.
    #[test]
    fn against_etherparse() {
        let mut rng = XorShift(0x0DD_BA11);
        for _ in 0..300 {
            let src = Ipv4Addr::from(rng.next_u64() as u32);
            let dst = Ipv4Addr::from(rng.next_u64() as u32);
            let (sport, dport) = (rng.next_u64() as u16, rng.next_u64() as u16);
            let mut payload = [0u8; 200];
            let payload_len = rng.below(payload.len());
            rng.fill(&mut payload[..payload_len]);
            let mut frame = Vec::new();
            etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
                .udp(sport, dport)
                .write(&mut frame, &payload[..payload_len])
                .unwrap();

            let mut ip = Ipv4Packet::new_checked(&mut frame[..]).unwrap();
            let mut udp = UdpPacket::new_checked(ip.payload_mut()).unwrap();
            assert_eq!((udp.src_port(), udp.dst_port()), (sport, dport));
            assert_eq!(usize::from(udp.len()), 8 + payload_len);
            assert_eq!(udp.payload(), &payload[..payload_len]);
            assert!(udp.verify_checksum(src, dst));
            let theirs = udp.checksum();
            udp.fill_checksum(src, dst);
            assert_eq!(udp.checksum(), theirs);

            // DNAT: new destination address (pseudo-header) and port.
            let new_dst = Ipv4Addr::from(rng.next_u64() as u32);
            let new_port = rng.next_u64() as u16;
            let mut c = checksum::update_u32(udp.checksum(), u32::from(dst), u32::from(new_dst));
            c = checksum::update_u16(c, dport, new_port);
            udp.set_checksum(if c == 0 { 0xFFFF } else { c });
            udp.set_dst_port(new_port);
            assert!(udp.verify_checksum(src, new_dst));
            ip.set_dst_addr(new_dst);
            ip.fill_checksum();

            let (iph, rest) = etherparse::Ipv4Header::from_slice(&frame).unwrap();
            assert_eq!(iph.calc_header_checksum(), iph.header_checksum);
            let (udph, data) = etherparse::UdpHeader::from_slice(rest).unwrap();
            assert_eq!(udph.destination_port, new_port);
            assert_eq!(udph.calc_checksum_ipv4(&iph, data).unwrap(), udph.checksum);
        }
    }
}
