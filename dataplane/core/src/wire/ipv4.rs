//! IPv4 (RFC 791) headers.

use core::borrow::{Borrow, BorrowMut};
use core::net::Ipv4Addr;

use super::checksum;
use super::{read_ipv4, read_u16, write_ipv4, write_u16, Error, Result};

/// IP protocol numbers kxdp handles.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC_ADDR: Range<usize> = 12..16;
    /// Source and destination, read as one.
    pub const ADDRS: Range<usize> = 12..20;
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1FFF;

/// A view over an IPv4 packet: the header (with any options) and its
/// payload. The buffer may run past `total_len` (Ethernet padding); those
/// bytes are excluded from [`Ipv4Packet::payload`]. Its fixed fields are
/// read and written through [`Ipv4Header`] over the first 20 bytes.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without validation; see the module docs.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Checks, in order: at least 20 bytes (`Truncated`), version 4 and
    /// IHL >= 5 (`Malformed`), the header fits (`Truncated`), `total_len`
    /// covers the header (`Malformed`) and fits in the buffer (`Truncated`).
    ///
    /// The checksum is not verified; call [`Ipv4Packet::verify_checksum`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        let data = buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = Ipv4Packet { buffer };
        if packet.version() != 4 || packet.ihl() < 5 {
            return Err(Error::Malformed);
        }
        let len = packet.buffer.as_ref().len();
        let header_len = packet.header_len();
        if header_len > len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(packet.total_len());
        if total_len < header_len {
            return Err(Error::Malformed);
        }
        if total_len > len {
            return Err(Error::Truncated);
        }
        Ok(packet)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole buffer, including any bytes past `total_len`.
    pub fn as_slice(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// The fixed 20 bytes of the header (one bounds check).
    #[inline]
    pub fn header(&self) -> Ipv4Header<&[u8; HEADER_LEN]> {
        Ipv4Header::new(self.buffer.as_ref().first_chunk().expect(SHORT))
    }

    pub fn version(&self) -> u8 {
        self.header().version()
    }

    /// Header length in 32-bit words.
    pub fn ihl(&self) -> u8 {
        self.header().ihl()
    }

    /// Header length in bytes (20..=60).
    pub fn header_len(&self) -> usize {
        self.header().header_len()
    }

    pub fn dscp_ecn(&self) -> u8 {
        self.header().dscp_ecn()
    }

    /// Header plus payload, in bytes.
    pub fn total_len(&self) -> u16 {
        self.header().total_len()
    }

    pub fn ident(&self) -> u16 {
        self.header().ident()
    }

    pub fn dont_frag(&self) -> bool {
        self.header().dont_frag()
    }

    pub fn more_frags(&self) -> bool {
        self.header().more_frags()
    }

    /// Fragment offset in **bytes** (the 13-bit field times 8).
    pub fn frag_offset(&self) -> u16 {
        self.header().frag_offset()
    }

    /// True for any fragment, first or later (MF set or offset != 0).
    pub fn is_fragment(&self) -> bool {
        self.header().is_fragment()
    }

    pub fn has_options(&self) -> bool {
        self.header().has_options()
    }

    pub fn ttl(&self) -> u8 {
        self.header().ttl()
    }

    /// See [`protocol`].
    pub fn protocol(&self) -> u8 {
        self.header().protocol()
    }

    pub fn checksum(&self) -> u16 {
        self.header().checksum()
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        self.header().src_addr()
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        self.header().dst_addr()
    }

    /// Bytes `header_len..total_len`: excludes Ethernet padding.
    pub fn payload(&self) -> &[u8] {
        let end = usize::from(self.total_len());
        &self.buffer.as_ref()[self.header_len()..end]
    }

    /// Whether the header checksum (over `header_len` bytes) is correct.
    pub fn verify_checksum(&self) -> bool {
        let header = &self.buffer.as_ref()[..self.header_len()];
        checksum::sum(header) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// The fixed 20 bytes of the header, writable (one bounds check).
    #[inline]
    pub fn header_mut(&mut self) -> Ipv4Header<&mut [u8; HEADER_LEN]> {
        Ipv4Header::new(self.buffer.as_mut().first_chunk_mut().expect(SHORT))
    }

    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.header_mut().set_dscp_ecn(value);
    }

    /// Sets the total length.
    ///
    /// # Panics
    /// If `len` is less than `header_len()` or more than the buffer length:
    /// either would break the bounds `new_checked` established.
    pub fn set_total_len(&mut self, len: u16) {
        let len_usize = usize::from(len);
        assert!(
            len_usize >= self.header_len() && len_usize <= self.buffer.as_ref().len(),
            "IPv4 total_len {len} outside header_len..=buffer length"
        );
        self.header_mut().set_total_len(len);
    }

    pub fn set_ident(&mut self, value: u16) {
        self.header_mut().set_ident(value);
    }

    pub fn set_ttl(&mut self, value: u8) {
        self.header_mut().set_ttl(value);
    }

    pub fn set_protocol(&mut self, value: u8) {
        self.header_mut().set_protocol(value);
    }

    pub fn set_checksum(&mut self, value: u16) {
        self.header_mut().set_checksum(value);
    }

    /// Sets the source address without touching the checksum.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.header_mut().set_src_addr(addr);
    }

    /// Sets the destination address without touching the checksum.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.header_mut().set_dst_addr(addr);
    }

    /// Rewrites both addresses and patches the header checksum incrementally
    /// (RFC 1624), as a NAT does.
    pub fn rewrite_addrs(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.header_mut().rewrite_addrs(src, dst);
    }

    /// Recomputes the header checksum from scratch (options included).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let header_len = self.header_len();
        let c = checksum::finish(checksum::sum(&self.buffer.as_ref()[..header_len]));
        self.set_checksum(c);
    }

    /// See [`Ipv4Header::decrement_ttl`].
    pub fn decrement_ttl(&mut self) -> u8 {
        self.header_mut().decrement_ttl()
    }

    /// Bytes `header_len..total_len`.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        let end = usize::from(self.total_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

