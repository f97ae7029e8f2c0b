//! The shared tunnel key, made so that it resists guessing.
//!
//! A key is either random bytes (at least [`MIN_KEY_BYTES`]), or a passphrase of at
//! least [`MIN_PASSPHRASE_CHARS`] characters stretched once with PBKDF2. Short secrets
//! are refused rather than accepted quietly: whoever sees one tag made with the key
//! (a man in the middle the client dialed, see [`crate::proof`]) can test guesses
//! offline, as fast as they can compute HMACs.

use std::num::NonZeroU32;

use ring::{hmac, pbkdf2};

/// Fewest bytes a raw key may have: 128 bits, out of reach of exhaustive search.
pub const MIN_KEY_BYTES: usize = 16;

/// Fewest characters a passphrase may have.
pub const MIN_PASSPHRASE_CHARS: usize = 16;

/// Length of a generated key and of a key derived from a passphrase: 256 bits.
pub const KEY_LEN: usize = 32;

/// PBKDF2-HMAC-SHA256 iterations that stretch a passphrase into a key: OWASP's 2023
/// recommendation for PBKDF2-HMAC-SHA256.
///
/// Each guess at the passphrase then costs an attacker 600,000 HMAC-SHA256 instead of
/// one. It costs the pool the same once, when the key is made (a fraction of a second
/// on a current core, paid at start-up, never per connection). Changing it changes
/// every passphrase-derived key: both ends must agree.
pub const PBKDF2_ITERATIONS: u32 = 600_000;

const ITERATIONS: NonZeroU32 = match NonZeroU32::new(PBKDF2_ITERATIONS) {
    Some(n) => n,
    None => panic!("PBKDF2_ITERATIONS is zero"),
};

/// The PBKDF2 salt: fixed, for domain separation only. Both ends must derive the same
/// key from the same passphrase with no exchange, so the salt cannot be random; it
/// stops precomputed tables made for other programs from applying to this one.
pub const PBKDF2_SALT: &[u8] = b"nodepass-pool/key/v1";

/// Why a tunnel key could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A raw key had fewer than [`MIN_KEY_BYTES`] bytes.
    #[error(
        "tunnel key too short: {len} bytes, need at least {MIN_KEY_BYTES} random bytes \
         (128 bits) so that it cannot be guessed offline; `TunnelKey::generate` makes one"
    )]
    TooShort {
        /// How many bytes were given.
        len: usize,
    },

    /// A hex key was malformed or too short.
    #[error("invalid hex tunnel key: {reason}")]
    BadHex {
        /// What is wrong with it.
        reason: String,
    },

    /// A passphrase had fewer than [`MIN_PASSPHRASE_CHARS`] characters.
    #[error(
        "tunnel passphrase too short: {chars} characters, need at least \
         {MIN_PASSPHRASE_CHARS}: anyone who sees one proof made with it can test guesses \
         offline, so a short passphrase falls to a dictionary; use a long passphrase or a \
         random key (`TunnelKey::generate`)"
    )]
    WeakPassphrase {
        /// How many characters were given.
        chars: usize,
    },

    /// The system's secure random generator failed.
    #[error("the system's secure random generator failed")]
    Rng,

    /// A raw key that cannot have come from a random source: all zeros, one byte
    /// repeated, a short pattern (fewer distinct byte values than half its length).
    #[error(
        "tunnel key does not look random: {distinct} distinct byte values in {len} bytes \
         (all zeros, a repeated byte or pattern); generate one with `TunnelKey::generate` \
         (the server prints it), or use a long passphrase"
    )]
    LowEntropy {
        /// Distinct byte values in the key.
        distinct: usize,
        /// Its length in bytes.
        len: usize,
    },
}

/// A secret both ends of a tunnel share. With it, every pooled connection runs a mutual
/// challenge-response right after its id ([`crate::proof`]), so a stranger who reaches
/// the tunnel port never enters the server's pool.
///
/// Make one with [`generate`](Self::generate) (and print it once with
/// [`to_hex`](Self::to_hex)), [`from_hex`](Self::from_hex), [`from_bytes`](Self::from_bytes),
/// [`from_passphrase`](Self::from_passphrase), or [`parse`](Self::parse) for user input.
/// Its `Debug` form never shows the key.
///
/// ```
/// use pool_tls::TunnelKey;
/// let key = TunnelKey::generate().unwrap();
/// let same = TunnelKey::from_hex(&key.to_hex()).unwrap();
/// assert_eq!(format!("{same:?}"), "TunnelKey(..)");
/// assert!(TunnelKey::from_passphrase("hunter2").is_err());
/// ```
#[derive(Clone)]
pub struct TunnelKey {
    raw: Vec<u8>,
    hmac: hmac::Key,
}

