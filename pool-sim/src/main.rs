//! The adaptation scoreboard: every shipped scenario, one simulated hour each, for
//! each policy, the mean over seeds with its 95 % interval; a table on stdout with each
//! policy's paired verdict (win, tie or lose) per scenario and in total against the two
//! baselines, and, with `--json FILE`, the figures in the `pool-bench` format.
//!
//! The two baselines: `gorules` is the Go package's arithmetic on this crate's machine
//! (continuous top-up, many dials at once, back-off); `gobehaviour` is what the Go
//! package does (its rules, one dial at a time per round, a round lasting its fill plus
//! the interval, no back-off).
//!
//! ```text
//! pool-sim [--policy gorules|gobehaviour|demand|offered|default|all] [--scenario NAME|all] [--seed N] [--seeds K]
//!          [--length SECS] [--quick] [--jobs J] [--json FILE]
//!          [--scenario-file FILE]... [--arrivals-csv FILE]...
//! ```
//!
//! `--scenario-file FILE` runs the scenario in FILE (JSON, or CSV arrivals when its name
//! ends in `.csv`) instead of the shipped ones, and `--arrivals-csv FILE` a CSV list of
//! arrival timestamps whatever its name; both may be repeated. The format is in the docs
//! of `pool_sim::adapt::file`. A bad file is refused with what is wrong and where,
//! and exit status 2.
//!
//! `--quick`: five simulated minutes per scenario and two seeds, to iterate on a policy.
//!
//! `--seed N` runs the single seed N (whose intervals are infinite: every verdict is a
//! tie); otherwise seeds 1 to K (default 5). Both baselines run whenever another policy
//! does. `--policy default` (the default) runs them and the default policy, `offered`;
//! `--policy all` adds `demand`, the default before it. A policy beats another on a scenario only when the 95 %
//! interval of the per-seed differences of the share served at once excludes zero;
//! where that ties, the idle connection-seconds decide the same way, and otherwise it
//! is a tie.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pool_core::Adaptation;
use pool_sim::adapt::{
    file, json, policy, Board, Figure, Metric, Scenario, ScenarioResult, Scoreboard, Verdict,
};

struct Args {
    policy: String,
    scenario: String,
    seeds: Vec<u64>,
    length: Duration,
    jobs: usize,
    json: Option<String>,
    files: Vec<Scenario>,
}

