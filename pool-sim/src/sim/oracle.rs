//! The round oracle: a prediction of the client's refill timer, failure count and
//! dial tickets, made from outside the machine, checked after every input.
//!
//! The oracle sees what a driver sees (tickets, landings, failures, the status at each
//! round start) and applies the client module's rules to it. What it does not restate
//! it takes from the core: the failure count that means "unreachable"
//! ([`ClientMachine::backoff_threshold`]), the dials the policy allows at once
//! ([`ClientMachine::dial_limit`]), whether the machine is backing off
//! ([`ClientMachine::backing_off`]), and the backoff formula ([`pool_core::backoff`]),
//! fed with the very jitter the machine drew from its own generator ([`JitterTap`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pool_core::{backoff, ClientMachine, Random, Refill, SeededRandom, Status};

use super::net::Net;

/// One refill round of the client, as observed from outside the machine.
///
/// Rounds only adjust and pace: between them the client tops the pool up continuously
/// (unless it is backing off). A round starts when the refill timer fires: the capacity
/// moves first (by what the non-urgent dials created since the previous round
/// started), then the interval (by the idle count, against the new capacity); the next
/// round is then due one interval later, or the interval or the backoff, whichever is
/// longer, when backing off (and this round may then hand out a single probe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoundRecord {
    /// Simulated time of the round's start.
    pub at: Duration,
    /// Idle connections when it started.
    pub idle: usize,
    /// Capacity before the round's adjustment.
    pub capacity_before: usize,
    /// Capacity after it.
    pub capacity_after: usize,
    /// Interval before the round's adjustment.
    pub interval_before: Duration,
    /// Interval after it (made with the new capacity).
    pub interval_after: Duration,
    /// Connections created by non-urgent dials since the previous round started: what
    /// the capacity decision used. `None` at the very first round, which leaves the
    /// capacity alone.
    pub created_prev: Option<usize>,
    /// Consecutive dial failures when the round started.
    pub failures: u32,
    /// Whether the client was backing off when the round started
    /// ([`ClientMachine::backing_off`]).
    pub backing_off: bool,
}

/// The client's generator, seeded from the simulation's seed, with every number the
/// machine draws copied out for the oracle. In the simulation the client draws only
/// backoff jitter (its ids come from the server), so each draw belongs to the failure
/// that caused it.
#[derive(Debug)]
pub(super) struct JitterTap {
    inner: SeededRandom,
    drawn: Arc<Mutex<Vec<u32>>>,
}

impl JitterTap {
    /// The generator for the machine, and the handle the oracle reads the draws from.
    pub(super) fn new(seed: [u8; 32]) -> (Self, Arc<Mutex<Vec<u32>>>) {
        let drawn = Arc::new(Mutex::new(Vec::new()));
        let tap = Self {
            inner: SeededRandom::from_seed(seed),
            drawn: Arc::clone(&drawn),
        };
        (tap, drawn)
    }
}

impl Random for JitterTap {
    fn next_u32(&mut self) -> u32 {
        let n = self.inner.next_u32();
        self.drawn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(n);
        n
    }
}

/// The prediction.
#[derive(Debug)]
pub(super) struct RoundOracle {
    /// When the next round is due (the refill timer).
    refill: Option<Duration>,
    /// Non-urgent dials landed since the last round started; `None` before the first
    /// round.
    created: Option<usize>,
    /// Consecutive dial failures.
    failures: u32,
    /// The backoff of the last failure while backing off (zero after a success).
    backoff: Duration,
    /// Whether this round's probe may still be handed out (while backing off).
    probe: bool,
    /// The capacity decided at the last round start.
    capacity: usize,
    /// The interval decided at the last round start.
    interval: Duration,
    /// The machine's draws, through its [`JitterTap`].
    drawn: Arc<Mutex<Vec<u32>>>,
    /// The prediction disagrees with the machine (counted once per disagreement).
    desynced: bool,
    /// Disagreements so far.
    desyncs: u64,
    rounds: Vec<RoundRecord>,
}

impl RoundOracle {
    /// The prediction for a machine whose first round is due at once.
    pub(super) fn new(start: Status, drawn: Arc<Mutex<Vec<u32>>>) -> Self {
        Self {
            refill: Some(Duration::ZERO),
            created: None,
            failures: 0,
            backoff: Duration::ZERO,
            probe: false,
            capacity: start.capacity,
            interval: start.interval,
            drawn,
            desynced: false,
            desyncs: 0,
            rounds: Vec::new(),
        }
    }

    /// Every round that has started so far.
    pub(super) fn rounds(&self) -> &[RoundRecord] {
        &self.rounds
    }

    /// Disagreements with the machine so far.
    pub(super) fn desyncs(&self) -> u64 {
        self.desyncs
    }

    /// Whether a round is due at `now`, by the prediction. A machine that refills as
    /// Go does ([`Refill::GoFill`]) is not predicted, only recorded: its own refill
    /// timer says.
    pub(super) fn round_due(&self, net: &Net, m: &ClientMachine<u64>) -> bool {
        if m.refill_mode() == Refill::GoFill {
            return net
                .offset(m.refill_at())
                .is_some_and(|r| r <= net.elapsed());
        }
        self.refill.is_some_and(|r| r <= net.elapsed())
    }

