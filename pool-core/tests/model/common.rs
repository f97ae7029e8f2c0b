//! The reference model of what both machines share: the idle set (FIFO, with each
//! connection's idle age), the waiting gets and the answers they are owed, the sweep,
//! the connections owed to `poll_close`, and every counter.
//!
//! Next to the model, a [`Ledger`] follows every connection in and out of the machine
//! from the machine's outputs alone, so "nothing leaves twice, nothing is lost" holds
//! even where the model and the machine would agree on a mistake.

#[allow(unused_imports)]
use pool_core::testing::{Returned as _, SplitDials as _, SplitOutputs as _};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_core::{
    deadline_after, Answer, ConnId, Counters, GetFailure, Random, Stage, WaiterKey, Want,
    PROBE_BATCH,
};

pub(crate) const MS: fn(u64) -> Duration = Duration::from_millis;

/// Whether idle plus in flight plus a sweep batch out stays within the maximum capacity
/// after every step (the machines count all three, and `put_back` closes what would
/// overflow).
pub(crate) const STRICT_BOUND: bool = true;

/// Whether the ids of connections out in a sweep batch stay reserved: no draw may pick
/// one while the batch is out.
pub(crate) const BATCH_IDS_RESERVED: bool = true;

/// Answers owed, by key.
pub(crate) type Expected = Vec<(WaiterKey, Result<(ConnId, u64), GetFailure>)>;

pub(crate) fn stage_of(n: u8) -> Stage {
    match n % 4 {
        0 => Stage::Connect,
        1 => Stage::Tls,
        2 => Stage::Id,
        _ => Stage::Auth,
    }
}

/// The id a machine makes of a drawn number.
pub(crate) fn drawn_id(v: u32) -> ConnId {
    ConnId::from_random(v.to_le_bytes())
}

/// An id from the same tiny space the tape draws from, so that picked and drawn ids
/// meet often.
pub(crate) fn small_id(b: u8) -> ConnId {
    drawn_id(u32::from(b % 24))
}

// ------------------------------------------------------------------------------------
// The machine's generator, scripted.

/// A [`Random`] that plays a script drawn from the proptest input (mostly numbers
/// below 16, so ids collide), then distinct large numbers, and records every draw so
/// the harness can check what the machine drew and why.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tape(Arc<Mutex<TapeState>>);

#[derive(Debug, Default)]
struct TapeState {
    script: VecDeque<u32>,
    fallback: u32,
    drawn: Vec<u32>,
}

impl Tape {
    pub(crate) fn new(script: Vec<u32>) -> Self {
        Self(Arc::new(Mutex::new(TapeState {
            script: script.into(),
            fallback: 1 << 24,
            drawn: Vec::new(),
        })))
    }

    /// The numbers drawn since the last call.
    pub(crate) fn take(&self) -> Vec<u32> {
        std::mem::take(&mut self.0.lock().expect("tape").drawn)
    }
}

impl Random for Tape {
    fn next_u32(&mut self) -> u32 {
        let mut s = self.0.lock().expect("tape");
        let v = match s.script.pop_front() {
            Some(v) => v,
            None => {
                s.fallback += 1;
                s.fallback
            }
        };
        s.drawn.push(v);
        v
    }
}

/// Checks a run of draws that must end on the first free id: every earlier draw is
/// taken and counted as a collision. Returns the id.
pub(crate) fn check_fresh_draws(
    drawn: &[u32],
    taken: impl Fn(&ConnId) -> bool,
    k: &mut Counters,
) -> ConnId {
    let (last, before) = drawn.split_last().expect("an id is drawn");
    for v in before {
        assert!(taken(&drawn_id(*v)), "drew again after a free id {v}");
        k.id_collisions += 1;
    }
    let id = drawn_id(*last);
    assert!(!taken(&id), "kept a taken id {id}");
    id
}

// ------------------------------------------------------------------------------------
// The ledger.

