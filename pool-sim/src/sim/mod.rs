//! A simulated network in which a [`ClientMachine`] and a [`ServerMachine`] talk, under a
//! simulated clock, with no runtime and no I/O: only `pool-core`.
//!
//! Every client dial ticket becomes a simulated connection with a serial number. It
//! reaches the server after a network latency, is admitted (`handle_accept`), gets an id
//! (`assign_id`), runs a simulated TLS handshake, is ready at the server
//! (`handle_ready`; it lands there once the server's settle time has passed), and its
//! id bytes reach the client in random chunks, fed through an [`IdReader`]; then it
//! lands at the client too. Faults are injected per stage with configured
//! probabilities: connect refused, TLS failure, a corrupted id byte, and silence until
//! a deadline (during TLS or in the middle of the id). Packet loss
//! ([`SimOptions::loss`]) delays a delivery by a retransmission timeout, and
//! [`SimPair::restart_server`] restarts the server: every connection it holds is lost
//! and its port refuses connects for a while.
//!
//! A demand of `n` pairs per simulated second plays the application: a server `get`, the
//! id sent over a simulated control channel, then a client `get(id)`. Both ends must
//! hold the same simulated connection; [`SimStats::pairs_mismatched`] counts the times
//! they did not.
//!
//! The module has one file per job:
//! - `net`: the network model (clock, latencies, faults, the connections as the
//!   network sees them, the event queue and the transcript);
//! - `drivers`: the client and the server driver over the core machines, which drain
//!   every output after every input, as `pool-core`'s crate docs require, and the
//!   application that uses both pools;
//! - `oracle`: the round oracle, which predicts the client's refill timer, failure
//!   count and tickets from outside and counts every disagreement
//!   ([`SimStats::timer_desyncs`]).
//!
//! Everything random comes from one seed: the network's draws, and the seeds of both
//! machines' own generators ([`SeededRandom`]). A run is
//! therefore a pure function of its seed, configurations and faults:
//! [`SimPair::transcript_hash`] proves it.
//!
//! ```
//! use pool_core::{ClientConfig, ServerConfig};
//! use pool_sim::sim::{Faults, SimPair};
//! use std::time::Duration;
//! let mut sim = SimPair::new(7, ClientConfig::default(), ServerConfig::default(), Faults::none());
//! sim.set_demand(5.0);
//! sim.run_for(Duration::from_secs(60));
//! assert!(sim.stats().pairs_ok > 200);
//! assert_eq!(sim.stats().pairs_mismatched, 0);
//! sim.check().unwrap();
//! ```
//!
//! [`IdReader`]: pool_core::IdReader

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use pool_core::driver::{Driver, Sleep, WaitingGet};
use pool_core::{
    ClientConfig, ClientMachine, ConnId, Counters, IdForm, SeededRandom, ServerConfig,
    ServerMachine, Status,
};

mod drivers;
mod metrics;
mod net;
mod oracle;
mod platform;

pub use metrics::GetMetrics;
pub use net::{Faults, SimClock, SimOptions};
pub use oracle::RoundRecord;

use net::{Ev, Net, Side};
use oracle::{JitterTap, RoundOracle};
use platform::{End, Sim};

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
    /// Server id draws that collided (and were drawn again inside the machine).
    pub server_id_redraws: u64,
    /// Ids the client read that were already idle there.
    pub client_collisions: u64,
    /// A connection handed out twice by one side (must stay 0).
    pub double_handouts: u64,
    /// Id reads that consumed a byte past the id (must stay 0).
    pub overreads: u64,
    /// Disagreements between the client and the round oracle's prediction from the
    /// client module's rules (must stay 0): the refill timer (`refill_at`), the count of
    /// consecutive failures, a ticket handed out against the top-up or probe rules, a
    /// top-up ticket withheld that the rules call for, or a jitter draw that no backoff
    /// explains. Each disagreement counts once.
    pub timer_desyncs: u64,
    /// Dead idle connections the server dropped (found dead by a get's check or a
    /// sweep's probe).
    pub evicted_server: u64,
    /// Dead idle connections the client dropped.
    pub evicted_client: u64,
    /// Server restarts ([`SimPair::restart_server`]).
    pub server_restarts: u64,
    /// Connections the server held (idle, settling, handshaking) when it restarted.
    pub lost_in_restarts: u64,
}

