//! The tunnel's limits against strangers, under contention: many source networks holding
//! the public port's cap never lock honest users out; a lone source is held to its share
//! only while others wait; a captured admission token replayed many times costs a few
//! log lines; a token from before a restart buys no protected slot. Strangers come from
//! 127.0.1.x and up (each its own /24), honest users from 127.0.0.1. Every wait is
//! bounded.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_testkit::load::{self, LoadProgress, LoadReport};
use pool_tls::admit::make_token;
use pool_tls::TunnelKey;
use pool_tunnel::config::PerSource;
use pool_tunnel::protocol::{self, unix_ms, GREETING_LEN};
use pool_tunnel::{ClientConfig, ServerConfig, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

mod tunnel_common;
use tunnel_common::{fast, until, LIMIT};

fn server_cfg(max_sessions: usize) -> ServerConfig {
    ServerConfig {
        timeouts: fast(),
        ..ServerConfig::loopback(TunnelKey::generate().unwrap())
    }
    .map_services(|s| s.max_sessions = max_sessions)
}

fn client_cfg(server: &ServerHandle, target: SocketAddr) -> ClientConfig {
    ClientConfig {
        timeouts: fast(),
        min: 64,
        max: 512,
        ..ClientConfig::for_server(server, target)
    }
}

/// A connection from `127.0.<net>.<host>`: each `net` is its own /24.
async fn connect_from(net: u8, host: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(IpAddr::from([127, 0, net, host]), 0))?;
    s.connect(to).await
}

/// Sessions under way at the server: accepted, and neither refused nor ended.
fn active(server: &ServerHandle) -> u64 {
    let st = server.stats();
    st.users
        - st.users_refused
        - st.users_refused_source
        - st.users_evicted
        - st.relayed
        - st.failed
}

/// Strangers from `nets` (each its own /24) open `each` sessions apiece, send 1 KiB on
/// each and never read; answers the connections, which hold their sessions.
async fn hold(public: SocketAddr, nets: std::ops::RangeInclusive<u8>, each: u8) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for net in nets {
        for host in 0..each {
            if let Ok(mut s) = connect_from(net, 2 + host, public).await {
                let _ = s.write_all(&[b'x'; 1024]).await;
                held.push(s);
            }
        }
    }
    held
}

async fn honest(public: SocketAddr, n: u64, at_once: usize) -> LoadReport {
    let progress = Arc::new(LoadProgress::default());
    load::run_load(public, n, at_once, 1024, LIMIT, progress).await
}

