//! Model-based tests of the client and server machines.
//!
//! Random operation sequences are applied both to the real machine (with `u64` serial
//! numbers as connections) and to a small reference model written here. After every
//! step the two must agree on the idle set (in FIFO order), the outstanding tickets,
//! the waiting gets and every answer, and the machine must stay inside its bounds.
//! Plain unit tests of the client's backoff and of its get-by-id rules follow.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use pool_core::{
    backoff, Admission, Answer, ClientConfig, ClientMachine, ConnId, DialTicket, GetError, Got,
    HandshakeTicket, IdForm, IdReader, Landed, Refusal, ServerConfig, ServerMachine, Stage,
    WaiterKey, Want,
};
use proptest::collection::vec;
use proptest::prelude::*;

const MS: fn(u64) -> Duration = Duration::from_millis;

type Expected = Vec<(WaiterKey, Result<(ConnId, u64), GetError>)>;

fn stage_of(n: u8) -> Stage {
    match n % 4 {
        0 => Stage::Connect,
        1 => Stage::Tls,
        2 => Stage::Id,
        _ => Stage::Auth,
    }
}

/// An id from a small space, so that chosen ids meet each other often.
fn small_id(b: u8) -> ConnId {
    ConnId::from_random([0, 0, 0, b % 48])
}

/// Which id an operation uses.
#[derive(Clone, Debug)]
enum IdPick {
    /// From the small space.
    Fresh(u8),
    /// The id of an idle connection (a collision when landing).
    Idle(usize),
    /// The id a get already waits for.
    Wanted(usize),
    /// Anything.
    Random([u8; 4]),
}

fn id_pick() -> impl Strategy<Value = IdPick> {
    prop_oneof![
        4 => any::<u8>().prop_map(IdPick::Fresh),
        2 => any::<usize>().prop_map(IdPick::Idle),
        2 => any::<usize>().prop_map(IdPick::Wanted),
        1 => any::<[u8; 4]>().prop_map(IdPick::Random),
    ]
}

/// The shared part of both models: idle set, waiters, answers, handed-out values.
#[derive(Default)]
struct Common {
    /// Idle connections, oldest first.
    idle: VecDeque<(ConnId, u64)>,
    /// Live waiters by key (keys grow, so the map is in arrival order).
    waiters: BTreeMap<WaiterKey, (Want, Instant)>,
    /// Every key ever answered or cancelled.
    done: HashSet<WaiterKey>,
    /// Every key ever handed out.
    issued: HashSet<WaiterKey>,
    /// Values handed out by Ready or by an answer.
    handed: HashSet<u64>,
    /// Values the liveness probe reports dead.
    dead: HashSet<u64>,
    /// Answers the machine owes after the current step.
    expected: Expected,
    closed: bool,
    created: u64,
    evicted: u64,
    collisions: u64,
    not_found: u64,
    timeouts: u64,
}

impl Common {
    fn idle_ids(&self) -> Vec<ConnId> {
        self.idle.iter().map(|(id, _)| *id).collect()
    }

    fn pick_id(&self, pick: &IdPick) -> ConnId {
        match pick {
            IdPick::Fresh(b) => small_id(*b),
            IdPick::Idle(i) if !self.idle.is_empty() => self.idle[i % self.idle.len()].0,
            IdPick::Wanted(i) => {
                let wanted: Vec<ConnId> = self
                    .waiters
                    .values()
                    .filter_map(|(w, _)| match w {
                        Want::Id(id) => Some(*id),
                        Want::Any => None,
                    })
                    .collect();
                if wanted.is_empty() {
                    small_id(*i as u8)
                } else {
                    wanted[i % wanted.len()]
                }
            }
            IdPick::Idle(i) => small_id(*i as u8),
            IdPick::Random(b) => ConnId::from_random(*b),
        }
    }

