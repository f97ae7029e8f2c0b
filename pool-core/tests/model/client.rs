//! The client machine against the model: rounds and dial tickets, ids read from the
//! wire in random chunks or made in single mode, backoff draws, gets by id and for any.

#[allow(unused_imports)]
use pool_core::testing::{
    NextDeadline as _, Returned as _, Shared as _, SplitDials as _, SplitOutputs as _,
};
use std::collections::HashSet;
use std::time::Instant;

use pool_core::{
    deadline_after, Adapt, Adaptation, ClientConfig, ClientMachine, ConnId, Decision, DialTicket,
    GoRules, IdForm, IdReader, Refill, RoundInput, Stage, Status, Trim, Want,
};
use proptest::collection::vec;
use proptest::prelude::*;

use crate::common::{
    check_fresh_draws, count_failure, small_id, stage_of, Common, Tape, MS, STRICT_BOUND,
};
use crate::outside::Outside;

/// Which id a landing or a get uses.
#[derive(Clone, Debug)]
pub(crate) enum IdPick {
    /// From the small space.
    Fresh(u8),
    /// The id of an idle connection (a collision when landing).
    Idle(usize),
    /// The id a get already waits for.
    Wanted(usize),
    /// The id of a connection out for a check or in a batch.
    Out(usize),
    /// Anything.
    Random([u8; 4]),
}

fn id_pick() -> impl Strategy<Value = IdPick> {
    prop_oneof![
        4 => any::<u8>().prop_map(IdPick::Fresh),
        2 => any::<usize>().prop_map(IdPick::Idle),
        2 => any::<usize>().prop_map(IdPick::Wanted),
        1 => any::<usize>().prop_map(IdPick::Out),
        1 => any::<[u8; 4]>().prop_map(IdPick::Random),
    ]
}

#[derive(Clone, Debug)]
pub(crate) enum COp {
    Advance(u16),
    ToTimeout,
    Dial(u8),
    Succeed {
        pick: usize,
        id: IdPick,
        chunks: Vec<u8>,
    },
    Fail {
        pick: usize,
        stage: u8,
    },
    GetId {
        id: IdPick,
        wait_ms: u16,
        hold: bool,
    },
    GetAny {
        wait_ms: u16,
        hold: bool,
    },
    Report(usize),
    Cancel(usize),
    Kill(usize),
    Probe,
    ProbeBack(bool),
    PutBack(usize),
    Flush,
    /// Closes only when true (most sequences stay open to the end).
    Close(bool),
}

pub(crate) fn client_op() -> impl Strategy<Value = COp> {
    let hold = proptest::bool::weighted(0.2);
    prop_oneof![
        6 => (0u16..1500).prop_map(COp::Advance),
        3 => Just(COp::ToTimeout),
        6 => (0u8..6).prop_map(COp::Dial),
        8 => (any::<usize>(), id_pick(), vec(0u8..6, 0..5))
            .prop_map(|(pick, id, chunks)| COp::Succeed { pick, id, chunks }),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(pick, stage)| COp::Fail { pick, stage }),
        4 => (id_pick(), 0u16..3000, hold)
            .prop_map(|(id, wait_ms, hold)| COp::GetId { id, wait_ms, hold }),
        3 => (0u16..3000, hold).prop_map(|(wait_ms, hold)| COp::GetAny { wait_ms, hold }),
        1 => any::<usize>().prop_map(COp::Report),
        2 => any::<usize>().prop_map(COp::Cancel),
        2 => any::<usize>().prop_map(COp::Kill),
        2 => Just(COp::Probe),
        2 => any::<bool>().prop_map(COp::ProbeBack),
        1 => any::<usize>().prop_map(COp::PutBack),
        1 => Just(COp::Flush),
        1 => proptest::bool::weighted(0.1).prop_map(COp::Close),
    ]
}

/// A policy whose capacity rises and falls over rounds, and that asks the machine to
/// close idle connections above it: the model predicts each close.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sawtooth {
    n: usize,
}

/// The trim the [`Sawtooth`] asks for.
pub(crate) const SAW_TRIM: Trim = Trim {
    slack: 1,
    per_round: 2,
};

