//! The core machines under the simulated network and clock (no tokio anywhere).

use std::time::{Duration, Instant};

use pool_core::{Adaptation, CapacityPolicy, ClientConfig, IdForm, IntervalPolicy, ServerConfig};
use pool_sim::sim::{Faults, RoundRecord, SimPair};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// Every round's decisions equal the default policies recomputed from what was observed,
/// in the client's order: the capacity first (by what the non-urgent dials created since
/// the previous round started; not at the first round), then the interval (by the idle
/// count at the round start against the new capacity). Rounds chain, and a round never
/// starts before an interval after the previous one started (a backoff only pushes the
/// timer out; a recovery pulls it in to an interval after the landing, which is later
/// still). Under another policy than the Go rules only the bounds and the chaining
/// are checked.
fn cross_check(sim: &SimPair, rounds: &[RoundRecord]) -> usize {
    let cfg = sim.client_config();
    let go = matches!(cfg.adaptation(), Adaptation::GoRules(_));
    let ip = IntervalPolicy::default();
    let cp = CapacityPolicy::default();
    let (min_cap, max_cap) = (cfg.min_capacity(), cfg.max_capacity());
    let mut prev: Option<&RoundRecord> = None;
    for (i, r) in rounds.iter().enumerate() {
        if go {
            let cap = match r.created_prev {
                None => r.capacity_before,
                Some(created) => cp.next(r.capacity_before, created, min_cap, max_cap),
            };
            assert_eq!(r.capacity_after, cap, "capacity decision of {r:?}");
            let ivl = ip.next(
                r.interval_before,
                r.idle,
                r.capacity_after,
                cfg.min_interval(),
                cfg.max_interval(),
            );
            assert_eq!(r.interval_after, ivl, "interval decision of {r:?}");
        }
        assert!((min_cap..=max_cap).contains(&r.capacity_after), "{r:?}");
        assert!(
            (cfg.min_interval()..=cfg.max_interval()).contains(&r.interval_after),
            "{r:?}"
        );
        assert_eq!(r.created_prev.is_none(), i == 0, "{r:?}");
        match prev {
            None => {
                assert_eq!(r.at, Duration::ZERO);
                assert_eq!(r.capacity_before, min_cap);
                assert_eq!(r.interval_before, cfg.min_interval());
            }
            Some(p) => {
                assert_eq!(r.capacity_before, p.capacity_after, "{p:?} then {r:?}");
                assert_eq!(r.interval_before, p.interval_after, "{p:?} then {r:?}");
                assert!(r.at >= p.at + p.interval_after, "{p:?} then {r:?}");
            }
        }
        prev = Some(r);
    }
    // Non-urgent dials landed, counted once each (urgent dials and landings after the
    // last round start are not in any record).
    let counted: usize = rounds.iter().filter_map(|r| r.created_prev).sum();
    assert!(counted as u64 <= sim.client_counters().created);
    rounds.len()
}

