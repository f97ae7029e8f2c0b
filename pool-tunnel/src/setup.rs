//! From settings (a configuration file's side, or the flags in the same shape) to a
//! side's configuration: the checks both share, the key and the certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pool_tls::{ServerTls, TlsMode, TunnelKey};

use crate::config::file::{
    ClientFile, ClientServiceSettings, Problem, ServerFile, ServerServiceSettings,
};
use crate::config::{
    self, CandidateLimits, ClientConfig, ClientService, PerSource, RelayLimits, ServerConfig,
    ServerService, Timeouts,
};
use crate::state::{self, Origin};
use crate::BoxError;

/// The environment variable that may hold the tunnel key.
pub(crate) const KEY_ENV: &str = "POOL_TUNNEL_KEY";

/// The first problem as an error, naming the option as a flag (`--max-sessions`)
/// and, for a service other than the flags' one, the service.
fn first(problems: Vec<Problem>, service: Option<&str>) -> Result<(), BoxError> {
    let Some(p) = problems.into_iter().next() else {
        return Ok(());
    };
    let flag = format!("--{}", p.field.replace('_', "-"));
    Err(match service {
        Some(s) if s != config::DEFAULT_SERVICE => {
            format!("service {s}: {}: {}", p.field, p.message)
        }
        _ => format!("{flag}: {}", p.message),
    }
    .into())
}

fn relay(idle: Option<u64>, half_close: Option<u64>) -> RelayLimits {
    RelayLimits {
        idle: idle.map_or(config::DEFAULT_IDLE, Duration::from_secs),
        half_close: half_close.map_or(config::DEFAULT_HALF_CLOSE, Duration::from_secs),
    }
}

fn usize_or(v: Option<u64>, default: usize) -> usize {
    v.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
}

/// A server service from its settings (checked: see [`ServerServiceSettings::problems`]).
pub(crate) fn server_service(s: &ServerServiceSettings) -> Result<ServerService, BoxError> {
    first(s.problems(), Some(&s.name))?;
    let public = s.public.ok_or("public: missing")?;
    let mut svc = ServerService::new(s.name.clone(), public);
    svc.protocol = s.protocol.unwrap_or_default();
    svc.max_sessions = usize_or(s.max_sessions, config::DEFAULT_MAX_SESSIONS);
    svc.per_source = PerSource {
        sessions: usize_or(
            s.max_sessions_per_source,
            config::DEFAULT_CONCURRENT_PER_SOURCE,
        ),
        new_per_s: s
            .new_sessions_per_source
            .map_or(config::DEFAULT_RATE_PER_SOURCE, |v| v as f64),
    };
    svc.relay = relay(s.idle_timeout, s.half_close_timeout);
    svc.quiet = config::DEFAULT_QUIET.min(svc.relay.idle);
    Ok(svc)
}

/// The server's services from their settings.
pub(crate) fn server_services(file: &ServerFile) -> Result<Vec<ServerService>, BoxError> {
    file.services.iter().map(server_service).collect()
}

/// A client service from its settings.
pub(crate) fn client_service(s: &ClientServiceSettings) -> Result<ClientService, BoxError> {
    first(s.problems(), Some(&s.name))?;
    let mut svc = ClientService::new(s.name.clone(), s.target.clone().unwrap_or_default());
    svc.protocol = s.protocol.unwrap_or_default();
    svc.proxy_protocol = s.proxy_protocol;
    svc.relay = relay(s.idle_timeout, s.half_close_timeout);
    Ok(svc)
}

/// The client's services from their settings.
pub(crate) fn client_services(file: &ClientFile) -> Result<Vec<ClientService>, BoxError> {
    file.services.iter().map(client_service).collect()
}

/// Where the key in use came from, to tell the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// `--tunnel-key-file`.
    File(PathBuf),
    /// `$POOL_TUNNEL_KEY`.
    Env,
    /// The state directory's key file.
    StateDir(PathBuf, Origin),
    /// Generated for this run only.
    Generated,
}

