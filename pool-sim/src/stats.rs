//! The workspace's statistics: quantiles and medians of measured samples, means with
//! 95 % intervals over seeds, and paired verdicts. The simulator's scoreboard, the test
//! kit's load generator and every benchmark binary compute their figures here, so a
//! median means the same thing in every table.
//!
//! A quantile is the nearest-rank sample: the `q` quantile of `n` sorted samples is the
//! one at index `round((n - 1) q)` (halves round up), so the median of an even count is
//! the upper of the two middle samples, and every quantile is a value that was measured.
//!
//! Every run of a scenario on a seed sees the same users whatever the policy (the
//! arrivals have a random stream of their own), so two policies are compared seed by
//! seed: the interval is that of the mean of the per-seed differences, which removes
//! the spread the seeds share (a busy seed is busy for both). The intervals are
//! Student-t intervals: with 5 seeds the half-width is 2.78 standard errors, with 2
//! seeds 12.7.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

/// A sample that has a total order: durations and counts by value, `f64` by
/// [`f64::total_cmp`] (a NaN sorts above every number instead of breaking the sort).
pub trait Sample: Copy {
    /// The total order of two samples.
    fn order(&self, other: &Self) -> Ordering;
}

impl Sample for f64 {
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

impl Sample for Duration {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

impl Sample for u64 {
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

/// The `q` quantile (clamped to `0..=1`) of samples already sorted in ascending order;
/// `None` when there are none.
pub fn quantile_sorted<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let last = sorted.len().checked_sub(1)?;
    let i = ((last as f64) * q.clamp(0.0, 1.0)).round() as usize;
    sorted.get(i.min(last)).copied()
}

/// The `q` quantile (clamped to `0..=1`) of `samples`, in any order; `None` when there
/// are none.
pub fn quantile<T: Sample>(samples: &[T], q: f64) -> Option<T> {
    let mut v = samples.to_vec();
    v.sort_unstable_by(T::order);
    quantile_sorted(&v, q)
}

/// The median of `samples` (the 0.5 quantile); `None` when there are none.
pub fn median<T: Sample>(samples: &[T]) -> Option<T> {
    quantile(samples, 0.5)
}

/// A mean over seeds and the half-width of its 95 % interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// The mean.
    pub mean: f64,
    /// Half the width of the 95 % Student-t interval around the mean: infinite with
    /// fewer than two samples (no spread can be estimated from one), zero when every
    /// sample is the same.
    pub ci95: f64,
    /// How many samples.
    pub n: usize,
}

impl Interval {
    /// The mean and 95 % interval of `samples` (NaN mean when empty).
    pub fn of(samples: &[f64]) -> Self {
        let n = samples.len();
        if n == 0 {
            return Self {
                mean: f64::NAN,
                ci95: f64::INFINITY,
                n,
            };
        }
        let mean = samples.iter().sum::<f64>() / n as f64;
        if n == 1 {
            return Self {
                mean,
                ci95: f64::INFINITY,
                n,
            };
        }
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        // Rounding leaves a spread of a few ulps where the samples are equal.
        let sd = if var <= (mean.abs() * 1e-12).powi(2) {
            0.0
        } else {
            var.sqrt()
        };
        Self {
            mean,
            ci95: t95(n - 1) * sd / (n as f64).sqrt(),
            n,
        }
    }

    /// The lower end.
    pub fn lo(&self) -> f64 {
        self.mean - self.ci95
    }

    /// The upper end.
    pub fn hi(&self) -> f64 {
        self.mean + self.ci95
    }

    /// Whether zero lies outside the interval (a difference beyond the noise).
    pub fn excludes_zero(&self) -> bool {
        self.lo() > 0.0 || self.hi() < 0.0
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = f.precision().unwrap_or(2);
        if self.ci95.is_finite() {
            write!(f, "{:.p$} ± {:.p$}", self.mean, self.ci95)
        } else {
            write!(f, "{:.p$} ± ∞", self.mean)
        }
    }
}

/// The two-sided 95 % quantile of Student's t with `df` degrees of freedom (infinite
/// for none): exact to three decimals up to 30, the Cornish-Fisher expansion above.
pub fn t95(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        _ => {
            let z: f64 = 1.959_964;
            let v = df as f64;
            z + (z.powi(3) + z) / (4.0 * v)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        }
    }
}

