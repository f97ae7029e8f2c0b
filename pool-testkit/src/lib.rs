//! Test kit of the pool: a simulated network and clock that drive the `pool-core`
//! machines with no runtime; more tools join it as they land.
#![forbid(unsafe_code)]

pub mod sim;
