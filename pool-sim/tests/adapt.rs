//! The adaptation laws applied to both built-in policies, and the scoreboard's
//! machinery on short runs.

use std::time::Duration;

use std::time::Instant;

use pool_core::{Adapt, Adaptation, Decision, RoundInput};
use pool_sim::adapt::{check_laws, policy, run, LawOptions, Scenario};

#[test]
fn go_rules_keep_the_laws() {
    check_laws(
        &Adaptation::GoRules(pool_core::GoRules::default()),
        LawOptions::quick(),
    )
    .unwrap();
}

#[test]
fn demand_tracking_keeps_the_laws() {
    check_laws(&policy("demand").unwrap(), LawOptions::quick()).unwrap();
}

#[test]
fn the_default_keeps_the_laws_and_its_idle_follows_within_the_quiet() {
    // It closes idle connections above its capacity: the idle law holds by the time
    // the capacity is back at the minimum, ten minutes before the server's age would
    // close them.
    let opts = LawOptions {
        idle_quiet: LawOptions::quick().quiet,
        ..LawOptions::quick()
    };
    check_laws(&Adaptation::default(), opts).unwrap();
}

#[test]
fn go_behaviour_keeps_the_laws() {
    let e = check_laws(&policy("gobehaviour").unwrap(), LawOptions::quick()).unwrap_err();
    // It never backs off, so the last law has nothing to check: every other holds.
    assert!(e.contains("never backed off"), "{e}");
}

/// Grows by one at every round at which the machine backs off, else holds the
/// minimum.
#[derive(Clone, Debug, Default)]
struct GrowsWhileBackingOff;

impl Adapt for GrowsWhileBackingOff {
    fn name(&self) -> &str {
        "grows_while_backing_off"
    }
    fn clone_box(&self) -> Box<dyn Adapt> {
        Box::new(self.clone())
    }
    fn round(&mut self, r: &RoundInput, _now: Instant) -> Decision {
        let capacity = if r.backing_off {
            r.capacity + 1
        } else {
            r.min_capacity
        };
        Decision {
            capacity,
            interval: r.min_interval,
        }
    }
}

#[test]
fn the_backing_off_law_catches_growth_while_backing_off() {
    let e = check_laws(
        &Adaptation::custom(GrowsWhileBackingOff),
        LawOptions::quick(),
    )
    .unwrap_err();
    assert!(e.contains("no growth while backing off: at"), "{e}");
}

#[test]
fn flash_crowd_is_met_within_seconds() {
    let s = Scenario::named("flash_crowd", Duration::from_secs(180)).unwrap();
    let demand = run(&Adaptation::default(), &s, 1);
    let go = run(&Adaptation::GoRules(pool_core::GoRules::default()), &s, 1);
    println!("demand {demand:?}\ngorules {go:?}");
    assert!(demand.recover_s.unwrap() <= 5.0, "{demand:?}");
    assert!(demand.served_at_once_pct + 0.5 >= go.served_at_once_pct);
}

/// A policy whose clones share a counter: the second run of a seed starts where the
/// first left off, so its intervals differ.
#[derive(Clone, Debug, Default)]
struct Leaky(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl pool_core::Adapt for Leaky {
    fn name(&self) -> &str {
        "leaky"
    }
    fn clone_box(&self) -> Box<dyn pool_core::Adapt> {
        Box::new(self.clone())
    }
    fn round(
        &mut self,
        r: &pool_core::RoundInput,
        _now: std::time::Instant,
    ) -> pool_core::Decision {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let jitter = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 57; // 0 to 127
        pool_core::Decision {
            capacity: r.min_capacity,
            interval: r.min_interval + Duration::from_millis(jitter),
        }
    }
}

#[test]
fn the_determinism_law_catches_state_shared_between_runs() {
    let opts = LawOptions {
        cases: 1,
        replays: 1,
        ..LawOptions::quick()
    };
    let e = check_laws(&Adaptation::custom(Leaky::default()), opts).unwrap_err();
    assert!(e.contains("determinism"), "{e}");
}

#[test]
fn idle_connections_outlive_the_capacity_until_the_server_ages_them() {
    // Five minutes after demand stops the capacity is back at the minimum, but the
    // client closes nothing: the idle surplus stays until the server's 10-minute
    // idle age closes it. The law with a deadline shorter than that age fails.
    let opts = LawOptions {
        idle_quiet: Duration::from_secs(300),
        ..LawOptions::quick()
    };
    let e = check_laws(&policy("demand").unwrap(), opts).unwrap_err();
    assert!(e.contains("idle at the client"), "{e}");
}

/// The most dials in flight at once over `d` of 100 gets a second, and the rounds.
fn dials_and_rounds(policy: Adaptation, d: Duration) -> (usize, Vec<pool_sim::sim::RoundRecord>) {
    let s = Scenario::named("steady_100", Duration::from_secs(60)).unwrap();
    let mut sim = s.pair(policy, 1);
    sim.set_demand(100.0);
    let mut most = 0;
    sim.run_until(d, |sim| {
        most = most.max(sim.client_status().in_flight);
        false
    });
    (most, sim.rounds().to_vec())
}

#[test]
fn go_behaviour_dials_one_at_a_time_in_rounds_of_fill_plus_interval() {
    let (most, rounds) = dials_and_rounds(policy("gobehaviour").unwrap(), Duration::from_secs(10));
    assert_eq!(most, 1, "one dial at a time");
    assert!(rounds.len() > 5, "{rounds:?}");
    // A round lasts its fill plus the interval: never less than the interval, and
    // longer whenever the fill had dials to make.
    for w in rounds.windows(2) {
        assert!(w[1].at - w[0].at >= w[0].interval_after, "{w:?}");
    }
    let fills = rounds
        .windows(2)
        .filter(|w| w[1].at - w[0].at >= w[0].interval_after + Duration::from_millis(20))
        .count();
    assert!(fills * 2 > rounds.len(), "{rounds:?}");
    // The Go rules on this crate's machine dial many at once, on a round per interval.
    let (most, rounds) = dials_and_rounds(
        Adaptation::GoRules(pool_core::GoRules::default()),
        Duration::from_secs(10),
    );
    assert!(most > 1, "{most}");
    assert!(rounds
        .windows(2)
        .all(|w| w[1].at - w[0].at == w[0].interval_after));
}