    /// The draws the machine made since the last call.
    fn take_draws(&self) -> Vec<u32> {
        std::mem::take(&mut *self.drawn.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// A round started (`handle_timeout` ran; `before` is the status before it): the
    /// capacity and interval moved (read back from the machine, checked by the tests
    /// against the policies), the count of created connections restarts, and the
    /// refill timer is set: an interval from now, or the interval or the backoff,
    /// whichever is longer, when backing off (which also allows one probe).
    pub(super) fn start_round(&mut self, net: &mut Net, m: &ClientMachine<u64>, before: Status) {
        let now = net.elapsed();
        let after = m.status();
        self.capacity = after.capacity;
        self.interval = after.interval;
        let created_prev = self.created.replace(0);
        let backing_off = m.backing_off();
        let wait = if backing_off {
            self.probe = true;
            after.interval.max(self.backoff)
        } else {
            after.interval
        };
        self.refill = Some(now + wait);
        let r = RoundRecord {
            at: now,
            idle: after.idle,
            capacity_before: before.capacity,
            capacity_after: after.capacity,
            interval_before: before.interval,
            interval_after: after.interval,
            created_prev,
            failures: self.failures,
            backing_off,
        };
        self.rounds.push(r);
        net.log(format_args!(
            "round idle={} cap={}->{} ivl={:?} created={created_prev:?} failures={} \
             backing_off={backing_off} next in {wait:?}",
            after.idle, before.capacity, after.capacity, after.interval, r.failures
        ));
    }

    /// Whether the rules allow one more non-urgent ticket, given the client's counts
    /// (before the ticket): none before the first round; while backing off only the
    /// round's probe with nothing in flight; otherwise top-up below the capacity and the
    /// parallelism.
    fn may_dial(&self, m: &ClientMachine<u64>, st: &Status) -> bool {
        if self.created.is_none() {
            return false;
        }
        if m.backing_off() {
            return self.probe && st.in_flight == 0;
        }
        st.idle + st.in_flight < self.capacity && st.in_flight < m.dial_limit()
    }

    /// A ticket was handed out; the machine's status is taken after it.
    pub(super) fn ticket(&mut self, net: &mut Net, m: &ClientMachine<u64>, urgent: bool) {
        if urgent || m.refill_mode() == Refill::GoFill {
            return;
        }
        let st = m.status();
        let before = Status {
            in_flight: st.in_flight.saturating_sub(1),
            ..st
        };
        if !self.may_dial(m, &before) {
            self.desync(net, &format!("ticket against the rules at {before:?}"));
        }
        if m.backing_off() {
            self.probe = false;
        }
    }

    /// A dial landed at the client; `was_backing_off` is the machine's state before it.
    pub(super) fn success(&mut self, net: &Net, urgent: bool, was_backing_off: bool) {
        if !urgent {
            if let Some(c) = self.created.as_mut() {
                *c += 1;
            }
        }
        if was_backing_off {
            // The server is back: the refill timer comes in to an interval from now.
            let soon = net.elapsed() + self.interval;
            if let Some(t) = self.refill.as_mut() {
                *t = (*t).min(soon);
            }
        }
        self.failures = 0;
        self.backoff = Duration::ZERO;
        self.probe = false;
    }

    /// A dial failed (the machine has taken the failure in).
    pub(super) fn failure(&mut self, net: &mut Net, m: &ClientMachine<u64>) {
        self.failures = self.failures.saturating_add(1);
        if m.refill_mode() == Refill::GoFill {
            return;
        }
        let draws = self.take_draws();
        if !m.backing_off() {
            // Scattered failures do not delay the next round, and draw no jitter.
            if !draws.is_empty() {
                self.desync(net, &format!("jitter drawn without a backoff: {draws:?}"));
            }
            return;
        }
        let &[jitter] = draws.as_slice() else {
            return self.desync(net, &format!("backoff with draws {draws:?}"));
        };
        let beyond = self.failures.saturating_sub(m.backoff_threshold()) + 1;
        self.backoff = backoff(m.config(), beyond, jitter);
        // The next probe waits at least the backoff from this failure.
        let later = net.elapsed() + self.backoff;
        if let Some(t) = self.refill.as_mut() {
            *t = (*t).max(later);
        }
    }

    /// The machine's refill timer and failure count must agree with the prediction,
    /// and it must have handed out every ticket the rules call for (`poll_dial` was
    /// drained). A disagreement counts once; the prediction then follows the machine.
    pub(super) fn check(&mut self, net: &mut Net, m: &ClientMachine<u64>) {
        if m.is_closed() || m.refill_mode() == Refill::GoFill {
            return;
        }
        let refill = net.offset(m.refill_at());
        let failures = m.failures();
        let st = m.status();
        let stalled = self.may_dial(m, &st);
        if refill == self.refill && failures == self.failures && !stalled {
            self.desynced = false;
            return;
        }
        let (want, want_failures) = (self.refill, self.failures);
        self.desync(
            net,
            &format!(
                "machine refill={refill:?} failures={failures} stalled={stalled} at {st:?}, \
                 predicted refill={want:?} failures={want_failures}"
            ),
        );
        self.refill = refill;
        self.failures = failures;
        if stalled {
            // Follow the machine: whatever it withholds, it withholds.
            self.probe = false;
        }
    }

    fn desync(&mut self, net: &mut Net, what: &str) {
        if !self.desynced {
            self.desyncs += 1;
            net.log(format_args!("DESYNC {what}"));
        }
        self.desynced = true;
    }
}
