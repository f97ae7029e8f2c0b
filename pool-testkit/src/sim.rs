//! A simulated network in which a [`ClientMachine`] and a [`ServerMachine`] talk, under a
//! simulated clock, with no runtime and no I/O: only `pool-core`.
//!
//! Every client dial ticket becomes a simulated connection with a serial number. It
//! reaches the server after a network latency, is admitted (`handle_accept`), gets an id
//! (`assign_id`), runs a simulated TLS handshake, lands at the server (`handle_ready`),
//! and its id bytes reach the client in random chunks, fed through an [`IdReader`];
//! then it lands at the client too. Faults are injected per stage with configured
//! probabilities: connect refused, TLS failure, a corrupted id byte, and silence until
//! a deadline (during TLS or in the middle of the id).
//!
//! A demand of `n` pairs per simulated second plays the application: a server `get`, the
//! id sent over a simulated control channel, then a client `get(id)`. Both ends must
//! hold the same simulated connection; [`SimStats::pairs_mismatched`] counts the times
//! they did not.
//!
//! Everything random comes from one seed, so a run is a pure function of its seed,
//! configurations and faults: [`SimPair::transcript_hash`] proves it.
//!
//! ```
//! use pool_core::{ClientConfig, ServerConfig};
//! use pool_testkit::sim::{Faults, SimPair};
//! use std::time::Duration;
//! let mut sim = SimPair::new(7, ClientConfig::default(), ServerConfig::default(), Faults::none());
//! sim.set_demand(5.0);
//! sim.run_for(Duration::from_secs(60));
//! assert!(sim.stats().pairs_ok > 200);
//! assert_eq!(sim.stats().pairs_mismatched, 0);
//! sim.check().unwrap();
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pool_core::{
    backoff, Admission, ClientConfig, ClientMachine, ConnId, Counters, DialTicket, Got,
    HandshakeTicket, IdForm, IdReader, Landed, ServerConfig, ServerMachine, Stage, Status,
    WaiterKey, ID_LEN,
};

/// A small seeded generator (xorshift64*, seeded through splitmix64). Not
/// cryptographic; enough to make every run reproducible from its seed.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator fixed by `seed` (any seed, zero included).
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// A duration in `[lo, hi]`, to the microsecond.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo).as_micros() as u64;
        lo + Duration::from_micros(self.below(span + 1))
    }
}

/// A simulated clock: a fixed base instant plus a simulated offset.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    base: Instant,
    offset: Duration,
}

impl SimClock {
    /// A clock at offset zero.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset: Duration::ZERO,
        }
    }
    /// The current simulated instant.
    pub fn now(&self) -> Instant {
        self.base + self.offset
    }
    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.offset
    }
    /// The offset of `at` from the start (zero for instants before it).
    pub fn offset_of(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.base)
    }
    /// The instant at offset `d`.
    pub fn at(&self, d: Duration) -> Instant {
        self.base + d
    }
    /// Moves the clock forward to offset `d` (never backwards).
    pub fn advance_to(&mut self, d: Duration) {
        self.offset = self.offset.max(d);
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Fault probabilities, one per stage of a connection. Each is drawn independently per
/// connection, in stage order; the first that hits decides its fate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// The client's connect is refused (client: `Stage::Connect`).
    pub connect_refused: f64,
    /// The TLS handshake fails on both ends (`Stage::Tls`).
    pub tls_fail: f64,
    /// One id byte is corrupted on the way (client: `Stage::Id`). In the raw 4-byte id
    /// form no byte can be told bad, so the id is cut short instead.
    pub bad_id: f64,
    /// The peer goes silent until the deadlines: half of the time during TLS (both ends
    /// time out), half of the time after part of the id (the client's id read times out).
    pub silence: f64,
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }
    /// The same probability for every kind.
    pub fn uniform(p: f64) -> Self {
        Self {
            connect_refused: p,
            tls_fail: p,
            bad_id: p,
            silence: p,
        }
    }
}

/// Timing of the simulated network and of the application.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// One-way network latency, drawn per delivery.
    pub latency: (Duration, Duration),
    /// Duration of a TLS handshake at the server.
    pub tls_time: (Duration, Duration),
    /// Latency of the application's control channel (server id to the client side).
    pub control_latency: (Duration, Duration),
    /// Deadline of the application's server `get`.
    pub server_get_timeout: Duration,
    /// Deadline of the application's client `get(id)`.
    pub client_get_timeout: Duration,
    /// A user who finds this many server gets already waiting gives up at once.
    pub max_waiting: usize,
    /// How often both pools sweep dead idle connections.
    pub sweep_every: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            latency: (ms(1), ms(20)),
            tls_time: (ms(5), ms(40)),
            control_latency: (ms(1), ms(10)),
            server_get_timeout: ms(2_000),
            client_get_timeout: ms(3_000),
            max_waiting: 64,
            sweep_every: Duration::from_secs(10),
        }
    }
}