/// A client machine and a server machine joined by a simulated network, each run by
/// pool-core's [`Driver`], the protocol code the shipped pools run.
#[derive(Debug)]
pub struct SimPair {
    net: Net,
    client: Driver<ClientMachine<u64>, Sim>,
    server: Driver<ServerMachine<u64>, Sim>,
    /// When each driver's next turn is due.
    client_wake: Option<Duration>,
    server_wake: Option<Duration>,
    /// The simulated connection of each server handshake, by its ticket's serial.
    hs_serials: HashMap<u64, u64>,
    /// The wire form the server writes ids in.
    server_form: IdForm,
    demand: f64,
    next_demand: Option<Duration>,
    /// Connections ready at the server but still settling, oldest first.
    settling: VecDeque<u64>,
    /// Waiting server gets by reply tag, with their users' arrival times.
    server_waiting: HashMap<u64, (WaitingGet, Duration)>,
    /// Waiting client gets by reply tag, with the pair they complete.
    client_waiting: HashMap<u64, (WaitingGet, ConnId, u64)>,
    /// Until when the server's port refuses every connect (a restart).
    server_down_until: Option<Duration>,
    stats: SimStats,
    metrics: GetMetrics,
    oracle: RoundOracle,
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
        let mut net = Net::new(seed, faults, opts);
        let (tap, drawn) = JitterTap::new(net.seed32());
        let server_random = SeededRandom::from_seed(net.seed32());
        let now = net.now();
        let client = ClientMachine::new(client, tap, now);
        let oracle = RoundOracle::new(client.status(), drawn);
        let platform = |end| Sim {
            wire: net.wire.clone(),
            end,
        };
        Self {
            server_form: server.id_form(),
            server: Driver::new(
                ServerMachine::new(server, server_random, now),
                platform(End::Server),
            ),
            client: Driver::new(client, platform(End::Client)),
            // Both drivers take their first turn at once.
            client_wake: Some(Duration::ZERO),
            server_wake: Some(Duration::ZERO),
            hs_serials: HashMap::new(),
            net,
            demand: 0.0,
            next_demand: None,
            settling: VecDeque::new(),
            server_waiting: HashMap::new(),
            client_waiting: HashMap::new(),
            server_down_until: None,
            stats: SimStats::default(),
            metrics: GetMetrics::default(),
            oracle,
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
        self.net.faults = faults;
    }

    /// The server process restarts now: every connection it holds (idle, settling or
    /// handshaking) is lost, its application's waiting gets fail, and its port refuses
    /// every connect for `down` (connects already on their way included); a fresh
    /// server machine with the same configuration takes over. The client learns of it
    /// as on sockets: its probes find its idle connections dead, its handshakes are
    /// reset, its dials are refused until the port is back.
    pub fn restart_server(&mut self, down: Duration) {
        self.drain_wire();
        self.stats.server_restarts += 1;
        let cfg = self.server.read(|m| m.config().clone());
        let now = self.net.now();
        let random = SeededRandom::from_seed(self.net.seed32());
        let platform = Sim {
            wire: self.net.wire.clone(),
            end: End::Server,
        };
        // The old machine goes with every ticket and waiting get it held.
        self.server = Driver::new(ServerMachine::new(cfg, random, now), platform);
        self.server_wake = Some(self.net.elapsed());
        self.hs_serials.clear();
        self.settling.clear();
        let elapsed = self.net.elapsed();
        let mut waiting: Vec<_> = self.server_waiting.drain().map(|(_, w)| w.1).collect();
        waiting.sort();
        for arrived in waiting {
            self.metrics.failed(elapsed.saturating_sub(arrived));
            self.stats.pairs_failed_server += 1;
        }
        let mut held: Vec<u64> = self
            .net
            .conns
            .iter()
            .filter(|(_, c)| {
                c.hs.is_some() || matches!(c.server, Side::Idle | Side::Settling | Side::Pending)
            })
            .map(|(&s, _)| s)
            .collect();
        held.sort_unstable();
        for serial in held {
            self.stats.lost_in_restarts += 1;
            let handshaking = self.net.conns.get_mut(&serial).and_then(|c| c.hs.take());
            self.net.server_gone(serial);
            self.hang_up_at_client(serial);
            if handshaking.is_some() {
                // The client's handshake is reset.
                let lat = self.net.latency();
                self.net
                    .at(lat, Ev::ClientFail(serial, pool_core::Stage::Tls));
            }
            self.net.retire(serial);
        }
        self.server_down_until = Some(elapsed + down);
        self.net
            .log(format_args!("server restarts, down for {down:?}"));
    }

    /// Whether the server's port refuses connects now (restarting).
    fn server_down(&self) -> bool {
        self.server_down_until
            .is_some_and(|t| self.net.elapsed() < t)
    }

    /// Keeps every transcript line (memory grows with the run; for short runs).
    pub fn record_transcript(&mut self) {
        self.net.record();
    }

    /// The transcript lines, when recorded.
    pub fn transcript(&self) -> &[String] {
        self.net.lines()
    }

