//! A real reverse tunnel in two processes, the NodePass way.
//!
//! The server side runs on the public machine; the client side runs next to the
//! service and dials out to the server, so the service needs no open port:
//!
//! ```text
//! cargo run --release -p pool-tokio --example tunnel -- server \
//!     --tunnel 0.0.0.0:10101 --public 0.0.0.0:8080 --tls 1 --tunnel-key s3cret
//! cargo run --release -p pool-tokio --example tunnel -- client \
//!     --tunnel server.example:10101 --target 127.0.0.1:3000 --tls 1 --tunnel-key s3cret
//! ```
//!
//! Users connect to the public port; each connection is relayed through one pooled
//! connection to a fresh connection to the target. The control connection uses the
//! tunnel port + 1 unless `--control` says otherwise. See `examples/TUNNEL.md`.

#[path = "common/tunnel.rs"]
mod tunnel;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pool_tls::{Fingerprint, ServerTls, TlsMode};
use tunnel::{ClientConfig, ServerConfig, Timeouts};

const USAGE: &str = "\
usage:
  tunnel server --tunnel ADDR --public ADDR [--control ADDR] [--tls 0|1|2]
                [--cert FILE --key FILE] [--hostname NAME] [--client-ip IPS]
                [--max N] [--tunnel-key KEY] [--quiet]
  tunnel client --tunnel HOST:PORT --target HOST:PORT [--control HOST:PORT]
                [--tls 0|1|2] [--hostname NAME] [--ca FILE] [--pin SHA256]
                [--min N] [--max N] [--tunnel-key KEY] [--quiet]

common:
  --tunnel       server: address the pool listens on; client: address it dials
  --control      control connection address (default: tunnel port + 1)
  --tls          0 plain, 1 TLS with a self-signed certificate (not verified by the
                 client unless --pin), 2 TLS verified (server: --cert/--key;
                 client: --ca or the web roots, --hostname)      (default 0)
  --tunnel-key   shared secret; both sides must use the same. Default: derived from
                 the tunnel port, which anyone can compute: set it for real use
  --quiet        no control-event logs
server:
  --public       address users connect to
  --cert, --key  PEM certificate chain and private key (mode 2)
  --hostname     name on the self-signed certificate (mode 1, default localhost)
  --client-ip    allowed client addresses/CIDRs, comma separated (pool and control)
  --max          server pool capacity                            (default 1024)
client:
  --target       the service behind the tunnel
  --hostname     TLS server name (mode 2: must match the certificate)
  --ca           PEM CA file to trust (mode 2)
  --pin          SHA-256 fingerprint of the server certificate (mode 1)
  --min, --max   client pool capacity                            (default 64, 1024)";

#[derive(Default)]
struct Flags {
    tunnel: Option<String>,
    public: Option<String>,
    target: Option<String>,
    control: Option<String>,
    tls: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    hostname: Option<String>,
    client_ip: Option<String>,
    ca: Option<PathBuf>,
    pin: Option<String>,
    min: Option<String>,
    max: Option<String>,
    tunnel_key: Option<String>,
    quiet: bool,
}

enum Cmd {
    Help,
    Server(ServerConfig, TlsMode),
    Client(ClientConfig),
}

fn parse_flags(args: impl Iterator<Item = String>) -> Result<Flags, String> {
    let mut f = Flags::default();
    let mut it = args;
    while let Some(flag) = it.next() {
        if flag == "--quiet" {
            f.quiet = true;
            continue;
        }
        let slot: &mut Option<String> = match flag.as_str() {
            "--tunnel" => &mut f.tunnel,
            "--public" => &mut f.public,
            "--target" => &mut f.target,
            "--control" => &mut f.control,
            "--tls" => &mut f.tls,
            "--hostname" => &mut f.hostname,
            "--client-ip" => &mut f.client_ip,
            "--pin" => &mut f.pin,
            "--min" => &mut f.min,
            "--max" => &mut f.max,
            "--tunnel-key" => &mut f.tunnel_key,
            "--cert" | "--key" | "--ca" => {
                let v = it.next().ok_or(format!("{flag} needs a value"))?;
                let path = Some(PathBuf::from(v));
                match flag.as_str() {
                    "--cert" => f.cert = path,
                    "--key" => f.key = path,
                    _ => f.ca = path,
                }
                continue;
            }
            other => return Err(format!("unknown argument `{other}`")),
        };
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        if slot.replace(v).is_some() {
            return Err(format!("{flag} given twice"));
        }
    }
    Ok(f)
}

