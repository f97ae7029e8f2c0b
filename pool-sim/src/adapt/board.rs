//! The scoreboard: policies × scenarios × seeds on one work queue, results with their
//! 95 % intervals, paired verdicts, and the figures of `pool-sim --json`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use pool_core::Adaptation;

use super::scenario::Scenario;
use super::score::{run, Figure, Score};
use crate::stats::{paired, Interval, Paired, Verdict};

/// A figure of a [`Score`], with its name, unit and which way is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// [`Score::served_at_once_pct`].
    ServedAtOncePct,
    /// [`Score::wait_p50_ms`].
    WaitP50Ms,
    /// [`Score::wait_p99_ms`].
    WaitP99Ms,
    /// [`Score::idle_conn_s`].
    IdleConnS,
    /// [`Score::idle_conn_s_client`].
    IdleConnSClient,
    /// [`Score::idle_conn_s_server`].
    IdleConnSServer,
    /// [`Score::dials_per_get`].
    DialsPerGet,
    /// [`Score::recover_s`] (only for scenarios with steps).
    RecoverS,
}

impl Metric {
    /// The metrics `pool-sim --json` writes, in order.
    pub const FIGURES: [Self; 5] = [
        Self::ServedAtOncePct,
        Self::WaitP99Ms,
        Self::IdleConnS,
        Self::DialsPerGet,
        Self::RecoverS,
    ];

    /// The name in figure names (`served_at_once_pct`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::ServedAtOncePct => "served_at_once_pct",
            Self::WaitP50Ms => "wait_p50_ms",
            Self::WaitP99Ms => "wait_p99_ms",
            Self::IdleConnS => "idle_conn_s",
            Self::IdleConnSClient => "idle_conn_s_client",
            Self::IdleConnSServer => "idle_conn_s_server",
            Self::DialsPerGet => "dials_per_get",
            Self::RecoverS => "recover_s",
        }
    }

    /// The unit.
    pub fn unit(self) -> &'static str {
        match self {
            Self::ServedAtOncePct => "%",
            Self::WaitP50Ms | Self::WaitP99Ms => "ms",
            Self::IdleConnS | Self::IdleConnSClient | Self::IdleConnSServer => "conn*s",
            Self::DialsPerGet => "dials",
            Self::RecoverS => "s",
        }
    }

    /// Whether more is better (only the share served at once).
    pub fn higher_is_better(self) -> bool {
        self == Self::ServedAtOncePct
    }

    /// The value in `s` (`None` for a recovery time where the scenario has no step).
    pub fn of(self, s: &Score) -> Option<f64> {
        Some(match self {
            Self::ServedAtOncePct => s.served_at_once_pct,
            Self::WaitP50Ms => s.wait_p50_ms,
            Self::WaitP99Ms => s.wait_p99_ms,
            Self::IdleConnS => s.idle_conn_s,
            Self::IdleConnSClient => s.idle_conn_s_client,
            Self::IdleConnSServer => s.idle_conn_s_server,
            Self::DialsPerGet => s.dials_per_get,
            Self::RecoverS => return s.recover_s,
        })
    }
}

/// One policy on one scenario: its score on each seed.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioResult {
    /// The scenario's name.
    pub scenario: String,
    /// The policy's name.
    pub policy: String,
    /// The seeds, in the order of `scores`.
    pub seeds: Vec<u64>,
    /// The score on each seed.
    pub scores: Vec<Score>,
}

impl ScenarioResult {
    /// The samples of `m`, one per seed (empty when the scenario has no such figure).
    pub fn samples(&self, m: Metric) -> Vec<f64> {
        self.scores.iter().filter_map(|s| m.of(s)).collect()
    }

    /// The mean of `m` over the seeds and its 95 % interval; `None` when the scenario
    /// has no such figure.
    pub fn interval(&self, m: Metric) -> Option<Interval> {
        let v = self.samples(m);
        (!v.is_empty()).then(|| Interval::of(&v))
    }

    /// This result against `other` on `m`, seed by seed over the seeds both ran;
    /// `None` when either lacks the figure or they share no seed.
    pub fn versus(&self, other: &Self, m: Metric) -> Option<Paired> {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (seed, s) in self.seeds.iter().zip(&self.scores) {
            let Some(i) = other.seeds.iter().position(|o| o == seed) else {
                continue;
            };
            if let (Some(x), Some(y)) = (m.of(s), m.of(&other.scores[i])) {
                a.push(x);
                b.push(y);
            }
        }
        (!a.is_empty()).then(|| paired(&a, &b, m.higher_is_better()))
    }

