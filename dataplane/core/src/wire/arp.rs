//! ARP for Ethernet/IPv4 (RFC 826). Other hardware/protocol types are
//! rejected as `Malformed`: kxdp only answers IPv4-over-Ethernet ARP.

use core::net::Ipv4Addr;

use super::{read_ipv4, read_u16, write_ipv4, write_u16, Error, EthernetAddress, Result};

/// ARP operation codes.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const REPLY: u16 = 2;
}

mod field {
    use core::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = super::ethernet::ethertype::IPV4;

/// Length of an Ethernet/IPv4 ARP packet.
pub const LEN: usize = field::TPA.end;
/// Same as [`LEN`]: ARP is all header.
pub const HEADER_LEN: usize = LEN;

/// A view over an Ethernet/IPv4 ARP packet. The buffer may be longer than
/// [`LEN`] (Ethernet padding); bytes past `LEN` are ignored.
#[derive(Debug, Clone)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` without validation; see the module docs.
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// `Truncated` if shorter than [`LEN`]; `Malformed` unless it is
    /// Ethernet (htype 1, hlen 6) / IPv4 (ptype 0x0800, plen 4).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let data = buffer.as_ref();
        if data.len() < LEN {
            return Err(Error::Truncated);
        }
        if read_u16(&data[field::HTYPE]) != HTYPE_ETHERNET
            || read_u16(&data[field::PTYPE]) != PTYPE_IPV4
            || data[field::HLEN] != 6
            || data[field::PLEN] != 4
        {
            return Err(Error::Malformed);
        }
        Ok(ArpPacket { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn as_slice(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// See [`op`].
    pub fn operation(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::OPER])
    }

    pub fn sender_hw_addr(&self) -> EthernetAddress {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SHA]);
        EthernetAddress(a)
    }

    pub fn sender_ip(&self) -> Ipv4Addr {
        read_ipv4(&self.buffer.as_ref()[field::SPA])
    }

    pub fn target_hw_addr(&self) -> EthernetAddress {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::THA]);
        EthernetAddress(a)
    }

    pub fn target_ip(&self) -> Ipv4Addr {
        read_ipv4(&self.buffer.as_ref()[field::TPA])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    pub fn set_operation(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::OPER], value);
    }

    pub fn set_sender_hw_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&addr.0);
    }

    pub fn set_sender_ip(&mut self, addr: Ipv4Addr) {
        write_ipv4(&mut self.buffer.as_mut()[field::SPA], addr);
    }

    pub fn set_target_hw_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&addr.0);
    }

    pub fn set_target_ip(&mut self, addr: Ipv4Addr) {
        write_ipv4(&mut self.buffer.as_mut()[field::TPA], addr);
    }
}

fn emit(
    buf: &mut [u8],
    operation: u16,
    sender_hw: EthernetAddress,
    sender_ip: Ipv4Addr,
    target_hw: EthernetAddress,
    target_ip: Ipv4Addr,
) {
    let p = &mut buf[..LEN];
    write_u16(&mut p[field::HTYPE], HTYPE_ETHERNET);
    write_u16(&mut p[field::PTYPE], PTYPE_IPV4);
    p[field::HLEN] = 6;
    p[field::PLEN] = 4;
    write_u16(&mut p[field::OPER], operation);
    p[field::SHA].copy_from_slice(&sender_hw.0);
    write_ipv4(&mut p[field::SPA], sender_ip);
    p[field::THA].copy_from_slice(&target_hw.0);
    write_ipv4(&mut p[field::TPA], target_ip);
}

/// Writes a complete 28-byte ARP reply ("`sender_ip` is at `sender_hw`")
/// at the start of `buf`.
///
/// # Panics
/// If `buf.len() < LEN`.
pub fn emit_reply(
    buf: &mut [u8],
    sender_hw: EthernetAddress,
    sender_ip: Ipv4Addr,
    target_hw: EthernetAddress,
    target_ip: Ipv4Addr,
) {
    emit(buf, op::REPLY, sender_hw, sender_ip, target_hw, target_ip);
}

