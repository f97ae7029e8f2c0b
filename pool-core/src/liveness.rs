//! What a non-blocking look at an idle connection found: the one answer every layer
//! gives about a connection's health.
//!
//! pool-net's socket probe (`MSG_PEEK`), pool-tls's pass over the TLS records already
//! queued, each runtime's peek and the core's handling of a peeked connection all
//! speak this enum, so no layer maps one verdict onto another by hand.

use std::io::ErrorKind;

/// The state of a connection as a non-blocking look that consumes no byte saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Alive, nothing to read.
    Idle,
    /// Alive, with bytes waiting: left unread (in the kernel's queue, or in the TLS
    /// session's plaintext buffer) for the next read.
    Pending,
    /// The peer closed its sending side (a FIN, or a TLS `close_notify`), or the local
    /// receiving side was shut down.
    Closed,
    /// The look failed with this error (for example `ConnectionReset`), or the TLS
    /// records could not be processed (`InvalidData`).
    Dead(ErrorKind),
}

impl Liveness {
    /// Whether the connection may still be used: [`Idle`](Self::Idle) or
    /// [`Pending`](Self::Pending).
    #[must_use]
    pub fn is_alive(self) -> bool {
        matches!(self, Self::Idle | Self::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idle_and_pending_are_alive() {
        assert!(Liveness::Idle.is_alive());
        assert!(Liveness::Pending.is_alive());
        assert!(!Liveness::Closed.is_alive());
        assert!(!Liveness::Dead(ErrorKind::ConnectionReset).is_alive());
    }
}
