//! The reverse tunnel's peers that hang, die or restart, in one process on loopback: a
//! restarted client gets control back under a churn from 200 sources; heartbeats notice
//! a hung peer on either side; a client killed mid-session ends its user cleanly; a
//! pinned certificate and the key survive a server restart with a state directory; a
//! new client process retires the old one's pooled connections. Every wait is bounded.

mod tunnel_common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use pool_testkit::load;
use pool_testkit::proxy::{Fault, FaultProxy, Script};
use pool_tls::TlsMode;
use pool_tokio::IdleWatch;
use pool_tunnel::config::CandidateLimits;
use pool_tunnel::protocol;
use pool_tunnel::{ClientConfig, ServerConfig, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tunnel_common::*;

/// A connection from `127.<1 + n / 250>.<n % 250>.1`: one source (a /24) per `n`, none
/// the real client's.
async fn connect_from_source(n: u32, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    let ip = IpAddr::from([127, 1 + (n / 250) as u8, (n % 250) as u8, 1]);
    s.bind(SocketAddr::new(ip, 0))?;
    s.connect(to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_gets_control_back_under_a_churn_from_200_sources() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    // Silent candidates would hold their slots for 30 s: only eviction frees them. The
    // client is 25 ms away each way, so its candidate waits a round trip for its token
    // and several for its proof, while 200 sources churn the table.
    let server = pool_tunnel::start_server(ServerConfig {
        candidates: CandidateLimits {
            total: 256,
            per_source: 8,
        },
        timeouts: Timeouts {
            answer: Duration::from_secs(30),
            ..fast()
        },
        ..ServerConfig::loopback(key())
    })
    .await
    .unwrap();
    let ctl = server.control_addr();
    let wan = FaultProxy::start(
        ctl,
        Script::always(Fault::Latency(Duration::from_millis(25))),
    )
    .await
    .unwrap();
    let cfg = ClientConfig {
        control: Some(wan.addr().to_string()),
        ..client_cfg(&server, echo)
    };
    let first = pool_tunnel::start_client(cfg.clone()).await.unwrap();
    assert!(first.wait_control(Duration::from_secs(5)).await);
    let churn = tokio::spawn(async move {
        let (mut n, mut held) = (0u32, std::collections::VecDeque::new());
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && n < 60_000 {
            if let Ok(s) = connect_from_source(n % 200, ctl).await {
                held.push_back(s);
                if held.len() > 400 {
                    held.pop_front();
                }
            }
            n += 1;
        }
        n
    });
    // The restart comes once the churn has filled the table.
    let end = Instant::now() + Duration::from_secs(5);
    while server.stats().control_evicted == 0 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(server.stats().control_evicted > 0, "{:?}", server.stats());
    first.shutdown().await;
    let evicted_before = server.stats().control_evicted;
    let start = Instant::now();
    let client = pool_tunnel::start_client(cfg).await.unwrap();
    assert!(
        client.wait_control(Duration::from_secs(5)).await,
        "the restarted client is not control within 5 s: {:?}",
        server.stats()
    );
    let took = start.elapsed();
    let n = churn.await.unwrap();
    let st = server.stats();
    assert!(
        st.control_evicted > evicted_before,
        "the churn never filled the table: {st:?}"
    );
    assert_eq!(st.control_admitted, 2, "{st:?}");
    let r = run(server.public_addr(), 20, 1024).await;
    assert_all_passed(&r, 20);
    eprintln!(
        "restarted client control after {took:?}, {n} stranger connections, {} evicted",
        st.control_evicted
    );
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_session_ends_the_user_cleanly_with_no_wrong_byte() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(server_cfg(key())).await.unwrap();
    let client = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(client.wait_control(Duration::from_secs(3)).await);
    let user = TcpStream::connect(server.public_addr()).await.unwrap();
    let (mut r, mut w) = user.into_split();
    let byte = |i: u64| (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    // The user streams a pattern for as long as it can; the echo sends it back.
    let writer = tokio::spawn(async move {
        let mut sent = 0u64;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            let chunk: Vec<u8> = (sent..sent + 4096).map(byte).collect();
            if w.write_all(&chunk).await.is_err() {
                break;
            }
            sent += 4096;
        }
        sent
    });
    let mut got = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    let mut client = Some(client);
    let ended = loop {
        let n = match tokio::time::timeout(Duration::from_secs(5), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => n,
            Err(_) => break false,
        };
        for (k, b) in buf[..n].iter().enumerate() {
            assert_eq!(*b, byte(got + k as u64), "byte {} is wrong", got + k as u64);
        }
        got += n as u64;
        // Kill the client once 256 KiB went round.
        if got >= 256 * 1024 {
            if let Some(c) = client.take() {
                c.shutdown().await;
            }
        }
    };
    assert!(ended, "the user was left hanging after the client died");
    assert!(got >= 256 * 1024, "only {got} bytes came back");
    let sent = writer.await.unwrap();
    assert!(got <= sent);
    eprintln!("{got} bytes echoed in order before the client died; {sent} sent");
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
    protocol::send_token(&mut hung, &k).await.unwrap();
    protocol::client_handshake(&mut hung, &k, &[], &protocol::fresh_session().unwrap())
        .await
        .unwrap();
    assert!(server.wait_control(Duration::from_secs(2)).await);
    // A user arriving now is not answered by anyone; the server must close it, not
    // leave it to its own deadline.
    let public = server.public_addr();
    let user = tokio::spawn(async move {
        let start = Instant::now();
        let r = load::user_session_echo(public, 0, 100, LIMIT).await;
        (r, start.elapsed())
    });
    let start = Instant::now();
    assert!(server.wait_control_state(false, LIMIT).await);
    let noticed = start.elapsed();
    // Noticed through the missing heartbeats, nothing else.
    assert_eq!(server.stats().control_silent, 1);
    let (r, took) = user.await.unwrap();
    let e = r.expect_err("a user was answered with no client");
    assert_closed_by_the_server(&[(0, e)]);
    // And users arriving with no control are closed by the server too.
    let e = load::user_session_echo(public, 1, 100, LIMIT)
        .await
        .expect_err("a user was answered with no control");
    assert_closed_by_the_server(&[(1, e)]);
    eprintln!("the silent client noticed after {noticed:?}; its user closed after {took:?}");
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
                let within = Duration::from_secs(2);
                if protocol::read_token(&mut s, &k, within).await.is_ok()
                    && protocol::server_handshake(&mut s, &k, &[], within)
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
    assert!(client.wait_control_state(false, LIMIT).await);
    eprintln!("the hung server noticed after {:?}", start.elapsed());
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
            pool_tunnel::start_server(
                ServerConfig {
                    tunnel,
                    control: Some(control),
                    tls: Some(tls),
                    ..server_cfg(k)
                }
                .map_services(|s| s.public = public),
            )
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

/// A client host crashed and came back: its old process's pooled connections are still
/// open at the server (nobody sent a FIN), and nobody will ever accept a session on
/// them. The new process's control connection carries a new session tag, and the
/// server closes every idle pooled connection of the old one before it starts a user on
/// any: no user waits for an ack that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_process_retires_the_old_ones_pooled_connections() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let k = key();
    let server = pool_tunnel::start_server(server_cfg(k.clone()))
        .await
        .unwrap();
    // The old process: it proved its session on control, and its pool holds 8
    // connections at the server; then it froze (no reads, no dials, no FIN: its pool
    // neither watches nor sweeps for an hour).
    let mut old_control = TcpStream::connect(server.control_addr()).await.unwrap();
    protocol::send_token(&mut old_control, &k).await.unwrap();
    let old_session = protocol::fresh_session().unwrap();
    protocol::client_handshake(&mut old_control, &k, &[], &old_session)
        .await
        .unwrap();
    let frozen = pool_tokio::ClientPool::builder()
        .address(server.tunnel_addr())
        .config(
            pool_tokio::ClientConfig::builder()
                .capacity(8, 8)
                .watch(IdleWatch::Off)
                .sweep_interval(Duration::from_secs(3600)),
        )
        .tunnel_key(k.clone())
        .build()
        .unwrap();
    assert!(frozen.wait_idle(8, Duration::from_secs(5)).await);
    assert!(server.pool().wait_idle(8, Duration::from_secs(5)).await);
    drop(old_control);

    // The new process.
    let client = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(client.wait_control(Duration::from_secs(3)).await);
    // The client's handshake ends when it reads the server's confirmation; the server
    // takes the connection as control (retiring the old connections first) just after.
    let until = Instant::now() + Duration::from_secs(3);
    while server.stats().client_restarts == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(server.stats().client_restarts, 1);
    assert!(client.pool().wait_idle(4, Duration::from_secs(5)).await);
    assert_all_passed(&run(server.public_addr(), 40, 1024).await, 40);
    let st = server.stats();
    assert_eq!(
        (st.not_taken, st.dead_picked, st.replayed),
        (0, 0, 0),
        "a user was started on a frozen process's connection: {st:?}"
    );
    // A control reconnect of the same process is no restart.
    assert_eq!(server.stats().client_restarts, 1);
    drop(frozen);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}
