//! The simulator's faults of the harder scenarios: a server that restarts, and packet
//! loss. Each on the simulated pair with the oracle and the transcript on.

use std::time::Duration;

use pool_core::{ClientConfig, ServerConfig};
use pool_sim::sim::{Faults, SimOptions, SimPair};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn pair(seed: u64, opts: SimOptions) -> SimPair {
    let client = ClientConfig::builder().capacity(16, 64).build().unwrap();
    SimPair::with_options(seed, client, ServerConfig::default(), Faults::none(), opts)
}

#[test]
fn a_restart_loses_the_server_connections_and_the_pair_recovers() {
    let mut sim = pair(3, SimOptions::default());
    sim.set_demand(20.0);
    sim.run_for(SECS(30));
    sim.check().unwrap();
    let idle_before = sim.server_status().idle;
    assert!(idle_before >= 8, "{:?}", sim.server_status());
    let ok_before = sim.stats().pairs_ok;

    sim.restart_server(SECS(5));
    assert_eq!(sim.server_status().idle, 0, "a fresh server holds nothing");
    assert!(sim.stats().lost_in_restarts >= idle_before as u64);
    sim.check().unwrap();

    // While the port refuses, every dial is refused and nobody is served.
    let refused = sim.stats().injected_connect_refused;
    sim.run_for(SECS(4));
    sim.check().unwrap();
    assert!(
        sim.stats().injected_connect_refused > refused,
        "{:?}",
        sim.stats()
    );
    assert_eq!(sim.server_status().idle, 0);
    let ok_down = sim.stats().pairs_ok;
    assert!(
        ok_down - ok_before < 20,
        "pairs served by a server that is down"
    );

    // Back up: the client's probes found its connections dead, it dials again, and
    // users are served.
    sim.run_for(SECS(30));
    sim.check().unwrap();
    let s = sim.stats();
    assert_eq!(s.server_restarts, 1);
    assert!(s.evicted_client > 0, "{s:?}");
    assert!(s.pairs_ok > ok_down + 400, "{s:?}");
    assert!(sim.server_status().idle >= 8, "{:?}", sim.server_status());
    assert_eq!(s.pairs_mismatched + s.double_handouts + s.timer_desyncs, 0);
}

#[test]
fn loss_delays_deliveries_and_zero_loss_draws_nothing() {
    let run = |opts: SimOptions| {
        let mut sim = pair(5, opts);
        sim.set_demand(10.0);
        sim.run_for(SECS(20));
        sim.check().unwrap();
        sim
    };
    let plain = run(SimOptions::default());
    // A loss of zero draws nothing: the very same run.
    let zero = run(SimOptions {
        loss: 0.0,
        retransmit: (SECS(5), SECS(6)),
        ..SimOptions::default()
    });
    assert_eq!(plain.transcript_hash(), zero.transcript_hash());
    // Every packet lost once, 2 s each: each dial takes seconds, so the pool is
    // slower to fill and users wait.
    let lossy = run(SimOptions {
        loss: 1.0,
        retransmit: (SECS(2), SECS(2)),
        ..SimOptions::default()
    });
    assert_ne!(plain.transcript_hash(), lossy.transcript_hash());
    let (p, l) = (plain.metrics(), lossy.metrics());
    assert!(
        l.served_at_once_share() < p.served_at_once_share(),
        "{} vs {}",
        l.served_at_once_share(),
        p.served_at_once_share()
    );
    assert!(
        l.wait_quantile(0.99) >= SECS(2),
        "{:?}",
        l.wait_quantile(0.99)
    );
}
