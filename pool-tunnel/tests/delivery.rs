//! A user's bytes reach the target at most once, and a session cut short is a reset:
//! a target slow to accept gets one copy, not a replay; a target that never answers
//! costs one connect and resets the user; a half-closed download that keeps moving is
//! never cut, and one that stalls is reset; a user that half-closes before a byte
//! still gets what the target says first; a client killed mid-session causes no
//! second delivery and resets its user. In one process, on loopback; every wait is
//! bounded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_tls::{Fingerprint, ServerTls, TlsMode};
use pool_tunnel::relay::RelayLimits;
use pool_tunnel::{ClientConfig, ClientHandle, ServerConfig, ServerHandle, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Every wait of these tests ends within this.
const LIMIT: Duration = Duration::from_secs(30);

/// Short deadlines: a receipt within 1 s, a target connect within `connect`.
fn timeouts(connect: Duration) -> Timeouts {
    Timeouts {
        tls: Duration::from_secs(1),
        answer: Duration::from_millis(500),
        control_wait: Duration::from_secs(1),
        ack: Duration::from_secs(1),
        get: Duration::from_secs(2),
        heartbeat: Duration::from_millis(200),
        dead_after: Duration::from_secs(2),
        io: connect,
        backoff: pool_tunnel::config::Reconnect {
            first: Duration::from_millis(50),
            longest: Duration::from_millis(300),
        },
    }
}

struct Tunnel {
    server: ServerHandle,
    client: ClientHandle,
    /// The server certificate's pin in mode 1.
    pin: Option<Fingerprint>,
}

/// TLS mode 0 (plain pooled connections: the `splice` relay) or 1 (TLS, pinned: the
/// copy relay).
#[derive(Clone, Copy)]
struct Tls(bool);

impl Tunnel {
    async fn start(target: SocketAddr, t: Timeouts, relay: RelayLimits) -> Self {
        Self::start_in(Tls(false), target, t, relay).await
    }

    async fn start_in(tls: Tls, target: SocketAddr, t: Timeouts, relay: RelayLimits) -> Self {
        let cert = tls
            .0
            .then(|| ServerTls::self_signed(["localhost"]).unwrap());
        let pin = cert.as_ref().map(ServerTls::fingerprint);
        let server = pool_tunnel::start_server(
            ServerConfig {
                timeouts: t.clone(),
                tls: cert,
                ..ServerConfig::loopback(pool_tls::TunnelKey::generate().unwrap())
            }
            .map_services(|s| s.relay = relay),
        )
        .await
        .unwrap();
        let client = start_client(&server, pin, target, t, relay).await;
        Self {
            server,
            client,
            pin,
        }
    }

    async fn stop(self) {
        self.client.shutdown().await;
        self.server.shutdown().await;
    }
}

async fn start_client(
    server: &ServerHandle,
    pin: Option<Fingerprint>,
    target: SocketAddr,
    t: Timeouts,
    relay: RelayLimits,
) -> ClientHandle {
    let mut cfg = ClientConfig {
        timeouts: t,
        ..ClientConfig::for_server(server, target)
    }
    .map_services(|s| s.relay = relay);
    if let Some(fp) = pin {
        cfg.mode = TlsMode::SelfSigned;
        cfg.pin = Some(fp);
        cfg.hostname = Some("localhost".into());
    }
    let client = pool_tunnel::start_client(cfg).await.unwrap();
    assert!(client.wait_control(Duration::from_secs(5)).await);
    assert!(server.wait_control(Duration::from_secs(5)).await);
    client
}

/// Polls `done` every 5 ms until it holds or `LIMIT` passes; whether it held.
async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + LIMIT;
    while !done() {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Reads until EOF or an error: the bytes, and the error (`None` for a clean EOF).
async fn read_all(s: &mut TcpStream) -> (Vec<u8>, Option<std::io::ErrorKind>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = tokio::time::timeout(LIMIT, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e.kind()),
            }
        }
    })
    .await
    .expect("the user's stream ends");
    (got, end)
}

