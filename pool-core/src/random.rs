//! The machines' own source of randomness.
//!
//! A machine draws every random number it needs (connection ids, a fresh id after a
//! collision, backoff jitter) from a generator it owns. The driver seeds it once, at
//! construction, from a secure source (`pool-tokio` uses the TLS provider's system
//! generator and refuses to build a pool when that fails); the core itself never asks
//! the operating system or a clock for randomness. This is quinn-proto's rule: decisions
//! that need random bytes stay inside the machine, so a driver has no retry loop, and a
//! test that fixes the seed replays the same ids.

use chacha20::rand_core::{Rng, SeedableRng};
use chacha20::ChaCha12Rng;

/// A generator a machine can draw from.
///
/// [`SeededRandom`] is the one to use. Tests may implement it to script the numbers a
/// machine sees (for example to force an id collision).
pub trait Random: Send {
    /// The next random number.
    fn next_u32(&mut self) -> u32;
}

/// ChaCha12 seeded once from 32 bytes of a secure source: unpredictable ids for as
/// long as the seed is secret, reproducible runs when a test fixes it.
///
/// ```
/// use pool_core::{Random, SeededRandom};
/// let mut a = SeededRandom::from_seed([7; 32]);
/// let mut b = SeededRandom::from_seed([7; 32]);
/// assert_eq!(a.next_u32(), b.next_u32());
/// ```
pub struct SeededRandom(ChaCha12Rng);

impl SeededRandom {
    /// A generator from a 32-byte seed. Take the seed from a secure source.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ChaCha12Rng::from_seed(seed))
    }
}

impl std::fmt::Debug for SeededRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeededRandom(..)")
    }
}

impl Random for SeededRandom {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
}

/// The generator a machine holds.
pub(crate) struct Entropy(Box<dyn Random>);

impl Entropy {
    pub(crate) fn new(r: impl Random + 'static) -> Self {
        Self(Box::new(r))
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }
}

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Entropy(..)")
    }
}
