//! The built `tunnel` binary with a configuration file: `tunnel check` names every
//! mistake, `tunnel server --config` runs its services, and `tunnel reload` (SIGHUP)
//! adds a service, or refuses a bad file and runs on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_tunnel");
const LIMIT: Duration = Duration::from_secs(30);

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pool-tunnel-conf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn check_names_the_line_and_field_of_every_mistake() {
    let d = dir("check");
    let bad = d.join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\ntunnel = \"127.0.0.1:10101\"\nmax_sesions = 8\n\n\
         [server.services.web]\npublic = \"127.0.0.1:8080\"\nprotocol = \"sctp\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("2 mistakes"), "{err}");
    assert!(
        err.contains("line 3, column 1: server.max_sesions: unknown field"),
        "{err}"
    );
    assert!(
        err.contains("line 7, column 12: server.services.web.protocol: unknown variant `sctp`"),
        "{err}"
    );
    let good = d.join("good.toml");
    std::fs::write(
        &good,
        "[server]\ntunnel = \"127.0.0.1:10101\"\n[server.services.web]\npublic = \"127.0.0.1:8080\"\n\
         [client]\ntunnel = \"h:1\"\n[client.services.web]\ntarget = \"h:2\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check").arg(&good).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("ok; server: web; client: web"), "{text}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A free loopback port (bound, then released).
fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server_file(d: &Path, (tunnel, control): (u16, u16), services: &[(&str, u16)]) -> String {
    let mut f = format!(
        "[server]\ntunnel = \"127.0.0.1:{tunnel}\"\ncontrol = \"127.0.0.1:{}\"\ntls = 0\n\
         insecure_plaintext = true\nstate_dir = \"{}\"\n",
        control,
        d.join("state").display()
    );
    for (name, p) in services {
        f.push_str(&format!(
            "[server.services.{name}]\npublic = \"127.0.0.1:{p}\"\n"
        ));
    }
    f
}

/// A running server whose stderr lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// `tunnel SIDE --config CONF --pid-file PID`.
    fn side(side: &str, conf: &Path, pid: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args([side, "--config"])
            .arg(conf)
            .arg("--pid-file")
            .arg(pid)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("POOL_TUNNEL_KEY")
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a line holding `needle`, within `LIMIT`; the line.
    fn wait_for(&self, needle: &str) -> String {
        let until = std::time::Instant::now() + LIMIT;
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?}: {e}"),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reload(pid_file: &Path) {
    let out = Command::new(BIN)
        .args(["reload", "--pid-file"])
        .arg(pid_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn reload_adds_a_service_and_refuses_a_bad_file_running_on() {
    let d = dir("reload");
    let conf = d.join("tunnel.toml");
    let pid = d.join("tunnel.pid");
    let (ports, a, b) = ((port(), port()), port(), port());
    std::fs::write(&conf, server_file(&d, ports, &[("a", a)])).unwrap();
    let server = Running::side("server", &conf, &pid);
    server.wait_for("descriptor limit");
    // The pid file is written once the side runs.
    let until = std::time::Instant::now() + LIMIT;
    while !pid.exists() {
        if std::time::Instant::now() > until {
            let said: Vec<String> = server.lines.try_iter().collect();
            panic!("no pid file; the server said {said:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", a)).is_ok());

    std::fs::write(&conf, server_file(&d, ports, &[("a", a), ("b", b)])).unwrap();
    reload(&pid);
    let line = server.wait_for("reload");
    assert!(
        line.contains("added b; removed none; changed none; unchanged a"),
        "{line}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", b)).is_ok());

    // A bad file is refused with its mistake, and the services run on.
    std::fs::write(&conf, "[server]\ntunnel = 1\n").unwrap();
    reload(&pid);
    let line = server.wait_for("reload");
    assert!(line.contains("reload refused"), "{line}");
    assert!(line.contains("line 2"), "{line}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", a)).is_ok());
    assert!(std::net::TcpStream::connect(("127.0.0.1", b)).is_ok());
    drop(server);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_udp_service_from_the_file_answers_through_both_processes() {
    let d = dir("udp");
    // The target: answers each datagram in capitals, until a second without one.
    let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    target.set_read_timeout(Some(LIMIT)).unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 512];
        while let Ok((n, from)) = target.recv_from(&mut b) {
            let _ = target.send_to(&b[..n].to_ascii_uppercase(), from);
        }
    });
    let key = d.join("tunnel.key");
    std::fs::write(&key, pool_tls::TunnelKey::generate().unwrap().to_hex()).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // A UDP public port: a free UDP port.
    let public = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (tunnel, control) = (port(), port());
    let conf = d.join("tunnel.toml");
    std::fs::write(
        &conf,
        format!(
            "[server]\ntunnel = \"127.0.0.1:{tunnel}\"\ncontrol = \"127.0.0.1:{control}\"\n\
             tls = 0\ninsecure_plaintext = true\nstate_dir = \"{state}\"\n\
             tunnel_key_file = \"{key}\"\n\
             [server.services.dns]\npublic = \"{public}\"\nprotocol = \"udp\"\n\
             [client]\ntunnel = \"127.0.0.1:{tunnel}\"\ncontrol = \"127.0.0.1:{control}\"\n\
             tls = 0\ninsecure_plaintext = true\nmin = 2\ntunnel_key_file = \"{key}\"\n\
             [client.services.dns]\ntarget = \"{target_addr}\"\nprotocol = \"udp\"\n",
            state = d.join("state").display(),
            key = key.display(),
        ),
    )
    .unwrap();
    let server = Running::side("server", &conf, &d.join("server.pid"));
    server.wait_for("descriptor limit");
    let client = Running::side("client", &conf, &d.join("client.pid"));
    client.wait_for("control: connected");
    let user = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    user.set_read_timeout(Some(LIMIT)).unwrap();
    user.send_to(b"ping", public).unwrap();
    let mut b = [0u8; 64];
    let (n, from) = user.recv_from(&mut b).unwrap();
    assert_eq!((&b[..n], from), (&b"PING"[..], public));
    drop((client, server));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn reload_refuses_a_pid_file_of_another_program() {
    let d = dir("stale");
    let pid = d.join("stale.pid");
    // This test's own process runs another program than `tunnel`.
    std::fs::write(&pid, format!("{}\n", std::process::id())).unwrap();
    let out = Command::new(BIN)
        .args(["reload", "--pid-file"])
        .arg(&pid)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stale pid file"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_documented_example_passes_its_check() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tunnel.toml");
    let out = Command::new(BIN)
        .arg("check")
        .arg(example)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ok; server: dns, files, real-ip, web; client: dns, files, real-ip, web"),
        "{text}"
    );
}

#[test]
fn a_flag_beside_a_configuration_file_is_refused_not_ignored() {
    let out = Command::new(BIN)
        .args([
            "server",
            "--config",
            "/nonexistent.toml",
            "--max-sessions",
            "8",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}
