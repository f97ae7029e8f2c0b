//! The pool's benchmark: every figure beside a raw baseline measured in the same run.
//!
//! ```text
//! cargo run --release -p pool-bench --bin pool-bench -- --json bench.json [--quick]
//! ```
//!
//! Scenarios: fill (plain, TLS), fill over a 50 ms round trip, checkout throughput and
//! get latency, memory per idle pair, core operations, idle and down CPU, get latency
//! during sweeps, how soon a dead peer leaves the pool, adaptation to a flash crowd on
//! real sockets, idle at 4,096 and 16,384 pairs in two processes. `--quick` runs each
//! at a tenth of its size. `--only a,b` runs some scenarios (fill, rtt, checkout, mem,
//! core, cpu, sweep, dead, scale, adapt). See BENCHMARKS.md at the workspace root.
#![forbid(unsafe_code)]

/// With `--features dhat-heap`, every allocation is counted, so that the memory child
/// can write a heap profile (see `child::mem`).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

mod adapt;
mod checkout;
mod child;
mod core;
mod dead;
mod fill;
mod net;
mod scale;
mod sweep;
mod sys;

use std::time::{Duration, Instant};

use pool_bench::report::{self, Report};

/// Sizes of one run: full, or a tenth with `--quick`; scaled down further when the
/// descriptor limit is low.
#[derive(Debug)]
pub(crate) struct Sizes {
    pub(crate) fill_n: usize,
    pub(crate) fill_reps_plain: usize,
    pub(crate) fill_reps_tls: usize,
    pub(crate) rtt_n: usize,
    pub(crate) checkout_pool: usize,
    pub(crate) checkout: Duration,
    pub(crate) checkout_raw: Duration,
    pub(crate) latency_pool: usize,
    pub(crate) latency_samples: usize,
    pub(crate) mem_n: usize,
    pub(crate) core_ops: usize,
    pub(crate) cpu: Duration,
    pub(crate) cpu_pool: usize,
    /// Idle connections in the sweep scenario (both ends in this process).
    pub(crate) sweep_pool: usize,
    /// A short run (the flash crowd's quick trace).
    pub(crate) quick: bool,
}

impl Sizes {
    fn new(quick: bool, scale: f64) -> Self {
        let q = |full: usize| {
            let n = if quick { full / 10 } else { full };
            ((n as f64 * scale) as usize).max(8)
        };
        Self {
            fill_n: q(1000),
            fill_reps_plain: 7,
            fill_reps_tls: 5,
            rtt_n: q(1000),
            checkout_pool: q(1000),
            checkout: Duration::from_millis(if quick { 500 } else { 5000 }),
            checkout_raw: Duration::from_millis(if quick { 500 } else { 2000 }),
            latency_pool: q(2000),
            latency_samples: q(3000),
            mem_n: q(2000),
            core_ops: if quick { 100_000 } else { 1_000_000 },
            cpu: Duration::from_secs(if quick { 1 } else { 10 }),
            cpu_pool: q(1000),
            sweep_pool: q(8000),
            quick,
        }
    }
}

/// The scenarios, in the order they run.
const SCENARIOS: [&str; 10] = [
    "core", "fill", "rtt", "checkout", "mem", "cpu", "sweep", "dead", "scale", "adapt",
];

/// The pool's benchmark: every figure beside a raw baseline measured in the same run.
#[derive(clap::Parser)]
#[command(name = "pool-bench")]
struct Args {
    /// Writes the figures as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// Each scenario at a tenth of its size.
    #[arg(long)]
    quick: bool,
    /// Runs these scenarios only (comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = clap::builder::PossibleValuesParser::new(SCENARIOS))]
    only: Option<Vec<String>>,
}

type Scenario = fn(&Sizes, &mut Vec<report::Figure>) -> net::Res<()>;

fn main() {
    // `--child KIND ARGS...` is the bench starting itself for one measurement (see
    // `child`): a positional protocol between two copies of this binary, not a user's
    // command line, so it is read before clap and never shown in `--help`.
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--child") {
        if let Err(e) = child::child_main(&argv[1..]) {
            eprintln!("child error: {e}");
            std::process::exit(1);
        }
        return;
    }
    let args = <Args as clap::Parser>::parse();
    let nofile = sys::raise_nofile();
    // The largest scenario holds about 8,000 descriptors at once (get latency: a pool
    // of 2,000 pairs refilled while 1,000 taken pairs are held); scale down below that.
    let need = 9000.0;
    let scale = ((nofile as f64 - 300.0) / need).clamp(0.05, 1.0);
    if scale < 1.0 {
        eprintln!("RLIMIT_NOFILE is {nofile}: connection counts scaled by {scale:.2}");
    }
    let sizes = Sizes::new(args.quick, scale);
    let machine = sys::machine(args.quick, nofile, scale);
    let mut report = Report {
        machine,
        figures: Vec::new(),
    };
    let scenarios: [(&str, Scenario); SCENARIOS.len()] = [
        ("core", |s, o| {
            core::core(s, o);
            Ok(())
        }),
        ("fill", fill::fill),
        ("rtt", fill::rtt),
        ("checkout", checkout::checkout),
        ("mem", child::memory),
        ("cpu", child::cpu),
        ("sweep", sweep::sweep),
        ("dead", dead::dead),
        ("scale", scale::scale),
        ("adapt", adapt::adapt),
    ];
    debug_assert!(
        scenarios.iter().map(|s| s.0).eq(SCENARIOS),
        "--only names them"
    );
    let started = Instant::now();
    let mut failed = false;
    for (name, run) in scenarios {
        if let Some(only) = &args.only {
            if !only.iter().any(|o| o == name) {
                continue;
            }
        }
        let t = Instant::now();
        eprintln!("[{:>6.1}s] {name} ...", started.elapsed().as_secs_f64());
        if let Err(e) = run(&sizes, &mut report.figures) {
            eprintln!("scenario {name} failed: {e}");
            failed = true;
        }
        eprintln!("  {name} took {:.1}s", t.elapsed().as_secs_f64());
    }
    eprintln!("total {:.1}s", started.elapsed().as_secs_f64());
    println!("{}", report.table());
    if std::env::var_os("POOL_BENCH_MARKDOWN").is_some() {
        println!("{}", report.markdown());
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.json()).expect("json");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
        eprintln!("wrote {path}");
    }
    if failed {
        std::process::exit(1);
    }
}
