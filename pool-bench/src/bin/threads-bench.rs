//! The threaded client pool beside the tokio client pool, in the same run, against the
//! same tokio server pool on loopback, plain TCP:
//!
//! - `fill_plain_*`: connections per second from building the client pool until `n`
//!   connections are idle on both ends (capacity `n`, 8 dials in flight), median of
//!   the repetitions, the two clients interleaved;
//! - `checkout_plain_*`: pairs per second for a fixed time, one pair at a time: server
//!   get, client get by that id, one byte server -> client -> server. One std thread
//!   runs the loop for both: the server side through `Handle::block_on`, the client
//!   side blocking (threads) or through `Handle::block_on` (tokio).
//!
//! ```text
//! cargo run --release -p pool-bench --bin threads-bench -- --json figures.json
//! ```
//! Options: `--n N` (1000), `--reps R` (3), `--secs S` (3).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_bench::report::{machine, Figure, Report};
use pool_core::ClientConfig;
use pool_sim::stats::median;
use pool_threads::ThreadClientPool;
use pool_tokio::ServerConfig;
use pool_tokio::{ClientPool, ServerPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Handle;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
const T: Duration = Duration::from_secs(10);
const IN_FLIGHT: usize = 8;

/// The threaded client pool beside the tokio client pool, in the same run.
#[derive(clap::Parser)]
#[command(name = "threads-bench")]
struct Args {
    /// Writes the figures in pool-bench's JSON format to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// Connections each fill makes.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Fills per client (the figure is their median).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    reps: u64,
    /// Seconds of each checkout run.
    #[arg(long, default_value_t = 3)]
    secs: u64,
}

/// The client under test.
#[derive(Clone)]
enum Client {
    Threads(Arc<ThreadClientPool>),
    Tokio(ClientPool),
}

impl Client {
    fn build(kind: &str, addr: SocketAddr, n: usize) -> Res<Self> {
        Ok(if kind == "threads" {
            let cfg = ClientConfig::builder()
                .capacity(n, n)
                .parallelism(IN_FLIGHT)
                .build()?;
            Self::Threads(Arc::new(
                ThreadClientPool::builder(addr).config(cfg).build()?,
            ))
        } else {
            Self::Tokio(
                ClientPool::builder()
                    .address(addr)
                    .config(
                        ClientConfig::builder()
                            .capacity(n, n)
                            .parallelism(IN_FLIGHT),
                    )
                    .build()?,
            )
        })
    }

    fn idle(&self) -> usize {
        match self {
            Self::Threads(p) => p.idle(),
            Self::Tokio(p) => p.active(),
        }
    }

    async fn close(self) {
        match self {
            Self::Threads(p) => {
                let _ = tokio::task::spawn_blocking(move || p.close()).await;
            }
            Self::Tokio(p) => p.close().await,
        }
    }
}

fn server(n: usize) -> Res<ServerPool> {
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    Ok(ServerPool::builder()
        .bind(addr)
        .config(ServerConfig::builder().max_capacity(n + n / 10))
        .build()?)
}

async fn wait_full(server: &ServerPool, client: &Client, n: usize) -> Res<()> {
    let end = Instant::now() + Duration::from_secs(120);
    while server.active() < n || client.idle() < n {
        if Instant::now() > end {
            return Err("pool not full after 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// Connections per second until `n` are idle on both ends.
async fn fill_once(kind: &str, n: usize) -> Res<f64> {
    let server = server(n)?;
    let start = Instant::now();
    let client = Client::build(kind, server.local_addr(), n)?;
    wait_full(&server, &client, n).await?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    client.close().await;
    server.close().await;
    Ok(rate)
}

/// Pairs per second for `dur`, one at a time, on the calling (non-runtime) thread.
fn checkout(rt: &Handle, kind: &str, dur: Duration) -> Res<f64> {
    const CAP: usize = 64;
    let server = rt.block_on(async { server(CAP) })?;
    let client = {
        let _guard = rt.enter();
        Client::build(kind, server.local_addr(), CAP)?
    };
    rt.block_on(wait_full(&server, &client, CAP))?;
    let start = Instant::now();
    let mut pairs = 0u64;
    while start.elapsed() < dur {
        let (id, mut s) = rt.block_on(server.get_timeout(T))?;
        let mut b = [1u8];
        rt.block_on(s.write_all(&b))?;
        match &client {
            Client::Threads(p) => {
                let mut c = p.get(id, T)?;
                c.read_exact(&mut b)?;
                c.write_all(&b)?;
            }
            Client::Tokio(p) => rt.block_on(async {
                let mut c = p.get_timeout(id, T).await?;
                c.read_exact(&mut b).await?;
                c.write_all(&b).await?;
                Res::Ok(())
            })?,
        }
        rt.block_on(s.read_exact(&mut b))?;
        pairs += 1;
    }
    let rate = pairs as f64 / start.elapsed().as_secs_f64();
    rt.block_on(async {
        client.close().await;
        server.close().await;
    });
    Ok(rate)
}

fn main() -> Res<()> {
    let a = <Args as clap::Parser>::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let (mut threads, mut tokio) = (Vec::new(), Vec::new());
    rt.block_on(async {
        // Warm-up, not counted.
        fill_once("threads", a.n / 4).await?;
        fill_once("tokio", a.n / 4).await?;
        for _ in 0..a.reps {
            threads.push(fill_once("threads", a.n).await?);
            tokio.push(fill_once("tokio", a.n).await?);
        }
        Res::Ok(())
    })?;
    eprintln!("fill conn/s: threads {threads:.0?} tokio {tokio:.0?}");
    let (fill_threads, fill_tokio) = (
        median(&threads).unwrap_or(0.0),
        median(&tokio).unwrap_or(0.0),
    );

    let dur = Duration::from_secs(a.secs);
    let h = rt.handle();
    let check_threads = checkout(h, "threads", dur)?;
    let check_tokio = checkout(h, "tokio", dur)?;

    let figures = vec![
        Figure::vs("fill_plain_threads", fill_threads, "conn/s", fill_tokio),
        Figure::alone("fill_plain_tokio", fill_tokio, "conn/s"),
        Figure::vs(
            "checkout_plain_threads",
            check_threads,
            "pairs/s",
            check_tokio,
        ),
        Figure::alone("checkout_plain_tokio", check_tokio, "pairs/s"),
    ];
    let report = Report {
        machine: machine(false),
        figures,
    };
    print!("{}", report.table());
    println!(
        "fill: {} conns, {IN_FLIGHT} in flight, median of {}; checkout: {} s, one pair at a time",
        a.n, a.reps, a.secs
    );
    if let Some(path) = a.json {
        std::fs::write(&path, serde_json::to_string_pretty(&report.json())? + "\n")?;
        eprintln!("wrote {path}");
    }
    Ok(())
}
