//! The `tunnel` command line: parses the arguments, runs a side until Ctrl-C, and
//! says what failed.

use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{Cli, ClientArgs, KeySource, ServerArgs, Side, KEY_ENV};
use crate::logs::{self, LogFormat};
use crate::state::Origin;
use crate::{limits, BoxError};
use clap::Parser;
use tracing::{error, info, warn};

mod reload;

/// Tells the operator something on stderr: a plain line when logs are text, a log
/// event when they are JSON (so that every line of stderr parses).
fn say(format: LogFormat, level: tracing::Level, msg: &str) {
    match (format, level) {
        (LogFormat::Text, _) => eprintln!("{msg}"),
        (LogFormat::Json, tracing::Level::ERROR) => error!("{msg}"),
        (LogFormat::Json, _) => warn!("{msg}"),
    }
}

/// Runs `tunnel server ...` or `tunnel client ...` from the process's arguments (see
/// `tunnel --help` and `TUNNEL.md`): the `tunnel` binary is this function.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    logs::init(format);
    match &cli.side {
        Side::Check(a) => return check(&a.file),
        Side::Reload(a) => {
            return match reload::signal(&a.pid_file) {
                Ok(pid) => {
                    println!("asked process {pid} to reload; it logs the outcome");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    say(format, tracing::Level::ERROR, &format!("tunnel: {e}"));
                    ExitCode::from(1)
                }
            };
        }
        Side::Server(_) | Side::Client(_) => {}
    }
    // The key must not linger in the environment of anything this process starts:
    // taken out before any thread exists.
    let env_key = std::env::var(KEY_ENV).ok();
    std::env::remove_var(KEY_ENV);
    match limits::raise_nofile() {
        Ok(Some(n)) => info!("descriptor limit {n}"),
        Ok(None) => info!("descriptor limit: unlimited"),
        Err(e) => say(
            format,
            tracing::Level::WARN,
            &format!("warning: cannot raise the descriptor limit: {e}"),
        ),
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            say(format, tracing::Level::ERROR, &format!("tunnel: {e}"));
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async {
        let mut metrics = None;
        if let Some(addr) = cli.metrics {
            // Before any pool is built: pools register their metrics when they are.
            let (addr, task) = crate::metrics::serve(addr).await?;
            info!(%addr, "metrics served for Prometheus");
            metrics = Some(task);
        }
        let figures = metrics.is_some();
        // The metrics task ends only by a panic: the process ends with it.
        let metrics_died = async {
            match metrics {
                Some(task) => match task.await {
                    Err(e) => format!("the metrics listener died: {e}"),
                    Ok(()) => "the metrics listener ended".to_owned(),
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            why = metrics_died => Err(why.into()),
            r = async {
                match cli.side {
                    Side::Server(a) => server(a, env_key, format, figures).await,
                    Side::Client(a) => client(a, env_key, format, figures).await,
                    Side::Check(_) | Side::Reload(_) => Ok(()),
                }
            } => r,
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            say(format, tracing::Level::ERROR, &format!("tunnel: {e}"));
            ExitCode::from(1)
        }
    }
}

/// `tunnel check FILE`: every mistake with its line and field, or what the file holds.
fn check(path: &std::path::Path) -> ExitCode {
    match crate::config::file::read(path) {
        Err(e) => {
            eprintln!("tunnel: {e}");
            ExitCode::from(1)
        }
        Ok(f) => {
            let names = |v: Vec<&str>| {
                if v.is_empty() {
                    "no services".to_owned()
                } else {
                    v.join(", ")
                }
            };
            print!("{}: ok", path.display());
            if let Some(s) = &f.server {
                print!(
                    "; server: {}",
                    names(s.services.iter().map(|s| s.name.as_str()).collect())
                );
            }
            if let Some(c) = &f.client {
                print!(
                    "; client: {}",
                    names(c.services.iter().map(|s| s.name.as_str()).collect())
                );
            }
            println!();
            ExitCode::SUCCESS
        }
    }
}

/// The side's `tunnel_*` series, kept current while `figures` (`--metrics`) is on.
async fn follow(figures: bool, run: impl std::future::Future<Output = std::convert::Infallible>) {
    if figures {
        match run.await {}
    }
    std::future::pending().await
}

async fn server(
    args: ServerArgs,
    env_key: Option<String>,
    format: LogFormat,
    figures: bool,
) -> Result<(), BoxError> {
    let default_state = crate::cli::default_state_dir(|k| std::env::var(k).ok());
    let setup = args.setup(env_key, default_state)?;
    for w in &setup.warnings {
        say(format, tracing::Level::WARN, w);
    }
    let fingerprint = setup.config.tls.as_ref().map(|t| t.fingerprint());
    let key_hex = setup.config.key.to_hex();
    let mut running = args.file()?;
    let mode = running
        .settings
        .tls
        .unwrap_or(pool_tls::TlsMode::SelfSigned);
    let s = crate::start_server(setup.config).await?;
    let pid_file = reload::PidFile::write(args.file_args.pid_file.as_deref())?;
    println!("tunnel server: TLS mode {mode}");
    println!("  pool (tunnel) {}", s.tunnel_addr());
    println!("  control       {}", s.control_addr());
    for (name, addr) in s.services() {
        if name == crate::config::DEFAULT_SERVICE {
            println!("  public        {addr}");
        } else {
            println!("  public        {addr} (service {name})");
        }
    }
    if let (Some(fp), Some(note)) = (fingerprint, &setup.cert_note) {
        println!("  certificate   sha256 {fp} ({note}; clients may --pin it)");
    }
    match &setup.key_source {
        KeySource::Generated => println!(
            "  tunnel key    generated for this run; give it to the client in a file \
             (--tunnel-key-file) or ${KEY_ENV}:\n{key_hex}"
        ),
        KeySource::StateDir(path, Origin::Created) => println!(
            "  tunnel key    generated and kept in {}; give it to the client in a file \
             (--tunnel-key-file) or ${KEY_ENV}:\n{key_hex}",
            path.display()
        ),
        KeySource::StateDir(path, Origin::Loaded) => {
            println!("  tunnel key    from {}", path.display())
        }
        KeySource::File(path) => println!("  tunnel key    from {}", path.display()),
        KeySource::Env => println!("  tunnel key    from ${KEY_ENV}"),
    }
    println!("waiting for the client's control connection; Ctrl-C stops");
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.tick().await;
    let mut figures = Box::pin(follow(figures, crate::metrics::follow_server(&s)));
    let mut hup = reload::hangups()?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => reload::server(&args, &mut running, &s).await,
            () = &mut figures => {}
            // A task that died takes the process down, never half of it.
            why = s.failed() => return Err(why.into()),
            _ = every.tick() => {
                let st = s.stats();
                info!(
                    "status: control {}  users {}  relayed {}  failed {}  refused {}  \
                     evicted {}  pool idle {}  up {} B  down {} B  control refused {} evicted {}",
                    if s.control_up() { "up" } else { "down" },
                    st.users, st.relayed, st.failed, st.users_refused + st.users_refused_source,
                    st.users_evicted, s.pool().active(), st.bytes_up, st.bytes_down,
                    st.control_refused, st.control_evicted
                );
            }
        }
    }
    println!("stopping");
    drop(figures);
    drop(pid_file);
    s.shutdown().await;
    Ok(())
}

