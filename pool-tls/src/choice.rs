//! TLS as one choice per pool end: what a pool is told, with nothing that can
//! contradict itself (a pin exists only in mode 1, trusted roots only in mode 2).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::ServerName;

use crate::{server_name, ClientTlsBuilder, Fingerprint, ServerTls, TlsError, TlsMode};

/// How a client pool speaks TLS. Default [`Off`](Self::Off).
///
/// ```
/// use pool_tls::{ClientTls, Roots};
/// let tls = ClientTls::Verified { roots: Roots::Web, name: Some("tunnel.example".into()) };
/// assert!(tls.build().unwrap().is_some());
/// assert!(ClientTls::Off.build().unwrap().is_none());
/// ```
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum ClientTls {
    /// Plain TCP (Go: `tlsCode` 0).
    #[default]
    Off,
    /// TLS 1.3 to a server with a self-signed certificate (Go: `tlsCode` 1): the
    /// certificate is not verified, unless `pin` names its SHA-256 fingerprint, and
    /// then only that certificate is accepted ([`DangerousNoVerify`](crate::DangerousNoVerify)).
    SelfSigned {
        /// The only certificate to accept; `None` accepts any (encrypted, not
        /// authenticated).
        pin: Option<Fingerprint>,
        /// The server name sent (SNI); `None`: the server's IP address.
        name: Option<String>,
    },
    /// TLS 1.3 with the chain and the server name verified (Go: `tlsCode` 2).
    Verified {
        /// The roots the chain must lead to.
        roots: Roots,
        /// The name the certificate must carry, sent as SNI; `None`: the server's IP
        /// address.
        name: Option<String>,
    },
    /// A rustls client configuration of your own: what it verifies is its business.
    Custom {
        /// The configuration.
        config: Arc<rustls::ClientConfig>,
        /// The server name; `None`: the server's IP address.
        name: Option<String>,
    },
}

/// What a verified (mode 2) client trusts.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Roots {
    /// The bundled Mozilla roots (`webpki-roots`).
    #[default]
    Web,
    /// The CA certificates of this PEM file, and no others.
    CaFile(PathBuf),
    /// This DER-encoded CA certificate, and no other (handy in tests with `TestCa`).
    CaDer(Vec<u8>),
}

impl From<TlsMode> for ClientTls {
    /// The mode with its defaults: no pin, the bundled roots, the IP address as name.
    fn from(mode: TlsMode) -> Self {
        match mode {
            TlsMode::Off => Self::Off,
            TlsMode::SelfSigned => Self::SelfSigned {
                pin: None,
                name: None,
            },
            TlsMode::Verified => Self::Verified {
                roots: Roots::Web,
                name: None,
            },
        }
    }
}

impl ClientTls {
    /// Whether TLS is on.
    pub fn is_on(&self) -> bool {
        !matches!(self, Self::Off)
    }

    /// The rustls configuration and the server name to send (`None`: the peer's IP
    /// address); `None` for [`Off`](Self::Off).
    ///
    /// # Errors
    ///
    /// A name that is neither a DNS name nor an IP address
    /// ([`TlsError::BadHostname`]); in mode 2, roots that cannot be read or hold no
    /// certificate (see [`ClientTlsBuilder::build`]).
    #[allow(clippy::type_complexity)]
    pub fn build(
        &self,
    ) -> Result<Option<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>)>, TlsError> {
        let (config, name) = match self {
            Self::Off => return Ok(None),
            Self::SelfSigned { pin, name } => {
                let mut b = ClientTlsBuilder::new(TlsMode::SelfSigned);
                if let Some(fp) = pin {
                    b = b.pin(*fp);
                }
                (b.build()?, name)
            }
            Self::Verified { roots, name } => {
                let b = ClientTlsBuilder::new(TlsMode::Verified);
                let b = match roots {
                    Roots::Web => b,
                    Roots::CaFile(path) => b.ca_file(path.clone()),
                    Roots::CaDer(der) => b.ca_der(der.clone()),
                };
                (b.build()?, name)
            }
            Self::Custom { config, name } => (Some(config.clone()), name),
        };
        let name = match name.as_deref() {
            Some(n) if !n.is_empty() => Some(server_name(n)?),
            _ => None,
        };
        Ok(config.map(|c| (c, name)))
    }
}

