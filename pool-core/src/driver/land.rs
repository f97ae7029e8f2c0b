//! Connections arriving and what the OS reports about held ones: a dial or a handshake
//! lands (watched first, with no lock held), a held connection is reported ready and
//! peeked, a started connection's header is checked.

use std::time::Instant;

use super::{Driver, Platform, Role, START_WAIT};
use crate::common::Readied;
use crate::time::deadline_after;
use crate::Liveness;
use crate::{ClientMachine, ConnId, DialTicket, HandshakeTicket, ServerMachine, Stage};

/// What a dial's report changed ([`Driver::dialed`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DialReport {
    /// Whether the pool was backing off before the report.
    pub was_backing_off: bool,
    /// Whether it is backing off after it.
    pub backing_off: bool,
    /// Whether the dial failed in a way worth telling the user about: a failure while
    /// the pool is open (one cut short by the pool's close is not).
    pub failed: bool,
}

impl<M: Role, P: Platform<Conn = M::Conn>> Driver<M, P> {
    /// The OS reported the held connection `id` ready: its peer closed or reset it
    /// (a hang-up or an error), or, on a platform that watches for bytes, bytes arrived.
    /// The connection leaves the pool for one peek ([`Platform::peek`], with no lock
    /// held) and the machine acts on what it finds:
    /// - dead: it leaves the pool at once and is closed (on a server, a connection
    ///   still settling too);
    /// - bytes waiting, in in-band mode: the peer started a session, and the
    ///   connection goes to the oldest accept, or waits for the next
    ///   ([`crate::PoolCommon::handle_idle_started`]);
    /// - bytes waiting otherwise: it stays for the get that takes it (a session the
    ///   peer started before this side's get, perhaps half-closed behind its bytes);
    /// - quiet: it is watched again ([`Platform::watch`]) and stays.
    ///
    /// A report that comes while the connection is out for its peek is peeked again
    /// once it is back; one that comes before the connection landed is found by the
    /// landing. A platform that watches held connections calls it; one that does not
    /// leaves dead peers to the sweep, and cannot run in-band mode.
    pub fn idle_ready(&self, id: ConnId) -> Readied {
        loop {
            let now = self.p().now();
            let taken = {
                let mut st = self.lock();
                let taken = st.m.take_held(id, now);
                if taken.is_none() {
                    st.note_unheld(id);
                }
                taken
            };
            let Some(mut held) = taken else {
                return Readied::NotHeld;
            };
            let peek = self.p().peek(held.conn_mut());
            if peek == Liveness::Idle {
                // Re-armed before it is back: a report in between is peeked again.
                let _ = self.p().watch(id, held.conn_mut());
            }
            let now = self.p().now();
            let ((readied, again), out) = {
                let mut st = self.lock();
                let r = st.m.handle_peeked(held, peek, now);
                (r, Self::drain(&mut st, now, false))
            };
            self.perform(out, false);
            if !again {
                return readied;
            }
        }
    }

    /// [`idle_ready`](Self::idle_ready) for each connection of one readiness report.
    pub fn idle_ready_all(&self, ids: impl IntoIterator<Item = ConnId>) {
        for id in ids {
            self.idle_ready(id);
        }
    }

    /// [`idle_ready`](Self::idle_ready) for a hang-up: whether the connection left
    /// the pool dead.
    pub fn idle_closed(&self, id: ConnId) -> bool {
        self.idle_ready(id) == Readied::Closed
    }