    /// A hash of every event of the run, in order, with its simulated time.
    pub fn transcript_hash(&self) -> u64 {
        self.net.hash()
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.net.elapsed()
    }

    /// The counters of the run.
    pub fn stats(&self) -> SimStats {
        SimStats {
            timer_desyncs: self.oracle.desyncs(),
            evicted_client: self.net.wire.dead(End::Client),
            evicted_server: self.net.wire.dead(End::Server),
            ..self.stats
        }
    }

    /// What the application saw: gets served at once or after a wait, per second, and
    /// idle connection-seconds at both ends.
    pub fn metrics(&self) -> &GetMetrics {
        &self.metrics
    }

    /// The client's status.
    pub fn client_status(&self) -> Status {
        self.client.read(ClientMachine::status)
    }

    /// The server's status.
    pub fn server_status(&self) -> Status {
        self.server.read(ServerMachine::status)
    }

    /// The client's counters.
    pub fn client_counters(&self) -> Counters {
        self.client.read(|m| m.counters())
    }

    /// The server's counters.
    pub fn server_counters(&self) -> Counters {
        self.server.read(|m| m.counters())
    }

    /// The client's configuration.
    pub fn client_config(&self) -> ClientConfig {
        self.client.read(|m| m.config().clone())
    }

    /// Every refill round that has started so far.
    pub fn rounds(&self) -> &[RoundRecord] {
        self.oracle.rounds()
    }

    /// A user arrives now, whatever the demand: a server get, its id over the control
    /// channel, then the client's get by id (scripted scenarios).
    pub fn user_now(&mut self) {
        self.user();
        self.drain_wire();
    }

    /// A client get by `id` now, outside any pair (a scripted get for an id that may
    /// not exist): its failure if it failed at once. A get that would wait is
    /// cancelled (its caller gave up), and one that found the connection leaves it
    /// taken.
    pub fn client_get_now(&mut self, id: ConnId) -> Option<pool_core::GetFailure> {
        use pool_core::driver::Step;
        let timeout = self.net.opts.client_get_timeout;
        let step = self.client.get(pool_core::Want::Id(id), timeout);
        let failed = match step {
            Step::Failed(e) => Some(e),
            Step::Ready(_, serial) => {
                if let Some(c) = self.net.conns.get_mut(&serial) {
                    c.client = Side::Taken;
                }
                None
            }
            Step::Wait(w) => {
                self.client.cancel(w.get, || None);
                None
            }
        };
        self.drain_wire();
        failed
    }

    /// A client get for any connection now (single mode's get): the id it got, if it
    /// got one at once. A get that would wait is cancelled; the connection it got is
    /// left taken.
    pub fn client_get_any_now(&mut self) -> Option<ConnId> {
        use pool_core::driver::Step;
        let timeout = self.net.opts.client_get_timeout;
        let got = match self.client.get(pool_core::Want::Any, timeout) {
            Step::Ready(id, serial) => {
                if let Some(c) = self.net.conns.get_mut(&serial) {
                    c.client = Side::Taken;
                }
                Some(id)
            }
            Step::Wait(w) => {
                self.client.cancel(w.get, || None);
                None
            }
            Step::Failed(_) => None,
        };
        self.drain_wire();
        got
    }

    /// The server's application flushes its pool now (Go: `Flush`): every idle and
    /// settling connection it holds closes, and a client that watches its connections
    /// hears each hang-up one network latency later. How many closed.
    pub fn server_flush(&mut self) -> usize {
        let n = self.server.flush();
        self.drain_wire();
        n
    }

