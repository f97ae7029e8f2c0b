//! Pairing across every TLS mode and both id forms: bytes written on the server's
//! connection arrive on the client's connection with the same id, and back.

use std::time::Duration;

use pool_tls::{ClientTlsBuilder, TestCa, TlsMode};
use pool_tokio::{ClientConfig, ClientTls, Mode, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, ConnId, GetError, IdForm, PoolConn, ServerPool, ServerTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn exchange(id: ConnId, mut s: PoolConn, mut c: PoolConn) {
    assert_eq!(s.id(), id);
    assert_eq!(c.id(), id);
    let msg = format!("hello {id}");
    s.write_all(msg.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf, msg.as_bytes());
    c.write_all(b"back").await.unwrap();
    c.flush().await.unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"back");
}

async fn pair_many(server: &ServerPool, client: &ClientPool, n: usize) {
    for _ in 0..n {
        let (id, s) = server.get_timeout(T).await.unwrap();
        let c = client.get_timeout(id, T).await.unwrap();
        exchange(id, s, c).await;
    }
}

async fn run(server: ServerPool, client: ClientPool, n: usize) {
    assert!(client.wait_idle(4, T).await, "client never filled");
    pair_many(&server, &client, n).await;
    let sc = server.stats().counters;
    let cc = client.stats().counters;
    assert!(sc.served_at_once + sc.served_after_wait >= n as u64);
    assert!(cc.served_at_once + cc.served_after_wait >= n as u64);
    client.close().await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_hex_ids_pair_thousands() {
    let server = ServerPool::builder().bind(loopback()).build().unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(16, 64))
        .build()
        .unwrap();
    run(server, client, 2_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_raw_ids_pair() {
    let server = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().id_form(IdForm::Raw4))
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(
            ClientConfig::builder()
                .id_form(IdForm::Raw4)
                .capacity(8, 32),
        )
        .build()
        .unwrap();
    run(server, client, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mode1_self_signed_and_pinned() {
    let server = ServerPool::builder()
        .bind(loopback())
        .tls(ServeTls::self_signed())
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(8, 32))
        .tls(ClientTls::SelfSigned {
            pin: Some(server.fingerprint().unwrap()),
            name: None,
        })
        .build()
        .unwrap();
    run(server, client, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mode2_verified_with_ca() {
    let ca = TestCa::new().unwrap();
    let leaf = ca.leaf(&["pool.test"], false).unwrap();
    let server = ServerPool::builder()
        .bind(loopback())
        .tls(ServeTls::Cert(leaf))
        .build()
        .unwrap();
    let cfg = ClientTlsBuilder::new(TlsMode::Verified)
        .ca_der(ca.ca_der())
        .build()
        .unwrap()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(8, 32))
        .tls(ClientTls::Custom {
            config: cfg,
            name: Some("pool.test".into()),
        })
        .build()
        .unwrap();
    run(server, client, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_mode_every_tls_mode() {
    // Single mode: the client dials its target, makes its own ids, reads nothing. Plain
    // as in Go with TLS off, TLS (an extension) when TLS is set.
    for mode in [TlsMode::Off, TlsMode::SelfSigned] {
        let target = ServerPool::builder()
            .bind(loopback())
            .tls(if mode == TlsMode::Off {
                ServeTls::Off
            } else {
                ServeTls::self_signed()
            })
            .build()
            .unwrap();
        let client = ClientPool::builder()
            .address(target.local_addr())
            .config(ClientConfig::builder().mode(Mode::Single).capacity(4, 8))
            .tls(ClientTls::from(mode))
            .build()
            .unwrap();
        assert!(client.wait_idle(4, T).await);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let c = client.get_any_timeout(T).await.unwrap();
            assert!(seen.insert(c.id()), "an id was handed out twice");
        }
        client.close().await;
        target.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mode2_wrong_name_is_refused_and_counted() {
    let ca = TestCa::new().unwrap();
    let server = ServerPool::builder()
        .bind(loopback())
        .tls(ServeTls::Cert(ca.leaf(&["right.test"], false).unwrap()))
        .build()
        .unwrap();
    let cfg = ClientTlsBuilder::new(TlsMode::Verified)
        .ca_der(ca.ca_der())
        .build()
        .unwrap()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(4, 8))
        .tls(ClientTls::Custom {
            config: cfg,
            name: Some("wrong.test".into()),
        })
        .build()
        .unwrap();
    let ok = pool_tokio_wait(|| client.stats().counters.handshake_failures >= 2).await;
    assert!(ok, "handshake failures were not counted");
    assert_eq!(client.active(), 0);
    let _ = ServerTls::self_signed(["x"]).unwrap();
    let id = ConnId::from_random([1, 2, 3, 4]);
    // Nothing ever connected and every dial failed: the get says why, at once.
    match client.get_timeout(id, Duration::from_millis(10)).await {
        Err(GetError::Unreachable(f)) => {
            assert_eq!(f.stage, pool_tokio::Stage::Tls);
            assert!(matches!(f.cause, pool_tokio::Cause::Tls(_)), "{f}");
            assert!(f.to_string().contains("not valid for name"), "{f}");
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    client.close().await;
    server.close().await;
}

async fn pool_tokio_wait(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..1000 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A client pool given `host:port` instead of a socket address resolves the name at
/// each dial and pairs as one given the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pool_dials_a_host_and_port() {
    let server = ServerPool::builder().bind(loopback()).build().unwrap();
    let port = server.local_addr().port();
    let client = ClientPool::builder()
        .address(format!("localhost:{port}"))
        .config(ClientConfig::builder().capacity(4, 4))
        .build()
        .unwrap();
    run(server, client, 8).await;
}
