//! The default adaptation policy on real sockets: a flash crowd through the tokio and
//! the plain-threads client pools (both on pool-core's one driver protocol).
//!
//! Before the protocol was written once, both shipped drivers took connections without
//! telling the policy, which then saw no demand: the capacity stayed at its minimum of
//! 4 under a step to 500 pairs a second and most gets failed. These tests fail on that:
//! the capacity must grow well past its start, and no get may fail. How many pairs were
//! ready at once is a timing figure, measured by `pool-bench --only adapt` beside the
//! simulator's prediction, not asserted here.

use std::sync::Arc;
use std::time::Duration;

use pool_bench::flash::{self, Client, FlashReport, FlashTrace};
use pool_core::ClientConfig;
use pool_threads::ThreadClientPool;
use pool_tokio::{ClientPool, ServerPool};

fn check(r: &FlashReport, driver: &str) {
    eprintln!("{driver}: {r:?}, {:.1}% at once", r.at_once_pct());
    assert_eq!(r.failed_all, 0, "{driver}: gets failed: {r:?}");
    assert!(
        r.capacity_peak >= 4 * r.capacity_before.max(4),
        "{driver}: the policy did not follow the step: {r:?}"
    );
    assert!(r.pairs > 0, "{driver}: nothing counted: {r:?}");
}

async fn server() -> ServerPool {
    ServerPool::builder()
        .bind("127.0.0.1:0".parse::<std::net::SocketAddr>().expect("addr"))
        .build()
        .expect("server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_client_follows_a_flash_crowd() {
    let server = server().await;
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(4, 1024))
        .build()
        .expect("client");
    assert!(server.wait_idle(4, Duration::from_secs(5)).await);
    let client = Client::Tokio(client);
    let r = flash::run(&FlashTrace::quick(), &server, &client).await;
    check(&r, "tokio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_client_follows_a_flash_crowd() {
    let server = server().await;
    let cfg = ClientConfig::builder()
        .capacity(4, 1024)
        .build()
        .expect("config");
    let pool = ThreadClientPool::builder(server.local_addr())
        .config(cfg)
        .build()
        .expect("client");
    assert!(server.wait_idle(4, Duration::from_secs(5)).await);
    let client = Client::Threads(Arc::new(pool));
    let r = flash::run(&FlashTrace::quick(), &server, &client).await;
    check(&r, "threads");
    if let Client::Threads(p) = client {
        tokio::task::spawn_blocking(move || p.close())
            .await
            .expect("close");
    }
}

#[test]
fn the_simulator_predicts_the_same_step() {
    let cfg = ClientConfig::builder()
        .capacity(4, 1024)
        .build()
        .expect("config");
    let p = flash::predict(&FlashTrace::quick(), cfg, Default::default(), 3);
    check(&p, "simulator");
}
