//! A ten-second soak: random faults through the proxy, every pair checked end to end.

use pool_testkit::soak::{run, SoakConfig};

#[test]
fn soak_ten_seconds_is_clean() {
    let mut cfg = SoakConfig::seconds(10);
    cfg.seed = 0x5eed;
    let r = run(&cfg);
    println!("{}", r.line());
    println!("{r:?}");
    assert!(r.pairs > 0, "no pair was checked: {r:?}");
    assert!(r.faults > 0, "no fault was injected: {r:?}");
    assert!(r.is_clean(), "defects: {r:?}");
}