/// The request lines a target received, one per connection that carried one.
#[derive(Clone, Default)]
struct Copies(Arc<Mutex<Vec<Vec<u8>>>>);

impl Copies {
    fn push(&self, line: Vec<u8>) -> usize {
        let mut c = self.0.lock().unwrap();
        c.push(line);
        c.len()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Reads one line (up to `\n` or EOF) from `s`, within `LIMIT`.
async fn read_line(s: &mut TcpStream) -> Vec<u8> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    let _ = tokio::time::timeout(LIMIT, async {
        while let Ok(1) = s.read(&mut b).await {
            line.push(b[0]);
            if b[0] == b'\n' {
                break;
            }
        }
    })
    .await;
    line
}

/// A listener whose accept queue is full: a connect to it stays in SYN-SENT (its SYNs
/// are dropped) until room is made. The fillers that fill it are returned, to be
/// dropped before anything accepts.
async fn full_listener() -> (TcpListener, Vec<TcpStream>) {
    let s = TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = s.listen(1).unwrap();
    let addr = l.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        // A connect the queue has room for completes at once, in the kernel.
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("filler: {e}"),
            Err(_) => return (l, fillers),
        }
    }
    panic!("the accept queue never filled");
}

/// Accepts on `l` for ever: each connection's first line is a copy; it answers `ok`
/// and closes.
async fn answer_each(l: TcpListener, copies: Copies) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let copies = copies.clone();
        tokio::spawn(async move {
            let line = read_line(&mut s).await;
            if line.is_empty() {
                return; // a filler
            }
            copies.push(line);
            let _ = s.write_all(b"ok\n").await;
            let _ = s.shutdown().await;
        });
    }
}

/// A target whose accept queue is full (connects take a SYN retransmission, 1 s or
/// more, longer than the receipt deadline) gets the user's request once: the server
/// never replays what a client received, and that client delivers it when its connect
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_slow_to_accept_gets_the_request_once() {
    slow_target_gets_one_copy(Tls(false)).await;
}

/// As [`a_target_slow_to_accept_gets_the_request_once`], over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_slow_to_accept_gets_the_request_once_in_mode_1() {
    slow_target_gets_one_copy(Tls(true)).await;
}

async fn slow_target_gets_one_copy(tls: Tls) {
    let (l, fillers) = full_listener().await;
    let target = l.local_addr().unwrap();
    let t = timeouts(Duration::from_secs(10));
    let ack = t.ack;
    let tunnel = Tunnel::start_in(tls, target, t, RelayLimits::default()).await;
    let mut user = TcpStream::connect(tunnel.server.public_addr())
        .await
        .unwrap();
    user.write_all(b"request 1\n").await.unwrap();
    // The target is overloaded for a while: it accepts nothing for two receipt
    // deadlines, then everything.
    let copies = Copies::default();
    let serving = tokio::spawn({
        let copies = copies.clone();
        async move {
            tokio::time::sleep(2 * ack).await;
            drop(fillers);
            answer_each(l, copies).await;
        }
    });
    let (got, end) = read_all(&mut user).await;
    assert_eq!((got.as_slice(), end), (&b"ok\n"[..], None));
    drop(user); // its write side ends: the session is done
                // Every target connect the client made has ended and delivered what it carried.
    let client = &tunnel.client;
    assert!(
        wait_until(|| {
            let st = client.stats();
            st.accepted == st.relayed + st.failed
                && copies.count() as u64 >= st.accepted - st.target_failed
        })
        .await,
        "{} copies at the target; {:?}",
        copies.count(),
        client.stats()
    );
    assert_eq!(copies.count(), 1, "copies at the target: {:?}", copies.0);
    let st = tunnel.server.stats();
    assert_eq!((st.replayed, st.relayed), (0, 1), "{st:?}");
    serving.abort();
    tunnel.stop().await;
}

