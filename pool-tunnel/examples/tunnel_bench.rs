//! `tunnel-bench`: the tunnel's own figures, each beside a baseline measured in the same
//! run, in the `pool-bench` JSON format.
//!
//! ```text
//! cargo build --release -p pool-tunnel --bin tunnel --example tunnel-bench
//! target/release/examples/tunnel-bench [--quick] [--mode 0|1] [--delay-ms 25] [--json FILE]
//!                                      [--peer-rathole PATH] [--sessions-only | --download-only | --udp-only]
//! ```
//!
//! It starts the two `tunnel` processes (`$TUNNEL_BIN`, else
//! `$CARGO_TARGET_DIR/release/tunnel`, else `target/release/tunnel`) and a service of its
//! own, all on loopback, then measures:
//!
//! - `tunnel_ttfb_ms_p50`, `tunnel_ttfb_ms_p99`: from a user's first `send` at the public
//!   port until that byte reaches the service, with `FaultProxy` adding the delay each way
//!   between the client process and the server process (pool and control). Baseline:
//!   the same byte sent straight to the service through the same kind of proxy, which is
//!   the one-way delay plus a connect.
//! - `tunnel_mbps`: a download through the tunnel, no added delay. Baseline: the same
//!   download straight from the service. The two alternate five times (once with
//!   `--quick`) and each figure is the median: one loopback download's rate swings by
//!   2-3 x from run to run here, the baseline's as much as the tunnel's.
//! - `tunnel_sessions_per_s`: sessions (connect, 1 KiB each way, close), 64 at once, no
//!   added delay. Baseline: the same straight to the service.
//! - `tunnel_one_source_ratio`: the same sessions from one address through a server
//!   with the default public-port limits; baseline: the same with them lifted (a
//!   source alone gets the full rate: the limits bind only under contention). The
//!   ratio is the figure.
//! - `tunnel_rss_kib`: resident memory of both processes with 1,000 idle pooled
//!   connections, on a fresh pair. Baseline: the same pair with 16.
//!
//! - `chain_mbps`, `chain_sessions_per_s`: the same download and sessions through a
//!   **relay chain**: two processes in series (this binary, `--relay-child`), each
//!   accepting, connecting onwards and relaying with the tunnel's own `splice(2)` relay
//!   per session, with no pool, no proof and no id. That is the least any tunnel of two
//!   processes does (the user's connection, one between the processes, the one to the
//!   service), so it is the ceiling a two-process tunnel with this relay can reach here.
//!   `chain_copy_mbps`: the same chain relaying with `tokio::io::copy_bidirectional`.
//!   Baseline: straight to the service.
//! - `udp_rtt_ms_p50`, `udp_rtt_ms_p99`, `udp_loss`: a DNS-like UDP service behind a
//!   `--udp` pair with the delay between its processes, 1,000 requests a second from
//!   10 user addresses. Baseline: the same service straight through a UDP relay with
//!   the same delay each way (`tunnel_bench/udp.rs`).
//! - `relay_copy_mbps`, `relay_splice_mbps`: one download through one relay in this
//!   process, the userspace copy (the TLS path) and `splice(2)` (the plain path).
//!   Baseline: `tokio::io::copy_bidirectional`.
//!
//! With `--peer-rathole PATH` (a `rathole` binary, e.g. from `cargo install rathole`),
//! the first three are measured for rathole under the same harness too, as
//! `rathole_*`. CI runs `--quick` without it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_testkit::proxy::{Fault, FaultProxy, Script};
use pool_testkit::report::{Figure, Report};
use pool_tunnel::load::quantile;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

#[path = "tunnel_bench/udp.rs"]
mod udp;

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// When the first byte of each tagged session reached the service.
type Arrivals = Arc<Mutex<HashMap<u64, Instant>>>;