impl Adapt for Sawtooth {
    fn name(&self) -> &str {
        "sawtooth"
    }
    fn clone_box(&self) -> Box<dyn Adapt> {
        Box::new(self.clone())
    }
    fn round(&mut self, r: &RoundInput, _now: Instant) -> Decision {
        self.n += 1;
        Decision {
            capacity: r.min_capacity + (self.n * 5) % 7,
            interval: r.min_interval,
        }
    }
    fn trim(&self) -> Option<Trim> {
        Some(SAW_TRIM)
    }
    fn parallelism(&self) -> Option<usize> {
        Some(2)
    }
}

/// The Go rules on the Go package's way of refilling ([`Refill::GoFill`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct GoFill(GoRules);

impl Adapt for GoFill {
    fn name(&self) -> &str {
        "gofill"
    }
    fn clone_box(&self) -> Box<dyn Adapt> {
        Box::new(self.clone())
    }
    fn round(&mut self, r: &RoundInput, now: Instant) -> Decision {
        self.0.round(r, now)
    }
    fn refill(&self) -> Refill {
        Refill::GoFill
    }
}

pub(crate) fn client_cfg() -> impl Strategy<Value = ClientConfig> {
    (
        (1usize..6, 0usize..10, 50u64..300, 0u64..1500, 1usize..4),
        (any::<bool>(), any::<bool>(), 100u64..3000, any::<bool>()),
        (proptest::option::weighted(0.5, 200u64..5000), 0u8..4),
    )
        .prop_map(
            |(
                (min_cap, extra, min_iv, extra_iv, par),
                (single, raw, sweep, fail_fast),
                (age, go),
            )| {
                let adapt = match go {
                    0 => Adaptation::GoRules(pool_core::GoRules::default()),
                    1 => Adaptation::custom(GoFill::default()),
                    2 => Adaptation::custom(Sawtooth::default()),
                    _ => Adaptation::default(),
                };
                ClientConfig::builder()
                    .adapt(adapt)
                    .capacity(min_cap, min_cap + extra)
                    .interval(MS(min_iv), MS(min_iv + extra_iv))
                    .parallelism(par)
                    .mode(if single {
                        pool_core::Mode::Single
                    } else {
                        pool_core::Mode::Multi
                    })
                    .id_form(if raw { IdForm::Raw4 } else { IdForm::Hex8 })
                    .sweep_interval(MS(sweep))
                    .max_idle_age(age.map(MS))
                    .fail_fast(fail_fast)
                    .build()
                    .expect("valid config")
            },
        )
}

pub(crate) struct ClientHarness {
    pub(crate) m: ClientMachine<u64>,
    cfg: ClientConfig,
    tape: Tape,
    now: Instant,
    /// Outstanding tickets.
    pub(crate) tickets: Vec<DialTicket>,
    serials: HashSet<u64>,
    next_val: u64,
    failures: u32,
    /// Whether the machine is closing idle connections above its capacity (the
    /// [`Sawtooth`]'s trim).
    trimming: bool,
    pub(crate) c: Common,
    pub(crate) out: Outside,
}

impl ClientHarness {
    pub(crate) fn new(cfg: ClientConfig, script: Vec<u32>) -> Self {
        let now = Instant::now();
        let tape = Tape::new(script);
        Self {
            m: ClientMachine::new(cfg.clone(), tape.clone(), now),
            c: Common::new(now, cfg.sweep_interval(), cfg.max_idle_age()).starting(),
            cfg,
            tape,
            now,
            tickets: Vec::new(),
            serials: HashSet::new(),
            next_val: 0,
            failures: 0,
            trimming: false,
            out: Outside::default(),
        }
    }

    fn urgent_expected(&self) -> bool {
        let any = self
            .c
            .waiters
            .values()
            .filter(|(w, _)| *w == Want::Any)
            .count();
        !self.c.closed && self.cfg.mode() == pool_core::Mode::Single && any > self.tickets.len()
    }

