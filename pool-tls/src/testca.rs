//! A throw-away certificate authority for testing mode 2.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::{Fingerprint, ServerTls, TlsError};

/// **Test helper**: an in-memory certificate authority for exercising mode 2
/// without real certificates.
///
/// Its private key lives only in memory and is generated on each [`new`](Self::new); never
/// use it to protect anything. Each `TestCa` has a distinct name, so a certificate from one
/// is reported as `UnknownIssuer` by a client trusting another.
///
/// ```
/// use pool_tls::{ClientTlsBuilder, TestCa, TlsMode};
/// let ca = TestCa::new().unwrap();
/// let server = ca.leaf(&["localhost", "127.0.0.1"], false).unwrap();
/// let client = ClientTlsBuilder::new(TlsMode::Verified).ca_der(ca.ca_der()).build().unwrap();
/// # drop((server, client));
/// ```
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new CA with a fresh ECDSA P-256 key.
    ///
    /// # Errors
    ///
    /// [`TlsError::CertGen`] if rcgen fails.
    pub fn new() -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let tag = Fingerprint::of(&key.public_key_der()).to_string();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("pool-tls test CA {}", &tag[..16]),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The CA certificate as PEM (write it to a file for
    /// [`ClientTlsBuilder::ca_file`](crate::ClientTlsBuilder::ca_file)).
    #[must_use]
    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate as DER (for [`ClientTlsBuilder::ca_der`](crate::ClientTlsBuilder::ca_der)).
    #[must_use]
    pub fn ca_der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// A server certificate signed by this CA for `names` (DNS names or IP literals).
    ///
    /// With `expired = false` it is valid from 1975 to 4096; with `expired = true` it
    /// was valid only during the year 2000, so verification fails with `Expired`.
    ///
    /// # Errors
    ///
    /// [`TlsError::CertGen`] if a name cannot be put in a certificate.
    pub fn leaf(&self, names: &[&str], expired: bool) -> Result<ServerTls, TlsError> {
        let key = KeyPair::generate()?;
        let owned: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
        let mut params = CertificateParams::new(owned)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("pool-tls test leaf"),
        );
        params.is_ca = IsCa::NoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        ServerTls::from_der(vec![cert.der().to_vec()], key.serialize_der())
    }
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa")
            .field("fingerprint", &Fingerprint::of(self.cert.der()))
            .finish_non_exhaustive()
    }
}
