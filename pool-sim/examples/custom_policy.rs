//! Testing your own adaptation policy: a policy of about 30 lines, checked against the
//! laws every policy must keep, then ranked against the default policy and the Go rules
//! on the quick scoreboard (every shipped scenario, five simulated minutes, seeds 1 and
//! 2).
//!
//! ```text
//! cargo run --release -p pool-sim --example custom_policy
//! ```

use std::time::Instant;

use pool_core::{Adapt, Adaptation, Decision, Observed, RoundInput};
use pool_sim::adapt::{check_laws, LawOptions, Metric, Scoreboard};

/// Holds twice what the measured dial latency needs at the demand rate, plus four: the
/// rate follows a rise within about a second and a fall within about ten, and the
/// capacity moves only when the need leaves a band from 3/4 of it to all of it.
#[derive(Clone, Debug, Default)]
struct Headroom {
    gets: u32,
    rate: f64,
    latency: f64,
    last: Option<Instant>,
}

impl Adapt for Headroom {
    fn name(&self) -> &str {
        "headroom"
    }
    fn clone_box(&self) -> Box<dyn Adapt> {
        Box::new(self.clone())
    }
    fn observe(&mut self, what: Observed, _now: Instant) {
        match what {
            Observed::Get { .. } => self.gets += 1,
            Observed::Dialed { took } => self.latency += 0.1 * (took.as_secs_f64() - self.latency),
            _ => {}
        }
    }
    fn round(&mut self, r: &RoundInput, now: Instant) -> Decision {
        let dt = self
            .last
            .replace(now)
            .map_or(0.0, |t| (now - t).as_secs_f64());
        if dt > 0.0 {
            let seen = f64::from(std::mem::take(&mut self.gets)) / dt;
            let tau = if seen > self.rate { 1.0 } else { 10.0 };
            self.rate += (seen - self.rate) * (dt / tau).min(1.0);
        }
        let need = (self.rate * (self.latency + 0.03) * 2.0 + 4.0).ceil() as usize;
        let capacity = match need.max(r.min_capacity) {
            _ if self.rate < 0.01 => r.min_capacity,
            n if n > r.capacity || n < r.capacity * 3 / 4 => n,
            _ => r.capacity,
        };
        Decision {
            capacity,
            interval: r.min_interval,
        }
    }
}

fn main() {
    let mine = Adaptation::custom(Headroom::default());
    // A policy that breaks a law is not worth ranking: say which, and fail.
    if let Err(e) = check_laws(&mine, LawOptions::quick()) {
        eprintln!("headroom breaks a law: {e}");
        std::process::exit(1);
    }
    println!("headroom keeps the laws");
    let policies = [
        mine,
        Adaptation::default(),
        Adaptation::GoRules(Default::default()),
    ];
    let boards = Scoreboard::quick().run_all(&policies);
    let [mine, default, go] = &boards[..] else {
        unreachable!("one board per policy")
    };
    println!(
        "{:<14} {:>30} {:>30} {:>30}  vs default / vs gorules",
        "scenario", "headroom at once % · idle c·s", "default (offered)", "gorules"
    );
    for (k, r) in mine.results.iter().enumerate() {
        let cell = |r: &pool_sim::adapt::ScenarioResult| {
            let at_once = r.interval(Metric::ServedAtOncePct).expect("a share");
            let idle = r.interval(Metric::IdleConnS).expect("idle conn-s");
            format!("{at_once:.2} · {idle:.0}")
        };
        let (d, g) = (&default.results[k], &go.results[k]);
        println!(
            "{:<14} {:>30} {:>30} {:>30}  {} / {}",
            r.scenario,
            cell(r),
            cell(d),
            cell(g),
            r.verdict(d),
            r.verdict(g)
        );
    }
    for other in [default, go] {
        let (w, t, l) = mine.tally(other);
        println!("headroom vs {}: {w} win, {t} tie, {l} lose", other.policy);
    }
}
