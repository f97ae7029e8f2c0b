//! Scenarios: a demand trace and a network, run on a [`SimPair`].

use std::f64::consts::PI;
use std::time::Duration;

use pool_core::{Adaptation, ClientConfig, ServerConfig};

use crate::sim::{Faults, SimOptions, SimPair};

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// Users a scenario with no outage and no step simulates at most (see
/// [`Scenario::all`]).
pub const STEADY_USERS: f64 = 150_000.0;

/// The longest the harder scenarios run (see [`Scenario::all`]): ten simulated minutes.
pub const HARDER_LENGTH: Duration = Duration::from_secs(600);

/// Demand over time: piecewise constant rates, in users (pairs) per simulated second.
/// Users arrive as a Poisson process within each piece.
#[derive(Clone, Debug, PartialEq)]
pub struct DemandTrace {
    /// `(how long, rate)` pieces, in order.
    pub pieces: Vec<(Duration, f64)>,
}

impl DemandTrace {
    /// One rate for `d`.
    pub fn constant(rate: f64, d: Duration) -> Self {
        Self {
            pieces: vec![(d, rate)],
        }
    }

    /// Appends a piece.
    pub fn then(mut self, d: Duration, rate: f64) -> Self {
        self.pieces.push((d, rate));
        self
    }

    /// `f(t)` sampled every `step` over `d`.
    pub fn sampled(d: Duration, step: Duration, f: impl Fn(f64) -> f64) -> Self {
        let n = (d.as_secs_f64() / step.as_secs_f64()).ceil() as u64;
        let pieces = (0..n)
            .map(|i| (step, f(i as f64 * step.as_secs_f64()).max(0.0)))
            .collect();
        Self { pieces }
    }

    /// The whole length.
    pub fn duration(&self) -> Duration {
        self.pieces.iter().map(|p| p.0).sum()
    }

    /// Users expected over the trace.
    pub fn expected_users(&self) -> f64 {
        self.pieces.iter().map(|(d, r)| d.as_secs_f64() * r).sum()
    }

    /// Each piece scaled in time by `k` (a shorter run with the same shape).
    pub fn time_scaled(&self, k: f64) -> Self {
        Self {
            pieces: self
                .pieces
                .iter()
                .map(|&(d, r)| (d.mul_f64(k).max(MS(100)), r))
                .collect(),
        }
    }
}

/// A server outage: every connect refused from `at` for `lasting`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outage {
    /// When it starts.
    pub at: Duration,
    /// How long it lasts.
    pub lasting: Duration,
}

/// A seeded demand trace plus a network: what a policy is scored on.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// A short name (`steady_100`, `flash_crowd`, ...), used in figure names.
    pub name: String,
    /// The demand.
    pub demand: DemandTrace,
    /// Latencies and handshake times.
    pub net: SimOptions,
    /// Faults throughout.
    pub faults: Faults,
    /// An outage, if any.
    pub outage: Option<Outage>,
    /// Server restarts: at each one's `at` the server loses every connection it holds
    /// and its port refuses connects for `lasting` ([`SimPair::restart_server`]).
    pub restarts: Vec<Outage>,
    /// The steps up (demand or service) after which recovery is timed, each with the
    /// end of the window in which it is timed.
    pub steps: Vec<(Duration, Duration)>,
    /// Users who arrive at these instants (from the start, in any order), on top of
    /// the demand trace: a recorded trace replayed, the same on every seed. Those at or
    /// after the end of the demand trace never arrive.
    pub arrivals: Vec<Duration>,
    /// The client's capacity bounds, `(min, max)`. The scoreboard's: 8 to 4,096.
    /// [`pair`](Self::pair) panics unless `1 <= min <= max`.
    pub capacity: (usize, usize),
}

/// The network of the scoreboard: the simulator's default timing (1 to 20 ms one way,
/// 5 to 40 ms of TLS), Poisson arrivals, no transcript, and room for every waiting
/// user.
pub fn lan() -> SimOptions {
    SimOptions {
        poisson: true,
        transcript: false,
        chunked_ids: false,
        oracle: false,
        max_waiting: 1_000_000,
        ..SimOptions::default()
    }
}

/// A wide-area network: 150 ms round trip (70 to 80 ms one way), TLS taking a round
/// trip more at the server, and the control channel on the same path.
pub fn wan() -> SimOptions {
    SimOptions {
        latency: (MS(70), MS(80)),
        tls_time: (MS(80), MS(160)),
        control_latency: (MS(70), MS(80)),
        ..lan()
    }
}

/// The client configuration of the scoreboard: capacity 8 to 4,096, the default
/// interval bounds (100 ms to 1 s), 512 dials at once (enough for 2,000 gets a second
/// at LAN latency, which the default of 64 is not) and `policy`.
pub fn client_config(policy: Adaptation) -> ClientConfig {
    client_config_with(policy, (8, 4_096))
}

/// [`client_config`] with other capacity bounds (`min` at least 1, `max` at least
/// `min`, as a scenario file is checked).
fn client_config_with(policy: Adaptation, (min, max): (usize, usize)) -> ClientConfig {
    ClientConfig::builder()
        .capacity(min, max)
        .parallelism(512)
        .adapt(policy)
        .build()
        .expect("valid scoreboard configuration")
}