const SHORT: &str = "IPv4 buffer shorter than a header";

/// A fixed-size view over the first 20 bytes of an IPv4 header, for the
/// hot path: the length is the array's, so no field access is
/// bounds-checked. Options, the payload and whether `total_len` fits a
/// buffer are [`Ipv4Packet`]'s business; a header with options has only
/// its first 20 bytes here.
#[derive(Debug, Clone)]
pub struct Ipv4Header<T: Borrow<[u8; HEADER_LEN]>> {
    buffer: T,
}

impl<T: Borrow<[u8; HEADER_LEN]>> Ipv4Header<T> {
    #[inline(always)]
    pub const fn new(buffer: T) -> Self {
        Ipv4Header { buffer }
    }

    #[inline(always)]
    fn bytes(&self) -> &[u8; HEADER_LEN] {
        self.buffer.borrow()
    }

    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.bytes()[field::VER_IHL] >> 4
    }

    /// Header length in 32-bit words.
    #[inline(always)]
    pub fn ihl(&self) -> u8 {
        self.bytes()[field::VER_IHL] & 0x0F
    }

    /// Version 4 and no options: the only header the fast path takes.
    #[inline(always)]
    pub fn is_v4_without_options(&self) -> bool {
        self.bytes()[field::VER_IHL] == 0x45
    }

    /// Header length in bytes (20..=60).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.ihl()) * 4
    }

    #[inline(always)]
    pub fn dscp_ecn(&self) -> u8 {
        self.bytes()[field::DSCP_ECN]
    }

    /// Header plus payload, in bytes.
    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        read_u16(&self.bytes()[field::LENGTH])
    }

    #[inline(always)]
    pub fn ident(&self) -> u16 {
        read_u16(&self.bytes()[field::IDENT])
    }

    #[inline(always)]
    fn flags_and_offset(&self) -> u16 {
        read_u16(&self.bytes()[field::FLG_OFF])
    }

    #[inline(always)]
    pub fn dont_frag(&self) -> bool {
        self.flags_and_offset() & FLAG_DF != 0
    }

    #[inline(always)]
    pub fn more_frags(&self) -> bool {
        self.flags_and_offset() & FLAG_MF != 0
    }

    /// Fragment offset in **bytes** (the 13-bit field times 8).
    #[inline(always)]
    pub fn frag_offset(&self) -> u16 {
        (self.flags_and_offset() & OFFSET_MASK) << 3
    }

    /// True for any fragment, first or later (MF set or offset != 0).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.flags_and_offset() & (FLAG_MF | OFFSET_MASK) != 0
    }

    #[inline(always)]
    pub fn has_options(&self) -> bool {
        self.ihl() > 5
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.bytes()[field::TTL]
    }

    /// See [`protocol`].
    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.bytes()[field::PROTOCOL]
    }

    #[inline(always)]
    pub fn checksum(&self) -> u16 {
        read_u16(&self.bytes()[field::CHECKSUM])
    }

    #[inline(always)]
    pub fn src_addr(&self) -> Ipv4Addr {
        read_ipv4(&self.bytes()[field::SRC_ADDR])
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> Ipv4Addr {
        read_ipv4(&self.bytes()[field::DST_ADDR])
    }

    /// Both addresses in one load: the source in the high half.
    #[inline(always)]
    pub fn addrs(&self) -> u64 {
        u64::from_be_bytes(self.bytes()[field::ADDRS].try_into().expect("8 bytes"))
    }

    /// Whether the checksum over these 20 bytes is correct (the header's,
    /// if it has no options).
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        checksum::sum20(self.bytes()) == 0xFFFF
    }

    /// The partial sum of the header with its length and checksum taken as
    /// zero: what a header template's checksum needs besides its length.
    pub fn sum_without_length(&self) -> u32 {
        let mut h = *self.bytes();
        h[field::LENGTH].fill(0);
        h[field::CHECKSUM].fill(0);
        checksum::sum20(&h)
    }
}

