//! The TLS mode selector.

use std::fmt;
use std::str::FromStr;

use crate::TlsError;

/// Which kind of TLS a pool connection uses.
///
/// Parsed from the same strings as the Go package's `tlsCode` (`"0"`, `"1"`, `"2"`),
/// plus readable names; see the [`FromStr`] implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum TlsMode {
    /// Mode 0: plain TCP, no TLS.
    #[default]
    Off,
    /// Mode 1: TLS 1.3 with a self-signed server certificate; the client does not verify
    /// the certificate (unless a [`Fingerprint`](crate::Fingerprint) pin is given).
    SelfSigned,
    /// Mode 2: TLS 1.3 with the certificate chain and host name verified against trusted roots.
    Verified,
}

impl TlsMode {
    /// The numeric code of the mode: 0, 1 or 2.
    #[must_use]
    pub fn code(self) -> u8 {
        match self {
            Self::Off => 0,
            Self::SelfSigned => 1,
            Self::Verified => 2,
        }
    }

    /// Whether this mode uses TLS at all.
    #[must_use]
    pub fn is_tls(self) -> bool {
        self != Self::Off
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

impl FromStr for TlsMode {
    type Err = TlsError;

    /// Accepts, case-insensitively and ignoring surrounding white space:
    ///
    /// - `0`, `off`, `none`, `plain` for [`TlsMode::Off`];
    /// - `1`, `self-signed`, `selfsigned`, `insecure` for [`TlsMode::SelfSigned`];
    /// - `2`, `verified`, `verify` for [`TlsMode::Verified`].
    ///
    /// Anything else is [`TlsError::BadMode`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "off" | "none" | "plain" => Ok(Self::Off),
            "1" | "self-signed" | "selfsigned" | "insecure" => Ok(Self::SelfSigned),
            "2" | "verified" | "verify" => Ok(Self::Verified),
            _ => Err(TlsError::BadMode(s.to_owned())),
        }
    }
}
