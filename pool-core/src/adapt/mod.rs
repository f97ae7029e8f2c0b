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
//! Two policies come with the crate:
//! - [`OfferedDemand`], the default: estimates the offered demand rate and the refill
//!   latency and holds what that latency needs plus a Poisson margin, counts hung
//!   dials against its capacity, closes idle connections above it and paces its dials
//!   while they fail (see its docs, and the scoreboard in `BENCHMARKS.md`);
//! - [`GoRules`]: the Go package v1.0.6 rules ([`IntervalPolicy`](crate::IntervalPolicy), [`CapacityPolicy`](crate::CapacityPolicy)),
//!   decision for decision, on this crate's refill.
//!
//! Choose one with [`Adaptation`] in
//! [`ClientConfigBuilder::adapt`](crate::ClientConfigBuilder::adapt); bring your own
//! with [`Adaptation::custom`]. The scoreboard's baselines (the Go package's own way of
//! refilling, an earlier demand tracker) are policies of that kind, in
//! `pool_sim::adapt`, which also scores a policy of yours against these.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod gorules;
mod offered;

pub use gorules::GoRules;
pub use offered::{OfferedDemand, Tracking};

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
    /// A short lower-case name (`gorules`, `offered`): what reports and the scoreboard
    /// call the policy.
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

/// The policy of a client configuration.
///
/// Two configurations compare equal when their policies do: the built-in variants by
/// their parameters, and [`Custom`](Self::Custom) by identity. A custom policy equals
/// only itself and its clones (cloning an `Adaptation`, or a configuration holding
/// one, shares the policy); two policies made separately never compare equal, even
/// with the same parameters, since the trait cannot compare them.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Adaptation {
    /// The Go package's rules, with their interval and capacity rules
    /// (`Adaptation::GoRules(GoRules::default())` is the Go package's, rule for rule).
    GoRules(GoRules),
    /// [`OfferedDemand`] with these parameters.
    OfferedDemand(OfferedDemand),
    /// A policy of your own ([`Adaptation::custom`]): each machine takes a fresh
    /// [`clone_box`](Adapt::clone_box) of it.
    Custom(Arc<dyn Adapt>),
}

impl Default for Adaptation {
    /// [`OfferedDemand`]: on the scoreboard it serves as many gets at once as the Go
    /// rules and the Go package's own refill on every scenario but the outage (where
    /// it stays 0.05 points behind the Go rules, which hold eight times its idle
    /// connections), with a third of the Go rules' idle connections in all
    /// (`BENCHMARKS.md`).
    fn default() -> Self {
        Self::OfferedDemand(OfferedDemand::default())
    }
}

impl PartialEq for Adaptation {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::GoRules(a), Self::GoRules(b)) => a == b,
            (Self::OfferedDemand(a), Self::OfferedDemand(b)) => a == b,
            (Self::Custom(a), Self::Custom(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Adaptation {}

impl Adaptation {
    /// A policy of your own.
    pub fn custom(policy: impl Adapt + 'static) -> Self {
        Self::Custom(Arc::new(policy))
    }

    /// A built-in policy by name: `gorules` or `offered` (the default).
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "gorules" => Some(Self::GoRules(GoRules::default())),
            "offered" => Some(Self::OfferedDemand(OfferedDemand::default())),
            _ => None,
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        match self {
            Self::GoRules(_) => "gorules",
            Self::OfferedDemand(_) => "offered",
            Self::Custom(p) => p.name(),
        }
    }

    /// A fresh instance for a machine.
    pub(crate) fn instance(&self) -> Box<dyn Adapt> {
        match self {
            Self::GoRules(rules) => Box::new(*rules),
            Self::OfferedDemand(d) => Box::new(d.clone()),
            Self::Custom(p) => p.clone_box(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug)]
    struct Fixed(usize);

    impl Adapt for Fixed {
        fn name(&self) -> &str {
            "fixed"
        }
        fn clone_box(&self) -> Box<dyn Adapt> {
            Box::new(self.clone())
        }
        fn round(&mut self, r: &RoundInput, _now: Instant) -> Decision {
            Decision {
                capacity: self.0,
                interval: r.min_interval,
            }
        }
    }

    #[test]
    fn built_in_policies_compare_by_parameters() {
        assert_eq!(
            Adaptation::GoRules(GoRules::default()),
            Adaptation::GoRules(GoRules::default())
        );
        assert_eq!(Adaptation::default(), Adaptation::default());
        assert_ne!(
            Adaptation::GoRules(GoRules::default()),
            Adaptation::default()
        );
        let mut slower = OfferedDemand::default();
        slower.quiet_decay = Duration::from_secs(2);
        assert_ne!(Adaptation::OfferedDemand(slower), Adaptation::default());
        let mut nan = OfferedDemand::default();
        nan.hung_factor = f64::NAN;
        let nan = Adaptation::OfferedDemand(nan);
        assert_eq!(nan, nan.clone(), "equality stays reflexive");
    }

    #[test]
    fn a_custom_policy_equals_itself_and_its_clones_only() {
        let mine = Adaptation::custom(Fixed(4));
        assert_eq!(mine, mine.clone());
        assert_ne!(mine, Adaptation::custom(Fixed(4)), "made separately");
        assert_ne!(mine, Adaptation::GoRules(GoRules::default()));
        // A custom policy named like a built-in one is not that one.
        #[derive(Clone, Debug)]
        struct Impostor;
        impl Adapt for Impostor {
            fn name(&self) -> &str {
                "gorules"
            }
            fn clone_box(&self) -> Box<dyn Adapt> {
                Box::new(Self)
            }
            fn round(&mut self, r: &RoundInput, _now: Instant) -> Decision {
                Decision {
                    capacity: r.capacity,
                    interval: r.interval,
                }
            }
        }
        assert_ne!(
            Adaptation::custom(Impostor),
            Adaptation::GoRules(GoRules::default())
        );
        let cfg = crate::ClientConfig::builder()
            .adapt(mine.clone())
            .build()
            .unwrap();
        assert_eq!(
            cfg.clone(),
            cfg,
            "a configuration shares its policy with its clones"
        );
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
