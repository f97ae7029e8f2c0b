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

/// The machine the figures come from.
pub(crate) fn machine(quick: bool, nofile: u64, scale: f64) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    serde_json::json!({
        "cpu": cpu,
        "cores": cores,
        "kernel": kernel,
        "rustc": rustc,
        "loadavg_at_start": loadavg,
        "quick": quick,
        "nofile_limit": nofile,
        "scale": scale,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
