//! Attacks on the tunnel port, for `tests/attacks.rs` (scaled down) and the
//! `pool-attack` binary (full size).
//!
//! The legitimate client dials from 127.0.0.1; strangers bind source addresses in
//! 127.0.0.2–127.0.0.254 before they connect. Every attack runs in one process with
//! the pools, so CPU figures include the attacker's own work.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_tls::proof::{CHALLENGE_LEN, RESPONSE_LEN};
use pool_tls::{DangerousNoVerify, ServerTls};
use pool_tokio::{AdmissionLimits, ClientConfig, ClientTls, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, ServerPool, TlsMode, TunnelKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// How big the attacks are.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Silent strangers (2,000 in the full run).
    pub strangers: usize,
    /// Length of the slowloris and flood attacks (20 s in the full run).
    pub duration: Duration,
    /// The legitimate client's pool.
    pub capacity: usize,
    /// Checkouts measured per attack.
    pub checkouts: usize,
    /// Recorded exchanges replayed (1,000 in the full run).
    pub replays: usize,
}

impl Scale {
    /// The full run of the binary.
    pub fn full() -> Self {
        Self {
            strangers: 2_000,
            duration: Duration::from_secs(20),
            capacity: 256,
            checkouts: 1_000,
            replays: 1_000,
        }
    }
    /// A run of seconds, for the tests.
    pub fn quick() -> Self {
        Self {
            strangers: 200,
            duration: Duration::from_secs(2),
            capacity: 16,
            checkouts: 50,
            replays: 50,
        }
    }
}

/// The attacks that crowd the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crowd {
    /// Silent TCP strangers (mode 0).
    Silent,
    /// Strangers that finish TLS (mode 1), then stay silent.
    TlsSilent,
    /// Strangers that keep every handshake slot busy and reconnect when cut (mode 1).
    Slowloris,
    /// Connect and close as fast as possible, 4 tasks (mode 0).
    Flood,
}

impl Crowd {
    /// The attack's name in figure names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Silent => "silent",
            Self::TlsSilent => "tls_silent",
            Self::Slowloris => "slowloris",
            Self::Flood => "flood",
        }
    }
    fn mode(self) -> TlsMode {
        match self {
            Self::Silent | Self::Flood => TlsMode::Off,
            Self::TlsSilent | Self::Slowloris => TlsMode::SelfSigned,
        }
    }
}

/// What one crowd attack measured.
#[derive(Clone, Debug, Default)]
pub struct CrowdResult {
    /// Stranger connections in the server's idle map at the end of the attack, by the
    /// server's own per-source count (exact: the idle quota is on).
    pub strangers_admitted: u64,
    /// The legitimate fill time under attack, or `None` if it did not complete.
    pub fill: Option<Duration>,
    /// Checkouts that paired end to end on the first try, in percent.
    pub served_pct: f64,
    /// Checkouts that paired when the application retries (up to 5 times), in percent.
    pub served_retry_pct: f64,
    /// p99 of one checkout (server get to bytes both ways), in ms.
    pub get_p99_ms: f64,
    /// Process CPU time over wall time during the attack, in percent.
    pub cpu_pct: f64,
    /// The most idle connections one stranger source held (by the server's count).
    pub max_per_source: usize,
}

/// A stranger's source address: 127.0.0.2 to 127.0.0.254.
pub fn stranger_addr(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 253) as u8))
}

