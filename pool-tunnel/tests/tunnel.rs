//! The reverse tunnel, in one process on loopback: bytes survive the trip; a stranger who
//! knows no key is never control and never receives a user byte, on any port; a wrong
//! key and a replayed admission token are refused; a refused target and pooled
//! connections that die as they are picked lose no byte; one source cannot starve the
//! others. Peers that hang, die or restart are `tunnel_peers.rs`. Every wait is bounded.

mod tunnel_common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_testkit::load::{self, LoadProgress};
use pool_testkit::proxy::{Fault, FaultProxy, Script};
use pool_tls::admit::make_token;
use pool_tls::{ServerTls, TlsMode};
use pool_tunnel::config::PerSource;
use pool_tunnel::protocol::{self, GREETING_LEN, MAGIC};
use pool_tunnel::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tunnel_common::*;

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
    assert_eq!(
        server.pool().tcp().unwrap().stats().counters.auth_failures,
        0
    );
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

/// Many short sessions at once in mode 1, on a client pool of 16: every pooled
/// connection is started as soon as it lands. A start must never be missed because the
/// runtime has not yet seen the bytes its own watch reported, nor because the TLS
/// session pulled the start in with the connection's last handshake bytes, where no
/// readiness will ever show it (either made this load fall to a few sessions a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode1_1000_short_sessions_64_at_once() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let cert = ServerTls::self_signed(["localhost"]).unwrap();
    let fp = cert.fingerprint();
    let server = pool_tunnel::start_server(
        ServerConfig {
            tls: Some(cert),
            // Every user comes from 127.0.0.1: lift its share.
            ..ServerConfig::loopback(key())
        }
        .map_services(|s| {
            s.per_source = PerSource {
                sessions: 100_000,
                new_per_s: 1e9,
            }
        }),
    )
    .await
    .unwrap();
    let client = pool_tunnel::start_client(ClientConfig {
        mode: TlsMode::SelfSigned,
        pin: Some(fp),
        hostname: Some("localhost".into()),
        min: 16,
        ..ClientConfig::for_server(&server, echo)
    })
    .await
    .unwrap();
    assert!(client.wait_control(Duration::from_secs(10)).await);
    let r = load::run_load(
        server.public_addr(),
        1_000,
        64,
        1024,
        LIMIT,
        Arc::new(LoadProgress::default()),
    )
    .await;
    // Shown when the test fails.
    eprintln!("server {:?}", server.stats());
    eprintln!(
        "client {:?} {}",
        client.stats(),
        client.pool().tcp().unwrap().stats()
    );
    assert_all_passed(&r, 1_000);
    assert_eq!(client.stats().control_ok, 1, "control never fell silent");
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_control_port_change_nothing() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(server_cfg(key())).await.unwrap();
    let ctl = server.control_addr();

    // First in line: one stays silent, one sends garbage in place of the admission
    // token, one floods garbage without reading.
    let mut silent = connect_from(2, ctl).await.unwrap();
    let mut garbage = connect_from(3, ctl).await.unwrap();
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
    // received nothing: the server says nothing before a token proves the key.
    let (got, closed) = drain(&mut garbage, Duration::from_secs(3)).await;
    assert!(closed, "garbage stranger still connected");
    assert!(
        got.is_empty(),
        "the garbage stranger got {} bytes",
        got.len()
    );
    let (_, closed) = drain(&mut flood, Duration::from_secs(3)).await;
    assert!(closed, "flooding stranger still connected");
    let (got, closed) = drain(&mut silent, Duration::from_secs(3)).await;
    assert!(closed, "silent stranger still connected");
    assert!(
        got.is_empty(),
        "the silent stranger got {} bytes",
        got.len()
    );

    // A stranger arriving now cannot take the role over either.
    let mut late = connect_from(5, ctl).await.unwrap();
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
    assert!(server.pool().tcp().unwrap().stats().counters.auth_failures > 0);
    // No control: users are closed by the server once `control_wait` passes, never
    // relayed, and never left to the users' own deadline (`LIMIT`).
    let r = run(server.public_addr(), 5, 1024).await;
    assert_eq!(r.errors.len(), 5);
    assert_closed_by_the_server(&r.errors);
    assert_eq!(wrong.stats().accepted, 0);
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
    assert!(got.is_empty() && closed, "{} bytes", got.len());
    assert!(server.pool().tcp().unwrap().stats().counters.auth_failures >= 2);
    assert_eq!(server.stats().control_ok, 1);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_token_is_taken_once_and_only_with_the_key() {
    let k = key();
    let server = pool_tunnel::start_server(server_cfg(k.clone()))
        .await
        .unwrap();
    let ctl = server.control_addr();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ctx = protocol::CONTROL_CONTEXT;
    let good = make_token(&k, ctx, now_ms).unwrap();
    let wrong = make_token(&key(), ctx, now_ms).unwrap();
    let stale = make_token(&k, ctx, now_ms - 3_600_000).unwrap();
    // Each sender then stays silent: the server answers a taken token with its
    // greeting, anything else with nothing.
    let mut got = Vec::new();
    for token in [good, good, wrong, stale] {
        let mut s = connect_from(2, ctl).await.unwrap();
        s.write_all(&token).await.unwrap();
        got.push(drain(&mut s, Duration::from_secs(2)).await);
    }
    let lens: Vec<usize> = got.iter().map(|(b, _)| b.len()).collect();
    assert_eq!(lens, [GREETING_LEN, 0, 0, GREETING_LEN], "{got:?}");
    assert_eq!(&got[0].0[..MAGIC.len()], MAGIC);
    // The last refusal is counted just after its connection closes.
    let end = Instant::now() + Duration::from_secs(2);
    while server.stats().control_refused < 4 && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let st = server.stats();
    assert_eq!(st.control_admitted, 1, "{st:?}");
    assert_eq!(st.control_skewed, 1, "{st:?}");
    assert_eq!(
        st.control_refused, 4,
        "replay, wrong key, two silences: {st:?}"
    );
    assert_eq!(st.control_ok, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_that_die_as_they_are_picked_lose_no_byte() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(server_cfg(key())).await.unwrap();
    // A third of the pooled connections are reset once 4 bytes of payload have passed
    // (the pool's id and proof take 136 in mode 0): they die just as they are picked,
    // after the server has sent the user's first bytes on them.
    let script = Script::random(7, 0.33, vec![Fault::ResetAfter(136 + 4)]);
    let path = FaultProxy::start(server.tunnel_addr(), script)
        .await
        .unwrap();
    let client = pool_tunnel::start_client(ClientConfig {
        tunnel: path.addr().to_string(),
        ..client_cfg(&server, echo)
    })
    .await
    .unwrap();
    assert!(client.wait_control(Duration::from_secs(3)).await);
    let r = run(server.public_addr(), 100, 4096).await;
    assert_all_passed(&r, 100);
    let st = server.stats();
    assert!(st.dead_picked > 0, "no pick died: {st:?}");
    assert!(st.replayed > 0, "nothing replayed: {st:?}");
    assert_eq!(st.target_failed, 0, "{st:?}");
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_target_closes_the_user_at_once_and_costs_one_pooled_connection() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = closed.local_addr().unwrap();
    drop(closed); // nothing listens there now
    let server = pool_tunnel::start_server(server_cfg(key())).await.unwrap();
    let client = pool_tunnel::start_client(client_cfg(&server, target))
        .await
        .unwrap();
    assert!(client.wait_control(Duration::from_secs(3)).await);
    let start = Instant::now();
    let mut users = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let public = server.public_addr();
        users.spawn(async move {
            use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
            // The session starts before the user speaks (services may speak first), so
            // the reset of a refused target can beat the request, or even the end of
            // the user's own connect: that is a close too.
            let mut u = match TcpStream::connect(public).await {
                Ok(u) => u,
                Err(e) => {
                    assert_eq!(e.kind(), ConnectionReset, "{e}");
                    return (Vec::new(), true);
                }
            };
            match u.write_all(b"GET / HTTP/1.0\r\n\r\n").await {
                Ok(()) => drain(&mut u, Duration::from_secs(10)).await,
                Err(e) => {
                    assert!(matches!(e.kind(), ConnectionReset | BrokenPipe), "{e}");
                    (Vec::new(), true)
                }
            }
        });
    }
    while let Some(r) = users.join_next().await {
        let (got, closed) = r.unwrap();
        assert!(
            closed && got.is_empty(),
            "{} bytes, closed {closed}",
            got.len()
        );
    }
    let took = start.elapsed();
    let st = server.stats();
    assert_eq!(st.target_failed, 20, "{st:?}");
    assert_eq!(
        (st.not_taken, st.dead_picked, st.replayed),
        (0, 0, 0),
        "{st:?}"
    );
    assert_eq!(client.stats().target_failed, 20);
    eprintln!("20 users of a refused target closed within {took:?}");
    client.shutdown().await;
    server.shutdown().await;
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
    let server = pool_tunnel::start_server(server_cfg(key()).map_services(|s| {
        s.per_source = PerSource {
            sessions: 64,
            new_per_s: 100.0,
        };
        // The shares bind under contention: from three quarters of this cap on.
        s.max_sessions = 256;
    }))
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
    // Alone it held 192 (three quarters of the cap); past that, its share binds.
    assert!(st.users_refused_source >= 500, "{st:?}");
    drop(held);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}
