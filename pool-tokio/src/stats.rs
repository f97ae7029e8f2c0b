//! What a pool reports.

use std::fmt;
use std::time::Duration;

use pool_core::{Counters, Status};

use crate::error::Failure;

/// A pool's status snapshot, its counters and its last background failure, taken
/// together. `Display` prints them in a few lines, with only the fields that mean
/// something for the pool's side.
///
/// A note on Go names: `active()` (Go: `Active`) counts **idle** connections, ready
/// to hand out, not connections in use; the pool does not track connections once they
/// are handed out.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Idle, capacity, interval, in flight, waiting.
    pub status: Status,
    /// Event counters.
    pub counters: Counters,
    /// The last dial (client) or handshake (server) that failed, if any did; see
    /// [`Failure::in_a_row`] for whether the pool is still failing.
    pub last_failure: Option<Failure>,
    /// Total time spent by the gets that had to wait (the ones not answered at once),
    /// from call to answer, whether a connection or a timeout ended the wait (bb8:
    /// `get_wait_time`). Measured by the driver on tokio's clock.
    pub get_wait: Duration,
    /// Gets that had to wait: how many `get_wait` adds up (bb8: `get_waited`).
    pub gets_waited: u64,
    pub(crate) client: bool,
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, k) = (&self.status, &self.counters);
        if self.client {
            writeln!(
                f,
                "client pool: {} idle of capacity {}, refill every {:?}, {} dials in flight, {} gets waiting",
                s.idle, s.capacity, s.interval, s.in_flight, s.waiting
            )?;
            writeln!(
                f,
                "  dials: {} started, {} made; failed at connect {}, TLS {}, id {}, key {}",
                k.dialed,
                k.created,
                k.dial_failures,
                k.handshake_failures,
                k.id_errors,
                k.auth_failures
            )?;
        } else {
            writeln!(
                f,
                "server pool: {} idle of at most {}, {} handshakes under way, {} gets waiting",
                s.idle, s.capacity, s.in_flight, s.waiting
            )?;
            writeln!(
                f,
                "  accepted: {} kept; failed at TLS {}, id {}, key {}; refused by filter {}, full {}, busy {}",
                k.created, k.handshake_failures, k.id_errors, k.auth_failures, k.refused_filter,
                k.refused_full, k.refused_busy
            )?;
        }
        writeln!(
            f,
            "  gets: {} at once, {} after waiting, {} timed out, {} not found; evicted dead {}, too old {}",
            k.served_at_once, k.served_after_wait, k.get_timeouts, k.not_found, k.evicted_dead, k.evicted_aged
        )?;
        if self.gets_waited > 0 {
            writeln!(
                f,
                "  {} gets waited, {:?} in all",
                self.gets_waited, self.get_wait
            )?;
        }
        match &self.last_failure {
            Some(fail) => write!(f, "  last failure: {fail}"),
            None => write!(f, "  no failure"),
        }
    }
}