    /// A connection lands: `false` is a collision.
    fn land(&mut self, id: ConnId, val: u64) -> bool {
        if self.idle.iter().any(|(i, _)| *i == id) {
            self.collisions += 1;
            return false;
        }
        self.created += 1;
        let by_id = self
            .waiters
            .iter()
            .find(|(_, (w, _))| *w == Want::Id(id))
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
                self.expected.push((key, Ok((id, val))));
            }
            None => self.idle.push_back((id, val)),
        }
        true
    }

    fn answer_all(&mut self, filter: impl Fn(&Want) -> bool, err: GetError) {
        let keys: Vec<WaiterKey> = self
            .waiters
            .iter()
            .filter(|(_, (w, _))| filter(w))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.waiters.remove(&k);
            self.expected.push((k, Err(err)));
        }
    }

    fn expire(&mut self, now: Instant) {
        let keys: Vec<WaiterKey> = self
            .waiters
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.waiters.remove(&k);
            self.timeouts += 1;
            self.expected.push((k, Err(GetError::Timeout)));
        }
    }

    /// Model of a get. `can_arrive` as the machine defines it.
    fn get(
        &mut self,
        want: Want,
        now: Instant,
        deadline: Instant,
        can_arrive: bool,
    ) -> Result<(ConnId, u64), Option<GetError>> {
        if self.closed {
            return Err(Some(GetError::Closed));
        }
        match want {
            Want::Any => {
                while let Some((id, v)) = self.idle.pop_front() {
                    if !self.dead.contains(&v) {
                        return Ok((id, v));
                    }
                    self.evicted += 1;
                }
            }
            Want::Id(id) => {
                if let Some(pos) = self.idle.iter().position(|(i, _)| *i == id) {
                    let (_, v) = self.idle.remove(pos).expect("present");
                    if !self.dead.contains(&v) {
                        return Ok((id, v));
                    }
                    self.evicted += 1;
                }
                if !can_arrive {
                    self.not_found += 1;
                    return Err(Some(GetError::NotFound));
                }
            }
        }
        if deadline <= now {
            self.timeouts += 1;
            return Err(Some(GetError::Timeout));
        }
        Err(None)
    }

    /// Checks a machine's get result against the model's prediction.
    fn check_got(
        &mut self,
        got: Got<u64>,
        predicted: Result<(ConnId, u64), Option<GetError>>,
        want: Want,
        deadline: Instant,
    ) {
        match (got, predicted) {
            (Got::Ready(id, v), Ok((mid, mv))) => {
                assert_eq!((id, v), (mid, mv), "ready with the wrong connection");
                if let Want::Id(w) = want {
                    assert_eq!(id, w, "ready with another id");
                }
                assert!(self.handed.insert(v), "value {v} handed out twice");
            }
            (Got::Wait(key), Err(None)) => {
                assert!(self.issued.insert(key), "waiter key {key:?} reused");
                self.waiters.insert(key, (want, deadline));
            }
            (Got::Failed(e), Err(Some(me))) => assert_eq!(e, me),
            (got, predicted) => panic!("get gave {got:?}, model says {predicted:?}"),
        }
    }

    fn cancel(&mut self, i: usize) -> (Option<WaiterKey>, bool) {
        // Mostly a live waiter, sometimes one already answered.
        let stale = i % 5;
        if stale == 0 || self.waiters.is_empty() {
            let old = self.done.iter().min().copied();
            return (old, false);
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

    fn kill(&mut self, i: usize) {
        if !self.idle.is_empty() {
            let v = self.idle[i % self.idle.len()].1;
            self.dead.insert(v);
        }
    }

    fn sweep(&mut self) -> usize {
        let before = self.idle.len();
        let dead = &self.dead;
        self.idle.retain(|(_, v)| !dead.contains(v));
        let n = before - self.idle.len();
        self.evicted += n as u64;
        n
    }

    fn flush(&mut self, out: Vec<(ConnId, u64)>) {
        let want: Vec<(ConnId, u64)> = self.idle.drain(..).collect();
        assert_eq!(out, want, "flush returned another idle set");
        let ids: HashSet<ConnId> = out.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids.len(), out.len(), "duplicate ids in the idle map");
    }

    fn close(&mut self, out: Vec<(ConnId, u64)>) {
        self.closed = true;
        self.answer_all(|_| true, GetError::Closed);
        self.flush(out);
    }

    /// Compares the drained answers with the expected ones.
    fn check_answers(&mut self, mut got: Vec<Answer<u64>>) {
        let mut want = std::mem::take(&mut self.expected);
        want.sort_by_key(|(k, _)| *k);
        got.sort_by_key(|a| a.key);
        let got: Expected = got.into_iter().map(|a| (a.key, a.result)).collect();
        assert_eq!(got, want, "answers differ from the model");
        for (key, result) in got {
            assert!(self.issued.contains(&key), "answer to unknown key {key:?}");
            assert!(self.done.insert(key), "waiter {key:?} answered twice");
            if let Ok((_, v)) = result {
                assert!(self.handed.insert(v), "value {v} handed out twice");
            }
        }
        if self.closed {
            assert!(self.waiters.is_empty());
            assert_eq!(
                self.done.len(),
                self.issued.len(),
                "after close every waiter is answered"
            );
        }
    }

    fn check_poll_timeout(&self, t: Option<Instant>, exact_when_no_timer: bool) {
        let first = self.waiters.values().map(|(_, d)| *d).min();
        if let Some(d) = first {
            let t = t.expect("a waiting get needs a wake-up");
            assert!(t <= d, "wake-up {t:?} after the first deadline {d:?}");
        } else if exact_when_no_timer {
            assert_eq!(t, None);
        }
    }
}

// ------------------------------------------------------------------------------------
// Client

#[derive(Clone, Debug)]
enum COp {
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
        jitter: u32,
    },
    GetId {
        id: IdPick,
        wait_ms: u16,
    },
    GetAny {
        wait_ms: u16,
    },
    Cancel(usize),
    Kill(usize),
    Sweep,
    Flush,
    /// Closes only when true (most sequences stay open to the end).
    Close(bool),
}

