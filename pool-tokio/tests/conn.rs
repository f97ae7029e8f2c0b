//! What a connection tells and gives its user: addresses, the negotiated TLS facts,
//! the stream itself for a relay, and a clean TLS close.

mod common;

use common::*;
use pool_tokio::{rustls, ClientPool, PoolStream, ServerPool};
use pool_tokio::{ClientConfig, ClientTls, ServeTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn tls_pair() -> (ServerPool, ClientPool) {
    tls_pair_of(2)
}

fn tls_pair_of(capacity: usize) -> (ServerPool, ClientPool) {
    let server = ServerPool::builder()
        .bind(loopback())
        .tls(ServeTls::self_signed())
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(capacity, capacity))
        .tls(ClientTls::SelfSigned {
            pin: Some(server.fingerprint().unwrap()),
            name: None,
        })
        .build()
        .unwrap();
    (server, client)
}

#[tokio::test]
async fn plain_connections_have_addresses_and_no_tls_facts() {
    let server = server();
    let client = client(&server, 2, 2);
    let (id, s) = server.get_timeout(T).await.unwrap();
    let c = client.get_timeout(id, T).await.unwrap();
    assert_eq!(s.local_addr().unwrap(), c.peer_addr().unwrap());
    assert_eq!(c.local_addr().unwrap(), s.peer_addr().unwrap());
    assert_eq!(s.local_addr().unwrap(), server.local_addr());
    assert!(!c.is_tls() && c.protocol_version().is_none());
    assert!(c.cipher_suite().is_none() && c.peer_certificates().is_none());
}

#[tokio::test]
async fn tls_connections_tell_what_was_negotiated() {
    let (server, client) = tls_pair();
    let (id, s) = server.get_timeout(T).await.unwrap();
    let c = client.get_timeout(id, T).await.unwrap();
    for conn in [&s, &c] {
        assert!(conn.is_tls());
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let suite = conn.cipher_suite().unwrap();
        assert_eq!(suite, s.cipher_suite().unwrap());
    }
    // The client saw the server's certificate; the server asked for none.
    let chain = c.peer_certificates().unwrap();
    assert_eq!(chain.len(), 1);
    assert!(s.peer_certificates().is_none());
}

#[tokio::test]
async fn the_stream_comes_out_for_a_relay() {
    let server = server();
    let client = client(&server, 2, 2);
    let (id, s) = server.get_timeout(T).await.unwrap();
    let c = client.get_timeout(id, T).await.unwrap();
    let (cid, stream) = c.into_parts();
    assert_eq!(cid, id);
    let PoolStream::Plain(tcp) = stream else {
        panic!("a plain pool gives a plain stream")
    };
    let (mut read, mut write) = tcp.into_split();
    let PoolStream::Plain(mut s) = s.into_inner() else {
        panic!("a plain pool gives a plain stream")
    };
    s.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    read.read_exact(&mut buf).await.unwrap();
    write.write_all(b"pong").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

#[tokio::test]
async fn a_tls_stream_is_a_stream_and_shuts_down_cleanly() {
    let (server, client) = tls_pair();
    let (id, mut s) = server.get_timeout(T).await.unwrap();
    let mut c = client.get_timeout(id, T).await.unwrap().into_inner();
    assert!(matches!(c, PoolStream::Tls(_)));
    // `PoolStream` reads and writes as it is.
    c.write_all(b"ping").await.unwrap();
    c.flush().await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    // `shutdown` sends close_notify: the peer reads a clean end of stream, not a
    // truncation error.
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).await.unwrap(), 0);
}

/// Both ends of a pair carry their pool's socket options (the server's are set once on
/// its listener where accepted sockets inherit them, on each connection elsewhere).
#[tokio::test]
async fn both_ends_carry_their_pools_socket_options() {
    use pool_tokio::SocketOptions;
    use std::time::Duration;
    let server_opts = SocketOptions {
        keepalive: Some(Duration::from_secs(41)),
        keepalive_interval: Some(Duration::from_secs(6)),
        keepalive_retries: Some(5),
        nodelay: true,
        user_timeout: Some(Duration::from_secs(9)),
    };
    let server = ServerPool::builder()
        .bind(loopback())
        .socket_options(server_opts)
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(2, 2))
        .socket_options(SocketOptions {
            keepalive: Some(Duration::from_secs(77)),
            ..SocketOptions::default()
        })
        .build()
        .unwrap();
    let (id, s) = server.get_timeout(T).await.unwrap();
    let c = client.get_timeout(id, T).await.unwrap();
    let (s, c) = (
        socket2::SockRef::from(s.tcp()),
        socket2::SockRef::from(c.tcp()),
    );
    assert!(s.keepalive().unwrap() && s.nodelay().unwrap());
    assert!(c.keepalive().unwrap() && c.nodelay().unwrap());
    #[cfg(target_os = "linux")]
    {
        assert_eq!(s.keepalive_time().unwrap(), Duration::from_secs(41));
        assert_eq!(s.keepalive_interval().unwrap(), Duration::from_secs(6));
        assert_eq!(s.keepalive_retries().unwrap(), 5);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(9)));
        assert_eq!(c.keepalive_time().unwrap(), Duration::from_secs(77));
    }
}

/// The client pool's later dials resume the session of an earlier one (both ends agree
/// on which), and a resumed connection waits idle with nothing unread: the tickets
/// that came with it are records, and the probe still sees the server's close.
#[tokio::test]
async fn later_tls_dials_resume_and_a_resumed_idle_connection_holds_nothing_unread() {
    use rustls::HandshakeKind::Resumed;
    let (server, client) = tls_pair_of(2);
    let mut resumed = Vec::new();
    // Bounded: the first fill runs full handshakes; the refills that follow have
    // tickets from them.
    for _ in 0..12 {
        let (id, s) = server.get_timeout(T).await.unwrap();
        let c = client.get_timeout(id, T).await.unwrap();
        assert_eq!(s.handshake_kind(), c.handshake_kind(), "both ends agree");
        if c.handshake_kind() == Some(Resumed) {
            resumed.push((s, c));
        }
    }
    assert!(
        resumed.len() >= 6,
        "{} of 12 connections resumed",
        resumed.len()
    );
    let (s, mut c) = resumed.pop().unwrap();
    assert_eq!(c.liveness(), pool_tokio::Liveness::Idle);
    drop(s);
    assert!(
        eventually(|| matches!(
            c.liveness(),
            pool_tokio::Liveness::Closed | pool_tokio::Liveness::Dead(_)
        ))
        .await
    );
}
