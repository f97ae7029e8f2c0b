//! The reverse tunnel of the `tunnel` and `demo` examples: bytes survive the trip,
//! strangers on the control port cannot take it over or break it, a wrong key is
//! refused, and a stranger who slips a connection into the pool receives nothing.

#[path = "../examples/common/tunnel.rs"]
mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use pool_tls::{ServerTls, TlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel::{ClientConfig, LoadProgress, ServerConfig, Timeouts};

const LIMIT: Duration = Duration::from_secs(30);

/// Short deadlines, so refusals show within a second or two.
fn fast() -> Timeouts {
    Timeouts {
        auth: Duration::from_secs(1),
        control_wait: Duration::from_secs(3),
        get: Duration::from_secs(2),
        proof: Duration::from_secs(1),
        keepalive: Duration::from_secs(1),
        io: Duration::from_secs(2),
        backoff: (Duration::from_millis(50), Duration::from_millis(500)),
    }
}

async fn load(server: &tunnel::ServerHandle, n: u64, bytes: usize) -> tunnel::LoadReport {
    tunnel::run_load(
        server.public_addr(),
        n,
        50,
        bytes,
        LIMIT,
        Arc::new(LoadProgress::default()),
    )
    .await
}

fn assert_all_passed(r: &tunnel::LoadReport, n: u64) {
    assert!(
        r.errors.is_empty(),
        "failed sessions: {:?}",
        &r.errors[..r.errors.len().min(5)]
    );
    assert_eq!(r.latencies.len() as u64, n);
}

/// Reads until EOF, an error or `within`; the bytes read.
async fn drain(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
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

#[test]
fn hmac_matches_rfc_4231() {
    // RFC 4231 test case 2.
    let tag = tunnel::hmac(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
    assert_eq!(
        tunnel::hex(&tag),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // A key longer than the block is hashed first (test case 6).
    let tag = tunnel::hmac(
        &[0xaa; 131],
        &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
    );
    assert_eq!(
        tunnel::hex(&tag),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

#[test]
fn addresses_and_default_key() {
    assert_eq!(
        tunnel::default_control("example.org:10101").unwrap(),
        "example.org:10102"
    );
    assert_eq!(tunnel::default_control("[::1]:80").unwrap(), "[::1]:81");
    assert!(tunnel::default_control("h:65535").is_err());
    assert!(tunnel::default_control("no-port").is_err());
    assert_eq!(tunnel::default_key(10101), tunnel::default_key(10101));
    assert_ne!(tunnel::default_key(10101), tunnel::default_key(10102));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode1_200_sessions_every_byte_checked() {
    let (echo, echo_task) = tunnel::start_echo().await.unwrap();
    let cert = ServerTls::self_signed(["localhost"]).unwrap();
    let fp = cert.fingerprint();
    let server = tunnel::start_server(ServerConfig {
        tls: Some(cert),
        ..ServerConfig::loopback()
    })
    .await
    .unwrap();
    let client = tunnel::start_client(ClientConfig {
        mode: TlsMode::SelfSigned,
        pin: Some(fp),
        hostname: Some("localhost".into()),
        ..ClientConfig::for_server(&server, echo)
    })
    .await
    .unwrap();
    assert!(client.wait_control(Duration::from_secs(10)).await);
    let r = load(&server, 200, 16 * 1024).await;
    assert_all_passed(&r, 200);
    assert_eq!(server.stats().bad_proofs, 0);
    assert_eq!(client.stats().control_ok, 1);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_control_port_change_nothing() {
    let (echo, echo_task) = tunnel::start_echo().await.unwrap();
    let server = tunnel::start_server(ServerConfig {
        key: Some(b"the right key".to_vec()),
        timeouts: fast(),
        ..ServerConfig::loopback()
    })
    .await
    .unwrap();
    let ctl = server.control_addr();

    // First in line: one stays silent, one answers the greeting with garbage, one
    // floods garbage without reading.
    let mut silent = TcpStream::connect(ctl).await.unwrap();
    let mut garbage = TcpStream::connect(ctl).await.unwrap();
    let mut greeting = [0u8; 20];
    garbage.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting[..4], tunnel::MAGIC);
    garbage.write_all(&[0x5a; 48]).await.unwrap();
    let mut flood = TcpStream::connect(ctl).await.unwrap();
    let _ = flood.write_all(&[0xff; 64 * 1024]).await;

    // The real client becomes control while the silent stranger still holds its slot.
    let client = tunnel::start_client(ClientConfig {
        timeouts: fast(),
        ..ClientConfig::for_server(&server, echo)
    })
    .await
    .unwrap();
    assert!(
        client.wait_control(Duration::from_secs(3)).await,
        "client never got control"
    );
    assert!(server.control_up());

    // The garbage senders were dropped, and the silent one at its deadline.
    let (_, closed) = drain(&mut garbage, Duration::from_secs(3)).await;
    assert!(closed, "garbage stranger still connected");
    let (_, closed) = drain(&mut flood, Duration::from_secs(3)).await;
    assert!(closed, "flooding stranger still connected");
    let (got, closed) = drain(&mut silent, Duration::from_secs(3)).await;
    assert!(closed, "silent stranger still connected");
    assert_eq!(
        got.len(),
        20,
        "the silent stranger got more than the greeting"
    );

    // A stranger arriving now cannot take the role over either.
    let mut late = TcpStream::connect(ctl).await.unwrap();
    late.read_exact(&mut greeting).await.unwrap();
    late.write_all(&[0u8; 48]).await.unwrap();
    let (_, closed) = drain(&mut late, Duration::from_secs(3)).await;
    assert!(closed);

    let r = load(&server, 100, 4096).await;
    assert_all_passed(&r, 100);
    let st = server.stats();
    assert_eq!(st.control_ok, 1, "{st:?}");
    assert!(st.control_refused >= 4, "{st:?}");
    assert_eq!(
        client.stats().control_ok,
        1,
        "the real control was replaced"
    );
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_and_the_right_one_works() {
    let (echo, echo_task) = tunnel::start_echo().await.unwrap();
    let server = tunnel::start_server(ServerConfig {
        key: Some(b"right".to_vec()),
        timeouts: fast(),
        ..ServerConfig::loopback()
    })
    .await
    .unwrap();

    let wrong = tunnel::start_client(ClientConfig {
        key: Some(b"wrong".to_vec()),
        timeouts: fast(),
        ..ClientConfig::for_server(&server, echo)
    })
    .await
    .unwrap();
    assert!(!wrong.wait_control(Duration::from_secs(2)).await);
    assert!(!server.control_up());
    assert!(wrong.stats().control_failed >= 2, "{:?}", wrong.stats());
    assert_eq!(server.stats().control_ok, 0);
    // No control: users are turned away after `control_wait`, never relayed.
    let r = load(&server, 5, 1024).await;
    assert_eq!(r.errors.len(), 5);
    assert_eq!(wrong.stats().ids, 0);
    wrong.shutdown().await;

    let right = tunnel::start_client(ClientConfig {
        timeouts: fast(),
        ..ClientConfig::for_server(&server, echo)
    })
    .await
    .unwrap();
    assert!(right.wait_control(Duration::from_secs(3)).await);
    let r = load(&server, 100, 4096).await;
    assert_all_passed(&r, 100);
    right.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_in_the_pool_receives_no_user_bytes() {
    let (echo, echo_task) = tunnel::start_echo().await.unwrap();
    let server = tunnel::start_server(ServerConfig {
        timeouts: fast(),
        ..ServerConfig::loopback()
    })
    .await
    .unwrap();
    // The stranger dials the pool port first, reads its id, and waits to be handed
    // user traffic: it is the oldest idle connection, so the server takes it first.
    let mut stranger = TcpStream::connect(server.tunnel_addr()).await.unwrap();
    let mut id = [0u8; 8];
    stranger.read_exact(&mut id).await.unwrap();
    assert!(server.pool().wait_idle(1, Duration::from_secs(2)).await);

    let client = tunnel::start_client(ClientConfig {
        timeouts: fast(),
        ..ClientConfig::for_server(&server, echo)
    })
    .await
    .unwrap();
    assert!(client.wait_control(Duration::from_secs(3)).await);
    let r = tunnel::run_load(
        server.public_addr(),
        1,
        1,
        4096,
        LIMIT,
        Arc::new(LoadProgress::default()),
    )
    .await;
    assert_all_passed(&r, 1);
    assert_eq!(server.stats().bad_proofs, 1);
    let (got, closed) = drain(&mut stranger, Duration::from_secs(1)).await;
    assert!(got.is_empty(), "the stranger received {} bytes", got.len());
    assert!(closed, "the stranger's connection was kept");
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}
