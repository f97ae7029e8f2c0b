//! The test kit's one seeded generator (splitmix64), so that every fault schedule and
//! every simulated run can be replayed from its seed without a `rand` dependency.

use std::time::Duration;

/// Sebastiano Vigna's splitmix64: 64 bits of state, one add and three mixes per draw.
/// Any seed works, zero included. Not cryptographic; good enough to pick faults,
/// latencies and payload bytes reproducibly. (The pool machines draw from their own
/// generator, `pool_core::SeededRandom`; the test kit seeds it from this one.)
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose whole future is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next 32 random bits (the high half of a draw).
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A number in `0..n` (`0` when `n == 0`). Multiply-shift, so no modulo bias worth
    /// mentioning at test sizes.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p` (clamped to `[0, 1]`). A probability of zero or less
    /// draws nothing, so a fault switched off leaves the rest of the run unchanged.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p.min(1.0)
    }

    /// A duration in `[lo, hi]`, to the microsecond (`lo` when `hi <= lo`).
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let span = u64::try_from((hi - lo).as_micros()).unwrap_or(u64::MAX - 1);
        lo + Duration::from_micros(self.below(span + 1))
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let r = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
    }

    /// A 32-byte seed for another generator (a machine's `pool_core::SeededRandom`).
    pub fn seed32(&mut self) -> [u8; 32] {
        let mut seed = [0; 32];
        self.fill(&mut seed);
        seed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::SplitMix64;

    #[test]
    fn known_first_outputs_and_replay() {
        // Reference values of splitmix64 seeded with 0.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        for _ in 0..1000 {
            assert!(a.below(7) < 7);
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
        }
    }

    #[test]
    fn ranges_and_chances() {
        let mut r = SplitMix64::new(7);
        let (lo, hi) = (Duration::from_millis(1), Duration::from_millis(20));
        for _ in 0..1000 {
            assert!((lo..=hi).contains(&r.between(lo, hi)));
            assert!(r.chance(1.0));
        }
        assert_eq!(r.between(hi, lo), hi);
        // No draw for a probability of zero: the stream is left as it was.
        let mut s = r.clone();
        assert!(!r.chance(0.0));
        assert_eq!(r.next_u64(), s.next_u64());
        assert_ne!(r.seed32(), [0; 32]);
    }
}
