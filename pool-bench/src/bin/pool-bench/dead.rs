//! Scenario: how soon a dead peer leaves the pool.
//!
//! A server pool holds idle plain connections whose client ends are raw sockets in this
//! process. One at a time, a client end is closed (a FIN), and the time until the
//! server pool counts the connection dead (`evicted_dead`) is taken, polled every
//! 100 µs. With the pool's `epoll` watch (the default on Linux) the OS reports the
//! hang-up; the baseline is the same pool with the watch off, where the sweep (every
//! second, the default) finds it.

use std::time::{Duration, Instant};

use pool_tokio::ServerPool;

use crate::net::{runtime, Res, LOOPBACK};
use crate::report::Figure;
use crate::Sizes;
use pool_tokio::{AdmissionLimits, ServerConfig};

/// Detection times of `kills` dead peers among `n` idle connections.
async fn detect(n: usize, kills: usize, watch: bool) -> Res<Vec<Duration>> {
    let server = ServerPool::builder()
        .bind(LOOPBACK)
        .config(
            ServerConfig::builder()
                .max_capacity(n + 16)
                .watch_hang_ups(watch)
                .admission(AdmissionLimits {
                    pending_per_source: None,
                    ..AdmissionLimits::default()
                }),
        )
        .build()?;
    let addr = server.local_addr();
    let mut peers = crate::net::raw_peers(addr, n).await?;
    if !server.wait_idle(n, Duration::from_secs(30)).await {
        return Err(format!("pool not full: {:?}", server.stats()).into());
    }
    // Past the settle time, so every connection is idle.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut out = Vec::with_capacity(kills);
    for _ in 0..kills {
        let Some(peer) = peers.pop() else { break };
        let before = server.stats().counters.evicted_dead;
        let t0 = Instant::now();
        drop(peer);
        while server.stats().counters.evicted_dead == before {
            if t0.elapsed() > Duration::from_secs(5) {
                return Err("a dead peer was not found within 5 s".into());
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        out.push(t0.elapsed());
    }
    server.close().await;
    drop(peers);
    out.sort();
    Ok(out)
}

pub(crate) fn dead(sz: &Sizes, out: &mut Vec<Figure>) -> Res<()> {
    runtime().block_on(async {
        let n = if sz.quick { 200 } else { 2000 };
        let kills = if sz.quick { 5 } else { 20 };
        let watched = detect(n, kills, true).await?;
        let swept = detect(n, kills, false).await?;
        let ms = |v: &[Duration], q: f64| crate::checkout::percentile(v, q) / 1e3;
        eprintln!(
            "  dead peer found in p50 {:.2} / p99 {:.2} ms watched, p50 {:.0} / p99 {:.0} ms swept",
            ms(&watched, 0.5),
            ms(&watched, 0.99),
            ms(&swept, 0.5),
            ms(&swept, 0.99)
        );
        let note = format!(
            "{kills} peers closed one at a time among {n} idle plain conns, until the server \
             pool counts each dead; baseline: the same with the epoll watch off (1 s sweep)"
        );
        for (name, q) in [("dead_detect_ms_p50", 0.5), ("dead_detect_ms_p99", 0.99)] {
            out.push(Figure::vs(name, ms(&watched, q), "ms", ms(&swept, q)).note(note.clone()));
        }
        Ok(())
    })
}
