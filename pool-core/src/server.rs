//! The server admission machine: which accepted connections may handshake, their
//! deadlines, their ids, and every reason for a refusal.
//!
//! # Admission under pressure
//!
//! A tunnel port is reached by strangers, so every slot they can take has a bound, a
//! deadline and an eviction rule:
//! - at most `max_handshakes` handshakes run at once, each under a deadline. When all
//!   slots are taken, a new connection **evicts the oldest silent handshake** (one
//!   whose peer has sent no byte yet, as the driver reports with
//!   [`ServerMachine::handle_spoke`]), else the oldest, instead of being refused: a
//!   slowloris peer cannot shut the legitimate client out, and while it stays silent
//!   it yields before a client that speaks first (a TLS client's ClientHello);
//! - at most `pending_per_source` of them come from one source (a peer address cut to
//!   a prefix, see [`Source`]); over it, the new connection evicts that source's own
//!   oldest handshake;
//! - optionally at most `idle_per_source` idle connections come from one source; over
//!   it, a new connection from that source is refused, and a handshake of that source
//!   that finishes is closed (both counted as `refused_quota`).
//!
//! - the capacity bounds the authenticated connections only (idle, settling, out for
//!   a probe); handshakes are bounded by `max_handshakes` alone, so silent strangers
//!   never make the legitimate client's refills look like one too many.
//!
//! An evicted handshake's slot is free at once; the driver learns which one to abort
//! from [`Output::Abort`], and its ticket still comes back exactly once
//! (ready or failed), to be ignored: a ready connection is then closed. The
//! per-source table holds only sources with a handshake under way or an idle
//! connection counted, so it is bounded by `max_handshakes` plus the capacity.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::common::{Got, Output, PoolCommon, Readied, Reported};
use crate::config::ServerConfig;
use crate::idle::IdBuild;
use crate::random::{Entropy, Random};
use crate::source::Source;
use crate::stats::{Stage, Status};
use crate::time::deadline_after;
use crate::waiters::Want;
use crate::ConnId;
use crate::Liveness;

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
    /// The connections the pool keeps (idle, settling, out for a probe) are at the
    /// maximum capacity. Handshakes under way do not count: they have their own
    /// bound, so strangers holding handshakes never make the pool look full. A
    /// handshake that finishes while the pool is full is closed, counted here too.
    Full,
    /// Too many handshakes are under way. No longer produced: the oldest handshake is
    /// evicted instead.
    Busy,
    /// The pool is closed.
    Closed,
    /// The peer's source holds its quota of idle connections.
    Quota,
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
/// counters) is in [`PoolCommon`], written once; this machine exposes it by name.
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
    /// Handshakes under way, by serial (the oldest first), with their source.
    live: BTreeMap<u64, Source>,
    /// Of `live`, those whose peer has sent no byte yet (the oldest first).
    silent: BTreeSet<u64>,
    /// What each source holds; an entry is removed when it holds nothing.
    sources: HashMap<Source, Held>,
    /// The source of each idle or settling connection, kept only with an idle quota.
    owner: HashMap<ConnId, Source, IdBuild>,
    /// Consecutive failed accepts, for the back-off.
    accept_failures: u32,
}

/// Room a queue or a set of handshakes keeps however empty it gets: below it nothing
/// is given back.
const SPARSE_ABOVE: usize = 64;

/// Once three quarters of `queue`'s room are empty, keeps room for twice what it holds.
/// A burst (a pool filling) then leaves no peak-sized queue behind for the pool's idle
/// life, and the cost stays O(1) amortised: a shrink moves what the queue holds, after
/// at least as many entries left it, and the next growth is as far away.
fn shrink_when_sparse<T>(queue: &mut VecDeque<T>) {
    let room = queue.capacity();
    if room > SPARSE_ABOVE && queue.len() <= room / 4 {
        queue.shrink_to((queue.len() * 2).max(SPARSE_ABOVE));
    }
}

/// What one source holds.
#[derive(Debug, Default)]
struct Held {
    /// Serials of its handshakes under way.
    pending: BTreeSet<u64>,
    /// Its idle and settling connections (counted only with an idle quota).
    idle: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.idle == 0
    }
}

impl<C> ServerMachine<C> {
    crate::common::shared_methods!();

