//! The benchmark binary runs every scenario (`--quick`: a tenth of each size) and
//! writes its JSON with every figure named below, each finite. Its figures are not checked
//! here: timing goals live in the benchmark, not in tests.

use std::process::Command;

const NAMES: &[&str] = &[
    "fill_plain",
    "fill_tls",
    "fill_rtt50_tls_s",
    "checkout_plain",
    "checkout_tls",
    "get_p50_us",
    "get_p99_us",
    "mem_plain_kib",
    "mem_tls_kib",
    "core_take_by_id_ns_1k",
    "core_take_by_id_ns_64k",
    "core_take_oldest_ns_64k",
    "idle_cpu_pct",
    "down_cpu_pct",
    "adapt_real_flash_at_once_pct",
    "adapt_real_flash_at_once_pct_threads",
    "scale_fill_s_1k",
    "scale_fill_vs_raw_s_1k",
];

#[test]
fn quick_run_writes_every_named_figure() {
    let out = std::env::temp_dir().join(format!("pool-bench-quick-{}.json", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_pool-bench"))
        .args(["--quick", "--json"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("pool-bench runs");
    assert!(status.success(), "pool-bench --quick failed: {status}");
    let text = std::fs::read_to_string(&out).expect("the JSON file is written");
    let _ = std::fs::remove_file(&out);
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(json["machine"].is_object(), "no machine section");
    let figures = json["figures"].as_array().expect("a figures array");
    for name in NAMES {
        let f = figures
            .iter()
            .find(|f| f["name"] == *name)
            .unwrap_or_else(|| panic!("figure {name} missing"));
        let v = f["value"].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite() && v >= 0.0, "{name} = {v}");
        assert!(f["unit"].is_string(), "{name} has no unit");
        assert!(
            f.get("baseline").is_some() && f.get("ratio").is_some(),
            "{name}: baseline and ratio must be present (null where none)"
        );
    }
}
