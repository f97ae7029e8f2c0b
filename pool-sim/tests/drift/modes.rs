//! Single mode, an in-band start and a hang-up, through the three drivers.

use std::sync::Arc;
use std::time::Duration;

use pool_core::{Adaptation, ClientConfig, Counters, ServerConfig};
use pool_sim::sim::{Faults, SimOptions, SimPair};
use pool_threads::ThreadClientPool;
use pool_tokio::{ClientPool, ServerPool};

use super::{free_addr, recorder, taken, until, Seen};

/// The pool's size in every scenario (pinned: the policy's answers change nothing).
const CAP: usize = 2;
/// Gets, starts: how many times each scenario takes a connection.
const TAKES: usize = 4;
const S: Duration = Duration::from_secs(5);

/// Which scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Single,
    InBand,
    HangUp,
}

fn config(mode: Mode, policy: Adaptation) -> ClientConfig {
    ClientConfig::builder()
        .capacity(CAP, CAP)
        .interval(Duration::from_millis(300), Duration::from_secs(1))
        // No sweep within the scenario: only the watch may find a dead peer.
        .sweep_interval(Duration::from_secs(60))
        .mode(if mode == Mode::Single {
            pool_core::Mode::Single
        } else {
            pool_core::Mode::Multi
        })
        .watch(if mode == Mode::InBand {
            pool_core::IdleWatch::Starts
        } else {
            pool_core::IdleWatch::HangUps
        })
        .adapt(policy)
        .build()
        .expect("config")
}

/// The fill, then each take followed by the refill of what it took; a hang-up of the
/// whole pool is refilled whole.
fn expected(mode: Mode) -> Vec<Seen> {
    let mut v = vec![Seen::Dialed; CAP];
    match mode {
        Mode::HangUp => v.extend([Seen::Dialed; CAP]),
        Mode::Single | Mode::InBand => {
            for _ in 0..TAKES {
                v.extend([Seen::Get { waited: false }, Seen::Dialed]);
            }
        }
    }
    v
}

/// The counters each scenario is about: connections started, found dead.
fn named(c: &Counters) -> (u64, u64) {
    (c.started, c.evicted_dead)
}

fn want_named(mode: Mode) -> (u64, u64) {
    match mode {
        Mode::Single => (0, 0),
        Mode::InBand => (TAKES as u64, 0),
        Mode::HangUp => (0, CAP as u64),
    }
}

fn simulated(mode: Mode) -> (Vec<Seen>, (u64, u64)) {
    let (policy, log) = recorder();
    let opts = SimOptions {
        watch_idle: mode == Mode::HangUp,
        // Single mode draws ids from the client's generator, which the round oracle
        // takes for unexplained jitter.
        oracle: mode != Mode::Single,
        ..SimOptions::default()
    };
    let mut sim = SimPair::with_options(
        13,
        config(mode, policy),
        ServerConfig::default(),
        Faults::none(),
        opts,
    );
    let full = |p: &SimPair| p.client_status().idle == CAP;
    assert!(sim.run_until(S, full), "sim: never filled");
    match mode {
        Mode::Single => {
            for i in 0..TAKES {
                assert!(sim.client_get_any_now().is_some(), "sim: get {i}");
                assert!(sim.run_until(S, full), "sim: no refill after {i}");
            }
        }
        Mode::InBand => {
            for i in 0..TAKES as u64 {
                assert!(sim.run_until(S, |p| p.server_status().idle >= 1));
                sim.user_now();
                let done = |p: &SimPair| p.stats().pairs_ok > i && full(p);
                assert!(sim.run_until(S, done), "sim: start {i}: {:?}", sim.stats());
            }
        }
        Mode::HangUp => {
            assert!(sim.run_until(S, |p| p.server_status().idle == CAP));
            assert_eq!(sim.server_flush(), CAP);
            let back = |p: &SimPair| p.client_counters().evicted_dead >= CAP as u64 && full(p);
            assert!(sim.run_until(S, back), "sim: no hang-up seen");
        }
    }
    sim.check().expect("a consistent run");
    (taken(&log), named(&sim.client_counters()))
}

/// A plain listener that accepts and holds what it accepts: single mode's target.
async fn target() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = l.accept().await {
            held.push(tcp);
        }
    });
    (addr, task)
}

