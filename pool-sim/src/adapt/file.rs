//! Scenarios from files: replay your own demand, on your own network, without touching
//! the code (`pool-sim --scenario-file FILE`, or [`load`]).
//!
//! # JSON
//!
//! ```json
//! {
//!   "name": "evening_peak",
//!   "duration_s": 300,
//!   "rates": [[0, 20], [60, 400], [90, 20]],
//!   "net": {
//!     "one_way_delay_ms": 40,
//!     "jitter_ms": 10,
//!     "handshake_ms": [50, 120],
//!     "dial_failure_share": 0.01,
//!     "hang_share": 0.005,
//!     "loss_share": 0.0
//!   },
//!   "capacity": [8, 2048],
//!   "restarts": [[200, 10]]
//! }
//! ```
//!
//! - `name` (required): lower-case letters, digits and `_`, as it goes into figure
//!   names (`adapt_<policy>_<name>_<metric>`).
//! - `duration_s`: how long the scenario runs, in seconds. Required with `rates`;
//!   with `arrivals_s` it defaults to one second past the last arrival.
//! - Demand, one of the two (or both, added):
//!   - `rates`: `[[t_s, rate_per_s], ...]`, piecewise constant: from `t_s` on, users
//!     arrive as a Poisson process at `rate_per_s` (a different draw on each seed),
//!     until the next piece or the end. Times strictly increasing, from 0 or later
//!     (no user before the first), and before `duration_s`.
//!   - `arrivals_s`: `[t_s, ...]`, each user's arrival in seconds from the start, the
//!     same on every seed (a recorded trace). Any order; they are sorted.
//! - `net` (optional; every field optional, the scoreboard's LAN otherwise):
//!   - `one_way_delay_ms` and `jitter_ms`: each delivery, and the application's control
//!     channel, takes the delay plus or minus up to the jitter (uniform). Default: 1 to
//!     20 ms on the network, 1 to 10 ms on the control channel.
//!   - `handshake_ms`: the server's TLS handshake, a number or `[min, max]`. Default 5
//!     to 40.
//!   - `dial_failure_share`: the share of connects refused. Default 0.
//!   - `hang_share`: the share of dials whose peer goes silent (during TLS, or in the
//!     middle of the id) until the client's deadline aborts them. Default 0.
//!   - `loss_share`: the share of deliveries whose packet is lost once and comes a
//!     retransmission timeout (200 ms to 1 s) later. Default 0.
//! - `capacity`: the client's `[min, max]` capacity. Default `[8, 4096]`.
//! - `outage`: `[at_s, lasting_s]`, every connect refused meanwhile. Optional.
//! - `restarts`: `[[at_s, down_s], ...]`: the server restarts, losing every connection it
//!   holds, its port refusing for `down_s`. Optional.
//!
//! Shares are from 0 to 1. Recovery (`recover_s`) is timed after an outage and each
//! restart, over the 60 s that follow. Any other field is an error, so a misspelt one
//! is never silently ignored.
//!
//! # CSV
//!
//! A list of arrival timestamps, one value in seconds per line (`.csv` files, or
//! `pool-sim --arrivals-csv FILE`): blank lines and lines starting with `#` are
//! skipped, and the first other line may be a header. The scenario is named after the file
//! (lower-cased, anything but letters and digits turned into `_`), runs on the LAN
//! until one second past the last arrival, with the default capacity.
//!
//! Bad files are refused with a [`ScenarioFileError`] that names the field (or line)
//! and what is wrong with it; nothing in a file can make the loader panic.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::scenario::{lan, DemandTrace, Outage, Scenario};

/// Why a scenario file was refused.
#[derive(Debug)]
#[non_exhaustive]
pub enum ScenarioFileError {
    /// The file could not be read.
    Io {
        /// The file.
        path: String,
        /// What the system said.
        error: std::io::Error,
    },
    /// The text is not JSON.
    Json(serde_json::Error),
    /// A field (or a CSV line) has a bad value, or is missing or unknown.
    Field {
        /// Where: a field path (`net.jitter_ms`, `rates[2]`) or `line N`.
        at: String,
        /// What is wrong.
        problem: String,
    },
}