/// The key given by the user (file or environment; at most one), if any. There is no
/// way to give it on the command line, where every local user could read it.
pub(crate) fn given_key(
    file: Option<&Path>,
    env: Option<String>,
) -> Result<Option<(TunnelKey, KeySource)>, BoxError> {
    let env = env.filter(|v| !v.is_empty());
    if file.is_some() && env.is_some() {
        return Err(format!(
            "the tunnel key is given twice (--tunnel-key-file and ${KEY_ENV}): give one"
        )
        .into());
    }
    if let Some(path) = file {
        state::check_private_file(path).map_err(|e| format!("--tunnel-key-file {e}"))?;
        let key = state::read_key_file(path).map_err(|e| format!("--tunnel-key-file {e}"))?;
        return Ok(Some((key, KeySource::File(path.to_owned()))));
    }
    if let Some(v) = env {
        let key = TunnelKey::parse(&v).map_err(|e| format!("${KEY_ENV}: {e}"))?;
        return Ok(Some((key, KeySource::Env)));
    }
    Ok(None)
}

/// A server configuration, with the key's and the certificate's origins to report.
#[derive(Debug)]
pub(crate) struct ServerSetup {
    /// The configuration.
    pub config: ServerConfig,
    /// Where the key came from.
    pub key_source: KeySource,
    /// Warnings to print before starting.
    pub warnings: Vec<String>,
    /// A note on the certificate (mode 1 and 2).
    pub cert_note: Option<String>,
}

/// The words a plaintext tunnel must print, once, so that nobody runs one by accident.
pub(crate) const PLAINTEXT_WARNING: &str = "warning: --tls 0 --insecure-plaintext: ids, the \
    session control and every user's bytes cross the network in clear; anyone on the path \
    can read them, and hand a pooled connection a session of their own; use --tls 1";

fn plaintext_warning(mode: TlsMode, warnings: &mut Vec<String>) {
    if mode == TlsMode::Off {
        warnings.push(PLAINTEXT_WARNING.into());
    }
}

/// Where the server keeps its state when `--state-dir` is not given: systemd's
/// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/pool-tunnel`, else
/// `$HOME/.local/state/pool-tunnel`; `None` when none of them is set.
pub(crate) fn default_state_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = set("STATE_DIRECTORY") {
        // systemd may give several, separated by ':'; the first is ours.
        let first = d.to_string_lossy().split(':').next().map(PathBuf::from);
        return first;
    }
    set("XDG_STATE_HOME")
        .map(|d| d.join("pool-tunnel"))
        .or_else(|| set("HOME").map(|h| h.join(".local/state/pool-tunnel")))
}

