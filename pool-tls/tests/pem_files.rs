//! Loading server certificates and keys from PEM files.

mod common;

use common::{handshake, TempDir};
use pool_tls::{ClientTlsBuilder, ServerTls, TestCa, TlsError, TlsMode};

/// A self-signed certificate and its key, both as PEM.
fn cert_and_key() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

#[test]
fn missing_file_names_the_path() {
    let dir = TempDir::new("missing");
    let (cert, _) = cert_and_key();
    let cert_path = dir.write("cert.pem", cert);
    let missing = dir.path().join("no-such-key.pem");

    let err = ServerTls::from_pem_files(&cert_path, &missing).unwrap_err();
    match &err {
        TlsError::Io { path, source } => {
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(std::error::Error::source(&err).is_some());

    let err = ServerTls::from_pem_files(&missing, &cert_path).unwrap_err();
    assert!(
        matches!(&err, TlsError::Io { path, .. } if path == &missing),
        "{err:?}"
    );
}

#[test]
fn file_without_certificate() {
    let dir = TempDir::new("no-cert");
    let (_, key) = cert_and_key();
    let key_path = dir.write("key.pem", &key);
    let err = ServerTls::from_pem_files(&key_path, &key_path).unwrap_err();
    assert!(
        matches!(&err, TlsError::NoCertificate { path } if path == &key_path),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&key_path.display().to_string()),
        "{err}"
    );
}

#[test]
fn key_file_without_key() {
    let dir = TempDir::new("no-key");
    let (cert, _) = cert_and_key();
    let cert_path = dir.write("cert.pem", cert);
    let err = ServerTls::from_pem_files(&cert_path, &cert_path).unwrap_err();
    assert!(
        matches!(&err, TlsError::NoPrivateKey { path } if path == &cert_path),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&cert_path.display().to_string()),
        "{err}"
    );
}

#[test]
fn malformed_pem() {
    let dir = TempDir::new("bad-pem");
    let (_, key) = cert_and_key();
    let key_path = dir.write("key.pem", key);
    let cert_path = dir.write("cert.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n");
    let err = ServerTls::from_pem_files(&cert_path, &key_path).unwrap_err();
    assert!(
        matches!(&err, TlsError::BadPem { path, .. } if path == &cert_path),
        "{err:?}"
    );
}

#[test]
fn key_not_matching_certificate() {
    let dir = TempDir::new("mismatch");
    let (cert, _) = cert_and_key();
    let (_, other_key) = cert_and_key();
    let cert_path = dir.write("cert.pem", cert);
    let key_path = dir.write("key.pem", other_key);
    let err = ServerTls::from_pem_files(&cert_path, &key_path).unwrap_err();
    match &err {
        TlsError::BadPem { path, reason } => {
            assert_eq!(path, &key_path);
            assert!(
                reason.contains(&cert_path.display().to_string()),
                "{reason}"
            );
        }
        other => panic!("expected BadPem, got {other:?}"),
    }
}

#[test]
fn good_files_work() {
    let dir = TempDir::new("good");
    let (cert, key) = cert_and_key();
    let cert_path = dir.write("cert.pem", &cert);
    let key_path = dir.write("key.pem", &key);
    let server = ServerTls::from_pem_files(&cert_path, &key_path).unwrap();
    assert_eq!(server.certificate_pem(), cert.replace("\r\n", "\n"));

    // Mode 1, pinned to the loaded certificate.
    let client = ClientTlsBuilder::new(TlsMode::SelfSigned)
        .pin(server.fingerprint())
        .build()
        .unwrap()
        .unwrap();
    handshake(server.config().unwrap(), client, "localhost").expect_ok();

    // Mode 2, trusting the same file as a CA.
    let client = ClientTlsBuilder::new(TlsMode::Verified)
        .ca_file(&cert_path)
        .build()
        .unwrap()
        .unwrap();
    handshake(server.config().unwrap(), client, "localhost").expect_ok();
}

#[test]
fn combined_file_with_chain() {
    let dir = TempDir::new("combined");
    let (cert, key) = cert_and_key();
    let both = dir.write("both.pem", format!("{key}{cert}"));
    let server = ServerTls::from_pem_files(&both, &both).unwrap();
    let client = ClientTlsBuilder::new(TlsMode::SelfSigned)
        .build()
        .unwrap()
        .unwrap();
    handshake(server.config().unwrap(), client, "localhost").expect_ok();
}

#[test]
fn self_signed_pem_files_round_trip() {
    // certificate_pem of a generated certificate is valid PEM a client can load as a CA.
    let ca = TestCa::new().unwrap();
    let dir = TempDir::new("round-trip");
    let ca_path = dir.write("ca.pem", ca.ca_pem());
    let leaf = ca.leaf(&["localhost"], false).unwrap();
    let leaf_path = dir.write("leaf.pem", leaf.certificate_pem());
    let client = ClientTlsBuilder::new(TlsMode::Verified)
        .ca_file(&ca_path)
        .build()
        .unwrap()
        .unwrap();
    handshake(leaf.config().unwrap(), client, "localhost").expect_ok();
    let loaded = rustls::pki_types::CertificateDer::from(leaf.certificate_der().to_vec());
    use rustls::pki_types::pem::PemObject;
    let parsed = rustls::pki_types::CertificateDer::from_pem_file(&leaf_path).unwrap();
    assert_eq!(parsed, loaded);
}