impl fmt::Display for ScenarioFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "cannot read {path}: {error}"),
            Self::Json(e) => write!(f, "not valid JSON: {e}"),
            Self::Field { at, problem } => write!(f, "{at}: {problem}"),
        }
    }
}

impl std::error::Error for ScenarioFileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { error, .. } => Some(error),
            Self::Json(e) => Some(e),
            Self::Field { .. } => None,
        }
    }
}

fn bad(at: impl Into<String>, problem: impl Into<String>) -> ScenarioFileError {
    ScenarioFileError::Field {
        at: at.into(),
        problem: problem.into(),
    }
}

/// The longest a file scenario may run: a simulated week.
const MAX_SECONDS: f64 = 7.0 * 86_400.0;

/// Loads a scenario from `path`: CSV arrivals when its name ends in `.csv`, JSON
/// otherwise.
pub fn load(path: &Path) -> Result<Scenario, ScenarioFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| ScenarioFileError::Io {
        path: path.display().to_string(),
        error,
    })?;
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if csv {
        from_csv(&name_of(path), &text)
    } else {
        from_json(&text)
    }
}

/// Loads CSV arrivals from `path` whatever its name.
pub fn load_csv(path: &Path) -> Result<Scenario, ScenarioFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| ScenarioFileError::Io {
        path: path.display().to_string(),
        error,
    })?;
    from_csv(&name_of(path), &text)
}

/// A scenario name from a file name: its stem, lower-cased, anything but letters and
/// digits turned into `_`.
fn name_of(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "trace".into()
    } else {
        name
    }
}

/// A scenario of CSV arrivals (see the [module docs](self)) called `name`.
pub fn from_csv(name: &str, text: &str) -> Result<Scenario, ScenarioFileError> {
    check_name("name", name)?;
    let mut arrivals = Vec::new();
    let mut first = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let header = std::mem::take(&mut first);
        // One value per line; a trailing comma or more columns are refused.
        match line.parse::<f64>() {
            Ok(t) => arrivals.push(seconds(&format!("line {}", i + 1), t)?),
            Err(_) if header => {}
            Err(_) => {
                return Err(bad(
                    format!("line {}", i + 1),
                    format!("`{line}` is not a number of seconds"),
                ))
            }
        }
    }
    if arrivals.is_empty() {
        return Err(bad("file", "no arrival timestamp in it"));
    }
    arrivals.sort();
    let duration = end_after(&arrivals);
    let mut s = Scenario::new(name, DemandTrace::constant(0.0, duration));
    s.arrivals = arrivals;
    Ok(s)
}

