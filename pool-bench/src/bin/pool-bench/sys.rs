//! Process facts: descriptor limit, resident memory, CPU time, the machine.

use std::time::Duration;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force.
pub(crate) fn raise_nofile() -> u64 {
    pool_testkit::process::raise_nofile()
        .or_else(|_| pool_testkit::process::nofile_limit().map(|(soft, _)| soft))
        .unwrap_or(1024)
}

/// `VmRSS` of this process, in bytes.
pub(crate) fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// User plus system CPU time of this process (all threads).
pub(crate) fn cpu_time() -> Duration {
    pool_testkit::process::cpu_time().unwrap_or(Duration::ZERO)
}

/// The machine the figures come from, with the descriptor limit and the scale the
/// connection counts were run at.
pub(crate) fn machine(quick: bool, nofile: u64, scale: f64) -> serde_json::Value {
    let mut m = pool_bench::report::machine(quick);
    m["nofile_limit"] = nofile.into();
    m["scale"] = scale.into();
    m
}
