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
