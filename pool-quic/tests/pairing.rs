//! Both pools on loopback: streams pair by id, bytes pass, gets wait, flush and close.

mod common;

use std::time::Duration;

use common::{check_bytes, pair, paired};
use pool_quic::GetError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pair_by_the_servers_id_and_carry_bytes_both_ways() {
    let (server, client) = pair(8, 8);
    assert!(client.wait_idle(8, Duration::from_secs(5)).await);
    assert!(server.wait_idle(8, Duration::from_secs(5)).await);
    for _ in 0..8 {
        let _ = paired(&server, &client).await;
    }
    // The pool refills what the gets took.
    assert!(client.wait_idle(8, Duration::from_secs(5)).await);
    assert_eq!(client.connections(), 1);
    client.close().await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_by_an_id_that_never_comes_times_out_and_a_closed_pool_says_closed() {
    let (server, client) = pair(2, 2);
    assert!(client.wait_idle(2, Duration::from_secs(5)).await);
    let id = "0badc0de".parse().unwrap();
    let e = client
        .get_timeout(id, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(e, GetError::Timeout { .. } | GetError::NotFound(_)),
        "{e}"
    );
    client.close().await;
    assert!(matches!(
        client.get_any().await.unwrap_err(),
        GetError::Closed
    ));
    server.close().await;
    assert!(matches!(server.get().await.unwrap_err(), GetError::Closed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_one_connection_holds_spread_over_shards() {
    let (server, client) = pair(300, 300);
    assert!(client.wait_idle(300, Duration::from_secs(10)).await);
    assert_eq!(client.connections(), pool_quic::shards(300));
    assert_eq!(server.connections(), 3);
    let (mut s, mut c) = paired(&server, &client).await;
    check_bytes(&mut s, &mut c, b"after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_resets_idle_streams_on_both_ends_and_the_client_refills() {
    let (server, client) = pair(4, 4);
    assert!(client.wait_idle(4, Duration::from_secs(5)).await);
    assert!(server.wait_idle(4, Duration::from_secs(5)).await);
    assert_eq!(server.flush(), 4);
    // The client's streams were reset by the server: its sweep finds them dead and
    // dials anew; the server's new streams pair with them.
    let (mut s, mut c) = paired(&server, &client).await;
    check_bytes(&mut s, &mut c, b"fresh").await;
    assert!(client.counters().evicted_dead >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_used_and_dropped_give_their_connection_room_back() {
    // One full connection: every refill needs the stream credit the used ones free.
    let (server, client) = pair(128, 128);
    assert!(client.wait_idle(128, Duration::from_secs(10)).await);
    for n in 0..20 {
        let (mut s, mut c) = paired(&server, &client).await;
        if n % 2 == 0 {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            s.shutdown().await.unwrap();
            c.shutdown().await.unwrap();
            let mut v = Vec::new();
            c.read_to_end(&mut v).await.unwrap();
            s.read_to_end(&mut v).await.unwrap();
        }
    }
    let back = client.wait_idle(128, Duration::from_secs(10)).await;
    assert!(
        back,
        "{:?} {:?} {:?} {:?}",
        client.status(),
        client.last_failure(),
        server.counters(),
        server.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_of_another_certificate_is_refused_in_the_handshake_and_named() {
    let server = common::server(4);
    let other = pool_tls::ServerTls::self_signed(["localhost"]).unwrap();
    let client = pool_quic::ClientPool::builder()
        .address(server.local_addr())
        .config(
            pool_quic::ClientConfig::builder()
                .capacity(1, 1)
                .build()
                .unwrap(),
        )
        .tls(pool_quic::ClientTls::SelfSigned {
            pin: Some(other.fingerprint()),
            name: None,
        })
        .get_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let e = client.get_any().await.unwrap_err();
    let f = match &e {
        GetError::Unreachable(Some(f))
        | GetError::Timeout {
            failing: Some(f), ..
        } => f,
        e => panic!("no failure named: {e}"),
    };
    assert!(
        matches!(&f.cause, pool_quic::Cause::Tls(t) if t.contains("pin")),
        "{e}"
    );
    assert_eq!(server.active(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_mode_is_refused_at_build() {
    let addr = "127.0.0.1:9".parse().unwrap();
    let core = pool_quic::ClientConfig::builder()
        .mode(pool_core::Mode::Single)
        .build()
        .unwrap();
    let e = pool_quic::ClientPool::builder()
        .address(addr)
        .config(core)
        .build()
        .unwrap_err();
    assert!(matches!(e, pool_quic::BuildError::Config(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_band_starts_reach_the_client_on_their_stream_without_an_id() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = common::server(8);
    let core = pool_quic::ClientConfig::builder()
        .capacity(4, 8)
        .watch(pool_core::IdleWatch::Starts)
        .build()
        .unwrap();
    let client = pool_quic::ClientPool::builder()
        .address(server.local_addr())
        .config(core)
        .build()
        .unwrap();
    assert!(client.wait_idle(4, Duration::from_secs(5)).await);
    assert!(server.wait_idle(4, Duration::from_secs(5)).await);
    for n in 0..8u8 {
        let first = [b'a' + n; 100];
        let (id, mut s) = server
            .start_with(&first, Duration::from_secs(5))
            .await
            .unwrap();
        let mut c = client.accept_timeout(Duration::from_secs(5)).await.unwrap();
        assert_eq!(c.id(), id, "the stream the server started");
        let mut got = [0u8; 100];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, first, "the session's bytes follow the header");
        c.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
    // Nothing started: an accept waits out its time.
    let e = client
        .accept_timeout(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(e, GetError::Timeout { .. }), "{e}");
    client.close().await;
    server.close().await;
}
