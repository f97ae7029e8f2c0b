//! The error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while choosing a TLS mode or building a TLS configuration.
///
/// Every message names the offending value or file so it can be shown to a user as is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A TLS mode string was not one of the accepted spellings.
    #[error("invalid TLS mode {0:?}: expected 0 (off/plain), 1 (self-signed) or 2 (verified)")]
    BadMode(String),

    /// A certificate fingerprint was not 64 hexadecimal digits.
    #[error(
        "invalid certificate fingerprint {0:?}: expected a SHA-256 digest as 64 hex digits, \
         optionally separated by ':'"
    )]
    BadFingerprint(String),

    /// A host was neither a valid DNS name nor an IP address literal.
    #[error("invalid server name {0:?}: expected a DNS name or an IP address")]
    BadHostname(String),

    /// A file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file that should hold PEM certificates holds none.
    #[error("no PEM certificate (BEGIN CERTIFICATE) found in {}", path.display())]
    NoCertificate {
        /// The file that was searched.
        path: PathBuf,
    },

    /// A file that should hold a PEM private key holds none.
    #[error(
        "no PEM private key (PKCS#8, PKCS#1 or SEC1 \"BEGIN ... PRIVATE KEY\") found in {}",
        path.display()
    )]
    NoPrivateKey {
        /// The file that was searched.
        path: PathBuf,
    },

    /// A file holds malformed PEM, or its contents are unusable.
    #[error("bad PEM in {}: {reason}", path.display())]
    BadPem {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Mode 2 was asked for with no trusted root at all
    /// (web roots turned off and no CA given).
    #[error(
        "TLS mode 2 (verified) has no trusted root: give a CA file or certificate, \
         or enable the bundled web roots"
    )]
    NoTrustRoots,

    /// rustls refused a certificate, key or configuration.
    #[error("TLS error: {0}")]
    Rustls(#[from] rustls::Error),

    /// A tunnel key could not be made.
    #[error(transparent)]
    Key(#[from] crate::KeyError),

    /// Generating a certificate with rcgen failed.
    #[error("certificate generation failed: {0}")]
    CertGen(String),
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        Self::CertGen(e.to_string())
    }
}
