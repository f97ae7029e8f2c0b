//! A flash crowd on real sockets, and the simulator's prediction of the same trace.
//!
//! Users arrive open loop, evenly spaced: `base` pairs a second, then a step to
//! `step` pairs a second. Each arrival does what a tunnel does: a server `get`, then
//! the client's `get` by that id, through a tokio [`ClientPool`] or a
//! [`ThreadClientPool`]. A pair is *at once* when both gets are done within
//! `ready_within` of the arrival (2 ms: no refill can happen in that time on this
//! machine, so the connection was idle on both sides). The figures cover the last
//! `window` of the step, once the adaptation policy has had time to react.
//!
//! [`predict`] runs the same trace on the simulator ([`SimPair`]), whose pools run the
//! same driver protocol code: what the scoreboard promises, next to what the sockets
//! deliver.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_core::{ClientConfig, ConnId, ServerConfig};
use pool_threads::ThreadClientPool;
use pool_tokio::{ClientPool, ServerPool};

use pool_sim::sim::{Faults, SimOptions, SimPair};

/// An open-loop step of demand.
#[derive(Clone, Debug)]
pub struct FlashTrace {
    /// Pairs a second before the step.
    pub base: f64,
    /// How long before the step.
    pub before: Duration,
    /// Pairs a second during the step.
    pub step: f64,
    /// How long the step lasts (the run ends with it).
    pub during: Duration,
    /// The figures cover the last `window` of the step.
    pub window: Duration,
    /// A pair done within this of its arrival counts as served at once.
    pub ready_within: Duration,
    /// Each get's timeout.
    pub get_timeout: Duration,
}

impl FlashTrace {
    /// The trace of the measurement that found the default policy blind on real
    /// sockets: 20 a second for 3 s, then 500 a second for 6 s, figures over the last
    /// 4 s, 2 ms for "at once", 3 s get timeouts.
    pub fn step_20_to_500() -> Self {
        Self {
            base: 20.0,
            before: Duration::from_secs(3),
            step: 500.0,
            during: Duration::from_secs(6),
            window: Duration::from_secs(4),
            ready_within: Duration::from_millis(2),
            get_timeout: Duration::from_secs(3),
        }
    }

    /// A shorter run of the same step, for tests: 1 s before, 3 s during, the last
    /// 2 s counted.
    pub fn quick() -> Self {
        Self {
            before: Duration::from_secs(1),
            during: Duration::from_secs(3),
            window: Duration::from_secs(2),
            ..Self::step_20_to_500()
        }
    }

    /// The arrival offsets, evenly spaced at each rate.
    pub fn arrivals(&self) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut push = |from: Duration, len: Duration, rate: f64| {
            let n = (rate * len.as_secs_f64()).round() as u64;
            for i in 0..n {
                out.push(from + Duration::from_secs_f64(i as f64 / rate));
            }
        };
        push(Duration::ZERO, self.before, self.base);
        push(self.before, self.during, self.step);
        out
    }

    /// When the counted window starts.
    pub fn window_start(&self) -> Duration {
        (self.before + self.during).saturating_sub(self.window)
    }

    /// The whole trace.
    pub fn length(&self) -> Duration {
        self.before + self.during
    }
}

/// What a run of a [`FlashTrace`] delivered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlashReport {
    /// Pairs that arrived in the window.
    pub pairs: u64,
    /// Of them, served at once.
    pub at_once: u64,
    /// Of them, failed (a get timed out or failed).
    pub failed: u64,
    /// Failed pairs over the whole run.
    pub failed_all: u64,
    /// The client's capacity just before the step.
    pub capacity_before: usize,
    /// The client's highest capacity during the run.
    pub capacity_peak: usize,
}

impl FlashReport {
    /// Pairs served at once, in percent of the window's pairs.
    pub fn at_once_pct(&self) -> f64 {
        if self.pairs == 0 {
            return 100.0;
        }
        100.0 * self.at_once as f64 / self.pairs as f64
    }
}

/// The client end a run drives.
#[derive(Clone, Debug)]
pub enum Client {
    /// A tokio client pool.
    Tokio(ClientPool),
    /// A plain-threads client pool; its gets run on tokio's blocking threads.
    Threads(Arc<ThreadClientPool>),
}

impl Client {
    fn capacity(&self) -> usize {
        match self {
            Self::Tokio(p) => p.capacity(),
            Self::Threads(p) => p.status().capacity,
        }
    }

    async fn get(&self, id: ConnId, timeout: Duration) -> bool {
        match self {
            Self::Tokio(p) => p.get_timeout(id, timeout).await.is_ok(),
            Self::Threads(p) => {
                let p = p.clone();
                let got = tokio::task::spawn_blocking(move || p.get(id, timeout).is_ok());
                got.await.unwrap_or(false)
            }
        }
    }
}

