//! Figures, the table on stdout and the JSON file, shared by `pool-bench` and
//! `pool-attack`: `{"machine":{...},"figures":[{"name","value","unit","baseline","ratio"}]}`.

use std::fmt::Write as _;

/// One measured figure beside its baseline.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Its name, stable across runs.
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// The unit of the value.
    pub unit: &'static str,
    /// The baseline measured in the same run, if any.
    pub baseline: Option<f64>,
    /// `value / baseline`.
    pub ratio: Option<f64>,
    /// Printed in the table only: how the figure was made.
    pub note: String,
}

impl Figure {
    /// A figure whose ratio is `value / baseline`.
    pub fn vs(name: &str, value: f64, unit: &'static str, baseline: f64) -> Self {
        let ratio = (baseline != 0.0).then(|| value / baseline);
        Self {
            name: name.into(),
            value,
            unit,
            baseline: Some(baseline),
            ratio,
            note: String::new(),
        }
    }

    /// A figure with no baseline.
    pub fn alone(name: &str, value: f64, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
            baseline: None,
            ratio: None,
            note: String::new(),
        }
    }

    /// Adds how the figure was made.
    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }
}

/// The machine a run is made on, as every binary's report names it: CPU model, cores,
/// kernel, `rustc --version` (null when no rustc is on PATH), the load average at the
/// start, whether the run was `quick`, and the build profile. A binary adds its own
/// fields (descriptor limit, scale) to the object.
pub fn machine(quick: bool) -> serde_json::Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or_else(
            || "unknown".to_owned(),
            |v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned(),
        );
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let loadavg = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "kernel": if kernel.is_empty() { "unknown".to_owned() } else { kernel },
        "rustc": rustc,
        "loadavg_at_start": loadavg,
        "quick": quick,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

/// Everything one run produced.
#[derive(Debug)]
pub struct Report {
    /// The machine the run was made on.
    pub machine: serde_json::Value,
    /// The figures, in order.
    pub figures: Vec<Figure>,
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn json_num(v: f64) -> serde_json::Value {
    // Three significant decimals are plenty and keep the file readable.
    let r = (v * 1000.0).round() / 1000.0;
    serde_json::Number::from_f64(r).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

impl Report {
    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "machine: {} | {} cores | kernel {} | {} | load at start {}",
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["kernel"].as_str().unwrap_or("?"),
            m["rustc"].as_str().unwrap_or("rustc ?"),
            m["loadavg_at_start"].as_str().unwrap_or("?"),
        );
        let _ = writeln!(
            out,
            "{:<28} {:>12} {:<8} {:>12} {:>8}  note",
            "name", "value", "unit", "baseline", "ratio"
        );
        let _ = writeln!(out, "{}", "-".repeat(80));
        for f in &self.figures {
            let _ = writeln!(
                out,
                "{:<28} {:>12} {:<8} {:>12} {:>8}  {}",
                f.name,
                num(f.value),
                f.unit,
                f.baseline.map_or_else(|| "-".into(), num),
                f.ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}")),
                f.note
            );
        }
        out
    }

    /// The table in Markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| name | value | unit | baseline | ratio | how |\n|---|---:|---|---:|---:|---|\n",
        );
        for f in &self.figures {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} | {} |",
                f.name,
                num(f.value),
                f.unit,
                f.baseline.map_or_else(|| "-".into(), num),
                f.ratio.map_or_else(|| "-".into(), |r| format!("{r:.2}")),
                f.note
            );
        }
        out
    }

    /// The JSON document.
    pub fn json(&self) -> serde_json::Value {
        let figures: Vec<_> = self
            .figures
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name,
                    "value": json_num(f.value),
                    "unit": f.unit,
                    "baseline": f.baseline.map_or(serde_json::Value::Null, json_num),
                    "ratio": f.ratio.map_or(serde_json::Value::Null, json_num),
                })
            })
            .collect();
        serde_json::json!({ "machine": self.machine, "figures": figures })
    }
}