/// The raw bytes are wiped when the key is dropped. (ring's HMAC key keeps its own
/// derived state, which ring does not let a caller wipe.)
impl Drop for TunnelKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.raw);
    }
}

impl std::fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelKey(..)")
    }
}

impl TunnelKey {
    fn raw(bytes: &[u8]) -> Self {
        Self {
            raw: bytes.to_vec(),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// A key from random bytes: at least [`MIN_KEY_BYTES`] (128 bits).
    ///
    /// The bytes must come from a secure random source; a word typed by a person belongs
    /// in [`from_passphrase`](Self::from_passphrase), which stretches it.
    ///
    /// Bytes that cannot be random are refused ([`KeyError::LowEntropy`]): fewer distinct
    /// byte values than half the length (all zeros, `abab...`, a counter). Random
    /// bytes fail that with a chance far below one in 2^64.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort { len: bytes.len() });
        }
        let mut seen = [false; 256];
        for &b in bytes {
            seen[usize::from(b)] = true;
        }
        let distinct = seen.iter().filter(|s| **s).count();
        if distinct < bytes.len() / 2 {
            return Err(KeyError::LowEntropy {
                distinct,
                len: bytes.len(),
            });
        }
        Ok(Self::raw(bytes))
    }

    /// A key from hexadecimal digits (either case, an even number, at least
    /// `2 * MIN_KEY_BYTES` = 32 of them), as [`to_hex`](Self::to_hex) prints it.
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        let bad = |reason: String| KeyError::BadHex { reason };
        if let Some((i, c)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(bad(format!("{c:?} at byte {i} is not a hex digit")));
        }
        if !hex.len().is_multiple_of(2) {
            return Err(bad(format!("odd number of hex digits ({})", hex.len())));
        }
        if hex.len() < 2 * MIN_KEY_BYTES {
            return Err(bad(format!(
                "{} hex digits, need at least {} (128 bits)",
                hex.len(),
                2 * MIN_KEY_BYTES
            )));
        }
        let bytes: zeroize::Zeroizing<Vec<u8>> = zeroize::Zeroizing::new(
            hex.as_bytes()
                .chunks_exact(2)
                .map(|p| (nibble(p[0]) << 4) | nibble(p[1]))
                .collect(),
        );
        Self::from_bytes(&bytes)
    }

    /// A key stretched from a passphrase of at least [`MIN_PASSPHRASE_CHARS`]
    /// characters: PBKDF2-HMAC-SHA256 over its UTF-8 bytes, salt [`PBKDF2_SALT`],
    /// [`PBKDF2_ITERATIONS`] iterations, [`KEY_LEN`] bytes out.
    ///
    /// This takes a noticeable moment on purpose (each attacker guess costs the same):
    /// make the key once at start-up and clone it.
    pub fn from_passphrase(passphrase: &str) -> Result<Self, KeyError> {
        let chars = passphrase.chars().count();
        if chars < MIN_PASSPHRASE_CHARS {
            return Err(KeyError::WeakPassphrase { chars });
        }
        let mut out = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            ITERATIONS,
            PBKDF2_SALT,
            passphrase.as_bytes(),
            &mut *out,
        );
        Ok(Self::raw(&*out))
    }

    /// A key from what a user typed: a string of at least 32 characters that are all
    /// hex digits is a raw key ([`from_hex`](Self::from_hex), so an odd count of them is
    /// an error rather than a passphrase); anything else is a passphrase
    /// ([`from_passphrase`](Self::from_passphrase)). The string is used as is, with no
    /// trimming.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        if s.len() >= 2 * MIN_KEY_BYTES && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Self::from_hex(s)
        } else {
            Self::from_passphrase(s)
        }
    }

    /// A fresh 256-bit key from the crypto provider's secure random generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut out = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        fill_random(&mut *out)?;
        Ok(Self::raw(&*out))
    }

    /// The key as lowercase hex, to show once to a user who must copy it to the other
    /// end. For a passphrase key this is the derived key, equivalent to the passphrase.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.raw.len() * 2);
        for b in &self.raw {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
    }

    pub(crate) fn hmac_key(&self) -> &hmac::Key {
        &self.hmac
    }
}

/// Fills `out` from the crypto provider's secure random generator.
pub(crate) fn fill_random(out: &mut [u8]) -> Result<(), KeyError> {
    crate::provider()
        .secure_random
        .fill(out)
        .map_err(|_| KeyError::Rng)
}