/// A scenario from its JSON text (see the [module docs](self)).
pub fn from_json(text: &str) -> Result<Scenario, ScenarioFileError> {
    let v: Value = serde_json::from_str(text).map_err(ScenarioFileError::Json)?;
    let obj = v
        .as_object()
        .ok_or_else(|| bad("file", "expected a JSON object"))?;
    known(
        "",
        obj,
        &[
            "name",
            "duration_s",
            "rates",
            "arrivals_s",
            "net",
            "capacity",
            "outage",
            "restarts",
        ],
    )?;
    let name = obj
        .get("name")
        .ok_or_else(|| bad("name", "missing"))?
        .as_str()
        .ok_or_else(|| bad("name", "expected a string"))?;
    check_name("name", name)?;

    let mut arrivals = match obj.get("arrivals_s") {
        None => Vec::new(),
        Some(a) => array("arrivals_s", a)?
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let at = format!("arrivals_s[{i}]");
                seconds(&at, number(&at, t)?)
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    arrivals.sort();
    let rates = obj.get("rates");
    if rates.is_none() && arrivals.is_empty() {
        return Err(bad("file", "needs `rates` or `arrivals_s` (a demand)"));
    }
    let duration = match obj.get("duration_s") {
        Some(d) => {
            let d = seconds("duration_s", number("duration_s", d)?)?;
            if d.is_zero() {
                return Err(bad("duration_s", "must be above 0"));
            }
            d
        }
        None if rates.is_some() => return Err(bad("duration_s", "missing (needed with `rates`)")),
        None => end_after(&arrivals),
    };
    if let Some(last) = arrivals.last().filter(|&&t| t >= duration) {
        return Err(bad(
            "arrivals_s",
            format!("an arrival at {last:?} is not before `duration_s` ({duration:?})"),
        ));
    }
    let demand = match rates {
        Some(r) => piecewise(r, duration)?,
        None => DemandTrace::constant(0.0, duration),
    };

    let mut s = Scenario::new(name, demand);
    s.arrivals = arrivals;
    if let Some(net) = obj.get("net") {
        apply_net(&mut s, net)?;
    }
    if let Some(c) = obj.get("capacity") {
        let [min, max] = pair("capacity", c)?;
        let whole = |at: &str, x: f64| {
            if x.fract() == 0.0 && (1.0..=16_384.0).contains(&x) {
                Ok(x as usize)
            } else {
                // The scoreboard's server holds 16,384 at most.
                Err(bad(
                    at,
                    format!("{x} is not a whole number from 1 to 16384"),
                ))
            }
        };
        let (min, max) = (whole("capacity[0]", min)?, whole("capacity[1]", max)?);
        if min > max {
            return Err(bad("capacity", format!("min {min} above max {max}")));
        }
        s.capacity = (min, max);
    }
    let window = |end: Duration| (end, (end + Duration::from_secs(60)).min(duration));
    if let Some(o) = obj.get("outage") {
        let [at, lasting] = pair("outage", o)?;
        let o = Outage {
            at: seconds("outage[0]", at)?,
            lasting: seconds("outage[1]", lasting)?,
        };
        if o.at + o.lasting < duration {
            s.steps.push(window(o.at + o.lasting));
        }
        s.outage = Some(o);
    }
    if let Some(r) = obj.get("restarts") {
        for (i, r) in array("restarts", r)?.iter().enumerate() {
            let at = format!("restarts[{i}]");
            let [t, down] = pair(&at, r)?;
            let r = Outage {
                at: seconds(&at, t)?,
                lasting: seconds(&at, down)?,
            };
            if r.at + r.lasting < duration {
                s.steps.push(window(r.at + r.lasting));
            }
            s.restarts.push(r);
        }
        s.restarts.sort_by_key(|r| r.at);
    }
    Ok(s)
}

fn apply_net(s: &mut Scenario, net: &Value) -> Result<(), ScenarioFileError> {
    let obj = net
        .as_object()
        .ok_or_else(|| bad("net", "expected an object"))?;
    known(
        "net.",
        obj,
        &[
            "one_way_delay_ms",
            "jitter_ms",
            "handshake_ms",
            "dial_failure_share",
            "hang_share",
            "loss_share",
        ],
    )?;
    let ms = |field: &str| -> Result<Option<f64>, ScenarioFileError> {
        let at = format!("net.{field}");
        obj.get(field)
            .map(|v| {
                let x = number(&at, v)?;
                seconds(&at, x / 1e3)?;
                Ok(x)
            })
            .transpose()
    };
    let share = |field: &str| -> Result<f64, ScenarioFileError> {
        let at = format!("net.{field}");
        match obj.get(field) {
            None => Ok(0.0),
            Some(v) => {
                let x = number(&at, v)?;
                if (0.0..=1.0).contains(&x) {
                    Ok(x)
                } else {
                    Err(bad(at, format!("{x} is not a share from 0 to 1")))
                }
            }
        }
    };
    let d = |ms: f64| Duration::from_secs_f64(ms.max(0.0) / 1e3);
    let delay = ms("one_way_delay_ms")?;
    let jitter = ms("jitter_ms")?;
    if let Some(delay) = delay.or(jitter.map(|_| lan_mid_ms())) {
        let j = jitter.unwrap_or(0.0);
        let range = (d(delay - j), d(delay + j));
        s.net.latency = range;
        s.net.control_latency = range;
    }
    if let Some(h) = obj.get("handshake_ms") {
        let (lo, hi) = if h.is_array() {
            let [lo, hi] = pair("net.handshake_ms", h)?;
            (lo, hi)
        } else {
            let x = number("net.handshake_ms", h)?;
            (x, x)
        };
        for x in [lo, hi] {
            seconds("net.handshake_ms", x / 1e3)?;
        }
        if lo > hi {
            return Err(bad("net.handshake_ms", format!("min {lo} above max {hi}")));
        }
        s.net.tls_time = (d(lo), d(hi));
    }
    s.faults.connect_refused = share("dial_failure_share")?;
    s.faults.silence = share("hang_share")?;
    s.net.loss = share("loss_share")?;
    Ok(())
}

/// The middle of the LAN's one-way latency, in ms (the delay when only a jitter is
/// given).
fn lan_mid_ms() -> f64 {
    let (lo, hi) = lan().latency;
    (lo + hi).as_secs_f64() * 1e3 / 2.0
}

fn piecewise(v: &Value, duration: Duration) -> Result<DemandTrace, ScenarioFileError> {
    let pieces = array("rates", v)?;
    if pieces.is_empty() {
        return Err(bad("rates", "is empty"));
    }
    let mut points = Vec::with_capacity(pieces.len());
    for (i, p) in pieces.iter().enumerate() {
        let at = format!("rates[{i}]");
        let [t, rate] = pair(&at, p)?;
        let t = seconds(&at, t)?;
        if !(0.0..=1e6).contains(&rate) {
            return Err(bad(
                at,
                format!("rate {rate} is not from 0 to 1000000 users a second"),
            ));
        }
        if let Some(&(prev, _)) = points.last() {
            if t <= prev {
                return Err(bad(at, "times must increase strictly"));
            }
        }
        if t >= duration {
            return Err(bad(at, format!("starts at {t:?}, not before `duration_s`")));
        }
        points.push((t, rate));
    }
    let mut trace = DemandTrace { pieces: Vec::new() };
    if let Some(&(first, _)) = points.first().filter(|p| !p.0.is_zero()) {
        trace = trace.then(first, 0.0);
    }
    for (i, &(t, rate)) in points.iter().enumerate() {
        let end = points.get(i + 1).map_or(duration, |p| p.0);
        trace = trace.then(end - t, rate);
    }
    Ok(trace)
}

fn known(
    prefix: &str,
    obj: &serde_json::Map<String, Value>,
    fields: &[&str],
) -> Result<(), ScenarioFileError> {
    match obj.keys().find(|k| !fields.contains(&k.as_str())) {
        Some(k) => Err(bad(
            format!("{prefix}{k}"),
            format!("unknown field (known: {})", fields.join(", ")),
        )),
        None => Ok(()),
    }
}

fn check_name(at: &str, name: &str) -> Result<(), ScenarioFileError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(bad(
            at,
            format!("`{name}`: use 1 to 64 lower-case letters, digits and `_`"),
        ))
    }
}