/// Where a connection is, as seen from the machine's inputs and outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// Inside the machine (idle, or queued for an answer or for closing).
    In,
    /// Held by a get's liveness check.
    Check,
    /// Out in a sweep batch.
    Probe,
    /// Handed to the application.
    App,
    /// Closed by the driver (from `poll_close`, `flush` or `close`).
    Closed,
}

/// Every connection that ever entered a machine, and where it is now.
#[derive(Debug, Default)]
pub(crate) struct Ledger(HashMap<u64, Loc>);

impl Ledger {
    /// The machine takes a connection (landing, put back, check or batch reported).
    pub(crate) fn enter(&mut self, v: u64, from: Option<Loc>) {
        let before = self.0.insert(v, Loc::In);
        assert_eq!(before, from, "connection {v} entered from the wrong place");
    }

    /// A connection leaves the machine to `to`.
    pub(crate) fn leave(&mut self, v: u64, to: Loc) {
        let at = self
            .0
            .get_mut(&v)
            .expect("a connection the machine never had");
        assert_eq!(
            *at,
            Loc::In,
            "connection {v} left twice (now going to {to:?})"
        );
        *at = to;
    }

    /// After the end of a run: nothing is left inside, out for a check or in a batch.
    pub(crate) fn all_out(&self) {
        for (v, at) in &self.0 {
            assert!(
                matches!(at, Loc::App | Loc::Closed),
                "connection {v} still {at:?} at the end"
            );
        }
    }
}

// ------------------------------------------------------------------------------------
// The model.

/// An idle connection of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Idle {
    pub(crate) id: ConnId,
    pub(crate) val: u64,
    /// Milliseconds since the machine's epoch when it became idle.
    pub(crate) since_ms: u64,
}

/// What the model says a get (or a reported check) gives.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pred {
    Check(ConnId, u64),
    Ready(ConnId, u64),
    Wait,
    Failed(GetFailure),
}

/// The shared part of both models.
pub(crate) struct Common {
    epoch: Instant,
    sweep_interval: Duration,
    max_idle_age: Option<Duration>,
    /// Idle connections, oldest first.
    pub(crate) idle: VecDeque<Idle>,
    /// Live waiters by key (keys grow, so the map is in arrival order).
    pub(crate) waiters: BTreeMap<WaiterKey, (Want, Instant)>,
    /// Every key ever answered or cancelled.
    pub(crate) done: HashSet<WaiterKey>,
    /// Every key ever handed out.
    pub(crate) issued: HashSet<WaiterKey>,
    /// Values the liveness probe reports dead.
    pub(crate) dead: HashSet<u64>,
    /// Answers the machine owes after the current step.
    pub(crate) expected: Expected,
    /// Connections the machine owes to `poll_close` after the current step.
    pub(crate) to_close: Vec<(ConnId, u64)>,
    pub(crate) closed: bool,
    /// Whether gets fail at once: the client never connected and backs off.
    pub(crate) unreachable: bool,
    /// Whether the client's first round is still to run (gets by id wait for it).
    pub(crate) starting: bool,
    /// Dials or handshakes under way (kept by the harness).
    pub(crate) in_flight: usize,
    pub(crate) sweep_due: Option<Instant>,
    sweep_left: usize,
    /// The batch out for probing, if any.
    pub(crate) batch: Option<Vec<Idle>>,
    flushed: bool,
    pub(crate) k: Counters,
    pub(crate) ledger: Ledger,
}

impl Common {
    pub(crate) fn new(
        now: Instant,
        sweep_interval: Duration,
        max_idle_age: Option<Duration>,
    ) -> Self {
        Self {
            epoch: now,
            sweep_interval,
            max_idle_age,
            idle: VecDeque::new(),
            waiters: BTreeMap::new(),
            unreachable: false,
            starting: false,
            done: HashSet::new(),
            issued: HashSet::new(),
            dead: HashSet::new(),
            expected: Vec::new(),
            to_close: Vec::new(),
            closed: false,
            in_flight: 0,
            sweep_due: Some(deadline_after(now, sweep_interval)),
            sweep_left: 0,
            batch: None,
            flushed: false,
            k: Counters::default(),
            ledger: Ledger::default(),
        }
    }