/// The flags, read by hand rather than with clap: this binary ships in the published
/// `pool-sim` crate, and cargo has no dependencies for a binary alone, so clap would be
/// compiled by every user who takes the crate as a library for a dozen flags.
fn args() -> Result<Args, String> {
    let mut a = Args {
        policy: "default".into(),
        scenario: "all".into(),
        seeds: (1..=5).collect(),
        length: Duration::from_secs(3_600),
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        json: None,
        files: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--policy" => a.policy = val()?,
            "--scenario" => a.scenario = val()?,
            "--seed" => a.seeds = vec![num(val()?)?],
            "--seeds" => match num(val()?)? {
                0 => return Err("--seeds: at least 1".into()),
                k => a.seeds = (1..=k).collect(),
            },
            "--length" => a.length = Duration::from_secs(num(val()?)?),
            "--jobs" => a.jobs = num(val()?)? as usize,
            "--json" => a.json = Some(val()?),
            "--scenario-file" | "--arrivals-csv" => {
                let path = val()?;
                let p = std::path::Path::new(&path);
                let loaded = if flag == "--scenario-file" {
                    file::load(p)
                } else {
                    file::load_csv(p)
                };
                a.files
                    .push(loaded.map_err(|e| format!("scenario file {path}: {e}"))?);
            }
            "--quick" => {
                // A run to iterate with: five simulated minutes per scenario, 2 seeds.
                a.seeds = vec![1, 2];
                a.length = Duration::from_secs(300);
            }
            "-h" | "--help" => return Err(
                "usage: pool-sim [--policy gorules|gobehaviour|demand|offered|default|all] [--scenario NAME|all] \
                     [--seed N] [--seeds K] [--length SECS] [--quick] [--jobs J] [--json FILE] \
                     [--scenario-file FILE]... [--arrivals-csv FILE]..."
                    .into(),
            ),
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

fn row(out: &mut String, r: &ScenarioResult, vs: &[&ScenarioResult]) {
    let i = |m| r.interval(m).expect("every scenario has this figure");
    let verdict = vs
        .iter()
        .map(|b| {
            let v = |m| r.versus(b, m).map_or(Verdict::Tie, |p| p.verdict);
            format!(
                "{:<4} ({} / {})",
                r.verdict(b),
                v(Metric::ServedAtOncePct),
                v(Metric::IdleConnS)
            )
        })
        .collect::<Vec<_>>()
        .join(" | ");
    let line = format!(
        "{:<14} {:<11} {:>16} {:>8.1} {:>18} {:>20} {:>7.3} {:>12} {}",
        r.scenario,
        r.policy,
        format!("{:.2}", i(Metric::ServedAtOncePct)),
        i(Metric::WaitP50Ms).mean,
        format!("{:.1}", i(Metric::WaitP99Ms)),
        format!("{:.0}", i(Metric::IdleConnS)),
        i(Metric::DialsPerGet).mean,
        r.interval(Metric::RecoverS)
            .map_or_else(|| "-".into(), |x| format!("{x:.1}")),
        verdict,
    );
    let _ = writeln!(out, "{}", line.trim_end());
}

fn main() {
    let mut a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let known = |name: &str| policy(name).expect("a policy of the board");
    let mut policies = vec![known("gorules"), known("gobehaviour")];
    match a.policy.as_str() {
        "all" => {
            policies.push(known("demand"));
            policies.push(Adaptation::default());
        }
        "demand" => policies.push(known("demand")),
        "default" | "offered" => policies.push(Adaptation::default()),
        "gorules" | "gobehaviour" => {}
        other => {
            eprintln!(
                "unknown policy {other} (gorules, gobehaviour, demand, offered, default, all)"
            );
            std::process::exit(2);
        }
    }
    let from_files = !a.files.is_empty();
    let shipped = if a.files.is_empty() {
        Scenario::all(a.length)
    } else {
        std::mem::take(&mut a.files)
    };
    let scenarios: Vec<Scenario> = shipped
        .into_iter()
        .filter(|s| a.scenario == "all" || s.name == a.scenario)
        .collect();
    if scenarios.is_empty() {
        eprintln!("no scenario called {}", a.scenario);
        std::process::exit(2);
    }
    let n_scenarios = scenarios.len();
    let wall = Instant::now();
    let boards = Scoreboard::new()
        .scenarios(scenarios)
        .seeds(a.seeds.iter().copied())
        .jobs(a.jobs)
        .run_all(&policies);
    print!("{}", table(&boards));
    let length = if from_files {
        "their own length".to_owned()
    } else {
        format!("{:?}", a.length)
    };
    println!(
        "{n_scenarios} scenarios x {} seeds x {} policies of {length} simulated each in {:.1?} wall",
        a.seeds.len(),
        policies.len(),
        wall.elapsed()
    );
    if let Some(path) = &a.json {
        let doc = json(machine(&a), &all_figures(&boards));
        let text = serde_json::to_string_pretty(&doc).expect("json");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("writing {path}: {e}");
            std::process::exit(1);
        }
    }
}

/// The table: per scenario, each policy's means ± 95 % intervals, and for each policy
/// but the first its verdicts against the baselines before it (the first two boards);
/// then the totals.
fn table(boards: &[Board]) -> String {
    let mut out = format!(
        "{:<14} {:<11} {:>16} {:>8} {:>18} {:>20} {:>7} {:>12} {}\n",
        "scenario",
        "policy",
        "at once %",
        "p50 ms",
        "p99 ms",
        "idle conn·s",
        "dial/get",
        "recover s",
        "vs gorules | vs gobehaviour (at once / idle)"
    );
    let Some(first) = boards.first() else {
        return out;
    };
    let bases = &boards[..boards.len().min(2)];
    for k in 0..first.results.len() {
        for (p, b) in boards.iter().enumerate() {
            let vs: Vec<&ScenarioResult> =
                bases[..p.min(2)].iter().map(|b| &b.results[k]).collect();
            row(&mut out, &b.results[k], &vs);
        }
    }
    for (p, b) in boards.iter().enumerate().skip(1) {
        for base in &bases[..p.min(2)] {
            let (w, t, l) = b.tally(base);
            let _ = writeln!(
                out,
                "{} vs {}: {w} win, {t} tie, {l} lose over {} scenarios",
                b.policy,
                base.policy,
                b.results.len()
            );
            if let (Some(x), Some(y)) = (b.total(Metric::IdleConnS), base.total(Metric::IdleConnS))
            {
                let _ = writeln!(
                    out,
                    "all scenarios: idle connection-seconds {} {x:.0} vs {} {y:.0} ({:.3}x)",
                    b.policy,
                    base.policy,
                    x.mean / y.mean
                );
            }
        }
    }
    out
}

/// Every figure: each policy's per scenario (with the Go rules' beside it), and for
/// each policy but the first its total idle connection-seconds and its tally against
/// each baseline before it (`gorules`, `gobehaviour`).
fn all_figures(boards: &[Board]) -> Vec<Figure> {
    let mut figs = Vec::new();
    let Some((base, others)) = boards.split_first() else {
        return figs;
    };
    for (k, r) in base.results.iter().enumerate() {
        figs.extend(r.figures(None));
        for b in others {
            figs.extend(b.results[k].figures(Some(r)));
        }
    }
    let bases = &boards[..boards.len().min(2)];
    for (p, b) in boards.iter().enumerate().skip(1) {
        for (i, base) in bases[..p.min(2)].iter().enumerate() {
            base_figures(&mut figs, b, base, i == 0);
        }
    }
    figs
}

/// `b`'s total idle connection-seconds against `base`'s (`adapt_<b>_all_idle_conn_s`
/// against the first baseline, `adapt_<b>_vs_<base>_all_idle_conn_s` against another),
/// and its tally against it.
fn base_figures(figs: &mut Vec<Figure>, b: &Board, base: &Board, first: bool) {
    if let (Some(x), Some(y)) = (b.total(Metric::IdleConnS), base.total(Metric::IdleConnS)) {
        let name = if first {
            format!("adapt_{}_all_idle_conn_s", b.policy)
        } else {
            format!("adapt_{}_vs_{}_all_idle_conn_s", b.policy, base.policy)
        };
        figs.push(Figure {
            name: name.clone(),
            value: x.mean,
            unit: "conn*s",
            baseline: Some(y.mean),
        });
        figs.push(Figure {
            name: format!("{name}_ci95"),
            value: x.ci95,
            unit: "conn*s",
            baseline: None,
        });
    }
    let (w, t, l) = b.tally(base);
    for (what, n) in [("wins", w), ("ties", t), ("losses", l)] {
        figs.push(Figure {
            name: format!("adapt_{}_vs_{}_{what}", b.policy, base.policy),
            value: n as f64,
            unit: "scenarios",
            baseline: None,
        });
    }
}
