//! In-band activation on real sockets: the server starts a session on an idle
//! connection (`ServerPool::start`), and the client learns of it from the OS's
//! readiness (`ClientPool::accept`), with the sweep an hour away. The same protocol the
//! core's driver test and the simulator run. Linux only (the watch is `epoll`).
#![cfg(target_os = "linux")]

mod common;

use std::time::Duration;

use common::*;
use pool_tokio::{ClientConfig, ClientTls, IdleWatch, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, GetError, ServerPool, TlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOUR: Duration = Duration::from_secs(3600);

fn pair(tls: TlsMode, capacity: usize) -> (ServerPool, ClientPool) {
    let server = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().sweep_interval(HOUR))
        .tls(if tls == TlsMode::Off {
            ServeTls::Off
        } else {
            ServeTls::self_signed()
        })
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(
            ClientConfig::builder()
                .capacity(capacity, capacity)
                .sweep_interval(HOUR)
                .watch(IdleWatch::Starts),
        )
        .tls(ClientTls::from(tls))
        .build()
        .unwrap();
    (server, client)
}

async fn started_then_accepted(tls: TlsMode) {
    let (server, client) = pair(tls, 4);
    assert!(client.wait_idle(4, T).await && server.wait_idle(4, T).await);
    assert_eq!(client.stats().counters.started, 0, "{:?}", client.stats());

    // An accept that waits is answered by the start.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.accept_timeout(T).await })
    };
    let (id, mut s) = server.start_with(&[], T).await.unwrap();
    s.write_all(b"first bytes").await.unwrap();
    s.flush().await.unwrap();
    let mut c = waiting.await.unwrap().unwrap();
    assert_eq!(c.id(), id, "both ends hold the same connection");
    // Merely idle connections are not sessions: nothing was started by itself (in TLS,
    // the records after the handshake are read with the id, never taken for a start).
    // The watch reports readiness in the order it came, so anything the idle
    // connections' own bytes set off was counted before the real start was.
    let k = client.stats().counters;
    assert_eq!((k.started, k.starts_dropped), (1, 0), "{k:?}");
    let mut got = [0u8; 11];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"first bytes", "the header is read, the data is not");
    roundtrip(&mut s, &mut c).await;

    // A start with nobody accepting waits for the next accept, which takes it at once.
    let (id2, mut s2) = server.start_with(&[], T).await.unwrap();
    s2.write_all(b"x").await.unwrap();
    s2.flush().await.unwrap();
    assert!(eventually(|| client.stats().counters.started == 2).await);
    let mut c2 = client
        .accept_timeout(Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(c2.id(), id2);
    let mut one = [0u8; 1];
    c2.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"x");
    // Starts refill the client like gets.
    assert!(client.wait_idle(4, T).await);
    let k = client.stats().counters;
    assert_eq!((k.started, k.starts_dropped, k.evicted_dead), (2, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_session_reaches_the_accept_plain() {
    started_then_accepted(TlsMode::Off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_session_reaches_the_accept_tls() {
    started_then_accepted(TlsMode::SelfSigned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_at_once_each_gets_its_own_bytes() {
    many_sessions(TlsMode::Off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tls_sessions_at_once_each_gets_its_own_bytes() {
    many_sessions(TlsMode::SelfSigned).await;
}

async fn many_sessions(tls: TlsMode) {
    const SESSIONS: usize = 200;
    let (server, client) = pair(tls, 16);
    assert!(client.wait_idle(16, T).await);
    let accepts = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..SESSIONS {
                let mut c = client.accept_timeout(T).await.unwrap();
                let mut n = [0u8; 8];
                c.read_exact(&mut n).await.unwrap();
                // Echo the number back, so the server checks the pairing.
                c.write_all(&n).await.unwrap();
                seen.push(u64::from_be_bytes(n));
            }
            seen
        })
    };
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..SESSIONS as u64 {
        let server = server.clone();
        starts.spawn(async move {
            let (_, mut s) = server.start_with(&[], T).await.unwrap();
            s.write_all(&i.to_be_bytes()).await.unwrap();
            let mut back = [0u8; 8];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(
                u64::from_be_bytes(back),
                i,
                "the session's own bytes came back"
            );
        });
    }
    while let Some(r) = starts.join_next().await {
        r.unwrap();
    }
    let mut seen = accepts.await.unwrap();
    seen.sort_unstable();
    assert_eq!(seen, (0..SESSIONS as u64).collect::<Vec<_>>());
    assert_eq!(client.stats().counters.started, SESSIONS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_without_the_header_are_no_session() {
    let (server, client) = pair(TlsMode::Off, 2);
    assert!(client.wait_idle(2, T).await && server.wait_idle(2, T).await);
    // A server speaking the Go protocol writes payload on an idle connection.
    let (_, mut s) = server.get_timeout(T).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    // Bytes on an idle connection are a start to this pool; the accept finds no header.
    assert!(eventually(|| client.stats().counters.started == 1).await);
    let r = client.accept_timeout(Duration::from_millis(300)).await;
    assert!(matches!(r, Err(GetError::Timeout { .. })), "{r:?}");
    assert_eq!(client.stats().counters.starts_dropped, 1);
    // A real start still goes through.
    let (_, mut s) = server.start_with(&[], T).await.unwrap();
    s.write_all(b"ok").await.unwrap();
    let mut c = client.accept_timeout(T).await.unwrap();
    let mut got = [0u8; 2];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ok");
}

/// A server that writes the id, the start header and the session's first bytes in one
/// TLS record, as a busy server does when a start was waiting for the connection as it
/// landed: the client's TLS session takes the start off the socket while it reads the
/// id, so no readiness will ever report it. The pool looks at such a connection once as
/// it lands, and the accept still gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_came_with_the_id_is_not_missed() {
    let cert = pool_tls::ServerTls::self_signed(["localhost"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.config().unwrap());
    let l = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut all = b"0a0b0c0d".to_vec();
        all.extend_from_slice(&pool_tokio::START);
        all.extend_from_slice(b"early session");
        tls.write_all(&all).await.unwrap();
        tls.flush().await.unwrap();
        tls // held open
    });
    let client = ClientPool::builder()
        .address(addr)
        .config(
            ClientConfig::builder()
                .capacity(1, 1)
                .sweep_interval(HOUR)
                .watch(IdleWatch::Starts),
        )
        .tls(ClientTls::SelfSigned {
            pin: None,
            name: None,
        })
        .build()
        .unwrap();
    let mut c = client.accept_timeout(T).await.expect("the start is found");
    assert_eq!(c.id().to_string(), "0a0b0c0d");
    let mut got = [0u8; 13];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"early session");
    drop(server.await.unwrap());
}

/// A start with its first bytes: the client's accept reads the bytes after the header,
/// whole, in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_carries_its_first_bytes() {
    for tls in [TlsMode::Off, TlsMode::SelfSigned] {
        let (server, client) = pair(tls, 2);
        assert!(client.wait_idle(2, T).await && server.wait_idle(2, T).await);
        let first: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let (id, mut s) = server.start_with(&first, T).await.unwrap();
        let mut c = client.accept_timeout(T).await.unwrap();
        assert_eq!(c.id(), id);
        let mut got = vec![0u8; first.len()];
        c.read_exact(&mut got).await.unwrap();
        assert!(got == first, "{tls:?}: the bytes after the header");
        roundtrip(&mut s, &mut c).await;
        client.close().await;
        server.close().await;
    }
}
