//! The default policy, [`OfferedDemand`], and the estimator it plans with.

use std::time::{Duration, Instant};

use super::{Adapt, Decision, Observed, RoundInput, Trim};

/// The estimator a demand-tracking policy plans with: the chance of a miss it aims at,
/// the time constants of its rate estimate, and the refill latency it measures.
///
/// - **latency**: an average of the dial times the machine measures (ticket to
///   landing, [`Observed::Dialed`]), plus `unseen` for what the client cannot measure
///   (the server's settle time and the application's control channel). The mean is
///   what matters: the count of connections out being replaced is Poisson with mean
///   `λ` times the mean replacement time whatever its distribution (an M/G/∞ queue).
/// - **target**: the `1 - miss` Poisson quantile of the gets that arrive during one
///   planned latency, plus one, widened by the observed burstiness (the variance of
///   per-round counts against the Poisson one, at least 1 and at most 4).
///
/// The rate itself is the policy's: [`OfferedDemand`] smooths it with `rise`, lets it
/// fall over `decay`, and moves it at once on a round more than `jump_sigmas` Poisson
/// deviations above the estimate.
#[derive(Clone, Debug)]
pub struct Tracking {
    /// The chance, per get, of finding nothing idle that the margin aims at. Default
    /// 0.001.
    pub miss: f64,
    /// How many Poisson deviations above the estimate make a round a step up. Default 4.
    pub jump_sigmas: f64,
    /// Time constant of a rise within the noise. Default 1 s.
    pub rise: Duration,
    /// Time constant of a fall while demand goes on. Default 15 s.
    pub decay: Duration,
    /// Added to the measured dial time: what the client cannot measure, the server's
    /// settle time (25 ms by default) and the control channel. Default 30 ms.
    pub unseen: Duration,
    /// The dial time assumed before any was measured. Default 200 ms.
    pub prior_latency: Duration,
    /// The mean measured dial time, seconds.
    lat_mean: Option<f64>,
}

impl Default for Tracking {
    fn default() -> Self {
        Self {
            miss: 0.001,
            jump_sigmas: 4.0,
            rise: Duration::from_secs(1),
            decay: Duration::from_secs(15),
            unseen: Duration::from_millis(30),
            prior_latency: Duration::from_millis(200),
            lat_mean: None,
        }
    }
}

impl PartialEq for Tracking {
    /// Field by field, floats by their bits: equality stays reflexive for any value.
    fn eq(&self, o: &Self) -> bool {
        self.miss.to_bits() == o.miss.to_bits()
            && self.jump_sigmas.to_bits() == o.jump_sigmas.to_bits()
            && (self.rise, self.decay, self.unseen, self.prior_latency)
                == (o.rise, o.decay, o.unseen, o.prior_latency)
            && self.lat_mean.map(f64::to_bits) == o.lat_mean.map(f64::to_bits)
    }
}

impl Eq for Tracking {}

impl Tracking {
    /// Takes in a landed dial's time; other observations are ignored.
    pub fn observe(&mut self, what: Observed) {
        if let Observed::Dialed { took } = what {
            let x = took.as_secs_f64();
            self.lat_mean = Some(match self.lat_mean {
                None => x,
                Some(m) => m + 0.02 * (x - m),
            });
        }
    }

    /// The refill latency planned for: the mean measured dial time (or
    /// `prior_latency` before any) plus `unseen`.
    pub fn latency(&self) -> Duration {
        let l = self.lat_mean.unwrap_or(self.prior_latency.as_secs_f64());
        Duration::from_secs_f64(l.max(0.0)) + self.unseen
    }

    /// The capacity that `rate` gets a second call for over one planned latency, with
    /// per-round counts `dispersion` times as variable as Poisson ones (clamped to 1
    /// to 4), before any bound.
    pub fn target(&self, rate: f64, dispersion: f64) -> usize {
        let m = rate * self.latency().as_secs_f64();
        if m < 1e-3 {
            return 0;
        }
        let q = poisson_quantile(m, self.miss);
        let burst = dispersion.clamp(1.0, 4.0).sqrt() - 1.0;
        let extra = z_of(self.miss) * m.sqrt() * burst;
        q + extra.max(0.0).ceil() as usize + 1
    }
}