fn number(at: &str, v: &Value) -> Result<f64, ScenarioFileError> {
    v.as_f64()
        .ok_or_else(|| bad(at, format!("expected a number, found {v}")))
}

fn array<'a>(at: &str, v: &'a Value) -> Result<&'a Vec<Value>, ScenarioFileError> {
    v.as_array()
        .ok_or_else(|| bad(at, format!("expected an array, found {v}")))
}

fn pair(at: &str, v: &Value) -> Result<[f64; 2], ScenarioFileError> {
    match &array(at, v)?[..] {
        [a, b] => Ok([number(at, a)?, number(at, b)?]),
        other => Err(bad(
            at,
            format!("expected two numbers, found {} values", other.len()),
        )),
    }
}

/// A count of seconds from 0 to a simulated week.
fn seconds(at: &str, x: f64) -> Result<Duration, ScenarioFileError> {
    if x.is_finite() && (0.0..=MAX_SECONDS).contains(&x) {
        Ok(Duration::from_secs_f64(x))
    } else {
        Err(bad(at, format!("{x} s is not from 0 to a week")))
    }
}

/// One second past the last arrival, whole seconds.
fn end_after(arrivals: &[Duration]) -> Duration {
    let last = arrivals.last().copied().unwrap_or_default();
    Duration::from_secs(last.as_secs() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        from_json(text).expect_err(text).to_string()
    }

    #[test]
    fn rates_become_pieces() {
        let s = from_json(
            r#"{"name":"a","duration_s":100,"rates":[[10,5],[40,50]],
                "net":{"one_way_delay_ms":30,"jitter_ms":5,"handshake_ms":100,"hang_share":0.1},
                "capacity":[2,64],"restarts":[[50,5]]}"#,
        )
        .unwrap();
        let secs = Duration::from_secs;
        assert_eq!(
            s.demand.pieces,
            vec![(secs(10), 0.0), (secs(30), 5.0), (secs(60), 50.0)]
        );
        assert_eq!(
            s.net.latency,
            (Duration::from_millis(25), Duration::from_millis(35))
        );
        assert_eq!(s.net.tls_time.0, Duration::from_millis(100));
        assert_eq!(s.faults.silence, 0.1);
        assert_eq!(s.capacity, (2, 64));
        assert_eq!(s.steps, vec![(secs(55), secs(100))]);
    }

    #[test]
    fn arrivals_alone_set_the_length() {
        let s = from_json(r#"{"name":"b","arrivals_s":[3.5,0.25,1]}"#).unwrap();
        assert_eq!(s.demand.duration(), Duration::from_secs(4));
        assert_eq!(s.arrivals[0], Duration::from_millis(250));
        let c = from_csv("c", "t_s\n0.5\n\n# comment\n2.25\n1\n").unwrap();
        assert_eq!(c.arrivals.len(), 3);
        assert_eq!(c.demand.duration(), Duration::from_secs(3));
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, says) in [
            ("", "not valid JSON"),
            ("[1]", "expected a JSON object"),
            (r#"{"duration_s":5,"rates":[[0,1]]}"#, "name: missing"),
            (
                r#"{"name":"Big Name","rates":[[0,1]],"duration_s":5}"#,
                "lower-case",
            ),
            (r#"{"name":"a","rates":[[0,1]]}"#, "duration_s: missing"),
            (r#"{"name":"a"}"#, "needs `rates` or `arrivals_s`"),
            (
                r#"{"name":"a","duration_s":5,"rate":[[0,1]]}"#,
                "rate: unknown field",
            ),
            (
                r#"{"name":"a","duration_s":5,"rates":[[0,1],[0,2]]}"#,
                "rates[1]: times",
            ),
            (
                r#"{"name":"a","duration_s":5,"rates":[[0,-1]]}"#,
                "rates[0]: rate -1",
            ),
            (
                r#"{"name":"a","duration_s":5,"rates":[[9,1]]}"#,
                "not before",
            ),
            (
                r#"{"name":"a","duration_s":5,"rates":[[0]]}"#,
                "two numbers",
            ),
            (
                r#"{"name":"a","duration_s":-5,"rates":[[0,1]]}"#,
                "duration_s: -5",
            ),
            (
                r#"{"name":"a","duration_s":1e300,"rates":[[0,1]]}"#,
                "not from 0 to a week",
            ),
            (
                r#"{"name":"a","duration_s":5,"arrivals_s":[7]}"#,
                "not before `duration_s`",
            ),
            (
                r#"{"name":"a","arrivals_s":["x"]}"#,
                "arrivals_s[0]: expected a number",
            ),
            (
                r#"{"name":"a","duration_s":5,"rates":[[0,1]],"net":{"hang_share":2}}"#,
                "net.hang_share",
            ),
            (
                r#"{"name":"a","duration_s":5,"rates":[[0,1]],"net":{"delay":2}}"#,
                "net.delay: unknown",
            ),
            (
                r#"{"name":"a","duration_s":5,"rates":[[0,1]],"capacity":[9,2]}"#,
                "min 9 above max 2",
            ),
            (
                r#"{"name":"a","duration_s":5,"rates":[[0,1]],"capacity":[0.5,2]}"#,
                "capacity[0]",
            ),
        ] {
            let e = err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
        let e = from_csv("c", "t\n1\nfoo\n").unwrap_err().to_string();
        assert!(e.contains("line 3"), "{e}");
        let e = from_csv("c", "t\n").unwrap_err().to_string();
        assert!(e.contains("no arrival"), "{e}");
        let e = from_csv("c", "1\nNaN\n").unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
