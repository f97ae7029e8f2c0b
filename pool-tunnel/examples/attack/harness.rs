//! The harness of the attacks: the `tunnel` processes and the HTTP service behind them,
//! strangers on their own runtime and source addresses, and users whose requests are
//! timed and checked.

use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_testkit::watched::Watched;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Command;
use tokio::task::JoinSet;

use crate::Setup;

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub(crate) fn bin() -> PathBuf {
    if let Ok(b) = std::env::var("TUNNEL_BIN") {
        return b.into();
    }
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    Path::new(&dir).join("release/tunnel")
}

/// Strangers run on a runtime of their own (one thread), so their tight loops never
/// queue ahead of the users' requests, which the harness times on its main runtime: a
/// real attacker is another machine.
pub(crate) fn strangers() -> tokio::runtime::Handle {
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

pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub(crate) fn stranger_ip(n: usize) -> IpAddr {
    IpAddr::from([127, 0, (2 + n / 250) as u8, (2 + n % 250) as u8])
}

pub(crate) async fn connect_from(ip: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(ip, 0))?;
    s.connect(to).await
}

/// A running `tunnel` process and the lines it printed (`Watched` gives `wait_line`,
/// `next_line`, `drain` and `pid`).
pub(crate) struct Proc(Watched);

impl Deref for Proc {
    type Target = Watched;
    fn deref(&self) -> &Watched {
        &self.0
    }
}

impl DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Watched {
        &mut self.0
    }
}

impl Proc {
    pub(crate) fn spawn(args: &[String], env_key: Option<&str>) -> Res<Self> {
        Self::start(Command::new(bin()), args, env_key)
    }

    /// Like `spawn`, under a descriptor limit (soft and hard) when given.
    pub(crate) fn spawn_limited(args: &[String], nofile: Option<u64>) -> Res<Self> {
        let Some(n) = nofile else {
            return Self::spawn(args, None);
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
            .arg(bin());
        Self::start(cmd, args, None)
    }

    pub(crate) fn start(mut cmd: Command, args: &[String], env_key: Option<&str>) -> Res<Self> {
        cmd.args(args)
            .env("RUST_LOG", "info")
            .env_remove("POOL_TUNNEL_KEY");
        if let Some(k) = env_key {
            cmd.env("POOL_TUNNEL_KEY", k);
        }
        let w = Watched::spawn(cmd).map_err(|e| format!("{}: {e}", bin().display()))?;
        Ok(Self(w))
    }

    /// SIGINT, then a kill if the process has not ended within 5 s.
    pub(crate) async fn stop(mut self) {
        signal(self.pid(), "INT");
        if tokio::time::timeout(Duration::from_secs(5), self.child().wait())
            .await
            .is_err()
        {
            self.0.kill().await;
        }
    }
}

pub(crate) fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

pub(crate) fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// One HTTP/1.0 GET through the public port: its latency, or why it failed.
pub(crate) async fn get(public: SocketAddr, limit: Duration) -> Result<Duration, String> {
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
pub(crate) async fn requests(public: SocketAddr, n: usize, c: usize) -> (Vec<Duration>, usize) {
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

pub(crate) fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

/// Polls GET until one succeeds (50 ms apart, at most `within`); how long it took.
pub(crate) async fn until_served(public: SocketAddr, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if get(public, Duration::from_secs(2)).await.is_ok() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A key file only its owner can read, as the tunnel requires.
pub(crate) fn write_key(path: &Path, text: &str) -> std::io::Result<()> {
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
    pub(crate) fn server_args(&self) -> Vec<String> {
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

    pub(crate) fn client_args(&self, key_file: &Path, target: SocketAddr) -> Vec<String> {
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

    pub(crate) async fn start_server(&self) -> Res<Proc> {
        let mut s = Proc::spawn(&self.server_args(), None)?;
        s.wait_line("waiting for the client", Duration::from_secs(10))
            .await
            .ok_or("the server did not start")?;
        Ok(s)
    }

    pub(crate) async fn start_client(&self) -> Res<(Proc, Instant)> {
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
