//! Scenarios run in a fresh child process (re-exec of this binary with a hidden
//! `--child KIND ARGS` argument), so that allocator state and threads of earlier
//! scenarios do not pollute them: memory per pair (4), idle and down CPU (6).
//!
//! A child prints one line `RESULT v1 v2 ...` on stdout.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_tokio::ClientPool;
use tokio::net::{TcpListener, TcpStream};

use crate::net::{pool_fill, raw_fill, runtime, PoolSpec, Res, Tls, LOOPBACK};
use crate::report::Figure;
use crate::sys::{cpu_time, raise_nofile, rss_bytes};
use crate::Sizes;
use pool_tokio::ClientConfig;

/// Runs `self --child args...` and parses its `RESULT` line.
fn spawn_child(args: &[String]) -> Res<std::process::Child> {
    let exe = std::env::current_exe()?;
    Ok(Command::new(exe)
        .arg("--child")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()?)
}

fn result_of(child: std::process::Child, what: &str) -> Res<Vec<f64>> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("child {what} failed ({}): {text}", out.status))?;
    Ok(line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect())
}

fn run_child(args: &[String]) -> Res<Vec<f64>> {
    result_of(spawn_child(args)?, &args.join(" "))
}

/// The child's entry point.
pub(crate) fn child_main(args: &[String]) -> Res<()> {
    raise_nofile();
    let kind = args.first().map(String::as_str).unwrap_or_default();
    let num = |i: usize| -> Res<f64> {
        Ok(args
            .get(i)
            .ok_or("missing child argument")?
            .parse::<f64>()?)
    };
    let values = match kind {
        "mem" => {
            let mode = args.get(1).map(String::as_str).unwrap_or_default();
            mem(mode, num(2)? as usize)?
        }
        "idle-cpu" => idle_cpu(num(1)? as usize, Duration::from_secs_f64(num(2)?))?,
        "down-cpu" => down_cpu(Duration::from_secs_f64(num(1)?))?,
        "scale-server" => crate::scale::server(num(1)? as usize, Duration::from_secs_f64(num(2)?))?,
        "scale-client" => crate::scale::client(
            args.get(1).ok_or("missing address")?,
            num(2)? as usize,
            Duration::from_secs_f64(num(3)?),
        )?,
        "scale-raw-server" => crate::scale::raw_server(num(1)? as usize)?,
        "scale-raw-client" => {
            crate::scale::raw_client(args.get(1).ok_or("missing address")?, num(2)? as usize)?
        }
        _ => return Err(format!("unknown child {kind}").into()),
    };
    let line: Vec<String> = values.iter().map(|v| format!("{v}")).collect();
    println!("RESULT {}", line.join(" "));
    Ok(())
}

/// Fills `n` pairs (pool or raw, plain or TLS) and returns RSS bytes per pair, and the
/// RSS before and after.
fn mem(mode: &str, n: usize) -> Res<Vec<f64>> {
    let rt = runtime();
    rt.block_on(async {
        let tls = if mode.ends_with("tls") {
            Some(Tls::new()?)
        } else {
            None
        };
        // Let the runtime's worker threads start before the first reading.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let spec = PoolSpec {
            capacity: n,
            server_max: n + n / 20,
            parallelism: 8,
            min_interval: None,
        };
        let before = rss_bytes();
        // With `dhat-heap`: the profile covers the fill and stops when the pairs are
        // measured, so its "at end" bytes are what the idle pairs hold.
        #[cfg(feature = "dhat-heap")]
        let profiler = dhat::Profiler::builder()
            .file_name(format!("dhat-{mode}-{n}.json"))
            .build();
        let after;
        if mode.starts_with("raw") {
            let (_, pairs) = raw_fill(n, 8, tls.as_ref()).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            after = rss_bytes();
            #[cfg(feature = "dhat-heap")]
            drop(profiler);
            drop(pairs);
        } else {
            let (_, pools) = pool_fill(spec, tls.as_ref()).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            after = rss_bytes();
            #[cfg(feature = "dhat-heap")]
            drop(profiler);
            pools.close().await;
        }
        let per = after.saturating_sub(before) as f64 / n as f64;
        Ok(vec![per, before as f64, after as f64])
    })
}

/// CPU % of one core over `secs` with a full idle pool of `n` (both ends here).
fn idle_cpu(n: usize, secs: Duration) -> Res<Vec<f64>> {
    let rt = runtime();
    rt.block_on(async {
        let spec = PoolSpec {
            capacity: n,
            server_max: n + n / 10,
            parallelism: 8,
            min_interval: None,
        };
        let (_, pools) = pool_fill(spec, None).await?;
        // The refill interval climbs to its maximum while the pool stays full.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (c0, t0) = (cpu_time(), Instant::now());
        tokio::time::sleep(secs).await;
        let (c1, t1) = (cpu_time(), Instant::now());
        let idle = (pools.server.active(), pools.client.active());
        pools.close().await;
        if idle.0 < n || idle.1 < n {
            return Err(format!("pool not full during the idle measurement: {idle:?}").into());
        }
        Ok(vec![
            100.0 * (c1 - c0).as_secs_f64() / (t1 - t0).as_secs_f64(),
        ])
    })
}