fn faulty_hour(form: IdForm, seed: u64, span: Duration, min_served: f64) {
    let client = ClientConfig::builder().id_form(form).build().unwrap();
    let server = ServerConfig::builder().id_form(form).build().unwrap();
    let mut sim = SimPair::new(seed, client, server, Faults::uniform(0.05));
    sim.set_demand(20.0);
    let wall = Instant::now();
    // In slices, checking consistency between them.
    let slice = SECS(60);
    let mut done = Duration::ZERO;
    while done < span {
        sim.run_for(slice);
        done += slice;
        if let Err(e) = sim.check() {
            panic!("at {:?}: {e}", sim.elapsed());
        }
    }
    let wall = wall.elapsed();
    let s = sim.stats();
    let (c, v) = (sim.client_counters(), sim.server_counters());
    println!(
        "{form:?}: simulated {:?} in {wall:?} wall, {} steps, {} events\n{s:#?}\nclient {:?}\n{c:?}\nserver {:?}\n{v:?}",
        sim.elapsed(),
        s.steps,
        s.events,
        sim.client_status(),
        sim.server_status()
    );

    assert_eq!(sim.elapsed(), span);
    assert_eq!(
        s.pairs_mismatched, 0,
        "a pair held two different connections"
    );
    assert_eq!(s.double_handouts, 0);
    assert_eq!(s.overreads, 0);
    assert_eq!(s.timer_desyncs, 0);
    // Throughput: the client tops up continuously, so a connection taken is replaced at
    // once; a silent peer holds one dial slot until its deadline, never the refill, and
    // scattered failures do not slow it down.
    let expected_pairs = 20 * span.as_secs();
    let served = s.pairs_ok as f64 / expected_pairs as f64;
    let rounds = sim.rounds();
    let gaps: Vec<Duration> = rounds.windows(2).map(|w| w[1].at - w[0].at).collect();
    let mean_gap = gaps.iter().sum::<Duration>() / gaps.len().max(1) as u32;
    let max_gap = gaps.iter().max().copied().unwrap_or_default();
    let backing = rounds.iter().filter(|r| r.backing_off).count();
    println!(
        "{form:?}: served {:.1}% of demand ({} pairs of ~{expected_pairs}); {} rounds, \
         mean gap {mean_gap:?}, max gap {max_gap:?}, {backing} started backing off",
        served * 100.0,
        s.pairs_ok,
        rounds.len()
    );
    assert!(
        served > min_served,
        "only {} pairs of ~{expected_pairs} ({:.1}%)",
        s.pairs_ok,
        served * 100.0
    );

    // Every fault kind was injected, and the machines counted each where it lands.
    for (what, n) in [
        ("connect refused", s.injected_connect_refused),
        ("tls", s.injected_tls_fail),
        ("bad id", s.injected_bad_id),
        ("silence in tls", s.injected_silence_tls),
        ("silence in id", s.injected_silence_id),
    ] {
        assert!(n > 0, "no {what} fault injected");
    }
    assert_eq!(c.dialed, s.dials);
    // Faults injected into dials still out at the end have not been counted yet.
    let out = sim.client_status().in_flight as u64;
    let near = |what: &str, counted: u64, injected: u64, out: u64| {
        assert!(
            counted <= injected && injected <= counted + out,
            "{what}: counted {counted}, injected {injected}, {out} still out"
        );
    };
    near(
        "client connect",
        c.dial_failures,
        s.injected_connect_refused,
        out,
    );
    near(
        "client tls",
        c.handshake_failures,
        s.injected_tls_fail + s.injected_silence_tls + s.refused_by_server,
        out,
    );
    near(
        "client id",
        c.id_errors,
        s.injected_bad_id + s.injected_silence_id + s.client_collisions,
        out,
    );
    near(
        "server tls",
        v.handshake_failures,
        s.injected_tls_fail + s.injected_silence_tls,
        sim.server_status().in_flight as u64,
    );
    // A connection whose id never reached the client dies at the server's probe, or
    // fails its pair at the client when a waiting get took it first.
    assert!(v.evicted_dead + s.pairs_failed_client > 0);
    assert_eq!(v.evicted_dead, s.evicted_server);
    assert_eq!(c.evicted_dead, s.evicted_client);
    // Every dial ended once: created or failed at one stage, or is still out.
    assert_eq!(
        c.dialed,
        c.created
            + c.dial_failures
            + c.handshake_failures
            + c.id_errors
            + sim.client_status().in_flight as u64
    );
    // Every round followed the Go rules.
    assert!(cross_check(&sim, sim.rounds()) as u64 > span.as_secs() / 10);
}

#[test]
fn an_hour_with_faults_and_demand() {
    faulty_hour(IdForm::Hex8, 1, SECS(3_600), 0.8);
}

#[test]
fn raw_id_form_with_faults() {
    // In the raw form a bad id cannot be told, only cut short: it hangs until the id
    // deadline, so about 9% of dials hold a dial slot for 5 s. With continuous top-up
    // the other slots keep refilling, so how much is served depends on the
    // parallelism: about 92% at the default of 64 slots, about 67% with 8 slots (which
    // cap the pool near 13 connections a second). The bound holds for both.
    faulty_hour(IdForm::Raw4, 2, SECS(600), 0.6);
}

