//! The PROXY protocol header (HAProxy's, versions 1 and 2) that the client writes to a
//! service's target before the user's bytes, so that the target sees the user's
//! address instead of the client's.
//!
//! The bytes come from the `ppp` crate's writers: the header's layout is the crate's
//! (text line, binary signature, family and length fields), and this crate's tests
//! read it back with a parser of their own, so that one mistake would have to be made
//! twice to pass.

use std::net::{IpAddr, SocketAddr};

use ppp::v2;

use crate::config::ProxyProtocol;

/// An IPv4 address given as IPv4-mapped IPv6 becomes IPv4; when the two addresses are
/// still of two families, the IPv4 one is mapped to IPv6 (a header has one family).
fn one_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canon(a), canon(b));
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// The header for a TCP connection from `user` to `public`, in `version`.
pub(crate) fn header(version: ProxyProtocol, user: SocketAddr, public: SocketAddr) -> Vec<u8> {
    let (src, dst) = one_family(user, public);
    match version {
        ProxyProtocol::V1 => {
            let addresses = match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    ppp::v1::Addresses::new_tcp4(*s.ip(), *d.ip(), s.port(), d.port())
                }
                (s, d) => {
                    ppp::v1::Addresses::new_tcp6(v6_of(s.ip()), v6_of(d.ip()), s.port(), d.port())
                }
            };
            addresses.to_string().into_bytes()
        }
        ProxyProtocol::V2 => {
            // `one_family` made both of one family: never `Unspecified`.
            let addresses = v2::Addresses::from((src, dst));
            v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                addresses,
            )
            .build()
            // Writing into a `Vec` cannot fail, and the addresses fit the length field.
            .unwrap_or_default()
        }
    }
}

fn v6_of(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(ip) => ip.to_ipv6_mapped(),
        IpAddr::V6(ip) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn version_1_is_one_line() {
        let h = header(
            ProxyProtocol::V1,
            at("127.0.0.2:40000"),
            at("127.0.0.1:8080"),
        );
        assert_eq!(h, b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 8080\r\n");
        let h = header(ProxyProtocol::V1, at("[::1]:1"), at("127.0.0.1:2"));
        assert_eq!(h, b"PROXY TCP6 ::1 ::ffff:127.0.0.1 1 2\r\n");
        let h = header(
            ProxyProtocol::V1,
            at("[::ffff:10.0.0.1]:1"),
            at("10.0.0.2:2"),
        );
        assert_eq!(h, b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n");
    }

    #[test]
    fn version_2_is_the_binary_layout() {
        let h = header(
            ProxyProtocol::V2,
            at("127.0.0.2:40000"),
            at("127.0.0.1:8080"),
        );
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 2, 127, 0, 0, 1]);
        want.extend_from_slice(&40000u16.to_be_bytes());
        want.extend_from_slice(&8080u16.to_be_bytes());
        assert_eq!(h, want);
        let h = header(ProxyProtocol::V2, at("[::1]:1"), at("[::2]:2"));
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(h.len(), 16 + 36);
    }
}