/// The service: a command byte and an 8-byte tag, then
/// - `T`: records when the first byte arrived, answers one byte;
/// - `D` + size (8 bytes): sends that many bytes;
/// - `E`: reads 1 KiB, answers 1 KiB.
async fn service() -> Res<(SocketAddr, Arrivals)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut head = [0u8; 9];
                let n = s.read(&mut head).await.unwrap_or(0);
                let at = Instant::now();
                if n == 0 || s.read_exact(&mut head[n..]).await.is_err() {
                    return;
                }
                let tag = u64::from_be_bytes(head[1..9].try_into().unwrap_or_default());
                match head[0] {
                    b'T' => {
                        seen.lock().map(|mut m| m.insert(tag, at)).ok();
                        let _ = s.write_all(b"k").await;
                    }
                    b'D' => {
                        let mut size = [0u8; 8];
                        if s.read_exact(&mut size).await.is_err() {
                            return;
                        }
                        let mut left = u64::from_be_bytes(size);
                        let chunk = vec![7u8; 256 * 1024];
                        while left > 0 {
                            let n = left.min(chunk.len() as u64) as usize;
                            if s.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                    }
                    _ => {
                        let mut kib = vec![0u8; 1024];
                        if s.read_exact(&mut kib).await.is_ok() {
                            let _ = s.write_all(&kib).await;
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok((addr, arrivals))
}

fn head(cmd: u8, tag: u64) -> [u8; 9] {
    let mut h = [cmd; 9];
    h[1..].copy_from_slice(&tag.to_be_bytes());
    h
}

/// `n` sequential first-byte times through `entry` (a public port or a proxy).
async fn ttfb(entry: SocketAddr, arrivals: &Arrivals, n: u64, first_tag: u64) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..n {
        let tag = first_tag + i;
        let Ok(mut s) = TcpStream::connect(entry).await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let sent = Instant::now();
        if s.write_all(&head(b'T', tag)).await.is_err() {
            continue;
        }
        let mut k = [0u8; 1];
        let got = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut k)).await;
        if matches!(got, Ok(Ok(_))) {
            if let Some(at) = arrivals.lock().ok().and_then(|m| m.get(&tag).copied()) {
                out.push(at.saturating_duration_since(sent));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

/// One download of `bytes` through `entry`: MB/s (0 if it broke).
async fn download(entry: SocketAddr, bytes: u64) -> f64 {
    let run = async {
        let mut s = TcpStream::connect(entry).await?;
        let start = Instant::now();
        s.write_all(&head(b'D', 0)).await?;
        s.write_all(&bytes.to_be_bytes()).await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok::<_, std::io::Error>((got, start.elapsed()))
    };
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok((got, took))) if got == bytes => bytes as f64 / 1e6 / took.as_secs_f64(),
        _ => 0.0,
    }
}

/// `tunnel_mbps`: downloads through the tunnel at `public` alternated with downloads
/// straight from `target`. One loopback download's rate swings by 2-3 x from run to run
/// on this machine (which cores the two ends land on), the baseline's as much as the
/// tunnel's: each figure is the median of five (one with `quick`).
async fn download_figure(
    target: SocketAddr,
    public: SocketAddr,
    bytes: u64,
    quick: bool,
    mode: u8,
) -> Figure {
    let (rounds, tunnel, direct) = alternated(target, &[public], bytes, quick).await;
    Figure::vs("tunnel_mbps", tunnel[0], "MB/s", direct).note(format!(
        "mode {mode}, a {} MB download, median of {rounds} alternated with the baseline; baseline: straight from the service",
        bytes / 1_000_000
    ))
}

/// Downloads of `bytes` through each of `entries`, alternated with downloads straight
/// from `target`, five rounds (one with `quick`): how many rounds, the median rate
/// through each entry, and the direct one's.
async fn alternated(
    target: SocketAddr,
    entries: &[SocketAddr],
    bytes: u64,
    quick: bool,
) -> (usize, Vec<f64>, f64) {
    let rounds = if quick { 1 } else { 5 };
    let (mut through, mut direct) = (vec![Vec::new(); entries.len()], Vec::new());
    for _ in 0..rounds {
        direct.push(download(target, bytes).await);
        for (runs, e) in through.iter_mut().zip(entries) {
            runs.push(download(*e, bytes).await);
        }
    }
    let medians = through.iter_mut().map(|r| median(r)).collect();
    (rounds, medians, median(&mut direct))
}

/// The median of `v` (0 when empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Sessions a second through `entry`, `at_once` workers for `secs`.
async fn sessions(entry: SocketAddr, at_once: usize, secs: f64) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for _ in 0..at_once {
        set.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < end {
                let one = async {
                    let mut s = TcpStream::connect(entry).await?;
                    s.write_all(&head(b'E', 0)).await?;
                    s.write_all(&[1u8; 1024]).await?;
                    let mut back = vec![0u8; 1024];
                    s.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                };
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), one).await {
                    done += 1;
                }
            }
            done
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r.unwrap_or(0);
    }
    total as f64 / secs
}

