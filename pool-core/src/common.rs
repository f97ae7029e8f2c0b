//! The part both machines share: idle connections, waiting gets and their answers,
//! liveness checks, the sweep, connections to close, counters and the generator.
//!
//! Each machine holds one [`PoolCommon`]: whatever is written here is written once for
//! the client and the server. A machine does not `Deref` to it: each role exposes, by
//! name, what its callers need (the shared getters come from one macro), so no caller
//! can reach around the role and skip what it adds.
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
//!   [`Output::Probe`]; the driver probes each one ([`Probe::check`]) and gives
//!   the batch back with [`PoolCommon::handle_probe`]. Live ones go back to the idle map
//!   (or straight to a waiting get), dead ones are counted and closed.
//!
//! Connections to close (dead, too old, refused, colliding) are never dropped inside the
//! core, since dropping a socket is a system call: they come out as [`Output::Close`],
//! to be dropped outside the lock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::error::GetFailure;
use crate::idle::IdleMap;
use crate::random::Entropy;
use crate::stats::Counters;
use crate::time::deadline_after;
use crate::waiters::{WaiterKey, Waiters, Want};
use crate::ConnId;

/// Idle connections handed out per sweep batch: enough to make the lock round trips
/// rare, few enough that a get never finds a large share of the pool out for a probe.
pub const PROBE_BATCH: usize = 64;

/// Connections the peer started (in-band mode) that wait for an accept, at most; one
/// more is closed and counted in [`Counters::starts_dropped`].
pub const STARTED_QUEUE: usize = 4096;

