//! Real rustls handshakes over loopback for every mode and every refusal case.

mod common;

use std::sync::Arc;

use common::{handshake, TempDir};
use pool_tls::{provider, ClientTlsBuilder, ServerTls, TestCa, TlsError, TlsMode};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, Error, PeerIncompatible, ProtocolVersion,
};

fn client(builder: ClientTlsBuilder) -> Arc<ClientConfig> {
    builder
        .build()
        .expect("client config builds")
        .expect("a TLS mode gives a config")
}

fn self_signed() -> ServerTls {
    ServerTls::self_signed(["localhost", "127.0.0.1"]).expect("self-signed cert")
}

fn assert_not_valid_for_name(e: &Error) {
    assert!(
        matches!(
            e,
            Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            )
        ),
        "expected NotValidForName, got {e:?}"
    );
}

// ---- mode 1 ----------------------------------------------------------------------------

#[test]
fn mode1_accepts_self_signed() {
    let server = self_signed();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::SelfSigned)),
        "localhost",
    );
    assert_eq!(out.expect_ok(), ProtocolVersion::TLSv1_3);
}

#[test]
fn mode1_ignores_the_name() {
    // Mode 1 does not check the host name either: that is what makes it "dangerous".
    let server = ServerTls::self_signed(["some.other.name"]).unwrap();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::SelfSigned)),
        "127.0.0.1",
    );
    out.expect_ok();
}

#[test]
fn mode1_with_correct_pin() {
    let server = self_signed();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::SelfSigned).pin(server.fingerprint())),
        "localhost",
    );
    assert_eq!(out.expect_ok(), ProtocolVersion::TLSv1_3);
}

#[test]
fn mode1_pin_mismatch_refused() {
    let server = self_signed();
    let impostor = self_signed();
    let expected = impostor.fingerprint();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::SelfSigned).pin(expected)),
        "localhost",
    );
    match out.client_err() {
        Error::General(msg) => {
            assert!(msg.contains("certificate pin mismatch"), "{msg}");
            assert!(msg.contains(&expected.to_string()), "{msg}");
            assert!(msg.contains(&server.fingerprint().to_string()), "{msg}");
        }
        other => panic!("expected General(pin mismatch), got {other:?}"),
    }
    assert!(
        matches!(out.server_err(), Error::AlertReceived(_)),
        "{:?}",
        out.server
    );
}

#[test]
fn mode1_over_tls12_checks_signatures_with_the_provider() {
    // Over TLS 1.2 the ServerKeyExchange signature goes through
    // `DangerousNoVerify::verify_tls12_signature`.
    let out = handshake(
        tls12_server(),
        client(ClientTlsBuilder::new(TlsMode::SelfSigned).allow_tls12(true)),
        "localhost",
    );
    assert_eq!(out.expect_ok(), ProtocolVersion::TLSv1_2);
}

// ---- mode 2 ----------------------------------------------------------------------------

#[test]
fn mode2_with_test_ca_by_dns_name() {
    let ca = TestCa::new().unwrap();
    let server = ca.leaf(&["localhost", "127.0.0.1"], false).unwrap();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::Verified).ca_der(ca.ca_der())),
        "localhost",
    );
    assert_eq!(out.expect_ok(), ProtocolVersion::TLSv1_3);
}

#[test]
fn mode2_with_test_ca_by_ip() {
    let ca = TestCa::new().unwrap();
    let server = ca.leaf(&["127.0.0.1"], false).unwrap();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::Verified).ca_der(ca.ca_der())),
        "127.0.0.1",
    );
    assert_eq!(out.expect_ok(), ProtocolVersion::TLSv1_3);
}

#[test]
fn mode2_with_ca_file() {
    let ca = TestCa::new().unwrap();
    let dir = TempDir::new("ca-file");
    let ca_path = dir.write("ca.pem", ca.ca_pem());
    let server = ca.leaf(&["localhost"], false).unwrap();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::Verified).ca_file(&ca_path)),
        "localhost",
    );
    out.expect_ok();
}

#[test]
fn mode2_trusts_a_self_signed_cert_given_as_ca() {
    let server = self_signed();
    let dir = TempDir::new("self-ca");
    let ca_path = dir.write("server.pem", server.certificate_pem());
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::Verified).ca_file(&ca_path)),
        "localhost",
    );
    out.expect_ok();
}

#[test]
fn mode2_wrong_hostname_refused() {
    let ca = TestCa::new().unwrap();
    let server = ca.leaf(&["localhost"], false).unwrap();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::Verified).ca_der(ca.ca_der())),
        "example.com",
    );
    assert_not_valid_for_name(out.client_err());
    assert_eq!(
        out.server_err(),
        &Error::AlertReceived(AlertDescription::BadCertificate)
    );
}

#[test]
fn mode2_ip_not_in_certificate_refused() {
    let ca = TestCa::new().unwrap();
    let server = ca.leaf(&["localhost"], false).unwrap();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::Verified).ca_der(ca.ca_der())),
        "127.0.0.1",
    );
    assert_not_valid_for_name(out.client_err());
}

#[test]
fn mode2_untrusted_ca_refused() {
    let trusted = TestCa::new().unwrap();
    let other = TestCa::new().unwrap();
    let server = other.leaf(&["localhost"], false).unwrap();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::Verified).ca_der(trusted.ca_der())),
        "localhost",
    );
    assert_eq!(
        out.client_err(),
        &Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert_eq!(
        out.server_err(),
        &Error::AlertReceived(AlertDescription::UnknownCA)
    );
}