/// The default policy: holds what the measured refill latency needs at the estimated
/// offered demand, on everything the machine can tell a policy: the offered demand
/// (every get, the queued ones included), dials that hang (which hold capacity yet
/// bring nothing), closing idle connections above the target, and pacing its own dials
/// while they fail.
///
/// Between rounds the machine replaces every connection a get takes at once, so a get
/// finds the pool empty only when more gets arrive during one refill latency `L` than
/// the capacity holds beyond the dials already in flight. With gets arriving at rate
/// `λ`, the count in flight is about Poisson with mean `m = λ·L`, and a capacity at
/// the `1 - miss` quantile of that count, plus one, leaves a get waiting with a chance
/// of about `miss` ([`Tracking::target`]).
///
/// - **Rate**: the gets each round offered ([`RoundInput::gets`]), smoothed alike up
///   and down over `tracking.rise` (an estimate that rises fast and falls slowly on
///   noisy per-round counts would sit well above the mean: about 145 gets a second at
///   a steady 100). The rate planned for follows that
///   smoothed one up at once and down over `tracking.decay` while gets keep coming,
///   over `quiet_decay` after a round with none. A round far above the estimate (more
///   than `tracking.jump_sigmas` Poisson deviations: a step), or one in which gets had to wait
///   ([`RoundInput::waited`]) at a higher rate, moves it at once.
/// - **Target**: [`Tracking::target`] (the Poisson quantile of the gets that arrive
///   during one planned latency, widened by the observed burstiness), plus the
///   dials in flight for longer than `hung_factor` times the planned latency
///   ([`RoundInput::hung`]): they hold capacity the refill cannot use.
/// - **Shrinking closes**: the capacity grows to the target at once and shrinks when
///   the target is an eighth below it; the machine then closes the idle connections
///   above it ([`Trim`]), once they exceed it by a sixteenth, a quarter of the capacity
///   (at least two) per round. Without it, a pool that shrinks keeps its
///   surplus idle at both ends until the server's maximum idle age closes it.
/// - **Backing off**: while the machine backs off the rate estimate holds (the gets
///   an unreachable server cannot serve never reach the client) and the capacity
///   never grows (nothing would land); after a round whose dials all failed the
///   policy dials at most `paced` at once until one lands (then at full speed again).
/// - **Rounds** come every minimum interval, quiet or not: the machine tops up between
///   rounds by itself, so a round dials nothing, and a burst after a lull is seen
///   within one minimum interval, not after rounds that slowed to the maximum.
///
/// The tracker's constants were chosen on the scoreboard's first nine scenarios, the
/// trim's on all fifteen, and `tracking.decay` and `quiet_decay` on twelve of them with
/// `restart`, `wan_lossy`, `noisy_diurnal` and the scenario files `sawtooth` and
/// `sparse_bursts` held out (see `BENCHMARKS.md`).
#[derive(Clone, Debug)]
pub struct OfferedDemand {
    /// The latency estimator, the quantile it aims at and the rate's time constants.
    /// Default: [`Tracking::default`], whose decay of 15 s lets a burst's connections
    /// go, yet leaves bursts 15 s apart about two fifths of them.
    pub tracking: Tracking,
    /// A dial in flight longer than this many times the planned latency counts as hung.
    /// Default 4.
    pub hung_factor: f64,
    /// Dials at once after a round whose dials all failed. Default 4.
    pub paced: usize,
    /// Time constant of a fall after a round with no get at all (the pool is going
    /// quiet), instead of the tracker's `decay` (demand goes on at a lower rate, and a
    /// recent peak is the best guess of the next). Default 0.5 s: a pool that goes
    /// quiet is back at its minimum within seconds, and since rounds stay at the
    /// minimum interval the next burst is still seen within one.
    pub quiet_decay: Duration,
    state: OfferedState,
}