/// A target that never answers (its SYNs dropped) costs one target connect for one
/// user, and the user is reset when the client's connect deadline passes, by the
/// client's `TARGET_FAILED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_never_answers_costs_one_connect_and_resets_the_user() {
    let (l, _fillers) = full_listener().await;
    let target = l.local_addr().unwrap();
    let tunnel = Tunnel::start(
        target,
        timeouts(Duration::from_millis(1500)),
        RelayLimits::default(),
    )
    .await;
    let mut user = TcpStream::connect(tunnel.server.public_addr())
        .await
        .unwrap();
    user.write_all(b"request 1\n").await.unwrap();
    let (got, end) = read_all(&mut user).await;
    assert_eq!(
        (got.len(), end),
        (0, Some(std::io::ErrorKind::ConnectionReset))
    );
    let (server, client) = (tunnel.server.stats(), tunnel.client.stats());
    assert_eq!(
        (server.target_failed, server.replayed),
        (1, 0),
        "{server:?}"
    );
    assert_eq!(
        (client.accepted, client.target_failed),
        (1, 1),
        "{client:?}"
    );
    tunnel.stop().await;
}

/// A target that reads one request line, then runs `then` on the connection and the line.
async fn line_target<F, Fut>(then: F) -> (SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let then = Arc::new(then);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let then = then.clone();
            tokio::spawn(async move {
                let line = read_line(&mut s).await;
                then(s, line).await;
            });
        }
    });
    (addr, task)
}

const HALF_CLOSE: Duration = Duration::from_millis(600);

fn short_half_close() -> RelayLimits {
    RelayLimits {
        half_close: HALF_CLOSE,
        ..RelayLimits::default()
    }
}

/// A user that sent its request and shut down its write side downloads for four
/// half-close timeouts, at a trickle that never falls silent for one: it gets every
/// byte and a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_download_that_keeps_moving_is_never_cut() {
    const CHUNKS: usize = 24;
    let (target, task) = line_target(|mut s, _| async move {
        for i in 0..CHUNKS {
            tokio::time::sleep(HALF_CLOSE / 6).await;
            if s.write_all(&[i as u8; 1000]).await.is_err() {
                return;
            }
        }
        let _ = s.shutdown().await;
    })
    .await;
    let tunnel = Tunnel::start(target, timeouts(Duration::from_secs(2)), short_half_close()).await;
    let mut user = TcpStream::connect(tunnel.server.public_addr())
        .await
        .unwrap();
    user.write_all(b"go\n").await.unwrap();
    user.shutdown().await.unwrap();
    let (got, end) = read_all(&mut user).await;
    let want: Vec<u8> = (0..CHUNKS).flat_map(|i| [i as u8; 1000]).collect();
    assert_eq!(end, None, "after {} bytes", got.len());
    assert!(got == want, "{} bytes of {}", got.len(), want.len());
    assert_eq!(tunnel.server.stats().half_close_timeouts, 0);
    task.abort();
    tunnel.stop().await;
}

/// A half-closed session whose download stalls is cut at the half-close timeout, and
/// the cut is a reset: the user never takes it for a complete answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_half_closed_session_is_cut_with_a_reset() {
    stalled_session_is_reset(Tls(false)).await;
}

/// As [`a_stalled_half_closed_session_is_cut_with_a_reset`], over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_half_closed_session_is_cut_with_a_reset_in_mode_1() {
    stalled_session_is_reset(Tls(true)).await;
}

async fn stalled_session_is_reset(tls: Tls) {
    let (target, task) = line_target(|mut s, _| async move {
        let _ = s.write_all(b"partial").await;
        // Silent from here on, holding the connection open (the task is aborted).
        tokio::time::sleep(LIMIT).await;
        drop(s);
    })
    .await;
    let tunnel = Tunnel::start_in(
        tls,
        target,
        timeouts(Duration::from_secs(2)),
        short_half_close(),
    )
    .await;
    let mut user = TcpStream::connect(tunnel.server.public_addr())
        .await
        .unwrap();
    user.write_all(b"go\n").await.unwrap();
    user.shutdown().await.unwrap();
    let (got, end) = read_all(&mut user).await;
    assert_eq!(got, b"partial");
    assert_eq!(end, Some(std::io::ErrorKind::ConnectionReset));
    task.abort();
    tunnel.stop().await;
}

