//! The client manager machine: refill, rounds of adjustment, dial tickets, backoff,
//! gets by id.
//!
//! Between rounds the machine tops the pool up continuously: whenever idle plus in
//! flight falls below the capacity, [`ClientMachine::poll_output`] hands out another
//! ticket, at most `parallelism` at once. A get that takes a connection is therefore
//! replaced at once, not a whole interval later as in the Go package, whose refill
//! runs only at the start of each round.
//!
//! A round starts each time the refill timer fires, one interval after the last: the
//! adaptation policy ([`Adapt`], chosen in the configuration) answers the capacity and
//! the interval from what the machine observed (gets, dial times, failures, the idle
//! count, what the previous round created), the machine clamps both into the user's
//! bounds, and the next round is due one (new) interval later. Under
//! [`GoRules`](crate::GoRules) the capacity moves by how many connections the previous
//! round created, then the interval by the fill level, as in the Go package.
//!
//! What a round tells the policy ([`RoundInput`]) includes the offered demand since the
//! previous round (every get, and those that found nothing fitting idle and waited,
//! after dead candidates too), the dials that failed, and the dials in flight for longer
//! than the policy's [`hung_after`](Adapt::hung_after), which still hold capacity. A
//! policy may also ask the machine to close idle connections above its capacity, with
//! hysteresis ([`Trim`](crate::Trim): closing starts once the connections held exceed
//! the capacity by its slack, closes the oldest idle ones, a bounded number per round,
//! and stops at the capacity), and to dial fewer at once than the configuration allows
//! ([`Adapt::parallelism`]). [`GoRules`](crate::GoRules) does neither: as in the Go
//! package, a capacity that falls only stops the refill.
//!
//! Under [`Refill::GoFill`] (a policy's [`Adapt::refill`], such as the scoreboard's
//! Go-behaviour baseline) the
//! machine refills as the Go package does instead: at the start of a round it makes as
//! many dials as the capacity lacks connections (idle, or out for a probe), one at a
//! time (a failure counts as one of them); the next round starts one interval after the
//! last dial came back, and there is no back-off.
//!
//! A run of failures as long as the parallelism (or the capacity, if smaller) means
//! the server is unreachable rather than unlucky. The machine then backs off: no more
//! top-up, a single probe per round, and rounds spaced by an exponential backoff with
//! jitter, never closer than the minimum interval and never further apart than the
//! maximum. The first success ends it. Scattered failures among successes do not slow
//! the pool down.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::adapt::{Adapt, Observed, Refill, RoundInput};
use crate::common::{Check, Got, Output, PoolCommon, Readied, Reported};
use crate::config::ClientConfig;
use crate::random::{Entropy, Random};
use crate::stats::{Stage, Status};
use crate::time::deadline_after;
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
    /// Single mode: no id on the wire; the machine draws one when the dial lands.
    single: bool,
    /// The id drawn for it ([`ClientMachine::assign_id`]), reserved until it comes back.
    id: Option<ConnId>,
    issued: Instant,
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
    /// Whether the dial reads its id from the server. In single mode it does not: the
    /// machine draws the id when the connection lands ([`ClientMachine::assign_id`]).
    pub fn reads_id(&self) -> bool {
        !self.single
    }
    /// The id drawn for this dial in single mode, once [`ClientMachine::assign_id`]
    /// drew it.
    pub fn id(&self) -> Option<ConnId> {
        self.id
    }
    /// When connect plus TLS handshake must be done.
    pub fn handshake_deadline(&self) -> Instant {
        self.handshake_deadline
    }
    /// When the id read must be done, counted from when the handshake finished.
    pub fn id_deadline(&self, handshake_done: Instant) -> Instant {
        deadline_after(handshake_done, self.id_timeout)
    }
}

