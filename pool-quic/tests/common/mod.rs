//! Pairs of pools on loopback, and byte checks of a paired stream.
#![allow(dead_code)]

pub(crate) mod raw;

use std::time::Duration;

use pool_quic::{ClientConfig, ClientPool, ClientTls, QuicStream, ServerConfig, ServerPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server on 127.0.0.1 and a client pool of `min..max` streams pinned to its
/// certificate.
pub(crate) fn pair(min: usize, max: usize) -> (ServerPool, ClientPool) {
    let server = server(max);
    let client = client_to(server.local_addr(), &server, min, max);
    (server, client)
}

pub(crate) fn server(max: usize) -> ServerPool {
    let core = ServerConfig::builder()
        .max_capacity(max)
        .settle(Duration::ZERO)
        .build()
        .unwrap();
    ServerPool::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .config(core)
        .build()
        .unwrap()
}

pub(crate) fn client_to(
    addr: std::net::SocketAddr,
    server: &ServerPool,
    min: usize,
    max: usize,
) -> ClientPool {
    let core = ClientConfig::builder()
        .capacity(min, max)
        .interval(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .unwrap();
    ClientPool::builder()
        .address(addr)
        .config(core)
        .tls(ClientTls::SelfSigned {
            pin: server.fingerprint(),
            name: None,
        })
        .build()
        .unwrap()
}

/// Takes a stream from the server and the same one from the client by its id, and
/// checks bytes both ways; returns the pair.
pub(crate) async fn paired(server: &ServerPool, client: &ClientPool) -> (QuicStream, QuicStream) {
    let (id, mut s) = server.get().await.expect("server get");
    let mut c = client.get(id).await.expect("client get by the server's id");
    assert_eq!(c.id(), id);
    check_bytes(&mut s, &mut c, id.as_str().as_bytes()).await;
    (s, c)
}

/// Writes `msg` each way and reads it back whole.
pub(crate) async fn check_bytes(s: &mut QuicStream, c: &mut QuicStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
        .await
        .expect("server to client in time")
        .unwrap();
    assert_eq!(got, msg);
    c.write_all(msg).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("client to server in time")
        .unwrap();
    assert_eq!(got, msg);
}