/// A TCP connection to `to` from `from`.
pub async fn connect_from(from: IpAddr, to: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

fn key() -> TunnelKey {
    TunnelKey::from_bytes(&std::array::from_fn::<u8, 32, _>(|i| 0x5a ^ (7 * i as u8)))
        .expect("a 32-byte key")
}

/// The idle quota an operator sets who knows the topology: one client holding
/// `capacity` connections.
fn server(mode: TlsMode, with_key: bool, capacity: usize) -> Result<ServerPool, io::Error> {
    let mut b = ServerPool::builder()
        .bind(
            "127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .expect("an address"),
        )
        .config(ServerConfig::builder().admission(AdmissionLimits {
            idle_per_source: Some(capacity),
            ..AdmissionLimits::default()
        }))
        .tls(if mode == TlsMode::Off {
            ServeTls::Off
        } else {
            ServeTls::self_signed()
        })
        .backlog(4096);
    if with_key {
        b = b.tunnel_key(key());
    }
    b.build().map_err(io::Error::other)
}

fn client(
    server: SocketAddr,
    mode: TlsMode,
    with_key: bool,
    capacity: usize,
) -> Result<ClientPool, io::Error> {
    let mut b = ClientPool::builder()
        .address(server)
        .config(ClientConfig::builder().capacity(capacity, capacity))
        .tls(ClientTls::from(mode));
    if with_key {
        b = b.tunnel_key(key());
    }
    b.build().map_err(io::Error::other)
}

/// The legitimate client fills its pool; how long it took, or `None` past `limit`.
async fn fill(
    server: &ServerPool,
    mode: TlsMode,
    with_key: bool,
    capacity: usize,
    limit: Duration,
) -> io::Result<(ClientPool, Option<Duration>)> {
    let start = Instant::now();
    let c = client(server.local_addr(), mode, with_key, capacity)?;
    let ok = c.wait_idle(capacity, limit).await;
    Ok((c, ok.then(|| start.elapsed())))
}

/// One checkout end to end: server get, client get by id, bytes both ways.
async fn checkout(server: &ServerPool, client: &ClientPool) -> Result<(), ()> {
    let t = Duration::from_secs(1);
    let (id, mut s) = server.get_timeout(t).await.map_err(drop)?;
    let mut c = client.get_timeout(id, t).await.map_err(drop)?;
    let ok = async {
        s.write_all(b"ping").await?;
        s.flush().await?;
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await?;
        c.write_all(b"pong").await?;
        c.flush().await?;
        s.read_exact(&mut b).await?;
        io::Result::Ok(b == *b"pong")
    };
    match tokio::time::timeout(t, ok).await {
        Ok(Ok(true)) => Ok(()),
        _ => Err(()),
    }
}

/// `n` checkouts: served on the first try and with retries (percent), and the p99 of
/// one checkout in ms.
async fn checkouts(server: &ServerPool, client: &ClientPool, n: usize) -> (f64, f64, f64) {
    let (mut first, mut retried) = (0usize, 0usize);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let mut ok = checkout(server, client).await.is_ok();
        times.push(start.elapsed());
        first += usize::from(ok);
        for _ in 0..5 {
            if ok {
                break;
            }
            ok = checkout(server, client).await.is_ok();
        }
        retried += usize::from(ok);
    }
    times.sort();
    let p99 = times
        .get((times.len() * 99 / 100).min(times.len().saturating_sub(1)))
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    let pct = |k: usize| 100.0 * k as f64 / n.max(1) as f64;
    (pct(first), pct(retried), p99)
}

/// The legitimate fill time with no attack, the baseline of `fill_ratio`.
pub async fn baseline_fill(mode: TlsMode, with_key: bool, scale: Scale) -> io::Result<Duration> {
    let s = server(mode, with_key, scale.capacity)?;
    let (c, t) = fill(&s, mode, with_key, scale.capacity, Duration::from_secs(30)).await?;
    c.close().await;
    s.close().await;
    t.ok_or_else(|| io::Error::other("the baseline fill did not complete"))
}

