//! The QUIC pool's figures beside the TCP pool's (TLS mode 1), measured in the same
//! run, in pool-bench's figure format.
//!
//! ```text
//! cargo run --release -p pool-quic --example quic-bench -- --json quic.json [--quick]
//! ```
//!
//! - `fill_quic` (streams/s, ids included): from `build()` of a client pool of 1,000
//!   with 8 dials in flight until both ends hold 1,000 idle; median of 5, alternated
//!   with `fill_tls`, the TCP pool (pool-tokio, TLS mode 1) filled alike.
//! - `mem_quic_stream_kib` (KiB per idle pooled pair, both ends in one process):
//!   VmRSS before the fill and 300 ms after both ends hold 2,000, over 2,000, each in a
//!   fresh child process; beside `mem_tls_kib`, the TCP pool measured alike.
//! - `get_p50_us` / `get_p99_us` on QUIC: server get plus client get by id on a warm
//!   pool of 2,000, 3,000 samples in batches of 1,000, refilled between; beside the
//!   TCP pool's, measured alike.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use pool_bench::report::{Figure, Report};
use pool_quic::{ClientConfig, ClientTls, ServerConfig};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const GET: Duration = Duration::from_secs(10);

/// Both ends of a pool, QUIC or TCP.
enum Pools {
    Quic(pool_quic::ServerPool, pool_quic::ClientPool),
    Tcp(pool_tokio::ServerPool, pool_tokio::ClientPool),
}

impl Pools {
    async fn build(quic: bool, n: usize) -> Res<Self> {
        let loopback = "127.0.0.1:0".parse()?;
        if quic {
            let core = ServerConfig::builder().max_capacity(n + n / 10).build()?;
            let server = pool_quic::ServerPool::builder()
                .bind(loopback)
                .config(core)
                .build()?;
            let core = ClientConfig::builder()
                .capacity(n, n)
                .parallelism(8)
                .build()?;
            let client = pool_quic::ClientPool::builder()
                .address(server.local_addr())
                .config(core)
                .tls(ClientTls::SelfSigned {
                    pin: server.fingerprint(),
                    name: None,
                })
                .build()?;
            Ok(Self::Quic(server, client))
        } else {
            let server = pool_tokio::ServerPool::builder()
                .bind(loopback)
                .tls(pool_tls::ServeTls::self_signed())
                .config(pool_tokio::ServerConfig::builder().max_capacity(n + n / 10))
                .build()?;
            let pin = server.fingerprint().ok_or("no fingerprint")?;
            let client = pool_tokio::ClientPool::builder()
                .address(server.local_addr())
                .tls(pool_tls::ClientTls::SelfSigned {
                    pin: Some(pin),
                    name: None,
                })
                .config(
                    pool_tokio::ClientConfig::builder()
                        .capacity(n, n)
                        .parallelism(8),
                )
                .build()?;
            Ok(Self::Tcp(server, client))
        }
    }

    async fn full(&self, n: usize) -> Res<()> {
        let t = Duration::from_secs(60);
        let ok = match self {
            Self::Quic(s, c) => c.wait_idle(n, t).await && s.wait_idle(n, t).await,
            Self::Tcp(s, c) => c.wait_idle(n, t).await && s.wait_idle(n, t).await,
        };
        if ok {
            Ok(())
        } else {
            Err("the pool did not fill".into())
        }
    }

    /// One timed pair get; the pair is kept in `held`.
    async fn pair(&self, held: &mut Vec<Box<dyn Send>>) -> Res<Duration> {
        let t0 = Instant::now();
        match self {
            Self::Quic(s, c) => {
                let (id, a) = s.get_timeout(GET).await?;
                let b = c.get_timeout(id, GET).await?;
                let d = t0.elapsed();
                held.push(Box::new((a, b)));
                Ok(d)
            }
            Self::Tcp(s, c) => {
                let (id, a) = s.get_timeout(GET).await?;
                let b = c.get_timeout(id, GET).await?;
                let d = t0.elapsed();
                held.push(Box::new((a, b)));
                Ok(d)
            }
        }
    }