impl<T: BorrowMut<[u8; HEADER_LEN]>> Ipv4Header<T> {
    #[inline(always)]
    fn bytes_mut(&mut self) -> &mut [u8; HEADER_LEN] {
        self.buffer.borrow_mut()
    }

    #[inline(always)]
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.bytes_mut()[field::DSCP_ECN] = value;
    }

    /// Sets the total length; nothing here knows the buffer it describes.
    #[inline(always)]
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(&mut self.bytes_mut()[field::LENGTH], len);
    }

    #[inline(always)]
    pub fn set_ident(&mut self, value: u16) {
        write_u16(&mut self.bytes_mut()[field::IDENT], value);
    }

    #[inline(always)]
    pub fn set_ttl(&mut self, value: u8) {
        self.bytes_mut()[field::TTL] = value;
    }

    #[inline(always)]
    pub fn set_protocol(&mut self, value: u8) {
        self.bytes_mut()[field::PROTOCOL] = value;
    }

    #[inline(always)]
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.bytes_mut()[field::CHECKSUM], value);
    }

    /// Sets the source address without touching the checksum.
    #[inline(always)]
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        write_ipv4(&mut self.bytes_mut()[field::SRC_ADDR], addr);
    }

    /// Sets the destination address without touching the checksum.
    #[inline(always)]
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        write_ipv4(&mut self.bytes_mut()[field::DST_ADDR], addr);
    }

    /// Rewrites both addresses and patches the header checksum incrementally
    /// (RFC 1624), as a NAT does.
    pub fn rewrite_addrs(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let mut c = self.checksum();
        c = checksum::update_u32(c, u32::from(self.src_addr()), u32::from(src));
        c = checksum::update_u32(c, u32::from(self.dst_addr()), u32::from(dst));
        self.set_src_addr(src);
        self.set_dst_addr(dst);
        self.set_checksum(c);
    }

    /// Decrements the TTL and patches the checksum incrementally (RFC 1624),
    /// returning the new TTL. A TTL of 0 is left as is and 0 is returned;
    /// callers drop (and may send Time Exceeded) when this returns 0.
    #[inline]
    pub fn decrement_ttl(&mut self) -> u8 {
        let ttl = self.ttl();
        if ttl == 0 {
            return 0;
        }
        // TTL is the high byte of the word it shares with the protocol, so
        // that word drops by 0x0100 whatever the protocol: RFC 1624's
        // `~m + m'` is the constant 0xFEFF (what `update_u16` would add).
        let c = !checksum::fold(u32::from(!self.checksum()) + 0xFEFF);
        self.set_ttl(ttl - 1);
        self.set_checksum(c);
        ttl - 1
    }
}

