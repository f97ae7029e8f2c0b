//! Readiness: a held connection the OS reported ready leaves the pool for one peek by
//! the driver, with no lock held, and comes back with the verdict.

use std::time::Instant;

use super::{Kept, PoolCommon};
use crate::{ConnId, Liveness};

/// What became of a held connection the OS reported ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readied {
    /// Dead: it left the pool and is closed.
    Closed,
    /// The peer started a session on it (in-band mode): it went to an accept.
    Started,
    /// Still held, and to be watched again: the report was spurious.
    Quiet,
    /// Still held, with bytes waiting for the get that takes it (the Go protocol: the
    /// peer started relaying before this side's get); not watched again, as its
    /// readiness stays.
    Pending,
    /// Not held any more (taken, closed, out for a probe): nothing to do.
    NotHeld,
}

/// A held connection the OS reported ready, taken out of the pool for one peek with no
/// lock held; give it back with the verdict (the role's `handle_peeked`). While it is
/// out it still counts against the capacity, and a get for its id waits for it.
#[derive(Debug)]
#[must_use = "give the connection back with handle_peeked, or it is lost"]
pub struct Reported<C> {
    id: ConnId,
    kept: Kept<C>,
    /// When its settle time ends, for a server connection still settling.
    pub(crate) settling: Option<Instant>,
}

impl<C> Reported<C> {
    /// Its id.
    pub fn id(&self) -> ConnId {
        self.id
    }
    /// The connection, to peek at.
    pub fn conn_mut(&mut self) -> &mut C {
        &mut self.kept.conn
    }
    pub(crate) fn into_conn(self) -> C {
        self.kept.conn
    }
}

impl<C> PoolCommon<C> {
    /// The OS reported the idle connection `id` ready (a hang-up, an error, or bytes
    /// on a watch for them): it leaves the idle map for one peek by the driver, with no
    /// lock held, and comes back with [`handle_peeked`](Self::handle_peeked). `None`
    /// when it is not idle (taken, closing, out for a probe); a report for one that is
    /// already out for a peek is remembered, and it is peeked again once back.
    pub(crate) fn take_held(&mut self, id: ConnId) -> Option<Reported<C>> {
        if self.note_again(id) || self.closed {
            return None;
        }
        let kept = self.idle.take(&id)?;
        self.peeking.push((id, false));
        Some(Reported {
            id,
            kept,
            settling: None,
        })
    }

    /// Notes a report for `id` while it is out for a peek; whether it is.
    pub(crate) fn note_again(&mut self, id: ConnId) -> bool {
        let out = self.peeking.iter_mut().find(|(p, _)| *p == id);
        out.map(|p| p.1 = true).is_some()
    }

    /// Takes `conn` (not idle: a server's settling one) out for a peek.
    pub(crate) fn peek_out(
        &mut self,
        id: ConnId,
        conn: C,
        due: Instant,
        now: Instant,
    ) -> Reported<C> {
        self.peeking.push((id, false));
        let since_ms = self.ms(now);
        Reported {
            id,
            kept: Kept { since_ms, conn },
            settling: Some(due),
        }
    }

    /// Ends the peek of `held`: whether another report came for it meanwhile.
    pub(crate) fn end_peek(&mut self, id: ConnId) -> bool {
        let i = self.peeking.iter().position(|(p, _)| *p == id);
        i.is_some_and(|i| self.peeking.swap_remove(i).1)
    }

    /// The verdict on a connection of [`take_held`](Self::take_held), on a pool that
    /// is not `in_band` (bytes waiting stay for the get that takes them) or is (bytes
    /// are a session the peer started: see [`handle_idle_started`](Self::handle_idle_started)).
    /// A dead one is counted in `evicted_dead` and queued for closing; any other comes
    /// back. Answers what became of it, and whether to peek at it again (another
    /// report came while it was out).
    pub(crate) fn handle_peeked(
        &mut self,
        held: Reported<C>,
        peek: Liveness,
        in_band: bool,
    ) -> (Readied, bool) {
        let again = self.end_peek(held.id);
        let id = held.id;
        let readied = match peek {
            _ if self.closed => {
                self.to_close.push((id, held.into_conn()));
                return (Readied::NotHeld, false);
            }
            Liveness::Closed | Liveness::Dead(_) => {
                self.counters.evicted_dead += 1;
                self.depart(id);
                self.to_close.push((id, held.into_conn()));
                return (Readied::Closed, false);
            }
            Liveness::Pending if in_band => {
                self.start(id, held.into_conn());
                return (Readied::Started, false);
            }
            Liveness::Pending => Readied::Pending,
            Liveness::Idle => Readied::Quiet,
        };
        if let Err(kept) = self.land_kept(id, held.kept) {
            // Its id became idle again meanwhile: keep the one already there.
            self.counters.id_collisions += 1;
            self.to_close.push((id, kept.conn));
            return (Readied::Closed, false);
        }
        if !self.can_arrive() {
            self.fail_id_waiters();
        }
        (readied, again)
    }
}