/// One arrival's outcome: its offset, whether it was at once, whether it failed.
type Outcome = (Duration, bool, bool);

/// Plays `trace` against `server` and `client`, both already warm (let the client fill
/// its minimum first). Bounded: every arrival is spawned at its time and ends within
/// two get timeouts; the run ends when the last one has.
pub async fn run(trace: &FlashTrace, server: &ServerPool, client: &Client) -> FlashReport {
    let start = tokio::time::Instant::now();
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let capacity = Arc::new(Mutex::new((0usize, client.capacity())));
    let sampler = {
        let (client, capacity, trace) = (client.clone(), capacity.clone(), trace.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while start.elapsed() < trace.length() {
                tick.tick().await;
                let c = client.capacity();
                let mut cap = capacity.lock().unwrap_or_else(|e| e.into_inner());
                cap.1 = cap.1.max(c);
                if start.elapsed() < trace.before {
                    cap.0 = c;
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for at in trace.arrivals() {
        tokio::time::sleep_until(start + at).await;
        let (server, client, outcomes) = (server.clone(), client.clone(), outcomes.clone());
        let (timeout, within) = (trace.get_timeout, trace.ready_within);
        tasks.push(tokio::spawn(async move {
            let began = Instant::now();
            let ok = match server.get_timeout(timeout).await {
                Ok((id, _conn)) => client.get(id, timeout).await,
                Err(_) => false,
            };
            let quick = ok && began.elapsed() <= within;
            let mut o = outcomes.lock().unwrap_or_else(|e| e.into_inner());
            o.push((at, quick, !ok));
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = sampler.await;
    let outcomes = outcomes.lock().unwrap_or_else(|e| e.into_inner());
    let (capacity_before, capacity_peak) = *capacity.lock().unwrap_or_else(|e| e.into_inner());
    tally(trace, &outcomes, capacity_before, capacity_peak)
}

fn tally(trace: &FlashTrace, outcomes: &[Outcome], before: usize, peak: usize) -> FlashReport {
    let from = trace.window_start();
    let mut r = FlashReport {
        capacity_before: before,
        capacity_peak: peak,
        ..FlashReport::default()
    };
    for &(at, quick, failed) in outcomes {
        r.failed_all += u64::from(failed);
        if at >= from {
            r.pairs += 1;
            r.at_once += u64::from(quick);
            r.failed += u64::from(failed);
        }
    }
    r
}

/// Loopback as the simulator sees it: sub-millisecond latencies, a plaintext
/// handshake, the control channel in the same process.
pub fn loopback() -> SimOptions {
    let us = Duration::from_micros;
    SimOptions {
        latency: (us(30), us(150)),
        tls_time: (us(20), us(100)),
        control_latency: (us(5), us(50)),
        max_waiting: 1_000_000,
        transcript: false,
        ..SimOptions::default()
    }
}

/// The simulator's prediction of `trace` with these configurations on loopback: the
/// share of users whose server get was served at once in the window (in the
/// simulator the client's end of a settled connection is idle already), and the
/// failed gets (of the whole run: the simulator does not split them by time).
/// Whole seconds only: the window must start on a second.
pub fn predict(
    trace: &FlashTrace,
    client: ClientConfig,
    server: ServerConfig,
    seed: u64,
) -> FlashReport {
    let opts = SimOptions {
        server_get_timeout: trace.get_timeout,
        client_get_timeout: trace.get_timeout,
        ..loopback()
    };
    let mut sim = SimPair::with_options(seed, client, server, Faults::none(), opts);
    // Warm: the client fills its minimum before the first user, as on sockets.
    let warm = Duration::from_secs(1);
    sim.run_for(warm);
    sim.set_demand(trace.base);
    sim.run_for(trace.before);
    let capacity_before = sim.client_status().capacity;
    sim.set_demand(trace.step);
    let mut peak = capacity_before;
    let mut left = trace.during;
    while !left.is_zero() {
        let d = left.min(Duration::from_millis(20));
        sim.run_for(d);
        left -= d;
        peak = peak.max(sim.client_status().capacity);
    }
    let m = sim.metrics();
    let from = (warm + trace.window_start()).as_secs() as usize;
    let (mut pairs, mut at_once) = (0u64, 0u64);
    for &(n, quick) in m.per_second.iter().skip(from) {
        pairs += u64::from(n);
        at_once += u64::from(quick);
    }
    let s = sim.stats();
    let failed_all = s.pairs_failed_server + s.pairs_failed_client + s.demand_dropped;
    FlashReport {
        pairs,
        at_once,
        // Not split by time in the simulator: the whole run's, an upper bound.
        failed: failed_all,
        failed_all,
        capacity_before,
        capacity_peak: peak,
    }
}
