//! The whole reverse tunnel in one process, on loopback: a server side, a client side
//! in TLS mode 1, an echo service behind the client, and thousands of user sessions
//! that send pseudo-random bytes through the public port and check every byte that
//! comes back.
//!
//! ```text
//! cargo run --release -p pool-tokio --example demo
//! cargo run --release -p pool-tokio --example demo -- --sessions 5000 --concurrency 300 --bytes 64K
//! cargo run --release -p pool-tokio --example demo -- --quick
//! ```
//!
//! Exits with status 1 if any session failed, 2 on bad arguments. See
//! `examples/TUNNEL.md` for the control protocol.

#[path = "common/tunnel.rs"]
mod tunnel;

use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_tls::{ServerTls, TlsMode};
use tunnel::{ClientConfig, LoadProgress, ServerConfig};

const USAGE: &str = "\
usage: demo [--sessions N] [--concurrency C] [--bytes B] [--quick]

  --sessions N     user sessions in total          (default 2000; --quick: 200)
  --concurrency C  sessions in flight at once      (default 200)
  --bytes B        bytes each session sends and gets back, K/M suffixes allowed
                   (default 16K)
  --quick          200 sessions, for a fast check";

const MIN_CAP: usize = 64;
const MAX_CAP: usize = 1024;
const SESSION_LIMIT: Duration = Duration::from_secs(30);

struct Args {
    sessions: u64,
    concurrency: usize,
    bytes: usize,
}

fn parse_size(s: &str) -> Option<usize> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last()? {
        (i, 'k' | 'K') => (&t[..i], 1024),
        (i, 'm' | 'M') => (&t[..i], 1024 * 1024),
        _ => (t, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mul)
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        sessions: 2_000,
        concurrency: 200,
        bytes: 16 * 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--quick" => a.sessions = 200,
            "--sessions" => {
                let v = value("--sessions")?;
                a.sessions = v
                    .parse()
                    .map_err(|_| format!("--sessions: `{v}` is not a number"))?;
            }
            "--concurrency" => {
                let v = value("--concurrency")?;
                a.concurrency = v
                    .parse()
                    .ok()
                    .filter(|&c| c > 0)
                    .ok_or(format!("--concurrency: `{v}` is not a positive number"))?;
            }
            "--bytes" => {
                let v = value("--bytes")?;
                a.bytes = parse_size(&v).ok_or(format!("--bytes: `{v}` is not a size"))?;
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Some(a))
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<bool, tunnel::BoxError> {
    let (echo, echo_task) = tunnel::start_echo().await?;

    // A random key, as a real deployment would set with --tunnel-key.
    let key = tunnel::hex(&tunnel::random::<16>()?).into_bytes();
    let cert = ServerTls::self_signed(["localhost"])?;
    let fingerprint = cert.fingerprint();
    let server = tunnel::start_server(ServerConfig {
        tls: Some(cert),
        key: Some(key),
        max_capacity: MAX_CAP,
        ..ServerConfig::loopback()
    })
    .await?;
    let client = tunnel::start_client(ClientConfig {
        mode: TlsMode::SelfSigned,
        pin: Some(fingerprint),
        hostname: Some("localhost".into()),
        min: MIN_CAP,
        max: MAX_CAP,
        parallelism: 16,
        ..ClientConfig::for_server(&server, echo)
    })
    .await?;

    println!(
        "tunnel {}  control {}  public {}  service (echo) {}",
        server.tunnel_addr(),
        server.control_addr(),
        server.public_addr(),
        echo
    );
    println!("TLS mode 1, client pins {fingerprint}");
    println!(
        "{} sessions, {} at once, {} bytes each way per session; client pool {MIN_CAP}..{MAX_CAP}",
        args.sessions, args.concurrency, args.bytes
    );

    // Time to fill: until the client pool first holds its minimum capacity idle.
    let fill = {
        let pool = client.pool().clone();
        let started = client.started();
        tokio::spawn(async move {
            pool.wait_idle(MIN_CAP, Duration::from_secs(60))
                .await
                .then(|| started.elapsed())
        })
    };
    if !client.wait_control(Duration::from_secs(10)).await {
        return Err("the control connection did not come up within 10 s".into());
    }
    // Warm up like a real deployment: users arrive once the pool has filled (or after
    // 10 s at most, so that a pool that cannot fill still gets measured).
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        client.pool().wait_idle(MIN_CAP, Duration::from_secs(10)),
    )
    .await;

    let progress = Arc::new(LoadProgress::default());
    let start = Instant::now();
    let printer = {
        let progress = progress.clone();
        let server_pool = server.pool().clone();
        let client_pool = client.pool().clone();
        let total = args.sessions;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.tick().await;
            loop {
                tick.tick().await;
                println!(
                    "[{:>6.1} s] sessions {:>6}/{total}  failed {:>4}  server idle {:>4}  \
                     client idle {:>4}  capacity {:>4}  interval {:>4} ms",
                    start.elapsed().as_secs_f64(),
                    progress.done.load(Relaxed),
                    progress.failed.load(Relaxed),
                    server_pool.active(),
                    client_pool.active(),
                    client_pool.capacity(),
                    client_pool.interval().as_millis(),
                );
            }
        })
    };

    let report = tunnel::run_load(
        server.public_addr(),
        args.sessions,
        args.concurrency,
        args.bytes,
        SESSION_LIMIT,
        progress,
    )
    .await;
    printer.abort();
    let fill = fill.await.ok().flatten();

    // Let the relays of the last sessions finish their bookkeeping.
    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        let s = server.stats();
        if s.relayed + s.failed >= s.users {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ss = server.stats();
    let cs = client.stats();
    let passed = report.latencies.len() as u64;
    let failures = report.errors.len() as u64;
    let verified = passed * args.bytes as u64;

    let rows: Vec<(&str, String)> = vec![
        (
            "sessions",
            format!(
                "{} ({} passed, {} at once)",
                args.sessions, passed, args.concurrency
            ),
        ),
        (
            "bytes user -> service",
            format!("{} verified, {} relayed", mib(verified), mib(ss.bytes_up)),
        ),
        (
            "bytes service -> user",
            format!("{} verified, {} relayed", mib(verified), mib(ss.bytes_down)),
        ),
        ("failures", failures.to_string()),
        (
            "time to fill",
            match fill {
                Some(d) => format!("{} (client pool reached {MIN_CAP} idle)", ms(d)),
                None => "never reached".into(),
            },
        ),
        ("total time", ms(report.elapsed)),
        (
            "session latency p50",
            report.quantile(0.50).map(ms).unwrap_or_else(|| "-".into()),
        ),
        (
            "session latency p99",
            report.quantile(0.99).map(ms).unwrap_or_else(|| "-".into()),
        ),
        (
            "sessions / s",
            format!("{:.0}", passed as f64 / report.elapsed.as_secs_f64()),
        ),
        (
            "pool dials / refused proofs",
            format!(
                "{} dialed, {} proofs refused",
                client.pool().stats().counters.dialed,
                ss.bad_proofs
            ),
        ),
        (
            "control connections",
            format!("{} (client side: {} ids)", cs.control_ok, cs.ids),
        ),
    ];
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let line = format!("+-{}-+-{}-+", "-".repeat(w0), "-".repeat(w1));
    println!("\n{line}");
    for (k, v) in &rows {
        println!("| {k:<w0$} | {v:<w1$} |");
    }
    println!("{line}");

    for (n, e) in report.errors.iter().take(10) {
        eprintln!("session {n} failed: {e}");
    }
    if failures > 10 {
        eprintln!("... and {} more", failures - 10);
    }

    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
    Ok(failures == 0)
}
