//! Laws every adaptation policy must keep, checked on the simulated pair, and the
//! proptest strategies that generate the demand they are checked under.

use std::time::Duration;

use pool_core::Adaptation;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::scenario::{DemandTrace, Scenario};
use super::score::run;
use crate::sim::{Faults, RoundRecord, SimPair};

/// How hard [`check_laws`] tries.
#[derive(Clone, Copy, Debug)]
pub struct LawOptions {
    /// Random demand traces checked for the bounds.
    pub cases: u32,
    /// How long constant demand runs before the capacity must have settled, and then
    /// how long it is watched.
    pub settle: Duration,
    /// Within how long after demand stops the capacity must be back at its minimum.
    pub quiet: Duration,
    /// Within how long after demand stops the idle connections (at both ends) must be
    /// back at the minimum capacity. Unless its policy asks it to close idle
    /// connections above the capacity ([`pool_core::Adapt::trim`], as the default
    /// does), the client closes none when its capacity falls (only a put-back checks
    /// it), so the surplus goes when the server's maximum idle age (10 minutes on the
    /// scoreboard) closes it: for such a policy this must exceed that age.
    pub idle_quiet: Duration,
    /// Random demand traces run twice on one seed for the determinism law.
    pub replays: u32,
    /// How many times the capacity may turn (from rising to falling or back) while
    /// watched under constant demand.
    pub max_turns: usize,
    /// The seed of the traces and of the simulated pairs.
    pub seed: u64,
}

impl LawOptions {
    /// A few seconds of wall time in a debug build.
    pub fn quick() -> Self {
        Self {
            cases: 8,
            settle: Duration::from_secs(60),
            quiet: Duration::from_secs(300),
            idle_quiet: Duration::from_secs(660),
            replays: 2,
            max_turns: 40,
            seed: 1,
        }
    }
}

/// Demand traces: 1 to 6 pieces of 1 to 60 s, each at a rate drawn log-uniformly from
/// 0.1 to 2,000 a second, or idle (zero) one time in five.
pub fn demand_trace() -> impl Strategy<Value = DemandTrace> {
    let piece = (
        1u64..=60,
        prop_oneof![1 => Just(0.0), 4 => (-1.0f64..3.3).prop_map(|e| 10f64.powf(e))],
    );
    proptest::collection::vec(piece, 1..=6).prop_map(|v| DemandTrace {
        pieces: v
            .into_iter()
            .map(|(s, r)| (Duration::from_secs(s), r))
            .collect(),
    })
}

/// A constant rate, log-uniform from 1 to 1,000 a second.
pub fn constant_rate() -> impl Strategy<Value = f64> {
    (0.0f64..3.0).prop_map(|e| 10f64.powf(e))
}

/// Times the capacity turns: a rise after a fall or a fall after a rise.
pub fn turns(rounds: &[RoundRecord]) -> usize {
    let mut last = 0i8;
    let mut n = 0;
    for r in rounds {
        let d = match r.capacity_after.cmp(&r.capacity_before) {
            std::cmp::Ordering::Greater => 1,
            std::cmp::Ordering::Less => -1,
            std::cmp::Ordering::Equal => continue,
        };
        if last != 0 && d != last {
            n += 1;
        }
        last = d;
    }
    n
}

fn law(ok: bool, what: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(what()))
    }
}

