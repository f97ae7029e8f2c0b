//! Adaptation as a pluggable policy: what the client machine observes goes in, the
//! capacity and the refill interval come out.
//!
//! A policy is sans-IO and deterministic like the machine that calls it: every input
//! carries `now`, it reads no clock and draws no random number. The machine tells it
//! about every get (served at once or queued), every dial (how long from ticket to
//! landing) and every failed dial, and asks it at each round for the capacity and the
//! interval. Whatever it answers, the machine clamps into the user's bounds: a policy
//! cannot break them.
//!
//! Four policies come with the crate:
//! - [`GoRules`]: the Go package v1.0.6 rules ([`IntervalPolicy`], [`CapacityPolicy`]),
//!   decision for decision;
//! - [`GoBehaviour`]: the same rules on the Go package's way of refilling (one dial at
//!   a time, a round lasting its fill plus the interval, no back-off): a baseline;
//! - [`DemandTracking`]: estimates the demand rate and the refill latency and holds
//!   what that latency needs, plus a Poisson margin (the default until 0.1's issue 22);
//! - [`OfferedDemand`]: the same idea on everything a round can tell a policy (offered
//!   demand, hung dials, failures), closing idle connections above its capacity and
//!   pacing its dials while they fail (the default; see its docs and the scoreboard in
//!   `BENCHMARKS.md`).
//!
//! Choose one with [`Adaptation`] in
//! [`ClientConfigBuilder::adapt`](crate::ClientConfigBuilder::adapt); bring your own
//! with [`Adaptation::custom`].

use std::fmt;
use std::time::{Duration, Instant};

use crate::adjust::{CapacityPolicy, IntervalPolicy};

/// What the client machine saw happen, between rounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Observed {
    /// A get arrived; `waited` when nothing fitting was idle and it was queued.
    Get {
        /// Whether it had to wait.
        waited: bool,
    },
    /// A get told as `Get { waited: false }` (it found a candidate) found every
    /// candidate dead and was queued after all: offered demand the idle pool did not
    /// meet.
    WaitedAfterCheck,
    /// A dial landed, `took` after its ticket was handed out (connect, TLS, id).
    Dialed {
        /// Ticket to landing.
        took: Duration,
    },
    /// A dial failed.
    DialFailed,
}

/// What a round knows when it asks the policy.
///
/// Non-exhaustive: the machine builds it, and later releases may tell a policy more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoundInput {
    /// The capacity so far.
    pub capacity: usize,
    /// The interval so far.
    pub interval: Duration,
    /// Idle connections now.
    pub idle: usize,
    /// Dials in flight now.
    pub in_flight: usize,
    /// Connections created by top-up dials since the previous round started (`None`
    /// at the first round).
    pub created: Option<usize>,
    /// Whether the machine is backing off (the server looks unreachable).
    pub backing_off: bool,
    /// Gets since the previous round started (offered demand: served, queued or
    /// failed).
    pub gets: usize,
    /// Of those, the gets that found nothing fitting idle and were queued (at once, or
    /// after their candidates were found dead).
    pub waited: usize,
    /// Dials that failed since the previous round started (an error or a deadline).
    pub failed: usize,
    /// Dials in flight for longer than [`Adapt::hung_after`] (0 when the policy sets
    /// none): they still hold capacity, yet may never land.
    pub hung: usize,
    /// The user's capacity bounds (the machine clamps to them anyway).
    pub min_capacity: usize,
    /// See `min_capacity`.
    pub max_capacity: usize,
    /// The user's interval bounds (the machine clamps to them anyway).
    pub min_interval: Duration,
    /// See `min_interval`.
    pub max_interval: Duration,
}

/// A policy's answer: the capacity to hold and the time to the next round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Idle plus in-flight connections to hold.
    pub capacity: usize,
    /// Time to the next round.
    pub interval: Duration,
}

