//! The adaptation scoreboard: every shipped scenario, one simulated hour each, for
//! each policy, medians over seeds; a table on stdout and, with `--json FILE`, the
//! figures in the `pool-bench` format.
//!
//! ```text
//! pool-sim [--policy gorules|demand|all] [--scenario NAME|all] [--seed N] [--seeds K]
//!          [--length SECS] [--quick] [--jobs J] [--json FILE]
//! ```
//!
//! `--quick`: five simulated minutes per scenario and two seeds, to iterate on a policy.
//!
//! `--seed N` runs the single seed N; otherwise seeds 1 to K (default 5). The Go rules
//! run whenever another policy does, as its baseline.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pool_core::Adaptation;
use pool_testkit::adapt::{figures, json, run_seeds, Figure, Scenario, Score};

struct Args {
    policy: String,
    scenario: String,
    seeds: Vec<u64>,
    length: Duration,
    jobs: usize,
    json: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        policy: "all".into(),
        scenario: "all".into(),
        seeds: (1..=5).collect(),
        length: Duration::from_secs(3_600),
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--policy" => a.policy = val()?,
            "--scenario" => a.scenario = val()?,
            "--seed" => a.seeds = vec![num(val()?)?],
            "--seeds" => a.seeds = (1..=num(val()?)?).collect(),
            "--length" => a.length = Duration::from_secs(num(val()?)?),
            "--jobs" => a.jobs = num(val()?)? as usize,
            "--json" => a.json = Some(val()?),
            "--quick" => {
                // A run to iterate with: five simulated minutes per scenario, 2 seeds.
                a.seeds = vec![1, 2];
                a.length = Duration::from_secs(300);
            }
            "-h" | "--help" => {
                return Err(
                    "usage: pool-sim [--policy gorules|demand|all] [--scenario NAME|all] \
                     [--seed N] [--seeds K] [--length SECS] [--quick] [--jobs J] [--json FILE]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn machine(a: &Args) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    serde_json::json!({
        "cpu": cpu,
        "cores": cores,
        "seeds": a.seeds,
        "simulated_s_per_scenario": a.length.as_secs(),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn row(out: &mut String, policy: &str, scenario: &str, s: &Score) {
    let _ = writeln!(
        out,
        "{scenario:<12} {policy:<8} {:>8.2} {:>8.1} {:>9.1} {:>12.0} {:>12.0} {:>8.3} {:>9}",
        s.served_at_once_pct,
        s.wait_p50_ms,
        s.wait_p99_ms,
        s.idle_conn_s_client,
        s.idle_conn_s_server,
        s.dials_per_get,
        s.recover_s
            .map_or_else(|| "-".into(), |r| format!("{r:.1}")),
    );
}

fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let mut policies: Vec<(&str, Adaptation)> = vec![("gorules", Adaptation::GoRules)];
    match a.policy.as_str() {
        "all" | "demand" => policies.push(("demand", Adaptation::by_name("demand").unwrap())),
        "gorules" => {}
        other => {
            eprintln!("unknown policy {other} (gorules, demand, all)");
            std::process::exit(2);
        }
    }
    let scenarios: Vec<Scenario> = Scenario::all(a.length)
        .into_iter()
        .filter(|s| a.scenario == "all" || s.name == a.scenario)
        .collect();
    if scenarios.is_empty() {
        eprintln!("no scenario called {}", a.scenario);
        std::process::exit(2);
    }
    let wall = Instant::now();
    let mut table = format!(
        "{:<12} {:<8} {:>8} {:>8} {:>9} {:>12} {:>12} {:>8} {:>9}\n",
        "scenario",
        "policy",
        "at once%",
        "p50 ms",
        "p99 ms",
        "idle c·s cli",
        "idle c·s srv",
        "dials/get",
        "recover s"
    );
    let mut figs: Vec<Figure> = Vec::new();
    let (mut idle_go, mut idle_other) = (0.0, 0.0);
    for sc in &scenarios {
        let t = Instant::now();
        let mut go: Option<Score> = None;
        for (name, p) in &policies {
            let s = run_seeds(p, sc, &a.seeds, a.jobs);
            row(&mut table, name, sc.name, &s);
            figs.extend(figures(name, sc.name, &s, go.as_ref()));
            if go.is_none() {
                go = Some(s);
                idle_go += s.idle_conn_s;
            } else {
                idle_other += s.idle_conn_s;
            }
        }
        eprintln!("{} done in {:.1?}", sc.name, t.elapsed());
    }
    if policies.len() > 1 {
        figs.push(Figure {
            name: "adapt_demand_all_idle_conn_s".into(),
            value: idle_other,
            unit: "conn*s",
            baseline: Some(idle_go),
        });
        let _ = writeln!(
            table,
            "all scenarios: idle connection-seconds demand {idle_other:.0} vs gorules {idle_go:.0} ({:.3}x)",
            idle_other / idle_go
        );
    }
    let _ = writeln!(
        table,
        "{} scenarios x {} seeds x {} policies of {:?} simulated each in {:.1?} wall",
        scenarios.len(),
        a.seeds.len(),
        policies.len(),
        a.length,
        wall.elapsed()
    );
    print!("{table}");
    if let Some(path) = &a.json {
        let doc = json(machine(&a), &figs);
        let text = serde_json::to_string_pretty(&doc).expect("json");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("writing {path}: {e}");
            std::process::exit(1);
        }
    }
}
