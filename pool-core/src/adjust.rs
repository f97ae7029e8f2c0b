//! The interval and capacity policies (DESIGN.md section 4).
//!
//! The defaults reproduce the Go package v1.0.6 decision for decision, in integer
//! arithmetic: `idle < capacity * 2 / 10` (integer division) means starved, `idle >
//! capacity * 8 / 10` means full; a round that created fewer than a fifth of the
//! capacity shrinks it by one, more than four fifths grows it by one.

use std::time::Duration;

use crate::error::ConfigError;

/// A threshold `num / den` between 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fraction {
    /// Numerator.
    pub num: u32,
    /// Denominator, not zero.
    pub den: u32,
}

impl Fraction {
    /// `num / den`.
    pub const fn new(num: u32, den: u32) -> Self {
        Self { num, den }
    }

    /// `floor(n * self)`, the Go package's `int(float64(n) * 0.2)`.
    fn of(self, n: usize) -> u128 {
        n as u128 * u128::from(self.num) / u128::from(self.den.max(1))
    }

    /// Whether `part / whole < self`, exactly.
    fn ratio_lt(self, part: usize, whole: usize) -> bool {
        (part as u128) * u128::from(self.den) < (whole as u128) * u128::from(self.num)
    }

    /// Whether `part / whole > self`, exactly.
    fn ratio_gt(self, part: usize, whole: usize) -> bool {
        (part as u128) * u128::from(self.den) > (whole as u128) * u128::from(self.num)
    }

    fn check(self, what: &'static str) -> Result<(), ConfigError> {
        if self.den == 0 || self.num > self.den {
            return Err(ConfigError::BadThreshold {
                what,
                reason: format!("{}/{} is not between 0 and 1", self.num, self.den),
            });
        }
        Ok(())
    }

    fn le(self, other: Self) -> bool {
        u64::from(self.num) * u64::from(other.den) <= u64::from(other.num) * u64::from(self.den)
    }
}

/// Moves the refill interval by the fill level of the idle pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IntervalPolicy {
    /// Below `capacity * low` idle connections the pool is starved: refill faster.
    /// Default 2/10.
    pub low: Fraction,
    /// Above `capacity * high` idle connections the pool is full: refill slower.
    /// Default 8/10.
    pub high: Fraction,
    /// How far one round moves the interval. Default 100 ms.
    pub step: Duration,
}

impl Default for IntervalPolicy {
    fn default() -> Self {
        Self {
            low: Fraction::new(2, 10),
            high: Fraction::new(8, 10),
            step: Duration::from_millis(100),
        }
    }
}

impl IntervalPolicy {
    /// The interval for the next round.
    ///
    /// ```
    /// use pool_core::IntervalPolicy;
    /// use std::time::Duration;
    /// let ms = Duration::from_millis;
    /// let p = IntervalPolicy::default();
    /// // 1 idle of 64 is starved: step down, but not below the minimum.
    /// assert_eq!(p.next(ms(500), 1, 64, ms(100), ms(1000)), ms(400));
    /// assert_eq!(p.next(ms(150), 1, 64, ms(100), ms(1000)), ms(100));
    /// // 60 idle of 64 is full: step up.
    /// assert_eq!(p.next(ms(500), 60, 64, ms(100), ms(1000)), ms(600));
    /// ```
    pub fn next(
        &self,
        interval: Duration,
        idle: usize,
        capacity: usize,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let mut out = interval;
        if (idle as u128) < self.low.of(capacity) && out > min {
            out = out.saturating_sub(self.step).max(min);
        }
        if (idle as u128) > self.high.of(capacity) && out < max {
            out = out.saturating_add(self.step).min(max);
        }
        out
    }

    /// Checks the thresholds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.low.check("interval low")?;
        self.high.check("interval high")?;
        if !self.low.le(self.high) {
            return Err(ConfigError::BadThreshold {
                what: "interval",
                reason: "low threshold above high threshold".into(),
            });
        }
        if self.step.is_zero() {
            return Err(ConfigError::ZeroDuration {
                what: "interval step",
            });
        }
        Ok(())
    }
}

/// Moves the capacity by how much of it the last round had to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CapacityPolicy {
    /// A round that created less than `capacity * low` shrinks the capacity. Default 2/10.
    pub low: Fraction,
    /// A round that created more than `capacity * high` grows it. Default 8/10.
    pub high: Fraction,
    /// How far one round moves the capacity. Default 1.
    pub step: usize,
}

impl Default for CapacityPolicy {
    fn default() -> Self {
        Self {
            low: Fraction::new(2, 10),
            high: Fraction::new(8, 10),
            step: 1,
        }
    }
}

impl CapacityPolicy {
    /// The capacity after a round that created `created` connections.
    ///
    /// ```
    /// use pool_core::CapacityPolicy;
    /// let p = CapacityPolicy::default();
    /// assert_eq!(p.next(64, 0, 16, 1024), 63);   // nothing needed: shrink
    /// assert_eq!(p.next(64, 60, 16, 1024), 65);  // nearly all drained: grow
    /// assert_eq!(p.next(16, 0, 16, 1024), 16);   // at the minimum: stay
    /// ```
    pub fn next(&self, capacity: usize, created: usize, min: usize, max: usize) -> usize {
        let mut out = capacity;
        if capacity == 0 {
            return min.max(1).min(max.max(1));
        }
        if self.low.ratio_lt(created, capacity) && out > min {
            out = out.saturating_sub(self.step).max(min);
        }
        if self.high.ratio_gt(created, capacity) && out < max {
            out = out.saturating_add(self.step).min(max);
        }
        out
    }

