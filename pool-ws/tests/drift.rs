//! The drift scenario of the TCP pools (pool-testkit's `drift.rs`), through the
//! WebSocket and HTTP/2 pools: the adaptation policy must observe the same events in
//! the same order as on every other driver. A transport that asked the core for a
//! connection without going through the role, or reported a dial twice, fails here.
//!
//! The client starts with no server (its four dials are refused, and so are the three
//! that replace them before the fourth failure makes it back off), the server comes up
//! (the probe lands, then the top-up), then twelve pairs one at a time, each followed
//! by the refill of the connection it took, then a get for an id that does not exist.
//! Capacity is pinned at 4 so that the policy's answers cannot change what happens.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use common::wait_until;
use pool_core::{Adapt, Adaptation, Decision, Observed, OfferedDemand, RoundInput};
use pool_ws::h2::{H2ClientPool, H2ServerPool};
use pool_ws::{ClientConfig, ConnId, GetError, ServeTls, WsClientPool, WsServerPool};

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
    inner: OfferedDemand,
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

fn recorded() -> (ClientConfig, Log) {
    let log = Log::default();
    let policy = Recorder {
        inner: OfferedDemand::default(),
        log: log.clone(),
    };
    let cfg = ClientConfig::builder()
        .capacity(4, 4)
        .interval(Duration::from_millis(300), Duration::from_secs(1))
        .adapt(Adaptation::custom(policy))
        .build()
        .unwrap();
    (cfg, log)
}

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
    "0badc0de".parse().unwrap()
}

/// A loopback address with nothing listening (yet): bound, then let go.
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_pool_shows_the_policy_the_same_events() {
    let (cfg, log) = recorded();
    let addr = free_addr();
    let client = WsClientPool::builder()
        .address(addr)
        .config(cfg)
        .build()
        .unwrap();
    let backing_off = || client.counters().dial_failures >= 4 && client.status().in_flight == 0;
    assert!(wait_until(backing_off).await, "dials not refused");
    let server = WsServerPool::builder().bind(addr).build().unwrap();
    assert!(
        wait_until(|| client.idle() == 4).await,
        "client never filled"
    );
    for i in 0..PAIRS {
        let (id, _on_server) = server.get().await.unwrap();
        client.get(id, common::WAIT).await.unwrap();
        assert!(
            wait_until(|| client.idle() == 4).await,
            "no refill after {i}"
        );
    }
    let e = client.get(unknown_id(), common::WAIT).await.unwrap_err();
    assert_eq!(e, GetError::NotFound);
    client.close().await;
    server.close().await;
    assert_eq!(taken(&log), expected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_pool_shows_the_policy_the_same_events() {
    let (cfg, log) = recorded();
    let addr = free_addr();
    let client = H2ClientPool::builder()
        .address(addr)
        .config(cfg)
        .build()
        .unwrap();
    let backing_off = || client.counters().dial_failures >= 4 && client.status().in_flight == 0;
    assert!(wait_until(backing_off).await, "dials not refused");
    let server = H2ServerPool::builder()
        .tls(ServeTls::self_signed())
        .bind(addr)
        .build()
        .unwrap();
    assert!(
        wait_until(|| client.idle() == 4).await,
        "client never filled"
    );
    for i in 0..PAIRS {
        let (id, _on_server) = server.get().await.unwrap();
        client.get(id, common::WAIT).await.unwrap();
        assert!(
            wait_until(|| client.idle() == 4).await,
            "no refill after {i}"
        );
    }
    let e = client.get(unknown_id(), common::WAIT).await.unwrap_err();
    assert_eq!(e, GetError::NotFound);
    client.close().await;
    server.close().await;
    assert_eq!(taken(&log), expected());
}
