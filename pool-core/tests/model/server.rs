//! The server machine against the model: admission and its refusals, eviction of the
//! oldest handshake (of all, or of a source over its quota), idle quotas per source,
//! ids drawn from the machine's generator (scripted over a tiny space, so they
//! collide), handshakes ending ready or failed (evicted ones included), and gets.

#[allow(unused_imports)]
use pool_core::testing::{
    NextDeadline as _, Returned as _, Shared as _, SplitDials as _, SplitOutputs as _,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use pool_core::{
    deadline_after, Admission, ConnId, HandshakeTicket, Refusal, ServerConfig, ServerMachine, Want,
};
use proptest::prelude::*;

/// The model's own source grouping: a peer address cut to its prefix, IPv4-mapped
/// IPv6 grouped as IPv4 (written apart from the core's, as a model should be).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Source(IpAddr);

impl Source {
    fn of(peer: IpAddr, v4: u8, v6: u8) -> Self {
        match peer.to_canonical() {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let keep = u32::from(v4.min(32));
                let cut = if keep == 0 {
                    0
                } else {
                    bits >> (32 - keep) << (32 - keep)
                };
                Self(IpAddr::from(cut.to_be_bytes()))
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let keep = u32::from(v6.min(128));
                let cut = if keep == 0 {
                    0
                } else {
                    bits >> (128 - keep) << (128 - keep)
                };
                Self(IpAddr::from(cut.to_be_bytes()))
            }
        }
    }
}

use crate::common::{
    check_fresh_draws, count_failure, stage_of, Common, Tape, BATCH_IDS_RESERVED, MS, STRICT_BOUND,
};
use crate::outside::Outside;

#[derive(Clone, Debug)]
pub(crate) enum SOp {
    Advance(u16),
    ToTimeout,
    /// A connection from `PEERS[i % PEERS.len()]`, allowed by the filter or not.
    Accept(bool, usize),
    Assign(usize),
    /// Finishes a handshake; with `true`, first draws it an id if it has none.
    Ready(usize, bool),
    Fail {
        pick: usize,
        stage: u8,
    },
    Get {
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
    /// Closes only when true.
    Close(bool),
}

pub(crate) fn server_op() -> impl Strategy<Value = SOp> {
    prop_oneof![
        4 => (0u16..1500).prop_map(SOp::Advance),
        2 => Just(SOp::ToTimeout),
        6 => (prop_oneof![9 => Just(true), 1 => Just(false)], any::<usize>())
            .prop_map(|(a, p)| SOp::Accept(a, p)),
        6 => any::<usize>().prop_map(SOp::Assign),
        5 => (any::<usize>(), proptest::bool::weighted(0.8)).prop_map(|(p, a)| SOp::Ready(p, a)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(pick, stage)| SOp::Fail { pick, stage }),
        4 => (0u16..3000, proptest::bool::weighted(0.2))
            .prop_map(|(wait_ms, hold)| SOp::Get { wait_ms, hold }),
        1 => any::<usize>().prop_map(SOp::Report),
        2 => any::<usize>().prop_map(SOp::Cancel),
        2 => any::<usize>().prop_map(SOp::Kill),
        2 => Just(SOp::Probe),
        2 => any::<bool>().prop_map(SOp::ProbeBack),
        2 => any::<usize>().prop_map(SOp::PutBack),
        1 => Just(SOp::Flush),
        1 => proptest::bool::weighted(0.1).prop_map(SOp::Close),
    ]
}

/// Peers: two hosts of one /24, a third of another, the first again as IPv4-mapped
/// IPv6, and three IPv6 hosts of which two share a /64.
const PEERS: [&str; 7] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.1.1",
    "::ffff:10.0.0.1",
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8:0:1::1",
];

fn peer(i: usize) -> IpAddr {
    PEERS[i % PEERS.len()].parse().expect("an address")
}

pub(crate) fn server_cfg() -> impl Strategy<Value = ServerConfig> {
    (
        (1usize..12, 1usize..6, 100u64..5000),
        100u64..3000,
        proptest::option::weighted(0.5, 200u64..5000),
        prop_oneof![Just(0u64), 1u64..40],
        (
            proptest::option::weighted(0.7, 1usize..4),
            proptest::option::weighted(0.5, 1usize..4),
            prop_oneof![Just(32u8), Just(24), Just(0)],
            prop_oneof![Just(64u8), Just(128)],
        ),
    )
        .prop_map(
            |((cap, hs, to), sweep, age, settle, (pend, idle, v4, v6))| {
                ServerConfig::builder()
                    .max_capacity(cap)
                    .admission(pool_core::AdmissionLimits {
                        max_handshakes: hs,
                        pending_per_source: pend,
                        idle_per_source: idle,
                        source_prefixes: (v4, v6),
                    })
                    .handshake_timeout(MS(to))
                    .sweep_interval(MS(sweep))
                    .max_idle_age(age.map(MS))
                    .settle(MS(settle))
                    .build()
                    .expect("valid config")
            },
        )
}

