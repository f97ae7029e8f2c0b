//! Flush and close under concurrent gets, dead-peer eviction, bytes never consumed, the
//! client-IP filter.

mod common;

use std::time::Duration;

use common::*;
use pool_tokio::{ClientConfig, ClientTls, IpFilter, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, GetError, ServerPool, TlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_answers_every_waiting_get_with_closed() {
    let server = server();
    let mut gets = Vec::new();
    for _ in 0..50 {
        let s = server.clone();
        gets.push(tokio::spawn(async move { s.get_timeout(T).await }));
    }
    assert!(eventually(|| server.stats().status.waiting == 50).await);
    tokio::time::timeout(T, server.close())
        .await
        .expect("close hung");
    for g in gets {
        let r = tokio::time::timeout(T, g)
            .await
            .expect("a get hung")
            .unwrap();
        assert!(matches!(r, Err(GetError::Closed)), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_under_concurrent_gets_then_refill() {
    let server = server();
    let client = client(&server, 16, 16);
    assert!(client.wait_idle(16, T).await && server.wait_idle(16, T).await);
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (s, c) = (server.clone(), client.clone());
        workers.push(tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..40 {
                let Ok((id, mut sc)) = s.get_timeout(Duration::from_secs(3)).await else {
                    continue;
                };
                // The pair may have been flushed on the client side in between.
                if let Ok(mut cc) = c.get_timeout(id, Duration::from_secs(3)).await {
                    roundtrip(&mut sc, &mut cc).await;
                    ok += 1;
                }
            }
            ok
        }));
    }
    // Each flush comes while the workers are pairing: after one more pair was handed
    // out.
    let served = || {
        let k = server.stats().counters;
        k.served_at_once + k.served_after_wait
    };
    for _ in 0..3 {
        let before = served();
        assert!(
            eventually(|| served() > before).await,
            "the workers stalled"
        );
        client.flush();
        server.flush();
    }
    let mut ok = 0;
    for w in workers {
        ok += tokio::time::timeout(T * 3, w)
            .await
            .expect("worker hung")
            .unwrap();
    }
    assert!(ok > 0, "no pair got through");
    assert!(
        client.wait_idle(16, T).await,
        "client did not refill after flush"
    );
    let (id, mut s) = server.get_timeout(T).await.unwrap();
    let mut c = client.get_timeout(id, T).await.unwrap();
    roundtrip(&mut s, &mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_peers_are_evicted_never_handed_out() {
    let server = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().sweep_interval(Duration::from_secs(3600)))
        .build()
        .unwrap();
    let client = client(&server, 8, 8);
    assert!(server.wait_idle(8, T).await);
    client.close().await; // every server-side connection now has a closed peer
    let err = server
        .get_timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, GetError::Timeout { .. }), "{err:?}");
    assert_eq!(server.stats().counters.evicted_dead, 8);
    assert_eq!(server.active(), 0);
    // A fresh client refills, and what the server hands out is live.
    let client = client_for(&server);
    let (id, mut s) = server.get_timeout(T).await.unwrap();
    let mut c = client.get_timeout(id, T).await.unwrap();
    roundtrip(&mut s, &mut c).await;
}

fn client_for(server: &ServerPool) -> ClientPool {
    client(server, 4, 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_replaces_dead_idle_connections_before_anyone_asks() {
    let server = server();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(
            ClientConfig::builder()
                .capacity(4, 4)
                .sweep_interval(Duration::from_millis(50)),
        )
        .build()
        .unwrap();
    assert!(client.wait_idle(4, T).await);
    server.flush(); // closes the server ends: the client's idle connections die
    assert!(
        eventually(|| client.stats().counters.evicted_dead >= 4).await,
        "sweep did not evict"
    );
    assert!(
        client.wait_idle(4, T).await,
        "dead connections were not replaced"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_on_an_idle_connection_is_never_consumed() {
    payload_survives(TlsMode::Off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_on_an_idle_tls_connection_is_never_consumed() {
    // Here the probe hands the queued records to rustls: the payload must come out of
    // its buffer intact.
    payload_survives(TlsMode::SelfSigned).await;
}

async fn payload_survives(mode: TlsMode) {
    let server = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().max_capacity(1))
        .tls(if mode == TlsMode::Off {
            ServeTls::Off
        } else {
            ServeTls::self_signed()
        })
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(1, 1))
        .tls(ClientTls::from(mode))
        .build()
        .unwrap();
    assert!(server.wait_idle(1, T).await && client.wait_idle(1, T).await);
    let mut c = client.get_any_timeout(T).await.unwrap();
    let payload: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    c.write_all(&payload).await.unwrap();
    c.flush().await.unwrap();
    // The get below probes a connection whose bytes are already in its socket (Linux
    // shows it; elsewhere loopback delivers a write before it returns).
    let (local, peer) = (server.local_addr(), c.local_addr().unwrap());
    if cfg!(target_os = "linux") {
        assert!(
            eventually(|| unread_bytes(local, peer).is_some_and(|n| n >= payload.len())).await,
            "the payload never reached the server's socket"
        );
    }
    let (id, mut s) = server.get_timeout(T).await.unwrap();
    assert_eq!(id, c.id());
    let mut got = vec![0u8; payload.len()];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, payload, "the health check ate a byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_refuses_a_client_from_127_0_0_2() {
    let server = ServerPool::builder()
        .bind(loopback())
        .filter(IpFilter::parse("127.0.0.1").unwrap())
        .build()
        .unwrap();
    let addr = server.local_addr();
    let stranger = ClientPool::builder()
        .dialer(move || async move {
            let s = TcpSocket::new_v4()?;
            s.bind("127.0.0.2:0".parse::<std::net::SocketAddr>().unwrap())?;
            s.connect(addr).await
        })
        .config(ClientConfig::builder().capacity(2, 2))
        .build()
        .unwrap();
    assert!(eventually(|| server.stats().counters.refused_filter >= 2).await);
    assert_eq!(server.active(), 0);
    assert_eq!(stranger.active(), 0);
    assert!(
        stranger.stats().counters.id_errors >= 1,
        "the refused client did not count it"
    );
    stranger.close().await;
    let friend = client(&server, 2, 2);
    assert!(server.wait_idle(2, T).await);
    let (id, mut s) = server.get_timeout(T).await.unwrap();
    let mut c = friend.get_timeout(id, T).await.unwrap();
    roundtrip(&mut s, &mut c).await;
}
