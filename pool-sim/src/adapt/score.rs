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

/// One figure of the `pool-bench` JSON format.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// `adapt_<policy>_<scenario>_<metric>[_ci95]`.
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// The baseline policy's value, for another policy's figures.
    pub baseline: Option<f64>,
}

impl Figure {
    /// `value / baseline`.
    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b != 0.0).map(|b| self.value / b)
    }
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
