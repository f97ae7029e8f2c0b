//! The part both machines share: idle connections, waiting gets and their answers,
//! liveness checks, the sweep, connections to close, counters and the generator.
//!
//! Each machine holds one [`PoolCommon`] and reaches it through `Deref`, as rustls's
//! connections reach their `ConnectionCommon`: whatever is written here is written once
//! for the client and the server.
//!
//! # Liveness is asked, never performed
//!
//! Whether an idle connection is still alive is a fact only the outside can learn (a
//! `MSG_PEEK` on its socket, a TLS record to process). The core never calls out for it.
//! It hands the connection itself to the driver and waits for the verdict:
//! - a `get` answers [`Got::Check`]: a candidate taken out of the idle map. The driver
//!   probes it without holding any lock and reports back with
//!   [`PoolCommon::handle_check`], which answers [`Got::Ready`] for a live one, or goes
//!   on to the next candidate after a dead one. On a warm pool a get costs one probe.
//! - the sweep hands out batches of idle connections through
//!   [`PoolCommon::poll_probe`]; the driver probes each one ([`Probe::check`]) and gives
//!   the batch back with [`PoolCommon::handle_probe`]. Live ones go back to the idle map
//!   (or straight to a waiting get), dead ones are counted and closed.
//!
//! Connections to close (dead, too old, refused, colliding) are never dropped inside the
//! core, since dropping a socket is a system call: drain them with
//! [`PoolCommon::poll_close`] and drop them outside the lock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::GetError;
use crate::idle::IdleMap;
use crate::random::Entropy;
use crate::stats::Counters;
use crate::time::deadline_after;
use crate::waiters::{WaiterKey, Waiters, Want};
use crate::ConnId;

/// Idle connections handed out per sweep batch: enough to make the lock round trips
/// rare, few enough that a get never finds a large share of the pool out for a probe.
pub const PROBE_BATCH: usize = 64;

/// The answer to a waiting get, drained with [`PoolCommon::poll_answer`].
#[derive(Debug)]
pub struct Answer<C> {
    /// Which get.
    pub key: WaiterKey,
    /// What it gets.
    pub result: Result<(ConnId, C), GetError>,
}

/// What a get found.
#[derive(Debug)]
#[must_use = "a Got may hold a connection, a candidate or a waiter key that must be kept"]
pub enum Got<C> {
    /// A live connection, at once.
    Ready(ConnId, C),
    /// A candidate to probe: report the verdict with [`PoolCommon::handle_check`].
    Check(Check<C>),
    /// Nothing yet: the answer comes later under this key through `poll_answer`.
    Wait(WaiterKey),
    /// No connection, now or later.
    Failed(GetError),
}

/// A candidate a get took out of the idle map, to be probed by the driver outside any
/// lock and reported with [`PoolCommon::handle_check`]. Dropping it closes the
/// connection without counting it: report it instead.
#[derive(Debug)]
#[must_use = "report the probe's verdict with handle_check"]
pub struct Check<C> {
    id: ConnId,
    conn: C,
    want: Want,
    deadline: Instant,
}

impl<C> Check<C> {
    /// The candidate's id.
    pub fn id(&self) -> ConnId {
        self.id
    }
    /// The candidate, to probe.
    pub fn conn_mut(&mut self) -> &mut C {
        &mut self.conn
    }
}

/// A batch of idle connections the sweep wants probed. Probe each with
/// [`check`](Self::check), outside any lock, then give the batch back with
/// [`PoolCommon::handle_probe`]. A connection left unchecked counts as alive.
#[derive(Debug)]
#[must_use = "give the batch back with handle_probe, or its connections are lost"]
pub struct Probe<C> {
    items: Vec<Item<C>>,
}

#[derive(Debug)]
struct Item<C> {
    id: ConnId,
    kept: Kept<C>,
    alive: bool,
}

impl<C> Probe<C> {
    /// Records `alive(conn)` for every connection of the batch.
    pub fn check(&mut self, mut alive: impl FnMut(&mut C) -> bool) {
        for item in &mut self.items {
            item.alive = alive(&mut item.kept.conn);
        }
    }
    /// How many connections the batch holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// The ids of the batch, in the order they will be checked.
    pub fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.items.iter().map(|i| i.id)
    }
}

/// An idle connection and when it became idle, in milliseconds since the machine's
/// epoch (8 bytes: the slab slot of a 40-byte connection stays at 64 bytes).
#[derive(Debug)]
pub(crate) struct Kept<C> {
    since_ms: u64,
    conn: C,
}

