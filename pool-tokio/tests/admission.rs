//! Admission under pressure, through the driver: a silent peer holding handshake
//! slots is evicted, a source over its quota evicts its own oldest, and no duration a
//! user can give makes the pool panic.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use pool_tokio::{AdmissionLimits, ClientConfig, ClientTls, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, ServerPool};
use tokio::net::TcpSocket;

/// A TCP connection to `to` from the loopback address `from`, that then says nothing.
async fn silent(from: [u8; 4], to: SocketAddr) -> tokio::net::TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(IpAddr::from(from), 0)).unwrap();
    s.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_holding_every_slot_are_evicted_for_the_client() {
    // In TLS mode a silent peer holds its slot until the deadline (a minute here).
    let server = ServerPool::builder()
        .bind(loopback())
        .config(
            ServerConfig::builder()
                .handshake_timeout(Duration::from_secs(60))
                .admission(AdmissionLimits {
                    max_handshakes: 4,
                    ..AdmissionLimits::default()
                }),
        )
        .tls(ServeTls::self_signed())
        .build()
        .unwrap();
    let mut strangers = Vec::new();
    for n in 0..4u8 {
        strangers.push(silent([127, 0, 0, 2 + n], server.local_addr()).await);
    }
    assert!(eventually(|| server.stats().status.in_flight == 4).await);
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(4, 4).parallelism(1))
        .tls(ClientTls::SelfSigned {
            pin: None,
            name: None,
        })
        .build()
        .unwrap();
    assert!(client.wait_idle(4, T).await, "the client got through");
    assert!(server.wait_idle(4, T).await);
    let (id, mut s) = server.get_timeout(T).await.unwrap();
    let mut c = client.get_timeout(id, T).await.unwrap();
    roundtrip(&mut s, &mut c).await;
    let k = server.stats().counters;
    // Each finished handshake frees its slot, so one eviction (or a few) is enough.
    assert!(k.evicted_handshakes >= 1, "{k:?}");
    assert_eq!(k.refused_busy, 0);
    assert_eq!(k.handshake_failures, 0, "evictions are not failures");
    // The strangers not evicted still hold their slots; once they leave, every task
    // has reported back and nothing is in flight.
    drop(strangers);
    assert!(eventually(|| server.stats().status.in_flight == 0).await);
    client.close().await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_quota_evicts_its_own_oldest() {
    let server = ServerPool::builder()
        .bind(loopback())
        .config(
            ServerConfig::builder()
                .handshake_timeout(Duration::from_secs(60))
                .admission(AdmissionLimits {
                    pending_per_source: Some(2),
                    ..AdmissionLimits::default()
                }),
        )
        .tls(ServeTls::self_signed())
        .build()
        .unwrap();
    let mut strangers = Vec::new();
    for _ in 0..5 {
        strangers.push(silent([127, 0, 0, 9], server.local_addr()).await);
    }
    assert!(eventually(|| server.stats().counters.evicted_handshakes == 3).await);
    assert!(eventually(|| server.stats().status.in_flight == 2).await);
    // Another source is not affected.
    let _other = silent([127, 0, 0, 10], server.local_addr()).await;
    assert!(eventually(|| server.stats().status.in_flight == 3).await);
    assert_eq!(server.stats().counters.evicted_handshakes, 3);
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_quota_refuses_a_source_that_holds_it() {
    let server = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().admission(AdmissionLimits {
            idle_per_source: Some(3),
            ..AdmissionLimits::default()
        }))
        .build()
        .unwrap();
    let mut strangers = Vec::new();
    for _ in 0..6 {
        strangers.push(silent([127, 0, 0, 11], server.local_addr()).await);
    }
    assert!(eventually(|| server.stats().counters.refused_quota == 3).await);
    assert!(eventually(|| server.active() == 3).await);
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maximum_duration_makes_no_panic() {
    let server = ServerPool::builder()
        .bind(loopback())
        .config(
            ServerConfig::builder()
                .handshake_timeout(Duration::MAX)
                .max_idle_age(Some(Duration::MAX))
                .sweep_interval(Duration::MAX),
        )
        .get_timeout(Duration::MAX)
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(
            ClientConfig::builder()
                .capacity(2, 2)
                .handshake_timeout(Duration::MAX)
                .id_timeout(Duration::MAX)
                .max_idle_age(Some(Duration::MAX)),
        )
        .get_timeout(Duration::MAX)
        .build()
        .unwrap();
    assert!(client.wait_idle(2, Duration::MAX).await);
    assert!(server.wait_idle(2, Duration::MAX).await);
    let (id, mut s) = server.get_timeout(Duration::MAX).await.unwrap();
    let mut c = client.get_timeout(id, Duration::MAX).await.unwrap();
    roundtrip(&mut s, &mut c).await;
    client.close().await;
    server.close().await;
    // A get that must wait, with no deadline: it waits, and close answers it.
    let server = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().handshake_timeout(Duration::MAX))
        .build()
        .unwrap();
    let s3 = server.clone();
    let waiter = tokio::spawn(async move { s3.get_timeout(Duration::MAX).await.map(|_| ()) });
    assert!(eventually(|| server.stats().status.waiting == 1).await);
    server.close().await;
    assert!(waiter.await.unwrap().is_err());
}
