//! Scenario: get latency while sweeps probe a large idle pool.
//!
//! The sweep probes every idle connection with no lock held, in batches the core hands
//! out, so a `get` that arrives mid-sweep waits for at most one batch hand-over, never
//! for the whole pool. This measures that: the p99 of a server `get` from a pool of
//! 8,000 idle connections while sweeps run back to back (a 5 ms sweep interval), beside
//! the same gets from the same pool with the sweep all but off, in the same run.

use std::time::{Duration, Instant};

use pool_tokio::ServerPool;

use crate::net::{runtime, Res, LOOPBACK};
use crate::report::Figure;
use crate::Sizes;
use pool_tokio::{AdmissionLimits, ServerConfig};

const GET_TIMEOUT: Duration = Duration::from_secs(10);

/// `n` idle connections in a server pool sweeping every `sweep`, then the latency of
/// `samples` gets, one every 200 µs.
async fn gets_while_sweeping(n: usize, samples: usize, sweep: Duration) -> Res<Vec<Duration>> {
    let server = ServerPool::builder()
        .bind(LOOPBACK)
        .config(
            ServerConfig::builder()
                .max_capacity(n + 16)
                .sweep_interval(sweep)
                .admission(AdmissionLimits {
                    max_handshakes: 1024,
                    pending_per_source: None,
                    ..AdmissionLimits::default()
                }),
        )
        // One source dials 256 at once here: above the default per-source quota of 64.
        .build()?;
    let addr = server.local_addr();
    let peers = crate::net::raw_peers(addr, n).await?;
    if !server.wait_idle(n, Duration::from_secs(30)).await {
        return Err(format!("pool not full: {:?}", server.stats()).into());
    }
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        tokio::time::sleep(Duration::from_micros(200)).await;
        let t0 = Instant::now();
        let got = server.get_timeout(GET_TIMEOUT).await?;
        out.push(t0.elapsed());
        drop(got);
    }
    server.close().await;
    drop(peers);
    out.sort();
    Ok(out)
}

pub(crate) fn sweep(sz: &Sizes, out: &mut Vec<Figure>) -> Res<()> {
    runtime().block_on(async {
        // Both ends live in this process: two descriptors per connection.
        let room = (crate::sys::raise_nofile() as usize).saturating_sub(1000) / 2;
        let n = sz.sweep_pool.min(room).max(8);
        let samples = (n / 4).max(100);
        let base = gets_while_sweeping(n, samples, Duration::from_secs(3600)).await?;
        let swept = gets_while_sweeping(n, samples, Duration::from_millis(5)).await?;
        let p99 = |v: &[Duration]| crate::checkout::percentile(v, 0.99);
        eprintln!(
            "  get p99 with sweeps {:.1} us, without {:.1} us ({n} idle)",
            p99(&swept),
            p99(&base)
        );
        out.push(
            Figure::vs("get_p99_sweep8k_us", p99(&swept), "us", p99(&base)).note(format!(
                "server get from {n} idle plain conns while sweeps run back to back (5 ms \
                 interval); baseline: same gets, same pool size, no sweep; {samples} samples each"
            )),
        );
        Ok(())
    })
}
