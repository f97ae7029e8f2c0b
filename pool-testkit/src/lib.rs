//! Test kit of the pool: a simulated network and clock that drive the `pool-core`
//! machines with no runtime, fault injection, and the helpers of the model, soak and
//! benchmark tests.
//!
//! Unpublished, like `rustls-test`: it exists so that the reliability suite in
//! `tests/` and the benchmark binary share one set of well-behaved tools: a
//! fault-injecting proxy ([`proxy`]), fake dialers ([`dialers`]), a loopback pair
//! builder ([`pair`]), the soak runner ([`soak`]) and the descriptor limit and CPU
//! time of the process ([`process`]). Every tool is bounded: proxies
//! and pools end when closed, loops end at end of stream or at a deadline, and
//! randomness comes from one seeded generator, [`rng::SplitMix64`], so that a failing
//! run replays from its seed. The simulated pair ([`sim`]) seeds the machines' own
//! generators from it too.
#![forbid(unsafe_code)]

pub mod adapt;
pub mod sim;

pub mod attack;
pub mod dialers;
pub mod flash;
pub mod pair;
#[cfg(unix)]
pub mod process;
pub mod proxy;
pub mod report;
pub mod rng;
pub mod soak;
pub mod udp_proxy;