/// When the client machine closes idle connections above its capacity (see
/// [`Adapt::trim`]): once idle plus in-flight connections exceed the capacity by more
/// than `slack`, it closes the oldest idle ones, at most `per_round` at each round,
/// until they no longer exceed the capacity. The gap between the two thresholds is the
/// hysteresis: a capacity that wanders within `slack` closes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trim {
    /// How far above the capacity the connections held may be before closing starts.
    pub slack: usize,
    /// Idle connections closed at most per round (at least one is always allowed).
    pub per_round: usize,
}

/// How the client machine refills, chosen by the policy ([`Adapt::refill`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refill {
    /// This crate's machine: between rounds it tops up continuously, up to the
    /// parallelism in flight, and backs off after a run of failures. The default.
    #[default]
    TopUp,
    /// What the Go package v1.0.6 does: at the start of each round it makes as many
    /// dials as the capacity lacks idle connections (here: idle or out for a probe),
    /// one at a time (the fill; a failed
    /// dial counts as one of them, and the fill goes on); the next round starts one
    /// interval after the fill ends (a round lasts the fill time plus the interval);
    /// nothing is dialed between fills and there is no back-off. A single-mode get
    /// that finds nothing idle still dials at once.
    GoFill,
}

/// An adaptation policy. Sans-IO and deterministic: the same observations at the same
/// instants give the same decisions.
///
/// Only [`name`](Self::name), [`clone_box`](Self::clone_box) and
/// [`round`](Self::round) are required; the other methods let a policy use more of the
/// machine (closing idle connections above its capacity, counting hung dials, pacing
/// its dials, Go's way of refilling), and default to what the machine did before they
/// existed.
pub trait Adapt: fmt::Debug + Send + Sync {
    /// A short lower-case name (`gorules`, `demand`), used to compare configurations
    /// and to pick a policy by name.
    fn name(&self) -> &str;
    /// A copy of this policy in its current state (configurations hold a fresh one,
    /// each machine clones it).
    fn clone_box(&self) -> Box<dyn Adapt>;
    /// Something happened. Default: ignored.
    fn observe(&mut self, what: Observed, now: Instant) {
        let _ = (what, now);
    }
    /// A round starts: the capacity and interval until the next one.
    fn round(&mut self, input: &RoundInput, now: Instant) -> Decision;
    /// Asked right after each [`round`](Self::round): whether and how the machine
    /// closes idle connections above the new capacity. Default `None`: it closes none
    /// (a shrinking capacity only stops the refill, as in the Go package).
    fn trim(&self) -> Option<Trim> {
        None
    }
    /// A dial in flight for longer than this counts in [`RoundInput::hung`]. Default
    /// `None`: none is counted.
    fn hung_after(&self) -> Option<Duration> {
        None
    }
    /// Top-up dials in flight at most, for now (the machine asks before each one and
    /// keeps the answer within the configuration's parallelism, and at least one).
    /// Default `None`: the configuration's parallelism.
    fn parallelism(&self) -> Option<usize> {
        None
    }
    /// How the machine refills; asked once, when the machine is made. Default
    /// [`Refill::TopUp`].
    fn refill(&self) -> Refill {
        Refill::TopUp
    }
}

impl Clone for Box<dyn Adapt> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// The policy of a client configuration. Configurations compare equal when their
/// policies have the same name and the same `Debug` form (same parameters).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Adaptation {
    /// The Go package's rules, with the configuration's
    /// [`interval_policy`](crate::ClientConfigBuilder::interval_policy) and
    /// [`capacity_policy`](crate::ClientConfigBuilder::capacity_policy).
    GoRules,
    /// [`DemandTracking`] with these parameters.
    DemandTracking(DemandTracking),
    /// [`GoBehaviour`]: the Go rules on Go's way of refilling ([`Refill::GoFill`]),
    /// with the configuration's interval and capacity policies. A baseline: what the
    /// Go package does, not only its arithmetic.
    GoBehaviour,
    /// [`OfferedDemand`] with these parameters.
    OfferedDemand(OfferedDemand),
    /// A policy of your own: a fresh instance, cloned into each machine.
    Custom(Box<dyn Adapt>),
}

