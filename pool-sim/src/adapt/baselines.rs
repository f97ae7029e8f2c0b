//! The scoreboard's baselines: policies the board compares the shipped ones with, each
//! an implementation of [`Adapt`] like a policy of your own.
//!
//! - [`GoBehaviour`] (`gobehaviour`): what the Go package v1.0.6 does, its rules on its
//!   way of refilling;
//! - [`DemandTracking`] (`demand`): the demand estimate the default policy grew from,
//!   on the gets the machine tells it of, with no hung dials, trim or pacing.
//!
//! [`policy`] names every policy the board knows, these and pool-core's.

use std::time::{Duration, Instant};

use pool_core::{Adapt, Adaptation, Decision, GoRules, Observed, Refill, RoundInput, Tracking};

/// What the Go package v1.0.6 does, as a baseline: [`GoRules`] decides, and the
/// machine refills as Go's client manager does ([`Refill::GoFill`]): one dial at a
/// time until the capacity is held, a round lasting that fill plus the interval, no
/// back-off. [`GoRules`] alone keeps Go's arithmetic on pool-core's machine, which
/// tops up continuously with many dials at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoBehaviour {
    /// The rules (the Go package's by default).
    pub rules: GoRules,
}

impl Adapt for GoBehaviour {
    fn name(&self) -> &str {
        "gobehaviour"
    }
    fn clone_box(&self) -> Box<dyn Adapt> {
        Box::new(*self)
    }
    fn round(&mut self, r: &RoundInput, now: Instant) -> Decision {
        self.rules.round(r, now)
    }
    fn refill(&self) -> Refill {
        Refill::GoFill
    }
}

/// Holds what the measured refill latency needs at the estimated demand rate
/// ([`Tracking::target`]), estimating the rate from the gets the machine tells it of.
///
/// - **rate**: gets per second over each round, smoothed. A round whose count is far
///   above what the estimate predicts (more than `jump_sigmas` standard deviations of
///   a Poisson count) is a step up: the estimate jumps to it at once. A rise within the
///   noise follows a short time constant (`rise`), a fall a long one (`decay`, 20 s by
///   default): the connections of a busy spell are let go over `decay`, so a lull
///   shorter than that finds most of them still there, and a pool that goes quiet
///   returns to the minimum. Rising fast and falling slowly on noisy per-round counts,
///   the estimate sits above the mean rate (about 145 a second at a steady 100).
/// - **burstiness**: the observed variance of per-round counts against the Poisson
///   one (at least 1), which widens the margin when gets come in clumps.
///
/// The capacity grows to the target at once (never while the machine backs off) and
/// shrinks only when the target is an eighth below it (or at the minimum). Rounds come
/// every minimum interval while there is demand; with no demand and the capacity at its
/// minimum the interval doubles up to the maximum.
#[derive(Clone, Debug, PartialEq)]
pub struct DemandTracking {
    /// The estimator and its constants. Default: [`Tracking::default`] with a decay of
    /// 20 s.
    pub tracking: Tracking,
    state: DemandState,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct DemandState {
    rate: f64,
    gets: u64,
    last: Option<Instant>,
    dispersion: f64,
}

impl Default for DemandTracking {
    fn default() -> Self {
        let mut tracking = Tracking::default();
        tracking.decay = Duration::from_secs(20);
        Self {
            tracking,
            state: DemandState {
                dispersion: 1.0,
                ..DemandState::default()
            },
        }
    }
}

impl DemandTracking {
    /// The demand rate estimate, gets per second.
    pub fn rate(&self) -> f64 {
        self.state.rate
    }

    /// The capacity the estimates call for (before the bounds).
    pub fn target(&self) -> usize {
        self.tracking.target(self.state.rate, self.state.dispersion)
    }