/// A handshake the harness holds, as the model sees it.
pub(crate) struct Tk {
    pub(crate) t: HandshakeTicket,
    val: u64,
    source: Source,
    /// Evicted: its slot is free and its report will be ignored.
    evicted: bool,
    /// Its deadline passed and the machine asked for it to be aborted (once); its
    /// slot stays taken until the ticket comes back.
    late: bool,
}

pub(crate) struct ServerHarness {
    pub(crate) m: ServerMachine<u64>,
    cfg: ServerConfig,
    tape: Tape,
    now: Instant,
    pub(crate) tickets: Vec<Tk>,
    /// Ready connections waiting out the settle time; their ids stay reserved.
    settling: VecDeque<(Instant, ConnId, u64)>,
    next_val: u64,
    /// The source of each connection that landed from a handshake and has not left
    /// the pool since (what the idle quota counts).
    owned: HashMap<u64, Source>,
    /// Serials the machine must ask to abort, in order.
    aborts: VecDeque<u64>,
    pub(crate) c: Common,
    out: Outside,
}

impl ServerHarness {
    pub(crate) fn new(cfg: ServerConfig, script: Vec<u32>) -> Self {
        let now = Instant::now();
        let tape = Tape::new(script);
        Self {
            m: ServerMachine::new(cfg.clone(), tape.clone(), now),
            c: Common::new(now, cfg.sweep_interval(), cfg.max_idle_age()),
            cfg,
            tape,
            now,
            tickets: Vec::new(),
            settling: VecDeque::new(),
            next_val: 0,
            owned: HashMap::new(),
            aborts: VecDeque::new(),
            out: Outside::default(),
        }
    }

    /// Ids reserved: by a handshake under way, or by a connection settling.
    fn pending(&self) -> Vec<ConnId> {
        let settling = self.settling.iter().map(|(_, id, _)| *id);
        self.tickets
            .iter()
            .filter_map(|k| k.t.id())
            .chain(settling)
            .collect()
    }

    fn source(&self, peer: IpAddr) -> Source {
        let (v4, v6) = self.cfg.admission().source_prefixes;
        Source::of(peer, v4, v6)
    }

    /// Handshakes whose slot is taken.
    fn live(&self) -> impl Iterator<Item = &Tk> {
        self.tickets.iter().filter(|k| !k.evicted)
    }

    /// The oldest live handshake (of `source` if given).
    fn oldest(&self, source: Option<Source>) -> Option<usize> {
        let live = self.tickets.iter().enumerate().filter(|(_, k)| !k.evicted);
        live.filter(|(_, k)| source.is_none_or(|s| k.source == s))
            .min_by_key(|(_, k)| k.t.serial())
            .map(|(i, _)| i)
    }

    fn sync_in_flight(&mut self) {
        self.c.in_flight = self.live().count();
    }

    /// Connections counted for `source` under the idle quota.
    fn idle_of(&self, source: Source) -> usize {
        self.owned.values().filter(|s| **s == source).count()
    }

    /// Forgets the owners of connections that left the pool.
    fn prune_owned(&mut self) {
        let mut here: HashSet<u64> = self.c.idle.iter().map(|i| i.val).collect();
        here.extend(self.settling.iter().map(|(_, _, v)| *v));
        here.extend(self.c.batch.iter().flatten().map(|i| i.val));
        self.owned.retain(|v, _| here.contains(v));
    }