impl Default for Adaptation {
    /// [`OfferedDemand`]: on the scoreboard it serves as many gets at once as the Go
    /// rules and the Go package's behaviour on every scenario but the outage (where
    /// it stays 0.05 points behind the Go rules, which hold eight times its idle
    /// connections), with a third of the Go rules' idle connections in all
    /// (`BENCHMARKS.md`).
    fn default() -> Self {
        Self::OfferedDemand(OfferedDemand::default())
    }
}

impl PartialEq for Adaptation {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name() && format!("{self:?}") == format!("{other:?}")
    }
}

impl Eq for Adaptation {}

impl Adaptation {
    /// A policy of your own.
    pub fn custom(policy: impl Adapt + 'static) -> Self {
        Self::Custom(Box::new(policy))
    }

    /// A built-in policy by name: `gorules`, `gobehaviour`, `demand` or `offered` (the
    /// default).
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "gorules" => Some(Self::GoRules),
            "gobehaviour" => Some(Self::GoBehaviour),
            "offered" => Some(Self::OfferedDemand(OfferedDemand::default())),
            "demand" => Some(Self::DemandTracking(DemandTracking::default())),
            _ => None,
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        match self {
            Self::GoRules => "gorules",
            Self::GoBehaviour => "gobehaviour",
            Self::DemandTracking(_) => "demand",
            Self::OfferedDemand(_) => "offered",
            Self::Custom(p) => p.name(),
        }
    }

    /// A fresh instance for a machine.
    pub(crate) fn instance(&self, ip: IntervalPolicy, cp: CapacityPolicy) -> Box<dyn Adapt> {
        match self {
            Self::GoRules => Box::new(GoRules {
                interval: ip,
                capacity: cp,
            }),
            Self::GoBehaviour => Box::new(GoBehaviour {
                rules: GoRules {
                    interval: ip,
                    capacity: cp,
                },
            }),
            Self::DemandTracking(d) => Box::new(d.clone()),
            Self::OfferedDemand(d) => Box::new(d.clone()),
            Self::Custom(p) => p.clone_box(),
        }
    }
}

/// The Go package v1.0.6 rules: at each round the capacity moves by one by what the
/// previous round created ([`CapacityPolicy`]), then the interval moves by one step by
/// the fill level against the new capacity ([`IntervalPolicy`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoRules {
    /// The interval rule.
    pub interval: IntervalPolicy,
    /// The capacity rule.
    pub capacity: CapacityPolicy,
}

impl Adapt for GoRules {
    fn name(&self) -> &str {
        "gorules"
    }
    fn clone_box(&self) -> Box<dyn Adapt> {
        Box::new(*self)
    }
    fn round(&mut self, r: &RoundInput, _now: Instant) -> Decision {
        let capacity = match r.created {
            Some(created) => {
                self.capacity
                    .next(r.capacity, created, r.min_capacity, r.max_capacity)
            }
            None => r.capacity,
        };
        let interval =
            self.interval
                .next(r.interval, r.idle, capacity, r.min_interval, r.max_interval);
        Decision { capacity, interval }
    }
}

/// What the Go package v1.0.6 does, as a baseline: [`GoRules`] decides, and the
/// machine refills as Go's client manager does ([`Refill::GoFill`]): one dial at a
/// time until the capacity is held, a round lasting that fill plus the interval, no
/// back-off. [`GoRules`] alone keeps Go's arithmetic on this crate's machine, which
/// tops up continuously with many dials at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoBehaviour {
    /// The rules.
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

