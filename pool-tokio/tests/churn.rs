//! A pool of 1,000 taken as fast as possible for three seconds: no take fails, and
//! neither end ever holds more than its capacity. The pairs of each 250 ms window are
//! printed, not asserted: how many there are is the machine's business.

mod kit;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kit::raise_nofile;
use pool_testkit::pair::{Pair, PairBuilder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_a_pool_of_a_thousand() {
    let limit = raise_nofile() as usize;
    // Both ends live in this process: two descriptors per pooled connection.
    let cap = 1000usize.min(limit.saturating_sub(600) / 2);
    assert!(cap >= 200, "open-file limit {limit} too low");
    let server_max = cap + cap / 10;
    let pair = PairBuilder::new()
        .capacity(cap, cap)
        .interval(Duration::from_millis(100), Duration::from_millis(100))
        .parallelism(64)
        .server(move |b| b.max_capacity(server_max))
        .build()
        .await
        .unwrap();
    let pair = Arc::new(pair);
    assert!(
        pair.client.wait_idle(cap, Duration::from_secs(20)).await,
        "never filled: {:?}",
        pair.client.stats()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let taken = Arc::new(AtomicU64::new(0));
    let over = Arc::new(AtomicU64::new(0));
    // Watcher: both idle counts within capacity, sampled every 5 ms.
    let watcher = {
        let (p, stop, over) = (pair.clone(), stop.clone(), over.clone());
        tokio::spawn(async move {
            let mut max = (0, 0);
            while !stop.load(Ordering::Acquire) {
                let (s, c) = (p.server.active(), p.client.active());
                max = (max.0.max(s), max.1.max(c));
                if s > server_max || c > cap {
                    over.fetch_add(1, Ordering::AcqRel);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (p, stop, taken) = (pair.clone(), stop.clone(), taken.clone());
        workers.push(tokio::spawn(async move {
            // Bounded in count as well as by the stop flag.
            for _ in 0..2_000_000u64 {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                match p.take(Duration::from_secs(10)).await {
                    Ok((_id, s, c)) => {
                        drop((s, c));
                        taken.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => panic!("take failed during churn: {e}"),
                }
            }
        }));
    }
    let start = Instant::now();
    let mut windows = Vec::new();
    let mut last = 0;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = taken.load(Ordering::Acquire);
        windows.push(now - last);
        last = now;
    }
    stop.store(true, Ordering::Release);
    let secs = start.elapsed().as_secs_f64();
    for w in workers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("worker hung")
            .unwrap();
    }
    let max = watcher.await.unwrap();
    let total = taken.load(Ordering::Acquire);
    println!(
        "churn: {total} pairs in {secs:.1} s = {:.0} pairs/s; per 250 ms window {windows:?}; max idle server {} client {}",
        total as f64 / secs,
        max.0,
        max.1
    );
    assert!(total > 0, "no pair at all");
    assert_eq!(
        over.load(Ordering::Acquire),
        0,
        "an idle count went over capacity"
    );
    let p = Arc::try_unwrap(pair).unwrap_or_else(|_| panic!("pair still shared"));
    let Pair { server, client, .. } = &p;
    println!("server {:?}\nclient {:?}", server.stats(), client.stats());
    p.close().await;
}
