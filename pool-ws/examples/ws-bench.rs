//! Figures of the WebSocket pool beside the TCP pool's, measured in the same run:
//! how fast a pool fills (connections per second until both ends hold `n` idle) and
//! what an idle pooled pair costs in memory (KiB, both ends in one process).
//!
//! ```text
//! cargo run --release -p pool-ws --example ws-bench -- [--quick] [--n N] [--reps R] [--json FILE]
//! ```
//!
//! - `fill_ws` (plain `ws://`) against `fill_plain` (the TCP pool, code 0), and
//!   `fill_wss` (code 1) against `fill_tls` (the TCP pool, code 1), alternated rep by
//!   rep, medians; the same core settings and 8 dials in flight on both;
//! - `fill_h2` (streams on one TLS connection) against `fill_tls`;
//! - `fill_ws_nginx` (through nginx, started as a child process) against `fill_ws`
//!   (direct), when nginx is installed;
//! - `mem_ws_kib` against `mem_plain_kib` and `mem_wss_kib` against `mem_tls_kib`:
//!   resident memory grown per idle pair, each measured in a fresh child process;
//!   `mem_h2_kib` against `mem_tls_kib` too.

use std::time::{Duration, Instant};

use pool_bench::report::{Figure, Report};
use pool_testkit::nginx;
use pool_testkit::pair::PairBuilder;
use pool_tls::TlsMode;
use pool_ws::h2::{H2ClientPool, H2ServerPool};
use pool_ws::{ClientConfig, ClientTls, ServeTls, ServerConfig};
use pool_ws::{WsClientPool, WsServerPool};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Plain,
    Tls,
    Ws,
    Wss,
    H2,
    /// `ws://` through nginx in front of the server pool.
    WsNginx,
}

impl Kind {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "plain" => Self::Plain,
            "tls" => Self::Tls,
            "ws" => Self::Ws,
            "wss" => Self::Wss,
            "h2" => Self::H2,
            "ws-nginx" => Self::WsNginx,
            _ => return None,
        })
    }
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
            Self::H2 => "h2",
            Self::WsNginx => "ws-nginx",
        }
    }
}

/// What a filled pool keeps alive until it is dropped.
enum Filled {
    Tcp(pool_testkit::pair::Pair),
    Ws(WsServerPool, WsClientPool),
    WsNginx(WsServerPool, WsClientPool, nginx::Nginx),
    H2(H2ServerPool, H2ClientPool),
}

impl Filled {
    async fn close(self) {
        match self {
            Self::Tcp(p) => p.close().await,
            Self::Ws(s, c) => {
                c.close().await;
                s.close().await;
            }
            Self::H2(s, c) => {
                c.close().await;
                s.close().await;
            }
            Self::WsNginx(s, c, mut n) => {
                c.close().await;
                n.stop();
                s.close().await;
            }
        }
    }
}