fn client_op() -> impl Strategy<Value = COp> {
    prop_oneof![
        6 => (0u16..1500).prop_map(COp::Advance),
        3 => Just(COp::ToTimeout),
        6 => (0u8..6).prop_map(COp::Dial),
        8 => (any::<usize>(), id_pick(), vec(0u8..6, 0..5))
            .prop_map(|(pick, id, chunks)| COp::Succeed { pick, id, chunks }),
        3 => (any::<usize>(), any::<u8>(), any::<u32>())
            .prop_map(|(pick, stage, jitter)| COp::Fail { pick, stage, jitter }),
        4 => (id_pick(), 0u16..3000).prop_map(|(id, wait_ms)| COp::GetId { id, wait_ms }),
        3 => (0u16..3000).prop_map(|wait_ms| COp::GetAny { wait_ms }),
        2 => any::<usize>().prop_map(COp::Cancel),
        1 => any::<usize>().prop_map(COp::Kill),
        1 => Just(COp::Sweep),
        1 => Just(COp::Flush),
        1 => proptest::bool::weighted(0.1).prop_map(COp::Close),
    ]
}

fn client_cfg() -> impl Strategy<Value = ClientConfig> {
    (
        1usize..6,
        0usize..10,
        50u64..300,
        0u64..1500,
        1usize..4,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(min_cap, extra, min_iv, extra_iv, par, single, raw)| {
            ClientConfig::builder()
                .capacity(min_cap, min_cap + extra)
                .interval(MS(min_iv), MS(min_iv + extra_iv))
                .parallelism(par)
                .single(single)
                .id_form(if raw { IdForm::Raw4 } else { IdForm::Hex8 })
                .build()
                .expect("valid config")
        })
}

struct ClientHarness {
    m: ClientMachine<u64>,
    cfg: ClientConfig,
    now: Instant,
    /// Outstanding tickets, with the connection they carry after a collision.
    tickets: Vec<(DialTicket, Option<u64>)>,
    serials: HashSet<u64>,
    next_val: u64,
    dialed: u64,
    c: Common,
}

impl ClientHarness {
    fn new(cfg: ClientConfig) -> Self {
        let now = Instant::now();
        Self {
            m: ClientMachine::new(cfg.clone(), now),
            cfg,
            now,
            tickets: Vec::new(),
            serials: HashSet::new(),
            next_val: 0,
            dialed: 0,
            c: Common::default(),
        }
    }