    /// Lands `conn` as `id` with `land` under the lock, watched first with no lock
    /// held; peeks at it once landed when the platform asks, when bytes wait
    /// [`buffered`](Platform::buffered) in in-band mode, or when a readiness report
    /// for it came before it landed.
    fn land<R>(
        &self,
        id: ConnId,
        mut conn: M::Conn,
        land: impl FnOnce(&mut M, M::Conn, Instant) -> R,
    ) -> R {
        let early = self.p().watch(id, &mut conn) || (self.in_band && self.p().buffered(&mut conn));
        let now = self.p().now();
        let (r, raced, out) = {
            let mut st = self.lock();
            let r = land(&mut st.m, conn, now);
            let raced = st.take_unheld(id);
            (r, raced, Self::drain(&mut st, now, false))
        };
        self.perform(out, false);
        if early || raced {
            self.idle_ready(id);
        }
        r
    }
}

impl<C, P: Platform<Conn = C>> Driver<ClientMachine<C>, P> {
    /// A dial came back: its connection and id (read from the server, or in single
    /// mode drawn by [`ClientMachine::assign_id`]), or the stage it failed at. The
    /// connection is watched before it lands; the ticket comes back exactly once.
    pub fn dialed(&self, ticket: DialTicket, result: Result<(ConnId, C), Stage>) -> DialReport {
        drop(self.ended(ticket.serial()));
        match result {
            Ok((id, conn)) => self.land(id, conn, |m, conn, now| {
                let was_backing_off = m.backing_off();
                m.handle_dial_success(ticket, id, conn, now);
                DialReport {
                    was_backing_off,
                    backing_off: m.backing_off(),
                    failed: false,
                }
            }),
            Err(stage) => self.input(|m, now| {
                let was_backing_off = m.backing_off();
                m.handle_dial_failure(ticket, stage, now);
                DialReport {
                    was_backing_off,
                    backing_off: m.backing_off(),
                    failed: !m.is_closed(),
                }
            }),
        }
    }

    /// A dial's connect and TLS are done. In single mode (the ticket reads no id) the
    /// machine draws the connection's id ([`ClientMachine::assign_id`]), returned here:
    /// the dial is complete. Otherwise `None`: the id read starts, under the deadline
    /// the machine sets now ([`DialTicket::id_deadline`]).
    pub fn handshake_done(&self, ticket: &mut DialTicket) -> Option<ConnId> {
        self.input(|m, now| {
            if ticket.reads_id() {
                m.handle_handshake_done(ticket.serial(), now);
                None
            } else {
                Some(m.assign_id(ticket))
            }
        })
    }

    /// When the start header of a started connection handed out now must have come
    /// ([`START_WAIT`] from now): an accept reads it before then.
    pub fn start_deadline(&self) -> Instant {
        deadline_after(self.p().now(), START_WAIT)
    }

    /// What an accept read from a started connection before its
    /// [`start_deadline`](Self::start_deadline) (nothing, or what came, when the read
    /// failed or ran out of time): the connection when it is the start header
    /// ([`crate::START`]); otherwise it is counted in `starts_dropped` and closed, and
    /// the accept goes on.
    pub fn check_start(&self, id: ConnId, conn: C, header: &[u8]) -> Option<C> {
        if header == crate::START {
            return Some(conn);
        }
        self.input(|m, _| m.handle_bad_start(id, conn));
        None
    }
}

impl<C, P: Platform<Conn = C>> Driver<ServerMachine<C>, P> {
    /// A handshake came back: its connection (the id written is the ticket's), or the
    /// stage it failed at. The connection is watched before it lands. Answers whether
    /// it failed in a way worth telling the user about: not a handshake a newer
    /// connection evicted (the pool aborted it), nor one cut short by the pool's close.
    pub fn handshaken(&self, ticket: HandshakeTicket, result: Result<C, Stage>) -> bool {
        drop(self.ended(ticket.serial()));
        match (result, ticket.id()) {
            (Ok(conn), Some(id)) => {
                self.land(id, conn, |m, conn, now| m.handle_ready(ticket, conn, now));
                false
            }
            (Ok(conn), None) => {
                self.input(|m, now| m.handle_ready(ticket, conn, now));
                false
            }
            (Err(stage), _) => self.input(|m, now| m.handle_failure(ticket, stage, now)),
        }
    }
}