    /// This result's verdict against `other` on the scenario: by the share served at
    /// once, and where that ties, by the idle connection-seconds (fewer is better);
    /// each only beyond the 95 % interval of the paired differences.
    pub fn verdict(&self, other: &Self) -> Verdict {
        let at_once = self.versus(other, Metric::ServedAtOncePct);
        match at_once.map(|p| p.verdict) {
            Some(Verdict::Tie) | None => self
                .versus(other, Metric::IdleConnS)
                .map_or(Verdict::Tie, |p| p.verdict),
            Some(v) => v,
        }
    }

    /// The figures `adapt_<policy>_<scenario>_<metric>` (the mean over seeds, with
    /// `baseline`'s mean beside it when given) and `..._ci95` (the half-width of its
    /// 95 % interval, infinite with one seed; no baseline: the baseline's own
    /// half-width is its own figure), for [`Metric::FIGURES`].
    pub fn figures(&self, baseline: Option<&Self>) -> Vec<Figure> {
        let mut out = Vec::new();
        for m in Metric::FIGURES {
            let Some(i) = self.interval(m) else { continue };
            let b = baseline.and_then(|b| b.interval(m));
            let name = format!("adapt_{}_{}_{}", self.policy, self.scenario, m.name());
            out.push(Figure {
                name: name.clone(),
                value: i.mean,
                unit: m.unit(),
                baseline: b.map(|b| b.mean),
            });
            out.push(Figure {
                name: format!("{name}_ci95"),
                value: i.ci95,
                unit: m.unit(),
                baseline: None,
            });
        }
        out
    }
}

/// Every scenario's result for one policy, in the scoreboard's scenario order.
#[derive(Clone, Debug, PartialEq)]
pub struct Board {
    /// The policy's name.
    pub policy: String,
    /// One result per scenario.
    pub results: Vec<ScenarioResult>,
}

impl Board {
    /// The result on the scenario called `name`.
    pub fn scenario(&self, name: &str) -> Option<&ScenarioResult> {
        self.results.iter().find(|r| r.scenario == name)
    }

    /// This board's verdict on each scenario against `other`'s result on the same
    /// scenario ([`ScenarioResult::verdict`]); scenarios `other` lacks are left out.
    pub fn verdicts(&self, other: &Self) -> Vec<(String, Verdict)> {
        self.results
            .iter()
            .filter_map(|r| {
                let o = other.scenario(&r.scenario)?;
                Some((r.scenario.clone(), r.verdict(o)))
            })
            .collect()
    }

    /// Wins, ties and losses against `other` over the scenarios.
    pub fn tally(&self, other: &Self) -> (usize, usize, usize) {
        let v = self.verdicts(other);
        let n = |w| v.iter().filter(|(_, x)| *x == w).count();
        (n(Verdict::Win), n(Verdict::Tie), n(Verdict::Lose))
    }

    /// `m` summed over the scenarios on each seed, and the interval of those sums (the
    /// seeds every scenario ran); `None` when a scenario lacks the figure.
    pub fn total(&self, m: Metric) -> Option<Interval> {
        let seeds = &self.results.first()?.seeds;
        let mut sums = Vec::with_capacity(seeds.len());
        for seed in seeds {
            let mut sum = 0.0;
            for r in &self.results {
                let i = r.seeds.iter().position(|s| s == seed)?;
                sum += m.of(&r.scores[i])?;
            }
            sums.push(sum);
        }
        Some(Interval::of(&sums))
    }
}

/// Runs policies on scenarios for a set of seeds, every run on one work queue.
///
/// ```
/// use pool_core::Adaptation;
/// use pool_sim::adapt::{Metric, Scenario, Scoreboard};
/// use std::time::Duration;
///
/// let steady = Scenario::named("steady_100", Duration::from_secs(20)).unwrap();
/// let board = Scoreboard::new().scenarios(vec![steady]).seeds([1, 2, 3]);
/// let [demand, go] = &board.run_all(&[Adaptation::default(), Adaptation::GoRules(Default::default())])[..] else {
///     unreachable!()
/// };
/// let r = demand.scenario("steady_100").unwrap();
/// let at_once = r.interval(Metric::ServedAtOncePct).unwrap();
/// assert!(at_once.mean > 90.0, "{at_once}");
/// println!("{:?}", r.verdict(go.scenario("steady_100").unwrap()));
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Scoreboard {
    scenarios: Vec<Scenario>,
    seeds: Vec<u64>,
    jobs: usize,
}

