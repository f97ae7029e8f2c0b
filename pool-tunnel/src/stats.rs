//! Counters of each side, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    };
}

counters! {
    /// What the server side counted.
    ServerStats / ServerSnapshot {
        /// User connections accepted on the public port.
        users,
        /// User sessions whose relay ended cleanly.
        relayed,
        /// User sessions that failed (no control, no pooled connection, relay error).
        failed,
        /// User connections closed at once because `max_sessions` were running.
        users_refused,
        /// User connections closed at once because their source (a /24, a /64) held
        /// its sessions at once or started too many in the last second.
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
        /// Users reset at once because the client could not reach the target.
        target_failed,
        /// Users reset because, after the client's receipt, its pooled connection died
        /// or no outcome (reached, target failed) came in time: nothing is replayed.
        no_outcome,
        /// Bytes relayed user -> client side.
        bytes_up,
        /// Bytes relayed client side -> user.
        bytes_down,
        /// Control candidates that proved the key.
        control_ok,
        /// Control candidates dropped: wrong key, garbage, silence, TLS failure.
        control_refused,
        /// Control candidates whose admission token proved the key (moved out of
        /// strangers' reach for TLS and the handshake).
        control_admitted,
        /// Control candidates with a valid admission token stamped too far from the
        /// server's clock (left to compete with strangers for a slot).
        control_skewed,
        /// Control candidates refused by the client-IP filter.
        control_ip_refused,
        /// Control candidates closed to make room for a newer one.
        control_evicted,
        /// Control connections dropped because the client's heartbeats stopped.
        control_silent,
        /// Control connections from a new client process (a new session tag): each
        /// closed the previous process's idle pooled connections.
        client_restarts,
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

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}