#[derive(Clone, Debug, Default)]
struct OfferedState {
    last: Option<Instant>,
    capacity: usize,
    failing: bool,
    /// Gets per second, smoothed alike up and down (time constant `tracking.rise`).
    smooth: f64,
    /// The rate planned for: up with `smooth` at once, down slowly.
    rate: f64,
    /// Variance of the per-round counts over the Poisson one, smoothed over 10 s.
    dispersion: f64,
}

impl Default for OfferedDemand {
    fn default() -> Self {
        Self {
            tracking: Tracking::default(),
            hung_factor: 4.0,
            paced: 4,
            quiet_decay: Duration::from_millis(500),
            state: OfferedState::default(),
        }
    }
}

impl PartialEq for OfferedDemand {
    /// Field by field, floats by their bits: equality stays reflexive for any value.
    fn eq(&self, o: &Self) -> bool {
        let (s, t) = (&self.state, &o.state);
        self.tracking == o.tracking
            && self.hung_factor.to_bits() == o.hung_factor.to_bits()
            && (self.paced, self.quiet_decay) == (o.paced, o.quiet_decay)
            && (s.last, s.capacity, s.failing) == (t.last, t.capacity, t.failing)
            && [s.smooth, s.rate, s.dispersion].map(f64::to_bits)
                == [t.smooth, t.rate, t.dispersion].map(f64::to_bits)
    }
}

impl Eq for OfferedDemand {}

impl OfferedDemand {
    /// The demand rate planned for, gets per second.
    pub fn rate(&self) -> f64 {
        self.state.rate
    }

    /// The capacity the estimates call for (before the bounds and hung dials).
    pub fn target(&self) -> usize {
        self.tracking.target(self.state.rate, self.state.dispersion)
    }

    /// A round of `dt` seconds offered `r.gets` gets.
    fn update_rate(&mut self, r: &RoundInput, dt: f64) {
        let t = &self.tracking;
        let s = &mut self.state;
        let count = r.gets as f64;
        let inst = count / dt;
        let expect = s.smooth * dt;
        if expect > 0.5 {
            // Against the unbiased estimate, unclamped: Poisson counts average 1.
            let d = (count - expect).powi(2) / expect;
            let a = 1.0 - (-dt / 10.0).exp();
            s.dispersion += a * (d - s.dispersion);
        }
        let step = count > expect + t.jump_sigmas * expect.sqrt() + 2.0;
        let unmet = r.waited > 0;
        if step || (unmet && inst > s.smooth) {
            s.smooth = inst;
        } else {
            let a = 1.0 - (-dt / t.rise.as_secs_f64().max(1e-3)).exp();
            s.smooth += a * (inst - s.smooth);
        }
        if s.smooth >= s.rate {
            s.rate = s.smooth;
        } else {
            let tau = if r.gets == 0 {
                self.quiet_decay
            } else {
                t.decay
            };
            let a = 1.0 - (-dt / tau.as_secs_f64().max(1e-3)).exp();
            s.rate += a * (s.smooth - s.rate);
        }
        if s.rate < 1e-3 {
            s.rate = 0.0;
        }
        if s.smooth < 1e-6 {
            s.smooth = 0.0;
        }
    }
}

impl Adapt for OfferedDemand {
    fn name(&self) -> &str {
        "offered"
    }
    fn clone_box(&self) -> Box<dyn Adapt> {
        Box::new(self.clone())
    }
    fn observe(&mut self, what: Observed, _now: Instant) {
        if let Observed::Dialed { .. } = what {
            // One landed: the server is back, dial at full speed again.
            self.state.failing = false;
        }
        self.tracking.observe(what);
    }
    fn round(&mut self, r: &RoundInput, now: Instant) -> Decision {
        let dt = self
            .state
            .last
            .replace(now)
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        if dt > 0.0 && !r.backing_off {
            // While the server is unreachable the gets it cannot serve never reach the
            // client: the estimate holds until it is back.
            self.update_rate(r, dt);
        }
        let target = (self.target() + r.hung).clamp(r.min_capacity, r.max_capacity.max(1));
        let floor = target <= r.min_capacity;
        let mut capacity = if target > r.capacity || target < r.capacity - r.capacity / 8 || floor {
            target
        } else {
            r.capacity
        };
        if r.backing_off {
            capacity = capacity.min(r.capacity);
        }
        self.state.capacity = capacity;
        self.state.failing = r.failed > 0 && r.created == Some(0);
        // Rounds stay at the minimum interval, quiet or not: between rounds the
        // machine tops up by itself, so a round costs no dial, and a pool whose
        // rounds had slowed while quiet would see the next burst up to the maximum
        // interval late (a burst after a lull then met the minimum capacity for a
        // whole second).
        Decision {
            capacity,
            interval: r.min_interval,
        }
    }
    fn trim(&self) -> Option<Trim> {
        let c = self.state.capacity;
        Some(Trim {
            slack: c / 16,
            per_round: (c / 4).max(2),
        })
    }
    fn hung_after(&self) -> Option<Duration> {
        Some(self.tracking.latency().mul_f64(self.hung_factor))
    }
    fn parallelism(&self) -> Option<usize> {
        self.state.failing.then_some(self.paced.max(1))
    }
}