/// The value of one ASCII hex digit (checked by the caller).
fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_keys_need_128_bits() {
        assert_eq!(
            TunnelKey::from_bytes(&[7; 15]).unwrap_err(),
            KeyError::TooShort { len: 15 }
        );
        let random_looking: [u8; 16] = std::array::from_fn(|i| 7 * i as u8 + 3);
        assert!(TunnelKey::from_bytes(&random_looking).is_ok());
        let e = TunnelKey::from_bytes(b"").unwrap_err().to_string();
        assert!(e.contains("at least 16") && e.contains("128 bits"), "{e}");
    }

    #[test]
    fn keys_that_cannot_be_random_are_refused() {
        for bad in [
            "0".repeat(64),
            "ab".repeat(32),
            "0123".repeat(16),
            "00".repeat(16),
        ] {
            let e = TunnelKey::parse(&bad).unwrap_err();
            assert!(matches!(e, KeyError::LowEntropy { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("does not look random"), "{e}");
        }
        assert_eq!(
            TunnelKey::from_bytes(&[7; 16]).unwrap_err(),
            KeyError::LowEntropy {
                distinct: 1,
                len: 16
            }
        );
        // Generated keys always pass.
        for _ in 0..100 {
            let k = TunnelKey::generate().unwrap();
            assert!(TunnelKey::from_hex(&k.to_hex()).is_ok());
        }
    }

    #[test]
    fn hex_keys_round_trip_and_bad_hex_says_why() {
        let hex = "00112233445566778899aabbccddeeff";
        let k = TunnelKey::from_hex(hex).unwrap();
        assert_eq!(k.to_hex(), hex);
        assert_eq!(
            TunnelKey::from_hex(&hex.to_uppercase()).unwrap().to_hex(),
            hex
        );
        for (bad, why) in [
            (&hex[..30], "need at least 32"),
            (&hex[..31], "odd number"),
            ("00112233445566778899aabbccddeefg", "not a hex digit"),
            (" 00112233445566778899aabbccddeeff", "not a hex digit"),
        ] {
            let e = TunnelKey::from_hex(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn short_passphrases_are_refused_with_the_reason() {
        let e = TunnelKey::from_passphrase("correct horse").unwrap_err();
        assert_eq!(e, KeyError::WeakPassphrase { chars: 13 });
        assert!(e.to_string().contains("offline"), "{e}");
        // Characters, not bytes: 15 two-byte characters are still too few.
        assert!(TunnelKey::from_passphrase(&"é".repeat(15)).is_err());
        assert!(TunnelKey::parse("s3cret").is_err());
    }

    #[test]
    fn a_passphrase_is_stretched_with_pbkdf2() {
        let pass = "correct horse battery staple";
        let k = TunnelKey::from_passphrase(pass).unwrap();
        let mut want = [0u8; KEY_LEN];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(600_000).unwrap(),
            b"nodepass-pool/key/v1",
            pass.as_bytes(),
            &mut want,
        );
        assert_eq!(k.raw, want);
        // Computed independently (Python's hashlib.pbkdf2_hmac); also in PROTOCOL.md.
        assert_eq!(
            k.to_hex(),
            "4a46b99ad314576c80b4c5451ae824424769c96ac6876821293551d123f5a34b"
        );
        assert_eq!(TunnelKey::parse(pass).unwrap().raw, want);
        assert_ne!(
            TunnelKey::from_passphrase("correct horse battery stapler")
                .unwrap()
                .raw,
            want
        );
    }

    #[test]
    fn parse_takes_long_hex_as_a_raw_key() {
        let hex = "ffeeddccbbaa99887766554433221100";
        assert_eq!(TunnelKey::parse(hex).unwrap().to_hex(), hex);
        // 31 hex digits are a (long enough) passphrase; 33 an error, not a passphrase.
        assert_eq!(TunnelKey::parse(&hex[..31]).unwrap().raw.len(), KEY_LEN);
        assert!(matches!(
            TunnelKey::parse(&format!("{hex}0")),
            Err(KeyError::BadHex { .. })
        ));
    }

    #[test]
    fn generated_keys_are_256_bits_fresh_and_never_printed() {
        let a = TunnelKey::generate().unwrap();
        let b = TunnelKey::generate().unwrap();
        assert_eq!(a.to_hex().len(), 2 * KEY_LEN);
        assert_ne!(a.to_hex(), b.to_hex());
        let shown = format!("{a:?} {a:#?}");
        assert!(!shown.contains(&a.to_hex()[..8]), "{shown}");
    }
}
