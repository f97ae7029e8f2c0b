//! Client configurations for each mode, and the mode-1 certificate verifier.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{pem, protocol_versions, provider, Fingerprint, TlsError, TlsMode};

/// Builds the rustls client configuration for a [`TlsMode`].
///
/// - [`TlsMode::Off`]: [`build`](Self::build) returns `Ok(None)`.
/// - [`TlsMode::SelfSigned`]: any server certificate is accepted ([`DangerousNoVerify`]),
///   unless a [`pin`](Self::pin) is set, in which case only that exact certificate is.
/// - [`TlsMode::Verified`]: the chain is verified against the trusted roots (the bundled
///   Mozilla roots and/or the given CA certificates) and the server name is checked.
///
/// TLS 1.3 only unless [`allow_tls12`](Self::allow_tls12) is set.
///
/// ```
/// use pool_tls::{ClientTlsBuilder, TlsMode};
/// let config = ClientTlsBuilder::new(TlsMode::Verified).build().unwrap();
/// assert!(config.is_some());
/// assert!(ClientTlsBuilder::new(TlsMode::Off).build().unwrap().is_none());
/// ```
#[must_use]
#[derive(Clone, Debug)]
pub struct ClientTlsBuilder {
    mode: TlsMode,
    pin: Option<Fingerprint>,
    ca_files: Vec<PathBuf>,
    ca_ders: Vec<Vec<u8>>,
    web_roots: Option<bool>,
    tls12: bool,
    alpn: Vec<Vec<u8>>,
}

impl ClientTlsBuilder {
    /// A builder for `mode` with the defaults: TLS 1.3 only, no pin, no CA, no ALPN.
    pub fn new(mode: TlsMode) -> Self {
        Self {
            mode,
            pin: None,
            ca_files: Vec::new(),
            ca_ders: Vec::new(),
            web_roots: None,
            tls12: false,
            alpn: Vec::new(),
        }
    }

    /// Mode 1: accept only the server certificate with this SHA-256 fingerprint.
    ///
    /// Any other certificate fails the handshake with
    /// `rustls::Error::General("certificate pin mismatch: expected …, got …")`.
    /// Ignored in the other modes (mode 2 already authenticates the server).
    pub fn pin(mut self, fp: Fingerprint) -> Self {
        self.pin = Some(fp);
        self
    }

    /// Mode 2: trust the CA certificates in this PEM file (in addition to any others given).
    ///
    /// Giving a CA turns the bundled web roots off unless [`web_roots`](Self::web_roots)
    /// is set explicitly. The file is read by [`build`](Self::build).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_files.push(path.into());
        self
    }

    /// Mode 2: trust this DER-encoded CA certificate (handy in tests with
    /// `TestCa` of the `test-util` feature).
    ///
    /// Like [`ca_file`](Self::ca_file), this turns the bundled web roots off unless
    /// [`web_roots`](Self::web_roots) is set explicitly.
    pub fn ca_der(mut self, der: Vec<u8>) -> Self {
        self.ca_ders.push(der);
        self
    }

    /// Mode 2: whether to trust the bundled Mozilla root certificates (`webpki-roots`).
    ///
    /// Default: on when no CA is given, off when a CA file or certificate is given.
    pub fn web_roots(mut self, on: bool) -> Self {
        self.web_roots = Some(on);
        self
    }

    /// Also offer TLS 1.2 (default: TLS 1.3 only).
    pub fn allow_tls12(mut self, on: bool) -> Self {
        self.tls12 = on;
        self
    }

    /// ALPN protocols to offer, most preferred first (default: none).
    pub fn alpn(mut self, protos: Vec<Vec<u8>>) -> Self {
        self.alpn = protos;
        self
    }

    /// Builds the configuration: `Ok(None)` for [`TlsMode::Off`].
    ///
    /// # Errors
    ///
    /// Mode 2 only: a CA file that cannot be read ([`TlsError::Io`]), holds no certificate
    /// ([`TlsError::NoCertificate`]) or malformed PEM ([`TlsError::BadPem`]); a CA
    /// certificate rustls rejects ([`TlsError::Rustls`]); no trusted root at all
    /// ([`TlsError::NoTrustRoots`]).
    pub fn build(self) -> Result<Option<Arc<ClientConfig>>, TlsError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(protocol_versions(self.tls12))?;
        let mut config = match self.mode {
            TlsMode::Off => return Ok(None),
            TlsMode::SelfSigned => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(DangerousNoVerify::with_provider(
                    self.pin, provider,
                )))
                .with_no_client_auth(),
            TlsMode::Verified => {
                let roots = self.roots()?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        config.alpn_protocols = self.alpn;
        Ok(Some(Arc::new(config)))
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        let has_ca = !self.ca_files.is_empty() || !self.ca_ders.is_empty();
        if self.web_roots.unwrap_or(!has_ca) {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for path in &self.ca_files {
            for cert in pem::read_certs(path)? {
                roots.add(cert)?;
            }
        }
        for der in &self.ca_ders {
            roots.add(CertificateDer::from(der.clone()))?;
        }
        if roots.is_empty() {
            return Err(TlsError::NoTrustRoots);
        }
        Ok(roots)
    }
}

/// The mode-1 server certificate verifier: accepts **any** certificate, optionally pinned.
///
/// It is "dangerous" because, without a pin, it does not authenticate the server at all:
/// the connection is encrypted, but anyone who can intercept it (a man in the middle) can
/// present their own certificate and read everything. That is what mode 1 of the Go
/// package does (`InsecureSkipVerify`). With a [pin](Self::new) only the certificate with
/// that SHA-256 fingerprint is accepted, which closes the hole for a known self-signed
/// server.
///
/// The handshake signatures are still checked, with the algorithms of [`provider()`], so
/// the peer must hold the private key of the certificate it presents.
#[derive(Debug)]
pub struct DangerousNoVerify {
    pin: Option<Fingerprint>,
    provider: Arc<CryptoProvider>,
}

impl DangerousNoVerify {
    /// A verifier accepting any certificate, or only the one with fingerprint `pin`.
    #[must_use]
    pub fn new(pin: Option<Fingerprint>) -> Self {
        Self::with_provider(pin, provider())
    }

    fn with_provider(pin: Option<Fingerprint>, provider: Arc<CryptoProvider>) -> Self {
        Self { pin, provider }
    }
}

impl ServerCertVerifier for DangerousNoVerify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(expected) = self.pin {
            let got = Fingerprint::of(end_entity);
            if got != expected {
                return Err(rustls::Error::General(format!(
                    "certificate pin mismatch: expected {expected}, got {got}"
                )));
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls server name for `host`: a DNS name or an IP address literal
/// (IPv6 may be written with or without brackets).
///
/// # Errors
///
/// [`TlsError::BadHostname`] if `host` is empty or neither a DNS name nor an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let bad = || TlsError::BadHostname(host.to_owned());
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        let ip: std::net::Ipv6Addr = inner.parse().map_err(|_| bad())?;
        return Ok(ServerName::IpAddress(std::net::IpAddr::V6(ip).into()));
    }
    if host.is_empty() {
        return Err(bad());
    }
    ServerName::try_from(host.to_owned()).map_err(|_| bad())
}
