//! Counters of each side, readable while it runs: the side's own ([`ServerStats`],
//! [`ClientStats`]) and each service's ([`PerService`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::udp::{UdpSnapshot, UdpStats};

macro_rules! counters {
    ($(#[$m:meta])* $name:ident / $snap:ident { $($(#[$fm:meta])* $f:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub struct $name { $($(#[$fm])* pub $f: AtomicU64,)* }
        /// A copy of the counters at one instant.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $snap { $($(#[$fm])* pub $f: u64,)* }
        impl $name {
            /// The counters now.
            pub fn snapshot(&self) -> $snap {
                $snap { $($f: self.$f.load(Relaxed),)* }
            }
        }
        impl $snap {
            /// Adds `other`'s figures to these, field by field (a gauge or a peak
            /// too: the sum over the parts).
            pub fn add(&mut self, other: &Self) {
                $(self.$f = self.$f.saturating_add(other.$f);)*
            }
        }
    };
}
pub(crate) use counters;

counters! {
    /// What the server side counted.
    ServerStats / ServerSnapshot {
        /// User connections accepted on the public port.
        users,
        /// User sessions whose relay ended cleanly.
        relayed,
        /// User sessions that failed (no control, no pooled connection, relay error).
        failed,
        /// User connections closed at once because `max_sessions` were running and
        /// their source held as many as any other.
        users_refused,
        /// User sessions reset to make room at the cap for a newcomer: a quiet one, or
        /// else the newest of the source holding the most, for a source holding fewer.
        users_evicted,
        /// User connections closed at once because the port was contended and their
        /// source (a /24, a /64) held its share of sessions at once or started its
        /// share in the last second.
        users_refused_source,
        /// Relays ended because nothing moved for the idle timeout.
        idle_closed,
        /// Relays ended because one direction stayed open too long after the other closed.
        half_close_timeouts,
        /// Users reset because their control connection was lost before the client's
        /// receipt.
        orphaned,
        /// Users reset because the client sent no receipt in time on the pooled
        /// connection started for them (nothing is replayed: the client may have read
        /// the bytes).
        not_taken,
        /// Pooled connections found closed or broken before the client's receipt
        /// (another is tried, the user's bytes replayed: that client never read them).
        dead_picked,
        /// Pooled connections that carried a replay of a user's first bytes.
        replayed,
        /// Sessions whose first bytes waited in the kernel for the client's receipt,
        /// because the server's budget of buffered bytes was spent.
        buffer_waits,
        /// Users reset at once because the client could not reach the target.
        target_failed,
        /// Users reset at once because the client has no service of their service's
        /// name.
        no_service,
        /// Users reset (or datagrams dropped) at once because the client's service of
        /// that name is of another kind (TCP against UDP).
        wrong_kind,
        /// Users reset because, after the client's receipt, its pooled connection died
        /// or no outcome (reached, target failed) came in time: nothing is replayed.
        no_outcome,
        /// Bytes relayed user -> client side.
        bytes_up,
        /// Bytes relayed client side -> user.
        bytes_down,
        /// Control candidates that proved the key.
        control_ok,
        /// Control candidates dropped: wrong key, garbage, silence, a replayed token,
        /// TLS or proof failure.
        control_refused,
        /// Of `control_refused`: a valid admission token seen before.
        control_replayed,
        /// Control candidates whose admission token proved the key (moved out of
        /// strangers' reach for TLS and the handshake).
        control_admitted,
        /// Control candidates with a valid admission token stamped too far from the
        /// server's clock (left to compete with strangers for a slot).
        control_skewed,
        /// Control candidates with a valid admission token stamped before this server
        /// started (a replay of one seen by an earlier process, or a client clock a
        /// moment behind): left to compete with strangers for a slot.
        control_predated,
        /// Of `control_refused`: no admission token within the deadline, or the
        /// connection closed first.
        control_no_token,
        /// Of `control_refused`: garbage, or an admission token made with another key.
        control_bad_token,
        /// Of `control_refused`: TLS or the key proof failed.
        control_handshake_failed,
        /// Control candidates refused by the client-IP filter.
        control_ip_refused,
        /// Control candidates closed to make room for a newer one.
        control_evicted,
        /// Control connections dropped because the client's heartbeats stopped.
        control_silent,
        /// Control connections from a new client process (a new session tag): each
        /// closed the previous process's idle pooled connections.
        client_restarts,
        /// User sessions admitted on the public port (each counted when its task starts).
        sessions,
        /// User sessions running now (a gauge: admitted sessions whose task has not
        /// ended, evicted ones included until their reset).
        sessions_active,
    }
}

impl ServerStats {
    /// Counts a user session as started and running until the guard is dropped.
    pub(crate) fn session_running(&self) -> Running<'_> {
        bump(&self.sessions);
        bump(&self.sessions_active);
        Running(self)
    }

    /// The counter of `why` among the control refusals, when it has one of its own
    /// that the refusal does not bump where it is decided.
    pub(crate) fn refusal(&self, why: Refusal) -> Option<&AtomicU64> {
        match why {
            Refusal::NoToken => Some(&self.control_no_token),
            Refusal::BadToken => Some(&self.control_bad_token),
            Refusal::Handshake => Some(&self.control_handshake_failed),
            // Counted where they are told apart.
            Refusal::Replayed | Refusal::Skewed | Refusal::Predated => None,
        }
    }
}