    /// Takes one ticket, checking it against the model.
    fn poll_dial(&mut self) -> bool {
        let urgent = self.urgent_expected();
        let t = self.m.poll_dial(self.now);
        if self.c.closed {
            assert!(t.is_none(), "a ticket after close");
        }
        if urgent {
            assert!(
                t.as_ref().is_some_and(DialTicket::is_urgent),
                "a single-mode get waits with no dial for it"
            );
        }
        let Some(t) = t else { return false };
        if !urgent {
            assert!(!t.is_urgent(), "urgent ticket with nobody waiting");
        }
        assert!(self.serials.insert(t.serial()), "ticket serial reused");
        assert_eq!(
            t.handshake_deadline(),
            deadline_after(self.now, self.cfg.handshake_timeout())
        );
        self.c.k.dialed += 1;
        if !t.is_urgent() && (STRICT_BOUND || !self.m.backing_off()) {
            assert!(
                self.c.held() < self.cfg.max_capacity(),
                "a dial beyond the maximum capacity: idle {:?} tickets {:?} backing off {}",
                self.c.idle,
                self.tickets,
                self.m.backing_off()
            );
        }
        self.tickets.push(t);
        self.c.in_flight = self.tickets.len();
        let plain = self.tickets.iter().filter(|t| !t.is_urgent()).count();
        assert!(
            plain <= self.cfg.parallelism(),
            "more dials than parallelism"
        );
        true
    }

    fn pick_id(&self, pick: &IdPick) -> ConnId {
        let c = &self.c;
        match pick {
            IdPick::Fresh(b) => small_id(*b),
            IdPick::Idle(i) if !c.idle.is_empty() => c.idle[i % c.idle.len()].id,
            IdPick::Wanted(i) => {
                let wanted: Vec<ConnId> = c
                    .waiters
                    .values()
                    .filter_map(|(w, _)| match w {
                        Want::Id(id) => Some(*id),
                        Want::Any | Want::Started => None,
                    })
                    .collect();
                if wanted.is_empty() {
                    small_id(*i as u8)
                } else {
                    wanted[i % wanted.len()]
                }
            }
            IdPick::Out(i) => self.out.out_id(c, *i).unwrap_or_else(|| small_id(*i as u8)),
            IdPick::Idle(i) => small_id(*i as u8),
            IdPick::Random(b) => ConnId::from_random(*b),
        }
    }

    /// The id as the driver gets it: read from the wire in chunks, or in single mode
    /// made by the machine (unless the pick forces a collision, as a faulty driver
    /// would).
    fn land_id(&mut self, pick: &IdPick, chunks: &[u8]) -> ConnId {
        let forced = matches!(pick, IdPick::Idle(_) | IdPick::Out(_));
        if self.cfg.mode() == pool_core::Mode::Single && !forced {
            let id = self.m.make_id();
            let drawn = self.tape.take();
            let taken = self.c.taken_ids();
            let c = &mut self.c;
            assert_eq!(
                check_fresh_draws(&drawn, |id| taken.contains(id), &mut c.k),
                id
            );
            return id;
        }
        let id = self.pick_id(pick);
        if self.cfg.mode() == pool_core::Mode::Single {
            return id;
        }
        read_id(self.cfg.id_form(), id, chunks)
    }

    /// A failure reported for a ticket already removed.
    fn model_failure(&mut self, stage: Stage) {
        count_failure(&mut self.c.k, stage);
        let drawn = self.tape.take();
        if !self.c.closed {
            self.failures = self.failures.saturating_add(1);
            assert_eq!(
                drawn.len(),
                usize::from(self.m.backing_off()),
                "one jitter draw per failure while backing off"
            );
            if self.m.backing_off() && self.cfg.fail_fast() && self.c.k.created == 0 {
                self.c.fail_unreachable();
            }
        } else {
            assert!(drawn.is_empty(), "a draw after close");
        }
    }

