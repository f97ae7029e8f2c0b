//! What the WebSocket pool's tests share: a pool pair on loopback, a byte check, a
//! bounded wait.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use pool_ws::{ClientConfig, ServerConfig, WsClientPool, WsConn, WsServerPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long any wait for an event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn server_config(max: usize) -> ServerConfig {
    ServerConfig::builder()
        .max_capacity(max)
        .sweep_interval(Duration::from_millis(100))
        .build()
        .unwrap()
}

pub fn client_config(n: usize) -> ClientConfig {
    ClientConfig::builder()
        .capacity(n, n)
        .interval(Duration::from_millis(50), Duration::from_millis(50))
        .sweep_interval(Duration::from_millis(100))
        .build()
        .unwrap()
}

/// A plain server pool of `max` on loopback and a client pool of `n` dialing it.
pub async fn pair(max: usize, n: usize) -> (WsServerPool, WsClientPool) {
    let server = WsServerPool::builder()
        .config(server_config(max))
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let client = WsClientPool::builder()
        .address(server.local_addr())
        .config(client_config(n))
        .build()
        .unwrap();
    (server, client)
}

/// Polls `cond` every 5 ms until it holds or [`WAIT`] passes: whether it held.
pub async fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + WAIT;
    while !cond() {
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// `size` bytes of a pattern that depends on `seed`.
pub fn pattern(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Sends `size` bytes each way and checks they arrive unchanged.
pub async fn roundtrip(a: &mut WsConn, b: &mut WsConn, size: usize, seed: u8) {
    let (x, y) = (pattern(size, seed), pattern(size, seed.wrapping_add(1)));
    let (mut got_x, mut got_y) = (vec![0; size], vec![0; size]);
    let one = async {
        a.write_all(&x).await.unwrap();
        a.flush().await.unwrap();
        a.read_exact(&mut got_y).await.unwrap();
    };
    let two = async {
        b.read_exact(&mut got_x).await.unwrap();
        b.write_all(&y).await.unwrap();
        b.flush().await.unwrap();
    };
    tokio::time::timeout(WAIT, async { tokio::join!(one, two) })
        .await
        .expect("round trip stalled");
    assert!(got_x == x && got_y == y, "bytes changed on the way");
}

/// Takes one pooled pair: the server's oldest and the client's of the same id.
pub async fn take(
    server: &WsServerPool,
    client: &WsClientPool,
) -> (pool_ws::ConnId, WsConn, WsConn) {
    let (id, s) = server.get_timeout(WAIT).await.expect("server get");
    let c = client.get(id, WAIT).await.expect("client get");
    assert_eq!(s.id(), id);
    assert_eq!(c.id(), id);
    (id, s, c)
}

/// A TCP connection to `to` from the stranger address 127.0.0.`n` (n ≥ 2).
pub async fn stranger(to: std::net::SocketAddr, n: u8) -> tokio::net::TcpStream {
    assert!(n >= 2, "strangers come from 127.0.0.2 and up");
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(std::net::SocketAddr::from(([127, 0, 0, n], 0)))
        .unwrap();
    s.connect(to).await.unwrap()
}

/// A valid upgrade request for `/`.
pub const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Reads an HTTP response head (up to 4 KiB): its text.
pub async fn response_head(tcp: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match tokio::time::timeout(WAIT, tcp.read(&mut b))
            .await
            .expect("no answer")
        {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Upgrades by hand and reads the id message (an unmasked binary frame of 4 bytes).
pub async fn upgrade_by_hand(tcp: &mut tokio::net::TcpStream) -> [u8; 4] {
    tcp.write_all(UPGRADE).await.unwrap();
    let head = response_head(tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut frame = [0u8; 6];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut frame))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        frame[..2],
        [0x82, 4],
        "the id is one binary message of 4 bytes"
    );
    [frame[2], frame[3], frame[4], frame[5]]
}

/// A client frame: `first` is FIN and opcode; masked with a zero key.
pub fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![first];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}
