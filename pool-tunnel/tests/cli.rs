//! The built `tunnel` binary: help for both sides, a generated key the client accepts,
//! and a client that refuses to start without a key.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tunnel");

/// A state directory of the test's own (the default one is under $HOME).
fn state_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pool-tunnel-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn both_sides_have_help() {
    for side in ["server", "client"] {
        let out = Command::new(BIN).args([side, "--help"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("--tunnel-key-file"), "{text}");
    }
}

#[test]
fn the_client_refuses_to_start_without_a_key() {
    let out = Command::new(BIN)
        .args([
            "client",
            "--tunnel",
            "127.0.0.1:1",
            "--target",
            "127.0.0.1:2",
        ])
        .env_remove("POOL_TUNNEL_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs the server's tunnel key"), "{err}");
}

#[test]
fn a_key_on_argv_is_refused_before_it_is_read() {
    // No secret on argv: the option does not exist, and the error points to the file.
    let out = Command::new(BIN)
        .args([
            "client",
            "--tunnel",
            "127.0.0.1:1",
            "--target",
            "127.0.0.1:2",
        ])
        .args(["--tunnel-key", "0123456789abcdef0123456789abcdef"])
        .env_remove("POOL_TUNNEL_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tunnel-key-file"), "{err}");
}

#[test]
fn the_server_prints_a_generated_key_once() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--tunnel",
            "127.0.0.1:0",
            "--public",
            "127.0.0.1:0",
        ])
        .args(["--control", "127.0.0.1:0"])
        .env_remove("POOL_TUNNEL_KEY")
        .env("STATE_DIRECTORY", state_dir("key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut key = None;
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if line.len() == 64 && line.bytes().all(|b| b.is_ascii_hexdigit()) {
            key = Some(line);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let key = key.expect("no key printed");
    assert!(pool_tls::TunnelKey::from_hex(&key).is_ok());
}

#[test]
fn metrics_are_served_for_prometheus() {
    use std::io::{Read, Write};
    // A free loopback port for the exporter.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["--metrics", &addr.to_string()])
        .args([
            "server",
            "--tunnel",
            "127.0.0.1:0",
            "--public",
            "127.0.0.1:0",
        ])
        .args(["--control", "127.0.0.1:0"])
        .env_remove("POOL_TUNNEL_KEY")
        .env("STATE_DIRECTORY", state_dir("metrics"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Bounded: 10 s of attempts at most.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut body = String::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        body.clear();
        let _ = s.read_to_string(&mut body);
        if body.contains("pool_connections_idle") && body.contains("tunnel_control_up") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for name in [
        "pool_connections_idle",
        "pool_connections_in_flight",
        "pool_gets_waiting",
        "pool_capacity",
        // The tunnel's own, kept current by the binary.
        "tunnel_control_up{role=\"server\"} 0",
        "tunnel_users_total{role=\"server\"} 0",
        "tunnel_sessions_active{role=\"server\"} 0",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    assert!(body.contains("role=\"server\""), "{body}");
}

#[test]
fn plaintext_is_refused_without_the_insecure_word() {
    let out = Command::new(BIN)
        .args([
            "server",
            "--tunnel",
            "127.0.0.1:0",
            "--public",
            "127.0.0.1:0",
        ])
        .args(["--tls", "0"])
        .env_remove("POOL_TUNNEL_KEY")
        .env("STATE_DIRECTORY", state_dir("plain"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-plaintext"), "{err}");
}

/// Runs `tunnel ARGS` with no key in the environment and a state directory of its own;
/// its exit code and stderr. Bounded: a start-up that hangs is killed and fails.
fn run_bounded(name: &str, args: &[&str]) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("POOL_TUNNEL_KEY")
        .env("STATE_DIRECTORY", state_dir(name))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    let Some(status) = status else {
        panic!(
            "`tunnel {}` hung at start-up; stderr: {err}",
            args.join(" ")
        );
    };
    (status.code(), err)
}

const SERVER: [&str; 5] = [
    "server",
    "--tunnel",
    "127.0.0.1:0",
    "--public",
    "127.0.0.1:0",
];

#[test]
fn numbers_out_of_range_are_refused_at_start_naming_the_option() {
    let huge = "18446744073709551615";
    for (option, value) in [
        ("--max-sessions", huge),
        ("--max-sessions", "2305843009213693952"),
        ("--max", huge),
        ("--max-sessions-per-source", "0"),
        ("--new-sessions-per-source", huge),
        ("--max-candidates", "4294967296"),
        ("--idle-timeout", huge),
        ("--half-close-timeout", "0"),
    ] {
        let args = [&SERVER[..], &[option, value]].concat();
        let (code, err) = run_bounded("range", &args);
        assert_eq!(code, Some(2), "{option} {value}: {err}");
        assert!(err.contains(option), "{option} {value}: {err}");
    }
    for (option, value) in [("--max", huge), ("--min", "0")] {
        let args = [
            "client",
            "--tunnel",
            "127.0.0.1:1",
            "--target",
            "127.0.0.1:2",
            option,
            value,
        ];
        let (code, err) = run_bounded("range-client", &args);
        assert_eq!(code, Some(2), "{option} {value}: {err}");
        assert!(err.contains(option), "{option} {value}: {err}");
    }
}

#[test]
fn a_fifo_as_the_key_file_is_refused_and_start_up_does_not_hang() {
    use std::os::unix::fs::PermissionsExt;
    let dir = state_dir("fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("key");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = fifo.to_str().unwrap();
    let (code, err) = run_bounded(
        "fifo-run",
        &[&SERVER[..], &["--tunnel-key-file", path]].concat(),
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_server_help_names_the_clients_own_default() {
    let out = Command::new(BIN)
        .args(["client", "--help"])
        .output()
        .unwrap();
    let client = String::from_utf8_lossy(&out.stdout).into_owned();
    let default = client
        .split("--max <N>")
        .nth(1)
        .and_then(|t| t.split("[default: ").nth(1))
        .and_then(|t| t.split(']').next())
        .expect("the client's --max default")
        .to_owned();
    let out = Command::new(BIN)
        .args(["server", "--help"])
        .output()
        .unwrap();
    let server = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        server.contains(&format!("its default is {default}")),
        "the server's --max help does not name {default}:\n{server}"
    );
}