/// Writes a 20-byte IPv4 header (no options, DSCP/ECN 0, not a fragment)
/// with a correct checksum at the start of `buf`.
///
/// # Panics
/// If `buf.len() < HEADER_LEN` or `payload_len > 65535 - 20`.
#[allow(clippy::too_many_arguments)] // mirrors the header fields one to one
pub fn emit_header(
    buf: &mut [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    payload_len: u16,
    ttl: u8,
    ident: u16,
    dont_frag: bool,
) {
    let total_len = payload_len
        .checked_add(HEADER_LEN as u16)
        .expect("IPv4 payload_len too large for total_len");
    let flags = if dont_frag { FLAG_DF } else { 0 };
    let ttl_proto = u16::from_be_bytes([ttl, protocol]);
    // The checksum from the field values, not by reading the header back.
    let (s, d) = (u32::from(src), u32::from(dst));
    let c = checksum::finish(
        0x4500
            + u32::from(total_len)
            + u32::from(ident)
            + u32::from(flags)
            + u32::from(ttl_proto)
            + (s >> 16)
            + (s & 0xFFFF)
            + (d >> 16)
            + (d & 0xFFFF),
    );
    let h = &mut buf[..HEADER_LEN];
    h[field::VER_IHL] = 0x45;
    h[field::DSCP_ECN] = 0;
    write_u16(&mut h[field::LENGTH], total_len);
    write_u16(&mut h[field::IDENT], ident);
    write_u16(&mut h[field::FLG_OFF], flags);
    h[field::TTL] = ttl;
    h[field::PROTOCOL] = protocol;
    write_u16(&mut h[field::CHECKSUM], c);
    write_ipv4(&mut h[field::SRC_ADDR], src);
    write_ipv4(&mut h[field::DST_ADDR], dst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet;
    use crate::wire::vectors::{
        XorShift, ICMP_ECHO_FRAME, TCP_SYN_FRAME, UDP_FRAME, UDP_FRAME_IP_LEN, VXLAN_FRAME,
    };

    const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const DNS_SVC: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

    fn ip_of(frame: &[u8]) -> &[u8] {
        &frame[ethernet::HEADER_LEN..]
    }

    /// The fixed-size view reads what the packet view reads, and its
    /// length setter knows nothing of a buffer.
    #[test]
    fn header_view() {
        let ip = Ipv4Packet::new_checked(ip_of(&UDP_FRAME)).unwrap();
        let h = Ipv4Header::new(ip_of(&UDP_FRAME).first_chunk().unwrap());
        assert_eq!(h.src_addr(), ip.src_addr());
        assert_eq!(h.dst_addr(), ip.dst_addr());
        assert_eq!(h.addrs(), u64::from(u32::from(POD_IP)) << 32 | 0x0a60_000a);
        assert_eq!(
            (h.total_len(), h.ttl(), h.protocol()),
            (32, 64, protocol::UDP)
        );
        assert!(h.is_v4_without_options() && h.verify_checksum() && !h.is_fragment());
        let mut b = *h.bytes();
        let mut m = Ipv4Header::new(&mut b);
        m.set_total_len(1500);
        assert_eq!(m.total_len(), 1500);
        assert_eq!(m.sum_without_length(), h.sum_without_length());
    }

    #[test]
    fn getters() {
        let p = Ipv4Packet::new_checked(ip_of(&UDP_FRAME)).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.ihl(), 5);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp_ecn(), 0);
        assert_eq!(usize::from(p.total_len()), UDP_FRAME_IP_LEN);
        assert_eq!(p.ident(), 0x1c46);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert!(!p.has_options());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), protocol::UDP);
        assert_eq!(p.checksum(), 0x0825);
        assert_eq!(p.src_addr(), POD_IP);
        assert_eq!(p.dst_addr(), DNS_SVC);
        assert!(p.verify_checksum());
        // The padding after total_len is not payload.
        assert_eq!(p.payload().len(), 12);
        assert_eq!(&p.payload()[8..], b"ping");
        assert_eq!(p.as_slice().len(), UDP_FRAME.len() - ethernet::HEADER_LEN);
    }

    #[test]
    fn all_vectors_have_valid_checksums() {
        for frame in [
            &UDP_FRAME[..],
            &TCP_SYN_FRAME,
            &ICMP_ECHO_FRAME,
            &VXLAN_FRAME,
        ] {
            let p = Ipv4Packet::new_checked(ip_of(frame)).unwrap();
            assert!(p.verify_checksum());
            let (h, _) = etherparse::Ipv4Header::from_slice(ip_of(frame)).unwrap();
            assert_eq!(h.calc_header_checksum(), p.checksum());
        }
    }

    #[test]
    fn emit_round_trip() {
        let mut buf = [0u8; HEADER_LEN];
        emit_header(
            &mut buf,
            POD_IP,
            DNS_SVC,
            protocol::UDP,
            12,
            64,
            0x1c46,
            true,
        );
        assert_eq!(buf[..], ip_of(&UDP_FRAME)[..HEADER_LEN]);
        assert!(Ipv4Packet::new_unchecked(&buf[..]).verify_checksum());
    }

    #[test]
    fn fragments() {
        let mut buf = UDP_FRAME;
        // MF set, offset 0: first fragment.
        buf[20] = 0x20;
        buf[21] = 0x00;
        let p = Ipv4Packet::new_checked(ip_of(&buf)).unwrap();
        assert!(p.more_frags() && !p.dont_frag() && p.is_fragment());
        assert_eq!(p.frag_offset(), 0);
        // Last fragment at offset 185 * 8 = 1480 bytes.
        buf[20] = 0x00;
        buf[21] = 0xb9;
        let p = Ipv4Packet::new_checked(ip_of(&buf)).unwrap();
        assert!(!p.more_frags() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        // Max offset still fits a u16 in bytes.
        buf[20] = 0x1f;
        buf[21] = 0xff;
        let p = Ipv4Packet::new_checked(ip_of(&buf)).unwrap();
        assert_eq!(p.frag_offset(), 0x1FFF * 8);
    }

    #[test]
    fn setters() {
        let mut buf = UDP_FRAME;
        let mut p = Ipv4Packet::new_checked(&mut buf[ethernet::HEADER_LEN..]).unwrap();
        p.set_src_addr(Ipv4Addr::new(192, 168, 1, 10));
        p.set_dst_addr(Ipv4Addr::new(192, 168, 1, 11));
        p.set_ttl(3);
        p.set_ident(7);
        p.set_dscp_ecn(0xb8);
        p.set_protocol(protocol::TCP);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 168, 1, 10));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 1, 11));
        assert_eq!((p.ttl(), p.ident(), p.dscp_ecn()), (3, 7, 0xb8));
        assert_eq!(p.protocol(), protocol::TCP);
        p.set_total_len(20);
        assert!(p.payload_mut().is_empty());
        p.set_total_len(46);
        assert_eq!(p.payload().len(), 26);
        assert!(!p.verify_checksum());
        p.fill_checksum();

        let (h, _) = etherparse::Ipv4Header::from_slice(p.as_slice()).unwrap();
        assert_eq!(h.calc_header_checksum(), h.header_checksum);
        assert_eq!(h.source, [192, 168, 1, 10]);
        assert_eq!(h.total_len, 46);
    }

    #[test]
    #[should_panic(expected = "outside header_len")]
    fn set_total_len_past_buffer_panics() {
        let mut buf = UDP_FRAME;
        let mut p = Ipv4Packet::new_checked(&mut buf[ethernet::HEADER_LEN..]).unwrap();
        p.set_total_len(47);
    }

    #[test]
    #[should_panic(expected = "outside header_len")]
    fn set_total_len_below_header_panics() {
        let mut buf = UDP_FRAME;
        let mut p = Ipv4Packet::new_checked(&mut buf[ethernet::HEADER_LEN..]).unwrap();
        p.set_total_len(19);
    }

    #[test]
    #[should_panic(expected = "too large")]
    fn emit_header_overflow_panics() {
        let mut buf = [0u8; HEADER_LEN];
        emit_header(
            &mut buf,
            POD_IP,
            DNS_SVC,
            protocol::UDP,
            u16::MAX - 19,
            64,
            0,
            true,
        );
    }

    #[test]
    fn decrement_ttl_matches_fill_checksum() {
        let mut buf = UDP_FRAME;
        let mut p = Ipv4Packet::new_checked(&mut buf[ethernet::HEADER_LEN..]).unwrap();
        let mut expected = 64;
        while expected > 0 {
            expected -= 1;
            assert_eq!(p.decrement_ttl(), expected);
            assert!(p.verify_checksum());
            let incremental = p.checksum();
            p.fill_checksum();
            assert_eq!(p.checksum(), incremental, "ttl {expected}");
        }
        let before = p.as_slice().to_vec();
        assert_eq!(p.decrement_ttl(), 0);
        assert_eq!(p.as_slice(), &before[..], "TTL 0 is left untouched");
    }

    #[test]
    fn rewrite_addrs_matches_fill_checksum() {
        let mut buf = UDP_FRAME;
        let mut p = Ipv4Packet::new_checked(&mut buf[ethernet::HEADER_LEN..]).unwrap();
        let mut rng = XorShift(0x5eed);
        for _ in 0..1000 {
            let (src, dst) = (
                Ipv4Addr::from(rng.next_u64() as u32),
                Ipv4Addr::from(rng.next_u64() as u32),
            );
            p.rewrite_addrs(src, dst);
            assert_eq!((p.src_addr(), p.dst_addr()), (src, dst));
            let incremental = p.checksum();
            p.fill_checksum();
            assert_eq!(p.checksum(), incremental, "{src} -> {dst}");
        }
    }

    /// Random headers, with and without options: incremental TTL update ==
    /// full recomputation.
    #[test]
    fn decrement_ttl_property() {
        let mut rng = XorShift(0x1D0C_70B5_EED5_0001);
        let mut buf = [0u8; 60];
        for _ in 0..20_000 {
            rng.fill(&mut buf);
            let ihl = 5 + rng.below(11) as u8;
            buf[0] = 0x40 | ihl;
            let header_len = usize::from(ihl) * 4;
            buf[2..4].copy_from_slice(&(header_len as u16).to_be_bytes());
            if buf[8] == 0 {
                buf[8] = 1;
            }
            let mut p = Ipv4Packet::new_checked(&mut buf[..header_len]).unwrap();
            p.fill_checksum();
            let ttl = p.ttl();
            assert_eq!(p.decrement_ttl(), ttl - 1);
            let incremental = p.checksum();
            p.fill_checksum();
            assert_eq!(p.checksum(), incremental);
        }
    }

    #[test]
    fn options() {
        // A 24-byte header: Router Alert option (RFC 2113).
        let mut buf = [0u8; 28];
        emit_header(&mut buf, POD_IP, DNS_SVC, protocol::UDP, 4, 1, 0, false);
        buf[0] = 0x46;
        buf[2..4].copy_from_slice(&28u16.to_be_bytes());
        buf[20..24].copy_from_slice(&[0x94, 0x04, 0x00, 0x00]);
        buf[24..].copy_from_slice(b"data");
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        assert!(p.has_options());
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.payload(), b"data");
        p.fill_checksum();
        assert!(p.verify_checksum());
        let (h, rest) = etherparse::Ipv4Header::from_slice(p.as_slice()).unwrap();
        assert_eq!(h.options.as_slice(), &[0x94, 0x04, 0x00, 0x00]);
        assert_eq!(h.calc_header_checksum(), p.checksum());
        assert_eq!(rest, b"data");
    }

    #[test]
    fn malformed() {
        let ip = &ip_of(&UDP_FRAME)[..UDP_FRAME_IP_LEN];
        for len in 0..HEADER_LEN {
            assert_eq!(
                Ipv4Packet::new_checked(&ip[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        let check = |patch: &dyn Fn(&mut [u8]), len: usize| {
            let mut b = [0u8; UDP_FRAME_IP_LEN];
            b.copy_from_slice(ip);
            patch(&mut b);
            Ipv4Packet::new_checked(&b[..len]).map(|_| ())
        };
        // Version 6.
        assert_eq!(check(&|b| b[0] = 0x65, 32), Err(Error::Malformed));
        // IHL below 5.
        for ihl in 0..5 {
            assert_eq!(check(&|b| b[0] = 0x40 | ihl, 32), Err(Error::Malformed));
        }
        // IHL 15 (60 bytes) in a 32-byte buffer.
        assert_eq!(check(&|b| b[0] = 0x4f, 32), Err(Error::Truncated));
        // IHL 6 header cut after 20 bytes.
        assert_eq!(check(&|b| b[0] = 0x46, 22), Err(Error::Truncated));
        // total_len below header_len.
        assert_eq!(check(&|b| b[3] = 19, 32), Err(Error::Malformed));
        // total_len past the buffer.
        assert_eq!(check(&|_| {}, 31), Err(Error::Truncated));
        assert_eq!(check(&|b| b[3] = 33, 32), Err(Error::Truncated));
        // Exactly total_len is fine, and so is trailing padding.
        assert_eq!(check(&|_| {}, 32), Ok(()));
        assert!(Ipv4Packet::new_checked(ip_of(&UDP_FRAME)).is_ok());
    }

    #[test]
    fn against_etherparse_builder() {
        let mut rng = XorShift(99);
        for i in 0..200u16 {
            let src = Ipv4Addr::from(rng.next_u64() as u32);
            let dst = Ipv4Addr::from(rng.next_u64() as u32);
            let ttl = 1 + rng.below(255) as u8;
            let payload_len = rng.below(64);
            let mut payload = [0u8; 64];
            rng.fill(&mut payload);
            let builder =
                etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), ttl).udp(1000 + i, 53);
            let mut frame = Vec::new();
            builder.write(&mut frame, &payload[..payload_len]).unwrap();

            let mut p = Ipv4Packet::new_checked(&mut frame[..]).unwrap();
            assert!(p.verify_checksum());
            assert_eq!(p.src_addr(), src);
            assert_eq!(p.dst_addr(), dst);
            assert_eq!(p.ttl(), ttl);
            assert_eq!(p.protocol(), protocol::UDP);
            assert_eq!(usize::from(p.total_len()), 28 + payload_len);
            assert_eq!(p.payload().len(), 8 + payload_len);

            // Rewrite with our setters; etherparse must agree on the result.
            let new_src = Ipv4Addr::from(rng.next_u64() as u32);
            let old = u32::from(p.src_addr());
            p.set_src_addr(new_src);
            let c = checksum::update_u32(p.checksum(), old, u32::from(new_src));
            p.set_checksum(c);
            p.decrement_ttl();
            let (h, _) = etherparse::Ipv4Header::from_slice(&frame).unwrap();
            assert_eq!(h.source, new_src.octets());
            assert_eq!(h.time_to_live, ttl - 1);
            assert_eq!(h.calc_header_checksum(), h.header_checksum);
        }
    }
}