/// Which relay [`relay_mbps`] runs.
#[derive(Clone, Copy)]
enum Relay {
    /// `tokio::io::copy_bidirectional`: the raw relay.
    Raw,
    /// `pool_tunnel::relay::relay` (userspace copy, the TLS path).
    Copy,
    /// `pool_tunnel::relay::relay_tcp` (`splice(2)` on Linux, the plain path).
    Splice,
}

/// MB/s of `bytes` from the service through one in-process relay of kind `kind`.
async fn relay_mbps(service: SocketAddr, kind: Relay, bytes: u64) -> Res<f64> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let entry = l.local_addr()?;
    let relay = tokio::spawn(async move {
        let (mut user, _) = l.accept().await?;
        let mut up = TcpStream::connect(service).await?;
        let limits = pool_tunnel::relay::RelayLimits::default();
        let traffic = pool_tunnel::relay::Traffic::default();
        match kind {
            Relay::Raw => {
                tokio::io::copy_bidirectional(&mut user, &mut up).await?;
            }
            Relay::Copy => {
                pool_tunnel::relay::relay(user, up, limits, &traffic).await;
            }
            Relay::Splice => {
                pool_tunnel::relay::relay_tcp(user, up, limits, &traffic).await;
            }
        }
        Ok::<_, std::io::Error>(())
    });
    let mbps = download(entry, bytes).await;
    let _ = relay.await;
    Ok(mbps)
}

/// `--relay-child LISTEN UPSTREAM [copy]`: this binary as one link of the relay chain.
/// It accepts on `LISTEN`, connects to `UPSTREAM` for each connection and relays the
/// two with the tunnel's plain relay (`splice(2)`), or with `copy` with
/// `tokio::io::copy_bidirectional`, until it is killed, or for [`RELAY_CHILD_LIFE`] at
/// most (a child whose bench died does not outlive it for long).
async fn relay_child(listen: &str, upstream: &str, copy: bool) -> Res<()> {
    let l = TcpListener::bind(listen).await?;
    let upstream: SocketAddr = upstream.parse()?;
    println!("relay: ready");
    let serve = async {
        loop {
            let Ok((user, _)) = l.accept().await else {
                // Out of descriptors, say: wait for some to close, without spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = user.set_nodelay(true);
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                if copy {
                    let (mut user, mut up) = (user, up);
                    let _ = tokio::io::copy_bidirectional(&mut user, &mut up).await;
                    return;
                }
                let traffic = pool_tunnel::relay::Traffic::default();
                let limits = pool_tunnel::relay::RelayLimits::default();
                pool_tunnel::relay::relay_tcp(user, up, limits, &traffic).await;
            });
        }
    };
    let _ = tokio::time::timeout(RELAY_CHILD_LIFE, serve).await;
    Ok(())
}

/// How long a `--relay-child` lives at most.
const RELAY_CHILD_LIFE: Duration = Duration::from_secs(600);

/// The relay chain in front of `target`: two `--relay-child` processes in series
/// (relaying with `copy_bidirectional` if `copy`), and the address a user connects to.
async fn relay_chain(target: SocketAddr, copy: bool) -> Res<(SocketAddr, [Proc; 2])> {
    let me = std::env::current_exe()?;
    let (near, far) = (free_addr(), free_addr());
    let mut procs = Vec::new();
    for (listen, up) in [(far, target), (near, far)] {
        let mut args = vec!["--relay-child".into(), listen.to_string(), up.to_string()];
        if copy {
            args.push("copy".into());
        }
        let mut p = Proc::spawn(&me, &args)?;
        p.wait_line("relay: ready", Duration::from_secs(10))
            .await
            .ok_or("a relay child did not start")?;
        procs.push(p);
    }
    let [a, b]: [Proc; 2] = procs.try_into().map_err(|_| "two relays")?;
    Ok((near, [a, b]))
}

/// Which figures [`chain_figures`] measures.
#[derive(Clone, Copy, PartialEq)]
enum ChainRun {
    Download,
    Sessions,
    Both,
}