    /// The accept, as the model decides it.
    fn predict_accept(&mut self, source: Source, allowed: bool) -> Result<Option<usize>, Refusal> {
        let kept = self.kept();
        let own = self.live().filter(|k| k.source == source).count();
        let live = self.live().count();
        let k = &mut self.c.k;
        if self.c.closed {
            return Err(Refusal::Closed);
        }
        if !allowed {
            k.refused_filter += 1;
            return Err(Refusal::Filter);
        }
        if let Some(q) = self.cfg.admission().idle_per_source {
            if self.owned.values().filter(|s| **s == source).count() >= q {
                self.c.k.refused_quota += 1;
                return Err(Refusal::Quota);
            }
        }
        let victim = match self.cfg.admission().pending_per_source {
            Some(q) if own >= q => self.oldest(Some(source)),
            _ if live >= self.cfg.admission().max_handshakes => self.oldest(None),
            _ => None,
        };
        if kept >= self.cfg.max_capacity() {
            self.c.k.refused_full += 1;
            return Err(Refusal::Full);
        }
        Ok(victim)
    }

    /// Lands a connection that finished its handshake (or its settle time).
    fn land(&mut self, id: ConnId, val: u64) {
        let c = &mut self.c;
        if c.land(id, val, self.now) {
            c.k.created += 1;
        } else {
            // assign_id never draws an idle or reserved id, but a batch coming back
            // can take one meanwhile (see BATCH_IDS_RESERVED).
            if BATCH_IDS_RESERVED {
                panic!("ready on a taken id");
            }
            c.k.id_collisions += 1;
            c.close_later(id, val);
        }
    }

    fn timeout(&mut self) {
        while self
            .settling
            .front()
            .is_some_and(|(due, _, _)| *due <= self.now)
        {
            let (_, id, val) = self.settling.pop_front().expect("front");
            self.land(id, val);
        }
        // Handshakes past their deadline are aborted once, earliest deadline first
        // (after close, no deadline is armed).
        let (now, closed) = (self.now, self.c.closed);
        let mut late: Vec<(Instant, u64)> = self
            .tickets
            .iter_mut()
            .filter(|k| !k.evicted && !k.late && k.t.deadline() <= now && !closed)
            .map(|k| {
                k.late = true;
                (k.t.deadline(), k.t.serial())
            })
            .collect();
        late.sort();
        self.aborts.extend(late.into_iter().map(|(_, s)| s));
        self.c.expire(self.now);
        self.m.handle_timeout(self.now);
        assert!(!matches!(self.m.next_deadline(), Some(t) if t <= self.now));
    }

    fn assign(&mut self, i: usize) {
        let pending: HashSet<ConnId> = self.pending().into_iter().collect();
        let had = self.tickets[i].t.id();
        let got = self.m.assign_id(&mut self.tickets[i].t);
        let drawn = self.tape.take();
        match had {
            Some(old) => {
                assert_eq!(got, old, "a ticket keeps its id");
                assert!(drawn.is_empty(), "a draw for a ticket with an id");
            }
            None => {
                let idle = self.c.taken_ids();
                let c = &mut self.c;
                let taken = |id: &ConnId| idle.contains(id) || pending.contains(id);
                assert_eq!(check_fresh_draws(&drawn, taken, &mut c.k), got);
            }
        }
        assert_eq!(self.tickets[i].t.id(), Some(got));
    }

