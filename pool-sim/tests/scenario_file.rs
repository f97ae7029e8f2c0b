//! Scenarios from files: the shipped examples load and run, every scripted arrival is
//! replayed, and a bad file is refused by `pool-sim` with what is wrong, not a panic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pool_core::Adaptation;
use pool_sim::adapt::{file, run};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name)
}

#[test]
fn the_json_example_loads_and_runs() {
    let s = file::load(&example("evening_peak.json")).unwrap();
    assert_eq!(s.name, "evening_peak");
    assert_eq!(s.demand.duration(), Duration::from_secs(180));
    assert_eq!(s.demand.pieces.len(), 5);
    assert_eq!(s.capacity, (8, 2048));
    assert_eq!(s.restarts.len(), 1);
    assert_eq!(
        s.net.latency,
        (Duration::from_millis(30), Duration::from_millis(50))
    );
    assert!(s.faults.connect_refused > 0.0 && s.faults.silence > 0.0 && s.net.loss > 0.0);
    // `run` panics if the pair breaks an invariant.
    let score = run(&Adaptation::default(), &s, 1);
    assert!(score.served_at_once_pct > 80.0, "{score:?}");
    assert!(
        score.recover_s.is_some(),
        "the restart is a step: {score:?}"
    );
}

/// Every file in `scenarios/` loads, under the name it is given in BENCHMARKS.md, and
/// its own name matches its file name (the held-out ones are run by name).
#[test]
fn every_shipped_scenario_file_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let s = file::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path.file_stem().unwrap().to_str().unwrap();
        assert_eq!(s.name, stem, "{}", path.display());
        assert!(s.demand.duration() > Duration::ZERO || !s.arrivals.is_empty());
        names.push(s.name);
    }
    names.sort();
    assert_eq!(
        names,
        ["burst_trace", "evening_peak", "sawtooth", "sparse_bursts"]
    );
}

#[test]
fn every_csv_arrival_is_replayed() {
    let path = example("burst_trace.csv");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines = text
        .lines()
        .filter(|l| l.trim().parse::<f64>().is_ok())
        .count();
    let s = file::load(&path).unwrap();
    assert_eq!(s.name, "burst_trace");
    assert_eq!(s.arrivals.len(), lines);
    let mut sim = s.pair(Adaptation::default(), 1);
    s.drive(&mut sim, |_| {});
    sim.check().unwrap();
    assert_eq!(sim.metrics().arrivals, lines as u64);
    // The same users on every seed: only the network differs.
    let mut other = s.pair(Adaptation::GoRules(pool_core::GoRules::default()), 2);
    s.drive(&mut other, |_| {});
    assert_eq!(other.metrics().arrivals, lines as u64);
}

#[test]
fn pool_sim_refuses_a_bad_file_and_runs_a_good_one() {
    let dir = std::env::temp_dir().join(format!("pool-sim-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name":"x","duration_s":5,"rates":[[0,1],[3,"many"]]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pool-sim"))
        .arg("--scenario-file")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("rates[1]"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let csv = dir.join("trace.txt");
    std::fs::write(&csv, "0.5\n1.5\n2\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pool-sim"))
        .args(["--seeds", "2", "--arrivals-csv"])
        .arg(&csv)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("trace ") && l.contains("offered")),
        "{stdout}"
    );
}