/// `chain_mbps`, `chain_copy_mbps` and `chain_sessions_per_s` (see the module docs),
/// each against the direct baseline measured beside it.
async fn chain_figures(
    target: SocketAddr,
    run: ChainRun,
    bytes: u64,
    quick: bool,
    secs: f64,
) -> Res<Vec<Figure>> {
    let (entry, procs) = relay_chain(target, false).await?;
    let what = "two relay processes in series, accept + connect + relay per session, no pool";
    let mut out = Vec::new();
    if run != ChainRun::Sessions {
        let (copy_entry, copy_procs) = relay_chain(target, true).await?;
        let (rounds, chains, direct) = alternated(target, &[entry, copy_entry], bytes, quick).await;
        let (chain, copy) = (chains[0], chains[1]);
        let how = format!(
            "median of {rounds} alternated with the baseline; baseline: straight from the service"
        );
        out.push(
            Figure::vs("chain_mbps", chain, "MB/s", direct)
                .note(format!("{what} (the tunnel's splice relay); {how}")),
        );
        out.push(
            Figure::vs("chain_copy_mbps", copy, "MB/s", direct)
                .note(format!("{what} (tokio::io::copy_bidirectional); {how}")),
        );
        for p in copy_procs {
            p.stop().await;
        }
    }
    if run != ChainRun::Download {
        let base = sessions(target, 64, secs).await;
        let sps = sessions(entry, 64, secs).await;
        out.push(
            Figure::vs("chain_sessions_per_s", sps, "1/s", base).note(format!(
                "{what} (splice); 64 at once, 1 KiB each way; baseline: straight to the service"
            )),
        );
    }
    for p in procs {
        p.stop().await;
    }
    Ok(out)
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

fn bin() -> PathBuf {
    if let Ok(b) = std::env::var("TUNNEL_BIN") {
        return b.into();
    }
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    Path::new(&dir).join("release/tunnel")
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

fn descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A child process, killed when dropped, whose output is watched for a line.
struct Proc {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Proc {
    fn spawn(program: &Path, args: &[String]) -> Res<Self> {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("POOL_TUNNEL_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", program.display()))?;
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
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
                    let _ = tx.send(l);
                }
            });
        }
        Ok(Self { child, lines })
    }

    async fn wait_line(&mut self, needle: &str, within: Duration) -> Option<String> {
        let end = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(end, self.lines.recv()).await {
                Ok(Some(l)) if l.contains(needle) => return Some(l),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// One `tunnel` pair: the server, and a way to start clients against it.
struct Pair {
    dir: PathBuf,
    mode: u8,
    tunnel: SocketAddr,
    control: SocketAddr,
    public: SocketAddr,
    pin: Option<String>,
    server: Proc,
}

impl Pair {
    /// A server in `mode`; `lifted`: with the public port's per-source limits and cap
    /// lifted (the load comes from one address), else with the defaults.
    async fn start(dir: &Path, mode: u8, lifted: bool) -> Res<Self> {
        Self::start_with(dir, mode, lifted, &[]).await
    }

    /// [`Pair::start`] with more arguments for the server.
    async fn start_with(dir: &Path, mode: u8, lifted: bool, extra: &[&str]) -> Res<Self> {
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
        let mut server = Proc::spawn(&bin(), &args)?;
        let mut pin = None;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let Some(l) = server
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
        })
    }

    /// A client reaching the pool and control ports at `via` (proxies, or the ports).
    async fn client(
        &self,
        target: SocketAddr,
        via: (SocketAddr, SocketAddr),
        cap: usize,
    ) -> Res<Proc> {
        self.client_with(target, via, cap, &[]).await
    }

    /// [`Pair::client`] with more arguments.
    async fn client_with(
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
        let mut c = Proc::spawn(&bin(), &args)?;
        c.wait_line("control: connected", Duration::from_secs(15))
            .await
            .ok_or("the tunnel client did not connect")?;
        Ok(c)
    }
}

