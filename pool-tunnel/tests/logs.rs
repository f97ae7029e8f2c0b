//! The `tunnel` binary's logs on stderr: plain text when stderr is not a terminal,
//! and one JSON object a line with `--log-format json`, on both sides.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tunnel");

/// A server that refuses its arguments (plaintext without the insecure word) after
/// start-up has logged: some log lines, then the error, then exit status 1.
fn refused_server(extra: &[&str]) -> Output {
    let state = std::env::temp_dir().join(format!("pool-tunnel-logs-{}", std::process::id()));
    let out = Command::new(BIN)
        .args(extra)
        .args([
            "server",
            "--tunnel",
            "127.0.0.1:0",
            "--public",
            "127.0.0.1:0",
        ])
        .args(["--tls", "0"])
        .env_remove("POOL_TUNNEL_KEY")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "debug")
        .env("STATE_DIRECTORY", &state)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&state);
    out
}

/// A client without a key: it logs start-up, then refuses to run (status 1).
fn keyless_client(extra: &[&str]) -> Output {
    Command::new(BIN)
        .args([
            "client",
            "--tunnel",
            "127.0.0.1:1",
            "--target",
            "127.0.0.1:2",
        ])
        .args(extra)
        .env_remove("POOL_TUNNEL_KEY")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap()
}

#[test]
fn piped_logs_carry_no_escape_codes() {
    for out in [refused_server(&[]), keyless_client(&[])] {
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        // A log line was written (not only the error), so the check below bites.
        assert!(err.contains("INFO") || err.contains("DEBUG"), "{err}");
        assert!(
            !out.stderr.contains(&0x1b),
            "an escape code in piped logs: {err:?}"
        );
    }
}

/// Every line of `stderr` parsed as a JSON object.
fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "{l}");
            v
        })
        .collect()
}

#[test]
fn json_logs_are_one_object_a_line_on_both_sides() {
    // The flag before the side and after it.
    let server = refused_server(&["--log-format", "json"]);
    let client = keyless_client(&["--log-format", "json"]);
    for (out, why) in [
        (server, "--insecure-plaintext"),
        (client, "needs the server's tunnel key"),
    ] {
        assert_eq!(out.status.code(), Some(1));
        let lines = json_lines(&out);
        assert!(lines.len() >= 2, "start-up and the error: {lines:?}");
        for l in &lines {
            assert!(l["level"].is_string() && l["timestamp"].is_string(), "{l}");
        }
        // The error that ends the process is a line of its own, at level ERROR.
        let last = lines.last().unwrap();
        assert_eq!(last["level"], "ERROR", "{last}");
        let message = last["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{last}");
    }
}

#[test]
fn an_unknown_log_format_is_refused_naming_the_option() {
    let out = keyless_client(&["--log-format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--log-format"), "{err}");
}

/// The keyless client's output when its stderr is a terminal (a pseudo-terminal made
/// by util-linux `script`), with `NO_COLOR` as given; `None` when `script` is absent.
fn on_a_terminal(no_color: Option<&str>) -> Option<Vec<u8>> {
    let mut cmd = Command::new("script");
    cmd.args(["-qec"])
        .arg(format!(
            "'{BIN}' client --tunnel 127.0.0.1:1 --target 127.0.0.1:2"
        ))
        .arg("/dev/null")
        .env_remove("POOL_TUNNEL_KEY")
        .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().ok()?;
    Some(out.stdout)
}

#[test]
fn on_a_terminal_logs_are_coloured_unless_no_color_is_set() {
    let Some(coloured) = on_a_terminal(None) else {
        eprintln!("no `script` on this machine: no terminal to test on");
        return;
    };
    let text = String::from_utf8_lossy(&coloured);
    assert!(text.contains("INFO"), "{text:?}");
    assert!(
        coloured.contains(&0x1b),
        "no colour on a terminal: {text:?}"
    );
    for value in ["1", "yes"] {
        let plain = on_a_terminal(Some(value)).unwrap();
        let text = String::from_utf8_lossy(&plain);
        assert!(text.contains("INFO"), "{text:?}");
        assert!(!plain.contains(&0x1b), "NO_COLOR={value}: {text:?}");
    }
    // Empty means unset (no-color.org).
    let empty = on_a_terminal(Some("")).unwrap();
    assert!(
        empty.contains(&0x1b),
        "{:?}",
        String::from_utf8_lossy(&empty)
    );
}