    pub(crate) fn is_idle(&self, id: &ConnId) -> bool {
        self.idle.iter().any(|i| i.id == *id)
    }

    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn too_old(&self, since_ms: u64, now: Instant) -> bool {
        self.max_idle_age
            .is_some_and(|max| u128::from(self.ms(now).saturating_sub(since_ms)) > max.as_millis())
    }

    /// A client's common part: its first round is still to run.
    pub(crate) fn starting(mut self) -> Self {
        self.starting = true;
        self
    }

    fn can_arrive(&self) -> bool {
        self.in_flight > 0 || self.batch.is_some() || self.starting
    }

    /// A new connection lands now; `false` is a collision (nothing counted).
    pub(crate) fn land(&mut self, id: ConnId, val: u64, now: Instant) -> bool {
        let since_ms = self.ms(now);
        self.land_kept(Idle { id, val, since_ms })
    }

    fn land_kept(&mut self, item: Idle) -> bool {
        // An id out in a sweep batch is taken too: that connection comes back.
        let probing = self.batch.iter().flatten().any(|i| i.id == item.id);
        if self.is_idle(&item.id) || probing {
            return false;
        }
        let by_id = self
            .waiters
            .iter()
            .find(|(_, (w, _))| *w == Want::Id(item.id))
            .map(|(k, _)| *k);
        let any = || {
            self.waiters
                .iter()
                .find(|(_, (w, _))| *w == Want::Any)
                .map(|(k, _)| *k)
        };
        match by_id.or_else(any) {
            Some(key) => {
                self.waiters.remove(&key);
                self.k.served_after_wait += 1;
                self.expected.push((key, Ok((item.id, item.val))));
            }
            None => self.idle.push_back(item),
        }
        true
    }

    pub(crate) fn close_later(&mut self, id: ConnId, val: u64) {
        self.to_close.push((id, val));
    }

