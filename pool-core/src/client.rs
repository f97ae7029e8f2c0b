//! The client manager machine: refill, rounds of adjustment, dial tickets, backoff,
//! gets by id.
//!
//! Between rounds the machine tops the pool up continuously: whenever idle plus in
//! flight falls below the capacity, [`ClientMachine::poll_dial`] hands out another
//! ticket, at most `parallelism` at once. A get that takes a connection is therefore
//! replaced at once, not a whole interval later as in the Go package, whose refill
//! runs only at the start of each round.
//!
//! A round starts each time the refill timer fires, one interval after the last: the
//! capacity moves by how many connections the previous round created (the Go rule),
//! then the interval moves by the fill level (the Go rule), then the next round is due
//! one (new) interval later.
//!
//! A run of failures as long as the parallelism (or the capacity, if smaller) means
//! the server is unreachable rather than unlucky. The machine then backs off: no more
//! top-up, a single probe per round, and rounds spaced by an exponential backoff with
//! jitter, never closer than the minimum interval and never further apart than the
//! maximum. The first success ends it. Scattered failures among successes do not slow
//! the pool down.

use std::time::{Duration, Instant};

use crate::config::ClientConfig;
use crate::hub::{Answer, Got, Hub, Landed};
use crate::stats::{Counters, Stage, Status};
use crate::waiters::Want;
use crate::ConnId;

/// Permission for one dial. Give it back exactly once, through
/// [`ClientMachine::handle_dial_success`] or [`ClientMachine::handle_dial_failure`]; the
/// in-flight count is right by construction.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a dial ticket must be returned as success or failure"]
pub struct DialTicket {
    serial: u64,
    urgent: bool,
    handshake_deadline: Instant,
    id_timeout: Duration,
}

