//! The scoreboard's quick run (`pool-sim --quick`): every scenario, the default policy
//! and both baselines, two seeds, five simulated minutes each, with every figure
//! finite, each mean beside the half-width of its 95 % interval, and a verdict for
//! every scenario. How fast it runs is a figure of the tool, printed by it, not
//! asserted here.

use std::process::Command;

#[test]
fn the_quick_scoreboard_writes_every_figure() {
    let out = std::env::temp_dir().join(format!("pool-sim-quick-{}.json", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_pool-sim"))
        .args(["--quick", "--json"])
        .arg(&out)
        .output()
        .expect("pool-sim runs");
    assert!(run.status.success(), "pool-sim --quick failed: {run:?}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let text = std::fs::read_to_string(&out).expect("the JSON file is written");
    let _ = std::fs::remove_file(&out);
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let figures = json["figures"].as_array().expect("a figures array");
    for scenario in ["steady_2000", "flash_crowd", "on_off", "outage", "wan"] {
        for policy in ["offered", "gorules", "gobehaviour"] {
            let name = format!("adapt_{policy}_{scenario}_served_at_once_pct");
            let f = figures
                .iter()
                .find(|f| f["name"] == name.as_str())
                .unwrap_or_else(|| panic!("figure {name} missing"));
            let v = f["value"].as_f64().unwrap_or(f64::NAN);
            assert!((0.0..=100.0).contains(&v), "{name} = {v}");
            let ci = figures
                .iter()
                .find(|f| f["name"] == format!("{name}_ci95").as_str())
                .unwrap_or_else(|| panic!("figure {name}_ci95 missing"));
            assert!(ci["value"].as_f64().is_some_and(|c| c >= 0.0), "{ci}");
        }
    }
    // One verdict per scenario (a row of the table each), counted in the figures.
    let tally: f64 = ["wins", "ties", "losses"]
        .iter()
        .map(|w| figure(figures, &format!("adapt_offered_vs_gorules_{w}")))
        .sum();
    let rows = stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("offered"))
        .count();
    assert!(rows >= 9, "{stdout}");
    assert_eq!(tally, rows as f64, "{stdout}");
    let total = format!(
        "offered vs gorules: {} win, ",
        figure(figures, "adapt_offered_vs_gorules_wins")
    );
    assert!(stdout.contains(&total), "{stdout}");
    for w in ["wins", "ties", "losses"] {
        figure(figures, &format!("adapt_offered_vs_gobehaviour_{w}"));
    }
    assert!(figures
        .iter()
        .all(|f| f["value"].as_f64().is_some_and(f64::is_finite)));
}

fn figure(figures: &[serde_json::Value], name: &str) -> f64 {
    figures
        .iter()
        .find(|f| f["name"] == name)
        .and_then(|f| f["value"].as_f64())
        .unwrap_or_else(|| panic!("figure {name} missing"))
}