/// Counters of a simulation run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SimStats {
    /// Steps taken.
    pub steps: u64,
    /// Network and application events processed.
    pub events: u64,
    /// Dials the client started.
    pub dials: u64,
    /// Pairs whose two ends hold the same connection.
    pub pairs_ok: u64,
    /// Pairs whose ends hold different connections or ids (must stay 0).
    pub pairs_mismatched: u64,
    /// Server gets that failed (timeout).
    pub pairs_failed_server: u64,
    /// Client gets that failed (timeout, not found): the pair is abandoned.
    pub pairs_failed_client: u64,
    /// Users who gave up because too many gets were waiting.
    pub demand_dropped: u64,
    /// Injected connect refusals.
    pub injected_connect_refused: u64,
    /// Injected TLS failures.
    pub injected_tls_fail: u64,
    /// Injected bad id bytes (or cut ids in the raw form).
    pub injected_bad_id: u64,
    /// Injected silences during TLS.
    pub injected_silence_tls: u64,
    /// Injected silences in the middle of the id.
    pub injected_silence_id: u64,
    /// Connections the server refused at accept (full, busy).
    pub refused_by_server: u64,
    /// Server id draws that collided.
    pub server_id_redraws: u64,
    /// Ids the client read that were already idle there.
    pub client_collisions: u64,
    /// A connection handed out twice by one side (must stay 0).
    pub double_handouts: u64,
    /// Id reads that consumed a byte past the id (must stay 0).
    pub overreads: u64,
    /// Disagreements between the client and the round observer's prediction from the
    /// client module's rules (must stay 0): the refill timer (`refill_at`), the count of
    /// consecutive failures, a ticket handed out against the top-up or probe rules, or
    /// a top-up ticket withheld that the rules call for. Each disagreement counts once.
    pub timer_desyncs: u64,
    /// Dead idle connections the server dropped.
    pub evicted_server: u64,
    /// Dead idle connections the client dropped.
    pub evicted_client: u64,
}

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
}

/// The round observer's prediction of the client, built only from the client module's
/// rules and what the driver sees (tickets, landings, failures, status at round starts).
#[derive(Debug)]
struct RoundObserver {
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
    /// The prediction disagrees with the machine (counted once per disagreement).
    desynced: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Not there (yet).
    None,
    /// Handshaking.
    Pending,
    /// Idle in the pool.
    Idle,
    /// Handed to the application.
    Taken,
    /// Failed, refused or dropped.
    Gone,
}

#[derive(Clone, Copy, Debug)]
enum Delivery {
    /// The whole id arrives.
    Full,
    /// The byte at this position is corrupted.
    Corrupt(usize),
    /// Only this many bytes arrive, then nothing.
    Partial(usize),
}

#[derive(Debug)]
struct Conn {
    /// The client's dial ticket while the dial is in flight.
    ticket: Option<DialTicket>,
    /// The server's handshake ticket while it handshakes.
    hs: Option<HandshakeTicket>,
    /// The id reader while the client reads the id.
    reader: Option<IdReader>,
    /// The id the server drew.
    id: Option<ConnId>,
    client: Side,
    server: Side,
    client_closed: bool,
    server_closed: bool,
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    ServerAccept(u64),
    ServerTlsFail(u64),
    ServerReady(u64, Delivery),
    ServerDeadline(u64),
    ClientFail(u64, Stage),
    ClientTlsDone(u64, Delivery),
    ClientBytes(u64, [u8; ID_LEN + 4], u8),
    ClientHandshakeDeadline(u64),
    ClientIdDeadline(u64),
    Control(ConnId, u64),
}

/// A client machine and a server machine joined by a simulated network.
#[derive(Debug)]
pub struct SimPair {
    clock: SimClock,
    rng: SimRng,
    client: ClientMachine<u64>,
    server: ServerMachine<u64>,
    faults: Faults,
    opts: SimOptions,
    server_form: IdForm,
    client_form: IdForm,
    demand: f64,
    next_demand: Option<Duration>,
    next_sweep: Duration,
    events: BTreeMap<(Duration, u64), Ev>,
    event_seq: u64,
    conns: HashMap<u64, Conn>,
    client_tickets: usize,
    next_conn: u64,
    server_waiting: HashMap<WaiterKey, ()>,
    client_waiting: HashMap<WaiterKey, (ConnId, u64)>,
    stats: SimStats,
    // Round tracking.
    obs: RoundObserver,
    rounds: Vec<RoundRecord>,
    // Transcript.
    hash: u64,
    lines: Option<Vec<String>>,
}

impl SimPair {
    /// A pair with default timing and no demand; the client's first round is due at once.
    pub fn new(seed: u64, client: ClientConfig, server: ServerConfig, faults: Faults) -> Self {
        Self::with_options(seed, client, server, faults, SimOptions::default())
    }

