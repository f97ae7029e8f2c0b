//! What the tunnel's test files share (included with `mod tunnel_common;`): short
//! deadlines, configurations, a load run and its checks, a target that cuts its
//! connections short, connections from chosen sources.
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use pool_testkit::load::{self, LoadProgress, LoadReport};
use pool_tls::TunnelKey;
use pool_tunnel::{ClientConfig, ServerConfig, ServerHandle, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

pub const LIMIT: Duration = Duration::from_secs(30);

/// Polls `cond` every 10 ms until it holds or [`LIMIT`] passes: whether it held.
pub async fn until(mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Short deadlines, so refusals and losses show within a second or two.
pub fn fast() -> Timeouts {
    Timeouts {
        tls: Duration::from_secs(1),
        answer: Duration::from_millis(500),
        control_wait: Duration::from_millis(500),
        ack: Duration::from_millis(1500),
        get: Duration::from_secs(2),
        heartbeat: Duration::from_millis(200),
        dead_after: Duration::from_millis(800),
        io: Duration::from_secs(2),
        backoff: pool_tunnel::config::Reconnect {
            first: Duration::from_millis(50),
            longest: Duration::from_millis(300),
        },
    }
}

pub fn key() -> TunnelKey {
    TunnelKey::generate().unwrap()
}

pub fn server_cfg(k: TunnelKey) -> ServerConfig {
    ServerConfig {
        timeouts: fast(),
        ..ServerConfig::loopback(k)
    }
}

pub fn client_cfg(server: &ServerHandle, target: SocketAddr) -> ClientConfig {
    ClientConfig {
        timeouts: fast(),
        ..ClientConfig::for_server(server, target)
    }
}

pub async fn run(public: SocketAddr, n: u64, bytes: usize) -> LoadReport {
    load::run_load(
        public,
        n,
        50,
        bytes,
        LIMIT,
        Arc::new(LoadProgress::default()),
    )
    .await
}

/// Each failed session ended because the server closed or reset it, not at the user's
/// own deadline.
pub fn assert_closed_by_the_server(errors: &[(u64, String)]) {
    for (n, e) in errors {
        assert!(!e.starts_with("timed out"), "user {n}: {e}");
    }
}

pub fn assert_all_passed(r: &LoadReport, n: u64) {
    assert!(
        r.errors.is_empty(),
        "failed sessions: {:?}",
        &r.errors[..r.errors.len().min(5)]
    );
    assert_eq!(r.latencies.len() as u64, n);
}

/// Reads until EOF, an error or `within` of silence; the bytes read, and whether it
/// was closed.
pub async fn drain(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (got, closed)
}

/// A connection from `127.0.0.<last>` (strangers come from 127.0.0.2 and up).
pub async fn connect_from(last: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::from([127, 0, 0, last]), 0))?;
    s.connect(to).await
}

/// A target that answers part of a response and then resets its connection.
pub async fn cutting_target() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 5];
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let _ = s.write_all(b"partial").await;
                let _ = s.flush().await;
                // Until the bytes left, so that the cut comes after them.
                tokio::time::sleep(Duration::from_millis(50)).await;
                pool_tunnel::relay::reset(&s);
                drop(s);
            });
        }
    });
    (at, task)
}