    async fn close(self) {
        match self {
            Self::Quic(s, c) => {
                c.close().await;
                s.close().await;
            }
            Self::Tcp(s, c) => {
                c.close().await;
                s.close().await;
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

async fn fill(quic: bool, n: usize) -> Res<f64> {
    let t0 = Instant::now();
    let pools = Pools::build(quic, n).await?;
    pools.full(n).await?;
    let per_s = n as f64 / t0.elapsed().as_secs_f64();
    pools.close().await;
    Ok(per_s)
}

/// The child process of the memory figure: KiB per idle pair, printed.
async fn mem_child(quic: bool, n: usize) -> Res<()> {
    // Warm-up: the runtime, TLS and the first endpoints' allocations.
    let warm = Pools::build(quic, 8).await?;
    warm.full(8).await?;
    warm.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = rss();
    let pools = Pools::build(quic, n).await?;
    pools.full(n).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss();
    println!(
        "{}",
        after.saturating_sub(before) as f64 / n as f64 / 1024.0
    );
    drop(pools);
    Ok(())
}

fn mem(quic: bool, n: usize) -> Res<f64> {
    let exe = std::env::current_exe()?;
    let kind = if quic { "quic" } else { "tcp" };
    let out = std::process::Command::new(exe)
        .args(["--child-mem", kind, &n.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

async fn latency(quic: bool, n: usize, samples: usize) -> Res<(f64, f64)> {
    let pools = Pools::build(quic, n).await?;
    let mut all = Vec::with_capacity(samples);
    while all.len() < samples {
        pools.full(n).await?;
        let mut held = Vec::with_capacity(n / 2);
        for _ in 0..n / 2 {
            all.push(pools.pair(&mut held).await?);
        }
        drop(held);
    }
    pools.close().await;
    all.sort();
    let at = |p: f64| all[((all.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    Ok((at(0.5), at(0.99)))
}

fn machine(quick: bool) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "kernel": kernel,
        "rustc": rustc,
        "loadavg_at_start": loadavg,
        "quick": quick,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("--child-mem") {
        let quic = args.get(1).map(String::as_str) == Some("quic");
        let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2000);
        return rt.block_on(mem_child(quic, n));
    }
    let quick = args.iter().any(|a| a == "--quick");
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned());
    let q = |n: usize| if quick { n / 10 } else { n };
    let machine = machine(quick);
    let mut figures = Vec::new();

    let n = q(1000);
    let reps = 5;
    let (mut quic, mut tls) = (Vec::new(), Vec::new());
    rt.block_on(async {
        // Warm-up of each, not counted.
        fill(true, n / 4).await?;
        fill(false, n / 4).await?;
        for _ in 0..reps {
            quic.push(fill(true, n).await?);
            tokio::time::sleep(Duration::from_millis(50)).await;
            tls.push(fill(false, n).await?);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Res::Ok(())
    })?;
    eprintln!("fill quic {quic:.0?} tls {tls:.0?}");
    figures.push(
        Figure::vs("fill_quic", median(quic), "streams/s", median(tls)).note(format!(
            "{n} streams, 8 in flight, median of {reps}; baseline fill_tls, TCP pool mode 1, alternated"
        )),
    );

    let m = q(2000);
    let (mq, mt) = (mem(true, m)?, mem(false, m)?);
    figures.push(
        Figure::vs("mem_quic_stream_kib", mq, "KiB", mt).note(format!(
            "VmRSS per idle pair, both ends, {m} pairs, fresh process; baseline mem_tls_kib, TCP pool mode 1"
        )),
    );

    let (lq, lt) = rt.block_on(async {
        let lq = latency(true, q(2000), q(3000)).await?;
        let lt = latency(false, q(2000), q(3000)).await?;
        Res::Ok((lq, lt))
    })?;
    let note = format!(
        "server get + client get by id, {} samples, batches of {} from a full pool of {}; baseline TCP pool mode 1",
        q(3000),
        q(2000) / 2,
        q(2000)
    );
    figures.push(Figure::vs("get_p50_us", lq.0, "us", lt.0).note(note.clone()));
    figures.push(Figure::vs("get_p99_us", lq.1, "us", lt.1).note(note));

    let report = Report { machine, figures };
    print!("{}", report.table());
    println!("\n{}", report.markdown());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
    }
    Ok(())
}