    fn urgent_expected(&self) -> bool {
        let any = self
            .c
            .waiters
            .values()
            .filter(|(w, _)| *w == Want::Any)
            .count();
        !self.c.closed && self.cfg.single() && any > self.tickets.len()
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
            self.now + self.cfg.handshake_timeout()
        );
        self.dialed += 1;
        self.tickets.push((t, None));
        let plain = self.tickets.iter().filter(|(t, _)| !t.is_urgent()).count();
        assert!(
            plain <= self.cfg.parallelism(),
            "more dials than parallelism"
        );
        true
    }

    fn after_finish(&mut self) {
        if self.tickets.is_empty() {
            let c = &mut self.c;
            let before = c.expected.len();
            c.answer_all(|w| matches!(w, Want::Id(_)), GetError::NotFound);
            c.not_found += (c.expected.len() - before) as u64;
        }
    }

    fn read_id(&self, id: ConnId, chunks: &[u8]) -> ConnId {
        if self.cfg.single() {
            return id;
        }
        let form = self.cfg.id_form();
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

    fn apply(&mut self, op: &COp) {
        let before = self.m.status();
        match op {
            COp::Advance(ms) => {
                self.now += MS(u64::from(*ms));
                self.timeout();
            }
            COp::ToTimeout => {
                if let Some(t) = self.m.poll_timeout() {
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
                let i = pick % self.tickets.len();
                let (ticket, val) = self.tickets.swap_remove(i);
                let val = val.unwrap_or_else(|| {
                    self.next_val += 1;
                    self.next_val
                });
                let id = self.read_id(self.c.pick_id(id), chunks);
                let landed = self.m.handle_dial_success(ticket, id, val, self.now);
                match landed {
                    Landed::Closed => {
                        assert!(self.c.closed, "Landed::Closed on an open pool");
                        self.after_finish();
                    }
                    Landed::Kept => {
                        assert!(!self.c.closed);
                        assert!(self.c.land(id, val), "kept a colliding id");
                        self.after_finish();
                    }
                    Landed::Collision(ticket, back) => {
                        assert!(!self.c.closed);
                        assert_eq!(back, val, "collision gave back another connection");
                        assert!(!self.c.land(id, val), "collision on a free id");
                        // Still outstanding until returned again.
                        self.tickets.push((ticket, Some(back)));
                    }
                }
            }
            COp::Fail {
                pick,
                stage,
                jitter,
            } if !self.tickets.is_empty() => {
                let (ticket, _) = self.tickets.swap_remove(pick % self.tickets.len());
                self.m
                    .handle_dial_failure(ticket, stage_of(*stage), *jitter, self.now);
                if !self.c.closed {
                    assert!(self.m.failures() > 0);
                }
                self.after_finish();
            }
            COp::Succeed { .. } | COp::Fail { .. } => {}
            COp::GetId { id, wait_ms } => {
                let id = self.c.pick_id(id);
                let deadline = self.now + MS(u64::from(*wait_ms));
                let can_arrive = !self.tickets.is_empty();
                let predicted = self.c.get(Want::Id(id), self.now, deadline, can_arrive);
                let dead = self.c.dead.clone();
                let got = self.m.get(id, self.now, deadline, |v| !dead.contains(v));
                self.c.check_got(got, predicted, Want::Id(id), deadline);
            }
            COp::GetAny { wait_ms } => {
                let deadline = self.now + MS(u64::from(*wait_ms));
                let predicted = self.c.get(Want::Any, self.now, deadline, true);
                let dead = self.c.dead.clone();
                let got = self.m.get_any(self.now, deadline, |v| !dead.contains(v));
                self.c.check_got(got, predicted, Want::Any, deadline);
            }
            COp::Cancel(i) => {
                let (key, live) = self.c.cancel(*i);
                if let Some(key) = key {
                    assert_eq!(self.m.cancel(key), live, "cancel of {key:?}");
                }
            }
            COp::Kill(i) => self.c.kill(*i),
            COp::Sweep => {
                let dead = self.c.dead.clone();
                let n = self.m.sweep(|v| !dead.contains(v));
                assert_eq!(n, self.c.sweep());
            }
            COp::Flush => {
                let out = self.m.flush(self.now);
                self.c.flush(out);
            }
            COp::Close(false) => {}
            COp::Close(true) => {
                let out = self.m.close();
                self.c.close(out);
                assert!(self.m.is_closed());
            }
        }
        self.check(before);
    }

    fn timeout(&mut self) {
        self.c.expire(self.now);
        self.m.handle_timeout(self.now);
        let next = self.m.poll_timeout();
        assert!(
            !matches!(next, Some(t) if t <= self.now),
            "handle_timeout left work due at {next:?} (now {:?})",
            self.now
        );
    }

    fn check(&mut self, before: pool_core::Status) {
        let answers: Vec<Answer<u64>> = std::iter::from_fn(|| self.m.poll_answer()).collect();
        self.c.check_answers(answers);
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
        assert!(
            st.capacity.abs_diff(before.capacity) <= 1,
            "capacity jumped"
        );
        assert!(
            st.interval.abs_diff(before.interval) <= MS(100),
            "interval jumped"
        );
        assert_eq!(st.idle, self.c.idle.len(), "idle count");
        assert_eq!(st.in_flight, self.tickets.len(), "in-flight count");
        assert_eq!(st.waiting, self.c.waiters.len(), "waiting count");
        if !cfg.single() {
            assert!(
                st.idle + st.in_flight <= cfg.max_capacity(),
                "idle {} + in flight {} above the maximum capacity",
                st.idle,
                st.in_flight
            );
        }
        let ids: HashSet<ConnId> = self.c.idle_ids().into_iter().collect();
        assert_eq!(ids.len(), self.c.idle.len());
        let k = self.m.counters();
        assert_eq!(k.dialed, self.dialed, "dialed");
        assert_eq!(k.created, self.c.created, "created");
        assert_eq!(k.id_collisions, self.c.collisions, "collisions");
        assert_eq!(k.evicted_dead, self.c.evicted, "evicted");
        assert_eq!(k.not_found, self.c.not_found, "not found");
        assert_eq!(k.get_timeouts, self.c.timeouts, "timeouts");
        let t = self.m.poll_timeout();
        self.c.check_poll_timeout(t, false);
        if self.c.closed {
            assert_eq!(t, None, "a closed pool wants no wake-up");
        } else if self.tickets.is_empty() && t.is_none() {
            // Nothing out and no timer: the machine must have dials to hand out now,
            // or it would stall for ever.
            assert!(self.poll_dial(), "client stalled: no dial, no timer");
        }
    }
}

// ------------------------------------------------------------------------------------
// Server

#[derive(Clone, Debug)]
enum SOp {
    Advance(u16),
    ToTimeout,
    Accept(bool),
    Assign {
        pick: usize,
        id: SIdPick,
    },
    /// Finishes a handshake; with `true`, first draws it an id if it has none.
    Ready(usize, bool),
    Fail {
        pick: usize,
        stage: u8,
    },
    Get {
        wait_ms: u16,
    },
    Cancel(usize),
    Kill(usize),
    Sweep,
    Flush,
    /// Closes only when true.
    Close(bool),
}

#[derive(Clone, Debug)]
enum SIdPick {
    Fresh(u8),
    Idle(usize),
    Pending(usize),
}

fn server_op() -> impl Strategy<Value = SOp> {
    let pick = prop_oneof![
        3 => any::<u8>().prop_map(SIdPick::Fresh),
        1 => any::<usize>().prop_map(SIdPick::Idle),
        1 => any::<usize>().prop_map(SIdPick::Pending),
    ];
    prop_oneof![
        4 => (0u16..1500).prop_map(SOp::Advance),
        2 => Just(SOp::ToTimeout),
        6 => prop_oneof![9 => Just(true), 1 => Just(false)].prop_map(SOp::Accept),
        6 => (any::<usize>(), pick).prop_map(|(pick, id)| SOp::Assign { pick, id }),
        5 => (any::<usize>(), proptest::bool::weighted(0.8)).prop_map(|(p, a)| SOp::Ready(p, a)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(pick, stage)| SOp::Fail { pick, stage }),
        4 => (0u16..3000).prop_map(|wait_ms| SOp::Get { wait_ms }),
        2 => any::<usize>().prop_map(SOp::Cancel),
        1 => any::<usize>().prop_map(SOp::Kill),
        1 => Just(SOp::Sweep),
        1 => Just(SOp::Flush),
        1 => proptest::bool::weighted(0.1).prop_map(SOp::Close),
    ]
}

fn server_cfg() -> impl Strategy<Value = ServerConfig> {
    (1usize..12, 1usize..6, 100u64..5000).prop_map(|(cap, hs, to)| {
        ServerConfig::builder()
            .max_capacity(cap)
            .max_handshakes(hs)
            .handshake_timeout(MS(to))
            .build()
            .expect("valid config")
    })
}

struct ServerHarness {
    m: ServerMachine<u64>,
    cfg: ServerConfig,
    now: Instant,
    tickets: Vec<(HandshakeTicket, u64)>,
    next_val: u64,
    refused: [u64; 3],
    id_errors: u64,
    c: Common,
}

impl ServerHarness {
    fn new(cfg: ServerConfig) -> Self {
        Self {
            m: ServerMachine::new(cfg.clone()),
            cfg,
            now: Instant::now(),
            tickets: Vec::new(),
            next_val: 0,
            refused: [0; 3],
            id_errors: 0,
            c: Common::default(),
        }
    }

    fn pending(&self) -> Vec<ConnId> {
        self.tickets.iter().filter_map(|(t, _)| t.id()).collect()
    }

    fn apply(&mut self, op: &SOp) {
        match op {
            SOp::Advance(ms) => {
                self.now += MS(u64::from(*ms));
                self.c.expire(self.now);
                self.m.handle_timeout(self.now);
            }
            SOp::ToTimeout => {
                if let Some(t) = self.m.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.c.expire(self.now);
                self.m.handle_timeout(self.now);
                assert!(!matches!(self.m.poll_timeout(), Some(t) if t <= self.now));
            }
            SOp::Accept(allowed) => {
                let predicted = if self.c.closed {
                    Some(Refusal::Closed)
                } else if !allowed {
                    self.refused[0] += 1;
                    Some(Refusal::Filter)
                } else if self.c.idle.len() + self.tickets.len() >= self.cfg.max_capacity() {
                    self.refused[1] += 1;
                    Some(Refusal::Full)
                } else if self.tickets.len() >= self.cfg.max_handshakes() {
                    self.refused[2] += 1;
                    Some(Refusal::Busy)
                } else {
                    None
                };
                match (self.m.handle_accept(self.now, *allowed), predicted) {
                    (Admission::Refuse(r), Some(p)) => assert_eq!(r, p),
                    (Admission::Admit(t), None) => {
                        assert_eq!(t.deadline(), self.now + self.cfg.handshake_timeout());
                        assert_eq!(t.id(), None);
                        self.next_val += 1;
                        self.tickets.push((t, self.next_val));
                    }
                    (got, p) => panic!("accept gave {got:?}, model says {p:?}"),
                }
            }
            SOp::Assign { pick, id } if !self.tickets.is_empty() => {
                let i = pick % self.tickets.len();
                let pending = self.pending();
                let raw = match id {
                    SIdPick::Idle(j) if !self.c.idle.is_empty() => {
                        self.c.idle[j % self.c.idle.len()].0.to_raw()
                    }
                    SIdPick::Pending(j) if !pending.is_empty() => {
                        pending[j % pending.len()].to_raw()
                    }
                    SIdPick::Fresh(b) => small_id(*b).to_raw(),
                    SIdPick::Idle(j) | SIdPick::Pending(j) => small_id(*j as u8).to_raw(),
                };
                let id = ConnId::from_random(raw);
                let had = self.tickets[i].0.id();
                let taken = self.c.idle.iter().any(|(x, _)| *x == id) || pending.contains(&id);
                let got = self.m.assign_id(&mut self.tickets[i].0, raw);
                match had {
                    Some(old) => assert_eq!(got, Ok(old), "a ticket keeps its id"),
                    None if taken => {
                        assert!(got.is_err(), "id {id} assigned twice");
                        self.c.collisions += 1;
                        assert_eq!(self.tickets[i].0.id(), None);
                    }
                    None => {
                        assert_eq!(got, Ok(id));
                        assert_eq!(self.tickets[i].0.id(), Some(id));
                    }
                }
            }
            SOp::Ready(pick, assign) if !self.tickets.is_empty() => {
                let i = pick % self.tickets.len();
                if *assign && self.tickets[i].0.id().is_none() {
                    self.apply(&SOp::Assign {
                        pick: i,
                        id: SIdPick::Fresh(*pick as u8),
                    });
                }
                let (t, val) = self.tickets.swap_remove(i);
                let id = t.id();
                match (self.m.handle_ready(t, val, self.now), id) {
                    (Landed::Closed, None) => self.id_errors += 1,
                    (Landed::Closed, Some(_)) => assert!(self.c.closed),
                    (Landed::Kept, Some(id)) => {
                        assert!(!self.c.closed);
                        assert!(self.c.land(id, val), "kept a colliding id");
                    }
                    (got, id) => panic!("ready gave {got:?} for id {id:?}"),
                }
            }
            SOp::Fail { pick, stage } if !self.tickets.is_empty() => {
                let (t, _) = self.tickets.swap_remove(pick % self.tickets.len());
                let stage = stage_of(*stage);
                if stage == Stage::Id {
                    self.id_errors += 1;
                }
                self.m.handle_failure(t, stage, self.now);
            }
            SOp::Assign { .. } | SOp::Ready(..) | SOp::Fail { .. } => {}
            SOp::Get { wait_ms } => {
                let deadline = self.now + MS(u64::from(*wait_ms));
                let predicted = self.c.get(Want::Any, self.now, deadline, true);
                let dead = self.c.dead.clone();
                let got = self.m.get(self.now, deadline, |v| !dead.contains(v));
                self.c.check_got(got, predicted, Want::Any, deadline);
            }
            SOp::Cancel(i) => {
                let (key, live) = self.c.cancel(*i);
                if let Some(key) = key {
                    assert_eq!(self.m.cancel(key), live);
                }
            }
            SOp::Kill(i) => self.c.kill(*i),
            SOp::Sweep => {
                let dead = self.c.dead.clone();
                let n = self.m.sweep(|v| !dead.contains(v));
                assert_eq!(n, self.c.sweep());
            }
            SOp::Flush => {
                let out = self.m.flush();
                self.c.flush(out);
            }
            SOp::Close(false) => {}
            SOp::Close(true) => {
                let out = self.m.close();
                self.c.close(out);
            }
        }
        self.check();
    }

    fn check(&mut self) {
        let answers: Vec<Answer<u64>> = std::iter::from_fn(|| self.m.poll_answer()).collect();
        self.c.check_answers(answers);
        let st = self.m.status();
        assert_eq!(st.idle, self.c.idle.len(), "idle count");
        assert_eq!(st.in_flight, self.tickets.len(), "handshake count");
        assert_eq!(st.waiting, self.c.waiters.len(), "waiting count");
        assert_eq!(st.capacity, self.cfg.max_capacity());
        assert!(
            st.idle + st.in_flight <= self.cfg.max_capacity(),
            "idle {} + handshaking {} above the maximum",
            st.idle,
            st.in_flight
        );
        assert!(st.in_flight <= self.cfg.max_handshakes());
        let k = self.m.counters();
        assert_eq!(k.created, self.c.created, "created");
        assert_eq!(k.id_collisions, self.c.collisions, "collisions");
        assert_eq!(k.evicted_dead, self.c.evicted, "evicted");
        assert_eq!(k.get_timeouts, self.c.timeouts, "timeouts");
        assert_eq!(k.id_errors, self.id_errors, "id errors");
        assert_eq!(
            [k.refused_filter, k.refused_full, k.refused_busy],
            self.refused
        );
        let t = self.m.poll_timeout();
        self.c.check_poll_timeout(t, true);
        // Pending ids are unique, and never idle at the same time.
        let pending = self.pending();
        let set: HashSet<ConnId> = pending.iter().copied().collect();
        assert_eq!(set.len(), pending.len(), "two handshakes share an id");
        assert!(self.c.idle.iter().all(|(id, _)| !set.contains(id)));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn client_machine_follows_the_model(cfg in client_cfg(), ops in vec(client_op(), 1..200)) {
        let mut h = ClientHarness::new(cfg);
        for op in &ops {
            h.apply(op);
        }
        // Closing at the end answers everyone, and returning the remaining tickets is
        // harmless.
        h.apply(&COp::Close(true));
        while !h.tickets.is_empty() {
            h.apply(&COp::Fail { pick: 0, stage: 0, jitter: 0 });
        }
        prop_assert_eq!(h.m.status().in_flight, 0);
    }

    #[test]
    fn server_machine_follows_the_model(cfg in server_cfg(), ops in vec(server_op(), 1..200)) {
        let mut h = ServerHarness::new(cfg);
        for op in &ops {
            h.apply(op);
        }
        h.apply(&SOp::Close(true));
        while !h.tickets.is_empty() {
            h.apply(&SOp::Ready(0, false));
        }
        prop_assert_eq!(h.m.status().in_flight, 0);
    }
}

// ------------------------------------------------------------------------------------
// Plain unit tests of the client.

fn cfg(min_iv: u64, max_iv: u64) -> ClientConfig {
    ClientConfig::builder()
        .capacity(4, 16)
        .interval(MS(min_iv), MS(max_iv))
        .parallelism(2)
        .build()
        .expect("valid config")
}

#[test]
fn backoff_grows_jittered_and_bounded() {
    let c = cfg(100, 5_000);
    let mut last_full = Duration::ZERO;
    for failures in 1..40u32 {
        let full = (MS(100) * 2u32.saturating_pow((failures - 1).min(20))).min(MS(5_000));
        assert!(full >= last_full, "backoff shrank");
        last_full = full;
        for jitter in [0, 1, u32::MAX / 3, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
            let d = backoff(&c, failures, jitter);
            let low = (full / 2).max(c.min_interval());
            assert!(
                d >= low && d <= full,
                "failures {failures} jitter {jitter}: {d:?} not in [{low:?}, {full:?}]"
            );
            assert!(d >= c.min_interval() && d <= c.max_interval());
        }
        assert_eq!(backoff(&c, failures, 0), (full / 2).max(c.min_interval()));
        assert!(backoff(&c, failures, u32::MAX).abs_diff(full) <= Duration::from_micros(1));
    }
    // Exponential: the undelayed bound doubles until the cap.
    assert_eq!(backoff(&c, 3, u32::MAX), MS(400));
    assert_eq!(backoff(&c, 4, u32::MAX), MS(800));
    assert_eq!(backoff(&c, 30, u32::MAX), MS(5_000));
}

/// Drives a client whose every dial fails at connect; returns the dial instants.
fn always_failing(c: &ClientConfig, secs: u64, seed: u64) -> (Vec<Instant>, ClientMachine<u64>) {
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(c.clone(), t0);
    let mut now = t0;
    let mut dials = Vec::new();
    let mut x = seed;
    let mut steps = 0;
    while now < t0 + Duration::from_secs(secs) {
        steps += 1;
        assert!(steps < 1_000_000, "the driver spins");
        m.handle_timeout(now);
        while let Some(t) = m.poll_dial(now) {
            dials.push(now);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            m.handle_dial_failure(t, Stage::Connect, x as u32, now + MS(5));
        }
        let next = m.poll_timeout().expect("a failing client keeps a timer");
        assert!(next > now, "timer not in the future");
        now = next;
    }
    (dials, m)
}

#[test]
fn failing_server_does_not_spin() {
    let c = cfg(100, 1_000);
    let (dials, m) = always_failing(&c, 60, 0x9e37_79b9);
    // After a few doublings every probe is at least max_interval/2 after the last: at
    // most two per max_interval, plus the first probes of the ramp.
    let ramp = 1 + (c.max_interval().as_millis() / c.min_interval().as_millis()).ilog2() as usize;
    // The first round dials in parallel; backing off starts after `parallelism`
    // failures in a row (the capacity, 4, is larger).
    let threshold = c.parallelism();
    let bound = (60_000 / (c.max_interval().as_millis() as usize / 2)) + ramp + threshold;
    assert!(
        dials.len() <= bound,
        "{} dials in 60 s against a dead server (bound {bound})",
        dials.len()
    );
    assert!(dials.len() >= 30, "it still probes: {}", dials.len());
    for w in dials[threshold - 1..].windows(2) {
        assert!(
            w[1] - w[0] >= c.min_interval(),
            "probes closer than the minimum interval"
        );
        // Each failure is reported 5 ms after its dial; the wait counts from there.
        assert!(
            w[1] - w[0] <= c.max_interval() + MS(5),
            "probes further apart than the maximum"
        );
    }
    assert_eq!(m.failures() as usize, dials.len());
    assert_eq!(m.counters().dial_failures as usize, dials.len());
    assert_eq!(m.status().in_flight, 0);
}

#[test]
fn success_resets_backoff() {
    let c = cfg(100, 10_000);
    let (_, mut m) = always_failing(&c, 30, 7);
    assert!(m.failures() > 5);
    let mut now = m.poll_timeout().expect("timer");
    m.handle_timeout(now);
    let t = m.poll_dial(now).expect("a probe");
    assert!(
        m.poll_dial(now).is_none(),
        "a single probe while backing off"
    );
    now += MS(1);
    assert!(matches!(
        m.handle_dial_success(t, ConnId::from_random([1, 2, 3, 4]), 1, now),
        Landed::Kept
    ));
    assert_eq!(m.failures(), 0);
    assert!(!m.backing_off());
    // The top-up resumes at once, with no need to wait for the next round.
    let mut n = 0;
    while let Some(t) = m.poll_dial(now) {
        n += 1;
        m.handle_dial_failure(t, Stage::Tls, 0, now);
        if m.backing_off() {
            break;
        }
    }
    assert_eq!(
        n,
        c.parallelism(),
        "a run of failures as long as the parallelism stops the top-up"
    );
    assert!(m.poll_dial(now).is_none(), "no dial while backing off");
    // Just past the threshold: a minimal backoff again.
    let wait = m.poll_timeout().expect("timer") - now;
    assert!(
        wait <= c.min_interval().max(m.status().interval) * 2,
        "{wait:?}"
    );
}

#[test]
fn single_mode_get_any_dials_urgently() {
    let c = ClientConfig::builder()
        .capacity(2, 4)
        .parallelism(1)
        .single(true)
        .build()
        .expect("valid");
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(c, t0);
    // No round has run: nothing idle.
    let key = match m.get_any(t0, t0 + MS(500), |_| true) {
        Got::Wait(k) => k,
        other => panic!("expected to wait, got {other:?}"),
    };
    let t = m.poll_dial(t0).expect("an urgent dial");
    assert!(t.is_urgent());
    assert!(m.poll_dial(t0).is_none(), "one urgent dial per waiting get");
    let id = ConnId::from_random([9, 9, 9, 9]);
    assert!(matches!(
        m.handle_dial_success(t, id, 42, t0 + MS(3)),
        Landed::Kept
    ));
    let a = m.poll_answer().expect("answer");
    assert_eq!(a.key, key);
    assert_eq!(a.result.expect("served"), (id, 42));
    assert_eq!(m.status().idle, 0);
}

#[test]
fn get_by_id_not_found_rules() {
    let c = cfg(100, 1_000);
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(c, t0);
    let id = ConnId::from_random([1, 1, 1, 1]);
    // Nothing in flight: NotFound at once.
    assert!(matches!(
        m.get(id, t0, t0 + MS(1_000), |_| true),
        Got::Failed(GetError::NotFound)
    ));
    m.handle_timeout(t0);
    let a = m.poll_dial(t0).expect("dial");
    let b = m.poll_dial(t0).expect("dial");
    let key = match m.get(id, t0, t0 + MS(1_000), |_| true) {
        Got::Wait(k) => k,
        other => panic!("expected to wait, got {other:?}"),
    };
    // Another id lands: still one in flight, keep waiting.
    let other = ConnId::from_random([2, 2, 2, 2]);
    assert!(matches!(
        m.handle_dial_success(a, other, 1, t0 + MS(1)),
        Landed::Kept
    ));
    assert!(m.poll_answer().is_none());
    // The last one fails: in flight drops to 0, nothing can bring the id.
    m.handle_dial_failure(b, Stage::Id, 0, t0 + MS(2));
    let ans = m.poll_answer().expect("answer");
    assert_eq!(ans.key, key);
    assert_eq!(ans.result.err(), Some(GetError::NotFound));
    assert!(m.poll_answer().is_none());
    assert_eq!(m.counters().not_found, 2);
}

#[test]
fn server_put_back_never_takes_a_pending_id() {
    let now = Instant::now();
    let mut s: ServerMachine<u64> = ServerMachine::new(ServerConfig::default());
    let Admission::Admit(mut t1) = s.handle_accept(now, true) else {
        panic!("admitted")
    };
    let x = s.assign_id(&mut t1, [1, 2, 3, 4]).expect("free id");
    assert!(matches!(s.handle_ready(t1, 1, now), Landed::Kept));
    let Got::Ready(id, conn) = s.get(now, now + MS(1_000), |_| true) else {
        panic!("ready")
    };
    assert_eq!(id, x);
    // The same id is drawn again for a new handshake while the first is out.
    let Admission::Admit(mut t2) = s.handle_accept(now, true) else {
        panic!("admitted")
    };
    assert_eq!(s.assign_id(&mut t2, [1, 2, 3, 4]), Ok(x));
    // Its get went away: the first connection must not come back under that id.
    assert_eq!(s.put_back(id, conn), Err(1));
    assert!(matches!(s.handle_ready(t2, 2, now), Landed::Kept));
    assert_eq!(s.status().idle, 1);
    // With no handshake holding the id, put_back works.
    let Got::Ready(id, conn) = s.get(now, now + MS(1_000), |_| true) else {
        panic!("ready")
    };
    assert_eq!(conn, 2);
    assert_eq!(s.put_back(id, conn), Ok(()));
    assert_eq!(s.status().idle, 1);
}

#[test]
fn scattered_failures_do_not_cut_the_round() {
    let c = ClientConfig::builder()
        .capacity(16, 16)
        .parallelism(4)
        .build()
        .expect("valid");
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(c, t0);
    m.handle_timeout(t0);
    let mut issued = 0u64;
    while let Some(t) = m.poll_dial(t0) {
        issued += 1;
        if issued.is_multiple_of(3) {
            m.handle_dial_failure(t, Stage::Tls, 0, t0);
        } else {
            let id = ConnId::from_random((issued as u32).to_be_bytes());
            assert!(matches!(
                m.handle_dial_success(t, id, issued, t0),
                Landed::Kept
            ));
        }
        assert!(
            !m.backing_off(),
            "one failure among successes is not an outage"
        );
    }
    assert_eq!(
        m.status().idle,
        16,
        "the top-up replaced every failure at once"
    );
    assert_eq!(issued, 16 + issued / 3);
    assert!(m.poll_dial(t0).is_none(), "nothing beyond the capacity");
}
