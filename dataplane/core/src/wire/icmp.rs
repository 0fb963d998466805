//! ICMPv4 (RFC 792) messages.

use super::checksum;
use super::{read_u16, read_u32, write_u16, write_u32, Error, Result};

/// ICMP types kxdp handles.
pub mod msg_type {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
}

/// ICMP codes; meaningful only together with a [`msg_type`].
pub mod code {
    /// `DEST_UNREACHABLE`
    pub const NET_UNREACHABLE: u8 = 0;
    /// `DEST_UNREACHABLE`
    pub const HOST_UNREACHABLE: u8 = 1;
    /// `DEST_UNREACHABLE`
    pub const PORT_UNREACHABLE: u8 = 3;
    /// `DEST_UNREACHABLE`: "fragmentation needed and DF set"; the next-hop
    /// MTU goes in the low 16 bits of `rest_of_header` (RFC 1191).
    pub const FRAG_NEEDED: u8 = 4;
    /// `TIME_EXCEEDED`
    pub const TTL_EXCEEDED_IN_TRANSIT: u8 = 0;
}

mod field {
    use core::ops::{Range, RangeFrom};
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const REST: Range<usize> = 4..8;
    pub const ECHO_IDENT: Range<usize> = 4..6;
    pub const ECHO_SEQ: Range<usize> = 6..8;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// The type of a message that may be too short for a whole header: `None`
/// if it has not even that byte.
pub fn msg_type_of(msg: &[u8]) -> Option<u8> {
    msg.get(field::TYPE).copied()
}

/// A view over one ICMPv4 message.
///
/// The buffer must be exactly the message (the IPv4 payload): the checksum
/// and `payload()` run to the end of the buffer.
#[derive(Debug, Clone)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps `buffer` without validation; see the module docs.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv4Packet { buffer }
    }

    /// `Truncated` if shorter than 8 bytes. Type and code are not checked.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Icmpv4Packet { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn as_slice(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// See [`msg_type`].
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// See [`code`].
    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::CHECKSUM])
    }

    /// Bytes 4..8, whose meaning depends on the type.
    pub fn rest_of_header(&self) -> u32 {
        read_u32(&self.buffer.as_ref()[field::REST])
    }

    /// Echo request/reply identifier (bytes 4..6).
    pub fn echo_ident(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ECHO_IDENT])
    }

    /// Echo request/reply sequence number (bytes 6..8).
    pub fn echo_seq(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ECHO_SEQ])
    }

    /// Bytes from 8 to the end: echo data, or the offending IPv4 header and
    /// its first bytes for error messages.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    /// Whether the checksum over the whole buffer is correct.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref())) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    pub fn set_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::CHECKSUM], value);
    }

    pub fn set_rest_of_header(&mut self, value: u32) {
        write_u32(&mut self.buffer.as_mut()[field::REST], value);
    }

    pub fn set_echo_ident(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ECHO_IDENT], value);
    }

    pub fn set_echo_seq(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ECHO_SEQ], value);
    }

    /// Computes the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::finish(checksum::sum(self.buffer.as_ref()));
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::{self, Ipv4Packet};
    use crate::wire::vectors::{XorShift, ICMP_ECHO_FRAME};
    use core::net::Ipv4Addr;

    const ICMP_AT: usize = 14 + 20;

    #[test]
    fn getters() {
        let ip = Ipv4Packet::new_checked(&ICMP_ECHO_FRAME[14..]).unwrap();
        assert_eq!(ip.protocol(), ipv4::protocol::ICMP);
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), msg_type::ECHO_REQUEST);
        assert_eq!(icmp.code(), 0);
        assert_eq!(icmp.checksum(), 0x6627);
        assert_eq!(icmp.rest_of_header(), 0x0042_0001);
        assert_eq!(icmp.echo_ident(), 0x42);
        assert_eq!(icmp.echo_seq(), 1);
        assert_eq!(icmp.payload(), b"abcdefgh");
        assert!(icmp.verify_checksum());
    }

    #[test]
    fn echo_request_to_reply_in_place() {
        let mut buf = ICMP_ECHO_FRAME;
        let mut icmp = Icmpv4Packet::new_checked(&mut buf[ICMP_AT..]).unwrap();
        icmp.set_msg_type(msg_type::ECHO_REPLY);
        icmp.fill_checksum();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.echo_ident(), 0x42);
        // Type 8 -> 0 changes one checksum word by 0x0800.
        assert_eq!(icmp.checksum(), 0x6e27);
        let (h, _) = etherparse::Icmpv4Header::from_slice(icmp.as_slice()).unwrap();
        assert_eq!(h.icmp_type.calc_checksum(icmp.payload()), icmp.checksum());
    }

    #[test]
    fn setters_round_trip() {
        let mut buf = [0u8; 16];
        let mut icmp = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
        icmp.set_msg_type(msg_type::ECHO_REQUEST);
        icmp.set_code(0);
        icmp.set_echo_ident(0x42);
        icmp.set_echo_seq(1);
        icmp.payload_mut().copy_from_slice(b"abcdefgh");
        icmp.fill_checksum();
        assert_eq!(buf[..], ICMP_ECHO_FRAME[ICMP_AT..]);

        let mut icmp = Icmpv4Packet::new_checked(&mut buf[..]).unwrap();
        icmp.set_msg_type(msg_type::DEST_UNREACHABLE);
        icmp.set_code(code::FRAG_NEEDED);
        icmp.set_rest_of_header(1450);
        icmp.set_checksum(0xbeef);
        assert_eq!(icmp.rest_of_header(), 1450);
        assert_eq!((icmp.echo_ident(), icmp.echo_seq()), (0, 1450));
        assert_eq!(icmp.checksum(), 0xbeef);
        assert!(!icmp.verify_checksum());
    }

    #[test]
    fn truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Icmpv4Packet::new_checked(&ICMP_ECHO_FRAME[ICMP_AT..ICMP_AT + len]).unwrap_err(),
                Error::Truncated
            );
        }
        let bare = Icmpv4Packet::new_checked(&ICMP_ECHO_FRAME[ICMP_AT..ICMP_AT + 8]).unwrap();
        assert!(bare.payload().is_empty());
    }

    #[test]
    fn against_etherparse() {
        let mut rng = XorShift(0x1C3B);
        for _ in 0..200 {
            let (id, seq) = (rng.next_u64() as u16, rng.next_u64() as u16);
            let mut data = [0u8; 64];
            let len = rng.below(data.len());
            rng.fill(&mut data[..len]);
            let mut frame = Vec::new();
            etherparse::PacketBuilder::ipv4([10, 244, 1, 5], [10, 244, 1, 1], 64)
                .icmpv4_echo_request(id, seq)
                .write(&mut frame, &data[..len])
                .unwrap();
            let mut ip = Ipv4Packet::new_checked(&mut frame[..]).unwrap();
            assert_eq!(ip.dst_addr(), Ipv4Addr::new(10, 244, 1, 1));
            let mut icmp = Icmpv4Packet::new_checked(ip.payload_mut()).unwrap();
            assert_eq!(icmp.msg_type(), msg_type::ECHO_REQUEST);
            assert_eq!((icmp.echo_ident(), icmp.echo_seq()), (id, seq));
            assert_eq!(icmp.payload(), &data[..len]);
            assert!(icmp.verify_checksum());

            icmp.set_msg_type(msg_type::ECHO_REPLY);
            icmp.fill_checksum();
            let (h, payload) = etherparse::Icmpv4Header::from_slice(icmp.as_slice()).unwrap();
            assert_eq!(
                h.icmp_type,
                etherparse::Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id, seq })
            );
            assert_eq!(h.icmp_type.calc_checksum(payload), h.checksum);
        }
    }
}