/// Checks a server side's settings and reads or makes the key and certificate;
/// `default_state` is the state directory to use when none is given
/// ([`default_state_dir`]).
pub(crate) fn server(
    file: &ServerFile,
    env_key: Option<String>,
    default_state: Option<PathBuf>,
) -> Result<ServerSetup, BoxError> {
    let s = &file.settings;
    first(s.problems(), None)?;
    let services = server_services(file)?;
    let mut warnings = Vec::new();
    let mode = s.tls.unwrap_or(TlsMode::SelfSigned);
    plaintext_warning(mode, &mut warnings);
    let state_dir = s.state_dir.clone().or(default_state);
    let (key, key_source) = match given_key(s.tunnel_key_file.as_deref(), env_key)? {
        Some(k) => k,
        None => match &state_dir {
            Some(dir) => {
                let (k, origin, path) = state::tunnel_key(dir)?;
                (k, KeySource::StateDir(path, origin))
            }
            None => (TunnelKey::generate()?, KeySource::Generated),
        },
    };
    let hostname = s
        .hostname
        .clone()
        .unwrap_or_else(|| config::DEFAULT_HOSTNAME.to_owned());
    let (tls, cert_note) = match (mode, &s.cert, &s.key) {
        (TlsMode::Off, _, _) => (None, None),
        (_, Some(c), Some(k)) => {
            let tls = ServerTls::from_pem_files(c, k)?;
            (Some(tls), Some(format!("from {}", c.display())))
        }
        (TlsMode::SelfSigned, _, _) => match &state_dir {
            Some(dir) => {
                let (tls, origin) = state::certificate(dir, &hostname)?;
                let how = match origin {
                    Origin::Loaded => "reused from",
                    Origin::Created => "generated and kept in",
                };
                (Some(tls), Some(format!("{how} {}", dir.display())))
            }
            None => {
                warnings.push(
                    "warning: --tls 1 with no state directory (no --state-dir, and none of \
                     $STATE_DIRECTORY, $XDG_STATE_HOME, $HOME is set): the certificate is \
                     new at every start, so a client's --pin breaks on restart"
                        .into(),
                );
                let tls = ServerTls::self_signed([hostname.clone()])?;
                (Some(tls), Some("generated for this run only".into()))
            }
        },
        _ => return Err("--tls 2 needs --cert FILE and --key FILE".into()),
    };
    let tunnel = s.tunnel.ok_or("--tunnel: missing")?;
    Ok(ServerSetup {
        config: ServerConfig {
            tunnel,
            transport: s.transport.unwrap_or_default(),
            control: s.control,
            tls,
            client_ip: s.client_ip.clone(),
            key,
            max_capacity: usize_or(s.max, config::SERVER_MAX_CAPACITY),
            candidates: CandidateLimits {
                total: usize_or(s.max_candidates, config::DEFAULT_CANDIDATES),
                per_source: usize_or(
                    s.max_candidates_per_source,
                    config::DEFAULT_CANDIDATES_PER_SOURCE,
                ),
            },
            timeouts: Timeouts::default(),
            pool_handshake: config::DEFAULT_POOL_HANDSHAKE,
            services,
        },
        key_source,
        warnings,
        cert_note,
    })
}

/// A client configuration, with the key's origin to report.
#[derive(Debug)]
pub(crate) struct ClientSetup {
    pub(crate) config: ClientConfig,
    /// Where the key came from.
    pub(crate) key_source: KeySource,
    /// Warnings to print before starting.
    pub(crate) warnings: Vec<String>,
}

/// Checks a client side's settings and reads the key; also the warnings to print.
pub(crate) fn client(file: &ClientFile, env_key: Option<String>) -> Result<ClientSetup, BoxError> {
    let s = &file.settings;
    // The key first: a key file others can read is the mistake to hear of first.
    let given = given_key(s.tunnel_key_file.as_deref(), env_key)?;
    first(s.problems(), None)?;
    let services = client_services(file)?;
    let mut warnings = Vec::new();
    let mode = s.tls.unwrap_or(TlsMode::SelfSigned);
    plaintext_warning(mode, &mut warnings);
    let Some((key, source)) = given else {
        return Err(format!(
            "the client needs the server's tunnel key: --tunnel-key-file PATH or \
             ${KEY_ENV} (the server prints it when it generates one)"
        )
        .into());
    };
    if mode == TlsMode::SelfSigned && s.pin.is_none() {
        warnings.push(
            "warning: --tls 1 without --pin: the server's certificate is not checked. A \
             relay that terminates TLS still cannot take over the tunnel (the key proof is \
             bound to the TLS session), but it sees the key's proofs, which an offline \
             guess of a weak passphrase could use; give --pin with the fingerprint the \
             server prints"
                .into(),
        );
    }
    let pin = match &s.pin {
        Some(p) => Some(p.parse().map_err(|e| format!("--pin: {e}"))?),
        None => None,
    };
    let mut cfg = ClientConfig::new(
        s.tunnel.clone().ok_or("--tunnel: missing")?,
        s.control.clone(),
        String::new(),
        key,
    );
    cfg.services = services;
    cfg.transport = s.transport.unwrap_or_default();
    cfg.mode = mode;
    cfg.hostname = s.hostname.clone();
    cfg.ca = s.ca.clone();
    cfg.pin = pin;
    cfg.min = usize_or(s.min, config::CLIENT_MIN);
    cfg.max = usize_or(s.max, config::CLIENT_MAX);
    Ok(ClientSetup {
        config: cfg,
        key_source: source,
        warnings,
    })
}
