//! Sources: peer addresses grouped by prefix, the unit of the per-source quotas.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A peer address cut to its source prefix (for example 203.0.113.7 under /24 is
/// 203.0.113.0). IPv4-mapped IPv6 addresses are grouped as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Source(IpAddr);

impl Source {
    /// The source of `peer` under the prefix lengths `v4` and `v6` (cut to 32 and 128):
    /// 10.1.2.3 and ::ffff:10.1.2.200 under /24 are both 10.1.2.0.
    pub(crate) fn of(peer: IpAddr, v4: u8, v6: u8) -> Self {
        match peer.to_canonical() {
            IpAddr::V4(a) => {
                let keep = u32::from(v4.min(32));
                let mask = u32::MAX.checked_shl(32 - keep).unwrap_or(0);
                Self(IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)))
            }
            IpAddr::V6(a) => {
                let keep = u32::from(v6.min(128));
                let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
                Self(IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)))
            }
        }
    }

    /// The first address of the source's prefix.
    #[cfg(test)]
    pub(crate) fn addr(&self) -> IpAddr {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn prefixes_group_and_zero_groups_everything() {
        assert_eq!(Source::of(ip("10.0.0.1"), 32, 64).addr(), ip("10.0.0.1"));
        assert_ne!(
            Source::of(ip("10.0.0.1"), 32, 64),
            Source::of(ip("10.0.0.2"), 32, 64)
        );
        assert_eq!(
            Source::of(ip("10.0.0.1"), 0, 0),
            Source::of(ip("192.168.9.9"), 0, 0)
        );
        assert_eq!(
            Source::of(ip("2001:db8:1:2:3::4"), 32, 64),
            Source::of(ip("2001:db8:1:2:ffff::1"), 32, 64)
        );
        assert_ne!(
            Source::of(ip("2001:db8:1:2::4"), 32, 64),
            Source::of(ip("2001:db8:1:3::4"), 32, 64)
        );
        assert_eq!(Source::of(ip("::1"), 32, 200).addr(), ip("::1"));
    }

    proptest! {
        #[test]
        fn same_prefix_same_source(a in any::<u32>(), b in any::<u32>(), len in 0u8..=40) {
            let same = len == 0 || (a ^ b) >> (32 - u32::from(len.min(32))) == 0;
            let sa = Source::of(IpAddr::V4(a.into()), len, 64);
            let sb = Source::of(IpAddr::V4(b.into()), len, 64);
            prop_assert_eq!(sa == sb, same);
        }
    }
}
