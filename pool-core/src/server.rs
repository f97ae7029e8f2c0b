//! The server admission machine: which accepted connections may handshake, their
//! deadlines, their ids, and every reason for a refusal.

use std::collections::{HashSet, VecDeque};
use std::ops::{Deref, DerefMut};
use std::time::Instant;

use crate::common::{Got, PoolCommon};
use crate::config::ServerConfig;
use crate::idle::IdBuild;
use crate::random::{Entropy, Random};
use crate::stats::{Stage, Status};
use crate::time::deadline_after;
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

/// The server pool's decisions, with no I/O.
///
/// What it shares with the client machine (gets, liveness checks, the sweep, answers,
/// counters) is in [`PoolCommon`], reached through `Deref`.
#[derive(Debug)]
pub struct ServerMachine<C> {
    cfg: ServerConfig,
    common: PoolCommon<C>,
    pending_ids: HashSet<ConnId, IdBuild>,
    /// Connections whose id was written less than the settle time ago, in the order
    /// they became ready (the settle time is the same for all, so the front is due
    /// first).
    settling: VecDeque<(Instant, ConnId, C)>,
    next_serial: u64,
}

impl<C> Deref for ServerMachine<C> {
    type Target = PoolCommon<C>;
    fn deref(&self) -> &PoolCommon<C> {
        &self.common
    }
}

impl<C> DerefMut for ServerMachine<C> {
    fn deref_mut(&mut self) -> &mut PoolCommon<C> {
        &mut self.common
    }
}

