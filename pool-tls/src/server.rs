//! Server certificates and configurations.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::{pem, protocol_versions, provider, Fingerprint, TlsError};

/// A server certificate chain and private key, from which the rustls server
/// configuration is built.
///
/// Cheap to clone: the certificate, the key and the built configuration are shared.
/// TLS 1.3 only unless [`allow_tls12`](Self::allow_tls12) is set; no client authentication.
///
/// ```
/// use pool_tls::ServerTls;
/// let tls = ServerTls::self_signed(["localhost", "127.0.0.1"]).unwrap();
/// let config = tls.config().unwrap();
/// println!("pin the client to {}", tls.fingerprint());
/// # drop(config);
/// ```
#[derive(Clone)]
pub struct ServerTls {
    chain: Arc<[CertificateDer<'static>]>,
    key: Arc<PrivateKeyDer<'static>>,
    tls12: bool,
    cache: Arc<OnceLock<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// A fresh self-signed certificate (ECDSA P-256, generated with rcgen) for `names`.
    ///
    /// Each name is a DNS name or an IP address literal; an IP literal becomes an IP
    /// subject alternative name. An empty list gives a certificate for `localhost`.
    /// The certificate is valid from 1975 to 4096, so clocks do not matter.
    ///
    /// # Errors
    ///
    /// [`TlsError::CertGen`] if a name cannot be put in a certificate.
    pub fn self_signed<I, S>(names: I) -> Result<Self, TlsError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty() {
            names.push("localhost".to_owned());
        }
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(names.clone())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        params.is_ca = rcgen::IsCa::NoCa;
        let cert = params.self_signed(&key)?;
        Self::from_der(vec![cert.der().to_vec()], key.serialize_der())
    }

    /// The certificate chain (leaf first) and private key from PEM files.
    ///
    /// The key may be PKCS#8, PKCS#1 (RSA) or SEC1 (EC); the first key in the file is used.
    /// Both may be in the same file.
    ///
    /// # Errors
    ///
    /// Each error names its file: [`TlsError::Io`] if a file is missing or unreadable,
    /// [`TlsError::NoCertificate`] / [`TlsError::NoPrivateKey`] if it holds no
    /// certificate / key, [`TlsError::BadPem`] if the PEM is malformed, the key is not
    /// usable, or it does not match the certificate.
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert.as_ref(), key.as_ref());
        let chain = pem::read_certs(cert_path)?;
        let key = pem::read_key(key_path)?;
        Self::checked(chain, key).map_err(|e| match e {
            TlsError::Rustls(e) => TlsError::BadPem {
                path: key_path.to_owned(),
                reason: format!(
                    "private key unusable with the certificate in {}: {e}",
                    cert_path.display()
                ),
            },
            e => e,
        })
    }

    /// The certificate chain (DER, leaf first) and PKCS#8 private key (DER).
    ///
    /// # Errors
    ///
    /// [`TlsError::Rustls`] if the chain is empty, the key cannot be loaded, or the key
    /// does not match the leaf certificate.
    pub fn from_der(chain: Vec<Vec<u8>>, key_der: Vec<u8>) -> Result<Self, TlsError> {
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
        Self::checked(chain, key)
    }

    fn checked(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        if chain.is_empty() {
            return Err(rustls::Error::General("empty certificate chain".to_owned()).into());
        }
        // Loads the key and compares it with the leaf's public key.
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())?;
        Ok(Self {
            chain: chain.into(),
            key: Arc::new(key),
            tls12: false,
            cache: Arc::default(),
        })
    }

    /// Also accept TLS 1.2 (default: TLS 1.3 only).
    #[must_use]
    pub fn allow_tls12(mut self, on: bool) -> Self {
        if on != self.tls12 {
            self.tls12 = on;
            self.cache = Arc::default();
        }
        self
    }

    /// The SHA-256 fingerprint of the leaf certificate, to [pin](crate::ClientTlsBuilder::pin)
    /// on mode-1 clients.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.certificate_der())
    }

    /// The leaf certificate, DER-encoded.
    #[must_use]
    pub fn certificate_der(&self) -> &[u8] {
        &self.chain[0]
    }

    /// The leaf certificate as PEM, e.g. for a mode-2 client to trust a self-signed
    /// certificate as its CA ([`ClientTlsBuilder::ca_file`](crate::ClientTlsBuilder::ca_file)).
    #[must_use]
    pub fn certificate_pem(&self) -> String {
        pem::encode_certificate(self.certificate_der())
    }

    /// The rustls server configuration (built once, then shared).
    ///
    /// # Errors
    ///
    /// [`TlsError::Rustls`] if rustls refuses the certificate or key.
    pub fn config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        if let Some(config) = self.cache.get() {
            return Ok(config.clone());
        }
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(protocol_versions(self.tls12))?
            .with_no_client_auth()
            .with_single_cert(self.chain.to_vec(), self.key.clone_key())?;
        let config = Arc::new(config);
        Ok(self.cache.get_or_init(|| config).clone())
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.chain.len())
            .field("tls12", &self.tls12)
            .finish_non_exhaustive()
    }
}
