//! TCP (RFC 9293) segment headers over IPv4. Options are not parsed; they
//! are covered by [`TcpPacket::header_len`] and skipped by `payload()`.

use core::net::Ipv4Addr;

use core::borrow::{Borrow, BorrowMut};

use super::checksum;
use super::ipv4::protocol;
use super::l4::{L4Header, Ports, PORTS_LEN};
use super::{read_u16, read_u32, write_u16, write_u32, Error, Result};

/// Bits of the flags byte (byte 13). NS, in byte 12, is not exposed.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

pub(super) mod field {
    use core::ops::Range;
    /// Source and destination ports: [`super::super::l4::Ports`].
    pub const PORTS: Range<usize> = 0..4;
    pub const SEQ_NUM: Range<usize> = 4..8;
    pub const ACK_NUM: Range<usize> = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Range<usize> = 14..16;
    pub const CHECKSUM: Range<usize> = 16..18;
    pub const URGENT: Range<usize> = 18..20;
}

/// Length of a TCP header without options.
pub const HEADER_LEN: usize = field::URGENT.end;

/// A view over one TCP segment.
///
/// The buffer must be exactly the segment (the IPv4 payload, i.e.
/// `Ipv4Packet::payload()`), not the rest of the frame: the payload and the
/// checksum's TCP length both run to the end of the buffer, so trailing
/// Ethernet padding would corrupt them.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` without validation; see the module docs.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// `Truncated` if shorter than 20 bytes or than the data offset says;
    /// `Malformed` if the data offset is below 5.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let data = buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = TcpPacket { buffer };
        let header_len = packet.header_len();
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if header_len > packet.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(packet)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole segment.
    pub fn as_slice(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The fixed 20-byte header (one bounds check).
    #[inline]
    pub fn header(&self) -> TcpHeader<&[u8; HEADER_LEN]> {
        TcpHeader::new(self.buffer.as_ref().first_chunk().expect(SHORT))
    }

    pub fn src_port(&self) -> u16 {
        self.header().ports().src()
    }

    pub fn dst_port(&self) -> u16 {
        self.header().ports().dst()
    }

    pub fn seq_number(&self) -> u32 {
        self.header().seq_number()
    }

    pub fn ack_number(&self) -> u32 {
        self.header().ack_number()
    }

    /// Header length in bytes, options included (data offset * 4).
    pub fn header_len(&self) -> usize {
        self.header().header_len()
    }

    /// The flags byte; test bits with [`flags`].
    pub fn flags(&self) -> u8 {
        self.header().flags()
    }

    pub fn window(&self) -> u16 {
        self.header().window()
    }

    pub fn checksum(&self) -> u16 {
        self.header().checksum()
    }

    /// Options, if any (bytes `20..header_len`).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// Bytes from `header_len` to the end of the buffer.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }

    fn compute_sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let data = self.buffer.as_ref();
        // Segments are far below 64 KiB (one UMEM frame); see the type docs.
        let len = data.len() as u16;
        checksum::pseudo_header(src, dst, protocol::TCP, len) + checksum::sum(data)
    }

    /// Whether the checksum over pseudo-header and whole buffer is correct.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum::fold(self.compute_sum(src, dst)) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// The fixed 20-byte header, writable (one bounds check).
    #[inline]
    pub fn header_mut(&mut self) -> TcpHeader<&mut [u8; HEADER_LEN]> {
        TcpHeader::new(self.buffer.as_mut().first_chunk_mut().expect(SHORT))
    }

    pub fn set_src_port(&mut self, value: u16) {
        self.header_mut().ports_mut().set_src(value);
    }

    pub fn set_dst_port(&mut self, value: u16) {
        self.header_mut().ports_mut().set_dst(value);
    }

    pub fn set_seq_number(&mut self, value: u32) {
        self.header_mut().set_seq_number(value);
    }

    pub fn set_ack_number(&mut self, value: u32) {
        self.header_mut().set_ack_number(value);
    }

    /// Replaces the whole flags byte (see [`flags`]).
    pub fn set_flags(&mut self, value: u8) {
        self.header_mut().set_flags(value);
    }

    pub fn set_window(&mut self, value: u16) {
        self.header_mut().set_window(value);
    }

    /// See [`TcpHeader::set_header_len`].
    pub fn set_header_len(&mut self, len: usize) {
        self.header_mut().set_header_len(len);
    }

    pub fn set_urgent(&mut self, value: u16) {
        self.header_mut().set_urgent(value);
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.header_mut().set_checksum(value);
    }

    /// Computes the checksum over the pseudo-header and the whole buffer.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = checksum::finish(self.compute_sum(src, dst));
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        &mut self.buffer.as_mut()[start..]
    }
}

const SHORT: &str = "TCP buffer shorter than a header";