/// Runs one crowd attack against a fresh server pool, with the key or without.
pub async fn crowd(attack: Crowd, with_key: bool, scale: Scale) -> io::Result<CrowdResult> {
    let mode = attack.mode();
    let server = server(mode, with_key, scale.capacity)?;
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    let cpu0 = crate::process::cpu_time()?;
    let wall0 = Instant::now();
    match attack {
        Crowd::Silent | Crowd::TlsSilent => {
            let tls = attack == Crowd::TlsSilent;
            let connector = tls_connector();
            for n in 0..scale.strangers {
                let (stop, connector) = (stop.clone(), connector.clone());
                tasks.spawn(async move {
                    let Ok(tcp) = connect_from(stranger_addr(n), addr).await else {
                        return;
                    };
                    let _held: Box<dyn Send> = if tls {
                        match connector.connect(server_name(), tcp).await {
                            Ok(s) => Box::new(s),
                            Err(_) => return,
                        }
                    } else {
                        Box::new(tcp)
                    };
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
            }
            // Let the crowd arrive before the client starts.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Crowd::Slowloris => {
            // More than every slot (256 by default), each reconnecting when cut.
            for n in 0..300 {
                let stop = stop.clone();
                tasks.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut tcp) = connect_from(stranger_addr(n), addr).await else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        let mut b = [0u8; 64];
                        // Silent until the server cuts it (eviction or deadline).
                        loop {
                            tokio::select! {
                                r = tcp.read(&mut b) => if !matches!(r, Ok(n) if n > 0) { break },
                                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                                    if stop.load(Ordering::Relaxed) { return }
                                }
                            }
                        }
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Crowd::Flood => {
            for t in 0..4 {
                let stop = stop.clone();
                tasks.spawn(async move {
                    let mut n = t;
                    while !stop.load(Ordering::Relaxed) {
                        n += 4;
                        // Closed at once (a plain close: no linger games).
                        drop(connect_from(stranger_addr(n), addr).await);
                        tokio::task::yield_now().await;
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (client, fill_time) = fill(
        &server,
        mode,
        with_key,
        scale.capacity,
        Duration::from_secs(30),
    )
    .await?;
    let (served_pct, served_retry_pct, get_p99_ms) = if fill_time.is_some() {
        checkouts(&server, &client, scale.checkouts).await
    } else {
        (0.0, 0.0, 0.0)
    };
    // The timed attacks last their full length.
    if matches!(attack, Crowd::Slowloris | Crowd::Flood) {
        let left = scale.duration.saturating_sub(wall0.elapsed());
        tokio::time::sleep(left).await;
    }
    let cpu = crate::process::cpu_time()?.saturating_sub(cpu0);
    let cpu_pct = 100.0 * cpu.as_secs_f64() / wall0.elapsed().as_secs_f64();
    let per_source: Vec<usize> = (0..253)
        .map(|n| server.idle_from(stranger_addr(n)))
        .collect();
    let max_per_source = per_source.iter().copied().max().unwrap_or(0);
    let strangers_admitted = per_source.iter().sum::<usize>() as u64;
    stop.store(true, Ordering::Relaxed);
    client.close().await;
    server.close().await;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    Ok(CrowdResult {
        strangers_admitted,
        fill: fill_time,
        served_pct,
        served_retry_pct,
        get_p99_ms,
        cpu_pct,
        max_per_source,
    })
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let cfg = rustls::ClientConfig::builder_with_provider(pool_tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DangerousNoVerify::new(None)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").expect("a name")
}

/// The proof oracle: a fake server makes the legitimate client prove `n` ids and
/// challenges the fake server chose, then offers each answer to the real server on a
/// fresh connection. Returns the proofs that got a connection into the real pool.
pub async fn oracle(n: usize) -> io::Result<u64> {
    let real = server(TlsMode::Off, true, n)?;
    let fake = TcpListener::bind("127.0.0.1:0").await?;
    let fake_addr = fake.local_addr()?;
    let answers = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let a2 = answers.clone();
    let fake_task = tokio::spawn(async move {
        let mut k = 0u32;
        while let Ok((mut tcp, _)) = fake.accept().await {
            k += 1;
            let a = a2.clone();
            tokio::spawn(async move {
                // An id and a challenge of the fake server's choosing.
                let id = format!("{k:08x}");
                let mut msg = id.into_bytes();
                msg.extend_from_slice(&[k as u8; CHALLENGE_LEN]);
                if tcp.write_all(&msg).await.is_err() {
                    return;
                }
                let mut resp = [0u8; RESPONSE_LEN];
                if tcp.read_exact(&mut resp).await.is_ok() {
                    a.lock().await.push(resp);
                }
            });
        }
    });
    let client = client(fake_addr, TlsMode::Off, true, n.min(64))?;
    let start = Instant::now();
    while answers.lock().await.len() < n && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.close().await;
    fake_task.abort();
    let answers = std::mem::take(&mut *answers.lock().await);
    let got = offer(&real, answers).await;
    real.close().await;
    Ok(got)
}

/// Offers each recorded answer to `real` on a fresh connection from a stranger
/// address, and counts the connections that entered its pool.
async fn offer(real: &ServerPool, answers: Vec<[u8; RESPONSE_LEN]>) -> u64 {
    let before = real.stats().counters.created;
    let addr = real.local_addr();
    for (n, resp) in answers.into_iter().enumerate() {
        let Ok(mut tcp) = connect_from(stranger_addr(n), addr).await else {
            continue;
        };
        let mut hello = [0u8; 8 + CHALLENGE_LEN];
        if tcp.read_exact(&mut hello).await.is_err() {
            continue;
        }
        let _ = tcp.write_all(&resp).await;
        let mut b = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut b)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    real.stats().counters.created - before
}

/// Replay (mode 0): a relay records `n` legitimate exchanges (the client's answers),
/// then replays each on a fresh connection. Returns the strangers admitted.
pub async fn replay(n: usize) -> io::Result<u64> {
    let real = server(TlsMode::Off, true, n.max(1))?;
    let relay = TcpListener::bind("127.0.0.1:0").await?;
    let relay_addr = relay.local_addr()?;
    let real_addr = real.local_addr();
    let recorded = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let rec = recorded.clone();
    let relay_task = tokio::spawn(async move {
        while let Ok((mut down, _)) = relay.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(real_addr).await else {
                    return;
                };
                let mut hello = [0u8; 8 + CHALLENGE_LEN];
                let mut resp = [0u8; RESPONSE_LEN];
                if up.read_exact(&mut hello).await.is_err()
                    || down.write_all(&hello).await.is_err()
                    || down.read_exact(&mut resp).await.is_err()
                    || up.write_all(&resp).await.is_err()
                {
                    return;
                }
                rec.lock().await.push(resp);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    let client = client(relay_addr, TlsMode::Off, true, n.clamp(1, 1000))?;
    let start = Instant::now();
    while recorded.lock().await.len() < n && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.close().await;
    relay_task.abort();
    let answers = std::mem::take(&mut *recorded.lock().await);
    let got = offer(&real, answers).await;
    real.close().await;
    Ok(got)
}

/// Relay (mode 1): a fake TLS server between the legitimate client and the real
/// server forwards every byte between its two TLS sessions. Returns the connections
/// that entered the real pool (the proof is bound to the client's session).
pub async fn relay(n: usize) -> io::Result<u64> {
    let real = server(TlsMode::SelfSigned, true, n.max(1))?;
    let real_addr = real.local_addr();
    let fake = TcpListener::bind("127.0.0.1:0").await?;
    let fake_addr = fake.local_addr()?;
    let cert = ServerTls::self_signed(["localhost"]).map_err(io::Error::other)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(cert.config().map_err(io::Error::other)?);
    let connector = tls_connector();
    let relayed = Arc::new(AtomicU64::new(0));
    let r2 = relayed.clone();
    let relay_task = tokio::spawn(async move {
        while let Ok((down, _)) = fake.accept().await {
            let (acceptor, connector, r2) = (acceptor.clone(), connector.clone(), r2.clone());
            tokio::spawn(async move {
                let Ok(mut down) = acceptor.accept(down).await else {
                    return;
                };
                let Ok(up) = TcpStream::connect(real_addr).await else {
                    return;
                };
                let Ok(mut up) = connector.connect(server_name(), up).await else {
                    return;
                };
                r2.fetch_add(1, Ordering::Relaxed);
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    let client = client(fake_addr, TlsMode::SelfSigned, true, n.clamp(1, 64))?;
    let start = Instant::now();
    while relayed.load(Ordering::Relaxed) < n as u64 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admitted = real.stats().counters.created;
    client.close().await;
    relay_task.abort();
    real.close().await;
    Ok(admitted)
}