impl<C> ServerMachine<C> {
    /// A machine with no connection yet, drawing ids from `random`: a
    /// [`SeededRandom`](crate::SeededRandom) seeded from a secure source.
    pub fn new(cfg: ServerConfig, random: impl Random + 'static, now: Instant) -> Self {
        Self {
            common: PoolCommon::new(
                Entropy::new(random),
                now,
                cfg.sweep_interval,
                cfg.max_idle_age,
            ),
            cfg,
            pending_ids: HashSet::default(),
            settling: VecDeque::new(),
            next_serial: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// A connection was accepted; `allowed` is the client-IP filter's verdict.
    pub fn handle_accept(&mut self, now: Instant, allowed: bool) -> Admission {
        let c = &mut self.common;
        let refusal = if c.closed {
            Some(Refusal::Closed)
        } else if !allowed {
            c.counters.refused_filter += 1;
            Some(Refusal::Filter)
        } else if c.held() + self.settling.len() >= self.cfg.max_capacity {
            c.counters.refused_full += 1;
            Some(Refusal::Full)
        } else if c.in_flight >= self.cfg.max_handshakes {
            c.counters.refused_busy += 1;
            Some(Refusal::Busy)
        } else {
            None
        };
        if let Some(r) = refusal {
            return Admission::Refuse(r);
        }
        c.in_flight += 1;
        self.next_serial += 1;
        Admission::Admit(HandshakeTicket {
            serial: self.next_serial,
            deadline: deadline_after(now, self.cfg.handshake_timeout),
            id: None,
        })
    }

    /// The id for `ticket`, drawn from the machine's generator: never one that is idle
    /// or held by another handshake (a collision is counted and drawn again). Calling
    /// it again for the same ticket returns the same id.
    pub fn assign_id(&mut self, ticket: &mut HandshakeTicket) -> ConnId {
        if let Some(id) = ticket.id {
            return id;
        }
        let pending = &self.pending_ids;
        let id = self.common.fresh_id(|id| !pending.contains(id));
        self.pending_ids.insert(id);
        ticket.id = Some(id);
        id
    }

    /// The handshake and id write finished: after the settle time the connection goes
    /// idle, or to a waiting get. A ticket with no id is a driver error: its
    /// connection is queued for closing and counted as an id error.
    pub fn handle_ready(&mut self, ticket: HandshakeTicket, conn: C, now: Instant) {
        self.common.in_flight -= 1;
        let Some(id) = ticket.id else {
            self.common.counters.id_errors += 1;
            return self.common.close_later(ConnId::from_random([0; 4]), conn);
        };
        if self.common.closed {
            self.pending_ids.remove(&id);
            return self.common.close_later(id, conn);
        }
        if self.cfg.settle.is_zero() {
            self.pending_ids.remove(&id);
            return self.land(id, conn, now);
        }
        // The id stays reserved while the connection settles.
        let due = deadline_after(now, self.cfg.settle);
        self.settling.push_back((due, id, conn));
    }

    /// Connections whose settle time ended become idle or go to waiting gets.
    fn settle(&mut self, now: Instant) {
        while self.settling.front().is_some_and(|(due, _, _)| *due <= now) {
            let Some((_, id, conn)) = self.settling.pop_front() else {
                break;
            };
            self.pending_ids.remove(&id);
            self.land(id, conn, now);
        }
    }

    fn land(&mut self, id: ConnId, conn: C, now: Instant) {
        match self.common.land(id, conn, now) {
            Ok(()) => self.common.counters.created += 1,
            // Cannot happen (assign_id reserved the id), but never overwrite.
            Err(conn) => {
                self.common.counters.id_collisions += 1;
                self.common.close_later(id, conn);
            }
        }
    }

    /// The handshake failed or passed its deadline at `stage`.
    pub fn handle_failure(&mut self, ticket: HandshakeTicket, stage: Stage, _now: Instant) {
        self.common.in_flight -= 1;
        if let Some(id) = ticket.id {
            self.pending_ids.remove(&id);
        }
        self.common.counters.count_failure(stage);
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work: the
    /// next sweep, the first waiter's deadline, or the end of a settle time.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let settled = self.settling.front().map(|(due, _, _)| *due);
        match (settled, self.common.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: settled connections land, waiting gets expire, and a sweep starts
    /// when one is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settle(now);
        self.common.expire(now);
    }

    /// A get for the oldest live idle connection (Go: `ServerGet`). A candidate comes
    /// as [`Got::Check`], to probe and report with
    /// [`handle_check`](PoolCommon::handle_check).
    pub fn get(&mut self, now: Instant, deadline: Instant) -> Got<C> {
        self.common.get(Want::Any, now, deadline)
    }

    /// Gives back a connection whose answer could not be delivered. It is closed
    /// instead when its id is idle again or was drawn meanwhile for a handshake under
    /// way: landing it would make that handshake collide, since its ticket keeps the
    /// id it already wrote on the wire.
    pub fn put_back(&mut self, id: ConnId, conn: C, now: Instant) {
        if self.pending_ids.contains(&id) {
            return self.common.close_later(id, conn);
        }
        let capacity = self.cfg.max_capacity.saturating_sub(self.settling.len());
        self.common.put_back(id, conn, now, capacity);
    }

    /// Takes every idle and settling connection out, to be closed (Go: `Flush`).
    pub fn flush(&mut self) -> Vec<(ConnId, C)> {
        let mut out = self.common.flush();
        for (_, id, conn) in self.settling.drain(..) {
            self.pending_ids.remove(&id);
            out.push((id, conn));
        }
        out
    }

    /// Connections whose id was written but whose settle time has not ended.
    pub fn settling(&self) -> usize {
        self.settling.len()
    }

    /// Closes: waiting gets are answered `Closed`, idle and settling connections come
    /// back to be closed, new connections are refused.
    pub fn close(&mut self) -> Vec<(ConnId, C)> {
        let mut out = self.common.close();
        for (_, id, conn) in self.settling.drain(..) {
            self.pending_ids.remove(&id);
            out.push((id, conn));
        }
        out
    }

    /// The status snapshot.
    pub fn status(&self) -> Status {
        Status {
            // Settling connections count, as in Go's `Active()`: the Go server puts a
            // connection in its map as soon as the id is written.
            idle: self.common.idle.len() + self.settling.len(),
            capacity: self.cfg.max_capacity,
            interval: std::time::Duration::ZERO,
            in_flight: self.common.in_flight,
            waiting: self.common.waiters.len(),
        }
    }
}
