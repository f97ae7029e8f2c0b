//! Helpers shared by the test files (included with `mod common;`).
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use pool_tokio::{ClientPool, PoolConn, ServerPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A generous bound for any wait in a test.
pub const T: Duration = Duration::from_secs(10);

/// An ephemeral loopback address.
pub fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A plain server pool on loopback.
pub fn server() -> ServerPool {
    ServerPool::builder().bind(loopback()).build().unwrap()
}

/// A plain client pool of the given capacity for `server`.
pub fn client(server: &ServerPool, min: usize, max: usize) -> ClientPool {
    ClientPool::builder()
        .address(server.local_addr())
        .capacity(min, max)
        .build()
        .unwrap()
}

/// Bytes one way and back, checked.
pub async fn roundtrip(s: &mut PoolConn, c: &mut PoolConn) {
    s.write_all(b"ping").await.unwrap();
    s.flush().await.unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    c.write_all(b"pong").await.unwrap();
    c.flush().await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

/// Polls `f` every 10 ms for at most 10 s.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