/// The sweep: when it is due, and how far the running one has come.
#[derive(Debug)]
struct Sweep {
    interval: Duration,
    max_idle_age: Option<Duration>,
    due: Option<Instant>,
    /// Idle connections the running sweep has still to look at.
    left: usize,
    /// The ids of the batch out with the driver, if one is: they still count against
    /// the capacity, and no new connection may take one of them.
    out: Option<Vec<ConnId>>,
    /// Whether a flush happened while the batch was out: its connections are closed.
    flushed: bool,
}

/// The state both machines share. Reached through `Deref` on
/// [`ClientMachine`](crate::ClientMachine) and [`ServerMachine`](crate::ServerMachine).
#[derive(Debug)]
pub struct PoolCommon<C> {
    pub(crate) idle: IdleMap<Kept<C>>,
    pub(crate) waiters: Waiters,
    answers: VecDeque<Answer<C>>,
    to_close: Vec<(ConnId, C)>,
    pub(crate) counters: Counters,
    pub(crate) closed: bool,
    /// Dials (client) or handshakes (server) under way.
    pub(crate) in_flight: usize,
    pub(crate) random: Entropy,
    /// Whether gets fail at once because nothing can succeed (set by the client).
    pub(crate) unreachable: bool,
    /// Whether the client's first round has yet to run: a get by id made right after
    /// the pool was built waits for the dials it is about to start.
    pub(crate) starting: bool,
    epoch: Instant,
    sweep: Sweep,
    /// Ids of connections that left the pool (to a get or to be closed), kept only
    /// when the server counts idle connections per source; it drains them.
    pub(crate) departed: Option<Vec<ConnId>>,
}

impl<C> PoolCommon<C> {
    pub(crate) fn new(
        random: Entropy,
        now: Instant,
        sweep_interval: Duration,
        max_idle_age: Option<Duration>,
    ) -> Self {
        Self {
            idle: IdleMap::new(),
            waiters: Waiters::new(),
            answers: VecDeque::new(),
            to_close: Vec::new(),
            counters: Counters::default(),
            closed: false,
            in_flight: 0,
            random,
            unreachable: false,
            starting: false,
            epoch: now,
            sweep: Sweep {
                interval: sweep_interval,
                max_idle_age,
                due: Some(deadline_after(now, sweep_interval)),
                left: 0,
                out: None,
                flushed: false,
            },
            departed: None,
        }
    }

    // ---- getters ----

    /// Idle connections ready to hand out (Go: `Active`).
    pub fn idle(&self) -> usize {
        self.idle.len()
    }
    /// Gets waiting for a connection.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }
    /// Dials (client) or handshakes (server) under way.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }
    /// Whether the machine was closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }
    /// When the next sweep is due; `None` after close.
    pub fn sweep_at(&self) -> Option<Instant> {
        self.sweep.due
    }

    // ---- commands ----

    /// Records an application error (Go: `AddError`).
    pub fn add_error(&mut self) {
        self.counters.app_errors += 1;
    }
    /// Resets the application error count (Go, later releases: `ResetError`).
    pub fn reset_errors(&mut self) {
        self.counters.app_errors = 0;
    }
    /// A waiting get was dropped by its caller. Whether it was still waiting (if not,
    /// its answer is already queued or sent: give the connection back with `put_back`).
    pub fn cancel(&mut self, key: WaiterKey) -> bool {
        self.waiters.cancel(key)
    }

    /// A get for `want`. Answers [`Got::Check`] with a candidate to probe,
    /// [`Got::Wait`] when nothing is idle, or [`Got::Failed`]. A get by id waits only
    /// while something under way could still bring that id: a dial or handshake in
    /// flight, or a sweep batch out for probing.
    pub fn get(&mut self, want: Want, now: Instant, deadline: Instant) -> Got<C> {
        if self.closed {
            return Got::Failed(GetError::Closed);
        }
        if self.unreachable {
            self.counters.unreachable += 1;
            return Got::Failed(GetError::Unreachable);
        }
        loop {
            let taken = match want {
                Want::Any => self.idle.take_oldest(),
                Want::Id(id) => self.idle.take(&id).map(|k| (id, k)),
            };
            let Some((id, kept)) = taken else { break };
            self.depart(id);
            if self.too_old(&kept, now) {
                self.counters.evicted_aged += 1;
                self.to_close.push((id, kept.conn));
                continue;
            }
            return Got::Check(Check {
                id,
                conn: kept.conn,
                want,
                deadline,
            });
        }
        if matches!(want, Want::Id(_)) && !self.can_arrive() {
            self.counters.not_found += 1;
            return Got::Failed(GetError::NotFound);
        }
        if deadline <= now {
            self.counters.get_timeouts += 1;
            return Got::Failed(GetError::Timeout);
        }
        Got::Wait(self.waiters.push(want, deadline))
    }

