//! The client-IP filter.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A configured client-IP filter entry is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// One entry of the list is neither an address nor a CIDR block.
    #[error("client-IP filter entry {entry:?} is not an address or CIDR block: {reason}")]
    BadEntry {
        /// The offending entry, as written (trimmed).
        entry: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl FilterError {
    fn bad(entry: &str, reason: impl Into<String>) -> Self {
        Self::BadEntry {
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }
}

/// One network: the address with host bits cleared, and the prefix length.
/// An exact address is a /32 (IPv4) or /128 (IPv6) network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    V4 { net: u32, prefix: u8 },
    V6 { net: u128, prefix: u8 },
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// The 96-bit prefix `::ffff:0:0/96` of IPv4-mapped IPv6 addresses.
const MAPPED_PREFIX: u128 = 0xffff_u128 << 32;

impl Net {
    fn v4(addr: u32, prefix: u8) -> Self {
        Self::V4 {
            net: addr & mask_v4(prefix),
            prefix,
        }
    }

    /// Builds an IPv6 network; one lying wholly inside `::ffff:0:0/96` becomes
    /// the equivalent IPv4 network.
    fn v6(addr: u128, prefix: u8) -> Self {
        let net = addr & mask_v6(prefix);
        if prefix >= 96 && net & !0xffff_ffff_u128 == MAPPED_PREFIX {
            // Truncation keeps exactly the low 32 bits: the IPv4 address.
            Self::v4(net as u32, prefix - 96)
        } else {
            Self::V6 { net, prefix }
        }
    }

    fn parse(entry: &str) -> Result<Self, FilterError> {
        let (addr_text, prefix_text) = match entry.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (entry, None),
        };
        let addr = IpAddr::from_str(addr_text).map_err(|_| {
            FilterError::bad(
                entry,
                format!("{addr_text:?} is not a valid IPv4 or IPv6 address"),
            )
        })?;
        let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some("") => return Err(FilterError::bad(entry, "missing prefix length after '/'")),
            Some(p) => {
                if !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(FilterError::bad(
                        entry,
                        format!("prefix length {p:?} is not a decimal number"),
                    ));
                }
                let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                match p.parse::<u32>() {
                    Ok(n) if n <= u32::from(max) => n as u8,
                    _ => {
                        return Err(FilterError::bad(
                            entry,
                            format!("prefix length {p} is too long for {family} (at most {max})"),
                        ))
                    }
                }
            }
        };
        Ok(match addr {
            IpAddr::V4(a) => Self::v4(u32::from(a), prefix),
            IpAddr::V6(a) => Self::v6(u128::from(a), prefix),
        })
    }

    fn contains_v4(self, ip: u32) -> bool {
        match self {
            Self::V4 { net, prefix } => ip & mask_v4(prefix) == net,
            // An IPv4 address is the same host as its mapped IPv6 form.
            Self::V6 { net, prefix } => (MAPPED_PREFIX | u128::from(ip)) & mask_v6(prefix) == net,
        }
    }

    fn contains_v6(self, ip: u128) -> bool {
        match self {
            // Mapped peers are turned into IPv4 before getting here.
            Self::V4 { .. } => false,
            Self::V6 { net, prefix } => ip & mask_v6(prefix) == net,
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::V4 { net, prefix: 32 } => write!(f, "{}", Ipv4Addr::from(net)),
            Self::V4 { net, prefix } => write!(f, "{}/{prefix}", Ipv4Addr::from(net)),
            Self::V6 { net, prefix: 128 } => write!(f, "{}", Ipv6Addr::from(net)),
            Self::V6 { net, prefix } => write!(f, "{}/{prefix}", Ipv6Addr::from(net)),
        }
    }
}

/// Which clients a server pool accepts, by source IP address.
///
/// Either "any client" (the default) or a list of exact addresses and CIDR
/// blocks, IPv4 and IPv6; a client is allowed when it matches at least one.
///
/// * An IPv4 address and its IPv4-mapped IPv6 form (`::ffff:a.b.c.d`) are the
///   same host: mapped entries are stored as IPv4 and mapped peers compare as
///   IPv4, so a dual-stack listener makes the same decisions as an IPv4 one.
///   (An IPv6 block that contains the mapped range, such as `::/0`, therefore
///   also allows IPv4 clients.)
/// * Host bits beyond the prefix are accepted and cleared: `10.1.2.3/8` is
///   `10.0.0.0/8`, and displays as such.
/// * An exact address is the same as a /32 (IPv4) or /128 (IPv6) block and
///   displays without the prefix.
/// * Zone indices (`fe80::1%eth0`) are not accepted.
///
/// [`Display`](fmt::Display) writes the entries separated by `", "` (the empty
/// string for "any"), which parses back to an equal filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpFilter {
    /// Empty means any client.
    nets: Vec<Net>,
}