#[test]
fn interval_and_capacity_follow_demand() {
    let client = ClientConfig::builder()
        .capacity(4, 32)
        .interval(MS(100), MS(1_000))
        .parallelism(8)
        .adapt(Adaptation::GoRules(pool_core::GoRules::default()))
        .build()
        .unwrap();
    let mut sim = SimPair::new(3, client, ServerConfig::default(), Faults::none());

    // No demand: the pool fills, the interval rises to its maximum, the capacity
    // settles at its minimum.
    sim.run_for(SECS(120));
    sim.check().unwrap();
    let st = sim.client_status();
    assert_eq!(st.interval, MS(1_000));
    assert_eq!(st.capacity, 4);
    let quiet = sim.rounds().len();
    let peak = sim.rounds().iter().map(|r| r.capacity_after).max().unwrap();
    assert!(peak > 4, "the first full round grew the capacity");
    // Full: what was made while the capacity was higher stays idle (as in Go).
    assert!((4..=peak).contains(&st.idle), "a full pool: {st:?}");
    let ivl: Vec<Duration> = sim.rounds().iter().map(|r| r.interval_after).collect();
    assert!(
        ivl.windows(2).all(|w| w[1] >= w[0]),
        "interval only rises when full"
    );

    // Heavy demand, drained faster than refilled: idle is (near) zero at every round
    // start, under capacity * 2/10, so the interval falls to its minimum; the capacity
    // grows while a round's non-urgent dials create more than 8/10 of it.
    //
    // With continuous top-up a round's creations are bounded by the dial throughput,
    // not by the capacity: 8 dial slots of about 45 ms each land about 17 connections
    // per 100 ms round, so the capacity stops growing where 8/10 of it exceeds what a
    // round can create (about 25 to 28 here), short of the maximum of 32. That is what
    // the rules imply, so it is asserted instead of the maximum: the capacity grew a
    // long way from the minimum, never past the bound the rounds' creations allow, and
    // rarely fell back.
    sim.set_demand(300.0);
    sim.run_for(SECS(120));
    sim.check().unwrap();
    let st = sim.client_status();
    let busy = &sim.rounds()[quiet..];
    let late = &busy[busy.len() / 2..];
    // The best round that lasted the minimum interval. Not only the late half: the
    // capacity is a ratchet under this demand (shrinking needs a round that creates
    // under 2/10 of it), so one lucky round anywhere in the busy phase can lift it for
    // good. Seed 3 has one at 156 s that creates 24 at capacity 28 (24 * 10 > 28 * 8),
    // while no late round creates more than 21. Rounds before the interval reached its
    // minimum lasted longer and are left out.
    let most_created = busy
        .iter()
        .filter(|r| r.interval_before == MS(100))
        .filter_map(|r| r.created_prev)
        .max()
        .unwrap();
    let mean_created =
        late.iter().filter_map(|r| r.created_prev).sum::<usize>() as f64 / late.len() as f64;
    let starved = busy
        .iter()
        .filter(|r| r.idle * 10 < r.capacity_after * 2)
        .count();
    println!(
        "busy rounds: {} ({starved} starved at their start); created per late round: mean \
         {mean_created:.1}, max at the minimum interval {most_created}; status {st:?}; {:?}",
        busy.len(),
        sim.stats()
    );
    assert_eq!(st.interval, MS(100));
    assert!(
        starved * 10 >= busy.len() * 9,
        "idle stays under capacity * 2/10"
    );
    assert!(
        st.capacity >= 20,
        "the capacity grew toward its maximum: {st:?}"
    );
    assert!(st.capacity <= 32);
    // Growth needs created > 8/10 of the capacity, so the capacity ends at most one step
    // above what the best round at the minimum interval allows.
    assert!(
        (st.capacity - 1) * 8 < most_created * 10 || st.capacity == 32,
        "capacity {} beyond what {most_created} creations allow",
        st.capacity
    );
    let caps: Vec<usize> = busy.iter().map(|r| r.capacity_after).collect();
    assert!(caps.windows(2).filter(|w| w[1] < w[0]).count() <= caps.len() / 10);
    assert!(busy
        .iter()
        .take(20)
        .all(|r| r.interval_after <= r.interval_before));
    assert!(sim.stats().pairs_ok > 10_000);

    // Quiet again: the capacity drifts back down to its minimum, the interval up.
    sim.set_demand(0.0);
    sim.run_for(SECS(180));
    sim.check().unwrap();
    let st = sim.client_status();
    assert_eq!(st.capacity, 4);
    assert_eq!(st.interval, MS(1_000));

    let checked = cross_check(&sim, sim.rounds());
    assert!(checked > 200, "{checked} rounds");
    assert_eq!(sim.stats().timer_desyncs, 0);
    assert_eq!(sim.stats().pairs_mismatched, 0);
}