/// CPU % of one core and dials per second over `secs` with the server down.
fn down_cpu(secs: Duration) -> Res<Vec<f64>> {
    let rt = runtime();
    rt.block_on(async {
        // A loopback port with nothing behind it: bind, note the port, close.
        let dead: SocketAddr = {
            let l = TcpListener::bind(LOOPBACK).await?;
            l.local_addr()?
        };
        let dials = Arc::new(AtomicU64::new(0));
        let counter = dials.clone();
        let client = ClientPool::builder()
            .dialer(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                TcpStream::connect(dead)
            })
            .config(ClientConfig::builder().capacity(1000, 1000))
            .build()?;
        // Let the backoff reach its steady state first.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (c0, d0, t0) = (cpu_time(), dials.load(Ordering::Relaxed), Instant::now());
        tokio::time::sleep(secs).await;
        let (c1, d1, t1) = (cpu_time(), dials.load(Ordering::Relaxed), Instant::now());
        client.close().await;
        let s = (t1 - t0).as_secs_f64();
        Ok(vec![
            100.0 * (c1 - c0).as_secs_f64() / s,
            (d1 - d0) as f64 / s,
        ])
    })
}

/// Scenario 4: resident bytes per idle pair, pool against raw, each in its own process.
pub(crate) fn memory(sz: &Sizes, out: &mut Vec<Figure>) -> Res<()> {
    let n = sz.mem_n;
    let half = n / 2;
    for (name, mode) in [("mem_plain", "plain"), ("mem_tls", "tls")] {
        let run = |kind: String, k: usize| run_child(&["mem".into(), kind, k.to_string()]);
        let pool = run(mode.into(), n)?;
        let raw = run(format!("raw-{mode}"), n)?;
        // The same at half the size: the difference is the cost of one more pair,
        // without the fixed cost of the process and the pools.
        let pool_half = run(mode.into(), half)?;
        let raw_half = run(format!("raw-{mode}"), half)?;
        let delta = |v: &[f64]| v[2] - v[1];
        let marginal = |full: &[f64], h: &[f64]| (delta(full) - delta(h)) / (n - half) as f64;
        let (pm, rm) = (marginal(&pool, &pool_half), marginal(&raw, &raw_half));
        eprintln!(
            "  {name}: pool {:.0} B/pair, raw {:.0} B/pair; marginal pool {pm:.0} raw {rm:.0} B/pair; fixed pool {:.0} KiB raw {:.0} KiB; size_of PoolConn {} B",
            pool[0],
            raw[0],
            (delta(&pool) - pm * n as f64) / 1024.0,
            (delta(&raw) - rm * n as f64) / 1024.0,
            std::mem::size_of::<pool_tokio::PoolConn>()
        );
        let kib = |v: &[f64]| v[0] / 1024.0;
        out.push(
            Figure::vs(&format!("{name}_kib"), kib(&pool), "KiB", kib(&raw)).note(format!(
                "VmRSS delta / {n} pairs (both ends in one fresh process); pool RSS {:.1} -> {:.1} MiB",
                pool[1] / 1048576.0,
                pool[2] / 1048576.0
            )),
        );
        out.push(
            Figure::vs(
                &format!("{name}_marginal_kib"),
                pm / 1024.0,
                "KiB",
                rm / 1024.0,
            )
            .note(format!(
                "(RSS delta at {n} - at {half}) / {}: one more pair, fixed costs removed",
                n - half
            )),
        );
    }
    Ok(())
}

/// Scenario 6: CPU with a full idle pool and with the server down (two children at once:
/// each measures only its own process).
pub(crate) fn cpu(sz: &Sizes, out: &mut Vec<Figure>) -> Res<()> {
    let secs = sz.cpu.as_secs_f64().to_string();
    let idle = spawn_child(&["idle-cpu".into(), sz.cpu_pool.to_string(), secs.clone()])?;
    let down = spawn_child(&["down-cpu".into(), secs])?;
    let idle = result_of(idle, "idle-cpu")?;
    let down = result_of(down, "down-cpu")?;
    let s = sz.cpu.as_secs_f64();
    out.push(Figure::alone("idle_cpu_pct", idle[0], "%").note(format!(
        "utime+stime over {s}s, full idle plain pool of {} (both ends), % of one core",
        sz.cpu_pool
    )));
    out.push(Figure::alone("down_cpu_pct", down[0], "%").note(format!(
        "over {s}s, client pool (capacity 1000) dialing a dead loopback port"
    )));
    out.push(
        Figure::alone("down_dials_per_s", down[1], "dials/s")
            .note("counted by the dialer closure, same run as down_cpu_pct"),
    );
    Ok(())
}
