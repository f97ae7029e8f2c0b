//! The configuration file: what a good one gives, and every mistake of a bad one.

use super::*;

const GOOD: &str = r#"
[server]
tunnel = "0.0.0.0:10101"
tls = 1
state_dir = "/var/lib/pool-tunnel"

[server.services.web]
public = "0.0.0.0:8080"
max_sessions = 512

[server.services.ssh]
public = "0.0.0.0:2222"
idle_timeout = 3600

[client]
tunnel = "server.example:10101"
tls = "1"
tunnel_key_file = "tunnel.key"

[client.services.web]
target = "127.0.0.1:8000"
proxy_protocol = "v2"

[client.services.ssh]
target = "127.0.0.1:22"
protocol = "tcp"
"#;

#[test]
fn a_good_file_gives_both_sides_and_their_services() {
    let f = parse(GOOD).unwrap();
    let s = f.server.unwrap();
    assert_eq!(s.settings.tunnel, Some("0.0.0.0:10101".parse().unwrap()));
    assert_eq!(s.settings.tls, Some(TlsMode::SelfSigned));
    let names: Vec<_> = s.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ssh", "web"]);
    assert_eq!(s.services[1].max_sessions, Some(512));
    let c = f.client.unwrap();
    assert_eq!(
        c.settings.tls,
        Some(TlsMode::SelfSigned),
        "\"1\" reads as 1"
    );
    assert_eq!(c.services[1].proxy_protocol, Some(ProxyProtocol::V2));
    assert_eq!(c.services[0].protocol, Some(ServiceProtocol::Tcp));
    let services = crate::setup::server_services(&s).unwrap();
    assert_eq!(services[0].relay.idle, std::time::Duration::from_secs(3600));
    assert_eq!(services[1].max_sessions, 512);
}

/// The mistakes of `src`, as `(line, field)`, with their messages.
fn mistakes(src: &str) -> Vec<(usize, String, String)> {
    parse(src)
        .unwrap_err()
        .0
        .into_iter()
        .map(|m| (m.line, m.field, m.message))
        .collect()
}

#[test]
fn every_mistake_is_named_by_line_and_field() {
    let src = r#"[server]
tunnel = "0.0.0.0:10101"
tsl = 1
max = 0

[server.services.web]
public = "not an address"
max_sessions = "many"
colour = "blue"
protocol = "sctp"

[server.services."bad name"]
public = "0.0.0.0:8081"

[client]
pin = "ab"
tls = 2

[client.services.web]
proxy_protocol = "v3"
"#;
    let got = mistakes(src);
    let at: Vec<(usize, &str)> = got.iter().map(|(l, f, _)| (*l, f.as_str())).collect();
    assert_eq!(
        at,
        [
            (3, "server.tsl"),
            (4, "server.max"),
            (7, "server.services.web.public"),
            (8, "server.services.web.max_sessions"),
            (9, "server.services.web.colour"),
            (10, "server.services.web.protocol"),
            (12, "server.services.bad name"),
            (15, "client.tunnel"),
            (16, "client.pin"),
            (19, "client.services.web.target"),
            (20, "client.services.web.proxy_protocol"),
        ],
        "{got:#?}"
    );
    let says = |field: &str, words: &str| {
        let (_, _, m) = got.iter().find(|(_, f, _)| f == field).unwrap();
        assert!(m.contains(words), "{field}: {m}");
    };
    says("server.tsl", "unknown field");
    says("server.max", "must be 1 to");
    says("server.services.web.colour", "unknown field");
    says("server.services.web.protocol", "unknown variant");
    says("client.tunnel", "missing");
    says("client.pin", "needs tls 1");
    says("client.services.web.target", "missing");
    says("client.services.web.proxy_protocol", "unknown variant");
}

#[test]
fn a_syntax_error_names_its_line() {
    let got = mistakes("[server]\ntunnel = \"0.0.0.0:1\"\nmax = = 3\n");
    assert_eq!(got[0].0, 3, "{got:?}");
}

#[test]
fn two_services_on_one_address_and_stray_sections_are_mistakes() {
    let got = mistakes(
        r#"[server]
tunnel = "0.0.0.0:10101"
[server.services.a]
public = "0.0.0.0:8080"
[server.services.b]
public = "0.0.0.0:8080"
[servers]
x = 1
"#,
    );
    let fields: Vec<&str> = got.iter().map(|(_, f, _)| f.as_str()).collect();
    assert!(fields.contains(&"server.services.b.public"), "{got:?}");
    assert!(fields.contains(&"servers"), "{got:?}");
}

#[test]
fn plaintext_needs_the_insecure_word_in_a_file_too() {
    let src = "[client]\ntunnel = \"h:1\"\ntls = 0\n[client.services.a]\ntarget = \"h:2\"\n";
    let got = mistakes(src);
    assert_eq!(got[0].1, "client.tls", "{got:?}");
    assert!(got[0].2.contains("insecure_plaintext"), "{got:?}");
    let ok = src.replace("tls = 0", "tls = 0\ninsecure_plaintext = true");
    assert!(parse(&ok).is_ok());
}

#[test]
fn tls_is_the_pairs_never_a_services() {
    let src = r#"[server]
tunnel = "0.0.0.0:10101"

[server.services.web]
public = "0.0.0.0:8080"
tls = 2

[client]
tunnel = "server.example:10101"

[client.services.web]
target = "127.0.0.1:8000"
pin = "ab"
"#;
    let got = mistakes(src);
    let at: Vec<(usize, &str, bool)> = got
        .iter()
        .map(|(l, f, m)| (*l, f.as_str(), m.contains("unknown field")))
        .collect();
    assert_eq!(
        at,
        [
            (6, "server.services.web.tls", true),
            (13, "client.services.web.pin", true),
        ],
        "{got:#?}"
    );
}

#[test]
fn a_pair_on_two_transports_is_a_mistake_naming_both() {
    let same = GOOD
        .replace("[server]\n", "[server]\ntransport = \"quic\"\n")
        .replace("[client]\n", "[client]\ntransport = \"quic\"\n");
    let f = parse(&same).unwrap();
    assert_eq!(f.server.unwrap().settings.transport, Some(Transport::Quic));
    let other = same.replace(
        "[client]\ntransport = \"quic\"",
        "[client]\ntransport = \"ws\"",
    );
    let got = mistakes(&other);
    assert_eq!(got[0].1, "client.transport", "{got:?}");
    assert!(
        got[0]
            .2
            .contains("the server runs over quic, the client over ws"),
        "{got:?}"
    );
    // One side alone may take any transport; a name that is none is a mistake.
    let got = mistakes("[client]\ntunnel = \"h:1\"\ntransport = \"udp\"\n");
    assert_eq!(got[0].1, "client.transport", "{got:?}");
}
