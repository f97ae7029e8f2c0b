//! The tunnel-key proof on both wires: keyed pools pair, a wrong or missing key is
//! refused and counted and pools nothing, and a proof taken from one connection does
//! not pass on another.

mod common;

use std::time::Duration;

use common::{client_config, roundtrip, wait_until, WAIT};
use futures_util::{SinkExt, StreamExt};
use pool_tls::proof::{CHALLENGE_LEN, RESPONSE_LEN};
use pool_tls::ClientProof;
use pool_ws::h2::{H2ClientPool, H2ServerPool};
use pool_ws::{ClientTls, HandshakeError, ServeTls, ServerConfig, TunnelKey};
use pool_ws::{WsClientPool, WsServerPool, WS_SCOPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn key(seed: u8) -> TunnelKey {
    TunnelKey::from_bytes(&std::array::from_fn::<u8, 32, _>(|i| seed ^ (7 * i as u8))).unwrap()
}

/// A short handshake deadline, so a peer that never proves is let go soon.
fn server_config(max: usize) -> ServerConfig {
    ServerConfig::builder()
        .max_capacity(max)
        .sweep_interval(Duration::from_millis(100))
        .handshake_timeout(Duration::from_millis(400))
        .build()
        .unwrap()
}

fn self_signed() -> ClientTls {
    ClientTls::SelfSigned {
        pin: None,
        name: None,
    }
}

fn ws_server(key: Option<TunnelKey>) -> WsServerPool {
    let b = WsServerPool::builder()
        .config(server_config(8))
        .tls(ServeTls::self_signed())
        .bind("127.0.0.1:0".parse().unwrap());
    match key {
        Some(k) => b.tunnel_key(k),
        None => b,
    }
    .build()
    .unwrap()
}

fn ws_client(server: &WsServerPool, key: Option<TunnelKey>, n: usize) -> WsClientPool {
    let b = WsClientPool::builder()
        .address(server.local_addr())
        .config(client_config(n))
        .tls(self_signed());
    match key {
        Some(k) => b.tunnel_key(k),
        None => b,
    }
    .build()
    .unwrap()
}

fn h2_server(key: Option<TunnelKey>) -> H2ServerPool {
    let b = H2ServerPool::builder()
        .config(server_config(8))
        .tls(ServeTls::self_signed())
        .bind("127.0.0.1:0".parse().unwrap());
    match key {
        Some(k) => b.tunnel_key(k),
        None => b,
    }
    .build()
    .unwrap()
}

fn h2_client(server: &H2ServerPool, key: Option<TunnelKey>, n: usize) -> H2ClientPool {
    let b = H2ClientPool::builder()
        .address(server.local_addr())
        .config(client_config(n));
    match key {
        Some(k) => b.tunnel_key(k),
        None => b,
    }
    .build()
    .unwrap()
}

fn bad_proof(e: Option<HandshakeError>) -> bool {
    matches!(e, Some(HandshakeError::BadProof(_)))
}

#[tokio::test]
async fn keyed_ws_over_tls_pairs_and_carries_bytes() {
    let server = ws_server(Some(key(1)));
    let client = ws_client(&server, Some(key(1)), 2);
    for round in 0..3u8 {
        let (id, mut s) = server.get_timeout(WAIT).await.expect("server get");
        let mut c = client.get(id, WAIT).await.expect("client get");
        roundtrip(&mut s, &mut c, 100_000, round).await;
    }
    assert_eq!(server.counters().auth_failures, 0);
    assert_eq!(client.counters().auth_failures, 0);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn keyed_plain_ws_proves_unbound_as_tcp_mode_0() {
    let server = WsServerPool::builder()
        .config(server_config(4))
        .tunnel_key(key(10))
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let client = WsClientPool::builder()
        .address(server.local_addr())
        .config(client_config(1))
        .tunnel_key(key(10))
        .build()
        .unwrap();
    assert!(client.url().starts_with("ws://"), "{}", client.url());
    let (id, mut s) = server.get_timeout(WAIT).await.expect("server get");
    let mut c = client.get(id, WAIT).await.expect("client get");
    roundtrip(&mut s, &mut c, 10_000, 0).await;
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn keyed_h2_pairs_and_carries_bytes() {
    let server = h2_server(Some(key(2)));
    let client = h2_client(&server, Some(key(2)), 2);
    for round in 0..3u8 {
        let (id, mut s) = server.get_timeout(WAIT).await.expect("server get");
        let mut c = client.get(id, WAIT).await.expect("client get");
        let (x, mut got) = (common::pattern(50_000, round), vec![0; 50_000]);
        let (w, r) = tokio::join!(c.write_all(&x), s.read_exact(&mut got));
        w.unwrap();
        r.unwrap();
        assert!(got == x, "bytes changed on the way");
        s.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
    assert_eq!(server.failed_proofs(), 0);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn ws_wrong_key_is_refused_counted_and_pools_nothing() {
    let server = ws_server(Some(key(3)));
    let client = ws_client(&server, Some(key(4)), 2);
    assert!(wait_until(|| server.counters().auth_failures >= 2).await);
    assert!(wait_until(|| client.counters().auth_failures >= 2).await);
    assert!(
        bad_proof(server.last_failure()),
        "{:?}",
        server.last_failure()
    );
    assert!(
        bad_proof(client.last_failure()),
        "{:?}",
        client.last_failure()
    );
    assert_eq!((server.counters().created, server.status().idle), (0, 0));
    assert_eq!((client.counters().created, client.status().idle), (0, 0));
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn h2_wrong_key_is_refused_counted_and_pools_nothing() {
    let server = h2_server(Some(key(5)));
    let client = h2_client(&server, Some(key(6)), 2);
    assert!(wait_until(|| server.failed_proofs() >= 2).await);
    assert!(wait_until(|| client.counters().auth_failures >= 2).await);
    assert!(
        bad_proof(server.last_failure()),
        "{:?}",
        server.last_failure()
    );
    assert!(
        bad_proof(client.last_failure()),
        "{:?}",
        client.last_failure()
    );
    assert_eq!((server.counters().created, server.status().idle), (0, 0));
    assert_eq!((client.counters().created, client.status().idle), (0, 0));
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_keyed_server_refuses_an_unkeyed_client() {
    // WebSocket: the unkeyed client never answers the challenge behind the id; the
    // server lets it go at the handshake deadline.
    let server = ws_server(Some(key(7)));
    let client = ws_client(&server, None, 1);
    assert!(wait_until(|| server.counters().auth_failures >= 1).await);
    assert!(
        bad_proof(server.last_failure()),
        "{:?}",
        server.last_failure()
    );
    assert_eq!(server.counters().created, 0);
    client.close().await;
    server.close().await;
    // HTTP/2: the unkeyed client's first stream opens with 0x00, not a proof.
    let server = h2_server(Some(key(7)));
    let client = h2_client(&server, None, 1);
    assert!(wait_until(|| server.failed_proofs() >= 1).await);
    assert!(
        bad_proof(server.last_failure()),
        "{:?}",
        server.last_failure()
    );
    assert_eq!(server.counters().created, 0);
    client.close().await;
    server.close().await;
}

#[tokio::test]
async fn a_keyed_client_refuses_an_unkeyed_server() {
    let server = h2_server(None);
    let client = h2_client(&server, Some(key(8)), 1);
    assert!(wait_until(|| client.counters().auth_failures >= 1).await);
    assert!(
        bad_proof(client.last_failure()),
        "{:?}",
        client.last_failure()
    );
    assert_eq!(client.counters().created, 0);
    client.close().await;
    server.close().await;
}

/// One WebSocket connection over TLS by hand: the id, the challenge and the TLS
/// binding of its session.
struct Raw {
    ws: tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    scope: Vec<u8>,
    challenge: [u8; CHALLENGE_LEN],
    binding: [u8; 32],
}

async fn raw_dial(server: &WsServerPool) -> Raw {
    let (config, _) = self_signed().build().unwrap().unwrap();
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(server.local_addr().ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let binding = pool_tls::tls_binding(tls.get_ref().1).unwrap();
    let url = format!("wss://{}/", server.local_addr());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    let first = match ws.next().await {
        Some(Ok(Message::Binary(b))) => b,
        other => panic!("no id message: {other:?}"),
    };
    assert_eq!(first.len(), 4 + CHALLENGE_LEN, "id then challenge");
    Raw {
        ws,
        scope: [WS_SCOPE, &first[..4]].concat(),
        challenge: first[4..].try_into().unwrap(),
        binding,
    }
}

#[tokio::test]
async fn a_proof_replayed_from_another_connection_or_session_fails() {
    let k = key(9);
    let server = ws_server(Some(k.clone()));
    // A genuine response on its own connection verifies: the harness proves right.
    let mut a = raw_dial(&server).await;
    let nonce = pool_tls::fresh_nonce().unwrap();
    let (proof, response) = ClientProof::respond(&k, &a.challenge, nonce, &a.scope, &a.binding);
    a.ws.send(Message::binary(response.to_vec())).await.unwrap();
    let confirm = match a.ws.next().await {
        Some(Ok(Message::Binary(b))) => b,
        other => panic!("no confirmation: {other:?}"),
    };
    proof
        .check_confirm(confirm.as_ref().try_into().unwrap())
        .expect("the server's confirmation verifies");
    assert!(wait_until(|| server.counters().created == 1).await);
    // The same response on another connection (another challenge, another session).
    let mut b = raw_dial(&server).await;
    assert_ne!(a.challenge, b.challenge);
    assert_eq!(response.len(), RESPONSE_LEN);
    b.ws.send(Message::binary(response.to_vec())).await.unwrap();
    assert!(wait_until(|| server.counters().auth_failures == 1).await);
    assert!(
        bad_proof(server.last_failure()),
        "{:?}",
        server.last_failure()
    );
    let next = tokio::time::timeout(WAIT, b.ws.next())
        .await
        .expect("closed");
    assert!(!matches!(next, Some(Ok(Message::Binary(_)))), "{next:?}");
    assert_eq!(server.counters().created, 1);
    // A fresh response to this connection's own challenge and id, made with another
    // session's binding (what a relay between two TLS sessions holds): refused.
    let mut c = raw_dial(&server).await;
    let nonce = pool_tls::fresh_nonce().unwrap();
    let (_, response) = ClientProof::respond(&k, &c.challenge, nonce, &c.scope, &a.binding);
    assert_ne!(a.binding, c.binding);
    c.ws.send(Message::binary(response.to_vec())).await.unwrap();
    assert!(wait_until(|| server.counters().auth_failures == 2).await);
    let next = tokio::time::timeout(WAIT, c.ws.next())
        .await
        .expect("closed");
    assert!(!matches!(next, Some(Ok(Message::Binary(_)))), "{next:?}");
    assert_eq!(server.counters().created, 1);
    server.close().await;
}

#[tokio::test]
async fn a_keyed_h2_client_names_a_server_that_never_confirms() {
    // A TLS HTTP/2 server that takes the proof stream and never answers it.
    let (tls, _) = ServeTls::self_signed()
        .build_alpn(&[b"h2"])
        .unwrap()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mute = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let tls = tokio_rustls::TlsAcceptor::from(tls.clone());
            held.push(tokio::spawn(async move {
                let Ok(tls) = tls.accept(tcp).await else {
                    return;
                };
                let Ok(mut conn) = h2::server::handshake(tls).await else {
                    return;
                };
                let mut streams = Vec::new();
                while let Some(Ok(s)) = conn.accept().await {
                    streams.push(s);
                }
            }));
        }
    });
    let cfg = pool_ws::ClientConfig::builder()
        .capacity(1, 1)
        .handshake_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let client = H2ClientPool::builder()
        .address(addr)
        .config(cfg)
        .tunnel_key(key(11))
        .build()
        .unwrap();
    assert!(wait_until(|| client.counters().auth_failures >= 1).await);
    assert!(
        bad_proof(client.last_failure()),
        "{:?}",
        client.last_failure()
    );
    assert_eq!(client.counters().created, 0);
    client.close().await;
    mute.abort();
}
