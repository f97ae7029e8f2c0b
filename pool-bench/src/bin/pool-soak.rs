//! Soak run: `cargo run --release -p pool-bench --bin pool-soak -- --seconds 60
//! [--seed S] [--transport tcp,quic] [--json FILE]`.
//!
//! Each transport soaks in turn for the given time: the TCP pools (TLS mode 1) through
//! the TCP fault proxy, then the QUIC pools through the UDP fault proxy
//! (`pool_testkit::quic_soak`). Progress goes to stderr; stdout ends with the
//! counters of both side by side, then one summary line per transport,
//! `soak: pairs=N mismatched=0 lost_bytes=0 leaked_fds=0 panics=0 faults=K` and
//! `soak_quic: ...`. The exit code is 1 when any defect counter is not zero (2 on bad
//! arguments). `--json FILE` writes every counter as a figure in the pool-bench format
//! (`soak_pairs`, `soak_lost_bytes`, ..., and `soak_pairs_quic`, ...).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use pool_bench::report::{Figure, Report};
use pool_testkit::soak::{columns, run, SoakConfig, SoakReport};

/// The soak runner: pairs through a fault proxy under random faults, every byte
/// checked, for as long as asked, on each transport.
#[derive(clap::Parser)]
#[command(name = "pool-soak")]
struct Args {
    /// How long to run each transport.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The seed of the fault schedule and the payloads (a failing run replays from it).
    #[arg(long)]
    seed: Option<u64>,
    /// Workers taking pairs at once.
    #[arg(long)]
    workers: Option<usize>,
    /// The pools to soak, in this order (comma separated): `tcp`, `quic`.
    #[arg(long, default_value = "tcp,quic", value_delimiter = ',')]
    transport: Vec<String>,
    /// Writes every counter as pool-bench JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() {
    let args = <Args as clap::Parser>::parse();
    if let Some(t) = args
        .transport
        .iter()
        .find(|t| !["tcp", "quic"].contains(&t.as_str()))
    {
        eprintln!("--transport: `{t}` is not tcp or quic");
        std::process::exit(2);
    }
    let mut cfg = SoakConfig::seconds(args.seconds);
    cfg.progress = !args.quiet;
    if let Some(seed) = args.seed {
        cfg.seed = seed;
    }
    if let Some(workers) = args.workers {
        cfg.workers = workers;
    }
    eprintln!("soak: {cfg:?}");
    let (mut tcp, mut quic) = (None, None);
    for t in &args.transport {
        if t == "tcp" {
            let r = run(&cfg);
            eprintln!("soak: {r:?}");
            tcp = Some(r);
        } else {
            let r = pool_testkit::quic_soak::run(&cfg);
            eprintln!("soak_quic: {r:?}");
            quic = Some(r);
        }
    }
    print!("{}", columns(tcp.as_ref(), quic.as_ref()));
    let runs = [(tcp, "soak", ""), (quic, "soak_quic", "_quic")];
    let mut figures = Vec::new();
    for (report, label, suffix) in &runs {
        if let Some(r) = report {
            println!("{}", r.line_labelled(label));
            figures.extend(figures_of(r, suffix, args.seconds));
        }
    }
    if let Some(path) = &args.json {
        let report = Report {
            machine: pool_bench::report::machine(false),
            figures,
        };
        let text = serde_json::to_string_pretty(&report.json()).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("--json {}: {e}", path.display());
            std::process::exit(2);
        }
    }
    if runs
        .iter()
        .any(|(r, _, _)| r.as_ref().is_some_and(|r| !r.is_clean()))
    {
        std::process::exit(1);
    }
}

/// Every counter of a run as a figure named `soak_<counter><suffix>`.
fn figures_of(r: &SoakReport, suffix: &str, seconds: u64) -> Vec<Figure> {
    r.counters()
        .iter()
        .map(|(name, value)| {
            let unit = if *name == "lost_bytes" { "B" } else { "count" };
            Figure::alone(&format!("soak_{name}{suffix}"), *value as f64, unit)
                .note(format!("{seconds} s under random faults"))
        })
        .collect()
}