/// An idle connection and when it became idle, in milliseconds since the machine's
/// epoch (8 bytes: the slab slot of a 40-byte connection stays at 64 bytes).
#[derive(Debug)]
pub(crate) struct Kept<C> {
    pub(crate) since_ms: u64,
    pub(crate) conn: C,
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

/// The state both machines share, inside [`ClientMachine`](crate::ClientMachine) and
/// [`ServerMachine`](crate::ServerMachine), which expose what their callers need.
#[derive(Debug)]
pub struct PoolCommon<C> {
    pub(crate) idle: IdleMap<Kept<C>>,
    /// Connections the peer started (in-band mode), oldest first, waiting for an accept.
    pub(crate) started: VecDeque<(ConnId, C)>,
    pub(crate) waiters: Waiters,
    pub(crate) answers: VecDeque<Answer<C>>,
    pub(crate) to_close: Vec<(ConnId, C)>,
    /// The deadline of every dial or handshake under way, by serial.
    timers: Deadlines,
    /// Serials of dials or handshakes the driver has to abort.
    pub(crate) aborts: VecDeque<u64>,
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
    /// Reported connections out for a readiness peek, and whether another report for the
    /// same one came meanwhile (then it is peeked again once back).
    peeking: Vec<(ConnId, bool)>,
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
            started: VecDeque::new(),
            waiters: Waiters::new(),
            answers: VecDeque::new(),
            to_close: Vec::new(),
            timers: Deadlines::default(),
            aborts: VecDeque::new(),
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
            peeking: Vec::new(),
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
    ///
    /// Crate-private: a get goes through its role (`ClientMachine::get`, `get_any`,
    /// `ServerMachine::get`), which tells the adaptation policy about it.
    pub(crate) fn get(&mut self, want: Want, now: Instant, deadline: Instant) -> Got<C> {
        if self.closed {
            return Got::Failed(GetFailure::Closed);
        }
        if self.unreachable {
            self.counters.unreachable += 1;
            return Got::Failed(GetFailure::Unreachable);
        }
        if want == Want::Started {
            if let Some((id, conn)) = self.started.pop_front() {
                self.counters.served_at_once += 1;
                return Got::Ready(id, conn);
            }
        }
        loop {
            let taken = match want {
                Want::Any => self.idle.take_oldest(),
                Want::Id(id) => self.idle.take(&id).map(|k| (id, k)),
                Want::Started => None,
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
            return Got::Failed(GetFailure::NotFound);
        }
        if deadline <= now {
            self.counters.get_timeouts += 1;
            return Got::Failed(GetFailure::Timeout);
        }
        Got::Wait(self.waiters.push(want, deadline))
    }

    /// The verdict on a candidate of [`Got::Check`]: a live one is handed out, a dead
    /// one is counted and queued for closing, and the get goes on with the next one.
    pub fn handle_check(&mut self, check: Check<C>, alive: bool, now: Instant) -> Got<C> {
        if self.closed {
            self.to_close.push((check.id, check.conn));
            return Got::Failed(GetFailure::Closed);
        }
        if alive {
            self.counters.served_at_once += 1;
            return Got::Ready(check.id, check.conn);
        }
        self.counters.evicted_dead += 1;
        self.to_close.push((check.id, check.conn));
        self.get(check.want, now, check.deadline)
    }

    /// The idle connection `id`, left in place (for the driver to probe it before it
    /// reports a hang-up: see [`handle_idle_closed`](Self::handle_idle_closed)).
    pub fn idle_conn_mut(&mut self, id: ConnId) -> Option<&mut C> {
        self.idle.get_mut(&id).map(|kept| &mut kept.conn)
    }

    /// The driver learned from the OS, without probing, that the peer of the idle
    /// connection `id` closed or reset it (readiness reported a hang-up or an error):
    /// it leaves the idle map at once, counted as `evicted_dead`, and is queued for
    /// closing ([`Output::Close`]); a client refills on its next turn. Answers whether
    /// it was idle. A connection that is not idle (out for a probe, on its way to a
    /// get, handed out) is left alone: its probe or its user will see the same.
    ///
    /// This is how a dead peer is found in milliseconds instead of at the next sweep;
    /// the sweep stays for what readiness cannot see. A hang-up behind bytes still
    /// pending is a peer's half-close after it wrote (a session started before the
    /// get), not a death: the driver probes first and reports only a dead one
    /// ([`Driver::idle_closed`](crate::driver::Driver::idle_closed)).
    pub fn handle_idle_closed(&mut self, id: ConnId, _now: Instant) -> bool {
        match self.idle.take(&id) {
            Some(kept) => {
                self.counters.evicted_dead += 1;
                self.depart(id);
                self.to_close.push((id, kept.conn));
                true
            }
            None => false,
        }
    }

    /// The peer started a session on the idle connection `id` (in-band mode: bytes
    /// arrived on it, and the driver's peek found them without consuming one). It
    /// leaves the idle map for the oldest get waiting for [`Want::Started`], or for the
    /// queue of started connections that the next such get takes at once (at most
    /// [`STARTED_QUEUE`]: one more is closed, counted in `starts_dropped`). Answers
    /// whether it was idle. The client refills on its next turn, as after a get.
    pub fn handle_idle_started(&mut self, id: ConnId, _now: Instant) -> bool {
        let Some(kept) = self.idle.take(&id) else {
            return false;
        };
        self.start(id, kept.conn);
        true
    }

    /// The peer started a session on `conn`, out of the idle map: to the oldest accept,
    /// or the started queue.
    pub(crate) fn start(&mut self, id: ConnId, conn: C) {
        self.depart(id);
        self.counters.started += 1;
        match self.waiters.pop_started() {
            Some(key) => {
                self.counters.served_after_wait += 1;
                self.answers.push_back(Answer {
                    key,
                    result: Ok((id, conn)),
                });
            }
            None if self.started.len() >= STARTED_QUEUE => {
                self.counters.starts_dropped += 1;
                self.to_close.push((id, conn));
            }
            None => self.started.push_back((id, conn)),
        }
    }

    /// A started connection handed to an accept that turned out to be no session: its
    /// start header was wrong, or did not come in time. Counted in `starts_dropped`
    /// and queued for closing.
    pub fn handle_bad_start(&mut self, id: ConnId, conn: C) {
        self.counters.starts_dropped += 1;
        self.to_close.push((id, conn));
    }

    /// Connections the peer started, waiting for an accept.
    pub fn started_waiting(&self) -> usize {
        self.started.len()
    }

    /// A connection handed to a waiting get through an [`Output::Answer`]
    /// was found dead by the driver before it reached the caller (its peer gave up
    /// while it settled, say). It is counted as evicted, not as served, and queued for
    /// closing; the driver then repeats the get.
    pub fn handle_dead_answer(&mut self, id: ConnId, conn: C, _now: Instant) {
        self.counters.served_after_wait = self.counters.served_after_wait.saturating_sub(1);
        self.counters.evicted_dead += 1;
        self.to_close.push((id, conn));
    }

    // ---- outputs ----

    /// The outputs both roles share, most urgent first: answers (a get is waiting),
    /// aborts, closes. `None` when none is queued.
    pub(crate) fn poll_shared(&mut self) -> Option<Output<C>> {
        if let Some(a) = self.answers.pop_front() {
            return Some(Output::Answer(a));
        }
        if let Some(serial) = self.aborts.pop_front() {
            return Some(Output::Abort(serial));
        }
        self.to_close.pop().map(|(id, c)| Output::Close(id, c))
    }

    /// The sweep's next batch, or the closes it queued while picking it (connections
    /// past the maximum idle age); `None` when the sweep has nothing to ask.
    pub(crate) fn poll_sweep(&mut self, now: Instant) -> Option<Output<C>> {
        if let Some(p) = self.next_probe(now) {
            return Some(Output::Probe(p));
        }
        self.poll_shared()
    }

    /// The next batch of idle connections the running sweep wants probed, if any. One
    /// batch is out at a time: give it back with [`handle_probe`](Self::handle_probe)
    /// before asking for the next. Connections idle longer than the maximum idle age
    /// are not probed but closed ([`Output::Close`]).
    pub(crate) fn next_probe(&mut self, now: Instant) -> Option<Probe<C>> {
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
        [
            self.sweep.due,
            self.waiters.next_deadline(),
            self.timers.next(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time passed: waiters past their deadline are answered, and a sweep starts when
    /// one is due (its batches then come out of `poll_output`).
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(serial) = self.timers.pop_expired(now) {
            self.aborts.push_back(serial);
        }
        while let Some(key) = self.waiters.pop_expired(now) {
            self.counters.get_timeouts += 1;
            self.answers.push_back(Answer {
                key,
                result: Err(GetFailure::Timeout),
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
    pub(crate) fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn too_old(&self, kept: &Kept<C>, now: Instant) -> bool {
        self.sweep.max_idle_age.is_some_and(|max| {
            let age = self.ms(now).saturating_sub(kept.since_ms);
            u128::from(age) > max.as_millis()
        })
    }

    pub(crate) fn can_arrive(&self) -> bool {
        self.in_flight > 0 || self.sweep.out.is_some() || self.starting || !self.peeking.is_empty()
    }

    /// Connections this machine holds: idle, out for a sweep probe or a readiness
    /// peek, or in flight. The capacity bounds this.
    pub(crate) fn held(&self) -> usize {
        self.idle.len()
            + self.in_flight
            + self.sweep.out.as_ref().map_or(0, Vec::len)
            + self.peeking.len()
    }

    /// A finished connection: to the oldest waiter for its id, else the oldest waiter
    /// for any, else idle. `Err` gives it back when the id is already idle.
    pub(crate) fn land(&mut self, id: ConnId, conn: C, now: Instant) -> Result<(), C> {
        let since_ms = self.ms(now);
        self.land_kept(id, Kept { since_ms, conn })
            .map_err(|k| k.conn)
    }

    pub(crate) fn land_kept(&mut self, id: ConnId, kept: Kept<C>) -> Result<(), Kept<C>> {
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

    /// Arms the deadline of the dial or handshake `serial` (again: the later one wins).
    pub(crate) fn arm(&mut self, serial: u64, at: Instant) {
        self.timers.arm(serial, at);
    }

    /// Moves the deadline of `serial` to `at`, only while one is armed: a serial whose
    /// deadline already fired (and was aborted) or whose ticket came back is left alone,
    /// so that it is aborted at most once.
    pub(crate) fn rearm(&mut self, serial: u64, at: Instant) {
        if self.timers.at.contains_key(&serial) {
            self.timers.arm(serial, at);
        }
    }

    /// The dial or handshake `serial` came back: its deadline is off.
    pub(crate) fn disarm(&mut self, serial: u64) {
        self.timers.disarm(serial);
    }

    /// Asks the driver to abort the dial or handshake `serial` now.
    pub(crate) fn abort(&mut self, serial: u64) {
        self.timers.disarm(serial);
        self.aborts.push_back(serial);
    }

    /// Notes that the connection `id` left the pool, when departures are kept.
    pub(crate) fn depart(&mut self, id: ConnId) {
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
                result: Err(GetFailure::Unreachable),
            });
        }
    }

    /// Answers every get by id with `NotFound` (nothing under way can bring their ids).
    pub(crate) fn fail_id_waiters(&mut self) {
        for key in self.waiters.take_all_by_id() {
            self.counters.not_found += 1;
            self.answers.push_back(Answer {
                key,
                result: Err(GetFailure::NotFound),
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

    /// Queues up to `n` of the newest idle connections for closing, counted as
    /// trimmed; how many.
    ///
    /// Newest, because the server hands out its oldest first: a trim closes the
    /// connection the server would hand out last, so its get does not race the close
    /// on its way (which a trim of the oldest lost whenever a get came within one
    /// one-way delay of it: the server handed out a connection the client had closed).
    pub(crate) fn trim_newest(&mut self, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let Some((id, kept)) = self.idle.take_newest() else {
                break;
            };
            self.depart(id);
            self.counters.trimmed += 1;
            self.to_close.push((id, kept.conn));
            done += 1;
        }
        done
    }

    /// Queues every idle connection for closing; how many.
    pub(crate) fn flush(&mut self) -> usize {
        self.sweep.left = 0;
        self.sweep.flushed = self.sweep.out.is_some();
        let drained = self.idle.drain();
        let n = drained.len();
        for (id, k) in drained {
            self.depart(id);
            self.to_close.push((id, k.conn));
        }
        n
    }

    /// Closes: waiting gets are answered `Closed`, idle connections are queued for
    /// closing, no deadline or sweep is armed any more.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.to_close.extend(self.started.drain(..));
        self.sweep.due = None;
        self.timers = Deadlines::default();
        for key in self.waiters.drain() {
            self.answers.push_back(Answer {
                key,
                result: Err(GetFailure::Closed),
            });
        }
        self.flush();
    }

    /// Gives back a started connection whose accept went away before its answer
    /// reached it: to the front of the started queue.
    pub(crate) fn restore_started(&mut self, id: ConnId, conn: C) {
        if self.closed {
            return self.close_later(id, conn);
        }
        self.counters.served_after_wait = self.counters.served_after_wait.saturating_sub(1);
        self.started.push_front((id, conn));
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

mod deadlines;
mod outputs;
mod ready;
mod shared;

use deadlines::Deadlines;
pub(crate) use outputs::Item;
pub use outputs::{Answer, Check, Got, Output, Probe};

pub use ready::{Readied, Reported};
pub(crate) use shared::shared_methods;

#[cfg(test)]
mod tests;
