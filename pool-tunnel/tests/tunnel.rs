//! The reverse tunnel, in one process on loopback: bytes survive the trip; a stranger who
//! knows no key is never control and never receives a user byte, on any port; control
//! eviction lets the real client in under a flood; heartbeats notice a hung peer on
//! either side; a pinned certificate and the key survive a server restart with a state
//! directory. Every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_tls::{ServerTls, TlsMode, TunnelKey};
use pool_tunnel::load::{self, LoadProgress, LoadReport};
use pool_tunnel::protocol::{self, GREETING_LEN, MAGIC};
use pool_tunnel::{ClientConfig, ServerConfig, ServerHandle, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const LIMIT: Duration = Duration::from_secs(30);

/// Short deadlines, so refusals and losses show within a second or two.
fn fast() -> Timeouts {
    Timeouts {
        tls: Duration::from_secs(1),
        answer: Duration::from_millis(500),
        control_wait: Duration::from_millis(500),
        ack: Duration::from_millis(1500),
        get: Duration::from_secs(2),
        heartbeat: Duration::from_millis(200),
        dead_after: Duration::from_millis(800),
        io: Duration::from_secs(2),
        backoff: (Duration::from_millis(50), Duration::from_millis(300)),
    }
}

fn key() -> TunnelKey {
    TunnelKey::generate().unwrap()
}

fn server_cfg(k: TunnelKey) -> ServerConfig {
    ServerConfig {
        timeouts: fast(),
        ..ServerConfig::loopback(k)
    }
}

fn client_cfg(server: &ServerHandle, target: SocketAddr) -> ClientConfig {
    ClientConfig {
        timeouts: fast(),
        ..ClientConfig::for_server(server, target)
    }
}

async fn run(public: SocketAddr, n: u64, bytes: usize) -> LoadReport {
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

fn assert_all_passed(r: &LoadReport, n: u64) {
    assert!(
        r.errors.is_empty(),
        "failed sessions: {:?}",
        &r.errors[..r.errors.len().min(5)]
    );
    assert_eq!(r.latencies.len() as u64, n);
}

/// Reads until EOF, an error or `within` of silence; the bytes read, and whether it
/// was closed.
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

/// A connection from `127.0.0.<last>` (strangers come from 127.0.0.2 and up).
async fn connect_from(last: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::from([127, 0, 0, last]), 0))?;
    s.connect(to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode1_200_sessions_every_byte_checked() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let cert = ServerTls::self_signed(["localhost"]).unwrap();
    let fp = cert.fingerprint();
    let server = pool_tunnel::start_server(ServerConfig {
        tls: Some(cert),
        ..ServerConfig::loopback(key())
    })
    .await
    .unwrap();
    let client = pool_tunnel::start_client(ClientConfig {
        mode: TlsMode::SelfSigned,
        pin: Some(fp),
        hostname: Some("localhost".into()),
        ..ClientConfig::for_server(&server, echo)
    })
    .await
    .unwrap();
    assert!(client.wait_control(Duration::from_secs(10)).await);
    let r = run(server.public_addr(), 200, 16 * 1024).await;
    assert_all_passed(&r, 200);
    assert_eq!(client.stats().control_ok, 1);
    assert_eq!(server.pool().stats().counters.auth_failures, 0);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_control_port_change_nothing() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(server_cfg(key())).await.unwrap();
    let ctl = server.control_addr();

    // First in line: one stays silent, one answers the greeting with garbage, one
    // floods garbage without reading.
    let mut silent = connect_from(2, ctl).await.unwrap();
    let mut garbage = connect_from(3, ctl).await.unwrap();
    let mut greeting = [0u8; GREETING_LEN];
    garbage.read_exact(&mut greeting).await.unwrap();
    assert_eq!(&greeting[..4], MAGIC);
    garbage.write_all(&[0x5a; 64]).await.unwrap();
    let mut flood = connect_from(4, ctl).await.unwrap();
    let _ = flood.write_all(&[0xff; 64 * 1024]).await;

    // The real client becomes control while the silent stranger still holds its slot.
    let client = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(client.wait_control(Duration::from_secs(3)).await);
    assert!(server.control_up());

    // The garbage senders were dropped, and the silent one at its deadline, having
    // received the greeting and nothing else.
    let (_, closed) = drain(&mut garbage, Duration::from_secs(3)).await;
    assert!(closed, "garbage stranger still connected");
    let (_, closed) = drain(&mut flood, Duration::from_secs(3)).await;
    assert!(closed, "flooding stranger still connected");
    let (got, closed) = drain(&mut silent, Duration::from_secs(3)).await;
    assert!(closed, "silent stranger still connected");
    assert_eq!(got.len(), GREETING_LEN, "the silent stranger got more");

    // A stranger arriving now cannot take the role over either.
    let mut late = connect_from(5, ctl).await.unwrap();
    late.read_exact(&mut greeting).await.unwrap();
    late.write_all(&[0u8; 64]).await.unwrap();
    let (_, closed) = drain(&mut late, Duration::from_secs(3)).await;
    assert!(closed);

    let r = run(server.public_addr(), 100, 4096).await;
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
async fn a_wrong_key_is_refused_and_users_are_answered_at_once() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(server_cfg(key())).await.unwrap();
    let wrong = pool_tunnel::start_client(ClientConfig {
        key: key(),
        ..client_cfg(&server, echo)
    })
    .await
    .unwrap();
    assert!(!wrong.wait_control(Duration::from_secs(2)).await);
    assert!(!server.control_up());
    assert!(wrong.stats().control_failed >= 2, "{:?}", wrong.stats());
    assert_eq!(server.stats().control_ok, 0);
    // Its pool connections never entered the server's pool.
    assert_eq!(server.pool().active(), 0);
    assert!(server.pool().stats().counters.auth_failures > 0);
    // No control: users are closed within `control_wait`, never relayed.
    let start = Instant::now();
    let r = run(server.public_addr(), 5, 1024).await;
    assert_eq!(r.errors.len(), 5);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(wrong.stats().ids, 0);
    wrong.shutdown().await;

    let right = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(right.wait_control(Duration::from_secs(3)).await);
    let r = run(server.public_addr(), 100, 4096).await;
    assert_all_passed(&r, 100);
    right.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_that_knows_no_key_never_gets_a_user_byte_on_any_port() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(server_cfg(key())).await.unwrap();
    // On the pool port: it reads its id and the challenge, and waits to be handed
    // users. It never enters the pool.
    let mut in_pool = connect_from(2, server.tunnel_addr()).await.unwrap();
    let mut first = [0u8; 8 + 32];
    in_pool.read_exact(&mut first).await.unwrap();
    // One more that answers the challenge with zeros.
    let mut liar = connect_from(3, server.tunnel_addr()).await.unwrap();
    liar.read_exact(&mut first).await.unwrap();
    liar.write_all(&[0u8; 64]).await.unwrap();
    // On the control port: silent after the greeting.
    let mut on_control = connect_from(4, server.control_addr()).await.unwrap();

    let client = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(client.wait_control(Duration::from_secs(3)).await);
    let r = run(server.public_addr(), 50, 4096).await;
    assert_all_passed(&r, 50);

    let (got, closed) = drain(&mut in_pool, Duration::from_secs(3)).await;
    assert!(got.is_empty(), "the stranger received {} bytes", got.len());
    assert!(closed, "the silent pool stranger was kept");
    let (got, closed) = drain(&mut liar, Duration::from_secs(3)).await;
    assert!(
        got.is_empty() && closed,
        "the lying stranger got {} bytes",
        got.len()
    );
    let (got, closed) = drain(&mut on_control, Duration::from_secs(3)).await;
    assert!(got.len() == GREETING_LEN && closed, "{} bytes", got.len());
    assert!(server.pool().stats().counters.auth_failures >= 2);
    assert_eq!(server.stats().control_ok, 1);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_eviction_lets_the_client_in_under_a_flood() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    // Silent candidates would hold their slots for 30 s: only eviction lets anyone in.
    let server = pool_tunnel::start_server(ServerConfig {
        candidates: (16, 2),
        timeouts: Timeouts {
            answer: Duration::from_secs(30),
            ..fast()
        },
        ..ServerConfig::loopback(key())
    })
    .await
    .unwrap();
    let ctl = server.control_addr();
    // 16 silent strangers from 8 addresses fill the table; 16 more, reconnecting, keep
    // it full while the client arrives.
    let mut held = Vec::new();
    for i in 0..16u8 {
        held.push(connect_from(2 + i / 2, ctl).await.unwrap());
    }
    let churn = tokio::spawn(async move {
        let mut n = 0u32;
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end && n < 2_000 {
            if let Ok(s) = connect_from(20 + (n % 16) as u8, ctl).await {
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(s);
            }
            n += 1;
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let client = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(
        client.wait_control(Duration::from_secs(2)).await,
        "the client is not control within 2 s: {:?}",
        server.stats()
    );
    let took = start.elapsed();
    assert!(server.stats().control_evicted >= 1, "{:?}", server.stats());
    churn.await.unwrap();
    let r = run(server.public_addr(), 20, 1024).await;
    assert_all_passed(&r, 20);
    eprintln!("client control after {took:?} under a full candidate table");
    drop(held);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_notices_a_hung_client_and_answers_users_at_once() {
    let k = key();
    let server = pool_tunnel::start_server(server_cfg(k.clone()))
        .await
        .unwrap();
    // A client that proves the key, then neither reads nor writes: a stopped process.
    let mut hung = TcpStream::connect(server.control_addr()).await.unwrap();
    protocol::client_handshake(&mut hung, &k, &[])
        .await
        .unwrap();
    assert!(server.wait_control(Duration::from_secs(2)).await);
    // A user arriving now is not answered by anyone; it must be closed soon.
    let public = server.public_addr();
    let user = tokio::spawn(async move {
        let start = Instant::now();
        let r = load::user_session_echo(public, 0, 100, Duration::from_secs(10)).await;
        (r, start.elapsed())
    });
    let start = Instant::now();
    assert!(
        server
            .wait_control_state(false, Duration::from_secs(3))
            .await
    );
    let noticed = start.elapsed();
    assert!(noticed < Duration::from_secs(2), "{noticed:?}");
    assert_eq!(server.stats().control_silent, 1);
    let (r, took) = user.await.unwrap();
    assert!(r.is_err());
    assert!(
        took < Duration::from_secs(5),
        "user answered after {took:?}"
    );
    // And users arriving with no control are closed at once.
    let start = Instant::now();
    assert!(
        load::user_session_echo(public, 1, 100, Duration::from_secs(10))
            .await
            .is_err()
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    drop(hung);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_notices_a_hung_server_and_reconnects() {
    let k = key();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let fake = {
        let k = k.clone();
        tokio::spawn(async move {
            // Proves the key, then stops: no heartbeats, no reads.
            let mut conns = Vec::new();
            while conns.len() < 3 {
                let (mut s, _) = l.accept().await.unwrap();
                if protocol::server_handshake(&mut s, &k, &[], Duration::from_secs(2))
                    .await
                    .is_ok()
                {
                    conns.push(s);
                }
            }
            conns
        })
    };
    let client = pool_tunnel::start_client(ClientConfig {
        timeouts: fast(),
        ..ClientConfig::new(
            "127.0.0.1:9".into(), // its pool dials nowhere useful; only control matters
            Some(addr.to_string()),
            "127.0.0.1:9".into(),
            k,
        )
    })
    .await
    .unwrap();
    assert!(client.wait_control(Duration::from_secs(2)).await);
    let start = Instant::now();
    assert!(
        client
            .wait_control_state(false, Duration::from_secs(3))
            .await
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        client.wait_control(Duration::from_secs(2)).await,
        "no reconnect"
    );
    assert!(client.stats().control_silent >= 1);
    client.shutdown().await;
    fake.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_and_key_in_a_state_dir_survive_a_server_restart() {
    let dir = std::env::temp_dir().join(format!("pool-tunnel-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let start_server = |tunnel: SocketAddr, control: SocketAddr, public: SocketAddr| {
        let dir = dir.clone();
        async move {
            let (tls, _) = pool_tunnel::state::certificate(&dir, "localhost").unwrap();
            let (k, _, _) = pool_tunnel::state::tunnel_key(&dir).unwrap();
            pool_tunnel::start_server(ServerConfig {
                tunnel,
                control: Some(control),
                public,
                tls: Some(tls),
                ..server_cfg(k)
            })
            .await
            .unwrap()
        }
    };
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let server = start_server(any, any, any).await;
    let (tunnel, control, public) = (
        server.tunnel_addr(),
        server.control_addr(),
        server.public_addr(),
    );
    let (tls, _) = pool_tunnel::state::certificate(&dir, "localhost").unwrap();
    let client = pool_tunnel::start_client(ClientConfig {
        mode: TlsMode::SelfSigned,
        pin: Some(tls.fingerprint()),
        hostname: Some("localhost".into()),
        ..client_cfg(&server, echo)
    })
    .await
    .unwrap();
    assert!(client.wait_control(Duration::from_secs(3)).await);
    assert_all_passed(&run(public, 20, 1024).await, 20);

    server.shutdown().await;
    assert!(
        client
            .wait_control_state(false, Duration::from_secs(3))
            .await
    );
    let server = start_server(tunnel, control, public).await;
    assert!(
        client.wait_control(Duration::from_secs(5)).await,
        "the client did not come back"
    );
    assert!(client.pool().wait_idle(4, Duration::from_secs(5)).await);
    assert_all_passed(&run(public, 20, 1024).await, 20);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connection from `127.0.1.<last>`: another /24 than the real users on 127.0.0.1.
async fn connect_from_other_net(last: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::from([127, 0, 1, last]), 0))?;
    s.connect(to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holding_and_flooding_the_public_port_starves_nobody_else() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(ServerConfig {
        per_source: (64, 100.0),
        ..server_cfg(key())
    })
    .await
    .unwrap();
    let client = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(client.wait_control(Duration::from_secs(10)).await);
    let public = server.public_addr();
    // The stranger holds 200 connections from one /24, each with a byte sent, and
    // churns connect-send-close 500 more times (bounded).
    let mut held = Vec::new();
    for i in 0..200u32 {
        if let Ok(mut s) = connect_from_other_net(2 + (i % 200) as u8, public).await {
            let _ = s.write_all(b"x").await;
            held.push(s);
        }
    }
    for i in 0..500u32 {
        if let Ok(mut s) = connect_from_other_net(2 + (i % 200) as u8, public).await {
            let _ = s.write_all(b"x").await;
        }
    }
    // Real users from 127.0.0.1 are served, every byte checked.
    let r = run(public, 50, 4 * 1024).await;
    assert_all_passed(&r, 50);
    let st = server.stats();
    assert!(st.users_refused_source >= 600, "{st:?}");
    drop(held);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}