fn tls_args(mode: u8) -> Vec<String> {
    let mut a = vec!["--tls".into(), mode.to_string()];
    if mode == 0 {
        a.push("--insecure-plaintext".into());
    }
    a
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
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
async fn until_descriptors(pid: u32, n: usize, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if descriptors(pid) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// rathole's two processes, with the same delay between them; the public address.
async fn rathole(
    path: &Path,
    dir: &Path,
    target: SocketAddr,
    delay: Duration,
    noise: bool,
) -> Res<(SocketAddr, Vec<Proc>, Vec<FaultProxy>)> {
    std::fs::create_dir_all(dir)?;
    let (control, public) = (free_addr(), free_addr());
    let token = pool_tls::TunnelKey::generate()?.to_hex();
    let wan = FaultProxy::start(control, Script::always(Fault::Latency(delay))).await?;
    // Its Noise transport (rathole's encrypted mode), with a key pair it makes.
    let (server_noise, client_noise) = if noise {
        let out = std::process::Command::new(path).arg("--genkey").output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let after = |label: &str| {
            text.lines()
                .skip_while(|l| !l.starts_with(label))
                .find(|l| !l.trim().is_empty() && !l.starts_with(label))
                .map(|l| l.trim().to_owned())
                .ok_or("rathole --genkey printed no key")
        };
        let (private, public) = (after("Private Key")?, after("Public Key")?);
        (
            format!("[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
            format!("[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public}\"\n"),
        )
    } else {
        (String::new(), String::new())
    };
    std::fs::write(
        dir.join("server.toml"),
        format!("[server]\nbind_addr = \"{control}\"\n{server_noise}[server.services.bench]\ntoken = \"{token}\"\nbind_addr = \"{public}\"\n"),
    )?;
    std::fs::write(
        dir.join("client.toml"),
        format!("[client]\nremote_addr = \"{}\"\n{client_noise}[client.services.bench]\ntoken = \"{token}\"\nlocal_addr = \"{target}\"\n", wan.addr()),
    )?;
    let s = Proc::spawn(
        path,
        &[
            "--server".into(),
            dir.join("server.toml").display().to_string(),
        ],
    )?;
    let c = Proc::spawn(
        path,
        &[
            "--client".into(),
            dir.join("client.toml").display().to_string(),
        ],
    )?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((public, vec![s, c], vec![wan]))
}

#[tokio::main]
async fn main() -> Res<()> {
    let mut args = std::env::args().skip(1);
    if std::env::args().nth(1).as_deref() == Some("--relay-child") {
        let (listen, up) = (std::env::args().nth(2), std::env::args().nth(3));
        let (Some(listen), Some(up)) = (listen, up) else {
            return Err("--relay-child LISTEN UPSTREAM".into());
        };
        let copy = std::env::args().nth(4).as_deref() == Some("copy");
        return relay_child(&listen, &up, copy).await;
    }
    let (mut quick, mut mode, mut delay_ms, mut json, mut peer) = (false, 0u8, 25u64, None, None);
    let (mut sessions_only, mut download_only, mut udp_only) = (false, false, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--sessions-only" => sessions_only = true,
            "--download-only" => download_only = true,
            "--udp-only" => udp_only = true,
            "--mode" => {
                mode = args
                    .next()
                    .and_then(|m| m.parse().ok())
                    .filter(|m| *m <= 1)
                    .ok_or("--mode 0|1")?
            }
            "--delay-ms" => {
                delay_ms = args
                    .next()
                    .and_then(|m| m.parse().ok())
                    .ok_or("--delay-ms N")?
            }
            "--json" => json = Some(PathBuf::from(args.next().ok_or("--json FILE")?)),
            "--peer-rathole" => {
                peer = Some(PathBuf::from(args.next().ok_or("--peer-rathole PATH")?))
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    let delay = Duration::from_millis(delay_ms);
    let (n_ttfb, dl_bytes, secs) = if quick {
        (20, 16_000_000, 1.0)
    } else {
        (200, 256_000_000, 4.0)
    };
    let dir = std::env::temp_dir().join(format!("tunnel-bench-{}", std::process::id()));
    let (target, arrivals) = service().await?;
    let mut figures = Vec::new();
    let wan = || Script::always(Fault::Latency(delay));
    if udp_only {
        figures.extend(udp::figures(&dir.join("udp"), mode, delay, quick).await?);
        let _ = std::fs::remove_dir_all(&dir);
        return publish(figures, json, quick);
    }
    if download_only {
        // For iterating on (and profiling) the relay path: the download figure alone.
        let pair = Pair::start(&dir.join("download"), mode, true).await?;
        let client = pair.client(target, (pair.tunnel, pair.control), 16).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        figures.push(download_figure(target, pair.public, dl_bytes, quick, mode).await);
        client.stop().await;
        pair.server.stop().await;
        figures.extend(chain_figures(target, ChainRun::Download, dl_bytes, quick, secs).await?);
        let _ = std::fs::remove_dir_all(&dir);
        return publish(figures, json, quick);
    }
    if sessions_only {
        // For iterating on (and profiling) the per-session path: the sessions figure
        // and its baseline, nothing else.
        let base_sps = sessions(target, 64, secs).await;
        let pair = Pair::start(&dir.join("sessions"), mode, true).await?;
        let client = pair.client(target, (pair.tunnel, pair.control), 16).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sps = sessions(pair.public, 64, secs).await;
        figures.push(
            Figure::vs("tunnel_sessions_per_s", sps, "1/s", base_sps).note(format!(
                "mode {mode}, 64 at once, 1 KiB each way; baseline: straight to the service"
            )),
        );
        client.stop().await;
        pair.server.stop().await;
        figures.push(one_source_ratio(&dir, target, mode, quick, secs).await?);
        figures.extend(chain_figures(target, ChainRun::Sessions, dl_bytes, quick, secs).await?);
        let _ = std::fs::remove_dir_all(&dir);
        return publish(figures, json, quick);
    }

    // Baselines: straight to the service (through a proxy with the delay for ttfb).
    let direct_wan = FaultProxy::start(target, wan()).await?;
    let base_ttfb = ttfb(direct_wan.addr(), &arrivals, n_ttfb, 1_000_000).await;
    let base_sps = sessions(target, 64, secs).await;

    // The relay alone, in this process: each kind against the raw relay.
    let raw = relay_mbps(target, Relay::Raw, dl_bytes).await?;
    for (name, kind) in [
        ("relay_copy_mbps", Relay::Copy),
        ("relay_splice_mbps", Relay::Splice),
    ] {
        let v = relay_mbps(target, kind, dl_bytes).await?;
        figures.push(Figure::vs(name, v, "MB/s", raw).note(
            "one download through one in-process relay; baseline: tokio::io::copy_bidirectional",
        ));
    }

    // The tunnel, with the delay between its processes.
    let pair = Pair::start(&dir.join("tunnel"), mode, true).await?;
    let (pool_wan, control_wan) = (
        FaultProxy::start(pair.tunnel, wan()).await?,
        FaultProxy::start(pair.control, wan()).await?,
    );
    let client = pair
        .client(target, (pool_wan.addr(), control_wan.addr()), 16)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = ttfb(pair.public, &arrivals, n_ttfb, 0).await;
    client.stop().await;
    let (b50, b99) = (
        ms(quantile(&base_ttfb, 0.5)),
        ms(quantile(&base_ttfb, 0.99)),
    );
    let note = format!("mode {mode}, {delay_ms} ms each way, {} of {n_ttfb} sessions; baseline: straight through the same delay", t.len());
    figures.push(
        Figure::vs("tunnel_ttfb_ms_p50", ms(quantile(&t, 0.5)), "ms", b50).note(note.clone()),
    );
    figures.push(Figure::vs("tunnel_ttfb_ms_p99", ms(quantile(&t, 0.99)), "ms", b99).note(note));

    // No added delay: throughput and sessions.
    let client = pair.client(target, (pair.tunnel, pair.control), 16).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    figures.push(download_figure(target, pair.public, dl_bytes, quick, mode).await);
    let sps = sessions(pair.public, 64, secs).await;
    figures.push(
        Figure::vs("tunnel_sessions_per_s", sps, "1/s", base_sps).note(format!(
            "mode {mode}, 64 at once, 1 KiB each way; baseline: straight to the service"
        )),
    );
    client.stop().await;
    pair.server.stop().await;
    figures.push(one_source_ratio(&dir, target, mode, quick, secs).await?);
    figures.extend(chain_figures(target, ChainRun::Both, dl_bytes, quick, secs).await?);
    figures.extend(udp::figures(&dir.join("udp"), mode, delay, quick).await?);

    // Memory, on a fresh pair: 16 idle pooled connections, then 1,000.
    let pair = Pair::start(&dir.join("memory"), mode, true).await?;
    let client = pair.client(target, (pair.tunnel, pair.control), 16).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss16 = rss_kib(pair.server.pid()) + rss_kib(client.pid());
    client.stop().await;
    let client = pair
        .client(target, (pair.tunnel, pair.control), 1000)
        .await?;
    let filled = until_descriptors(client.pid(), 1000, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1000 = rss_kib(pair.server.pid()) + rss_kib(client.pid());
    figures.push(Figure::vs("tunnel_rss_kib", rss1000, "KiB", rss16).note(format!(
        "mode {mode}, both processes, 1,000 idle pooled connections{}; baseline: 16 ({:.2} KiB per connection)",
        if filled { "" } else { " (NOT filled in 30 s)" },
        (rss1000 - rss16) / 984.0
    )));
    client.stop().await;
    pair.server.stop().await;

    if let Some(path) = peer {
        let (public, procs, _wan) =
            rathole(&path, &dir.join("rathole"), target, delay, false).await?;
        let t = ttfb(public, &arrivals, n_ttfb, 2_000_000).await;
        figures.push(
            Figure::vs("rathole_ttfb_ms_p50", ms(quantile(&t, 0.5)), "ms", b50)
                .note("rathole, plain TCP, same delay"),
        );
        figures.push(
            Figure::vs("rathole_ttfb_ms_p99", ms(quantile(&t, 0.99)), "ms", b99)
                .note("rathole, plain TCP, same delay"),
        );
        for p in procs {
            p.stop().await;
        }
        // Throughput and sessions with no delay: its plain TCP transport, and in mode 1
        // (encrypted) its own encrypted transport, Noise, too.
        let transports = [
            (false, "rathole", "plain TCP"),
            (true, "rathole_noise", "Noise transport"),
        ];
        for (noise, name, what) in transports.into_iter().filter(|t| !t.0 || mode == 1) {
            let dir = dir.join(format!("{name}-0"));
            let (public, procs, _wan) = rathole(&path, &dir, target, Duration::ZERO, noise).await?;
            let note = format!("rathole, {what}");
            let (rounds, mbps, direct) = alternated(target, &[public], dl_bytes, quick).await;
            figures.push(
                Figure::vs(&format!("{name}_mbps"), mbps[0], "MB/s", direct).note(format!(
                    "{note}; median of {rounds} alternated with the baseline, as ours"
                )),
            );
            let sps = sessions(public, 64, secs).await;
            figures.push(
                Figure::vs(&format!("{name}_sessions_per_s"), sps, "1/s", base_sps).note(note),
            );
            for p in procs {
                p.stop().await;
            }
        }
    }

    let _ = std::fs::remove_dir_all(&dir);
    publish(figures, json, quick)
}

/// `tunnel_one_source_ratio`: sessions a second from one address (64 at once, 1 KiB
/// each way) through a server with the default public-port limits, against the same
/// through a server with them lifted; alternated (twice each, once with `--quick`),
/// medians. A source alone must get the full rate: the limits bind only under
/// contention.
async fn one_source_ratio(
    dir: &Path,
    target: SocketAddr,
    mode: u8,
    quick: bool,
    secs: f64,
) -> Res<Figure> {
    let rounds = if quick { 1 } else { 2 };
    let (mut defaults, mut lifted) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for lift in [false, true] {
            let pair =
                Pair::start(&dir.join(format!("one-source-{round}-{lift}")), mode, lift).await?;
            let client = pair.client(target, (pair.tunnel, pair.control), 16).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sps = sessions(pair.public, 64, secs).await;
            if lift { &mut lifted } else { &mut defaults }.push(sps);
            client.stop().await;
            pair.server.stop().await;
        }
    }
    let (d, l) = (median(&mut defaults), median(&mut lifted));
    Ok(
        Figure::vs("tunnel_one_source_ratio", d, "1/s", l).note(format!(
            "mode {mode}, one address, 64 at once, 1 KiB each way, default limits; baseline: \
         the same with the per-source limits and the cap lifted; median of {rounds} \
         alternated; the ratio is the figure (target >= 0.9)"
        )),
    )
}

/// Prints the figures, and writes them as pool-bench JSON to `json` if given.
fn publish(figures: Vec<Figure>, json: Option<PathBuf>, quick: bool) -> Res<()> {
    let machine = serde_json::json!({
        "cpu": std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().lines()
            .find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned()),
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).ok(),
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").ok(),
        "quick": quick,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    });
    let report = Report { machine, figures };
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report.json())?)?;
    }
    Ok(())
}
