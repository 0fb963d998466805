//! IPv4 prefixes and the longest-prefix-match table the routes live in.

use core::net::Ipv4Addr;

use hashbrown::HashMap;

/// An IPv4 prefix, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    /// A prefix from an address and length; host bits are cleared.
    pub fn new(addr: Ipv4Addr, len: u8) -> Prefix {
        assert!(len <= 32, "prefix length {len} > 32");
        Prefix {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        }
    }

    #[inline]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }

    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

impl core::fmt::Display for Prefix {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[inline]
fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len)
    }
}

/// Longest-prefix match: one exact-match table per distinct prefix length,
/// probed longest first. Pod CIDRs share one or two lengths, so a lookup is
/// one or two hash probes whatever the number of nodes.
#[derive(Debug, Clone)]
pub struct Lpm<V> {
    levels: Vec<(u8, HashMap<u32, V>)>,
}

impl<V> Default for Lpm<V> {
    fn default() -> Self {
        Lpm { levels: Vec::new() }
    }
}

impl<V> Lpm<V> {
    pub fn insert(&mut self, p: Prefix, v: V) {
        let i = match self.levels.iter().position(|(l, _)| *l == p.len) {
            Some(i) => i,
            None => {
                self.levels.push((p.len, HashMap::new()));
                self.levels.sort_by_key(|l| core::cmp::Reverse(l.0));
                self.levels.iter().position(|(l, _)| *l == p.len).unwrap()
            }
        };
        self.levels[i].1.insert(u32::from(p.addr), v);
    }

    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<&V> {
        let ip = u32::from(ip);
        self.levels
            .iter()
            .find_map(|(len, t)| t.get(&(ip & mask(*len))))
    }

    pub fn len(&self) -> usize {
        self.levels.iter().map(|(_, t)| t.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_clears_host_bits_and_contains() {
        let p = Prefix::new(Ipv4Addr::new(10, 244, 1, 77), 24);
        assert_eq!(p.addr, Ipv4Addr::new(10, 244, 1, 0));
        assert!(p.contains(Ipv4Addr::new(10, 244, 1, 255)));
        assert!(!p.contains(Ipv4Addr::new(10, 244, 2, 0)));
        assert!(Prefix::new(Ipv4Addr::UNSPECIFIED, 0).contains(Ipv4Addr::BROADCAST));
        assert!(p.overlaps(&Prefix::new(Ipv4Addr::new(10, 244, 0, 0), 16)));
    }

    #[test]
    fn lpm_prefers_the_longest_prefix() {
        let mut t = Lpm::default();
        t.insert(Prefix::new(Ipv4Addr::new(10, 244, 0, 0), 16), 16);
        t.insert(Prefix::new(Ipv4Addr::new(10, 244, 2, 0), 24), 24);
        t.insert(Prefix::new(Ipv4Addr::new(10, 244, 2, 128), 25), 25);
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 2, 200)), Some(&25));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 2, 5)), Some(&24));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 9, 5)), Some(&16));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 245, 0, 1)), None);
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn lpm_agrees_with_a_linear_scan() {
        // Property: for random prefixes and addresses, the LPM answer equals
        // the longest matching prefix found by brute force.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = Lpm::default();
        let mut all = Vec::new();
        for i in 0..300 {
            let len = [8u8, 16, 20, 24, 28, 32][(next() % 6) as usize];
            let p = Prefix::new(Ipv4Addr::from((next() as u32) & 0x0aff_ffff), len);
            t.insert(p, i);
            all.retain(|(q, _): &(Prefix, i32)| *q != p);
            all.push((p, i));
        }
        for _ in 0..20_000 {
            let ip = Ipv4Addr::from((next() as u32) & 0x0aff_ffff);
            let want = all
                .iter()
                .filter(|(p, _)| p.contains(ip))
                .max_by_key(|(p, _)| p.len)
                .map(|(_, v)| v);
            assert_eq!(t.lookup(ip), want, "{ip}");
        }
    }
}
