//! Tests of the client-IP filter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream};

use pool_net::{bind_listener, FilterError, IpFilter};
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn f(s: &str) -> IpFilter {
    IpFilter::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

#[test]
fn empty_and_whitespace_mean_any() {
    for s in ["", " ", "\t\n  "] {
        let flt = f(s);
        assert!(flt.is_any());
        assert_eq!(flt, IpFilter::any());
        assert!(flt.allows(ip("1.2.3.4")));
        assert!(flt.allows(ip("::1")));
        assert_eq!(flt.to_string(), "");
    }
    assert!(IpFilter::from_entries(Vec::<String>::new())
        .unwrap()
        .is_any());
}

#[test]
fn only_separators_is_an_error_not_any() {
    assert!(matches!(
        IpFilter::parse(" , ,"),
        Err(FilterError::BadEntry { .. })
    ));
}

#[test]
fn exact_ipv4() {
    let flt = f("127.0.0.1");
    assert!(!flt.is_any());
    assert!(flt.allows(ip("127.0.0.1")));
    assert!(!flt.allows(ip("127.0.0.2")));
    assert!(!flt.allows(ip("::1")));
    assert!(flt.allows(ip("::ffff:127.0.0.1")));
    assert!(!flt.allows(ip("::ffff:127.0.0.2")));
}

#[test]
fn exact_ipv6() {
    let flt = f("::1");
    assert!(flt.allows(ip("::1")));
    assert!(!flt.allows(ip("::2")));
    assert!(!flt.allows(ip("127.0.0.1")));
    assert!(!flt.allows(ip("0.0.0.1")));
}

#[test]
fn mapped_entry_is_ipv4() {
    let flt = f("::ffff:10.0.0.1");
    assert_eq!(flt, f("10.0.0.1"));
    assert_eq!(flt.to_string(), "10.0.0.1");
    assert!(flt.allows(ip("10.0.0.1")));
    assert!(flt.allows(ip("::ffff:10.0.0.1")));
    assert!(!flt.allows(ip("10.0.0.2")));
    assert_eq!(f("::ffff:10.0.0.0/104"), f("10.0.0.0/8"));
}

#[test]
fn list_with_mixed_separators() {
    let flt = f("10.0.0.0/8, ::1, 192.168.1.5,fe80::/10\t172.16.0.1");
    for yes in [
        "10.0.0.0",
        "10.255.255.255",
        "::1",
        "192.168.1.5",
        "fe80::1",
        "febf:ffff::1",
        "172.16.0.1",
        "::ffff:10.9.9.9",
    ] {
        assert!(flt.allows(ip(yes)), "{yes}");
    }
    for no in [
        "11.0.0.0",
        "9.255.255.255",
        "::2",
        "192.168.1.6",
        "fec0::",
        "fe7f::1",
    ] {
        assert!(!flt.allows(ip(no)), "{no}");
    }
    assert_eq!(
        flt.to_string(),
        "10.0.0.0/8, ::1, 192.168.1.5, fe80::/10, 172.16.0.1"
    );
    assert_eq!(flt.to_string().parse::<IpFilter>().unwrap(), flt);
    let from = IpFilter::from_entries([
        "10.0.0.0/8",
        " ::1",
        "192.168.1.5",
        "fe80::/10",
        "172.16.0.1",
    ])
    .unwrap();
    assert_eq!(from, flt);
}

#[test]
fn cidr_edges_v4() {
    let flt = f("192.168.4.0/22");
    assert!(flt.allows(ip("192.168.4.0")), "first");
    assert!(flt.allows(ip("192.168.7.255")), "last");
    assert!(!flt.allows(ip("192.168.3.255")), "one below");
    assert!(!flt.allows(ip("192.168.8.0")), "one above");

    let all = f("0.0.0.0/0");
    assert!(all.allows(ip("0.0.0.0")));
    assert!(all.allows(ip("255.255.255.255")));
    assert!(all.allows(ip("::ffff:1.2.3.4")));
    assert!(!all.allows(ip("::1")), "IPv4 /0 does not cover IPv6");

    let one = f("8.8.8.8/32");
    assert_eq!(one, f("8.8.8.8"));
    assert!(one.allows(ip("8.8.8.8")));
    assert!(!one.allows(ip("8.8.8.9")));
    assert!(!one.allows(ip("8.8.8.7")));
}

#[test]
fn cidr_edges_v6() {
    let flt = f("2001:db8::/32");
    assert!(flt.allows(ip("2001:db8::")), "first");
    assert!(
        flt.allows(ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")),
        "last"
    );
    assert!(!flt.allows(ip("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff")));
    assert!(!flt.allows(ip("2001:db9::")));

    let all = f("::/0");
    assert!(all.allows(ip("::")));
    assert!(all.allows(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
    // The mapped range lies inside ::/0, and mapped peers are IPv4.
    assert!(all.allows(ip("1.2.3.4")));

    let one = f("2001:db8::1/128");
    assert_eq!(one, f("2001:db8::1"));
    assert!(one.allows(ip("2001:db8::1")));
    assert!(!one.allows(ip("2001:db8::2")));
    assert!(!one.allows(ip("2001:db8::")));
}

#[test]
fn host_bits_are_masked() {
    let flt = f("10.1.2.3/8");
    assert_eq!(flt, f("10.0.0.0/8"));
    assert_eq!(flt.to_string(), "10.0.0.0/8");
    assert!(flt.allows(ip("10.200.0.1")));
    assert_eq!(f("2001:db8::1/32").to_string(), "2001:db8::/32");
}

#[test]
fn bad_entries_are_named() {
    for (list, bad) in [
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("300.1.1.1", "300.1.1.1"),
        ("abc", "abc"),
        ("1.2.3.4/", "1.2.3.4/"),
        ("::1/129", "::1/129"),
        ("10.0.0.1, 10.0.0.0/x", "10.0.0.0/x"),
        ("::1 1.2.3.4/-1", "1.2.3.4/-1"),
        ("1.2.3.4/+8", "1.2.3.4/+8"),
        (
            "1.2.3.4/99999999999999999999",
            "1.2.3.4/99999999999999999999",
        ),
        ("fe80::1%eth0", "fe80::1%eth0"),
        ("1.2.3.4/8/8", "1.2.3.4/8/8"),
        ("/8", "/8"),
        ("127.0.0.1:80", "127.0.0.1:80"),
    ] {
        match IpFilter::parse(list) {
            Err(e @ FilterError::BadEntry { .. }) => {
                let FilterError::BadEntry { entry, reason } = &e else {
                    unreachable!()
                };
                assert_eq!(entry, bad, "for {list:?}");
                assert!(!reason.is_empty());
                let msg = e.to_string();
                assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            }
            other => panic!("{list:?} gave {other:?}"),
        }
        assert!(IpFilter::from_entries([bad]).is_err(), "{bad:?}");
    }
}

#[test]
fn bad_entry_reasons() {
    let reason = |s: &str| match IpFilter::parse(s) {
        Err(FilterError::BadEntry { reason, .. }) => reason,
        other => panic!("{s:?} gave {other:?}"),
    };
    assert!(reason("10.0.0.0/33").contains("too long"));
    assert!(reason("::1/129").contains("too long"));
    assert!(reason("1.2.3.4/").contains("missing prefix"));
    assert!(reason("abc").contains("not a valid"));
}

#[test]
fn from_entries_rejects_empty_items() {
    assert!(matches!(
        IpFilter::from_entries(["10.0.0.1", "  "]),
        Err(FilterError::BadEntry { .. })
    ));
}

#[test]
fn real_peer_from_127_0_0_2_is_refused() {
    let listener = bind_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
    let addr = listener.local_addr().unwrap();
    let flt = f("127.0.0.1");

    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(&addr.into()).unwrap();
    let (_conn, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), ip("127.0.0.2"));
    assert!(!flt.allows(peer.ip()));

    let _ok = TcpStream::connect(addr).unwrap();
    let (_conn, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), ip("127.0.0.1"));
    assert!(flt.allows(peer.ip()));
}

fn reference_v4(net: u32, prefix: u8, x: u32) -> bool {
    (0..prefix).all(|i| (net >> (31 - i)) & 1 == (x >> (31 - i)) & 1)
}

fn reference_v6(net: u128, prefix: u8, x: u128) -> bool {
    (0..prefix).all(|i| (net >> (127 - i)) & 1 == (x >> (127 - i)) & 1)
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|x| IpAddr::V4(Ipv4Addr::from(x))),
        any::<u128>().prop_map(|x| IpAddr::V6(Ipv6Addr::from(x))),
        any::<u32>().prop_map(|x| IpAddr::V6(Ipv4Addr::from(x).to_ipv6_mapped())),
    ]
}

