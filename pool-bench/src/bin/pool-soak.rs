//! Soak run: `cargo run --release -p pool-testkit --bin pool-soak -- --seconds 60 [--seed S]`.
//!
//! Progress goes to stderr; the last line of stdout is the summary
//! `soak: pairs=N mismatched=0 lost_bytes=0 leaked_fds=0 panics=0 faults=K`, and the
//! exit code is 1 when any defect counter is not zero (2 on bad arguments).
#![forbid(unsafe_code)]

use pool_testkit::soak::{run, SoakConfig};

fn main() {
    let mut cfg = SoakConfig::seconds(60);
    cfg.progress = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> u64 {
            match args.next().and_then(|v| v.parse().ok()) {
                Some(v) => v,
                None => {
                    eprintln!("{what} needs a number");
                    std::process::exit(2);
                }
            }
        };
        match a.as_str() {
            "--seconds" => cfg.duration = std::time::Duration::from_secs(num("--seconds")),
            "--seed" => cfg.seed = num("--seed"),
            "--workers" => cfg.workers = num("--workers") as usize,
            "--quiet" => cfg.progress = false,
            _ => {
                eprintln!("usage: pool-soak [--seconds N] [--seed S] [--workers W] [--quiet]");
                std::process::exit(2);
            }
        }
    }
    eprintln!("soak: {cfg:?}");
    let report = run(&cfg);
    eprintln!("soak: {report:?}");
    println!("{}", report.line());
    if !report.is_clean() {
        std::process::exit(1);
    }
}
