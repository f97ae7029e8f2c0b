//! Benchmarks of the pool and the tunnel, and the full-size attack and soak runs.
//!
//! Unpublished. Every figure is printed beside a baseline measured in the same run, in
//! one format ([`report`]): a table on stdout and a JSON file that names the machine.
//! The binaries:
//! - `pool-bench`: fill, checkout, memory, the core's idle map, idle CPU, a flash crowd
//!   on real sockets beside the simulator's prediction ([`flash`]), scale;
//! - `threads-bench`: the plain-threads pool against the tokio pools;
//! - `tunnel-bench`: the `tunnel` binary's first byte, throughput, sessions and memory,
//!   beside a direct connection and rathole;
//! - `pool-attack`: the attacks of `pool_testkit::attack` at full size;
//! - `pool-soak`: the soak runners of `pool_testkit::soak` and `pool_testkit::quic_soak`
//!   (the TCP pools, then the QUIC pools) for as long as asked.
#![forbid(unsafe_code)]

pub mod flash;
pub mod report;