fn any_filter() -> impl Strategy<Value = IpFilter> {
    let entry = prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(a, p)| format!("{}/{p}", Ipv4Addr::from(a))),
        any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        (any::<u128>(), 0u8..=128).prop_map(|(a, p)| format!("{}/{p}", Ipv6Addr::from(a))),
        (any::<u32>(), 96u8..=128)
            .prop_map(|(a, p)| format!("{}/{p}", Ipv4Addr::from(a).to_ipv6_mapped())),
    ];
    proptest::collection::vec(entry, 0..6)
        .prop_map(|v| IpFilter::from_entries(v).expect("generated entries are valid"))
}

proptest! {
    #[test]
    fn exact_v4_allows_exactly_itself(x in any::<u32>(), y in any::<u32>()) {
        let flt = f(&Ipv4Addr::from(x).to_string());
        prop_assert!(flt.allows(IpAddr::V4(Ipv4Addr::from(x))));
        prop_assert_eq!(flt.allows(IpAddr::V4(Ipv4Addr::from(y))), x == y);
        let flt32 = f(&format!("{}/32", Ipv4Addr::from(x)));
        prop_assert_eq!(&flt32, &flt);
    }

    #[test]
    fn exact_v6_allows_exactly_itself(x in any::<u128>(), y in any::<u128>()) {
        let flt = f(&Ipv6Addr::from(x).to_string());
        prop_assert!(flt.allows(IpAddr::V6(Ipv6Addr::from(x))));
        prop_assert_eq!(flt.allows(IpAddr::V6(Ipv6Addr::from(y))), x == y);
    }

    #[test]
    fn v4_prefix_matches_top_bits(net in any::<u32>(), prefix in 0u8..=32, x in any::<u32>(), flip in 0u32..32) {
        let flt = f(&format!("{}/{prefix}", Ipv4Addr::from(net)));
        prop_assert_eq!(flt.allows(IpAddr::V4(Ipv4Addr::from(x))), reference_v4(net, prefix, x));
        // An address close to the network: differs from it in exactly one bit.
        let near = net ^ (1 << flip);
        prop_assert_eq!(flt.allows(IpAddr::V4(Ipv4Addr::from(near))), reference_v4(net, prefix, near));
        prop_assert!(flt.allows(IpAddr::V4(Ipv4Addr::from(net))));
    }

    #[test]
    fn v6_prefix_matches_top_bits(net in any::<u128>(), prefix in 0u8..=128, x in any::<u128>(), flip in 0u32..128) {
        let flt = f(&format!("{}/{prefix}", Ipv6Addr::from(net)));
        prop_assert_eq!(flt.allows(IpAddr::V6(Ipv6Addr::from(x))), reference_v6(net, prefix, x));
        let near = net ^ (1 << flip);
        prop_assert_eq!(flt.allows(IpAddr::V6(Ipv6Addr::from(near))), reference_v6(net, prefix, near));
        prop_assert!(flt.allows(IpAddr::V6(Ipv6Addr::from(net))));
    }

    #[test]
    fn mapped_v6_allowed_iff_v4_allowed(flt in any_filter(), x in any::<u32>()) {
        let v4 = Ipv4Addr::from(x);
        prop_assert_eq!(flt.allows(IpAddr::V6(v4.to_ipv6_mapped())), flt.allows(IpAddr::V4(v4)));
    }

    #[test]
    fn display_round_trips(flt in any_filter(), probe in any_ip()) {
        let text = flt.to_string();
        let back = IpFilter::parse(&text).unwrap();
        prop_assert_eq!(&back, &flt);
        prop_assert_eq!(back.to_string(), text);
        prop_assert_eq!(back.allows(probe), flt.allows(probe));
    }

    #[test]
    fn list_allows_iff_some_entry_allows(entries in proptest::collection::vec(any_filter(), 1..4), probe in any_ip()) {
        let parts: Vec<String> = entries
            .iter()
            .filter(|e| !e.is_any())
            .map(ToString::to_string)
            .collect();
        let flt = f(&parts.join(" , "));
        let expected = parts.is_empty() || entries.iter().any(|e| !e.is_any() && e.allows(probe));
        prop_assert_eq!(flt.is_any(), parts.is_empty());
        prop_assert_eq!(flt.allows(probe), expected);
    }
}
