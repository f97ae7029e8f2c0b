//! `pool-attack`: the attack suite at full size. Prints a table and, with
//! `--json FILE`, writes the figures in `pool-bench`'s format.
//!
//! ```text
//! cargo run --release -p pool-bench --bin pool-attack -- --json attack.json
//! cargo run --release -p pool-bench --bin pool-attack -- --quick
//! ONLY=slowloris cargo run --release -p pool-bench --bin pool-attack   # one crowd attack
//! ```

use std::time::Duration;

use pool_bench::report::{machine, Figure, Report};
use pool_testkit::attack::{self, Crowd, Scale};
use pool_tokio::TlsMode;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The attacks on a tunnel port at full size, each figure beside the same checkouts
/// with no attacker.
#[derive(clap::Parser)]
#[command(name = "pool-attack")]
struct Args {
    /// Attacks at the reliability tests' scale.
    #[arg(long)]
    quick: bool,
    /// Writes the figures in pool-bench's JSON format to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let Args { quick, json } = <Args as clap::Parser>::parse();
    let _ = pool_testkit::process::raise_nofile();
    let scale = if quick { Scale::quick() } else { Scale::full() };
    let mut figures = Vec::new();
    for a in [
        Crowd::Silent,
        Crowd::TlsSilent,
        Crowd::Slowloris,
        Crowd::Flood,
    ] {
        if std::env::var("ONLY").is_ok_and(|o| o != a.name()) {
            continue;
        }
        let mode = match a {
            Crowd::Silent | Crowd::Flood => TlsMode::Off,
            _ => TlsMode::SelfSigned,
        };
        for with_key in [true, false] {
            let k = if with_key { "key" } else { "nokey" };
            let base = attack::baseline_fill(mode, with_key, scale).await?;
            let r = attack::crowd(a, with_key, scale).await?;
            eprintln!("{} {k}: {r:?}", a.name());
            let name = |m: &str| format!("attack_{}_{k}_{m}", a.name());
            figures.push(
                Figure::alone(
                    &name("strangers_admitted"),
                    r.strangers_admitted as f64,
                    "conns",
                )
                .note(format!(
                    "most idle per stranger source {}",
                    r.max_per_source
                )),
            );
            let fill = r.fill.map_or(f64::INFINITY, ms);
            figures.push(
                Figure::vs(&name("fill_ratio"), fill, "ms", ms(base))
                    .note(format!("fill of {} vs no attack", scale.capacity)),
            );
            figures.push(
                Figure::alone(&name("served_pct"), r.served_pct, "%").note(format!(
                    "first try; {:.1}% with up to 5 retries",
                    r.served_retry_pct
                )),
            );
            if a == Crowd::Slowloris {
                figures.push(Figure::alone(&name("get_p99_ms"), r.get_p99_ms, "ms"));
            }
            if a == Crowd::Flood {
                figures.push(
                    Figure::alone(&name("cpu_pct"), r.cpu_pct, "%")
                        .note("whole process (pools and attacker) over wall time"),
                );
            }
        }
    }
    let proofs = attack::oracle(scale.replays.min(256)).await?;
    figures.push(Figure::alone(
        "attack_oracle_key_proofs_obtained",
        proofs as f64,
        "proofs",
    ));
    let replayed = attack::replay(scale.replays).await?;
    figures.push(
        Figure::alone(
            "attack_replay_key_strangers_admitted",
            replayed as f64,
            "conns",
        )
        .note(format!("{} recorded exchanges replayed", scale.replays)),
    );
    let relayed = attack::relay(64).await?;
    figures.push(
        Figure::alone(
            "attack_relay_key_strangers_admitted",
            relayed as f64,
            "conns",
        )
        .note("64 connections relayed between two TLS sessions"),
    );
    let report = Report {
        machine: machine(quick),
        figures,
    };
    println!("{}", report.table());
    println!("{}", report.markdown());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
    }
    Ok(())
}
