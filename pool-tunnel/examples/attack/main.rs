//! The scripted attacks of `TUNNEL.md` (those on the tunnel's own defences in
//! `round3.rs`), against the two `tunnel` processes, with a real HTTP service
//! (`python3 -m http.server`) behind the tunnel.
//!
//! ```text
//! cargo build --release -p pool-tunnel
//! cargo run --release -p pool-tunnel --example attack -- 0     # TLS mode 0
//! cargo run --release -p pool-tunnel --example attack -- 1     # TLS mode 1, pinned
//! ```
//!
//! (`scripts/attack.sh` does all three.) The binary is `$TUNNEL_BIN`, else
//! `$CARGO_TARGET_DIR/release/tunnel`, else `target/release/tunnel`. Loopback only: the
//! legitimate client and users on 127.0.0.1, strangers bind 127.0.0.2 and up. Every
//! loop is bounded in count and time. Prints one Markdown table row per attack;
//! `ATTACK_ONLY=round3` runs the baseline and the attacks of `round3.rs` only.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_tunnel::load::quantile;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

mod round3;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn bin() -> PathBuf {
    if let Ok(b) = std::env::var("TUNNEL_BIN") {
        return b.into();
    }
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    Path::new(&dir).join("release/tunnel")
}

/// Strangers run on a runtime of their own (one thread), so their tight loops never
/// queue ahead of the users' requests, which the harness times on its main runtime: a
/// real attacker is another machine.
fn strangers() -> tokio::runtime::Handle {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the strangers' runtime")
    })
    .handle()
    .clone()
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn stranger_ip(n: usize) -> IpAddr {
    IpAddr::from([127, 0, (2 + n / 250) as u8, (2 + n % 250) as u8])
}

async fn connect_from(ip: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(ip, 0))?;
    s.connect(to).await
}

/// A running `tunnel` process and the lines it printed.
struct Proc {
    child: Child,
    lines: mpsc::UnboundedReceiver<(Instant, String)>,
}

impl Proc {
    fn spawn(args: &[String], env_key: Option<&str>) -> Res<Self> {
        Self::start(Command::new(bin()), args, env_key)
    }