    /// Answers every get by id with `NotFound` when nothing under way can bring an id.
    pub(crate) fn after_finish(&mut self) {
        if self.can_arrive() {
            return;
        }
        let keys: Vec<WaiterKey> = self
            .waiters
            .iter()
            .filter(|(_, (w, _))| matches!(w, Want::Id(_)))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.waiters.remove(&k);
            self.k.not_found += 1;
            self.expected.push((k, Err(GetFailure::NotFound)));
        }
    }

    /// Time passed: expired waiters, and a sweep when one is due.
    pub(crate) fn expire(&mut self, now: Instant) {
        let keys: Vec<WaiterKey> = self
            .waiters
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.waiters.remove(&k);
            self.k.get_timeouts += 1;
            self.expected.push((k, Err(GetFailure::Timeout)));
        }
        if self.sweep_due.is_some_and(|t| t <= now) && !self.closed {
            self.sweep_due = Some(deadline_after(now, self.sweep_interval));
            if self.sweep_left == 0 {
                self.sweep_left = self.idle.len();
            }
        }
    }

    /// A get for `want`.
    pub(crate) fn get(&mut self, want: Want, now: Instant, deadline: Instant) -> Pred {
        if self.closed {
            return Pred::Failed(GetFailure::Closed);
        }
        if self.unreachable {
            self.k.unreachable += 1;
            return Pred::Failed(GetFailure::Unreachable);
        }
        loop {
            let taken = match want {
                Want::Any => self.idle.pop_front(),
                Want::Id(id) => {
                    let pos = self.idle.iter().position(|i| i.id == id);
                    pos.and_then(|p| self.idle.remove(p))
                }
                Want::Started => None, // the model makes no in-band gets
            };
            let Some(item) = taken else { break };
            if self.too_old(item.since_ms, now) {
                self.k.evicted_aged += 1;
                self.close_later(item.id, item.val);
                continue;
            }
            return Pred::Check(item.id, item.val);
        }
        if matches!(want, Want::Id(_)) && !self.can_arrive() {
            self.k.not_found += 1;
            return Pred::Failed(GetFailure::NotFound);
        }
        if deadline <= now {
            self.k.get_timeouts += 1;
            return Pred::Failed(GetFailure::Timeout);
        }
        Pred::Wait
    }

    /// The verdict on a candidate.
    pub(crate) fn check(
        &mut self,
        (id, val): (ConnId, u64),
        want: Want,
        deadline: Instant,
        now: Instant,
    ) -> Pred {
        let alive = !self.dead.contains(&val);
        if self.closed {
            self.close_later(id, val);
            return Pred::Failed(GetFailure::Closed);
        }
        if alive {
            self.k.served_at_once += 1;
            return Pred::Ready(id, val);
        }
        self.k.evicted_dead += 1;
        self.close_later(id, val);
        self.get(want, now, deadline)
    }

    /// The next sweep batch, if the machine owes one.
    pub(crate) fn poll_probe(&mut self, now: Instant) -> Option<Vec<Idle>> {
        if self.batch.is_some() || self.closed {
            return None;
        }
        let mut items = Vec::new();
        while self.sweep_left > 0 && items.len() < PROBE_BATCH {
            self.sweep_left -= 1;
            let Some(item) = self.idle.pop_front() else {
                self.sweep_left = 0;
                break;
            };
            if self.too_old(item.since_ms, now) {
                self.k.evicted_aged += 1;
                self.close_later(item.id, item.val);
            } else {
                items.push(item);
            }
        }
        if items.is_empty() {
            return None;
        }
        self.flushed = false;
        self.batch = Some(items.clone());
        Some(items)
    }

    /// The batch comes back; `checked` says whether the driver probed it.
    pub(crate) fn handle_probe(&mut self, checked: bool) {
        let items = self.batch.take().expect("a batch is out");
        let drop_all = self.closed || self.flushed;
        for item in items {
            let alive = !checked || !self.dead.contains(&item.val);
            if drop_all {
                self.close_later(item.id, item.val);
            } else if !alive {
                self.k.evicted_dead += 1;
                self.close_later(item.id, item.val);
            } else if !self.land_kept(item) {
                self.k.id_collisions += 1;
                self.close_later(item.id, item.val);
            }
        }
        self.after_finish();
    }

    /// A connection whose get went away comes back.
    /// Idle, in flight, or out in a sweep batch: what the capacity bounds.
    pub(crate) fn held(&self) -> usize {
        self.idle.len() + self.in_flight + self.batch.as_ref().map_or(0, Vec::len)
    }

    /// Ids a fresh draw must avoid: idle, or out in a sweep batch.
    pub(crate) fn taken_ids(&self) -> std::collections::HashSet<ConnId> {
        let mut ids: std::collections::HashSet<ConnId> = self.idle.iter().map(|i| i.id).collect();
        ids.extend(self.batch.iter().flatten().map(|i| i.id));
        ids
    }

    pub(crate) fn put_back(&mut self, id: ConnId, val: u64, now: Instant, capacity: usize) {
        if self.closed || self.held() >= capacity {
            return self.close_later(id, val);
        }
        self.k.served_after_wait = self.k.served_after_wait.saturating_sub(1);
        if !self.land(id, val, now) {
            self.close_later(id, val);
        }
    }

    pub(crate) fn cancel(&mut self, i: usize) -> (Option<WaiterKey>, bool) {
        // Mostly a live waiter, sometimes one already answered.
        if i.is_multiple_of(5) || self.waiters.is_empty() {
            return (self.done.iter().min().copied(), false);
        }
        let key = *self
            .waiters
            .keys()
            .nth(i % self.waiters.len())
            .expect("non-empty");
        self.waiters.remove(&key);
        assert!(self.done.insert(key));
        (Some(key), true)
    }

    /// Marks an idle connection or one of the batch out as dead.
    pub(crate) fn kill(&mut self, i: usize) {
        let mut all: Vec<u64> = self.idle.iter().map(|i| i.val).collect();
        all.extend(self.batch.iter().flatten().map(|i| i.val));
        if !all.is_empty() {
            self.dead.insert(all[i % all.len()]);
        }
    }

    /// A flush: `out` is what the machine returned.
    pub(crate) fn flush(&mut self, out: &[(ConnId, u64)]) {
        self.sweep_left = 0;
        self.flushed = self.batch.is_some();
        let want: Vec<(ConnId, u64)> = self.idle.drain(..).map(|i| (i.id, i.val)).collect();
        assert_eq!(out, want, "flush returned another idle set");
        for (_, v) in out {
            self.ledger.leave(*v, Loc::Closed);
        }
    }

    /// Nothing can succeed: every waiter is answered `Unreachable`.
    pub(crate) fn fail_unreachable(&mut self) {
        self.unreachable = true;
        let keys: Vec<WaiterKey> = self.waiters.keys().copied().collect();
        for k in keys {
            self.waiters.remove(&k);
            self.k.unreachable += 1;
            self.expected.push((k, Err(GetFailure::Unreachable)));
        }
    }

    pub(crate) fn close(&mut self, out: &[(ConnId, u64)]) {
        self.closed = true;
        self.sweep_due = None;
        let keys: Vec<WaiterKey> = self.waiters.keys().copied().collect();
        for k in keys {
            self.waiters.remove(&k);
            self.expected.push((k, Err(GetFailure::Closed)));
        }
        // The queue of connections to close is drained after every step, so a close
        // returns exactly the idle set.
        self.flush(out);
    }

    /// Compares the drained answers and closed connections with the model's, and moves
    /// them in the ledger.
    pub(crate) fn check_outputs(&mut self, mut got: Vec<Answer<u64>>, closes: Vec<(ConnId, u64)>) {
        let mut want = std::mem::take(&mut self.expected);
        want.sort_by_key(|(k, _)| *k);
        got.sort_by_key(|a| a.key);
        let got: Expected = got.into_iter().map(|a| (a.key, a.result)).collect();
        assert_eq!(got, want, "answers differ from the model");
        for (key, result) in got {
            assert!(self.issued.contains(&key), "answer to unknown key {key:?}");
            assert!(self.done.insert(key), "waiter {key:?} answered twice");
            if let Ok((_, v)) = result {
                self.ledger.leave(v, Loc::App);
            }
        }
        let mut want = std::mem::take(&mut self.to_close);
        let mut closes = closes;
        want.sort();
        closes.sort();
        assert_eq!(closes, want, "poll_close differs from the model");
        for (_, v) in closes {
            self.ledger.leave(v, Loc::Closed);
        }
        if self.closed {
            assert!(self.waiters.is_empty());
            assert_eq!(
                self.done.len(),
                self.issued.len(),
                "after close every waiter is answered"
            );
        }
        let ids: HashSet<ConnId> = self.idle.iter().map(|i| i.id).collect();
        assert_eq!(ids.len(), self.idle.len(), "duplicate ids in the idle map");
    }

    /// The next wake-up is no later than the first waiter's deadline and the sweep.
    pub(crate) fn check_poll_timeout(&self, t: Option<Instant>, sweep_at: Option<Instant>) {
        assert_eq!(sweep_at, self.sweep_due, "sweep timer");
        let first = self.waiters.values().map(|(_, d)| *d).min();
        for due in [first, self.sweep_due].into_iter().flatten() {
            let t = t.expect("work ahead needs a wake-up");
            assert!(t <= due, "wake-up {t:?} after work due at {due:?}");
        }
    }

    /// The earliest instant of shared work, for a machine with no timer of its own.
    pub(crate) fn next_timeout(&self) -> Option<Instant> {
        let first = self.waiters.values().map(|(_, d)| *d).min();
        match (first, self.sweep_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The counter a failure at `stage` moves.
pub(crate) fn count_failure(k: &mut Counters, stage: Stage) {
    match stage {
        Stage::Connect => k.dial_failures += 1,
        Stage::Tls => k.handshake_failures += 1,
        Stage::Id => k.id_errors += 1,
        Stage::Protocol => k.protocol_mismatches += 1,
        _ => k.auth_failures += 1,
    }
}
