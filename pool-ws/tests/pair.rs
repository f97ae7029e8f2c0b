//! The npws wire on loopback: pairing, ids, TLS codes, the server's refusals.

mod common;

use common::{client_config, pair, roundtrip, server_config, take, wait_until, WAIT};
use pool_ws::{ClientTls, HandshakeError, Roots, ServeTls, ServerTls, WsClientPool, WsServerPool};

#[tokio::test]
async fn pairs_carry_bytes_both_ways_and_the_first_id_is_zero() {
    let (server, client) = pair(8, 4).await;
    assert!(wait_until(|| client.idle() == 4 && server.status().idle == 4).await);
    let mut ids = Vec::new();
    for round in 0..4u8 {
        let (id, mut s, mut c) = take(&server, &client).await;
        roundtrip(&mut s, &mut c, 200_000, round).await;
        ids.push(id.to_string());
    }
    assert!(ids.contains(&"00000000".to_string()), "ids: {ids:?}");
    assert_eq!(ids.iter().filter(|i| *i == "00000000").count(), 1);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn wss_pairs_in_codes_1_and_2() {
    let cert = ServerTls::self_signed(["localhost"]).unwrap();
    let server = WsServerPool::builder()
        .config(server_config(4))
        .tls(ServeTls::Cert(cert.clone()))
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let one = WsClientPool::builder()
        .address(server.local_addr())
        .config(client_config(1))
        .tls(ClientTls::SelfSigned {
            pin: None,
            name: None,
        })
        .build()
        .unwrap();
    assert!(one.url().starts_with("wss://"));
    let (_, mut s, mut c) = take(&server, &one).await;
    roundtrip(&mut s, &mut c, 10_000, 1).await;
    // Until the server has seen `one` close the connection it dialed ahead, it could
    // hand that one out, and `two` would not hold it.
    one.close().await;
    assert!(wait_until(|| server.status().idle == 0).await);
    let two = WsClientPool::builder()
        .address(server.local_addr())
        .config(client_config(1))
        .host("localhost")
        .tls(ClientTls::Verified {
            roots: Roots::CaDer(cert.certificate_der().to_vec()),
            name: None,
        })
        .build()
        .unwrap();
    let (_, mut s, mut c) = take(&server, &two).await;
    roundtrip(&mut s, &mut c, 10_000, 2).await;
    two.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_plain_client_against_wss_fails_by_name() {
    let server = WsServerPool::builder()
        .config(server_config(4))
        .tls(ServeTls::self_signed())
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let client = WsClientPool::builder()
        .address(server.local_addr())
        .config(client_config(1))
        .build()
        .unwrap();
    assert!(wait_until(|| server.counters().handshake_failures > 0).await);
    assert!(matches!(
        server.last_failure(),
        Some(HandshakeError::Tls(_))
    ));
    assert_eq!(client.idle(), 0);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_full_server_answers_503_before_the_upgrade() {
    let (server, client) = pair(2, 4).await;
    assert!(wait_until(|| server.counters().refused_full > 0).await);
    assert!(wait_until(|| client.last_failure() == Some(HandshakeError::Full)).await);
    assert_eq!(server.status().idle, 2);
    // What the server holds still pairs.
    let (_, mut s, mut c) = take(&server, &client).await;
    roundtrip(&mut s, &mut c, 1000, 3).await;
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_filtered_address_is_answered_403() {
    let server = WsServerPool::builder()
        .config(server_config(4))
        .client_ip("127.0.0.2")
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let client = WsClientPool::builder()
        .address(server.local_addr())
        .config(client_config(1))
        .build()
        .unwrap();
    assert!(wait_until(|| client.last_failure() == Some(HandshakeError::Forbidden)).await);
    assert!(server.counters().refused_filter > 0);
    assert_eq!(server.status().idle, 0);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn an_unknown_id_is_not_found_and_close_answers_waiting_gets() {
    let (server, client) = pair(4, 1).await;
    assert!(wait_until(|| client.idle() == 1 && client.status().in_flight == 0).await);
    let unknown = "0badc0de".parse().unwrap();
    let got = client.get(unknown, WAIT).await;
    assert_eq!(got.unwrap_err(), pool_ws::GetError::NotFound);
    // Two gets take the server's one connection and then wait.
    let (_id, _held) = server.get_timeout(WAIT).await.unwrap();
    let waiting = {
        let server = server.clone();
        tokio::spawn(async move { server.get_timeout(WAIT).await.map(|_| ()) })
    };
    assert!(wait_until(|| server.status().waiting == 1).await);
    server.close().await;
    assert_eq!(waiting.await.unwrap(), Err(pool_ws::GetError::Closed));
    client.close().await;
}

#[tokio::test]
async fn code_0_on_port_443_dials_wss_and_other_ports_ws() {
    let on_443 = WsClientPool::builder()
        .address("127.0.0.1:443".parse().unwrap())
        .config(client_config(1))
        .host("localhost")
        .build()
        .unwrap();
    assert_eq!(on_443.url(), "wss://localhost:443/");
    on_443.close().await;
    let other = WsClientPool::builder()
        .address("[::1]:8080".parse().unwrap())
        .config(client_config(1))
        .path("/tunnel")
        .build()
        .unwrap();
    assert_eq!(other.url(), "ws://[::1]:8080/tunnel");
    other.close().await;
    let bad = WsClientPool::builder()
        .address("127.0.0.1:1".parse().unwrap())
        .path("no-slash")
        .build();
    assert!(matches!(bad, Err(pool_ws::BuildError::Path(_))));
}

#[tokio::test]
async fn a_server_flush_is_seen_by_the_client_which_refills() {
    let (server, client) = pair(8, 4).await;
    assert!(wait_until(|| client.idle() == 4 && server.status().idle == 4).await);
    let before = client.counters().evicted_dead;
    assert_eq!(server.flush(), 4);
    assert!(wait_until(|| client.counters().evicted_dead >= before + 4).await);
    assert!(wait_until(|| client.idle() == 4 && server.status().idle == 4).await);
    assert_eq!(client.flush(), 4);
    let (_, mut s, mut c) = take(&server, &client).await;
    roundtrip(&mut s, &mut c, 1000, 8).await;
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_wss_client_against_a_plain_server_is_named_on_both_ends() {
    let server = WsServerPool::builder()
        .config(server_config(4))
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let client = WsClientPool::builder()
        .address(server.local_addr())
        .config(client_config(1))
        .tls(ClientTls::SelfSigned {
            pin: None,
            name: None,
        })
        .build()
        .unwrap();
    assert!(wait_until(|| server.last_failure() == Some(HandshakeError::ClientSpeaksTls)).await);
    assert!(server.counters().protocol_mismatches > 0);
    assert!(wait_until(|| matches!(client.last_failure(), Some(HandshakeError::Tls(_)))).await);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn in_band_starts_and_a_half_close_reach_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = WsServerPool::builder()
        .config(server_config(4))
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let core = pool_ws::ClientConfig::builder()
        .capacity(2, 2)
        .interval(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_millis(50),
        )
        .watch(pool_core::IdleWatch::Starts)
        .build()
        .unwrap();
    let client = WsClientPool::builder()
        .address(server.local_addr())
        .config(core)
        .build()
        .unwrap();
    assert!(wait_until(|| client.idle() == 2 && server.status().idle == 2).await);
    for round in 0..4u8 {
        let (id, mut s) = server.start_with(&[round; 300], WAIT).await.unwrap();
        let mut c = client.accept_timeout(WAIT).await.unwrap();
        assert_eq!(c.id(), id);
        let mut got = [0u8; 300];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [round; 300]);
        // The server half-closes: the client reads the end, and still answers.
        s.set_half_close(true);
        s.shutdown().await.unwrap();
        assert_eq!(c.read(&mut got).await.unwrap(), 0, "the end of the stream");
        c.write_all(b"after").await.unwrap();
        c.flush().await.unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"after");
    }
    client.close().await;
    server.close().await;
}
