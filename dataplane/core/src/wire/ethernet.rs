//! Ethernet II frames and MAC addresses.

use core::fmt;
use core::str::FromStr;

use super::{read_u16, write_u16, Error, Result};

/// A 48-bit Ethernet (MAC) address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Group bit set (includes broadcast).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EthernetAddress({self})")
    }
}

impl From<[u8; 6]> for EthernetAddress {
    fn from(b: [u8; 6]) -> Self {
        EthernetAddress(b)
    }
}

/// The string was not six `:`-separated two-digit hex bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseEthernetAddressError;

impl fmt::Display for ParseEthernetAddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid MAC address: expected six hex bytes like aa:bb:cc:dd:ee:ff")
    }
}

impl std::error::Error for ParseEthernetAddressError {}

impl FromStr for EthernetAddress {
    type Err = ParseEthernetAddressError;

    /// Parses `aa:bb:cc:dd:ee:ff` (either case, exactly two digits per byte).
    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or(ParseEthernetAddressError)?;
            // from_str_radix alone would accept "+f" and "f".
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(ParseEthernetAddressError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| ParseEthernetAddressError)?;
        }
        if parts.next().is_some() {
            return Err(ParseEthernetAddressError);
        }
        Ok(EthernetAddress(out))
    }
}

/// EtherType values kxdp looks at.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86DD;
}

mod field {
    use core::ops::{Range, RangeFrom};
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    /// Destination and source, copied as one.
    pub const ADDRS: Range<usize> = 0..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: RangeFrom<usize> = 14..;
}

/// Ethernet II header length (no 802.1Q tag, no FCS).
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// Bytes of the destination and source addresses together.
pub const ADDRS_LEN: usize = field::ADDRS.end;

/// A view over an Ethernet II frame (without FCS). 802.1Q tags are not
/// parsed: a tagged frame reports `ethertype::VLAN`.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checking its length; see the module docs.
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer`, which must hold at least [`HEADER_LEN`] bytes.
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole frame.
    pub fn as_slice(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    pub fn dst_addr(&self) -> EthernetAddress {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        EthernetAddress(a)
    }

    pub fn src_addr(&self) -> EthernetAddress {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        EthernetAddress(a)
    }

    pub fn ethertype(&self) -> u16 {
        read_u16(&self.buffer.as_ref()[field::ETHERTYPE])
    }

    /// Destination then source address, as one copy.
    pub fn addrs(&self) -> [u8; ADDRS_LEN] {
        self.buffer.as_ref()[field::ADDRS]
            .try_into()
            .expect("12 bytes")
    }

    /// Everything after the 14-byte header (may include Ethernet padding).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Both addresses from [`EthernetFrame::addrs`], as one copy.
    pub fn set_addrs(&mut self, addrs: &[u8; ADDRS_LEN]) {
        self.buffer.as_mut()[field::ADDRS].copy_from_slice(addrs);
    }

    pub fn set_ethertype(&mut self, value: u16) {
        write_u16(&mut self.buffer.as_mut()[field::ETHERTYPE], value);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// Writes a 14-byte Ethernet II header at the start of `buf`.
///
/// # Panics
/// If `buf.len() < HEADER_LEN`.
pub fn emit(buf: &mut [u8], dst: EthernetAddress, src: EthernetAddress, ethertype: u16) {
    let h = &mut buf[..HEADER_LEN];
    h[field::DESTINATION].copy_from_slice(&dst.0);
    h[field::SOURCE].copy_from_slice(&src.0);
    write_u16(&mut h[field::ETHERTYPE], ethertype);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vectors::{UDP_FRAME, UDP_FRAME_IP_LEN};

    const POD_MAC: EthernetAddress = EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05]);
    const GW_MAC: EthernetAddress = EthernetAddress([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x01]);

    #[test]
    fn getters() {
        let f = EthernetFrame::new_checked(&UDP_FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), GW_MAC);
        assert_eq!(f.src_addr(), POD_MAC);
        assert_eq!(f.ethertype(), ethertype::IPV4);
        assert_eq!(f.payload().len(), UDP_FRAME.len() - HEADER_LEN);
        assert_eq!(f.payload()[0], 0x45);
        assert!(f.payload().len() > UDP_FRAME_IP_LEN, "vector has padding");
        assert_eq!(f.as_slice(), &UDP_FRAME[..]);
    }

    #[test]
    fn setters_and_emit_round_trip() {
        let mut buf = UDP_FRAME;
        let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        f.set_dst_addr(POD_MAC);
        f.set_src_addr(GW_MAC);
        f.set_ethertype(ethertype::ARP);
        f.payload_mut()[0] = 0x46;
        assert_eq!(f.dst_addr(), POD_MAC);
        assert_eq!(f.src_addr(), GW_MAC);
        assert_eq!(f.ethertype(), ethertype::ARP);
        assert_eq!(buf[14], 0x46);

        let mut out = [0u8; HEADER_LEN];
        emit(&mut out, GW_MAC, POD_MAC, ethertype::IPV4);
        assert_eq!(out[..], UDP_FRAME[..HEADER_LEN]);
    }

    #[test]
    fn truncated() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&UDP_FRAME[..len]).unwrap_err(),
                Error::Truncated
            );
        }
        let f = EthernetFrame::new_checked(&UDP_FRAME[..HEADER_LEN]).unwrap();
        assert!(f.payload().is_empty());
    }

    #[test]
    fn against_etherparse() {
        let (h, rest) = etherparse::Ethernet2Header::from_slice(&UDP_FRAME).unwrap();
        let f = EthernetFrame::new_checked(&UDP_FRAME[..]).unwrap();
        assert_eq!(f.dst_addr().0, h.destination);
        assert_eq!(f.src_addr().0, h.source);
        assert_eq!(f.ethertype(), h.ether_type.0);
        assert_eq!(f.payload(), rest);
    }

    #[test]
    fn address_flags() {
        assert!(EthernetAddress::BROADCAST.is_broadcast());
        assert!(EthernetAddress::BROADCAST.is_multicast());
        assert!(EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 1]).is_broadcast());
        assert!(POD_MAC.is_unicast());
        assert!(!POD_MAC.is_multicast());
        assert!(!POD_MAC.is_broadcast());
    }

    #[test]
    fn address_display_and_parse() {
        assert_eq!(POD_MAC.to_string(), "0a:58:0a:f4:01:05");
        assert_eq!(format!("{POD_MAC:?}"), "EthernetAddress(0a:58:0a:f4:01:05)");
        assert_eq!("0a:58:0a:f4:01:05".parse::<EthernetAddress>(), Ok(POD_MAC));
        assert_eq!(
            "FF:ff:FF:ff:FF:ff".parse::<EthernetAddress>(),
            Ok(EthernetAddress::BROADCAST)
        );
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58:0a:f4:01:05:06",
            "0a:58:0a:f4:01:",
            "0a:58:0a:f4:1:05",
            "0a:58:0a:f4:001:05",
            "0a:58:0a:f4:01:g5",
            "0a-58-0a-f4-01-05",
            "0a:58:0a:f4:+1:05",
            "0a:58:0a:f4:01:05 ",
        ] {
            assert_eq!(
                bad.parse::<EthernetAddress>(),
                Err(ParseEthernetAddressError),
                "{bad:?}"
            );
        }
        assert!(ParseEthernetAddressError
            .to_string()
            .contains("aa:bb:cc:dd:ee:ff"));
    }
}