    fn update_rate(&mut self, now: Instant) {
        let t = &self.tracking;
        let s = &mut self.state;
        let Some(last) = s.last.replace(now) else {
            s.gets = 0;
            return;
        };
        let dt = now.saturating_duration_since(last).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let count = std::mem::take(&mut s.gets) as f64;
        let expect = s.rate * dt;
        let inst = count / dt;
        if expect > 0.5 {
            let d = (count - expect).powi(2) / expect;
            let a = 1.0 - (-dt / 10.0).exp();
            s.dispersion = (s.dispersion + a * (d - s.dispersion)).clamp(1.0, 4.0);
        }
        if count > expect + t.jump_sigmas * expect.sqrt() + 2.0 {
            s.rate = inst;
        } else {
            let tau = if inst > s.rate { t.rise } else { t.decay };
            let a = 1.0 - (-dt / tau.as_secs_f64().max(1e-3)).exp();
            s.rate += a * (inst - s.rate);
        }
        if s.rate < 1e-6 {
            s.rate = 0.0;
        }
    }
}

impl Adapt for DemandTracking {
    fn name(&self) -> &str {
        "demand"
    }
    fn clone_box(&self) -> Box<dyn Adapt> {
        Box::new(self.clone())
    }
    fn observe(&mut self, what: Observed, _now: Instant) {
        if let Observed::Get { .. } = what {
            self.state.gets += 1;
        }
        self.tracking.observe(what);
    }
    fn round(&mut self, r: &RoundInput, now: Instant) -> Decision {
        self.update_rate(now);
        let target = self.target().clamp(r.min_capacity, r.max_capacity.max(1));
        let floor = target <= r.min_capacity;
        let mut capacity = if target > r.capacity || target < r.capacity - r.capacity / 8 || floor {
            target
        } else {
            r.capacity
        };
        if r.backing_off {
            // Nothing dialed now can land: growing would only open more at once when
            // the server is back.
            capacity = capacity.min(r.capacity);
        }
        let quiet = self.state.rate == 0.0 && capacity <= r.min_capacity;
        let interval = if quiet {
            r.interval.saturating_mul(2).min(r.max_interval)
        } else {
            r.min_interval
        };
        Decision { capacity, interval }
    }
}

/// A policy the scoreboard knows by name: pool-core's `gorules` and `offered` (also
/// `default`), and this module's `gobehaviour` and `demand`.
pub fn policy(name: &str) -> Option<Adaptation> {
    match name {
        "gobehaviour" => Some(Adaptation::custom(GoBehaviour::default())),
        "demand" => Some(Adaptation::custom(DemandTracking::default())),
        "default" => Some(Adaptation::default()),
        other => Adaptation::by_name(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the input of the rounds it is asked.
    #[derive(Clone, Debug)]
    struct Probe(Arc<Mutex<Option<RoundInput>>>);

    impl Adapt for Probe {
        fn name(&self) -> &str {
            "probe"
        }
        fn clone_box(&self) -> Box<dyn Adapt> {
            Box::new(self.clone())
        }
        fn round(&mut self, r: &RoundInput, _now: Instant) -> Decision {
            *self.0.lock().unwrap() = Some(*r);
            Decision {
                capacity: r.capacity,
                interval: r.interval,
            }
        }
    }

    /// A first round's input as the machine builds it (`RoundInput` is
    /// non-exhaustive): capacity 8 to 4,096, interval 100 ms to 1 s.
    fn first_round() -> RoundInput {
        let seen = Arc::new(Mutex::new(None));
        let cfg = pool_core::ClientConfig::builder()
            .capacity(8, 4096)
            .interval(Duration::from_millis(100), Duration::from_secs(1))
            .adapt(Adaptation::custom(Probe(seen.clone())))
            .build()
            .unwrap();
        let t0 = Instant::now();
        let seed = pool_core::SeededRandom::from_seed([1; 32]);
        let mut m = pool_core::ClientMachine::<u32>::new(cfg, seed, t0);
        m.handle_timeout(t0);
        let r = seen.lock().unwrap().take();
        r.expect("a round")
    }

    #[test]
    fn demand_tracking_follows_a_step_up_in_one_round() {
        let mut p = DemandTracking::default();
        let mut r = first_round();
        assert_eq!((r.capacity, r.min_capacity), (8, 8));
        let t0 = Instant::now();
        p.observe(
            Observed::Dialed {
                took: Duration::from_millis(50),
            },
            t0,
        );
        let mut now = t0;
        let d = p.round(&r, now);
        for _ in 0..100 {
            p.observe(Observed::Get { waited: false }, now);
        }
        now += Duration::from_millis(100);
        r.capacity = d.capacity;
        let d = p.round(&r, now);
        assert!(p.rate() > 900.0, "{}", p.rate());
        assert!(d.capacity > 100, "{d:?}");
    }

    #[test]
    fn go_behaviour_refills_as_go_does_and_decides_by_the_go_rules() {
        let mut p = GoBehaviour::default();
        assert_eq!(p.refill(), Refill::GoFill);
        let r = first_round();
        let now = Instant::now();
        assert_eq!(p.round(&r, now), GoRules::default().round(&r, now));
    }

    #[test]
    fn the_board_knows_every_policy_by_name() {
        for name in ["gorules", "gobehaviour", "demand", "offered"] {
            assert_eq!(policy(name).map(|p| p.name().to_owned()), Some(name.into()));
        }
        assert_eq!(policy("default"), Some(Adaptation::default()));
        assert!(policy("nonesuch").is_none());
    }
}