/// Holds what the measured refill latency needs at the estimated demand rate.
///
/// Between rounds the machine replaces every connection a get takes at once, so a get
/// finds the pool empty only when more gets arrive during one refill latency `L` than
/// the capacity holds beyond the dials already in flight. With gets arriving at rate
/// `λ`, the count in flight is about Poisson with mean `m = λ·L`, and a capacity at
/// the `1 - miss` quantile of that count, plus one, leaves a get waiting with a chance
/// of about `miss`. This policy estimates the three inputs and holds that capacity:
///
/// - **rate**: gets per second over each round, smoothed. A round whose count is far
///   above what the estimate predicts (more than `jump_sigmas` standard deviations of
///   a Poisson count) is a step up: the estimate jumps to it at once. A rise within the
///   noise follows a short time constant (`rise`), a fall a long one (`decay`): the
///   connections of a busy spell are let go over `decay`, so a lull shorter than that
///   finds most of them still there, and a pool that goes quiet returns to the minimum.
/// - **latency**: an average of the dial times the machine measures (ticket to
///   landing), plus `unseen` for what the client cannot measure (the server's settle
///   time and the application's control channel). The mean is what matters: the
///   count of connections out being replaced is Poisson with mean `λ` times the mean
///   replacement time whatever its distribution (an M/G/∞ queue).
/// - **burstiness**: the observed variance of per-round counts against the Poisson
///   one (at least 1), which widens the margin when gets come in clumps.
///
/// The capacity grows to the target at once (never while the machine backs off) and
/// shrinks only when the target is an eighth below it (or at the minimum), so noise
/// does not make it wander. Rounds come every minimum
/// interval while there is demand (each is a few arithmetic operations), so a step up
/// is seen within one; with no demand and the capacity at its minimum the interval
/// doubles up to the maximum.
#[derive(Clone, Debug, PartialEq)]
pub struct DemandTracking {
    /// The chance, per get, of finding nothing idle that the margin aims at. Default
    /// 0.001.
    pub miss: f64,
    /// How many Poisson deviations above the estimate make a round a step up. Default 4.
    pub jump_sigmas: f64,
    /// Time constant of a rise within the noise. Default 1 s.
    pub rise: Duration,
    /// Time constant of a fall. Default 20 s.
    pub decay: Duration,
    /// Added to the measured dial time: what the client cannot measure, the server's
    /// settle time (25 ms by default) and the control channel. Default 30 ms.
    pub unseen: Duration,
    /// The dial time assumed before any was measured. Default 200 ms.
    pub prior_latency: Duration,
    state: DemandState,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct DemandState {
    rate: f64,
    gets: u64,
    last: Option<Instant>,
    lat_mean: Option<f64>,
    dispersion: f64,
}

impl Default for DemandTracking {
    fn default() -> Self {
        Self {
            miss: 0.001,
            jump_sigmas: 4.0,
            rise: Duration::from_secs(1),
            decay: Duration::from_secs(20),
            unseen: Duration::from_millis(30),
            prior_latency: Duration::from_millis(200),
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

    /// The refill latency the policy plans for: the mean measured dial time plus
    /// `unseen`.
    pub fn latency(&self) -> Duration {
        let l = self
            .state
            .lat_mean
            .unwrap_or(self.prior_latency.as_secs_f64());
        Duration::from_secs_f64(l.max(0.0)) + self.unseen
    }

    /// The capacity the estimates call for (before the bounds).
    pub fn target(&self) -> usize {
        let m = self.state.rate * self.latency().as_secs_f64();
        if m < 1e-3 {
            return 0;
        }
        let q = poisson_quantile(m, self.miss);
        let extra = z_of(self.miss) * m.sqrt() * (self.state.dispersion.sqrt() - 1.0);
        q + extra.max(0.0).ceil() as usize + 1
    }

    fn update_rate(&mut self, now: Instant) {
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
        if count > expect + self.jump_sigmas * expect.sqrt() + 2.0 {
            s.rate = inst;
        } else {
            let tau = if inst > s.rate { self.rise } else { self.decay };
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
        let s = &mut self.state;
        match what {
            Observed::Get { .. } => s.gets += 1,
            Observed::Dialed { took } => {
                let x = took.as_secs_f64();
                s.lat_mean = Some(match s.lat_mean {
                    None => x,
                    Some(m) => m + 0.02 * (x - m),
                });
            }
            Observed::DialFailed | Observed::WaitedAfterCheck => {}
        }
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

/// [`DemandTracking`]'s estimate, on everything the machine can tell a policy: the
/// offered demand (every get, the queued ones included), dials that hang (which hold
/// capacity yet bring nothing), closing idle connections above the target, and pacing
/// its own dials while they fail.
///
/// - **Rate**: the gets each round offered ([`RoundInput::gets`]), smoothed alike up
///   and down over `tracking.rise` (an estimate that rises fast and falls slowly on
///   noisy per-round counts sits well above the mean: [`DemandTracking`] plans for
///   about 145 gets a second at a steady 100). The rate planned for follows that
///   smoothed one up at once and down over `tracking.decay` while gets keep coming,
///   over `quiet_decay` after a round with none. A round far above the estimate (a
///   step, as [`DemandTracking`] tells it), or one in which gets had to wait
///   ([`RoundInput::waited`]) at a higher rate, moves it at once.
/// - **Target**: as [`DemandTracking::target`] (the Poisson quantile of the gets that
///   arrive during one planned latency, widened by the observed burstiness), plus the
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
/// The constants are [`DemandTracking`]'s (chosen on the scoreboard's first nine
/// scenarios) but for the trim (chosen on all fifteen), and for `tracking.decay` and
/// `quiet_decay`, chosen on twelve of them with `restart`, `wan_lossy`,
/// `noisy_diurnal` and the scenario files `sawtooth` and `sparse_bursts` held out
/// (see `BENCHMARKS.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct OfferedDemand {
    /// The rate and latency estimator, and the quantile it aims at. Default:
    /// [`DemandTracking::default`] with a decay of 15 s (a burst's connections are
    /// let go faster than [`DemandTracking`]'s 20 s, yet bursts 15 s apart still find
    /// about two fifths of them).
    pub tracking: DemandTracking,
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

#[derive(Clone, Debug, Default, PartialEq)]
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
            tracking: DemandTracking {
                decay: Duration::from_secs(15),
                ..DemandTracking::default()
            },
            hung_factor: 4.0,
            paced: 4,
            quiet_decay: Duration::from_millis(500),
            state: OfferedState::default(),
        }
    }
}

impl OfferedDemand {
    /// The demand rate planned for, gets per second.
    pub fn rate(&self) -> f64 {
        self.state.rate
    }

    /// The capacity the estimates call for (before the bounds and hung dials).
    pub fn target(&self) -> usize {
        let m = self.state.rate * self.tracking.latency().as_secs_f64();
        if m < 1e-3 {
            return 0;
        }
        let q = poisson_quantile(m, self.tracking.miss);
        let burst = self.state.dispersion.clamp(1.0, 4.0).sqrt() - 1.0;
        let extra = z_of(self.tracking.miss) * m.sqrt() * burst;
        q + extra.max(0.0).ceil() as usize + 1
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
    fn observe(&mut self, what: Observed, now: Instant) {
        if let Observed::Dialed { .. } = what {
            // One landed: the server is back, dial at full speed again.
            self.state.failing = false;
        }
        self.tracking.observe(what, now);
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
    fn a_step_up_is_followed_in_one_round() {
        let mut p = DemandTracking::default();
        let t0 = Instant::now();
        let r = RoundInput {
            capacity: 8,
            interval: Duration::from_millis(100),
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
            min_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
        };
        p.observe(
            Observed::Dialed {
                took: Duration::from_millis(50),
            },
            t0,
        );
        let mut now = t0;
        let mut d = p.round(&r, now);
        for _ in 0..100 {
            p.observe(Observed::Get { waited: false }, now);
        }
        now += Duration::from_millis(100);
        d = p.round(
            &RoundInput {
                capacity: d.capacity,
                ..r
            },
            now,
        );
        assert!(p.rate() > 900.0, "{}", p.rate());
        assert!(d.capacity > 100, "{d:?}");
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

    /// Records every round's input; the capacity it answers is set from outside.
    #[derive(Clone, Debug)]
    struct Recorder {
        seen: std::sync::Arc<std::sync::Mutex<Vec<RoundInput>>>,
        capacity: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Adapt for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }
        fn clone_box(&self) -> Box<dyn Adapt> {
            Box::new(self.clone())
        }
        fn round(&mut self, r: &RoundInput, _now: Instant) -> Decision {
            self.seen.lock().unwrap().push(*r);
            Decision {
                capacity: self.capacity.load(std::sync::atomic::Ordering::Relaxed),
                interval: r.min_interval,
            }
        }
        fn hung_after(&self) -> Option<Duration> {
            Some(Duration::from_secs(1))
        }
        fn trim(&self) -> Option<Trim> {
            Some(Trim {
                slack: 2,
                per_round: 3,
            })
        }
    }

    #[test]
    fn rounds_see_waits_failures_and_hung_dials_and_trim_with_hysteresis() {
        use crate::testing::{SplitDials, SplitOutputs};
        use crate::{ClientConfig, ClientMachine, ConnId, Got, SeededRandom, Stage};
        let ms = Duration::from_millis;
        let rec = Recorder {
            seen: Default::default(),
            capacity: std::sync::Arc::new(4.into()),
        };
        let cfg = ClientConfig::builder()
            .capacity(1, 64)
            .interval(ms(100), ms(100))
            .adapt(Adaptation::custom(rec.clone()))
            .build()
            .unwrap();
        let t0 = Instant::now();
        let mut m = ClientMachine::<u32>::new(cfg, SeededRandom::from_seed([1; 32]), t0);
        m.handle_timeout(t0);
        let tickets: Vec<_> = std::iter::from_fn(|| m.poll_dial(t0)).collect();
        assert_eq!(tickets.len(), 4);
        let mut tickets = tickets.into_iter();
        let id = |b: u8| ConnId::from_random([b, 0, 0, 0]);
        // One lands; a get finds it dead and then waits: offered demand not met.
        let now = t0 + ms(10);
        m.handle_dial_success(tickets.next().unwrap(), id(1), 1, now);
        let Got::Check(c) = m.get_any(now, now + ms(500)) else {
            panic!("a candidate")
        };
        assert!(matches!(m.handle_check(c, false, now), Got::Wait(_)));
        // A get by an id still in flight waits too.
        assert!(matches!(m.get(id(9), now, now + ms(500)), Got::Wait(_)));
        m.handle_dial_failure(tickets.next().unwrap(), Stage::Connect, now);
        // Two dials hang past a second.
        let now = t0 + ms(1_200);
        m.handle_timeout(now);
        let r = *rec.seen.lock().unwrap().last().unwrap();
        assert_eq!((r.gets, r.waited, r.failed, r.hung), (2, 2, 1, 2), "{r:?}");
        // Nine idle at a capacity of one: the trim closes three a round (the newest
        // first) until the capacity is held, with the hysteresis of its slack.
        for t in tickets {
            m.handle_dial_success(t, id(20), 20, now);
        }
        let _ = m.take_closes();
        let mut now = now;
        rec.capacity.store(9, std::sync::atomic::Ordering::Relaxed);
        now += ms(100);
        m.handle_timeout(now);
        let mut k = 100;
        while let Some(t) = m.poll_dial(now) {
            k += 1;
            m.handle_dial_success(t, id(k), u32::from(k), now);
        }
        let _ = m.take_closes();
        let held = m.idle() + m.in_flight();
        assert_eq!(held, 9);
        rec.capacity
            .store(held - 2, std::sync::atomic::Ordering::Relaxed);
        now += ms(100);
        m.handle_timeout(now);
        assert!(
            m.take_closes().is_empty(),
            "within the slack: nothing closed"
        );
        rec.capacity.store(1, std::sync::atomic::Ordering::Relaxed);
        let mut closed = Vec::new();
        for _ in 0..10 {
            now += ms(100);
            m.handle_timeout(now);
            let c = m.take_closes();
            assert!(c.len() <= 3, "{c:?}");
            closed.extend(c);
        }
        assert_eq!(m.idle() + m.in_flight(), 1);
        assert_eq!(closed.len(), held - 1);
        assert_eq!(m.counters().trimmed, closed.len() as u64);
        // Newest first: the server hands out its oldest, so a trim must not race it.
        let order: Vec<u32> = closed.iter().map(|(_, c)| *c).collect();
        assert!(order.windows(2).all(|w| w[0] > w[1]), "{order:?}");
    }
}
