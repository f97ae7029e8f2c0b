//! The scoreboard's quick run (`pool-sim --quick`): every scenario, both policies, two
//! seeds, five simulated minutes each, with every figure finite. How fast it runs is a
//! figure of the tool, printed by it, not asserted here.

use std::process::Command;

#[test]
fn the_quick_scoreboard_writes_every_figure() {
    let out = std::env::temp_dir().join(format!("pool-sim-quick-{}.json", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_pool-sim"))
        .args(["--quick", "--json"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("pool-sim runs");
    assert!(status.success(), "pool-sim --quick failed: {status}");
    let text = std::fs::read_to_string(&out).expect("the JSON file is written");
    let _ = std::fs::remove_file(&out);
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let figures = json["figures"].as_array().expect("a figures array");
    for scenario in ["steady_2000", "flash_crowd", "on_off", "outage", "wan"] {
        for policy in ["demand", "gorules"] {
            let name = format!("adapt_{policy}_{scenario}_served_at_once_pct");
            let f = figures
                .iter()
                .find(|f| f["name"] == name.as_str())
                .unwrap_or_else(|| panic!("figure {name} missing"));
            let v = f["value"].as_f64().unwrap_or(f64::NAN);
            assert!((0.0..=100.0).contains(&v), "{name} = {v}");
        }
    }
    assert!(figures
        .iter()
        .all(|f| f["value"].as_f64().is_some_and(f64::is_finite)));
}
