//! Scores of a policy on a scenario, and the scoreboard's figures.

use std::time::Duration;

use pool_core::Adaptation;

use super::scenario::Scenario;

/// What one run of a policy on a scenario scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Score {
    /// Share of users whose server get was answered at once, in percent.
    pub served_at_once_pct: f64,
    /// Median wait of a server get (zero when served at once, the timeout when it
    /// failed), in ms.
    pub wait_p50_ms: f64,
    /// 99th percentile of the same, in ms.
    pub wait_p99_ms: f64,
    /// Idle connection-seconds, client and server together.
    pub idle_conn_s: f64,
    /// Idle connection-seconds at the client.
    pub idle_conn_s_client: f64,
    /// Idle connection-seconds at the server.
    pub idle_conn_s_server: f64,
    /// Dials per served get.
    pub dials_per_get: f64,
    /// Mean over the scenario's steps of the seconds until 95% of each second's users
    /// are served at once, three seconds in a row (the window's length when never);
    /// `None` for scenarios without steps.
    pub recover_s: Option<f64>,
}

/// Runs `policy` on `scenario` with `seed` and scores it. Panics if the simulated
/// pair breaks one of its own invariants (a mismatched pair, a double handout).
pub fn run(policy: &Adaptation, scenario: &Scenario, seed: u64) -> Score {
    let mut sim = scenario.pair(policy.clone(), seed);
    scenario.drive(&mut sim, |_| {});
    if let Err(e) = sim.check() {
        panic!("{} on {} seed {seed}: {e}", policy.name(), scenario.name);
    }
    let m = sim.metrics();
    let served = m.at_once + m.waited;
    let recover: Vec<f64> = scenario
        .steps
        .iter()
        .map(|&(from, until)| {
            m.recovery(from, until, 0.95, 3)
                .unwrap_or((until - from).as_secs_f64())
        })
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Score {
        served_at_once_pct: 100.0 * m.served_at_once_share(),
        wait_p50_ms: ms(m.wait_quantile(0.5)),
        wait_p99_ms: ms(m.wait_quantile(0.99)),
        idle_conn_s: m.idle_conn_secs(),
        idle_conn_s_client: m.idle_conn_secs_client,
        idle_conn_s_server: m.idle_conn_secs_server,
        dials_per_get: sim.stats().dials as f64 / served.max(1) as f64,
        recover_s: (!recover.is_empty())
            .then(|| recover.iter().sum::<f64>() / recover.len() as f64),
    }
}

/// The median of each figure over the runs (runs of a scenario share its steps).
pub fn median(scores: &[Score]) -> Score {
    fn med(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return f64::NAN;
        }
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }
    let f = |g: fn(&Score) -> f64| med(scores.iter().map(g).collect());
    Score {
        served_at_once_pct: f(|s| s.served_at_once_pct),
        wait_p50_ms: f(|s| s.wait_p50_ms),
        wait_p99_ms: f(|s| s.wait_p99_ms),
        idle_conn_s: f(|s| s.idle_conn_s),
        idle_conn_s_client: f(|s| s.idle_conn_s_client),
        idle_conn_s_server: f(|s| s.idle_conn_s_server),
        dials_per_get: f(|s| s.dials_per_get),
        recover_s: scores
            .first()
            .and_then(|s| s.recover_s)
            .map(|_| med(scores.iter().filter_map(|s| s.recover_s).collect())),
    }
}

/// Runs `policy` on `scenario` for each seed (on up to `jobs` threads) and returns
/// the median score.
pub fn run_seeds(policy: &Adaptation, scenario: &Scenario, seeds: &[u64], jobs: usize) -> Score {
    let jobs = jobs.max(1);
    let mut scores = Vec::with_capacity(seeds.len());
    for chunk in seeds.chunks(jobs) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&seed| s.spawn(move || run(policy, scenario, seed)))
                .collect();
            for h in handles {
                scores.push(h.join().expect("a scenario run panicked"));
            }
        });
    }
    median(&scores)
}

/// One figure of the `pool-bench` JSON format.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// `adapt_<policy>_<scenario>_<metric>`.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// The Go rules' value, for another policy's figures.
    pub baseline: Option<f64>,
}

impl Figure {
    /// `value / baseline`.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b != 0.0).map(|b| self.value / b)
    }
}

/// The figures of one (policy, scenario) score; `baseline` is the Go rules' score on
/// the same scenario, for the figures of another policy.
pub fn figures(policy: &str, scenario: &str, s: &Score, baseline: Option<&Score>) -> Vec<Figure> {
    let name = |metric: &str| format!("adapt_{policy}_{scenario}_{metric}");
    let mut out = Vec::new();
    let mut push = |metric: &str, unit, get: fn(&Score) -> Option<f64>| {
        if let Some(value) = get(s) {
            out.push(Figure {
                name: name(metric),
                value,
                unit,
                baseline: baseline.and_then(get),
            });
        }
    };
    push("served_at_once_pct", "%", |s| Some(s.served_at_once_pct));
    push("wait_p99_ms", "ms", |s| Some(s.wait_p99_ms));
    push("idle_conn_s", "conn*s", |s| Some(s.idle_conn_s));
    push("dials_per_get", "dials", |s| Some(s.dials_per_get));
    push("recover_s", "s", |s| s.recover_s);
    out
}

/// The `pool-bench` JSON document: `{"machine": {...}, "figures": [...]}`.
pub fn json(machine: serde_json::Value, figures: &[Figure]) -> serde_json::Value {
    let num = |v: f64| {
        let r = (v * 1000.0).round() / 1000.0;
        serde_json::Number::from_f64(r).map_or(serde_json::Value::Null, serde_json::Value::Number)
    };
    let figures: Vec<_> = figures
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name,
                "value": num(f.value),
                "unit": f.unit,
                "baseline": f.baseline.map_or(serde_json::Value::Null, num),
                "ratio": f.ratio().map_or(serde_json::Value::Null, num),
            })
        })
        .collect();
    serde_json::json!({ "machine": machine, "figures": figures })
}
