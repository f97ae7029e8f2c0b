//! The open-descriptor limit: every user, target and pooled connection is a descriptor,
//! and the default soft limit (often 1024) is reached by a modest flood.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// The largest count a setting takes (pool capacities, sessions, candidates, new
/// sessions a second): past it a value is a typing error, and far past it tokio's
/// semaphores and the tables would fail at run time instead of at start-up.
pub(crate) const COUNT_LIMIT: u64 = 1 << 20;
/// The longest deadline a setting takes, in seconds (a week).
pub(crate) const SECS_LIMIT: u64 = 7 * 24 * 3600;

/// The pause after a failed accept (out of descriptors, say): doubling from
/// [`Backoff::FIRST`] to [`Backoff::LONGEST`] while accepts fail, none once one
/// succeeds. Every accept loop of the tunnel uses it, so none spins or floods the log,
/// and none sleeps longer than it must.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Backoff {
    pause: std::time::Duration,
}

impl Backoff {
    /// The first pause.
    pub(crate) const FIRST: std::time::Duration = std::time::Duration::from_millis(5);
    /// The longest pause.
    pub(crate) const LONGEST: std::time::Duration = std::time::Duration::from_secs(1);

    /// An accept failed: how long to pause before the next.
    pub(crate) fn failed(&mut self) -> std::time::Duration {
        self.pause = (self.pause * 2).clamp(Self::FIRST, Self::LONGEST);
        self.pause
    }

    /// An accept succeeded.
    pub(crate) fn succeeded(&mut self) {
        self.pause = std::time::Duration::ZERO;
    }
}

/// Refuses `value` outside `1..=COUNT_LIMIT`, naming the setting.
pub(crate) fn check_count(name: &str, value: usize) -> Result<(), String> {
    if value == 0 || value as u64 > COUNT_LIMIT {
        return Err(format!("{name} {value}: must be 1 to {COUNT_LIMIT}"));
    }
    Ok(())
}

/// Refuses a deadline outside `1 ms..=SECS_LIMIT s`, naming the setting.
pub(crate) fn check_secs(name: &str, value: std::time::Duration) -> Result<(), String> {
    if value.is_zero() || value.as_secs() > SECS_LIMIT {
        return Err(format!(
            "{name} {value:?}: must be above 0 and at most {SECS_LIMIT} s"
        ));
    }
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force
/// (`None`: unlimited). Needs no privilege and affects only this process.
pub(crate) fn raise_nofile() -> std::io::Result<Option<u64>> {
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
pub(crate) fn within_descriptors(want: usize, share: u64) -> usize {
    match getrlimit(Resource::Nofile).current {
        Some(n) => want.min(
            usize::try_from(n / share.max(1))
                .unwrap_or(usize::MAX)
                .max(16),
        ),
        None => want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_accept_backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let pauses: Vec<Duration> = (0..10).map(|_| b.failed()).collect();
        assert_eq!(pauses[0], Backoff::FIRST);
        assert_eq!(pauses[1], 2 * Backoff::FIRST);
        assert_eq!(pauses[9], Backoff::LONGEST);
        b.succeeded();
        assert_eq!(b.failed(), Backoff::FIRST);
    }

    #[test]
    fn counts_and_deadlines_are_checked_with_their_name() {
        assert!(check_count("max_sessions", 4096).is_ok());
        let e = check_count("max_sessions", usize::MAX).unwrap_err();
        assert!(e.contains("max_sessions"), "{e}");
        assert!(check_count("x", 0).is_err());
        assert!(check_secs("idle", Duration::from_secs(300)).is_ok());
        assert!(check_secs("idle", Duration::from_secs(u64::MAX)).is_err());
        assert!(check_secs("idle", Duration::ZERO).is_err());
    }
}