    pub(crate) fn apply(&mut self, op: &SOp) {
        match op {
            SOp::Advance(ms) => {
                self.now += MS(u64::from(*ms));
                self.timeout();
            }
            SOp::ToTimeout => {
                if let Some(t) = self.m.next_deadline() {
                    self.now = self.now.max(t);
                }
                self.timeout();
            }
            SOp::Accept(allowed, p) => {
                let peer = peer(*p);
                let source = self.source(peer);
                let predicted = self.predict_accept(source, *allowed);
                match (self.m.handle_accept(self.now, peer, *allowed), predicted) {
                    (Admission::Refuse(r), Err(p)) => assert_eq!(r, p),
                    (Admission::Admit(t), Ok(victim)) => {
                        if let Some(v) = victim {
                            let tk = &mut self.tickets[v];
                            tk.evicted = true;
                            self.aborts.push_back(tk.t.serial());
                            self.c.k.evicted_handshakes += 1;
                            self.sync_in_flight();
                        }
                        let deadline = deadline_after(self.now, self.cfg.handshake_timeout());
                        assert_eq!(t.deadline(), deadline);
                        assert_eq!(t.id(), None);
                        assert!(self.kept() < self.cfg.max_capacity());
                        self.next_val += 1;
                        self.tickets.push(Tk {
                            t,
                            val: self.next_val,
                            source,
                            evicted: false,
                            late: false,
                        });
                        self.sync_in_flight();
                    }
                    (got, p) => panic!("accept gave {got:?}, model says {p:?}"),
                }
            }
            SOp::Assign(pick) if !self.tickets.is_empty() => {
                self.assign(pick % self.tickets.len());
            }
            SOp::Ready(pick, assign) if !self.tickets.is_empty() => {
                let i = pick % self.tickets.len();
                if *assign {
                    self.assign(i);
                }
                let Tk {
                    t,
                    val,
                    source,
                    evicted,
                    ..
                } = self.tickets.swap_remove(i);
                let id = t.id();
                self.c.ledger.enter(val, None);
                self.m.handle_ready(t, val, self.now);
                self.sync_in_flight();
                match id {
                    _ if evicted => {
                        let id = id.unwrap_or(ConnId::from_random([0; 4]));
                        self.c.close_later(id, val);
                    }
                    None => {
                        self.c.k.id_errors += 1;
                        self.c.close_later(ConnId::from_random([0; 4]), val);
                    }
                    Some(id) if self.c.closed => self.c.close_later(id, val),
                    Some(id)
                        if self
                            .cfg
                            .admission()
                            .idle_per_source
                            .is_some_and(|q| self.idle_of(source) >= q) =>
                    {
                        self.c.k.refused_quota += 1;
                        self.c.close_later(id, val);
                    }
                    Some(id) if self.kept() >= self.cfg.max_capacity() => {
                        self.c.k.refused_full += 1;
                        self.c.close_later(id, val);
                    }
                    Some(id) => {
                        if self.cfg.admission().idle_per_source.is_some() {
                            self.owned.insert(val, source);
                        }
                        if self.cfg.settle().is_zero() {
                            self.land(id, val);
                        } else {
                            let due = deadline_after(self.now, self.cfg.settle());
                            self.settling.push_back((due, id, val));
                        }
                    }
                }
            }
            SOp::Fail { pick, stage } if !self.tickets.is_empty() => {
                let tk = self.tickets.swap_remove(pick % self.tickets.len());
                let stage = stage_of(*stage);
                if !tk.evicted {
                    count_failure(&mut self.c.k, stage);
                }
                self.m.handle_failure(tk.t, stage, self.now);
                self.sync_in_flight();
            }
            SOp::Assign(_) | SOp::Ready(..) | SOp::Fail { .. } => {}
            SOp::Get { wait_ms, hold } => {
                let deadline = self.now + MS(u64::from(*wait_ms));
                let pred = self.c.get(Want::Any, self.now, deadline);
                let got = self.m.get(self.now, deadline);
                self.out.follow(
                    self.m.shared_mut(),
                    &mut self.c,
                    (got, pred),
                    (Want::Any, deadline),
                    self.now,
                    *hold,
                );
            }
            SOp::Report(i) => self
                .out
                .report(self.m.shared_mut(), &mut self.c, *i, self.now),
            SOp::Cancel(i) => {
                let (key, live) = self.c.cancel(*i);
                if let Some(key) = key {
                    assert_eq!(self.m.cancel(key), live);
                }
            }
            SOp::Kill(i) => self.c.kill(*i),
            SOp::Probe => self
                .out
                .poll_probe(self.m.shared_mut(), &mut self.c, self.now),
            SOp::ProbeBack(checked) => {
                self.out
                    .probe_back(self.m.shared_mut(), &mut self.c, *checked, self.now)
            }
            SOp::PutBack(i) => {
                if let Some((id, v)) = self.out.take_app(&mut self.c, *i) {
                    let pending = self.pending().contains(&id);
                    self.m.put_back(id, v, self.now);
                    if pending {
                        // Its id was drawn again for a handshake under way.
                        self.c.close_later(id, v);
                    } else {
                        let capacity = self.cfg.max_capacity() - self.settling.len();
                        self.c.put_back(id, v, self.now, capacity);
                    }
                }
            }
            SOp::Flush => {
                let mut out = self.m.flush_out(self.now);
                let settled = self.settled_out(&mut out);
                self.c.flush(&out);
                self.close_settled(settled);
            }
            SOp::Close(false) => {}
            SOp::Close(true) => {
                let mut out = self.m.close_out();
                let settled = self.settled_out(&mut out);
                self.c.close(&out);
                self.close_settled(settled);
            }
        }
        self.check();
    }

    /// Idle, handshaking, settling and out-for-probe connections: what admission
    /// counts.
    /// Idle, out in a sweep batch, or settling: what counts against the capacity.
    fn kept(&self) -> usize {
        self.c.held() - self.c.in_flight + self.settling.len()
    }