/// The client pool's decisions, with no I/O. Drive it as the crate docs show.
///
/// What it shares with the server machine (gets, liveness checks, the sweep, answers,
/// counters) is in [`PoolCommon`], written once; this machine exposes it by name.
#[derive(Debug)]
pub struct ClientMachine<C> {
    cfg: ClientConfig,
    common: PoolCommon<C>,
    /// The adaptation policy's state.
    policy: Box<dyn Adapt>,
    capacity: usize,
    interval: Duration,
    next_serial: u64,
    /// Whether the probe of this round is still to be handed out (while backing off).
    probe: bool,
    /// Connections created by round dials since the last round started; `None` before
    /// the first round.
    created: Option<usize>,
    failures: u32,
    backoff: Duration,
    /// When the next round is due; `None` after close, and while a Go-style fill runs.
    refill: Option<Instant>,
    /// How the machine refills (the policy's choice, fixed at creation).
    mode: Refill,
    /// Whether a Go-style fill is under way ([`Refill::GoFill`]).
    filling: bool,
    /// Dials the Go-style fill has still to make.
    fill_left: usize,
    /// Whether idle connections above the capacity are being closed (the policy's
    /// [`Trim`](crate::Trim) hysteresis: started above the slack, ended at the capacity).
    trimming: bool,
    /// Gets, queued gets and failed dials since the last round started.
    gets: usize,
    waited: usize,
    failed: usize,
    /// When each ticket still out was handed out, by serial (serials and instants grow
    /// together, so the oldest come first).
    issued: BTreeMap<u64, Instant>,
    /// Ids drawn for single-mode dials that have not come back (a few at most: the
    /// dials in flight).
    reserved: Vec<ConnId>,
}

impl<C> ClientMachine<C> {
    crate::common::shared_methods!();

    /// The peer of the idle connection `id` hung up, seen with no probe
    /// ([`PoolCommon::handle_idle_closed`]).
    pub fn handle_idle_closed(&mut self, id: ConnId, now: Instant) -> bool {
        self.common.handle_idle_closed(id, now)
    }

    /// A started connection handed to an accept that turned out to be no session
    /// ([`PoolCommon::handle_bad_start`]).
    pub fn handle_bad_start(&mut self, id: ConnId, conn: C) {
        self.common.handle_bad_start(id, conn);
    }

    /// Connections the peer started, waiting for an accept.
    pub fn started_waiting(&self) -> usize {
        self.common.started_waiting()
    }

    /// A machine whose first round is due at `now`, drawing its randomness (single-mode
    /// ids, backoff jitter) from `random`: a [`SeededRandom`](crate::SeededRandom)
    /// seeded from a secure source.
    pub fn new(cfg: ClientConfig, random: impl Random + 'static, now: Instant) -> Self {
        Self {
            capacity: cfg.min_capacity,
            interval: cfg.min_interval,
            policy: cfg.adapt.instance(),
            mode: Refill::TopUp,
            filling: false,
            fill_left: 0,
            trimming: false,
            gets: 0,
            waited: 0,
            failed: 0,
            issued: BTreeMap::new(),
            reserved: Vec::new(),
            common: PoolCommon::new(
                Entropy::new(random),
                now,
                cfg.sweep_interval(),
                cfg.max_idle_age,
            ),
            cfg,
            next_serial: 0,
            probe: false,
            created: None,
            failures: 0,
            backoff: Duration::ZERO,
            refill: Some(now),
        }
        .starting()
    }

