//! TLS for the reverse-tunnel connection pool: mode selection, rustls client and server
//! configurations, self-signed certificates and certificate pinning.
//!
//! # Modes
//!
//! The pool speaks one of three modes, chosen by the same codes as the Go package
//! (see [`TlsMode`], parsed from `"0"`, `"1"`, `"2"` or readable names):
//!
//! | code | [`TlsMode`] | server | client |
//! |------|-------------|--------|--------|
//! | 0 | [`Off`](TlsMode::Off) | plain TCP | plain TCP ([`ClientTlsBuilder::build`] gives `None`) |
//! | 1 | [`SelfSigned`](TlsMode::SelfSigned) | a self-signed certificate ([`ServerTls::self_signed`]) | **no** certificate verification ([`DangerousNoVerify`]), optionally a SHA-256 [`Fingerprint`] pin |
//! | 2 | [`Verified`](TlsMode::Verified) | a CA-issued certificate ([`ServerTls::from_pem_files`]) | chain and host name verified against the bundled Mozilla roots and/or a given CA |
//!
//! Both sides use TLS 1.3 only unless TLS 1.2 is explicitly allowed
//! ([`ClientTlsBuilder::allow_tls12`], [`ServerTls::allow_tls12`]).
//!
//! # Why mode 1's verifier is called dangerous
//!
//! Mode 1 encrypts the connection but, without a pin, does not authenticate the server:
//! [`DangerousNoVerify`] accepts whatever certificate is presented, exactly like Go's
//! `InsecureSkipVerify`. A passive eavesdropper learns nothing, but an active man in the
//! middle can present its own certificate, terminate TLS, and read or change all traffic.
//! The name follows rustls, which puts such verifiers behind its `dangerous()` API so
//! that turning verification off is always a visible decision.
//!
//! The fix, without running a CA, is to pin: give the client the server's
//! [`ServerTls::fingerprint`] with [`ClientTlsBuilder::pin`], and every other certificate
//! is refused with `certificate pin mismatch: expected …, got …`. The handshake
//! signature is always checked, so the server must hold the pinned certificate's key.
//!
//! # Tunnel key
//!
//! A [`TunnelKey`] shared by both ends lets every pooled connection prove the key in a
//! mutual challenge-response right after its id ([`proof`]), bound to the TLS session in
//! modes 1 and 2, so that a stranger who reaches the tunnel port never enters the pool.
//! Keys that can be guessed are refused, passphrases are stretched with PBKDF2. The
//! bytes on the wire, the reasons for their order, and test vectors are in
//! `PROTOCOL.md` beside this crate's `Cargo.toml`, rendered here as [`protocol`]. The
//! HMACs and PBKDF2 come from `ring`.
//!
//! # Crypto provider
//!
//! All configurations use [`provider()`], the provider selected by this crate's features
//! (`ring`, the default), never the process-wide default provider, so installing (or not)
//! a default elsewhere in the program does not change this crate's behaviour.
//!
//! # Test support
//!
//! The `test-util` feature (off by default) adds `TestCa`, an in-memory certificate
//! authority for exercising mode 2 in tests. Enable it in `[dev-dependencies]` only.
//!
//! # Example
//!
//! ```
//! use pool_tls::{server_name, ClientTlsBuilder, ServerTls, TlsMode};
//!
//! let mode: TlsMode = "1".parse().unwrap();
//! let server = ServerTls::self_signed(["localhost"]).unwrap();
//! let server_config = server.config().unwrap();
//! let client_config = ClientTlsBuilder::new(mode)
//!     .pin(server.fingerprint())
//!     .build()
//!     .unwrap()
//!     .expect("mode 1 uses TLS");
//! let client = rustls::ClientConnection::new(client_config, server_name("localhost").unwrap());
//! # drop((server_config, client));
//! ```

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(not(feature = "ring"))]
compile_error!("pool-tls needs a crypto provider: enable the `ring` feature");

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::SupportedProtocolVersion;

pub mod admit;
mod choice;
mod client;
mod error;
mod fingerprint;
mod key;
mod mode;
mod pem;
pub mod proof;
mod records;
mod server;
#[cfg(feature = "test-util")]
mod testca;

pub use choice::{ClientTls, Roots, ServeTls};
pub use client::{server_name, ClientTlsBuilder, DangerousNoVerify};
pub use error::TlsError;
pub use fingerprint::Fingerprint;
pub use key::{
    KeyError, TunnelKey, KEY_LEN, MIN_KEY_BYTES, MIN_PASSPHRASE_CHARS, PBKDF2_ITERATIONS,
    PBKDF2_SALT,
};
pub use mode::TlsMode;
pub use proof::{fresh_nonce, tls_binding, ClientProof, ProofError, ServerProof};
pub use records::queued_records;
pub use server::ServerTls;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub use testca::TestCa;

#[doc = include_str!("../PROTOCOL.md")]
pub mod protocol {}

/// Re-export of `rustls`, so users name the same version this crate builds configs with.
pub use rustls;

/// The crypto provider selected by this crate's features (`ring`).
///
/// 32 bytes from the provider's secure generator: the seed a driver gives a pool-core
/// machine (`pool_core::SeededRandom::from_seed`). There is no fallback; a driver that
/// cannot seed must not build a pool whose ids could be guessed.
///
/// # Errors
///
/// [`KeyError::Rng`] when the system's generator fails.
pub fn secure_seed() -> Result<[u8; 32], KeyError> {
    let mut seed = [0u8; 32];
    key::fill_random(&mut seed)?;
    Ok(seed)
}

/// It is never the process default (`CryptoProvider::get_default`), and the same `Arc` is
/// returned on every call.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// TLS 1.3 only, or TLS 1.3 and 1.2.
fn protocol_versions(tls12: bool) -> &'static [&'static SupportedProtocolVersion] {
    static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    if tls12 {
        rustls::ALL_VERSIONS
    } else {
        TLS13_ONLY
    }
}