    /// The verdict on a candidate of [`Got::Check`]: a live one is handed out, a dead
    /// one is counted and queued for closing, and the get goes on with the next one.
    pub fn handle_check(&mut self, check: Check<C>, alive: bool, now: Instant) -> Got<C> {
        if self.closed {
            self.to_close.push((check.id, check.conn));
            return Got::Failed(GetError::Closed);
        }
        if alive {
            self.counters.served_at_once += 1;
            return Got::Ready(check.id, check.conn);
        }
        self.counters.evicted_dead += 1;
        self.to_close.push((check.id, check.conn));
        self.get(check.want, now, check.deadline)
    }

    /// A connection handed to a waiting get through [`poll_answer`](Self::poll_answer)
    /// was found dead by the driver before it reached the caller (its peer gave up
    /// while it settled, say). It is counted as evicted, not as served, and queued for
    /// closing; the driver then repeats the get.
    pub fn handle_dead_answer(&mut self, id: ConnId, conn: C, _now: Instant) {
        self.counters.served_after_wait = self.counters.served_after_wait.saturating_sub(1);
        self.counters.evicted_dead += 1;
        self.to_close.push((id, conn));
    }

    // ---- outputs ----

    /// The next answer to a waiting get.
    pub fn poll_answer(&mut self) -> Option<Answer<C>> {
        self.answers.pop_front()
    }

    /// The next connection to close (drop it outside any lock).
    pub fn poll_close(&mut self) -> Option<(ConnId, C)> {
        self.to_close.pop()
    }

    /// The next batch of idle connections the running sweep wants probed, if any. One
    /// batch is out at a time: give it back with [`handle_probe`](Self::handle_probe)
    /// before asking for the next. Connections idle longer than the maximum idle age
    /// are not probed but closed (see [`poll_close`](Self::poll_close)).
    pub fn poll_probe(&mut self, now: Instant) -> Option<Probe<C>> {
        if self.sweep.out.is_some() || self.closed {
            return None;
        }
        let mut items = Vec::new();
        while self.sweep.left > 0 && items.len() < PROBE_BATCH {
            self.sweep.left -= 1;
            let Some((id, kept)) = self.idle.take_oldest() else {
                self.sweep.left = 0;
                break;
            };
            if self.too_old(&kept, now) {
                self.counters.evicted_aged += 1;
                self.depart(id);
                self.to_close.push((id, kept.conn));
            } else {
                items.push(Item {
                    id,
                    kept,
                    alive: true,
                });
            }
        }
        if items.is_empty() {
            return None;
        }
        self.sweep.out = Some(items.iter().map(|i| i.id).collect());
        self.sweep.flushed = false;
        Some(Probe { items })
    }

    /// A probed batch comes back: live connections return to the idle map behind the
    /// ones already there (a sweep rotates the arrival list once, so the order is kept),
    /// or go to a waiting get; dead ones are counted and closed.
    pub fn handle_probe(&mut self, probe: Probe<C>, _now: Instant) {
        self.sweep.out = None;
        let drop_all = self.closed || self.sweep.flushed;
        for Item { id, kept, alive } in probe.items {
            if drop_all {
                self.depart(id);
                self.to_close.push((id, kept.conn));
            } else if !alive {
                self.counters.evicted_dead += 1;
                self.depart(id);
                self.to_close.push((id, kept.conn));
            } else if let Err(kept) = self.land_kept(id, kept) {
                // The id became idle again meanwhile: keep the one already there.
                self.counters.id_collisions += 1;
                self.to_close.push((id, kept.conn));
            }
        }
        if !self.can_arrive() {
            self.fail_id_waiters();
        }
    }

