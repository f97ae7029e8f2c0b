//! An admission token: the first bytes a key holder sends on a connection, before TLS,
//! so the server can tell it from a stranger's connection before spending a handshake
//! slot on it.
//!
//! A server that must keep a slot for every connection that has not proved the key yet
//! can be flooded: strangers open connections faster than a real client, a round trip
//! away, can finish its proof, and every slot the client takes is evicted before it is
//! used. With a token the server needs no round trip to sort the connection: it reads a
//! few dozen bytes that arrive with the connection itself, and a valid token moves the
//! connection to slots that only key holders reach.
//!
//! # The token
//!
//! [`ADMIT_LEN`] bytes: `"NPA1" ‖ t ‖ N ‖ HMAC-SHA256(K, "nodepass-pool/admit/v1" ‖ C ‖ "NPA1" ‖ t ‖ N)`,
//! where `t` is the sender's clock in milliseconds since the Unix epoch (8 bytes, big
//! endian), `N` 16 fresh random bytes and `C` a context naming the use (so a token made
//! for one port is refused on another).
//!
//! # What it is not
//!
//! It is not the proof of the key. It carries no nonce of the server's, so it could be
//! replayed by someone who saw it; the receiver bounds that by refusing tokens whose
//! time is far from its own clock and remembering the nonces of the tokens it took
//! within that window (see [`ReplayWindow`]). A replayed token buys a protected slot at
//! most, never a session: the mutual proof with fresh nonces from both sides
//! ([`crate::proof`]) still follows.
//!
//! A passive observer sees the tag, which lets it test key guesses offline: harmless for
//! a random 256-bit key, and slowed by PBKDF2 for a passphrase ([`crate::TunnelKey`]).
//!
//! # Example
//!
//! ```
//! use pool_tls::admit::{check_token, make_token};
//! use pool_tls::TunnelKey;
//!
//! let key = TunnelKey::generate().unwrap();
//! let token = make_token(&key, b"control", 1_700_000_000_000).unwrap();
//! let ok = check_token(&key, b"control", &token).unwrap();
//! assert_eq!(ok.unix_ms, 1_700_000_000_000);
//! assert!(check_token(&key, b"another port", &token).is_err());
//! ```

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use ring::hmac;

use crate::key::fill_random;
use crate::proof::{ProofError, TAG_LEN};
use crate::{KeyError, TunnelKey};

/// The token's first bytes.
pub const ADMIT_MAGIC: [u8; 4] = *b"NPA1";
/// Bytes of the token's nonce.
pub const ADMIT_NONCE_LEN: usize = 16;
/// Length of a token.
pub const ADMIT_LEN: usize = ADMIT_MAGIC.len() + 8 + ADMIT_NONCE_LEN + TAG_LEN;
const LABEL: &[u8] = b"nodepass-pool/admit/v1";

/// What a valid token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admitted {
    /// The sender's clock when it made the token, ms since the Unix epoch.
    pub unix_ms: u64,
    /// The token's nonce, to refuse it a second time.
    pub nonce: [u8; ADMIT_NONCE_LEN],
}

fn signed(context: &[u8], head: &[u8]) -> Vec<u8> {
    [LABEL, context, head].concat()
}

/// A fresh token for `context`, stamped with `unix_ms`.
pub fn make_token(
    key: &TunnelKey,
    context: &[u8],
    unix_ms: u64,
) -> Result<[u8; ADMIT_LEN], KeyError> {
    let mut out = [0u8; ADMIT_LEN];
    let head = ADMIT_LEN - TAG_LEN;
    out[..4].copy_from_slice(&ADMIT_MAGIC);
    out[4..12].copy_from_slice(&unix_ms.to_be_bytes());
    fill_random(&mut out[12..head])?;
    let tag = hmac::sign(key.hmac_key(), &signed(context, &out[..head]));
    out[head..].copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Checks a token's form and tag (in constant time); the clock and the replay window
/// are the caller's ([`ReplayWindow::take`]).
pub fn check_token(
    key: &TunnelKey,
    context: &[u8],
    token: &[u8; ADMIT_LEN],
) -> Result<Admitted, ProofError> {
    let head = ADMIT_LEN - TAG_LEN;
    if token[..4] != ADMIT_MAGIC {
        return Err(ProofError::BadToken);
    }
    hmac::verify(
        key.hmac_key(),
        &signed(context, &token[..head]),
        &token[head..],
    )
    .map_err(|_| ProofError::BadToken)?;
    let mut t = [0u8; 8];
    t.copy_from_slice(&token[4..12]);
    let mut nonce = [0u8; ADMIT_NONCE_LEN];
    nonce.copy_from_slice(&token[12..head]);
    Ok(Admitted {
        unix_ms: u64::from_be_bytes(t),
        nonce,
    })
}

/// Why a valid token was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untaken {
    /// Its time is further from ours than the window: by this many ms (positive: the
    /// sender's clock is ahead).
    Skewed(i64),
    /// Its nonce was taken before.
    Replayed,
}

