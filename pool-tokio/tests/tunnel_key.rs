//! The optional tunnel-key step after the id: a mutual challenge-response, so that only
//! connections that prove the shared key enter either pool, and nothing a peer records
//! replays, relays or serves as an oracle.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pool_tls::proof::{BINDING_LEN, CHALLENGE_LEN, CONFIRM_LEN, NONCE_LEN, RESPONSE_LEN};
use pool_tls::{tls_binding, ClientProof, ServerProof};
use pool_tokio::{ClientConfig, ClientTls, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, ServerPool, TlsMode, TunnelKey};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const ID_LEN: usize = 8;

fn key(b: u8) -> TunnelKey {
    TunnelKey::from_bytes(&std::array::from_fn::<u8, 32, _>(|i| {
        b.wrapping_add(7 * i as u8)
    }))
    .unwrap()
}

fn keyed_server(key: &TunnelKey, mode: TlsMode) -> ServerPool {
    ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().handshake_timeout(Duration::from_millis(500)))
        .tls(if mode == TlsMode::Off {
            ServeTls::Off
        } else {
            ServeTls::self_signed()
        })
        .tunnel_key(key.clone())
        .build()
        .unwrap()
}

fn keyed_client(
    addr: std::net::SocketAddr,
    key: Option<&TunnelKey>,
    mode: TlsMode,
    n: usize,
) -> ClientPool {
    let mut b = ClientPool::builder()
        .address(addr)
        .config(ClientConfig::builder().capacity(n, n))
        .tls(ClientTls::from(mode));
    if let Some(k) = key {
        b = b.tunnel_key(k.clone());
    }
    b.build().unwrap()
}

/// Reads exactly `N` bytes within the test bound.
async fn read_n<const N: usize>(s: &mut (impl AsyncRead + Unpin)) -> [u8; N] {
    let mut buf = [0u8; N];
    timeout(T, s.read_exact(&mut buf))
        .await
        .expect("read timed out")
        .expect("read failed");
    buf
}