/// Checks the laws every policy must keep, on the scoreboard's configuration
/// (capacity 8 to 4,096, interval 100 ms to 1 s) and LAN:
///
/// 1. **bounds**: under random demand traces ([`demand_trace`]), every round's
///    capacity and interval stay inside the bounds, and the simulated pair stays
///    consistent (no mismatched pair, no double handout);
/// 2. **no runaway**: under a constant demand ([`constant_rate`]), after
///    `settle`, the capacity turns at most `max_turns` times over another `settle`
///    and ends within a factor of two of where it was when watching began;
/// 3. **quiet returns to the minimum**: `quiet` after demand stops, the capacity is at
///    its minimum;
/// 4. **idle returns to the minimum**: `idle_quiet` after demand stops, neither end holds
///    more idle connections than the minimum capacity;
/// 5. **determinism**: a random demand trace, with 1 % of the connects refused and 1 %
///    of the dials hanging, run twice on one seed gives the same event transcript, the
///    same rounds and the same score (`replays` traces). A policy that reads a clock,
///    draws its own random numbers, iterates a randomly seeded map or shares state
///    between its clones breaks it;
/// 6. **no growth while backing off**: under a constant demand of 50 gets a second,
///    after `settle`, every connect is refused for 30 s: no round at which the machine
///    is backing off raises the capacity (nothing it dials can land, so a larger
///    capacity only means more connections to open at once when the server is back).
///
/// ```
/// use pool_core::{Adapt, Adaptation, Decision, Observed, RoundInput};
/// use pool_sim::adapt::{check_laws, LawOptions};
/// use std::time::Instant;
///
/// /// A toy: the most gets any one-second round saw, on top of the minimum, forgotten
/// /// after 30 rounds without a get.
/// #[derive(Clone, Debug, Default)]
/// struct HighWater { gets: usize, most: usize, quiet: u32 }
///
/// impl Adapt for HighWater {
///     fn name(&self) -> &str { "high_water" }
///     fn clone_box(&self) -> Box<dyn Adapt> { Box::new(self.clone()) }
///     fn observe(&mut self, what: Observed, _now: Instant) {
///         if let Observed::Get { .. } = what { self.gets += 1 }
///     }
///     fn round(&mut self, r: &RoundInput, _now: Instant) -> Decision {
///         let gets = std::mem::take(&mut self.gets);
///         self.quiet = if gets == 0 { self.quiet + 1 } else { 0 };
///         self.most = if self.quiet >= 30 { 0 } else { self.most.max(gets) };
///         Decision { capacity: r.min_capacity + self.most, interval: r.max_interval }
///     }
/// }
///
/// let opts = LawOptions { cases: 2, ..LawOptions::quick() };
/// check_laws(&Adaptation::custom(HighWater::default()), opts).unwrap();
/// ```
pub fn check_laws(policy: &Adaptation, opts: LawOptions) -> Result<(), String> {
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: opts.cases,
            failure_persistence: None,
            ..Config::default()
        },
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &[opts.seed as u8; 32],
        ),
    );
    let shape = |name| Scenario::named(name, Duration::from_secs(60)).expect("shipped");
    let base = shape("steady_1");
    // 1. Bounds.
    runner
        .run(&demand_trace(), |trace| {
            let mut s = base.clone();
            s.demand = trace;
            let mut sim = s.pair(policy.clone(), opts.seed);
            let mut broken = Ok(());
            s.drive(&mut sim, |sim| {
                if broken.is_ok() {
                    broken = sim.check();
                }
            });
            law(broken.is_ok(), || format!("bounds: {broken:?}"))
        })
        .map_err(|e| format!("{}: {e}", policy.name()))?;
    // 2 and 3. No runaway, then back to the minimum.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: opts.cases.div_ceil(2),
            failure_persistence: None,
            ..Config::default()
        },
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &[opts.seed as u8 ^ 0x5a; 32],
        ),
    );
    runner
        .run(&constant_rate(), |rate| {
            let mut sim = base.pair(policy.clone(), opts.seed);
            sim.set_demand(rate);
            sim.run_for(opts.settle);
            let from = sim.rounds().len();
            let start = sim.client_status().capacity;
            sim.run_for(opts.settle);
            let watched = &sim.rounds()[from..];
            let n = turns(watched);
            law(n <= opts.max_turns, || {
                format!("runaway at {rate:.1}/s: the capacity turned {n} times")
            })?;
            let end = sim.client_status().capacity;
            law(end <= start * 2 + 2 && start <= end * 2 + 2, || {
                format!("runaway at {rate:.1}/s: capacity {start} then {end}")
            })?;
            sim.set_demand(0.0);
            sim.run_for(opts.quiet);
            let st = sim.client_status();
            let min = sim.client_config().min_capacity();
            law(st.capacity == min, || {
                format!(
                    "after {rate:.1}/s then {:?} of quiet: capacity {}, not {min}",
                    opts.quiet, st.capacity
                )
            })?;
            // 4. Idle connections follow, at both ends.
            let left = opts.idle_quiet.saturating_sub(opts.quiet);
            let idle = |sim: &SimPair| (sim.client_status().idle, sim.server_status().idle);
            let settled = sim.run_until(left, |sim| {
                let (c, s) = idle(sim);
                c <= min && s <= min
            });
            law(settled, || {
                let (c, s) = idle(&sim);
                format!(
                    "after {rate:.1}/s then {:?} of quiet: {c} idle at the client, {s} at \
                     the server, above the minimum {min}",
                    opts.idle_quiet
                )
            })?;
            law(sim.check().is_ok(), || format!("{:?}", sim.check()))
        })
        .map_err(|e| format!("{}: {e}", policy.name()))?;
    // 5. Determinism.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: opts.replays,
            failure_persistence: None,
            ..Config::default()
        },
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &[opts.seed as u8 ^ 0xd7; 32],
        ),
    );
    let replays = runner
        .run(&demand_trace(), |trace| {
            let mut s = base.clone();
            s.demand = trace;
            s.net.transcript = true;
            s.faults = Faults {
                connect_refused: 0.01,
                silence: 0.01,
                ..Faults::none()
            };
            let once = || {
                let mut sim = s.pair(policy.clone(), opts.seed);
                s.drive(&mut sim, |_| {});
                (
                    sim.transcript_hash(),
                    sim.rounds().to_vec(),
                    run(policy, &s, opts.seed),
                )
            };
            let (a, b) = (once(), once());
            law(a.0 == b.0, || {
                "determinism: two runs of one seed, two transcripts".into()
            })?;
            law(a.1 == b.1, || {
                let k = a.1.iter().zip(&b.1).take_while(|(x, y)| x == y).count();
                format!("determinism: the rounds differ from round {k}")
            })?;
            law(a.2 == b.2, || {
                format!(
                    "determinism: two runs of one seed score {:?} and {:?}",
                    a.2, b.2
                )
            })
        })
        .map_err(|e| format!("{}: {e}", policy.name()));
    replays?;
    // 6. No growth while backing off.
    let mut sim = base.pair(policy.clone(), opts.seed);
    sim.set_demand(50.0);
    sim.run_for(opts.settle);
    let from = sim.rounds().len();
    sim.set_faults(Faults {
        connect_refused: 1.0,
        ..Faults::none()
    });
    sim.run_for(Duration::from_secs(30));
    let rounds = &sim.rounds()[from..];
    if !rounds.iter().any(|r| r.backing_off) {
        return Err(format!(
            "{}: no growth while backing off: the machine never backed off",
            policy.name()
        ));
    }
    if let Some(r) = rounds
        .iter()
        .find(|r| r.backing_off && r.capacity_after > r.capacity_before)
    {
        return Err(format!(
            "{}: no growth while backing off: at {:?} the capacity rose from {} to {}",
            policy.name(),
            r.at,
            r.capacity_before,
            r.capacity_after
        ));
    }
    Ok(())
}
