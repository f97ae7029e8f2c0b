//! The pool's TLS stream on loopback: transfers, closes, and what an idle probe sees.

use std::sync::Arc;
use std::time::Duration;

use pool_core::Liveness;
use pool_tls::{ClientTlsBuilder, ServerTls, TlsMode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::TlsConn;

struct Configs {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

fn configs() -> Configs {
    let cert = ServerTls::self_signed(["localhost"]).unwrap();
    let client = ClientTlsBuilder::new(TlsMode::SelfSigned)
        .pin(cert.fingerprint())
        .build()
        .unwrap()
        .unwrap();
    Configs {
        client,
        server: cert.config().unwrap(),
    }
}

fn name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

/// A client and a server stream over one TCP connection.
async fn tls_pair(cfg: &Configs) -> (TlsConn, TlsConn) {
    let (c, s) = tcp_pair().await;
    let (c, s) = tokio::join!(
        TlsConn::connect(cfg.client.clone(), name(), c),
        TlsConn::accept(cfg.server.clone(), s, &[])
    );
    (c.unwrap(), s.unwrap())
}

/// Byte `i` of a transfer: a pattern that a lost, repeated or reordered chunk breaks.
fn pattern(seed: u8, i: usize) -> u8 {
    (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed
}

/// Sends `n` pattern bytes in uneven writes, then shuts down (close_notify).
async fn send(mut w: impl AsyncWrite + Unpin, seed: u8, n: usize) {
    let data: Vec<u8> = (0..n).map(|i| pattern(seed, i)).collect();
    let mut at = 0;
    let mut step = 1;
    while at < n {
        let end = (at + step).min(n);
        w.write_all(&data[at..end]).await.unwrap();
        at = end;
        step = step * 3 % 70_001 + 1;
    }
    w.shutdown().await.unwrap();
}

/// Reads to a clean end in uneven reads and checks every byte.
async fn receive(mut r: impl AsyncRead + Unpin, seed: u8, n: usize) {
    let mut got = 0;
    let mut buf = vec![0u8; 50_000];
    let mut size = 1;
    loop {
        let k = r.read(&mut buf[..size]).await.unwrap();
        if k == 0 {
            break;
        }
        for (j, b) in buf[..k].iter().enumerate() {
            assert_eq!(*b, pattern(seed, got + j), "byte {} differs", got + j);
        }
        got += k;
        size = size * 7 % 49_999 + 1;
    }
    assert_eq!(got, n, "the stream ended early or late");
}

/// Both ways at once, each way ended by `close_notify`.
async fn both_ways(a: TlsConn, b: TlsConn, n: usize) {
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(
            send(aw, 1, n),
            receive(br, 1, n),
            send(bw, 2, n),
            receive(ar, 2, n)
        );
    })
    .await
    .expect("the transfer finished");
}

#[tokio::test]
async fn large_transfer_both_ways_is_intact() {
    let cfg = configs();
    let (c, s) = tls_pair(&cfg).await;
    assert_eq!(
        c.common_state().protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert!(c.common_state().peer_certificates().is_some());
    assert!(c.is_client() && !s.is_client());
    both_ways(c, s, 3 << 20).await;
}

#[tokio::test]
async fn a_half_close_still_carries_the_answer() {
    let cfg = configs();
    let (mut c, mut s) = tls_pair(&cfg).await;
    c.write_all(b"question").await.unwrap();
    c.shutdown().await.unwrap();
    let mut q = Vec::new();
    s.read_to_end(&mut q).await.unwrap();
    assert_eq!(q, b"question");
    // The server's side is still open after the client's close_notify.
    s.write_all(b"answer").await.unwrap();
    s.shutdown().await.unwrap();
    let mut a = Vec::new();
    c.read_to_end(&mut a).await.unwrap();
    assert_eq!(a, b"answer");
}

#[tokio::test]
async fn a_peer_gone_without_close_notify_is_a_truncation() {
    let cfg = configs();
    let (mut c, s) = tls_pair(&cfg).await;
    drop(s);
    let err = c.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn what_arrived_while_idle_is_kept_for_the_next_read() {
    let cfg = configs();
    let (mut c, mut s) = tls_pair(&cfg).await;
    // The peer starts relaying while the connection is still idle in the pool.
    let early: Vec<u8> = (0..40_000).map(|i| pattern(7, i)).collect();
    s.write_all(&early).await.unwrap();
    s.flush().await.unwrap();
    // The probe sees payload, takes it off the socket into the session, and keeps it.
    let mut state = Liveness::Idle;
    for _ in 0..500 {
        c.tcp().readable().await.unwrap();
        state = c.queued_records();
        if state != Liveness::Idle {
            break;
        }
    }
    assert_eq!(state, Liveness::Pending);
    assert!(c.has_unread());
    // Nothing is lost: the next reads return all of it, in order.
    let mut got = vec![0u8; early.len()];
    c.read_exact(&mut got).await.unwrap();
    assert!(got == early, "the bytes that arrived while idle changed");
}

#[tokio::test]
async fn a_close_notify_while_idle_is_a_close() {
    let cfg = configs();
    let (mut c, mut s) = tls_pair(&cfg).await;
    s.shutdown().await.unwrap();
    c.tcp().readable().await.unwrap();
    let mut state = c.queued_records();
    for _ in 0..100 {
        if state != Liveness::Idle {
            break;
        }
        c.tcp().readable().await.unwrap();
        state = c.queued_records();
    }
    assert_eq!(state, Liveness::Closed);
}

#[tokio::test]
async fn a_wrong_pin_fails_the_handshake_with_a_tls_error() {
    let cfg = configs();
    let other = ServerTls::self_signed(["localhost"]).unwrap();
    let client = ClientTlsBuilder::new(TlsMode::SelfSigned)
        .pin(other.fingerprint())
        .build()
        .unwrap()
        .unwrap();
    let (c, s) = tcp_pair().await;
    let (c, s) = tokio::join!(
        TlsConn::connect(client, name(), c),
        TlsConn::accept(cfg.server.clone(), s, &[])
    );
    let e = c.unwrap_err();
    assert!(
        e.get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .is_some(),
        "{e}"
    );
    // The server learns of it from our alert.
    assert!(s.is_err());
}