    /// A pair with the given timing.
    pub fn with_options(
        seed: u64,
        client: ClientConfig,
        server: ServerConfig,
        faults: Faults,
        opts: SimOptions,
    ) -> Self {
        let clock = SimClock::new();
        let (capacity, interval) = (client.min_capacity(), client.min_interval());
        Self {
            rng: SimRng::new(seed),
            server_form: server.id_form(),
            client_form: client.id_form(),
            client: ClientMachine::new(client, clock.now()),
            server: ServerMachine::new(server),
            clock,
            faults,
            next_sweep: opts.sweep_every,
            opts,
            demand: 0.0,
            next_demand: None,
            events: BTreeMap::new(),
            event_seq: 0,
            conns: HashMap::new(),
            client_tickets: 0,
            next_conn: 0,
            server_waiting: HashMap::new(),
            client_waiting: HashMap::new(),
            stats: SimStats::default(),
            obs: RoundObserver {
                // The machine's first round is due at once.
                refill: Some(Duration::ZERO),
                created: None,
                failures: 0,
                backoff: Duration::ZERO,
                probe: false,
                capacity,
                interval,
                desynced: false,
            },
            rounds: Vec::new(),
            hash: 0xcbf2_9ce4_8422_2325,
            lines: None,
        }
    }

    /// Sets the demand in pairs per simulated second (0 stops it).
    pub fn set_demand(&mut self, pairs_per_sec: f64) {
        self.demand = pairs_per_sec.max(0.0);
        self.next_demand = None;
        self.schedule_demand();
    }

    /// Changes the fault probabilities; they apply to every stage drawn from now on.
    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Keeps every transcript line (memory grows with the run; for short runs).
    pub fn record_transcript(&mut self) {
        self.lines.get_or_insert_with(Vec::new);
    }

    /// The transcript lines, when recorded.
    pub fn transcript(&self) -> &[String] {
        self.lines.as_deref().unwrap_or(&[])
    }

    /// A hash of every event of the run, in order, with its simulated time.
    pub fn transcript_hash(&self) -> u64 {
        self.hash
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }

    /// The counters of the run.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// The client's status.
    pub fn client_status(&self) -> Status {
        self.client.status()
    }

    /// The server's status.
    pub fn server_status(&self) -> Status {
        self.server.status()
    }

    /// The client's counters.
    pub fn client_counters(&self) -> Counters {
        self.client.counters()
    }

    /// The server's counters.
    pub fn server_counters(&self) -> Counters {
        self.server.counters()
    }

    /// The client's configuration.
    pub fn client_config(&self) -> &ClientConfig {
        self.client.config()
    }

    /// Every refill round that has started so far.
    pub fn rounds(&self) -> &[RoundRecord] {
        &self.rounds
    }

    /// Runs for `d` of simulated time. Panics if that takes absurdly many steps (a
    /// machine that keeps asking to be woken at the same instant).
    pub fn run_for(&mut self, d: Duration) {
        let end = self.clock.elapsed() + d;
        let budget = 1_000 + d.as_millis() as u64 * 200;
        let mut steps = 0u64;
        while self.clock.elapsed() < end {
            steps += 1;
            assert!(steps <= budget, "simulation spins at {:?}", self.elapsed());
            if !self.step_until(end) {
                self.clock.advance_to(end);
            }
        }
    }

    /// Advances to the next event (the earliest of both machines' `poll_timeout`, the
    /// network's next delivery, the next user) and processes it. False when nothing at
    /// all is scheduled.
    pub fn step(&mut self) -> bool {
        self.step_until(Duration::MAX)
    }

