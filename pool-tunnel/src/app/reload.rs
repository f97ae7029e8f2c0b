//! Reading the configuration file again while a side runs: on SIGHUP, or when `tunnel
//! reload --pid-file PATH` sends one. Only the services change: a file whose side's
//! other settings (addresses, TLS, key, pool) differ from the running ones is refused
//! with the fields to restart for, and so is a file with a mistake; the running
//! configuration stays in both cases, and the log says why.

use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

use crate::cli::{ClientArgs, ServerArgs};
use crate::config::file::{self, ClientFile, ServerFile};
use crate::{BoxError, ClientHandle, ServerHandle};

/// A pid file, removed when dropped (a clean exit).
pub(super) struct PidFile(Option<PathBuf>);

impl PidFile {
    /// Writes this process's id to `path`, if given.
    pub(super) fn write(path: Option<&Path>) -> Result<Self, BoxError> {
        if let Some(p) = path {
            std::fs::write(p, format!("{}\n", std::process::id()))
                .map_err(|e| format!("--pid-file {}: {e}", p.display()))?;
        }
        Ok(Self(path.map(Path::to_owned)))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The SIGHUPs this process receives.
pub(super) fn hangups() -> Result<tokio::signal::unix::Signal, BoxError> {
    Ok(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::hangup(),
    )?)
}

/// Sends SIGHUP to the process whose id `pid_file` holds, after checking that it runs
/// this same program (a stale pid file must not signal a stranger); its id.
pub(super) fn signal(pid_file: &Path) -> Result<i32, BoxError> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("--pid-file {}: {e}", pid_file.display()))?;
    let raw: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("--pid-file {}: not a process id", pid_file.display()))?;
    let pid = rustix::process::Pid::from_raw(raw)
        .filter(|_| raw > 0)
        .ok_or_else(|| format!("--pid-file {}: not a process id", pid_file.display()))?;
    let theirs = std::fs::read_link(format!("/proc/{raw}/exe"))
        .map_err(|_| format!("process {raw} (from {}) is not running", pid_file.display()))?;
    let ours = std::env::current_exe()?;
    if theirs != ours {
        return Err(format!(
            "process {raw} (from {}) runs {}, not {}: a stale pid file?",
            pid_file.display(),
            theirs.display(),
            ours.display()
        )
        .into());
    }
    rustix::process::kill_process(pid, rustix::process::Signal::HUP)
        .map_err(|e| format!("process {raw}: {e}"))?;
    Ok(raw)
}

/// The file again, its side's section, or why not.
fn reread<S>(
    config: Option<&Path>,
    side: &str,
    section: impl FnOnce(file::FileConfig) -> Option<S>,
) -> Result<S, String> {
    let Some(path) = config else {
        return Err("started without --config: nothing to reload".into());
    };
    let f = file::read(path).map_err(|e| e.to_string())?;
    section(f).ok_or_else(|| format!("{}: no [{side}] section", path.display()))
}

/// Reloads the server's services from its file; logs the outcome.
pub(super) async fn server(args: &ServerArgs, running: &mut ServerFile, s: &ServerHandle) {
    let new = match reread(args.file_args.config.as_deref(), "server", |f| f.server) {
        Ok(n) => n,
        Err(e) => return refused(&e),
    };
    if new.settings != running.settings {
        return refused("the [server] settings beside the services changed: restart to apply them");
    }
    let services = match crate::setup::server_services(&new) {
        Ok(v) => v,
        Err(e) => return refused(&e.to_string()),
    };
    match s.reload(services).await {
        Ok(r) => {
            info!("reload: {r}");
            *running = new;
        }
        Err(e) => refused(&e.to_string()),
    }
}

/// Reloads the client's services from its file; logs the outcome.
pub(super) fn client(args: &ClientArgs, running: &mut ClientFile, c: &ClientHandle) {
    let new = match reread(args.file_args.config.as_deref(), "client", |f| f.client) {
        Ok(n) => n,
        Err(e) => return refused(&e),
    };
    if new.settings != running.settings {
        return refused("the [client] settings beside the services changed: restart to apply them");
    }
    let services = match crate::setup::client_services(&new) {
        Ok(v) => v,
        Err(e) => return refused(&e.to_string()),
    };
    match c.reload(services) {
        Ok(r) => {
            info!("reload: {r}");
            *running = new;
        }
        Err(e) => refused(&e.to_string()),
    }
}

fn refused(why: &str) {
    if why.contains("nothing to reload") {
        warn!("reload: {why}");
    } else {
        // One log line, whatever the number of mistakes.
        let why = why.replace("\n  ", "; ");
        error!("reload refused, the running configuration stays: {why}");
    }
}
