//! The optional tunnel-key step after the id: only connections that prove the shared
//! key enter the server's pool.

mod common;

use std::time::Duration;

use common::*;
use pool_tokio::{ClientPool, ServerPool, TlsMode, TunnelKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn keyed_server(key: &str, mode: TlsMode) -> ServerPool {
    ServerPool::builder()
        .bind(loopback())
        .tls_mode(mode)
        .tunnel_key(TunnelKey::new(key))
        .handshake_timeout(Duration::from_millis(500))
        .build()
        .unwrap()
}

fn keyed_client(server: &ServerPool, key: Option<&str>, mode: TlsMode) -> ClientPool {
    let mut b = ClientPool::builder()
        .address(server.local_addr())
        .tls_mode(mode)
        .capacity(4, 4);
    if let Some(k) = key {
        b = b.tunnel_key(TunnelKey::new(k));
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_pairs_in_every_mode() {
    for mode in [TlsMode::Off, TlsMode::SelfSigned] {
        let server = keyed_server("shared", mode);
        let client = keyed_client(&server, Some("shared"), mode);
        assert!(
            server.wait_idle(4, T).await,
            "keyed clients were not admitted"
        );
        for _ in 0..20 {
            let (id, mut s) = server.get(T).await.unwrap();
            let mut c = client.get(id, T).await.unwrap();
            roundtrip(&mut s, &mut c).await;
        }
        assert_eq!(server.stats().counters.auth_failures, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_no_key_never_enters_the_pool() {
    for (key, mode) in [
        (Some("guess"), TlsMode::Off),
        (None, TlsMode::Off),
        (Some("guess"), TlsMode::SelfSigned),
    ] {
        let server = keyed_server("shared", mode);
        let _stranger = keyed_client(&server, key, mode);
        assert!(
            eventually(|| server.stats().counters.auth_failures >= 4).await,
            "refusals not counted for {key:?} in mode {mode}"
        );
        assert_eq!(
            server.active(),
            0,
            "a connection without the key entered the pool"
        );
        server.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_stranger_that_reads_the_id_and_waits_is_cut_at_the_deadline() {
    let server = keyed_server("shared", TlsMode::Off);
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut id = [0u8; 8];
    s.read_exact(&mut id).await.unwrap();
    s.write_all(b"not a proof").await.unwrap();
    // The server closes it once the deadline passes: our read sees the end.
    let mut rest = [0u8; 1];
    let n = tokio::time::timeout(T, s.read(&mut rest))
        .await
        .expect("never cut");
    assert!(matches!(n, Ok(0) | Err(_)));
    assert_eq!(server.active(), 0);
    assert_eq!(server.stats().counters.auth_failures, 1);
}