    /// Like `spawn`, under a descriptor limit (soft and hard) when given.
    fn spawn_limited(args: &[String], nofile: Option<u64>) -> Res<Self> {
        let Some(n) = nofile else {
            return Self::spawn(args, None);
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
            .arg(bin());
        Self::start(cmd, args, None)
    }

    fn start(mut cmd: Command, args: &[String], env_key: Option<&str>) -> Res<Self> {
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env_remove("POOL_TUNNEL_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(k) = env_key {
            cmd.env("POOL_TUNNEL_KEY", k);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{}: {e}", bin().display()))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().ok_or("no stdout")?;
        let err = child.stderr.take().ok_or("no stderr")?;
        for r in [
            Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(r).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    let _ = tx.send((Instant::now(), l));
                }
            });
        }
        Ok(Self { child, lines })
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The first line containing `needle` within `within`, and when it came.
    async fn wait_line(&mut self, needle: &str, within: Duration) -> Option<(Instant, String)> {
        let end = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(end, self.lines.recv()).await {
                Ok(Some((t, l))) if l.contains(needle) => return Some((t, l)),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    /// Forgets the lines printed so far.
    fn drain(&mut self) {
        while self.lines.try_recv().is_ok() {}
    }

    async fn stop(mut self) {
        signal(self.pid(), "INT");
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One HTTP/1.0 GET through the public port: its latency, or why it failed.
async fn get(public: SocketAddr, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let run = async {
        let mut s = TcpStream::connect(public)
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /index.html HTTP/1.0\r\nHost: tunnel\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.map_err(|e| e.to_string())?;
        if body.starts_with(b"HTTP/1.0 200") && body.ends_with(b"hello through the tunnel\n") {
            Ok(())
        } else {
            Err(format!("bad answer ({} bytes)", body.len()))
        }
    };
    match tokio::time::timeout(limit, run).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out".into()),
    }
}

/// `n` GETs, `c` at once: successes' latencies and the failure count.
async fn requests(public: SocketAddr, n: usize, c: usize) -> (Vec<Duration>, usize) {
    let gate = Arc::new(tokio::sync::Semaphore::new(c));
    let mut set = JoinSet::new();
    for _ in 0..n {
        let Ok(p) = gate.clone().acquire_owned().await else {
            break;
        };
        set.spawn(async move {
            let r = get(public, Duration::from_secs(10)).await;
            drop(p);
            r
        });
    }
    let (mut ok, mut failed) = (Vec::new(), 0);
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(d)) => ok.push(d),
            _ => failed += 1,
        }
    }
    (ok, failed)
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

/// Polls GET until one succeeds (50 ms apart, at most `within`); how long it took.
async fn until_served(public: SocketAddr, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if get(public, Duration::from_secs(2)).await.is_ok() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

struct Setup {
    mode: u8,
    dir: PathBuf,
    tunnel: SocketAddr,
    control: SocketAddr,
    public: SocketAddr,
    http: SocketAddr,
    key: String,
    pin: Option<String>,
}

/// A key file only its owner can read, as the tunnel requires.
fn write_key(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

impl Setup {
    fn server_args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["server", "--tunnel"].map(String::from).to_vec();
        a.push(self.tunnel.to_string());
        a.extend(["--control".into(), self.control.to_string()]);
        a.extend(["--public".into(), self.public.to_string()]);
        a.extend(["--tls".into(), self.mode.to_string()]);
        if self.mode == 0 {
            a.push("--insecure-plaintext".into());
        }
        a.extend([
            "--state-dir".into(),
            self.dir.join("state").display().to_string(),
        ]);
        a
    }

    fn client_args(&self, key_file: &Path, target: SocketAddr) -> Vec<String> {
        let mut a: Vec<String> = vec!["client".into(), "--tunnel".into(), self.tunnel.to_string()];
        a.extend(["--control".into(), self.control.to_string()]);
        a.extend(["--target".into(), target.to_string()]);
        a.extend(["--tls".into(), self.mode.to_string()]);
        if self.mode == 0 {
            a.push("--insecure-plaintext".into());
        }
        a.extend(["--tunnel-key-file".into(), key_file.display().to_string()]);
        if let Some(p) = &self.pin {
            a.extend(["--pin".into(), p.clone()]);
        }
        a
    }

    async fn start_server(&self) -> Res<Proc> {
        let mut s = Proc::spawn(&self.server_args(), None)?;
        s.wait_line("waiting for the client", Duration::from_secs(10))
            .await
            .ok_or("the server did not start")?;
        Ok(s)
    }

    async fn start_client(&self) -> Res<(Proc, Instant)> {
        let started = Instant::now();
        let mut c = Proc::spawn(
            &self.client_args(&self.dir.join("client.key"), self.http),
            None,
        )?;
        c.wait_line("control: connected", Duration::from_secs(10))
            .await
            .ok_or("the client did not connect")?;
        Ok((c, started))
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    let mode: u8 = std::env::args()
        .nth(1)
        .and_then(|m| m.parse().ok())
        .filter(|m| *m <= 1)
        .ok_or("usage: attack 0|1")?;
    let _ = pool_tunnel::load::raise_nofile();
    let dir =
        std::env::temp_dir().join(format!("pool-tunnel-attack-{}-{mode}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/index.html"), "hello through the tunnel\n")?;

    // The service.
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut python = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &http.port().to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir.join("www"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut setup = Setup {
        mode,
        dir: dir.clone(),
        tunnel: SocketAddr::from(([127, 0, 0, 1], free_port())),
        control: SocketAddr::from(([127, 0, 0, 1], free_port())),
        public: SocketAddr::from(([127, 0, 0, 1], free_port())),
        http,
        key: String::new(),
        pin: None,
    };

    // The server generates the key (and in mode 1 the certificate) into its state dir.
    let mut server = Proc::spawn(&setup.server_args(), None)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && (setup.key.is_empty() || (mode == 1 && setup.pin.is_none()))
    {
        let Ok(Some((_, l))) =
            tokio::time::timeout(Duration::from_secs(10), server.lines.recv()).await
        else {
            break;
        };
        let t = l.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            setup.key = t.to_owned();
        }
        if let Some(fp) = l.split("sha256 ").nth(1) {
            setup.pin = fp.split_whitespace().next().map(String::from);
        }
    }
    if setup.key.is_empty() {
        return Err("the server printed no key".into());
    }
    write_key(&dir.join("client.key"), &format!("{}\n", setup.key))?;
    let _ = until_served(http, Duration::from_secs(5)).await; // python is up?
    let (mut client, _) = setup.start_client().await?;
    let public = setup.public;
    if until_served(public, Duration::from_secs(10))
        .await
        .is_none()
    {
        return Err("no request went through".into());
    }
    let mut rows = Vec::new();
    // `ATTACK_ONLY=round3` skips to the attacks of `round3.rs`.
    let full = std::env::var("ATTACK_ONLY").map_or(true, |v| v != "round3");

    // Baseline.
    let (base, failed) = requests(public, 400, 8).await;
    let base_p99 = quantile(&base, 0.99);
    rows.push(format!(
        "| baseline, mode {mode} | 400 GETs, 8 at once: {} ok, {failed} failed, p50 {}, p99 {} |",
        base.len(),
        ms(quantile(&base, 0.5)),
        ms(base_p99)
    ));

    // 1. 2,000 silent peers on the tunnel port, before and after the client starts.
    if full {
        client.stop().await;
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicU64::new(0));
        let mut peers = JoinSet::new();
        let spawn_peers = |peers: &mut JoinSet<()>, from: usize| {
            for i in from..from + 1000 {
                let (stop, held, to) = (stop.clone(), held.clone(), setup.tunnel);
                peers.spawn_on(
                    async move {
                        // Silent; reconnects when closed, for as long as the attack lasts.
                        let mut n = 0;
                        while !stop.load(Relaxed) && n < 100 {
                            n += 1;
                            let Ok(mut s) = connect_from(stranger_ip(1000 + i % 16), to).await
                            else {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            };
                            held.fetch_add(1, Relaxed);
                            let mut buf = [0u8; 256];
                            while !stop.load(Relaxed) {
                                match tokio::time::timeout(
                                    Duration::from_millis(200),
                                    s.read(&mut buf),
                                )
                                .await
                                {
                                    Ok(Ok(0)) | Ok(Err(_)) => break,
                                    _ => {}
                                }
                            }
                        }
                    },
                    &strangers(),
                );
            }
        };
        spawn_peers(&mut peers, 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (c, started) = setup.start_client().await?;
        client = c;
        let to_control = started.elapsed();
        spawn_peers(&mut peers, 1000);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (ok, failed) = requests(public, 400, 8).await;
        stop.store(true, Relaxed);
        while peers.join_next().await.is_some() {}
        let p99 = quantile(&ok, 0.99);
        let added = match (p99, base_p99) {
            (Some(a), Some(b)) => ms(Some(a.saturating_sub(b))),
            _ => "-".into(),
        };
        rows.push(format!(
            "| 2,000 silent peers on the tunnel port, before and after the client starts | \
             client control {:.2} s after start; 400 GETs: {}/400 ok ({failed} failed), p99 {} (+{added}); \
             {} stranger connections |",
            to_control.as_secs_f64(),
            ok.len(),
            ms(p99),
            held.load(Relaxed)
        ));
    }

    // 2. 64 reconnecting silent peers on the control port, then a client restart.
    if full {
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(AtomicU64::new(0));
        let mut peers = JoinSet::new();
        for i in 0..64 {
            let (stop, conns, to) = (stop.clone(), conns.clone(), setup.control);
            peers.spawn_on(
                async move {
                    let mut n = 0;
                    while !stop.load(Relaxed) && n < 1000 {
                        n += 1;
                        let Ok(mut s) = connect_from(stranger_ip(i), to).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        conns.fetch_add(1, Relaxed);
                        let mut buf = [0u8; 64];
                        while !stop.load(Relaxed) {
                            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                                .await
                            {
                                Ok(Ok(0)) | Ok(Err(_)) => break,
                                _ => {}
                            }
                        }
                    }
                },
                &strangers(),
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.stop().await;
        let (c, started) = setup.start_client().await?;
        client = c;
        let took = started.elapsed();
        let served = until_served(public, Duration::from_secs(5)).await;
        stop.store(true, Relaxed);
        while peers.join_next().await.is_some() {}
        rows.push(format!(
            "| 64 reconnecting silent peers on the control port, then a client restart | \
             control again {:.2} s after the restart (process start included); first GET ok after {} more; \
             {} stranger connections |",
            took.as_secs_f64(),
            ms(served),
            conns.load(Relaxed)
        ));
    }

    // 3. A stranger that knows no key, on every port.
    if full {
        // A full client with a wrong key, whose target is a canary.
        let canary = TcpListener::bind("127.0.0.1:0").await?;
        let canary_addr = canary.local_addr()?;
        let canary_hits = Arc::new(AtomicU64::new(0));
        let hits = canary_hits.clone();
        let canary_task = tokio::spawn(async move {
            while let Ok((mut s, _)) = canary.accept().await {
                hits.fetch_add(1, Relaxed);
                let _ = s.shutdown().await;
            }
        });
        let wrong_key = pool_tls::TunnelKey::generate()?.to_hex();
        write_key(&dir.join("wrong.key"), &wrong_key)?;
        let mut wrong = Proc::spawn(
            &setup.client_args(&dir.join("wrong.key"), canary_addr),
            None,
        )?;
        // Raw strangers: the pool port (answering the challenge with zeros), the control
        // port (zeros for a token), the public port is for users anyway.
        let mut raw = JoinSet::new();
        for i in 0..50usize {
            let (tunnel, control) = (setup.tunnel, setup.control);
            raw.spawn_on(
                async move {
                    let to = if i % 2 == 0 { tunnel } else { control };
                    let Ok(mut s) = connect_from(stranger_ip(i), to).await else {
                        return (i % 2, 0usize);
                    };
                    let mut got = 0usize;
                    let mut buf = [0u8; 4096];
                    let _ = s.write_all(&[0u8; 64]).await;
                    let end = tokio::time::Instant::now() + Duration::from_secs(6);
                    while let Ok(Ok(n)) = tokio::time::timeout_at(end, s.read(&mut buf)).await {
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    (i % 2, got)
                },
                &strangers(),
            );
        }
        let (ok, failed) = requests(public, 200, 8).await;
        let connected = wrong
            .wait_line("control: connected", Duration::from_secs(4))
            .await;
        let mut most = [0usize; 2];
        while let Some(Ok((port, got))) = raw.join_next().await {
            most[port] = most[port].max(got);
        }
        wrong.stop().await;
        canary_task.abort();
        rows.push(format!(
            "| a stranger that knows no key, on any port | wrong-key client control: {}; \
             its target reached {} times; raw strangers got at most {} B on the pool port \
             (id + challenge = 40) and {} B on control (nothing before a valid token); legit GETs meanwhile {}/200 ok ({failed} failed) |",
            if connected.is_some() { "YES" } else { "never" },
            canary_hits.load(Relaxed),
            most[0],
            most[1],
            ok.len()
        ));
    }

    // 4. Client SIGSTOP, then SIGCONT.
    if full {
        let pid = client.pid();
        signal(pid, "STOP");
        let stopped = Instant::now();
        let mut set = JoinSet::new();
        for i in 0..24u64 {
            set.spawn(async move {
                tokio::time::sleep(Duration::from_millis(250 * i)).await;
                let start = Instant::now();
                let r = get(public, Duration::from_secs(15)).await;
                (start.elapsed(), r.is_ok())
            });
        }
        let mut answers = Vec::new();
        while let Some(Ok((d, ok))) = set.join_next().await {
            answers.push((d, ok));
        }
        let stopped_for = stopped.elapsed();
        client.drain();
        signal(pid, "CONT");
        let recovery = until_served(public, Duration::from_secs(10)).await;
        let worst = answers.iter().map(|a| a.0).max();
        rows.push(format!(
            "| client SIGSTOP, then SIGCONT | stopped {:.1} s: 24 users answered (closed) within {} at worst, \
             {} served; after SIGCONT served again in {} |",
            stopped_for.as_secs_f64(),
            ms(worst),
            answers.iter().filter(|a| a.1).count(),
            ms(recovery)
        ));
    }

    // 5. A 20 s connect/close flood on the public port.
    if full {
        let spid = server.pid();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let base_fd = descriptors(spid);
        let stop = Arc::new(AtomicBool::new(false));
        let floods = Arc::new(AtomicU64::new(0));
        let mut flood = JoinSet::new();
        for i in 0..32 {
            let (stop, floods) = (stop.clone(), floods.clone());
            flood.spawn_on(
                async move {
                    while !stop.load(Relaxed) {
                        if connect_from(stranger_ip(500 + i), public).await.is_ok() {
                            floods.fetch_add(1, Relaxed);
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                },
                &strangers(),
            );
        }
        let start = Instant::now();
        let (mut ok, mut failed) = (0usize, 0usize);
        let mut peak_fd = base_fd;
        while start.elapsed() < Duration::from_secs(20) {
            let (o, f) = requests(public, 8, 4).await;
            ok += o.len();
            failed += f;
            peak_fd = peak_fd.max(descriptors(spid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Relaxed);
        while flood.join_next().await.is_some() {}
        let ended = Instant::now();
        let mut back = None;
        while ended.elapsed() < Duration::from_secs(30) {
            if descriptors(spid) <= base_fd + 64 {
                back = Some(ended.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        rows.push(format!(
            "| 20 s connect/close flood on the public port | {} flood connections; legit GETs {ok}/{} ok \
             ({:.1} %); server descriptors {base_fd} before, {peak_fd} at peak, within 64 of baseline {} after; {} at the end |",
            floods.load(Relaxed),
            ok + failed,
            100.0 * ok as f64 / (ok + failed).max(1) as f64,
            match back {
                Some(d) => format!("{:.1} s", d.as_secs_f64()),
                None => "NOT within 30 s".into(),
            },
            descriptors(spid)
        ));
    }

    // 6. Server restart (the state dir keeps key and certificate).
    if full {
        server.stop().await;
        let restarted = Instant::now();
        server = setup.start_server().await?;
        let served = until_served(public, Duration::from_secs(15)).await;
        rows.push(format!(
            "| server restart, mode {mode}{} | the unchanged client served again {} after the restart \
             (server start included) |",
            if mode == 1 { " with a pin" } else { "" },
            match served {
                Some(_) => format!("{:.2} s", restarted.elapsed().as_secs_f64()),
                None => "NEVER (15 s)".into(),
            }
        ));
    }

    // The attacks of `round3.rs`.
    let mut client = Some(client);
    rows.push(round3::on_path(&setup, &mut client).await?);
    rows.push(round3::control_churn(&setup, &mut client).await?);
    rows.extend(round3::one_source(&setup).await?);
    rows.push(round3::metrics_emfile(&setup).await?);
    rows.push(round3::planted_state(&setup).await?);
    rows.push(round3::max_vs_handshakes(&setup).await?);
    let client = client.ok_or("no client")?;

    println!("\n| attack (mode {mode}) | measured |\n|---|---|");
    for r in &rows {
        println!("{r}");
    }
    client.stop().await;
    server.stop().await;
    let _ = python.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
