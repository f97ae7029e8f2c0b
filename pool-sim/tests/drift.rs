//! Scripted scenarios through the three drivers (the simulator, pool-threads and
//! pool-tokio on loopback): the adaptation policy must observe the same events, in the
//! same order, in each, and the counters that name the scenario must agree. A driver
//! that asks the core for a connection without going through the role (so that the
//! policy never hears of the get), that misses a hang-up or a start, or that draws a
//! single-mode id of its own fails here.
//!
//! Four scenarios: the Go protocol in multi mode (below), single mode (the core draws
//! every id, gets take any connection), an in-band start (the server starts sessions
//! on idle connections, the client accepts them) and a hang-up (the server flushes its
//! idle connections, the client's watch takes its ends out and refills).
//!
//! The scenario fixes the order: the client starts with no server (its four dials are
//! refused, and so are the three that replace them before the fourth failure makes it
//! back off), the server comes up (the probe lands, then the top-up), then twelve pairs
//! one at a time, each followed by the refill of the connection it took, then a get
//! for an id that does not exist. Capacity is pinned at 4 so that the policy's answers
//! cannot change what happens.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pool_core::{
    Adapt, Adaptation, ClientConfig, ConnId, Decision, Observed, RoundInput, ServerConfig,
};
use pool_sim::adapt::DemandTracking;
use pool_sim::sim::{Faults, SimPair};
use pool_threads::ThreadClientPool;
use pool_tokio::{ClientPool, ServerPool};

/// What a policy observed, without the timings (dial times differ between drivers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Get { waited: bool },
    Dialed,
    Failed,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// The default policy, with every observation written down.
#[derive(Debug, Clone)]
struct Recorder {
    inner: DemandTracking,
    log: Log,
}

impl Adapt for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    fn clone_box(&self) -> Box<dyn Adapt> {
        Box::new(self.clone())
    }
    fn observe(&mut self, what: Observed, now: std::time::Instant) {
        let seen = match what {
            Observed::Get { waited } => Seen::Get { waited },
            Observed::Dialed { .. } => Seen::Dialed,
            _ => Seen::Failed,
        };
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seen);
        self.inner.observe(what, now);
    }
    fn round(&mut self, input: &RoundInput, now: std::time::Instant) -> Decision {
        self.inner.round(input, now)
    }
}

const PAIRS: usize = 12;

fn recorder() -> (Adaptation, Log) {
    let log = Log::default();
    let policy = Recorder {
        inner: DemandTracking::default(),
        log: log.clone(),
    };
    (Adaptation::custom(policy), log)
}

fn client_config(policy: Adaptation) -> ClientConfig {
    ClientConfig::builder()
        .capacity(4, 4)
        .interval(Duration::from_millis(300), Duration::from_secs(1))
        .adapt(policy)
        .build()
        .expect("config")
}

/// The sequence the scenario fixes.
fn expected() -> Vec<Seen> {
    let mut v = vec![Seen::Failed; 7];
    v.extend([Seen::Dialed; 4]);
    for _ in 0..PAIRS {
        v.extend([Seen::Get { waited: false }, Seen::Dialed]);
    }
    v.push(Seen::Get { waited: false });
    v
}

