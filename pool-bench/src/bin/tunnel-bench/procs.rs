//! The processes a run starts: `tunnel` pairs and their clients, with their memory and
//! descriptors read from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pool_testkit::watched::Watched;
use tokio::process::Command;

use crate::Res;

pub(crate) fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

pub(crate) fn bin() -> PathBuf {
    if let Ok(b) = std::env::var("TUNNEL_BIN") {
        return b.into();
    }
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    Path::new(&dir).join("release/tunnel")
}

pub(crate) fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

pub(crate) fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A child process of the bench, killed when dropped, whose output is watched.
pub(crate) type Proc = Watched;

/// Starts `program` with `args` (and `RUST_LOG=info`, and no tunnel key from the
/// environment).
pub(crate) fn spawn(program: &Path, args: &[String]) -> Res<Proc> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env_remove("POOL_TUNNEL_KEY");
    Ok(Watched::spawn(cmd).map_err(|e| format!("{}: {e}", program.display()))?)
}

/// One `tunnel` pair: the server, and a way to start clients against it.
pub(crate) struct Pair {
    dir: PathBuf,
    mode: u8,
    pub(crate) tunnel: SocketAddr,
    pub(crate) control: SocketAddr,
    pub(crate) public: SocketAddr,
    pin: Option<String>,
    pub(crate) server: Proc,
    /// The `tunnel` binary of both processes.
    program: PathBuf,
}

impl Pair {
    /// A server in `mode`; `lifted`: with the public port's per-source limits and cap
    /// lifted (the load comes from one address), else with the defaults.
    pub(crate) async fn start(dir: &Path, mode: u8, lifted: bool) -> Res<Self> {
        Self::start_with(dir, mode, lifted, &[]).await
    }

    /// [`Pair::start`] with more arguments for the server.
    pub(crate) async fn start_with(
        dir: &Path,
        mode: u8,
        lifted: bool,
        extra: &[&str],
    ) -> Res<Self> {
        Self::start_program(&bin(), dir, mode, lifted, extra).await
    }

    /// [`Pair::start_with`] with another `tunnel` binary (for its client too).
    pub(crate) async fn start_program(
        program: &Path,
        dir: &Path,
        mode: u8,
        lifted: bool,
        extra: &[&str],
    ) -> Res<Self> {
        std::fs::create_dir_all(dir)?;
        let key = pool_tls::TunnelKey::generate()?.to_hex();
        write_private(&dir.join("key"), &key)?;
        let (tunnel, control, public) = (free_addr(), free_addr(), free_addr());
        let mut args: Vec<String> = vec!["server".into()];
        for (flag, v) in [
            ("--tunnel", tunnel),
            ("--control", control),
            ("--public", public),
        ] {
            args.extend([flag.into(), v.to_string()]);
        }
        args.extend(tls_args(mode));
        args.extend([
            "--tunnel-key-file".into(),
            dir.join("key").display().to_string(),
        ]);
        args.extend([
            "--state-dir".into(),
            dir.join("state").display().to_string(),
        ]);
        // The load comes from one address: lift the per-source limits and the cap.
        let lift = [
            ("--new-sessions-per-source", "1000000"),
            ("--max-sessions-per-source", "100000"),
            ("--max-sessions", "100000"),
        ];
        for (flag, v) in lift.into_iter().filter(|_| lifted) {
            args.extend([flag.into(), v.into()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut server = spawn(program, &args)?;
        let mut pin = None;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let Some((_, l)) = server
                .wait_line("", end.saturating_duration_since(Instant::now()))
                .await
            else {
                return Err("the tunnel server did not start".into());
            };
            if let Some(fp) = l.split("sha256 ").nth(1) {
                pin = fp.split_whitespace().next().map(String::from);
            }
            if l.contains("waiting for the client") {
                break;
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            mode,
            tunnel,
            control,
            public,
            pin,
            server,
            program: program.to_owned(),
        })
    }

    /// A client reaching the pool and control ports at `via` (proxies, or the ports).
    pub(crate) async fn client(
        &self,
        target: SocketAddr,
        via: (SocketAddr, SocketAddr),
        cap: usize,
    ) -> Res<Proc> {
        self.client_with(target, via, cap, &[]).await
    }

    /// [`Pair::client`] with more arguments.
    pub(crate) async fn client_with(
        &self,
        target: SocketAddr,
        via: (SocketAddr, SocketAddr),
        cap: usize,
        extra: &[&str],
    ) -> Res<Proc> {
        let mut args: Vec<String> = vec!["client".into()];
        for (flag, v) in [
            ("--tunnel", via.0),
            ("--control", via.1),
            ("--target", target),
        ] {
            args.extend([flag.into(), v.to_string()]);
        }
        args.extend(tls_args(self.mode));
        if let Some(p) = &self.pin {
            args.extend(["--pin".into(), p.clone()]);
        }
        args.extend([
            "--min".into(),
            cap.to_string(),
            "--max".into(),
            cap.max(256).to_string(),
        ]);
        args.extend([
            "--tunnel-key-file".into(),
            self.dir.join("key").display().to_string(),
        ]);
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut c = spawn(&self.program, &args)?;
        c.wait_line("control: connected", Duration::from_secs(15))
            .await
            .ok_or("the tunnel client did not connect")?;
        Ok(c)
    }
}

pub(crate) fn tls_args(mode: u8) -> Vec<String> {
    let mut a = vec!["--tls".into(), mode.to_string()];
    if mode == 0 {
        a.push("--insecure-plaintext".into());
    }
    a
}

pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Waits until `pid` holds at least `n` descriptors (bounded).
pub(crate) async fn until_descriptors(pid: u32, n: usize, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if descriptors(pid) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