    /// Checks the thresholds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.low.check("capacity low")?;
        self.high.check("capacity high")?;
        if !self.low.le(self.high) {
            return Err(ConfigError::BadThreshold {
                what: "capacity",
                reason: "low threshold above high threshold".into(),
            });
        }
        if self.step == 0 {
            return Err(ConfigError::Zero {
                what: "capacity step",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The Go package v1.0.6 rules, transcribed with its float arithmetic.
    fn go_interval(
        interval: Duration,
        idle: usize,
        cap: usize,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let step = Duration::from_millis(100);
        let mut iv = interval;
        if (idle as i64) < ((cap as f64) * 0.2) as i64 && iv > min {
            iv = iv.saturating_sub(step);
            if iv < min {
                iv = min;
            }
        }
        if (idle as i64) > ((cap as f64) * 0.8) as i64 && iv < max {
            iv += step;
            if iv > max {
                iv = max;
            }
        }
        iv
    }

    fn go_capacity(cap: usize, created: usize, min: usize, max: usize) -> usize {
        let ratio = created as f64 / cap as f64;
        let mut c = cap;
        if ratio < 0.2 && c > min {
            c -= 1;
        }
        if ratio > 0.8 && c < max {
            c += 1;
        }
        c
    }

    fn bounds_ms() -> impl Strategy<Value = (Duration, Duration, Duration)> {
        (1u64..5_000, 1u64..5_000, 0u64..6_000).prop_map(|(a, b, x)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let ms = Duration::from_millis;
            (ms(lo), ms(hi), ms(x.clamp(lo, hi)))
        })
    }

    fn bounds_cap() -> impl Strategy<Value = (usize, usize, usize)> {
        (1usize..2_000, 1usize..2_000, 1usize..2_000).prop_map(|(a, b, x)| {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            (lo, hi, x.clamp(lo, hi))
        })
    }

    fn fraction_pair() -> impl Strategy<Value = (Fraction, Fraction)> {
        (1u32..100, 0u32..=100, 0u32..=100).prop_map(|(den, a, b)| {
            let a = a * den / 100;
            let b = b * den / 100;
            (Fraction::new(a.min(b), den), Fraction::new(a.max(b), den))
        })
    }

    proptest! {
        #[test]
        fn default_interval_equals_go((min, max, iv) in bounds_ms(), idle in 0usize..3_000, cap in 1usize..3_000) {
            prop_assert_eq!(IntervalPolicy::default().next(iv, idle, cap, min, max), go_interval(iv, idle, cap, min, max));
        }

        #[test]
        fn default_capacity_equals_go((min, max, cap) in bounds_cap(), created in 0usize..3_000) {
            prop_assert_eq!(CapacityPolicy::default().next(cap, created, min, max), go_capacity(cap, created, min, max));
        }

        #[test]
        fn interval_laws((min, max, iv) in bounds_ms(), idle in 0usize..3_000, cap in 1usize..3_000,
                         (low, high) in fraction_pair(), step_ms in 1u64..1_000, default in any::<bool>()) {
            let p = if default { IntervalPolicy::default() } else {
                IntervalPolicy { low, high, step: Duration::from_millis(step_ms) }
            };
            let next = p.next(iv, idle, cap, min, max);
            prop_assert!(next >= min && next <= max, "out of bounds");
            let moved = next.abs_diff(iv);
            prop_assert!(moved <= p.step, "moved more than a step");
            if (idle as u128) < p.low.of(cap) && (idle as u128) <= p.high.of(cap) {
                prop_assert!(next <= iv, "rose while starved");
            }
            if (idle as u128) > p.high.of(cap) && (idle as u128) >= p.low.of(cap) {
                prop_assert!(next >= iv, "fell while full");
            }
            if iv == min && idle as u128 >= p.low.of(cap) { prop_assert!(next >= min); }
        }

        #[test]
        fn capacity_laws((min, max, cap) in bounds_cap(), created in 0usize..3_000,
                         (low, high) in fraction_pair(), default in any::<bool>()) {
            let p = if default { CapacityPolicy::default() } else { CapacityPolicy { low, high, step: 1 } };
            let next = p.next(cap, created, min, max);
            prop_assert!(next >= min && next <= max);
            prop_assert!(next.abs_diff(cap) <= 1);
            if cap == min { prop_assert!(next >= min); }
            if cap == max { prop_assert!(next <= max); }
        }
    }

    #[test]
    fn thresholds_are_checked() {
        let bad = IntervalPolicy {
            low: Fraction::new(9, 10),
            ..IntervalPolicy::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::BadThreshold { .. })
        ));
        let bad = CapacityPolicy {
            low: Fraction::new(1, 0),
            ..CapacityPolicy::default()
        };
        assert!(bad.validate().is_err());
        assert!(IntervalPolicy::default().validate().is_ok());
        assert!(CapacityPolicy::default().validate().is_ok());
    }
}