#[test]
fn outage_backs_off_and_recovery_pulls_in() {
    let client = ClientConfig::builder()
        .capacity(8, 64)
        .interval(MS(100), SECS(2))
        .parallelism(4)
        .adapt(Adaptation::GoRules(pool_core::GoRules::default()))
        .build()
        .unwrap();
    let mut sim = SimPair::new(5, client, ServerConfig::default(), Faults::none());
    sim.set_demand(10.0);
    sim.run_for(SECS(30));
    sim.check().unwrap();
    let healthy = sim.rounds().len();

    // The server is unreachable: after a run of failures as long as the parallelism,
    // top-up stops and rounds allow single probes, spaced by the backoff, up to the
    // maximum interval.
    sim.set_faults(Faults {
        connect_refused: 1.0,
        ..Faults::none()
    });
    sim.run_for(SECS(60));
    sim.check().unwrap();
    let outage = &sim.rounds()[healthy..];
    let backing: Vec<&RoundRecord> = outage.iter().filter(|r| r.backing_off).collect();
    let gaps: Vec<Duration> = outage.windows(2).map(|w| w[1].at - w[0].at).collect();
    let widest = gaps.iter().max().copied().unwrap_or_default();
    println!(
        "outage: {} rounds, {} started backing off, widest gap {widest:?}",
        outage.len(),
        backing.len()
    );
    assert!(backing.len() >= 10, "{outage:?}");
    assert!(widest >= SECS(1), "the backoff grew: {gaps:?}");
    assert!(gaps.iter().all(|g| *g <= SECS(2) + MS(200)), "{gaps:?}");
    let probes = outage.len();
    let dials_before = sim.stats().dials;

    // Back: the first probe that lands ends the backoff, pulls the refill timer in to an
    // interval after its landing, and top-up resumes.
    sim.set_faults(Faults::none());
    sim.run_for(SECS(30));
    sim.check().unwrap();
    let after = &sim.rounds()[healthy + probes..];
    assert!(after.last().is_some_and(|r| r.failures == 0), "{after:?}");
    let healed = after.iter().position(|r| r.failures == 0).unwrap();
    assert!(
        healed >= 1,
        "the first round after the outage still backs off"
    );
    let (probe, next) = (&after[healed - 1], &after[healed]);
    // The client backs off after 4 failures: the parallelism, below the capacity.
    assert!(probe.backing_off && probe.failures >= 4, "{probe:?}");
    let pulled = next.at - probe.at;
    println!(
        "recovery: probe round at {:?}, next round {pulled:?} later (backoff gaps were up to \
         {widest:?})",
        probe.at
    );
    // Without the pull-in the next round would wait the backoff (at least half the
    // maximum interval by now); with it, the probe's dial time plus an interval.
    assert!(
        pulled <= probe.interval_after + MS(200) && pulled < SECS(1),
        "{probe:?} then {next:?}"
    );
    assert!(sim.stats().dials > dials_before + 8);
    assert!(sim.client_status().idle > 0);
    assert_eq!(sim.stats().timer_desyncs, 0);
    cross_check(&sim, sim.rounds());
}

fn short_run(seed: u64) -> SimPair {
    let client = ClientConfig::builder().capacity(8, 64).build().unwrap();
    let mut sim = SimPair::new(seed, client, ServerConfig::default(), Faults::uniform(0.1));
    sim.record_transcript();
    sim.set_demand(30.0);
    sim.run_for(SECS(120));
    sim
}

#[test]
fn same_seed_same_transcript() {
    let a = short_run(42);
    let b = short_run(42);
    let c = short_run(43);
    assert!(a.transcript().len() > 1_000);
    assert_eq!(a.transcript(), b.transcript());
    assert_eq!(a.transcript_hash(), b.transcript_hash());
    assert_eq!(a.stats(), b.stats());
    assert_eq!(a.client_counters(), b.client_counters());
    assert_eq!(a.rounds(), b.rounds());
    assert_ne!(a.transcript_hash(), c.transcript_hash());
    a.check().unwrap();
}

#[test]
fn step_goes_to_the_next_event() {
    let mut sim = SimPair::new(
        9,
        ClientConfig::default(),
        ServerConfig::default(),
        Faults::none(),
    );
    let mut last = sim.elapsed();
    for _ in 0..10_000 {
        assert!(sim.step());
        assert!(sim.elapsed() >= last);
        last = sim.elapsed();
    }
    // The last step may fall in the middle of a refill (the server closes connections
    // past its maximum idle age): let it finish.
    sim.run_for(Duration::from_secs(2));
    assert!(sim.client_status().idle >= 64, "{:?}", sim.client_status());
    sim.check().unwrap();
}