/// How one policy fared against another on a figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Better, beyond the 95 % interval of the paired differences.
    Win,
    /// Not told apart: the interval of the paired differences holds zero.
    Tie,
    /// Worse, beyond the interval.
    Lose,
}

impl Verdict {
    /// `win`, `tie` or `lose`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Win => "win",
            Self::Tie => "tie",
            Self::Lose => "lose",
        }
    }

    /// The verdict seen from the other side.
    pub fn flip(self) -> Self {
        match self {
            Self::Win => Self::Lose,
            Self::Tie => Self::Tie,
            Self::Lose => Self::Win,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A paired comparison: the interval of the per-seed differences `a - b` and what it
/// means.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    /// Mean and 95 % interval of `a - b` over the seeds both ran.
    pub diff: Interval,
    /// `a`'s verdict against `b`.
    pub verdict: Verdict,
}

/// Compares paired samples (`a[i]` and `b[i]` from the same seed): `a` wins when the
/// 95 % interval of `a - b` lies wholly on the better side (above zero when
/// `higher_is_better`, below otherwise), loses when it lies wholly on the worse side,
/// and ties otherwise. Panics if the slices differ in length.
pub fn paired(a: &[f64], b: &[f64], higher_is_better: bool) -> Paired {
    assert_eq!(a.len(), b.len(), "paired samples come in pairs");
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let diff = Interval::of(&d);
    let verdict = if !diff.excludes_zero() {
        Verdict::Tie
    } else if (diff.mean > 0.0) == higher_is_better {
        Verdict::Win
    } else {
        Verdict::Lose
    };
    Paired { diff, verdict }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_samples() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let v = ms(&[40, 10, 30, 20, 50]);
        assert_eq!(quantile(&v, 0.0), Some(Duration::from_millis(10)));
        assert_eq!(quantile(&v, 0.5), Some(Duration::from_millis(30)));
        assert_eq!(quantile(&v, 0.99), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&v, 7.0), Some(Duration::from_millis(50)));
        assert_eq!(quantile::<Duration>(&[], 0.5), None);
        // An even count: the upper of the two middle samples.
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median(&[2.0, 1.0]), Some(2.0));
        assert_eq!(median(&[f64::NAN, 1.0, 2.0]), Some(2.0));
        assert_eq!(median::<u64>(&[]), None);
        assert_eq!(quantile_sorted(&[1u64, 2, 3, 4], 0.25), Some(2));
    }

    #[test]
    fn intervals() {
        let i = Interval::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(i.mean, 3.0);
        // sd = sqrt(2.5), se = sqrt(0.5), t(4) = 2.776.
        assert!((i.ci95 - 2.776 * 0.5f64.sqrt()).abs() < 1e-9, "{i:?}");
        assert_eq!(Interval::of(&[7.0, 7.0, 7.0]).ci95, 0.0);
        assert!(Interval::of(&[7.0]).ci95.is_infinite());
        assert!((t95(1_000) - 1.962).abs() < 0.001);
        assert!(t95(31) < t95(30) && t95(31) > 2.03);
    }

    #[test]
    fn verdicts_need_the_whole_interval() {
        // A consistent gain of one point wins; the same mean gain with a seed that
        // lost does not.
        let base = [90.0, 91.0, 89.0, 92.0, 90.0];
        let better = base.map(|x| x + 1.0);
        assert_eq!(paired(&better, &base, true).verdict, Verdict::Win);
        assert_eq!(paired(&base, &better, true).verdict, Verdict::Lose);
        assert_eq!(paired(&better, &base, false).verdict, Verdict::Lose);
        let noisy = [95.0, 86.0, 94.0, 87.0, 93.0];
        let p = paired(&noisy, &base, true);
        assert!((p.diff.mean - 0.6).abs() < 1e-9);
        assert_eq!(p.verdict, Verdict::Tie);
        assert_eq!(paired(&base, &base, true).verdict, Verdict::Tie);
        // One seed cannot tell anything apart.
        assert_eq!(paired(&[100.0], &[0.0], true).verdict, Verdict::Tie);
    }
}