    /// Steps until `done` holds or `limit` of simulated time passes; whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.net.elapsed() + limit;
        while !done(self) {
            if self.net.elapsed() >= end {
                return false;
            }
            let step = Duration::from_millis(1).min(end - self.net.elapsed());
            self.run_for(step);
        }
        true
    }

    /// Runs for `d` of simulated time. Panics if that takes absurdly many steps (a
    /// machine that keeps asking to be woken at the same instant).
    pub fn run_for(&mut self, d: Duration) {
        let end = self.net.elapsed() + d;
        let budget = 1_000 + d.as_millis() as u64 * 200;
        let mut steps = 0u64;
        while self.net.elapsed() < end {
            steps += 1;
            assert!(steps <= budget, "simulation spins at {:?}", self.elapsed());
            if !self.step_until(end) {
                self.advance_to(end);
            }
        }
    }

    /// Advances to the next event (the earliest of both drivers' next turn, the
    /// network's next delivery, the next user) and processes it. False when nothing at
    /// all is scheduled.
    pub fn step(&mut self) -> bool {
        self.step_until(Duration::MAX)
    }

    fn step_until(&mut self, end: Duration) -> bool {
        let (t_client, t_server) = (self.client_wake, self.server_wake);
        let next = [t_client, t_server, self.net.next_event(), self.next_demand]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { return false };
        if next > end {
            self.advance_to(end);
            return true;
        }
        self.advance_to(next);
        self.stats.steps += 1;
        let now = self.net.elapsed();

        if let Some(ev) = self.net.pop_due() {
            self.stats.events += 1;
            self.process(ev);
            self.drain_wire();
        }
        if self.next_demand.is_some_and(|t| t <= now) {
            self.next_demand = None;
            self.user();
            self.schedule_demand();
            self.drain_wire();
        }
        if self.client_wake.is_some_and(|t| t <= now) {
            self.client_timeout();
            self.drain_wire();
        }
        if self.server_wake.is_some_and(|t| t <= now) {
            self.server_timeout();
            self.drain_wire();
        }
        true
    }

    /// A turn of one driver; when its next turn is due.
    fn turn(&mut self, end: End) -> Option<Duration> {
        let sleep = match end {
            End::Client => self.client.turn(),
            End::Server => self.server.turn(),
        };
        match sleep {
            Sleep::Until(at) => Some(self.net.clock.offset_of(at)),
            Sleep::Idle | Sleep::Stop => None,
        }
    }

    /// Moves the clock, counting the idle connections held meanwhile.
    fn advance_to(&mut self, to: Duration) {
        let dt = to.saturating_sub(self.net.elapsed());
        if !dt.is_zero() {
            let client = self.client_status().idle;
            // The server's idle count includes its settling connections (as Go's
            // Active() does).
            let server = self.server_status().idle;
            self.metrics.idle_for(dt, client, server);
        }
        self.net.clock.advance_to(to);
        self.net.wire.set_now(self.net.now());
    }

    fn schedule_demand(&mut self) {
        if self.demand <= 0.0 || self.next_demand.is_some() {
            return;
        }
        let mean = 1.0 / self.demand;
        let factor = if self.net.opts.poisson {
            // Exponential gaps: a Poisson process.
            -(1.0 - self.net.arrival_unit()).ln()
        } else {
            0.5 + self.net.arrival_unit()
        };
        let gap = Duration::from_secs_f64(mean * factor);
        self.next_demand = Some(self.net.elapsed() + gap.max(Duration::from_micros(1)));
    }

    /// Checks that both machines agree with the simulated network: idle, settling,
    /// in-flight and waiting counts on each side, bounds, and that every connection idle
    /// at the client with a live server end is settling, idle or taken there under the
    /// same id.
    pub fn check(&self) -> Result<(), String> {
        let net = &self.net;
        let cs = self.client_status();
        let ss = self.server_status();
        let server_settling = self.server.read(|m| m.settling());
        let expect = [
            (
                "client idle",
                cs.idle,
                net.count(|c| c.client == Side::Idle),
            ),
            (
                "client in flight",
                cs.in_flight,
                net.count(|c| c.ticket.is_some()),
            ),
            ("client waiting", cs.waiting, self.client_waiting.len()),
            (
                "server idle (settling included)",
                ss.idle,
                net.count(|c| matches!(c.server, Side::Idle | Side::Settling)),
            ),
            (
                "server settling",
                server_settling,
                net.count(|c| c.server == Side::Settling),
            ),
            (
                "server in flight",
                ss.in_flight,
                net.count(|c| c.hs.is_some()),
            ),
            ("server waiting", ss.waiting, self.server_waiting.len()),
        ];
        for (what, machine, sim) in expect {
            if machine != sim {
                return Err(format!("{what}: machine {machine}, network {sim}"));
            }
        }
        let cfg = self.client_config();
        if !(cfg.min_capacity()..=cfg.max_capacity()).contains(&cs.capacity) {
            return Err(format!("capacity {} out of bounds", cs.capacity));
        }
        if !(cfg.min_interval()..=cfg.max_interval()).contains(&cs.interval) {
            return Err(format!("interval {:?} out of bounds", cs.interval));
        }
        let max = self.server.read(|m| m.config().max_capacity());
        if ss.idle + ss.in_flight + server_settling > max {
            return Err("server above its maximum capacity".into());
        }
        for (s, c) in &net.conns {
            if c.client == Side::Idle
                && !c.server_closed
                && !matches!(c.server, Side::Settling | Side::Idle | Side::Taken)
            {
                return Err(format!("connection {s} idle at the client only"));
            }
            if c.client == Side::Idle && c.id.is_none() {
                return Err(format!("connection {s} idle at the client with no id"));
            }
        }
        let s = self.stats();
        if s.pairs_mismatched + s.double_handouts + s.overreads + s.timer_desyncs > 0 {
            return Err(format!("broken run: {s:?}"));
        }
        Ok(())
    }
}