/// The standard normal quantile for an upper tail of `p` (Acklam's rational
/// approximation of the tail, good to about 1e-3 here).
fn z_of(p: f64) -> f64 {
    let p = p.clamp(1e-12, 0.5);
    let t = (-2.0 * p.ln()).sqrt();
    t - (2.515_517 + 0.802_853 * t + 0.010_328 * t * t)
        / (1.0 + 1.432_788 * t + 0.189_269 * t * t + 0.001_308 * t * t * t)
}

/// The smallest `k` with `P(X > k) <= miss` for `X` Poisson with mean `m`: exact by
/// summing the mass up to a mean of 100, the normal approximation above.
pub(crate) fn poisson_quantile(m: f64, miss: f64) -> usize {
    if m > 100.0 {
        return (m + z_of(miss) * m.sqrt() + 0.5).ceil() as usize;
    }
    let mut pmf = (-m).exp();
    let mut cdf = pmf;
    let mut k = 0usize;
    while 1.0 - cdf > miss && k < 10_000 {
        k += 1;
        pmf *= m / k as f64;
        cdf += pmf;
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        assert_eq!(poisson_quantile(0.0005, 0.001), 0);
        assert_eq!(poisson_quantile(1.0, 0.001), 5);
        assert_eq!(poisson_quantile(10.0, 0.001), 21);
        let q = poisson_quantile(101.0, 0.001);
        assert!((130..=134).contains(&q), "{q}");
        assert!((z_of(0.001) - 3.09).abs() < 0.01);
    }

    #[test]
    fn offered_demand_keeps_short_rounds_through_a_lull_and_sees_the_next_burst() {
        let mut p = OfferedDemand::default();
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let r = RoundInput {
            capacity: 8,
            interval: ms(100),
            idle: 8,
            in_flight: 0,
            created: None,
            backing_off: false,
            gets: 0,
            waited: 0,
            failed: 0,
            hung: 0,
            min_capacity: 8,
            max_capacity: 4096,
            min_interval: ms(100),
            max_interval: Duration::from_secs(1),
        };
        p.observe(Observed::Dialed { took: ms(50) }, t0);
        let mut now = t0;
        let mut d = p.round(&r, now);
        // A burst of 300 a second, then a minute without a get.
        let mut round = |gets: usize, d: Decision, now: &mut Instant| {
            *now += d.interval;
            p.round(
                &RoundInput {
                    capacity: d.capacity,
                    interval: d.interval,
                    gets,
                    created: Some(0),
                    ..r
                },
                *now,
            )
        };
        for _ in 0..50 {
            d = round(30, d, &mut now);
        }
        let busy = d.capacity;
        assert!(busy > 20, "{d:?}");
        while now < t0 + Duration::from_secs(65) {
            d = round(0, d, &mut now);
            assert_eq!(d.interval, ms(100), "rounds stay short while quiet");
        }
        assert_eq!(d.capacity, 8, "back at the minimum after the lull");
        // The next burst is followed in the round after it starts.
        d = round(30, d, &mut now);
        assert!(d.capacity >= busy / 2, "{d:?} against {busy}");
    }
}