    /// Splits the settling connections (returned last, in order) off a flush or close.
    fn settled_out(&mut self, out: &mut Vec<(ConnId, u64)>) -> Vec<(ConnId, u64)> {
        let n = self.settling.len();
        assert!(
            out.len() >= n,
            "settling connections missing from the flush"
        );
        let tail = out.split_off(out.len() - n);
        let want: Vec<(ConnId, u64)> = self.settling.drain(..).map(|(_, i, v)| (i, v)).collect();
        assert_eq!(tail, want, "flush returned other settling connections");
        tail
    }

    fn close_settled(&mut self, settled: Vec<(ConnId, u64)>) {
        for (_, v) in settled {
            self.c.ledger.leave(v, crate::common::Loc::Closed);
        }
    }

    fn check(&mut self) {
        let aborts: Vec<u64> = std::iter::from_fn(|| self.m.poll_abort()).collect();
        let want: Vec<u64> = self.aborts.drain(..).collect();
        assert_eq!(aborts, want, "handshakes to abort");
        self.prune_owned();
        let answers = std::iter::from_fn(|| self.m.poll_answer()).collect();
        let closes = std::iter::from_fn(|| self.m.poll_close()).collect();
        self.c.check_outputs(answers, closes);
        assert!(
            self.tape.take().is_empty(),
            "a draw the model did not expect"
        );
        let st = self.m.status();
        assert_eq!(
            st.idle,
            self.c.idle.len() + self.settling.len(),
            "idle count (settling included)"
        );
        assert_eq!(st.in_flight, self.live().count(), "handshake count");
        // Per source: handshakes within the quota, idle counts as the model's, and the
        // table holds only sources that hold something.
        let mut sources: HashSet<Source> = self.live().map(|k| k.source).collect();
        sources.extend(self.owned.values().copied());
        assert_eq!(self.m.sources(), sources.len(), "per-source table size");
        for i in 0..PEERS.len() {
            let s = self.source(peer(i));
            let pending = self.live().filter(|k| k.source == s).count();
            assert_eq!(self.m.pending_from(peer(i)), pending, "pending of {s:?}");
            if let Some(q) = self.cfg.admission().pending_per_source {
                assert!(pending <= q, "{pending} pending from {s:?} over {q}");
            }
            assert_eq!(self.m.idle_from(peer(i)), self.idle_of(s), "idle of {s:?}");
        }
        assert_eq!(self.m.settling(), self.settling.len(), "settling count");
        assert_eq!(st.waiting, self.c.waiters.len(), "waiting count");
        assert_eq!(st.capacity, self.cfg.max_capacity());
        assert!(
            !STRICT_BOUND || self.kept() <= self.cfg.max_capacity(),
            "idle {} + settling {} above the maximum",
            st.idle,
            self.settling.len()
        );
        assert!(st.in_flight <= self.cfg.admission().max_handshakes);
        assert_eq!(self.m.counters(), self.c.k, "counters");
        let t = self.m.next_deadline();
        self.c.check_poll_timeout(t, self.m.sweep_at());
        let settled = self.settling.front().map(|(due, _, _)| *due);
        let shared = self.c.next_timeout();
        let deadline = self
            .tickets
            .iter()
            .filter(|k| !k.evicted && !k.late && !self.c.closed)
            .map(|k| k.t.deadline())
            .min();
        let want = settled.into_iter().chain(shared).chain(deadline).min();
        assert_eq!(
            t, want,
            "the server's timers: settle times, waiters, sweep, handshake deadlines"
        );
        // Pending ids are unique, and never idle at the same time.
        let pending = self.pending();
        let set: HashSet<ConnId> = pending.iter().copied().collect();
        assert_eq!(set.len(), pending.len(), "two handshakes share an id");
        if BATCH_IDS_RESERVED {
            assert!(self.c.idle.iter().all(|i| !set.contains(&i.id)));
        }
        let due: Vec<Instant> = self.settling.iter().map(|(d, _, _)| *d).collect();
        assert!(due.is_sorted(), "settle times out of order");
    }

    /// Closes, finishes every handshake, returns every candidate and batch, and checks
    /// that every connection left exactly once.
    pub(crate) fn finish(&mut self) {
        self.apply(&SOp::Close(true));
        while !self.tickets.is_empty() {
            self.apply(&SOp::Ready(0, false));
        }
        self.out
            .give_back(self.m.shared_mut(), &mut self.c, self.now);
        self.check();
        assert_eq!(self.m.status().in_flight, 0);
        self.c.ledger.all_out();
    }
}