fn socket_addr(flag: &str, v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("{flag}: `{v}` is not an IP:PORT address"))
}

fn number(flag: &str, v: Option<&String>, default: usize) -> Result<usize, String> {
    match v {
        None => Ok(default),
        Some(v) => v
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or(format!("{flag}: `{v}` is not a positive number")),
    }
}

fn key(f: &Flags) -> Result<Option<Vec<u8>>, String> {
    match &f.tunnel_key {
        Some(k) if k.is_empty() => Err("--tunnel-key: the key is empty".into()),
        Some(k) => Ok(Some(k.clone().into_bytes())),
        None => Ok(None),
    }
}

fn forbid(present: bool, flag: &str, why: &str) -> Result<(), String> {
    if present {
        Err(format!("{flag} {why}"))
    } else {
        Ok(())
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Cmd, String> {
    let side = args.next().ok_or("say `server` or `client`")?;
    if matches!(side.as_str(), "-h" | "--help" | "help") {
        return Ok(Cmd::Help);
    }
    let f = parse_flags(args)?;
    let mode: TlsMode = match &f.tls {
        Some(t) => t.parse().map_err(|e| format!("--tls: {e}"))?,
        None => TlsMode::Off,
    };
    let tunnel = f.tunnel.clone().ok_or("--tunnel is required")?;
    let verbose = !f.quiet;
    match side.as_str() {
        "server" => {
            for (present, flag) in [
                (f.target.is_some(), "--target"),
                (f.ca.is_some(), "--ca"),
                (f.pin.is_some(), "--pin"),
                (f.min.is_some(), "--min"),
            ] {
                forbid(present, flag, "is a client option")?;
            }
            let public = f.public.as_deref().ok_or("--public is required")?;
            let tls = match mode {
                TlsMode::Off => {
                    forbid(
                        f.cert.is_some() || f.key.is_some(),
                        "--cert/--key",
                        "need --tls 2",
                    )?;
                    None
                }
                TlsMode::SelfSigned => {
                    forbid(
                        f.cert.is_some() || f.key.is_some(),
                        "--cert/--key",
                        "need --tls 2",
                    )?;
                    let name = f.hostname.clone().unwrap_or_else(|| "localhost".into());
                    Some(ServerTls::self_signed([name]).map_err(|e| format!("--hostname: {e}"))?)
                }
                TlsMode::Verified => {
                    let (Some(c), Some(k)) = (&f.cert, &f.key) else {
                        return Err("--tls 2 needs --cert FILE and --key FILE".into());
                    };
                    Some(ServerTls::from_pem_files(c, k).map_err(|e| e.to_string())?)
                }
            };
            Ok(Cmd::Server(
                ServerConfig {
                    tunnel: socket_addr("--tunnel", &tunnel)?,
                    public: socket_addr("--public", public)?,
                    control: f
                        .control
                        .as_deref()
                        .map(|c| socket_addr("--control", c))
                        .transpose()?,
                    tls,
                    client_ip: f.client_ip.clone(),
                    key: key(&f)?,
                    max_capacity: number("--max", f.max.as_ref(), 1024)?,
                    timeouts: Timeouts::default(),
                    verbose,
                },
                mode,
            ))
        }
        "client" => {
            for (present, flag) in [
                (f.public.is_some(), "--public"),
                (f.cert.is_some(), "--cert"),
                (f.key.is_some(), "--key"),
                (f.client_ip.is_some(), "--client-ip"),
            ] {
                forbid(present, flag, "is a server option")?;
            }
            let target = f.target.clone().ok_or("--target is required")?;
            tunnel::split_host_port(&target).map_err(|e| format!("--target: {e}"))?;
            tunnel::split_host_port(&tunnel).map_err(|e| format!("--tunnel: {e}"))?;
            if let Some(c) = &f.control {
                tunnel::split_host_port(c).map_err(|e| format!("--control: {e}"))?;
            }
            forbid(
                f.ca.is_some() && mode != TlsMode::Verified,
                "--ca",
                "needs --tls 2",
            )?;
            forbid(
                f.pin.is_some() && mode != TlsMode::SelfSigned,
                "--pin",
                "needs --tls 1",
            )?;
            let pin = f
                .pin
                .as_deref()
                .map(|p| p.parse::<Fingerprint>())
                .transpose()
                .map_err(|e| format!("--pin: {e}"))?;
            let min = number("--min", f.min.as_ref(), 64)?;
            let max = number("--max", f.max.as_ref(), 1024)?;
            if min > max {
                return Err(format!("--min {min} is above --max {max}"));
            }
            Ok(Cmd::Client(ClientConfig {
                tunnel,
                control: f.control.clone(),
                target,
                mode,
                hostname: f.hostname.clone(),
                ca: f.ca.clone(),
                pin,
                min,
                max,
                parallelism: 8,
                key: key(&f)?,
                timeouts: Timeouts::default(),
                verbose,
            }))
        }
        other => Err(format!("unknown side `{other}`: say `server` or `client`")),
    }
}

fn describe(mode: TlsMode) -> &'static str {
    match mode {
        TlsMode::Off => "0 (plain)",
        TlsMode::SelfSigned => "1 (self-signed, not verified)",
        TlsMode::Verified => "2 (verified)",
    }
}

fn warn_default_key(has_key: bool) {
    if !has_key {
        eprintln!(
            "warning: no --tunnel-key: using the default key derived from the tunnel port. \
             Anyone who knows the port can compute it; set --tunnel-key on both sides \
             in a real deployment."
        );
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cmd = match parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tunnel: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let res = match cmd {
        Cmd::Help => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Cmd::Server(cfg, mode) => server(cfg, mode).await,
        Cmd::Client(cfg) => client(cfg).await,
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tunnel: {e}");
            ExitCode::from(1)
        }
    }
}

async fn server(cfg: ServerConfig, mode: TlsMode) -> Result<(), tunnel::BoxError> {
    warn_default_key(cfg.key.is_some());
    let fingerprint = cfg.tls.as_ref().map(ServerTls::fingerprint);
    let s = tunnel::start_server(cfg).await?;
    println!("tunnel server: TLS mode {}", describe(mode));
    println!("  pool (tunnel) {}", s.tunnel_addr());
    println!("  control       {}", s.control_addr());
    println!("  public        {}", s.public_addr());
    if let Some(fp) = fingerprint {
        let hint = if mode == TlsMode::SelfSigned {
            "  (clients may --pin it)"
        } else {
            ""
        };
        println!("  certificate   sha256 {fp}{hint}");
    }
    println!("waiting for the client's control connection; Ctrl-C stops");
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = every.tick() => {
                let st = s.stats();
                println!(
                    "status: control {}  users {}  relayed {}  failed {}  pool idle {}  \
                     up {} B  down {} B",
                    if s.control_up() { "up" } else { "down" },
                    st.users, st.relayed, st.failed, s.pool().active(), st.bytes_up, st.bytes_down
                );
            }
        }
    }
    println!("stopping");
    s.shutdown().await;
    Ok(())
}

async fn client(cfg: ClientConfig) -> Result<(), tunnel::BoxError> {
    warn_default_key(cfg.key.is_some());
    let control = match &cfg.control {
        Some(c) => c.clone(),
        None => tunnel::default_control(&cfg.tunnel)?,
    };
    println!(
        "tunnel client: TLS mode {}, pool -> {}, control -> {control}, target {}",
        describe(cfg.mode),
        cfg.tunnel,
        cfg.target
    );
    let c = tunnel::start_client(cfg).await?;
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.tick().await;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = every.tick() => {
                let st = c.stats();
                let pool = c.pool();
                println!(
                    "status: control {}  sessions {}  failed {}  pool idle {}/{}  interval {:?}",
                    if c.control_up() { "up" } else { "down" },
                    st.relayed, st.failed, pool.active(), pool.capacity(), pool.interval()
                );
            }
        }
    }
    println!("stopping");
    c.shutdown().await;
    Ok(())
}
