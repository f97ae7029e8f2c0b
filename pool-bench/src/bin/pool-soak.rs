//! Soak run: `cargo run --release -p pool-bench --bin pool-soak -- --seconds 60 [--seed S]`.
//!
//! Progress goes to stderr; the last line of stdout is the summary
//! `soak: pairs=N mismatched=0 lost_bytes=0 leaked_fds=0 panics=0 faults=K`, and the
//! exit code is 1 when any defect counter is not zero (2 on bad arguments).
#![forbid(unsafe_code)]

use pool_testkit::soak::{run, SoakConfig};

/// The soak runner: pairs through the fault proxy under random faults, every byte
/// checked, for as long as asked.
#[derive(clap::Parser)]
#[command(name = "pool-soak")]
struct Args {
    /// How long to run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The seed of the fault schedule and the payloads (a failing run replays from it).
    #[arg(long)]
    seed: Option<u64>,
    /// Workers taking pairs at once.
    #[arg(long)]
    workers: Option<usize>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    let mut cfg = SoakConfig::seconds(args.seconds);
    cfg.progress = !args.quiet;
    if let Some(seed) = args.seed {
        cfg.seed = seed;
    }
    if let Some(workers) = args.workers {
        cfg.workers = workers;
    }
    eprintln!("soak: {cfg:?}");
    let report = run(&cfg);
    eprintln!("soak: {report:?}");
    println!("{}", report.line());
    if !report.is_clean() {
        std::process::exit(1);
    }
}
