//! Helpers shared by the test files (included with `mod common;`).
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use pool_tokio::ClientConfig;
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
        .config(ClientConfig::builder().capacity(min, max))
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

/// The bytes received and not yet read on the IPv4 TCP socket `local` ↔ `peer` of this
/// machine, as `/proc/net/tcp` shows them (`None`: no such socket, or not Linux): how a
/// test knows that bytes it sent are in the other end's socket.
pub fn unread_bytes(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<usize> {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(a) => Some(format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        )),
        std::net::SocketAddr::V6(_) => None,
    };
    let (local, peer) = (hex(local)?, hex(peer)?);
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(2) != Some(&peer.as_str()) {
            return None;
        }
        let (_, rx) = f.get(4)?.split_once(':')?;
        usize::from_str_radix(rx, 16).ok()
    })
}