impl DialTicket {
    /// A number unique within the machine.
    pub fn serial(&self) -> u64 {
        self.serial
    }
    /// Whether this dial serves a single-mode get that found nothing idle.
    pub fn is_urgent(&self) -> bool {
        self.urgent
    }
    /// When connect plus TLS handshake must be done.
    pub fn handshake_deadline(&self) -> Instant {
        self.handshake_deadline
    }
    /// When the id read must be done, counted from when the handshake finished.
    pub fn id_deadline(&self, handshake_done: Instant) -> Instant {
        handshake_done + self.id_timeout
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Refill = 0,
}

/// The client pool's decisions, with no I/O. Drive it as the crate docs show.
#[derive(Debug)]
pub struct ClientMachine<C> {
    cfg: ClientConfig,
    hub: Hub<C>,
    capacity: usize,
    interval: Duration,
    in_flight: usize,
    next_serial: u64,
    /// Whether the probe of this round is still to be handed out (while backing off).
    probe: bool,
    /// Connections created by round dials since the last round started; `None` before
    /// the first round.
    created: Option<usize>,
    failures: u32,
    backoff: Duration,
    timers: [Option<Instant>; 1],
}

impl<C> ClientMachine<C> {
    /// A machine whose first round is due at `now`.
    pub fn new(cfg: ClientConfig, now: Instant) -> Self {
        Self {
            capacity: cfg.min_capacity,
            interval: cfg.min_interval,
            cfg,
            hub: Hub::new(),
            in_flight: 0,
            next_serial: 0,
            probe: false,
            created: None,
            failures: 0,
            backoff: Duration::ZERO,
            timers: [Some(now)],
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let timer = self.timers.iter().flatten().min().copied();
        match (timer, self.hub.waiters.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: expires waiting gets and starts a round when one is due. Calling it
    /// early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.hub.expire(now);
        let due = self.timers[Timer::Refill as usize].is_some_and(|t| t <= now);
        if !due || self.hub.closed {
            return;
        }
        if let Some(created) = self.created {
            let (min, max) = (self.cfg.min_capacity, self.cfg.max_capacity);
            self.capacity = self
                .cfg
                .capacity_policy
                .next(self.capacity, created, min, max);
        }
        self.created = Some(0);
        let idle = self.hub.idle.len();
        let (min, max) = (self.cfg.min_interval, self.cfg.max_interval);
        self.interval = self
            .cfg
            .interval_policy
            .next(self.interval, idle, self.capacity, min, max);
        let wait = if self.backing_off() {
            self.probe = true;
            self.interval.max(self.backoff)
        } else {
            self.interval
        };
        self.timers[Timer::Refill as usize] = Some(now + wait);
    }

    /// The next dial to start, if any. Call until `None` after every input, a get
    /// that took a connection included.
    pub fn poll_dial(&mut self, now: Instant) -> Option<DialTicket> {
        if self.hub.closed {
            return None;
        }
        let urgent = self.cfg.single && self.hub.waiters.any_len() > self.in_flight;
        if !urgent {
            self.created?; // no round has run yet
            if self.backing_off() {
                if !self.probe || self.in_flight > 0 {
                    return None;
                }
                self.probe = false;
            } else if self.hub.idle.len() + self.in_flight >= self.capacity
                || self.in_flight >= self.cfg.parallelism
            {
                return None;
            }
        }
        self.in_flight += 1;
        self.hub.counters.dialed += 1;
        self.next_serial += 1;
        Some(DialTicket {
            serial: self.next_serial,
            urgent,
            handshake_deadline: now + self.cfg.handshake_timeout,
            id_timeout: self.cfg.id_timeout,
        })
    }

    /// A dial finished its handshake and has its id (read from the server, or in single
    /// mode made by the driver from random bytes with [`ConnId::from_random`]).
    pub fn handle_dial_success(
        &mut self,
        ticket: DialTicket,
        id: ConnId,
        conn: C,
        now: Instant,
    ) -> Landed<C, DialTicket> {
        if self.hub.closed {
            self.finish();
            return Landed::Closed;
        }
        match self.hub.land(id, conn) {
            Err(conn) => Landed::Collision(ticket, conn),
            Ok(()) => {
                self.hub.counters.created += 1;
                if self.backing_off() {
                    // The server is back: the next round need not sit out the backoff.
                    let refill = &mut self.timers[Timer::Refill as usize];
                    if let Some(t) = refill.as_mut() {
                        *t = (*t).min(now + self.interval);
                    }
                }
                self.failures = 0;
                self.backoff = Duration::ZERO;
                self.probe = false;
                if !ticket.urgent {
                    if let Some(c) = self.created.as_mut() {
                        *c += 1;
                    }
                }
                self.finish();
                Landed::Kept
            }
        }
    }

    /// A dial failed at `stage` (an error or its deadline). `jitter` is a random number
    /// that spreads the backoff.
    pub fn handle_dial_failure(
        &mut self,
        ticket: DialTicket,
        stage: Stage,
        jitter: u32,
        now: Instant,
    ) {
        let _ = ticket;
        self.hub.counters.count_failure(stage);
        if !self.hub.closed {
            self.failures = self.failures.saturating_add(1);
            if self.backing_off() {
                let beyond = self.failures - self.backoff_threshold() + 1;
                self.backoff = backoff(&self.cfg, beyond, jitter);
                // The next probe waits at least the backoff from this failure.
                let refill = &mut self.timers[Timer::Refill as usize];
                if let Some(t) = refill.as_mut() {
                    *t = (*t).max(now + self.backoff);
                }
            }
        }
        self.finish();
    }

    /// Consecutive failures that mean "unreachable": the parallelism, or the capacity
    /// when smaller (the pool cannot see more failures at once than it has dials).
    fn backoff_threshold(&self) -> u32 {
        let n = self.cfg.parallelism.min(self.capacity).max(1);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether the pool is backing off: one probe per round until a dial succeeds.
    pub fn backing_off(&self) -> bool {
        self.failures >= self.backoff_threshold()
    }

    fn finish(&mut self) {
        self.in_flight -= 1;
        if self.in_flight == 0 {
            self.hub.fail_id_waiters();
        }
    }

    /// A get for the connection with `id`. Waits (until `deadline`) only while a
    /// handshake in flight could still produce that id; otherwise `NotFound`.
    /// `alive` probes a candidate; a dead one is dropped and counted.
    pub fn get(
        &mut self,
        id: ConnId,
        now: Instant,
        deadline: Instant,
        alive: impl FnMut(&mut C) -> bool,
    ) -> Got<C> {
        let can_arrive = self.in_flight > 0;
        self.hub.get(Want::Id(id), now, deadline, alive, can_arrive)
    }

    /// A get for any live connection, oldest first. In single mode, when nothing is idle,
    /// [`poll_dial`](Self::poll_dial) then hands out an urgent dial for it.
    pub fn get_any(
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

    /// Gives back a connection whose answer could not be delivered (the get was gone).
    pub fn put_back(&mut self, id: ConnId, conn: C) -> Result<(), C> {
        self.hub.put_back(id, conn)
    }

    /// Drops every idle connection that `alive` says is dead; how many.
    pub fn sweep(&mut self, alive: impl FnMut(&mut C) -> bool) -> usize {
        self.hub.sweep(alive)
    }

    /// Takes every idle connection out (to be closed); [`poll_dial`](Self::poll_dial)
    /// then refills at once (Go: `Flush`).
    pub fn flush(&mut self, _now: Instant) -> Vec<(ConnId, C)> {
        self.hub.idle.drain()
    }

    /// Closes: waiting gets are answered `Closed`, idle connections come back to be
    /// closed, no more dials; tickets still out may be returned and are dropped.
    pub fn close(&mut self) -> Vec<(ConnId, C)> {
        self.timers = [None];
        self.probe = false;
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
            capacity: self.capacity,
            interval: self.interval,
            in_flight: self.in_flight,
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

    /// Resets the application error count (Go, later releases: `ResetError`).
    pub fn reset_errors(&mut self) {
        self.hub.counters.app_errors = 0;
    }

    /// When the next round is due; `None` after close.
    pub fn refill_at(&self) -> Option<Instant> {
        self.timers[Timer::Refill as usize]
    }

    /// Consecutive dial failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// The delay after `failures` consecutive failures: the minimum interval doubled per
/// failure, capped at the maximum interval, then drawn in `[d/2, d]` by `jitter` and
/// never below the minimum interval.
pub fn backoff(cfg: &ClientConfig, failures: u32, jitter: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(32);
    let full = cfg
        .min_interval
        .checked_mul(1u32 << shift.min(31))
        .unwrap_or(cfg.max_interval)
        .min(cfg.max_interval);
    let half = full / 2;
    let extra = half.mul_f64(f64::from(jitter) / f64::from(u32::MAX));
    (half + extra).clamp(cfg.min_interval, cfg.max_interval.max(cfg.min_interval))
}
