//! What a pool reports: a `Copy` status snapshot and its counters.

use std::time::Duration;

/// A snapshot of a pool's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Idle connections (Go: `Active()`). On a server this includes connections still
    /// settling (see `ServerConfigBuilder::settle`), as Go counts them from the moment
    /// the id is written.
    pub idle: usize,
    /// Current capacity (Go: `Capacity()`). For a server pool, its maximum capacity.
    pub capacity: usize,
    /// Current refill interval (Go: `Interval()`). For a server pool, which does not
    /// refill, its sweep interval.
    pub interval: Duration,
    /// Dials (client) or handshakes (server) under way.
    pub in_flight: usize,
    /// Gets waiting for a connection.
    pub waiting: usize,
}

/// Event counters since the pool started. Every count is kept by the core, so simulated
/// tests can assert them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counters {
    /// Dials started (client).
    pub dialed: u64,
    /// Connections that became idle or were handed to a waiter.
    pub created: u64,
    /// Dials that failed to connect (client).
    pub dial_failures: u64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: u64,
    /// Id reads or writes that failed, timed out or met a bad byte.
    pub id_errors: u64,
    /// Connections that failed the step after the id (a wrong or missing tunnel-key
    /// proof).
    pub auth_failures: u64,
    /// Connections refused by the client-IP filter (server).
    pub refused_filter: u64,
    /// Connections refused because the pool was at its maximum (server).
    pub refused_full: u64,
    /// Connections refused because too many handshakes were under way (server). No
    /// longer produced: a new connection evicts the oldest handshake instead (see
    /// `evicted_handshakes`).
    pub refused_busy: u64,
    /// Connections refused because their source held its quota of idle connections
    /// (server).
    pub refused_quota: u64,
    /// Handshakes under way aborted to make room for a newer connection: the oldest of
    /// all when every slot was taken, or the oldest of its source when that source was
    /// at its quota (server).
    pub evicted_handshakes: u64,
    /// Idle connections found dead and dropped.
    pub evicted_dead: u64,
    /// Idle connections closed because they were idle longer than the maximum idle age.
    pub evicted_aged: u64,
    /// Idle connections closed because the client held more than its capacity (only
    /// under a policy that asks for it, [`Adapt::trim`](crate::Adapt::trim)).
    pub trimmed: u64,
    /// Gets served from the idle pool at once.
    pub served_at_once: u64,
    /// Gets served after waiting.
    pub served_after_wait: u64,
    /// Gets whose deadline passed.
    pub get_timeouts: u64,
    /// Gets by an id that could no longer arrive.
    pub not_found: u64,
    /// Gets failed at once because nothing could succeed (client, `fail_fast`).
    pub unreachable: u64,
    /// Ids drawn or read that were already in use.
    pub id_collisions: u64,
    /// Errors the application recorded (Go: `AddError`, `ErrorCount`, `ResetError`).
    pub app_errors: u64,
    /// Connections whose peer spoke TLS to a plain end or plaintext to a TLS end.
    pub protocol_mismatches: u64,
    /// Sessions the peer started in band on idle connections (client, in-band mode):
    /// each left the idle map for an accept.
    pub started: u64,
    /// Connections the peer started that were closed unaccepted: a wrong or late start
    /// header, or the queue of started connections was full.
    pub starts_dropped: u64,
}

/// Which step of the connection handshake failed. The handshake is a sequence of steps,
/// so a later step fits in as a new variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// TCP connect (client) or accept-time socket setup (server).
    Connect,
    /// The TLS handshake.
    Tls,
    /// Reading (client) or writing (server) the id.
    Id,
    /// An application-defined step after the id (for example proving a shared key).
    Auth,
    /// The peer speaks another protocol: a TLS client against a plain server, or a
    /// plain server answering a TLS client. Counted apart, since it is a setting to fix
    /// rather than a network fault.
    Protocol,
}

impl Counters {
    pub(crate) fn count_failure(&mut self, stage: Stage) {
        match stage {
            Stage::Connect => self.dial_failures += 1,
            Stage::Tls => self.handshake_failures += 1,
            Stage::Auth => self.auth_failures += 1,
            Stage::Id => self.id_errors += 1,
            Stage::Protocol => self.protocol_mismatches += 1,
        }
    }
}
