//! Test fixtures of the pool: the tools its reliability tests, the tunnel's tests and
//! the benchmark binaries share.
//!
//! Unpublished, like `rustls-test`: a fault-injecting proxy ([`proxy`]), fake dialers
//! ([`dialers`]), a loopback pair builder ([`pair`]), an echo service and a load
//! generator whose every byte is checked ([`load`]), the soak runner ([`soak`]) and its
//! QUIC twin ([`quic_soak`]), the fault matrix's transport columns ([`matrix`]), the
//! attacks on a tunnel port ([`attack`]), nginx as a child process in front of a server
//! pool ([`nginx`]), the descriptor limit and CPU time of the process ([`process`]) and
//! child processes whose output is watched ([`watched`]). Every tool is bounded: proxies
//! and pools end when closed, loops end at end of stream or at a deadline, and
//! randomness comes from one seeded
//! generator, [`rng::SplitMix64`] (the simulator's, from `pool-sim`), so that a
//! failing run replays from its seed. Quantiles and medians come from [`stats`], the
//! same module the scoreboard and the benchmarks use.
//!
//! The simulator and the adaptation scoreboard are the `pool-sim` crate; the
//! benchmarks and the full-size attack and soak binaries are `pool-bench`.
#![forbid(unsafe_code)]

pub use pool_sim::{rng, stats};

pub mod attack;
pub mod count_proxy;
pub mod dialers;
pub mod load;
pub mod matrix;
pub mod nginx;
pub mod pair;
#[cfg(unix)]
pub mod process;
pub mod proxy;
pub mod quic_soak;
pub mod soak;
pub mod udp_load;
pub mod udp_proxy;
#[cfg(unix)]
pub mod watched;