async fn on_tokio(mode: Mode) -> (Vec<Seen>, (u64, u64)) {
    let (policy, log) = recorder();
    let (addr, held, server) = match mode {
        Mode::Single => {
            let (addr, task) = target().await;
            (addr, Some(task), None)
        }
        _ => {
            let addr = free_addr();
            let server = ServerPool::builder().bind(addr).build().expect("server");
            (addr, None, Some(server))
        }
    };
    let client = ClientPool::builder()
        .address(addr)
        .config(config(mode, policy))
        .build()
        .expect("client");
    let full = || client.active() == CAP;
    assert!(until(S, full).await, "tokio: never filled");
    match (mode, &server) {
        (Mode::Single, _) => {
            for i in 0..TAKES {
                client.get_any_timeout(S).await.expect("tokio: get");
                assert!(until(S, full).await, "tokio: no refill after {i}");
            }
        }
        (Mode::InBand, Some(server)) => {
            for i in 0..TAKES {
                let (_id, _on_server) = server.start_with(&[], S).await.expect("start");
                client.accept_timeout(S).await.expect("tokio: accept");
                assert!(until(S, full).await, "tokio: no refill after {i}");
            }
        }
        (Mode::HangUp, Some(server)) => {
            assert!(until(S, || server.active() == CAP).await);
            server.flush();
            let back = || client.stats().counters.evicted_dead >= CAP as u64 && full();
            assert!(until(S, back).await, "tokio: no hang-up seen");
        }
        _ => unreachable!("a server for every mode but single"),
    }
    let counters = client.stats().counters;
    client.close().await;
    if let Some(server) = server {
        server.close().await;
    }
    if let Some(task) = held {
        task.abort();
    }
    (taken(&log), named(&counters))
}

async fn on_threads(mode: Mode) -> (Vec<Seen>, (u64, u64)) {
    let (policy, log) = recorder();
    let (addr, held, server) = match mode {
        Mode::Single => {
            let (addr, task) = target().await;
            (addr, Some(task), None)
        }
        _ => {
            let addr = free_addr();
            let server = ServerPool::builder().bind(addr).build().expect("server");
            (addr, None, Some(server))
        }
    };
    let client = Arc::new(
        ThreadClientPool::builder(addr)
            .config(config(mode, policy))
            .build()
            .expect("client"),
    );
    let full = || client.idle() == CAP;
    assert!(until(S, full).await, "threads: never filled");
    let blocking = |f: Box<dyn FnOnce(&ThreadClientPool) -> bool + Send>| {
        let c = client.clone();
        tokio::task::spawn_blocking(move || f(&c))
    };
    match (mode, &server) {
        (Mode::Single, _) => {
            for i in 0..TAKES {
                let got = blocking(Box::new(|c| c.get_any(S).is_ok()));
                assert!(got.await.expect("join"), "threads: get {i}");
                assert!(until(S, full).await, "threads: no refill after {i}");
            }
        }
        (Mode::InBand, Some(server)) => {
            for i in 0..TAKES {
                let (_id, _on_server) = server.start_with(&[], S).await.expect("start");
                let got = blocking(Box::new(|c| c.accept(S).is_ok()));
                assert!(got.await.expect("join"), "threads: accept {i}");
                assert!(until(S, full).await, "threads: no refill after {i}");
            }
        }
        (Mode::HangUp, Some(server)) => {
            assert!(until(S, || server.active() == CAP).await);
            server.flush();
            let back = || client.counters().evicted_dead >= CAP as u64 && full();
            assert!(until(S, back).await, "threads: no hang-up seen");
        }
        _ => unreachable!("a server for every mode but single"),
    }
    let counters = client.counters();
    let c = client.clone();
    tokio::task::spawn_blocking(move || c.close())
        .await
        .expect("close");
    if let Some(server) = server {
        server.close().await;
    }
    if let Some(task) = held {
        task.abort();
    }
    (taken(&log), named(&counters))
}

fn all_three_agree(mode: Mode) {
    let want = (expected(mode), want_named(mode));
    assert_eq!(simulated(mode), want, "simulator, {mode:?}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    assert_eq!(rt.block_on(on_tokio(mode)), want, "pool-tokio, {mode:?}");
    assert_eq!(
        rt.block_on(on_threads(mode)),
        want,
        "pool-threads, {mode:?}"
    );
}

#[test]
fn single_mode_ids_and_gets_agree() {
    all_three_agree(Mode::Single);
}

#[test]
#[cfg(target_os = "linux")]
fn an_in_band_start_agrees() {
    all_three_agree(Mode::InBand);
}

#[test]
#[cfg(target_os = "linux")]
fn a_hang_up_agrees() {
    all_three_agree(Mode::HangUp);
}
