//! The deployment files under `contrib/`: each systemd unit has every hardening
//! setting, passes `tunnel` only options it accepts and the key only as a credential,
//! and (where `systemd-analyze` exists) verifies cleanly; the Containerfile builds in
//! one stage and runs in another, as a non-root user, with `tunnel` as its entry point.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_tunnel");

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib")
}

/// A unit file's settings in order: (section, key, value). Comments and blank lines
/// are skipped, `\` continues a line; a line that is neither is a failure.
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let line = std::mem::take(&mut pending);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {line:?}"));
        assert!(!section.is_empty(), "a setting before any section: {line}");
        out.push((section.clone(), k.trim().to_owned(), v.trim().to_owned()));
    }
    out
}

/// Every value of `key` in `[Service]`.
fn service<'a>(unit: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|(s, k, _)| s == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

fn help(side: &str) -> String {
    let out = Command::new(BIN).args([side, "--help"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn each_unit_is_hardened_and_passes_only_options_tunnel_accepts() {
    for side in ["server", "client"] {
        let path = contrib().join(format!("systemd/tunnel-{side}.service"));
        let text = std::fs::read_to_string(&path).unwrap();
        let unit = parse_unit(&text);
        let one = |key: &str| -> String {
            let v = service(&unit, key);
            assert_eq!(v.len(), 1, "{side}: {key} set {} times", v.len());
            v[0].to_owned()
        };
        for (key, want) in [
            ("DynamicUser", "yes"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("CapabilityBoundingSet", ""),
            ("Restart", "on-failure"),
        ] {
            assert_eq!(one(key), want, "{side}: {key}");
        }
        assert!(!one("StateDirectory").is_empty(), "{side}: StateDirectory");
        assert!(
            one("LimitNOFILE").parse::<u64>().is_ok_and(|n| n >= 4096),
            "{side}"
        );
        assert!(
            service(&unit, "SystemCallFilter").contains(&"@system-service"),
            "{side}: SystemCallFilter"
        );
        // The key: a credential, read from the credentials directory; nowhere else.
        let credential = one("LoadCredential");
        let (name, source) = credential
            .split_once(':')
            .expect("LoadCredential=NAME:PATH");
        assert!(source.starts_with('/'), "{side}: {credential}");
        assert!(
            !text.contains("POOL_TUNNEL_KEY"),
            "{side}: the key in the environment"
        );
        let exec = one("ExecStart");
        let args: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(args[0], "/usr/local/bin/tunnel", "{side}: {exec}");
        assert_eq!(args[1], side, "{side}: {exec}");
        let key_file = args
            .iter()
            .position(|a| *a == "--tunnel-key-file")
            .map(|i| args[i + 1]);
        assert_eq!(
            key_file,
            Some(format!("${{CREDENTIALS_DIRECTORY}}/{name}").as_str()),
            "{side}: {exec}"
        );
        // Every option it passes is one `tunnel SIDE --help` names.
        let help = help(side);
        let flags: Vec<&str> = args
            .iter()
            .copied()
            .filter(|a| a.starts_with("--"))
            .collect();
        assert!(flags.len() >= 4, "{side}: {exec}");
        for flag in flags {
            let named = help
                .split(|c: char| c.is_whitespace() || c == ',')
                .any(|w| w == flag);
            assert!(
                named,
                "{side}: {flag} is not an option of `tunnel {side}`:\n{help}"
            );
        }
        // And every value parses: the argument list, then --help (clap checks what
        // comes before it, then prints the help and exits 0).
        let out = Command::new(BIN)
            .args(&args[1..])
            .arg("--help")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "{side}: `{exec}` does not parse: {err}"
        );
    }
}

#[test]
fn the_units_verify_with_systemd_analyze_where_it_exists() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not on this machine: the verify step is skipped");
        return;
    };
    assert!(out.status.success());
    // A copy of each unit, naming the binary just built (verify checks that
    // ExecStart's program exists).
    let dir = std::env::temp_dir().join(format!("pool-tunnel-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut units = Vec::new();
    for side in ["server", "client"] {
        let name = format!("tunnel-{side}.service");
        let text = std::fs::read_to_string(contrib().join("systemd").join(&name)).unwrap();
        let copy = dir.join(&name);
        std::fs::write(&copy, text.replace("/usr/local/bin/tunnel", BIN)).unwrap();
        units.push(copy);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{said}");
    // Unknown keys and unparsable values are only warnings: none is allowed.
    assert!(!said.contains("tunnel-"), "systemd-analyze verify:\n{said}");
}

/// The Containerfile's instructions, `\` continuations joined: (INSTRUCTION, rest).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            continue;
        }
        pending.push_str(line);
        let line = std::mem::take(&mut pending);
        let (op, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        out.push((op.to_ascii_uppercase(), rest.trim().to_owned()));
    }
    out
}

#[test]
fn the_containerfile_builds_in_rust_and_runs_tunnel_as_a_non_root_user() {
    let text = std::fs::read_to_string(contrib().join("Containerfile")).unwrap();
    let all = instructions(&text);
    let stages: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (op, _))| op == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a run stage");
    let from = |i: usize| all[stages[i]].1.split_whitespace().collect::<Vec<_>>();
    let build = from(0);
    assert!(build[0].contains("/rust:"), "{build:?}");
    assert_eq!(&build[1..], ["AS", "build"], "{build:?}");
    let run = from(1);
    assert!(
        run[0].contains("distroless") || run[0].contains("slim"),
        "a small base: {run:?}"
    );
    let (build_stage, run_stage) = all.split_at(stages[1]);
    assert!(
        build_stage.iter().any(|(op, r)| op == "RUN"
            && r.contains("cargo build")
            && r.contains("--profile dist")
            && r.contains("--bin tunnel")),
        "the build stage builds the dist tunnel"
    );
    let last = |op: &str| {
        run_stage
            .iter()
            .rev()
            .find(|(o, _)| o == op)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no {op} in the run stage"))
    };
    let user = last("USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "runs as root: USER {user}");
    let entry: Vec<String> = serde_json::from_str(&last("ENTRYPOINT")).expect("exec form");
    assert_eq!(entry, ["/usr/local/bin/tunnel"]);
    assert!(
        run_stage.iter().any(|(op, r)| op == "COPY"
            && r.contains("--from=build")
            && r.contains("target/dist/tunnel")
            && r.ends_with(&entry[0])),
        "the run stage copies the built binary to the entry point"
    );
    // The state directory is a volume, and the process finds it there.
    let volume = last("VOLUME");
    let env = last("ENV");
    let state = env
        .strip_prefix("STATE_DIRECTORY=")
        .expect("ENV STATE_DIRECTORY=...");
    assert!(volume.contains(state), "VOLUME {volume} vs {env}");
    assert!(!text.contains("POOL_TUNNEL_KEY"), "a key in the image");
}

/// `client ... --tunnel-key-file PATH --ca X`: the key file is read and checked before
/// `--ca` is refused (exit 1 either way), so the error tells which check stopped it.
fn client_with_key_file(path: &Path, credentials: Option<&Path>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "client",
        "--tunnel",
        "127.0.0.1:1",
        "--target",
        "127.0.0.1:2",
    ])
    .arg("--tunnel-key-file")
    .arg(path)
    .args(["--ca", "/nonexistent"])
    .env_remove("POOL_TUNNEL_KEY")
    .env_remove("CREDENTIALS_DIRECTORY");
    if let Some(dir) = credentials {
        cmd.env("CREDENTIALS_DIRECTORY", dir);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_key_in_the_credentials_directory_may_show_the_acl_mask_as_group_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("pool-tunnel-cred-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("tunnel.key");
    std::fs::write(
        &key,
        "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0\n",
    )
    .unwrap();
    // systemd's credential files read 0440 where an ACL grants the service user.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o440)).unwrap();
    let elsewhere = client_with_key_file(&key, None);
    assert!(elsewhere.contains("other users can read"), "{elsewhere}");
    let credential = client_with_key_file(&key, Some(&dir));
    assert!(credential.contains("--ca: needs tls 2"), "{credential}");
    // Writable by others is refused even there.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o602)).unwrap();
    let writable = client_with_key_file(&key, Some(&dir));
    assert!(writable.contains("write to"), "{writable}");
    let _ = std::fs::remove_dir_all(&dir);
}