impl Default for Scoreboard {
    fn default() -> Self {
        Self::new()
    }
}

/// The simulated length of each scenario on the full scoreboard: one hour (see
/// [`Scenario::all`] for the scenarios that stop earlier).
pub const FULL_LENGTH: Duration = Duration::from_secs(3_600);

/// The simulated length of each scenario on the quick scoreboard: five minutes.
pub const QUICK_LENGTH: Duration = Duration::from_secs(300);

impl Scoreboard {
    /// The full scoreboard: every shipped scenario ([`Scenario::all`] of
    /// [`FULL_LENGTH`]), seeds 1 to 5, as many threads as the machine has cores.
    pub fn new() -> Self {
        Self {
            scenarios: Scenario::all(FULL_LENGTH),
            seeds: (1..=5).collect(),
            jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// The quick scoreboard (`pool-sim --quick`): every shipped scenario of
    /// [`QUICK_LENGTH`], seeds 1 and 2.
    pub fn quick() -> Self {
        Self::new()
            .scenarios(Scenario::all(QUICK_LENGTH))
            .seeds([1, 2])
    }

    /// Runs these scenarios instead.
    pub fn scenarios(mut self, scenarios: Vec<Scenario>) -> Self {
        self.scenarios = scenarios;
        self
    }

    /// Runs these seeds instead (at least two for a finite interval).
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = u64>) -> Self {
        self.seeds = seeds.into_iter().collect();
        self
    }

    /// Runs on this many threads (at least one).
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = jobs.max(1);
        self
    }

    /// The scenarios it runs.
    pub fn scenario_list(&self) -> &[Scenario] {
        &self.scenarios
    }

    /// The seeds it runs.
    pub fn seed_list(&self) -> &[u64] {
        &self.seeds
    }

    /// Runs `policy` on every scenario and seed.
    pub fn run(&self, policy: &Adaptation) -> Board {
        self.run_all(std::slice::from_ref(policy))
            .pop()
            .expect("one board per policy")
    }

    /// Runs every policy on every scenario and seed, all runs on one work queue
    /// (longest first), and returns one board per policy in their order. Panics if a
    /// run breaks one of the simulated pair's invariants (see [`run`]).
    pub fn run_all(&self, policies: &[Adaptation]) -> Vec<Board> {
        let mut work: Vec<(usize, usize, usize)> = Vec::new();
        for p in 0..policies.len() {
            for s in 0..self.scenarios.len() {
                for k in 0..self.seeds.len() {
                    work.push((p, s, k));
                }
            }
        }
        let cost =
            |s: &Scenario| s.demand.expected_users() + 20.0 * s.demand.duration().as_secs_f64();
        work.sort_by(|a, b| cost(&self.scenarios[b.1]).total_cmp(&cost(&self.scenarios[a.1])));
        let done: Mutex<Vec<Option<Score>>> = Mutex::new(vec![None; work.len()]);
        let next = AtomicUsize::new(0);
        let index = |&(p, s, k): &(usize, usize, usize)| {
            (p * self.scenarios.len() + s) * self.seeds.len() + k
        };
        std::thread::scope(|scope| {
            for _ in 0..self.jobs.min(work.len()).max(1) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(p, s, k)) = work.get(i) else { break };
                    let score = run(&policies[p], &self.scenarios[s], self.seeds[k]);
                    let mut d = done.lock().unwrap_or_else(|e| e.into_inner());
                    d[index(&(p, s, k))] = Some(score);
                });
            }
        });
        let mut done = done
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter();
        policies
            .iter()
            .map(|p| Board {
                policy: p.name().to_owned(),
                results: self
                    .scenarios
                    .iter()
                    .map(|sc| ScenarioResult {
                        scenario: sc.name.clone(),
                        policy: p.name().to_owned(),
                        seeds: self.seeds.clone(),
                        scores: done
                            .by_ref()
                            .take(self.seeds.len())
                            .map(|s| s.expect("every run done"))
                            .collect(),
                    })
                    .collect(),
            })
            .collect()
    }
}