/// A running user session: in [`ServerStats::sessions_active`] until dropped (at the
/// end of the session's task, however it ends: an abort included).
#[must_use = "the session counts as running only while the guard lives"]
pub(crate) struct Running<'a>(&'a ServerStats);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.sessions_active.fetch_sub(1, Relaxed);
    }
}

counters! {
    /// What the client side counted.
    ClientStats / ClientSnapshot {
        /// Sessions the server started that this side accepted (start header checked).
        accepted,
        /// Sessions whose relay ended cleanly.
        relayed,
        /// Sessions that failed (unknown id, target down, relay error).
        failed,
        /// Sessions whose target could not be reached (told to the server).
        target_failed,
        /// Sessions for a service this side does not have (told to the server).
        no_service,
        /// Sessions whose kind (TCP, UDP) is not their service's here (told to the
        /// server).
        wrong_kind,
        /// Pooled connections closed because their session's start could not be read
        /// (the server replays it elsewhere: nothing was delivered).
        bad_start,
        /// Bytes relayed target -> server side.
        bytes_up,
        /// Bytes relayed server side -> target.
        bytes_down,
        /// Control connections established (key proved both ways).
        control_ok,
        /// Control attempts that failed (connect, TLS, key, timeout).
        control_failed,
        /// Control connections dropped because the server's heartbeats stopped.
        control_silent,
    }
}

counters! {
    /// What one service counted on one side (each side counts what it sees; a field
    /// the side cannot see stays 0). A UDP service's associations are in
    /// [`ServiceCounters::udp`]; these are its TCP sessions.
    ServiceStats / ServiceSnapshot {
        /// Server: user connections accepted on its public port.
        users,
        /// Server: users closed at once because the service's `max_sessions` were
        /// running and their source held as many as any other.
        users_refused,
        /// Server: users closed at once because the port was contended and their
        /// source held its share.
        users_refused_source,
        /// Server: sessions reset to make room at the cap for a fairer source.
        users_evicted,
        /// Sessions started (server: admitted; client: accepted for this service).
        sessions,
        /// Sessions running now (a gauge).
        sessions_active,
        /// Sessions whose relay ended cleanly.
        relayed,
        /// Sessions that failed (every other end).
        failed,
        /// Bytes relayed user -> target.
        bytes_to_target,
        /// Bytes relayed target -> user.
        bytes_to_user,
        /// The client could not reach the target.
        target_failed,
        /// Server: the client has no service of this name.
        no_service,
        /// The service is of another kind (TCP, UDP) on the other side.
        wrong_kind,
        /// Server: no outcome after the receipt, or its connection died.
        no_outcome,
        /// Server: nothing moved for the idle timeout.
        idle_closed,
        /// Server: one direction stayed open too long after the other closed.
        half_close_timeouts,
        /// Server: the client sent no receipt in time.
        not_taken,
        /// Server: the control connection was lost before the client's receipt.
        orphaned,
    }
}

impl ServiceStats {
    /// Counts a session as started and running until the guard is dropped.
    pub(crate) fn session_running(&self) -> Live<'_> {
        bump(&self.sessions);
        bump(&self.sessions_active);
        Live(&self.sessions_active)
    }
}

/// One running session in a gauge, until dropped.
#[must_use = "the session counts as running only while the guard lives"]
pub(crate) struct Live<'a>(&'a AtomicU64);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// One service's counters on one side: its TCP sessions and its UDP associations.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Its TCP sessions (all zero for a UDP service).
    pub sessions: ServiceStats,
    /// Its UDP associations (all zero for a TCP service).
    pub udp: Arc<UdpStats>,
}