/// The server configuration of the scoreboard: room for the client's maximum, and a
/// per-source pending quota as large as the client's 512 dials at once (the default of
/// 64 is sized for the default parallelism: above it the server would evict the one
/// client's own handshakes).
pub fn server_config() -> ServerConfig {
    ServerConfig::builder()
        .max_capacity(16_384)
        .admission(pool_core::AdmissionLimits {
            max_handshakes: 2_048,
            pending_per_source: Some(512),
            ..Default::default()
        })
        .build()
        .expect("valid scoreboard configuration")
}

impl Scenario {
    /// A scenario on the scoreboard's LAN and client, with no fault, outage, restart,
    /// step or scripted arrival: set the fields to add them.
    pub fn new(name: impl Into<String>, demand: DemandTrace) -> Self {
        Self {
            name: name.into(),
            demand,
            net: lan(),
            faults: Faults::none(),
            outage: None,
            restarts: Vec::new(),
            steps: Vec::new(),
            arrivals: Vec::new(),
            capacity: (8, 4_096),
        }
    }

    /// The shipped scenarios, each lasting `length` (one simulated hour on the
    /// scoreboard; the shapes scale with it, the flash crowd's and the outage's
    /// lengths do not), except that a steady one stops after [`STEADY_USERS`] users
    /// and the harder ones (`lossy_dials`, `microbursts`, `slow_tls`, `restart`,
    /// `wan_lossy`, `noisy_diurnal`) after [`HARDER_LENGTH`].
    pub fn all(length: Duration) -> Vec<Self> {
        let t = length.as_secs_f64();
        let half = length / 2;
        let mut out = vec![
            Self::new("steady_1", DemandTrace::constant(1.0, length)),
            Self::new("steady_100", DemandTrace::constant(100.0, length)),
            Self::new("steady_2000", DemandTrace::constant(2_000.0, length)),
            // One day compressed: from 5 a second at night to 400 at the peak.
            Self::new(
                "diurnal",
                DemandTrace::sampled(length, S(1), |x| {
                    5.0 + 395.0 * (1.0 - (2.0 * PI * x / t).cos()) / 2.0
                }),
            ),
            // From 10 a second to 1,000 for 60 s, back to 10.
            {
                let before = length.saturating_sub(S(60)) / 2;
                let after = length.saturating_sub(S(60) + before);
                let mut s = Self::new(
                    "flash_crowd",
                    DemandTrace::constant(10.0, before)
                        .then(S(60), 1_000.0)
                        .then(after, 10.0),
                );
                s.steps = vec![(before, before + S(60))];
                s
            },
            // 5 s at 300 a second, then 25 s of nothing, over and over.
            {
                let mut d = DemandTrace { pieces: Vec::new() };
                let mut steps = Vec::new();
                let mut at = Duration::ZERO;
                while at + S(30) <= length {
                    d = d.then(S(5), 300.0).then(S(25), 0.0);
                    steps.push((at, at + S(5)));
                    at += S(30);
                }
                let mut s = Self::new("on_off", d);
                s.steps = steps;
                s
            },
            // From 10 a second to 1,000, linearly.
            Self::new(
                "slow_ramp",
                DemandTrace::sampled(length, S(1), |x| 10.0 + 990.0 * x / t),
            ),
            // 100 a second; every connect refused for 30 s in the middle.
            {
                let mut s = Self::new("outage", DemandTrace::constant(100.0, length));
                s.outage = Some(Outage {
                    at: half,
                    lasting: S(30),
                });
                s.steps = vec![(half + S(30), length)];
                s
            },
            // 100 a second over a 150 ms round trip.
            {
                let mut s = Self::new("wan", DemandTrace::constant(100.0, length));
                s.net = wan();
                s
            },
        ];
        out.extend(Self::harder(length.min(HARDER_LENGTH)));
        out.retain(|s| !s.demand.pieces.is_empty());
        for s in &mut out {
            s.converge();
        }
        out
    }

