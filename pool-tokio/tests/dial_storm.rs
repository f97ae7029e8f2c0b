//! The server is down: the client's dial attempts follow the backoff and the process
//! stays cool; the server comes back on the same port and the pool refills.
//!
//! The schedule itself, to the millisecond, is pool-tokio's `tests/paused_clock.rs`.
//! Here, on real sockets and the real clock, the probes are counted as they come, each
//! gap between two of them is at least what the back-off allows at that point (a slow
//! machine only lengthens gaps), and the CPU spent is printed.

mod kit;

use std::time::{Duration, Instant};

use kit::cpu_time;
use pool_testkit::dialers::Counting;
use pool_testkit::pair::{verify_healthy, wait_until, Pair};
use pool_tokio::ClientConfig;
use pool_tokio::{ClientPool, ServerPool, TcpDialer};

/// Probes to watch after the first run of failures: by then the back-off is capped.
const PROBES: usize = 7;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_while_down_then_refill() {
    // A dead port: bound once, then released.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
    let dialer = Counting::new(TcpDialer::new(addr));
    let client = ClientPool::builder()
        .dialer(dialer.clone())
        .config(ClientConfig::builder().capacity(4, 8).interval(min, max))
        .build()
        .unwrap();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    // The first run is at most the maximum capacity's worth of dials at once.
    assert!(
        wait_until(Duration::from_secs(60), || dialer.attempts() >= 8 + PROBES).await,
        "the client stopped trying: {:?}",
        client.stats()
    );
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let times = dialer.times();
    let c = client.stats().counters;
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    println!(
        "dial storm: {} attempts in {secs:.1} s, cpu {:.1}% of a core; gaps {gaps:?}; {c:?}",
        times.len(),
        100.0 * cpu / secs
    );
    // The first run: the dials made at once, before the first gap of a round.
    let run = gaps.iter().take_while(|g| **g < min / 2).count() + 1;
    assert!(run <= 8, "{run} dials before the first back-off: {gaps:?}");
    // Then one probe per round, each at least the back-off of its place in the run
    // (the minimum interval doubled, capped at the maximum, at least its lower half).
    for (k, gap) in gaps[run - 1..].iter().enumerate() {
        let beyond = u32::try_from(k).unwrap();
        let full = min.saturating_mul(1 << beyond.min(20)).min(max);
        let low = (full / 2).max(min);
        assert!(
            *gap >= low,
            "probe {} came {gap:?} after the one before, under the back-off's {low:?}: {gaps:?}",
            k + 1
        );
    }
    assert!(c.dial_failures >= times.len() as u64 - 1, "{c:?}");
    assert_eq!(client.active(), 0);

    // The server comes back on the same port.
    let server = ServerPool::builder().bind(addr).build().unwrap();
    let back = Instant::now();
    let pair = Pair {
        server,
        client,
        proxy: None,
    };
    verify_healthy(&pair, 4, 8, 1024).await.unwrap();
    println!("refilled {:?} after the server came back", back.elapsed());
    pair.close().await;
}