/// Writes a complete 28-byte ARP request ("who has `target_ip`?") with a
/// zero target hardware address at the start of `buf`.
///
/// # Panics
/// If `buf.len() < LEN`.
pub fn emit_request(
    buf: &mut [u8],
    sender_hw: EthernetAddress,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) {
    let zero = EthernetAddress([0; 6]);
    emit(buf, op::REQUEST, sender_hw, sender_ip, zero, target_ip);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::{self, ethertype, EthernetFrame};
    use crate::wire::vectors::{ARP_REPLY, ARP_REQUEST_FRAME};

    const POD_MAC: EthernetAddress = EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
    const GW_MAC: EthernetAddress = EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01]);
    const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

    #[test]
    fn parse_request() {
        let eth = EthernetFrame::new_checked(&ARP_REQUEST_FRAME[..]).unwrap();
        assert_eq!(eth.ethertype(), ethertype::ARP);
        assert!(eth.dst_addr().is_broadcast());
        let arp = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!(arp.operation(), op::REQUEST);
        assert_eq!(arp.sender_hw_addr(), POD_MAC);
        assert_eq!(arp.sender_ip(), POD_IP);
        assert_eq!(arp.target_hw_addr(), EthernetAddress([0; 6]));
        assert_eq!(arp.target_ip(), GW_IP);
    }

    #[test]
    fn emit_reply_matches_vector() {
        let mut buf = [0u8; LEN];
        emit_reply(&mut buf, GW_MAC, GW_IP, POD_MAC, POD_IP);
        assert_eq!(buf, ARP_REPLY);
        let arp = ArpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(arp.operation(), op::REPLY);
        assert_eq!(arp.sender_hw_addr(), GW_MAC);
        assert_eq!(arp.target_ip(), POD_IP);
    }

    #[test]
    fn emit_request_matches_vector() {
        let mut frame = [0u8; ARP_REQUEST_FRAME.len()];
        ethernet::emit(
            &mut frame,
            EthernetAddress::BROADCAST,
            POD_MAC,
            ethertype::ARP,
        );
        emit_request(&mut frame[ethernet::HEADER_LEN..], POD_MAC, POD_IP, GW_IP);
        assert_eq!(frame, ARP_REQUEST_FRAME);
    }

    #[test]
    fn setters_turn_request_into_reply() {
        // What a responder does in place: swap roles, fill in our address.
        let mut frame = ARP_REQUEST_FRAME;
        let mut arp = ArpPacket::new_checked(&mut frame[ethernet::HEADER_LEN..]).unwrap();
        let (req_hw, req_ip, asked) = (arp.sender_hw_addr(), arp.sender_ip(), arp.target_ip());
        arp.set_operation(op::REPLY);
        arp.set_target_hw_addr(req_hw);
        arp.set_target_ip(req_ip);
        arp.set_sender_hw_addr(GW_MAC);
        arp.set_sender_ip(asked);
        assert_eq!(arp.as_slice(), &ARP_REPLY[..]);
    }

    #[test]
    fn malformed() {
        for len in 0..LEN {
            assert_eq!(
                ArpPacket::new_checked(&ARP_REPLY[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        // Each fixed field in turn.
        for (at, bad) in [(1, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut p = ARP_REPLY;
            p[at] = bad;
            assert_eq!(
                ArpPacket::new_checked(&p[..]).unwrap_err(),
                Error::Malformed
            );
        }
        // Ethernet padding after the packet is fine.
        let mut padded = [0u8; 46];
        padded[..LEN].copy_from_slice(&ARP_REPLY);
        assert!(ArpPacket::new_checked(&padded[..]).is_ok());
    }

    #[test]
    fn against_etherparse() {
        let parsed = etherparse::ArpPacket::from_slice(&ARP_REPLY)
            .unwrap()
            .try_eth_ipv4()
            .unwrap();
        assert_eq!(parsed.operation, etherparse::ArpOperation::REPLY);
        assert_eq!(parsed.sender_mac, GW_MAC.0);
        assert_eq!(parsed.sender_ipv4, GW_IP.octets());
        assert_eq!(parsed.target_mac, POD_MAC.0);
        assert_eq!(parsed.target_ipv4, POD_IP.octets());

        let req = etherparse::ArpPacket::from_slice(&ARP_REQUEST_FRAME[14..])
            .unwrap()
            .try_eth_ipv4()
            .unwrap();
        let view = ArpPacket::new_checked(&ARP_REQUEST_FRAME[14..]).unwrap();
        assert_eq!(view.operation(), req.operation.0);
        assert_eq!(view.sender_hw_addr().0, req.sender_mac);
        assert_eq!(view.target_ip().octets(), req.target_ipv4);
    }
}