fn taken(log: &Log) -> Vec<Seen> {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn unknown_id() -> ConnId {
    "00000000".parse().expect("id")
}

fn simulated() -> Vec<Seen> {
    let (policy, log) = recorder();
    let refused = Faults {
        connect_refused: 1.0,
        ..Faults::none()
    };
    let mut sim = SimPair::new(11, client_config(policy), ServerConfig::default(), refused);
    let s = Duration::from_secs(5);
    let backing_off =
        |p: &SimPair| p.client_counters().dial_failures >= 4 && p.client_status().in_flight == 0;
    assert!(sim.run_until(s, backing_off));
    sim.set_faults(Faults::none());
    assert!(sim.run_until(s, |p| p.client_status().idle == 4));
    for i in 0..PAIRS as u64 {
        // The server's end settles before it can be handed out.
        assert!(sim.run_until(s, |p| p.server_status().idle >= 1));
        sim.user_now();
        assert!(sim.run_until(s, |p| p.stats().pairs_ok > i && p.client_status().idle == 4));
    }
    let pairs = sim.stats().pairs_ok;
    assert_eq!(pairs, PAIRS as u64, "{:?}", sim.stats());
    assert_eq!(
        sim.client_get_now(unknown_id()),
        Some(pool_core::GetFailure::NotFound)
    );
    sim.check().expect("a consistent run");
    taken(&log)
}

/// A loopback address with nothing listening (yet): bound, then let go.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// Polls `cond` every 2 ms for at most `limit`: for the script's waits on another
/// process's state, bounded in time.
async fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

async fn on_tokio() -> Vec<Seen> {
    let (policy, log) = recorder();
    let addr = free_addr();
    let s = Duration::from_secs(5);
    let client = ClientPool::builder()
        .address(addr)
        .config(
            ClientConfig::builder()
                .capacity(4, 4)
                .interval(Duration::from_millis(300), Duration::from_secs(1))
                .adapt(policy),
        )
        .build()
        .expect("client");
    let backing_off = || {
        let st = client.stats();
        st.counters.dial_failures >= 4 && st.status.in_flight == 0
    };
    assert!(until(s, backing_off).await, "dials not refused");
    let server = ServerPool::builder().bind(addr).build().expect("server");
    assert!(
        until(s, || client.active() == 4).await,
        "client never filled"
    );
    for i in 0..PAIRS {
        let (id, _on_server) = server.get_timeout(s).await.expect("server get");
        client.get_timeout(id, s).await.expect("client get");
        assert!(
            until(s, || client.active() == 4).await,
            "no refill after {i}"
        );
    }
    let e = client
        .get_timeout(unknown_id(), s)
        .await
        .expect_err("unknown id");
    assert!(matches!(e, pool_tokio::GetError::NotFound(_)), "{e}");
    client.close().await;
    server.close().await;
    taken(&log)
}

async fn on_threads() -> Vec<Seen> {
    let (policy, log) = recorder();
    let addr = free_addr();
    let s = Duration::from_secs(5);
    let client = Arc::new(
        ThreadClientPool::builder(addr)
            .config(client_config(policy))
            .build()
            .expect("client"),
    );
    let backing_off = || client.counters().dial_failures >= 4 && client.status().in_flight == 0;
    assert!(until(s, backing_off).await, "dials not refused");
    let server = ServerPool::builder().bind(addr).build().expect("server");
    assert!(until(s, || client.idle() == 4).await, "client never filled");
    for i in 0..PAIRS {
        let (id, _on_server) = server.get_timeout(s).await.expect("server get");
        let c = client.clone();
        let got = tokio::task::spawn_blocking(move || c.get(id, s).map(drop));
        got.await.expect("join").expect("client get");
        assert!(until(s, || client.idle() == 4).await, "no refill after {i}");
    }
    let c = client.clone();
    let e = tokio::task::spawn_blocking(move || c.get(unknown_id(), s).map(drop));
    let e = e.await.expect("join").expect_err("unknown id");
    assert_eq!(e, pool_core::GetFailure::NotFound);
    let c = client.clone();
    tokio::task::spawn_blocking(move || c.close())
        .await
        .expect("close");
    server.close().await;
    taken(&log)
}

#[path = "drift/modes.rs"]
mod modes;

#[test]
fn every_driver_shows_the_policy_the_same_events() {
    let want = expected();
    let sim = simulated();
    assert_eq!(sim, want, "simulator");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tokio = rt.block_on(on_tokio());
    assert_eq!(tokio, want, "pool-tokio");
    let threads = rt.block_on(on_threads());
    assert_eq!(threads, want, "pool-threads");
}
