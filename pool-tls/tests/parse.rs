//! Parsing and printing of modes, fingerprints and server names.

use std::str::FromStr;

use pool_tls::{server_name, DangerousNoVerify, Fingerprint, ServerTls, TlsError, TlsMode};
use proptest::prelude::*;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

#[test]
fn mode_parses_every_spelling() {
    let cases = [
        ("0", TlsMode::Off),
        ("off", TlsMode::Off),
        ("none", TlsMode::Off),
        ("plain", TlsMode::Off),
        ("1", TlsMode::SelfSigned),
        ("self-signed", TlsMode::SelfSigned),
        ("selfsigned", TlsMode::SelfSigned),
        ("insecure", TlsMode::SelfSigned),
        ("2", TlsMode::Verified),
        ("verified", TlsMode::Verified),
        ("verify", TlsMode::Verified),
        // case-insensitive and trimmed
        ("OFF", TlsMode::Off),
        ("  Self-Signed\n", TlsMode::SelfSigned),
        ("\t2 ", TlsMode::Verified),
        ("VeRiFy", TlsMode::Verified),
    ];
    for (text, mode) in cases {
        assert_eq!(text.parse::<TlsMode>().unwrap(), mode, "{text:?}");
    }
}

#[test]
fn mode_rejects_anything_else() {
    for bad in ["", "3", "-1", "tls", "self signed", "00", "on", "true"] {
        match TlsMode::from_str(bad) {
            Err(TlsError::BadMode(s)) => assert_eq!(s, bad),
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
    let msg = "tls".parse::<TlsMode>().unwrap_err().to_string();
    assert!(msg.contains("\"tls\""), "{msg}");
}

#[test]
fn mode_code_display_default() {
    assert_eq!(TlsMode::default(), TlsMode::Off);
    for (mode, code) in [
        (TlsMode::Off, 0),
        (TlsMode::SelfSigned, 1),
        (TlsMode::Verified, 2),
    ] {
        assert_eq!(mode.code(), code);
        assert_eq!(mode.to_string(), code.to_string());
        assert_eq!(mode.to_string().parse::<TlsMode>().unwrap(), mode);
    }
    assert!(!TlsMode::Off.is_tls());
    assert!(TlsMode::SelfSigned.is_tls() && TlsMode::Verified.is_tls());
}

#[test]
fn fingerprint_of_known_input() {
    // SHA-256 of the empty string.
    assert_eq!(
        Fingerprint::of(b"").to_string(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn fingerprint_accepts_colons_and_upper_case() {
    let fp = Fingerprint::of(b"pool");
    let hex = fp.to_string();
    let colons = hex
        .as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(colons.parse::<Fingerprint>().unwrap(), fp);
    assert_eq!(hex.to_ascii_uppercase().parse::<Fingerprint>().unwrap(), fp);
    assert_eq!(format!(" {hex}\n").parse::<Fingerprint>().unwrap(), fp);
}

#[test]
fn fingerprint_rejects_bad_input() {
    let hex = Fingerprint::of(b"pool").to_string();
    let bad = [
        String::new(),
        hex[..62].to_owned(),
        format!("{hex}00"),
        format!("{}zz", &hex[..62]),
        format!("{}:{}", &hex[..3], &hex[3..]),
        format!(":{hex}"),
        "é".repeat(32),
    ];
    for b in bad {
        match b.parse::<Fingerprint>() {
            Err(TlsError::BadFingerprint(s)) => assert_eq!(s, b),
            other => panic!("{b:?} gave {other:?}"),
        }
    }
}

proptest! {
    // A test file alone in `tests/` has no `lib.rs` or `main.rs` above it, where
    // proptest's default looks for the root of the `proptest-regressions` directory:
    // name the file where a test directory's seeds would go.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/proptest-regressions/parse.txt",
            ),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn fingerprint_round_trips(bytes in any::<[u8; 32]>()) {
        let fp = Fingerprint(bytes);
        let text = fp.to_string();
        prop_assert_eq!(text.len(), 64);
        prop_assert!(text.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        prop_assert_eq!(text.parse::<Fingerprint>().unwrap(), fp);
    }
}

#[test]
fn server_names() {
    assert!(matches!(
        server_name("localhost").unwrap(),
        ServerName::DnsName(_)
    ));
    assert!(matches!(
        server_name("pool.example.com").unwrap(),
        ServerName::DnsName(_)
    ));
    assert!(matches!(
        server_name("127.0.0.1").unwrap(),
        ServerName::IpAddress(_)
    ));
    assert!(matches!(
        server_name("::1").unwrap(),
        ServerName::IpAddress(_)
    ));
    assert!(matches!(
        server_name("[::1]").unwrap(),
        ServerName::IpAddress(_)
    ));
    for bad in [
        "",
        "bad name",
        "[example.com]",
        "[]",
        "exa mple.com",
        "a..b",
    ] {
        match server_name(bad) {
            Err(TlsError::BadHostname(s)) => assert_eq!(s, bad),
            other => panic!("{bad:?} gave {other:?}"),
        }
    }
}

#[test]
fn dangerous_no_verify_pins() {
    let server = ServerTls::self_signed(["localhost"]).unwrap();
    let cert = CertificateDer::from(server.certificate_der().to_vec());
    let name = server_name("localhost").unwrap();
    let now = UnixTime::now();

    let open = DangerousNoVerify::new(None);
    assert!(open.verify_server_cert(&cert, &[], &name, &[], now).is_ok());
    assert!(!open.supported_verify_schemes().is_empty());

    let pinned = DangerousNoVerify::new(Some(server.fingerprint()));
    assert!(pinned
        .verify_server_cert(&cert, &[], &name, &[], now)
        .is_ok());

    let wrong = DangerousNoVerify::new(Some(Fingerprint([7; 32])));
    match wrong.verify_server_cert(&cert, &[], &name, &[], now) {
        Err(rustls::Error::General(msg)) => {
            assert_eq!(
                msg,
                format!(
                    "certificate pin mismatch: expected {}, got {}",
                    Fingerprint([7; 32]),
                    server.fingerprint()
                )
            );
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
}
