//! In-band activation and hang-up reports in the simulator, through the same driver
//! protocol the tokio and threads pools run. Each behaviour here has its real-socket
//! twin: `pool-tokio/tests/in_band.rs` (a start reaches the accept, starts refill like
//! gets), `pool-tokio/tests/watch.rs` and `pool-threads/tests/custom_runtime.rs` (a
//! hang-up takes an idle connection out with the sweep an hour away).

use std::time::Duration;

use pool_core::{ClientConfig, ServerConfig};
use pool_sim::sim::{Faults, SimOptions, SimPair};

const HOUR: Duration = Duration::from_secs(3600);

fn client(in_band: bool) -> ClientConfig {
    ClientConfig::builder()
        .capacity(8, 64)
        .sweep_interval(HOUR)
        .watch(if in_band {
            pool_core::IdleWatch::Starts
        } else {
            pool_core::IdleWatch::HangUps
        })
        .build()
        .unwrap()
}

fn server() -> ServerConfig {
    ServerConfig::builder()
        .sweep_interval(HOUR)
        .build()
        .unwrap()
}

#[test]
fn sessions_start_in_band_and_every_pair_matches() {
    let mut sim = SimPair::new(11, client(true), server(), Faults::none());
    sim.set_demand(20.0);
    sim.run_for(Duration::from_secs(120));
    let s = sim.stats();
    sim.check().unwrap();
    assert!(s.pairs_ok > 2_000, "{s:?}");
    assert_eq!((s.pairs_mismatched, s.double_handouts), (0, 0), "{s:?}");
    let k = sim.client_counters();
    // Every pair went through a start and an accept, none through a get by id.
    assert_eq!(k.started, s.pairs_ok + s.pairs_failed_client, "{k:?} {s:?}");
    assert_eq!(k.not_found, 0);
    // Starts refill the client like gets: it kept serving at 20/s from a capacity of 8.
    assert!(sim.metrics().served_at_once_share() > 0.95, "{s:?}");
}

#[test]
fn in_band_with_faults_keeps_every_law() {
    let mut sim = SimPair::new(12, client(true), server(), Faults::uniform(0.02));
    sim.set_demand(10.0);
    for _ in 0..60 {
        sim.run_for(Duration::from_secs(1));
        sim.check().unwrap();
    }
    let s = sim.stats();
    assert!(s.pairs_ok > 400, "{s:?}");
    assert_eq!(s.pairs_mismatched, 0);
}

/// The server restarts: every connection the client holds is dead. With the watch, the
/// client hears of each within a network latency and refills; without it, they stay
/// idle until a sweep or a get probes them (the sweep is an hour away).
fn after_a_restart(watch: bool) -> (u64, usize) {
    let opts = SimOptions {
        watch_idle: watch,
        ..SimOptions::default()
    };
    let mut sim = SimPair::with_options(13, client(false), server(), Faults::none(), opts);
    assert!(sim.run_until(Duration::from_secs(10), |s| s.client_status().idle == 8));
    sim.restart_server(Duration::from_millis(100));
    // The largest one-way latency is 20 ms.
    sim.run_for(Duration::from_millis(25));
    let evicted = sim.stats().evicted_client;
    sim.check().unwrap();
    sim.run_for(Duration::from_secs(2));
    (evicted, sim.client_status().idle)
}

#[test]
fn a_hang_up_takes_idle_connections_out_without_a_sweep() {
    let (evicted, idle) = after_a_restart(true);
    assert_eq!(evicted, 8, "every dead connection found within a latency");
    assert_eq!(idle, 8, "and refilled from the restarted server");
    let (evicted, idle) = after_a_restart(false);
    assert_eq!(evicted, 0, "without the watch nothing finds them");
    assert_eq!(idle, 8, "they still count as idle");
}

#[test]
fn in_band_runs_are_deterministic() {
    let run = || {
        let mut sim = SimPair::new(14, client(true), server(), Faults::uniform(0.01));
        sim.set_demand(15.0);
        sim.run_for(Duration::from_secs(30));
        (sim.transcript_hash(), sim.stats())
    };
    assert_eq!(run(), run());
}
