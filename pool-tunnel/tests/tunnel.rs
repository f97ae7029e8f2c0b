//! The reverse tunnel, in one process on loopback: bytes survive the trip; a stranger who
//! knows no key is never control and never receives a user byte, on any port; a
//! restarted client gets control back under a churn from 200 sources; heartbeats notice a hung peer on
//! either side; a pinned certificate and the key survive a server restart with a state
//! directory. Every wait is bounded.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_testkit::proxy::{Fault, FaultProxy, Script};
use pool_tls::admit::make_token;
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

/// Each failed session ended because the server closed or reset it, not at the user's
/// own deadline.
fn assert_closed_by_the_server(errors: &[(u64, String)]) {
    for (n, e) in errors {
        assert!(!e.starts_with("timed out"), "user {n}: {e}");
    }
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
    let server = pool_tunnel::start_server(ServerConfig {
        tls: Some(cert),
        // Every user comes from 127.0.0.1: lift its share.
        per_source: (100_000, 1e9),
        ..ServerConfig::loopback(key())
    })
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
    eprintln!("client {:?} {}", client.stats(), client.pool().stats());
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
    assert!(server.pool().stats().counters.auth_failures > 0);
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
    assert!(server.pool().stats().counters.auth_failures >= 2);
    assert_eq!(server.stats().control_ok, 1);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

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
        candidates: (256, 8),
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
            let mut u = TcpStream::connect(public).await.unwrap();
            u.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
            drain(&mut u, Duration::from_secs(10)).await
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
        .tunnel_key(k.clone())
        .capacity(8, 8)
        .watch_idle(false)
        .sweep_interval(Duration::from_secs(3600))
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
