//! Adaptation policies on the simulated pair: scenarios, scores, the scoreboard's
//! figures, and the laws every policy must keep.
//!
//! A [`Scenario`] is a seeded demand trace plus a network (latencies, handshake
//! times, faults, an outage, server restarts) on a [`SimPair`](crate::sim::SimPair);
//! [`file`](mod@file) reads one from a JSON or CSV file. [`run`] scores a
//! policy ([`pool_core::Adaptation`]) on one: the share of gets served at once, the
//! wait quantiles, the idle connection-seconds at both ends, dials per served get, and
//! the seconds to recover after a step. A [`Scoreboard`] runs policies on scenarios
//! for several seeds, all runs on one work queue, and reports each figure as a mean
//! with its 95 % interval ([`Interval`]); since every policy sees the same users on a
//! seed, policies are compared seed by seed ([`paired`]), and one beats another only
//! beyond the interval of those differences ([`Verdict`]). The board's baselines,
//! [`GoBehaviour`] and [`DemandTracking`], are its own policies ([`policy`] names
//! them all). The `pool-sim` binary runs every shipped scenario for the default policy
//! and the baselines and prints the table of `BENCHMARKS.md`.
//! [`check_laws`] (feature `laws`, on by default) applies the laws to any policy, your own included, in one call.
//!
//! To test a policy of your own (`examples/custom_policy.rs` is a whole
//! one):
//!
//! ```
//! use pool_core::Adaptation;
//! use pool_sim::adapt::{check_laws, run, LawOptions, Metric, Scenario, Scoreboard};
//! use std::time::Duration;
//!
//! let mine = Adaptation::default(); // or Adaptation::custom(YourPolicy::default())
//! let s = Scenario::named("steady_100", Duration::from_secs(20)).unwrap();
//! let score = run(&mine, &s, 1);
//! assert!(score.served_at_once_pct > 90.0, "{score:?}");
//!
//! let board = Scoreboard::new().scenarios(vec![s]).seeds([1, 2]).run(&mine);
//! let at_once = board.results[0].interval(Metric::ServedAtOncePct).unwrap();
//! assert!(at_once.mean > 90.0, "{at_once}");
//! # let _ = (check_laws, LawOptions::quick);
//! ```

mod baselines;
mod board;
pub mod file;
#[cfg(feature = "laws")]
mod laws;
mod scenario;
mod score;

pub use baselines::{policy, DemandTracking, GoBehaviour};
pub use board::{Board, Metric, ScenarioResult, Scoreboard, FULL_LENGTH, QUICK_LENGTH};

pub use crate::stats::{paired, t95, Interval, Paired, Verdict};
#[cfg(feature = "laws")]
#[cfg_attr(docsrs, doc(cfg(feature = "laws")))]
pub use laws::{check_laws, constant_rate, demand_trace, turns, LawOptions};
pub use scenario::{
    client_config, lan, server_config, wan, DemandTrace, Outage, Scenario, HARDER_LENGTH,
    STEADY_USERS,
};
pub use score::{json, run, Figure, Score};