/// Whether the peer closes (or resets) without sending another byte, within the bound.
async fn closed_without_a_byte(s: &mut (impl AsyncRead + Unpin)) -> bool {
    let mut one = [0u8; 1];
    matches!(timeout(T, s.read(&mut one)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_pairs_in_every_mode() {
    let k = key(1);
    for mode in [TlsMode::Off, TlsMode::SelfSigned] {
        let server = keyed_server(&k, mode);
        let client = keyed_client(server.local_addr(), Some(&k), mode, 4);
        assert!(
            server.wait_idle(4, T).await,
            "keyed clients were not admitted"
        );
        for _ in 0..20 {
            let (id, mut s) = server.get_timeout(T).await.unwrap();
            let mut c = client.get_timeout(id, T).await.unwrap();
            roundtrip(&mut s, &mut c).await;
        }
        assert_eq!(server.stats().counters.auth_failures, 0);
        assert_eq!(client.stats().counters.auth_failures, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_on_either_side_or_no_key_never_enters_a_pool() {
    let (a, b) = (key(1), key(2));
    for (server_key, client_key, mode) in [
        (&a, Some(&b), TlsMode::Off),
        (&b, Some(&a), TlsMode::Off),
        (&a, None, TlsMode::Off),
        (&a, Some(&b), TlsMode::SelfSigned),
        (&b, Some(&a), TlsMode::SelfSigned),
    ] {
        let server = keyed_server(server_key, mode);
        let client = keyed_client(server.local_addr(), client_key, mode, 4);
        assert!(
            eventually(|| server.stats().counters.auth_failures >= 4).await,
            "refusals not counted by the server in mode {mode}"
        );
        if client_key.is_some() {
            // The server never confirms: the client counts its failures too.
            assert!(
                eventually(|| client.stats().counters.auth_failures >= 4).await,
                "refusals not counted by the client in mode {mode}"
            );
            assert_eq!(client.active(), 0, "the client pooled an unproven server");
        }
        assert_eq!(
            server.active(),
            0,
            "a connection without the key entered the pool"
        );
        assert!(server.get_timeout(Duration::from_millis(50)).await.is_err());
        client.close().await;
        server.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_an_id_and_a_challenge_and_nothing_made_with_the_key() {
    let server = keyed_server(&key(1), TlsMode::Off);
    // Garbage in place of a response: refused at once, with no byte more.
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    let _ = read_n::<{ ID_LEN + CHALLENGE_LEN }>(&mut s).await;
    s.write_all(&[0x5a; RESPONSE_LEN]).await.unwrap();
    assert!(closed_without_a_byte(&mut s).await);
    // Silence, or a short answer: cut at the deadline, with no byte more.
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    let _ = read_n::<{ ID_LEN + CHALLENGE_LEN }>(&mut s).await;
    s.write_all(b"not a proof").await.unwrap();
    assert!(closed_without_a_byte(&mut s).await);
    assert_eq!(server.active(), 0);
    assert!(eventually(|| server.stats().counters.auth_failures == 2).await);
}

/// A fake server picks the id and the challenge; the client's answer is good for that
/// one exchange only, because it covers the client's own fresh nonce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_server_gets_no_oracle() {
    let k = key(1);
    let fake = TcpListener::bind(loopback()).await.unwrap();
    let client = keyed_client(fake.local_addr().unwrap(), Some(&k), TlsMode::Off, 1);
    let id = *b"0a0b0c0d";
    let ns = [7u8; CHALLENGE_LEN];
    let mut recorded = Vec::new();
    for _ in 0..2 {
        let (mut c, _) = timeout(T, fake.accept()).await.unwrap().unwrap();
        c.write_all(&id).await.unwrap();
        c.write_all(&ns).await.unwrap();
        recorded.push(read_n::<RESPONSE_LEN>(&mut c).await);
        // No confirmation: the fake server does not know the key.
    }
    assert!(eventually(|| client.stats().counters.auth_failures >= 2).await);
    assert_eq!(client.active(), 0, "the client pooled a fake server");

    // The same id and challenge twice: fresh client nonces, different tags.
    let (r1, r2) = (recorded[0], recorded[1]);
    assert_ne!(r1[..NONCE_LEN], r2[..NONCE_LEN]);
    assert_ne!(r1[NONCE_LEN..], r2[NONCE_LEN..]);
    // Each response is valid for its own exchange (the check below is not vacuous)…
    for r in [&r1, &r2] {
        assert!(ServerProof::new(&k, ns, &id, &[]).check_response(r).is_ok());
    }
    // …and for no other challenge, id or binding: not replayable against a real
    // server's fresh challenge, and no proof for an id of the fake server's choosing.
    let other_ids: [&[u8]; 4] = [b"0a0b0c0e", b"00000000", b"ffffffff", &id[..4]];
    for r in [&r1, &r2] {
        for other in [
            [0u8; CHALLENGE_LEN],
            [8; CHALLENGE_LEN],
            r1[..32].try_into().unwrap(),
        ] {
            assert!(ServerProof::new(&k, other, &id, &[])
                .check_response(r)
                .is_err());
        }
        for other in other_ids {
            assert!(ServerProof::new(&k, ns, other, &[])
                .check_response(r)
                .is_err());
        }
        assert!(ServerProof::new(&k, ns, &id, &[0; BINDING_LEN])
            .check_response(r)
            .is_err());
    }
    // Swapping the nonces between the two recordings gives nothing valid either.
    let mut spliced = r1;
    spliced[..NONCE_LEN].copy_from_slice(&r2[..NONCE_LEN]);
    assert!(ServerProof::new(&k, ns, &id, &[])
        .check_response(&spliced)
        .is_err());
    client.close().await;
}

/// A man in the middle relays one real exchange in mode 0 and records it; the recorded
/// response is refused on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_response_does_not_replay() {
    let k = key(1);
    let server = keyed_server(&k, TlsMode::Off);
    let mitm = TcpListener::bind(loopback()).await.unwrap();
    let client = keyed_client(mitm.local_addr().unwrap(), Some(&k), TlsMode::Off, 1);

    let (mut c, _) = timeout(T, mitm.accept()).await.unwrap().unwrap();
    let mut s = TcpStream::connect(server.local_addr()).await.unwrap();
    let hello = read_n::<{ ID_LEN + CHALLENGE_LEN }>(&mut s).await;
    c.write_all(&hello).await.unwrap();
    let response = read_n::<RESPONSE_LEN>(&mut c).await;
    s.write_all(&response).await.unwrap();
    let confirm = read_n::<CONFIRM_LEN>(&mut s).await;
    c.write_all(&confirm).await.unwrap();
    // The relayed exchange is genuine: both pools accept it.
    assert!(server.wait_idle(1, T).await);
    assert!(client.wait_idle(1, T).await);

    let mut replay = TcpStream::connect(server.local_addr()).await.unwrap();
    let hello2 = read_n::<{ ID_LEN + CHALLENGE_LEN }>(&mut replay).await;
    assert_ne!(hello2[ID_LEN..], hello[ID_LEN..], "the challenge repeated");
    replay.write_all(&response).await.unwrap();
    assert!(closed_without_a_byte(&mut replay).await);
    assert!(eventually(|| server.stats().counters.auth_failures == 1).await);
    assert_eq!(server.active(), 1, "the replay entered the pool");
    drop((c, s));
    client.close().await;
    server.close().await;
}

/// In mode 1 the proof is bound to its TLS session: a response made for one session
/// (what a client that talks TLS to a man in the middle computes) is refused on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_for_one_tls_session_is_refused_on_another() {
    let k = key(1);
    let server = keyed_server(&k, TlsMode::SelfSigned);
    let config = pool_tls::ClientTlsBuilder::new(TlsMode::SelfSigned)
        .build()
        .unwrap()
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
        let mut tls = timeout(T, connector.connect(name.clone(), tcp))
            .await
            .unwrap()
            .unwrap();
        let hello = read_n::<{ ID_LEN + CHALLENGE_LEN }>(&mut tls).await;
        let binding = tls_binding(tls.get_ref().1).unwrap();
        sessions.push((tls, hello, binding));
    }
    let [(mut a, hello_a, binding_a), (mut b, hello_b, binding_b)] =
        <[_; 2]>::try_from(sessions).unwrap_or_else(|_| unreachable!());
    assert_ne!(binding_a, binding_b);

    // Session A, with its own binding: accepted and confirmed.
    let (id_a, ch_a) = hello_a.split_at(ID_LEN);
    let (proof, response) = ClientProof::respond(
        &k,
        ch_a.try_into().unwrap(),
        [3; NONCE_LEN],
        id_a,
        &binding_a,
    );
    a.write_all(&response).await.unwrap();
    a.flush().await.unwrap();
    proof
        .check_confirm(&read_n::<CONFIRM_LEN>(&mut a).await)
        .unwrap();
    assert!(server.wait_idle(1, T).await);

    // Session B, answered right in every way but the binding (session A's): refused.
    let (id_b, ch_b) = hello_b.split_at(ID_LEN);
    let (_, relayed) = ClientProof::respond(
        &k,
        ch_b.try_into().unwrap(),
        [4; NONCE_LEN],
        id_b,
        &binding_a,
    );
    b.write_all(&relayed).await.unwrap();
    b.flush().await.unwrap();
    assert!(closed_without_a_byte(&mut b).await);
    assert!(eventually(|| server.stats().counters.auth_failures == 1).await);
    assert_eq!(server.active(), 1, "the relayed response entered the pool");
    server.close().await;
}

#[test]
fn weak_keys_are_refused_where_users_make_them() {
    assert!(TunnelKey::parse("s3cret").is_err());
    assert!(TunnelKey::from_bytes(b"short").is_err());
    let k = TunnelKey::generate().unwrap();
    assert_eq!(TunnelKey::parse(&k.to_hex()).unwrap().to_hex(), k.to_hex());
    assert_eq!(format!("{k:?}"), "TunnelKey(..)");
}

/// Flights per pooled connection, counted by a proxy between the pools, with and
/// without the key: each connection's flights, once both pools hold `n` idle.
///
/// The server here sends no session tickets: rustls sends them as soon as it reads the
/// client's `Finished`, and when the client's response trails its `Finished` by a
/// scheduling delay the tickets land between the two and the proxy counts two flights
/// more that nobody waits for. Without them the count is the protocol's own.
async fn flights(key: Option<&TunnelKey>, mode: TlsMode, n: usize) -> Vec<u64> {
    let tls = if mode == TlsMode::Off {
        ServeTls::Off
    } else {
        let cert = pool_tls::ServerTls::self_signed(["localhost"]).unwrap();
        let mut config = Arc::unwrap_or_clone(cert.config().unwrap());
        config.send_tls13_tickets = 0;
        ServeTls::Custom(Arc::new(config))
    };
    let mut b = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().handshake_timeout(Duration::from_millis(500)))
        .tls(tls);
    if let Some(k) = key {
        b = b.tunnel_key(k.clone());
    }
    let server = b.build().unwrap();
    let proxy = pool_testkit::count_proxy::CountProxy::start(server.local_addr())
        .await
        .unwrap();
    let client = keyed_client(proxy.addr(), key, mode, n);
    assert!(server.wait_idle(n, T).await && client.wait_idle(n, T).await);
    let flights = proxy.per_connection().iter().map(|t| t.flights).collect();
    client.close().await;
    server.close().await;
    proxy.close().await;
    flights
}

/// The proof's messages ride with the handshake's: in TLS mode a keyed connection is
/// ready after the flights of an unkeyed one (ClientHello; the server's flight with
/// `id ‖ Ns` behind its `Finished`; the client's `Finished` and response; the
/// confirmation), and in plain mode after three (`id ‖ Ns`; the response; the
/// confirmation). A flight more fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_connection_costs_no_flight_more_than_an_unkeyed_one() {
    let k = key(1);
    let tls_plain = flights(None, TlsMode::SelfSigned, 4).await;
    assert_eq!(tls_plain, [4; 4], "an unkeyed TLS connection");
    let tls_keyed = flights(Some(&k), TlsMode::SelfSigned, 4).await;
    assert_eq!(tls_keyed, tls_plain, "a keyed TLS connection");
    let plain_keyed = flights(Some(&k), TlsMode::Off, 4).await;
    assert_eq!(plain_keyed, [3; 4], "a keyed plain connection");
}