/// Builds a pair of `kind`, fills it to `n` idle on both ends; how long that took.
async fn fill(kind: Kind, n: usize) -> Res<(Duration, Filled)> {
    let interval = (Duration::from_millis(100), Duration::from_secs(1));
    let max = n + n / 10;
    let mut t0 = Instant::now();
    let filled = match kind {
        Kind::Plain | Kind::Tls => {
            let mode = if kind == Kind::Tls {
                TlsMode::SelfSigned
            } else {
                TlsMode::Off
            };
            let pair = PairBuilder::new()
                .tls(mode)
                .capacity(n, n)
                .interval(interval.0, interval.1)
                .parallelism(8)
                .server(move |b| b.max_capacity(max))
                .build()
                .await?;
            Filled::Tcp(pair)
        }
        Kind::Ws | Kind::Wss => {
            let cfg = ServerConfig::builder().max_capacity(max).build()?;
            let mut sb = WsServerPool::builder()
                .config(cfg)
                .bind("127.0.0.1:0".parse()?);
            if kind == Kind::Wss {
                sb = sb.tls(ServeTls::self_signed());
            }
            let server = sb.build()?;
            let cfg = ClientConfig::builder()
                .capacity(n, n)
                .interval(interval.0, interval.1)
                .parallelism(8)
                .build()?;
            let mut cb = WsClientPool::builder()
                .address(server.local_addr())
                .config(cfg);
            if kind == Kind::Wss {
                cb = cb.tls(ClientTls::SelfSigned {
                    pin: None,
                    name: None,
                });
            }
            Filled::Ws(server, cb.build()?)
        }
        Kind::WsNginx => {
            let cfg = ServerConfig::builder().max_capacity(max).build()?;
            let server = WsServerPool::builder()
                .config(cfg)
                .bind("127.0.0.1:0".parse()?)
                .build()?;
            let bin = nginx::binary().ok_or("no nginx")?;
            let mut proxy = nginx::Nginx::new(bin, server.local_addr());
            proxy.start().await;
            t0 = Instant::now(); // the fill, not nginx's start
            let cfg = ClientConfig::builder()
                .capacity(n, n)
                .interval(interval.0, interval.1)
                .parallelism(8)
                .build()?;
            let client = WsClientPool::builder()
                .address(proxy.listen)
                .config(cfg)
                .build()?;
            Filled::WsNginx(server, client, proxy)
        }
        Kind::H2 => {
            let cfg = ServerConfig::builder().max_capacity(max).build()?;
            let server = H2ServerPool::builder()
                .config(cfg)
                .tls(ServeTls::self_signed())
                .bind("127.0.0.1:0".parse()?)
                .build()?;
            let cfg = ClientConfig::builder()
                .capacity(n, n)
                .interval(interval.0, interval.1)
                .parallelism(8)
                .build()?;
            let client = H2ClientPool::builder()
                .address(server.local_addr())
                .config(cfg)
                .build()?;
            Filled::H2(server, client)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (c, s) = match &filled {
            Filled::Tcp(p) => (p.client.active(), p.server.stats().status.idle),
            Filled::Ws(s, c) => (c.idle(), s.status().idle),
            Filled::H2(s, c) => (c.idle(), s.status().idle),
            Filled::WsNginx(s, c, _) => (c.idle(), s.status().idle),
        };
        if c >= n && s >= n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("{}: filled {c} / {s} of {n} in 120 s", kind.name()).into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok((t0.elapsed(), filled))
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// In a child process: fills `n` pairs of `kind` and prints the KiB grown per pair.
fn mem_child(kind: Kind, n: usize) -> Res<()> {
    let rt = runtime()?;
    rt.block_on(async {
        // Warm-up: the runtime, TLS, the allocator's first arenas.
        let (_, warm) = fill(kind, 8).await?;
        warm.close().await;
        let before = rss_kib();
        let (_, filled) = fill(kind, n).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = rss_kib();
        println!("{}", (after.saturating_sub(before)) as f64 / n as f64);
        filled.close().await;
        Ok(())
    })
}

fn mem(kind: Kind, n: usize) -> Res<f64> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["--mem-child", kind.name(), "--n", &n.to_string()])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "{} memory child: {}",
            kind.name(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().parse()?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn machine() -> serde_json::Value {
    let read = |p| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned());
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "rustc": rustc,
        "loadavg_at_start": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let n: usize = value("--n").map_or(Ok(if quick { 100 } else { 1000 }), |v| v.parse())?;
    if let Some(kind) = value("--mem-child") {
        let kind = Kind::parse(&kind).ok_or("--mem-child plain|tls|ws|wss|h2")?;
        return mem_child(kind, n);
    }
    let reps: usize = value("--reps").map_or(Ok(if quick { 1 } else { 5 }), |v| v.parse())?;
    let machine = machine();
    let rt = runtime()?;
    let mut figures = Vec::new();
    let mut fills = vec![
        ("fill_ws", "fill_plain", Kind::Ws, Kind::Plain),
        ("fill_wss", "fill_tls", Kind::Wss, Kind::Tls),
        ("fill_h2", "fill_tls", Kind::H2, Kind::Tls),
    ];
    if nginx::binary().is_some() {
        fills.push(("fill_ws_nginx", "fill_ws", Kind::WsNginx, Kind::Ws));
    } else {
        eprintln!("  nginx not found: no fill_ws_nginx figure");
    }
    for (name, base_name, kind, base) in fills {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        rt.block_on(async {
            for _ in 0..reps {
                for (k, into) in [(base, &mut theirs), (kind, &mut ours)] {
                    let (d, filled) = fill(k, n).await?;
                    into.push(n as f64 / d.as_secs_f64());
                    filled.close().await;
                }
            }
            Res::Ok(())
        })?;
        eprintln!("  {name}: {ours:.0?} vs {base_name}: {theirs:.0?} conn/s");
        let of = if base == Kind::Ws {
            "direct"
        } else {
            "the TCP pool"
        };
        let note = format!("{n} pairs, 8 in flight, median of {reps}; baseline {base_name}, {of}");
        figures.push(Figure::vs(name, median(ours), "conn/s", median(theirs)).note(note));
    }
    for (name, kind, base) in [
        ("mem_ws_kib", Kind::Ws, Kind::Plain),
        ("mem_wss_kib", Kind::Wss, Kind::Tls),
        ("mem_h2_kib", Kind::H2, Kind::Tls),
    ] {
        let (ours, theirs) = (mem(kind, n)?, mem(base, n)?);
        let note = format!(
            "RSS grown per idle pair, both ends, {n} pairs; baseline mem_{}_kib",
            base.name()
        );
        figures.push(Figure::vs(name, ours, "KiB", theirs).note(note));
    }
    let report = Report { machine, figures };
    println!("{}", report.table());
    if let Some(path) = value("--json") {
        std::fs::write(path, serde_json::to_string_pretty(&report.json())?)?;
    }
    Ok(())
}
