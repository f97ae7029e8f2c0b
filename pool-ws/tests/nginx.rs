//! The pool through a real reverse proxy: nginx in front of the server pool, proxying
//! the WebSocket upgrade, restarted mid-run.
//!
//! nginx runs as a child process of the test (`daemon off`, `-c` and `-p` in a temp
//! dir), never as the system service. Where nginx is missing the test says so and
//! passes; under CI (`CI` set) a missing nginx fails it.

mod common;

use common::{client_config, roundtrip, server_config, take, wait_until};
use pool_testkit::nginx;
use pool_ws::{WsClientPool, WsServerPool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_through_nginx_and_recovers_from_its_restart() {
    let Some(bin) = nginx::for_test("the reverse-proxy test") else {
        return;
    };
    let server = WsServerPool::builder()
        .config(server_config(64))
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let mut nginx = nginx::Nginx::new(bin, server.local_addr());
    nginx.start().await;
    let client = WsClientPool::builder()
        .address(nginx.listen)
        .host("localhost")
        .config(client_config(4))
        .build()
        .unwrap();
    assert!(client.url().starts_with("ws://localhost:"));
    for round in 0..4u8 {
        let (_, mut s, mut c) = take(&server, &client).await;
        roundtrip(&mut s, &mut c, 100_000, round).await;
    }
    assert!(
        wait_until(|| client.idle() == 4).await,
        "{:?}",
        client.status()
    );
    let before = client.counters();

    nginx.stop();
    // Every connection through nginx is gone; the client pool finds out by itself.
    assert!(
        wait_until(|| client.counters().evicted_dead > before.evicted_dead).await,
        "the client pool never saw nginx go: {:?}",
        client.counters()
    );
    nginx.start().await;

    // Recovered without help: pairs through the new nginx, byte-checked.
    for round in 0..4u8 {
        let (_, mut s, mut c) = take(&server, &client).await;
        roundtrip(&mut s, &mut c, 100_000, 10 + round).await;
    }
    assert!(
        wait_until(|| client.idle() == 4).await,
        "{:?}",
        client.status()
    );
    client.close().await;
    server.close().await;
}
