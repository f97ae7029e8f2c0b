//! The server is down: the client's dial attempts follow the backoff and the process
//! stays cool; the server comes back on the same port and the pool refills.

mod common;

use std::time::{Duration, Instant};

use common::cpu_time;
use pool_testkit::dialers::Counting;
use pool_testkit::pair::{verify_healthy, Pair};
use pool_tokio::{ClientPool, ServerPool, TcpDialer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_while_down_then_refill() {
    // A dead port: bound once, then released.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dialer = Counting::new(TcpDialer::new(addr));
    let client = ClientPool::builder()
        .dialer(dialer.clone())
        .capacity(4, 8)
        .interval(Duration::from_millis(100), Duration::from_secs(1))
        .build()
        .unwrap();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    let attempts = dialer.attempts_between(t0, Instant::now());
    let rate = attempts as f64 / secs;
    let cpu_pct = 100.0 * cpu / secs;
    let c = client.stats().counters;
    println!("dial storm: {attempts} attempts in {secs:.1} s = {rate:.1}/s, cpu {cpu_pct:.1}% of a core; {c:?}");
    assert!(
        rate < 20.0,
        "{rate:.1} dial attempts/s while the server is down"
    );
    assert!(attempts >= 2, "the client stopped trying altogether");
    assert!(c.dial_failures >= attempts as u64 - 1, "{c:?}");
    assert!(cpu_pct < 50.0, "{cpu_pct:.1}% CPU while down");
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