    pub(crate) fn apply(&mut self, op: &COp) {
        let before = self.m.status();
        match op {
            COp::Advance(ms) => {
                self.now += MS(u64::from(*ms));
                self.timeout();
            }
            COp::ToTimeout => {
                if let Some(t) = self.m.next_deadline() {
                    self.now = self.now.max(t);
                }
                self.timeout();
            }
            COp::Dial(n) => {
                let n = if *n == 0 { usize::MAX } else { usize::from(*n) };
                for _ in 0..n {
                    if !self.poll_dial() {
                        break;
                    }
                }
            }
            COp::Succeed { pick, id, chunks } if !self.tickets.is_empty() => {
                let ticket = self.tickets.swap_remove(pick % self.tickets.len());
                self.next_val += 1;
                let val = self.next_val;
                let id = self.land_id(id, chunks);
                self.c.ledger.enter(val, None);
                self.m.handle_dial_success(ticket, id, val, self.now);
                self.c.in_flight = self.tickets.len();
                if self.c.closed {
                    self.c.close_later(id, val);
                    assert!(self.tape.take().is_empty());
                } else if self.c.land(id, val, self.now) {
                    self.c.k.created += 1;
                    self.failures = 0;
                    self.c.unreachable = false;
                    assert!(self.tape.take().is_empty());
                } else {
                    self.c.k.id_collisions += 1;
                    self.c.close_later(id, val);
                    self.model_failure(Stage::Id);
                }
                self.c.after_finish();
            }
            COp::Fail { pick, stage } if !self.tickets.is_empty() => {
                let ticket = self.tickets.swap_remove(pick % self.tickets.len());
                let stage = stage_of(*stage);
                self.m.handle_dial_failure(ticket, stage, self.now);
                self.c.in_flight = self.tickets.len();
                self.model_failure(stage);
                self.c.after_finish();
            }
            COp::Succeed { .. } | COp::Fail { .. } => {}
            COp::GetId { id, wait_ms, hold } => {
                let id = self.pick_id(id);
                let deadline = self.now + MS(u64::from(*wait_ms));
                let pred = self.c.get(Want::Id(id), self.now, deadline);
                let got = self.m.get(id, self.now, deadline);
                self.out.follow(
                    self.m.shared_mut(),
                    &mut self.c,
                    (got, pred),
                    (Want::Id(id), deadline),
                    self.now,
                    *hold,
                );
            }
            COp::GetAny { wait_ms, hold } => {
                let deadline = self.now + MS(u64::from(*wait_ms));
                let pred = self.c.get(Want::Any, self.now, deadline);
                let got = self.m.get_any(self.now, deadline);
                self.out.follow(
                    self.m.shared_mut(),
                    &mut self.c,
                    (got, pred),
                    (Want::Any, deadline),
                    self.now,
                    *hold,
                );
            }
            COp::Report(i) => self
                .out
                .report(self.m.shared_mut(), &mut self.c, *i, self.now),
            COp::Cancel(i) => {
                let (key, live) = self.c.cancel(*i);
                if let Some(key) = key {
                    assert_eq!(self.m.cancel(key), live, "cancel of {key:?}");
                }
            }
            COp::Kill(i) => self.c.kill(*i),
            COp::Probe => self
                .out
                .poll_probe(self.m.shared_mut(), &mut self.c, self.now),
            COp::ProbeBack(checked) => {
                self.out
                    .probe_back(self.m.shared_mut(), &mut self.c, *checked, self.now)
            }
            COp::PutBack(i) => {
                if let Some((id, v)) = self.out.take_app(&mut self.c, *i) {
                    let capacity = self.m.status().capacity;
                    self.m.put_back(id, v, self.now);
                    self.c.put_back(id, v, self.now, capacity);
                }
            }
            COp::Flush => {
                let out = self.m.flush_out(self.now);
                self.c.flush(&out);
            }
            COp::Close(false) => {}
            COp::Close(true) => {
                let out = self.m.close_out();
                self.c.close(&out);
                assert!(self.m.is_closed());
            }
        }
        self.check(before);
    }

    fn timeout(&mut self) {
        let round = !self.c.closed && self.m.refill_at().is_some_and(|t| t <= self.now);
        self.c.expire(self.now);
        self.m.handle_timeout(self.now);
        let capacity = self.m.status().capacity;
        let trim = match self.cfg.adaptation().name() {
            "sawtooth" => Some(SAW_TRIM),
            // The default policy's trim, by its documentation: a sixteenth of the
            // capacity of slack, a quarter per round (at least two).
            "offered" => Some(Trim {
                slack: capacity / 16,
                per_round: (capacity / 4).max(2),
            }),
            _ => None,
        };
        if let (true, Some(trim)) = (round, trim) {
            // The round closes the newest idle connections above the new capacity
            // (the server hands out its oldest), with the trim's hysteresis.
            let held = self.c.held();
            if held > capacity + trim.slack {
                self.trimming = true;
            }
            if self.trimming {
                let n = (held - capacity.min(held)).min(trim.per_round);
                for _ in 0..n {
                    let Some(i) = self.c.idle.pop_back() else {
                        break;
                    };
                    self.c.k.trimmed += 1;
                    self.c.close_later(i.id, i.val);
                }
                if self.c.held() <= capacity {
                    self.trimming = false;
                }
            }
        }
        // The first round is due when the machine is made, so the first turn runs it,
        // unless a dial failed before it (a single-mode get's urgent dial) and pushed
        // it back by a backoff: gets by id wait for it until it runs.
        if round {
            self.c.starting = false;
        }
        let next = self.m.next_deadline();
        assert!(
            !matches!(next, Some(t) if t <= self.now),
            "handle_timeout left work due at {next:?} (now {:?})",
            self.now
        );
    }

