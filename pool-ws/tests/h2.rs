//! The nph2 wire on loopback: pooled HTTP/2 streams, resets, GOAWAY, the preface.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::{client_config, pattern, server_config, stranger, wait_until, WAIT};
use pool_ws::h2::{H2ClientPool, H2Conn, H2ServerPool, StreamError, MAX_PREFACES};
use pool_ws::{ConnId, HandshakeError, ServeTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn server_on(addr: std::net::SocketAddr, max: usize) -> H2ServerPool {
    H2ServerPool::builder()
        .config(server_config(max))
        .tls(ServeTls::self_signed())
        .bind(addr)
        .build()
        .unwrap()
}

async fn take(server: &H2ServerPool, client: &H2ClientPool) -> (ConnId, H2Conn, H2Conn) {
    let (id, s) = server.get_timeout(WAIT).await.expect("server get");
    let c = client.get(id, WAIT).await.expect("client get");
    assert_eq!((s.id(), c.id()), (id, id));
    (id, s, c)
}

async fn roundtrip(a: &mut H2Conn, b: &mut H2Conn, size: usize, seed: u8) {
    let (x, y) = (pattern(size, seed), pattern(size, seed.wrapping_add(1)));
    let (mut got_x, mut got_y) = (vec![0; size], vec![0; size]);
    let one = async {
        a.write_all(&x).await.unwrap();
        a.read_exact(&mut got_y).await.unwrap();
    };
    let two = async {
        b.read_exact(&mut got_x).await.unwrap();
        b.write_all(&y).await.unwrap();
    };
    tokio::time::timeout(WAIT, async { tokio::join!(one, two) })
        .await
        .expect("round trip stalled");
    assert!(got_x == x && got_y == y, "bytes changed on the way");
}

/// A TLS connection offering `h2` from the stranger 127.0.0.2, made by hand (no pool).
async fn stranger_h2_tls(
    to: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = stranger(to, 2).await;
    let unchecked = pool_ws::ClientTls::SelfSigned {
        pin: None,
        name: None,
    };
    let (tls, _) = unchecked.build_alpn(&[b"h2"]).unwrap().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    connector.connect(name, tcp).await.unwrap()
}

fn stream_error(e: &std::io::Error) -> Option<StreamError> {
    e.get_ref()?.downcast_ref::<StreamError>().cloned()
}

#[tokio::test]
async fn streams_carry_bytes_both_ways_and_the_first_id_is_zero() {
    let server = server_on("127.0.0.1:0".parse().unwrap(), 8);
    let client = H2ClientPool::builder()
        .address(server.local_addr())
        .config(client_config(4))
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for round in 0..4u8 {
        let (id, mut s, mut c) = take(&server, &client).await;
        roundtrip(&mut s, &mut c, 300_000, round).await;
        ids.push(id.to_string());
    }
    assert!(ids.contains(&"00000000".to_string()), "{ids:?}");
    // A clean end of one body is the end of the other side's stream.
    let (_, mut s, mut c) = take(&server, &client).await;
    c.write_all(b"last").await.unwrap();
    c.shutdown().await.unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"last");
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn the_servers_capacity_is_its_stream_limit() {
    let server = server_on("127.0.0.1:0".parse().unwrap(), 2);
    let cfg = pool_ws::ClientConfig::builder()
        .capacity(4, 4)
        .handshake_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = H2ClientPool::builder()
        .address(server.local_addr())
        .config(cfg)
        .build()
        .unwrap();
    // The third stream is never opened: the connection allows two.
    assert!(wait_until(|| client.counters().dial_failures > 0).await);
    assert_eq!(client.idle(), 2);
    assert_eq!(server.status().idle, 2);
    assert_eq!(server.counters().refused_full, 0);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_reset_stream_is_a_named_error_and_leaves_the_pool() {
    let server = server_on("127.0.0.1:0".parse().unwrap(), 8);
    let client = H2ClientPool::builder()
        .address(server.local_addr())
        .config(client_config(2))
        .build()
        .unwrap();
    let (_, mut s, c) = take(&server, &client).await;
    drop(c); // cut short: reset, never a clean end
    let e = s.read(&mut [0u8; 8]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    assert_eq!(stream_error(&e), Some(StreamError::Reset(8)));
    // An idle stream the client resets leaves the server's pool as dead.
    assert!(wait_until(|| client.idle() == 2 && server.status().idle == 2).await);
    let (_, held) = client.get_any(WAIT).await.unwrap();
    let before = server.counters().evicted_dead;
    drop(held);
    assert!(wait_until(|| server.counters().evicted_dead > before).await);
    let (_, mut s, mut c) = take(&server, &client).await;
    roundtrip(&mut s, &mut c, 1000, 9).await;
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_goaway_is_named_and_the_client_makes_a_new_connection() {
    let server = server_on("127.0.0.1:0".parse().unwrap(), 8);
    let addr = server.local_addr();
    let client = H2ClientPool::builder()
        .address(addr)
        .config(client_config(2))
        .build()
        .unwrap();
    let (_, mut s, mut c) = take(&server, &client).await;
    server.close().await; // GOAWAY; idle streams reset
                          // A stream handed out lives on through the GOAWAY.
    roundtrip(&mut s, &mut c, 10_000, 2).await;
    assert!(
        wait_until(|| client.last_failure() == Some(HandshakeError::GoAway(0))).await,
        "{:?}",
        client.last_failure()
    );
    drop(s);
    let e = c.read(&mut [0u8; 8]).await.unwrap_err();
    assert_eq!(stream_error(&e), Some(StreamError::Reset(8)));
    let server = server_on(addr, 8);
    let (_, mut s, mut c) = take(&server, &client).await;
    roundtrip(&mut s, &mut c, 10_000, 3).await;
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_slowloris_on_the_preface_evicts_the_oldest() {
    let server = server_on("127.0.0.1:0".parse().unwrap(), 8);
    let first = H2ClientPool::builder()
        .address(server.local_addr())
        .config(client_config(1))
        .build()
        .unwrap();
    let (_, mut s, mut c) = take(&server, &first).await;
    // Strangers connect and send half a TLS record, more of them than the slots.
    let mut held = Vec::new();
    for i in 0..MAX_PREFACES + 8 {
        let mut t = stranger(server.local_addr(), 2 + (i % 200) as u8).await;
        t.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        held.push(t);
    }
    assert!(wait_until(|| server.preface_failures() >= 8).await);
    assert!(matches!(
        server.last_failure(),
        Some(HandshakeError::Preface(_))
    ));
    // The stream `first` dialed ahead is reset by its close; until the server has seen
    // that, it could hand it out, and `second` would not hold it.
    first.close().await;
    assert!(wait_until(|| server.status().idle == 0).await);
    // A real client still connects, and the pair made before still carries bytes.
    let second = H2ClientPool::builder()
        .address(server.local_addr())
        .config(client_config(1))
        .build()
        .unwrap();
    let (_, mut s2, mut c2) = take(&server, &second).await;
    roundtrip(&mut s2, &mut c2, 10_000, 4).await;
    roundtrip(&mut s, &mut c, 10_000, 5).await;
    drop(held);
    second.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_connection_that_opens_no_stream_is_closed_at_the_deadline() {
    let cfg = pool_ws::ServerConfig::builder()
        .handshake_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let server = H2ServerPool::builder()
        .config(cfg)
        .tls(ServeTls::self_signed())
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    // A client pool of capacity 0 would not connect: make the connection by hand.
    let tls = stranger_h2_tls(server.local_addr()).await;
    let (_send, conn) = h2::client::handshake(tls).await.unwrap();
    let ended = tokio::spawn(conn);
    // Nothing asked: the server closes the connection at its deadline.
    tokio::time::timeout(WAIT, ended)
        .await
        .expect("not closed")
        .unwrap()
        .ok();
    assert!(server.preface_failures() >= 1);
    assert_eq!(
        server.last_failure(),
        Some(HandshakeError::Preface(
            "no stream within the deadline".into()
        ))
    );
    server.close().await;
}

#[tokio::test]
async fn a_filtered_address_is_answered_403_and_a_wrong_request_404() {
    let server = H2ServerPool::builder()
        .config(server_config(8))
        .client_ip("127.0.0.2")
        .tls(ServeTls::self_signed())
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let client = H2ClientPool::builder()
        .address(server.local_addr())
        .config(client_config(1))
        .build()
        .unwrap();
    assert!(wait_until(|| client.last_failure() == Some(HandshakeError::Forbidden)).await);
    assert!(server.counters().refused_filter > 0);
    client.close().await;
    // From the allowed address, a GET is answered 404 and counted.
    let tls = stranger_h2_tls(server.local_addr()).await;
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get("https://localhost/stream")
        .body(())
        .unwrap();
    let (resp, _body) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), 404);
    assert!(wait_until(|| server.counters().protocol_mismatches == 1).await);
    // A POST whose body does not start with 0x00 is reset and counted.
    let mut send = send.ready().await.unwrap();
    let req = http::Request::post("https://localhost/stream")
        .body(())
        .unwrap();
    let (resp, mut body) = send.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"GET"), false)
        .unwrap();
    let e = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap_err();
    assert_eq!(e.reason(), Some(h2::Reason::PROTOCOL_ERROR));
    assert!(wait_until(|| server.counters().protocol_mismatches == 2).await);
    assert!(matches!(
        server.last_failure(),
        Some(HandshakeError::BadId(_))
    ));
    assert_eq!(server.status().idle, 0);
    server.close().await;
}
