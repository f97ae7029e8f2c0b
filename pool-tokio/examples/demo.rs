//! A reverse tunnel on the two pools, in one process on loopback: a server pool and a
//! client pool in TLS mode 1 (the client pins the server's certificate) proving a tunnel
//! key on every connection, an echo service behind the client, and thousands of user
//! sessions that send pseudo-random bytes through the public port and check every byte
//! that comes back.
//!
//! ```text
//! cargo run --release -p pool-tokio --example demo
//! cargo run --release -p pool-tokio --example demo -- --sessions 5000 --concurrency 300 --bytes 64K
//! cargo run --release -p pool-tokio --example demo -- --quick
//! ```
//!
//! In one process the two sides need no control connection: the server side hands each
//! user's connection id to the client side over a channel. The two-process tunnel, with
//! its authenticated control connection, is the `pool-tunnel` crate. The echo service
//! and the checked user sessions are the test kit's load generator
//! (`pool_testkit::load`), the one the tunnel's tests and benchmark use.
//!
//! Exits with status 1 if any session failed, 2 on bad arguments.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_testkit::load::{run_load, start_echo, LoadProgress};
use pool_tokio::{ClientConfig, ClientTls, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, ConnId, ServerPool, ServerTls, TunnelKey};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

async fn run(args: Args) -> Result<bool, BoxError> {
    let (echo, echo_task) = start_echo().await?;

    let key = TunnelKey::generate()?;
    let cert = ServerTls::self_signed(["localhost"])?;
    let fingerprint = cert.fingerprint();
    let server = ServerPool::builder()
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .config(ServerConfig::builder().max_capacity(MAX_CAP))
        .tls(ServeTls::Cert(cert))
        .tunnel_key(key.clone())
        .build()?;
    let started = Instant::now();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(
            ClientConfig::builder()
                .capacity(MIN_CAP, MAX_CAP)
                .parallelism(16),
        )
        .tls(ClientTls::SelfSigned {
            pin: Some(fingerprint),
            name: Some("localhost".into()),
        })
        .tunnel_key(key)
        .build()?;
    let public = TcpListener::bind("127.0.0.1:0").await?;
    let public_addr = public.local_addr()?;
    let counts = Arc::new(Counts::default());
    let (ids, id_rx) = mpsc::channel::<ConnId>(4096);
    let client_side = tokio::spawn(client_side(client.clone(), id_rx, echo));
    let server_side = tokio::spawn(server_side(server.clone(), public, ids, counts.clone()));

    println!(
        "tunnel {}  public {}  service (echo) {}",
        server.local_addr(),
        public_addr,
        echo
    );
    println!("TLS mode 1, client pins {fingerprint}");
    println!(
        "tunnel key: generated at random for this run (TunnelKey::generate) and given to \
         both pools; every pooled connection proves it"
    );
    println!(
        "{} sessions, {} at once, {} bytes each way per session; client pool {MIN_CAP}..{MAX_CAP}",
        args.sessions, args.concurrency, args.bytes
    );

    // Time to fill: until the client pool first holds its minimum capacity idle.
    let fill = {
        let pool = client.clone();
        tokio::spawn(async move {
            pool.wait_idle(MIN_CAP, Duration::from_secs(60))
                .await
                .then(|| started.elapsed())
        })
    };
    // Warm up like a real deployment: users arrive once the pool has filled (or after
    // 10 s at most, so that a pool that cannot fill still gets measured).
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        client.wait_idle(MIN_CAP, Duration::from_secs(10)),
    )
    .await;

    let progress = Arc::new(LoadProgress::default());
    let start = Instant::now();
    let printer = {
        let progress = progress.clone();
        let server_pool = server.clone();
        let client_pool = client.clone();
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

    let report = run_load(
        public_addr,
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
        if counts.relayed.load(Relaxed) + counts.failed.load(Relaxed) >= counts.users.load(Relaxed)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let passed = report.latencies.len() as u64;
    let failures = report.errors.len() as u64;
    let verified = passed * args.bytes as u64;
    let counters = client.stats().counters;

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
            format!(
                "{} verified, {} relayed",
                mib(verified),
                mib(counts.bytes_up.load(Relaxed))
            ),
        ),
        (
            "bytes service -> user",
            format!(
                "{} verified, {} relayed",
                mib(verified),
                mib(counts.bytes_down.load(Relaxed))
            ),
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
            "pool dials / key proofs refused",
            format!(
                "{} dialed, {} refused",
                counters.dialed,
                server.stats().counters.auth_failures + counters.auth_failures
            ),
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

    server_side.abort();
    client_side.abort();
    client.close().await;
    server.close().await;
    echo_task.abort();
    Ok(failures == 0)
}

/// What the server side's relays counted.
#[derive(Debug, Default)]
struct Counts {
    users: AtomicU64,
    relayed: AtomicU64,
    failed: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// The public side: for each user, the oldest idle pooled connection; its id goes to
/// the client side (in a two-process tunnel: over the control connection).
async fn server_side(
    pool: ServerPool,
    public: TcpListener,
    ids: mpsc::Sender<ConnId>,
    counts: Arc<Counts>,
) {
    let mut sessions = JoinSet::new();
    loop {
        while sessions.try_join_next().is_some() {}
        let Ok((mut user, _)) = public.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = user.set_nodelay(true);
        counts.users.fetch_add(1, Relaxed);
        let (pool, ids, counts) = (pool.clone(), ids.clone(), counts.clone());
        sessions.spawn(async move {
            let relayed = async {
                let (id, mut conn) = pool.get_timeout(Duration::from_secs(5)).await.ok()?;
                ids.send(id).await.ok()?;
                tokio::io::copy_bidirectional(&mut user, &mut conn)
                    .await
                    .ok()
            };
            match relayed.await {
                Some((up, down)) => {
                    counts.bytes_up.fetch_add(up, Relaxed);
                    counts.bytes_down.fetch_add(down, Relaxed);
                    counts.relayed.fetch_add(1, Relaxed);
                }
                None => {
                    counts.failed.fetch_add(1, Relaxed);
                }
            }
        });
    }
}

/// The private side: takes the pooled connection with each id and relays it to a
/// fresh connection to the service.
async fn client_side(pool: ClientPool, mut ids: mpsc::Receiver<ConnId>, service: SocketAddr) {
    let mut sessions = JoinSet::new();
    while let Some(id) = ids.recv().await {
        while sessions.try_join_next().is_some() {}
        let pool = pool.clone();
        sessions.spawn(async move {
            let Ok(mut conn) = pool.get_timeout(id, Duration::from_secs(5)).await else {
                return;
            };
            let Ok(mut target) = TcpStream::connect(service).await else {
                return;
            };
            let _ = target.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut conn, &mut target).await;
        });
    }
}