    fn check(&mut self, before: Status) {
        let answers = std::iter::from_fn(|| self.m.poll_answer()).collect();
        let closes = std::iter::from_fn(|| self.m.poll_close()).collect();
        self.c.check_outputs(answers, closes);
        assert!(
            self.tape.take().is_empty(),
            "a draw the model did not expect"
        );
        let st = self.m.status();
        let cfg = &self.cfg;
        assert!(
            (cfg.min_capacity()..=cfg.max_capacity()).contains(&st.capacity),
            "capacity {} out of bounds",
            st.capacity
        );
        assert!(
            (cfg.min_interval()..=cfg.max_interval()).contains(&st.interval),
            "interval {:?} out of bounds",
            st.interval
        );
        if cfg.adaptation() == &Adaptation::GoRules(pool_core::GoRules::default()) {
            // The Go rules move one step per round; other policies may jump.
            assert!(
                st.capacity.abs_diff(before.capacity) <= 1,
                "capacity jumped"
            );
            assert!(
                st.interval.abs_diff(before.interval) <= MS(100),
                "interval jumped"
            );
        }
        assert_eq!(st.idle, self.c.idle.len(), "idle count");
        assert_eq!(st.in_flight, self.tickets.len(), "in-flight count");
        assert_eq!(st.waiting, self.c.waiters.len(), "waiting count");
        let m = &self.m;
        assert_eq!(
            (m.idle(), m.in_flight(), m.waiting()),
            (st.idle, st.in_flight, st.waiting)
        );
        if cfg.mode() != pool_core::Mode::Single && STRICT_BOUND {
            assert!(
                self.c.held() <= cfg.max_capacity(),
                "idle {} + in flight {} above the maximum capacity",
                st.idle,
                st.in_flight
            );
        }
        assert_eq!(self.m.counters(), self.c.k, "counters");
        assert_eq!(self.m.failures(), self.failures, "failure run");
        let t = self.m.next_deadline();
        self.c.check_poll_timeout(t, self.m.sweep_at());
        if self.c.closed {
            assert_eq!(t, None, "a closed pool wants no wake-up");
        } else if self.tickets.is_empty() && t.is_none() {
            // Nothing out and no timer: the machine must have dials to hand out now,
            // or it would stall for ever.
            assert!(self.poll_dial(), "client stalled: no dial, no timer");
        }
    }

    /// Closes, returns every ticket, candidate and batch, and checks that every
    /// connection left exactly once.
    pub(crate) fn finish(&mut self) {
        self.apply(&COp::Close(true));
        while !self.tickets.is_empty() {
            self.apply(&COp::Fail { pick: 0, stage: 0 });
        }
        let before = self.m.status();
        self.out
            .give_back(self.m.shared_mut(), &mut self.c, self.now);
        self.check(before);
        assert_eq!(self.m.status().in_flight, 0);
        self.c.ledger.all_out();
    }
}

/// Feeds the wire form of `id`, followed by payload, through an [`IdReader`] in
/// `chunks`, and checks that the reader stops exactly at the id's last byte.
fn read_id(form: IdForm, id: ConnId, chunks: &[u8]) -> ConnId {
    let mut wire = form.encode(&id).as_ref().to_vec();
    let len = wire.len();
    wire.extend_from_slice(b"payload!");
    let mut r = IdReader::new(form);
    let mut pos = 0;
    for size in chunks.iter().map(|c| usize::from(*c)).chain([usize::MAX]) {
        let end = pos + size.min(wire.len() - pos);
        let fed = r.feed(&wire[pos..end]).expect("valid id bytes");
        pos += fed.consumed;
        assert!(pos <= len, "the id reader took a payload byte");
        if let Some(got) = fed.id {
            assert_eq!(pos, len);
            return got;
        }
    }
    unreachable!("a whole id was fed")
}