    /// The verdict on a candidate of [`Got::Check`] ([`PoolCommon::handle_check`]).
    pub fn handle_check(&mut self, check: crate::Check<C>, alive: bool, now: Instant) -> Got<C> {
        self.common.handle_check(check, alive, now)
    }

    /// A machine with no connection yet, drawing ids from `random`: a
    /// [`SeededRandom`](crate::SeededRandom) seeded from a secure source.
    pub fn new(cfg: ServerConfig, random: impl Random + 'static, now: Instant) -> Self {
        let mut common = PoolCommon::new(
            Entropy::new(random),
            now,
            cfg.sweep_interval(),
            cfg.max_idle_age,
        );
        if cfg.admission.idle_per_source.is_some() {
            common.departed = Some(Vec::new());
        }
        Self {
            common,
            cfg,
            pending_ids: HashSet::default(),
            settling: VecDeque::new(),
            next_serial: 0,
            live: BTreeMap::new(),
            silent: BTreeSet::new(),
            sources: HashMap::new(),
            owner: HashMap::default(),
            accept_failures: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// A connection from `peer` was accepted; `allowed` is the client-IP filter's
    /// verdict. Admitting it may evict an older handshake (see the module docs):
    /// drain [`poll_output`](Self::poll_output) afterwards ([`Output::Abort`]).
    pub fn handle_accept(&mut self, now: Instant, peer: IpAddr, allowed: bool) -> Admission {
        self.accept_failures = 0;
        self.sync_departures();
        let source = self.source_of(peer);
        let c = &mut self.common;
        if c.closed {
            return Admission::Refuse(Refusal::Closed);
        }
        if !allowed {
            c.counters.refused_filter += 1;
            return Admission::Refuse(Refusal::Filter);
        }
        if self.over_idle_quota(source) {
            self.common.counters.refused_quota += 1;
            return Admission::Refuse(Refusal::Quota);
        }
        let kept = self.kept();
        let c = &mut self.common;
        let held = self.sources.get(&source);
        // The handshake to evict for room, if any: the source's own oldest when the
        // source is at its quota, else the oldest of all when every slot is taken.
        let own = held.map_or(0, |h| h.pending.len());
        let victim = match self.cfg.admission.pending_per_source {
            Some(quota) if own >= quota => held.and_then(|h| h.pending.first().copied()),
            _ if c.in_flight >= self.cfg.admission.max_handshakes => self
                .silent
                .first()
                .copied()
                .or_else(|| self.live.first_key_value().map(|(s, _)| *s)),
            _ => None,
        };
        // Handshakes do not count against the capacity: they have their own bound,
        // and a stranger's silent handshake must never make the client's refill look
        // like one connection too many.
        if kept >= self.cfg.max_capacity {
            c.counters.refused_full += 1;
            return Admission::Refuse(Refusal::Full);
        }
        if let Some(serial) = victim {
            self.evict(serial);
        }
        self.common.in_flight += 1;
        self.next_serial += 1;
        let serial = self.next_serial;
        self.live.insert(serial, source);
        self.silent.insert(serial);
        self.sources
            .entry(source)
            .or_default()
            .pending
            .insert(serial);
        let deadline = deadline_after(now, self.cfg.handshake_timeout);
        self.common.arm(serial, deadline);
        Admission::Admit(HandshakeTicket {
            serial,
            deadline,
            id: None,
        })
    }

    /// Accepting failed (out of descriptors, say): the pending connection stays in the
    /// listener's backlog, so retrying at once would spin. Answers when to try again:
    /// 5 ms after the first failure, doubling up to 1 s; an accept that succeeds
    /// resets it.
    pub fn handle_accept_error(&mut self, now: Instant) -> Instant {
        self.accept_failures = self.accept_failures.saturating_add(1);
        let shift = (self.accept_failures - 1).min(8);
        let pause = Duration::from_millis(5 << shift).min(Duration::from_secs(1));
        deadline_after(now, pause)
    }

    /// The next request for the driver (see [`Output`]): answers to waiting gets
    /// first, then aborts (evicted handshakes, passed deadlines), closes and sweep
    /// batches; [`Output::Timeout`] when nothing is left. Call it until `Timeout` after
    /// every input.
    pub fn poll_output(&mut self, now: Instant) -> Output<C> {
        if let Some(o) = self.common.poll_shared() {
            return o;
        }
        if let Some(o) = self.common.poll_sweep(now) {
            return o;
        }
        Output::Timeout(self.poll_timeout())
    }

    /// Handshakes under way from `peer`'s source.
    pub fn pending_from(&self, peer: IpAddr) -> usize {
        self.sources
            .get(&self.source_of(peer))
            .map_or(0, |h| h.pending.len())
    }

    /// Idle and settling connections counted for `peer`'s source (always zero without
    /// an idle quota).
    pub fn idle_from(&mut self, peer: IpAddr) -> usize {
        self.sync_departures();
        self.sources
            .get(&self.source_of(peer))
            .map_or(0, |h| h.idle)
    }

    /// Sources holding a handshake under way or a counted idle connection: the size of
    /// the per-source table.
    pub fn sources(&mut self) -> usize {
        self.sync_departures();
        self.sources.len()
    }

    fn over_idle_quota(&self, source: Source) -> bool {
        match (
            self.cfg.admission.idle_per_source,
            self.sources.get(&source),
        ) {
            (Some(quota), Some(h)) => h.idle >= quota,
            _ => false,
        }
    }

    fn source_of(&self, peer: IpAddr) -> Source {
        Source::of(
            peer,
            self.cfg.admission.source_prefixes.0,
            self.cfg.admission.source_prefixes.1,
        )
    }

    /// Frees the slot of the live handshake `serial` and asks the driver to abort it.
    fn evict(&mut self, serial: u64) {
        if self.end(serial) {
            self.common.counters.evicted_handshakes += 1;
            self.common.abort(serial);
        }
    }

    /// Takes the handshake `serial` off the live table; false if it was not there
    /// (evicted before).
    fn end(&mut self, serial: u64) -> bool {
        let Some(source) = self.live.remove(&serial) else {
            return false;
        };
        self.silent.remove(&serial);
        self.common.disarm(serial);
        self.common.in_flight -= 1;
        if let Some(h) = self.sources.get_mut(&source) {
            h.pending.remove(&serial);
            if h.is_empty() {
                self.sources.remove(&source);
            }
        }
        true
    }

    /// Counts `id` as an idle connection of the source of handshake `source`.
    fn own(&mut self, id: ConnId, source: Source) {
        if self.cfg.admission.idle_per_source.is_none() {
            return;
        }
        if let Some(old) = self.owner.insert(id, source) {
            self.release(old);
        }
        self.sources.entry(source).or_default().idle += 1;
    }

    fn release(&mut self, source: Source) {
        if let Some(h) = self.sources.get_mut(&source) {
            h.idle = h.idle.saturating_sub(1);
            if h.is_empty() {
                self.sources.remove(&source);
            }
        }
    }

    /// Connections that left the pool no longer count for their source.
    fn sync_departures(&mut self) {
        let Some(d) = &mut self.common.departed else {
            return;
        };
        for id in std::mem::take(d) {
            if let Some(source) = self.owner.remove(&id) {
                self.release(source);
            }
        }
    }

    /// Settling connections are queued for closing and no longer count for their
    /// source; how many.
    fn drop_settling(&mut self) -> usize {
        let n = self.settling.len();
        for (_, id, conn) in std::mem::take(&mut self.settling) {
            self.unreserve(&id);
            if let Some(source) = self.owner.remove(&id) {
                self.release(source);
            }
            self.common.close_later(id, conn);
        }
        self.sync_departures();
        n
    }

    /// The peer of handshake `ticket` has sent a byte: when every slot is taken, silent
    /// handshakes are evicted before it. Harmless for a handshake evicted already, or
    /// reported twice.
    pub fn handle_spoke(&mut self, ticket: &HandshakeTicket) {
        self.silent.remove(&ticket.serial);
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
    ///
    /// The ticket of an evicted handshake is ignored: its connection is closed.
    pub fn handle_ready(&mut self, ticket: HandshakeTicket, conn: C, now: Instant) {
        self.sync_departures();
        let source = self.live.get(&ticket.serial).copied();
        if !self.end(ticket.serial) {
            if let Some(id) = ticket.id {
                self.unreserve(&id);
            }
            let id = ticket.id.unwrap_or(ConnId::from_random([0; 4]));
            return self.common.close_later(id, conn);
        }
        let Some(id) = ticket.id else {
            self.common.counters.id_errors += 1;
            return self.common.close_later(ConnId::from_random([0; 4]), conn);
        };
        if self.common.closed {
            self.unreserve(&id);
            return self.common.close_later(id, conn);
        }
        if let Some(source) = source {
            if self.over_idle_quota(source) {
                // Several handshakes of a source were admitted under its quota and
                // finished together: the ones past it are closed.
                self.unreserve(&id);
                self.common.counters.refused_quota += 1;
                return self.common.close_later(id, conn);
            }
        }
        if self.kept() >= self.cfg.max_capacity {
            // More handshakes finished than the capacity has room for.
            self.unreserve(&id);
            self.common.counters.refused_full += 1;
            return self.common.close_later(id, conn);
        }
        if let Some(source) = source {
            self.own(id, source);
        }
        if self.cfg.settle().is_zero() {
            self.unreserve(&id);
            return self.land(id, conn, now);
        }
        // The id stays reserved while the connection settles.
        let due = deadline_after(now, self.cfg.settle());
        self.settling.push_back((due, id, conn));
    }

    /// Authenticated connections the pool keeps: idle, out for a probe, or settling.
    /// Handshakes under way are not among them.
    fn kept(&self) -> usize {
        self.common.held() - self.common.in_flight + self.settling.len()
    }

    /// The OS reported the held connection `id` ready (idle, or still settling): it
    /// leaves for one peek by the driver, with no lock held, and comes
    /// back with [`handle_peeked`](Self::handle_peeked).
    pub fn take_held(&mut self, id: ConnId, now: Instant) -> Option<Reported<C>> {
        if self.common.note_again(id) || self.common.closed {
            return None;
        }
        if let Some(i) = self.settling.iter().position(|(_, sid, _)| *sid == id) {
            let (due, id, conn) = self.settling.remove(i)?;
            return Some(self.common.peek_out(id, conn, due, now));
        }
        self.common.take_held(id)
    }

    /// The verdict on a connection of [`take_held`](Self::take_held): a dead one leaves
    /// (counted in `evicted_dead`), any other comes back, a settling one to its place
    /// in the settle queue. Answers what became of it, and whether to peek again.
    pub fn handle_peeked(
        &mut self,
        held: Reported<C>,
        peek: Liveness,
        _now: Instant,
    ) -> (Readied, bool) {
        let Some(due) = held.settling else {
            let r = self.common.handle_peeked(held, peek, false);
            self.sync_departures();
            return r;
        };
        let id = held.id();
        let again = self.common.end_peek(id);
        let conn = held.into_conn();
        if self.common.closed || !peek.is_alive() {
            self.unreserve(&id);
            if let Some(source) = self.owner.remove(&id) {
                self.release(source);
            }
            let closed = !self.common.closed;
            if closed {
                self.common.counters.evicted_dead += 1;
            }
            self.common.close_later(id, conn);
            return (
                if closed {
                    Readied::Closed
                } else {
                    Readied::NotHeld
                },
                false,
            );
        }
        let at = self.settling.partition_point(|(d, _, _)| *d <= due);
        self.settling.insert(at, (due, id, conn));
        let readied = if peek == Liveness::Pending {
            Readied::Pending
        } else {
            Readied::Quiet
        };
        (readied, again)
    }

    /// The peer of a held connection hung up (the driver saw it in readiness): an
    /// idle one leaves as in [`PoolCommon::handle_idle_closed`], and so does one still
    /// settling. Answers whether it was held.
    pub fn handle_idle_closed(&mut self, id: ConnId, now: Instant) -> bool {
        if let Some(i) = self.settling.iter().position(|(_, sid, _)| *sid == id) {
            if let Some((_, id, conn)) = self.settling.remove(i) {
                shrink_when_sparse(&mut self.settling);
                self.unreserve(&id);
                self.common.counters.evicted_dead += 1;
                if let Some(source) = self.owner.remove(&id) {
                    self.release(source);
                }
                self.common.close_later(id, conn);
                return true;
            }
        }
        let gone = self.common.handle_idle_closed(id, now);
        self.sync_departures();
        gone
    }

    /// Connections whose settle time ended become idle or go to waiting gets.
    fn settle(&mut self, now: Instant) {
        while self.settling.front().is_some_and(|(due, _, _)| *due <= now) {
            let Some((_, id, conn)) = self.settling.pop_front() else {
                break;
            };
            self.unreserve(&id);
            self.land(id, conn, now);
        }
        shrink_when_sparse(&mut self.settling);
    }

    /// The id of a handshake or settling connection is no longer reserved.
    fn unreserve(&mut self, id: &ConnId) {
        self.pending_ids.remove(id);
        let room = self.pending_ids.capacity();
        if room > SPARSE_ABOVE && self.pending_ids.len() <= room / 4 {
            self.pending_ids
                .shrink_to((self.pending_ids.len() * 2).max(SPARSE_ABOVE));
        }
    }

    /// The room the settling queue and the reserved ids keep (for tests of their
    /// shrinking).
    #[cfg(test)]
    pub(crate) fn room(&self) -> (usize, usize) {
        (self.settling.capacity(), self.pending_ids.capacity())
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
        self.sync_departures();
    }

    /// The handshake failed or passed its deadline at `stage`. The failure of an
    /// evicted handshake (aborted on [`Output::Abort`]'s word) is not
    /// counted again.
    ///
    /// Answers whether it failed in a way worth telling the user about: a handshake
    /// still live (not evicted) while the pool is open.
    pub fn handle_failure(&mut self, ticket: HandshakeTicket, stage: Stage, _now: Instant) -> bool {
        if let Some(id) = ticket.id {
            self.unreserve(&id);
        }
        let live = self.end(ticket.serial);
        if live {
            self.common.counters.count_failure(stage);
        }
        live && !self.common.closed
    }

    /// The next instant at which [`handle_timeout`](Self::handle_timeout) has work: the
    /// next sweep, the first waiter's deadline, or the end of a settle time.
    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        let settled = self.settling.front().map(|(due, _, _)| *due);
        match (settled, self.common.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time passed: settled connections land, waiting gets expire, and a sweep starts
    /// when one is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.sync_departures();
        self.settle(now);
        self.common.expire(now);
    }

    /// A get for the oldest live idle connection (Go: `ServerGet`). A candidate comes
    /// as [`Got::Check`], to probe and report with
    /// [`handle_check`](PoolCommon::handle_check).
    pub fn get(&mut self, now: Instant, deadline: Instant) -> Got<C> {
        self.common.get(Want::Any, now, deadline)
    }

    /// A get by id: a server hands out connections oldest first and never by id, so
    /// this always fails with [`NotFound`](crate::GetFailure::NotFound) (counted).
    /// It exists so that a driver generic over both roles can ask either.
    pub(crate) fn get_by_id(&mut self) -> Got<C> {
        self.common.counters.not_found += 1;
        Got::Failed(crate::GetFailure::NotFound)
    }

    /// Gives back a connection whose answer could not be delivered. It is closed
    /// instead when its id is idle again or was drawn meanwhile for a handshake under
    /// way: landing it would make that handshake collide, since its ticket keeps the
    /// id it already wrote on the wire.
    pub fn put_back(&mut self, id: ConnId, conn: C, now: Instant) {
        self.sync_departures();
        if self.pending_ids.contains(&id) {
            return self.common.close_later(id, conn);
        }
        let capacity = self.cfg.max_capacity.saturating_sub(self.settling.len());
        self.common.put_back(id, conn, now, capacity);
    }

    /// Queues every idle and settling connection for closing ([`Output::Close`]),
    /// and returns how many (Go: `Flush`).
    pub fn flush(&mut self) -> usize {
        self.common.flush() + self.drop_settling()
    }

    /// Connections whose id was written but whose settle time has not ended.
    pub fn settling(&self) -> usize {
        self.settling.len()
    }

    /// Closes: waiting gets are answered `Closed`, idle and settling connections are
    /// queued for closing, new connections are refused.
    pub fn close(&mut self) {
        self.common.close();
        self.drop_settling();
    }

    /// The status snapshot.
    pub fn status(&self) -> Status {
        Status {
            // Settling connections count, as in Go's `Active()`: the Go server puts a
            // connection in its map as soon as the id is written.
            idle: self.common.idle.len() + self.settling.len(),
            capacity: self.cfg.max_capacity,
            // A server pool does not refill; what paces it is the sweep.
            interval: self.cfg.sweep_interval(),
            in_flight: self.common.in_flight,
            waiting: self.common.waiters.len(),
        }
    }
}
