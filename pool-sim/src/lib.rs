//! Model-based testing of a reverse-tunnel pool's adaptation policy.
//!
//! A simulated network and clock drive `pool-core`'s client and server machines
//! through the same driver protocol code the tokio and threads pools run, with no
//! runtime and no I/O ([`sim`]). On that pair, [`adapt`] scores an adaptation policy
//! (`pool_core::Adaptation`, the default or your own) on seeded demand scenarios,
//! compares policies seed by seed on a scoreboard, and checks the laws every policy
//! must keep. A run is a pure function of its seed ([`rng::SplitMix64`]), so a failing
//! case replays exactly.
//!
//! The `pool-sim` binary runs every shipped scenario for the default policy and the
//! baselines and prints the scoreboard; `examples/custom_policy.rs` tests a policy of
//! one's own.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's example, compiled and run as a doctest so that it stays true.
#[cfg(all(doctest, feature = "laws"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod adapt;
pub mod rng;
pub mod sim;
pub mod stats;