#[test]
fn mode2_web_roots_do_not_trust_a_test_ca() {
    let ca = TestCa::new().unwrap();
    let server = ca.leaf(&["localhost"], false).unwrap();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::Verified)),
        "localhost",
    );
    assert_eq!(
        out.client_err(),
        &Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[test]
fn mode2_self_signed_without_ca_refused() {
    let server = self_signed();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::Verified)),
        "localhost",
    );
    assert_eq!(
        out.client_err(),
        &Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
}

#[test]
fn mode2_expired_certificate_refused() {
    let ca = TestCa::new().unwrap();
    let server = ca.leaf(&["localhost"], true).unwrap();
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::Verified).ca_der(ca.ca_der())),
        "localhost",
    );
    let e = out.client_err();
    assert!(
        matches!(
            e,
            Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "expected Expired, got {e:?}"
    );
    assert_eq!(
        out.server_err(),
        &Error::AlertReceived(AlertDescription::CertificateExpired)
    );
}

// ---- protocol versions -----------------------------------------------------------------

/// A server that speaks only TLS 1.2, with a throw-away self-signed certificate.
fn tls12_server() -> Arc<rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    Arc::new(config)
}

#[test]
fn tls12_only_server_refused_by_default_client() {
    let out = handshake(
        tls12_server(),
        client(ClientTlsBuilder::new(TlsMode::SelfSigned)),
        "localhost",
    );
    assert_eq!(
        out.server_err(),
        &Error::PeerIncompatible(PeerIncompatible::Tls12NotOfferedOrEnabled)
    );
    assert_eq!(
        out.client_err(),
        &Error::AlertReceived(AlertDescription::ProtocolVersion)
    );
}

#[test]
fn tls12_client_refused_by_default_server() {
    let server = self_signed();
    let tls12_client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(pool_tls::DangerousNoVerify::new(None)))
        .with_no_client_auth();
    let out = handshake(
        server.config().unwrap(),
        Arc::new(tls12_client),
        "localhost",
    );
    assert_eq!(
        out.server_err(),
        &Error::PeerIncompatible(PeerIncompatible::Tls12NotOfferedOrEnabled)
    );
    assert_eq!(
        out.client_err(),
        &Error::AlertReceived(AlertDescription::ProtocolVersion)
    );
}

#[test]
fn default_client_negotiates_tls13_even_with_tls12_server_allowed() {
    let server = self_signed().allow_tls12(true);
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::SelfSigned)),
        "localhost",
    );
    assert_eq!(out.expect_ok(), ProtocolVersion::TLSv1_3);
}

#[test]
fn both_allowing_tls12_still_prefer_tls13() {
    let server = self_signed().allow_tls12(true);
    let out = handshake(
        server.config().unwrap(),
        client(ClientTlsBuilder::new(TlsMode::SelfSigned).allow_tls12(true)),
        "localhost",
    );
    assert_eq!(out.expect_ok(), ProtocolVersion::TLSv1_3);
}

// ---- ALPN ------------------------------------------------------------------------------

#[test]
fn alpn_is_offered() {
    let config = client(ClientTlsBuilder::new(TlsMode::SelfSigned).alpn(vec![b"pool".to_vec()]));
    assert_eq!(config.alpn_protocols, vec![b"pool".to_vec()]);
}

// ---- builder errors --------------------------------------------------------------------

#[test]
fn off_builds_no_config() {
    assert!(ClientTlsBuilder::new(TlsMode::Off)
        .build()
        .unwrap()
        .is_none());
}

#[test]
fn mode2_without_any_root_is_an_error() {
    let err = ClientTlsBuilder::new(TlsMode::Verified)
        .web_roots(false)
        .build()
        .unwrap_err();
    assert!(matches!(err, TlsError::NoTrustRoots), "{err:?}");
}

#[test]
fn mode2_missing_ca_file_names_the_path() {
    let dir = TempDir::new("missing-ca");
    let path = dir.path().join("nope.pem");
    let err = ClientTlsBuilder::new(TlsMode::Verified)
        .ca_file(&path)
        .build()
        .unwrap_err();
    match &err {
        TlsError::Io { path: p, source } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn mode2_ca_file_without_certificate() {
    let dir = TempDir::new("empty-ca");
    let path = dir.write("empty.pem", "just some text\n");
    let err = ClientTlsBuilder::new(TlsMode::Verified)
        .ca_file(&path)
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, TlsError::NoCertificate { path: p } if p == &path),
        "{err:?}"
    );
}

#[test]
fn server_config_is_cached() {
    let server = self_signed();
    let a = server.config().unwrap();
    let b = server.clone().config().unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let c = server.clone().allow_tls12(true).config().unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
}

#[test]
fn provider_is_ours_and_stable() {
    assert!(Arc::ptr_eq(&provider(), &provider()));
    assert!(!provider().cipher_suites.is_empty());
}

// ---- mode 1 still checks handshake signatures -------------------------------------------

/// Presents one certificate but signs with another key, as an impostor replaying a
/// captured certificate would.
#[derive(Debug)]
struct Impostor(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Impostor {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[test]
fn mode1_refuses_a_server_without_the_certificate_key() {
    let genuine = self_signed();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let signer = provider()
        .key_provider
        .load_private_key(rustls::pki_types::PrivateKeyDer::Pkcs8(
            other_key.serialize_der().into(),
        ))
        .unwrap();
    let stolen =
        rustls::sign::CertifiedKey::new(vec![genuine.certificate_der().to_vec().into()], signer);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Impostor(Arc::new(stolen))));
    let out = handshake(
        Arc::new(config),
        client(ClientTlsBuilder::new(TlsMode::SelfSigned).pin(genuine.fingerprint())),
        "localhost",
    );
    let e = out.client_err();
    assert!(
        matches!(e, Error::InvalidCertificate(CertificateError::BadSignature)),
        "expected BadSignature, got {e:?}"
    );
}