/// A fixed-size view over the 20-byte TCP header without options, for the
/// hot path: the length is the array's, so no field access is
/// bounds-checked. Options and the payload are [`TcpPacket`]'s.
#[derive(Debug, Clone)]
pub struct TcpHeader<T: Borrow<[u8; HEADER_LEN]>> {
    buffer: T,
}

impl<T: Borrow<[u8; HEADER_LEN]>> TcpHeader<T> {
    #[inline(always)]
    pub const fn new(buffer: T) -> Self {
        TcpHeader { buffer }
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

    #[inline(always)]
    pub fn seq_number(&self) -> u32 {
        read_u32(&self.bytes()[field::SEQ_NUM])
    }

    #[inline(always)]
    pub fn ack_number(&self) -> u32 {
        read_u32(&self.bytes()[field::ACK_NUM])
    }

    /// Header length in bytes, options included (data offset * 4).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.bytes()[field::DATA_OFF] >> 4) * 4
    }

    /// The flags byte; test bits with [`flags`].
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.bytes()[field::FLAGS]
    }

    #[inline(always)]
    pub fn window(&self) -> u16 {
        read_u16(&self.bytes()[field::WINDOW])
    }

    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        read_u16(&self.bytes()[field::CHECKSUM])
    }
}

impl<T: BorrowMut<[u8; HEADER_LEN]>> TcpHeader<T> {
    #[inline(always)]
    fn bytes_mut(&mut self) -> &mut [u8; HEADER_LEN] {
        self.buffer.borrow_mut()
    }

    #[inline(always)]
    pub fn set_seq_number(&mut self, value: u32) {
        write_u32(&mut self.bytes_mut()[field::SEQ_NUM], value);
    }

    #[inline(always)]
    pub fn set_ack_number(&mut self, value: u32) {
        write_u32(&mut self.bytes_mut()[field::ACK_NUM], value);
    }

    /// Replaces the whole flags byte (see [`flags`]).
    #[inline(always)]
    pub fn set_flags(&mut self, value: u8) {
        self.bytes_mut()[field::FLAGS] = value;
    }

    #[inline(always)]
    pub fn set_window(&mut self, value: u16) {
        write_u16(&mut self.bytes_mut()[field::WINDOW], value);
    }

    /// Sets the data offset from a header length in bytes (a multiple of 4,
    /// 20..=60), and clears the reserved bits beside it.
    #[inline(always)]
    pub fn set_header_len(&mut self, len: usize) {
        debug_assert!(len.is_multiple_of(4) && (HEADER_LEN..=60).contains(&len));
        self.bytes_mut()[field::DATA_OFF] = ((len / 4) as u8) << 4;
    }

    #[inline(always)]
    pub fn set_urgent(&mut self, value: u16) {
        write_u16(&mut self.bytes_mut()[field::URGENT], value);
    }

    #[inline(always)]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.bytes_mut()[field::CHECKSUM], value);
    }
}

impl<T: BorrowMut<[u8; HEADER_LEN]>> L4Header for TcpHeader<T> {
    #[inline(always)]
    fn ports_mut(&mut self) -> Ports<&mut [u8; PORTS_LEN]> {
        Ports::new(
            (&mut self.bytes_mut()[field::PORTS])
                .try_into()
                .expect("4 bytes"),
        )
    }

    #[inline(always)]
    fn checksum_to_patch(&self) -> Option<u16> {
        Some(self.checksum())
    }

