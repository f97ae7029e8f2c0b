use super::*;
use proptest::prelude::*;

proptest! {
    #[test]
    fn normalized_is_always_valid(a in 0usize..100, b in 0usize..100, x in 0u64..3000, y in 0u64..3000, par in 0usize..4) {
        let cfg = ClientConfig::builder()
            .capacity(a, b)
            .interval(Duration::from_millis(x), Duration::from_millis(y))
            .parallelism(par)
            .build_go_normalized();
        let rebuilt = ClientConfigBuilder(cfg.clone()).build();
        prop_assert_eq!(rebuilt, Ok(cfg.clone()));
        prop_assert_eq!(cfg.min_capacity, a.max(1).min(b.max(1)));
        prop_assert_eq!(cfg.max_capacity, a.max(1).max(b.max(1)));
        if a >= 1 && b >= 1 && a <= b && x > 0 && y > 0 && x <= y && par > 0 {
            prop_assert!(ClientConfig::builder().capacity(a, b).interval(Duration::from_millis(x), Duration::from_millis(y)).parallelism(par).build().is_ok());
        }
    }
}

#[test]
fn strict_build_names_the_setting() {
    let e = ClientConfig::builder().capacity(0, 4).build().unwrap_err();
    assert_eq!(
        e,
        ConfigError::Zero {
            what: "minimum capacity"
        }
    );
    let e = ClientConfig::builder()
        .interval(Duration::from_secs(2), Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("interval"), "{e}");
    let e = ServerConfig::builder()
        .handshake_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(
        e,
        ConfigError::ZeroDuration {
            what: "handshake timeout"
        }
    );
}

#[test]
fn single_mode_with_in_band_starts_fails_naming_both() {
    let e = ClientConfig::builder()
        .mode(Mode::Single)
        .watch(IdleWatch::Starts)
        .build()
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("single mode"), "{text}");
    assert!(text.contains("IdleWatch::Starts"), "{text}");
    // Each alone is fine.
    assert!(ClientConfig::builder().mode(Mode::Single).build().is_ok());
    assert!(ClientConfig::builder()
        .watch(IdleWatch::Starts)
        .build()
        .is_ok());
}

#[test]
fn the_go_rules_knobs_live_inside_their_variant_and_are_checked() {
    let mut rules = crate::GoRules::default();
    rules.interval.step = Duration::ZERO;
    let bad = ClientConfig::builder().adapt(Adaptation::GoRules(rules));
    assert!(bad.clone().build().is_err());
    let fixed = bad.build_go_normalized();
    assert_eq!(
        fixed.adaptation(),
        &Adaptation::GoRules(crate::GoRules::default())
    );
}

#[test]
fn an_unset_sweep_follows_the_watch_and_a_set_one_stays() {
    let watched = ClientConfig::builder()
        .watch(IdleWatch::HangUps)
        .build()
        .unwrap();
    assert_eq!(watched.sweep_interval(), DEFAULT_SWEEP);
    assert_eq!(watched.watched().sweep_interval(), WATCHED_SWEEP);
    let off = ClientConfig::builder()
        .watch(IdleWatch::Off)
        .build()
        .unwrap();
    assert_eq!(off.watched().sweep_interval(), DEFAULT_SWEEP);
    let set = ClientConfig::builder()
        .watch(IdleWatch::HangUps)
        .sweep_interval(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(set.watched().sweep_interval(), Duration::from_millis(300));
    let go = ClientConfig::builder()
        .watch(IdleWatch::HangUps)
        .build_go_normalized();
    assert_eq!(go.watched().sweep_interval(), DEFAULT_SWEEP);
}

#[test]
fn an_unset_settle_is_zero_under_a_key_and_a_set_one_stays() {
    let plain = ServerConfig::builder().build().unwrap();
    assert_eq!(plain.settle(), DEFAULT_SETTLE);
    assert_eq!(plain.keyed().settle(), Duration::ZERO);
    let set = ServerConfig::builder()
        .settle(Duration::from_millis(7))
        .build()
        .unwrap();
    assert_eq!(set.keyed().settle(), Duration::from_millis(7));
}
