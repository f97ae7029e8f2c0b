//! Event-driven liveness: with the sweep an hour away, a peer's hang-up still takes the
//! idle connection out of the pool, because the OS reports it; without the watch it
//! stays until the sweep. Linux only.
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::*;
use pool_tokio::{ClientConfig, IdleWatch, ServerConfig};
use pool_tokio::{ClientPool, ServerPool};

const HOUR: Duration = Duration::from_secs(3600);

fn pair(watch: bool) -> (ServerPool, ClientPool) {
    let server = ServerPool::builder()
        .bind(loopback())
        .config(
            ServerConfig::builder()
                .sweep_interval(HOUR)
                .watch_hang_ups(watch),
        )
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(
            ClientConfig::builder()
                .capacity(8, 8)
                .sweep_interval(HOUR)
                .watch(if watch {
                    IdleWatch::HangUps
                } else {
                    IdleWatch::Off
                }),
        )
        .build()
        .unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_hang_up_takes_the_idle_connection_out_without_a_sweep() {
    let (server, client) = pair(true);
    assert!(client.wait_idle(8, T).await && server.wait_idle(8, T).await);
    // The server closes its ends: every client idle connection's peer hung up.
    server.flush();
    assert!(
        eventually(|| client.stats().counters.evicted_dead >= 8).await,
        "the client never noticed: {:?}",
        client.stats()
    );
    // And it refilled with live ones, which the server holds again.
    assert!(client.wait_idle(8, T).await && server.wait_idle(8, T).await);
    // The client's ends close: the server notices too.
    let before = server.stats().counters.evicted_dead;
    client.flush();
    assert!(
        eventually(|| server.stats().counters.evicted_dead >= before + 8).await,
        "the server never noticed: {:?}",
        server.stats()
    );
}

/// Runs on one thread, so that the OS's reports reach the pools' tasks in the order
/// they came: the unwatched pair's server hangs up first, and by the time a watched
/// pair's client has seen its own hang-ups, anything listening on the unwatched one's
/// connections has had its turn. Then the sweep, an hour later on tokio's paused clock,
/// is what finds them.
#[tokio::test]
async fn without_the_watch_a_hang_up_waits_for_the_sweep() {
    let (server, client) = pair(false);
    let (watched_server, watched_client) = pair(true);
    assert!(client.wait_idle(8, T).await && server.wait_idle(8, T).await);
    assert!(watched_client.wait_idle(8, T).await && watched_server.wait_idle(8, T).await);
    server.flush();
    watched_server.flush();
    assert!(
        eventually(|| watched_client.stats().counters.evicted_dead >= 8).await,
        "the watched client never noticed: {:?}",
        watched_client.stats()
    );
    let st = client.stats();
    assert_eq!(st.counters.evicted_dead, 0, "{st:?}");
    assert_eq!(st.status.idle, 8, "{st:?}");
    // The sweep is due within the hour.
    tokio::time::pause();
    tokio::time::advance(HOUR).await;
    assert!(
        eventually(|| client.stats().counters.evicted_dead >= 8).await,
        "the sweep never came: {:?}",
        client.stats()
    );
}

/// The server hangs up on a second connection after writing on the first, and the
/// test waits until the client's watch has taken that one out: the OS reports
/// readiness in the order it came, so whatever the bytes on the first caused has
/// happened by then.
async fn hang_up_another(server: &ServerPool, client: &ClientPool) {
    let (_, other) = server.get_timeout(T).await.unwrap();
    drop(other);
    assert!(
        eventually(|| client.stats().counters.evicted_dead >= 1).await,
        "the hang-up after the bytes was never seen: {:?}",
        client.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_bytes_on_an_idle_connection_are_no_hang_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, client) = pair(true);
    assert!(client.wait_idle(8, T).await && server.wait_idle(8, T).await);
    // The server side writes on a connection before the client takes it (what the
    // tunnel does with a session's first bytes): it stays in the client's pool, and
    // the bytes are there when the client takes it.
    let (id, mut s) = server.get_timeout(T).await.unwrap();
    s.write_all(b"early").await.unwrap();
    hang_up_another(&server, &client).await;
    assert_eq!(
        client.stats().counters.evicted_dead,
        1,
        "{:?}",
        client.stats()
    );
    let mut c = client.get_timeout(id, T).await.unwrap();
    let mut got = [0u8; 5];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_then_a_half_close_before_the_get_are_a_session_not_a_death() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, client) = pair(true);
    assert!(client.wait_idle(8, T).await && server.wait_idle(8, T).await);
    // The server side relays a user who sent everything and half-closed, before the
    // client took the connection: the hang-up comes with bytes still pending.
    let (id, mut s) = server.get_timeout(T).await.unwrap();
    s.write_all(b"the whole request").await.unwrap();
    s.shutdown().await.unwrap();
    hang_up_another(&server, &client).await;
    assert_eq!(
        client.stats().counters.evicted_dead,
        1,
        "{:?}",
        client.stats()
    );
    let mut c = client.get_timeout(id, T).await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"the whole request");
    // And the answer still goes back on the half-open connection.
    c.write_all(b"answer").await.unwrap();
    c.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"answer");
}