    #[inline(always)]
    fn set_patched_checksum(&mut self, c: u16) {
        self.set_checksum(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::Ipv4Packet;
    use crate::wire::vectors::{XorShift, TCP_SYN_FRAME};

    const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
    const TCP_AT: usize = 14 + 20;

    #[test]
    fn getters() {
        let ip = Ipv4Packet::new_checked(&TCP_SYN_FRAME[14..]).unwrap();
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(tcp.src_port(), 51000);
        assert_eq!(tcp.dst_port(), 8080);
        assert_eq!(tcp.seq_number(), 0x1234_5678);
        assert_eq!(tcp.ack_number(), 0);
        assert_eq!(tcp.header_len(), 40);
        assert_eq!(tcp.flags(), flags::SYN);
        assert_eq!(tcp.flags() & flags::ACK, 0);
        assert_eq!(tcp.window(), 64240);
        assert_eq!(tcp.checksum(), 0x0265);
        assert_eq!(tcp.options().len(), 20);
        assert_eq!(tcp.options()[..4], [0x02, 0x04, 0x05, 0xb4]);
        assert!(tcp.payload().is_empty());
        assert!(tcp.verify_checksum(POD_IP, PEER_IP));
        assert!(!tcp.verify_checksum(PEER_IP, PEER_IP));
    }

    #[test]
    fn setters_and_fill_round_trip() {
        let mut buf = TCP_SYN_FRAME;
        let mut tcp = TcpPacket::new_checked(&mut buf[TCP_AT..]).unwrap();
        tcp.set_src_port(1);
        tcp.set_dst_port(2);
        tcp.set_seq_number(3);
        tcp.set_ack_number(4);
        tcp.set_flags(flags::SYN | flags::ACK);
        tcp.set_window(5);
        tcp.fill_checksum(POD_IP, PEER_IP);
        assert_eq!((tcp.src_port(), tcp.dst_port()), (1, 2));
        assert_eq!((tcp.seq_number(), tcp.ack_number()), (3, 4));
        assert_eq!(tcp.flags(), 0x12);
        assert_eq!(tcp.window(), 5);
        assert!(tcp.verify_checksum(POD_IP, PEER_IP));

        // Restoring the fields and refilling gives the vector back.
        tcp.set_src_port(51000);
        tcp.set_dst_port(8080);
        tcp.set_seq_number(0x1234_5678);
        tcp.set_ack_number(0);
        tcp.set_flags(flags::SYN);
        tcp.set_window(64240);
        tcp.set_checksum(0xdead);
        tcp.fill_checksum(POD_IP, PEER_IP);
        assert_eq!(buf, TCP_SYN_FRAME);
    }

    #[test]
    fn malformed() {
        let seg = &TCP_SYN_FRAME[TCP_AT..];
        for len in 0..HEADER_LEN {
            assert_eq!(
                TcpPacket::new_checked(&seg[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        // Options cut short.
        for len in HEADER_LEN..40 {
            assert_eq!(
                TcpPacket::new_checked(&seg[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        for off in 0..5u8 {
            let mut b = [0u8; 40];
            b.copy_from_slice(seg);
            b[12] = off << 4;
            assert_eq!(
                TcpPacket::new_checked(&b[..]).unwrap_err(),
                Error::Malformed
            );
        }
        // Data offset 15 (60 bytes) in 40.
        let mut b = [0u8; 40];
        b.copy_from_slice(seg);
        b[12] = 0xf0;
        assert_eq!(
            TcpPacket::new_checked(&b[..]).unwrap_err(),
            Error::Truncated
        );
    }

    /// Build with etherparse, NAT with our setters and incremental updates,
    /// and check etherparse's checksum matches ours.
    #[test]
    fn against_etherparse() {
        let mut rng = XorShift(0x7C9_5EED);
        for _ in 0..300 {
            let src = Ipv4Addr::from(rng.next_u64() as u32);
            let dst = Ipv4Addr::from(rng.next_u64() as u32);
            let (sport, dport) = (rng.next_u64() as u16, rng.next_u64() as u16);
            let seq = rng.next_u64() as u32;
            let ack = rng.next_u64() as u32;
            let mut payload = [0u8; 200];
            let payload_len = rng.below(payload.len());
            rng.fill(&mut payload[..payload_len]);
            let mut frame = Vec::new();
            etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
                .ipv4(src.octets(), dst.octets(), 64)
                .tcp(sport, dport, seq, 1024)
                .ack(ack)
                .psh()
                .write(&mut frame, &payload[..payload_len])
                .unwrap();

            let mut ip = Ipv4Packet::new_checked(&mut frame[14..]).unwrap();
            let mut tcp = TcpPacket::new_checked(ip.payload_mut()).unwrap();
            assert_eq!((tcp.src_port(), tcp.dst_port()), (sport, dport));
            assert_eq!((tcp.seq_number(), tcp.ack_number()), (seq, ack));
            assert_eq!(tcp.flags(), flags::ACK | flags::PSH);
            assert_eq!(tcp.window(), 1024);
            assert_eq!(tcp.payload(), &payload[..payload_len]);
            assert!(tcp.verify_checksum(src, dst));
            let theirs = tcp.checksum();
            tcp.fill_checksum(src, dst);
            assert_eq!(tcp.checksum(), theirs);

            // SNAT: new source address (pseudo-header) and port.
            let new_src = Ipv4Addr::from(rng.next_u64() as u32);
            let new_port = rng.next_u64() as u16;
            let mut c = checksum::update_u32(tcp.checksum(), u32::from(src), u32::from(new_src));
            c = checksum::update_u16(c, sport, new_port);
            tcp.set_checksum(c);
            tcp.set_src_port(new_port);
            assert!(tcp.verify_checksum(new_src, dst));
            let ip_c = checksum::update_u32(ip.checksum(), u32::from(src), u32::from(new_src));
            ip.set_src_addr(new_src);
            ip.set_checksum(ip_c);

            let headers = etherparse::PacketHeaders::from_ethernet_slice(&frame).unwrap();
            let Some(etherparse::NetHeaders::Ipv4(iph, _)) = headers.net else {
                panic!("not ipv4")
            };
            assert_eq!(iph.calc_header_checksum(), iph.header_checksum);
            let Some(etherparse::TransportHeader::Tcp(tcph)) = headers.transport else {
                panic!("not tcp")
            };
            assert_eq!(tcph.source_port, new_port);
            let data = headers.payload.slice();
            assert_eq!(tcph.calc_checksum_ipv4(&iph, data).unwrap(), tcph.checksum);
        }
    }
}
