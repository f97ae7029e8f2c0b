//! The adaptation laws applied to both built-in policies, and the scoreboard's
//! machinery on short runs.

use std::time::Duration;

use pool_core::Adaptation;
use pool_testkit::adapt::{check_laws, run, LawOptions, Scenario};

#[test]
fn go_rules_keep_the_laws() {
    check_laws(&Adaptation::GoRules, LawOptions::quick()).unwrap();
}

#[test]
fn demand_tracking_keeps_the_laws() {
    check_laws(&Adaptation::default(), LawOptions::quick()).unwrap();
}

#[test]
fn flash_crowd_is_met_within_seconds() {
    let s = Scenario::named("flash_crowd", Duration::from_secs(180)).unwrap();
    let demand = run(&Adaptation::default(), &s, 1);
    let go = run(&Adaptation::GoRules, &s, 1);
    println!("demand {demand:?}\ngorules {go:?}");
    assert!(demand.recover_s.unwrap() <= 5.0, "{demand:?}");
    assert!(demand.served_at_once_pct + 0.5 >= go.served_at_once_pct);
}
