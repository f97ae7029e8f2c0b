//! The client-IP filter.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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

/// The range `::ffff:0:0/96` of IPv4-mapped IPv6 addresses.
fn mapped_range() -> Ipv6Net {
    Ipv6Net::new(Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), 96).expect("96 <= 128")
}

/// One entry: a network with its host bits cleared ([`ipnet`] parses and matches
/// it). An IPv6 network wholly inside `::ffff:0:0/96` is kept as the equivalent IPv4
/// network, so that mapped peers and entries compare as IPv4.
fn parse_net(entry: &str) -> Result<IpNet, FilterError> {
    let net = match entry.split_once('/') {
        None => IpNet::from(parse_addr(entry, entry)?),
        Some((addr, prefix)) => entry
            .parse::<IpNet>()
            .map_err(|_| why_not_cidr(entry, addr, prefix))?
            .trunc(),
    };
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 && mapped_range().contains(&v6) => {
            let v4 = v6
                .network()
                .to_ipv4_mapped()
                .expect("inside the mapped range");
            IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).expect("at most 32"))
        }
        net => net,
    })
}

fn parse_addr(entry: &str, addr: &str) -> Result<IpAddr, FilterError> {
    IpAddr::from_str(addr).map_err(|_| {
        FilterError::bad(
            entry,
            format!("{addr:?} is not a valid IPv4 or IPv6 address"),
        )
    })
}

/// Why `entry` (an `addr/prefix` that ipnet refused) is not a CIDR block, in words.
fn why_not_cidr(entry: &str, addr: &str, prefix: &str) -> FilterError {
    let addr = match parse_addr(entry, addr) {
        Ok(addr) => addr,
        Err(e) => return e,
    };
    let (family, max) = if addr.is_ipv4() {
        ("IPv4", 32)
    } else {
        ("IPv6", 128)
    };
    let reason = if prefix.is_empty() {
        "missing prefix length after '/'".to_owned()
    } else if !prefix.bytes().all(|b| b.is_ascii_digit()) {
        format!("prefix length {prefix:?} is not a decimal number")
    } else if prefix.parse::<u32>().is_ok_and(|n| n <= max) {
        format!("prefix length {prefix:?} has leading zeros")
    } else {
        format!("prefix length {prefix} is too long for {family} (at most {max})")
    };
    FilterError::bad(entry, reason)
}

/// An entry as it displays: an exact address without its prefix.
struct Entry<'a>(&'a IpNet);

impl fmt::Display for Entry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
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
    nets: Vec<IpNet>,
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
            .map(parse_net)
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
                    parse_net(e)
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
        self.nets.iter().any(|n| match (n, ip) {
            (IpNet::V4(n), IpAddr::V4(v4)) => n.contains(&v4),
            // An IPv4 address is the same host as its mapped IPv6 form.
            (IpNet::V6(n), IpAddr::V4(v4)) => n.contains(&v4.to_ipv6_mapped()),
            (IpNet::V6(n), IpAddr::V6(v6)) => n.contains(&v6),
            // Mapped peers were turned into IPv4 above.
            (IpNet::V4(_), IpAddr::V6(_)) => false,
        })
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
            || self.nets.iter().any(|n| match n {
                IpNet::V4(_) => v4,
                // A block wide enough to hold the mapped range admits IPv4 clients too.
                IpNet::V6(n) => !v4 || n.contains(&mapped_range()),
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
            write!(f, "{}", Entry(net))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn mapped_entries_become_ipv4() {
        assert_eq!(parse_net("::ffff:10.0.0.1").unwrap(), net("10.0.0.1/32"));
        assert_eq!(parse_net("::ffff:10.1.2.3/104").unwrap(), net("10.0.0.0/8"));
        assert_eq!(parse_net("::ffff:0:0/96").unwrap(), net("0.0.0.0/0"));
        assert!(parse_net("10.0.0.0/08").is_ok());
        let e = parse_net("10.0.0.0/008").unwrap_err().to_string();
        assert!(e.contains("leading zeros"), "{e}");
        // Wider than the mapped range: stays IPv6.
        assert!(matches!(
            parse_net("::ffff:0:0/95").unwrap(),
            IpNet::V6(n) if n.prefix_len() == 95
        ));
    }
}