impl IpFilter {
    /// The filter that allows every client.
    pub fn any() -> Self {
        Self::default()
    }

    /// Parses a list of addresses and CIDR blocks separated by commas and/or
    /// whitespace, e.g. `"10.0.0.0/8, ::1, 192.168.1.5,fe80::/10"`.
    ///
    /// An empty or all-whitespace string means [any](Self::any). Empty items
    /// between separators are skipped, but a string made of separators only
    /// (such as `","`) is an error rather than "any".
    ///
    /// # Errors
    ///
    /// [`FilterError::BadEntry`] naming the first entry that is not an address
    /// or a CIDR block: bad address, missing or non-numeric prefix length, or a
    /// prefix longer than 32 (IPv4) or 128 (IPv6).
    pub fn parse(s: &str) -> Result<Self, FilterError> {
        let nets = s
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|e| !e.is_empty())
            .map(Net::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if nets.is_empty() && !s.trim().is_empty() {
            return Err(FilterError::bad(s.trim(), "no address in the list"));
        }
        Ok(Self { nets })
    }

    /// Builds a filter from separate entries, each one address or CIDR block
    /// (surrounding whitespace is ignored). No entries at all means
    /// [any](Self::any).
    ///
    /// # Errors
    ///
    /// [`FilterError::BadEntry`] for the first invalid entry, including an
    /// empty one.
    pub fn from_entries<I: IntoIterator<Item = S>, S: AsRef<str>>(
        entries: I,
    ) -> Result<Self, FilterError> {
        let nets = entries
            .into_iter()
            .map(|e| {
                let e = e.as_ref().trim();
                if e.is_empty() {
                    Err(FilterError::bad(e, "empty entry"))
                } else {
                    Net::parse(e)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { nets })
    }

    /// Whether a client with source address `ip` is allowed.
    ///
    /// IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`) compare as IPv4.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.nets.is_empty() {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        match ip {
            IpAddr::V4(v4) => {
                let v4 = u32::from(v4);
                self.nets.iter().any(|n| n.contains_v4(v4))
            }
            IpAddr::V6(v6) => {
                let v6 = u128::from(v6);
                self.nets.iter().any(|n| n.contains_v6(v6))
            }
        }
    }

    /// Whether this filter allows every client.
    pub fn is_any(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether some IPv4 client (`v4 == true`) or some IPv6 client that is not an
    /// IPv4-mapped address (`v4 == false`) can pass. A server bound to one family only
    /// with a filter that can never match it refuses everybody; `pool-tokio` refuses
    /// to build such a pool.
    ///
    /// ```
    /// use pool_net::IpFilter;
    /// let f = IpFilter::parse("::1, fe80::/10").unwrap();
    /// assert!(!f.can_match_family(true));
    /// assert!(f.can_match_family(false));
    /// assert!(IpFilter::any().can_match_family(true));
    /// ```
    pub fn can_match_family(&self, v4: bool) -> bool {
        self.is_any()
            || self.nets.iter().any(|n| match *n {
                Net::V4 { .. } => v4,
                // A block wide enough to hold the mapped range admits IPv4 clients too.
                Net::V6 { net, prefix } => {
                    !v4 || (prefix <= 96 && MAPPED_PREFIX & mask_v6(prefix) == net)
                }
            })
    }
}

impl FromStr for IpFilter {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for IpFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask_v4(0), 0);
        assert_eq!(mask_v4(8), 0xff00_0000);
        assert_eq!(mask_v4(32), u32::MAX);
        assert_eq!(mask_v6(0), 0);
        assert_eq!(mask_v6(1), 1 << 127);
        assert_eq!(mask_v6(128), u128::MAX);
    }

    #[test]
    fn mapped_entries_become_ipv4() {
        assert_eq!(
            Net::parse("::ffff:10.0.0.1").unwrap(),
            Net::V4 {
                net: 0x0a00_0001,
                prefix: 32
            }
        );
        assert_eq!(
            Net::parse("::ffff:10.1.2.3/104").unwrap(),
            Net::V4 {
                net: 0x0a00_0000,
                prefix: 8
            }
        );
        assert_eq!(
            Net::parse("::ffff:0:0/96").unwrap(),
            Net::V4 { net: 0, prefix: 0 }
        );
        // Wider than the mapped range: stays IPv6.
        assert!(matches!(
            Net::parse("::ffff:0:0/95").unwrap(),
            Net::V6 { prefix: 95, .. }
        ));
    }
}