    /// The earliest instant at which `handle_timeout` has shared work (a waiter's
    /// deadline or the sweep).
    pub(crate) fn next_timeout(&mut self) -> Option<Instant> {
        match (self.sweep.due, self.waiters.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: waiters past their deadline are answered, and a sweep starts when
    /// one is due (its batches then come out of `poll_probe`).
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(key) = self.waiters.pop_expired(now) {
            self.counters.get_timeouts += 1;
            self.answers.push_back(Answer {
                key,
                result: Err(GetError::Timeout),
            });
        }
        if self.sweep.due.is_some_and(|t| t <= now) && !self.closed {
            self.sweep.due = Some(deadline_after(now, self.sweep.interval));
            if self.sweep.left == 0 {
                self.sweep.left = self.idle.len();
            }
        }
    }

    // ---- shared internals ----

    /// Milliseconds since the epoch, the unit of an idle connection's age.
    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn too_old(&self, kept: &Kept<C>, now: Instant) -> bool {
        self.sweep.max_idle_age.is_some_and(|max| {
            let age = self.ms(now).saturating_sub(kept.since_ms);
            u128::from(age) > max.as_millis()
        })
    }

    pub(crate) fn can_arrive(&self) -> bool {
        self.in_flight > 0 || self.sweep.out.is_some() || self.starting
    }

    /// Connections this machine holds: idle, out for a sweep probe, or in flight. The
    /// capacity bounds this.
    pub(crate) fn held(&self) -> usize {
        self.idle.len() + self.in_flight + self.sweep.out.as_ref().map_or(0, Vec::len)
    }

    /// A finished connection: to the oldest waiter for its id, else the oldest waiter
    /// for any, else idle. `Err` gives it back when the id is already idle.
    pub(crate) fn land(&mut self, id: ConnId, conn: C, now: Instant) -> Result<(), C> {
        let since_ms = self.ms(now);
        self.land_kept(id, Kept { since_ms, conn })
            .map_err(|k| k.conn)
    }

    fn land_kept(&mut self, id: ConnId, kept: Kept<C>) -> Result<(), Kept<C>> {
        // An id out in a sweep batch is taken too: that connection comes back.
        let probing = self.sweep.out.as_ref().is_some_and(|o| o.contains(&id));
        if self.idle.contains(&id) || probing {
            return Err(kept);
        }
        let key = self.waiters.pop_id(&id).or_else(|| self.waiters.pop_any());
        match key {
            Some(key) => {
                self.counters.served_after_wait += 1;
                self.depart(id);
                self.answers.push_back(Answer {
                    key,
                    result: Ok((id, kept.conn)),
                });
                Ok(())
            }
            None => self.idle.insert(id, kept),
        }
    }

    /// Notes that the connection `id` left the pool, when departures are kept.
    fn depart(&mut self, id: ConnId) {
        if let Some(d) = &mut self.departed {
            d.push(id);
        }
    }

    /// Queues a connection to be closed by the driver.
    pub(crate) fn close_later(&mut self, id: ConnId, conn: C) {
        self.to_close.push((id, conn));
    }

    /// Answers every waiting get with `Unreachable`: nothing can succeed.
    pub(crate) fn fail_waiters_unreachable(&mut self) {
        for key in self.waiters.drain() {
            self.counters.unreachable += 1;
            self.answers.push_back(Answer {
                key,
                result: Err(GetError::Unreachable),
            });
        }
    }

    /// Answers every get by id with `NotFound` (nothing under way can bring their ids).
    pub(crate) fn fail_id_waiters(&mut self) {
        for key in self.waiters.take_all_by_id() {
            self.counters.not_found += 1;
            self.answers.push_back(Answer {
                key,
                result: Err(GetError::NotFound),
            });
        }
    }

    /// An id drawn from the machine's generator that is neither idle nor out for a
    /// sweep probe, and passes `free`.
    pub(crate) fn fresh_id(&mut self, mut free: impl FnMut(&ConnId) -> bool) -> ConnId {
        loop {
            let id = ConnId::from_random(self.random.next_u32().to_le_bytes());
            let probing = self.sweep.out.as_ref().is_some_and(|o| o.contains(&id));
            if !self.idle.contains(&id) && !probing && free(&id) {
                return id;
            }
            // One in four billion per idle id: a few draws at most.
            self.counters.id_collisions += 1;
        }
    }

    pub(crate) fn flush(&mut self) -> Vec<(ConnId, C)> {
        self.sweep.left = 0;
        self.sweep.flushed = self.sweep.out.is_some();
        self.idle
            .drain()
            .into_iter()
            .map(|(id, k)| (id, k.conn))
            .collect()
    }

    pub(crate) fn close(&mut self) -> Vec<(ConnId, C)> {
        self.closed = true;
        self.sweep.due = None;
        for key in self.waiters.drain() {
            self.answers.push_back(Answer {
                key,
                result: Err(GetError::Closed),
            });
        }
        let mut out = self.flush();
        out.append(&mut self.to_close);
        out
    }

    /// Gives back a connection whose answer could not be delivered (its get was gone).
    /// When it cannot be kept (closed, `capacity` already held, or its id idle again)
    /// it is queued for closing.
    pub(crate) fn put_back(&mut self, id: ConnId, conn: C, now: Instant, capacity: usize) {
        if self.closed || self.held() >= capacity {
            return self.close_later(id, conn);
        }
        // Not a new connection: undo the served count it got on the way out.
        self.counters.served_after_wait = self.counters.served_after_wait.saturating_sub(1);
        if let Err(conn) = self.land(id, conn, now) {
            self.close_later(id, conn);
        }
    }
}

#[cfg(test)]
mod tests;