/// The receiver's memory of the tokens it took: a token is taken once, and only while
/// its time is within `window` of the receiver's clock. Bounded: at most `max` nonces
/// are remembered; when full, the oldest is forgotten early (only key holders make
/// tokens that reach it, so it fills only as fast as the real client reconnects).
#[derive(Debug)]
pub struct ReplayWindow {
    window_ms: u64,
    max: usize,
    order: VecDeque<(u64, [u8; ADMIT_NONCE_LEN])>,
    seen: HashSet<[u8; ADMIT_NONCE_LEN]>,
}

impl ReplayWindow {
    /// Tokens within `window` of the receiver's clock, at most `max` remembered.
    pub fn new(window: Duration, max: usize) -> Self {
        Self {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            max: max.max(1),
            order: VecDeque::new(),
            seen: HashSet::new(),
        }
    }

    /// Takes a checked token at the receiver's time `now_ms` (ms since the epoch).
    pub fn take(&mut self, token: Admitted, now_ms: u64) -> Result<(), Untaken> {
        let skew = i128::from(token.unix_ms) - i128::from(now_ms);
        if skew.unsigned_abs() > u128::from(self.window_ms) {
            let skew = i64::try_from(skew).unwrap_or(if skew < 0 { i64::MIN } else { i64::MAX });
            return Err(Untaken::Skewed(skew));
        }
        // Forget what left the window (judged by our clock: a token older than the
        // window is refused as skewed anyway).
        while let Some(&(at, nonce)) = self.order.front() {
            if at.saturating_add(2 * self.window_ms) > now_ms && self.order.len() < self.max {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&nonce);
        }
        if !self.seen.insert(token.nonce) {
            return Err(Untaken::Replayed);
        }
        self.order.push_back((now_ms, token.nonce));
        Ok(())
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> TunnelKey {
        TunnelKey::from_bytes(&std::array::from_fn::<u8, 32, _>(|i| {
            b.wrapping_add((i as u8).wrapping_mul(13))
        }))
        .unwrap()
    }

    #[test]
    fn only_the_key_and_context_it_was_made_for_accept_it() {
        let t = make_token(&key(1), b"c", 5).unwrap();
        assert_eq!(check_token(&key(1), b"c", &t).unwrap().unix_ms, 5);
        assert!(check_token(&key(2), b"c", &t).is_err());
        assert!(check_token(&key(1), b"d", &t).is_err());
        for i in 0..ADMIT_LEN {
            let mut bad = t;
            bad[i] ^= 1;
            assert!(check_token(&key(1), b"c", &bad).is_err(), "byte {i}");
        }
        let u = make_token(&key(1), b"c", 5).unwrap();
        assert_ne!(t, u, "fresh nonces");
    }

    #[test]
    fn a_token_is_taken_once_and_only_near_our_clock() {
        let k = key(1);
        let mut w = ReplayWindow::new(Duration::from_secs(10), 100);
        let now = 1_000_000;
        let t = check_token(&k, b"c", &make_token(&k, b"c", now - 9_000).unwrap()).unwrap();
        assert_eq!(w.take(t, now), Ok(()));
        assert_eq!(w.take(t, now + 1), Err(Untaken::Replayed));
        let late = check_token(&k, b"c", &make_token(&k, b"c", now - 10_001).unwrap()).unwrap();
        assert_eq!(w.take(late, now), Err(Untaken::Skewed(-10_001)));
        let ahead = check_token(&k, b"c", &make_token(&k, b"c", now + 20_000).unwrap()).unwrap();
        assert_eq!(w.take(ahead, now), Err(Untaken::Skewed(20_000)));
        // Once its time has left the window, a replay is refused as skewed.
        assert_eq!(w.take(t, now + 30_000), Err(Untaken::Skewed(-39_000)));
    }

    #[test]
    fn the_memory_is_bounded_and_forgets_the_oldest() {
        let k = key(1);
        let mut w = ReplayWindow::new(Duration::from_secs(10), 8);
        let now = 1_000_000;
        let tokens: Vec<_> = (0..20)
            .map(|_| check_token(&k, b"c", &make_token(&k, b"c", now).unwrap()).unwrap())
            .collect();
        for t in &tokens {
            assert_eq!(w.take(*t, now), Ok(()));
        }
        assert!(w.len() <= 8);
        assert_eq!(w.take(tokens[19], now), Err(Untaken::Replayed));
    }
}