fn p50_ms(r: &LoadReport) -> f64 {
    r.quantile(0.5).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eighteen_source_networks_holding_the_cap_never_lock_honest_users_out() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let cap = 128;
    let server = pool_tunnel::start_server(server_cfg(cap)).await.unwrap();
    let client = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(client.wait_control(LIMIT).await);
    let public = server.public_addr();
    let undisturbed = honest(public, 50, 4).await;
    assert!(undisturbed.errors.is_empty(), "{:?}", undisturbed.errors);
    assert!(until(|| active(&server) == 0).await);

    // 18 networks of 10 connections each: 180 tries at a cap of 128.
    let held = hold(public, 1..=18, 10).await;
    assert!(until(|| server.stats().users >= 50 + held.len() as u64).await);
    assert!(
        until(|| active(&server) == cap as u64).await,
        "the strangers did not fill the cap: {} active, {:?}",
        active(&server),
        server.stats()
    );
    let under = honest(public, 50, 4).await;
    let served = under.latencies.len();
    println!(
        "honest users served while 18 networks hold the cap: {served} of 50; p50 {:.1} ms \
         (undisturbed p50 {:.1} ms)",
        p50_ms(&under),
        p50_ms(&undisturbed)
    );
    assert!(served >= 48, "{served} of 50 served: {:?}", under.errors);
    let st = server.stats();
    assert!(st.users_evicted > 0, "{st:?}");
    // The strangers' sessions that made room were reset, not ended cleanly; the cap
    // still holds.
    assert!(active(&server) <= cap as u64);
    drop(held);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

/// A session from its own network that moves a byte each way every 20 ms until told
/// to stop (bounded: at most `LIMIT`); answers how many round trips went, or the error
/// that ended it.
async fn mover(
    public: SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<u32, String> {
    let mut s = connect_from(100, 2, public)
        .await
        .map_err(|e| e.to_string())?;
    let end = Instant::now() + LIMIT;
    let mut trips = 0;
    while !*stop.borrow() && Instant::now() < end {
        let mut b = [0u8; 1];
        s.write_all(b"m")
            .await
            .map_err(|e| format!("write after {trips}: {e}"))?;
        s.read_exact(&mut b)
            .await
            .map_err(|e| format!("read after {trips}: {e}"))?;
        trips += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(trips)
}

/// Waits (bounded) until `n` bytes wait unread on `s`, without taking them; answers
/// whether they did.
async fn until_peeked(s: &TcpStream, n: usize) -> bool {
    let mut buf = vec![0u8; n];
    let end = Instant::now() + LIMIT;
    while Instant::now() < end {
        match tokio::time::timeout_at(end.into(), s.peek(&mut buf)).await {
            Ok(Ok(k)) if k >= n => return true,
            Ok(Ok(k)) if k > 0 => tokio::time::sleep(Duration::from_millis(5)).await,
            _ => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_many_silent_sources_as_slots_never_lock_honest_users_out() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let cap = 32;
    let quiet = Duration::from_secs(1);
    let server = pool_tunnel::start_server(server_cfg(cap).map_services(|s| {
        s.quiet = quiet;
    }))
    .await
    .unwrap();
    let client = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(client.wait_control(LIMIT).await);
    let public = server.public_addr();
    // One session keeps moving bytes; 31 networks hold one silent session each: every
    // source holds one, so by weight alone nobody yields.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let moving = tokio::spawn(mover(public, stop));
    let held = hold(public, 1..=31, 1).await;
    assert!(
        until(|| active(&server) == cap as u64).await,
        "the strangers did not fill the cap: {} active",
        active(&server)
    );
    // The last byte of each silent session is the service's echo of its 1 KiB: once
    // every stranger has it waiting unread, none of them moves a byte again, and all
    // of them are quiet one window later. Their echoes land over a spread (tens of
    // milliseconds on a loaded machine): a probe admitted in the place of the first
    // one to go quiet says nothing of the others, and an honest run that starts then
    // finds the cap held by sessions not yet quiet, each of a source as light as its
    // own, and is refused.
    let mut echoed = true;
    for s in &held {
        echoed &= until_peeked(s, 1024).await;
    }
    assert!(echoed, "a stranger's echo did not come");
    tokio::time::sleep(quiet).await;
    // A probe from a fresh network is admitted in the place of a quiet one.
    let end = Instant::now() + LIMIT;
    let mut admitted = false;
    for host in 2..250u8 {
        if Instant::now() > end {
            break;
        }
        let mut probe = connect_from(200, host, public).await.unwrap();
        let mut b = [0u8; 1];
        if probe.write_all(b"p").await.is_ok()
            && matches!(
                tokio::time::timeout(LIMIT, probe.read(&mut b)).await,
                Ok(Ok(1))
            )
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(admitted, "no newcomer admitted: {:?}", server.stats());
    let under = honest(public, 50, 4).await;
    let served = under.latencies.len();
    println!(
        "honest users served while 31 silent networks and a moving one hold the cap: \
         {served} of 50; p50 {:.1} ms",
        p50_ms(&under)
    );
    assert!(
        served >= 48,
        "{served} of 50 served: {:?}; {:?}",
        under.errors,
        server.stats()
    );
    assert!(server.stats().users_evicted > 0, "{:?}", server.stats());
    // The moving session was never the one evicted.
    stop_tx.send_replace(true);
    let trips = moving.await.unwrap();
    assert!(
        matches!(trips, Ok(n) if n > 0),
        "the moving session: {trips:?}"
    );
    drop(held);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_session_ends_with_a_reset() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(server_cfg(4)).await.unwrap();
    let client = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(client.wait_control(LIMIT).await);
    let public = server.public_addr();
    // One network holds the whole cap, each session echoed once so it is under way.
    let mut held = Vec::new();
    for host in 0..4 {
        let mut s = connect_from(1, 2 + host, public).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        held.push(s);
    }
    // A newcomer from another network takes the newest.
    let r = honest(public, 1, 1).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    assert_eq!(server.stats().users_evicted, 1);
    let mut newest = held.pop().unwrap();
    let mut b = [0u8; 16];
    let end = tokio::time::timeout(LIMIT, newest.read(&mut b))
        .await
        .unwrap();
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "an evicted user must see a reset, not a clean end"
    );
    // The older ones still relay.
    held[0].write_all(b"pong").await.unwrap();
    held[0].read_exact(&mut b[..4]).await.unwrap();
    assert_eq!(&b[..4], b"pong");
    drop(held);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_source_past_its_rate_is_refused_only_when_others_wait() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(server_cfg(100).map_services(|s| {
        // A share of 10 new sessions a second; the source asks for 40 at once.
        s.per_source = PerSource {
            sessions: 1000,
            new_per_s: 10.0,
        };
    }))
    .await
    .unwrap();
    let client = pool_tunnel::start_client(client_cfg(&server, echo))
        .await
        .unwrap();
    assert!(client.wait_control(LIMIT).await);
    let public = server.public_addr();
    // Alone: every one is served.
    let alone = honest(public, 40, 40).await;
    assert!(alone.errors.is_empty(), "{:?}", alone.errors);
    assert_eq!(server.stats().users_refused_source, 0);
    assert!(until(|| active(&server) == 0).await);
    // Others (19 networks, 4 sessions each) hold three quarters of the cap: the lone
    // source is held to its share.
    let held = hold(public, 1..=19, 4).await;
    assert!(until(|| active(&server) == held.len() as u64).await);
    let crowded = honest(public, 40, 40).await;
    let st = server.stats();
    println!(
        "lone source, 40 at once at a share of 10/s: alone {} of 40, with others waiting {} \
         of 40 ({} refused for its share)",
        alone.latencies.len(),
        crowded.latencies.len(),
        st.users_refused_source
    );
    assert!(st.users_refused_source >= 10, "{st:?}");
    drop(held);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

/// A log sink for one test: the lines the tunnel logs.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn lines(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().map(str::to_owned).collect()
    }
}

/// Sends `token` on a fresh control connection from `127.0.<net>.2` and reads what
/// comes back (the greeting, or nothing) until the server closes or `GREETING_LEN`
/// bytes are in.
async fn send_token(
    control: SocketAddr,
    net: u8,
    token: [u8; pool_tls::admit::ADMIT_LEN],
) -> usize {
    let Ok(mut s) = connect_from(net, 2, control).await else {
        return 0;
    };
    let _ = s.write_all(&token).await;
    let mut got = [0u8; GREETING_LEN];
    let mut n = 0;
    while n < GREETING_LEN {
        match tokio::time::timeout(LIMIT, s.read(&mut got[n..])).await {
            Ok(Ok(k)) if k > 0 => n += k,
            _ => break,
        }
    }
    n
}

// On one thread, so that the sink set for this thread sees the server's every line.
#[tokio::test(flavor = "current_thread")]
async fn a_stale_token_replayed_10000_times_logs_a_few_lines() {
    use tracing_subscriber::prelude::*;
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
    );
    let _guard = tracing::subscriber::set_default(subscriber);

    let k = TunnelKey::generate().unwrap();
    let server = pool_tunnel::start_server(ServerConfig {
        timeouts: fast(),
        ..ServerConfig::loopback(k.clone())
    })
    .await
    .unwrap();
    let control = server.control_addr();
    // A token captured an hour ago: valid, but stale.
    let stale = make_token(&k, protocol::CONTROL_CONTEXT, unix_ms() - 3_600_000).unwrap();
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..10_000u32 {
        if set.len() >= 32 {
            set.join_next().await;
        }
        let net = 1 + (i % 200) as u8;
        set.spawn(send_token(control, net, stale));
    }
    while set.join_next().await.is_some() {}
    assert!(until(|| server.stats().control_skewed >= 10_000).await);
    let elapsed = start.elapsed();
    let lines = sink.lines();
    let about: Vec<&String> = lines.iter().filter(|l| l.contains("control:")).collect();
    println!(
        "10,000 replays of a stale token in {:.1} s: {} log lines about control candidates \
         ({} in all)",
        elapsed.as_secs_f64(),
        about.len(),
        lines.len()
    );
    for l in &about {
        println!("  {l}");
    }
    // Two reasons show (the stale token, then the proof the replayer cannot make),
    // each at most once a quiet period.
    let periods = 1 + elapsed.as_secs() / pool_tunnel::stats::QUIET_PERIOD.as_secs();
    assert!(
        about.len() as u64 <= 2 * (periods + 1),
        "{} lines in {elapsed:?}",
        about.len()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_before_a_restart_buys_no_protected_slot() {
    let k = TunnelKey::generate().unwrap();
    let ctx = protocol::CONTROL_CONTEXT;
    // Seen by the previous server process, 5 s ago, well inside the 120 s window.
    let seen = make_token(&k, ctx, unix_ms() - 5_000).unwrap();
    let server = pool_tunnel::start_server(ServerConfig {
        timeouts: fast(),
        ..ServerConfig::loopback(k.clone())
    })
    .await
    .unwrap();
    let control = server.control_addr();
    // Replayed to the new process: let through to the proof, unprotected.
    send_token(control, 1, seen).await;
    assert!(until(|| server.stats().control_predated == 1).await);
    assert_eq!(server.stats().control_admitted, 0);
    // A client that reconnects after the restart makes a new token: protected.
    let fresh = make_token(&k, ctx, unix_ms()).unwrap();
    assert_eq!(send_token(control, 1, fresh).await, GREETING_LEN);
    assert!(until(|| server.stats().control_admitted == 1).await);
    server.shutdown().await;
}

/// This process's resident memory, KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What a held session costs: strangers open sessions that each push 64 KiB and never
/// read, against an echo service. Printed, not asserted (server, client and service
/// share this process: the figure is all three).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_held_session_costs_is_printed() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(server_cfg(4096)).await.unwrap();
    let client = pool_tunnel::start_client(ClientConfig {
        min: 16,
        max: 1024,
        ..client_cfg(&server, echo)
    })
    .await
    .unwrap();
    assert!(client.wait_control(LIMIT).await);
    let public = server.public_addr();
    let before = rss_kib();
    let n: u64 = 512;
    let mut held = Vec::new();
    for i in 0..n {
        let (net, host) = (1 + (i / 64) as u8, 2 + (i % 64) as u8);
        let mut s = connect_from(net, host, public).await.unwrap();
        s.write_all(&vec![b'x'; 64 * 1024]).await.unwrap();
        held.push(s);
    }
    assert!(until(|| client.stats().accepted >= n).await);
    let after = rss_kib();
    println!(
        "{n} held sessions, 64 KiB pushed each and never read: RSS {before} KiB -> {after} KiB, \
         {:.1} KiB a session (server, client and echo service in one process)",
        after.saturating_sub(before) as f64 / n as f64
    );
    drop(held);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}
