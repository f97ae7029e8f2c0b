//! What a Go peer sees: its `ClientGet(id)` never waits, and its single mode dials plain.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{loopback, T};
use pool_tokio::{ClientConfig, ClientTls, Mode, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, ServerPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client that keeps dialing like the Go package: it reads the 8-byte id, and only
/// `register_delay` later (its read returning, the map store) can a get find the id.
/// Its get by id never waits: the id is registered or it is a miss.
struct GoTimedPeer {
    registered: Arc<Mutex<HashMap<[u8; 8], TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl GoTimedPeer {
    fn start(server: &ServerPool, dialers: usize, register_delay: Duration) -> Self {
        let registered: Arc<Mutex<HashMap<[u8; 8], TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let addr = server.local_addr();
        for _ in 0..dialers {
            let (registered, stop) = (registered.clone(), stop.clone());
            tokio::spawn(async move {
                // Bounded: the test stops it, and no run dials more than this.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Keep a bounded number of unclaimed connections, as a pool would.
                    if registered.lock().unwrap().len() >= 32 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    let Ok(mut s) = TcpStream::connect(addr).await else {
                        return;
                    };
                    let mut id = [0u8; 8];
                    if s.read_exact(&mut id).await.is_err() {
                        continue;
                    }
                    tokio::time::sleep(register_delay).await;
                    registered.lock().unwrap().insert(id, s);
                }
            });
        }
        Self { registered, stop }
    }

    /// Go's `ClientGet`: there or not, at once.
    fn get_now(&self, id: &[u8; 8]) -> Option<TcpStream> {
        self.registered.lock().unwrap().remove(id)
    }
}

/// Pairs `n` times: the server hands out a connection, the application passes the id
/// on at once, the Go-timed peer looks it up at once. Returns the misses (each one is
/// then retried until it pairs, as a Go application would, and its bytes are checked).
async fn misses(settle: Option<Duration>, n: usize) -> usize {
    let mut config = ServerConfig::builder().max_capacity(4096);
    if let Some(d) = settle {
        config = config.settle(d);
    }
    let server = ServerPool::builder()
        .bind(loopback())
        .config(config)
        .build()
        .unwrap();
    // The peer registers 1 ms after its read returns: slower than a Go client on an
    // idle loopback, so the default settle time is shown to cover it with margin.
    let peer = GoTimedPeer::start(&server, 8, Duration::from_millis(1));
    let mut missed = 0;
    for i in 0..n {
        let (id, mut on_server) = server.get_timeout(T).await.unwrap();
        let key: [u8; 8] = id.as_str().as_bytes().try_into().unwrap();
        let mut on_client = match peer.get_now(&key) {
            Some(c) => c,
            None => {
                missed += 1;
                let mut waited = None;
                for _ in 0..1_000 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    if let Some(c) = peer.get_now(&key) {
                        waited = Some(c);
                        break;
                    }
                }
                waited.expect("the id never reached the peer")
            }
        };
        let msg = (i as u32).to_le_bytes();
        on_server.write_all(&msg).await.unwrap();
        let mut got = [0u8; 4];
        on_client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg, "pair {i} crossed streams");
    }
    peer.stop.store(true, Ordering::Relaxed);
    server.close().await;
    missed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_timed_client_never_misses_an_id_at_the_default_settle() {
    let missed = misses(None, 2_000).await;
    println!("default settle: {missed} misses in 2000 pairs");
    assert_eq!(missed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_settle_a_go_timed_client_misses_ids() {
    // The control for the test above: with no settle time the race is there, so the
    // test above could fail.
    let missed = misses(Some(Duration::ZERO), 300).await;
    println!("settle 0: {missed} misses in 300 pairs");
    assert!(
        missed > 0,
        "the race did not show: the peer is not Go-timed"
    );
}

#[tokio::test]
async fn single_mode_without_tls_dials_plain_as_go_does() {
    // A plain server: a client that tried TLS would never pair with it. TLS is one
    // setting (`ClientTls`), so single mode cannot silently drop or keep it: off is
    // plain, as the Go package's single mode always is.
    let server = common::server();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(
            ClientConfig::builder()
                .mode(Mode::Single)
                .capacity(2, 2)
                .build_go_normalized(),
        )
        .tls(ClientTls::Off)
        .build()
        .unwrap();
    assert!(client.wait_idle(2, T).await, "{:?}", client.stats());
    let mut c = client.get_any_timeout(T).await.unwrap();
    assert!(!c.is_tls());
    c.write_all(b"hi").await.unwrap();
    let (_, mut s) = server.get_timeout(T).await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    assert_eq!(client.stats().counters.handshake_failures, 0);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn single_mode_dials_with_the_tls_it_is_given() {
    let server = ServerPool::builder()
        .bind(loopback())
        .tls(ServeTls::self_signed())
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().mode(Mode::Single).capacity(1, 1))
        .tls(ClientTls::SelfSigned {
            pin: None,
            name: None,
        })
        .build()
        .unwrap();
    assert!(client.wait_idle(1, T).await, "{:?}", client.stats());
    assert!(client.get_any_timeout(T).await.unwrap().is_tls());
    client.close().await;
    server.close().await;
}