async fn client(
    args: ClientArgs,
    env_key: Option<String>,
    format: LogFormat,
    figures: bool,
) -> Result<(), BoxError> {
    let crate::cli::ClientSetup {
        config: cfg,
        key_source: source,
        warnings,
    } = args.setup(env_key)?;
    for w in &warnings {
        say(format, tracing::Level::WARN, w);
    }
    let control = match &cfg.control {
        Some(c) => c.clone(),
        None => crate::protocol::default_control(&cfg.tunnel)?,
    };
    let from = match source {
        KeySource::File(p) => p.display().to_string(),
        KeySource::Env => format!("${KEY_ENV}"),
        _ => "the state directory".into(),
    };
    let targets: Vec<String> = cfg
        .services
        .iter()
        .map(|s| {
            if s.name == crate::config::DEFAULT_SERVICE {
                format!("target {}", s.target)
            } else {
                format!("service {} -> {}", s.name, s.target)
            }
        })
        .collect();
    println!(
        "tunnel client: TLS mode {}, pool -> {}, control -> {control}, {}, key from {from}",
        cfg.mode,
        cfg.tunnel,
        targets.join(", ")
    );
    let c = crate::start_client(cfg).await?;
    let pid_file = reload::PidFile::write(args.file_args.pid_file.as_deref())?;
    let mut hup = reload::hangups()?;
    let mut running = args.file()?;
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.tick().await;
    let mut figures = Box::pin(follow(figures, crate::metrics::follow_client(&c)));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => reload::client(&args, &mut running, &c),
            why = c.failed() => return Err(why.into()),
            () = &mut figures => {}
            _ = every.tick() => {
                let st = c.stats();
                let pool = c.pool();
                info!(
                    "status: control {}  sessions {}  failed {}  pool idle {}/{}",
                    if c.control_up() { "up" } else { "down" },
                    st.relayed, st.failed, pool.active(), pool.capacity()
                );
            }
        }
    }
    println!("stopping");
    drop(figures);
    drop(pid_file);
    c.shutdown().await;
    Ok(())
}