    /// The harder scenarios, each lasting `length`: faults, bursts shorter
    /// than a round of most policies, slow handshakes, restarts, loss, noise. Every one
    /// is 100 users a second on average or less, at the scoreboard's LAN unless said.
    fn harder(length: Duration) -> Vec<Self> {
        let t = length.as_secs_f64();
        let mut out = Vec::new();
        // 100 a second; 2 % of the dials hang (the peer goes silent during TLS or in
        // the middle of the id) until the core's deadline aborts them (5 s).
        let mut s = Self::new("lossy_dials", DemandTrace::constant(100.0, length));
        s.faults.silence = 0.02;
        out.push(s);
        // 50 a second, and every 15 s one second at 20 times that.
        let mut d = DemandTrace { pieces: Vec::new() };
        let mut at = Duration::ZERO;
        while at + S(15) <= length {
            d = d.then(S(14), 50.0).then(S(1), 1_000.0);
            at += S(15);
        }
        out.push(Self::new("microbursts", d));
        // 100 a second; the server's TLS handshake takes 200 to 800 ms.
        let mut s = Self::new("slow_tls", DemandTrace::constant(100.0, length));
        s.net.tls_time = (MS(200), MS(800));
        out.push(s);
        // 100 a second; the server restarts at a third (its port refusing for 5 s) and
        // at two thirds (refusing for 15 s), losing every connection it holds.
        let mut s = Self::new("restart", DemandTrace::constant(100.0, length));
        s.restarts = vec![
            Outage {
                at: length / 3,
                lasting: S(5),
            },
            Outage {
                at: length * 2 / 3,
                lasting: S(15),
            },
        ];
        s.steps = s
            .restarts
            .iter()
            .map(|r| (r.at + r.lasting, r.at + r.lasting + S(60)))
            .collect();
        out.push(s);
        // 100 a second over the 150 ms WAN, 2 % of the packets lost once (each loss
        // costs a retransmission timeout, 200 ms to 1 s).
        let mut s = Self::new("wan_lossy", DemandTrace::constant(100.0, length));
        s.net = SimOptions {
            loss: 0.02,
            ..wan()
        };
        out.push(s);
        // One day compressed into the length, 5 to 300 a second, each second's rate
        // off the curve by a random factor from 0.5 to 1.5 (the same on every seed).
        let mut noise = crate::rng::SplitMix64::new(0xd1a1);
        let curve = DemandTrace::sampled(length, S(1), |x| {
            5.0 + 295.0 * (1.0 - (2.0 * PI * x / t).cos()) / 2.0
        });
        let pieces = curve
            .pieces
            .into_iter()
            .map(|(d, r)| (d, r * (0.5 + noise.unit())))
            .collect();
        out.push(Self::new("noisy_diurnal", DemandTrace { pieces }));
        out
    }

    /// A scenario with no outage and no step (whose lengths are absolute) simulates at
    /// most [`STEADY_USERS`] users: a steady one stops once it has seen them (its
    /// figures are shares of a stationary process, converged long before: steady_2000
    /// would otherwise simulate 7.2 million users an hour), and a shaped one (a ramp,
    /// a day) is compressed in time to that many, its shape kept. Never under a minute.
    fn converge(&mut self) {
        if self.outage.is_some() || !self.steps.is_empty() {
            return;
        }
        let users = self.demand.expected_users();
        if users <= STEADY_USERS {
            return;
        }
        let k = STEADY_USERS / users;
        let length = self.demand.duration();
        if length.mul_f64(k) < S(60) {
            let k = S(60).as_secs_f64() / length.as_secs_f64();
            if let [(d, _)] = &mut self.demand.pieces[..] {
                *d = d.mul_f64(k);
            } else {
                self.demand = self.demand.time_scaled(k);
            }
            return;
        }
        match &mut self.demand.pieces[..] {
            [(d, _)] => *d = d.mul_f64(k),
            _ => self.demand = self.demand.time_scaled(k),
        }
    }

    /// The shipped scenario called `name`, lasting `length`.
    pub fn named(name: &str, length: Duration) -> Option<Self> {
        Self::all(length).into_iter().find(|s| s.name == name)
    }

    /// The pair this scenario runs on, with `policy` at the client.
    pub fn pair(&self, policy: Adaptation, seed: u64) -> SimPair {
        SimPair::with_options(
            seed,
            client_config_with(policy, self.capacity),
            server_config(),
            self.faults,
            self.net.clone(),
        )
    }

    /// Runs the scenario on `sim`, calling `each` after every piece of the trace.
    pub fn drive(&self, sim: &mut SimPair, mut each: impl FnMut(&SimPair)) {
        #[derive(Clone, Copy)]
        enum Edge {
            Down,
            Up,
            Restart(Duration),
            User,
        }
        let mut at = sim.elapsed();
        let start = at;
        let mut all = Vec::new();
        if let Some(o) = self.outage {
            all.extend([(o.at, Edge::Down), (o.at + o.lasting, Edge::Up)]);
        }
        all.extend(
            self.restarts
                .iter()
                .map(|r| (r.at, Edge::Restart(r.lasting))),
        );
        all.extend(self.arrivals.iter().map(|&t| (t, Edge::User)));
        // Stable: at one instant, faults before users.
        all.sort_by_key(|e| e.0);
        let mut next = all.iter().peekable();
        for &(d, rate) in &self.demand.pieces {
            sim.set_demand(rate);
            let end = at + d;
            // Outage edges, restarts and scripted users inside this piece.
            while let Some(&(t, edge)) = next.next_if(|(t, _)| start + *t < end) {
                if start + t > at {
                    sim.run_for(start + t - at);
                    at = start + t;
                }
                match edge {
                    Edge::Down => sim.set_faults(Faults {
                        connect_refused: 1.0,
                        ..self.faults
                    }),
                    Edge::Up => sim.set_faults(self.faults),
                    Edge::Restart(down) => sim.restart_server(down),
                    Edge::User => sim.user_now(),
                }
            }
            sim.run_for(end - at);
            at = end;
            each(sim);
        }
    }
}