/// One service's figures at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFigures {
    /// The service's name.
    pub name: String,
    /// Its TCP sessions.
    pub sessions: ServiceSnapshot,
    /// Its UDP associations.
    pub udp: UdpSnapshot,
}

/// Each service's counters, by name. A service's entry is made when it first starts
/// (the client: at its first session) and is kept when a reload removes the service,
/// so that its counters never go back, and one added again counts on; entries are
/// made only for names in the side's own configuration, never for a name read from
/// the wire.
#[derive(Debug, Default)]
pub struct PerService(Mutex<BTreeMap<String, Arc<ServiceCounters>>>);

impl PerService {
    /// The counters of the service `name`, made on first use.
    pub(crate) fn service(&self, name: &str) -> Arc<ServiceCounters> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(name) {
            return c.clone();
        }
        map.entry(name.to_owned()).or_default().clone()
    }

    /// Every service's figures now, sorted by name.
    pub fn figures(&self) -> Vec<ServiceFigures> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .map(|(name, c)| ServiceFigures {
                name: name.clone(),
                sessions: c.sessions.snapshot(),
                udp: c.udp.snapshot(),
            })
            .collect()
    }

    /// The UDP services' counters, all together (gauges and peaks summed).
    pub fn udp_total(&self) -> UdpSnapshot {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = UdpSnapshot::default();
        for c in map.values() {
            total.add(&c.udp.snapshot());
        }
        total
    }
}

/// Why a stranger (or a key holder who failed) was turned away on the control port.
/// Each reason's log lines are limited apart ([`QuietLog`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No admission token within the deadline, or the connection closed first.
    NoToken,
    /// Garbage, or a token made with another key.
    BadToken,
    /// A valid token seen before.
    Replayed,
    /// A valid token stamped too far from our clock (let through, unprotected).
    Skewed,
    /// A valid token stamped before this server started (let through, unprotected).
    Predated,
    /// TLS or the key proof failed.
    Handshake,
}

impl Refusal {
    const ALL: usize = 6;

    fn index(self) -> usize {
        self as usize
    }

    /// A few words for the log.
    pub fn words(self) -> &'static str {
        match self {
            Self::NoToken => "no admission token",
            Self::BadToken => "a bad admission token",
            Self::Replayed => "a replayed admission token",
            Self::Skewed => "an admission token far from our clock",
            Self::Predated => "an admission token older than this server",
            Self::Handshake => "TLS or the key proof failed",
        }
    }
}

/// How often each [`Refusal`] reason may log a line.
pub const QUIET_PERIOD: Duration = Duration::from_secs(10);

/// A log that says each reason at most once a [`QUIET_PERIOD`], with how many it kept
/// quiet since: strangers choose how often they are refused, never how much is logged.
/// Sans-IO: time is an argument.
#[derive(Debug, Default)]
pub struct QuietLog {
    last: [Option<Instant>; Refusal::ALL],
    quiet: [u64; Refusal::ALL],
}

impl QuietLog {
    /// A refusal for `reason` at `now`: `Some(n)` when a line is due, `n` being how
    /// many were kept quiet since the last line of that reason; `None` to stay quiet.
    pub fn note(&mut self, reason: Refusal, now: Instant) -> Option<u64> {
        let i = reason.index();
        let due = self.last[i].is_none_or(|t| now.saturating_duration_since(t) >= QUIET_PERIOD);
        if !due {
            self.quiet[i] += 1;
            return None;
        }
        self.last[i] = Some(now);
        Some(std::mem::take(&mut self.quiet[i]))
    }
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Adds one to a side's counter and to its service's.
pub(crate) fn bump_both(side: &AtomicU64, service: &AtomicU64) {
    bump(side);
    bump(service);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_logs_at_most_once_a_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut log = QuietLog::default();
        let mut lines = Vec::new();
        // 10,000 refusals of each of two reasons over 25 s.
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_micros(i * 2_500);
            for r in [Refusal::Skewed, Refusal::BadToken] {
                if let Some(n) = log.note(r, now) {
                    lines.push((r, n));
                }
            }
        }
        // At 0, 10 and 20 s, for each reason.
        assert_eq!(lines.len(), 6, "{lines:?}");
        let total: u64 = lines.iter().map(|(_, n)| n + 1).sum();
        let quiet_last = 2 * (10_000 - 1 - 20_000_000 / 2_500) as u64;
        assert_eq!(total + quiet_last, 20_000, "every refusal said or counted");
    }
}