    fn starting(mut self) -> Self {
        self.common.starting = true;
        self.mode = self.policy.refill();
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work:
    /// the next round, the next sweep or the first waiter's deadline.
    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        match (self.refill, self.common.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: expires waiting gets, starts a sweep when one is due (its batches
    /// come out of [`poll_output`](Self::poll_output)) and a round when one is due.
    /// Calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.common.expire(now);
        let due = self.refill.is_some_and(|t| t <= now);
        if !due || self.common.closed {
            return;
        }
        self.common.starting = false;
        let hung = self.policy.hung_after().map_or(0, |after| {
            self.issued
                .values()
                .take_while(|&&at| deadline_after(at, after) <= now)
                .count()
        });
        let input = RoundInput {
            capacity: self.capacity,
            interval: self.interval,
            idle: self.common.idle.len(),
            in_flight: self.common.in_flight,
            created: self.created.replace(0),
            backing_off: self.backing_off(),
            gets: std::mem::take(&mut self.gets),
            waited: std::mem::take(&mut self.waited),
            failed: std::mem::take(&mut self.failed),
            hung,
            min_capacity: self.cfg.min_capacity,
            max_capacity: self.cfg.max_capacity,
            min_interval: self.cfg.min_interval,
            max_interval: self.cfg.max_interval,
        };
        let d = self.policy.round(&input, now);
        // The bounds are the user's: whatever the policy answers stays inside them.
        self.capacity = d
            .capacity
            .clamp(self.cfg.min_capacity, self.cfg.max_capacity);
        self.interval = d
            .interval
            .clamp(self.cfg.min_interval, self.cfg.max_interval);
        self.trim();
        if self.mode == Refill::GoFill {
            // Go dials what is missing from the capacity, one at a time; the next round
            // is due an interval after this fill ends (`next_dial`).
            self.filling = true;
            self.fill_left = self.capacity.saturating_sub(self.common.held());
            self.refill = None;
            return;
        }
        let wait = if self.backing_off() {
            self.probe = true;
            self.interval.max(self.backoff)
        } else {
            self.interval
        };
        self.refill = Some(deadline_after(now, wait));
    }

    /// The next request for the driver (see [`Output`]): answers to waiting gets
    /// first, then aborts, closes, dials and sweep batches; [`Output::Timeout`] when
    /// nothing is left. Call it until `Timeout` after every input.
    pub fn poll_output(&mut self, now: Instant) -> Output<C> {
        if let Some(o) = self.common.poll_shared() {
            return o;
        }
        if let Some(t) = self.next_dial(now) {
            return Output::Dial(t);
        }
        if let Some(o) = self.common.poll_sweep(now) {
            return o;
        }
        Output::Timeout(self.poll_timeout())
    }

    /// Closes idle connections above the capacity, as the policy's [`Trim`](crate::Trim)
    /// asks (at a round).
    fn trim(&mut self) {
        let Some(t) = self.policy.trim() else {
            self.trimming = false;
            return;
        };
        let held = self.common.held();
        if held > self.capacity.saturating_add(t.slack) {
            self.trimming = true;
        }
        if self.trimming {
            let excess = held.saturating_sub(self.capacity);
            self.common.trim_newest(excess.min(t.per_round.max(1)));
            if self.common.held() <= self.capacity {
                self.trimming = false;
            }
        }
    }

    /// A Go-style fill ends: the next round is due one interval from now.
    fn end_fill(&mut self, now: Instant) {
        if self.filling {
            self.filling = false;
            self.refill = Some(deadline_after(now, self.interval));
        }
    }

    /// The next dial to start, if any.
    pub(crate) fn next_dial(&mut self, now: Instant) -> Option<DialTicket> {
        if self.common.closed {
            return None;
        }
        let in_flight = self.common.in_flight;
        let urgent =
            self.cfg.mode == crate::Mode::Single && self.common.waiters.any_len() > in_flight;
        if !urgent && self.mode == Refill::GoFill {
            // One dial at a time, only while a fill runs; the fill ends once it made
            // the dials it set out to make and the last one came back, or once the
            // capacity is held (a connection came back meanwhile).
            if !self.filling || in_flight > 0 {
                return None;
            }
            if self.fill_left == 0 || self.common.held() >= self.capacity {
                self.end_fill(now);
                return None;
            }
            self.fill_left -= 1;
        } else if !urgent {
            self.created?; // no round has run yet
            let full = self.common.held() >= self.capacity;
            let parallelism = self.top_up_limit();
            if self.backing_off() {
                if !self.probe || in_flight > 0 || full {
                    return None;
                }
                self.probe = false;
            } else if full || in_flight >= parallelism {
                return None;
            }
        }
        self.common.in_flight += 1;
        self.common.counters.dialed += 1;
        self.next_serial += 1;
        self.issued.insert(self.next_serial, now);
        let handshake_deadline = deadline_after(now, self.cfg.handshake_timeout);
        self.common.arm(self.next_serial, handshake_deadline);
        Some(DialTicket {
            serial: self.next_serial,
            urgent,
            single: self.cfg.mode == crate::Mode::Single,
            id: None,
            issued: now,
            handshake_deadline,
            id_timeout: self.cfg.id_timeout,
        })
    }

    /// The dial `serial` finished connect and TLS and starts reading the id: its
    /// deadline becomes the id deadline, counted from `now`. When a deadline passes,
    /// [`poll_output`](Self::poll_output) answers [`Output::Abort`] with the serial;
    /// the dial's ticket still comes back, as a failure.
    pub fn handle_handshake_done(&mut self, serial: u64, now: Instant) {
        if !self.common.closed {
            // Only a dial still armed: one already aborted is never aborted again.
            self.common
                .rearm(serial, deadline_after(now, self.cfg.id_timeout));
        }
    }

    /// A fresh id for a single-mode connection, drawn from the machine's generator
    /// and not idle. Call it in the same critical section as the
    /// [`handle_dial_success`](Self::handle_dial_success) that lands it, or use
    /// [`assign_id`](Self::assign_id), which reserves it.
    pub fn make_id(&mut self) -> ConnId {
        let reserved = &self.reserved;
        self.common.fresh_id(|id| !reserved.contains(id))
    }

    /// The id of the single-mode dial `ticket`, drawn as [`make_id`](Self::make_id)
    /// does and reserved (no other draw takes it) until the ticket comes back; the
    /// same id when called again. The driver draws it before the connection lands, to
    /// watch it under that id.
    pub fn assign_id(&mut self, ticket: &mut DialTicket) -> ConnId {
        if let Some(id) = ticket.id {
            return id;
        }
        let id = self.make_id();
        self.reserved.push(id);
        ticket.id = Some(id);
        id
    }

    /// The ticket came back: its reserved id, if any, is free.
    fn unreserve(&mut self, ticket: &DialTicket) {
        if let Some(id) = ticket.id {
            self.reserved.retain(|r| *r != id);
        }
    }

    /// A dial finished its handshake and has its id: read from the server, or in
    /// single mode made with [`make_id`](Self::make_id). The connection goes idle or to
    /// a waiting get. An id already idle here is the server's fault: the connection is
    /// queued for closing ([`Output::Close`]) and the dial counts
    /// as failed at the id stage.
    pub fn handle_dial_success(&mut self, ticket: DialTicket, id: ConnId, conn: C, now: Instant) {
        self.unreserve(&ticket);
        self.common.disarm(ticket.serial);
        self.issued.remove(&ticket.serial);
        if self.common.closed {
            self.common.close_later(id, conn);
            return self.finish();
        }
        if let Err(conn) = self.common.land(id, conn, now) {
            self.common.counters.id_collisions += 1;
            self.common.close_later(id, conn);
            return self.handle_dial_failure(ticket, Stage::Id, now);
        }
        self.common.counters.created += 1;
        let took = now.saturating_duration_since(ticket.issued);
        self.policy.observe(Observed::Dialed { took }, now);
        if self.backing_off() {
            // The server is back: the next round need not sit out the backoff.
            let sooner = deadline_after(now, self.interval);
            if let Some(t) = self.refill.as_mut() {
                *t = (*t).min(sooner);
            }
        }
        self.failures = 0;
        self.common.unreachable = false;
        self.backoff = Duration::ZERO;
        self.probe = false;
        if !ticket.urgent {
            if let Some(c) = self.created.as_mut() {
                *c += 1;
            }
        }
        self.finish();
    }

    /// A dial failed at `stage` (an error or its deadline). After a run of failures
    /// the machine backs off, with jitter drawn from its own generator.
    pub fn handle_dial_failure(&mut self, ticket: DialTicket, stage: Stage, now: Instant) {
        self.unreserve(&ticket);
        self.common.disarm(ticket.serial);
        self.issued.remove(&ticket.serial);
        self.common.counters.count_failure(stage);
        self.policy.observe(Observed::DialFailed, now);
        if !self.common.closed {
            self.failed += 1;
            self.failures = self.failures.saturating_add(1);
            if self.backing_off() {
                let beyond = self.failures - self.unreachable_after() + 1;
                let jitter = self.common.random.next_u32();
                self.backoff = backoff(&self.cfg, beyond, jitter);
                // The next probe waits at least the backoff from this failure.
                let later = deadline_after(now, self.backoff);
                if let Some(t) = self.refill.as_mut() {
                    *t = (*t).max(later);
                }
                if self.cfg.fail_fast && self.common.counters.created == 0 {
                    self.common.unreachable = true;
                    self.common.fail_waiters_unreachable();
                }
            }
        }
        self.finish();
    }

    /// Consecutive failures that mean "unreachable": the parallelism, or the capacity
    /// when smaller (the pool cannot see more failures at once than it has dials).
    #[cfg(any(test, feature = "test-util"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn backoff_threshold(&self) -> u32 {
        self.unreachable_after()
    }

    fn unreachable_after(&self) -> u32 {
        let n = self.cfg.parallelism.min(self.capacity).max(1);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether the pool is backing off: one probe per round until a dial succeeds.
    /// Never under [`Refill::GoFill`], which has no back-off.
    pub fn backing_off(&self) -> bool {
        self.mode != Refill::GoFill && self.failures >= self.unreachable_after()
    }

    fn finish(&mut self) {
        self.common.in_flight -= 1;
        if !self.common.can_arrive() {
            self.common.fail_id_waiters();
        }
    }

    /// A get for the connection with `id`. Waits (until `deadline`) only while a
    /// handshake in flight could still produce that id; otherwise `NotFound`. A found
    /// candidate comes as [`Got::Check`], to probe and report with
    /// [`handle_check`](PoolCommon::handle_check).
    pub fn get(&mut self, id: ConnId, now: Instant, deadline: Instant) -> Got<C> {
        let got = self.common.get(Want::Id(id), now, deadline);
        self.observe_get(&got, now);
        got
    }

    /// Tells the policy about a get as it arrives (a candidate to check counts as
    /// found: if it and every other candidate turn out dead and the get waits after
    /// all, [`handle_check`](Self::handle_check) says so).
    fn observe_get(&mut self, got: &Got<C>, now: Instant) {
        let waited = matches!(got, Got::Wait(_));
        self.gets += 1;
        self.waited += usize::from(waited);
        self.policy.observe(Observed::Get { waited }, now);
    }

    /// The verdict on a candidate of [`Got::Check`] ([`PoolCommon::handle_check`]). A
    /// get whose candidates were all dead and that then waits is told to the policy
    /// ([`Observed::WaitedAfterCheck`]) and counted in [`RoundInput::waited`].
    pub fn handle_check(&mut self, check: Check<C>, alive: bool, now: Instant) -> Got<C> {
        let got = self.common.handle_check(check, alive, now);
        if matches!(got, Got::Wait(_)) {
            self.waited += 1;
            self.policy.observe(Observed::WaitedAfterCheck, now);
        }
        got
    }

    /// A get for any live connection, oldest first. In single mode, when nothing is idle,
    /// [`poll_output`](Self::poll_output) then hands out an urgent dial for it.
    pub fn get_any(&mut self, now: Instant, deadline: Instant) -> Got<C> {
        let got = self.common.get(Want::Any, now, deadline);
        self.observe_get(&got, now);
        got
    }

    /// An accept (in-band mode): the oldest connection the peer started, at once, or
    /// [`Got::Wait`] until one is started or `deadline` passes. Not told to the policy:
    /// the start itself was ([`handle_idle_started`](Self::handle_idle_started)).
    pub fn accept(&mut self, now: Instant, deadline: Instant) -> Got<C> {
        self.common.get(Want::Started, now, deadline)
    }

    /// The peer started a session on the idle connection `id` (in-band mode; see
    /// [`PoolCommon::handle_idle_started`]). To the policy it is a get served at once:
    /// the server's demand took a connection, as a get by id does in the Go protocol.
    pub fn handle_idle_started(&mut self, id: ConnId, now: Instant) -> bool {
        let started = self.common.handle_idle_started(id, now);
        if started {
            self.gets += 1;
            self.policy.observe(Observed::Get { waited: false }, now);
        }
        started
    }

    /// The OS reported the idle connection `id` ready: it leaves for one peek by the
    /// driver, with no lock held, and comes back with [`handle_peeked`](Self::handle_peeked).
    pub fn take_held(&mut self, id: ConnId, _now: Instant) -> Option<Reported<C>> {
        self.common.take_held(id)
    }

    /// The verdict on a connection of [`take_held`](Self::take_held). In in-band mode,
    /// bytes waiting are a session the peer started, told to the policy as a get
    /// served at once (as [`handle_idle_started`](Self::handle_idle_started)). Answers
    /// what became of it, and whether to peek again.
    pub fn handle_peeked(
        &mut self,
        held: Reported<C>,
        peek: crate::Liveness,
        now: Instant,
    ) -> (Readied, bool) {
        let r = self.common.handle_peeked(held, peek, self.cfg.in_band());
        if r.0 == Readied::Started {
            self.gets += 1;
            self.policy.observe(Observed::Get { waited: false }, now);
        }
        r
    }

    /// Gives back a connection whose answer could not be delivered (the get was gone).
    /// One that cannot be kept is queued for closing.
    pub fn put_back(&mut self, id: ConnId, conn: C, now: Instant) {
        let capacity = self.capacity;
        self.common.put_back(id, conn, now, capacity);
    }

    /// Queues every idle connection for closing ([`Output::Close`]), and returns how
    /// many; the machine then refills at once (Go: `Flush`).
    pub fn flush(&mut self, _now: Instant) -> usize {
        self.common.flush()
    }

    /// Closes: waiting gets are answered `Closed`, idle connections are queued for
    /// closing, no more dials, deadlines or sweeps; tickets still out may be returned
    /// and their connections are queued for closing.
    pub fn close(&mut self) {
        self.refill = None;
        self.probe = false;
        self.filling = false;
        self.common.close();
    }

    /// The status snapshot.
    pub fn status(&self) -> Status {
        Status {
            idle: self.common.idle.len(),
            capacity: self.capacity,
            interval: self.interval,
            in_flight: self.common.in_flight,
            waiting: self.common.waiters.len(),
        }
    }

    /// When the next round is due; `None` after close, and while a Go-style fill runs
    /// ([`Refill::GoFill`]).
    #[cfg(any(test, feature = "test-util"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn refill_at(&self) -> Option<Instant> {
        self.refill
    }

    /// Top-up dials in flight at most, now: the configuration's parallelism, or less
    /// when the policy paces its dials ([`Adapt::parallelism`]).
    #[cfg(any(test, feature = "test-util"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn dial_limit(&self) -> usize {
        self.top_up_limit()
    }

    fn top_up_limit(&self) -> usize {
        self.policy
            .parallelism()
            .map_or(self.cfg.parallelism, |p| p.clamp(1, self.cfg.parallelism))
    }

    /// How the machine refills (its policy's [`Adapt::refill`]).
    #[cfg(any(test, feature = "test-util"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
    pub fn refill_mode(&self) -> Refill {
        self.mode
    }

    /// Consecutive dial failures so far.
    #[cfg(any(test, feature = "test-util"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
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