impl ClientTls {
    /// This choice for a transport that always encrypts (QUIC, HTTP/2):
    /// [`Off`](Self::Off) is taken as [`SelfSigned`](Self::SelfSigned) with no pin, as
    /// the Go pools take code 0 there.
    pub fn encrypted(self) -> Self {
        match self {
            Self::Off => TlsMode::SelfSigned.into(),
            tls => tls,
        }
    }

    /// [`build`](Self::build), offering the transport's ALPN protocols (`h2`,
    /// `np-quic`) in place of any the configuration had.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    #[allow(clippy::type_complexity)]
    pub fn build_alpn(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Option<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>)>, TlsError> {
        Ok(self.build()?.map(|(c, name)| {
            let mut c = Arc::unwrap_or_clone(c);
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            (Arc::new(c), name)
        }))
    }
}

/// How a server pool speaks TLS. Default [`Off`](Self::Off).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum ServeTls {
    /// Plain TCP (Go: `tlsCode` 0).
    #[default]
    Off,
    /// A self-signed certificate generated for these names when the pool is built
    /// (Go: `tlsCode` 1). A client pins it with the pool's fingerprint.
    SelfSigned {
        /// The names on the certificate; usually `["localhost"]`.
        names: Vec<String>,
    },
    /// This certificate (Go: `tlsConfig`, `tlsCode` 2 with a CA-issued one).
    Cert(ServerTls),
    /// A rustls server configuration of your own.
    Custom(Arc<rustls::ServerConfig>),
}

impl ServeTls {
    /// A self-signed certificate for `localhost`, generated at build.
    pub fn self_signed() -> Self {
        Self::SelfSigned {
            names: vec!["localhost".into()],
        }
    }

    /// The rustls configuration and the fingerprint of the certificate served (none
    /// for a configuration of your own); `None` for [`Off`](Self::Off).
    ///
    /// # Errors
    ///
    /// A certificate that cannot be generated or loaded.
    #[allow(clippy::type_complexity)]
    pub fn build(
        &self,
    ) -> Result<Option<(Arc<rustls::ServerConfig>, Option<Fingerprint>)>, TlsError> {
        Ok(match self {
            Self::Off => None,
            Self::SelfSigned { names } => {
                let cert = ServerTls::self_signed(names.iter().cloned())?;
                Some((cert.config()?, Some(cert.fingerprint())))
            }
            Self::Cert(cert) => Some((cert.config()?, Some(cert.fingerprint()))),
            Self::Custom(c) => Some((c.clone(), None)),
        })
    }

    /// This choice for a transport that always encrypts (QUIC): [`Off`](Self::Off)
    /// is taken as [`self_signed`](Self::self_signed).
    pub fn encrypted(self) -> Self {
        match self {
            Self::Off => Self::self_signed(),
            tls => tls,
        }
    }

    /// [`build`](Self::build), offering the transport's ALPN protocols (`h2`,
    /// `np-quic`) in place of any the configuration had.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build).
    #[allow(clippy::type_complexity)]
    pub fn build_alpn(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Option<(Arc<rustls::ServerConfig>, Option<Fingerprint>)>, TlsError> {
        Ok(self.build()?.map(|(c, fp)| {
            let mut c = Arc::unwrap_or_clone(c);
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            (Arc::new(c), fp)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transport_that_always_encrypts_takes_off_as_self_signed_with_its_alpn() {
        let (client, name) = ClientTls::Off
            .encrypted()
            .build_alpn(&[b"h2"])
            .unwrap()
            .expect("encrypted");
        assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(name.is_none());
        assert!(ClientTls::Off.build_alpn(&[b"h2"]).unwrap().is_none());
        let (server, fp) = ServeTls::Off
            .encrypted()
            .build_alpn(&[b"np-quic"])
            .unwrap()
            .expect("encrypted");
        assert_eq!(server.alpn_protocols, vec![b"np-quic".to_vec()]);
        assert!(
            fp.is_some(),
            "a generated certificate has a fingerprint to pin"
        );
    }
}
