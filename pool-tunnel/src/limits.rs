//! The open-descriptor limit: every user, target and pooled connection is a descriptor,
//! and the default soft limit (often 1024) is reached by a modest flood.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force
/// (`None`: unlimited). Needs no privilege and affects only this process.
pub fn raise_nofile() -> std::io::Result<Option<u64>> {
    let lim = getrlimit(Resource::Nofile);
    if lim.current == lim.maximum {
        return Ok(lim.current);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )?;
    Ok(lim.maximum)
}

/// `want`, or a `1/share` part of the soft descriptor limit if that is smaller (at
/// least 16): slots strangers can fill must never take every descriptor, or the
/// accept loops of every port fail together.
pub fn within_descriptors(want: usize, share: u64) -> usize {
    match getrlimit(Resource::Nofile).current {
        Some(n) => want.min(
            usize::try_from(n / share.max(1))
                .unwrap_or(usize::MAX)
                .max(16),
        ),
        None => want,
    }
}

/// Descriptors this process has open now (Linux: entries of `/proc/self/fd`).
pub fn open_descriptors() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}