/// Users that shut down their write side before sending a byte (`nc -N < /dev/null`)
/// get all a target says first: 20 of 20 get the banner and 100 kB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_that_half_closes_at_once_gets_what_the_target_says_first() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = l.local_addr().unwrap();
    let banner: Vec<u8> = b"HELLO 220\r\n"
        .iter()
        .copied()
        .chain((0..100_000u32).map(|i| (i * 7 % 251) as u8))
        .collect();
    let speaks = tokio::spawn({
        let banner = banner.clone();
        async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let banner = banner.clone();
                tokio::spawn(async move {
                    let _ = s.write_all(&banner).await;
                    let _ = s.shutdown().await;
                });
            }
        }
    });
    let tunnel = Tunnel::start(
        target,
        timeouts(Duration::from_secs(2)),
        RelayLimits::default(),
    )
    .await;
    let mut served = 0;
    for _ in 0..20 {
        let mut user = TcpStream::connect(tunnel.server.public_addr())
            .await
            .unwrap();
        user.shutdown().await.unwrap();
        let (got, end) = read_all(&mut user).await;
        if end.is_none() && got == banner {
            served += 1;
        }
    }
    assert_eq!(served, 20, "{:?}", tunnel.server.stats());
    speaks.abort();
    tunnel.stop().await;
}

/// The client process dies while a session it received is at the target (the request
/// delivered, no answer yet); a new client process comes. The request is never
/// delivered a second time, and the user is reset, not closed with 0 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_session_delivers_nothing_twice_and_resets_the_user() {
    killed_client_delivers_once(Tls(false)).await;
}

/// As [`a_client_killed_mid_session_delivers_nothing_twice_and_resets_the_user`], over
/// TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_session_delivers_nothing_twice_in_mode_1() {
    killed_client_delivers_once(Tls(true)).await;
}

async fn killed_client_delivers_once(tls: Tls) {
    // The first copy is held without an answer; any later copy is answered.
    let copies = Copies::default();
    let (target, task) = line_target({
        let copies = copies.clone();
        move |mut s, line| {
            let copies = copies.clone();
            async move {
                if line.is_empty() {
                    return;
                }
                if copies.push(line) == 1 {
                    let mut rest = Vec::new();
                    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut rest)).await;
                } else {
                    let _ = s.write_all(b"ok\n").await;
                    let _ = s.shutdown().await;
                }
            }
        }
    })
    .await;
    let t = timeouts(Duration::from_secs(2));
    let tunnel = Tunnel::start_in(tls, target, t.clone(), RelayLimits::default()).await;
    let mut user = TcpStream::connect(tunnel.server.public_addr())
        .await
        .unwrap();
    user.write_all(b"request\n").await.unwrap();
    assert!(wait_until(|| copies.count() == 1).await);
    // Killed: every task of the client process ends at once, its sockets close.
    let Tunnel {
        server,
        client,
        pin,
    } = tunnel;
    drop(client);
    let client = start_client(&server, pin, target, t, RelayLimits::default()).await;
    let (got, end) = read_all(&mut user).await;
    assert_eq!(
        (got.as_slice(), end),
        (&b""[..], Some(std::io::ErrorKind::ConnectionReset)),
        "{:?}",
        server.stats()
    );
    // Whatever the new process accepted has ended and reached the target.
    assert!(
        wait_until(|| {
            let st = client.stats();
            st.accepted == st.relayed + st.failed
                && copies.count() as u64 >= 1 + st.accepted - st.target_failed
        })
        .await
    );
    assert_eq!(copies.count(), 1, "{:?}", server.stats());
    // A user after the restart is served.
    let mut next = TcpStream::connect(server.public_addr()).await.unwrap();
    next.write_all(b"request\n").await.unwrap();
    let (got, end) = read_all(&mut next).await;
    assert_eq!((got.as_slice(), end), (&b"ok\n"[..], None));
    task.abort();
    client.shutdown().await;
    server.shutdown().await;
}
