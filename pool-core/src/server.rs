//! The server admission machine: which accepted connections may handshake, their
//! deadlines, their ids, and every reason for a refusal.

use std::collections::HashSet;
use std::time::Instant;

use crate::config::ServerConfig;
use crate::hub::{Answer, Got, Hub, Landed};
use crate::idle::IdBuild;
use crate::stats::{Counters, Stage, Status};
use crate::waiters::Want;
use crate::ConnId;

/// Permission for one accepted connection to run its handshake. Give it back exactly
/// once, through [`ServerMachine::handle_ready`] or [`ServerMachine::handle_failure`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a handshake ticket must be returned as ready or failed"]
pub struct HandshakeTicket {
    serial: u64,
    deadline: Instant,
    id: Option<ConnId>,
}

impl HandshakeTicket {
    /// When TLS and the id write must be done.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
    /// The id drawn for this connection, once [`ServerMachine::assign_id`] succeeded.
    pub fn id(&self) -> Option<ConnId> {
        self.id
    }
    /// A number unique within the machine.
    pub fn serial(&self) -> u64 {
        self.serial
    }
}

/// Why an accepted connection was refused. Each reason has its counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The client-IP filter said no.
    Filter,
    /// Idle plus handshaking connections are at the maximum capacity.
    Full,
    /// Too many handshakes are under way.
    Busy,
    /// The pool is closed.
    Closed,
}

/// The decision on an accepted connection.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Admission {
    /// Run the handshake under this ticket.
    Admit(HandshakeTicket),
    /// Close the connection.
    Refuse(Refusal),
}

/// A drawn id was already in use; draw again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("id already in use")]
pub struct IdCollision;

/// The server pool's decisions, with no I/O.
#[derive(Debug)]
pub struct ServerMachine<C> {
    cfg: ServerConfig,
    hub: Hub<C>,
    handshakes: usize,
    pending_ids: HashSet<ConnId, IdBuild>,
    next_serial: u64,
}

impl<C> ServerMachine<C> {
    /// A machine with no connection yet.
    pub fn new(cfg: ServerConfig) -> Self {
        Self {
            cfg,
            hub: Hub::new(),
            handshakes: 0,
            pending_ids: HashSet::default(),
            next_serial: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// A connection was accepted; `allowed` is the client-IP filter's verdict.
    pub fn handle_accept(&mut self, now: Instant, allowed: bool) -> Admission {
        let refusal = if self.hub.closed {
            Some(Refusal::Closed)
        } else if !allowed {
            self.hub.counters.refused_filter += 1;
            Some(Refusal::Filter)
        } else if self.hub.idle.len() + self.handshakes >= self.cfg.max_capacity {
            self.hub.counters.refused_full += 1;
            Some(Refusal::Full)
        } else if self.handshakes >= self.cfg.max_handshakes {
            self.hub.counters.refused_busy += 1;
            Some(Refusal::Busy)
        } else {
            None
        };
        if let Some(r) = refusal {
            return Admission::Refuse(r);
        }
        self.handshakes += 1;
        self.next_serial += 1;
        Admission::Admit(HandshakeTicket {
            serial: self.next_serial,
            deadline: now + self.cfg.handshake_timeout,
            id: None,
        })
    }

    /// Draws the id for `ticket` from 4 random bytes. An id idle or held by another
    /// handshake is refused and counted: call again with fresh bytes.
    pub fn assign_id(
        &mut self,
        ticket: &mut HandshakeTicket,
        random: [u8; 4],
    ) -> Result<ConnId, IdCollision> {
        if let Some(id) = ticket.id {
            return Ok(id);
        }
        let id = ConnId::from_random(random);
        if self.hub.idle.contains(&id) || !self.pending_ids.insert(id) {
            self.hub.counters.id_collisions += 1;
            return Err(IdCollision);
        }
        ticket.id = Some(id);
        Ok(id)
    }

    /// The handshake and id write finished: the connection goes idle, or to a waiting
    /// get. A ticket with no id is a driver error; its connection is dropped and counted
    /// as an id error.
    pub fn handle_ready(
        &mut self,
        ticket: HandshakeTicket,
        conn: C,
        _now: Instant,
    ) -> Landed<C, HandshakeTicket> {
        self.handshakes -= 1;
        let Some(id) = ticket.id else {
            self.hub.counters.id_errors += 1;
            return Landed::Closed;
        };
        self.pending_ids.remove(&id);
        if self.hub.closed {
            return Landed::Closed;
        }
        match self.hub.land(id, conn) {
            Ok(()) => {
                self.hub.counters.created += 1;
                Landed::Kept
            }
            // Cannot happen (assign_id checked), but never overwrite: give it back.
            Err(conn) => {
                self.handshakes += 1;
                self.pending_ids.insert(id);
                Landed::Collision(ticket, conn)
            }
        }
    }

    /// The handshake failed or passed its deadline at `stage`.
    pub fn handle_failure(&mut self, ticket: HandshakeTicket, stage: Stage, _now: Instant) {
        self.handshakes -= 1;
        if let Some(id) = ticket.id {
            self.pending_ids.remove(&id);
        }
        self.hub.counters.count_failure(stage);
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.hub.waiters.next_deadline()
    }

    /// Time passed: expires waiting gets.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.hub.expire(now);
    }

    /// A get for the oldest live idle connection (Go: `ServerGet`).
    pub fn get(
        &mut self,
        now: Instant,
        deadline: Instant,
        alive: impl FnMut(&mut C) -> bool,
    ) -> Got<C> {
        self.hub.get(Want::Any, now, deadline, alive, true)
    }

    /// A waiting get was dropped by its caller.
    pub fn cancel(&mut self, key: crate::WaiterKey) -> bool {
        self.hub.waiters.cancel(key)
    }

    /// The next answer to a waiting get.
    pub fn poll_answer(&mut self) -> Option<Answer<C>> {
        self.hub.poll_answer()
    }

    /// Gives back a connection whose answer could not be delivered. Refused (the
    /// connection comes back, to be closed) when its id is idle again or was drawn
    /// meanwhile for a handshake under way.
    pub fn put_back(&mut self, id: ConnId, conn: C) -> Result<(), C> {
        // Landing it would make that handshake's `handle_ready` collide for ever: its
        // ticket keeps the id it already wrote on the wire.
        if self.pending_ids.contains(&id) {
            return Err(conn);
        }
        self.hub.put_back(id, conn)
    }

    /// Drops every idle connection that `alive` says is dead; how many.
    pub fn sweep(&mut self, alive: impl FnMut(&mut C) -> bool) -> usize {
        self.hub.sweep(alive)
    }

    /// Takes every idle connection out, to be closed (Go: `Flush`).
    pub fn flush(&mut self) -> Vec<(ConnId, C)> {
        self.hub.idle.drain()
    }

    /// Closes: waiting gets are answered `Closed`, idle connections come back to be
    /// closed, new connections are refused.
    pub fn close(&mut self) -> Vec<(ConnId, C)> {
        self.hub.close()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.hub.closed
    }

    /// The status snapshot.
    pub fn status(&self) -> Status {
        Status {
            idle: self.hub.idle.len(),
            capacity: self.cfg.max_capacity,
            interval: std::time::Duration::ZERO,
            in_flight: self.handshakes,
            waiting: self.hub.waiters.len(),
        }
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.hub.counters
    }

    /// Records an application error (Go: `AddError`).
    pub fn add_error(&mut self) {
        self.hub.counters.app_errors += 1;
    }

    /// Resets the application error count.
    pub fn reset_errors(&mut self) {
        self.hub.counters.app_errors = 0;
    }
}