    fn step_until(&mut self, end: Duration) -> bool {
        let off = |t: Option<Instant>, c: &SimClock| t.map(|t| c.offset_of(t));
        let t_client = off(self.client.poll_timeout(), &self.clock);
        let t_server = off(self.server.poll_timeout(), &self.clock);
        let t_net = self.events.keys().next().map(|(t, _)| *t);
        let next = [
            t_client,
            t_server,
            t_net,
            self.next_demand,
            Some(self.next_sweep),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { return false };
        if next > end {
            self.clock.advance_to(end);
            return true;
        }
        self.clock.advance_to(next);
        self.stats.steps += 1;
        let now = self.clock.elapsed();

        if let Some(entry) = self.events.first_entry() {
            if entry.key().0 <= now {
                let ev = entry.remove();
                self.stats.events += 1;
                self.process(ev);
                self.pump();
            }
        }
        if self.next_demand.is_some_and(|t| t <= now) {
            self.next_demand = None;
            self.user();
            self.schedule_demand();
            self.pump();
        }
        if self.next_sweep <= now {
            self.next_sweep = now + self.opts.sweep_every;
            self.sweep();
            self.pump();
        }
        if t_client.is_some_and(|t| t <= now) {
            self.client_timeout();
            self.pump();
        }
        if t_server.is_some_and(|t| t <= now) {
            self.server.handle_timeout(self.clock.now());
            self.pump();
        }
        true
    }

    // --------------------------------------------------------------------------------
    // Transcript and scheduling

    fn log(&mut self, what: std::fmt::Arguments<'_>) {
        let mut line = String::new();
        let _ = write!(line, "{:>12} ", self.clock.elapsed().as_micros());
        let _ = line.write_fmt(what);
        for b in line.bytes() {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        if let Some(lines) = self.lines.as_mut() {
            lines.push(line);
        }
    }

    fn at(&mut self, delay: Duration, ev: Ev) {
        self.event_seq += 1;
        self.events
            .insert((self.clock.elapsed() + delay, self.event_seq), ev);
    }

    fn at_instant(&mut self, when: Instant, ev: Ev) {
        let delay = self
            .clock
            .offset_of(when)
            .saturating_sub(self.clock.elapsed());
        self.at(delay, ev);
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.opts.latency;
        self.rng.between(lo, hi)
    }

    fn schedule_demand(&mut self) {
        if self.demand <= 0.0 || self.next_demand.is_some() {
            return;
        }
        let mean = 1.0 / self.demand;
        let gap = Duration::from_secs_f64(mean * (0.5 + self.rng.unit()));
        self.next_demand = Some(self.clock.elapsed() + gap.max(Duration::from_micros(1)));
    }

    // --------------------------------------------------------------------------------
    // The client side

    fn client_timeout(&mut self) {
        let now = self.clock.elapsed();
        let starting = !self.client.is_closed() && self.obs.refill.is_some_and(|r| r <= now);
        let before = self.client.status();
        self.client.handle_timeout(self.clock.now());
        if starting {
            self.start_round(before);
        }
    }

    /// A round starts (predicted): the capacity and interval move (read back from the
    /// machine, checked by the tests against the policies), the count of created
    /// connections restarts, and the refill timer is set: an interval from now, or the
    /// interval or the backoff, whichever is longer, when backing off (which also
    /// allows one probe).
    fn start_round(&mut self, before: Status) {
        let now = self.clock.elapsed();
        let after = self.client.status();
        self.obs.capacity = after.capacity;
        self.obs.interval = after.interval;
        let created_prev = self.obs.created.replace(0);
        let backing_off = self.backing_off();
        let wait = if backing_off {
            self.obs.probe = true;
            after.interval.max(self.obs.backoff)
        } else {
            after.interval
        };
        self.obs.refill = Some(now + wait);
        let r = RoundRecord {
            at: now,
            idle: after.idle,
            capacity_before: before.capacity,
            capacity_after: after.capacity,
            interval_before: before.interval,
            interval_after: after.interval,
            created_prev,
            failures: self.obs.failures,
        };
        self.rounds.push(r);
        self.log(format_args!(
            "round idle={} cap={}->{} ivl={:?} created={created_prev:?} failures={} \
             backing_off={backing_off} next in {wait:?}",
            after.idle, before.capacity, after.capacity, after.interval, r.failures
        ));
    }

    /// The failures that mean "unreachable": the parallelism, or the capacity if
    /// smaller, at least 1.
    fn backoff_threshold(&self) -> u32 {
        let n = self
            .client
            .config()
            .parallelism()
            .min(self.obs.capacity)
            .max(1);
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Whether the client should be backing off, by the observer's count.
    fn backing_off(&self) -> bool {
        self.obs.failures >= self.backoff_threshold()
    }

    /// Whether the rules allow one more non-urgent ticket, given the client's counts
    /// (before the ticket): none before the first round; while backing off only the
    /// round's probe with nothing in flight; otherwise top-up below the capacity and the
    /// parallelism.
    fn may_dial(&self, st: &Status) -> bool {
        if self.obs.created.is_none() {
            return false;
        }
        if self.backing_off() {
            return self.obs.probe && st.in_flight == 0;
        }
        st.idle + st.in_flight < self.obs.capacity
            && st.in_flight < self.client.config().parallelism()
    }

    /// A ticket was handed out; `st` is the client's status after it.
    fn observe_ticket(&mut self, urgent: bool, st: Status) {
        if urgent {
            return;
        }
        let before = Status {
            in_flight: st.in_flight.saturating_sub(1),
            ..st
        };
        if !self.may_dial(&before) {
            self.desync(&format!("ticket against the rules at {before:?}"));
        }
        if self.backing_off() {
            self.obs.probe = false;
        }
    }

    /// A dial landed at the client.
    fn observe_success(&mut self, urgent: bool) {
        if !urgent {
            if let Some(c) = self.obs.created.as_mut() {
                *c += 1;
            }
        }
        if self.backing_off() {
            // The server is back: the refill timer comes in to an interval from now.
            let soon = self.clock.elapsed() + self.obs.interval;
            if let Some(t) = self.obs.refill.as_mut() {
                *t = (*t).min(soon);
            }
        }
        self.obs.failures = 0;
        self.obs.backoff = Duration::ZERO;
        self.obs.probe = false;
    }

    /// A dial failed, with this jitter.
    fn observe_failure(&mut self, jitter: u32) {
        self.obs.failures = self.obs.failures.saturating_add(1);
        if !self.backing_off() {
            // Scattered failures do not delay the next round.
            return;
        }
        let beyond = self.obs.failures - self.backoff_threshold() + 1;
        self.obs.backoff = backoff(self.client.config(), beyond, jitter);
        // The next probe waits at least the backoff from this failure.
        let later = self.clock.elapsed() + self.obs.backoff;
        if let Some(t) = self.obs.refill.as_mut() {
            *t = (*t).max(later);
        }
    }

    fn desync(&mut self, what: &str) {
        if !self.obs.desynced {
            self.stats.timer_desyncs += 1;
            self.log(format_args!("DESYNC {what}"));
        }
        self.obs.desynced = true;
    }

    /// Drains the machines' outputs: dials to start, answers to deliver; then checks
    /// the round prediction.
    fn pump(&mut self) {
        let now = self.clock.now();
        while let Some(ticket) = self.client.poll_dial(now) {
            let st = self.client.status();
            self.observe_ticket(ticket.is_urgent(), st);
            self.start_dial(ticket);
        }
        while let Some(a) = self.server.poll_answer() {
            if self.server_waiting.remove(&a.key).is_none() {
                self.stats.double_handouts += 1;
            }
            match a.result {
                Ok((id, serial)) => self.begin_pair(id, serial),
                Err(e) => {
                    self.stats.pairs_failed_server += 1;
                    self.log(format_args!("server get failed {e}"));
                }
            }
        }
        while let Some(a) = self.client.poll_answer() {
            let Some((id, serial)) = self.client_waiting.remove(&a.key) else {
                self.stats.double_handouts += 1;
                continue;
            };
            match a.result {
                Ok((got_id, got)) => self.finish_pair(id, serial, got_id, got),
                Err(e) => self.abandon_pair(serial, e),
            }
        }
        self.check_timer();
    }

    /// The machine's refill timer and failure count must agree with the prediction,
    /// and it must have handed out every ticket the rules call for (`poll_dial` was
    /// drained). A disagreement counts once; the prediction then follows the machine.
    fn check_timer(&mut self) {
        if self.client.is_closed() {
            return;
        }
        let refill = self.client.refill_at().map(|t| self.clock.offset_of(t));
        let failures = self.client.failures();
        let st = self.client.status();
        let stalled = self.may_dial(&st);
        if refill == self.obs.refill && failures == self.obs.failures && !stalled {
            self.obs.desynced = false;
            return;
        }
        let (want, want_failures) = (self.obs.refill, self.obs.failures);
        self.desync(&format!(
            "machine refill={refill:?} failures={failures} stalled={stalled} at {st:?}, \
             predicted refill={want:?} failures={want_failures}"
        ));
        self.obs.refill = refill;
        self.obs.failures = failures;
        if stalled {
            // Follow the machine: whatever it withholds, it withholds.
            self.obs.probe = false;
        }
    }

    fn start_dial(&mut self, ticket: DialTicket) {
        self.next_conn += 1;
        self.client_tickets += 1;
        let serial = self.next_conn;
        self.stats.dials += 1;
        let deadline = ticket.handshake_deadline();
        self.conns.insert(
            serial,
            Conn {
                ticket: Some(ticket),
                hs: None,
                reader: None,
                id: None,
                client: Side::Pending,
                server: Side::None,
                client_closed: false,
                server_closed: false,
            },
        );
        self.at_instant(deadline, Ev::ClientHandshakeDeadline(serial));
        let lat = self.latency();
        if self.rng.chance(self.faults.connect_refused) {
            self.stats.injected_connect_refused += 1;
            let back = self.latency();
            self.at(lat + back, Ev::ClientFail(serial, Stage::Connect));
            self.log(format_args!("dial {serial} refused"));
        } else {
            self.at(lat, Ev::ServerAccept(serial));
            self.log(format_args!("dial {serial}"));
        }
    }

    fn client_fail(&mut self, serial: u64, stage: Stage) {
        let Some(c) = self.conns.get_mut(&serial) else {
            return;
        };
        let Some(ticket) = c.ticket.take() else {
            return;
        };
        self.client_tickets -= 1;
        c.reader = None;
        c.client = Side::Gone;
        c.client_closed = true;
        let jitter = self.rng.next_u32();
        self.client
            .handle_dial_failure(ticket, stage, jitter, self.clock.now());
        self.observe_failure(jitter);
        self.log(format_args!("client {serial} failed {stage:?}"));
        self.retire(serial);
    }

    fn client_tls_done(&mut self, serial: u64, delivery: Delivery) {
        let Some(c) = self.conns.get_mut(&serial) else {
            return;
        };
        let Some(ticket) = c.ticket.as_ref() else {
            return;
        };
        let (Some(id), None) = (c.id, c.reader.as_ref()) else {
            return;
        };
        let id_deadline = ticket.id_deadline(self.clock.now());
        c.reader = Some(IdReader::new(self.client_form));
        self.at_instant(id_deadline, Ev::ClientIdDeadline(serial));
        // The bytes on the wire: the id, then payload that must never be read.
        let wire = self.server_form.encode(&id);
        let mut bytes = [b'P'; ID_LEN + 4];
        let len = wire.as_ref().len();
        bytes[..len].copy_from_slice(wire.as_ref());
        let mut sent = len + 4;
        match delivery {
            Delivery::Full => {}
            Delivery::Corrupt(pos) if self.server_form == IdForm::Hex8 => {
                bytes[pos % len] = b'Z';
            }
            Delivery::Corrupt(pos) | Delivery::Partial(pos) => sent = pos % len,
        }
        // Random chunks, in order, a little apart.
        let mut from = 0;
        let mut delay = Duration::ZERO;
        while from < sent {
            let size = 1 + self.rng.below(sent as u64) as usize;
            let to = (from + size).min(sent);
            let mut chunk = [0u8; ID_LEN + 4];
            chunk[..to - from].copy_from_slice(&bytes[from..to]);
            delay += self.rng.between(Duration::ZERO, Duration::from_millis(3));
            self.at(delay, Ev::ClientBytes(serial, chunk, (to - from) as u8));
            from = to;
        }
    }

    fn client_bytes(&mut self, serial: u64, chunk: &[u8]) {
        let Some(c) = self.conns.get_mut(&serial) else {
            return;
        };
        let Some(reader) = c.reader.as_mut() else {
            return;
        };
        let remaining = reader.remaining();
        let fed = match reader.feed(chunk) {
            Ok(fed) => fed,
            Err(_) => return self.client_fail(serial, Stage::Id),
        };
        if fed.consumed > remaining {
            self.stats.overreads += 1;
        }
        let Some(id) = fed.id else { return };
        c.reader = None;
        let drawn = c.id;
        let Some(ticket) = c.ticket.take() else {
            return;
        };
        self.client_tickets -= 1;
        if drawn != Some(id) {
            // An id the server never drew got through the reader.
            self.stats.pairs_mismatched += 1;
        }
        let urgent = ticket.is_urgent();
        let landed = self
            .client
            .handle_dial_success(ticket, id, serial, self.clock.now());
        let Some(c) = self.conns.get_mut(&serial) else {
            return;
        };
        match landed {
            Landed::Kept => {
                c.client = Side::Idle;
                self.log(format_args!("client {serial} landed {id}"));
                self.observe_success(urgent);
            }
            Landed::Closed => {
                c.client = Side::Gone;
                c.client_closed = true;
            }
            Landed::Collision(ticket, _) => {
                // The server's id cannot be changed: give up this connection.
                self.stats.client_collisions += 1;
                c.ticket = Some(ticket);
                self.client_tickets += 1;
                self.client_fail(serial, Stage::Id);
            }
        }
    }

    // --------------------------------------------------------------------------------
    // The server side

    fn server_accept(&mut self, serial: u64) {
        let now = self.clock.now();
        match self.conns.get(&serial) {
            Some(c) if !c.client_closed => {}
            // Gone, or the client gave up before the connection arrived.
            _ => return,
        }
        let mut ticket = match self.server.handle_accept(now, true) {
            Admission::Admit(t) => t,
            Admission::Refuse(r) => {
                self.server_closed(serial);
                self.stats.refused_by_server += 1;
                let lat = self.latency();
                self.at(lat, Ev::ClientFail(serial, Stage::Tls));
                self.log(format_args!("server refused {serial} {r:?}"));
                return;
            }
        };
        let mut id = None;
        for _ in 0..16 {
            match self
                .server
                .assign_id(&mut ticket, self.rng.next_u32().to_be_bytes())
            {
                Ok(got) => {
                    id = Some(got);
                    break;
                }
                Err(_) => self.stats.server_id_redraws += 1,
            }
        }
        let Some(id) = id else {
            self.server.handle_failure(ticket, Stage::Id, now);
            self.server_closed(serial);
            let lat = self.latency();
            self.at(lat, Ev::ClientFail(serial, Stage::Tls));
            return;
        };
        let deadline = ticket.deadline();
        if let Some(c) = self.conns.get_mut(&serial) {
            c.id = Some(id);
            c.server = Side::Pending;
            c.hs = Some(ticket);
        }
        self.at_instant(deadline, Ev::ServerDeadline(serial));
        let (lo, hi) = self.opts.tls_time;
        let tls = self.rng.between(lo, hi);
        let f = self.faults;
        if self.rng.chance(f.tls_fail) {
            self.stats.injected_tls_fail += 1;
            self.at(tls, Ev::ServerTlsFail(serial));
        } else if self.rng.chance(f.silence) {
            if self.rng.below(2) == 0 {
                // Nothing more happens: both deadlines fire.
                self.stats.injected_silence_tls += 1;
            } else {
                self.stats.injected_silence_id += 1;
                let cut = self.rng.below(8) as usize;
                self.at(tls, Ev::ServerReady(serial, Delivery::Partial(cut)));
            }
        } else if self.rng.chance(f.bad_id) {
            self.stats.injected_bad_id += 1;
            let pos = self.rng.below(8) as usize;
            self.at(tls, Ev::ServerReady(serial, Delivery::Corrupt(pos)));
        } else {
            self.at(tls, Ev::ServerReady(serial, Delivery::Full));
        }
        self.log(format_args!("server admitted {serial} as {id}"));
    }

    fn server_closed(&mut self, serial: u64) {
        if let Some(c) = self.conns.get_mut(&serial) {
            c.server = Side::Gone;
            c.server_closed = true;
        }
    }

    fn server_fail(&mut self, serial: u64, stage: Stage) -> bool {
        let Some(c) = self.conns.get_mut(&serial) else {
            return false;
        };
        let Some(t) = c.hs.take() else { return false };
        c.server = Side::Gone;
        c.server_closed = true;
        self.server.handle_failure(t, stage, self.clock.now());
        self.log(format_args!("server {serial} failed {stage:?}"));
        true
    }

    fn server_ready(&mut self, serial: u64, delivery: Delivery) {
        let now = self.clock.now();
        let Some(c) = self.conns.get_mut(&serial) else {
            return;
        };
        if c.client_closed {
            // The client gave up first: the handshake fails here too.
            self.server_fail(serial, Stage::Tls);
            self.retire(serial);
            return;
        }
        let Some(t) = c.hs.take() else { return };
        match self.server.handle_ready(t, serial, now) {
            Landed::Kept => {
                if let Some(c) = self.conns.get_mut(&serial) {
                    c.server = Side::Idle;
                }
                let lat = self.latency();
                self.at(lat, Ev::ClientTlsDone(serial, delivery));
                self.log(format_args!("server {serial} ready"));
            }
            Landed::Closed => self.server_closed(serial),
            Landed::Collision(t, _) => {
                if let Some(c) = self.conns.get_mut(&serial) {
                    c.hs = Some(t);
                }
                self.server_fail(serial, Stage::Id);
                let lat = self.latency();
                self.at(lat, Ev::ClientFail(serial, Stage::Id));
            }
        }
    }

    // --------------------------------------------------------------------------------
    // The application

    fn user(&mut self) {
        if self.server_waiting.len() >= self.opts.max_waiting {
            self.stats.demand_dropped += 1;
            return;
        }
        let now = self.clock.now();
        let deadline = now + self.opts.server_get_timeout;
        let mut dead = Vec::new();
        let conns = &self.conns;
        let got = self.server.get(now, deadline, |s| {
            let alive = conns.get(s).is_some_and(|c| !c.client_closed);
            if !alive {
                dead.push(*s);
            }
            alive
        });
        self.evicted_at_server(dead);
        match got {
            Got::Ready(id, serial) => self.begin_pair(id, serial),
            Got::Wait(key) => {
                self.server_waiting.insert(key, ());
            }
            Got::Failed(e) => {
                self.stats.pairs_failed_server += 1;
                self.log(format_args!("server get failed {e}"));
            }
        }
    }

    fn begin_pair(&mut self, id: ConnId, serial: u64) {
        match self.conns.get_mut(&serial) {
            Some(c) if c.server == Side::Idle => {
                c.server = Side::Taken;
                if c.id != Some(id) {
                    self.stats.pairs_mismatched += 1;
                }
            }
            _ => self.stats.double_handouts += 1,
        }
        let (lo, hi) = self.opts.control_latency;
        let lat = self.rng.between(lo, hi);
        self.at(lat, Ev::Control(id, serial));
        self.log(format_args!("server gave {id} = {serial}"));
    }

    fn control(&mut self, id: ConnId, serial: u64) {
        let now = self.clock.now();
        let deadline = now + self.opts.client_get_timeout;
        let mut dead = Vec::new();
        let conns = &self.conns;
        let got = self.client.get(id, now, deadline, |s| {
            let alive = conns.get(s).is_some_and(|c| !c.server_closed);
            if !alive {
                dead.push(*s);
            }
            alive
        });
        self.evicted_at_client(dead);
        match got {
            Got::Ready(got_id, got) => self.finish_pair(id, serial, got_id, got),
            Got::Wait(key) => {
                self.client_waiting.insert(key, (id, serial));
            }
            Got::Failed(e) => self.abandon_pair(serial, e),
        }
    }

    fn finish_pair(&mut self, id: ConnId, serial: u64, got_id: ConnId, got: u64) {
        match self.conns.get_mut(&got) {
            Some(c) if c.client == Side::Idle => c.client = Side::Taken,
            _ => self.stats.double_handouts += 1,
        }
        if got_id != id || got != serial {
            self.stats.pairs_mismatched += 1;
            self.log(format_args!("MISMATCH {id}={serial} vs {got_id}={got}"));
        } else {
            self.stats.pairs_ok += 1;
            self.log(format_args!("pair {id} = {serial}"));
        }
        self.retire(serial);
        self.retire(got);
    }

    /// The client side could not take the connection: the application closes the
    /// server's end.
    fn abandon_pair(&mut self, serial: u64, e: pool_core::GetError) {
        self.stats.pairs_failed_client += 1;
        if let Some(c) = self.conns.get_mut(&serial) {
            c.server_closed = true;
        }
        self.log(format_args!("client get failed {serial} {e}"));
        self.retire(serial);
    }

    fn sweep(&mut self) {
        let conns = &self.conns;
        let mut dead = Vec::new();
        self.server.sweep(|s| {
            let alive = conns.get(s).is_some_and(|c| !c.client_closed);
            if !alive {
                dead.push(*s);
            }
            alive
        });
        let mut dead_c = Vec::new();
        self.client.sweep(|s| {
            let alive = conns.get(s).is_some_and(|c| !c.server_closed);
            if !alive {
                dead_c.push(*s);
            }
            alive
        });
        self.evicted_at_server(dead);
        self.evicted_at_client(dead_c);
    }

    fn evicted_at_server(&mut self, dead: Vec<u64>) {
        for s in dead {
            self.stats.evicted_server += 1;
            if let Some(c) = self.conns.get_mut(&s) {
                c.server = Side::Gone;
                c.server_closed = true;
            }
            self.retire(s);
        }
    }

    fn evicted_at_client(&mut self, dead: Vec<u64>) {
        for s in dead {
            self.stats.evicted_client += 1;
            if let Some(c) = self.conns.get_mut(&s) {
                c.client = Side::Gone;
                c.client_closed = true;
            }
            self.retire(s);
        }
    }

    /// Forgets a connection both of whose ends are done with the pools.
    fn retire(&mut self, serial: u64) {
        let done = |s: Side| matches!(s, Side::None | Side::Gone | Side::Taken);
        if let Some(c) = self.conns.get(&serial) {
            let client_done = matches!(c.client, Side::Gone | Side::Taken);
            if client_done && done(c.server) && c.hs.is_none() && c.ticket.is_none() {
                self.conns.remove(&serial);
            }
        }
    }

    fn process(&mut self, ev: Ev) {
        match ev {
            Ev::ServerAccept(s) => self.server_accept(s),
            Ev::ServerTlsFail(s) => {
                if self.server_fail(s, Stage::Tls) {
                    let lat = self.latency();
                    self.at(lat, Ev::ClientFail(s, Stage::Tls));
                }
            }
            Ev::ServerReady(s, d) => self.server_ready(s, d),
            Ev::ServerDeadline(s) => {
                self.server_fail(s, Stage::Tls);
                self.retire(s);
            }
            Ev::ClientFail(s, stage) => self.client_fail(s, stage),
            Ev::ClientTlsDone(s, d) => self.client_tls_done(s, d),
            Ev::ClientBytes(s, chunk, n) => self.client_bytes(s, &chunk[..usize::from(n)]),
            Ev::ClientHandshakeDeadline(s) => {
                if self.conns.get(&s).is_some_and(|c| c.reader.is_none()) {
                    self.client_fail(s, Stage::Tls);
                }
            }
            Ev::ClientIdDeadline(s) => {
                if self.conns.get(&s).is_some_and(|c| c.reader.is_some()) {
                    self.client_fail(s, Stage::Id);
                }
            }
            Ev::Control(id, s) => self.control(id, s),
        }
    }

    // --------------------------------------------------------------------------------
    // Checks

    /// Checks that both machines agree with the simulated network: idle, in-flight and
    /// waiting counts on each side, bounds, and that every connection idle at the
    /// client with a live server end is idle or taken there under the same id.
    pub fn check(&self) -> Result<(), String> {
        let count = |f: &dyn Fn(&Conn) -> bool| self.conns.values().filter(|c| f(c)).count();
        let cs = self.client.status();
        let ss = self.server.status();
        let expect = [
            ("client idle", cs.idle, count(&|c| c.client == Side::Idle)),
            (
                "client in flight",
                cs.in_flight,
                count(&|c| c.ticket.is_some()),
            ),
            ("client waiting", cs.waiting, self.client_waiting.len()),
            ("server idle", ss.idle, count(&|c| c.server == Side::Idle)),
            ("server in flight", ss.in_flight, count(&|c| c.hs.is_some())),
            ("server waiting", ss.waiting, self.server_waiting.len()),
        ];
        for (what, machine, sim) in expect {
            if machine != sim {
                return Err(format!("{what}: machine {machine}, network {sim}"));
            }
        }
        let cfg = self.client.config();
        if !(cfg.min_capacity()..=cfg.max_capacity()).contains(&cs.capacity) {
            return Err(format!("capacity {} out of bounds", cs.capacity));
        }
        if !(cfg.min_interval()..=cfg.max_interval()).contains(&cs.interval) {
            return Err(format!("interval {:?} out of bounds", cs.interval));
        }
        if ss.idle + ss.in_flight > self.server.config().max_capacity() {
            return Err("server above its maximum capacity".into());
        }
        for (s, c) in &self.conns {
            if c.client == Side::Idle
                && !c.server_closed
                && !matches!(c.server, Side::Idle | Side::Taken)
            {
                return Err(format!("connection {s} idle at the client only"));
            }
            if c.client == Side::Idle && c.id.is_none() {
                return Err(format!("connection {s} idle at the client with no id"));
            }
        }
        let s = &self.stats;
        if s.pairs_mismatched + s.double_handouts + s.overreads + s.timer_desyncs > 0 {
            return Err(format!("broken run: {s:?}"));
        }
        Ok(())
    }
}
