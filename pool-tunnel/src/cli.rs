//! The command line: `tunnel server ...` and `tunnel client ...`, and where the key
//! comes from.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pool_tls::{Fingerprint, ServerTls, TlsMode, TunnelKey};

use crate::limits::{COUNT_LIMIT, SECS_LIMIT};
use crate::relay::RelayLimits;
use crate::state::{self, Origin};
use crate::{BoxError, ClientConfig, ServerConfig, Timeouts};

/// Handshakes under way that the server pool admits at once (strangers included).
pub const HANDSHAKE_SLOTS: usize = 4096;

/// The client's `--min` default.
pub const CLIENT_MIN: u64 = 64;
/// The client's `--max` default.
pub const CLIENT_MAX: u64 = 1024;

/// The server's `--max` help: it names the client's default from its constant.
fn server_max_help() -> String {
    format!(
        "Server pool capacity: the authenticated idle connections it keeps. Keep it at \
         least the client's --max (its default is {CLIENT_MAX}, its largest useful value \
         this). Handshakes under way do not count: they have their own {HANDSHAKE_SLOTS} \
         slots, so strangers holding silent handshakes never make the pool refuse the \
         client as \"full\""
    )
}

/// The environment variable that may hold the tunnel key.
pub const KEY_ENV: &str = "POOL_TUNNEL_KEY";

/// A reverse tunnel on the pool: the server side on the public machine, the client side
/// next to the service. Logs go to stderr, filtered by `RUST_LOG` (default `info`).
#[derive(Debug, Parser)]
#[command(name = "tunnel", version, propagate_version = true)]
pub struct Cli {
    /// Which side to run.
    #[command(subcommand)]
    pub side: Side,
    /// Serve metrics for Prometheus at http://ADDR/: the pool's (every counter and
    /// gauge of its stats, and the get wait histogram) and the tunnel's own
    /// (`tunnel_*`: users, sessions, bytes, control). Off by default. Bind loopback (a
    /// warning is logged otherwise); at most 16 connections at once, 5 s each.
    #[arg(long, global = true, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// How log lines (on stderr) are written: `text`, coloured only when stderr is a
    /// terminal and NO_COLOR is unset, or `json`, one object a line.
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text")]
    pub log_format: crate::logs::LogFormat,
}

/// The two sides.
#[derive(Debug, Subcommand)]
pub enum Side {
    /// The public side: the tunnel (pool) port, the control port, the public port.
    ///
    /// Without a key (--tunnel-key-file, $POOL_TUNNEL_KEY, or the state directory) it
    /// generates a random 256-bit key and prints it once.
    Server(ServerArgs),
    /// The private side: dials the server's tunnel and control ports and forwards
    /// each user to the target. Requires the server's tunnel key.
    Client(ClientArgs),
}

/// Where the tunnel key comes from (one of them).
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Read the tunnel key from this file: 64 hex digits as the server prints them,
    /// or a passphrase of at least 16 characters. Also: $POOL_TUNNEL_KEY.
    #[arg(long, value_name = "PATH")]
    pub tunnel_key_file: Option<PathBuf>,
}

/// Relay deadlines, both sides.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Close a session when nothing moved either way for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=SECS_LIMIT))]
    pub idle_timeout: u64,
    /// Reset a session when one direction has ended and the other has moved nothing
    /// for this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=SECS_LIMIT))]
    pub half_close_timeout: u64,
}

impl RelayArgs {
    fn limits(&self) -> RelayLimits {
        RelayLimits {
            idle: Duration::from_secs(self.idle_timeout),
            half_close: Duration::from_secs(self.half_close_timeout),
        }
    }
}

/// `tunnel server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address the pool listens on (clients dial it).
    #[arg(long, value_name = "ADDR")]
    pub tunnel: SocketAddr,
    /// Address users connect to.
    #[arg(long, value_name = "ADDR")]
    pub public: SocketAddr,
    /// Control address [default: tunnel port + 1].
    #[arg(long, value_name = "ADDR")]
    pub control: Option<SocketAddr>,
    /// 1 TLS, self-signed, its certificate kept in the state directory (clients may
    /// --pin it); 2 TLS, verified; 0 plain, only with --insecure-plaintext.
    #[arg(long, value_name = "0|1|2", default_value = "1")]
    pub tls: TlsMode,
    /// Allow --tls 0. In plaintext anyone on the path reads every id and every session
    /// and can inject into them; the tunnel key still keeps strangers out of the pool.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// PEM certificate chain (mode 2; mode 1: a stable certificate to pin).
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Keep the generated tunnel key and (mode 1) certificate here, and reuse them on
    /// restart, so that clients need no new key or --pin [default: $STATE_DIRECTORY,
    /// else $XDG_STATE_HOME/pool-tunnel, else ~/.local/state/pool-tunnel]. Refused when
    /// another user owns it or can write to it, or can read the key files in it.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Name on the self-signed certificate (mode 1).
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub hostname: String,
    /// Allowed client addresses/CIDRs, comma separated (pool and control).
    #[arg(long, value_name = "IPS")]
    pub client_ip: Option<String>,
    /// Server pool capacity (the help text is `server_max_help`'s, which names the
    /// client's default from its constant).
    #[arg(long, value_name = "N", help = server_max_help(), default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max: u64,
    /// User sessions at once. At the cap, a user from a source (a /24, a /64) holding
    /// fewer sessions than the source holding the most takes that source's newest
    /// session (reset); other users are closed at once.
    #[arg(long, value_name = "N", default_value_t = crate::server::DEFAULT_MAX_SESSIONS as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max_sessions: u64,
    /// User sessions at once from one source (a /24, a /64) while the public port is
    /// contended (three quarters of --max-sessions in use, or the cap reached in the
    /// last second); more are closed at once. A source alone may hold more.
    #[arg(long, value_name = "N", default_value_t = crate::sources::DEFAULT_CONCURRENT as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max_sessions_per_source: u64,
    /// New user sessions a second from one source (a /24, a /64), with bursts of twice
    /// that, while the public port is contended; more are closed at once, before they
    /// cost a pooled connection. A source alone may start more.
    #[arg(long, value_name = "N", default_value_t = crate::sources::DEFAULT_RATE as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub new_sessions_per_source: u64,
    /// Control connections at once that have not sent their admission token yet. When
    /// full, the source holding the most loses its oldest: keep it above the number of
    /// sources a flood may have.
    #[arg(long, value_name = "N", default_value_t = crate::server::DEFAULT_CANDIDATES as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max_candidates: u64,
    /// The same from one source (a /24, a /64); over it, the source's oldest goes.
    #[arg(long, value_name = "N", default_value_t = crate::server::DEFAULT_CANDIDATES_PER_SOURCE as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max_candidates_per_source: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub key_args: KeyArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub relay: RelayArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub udp: crate::udp::UdpArgs,
}

/// `tunnel client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The server's tunnel address.
    #[arg(long, value_name = "HOST:PORT")]
    pub tunnel: String,
    /// The service behind the tunnel.
    #[arg(long, value_name = "HOST:PORT")]
    pub target: String,
    /// The server's control address [default: tunnel port + 1].
    #[arg(long, value_name = "HOST:PORT")]
    pub control: Option<String>,
    /// 1 TLS, self-signed (give --pin); 2 TLS, verified; 0 plain, only with
    /// --insecure-plaintext.
    #[arg(long, value_name = "0|1|2", default_value = "1")]
    pub tls: TlsMode,
    /// Allow --tls 0: anyone on the path then reads and can inject into the sessions.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// TLS server name [default: the tunnel host].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// PEM CA file to trust (mode 2) instead of the web roots.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// SHA-256 fingerprint of the server certificate (mode 1), as the server prints it.
    #[arg(long, value_name = "SHA256")]
    pub pin: Option<Fingerprint>,
    /// Client pool minimum capacity.
    #[arg(long, value_name = "N", default_value_t = CLIENT_MIN, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub min: u64,
    /// Client pool maximum capacity.
    #[arg(long, value_name = "N", default_value_t = CLIENT_MAX, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub key_args: KeyArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub relay: RelayArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub udp: crate::udp::UdpArgs,
}

/// Where the key in use came from, to tell the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
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
pub fn given_key(
    args: &KeyArgs,
    env: Option<String>,
) -> Result<Option<(TunnelKey, KeySource)>, BoxError> {
    let env = env.filter(|v| !v.is_empty());
    if args.tunnel_key_file.is_some() && env.is_some() {
        return Err(format!(
            "the tunnel key is given twice (--tunnel-key-file and ${KEY_ENV}): give one"
        )
        .into());
    }
    if let Some(path) = &args.tunnel_key_file {
        state::check_private_file(path).map_err(|e| format!("--tunnel-key-file {e}"))?;
        let key = state::read_key_file(path).map_err(|e| format!("--tunnel-key-file {e}"))?;
        return Ok(Some((key, KeySource::File(path.clone()))));
    }
    if let Some(v) = env {
        let key = TunnelKey::parse(&v).map_err(|e| format!("${KEY_ENV}: {e}"))?;
        return Ok(Some((key, KeySource::Env)));
    }
    Ok(None)
}

/// A server configuration, with the key's and the certificate's origins to report.
#[derive(Debug)]
pub struct ServerSetup {
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
pub const PLAINTEXT_WARNING: &str = "warning: --tls 0 --insecure-plaintext: ids, the \
    session control and every user's bytes cross the network in clear; anyone on the path \
    can read them, and hand a pooled connection a session of their own; use --tls 1";

fn plaintext_gate(
    mode: TlsMode,
    allowed: bool,
    warnings: &mut Vec<String>,
) -> Result<(), BoxError> {
    if mode != TlsMode::Off {
        return Ok(());
    }
    if !allowed {
        return Err(
            "--tls 0 sends the session control in clear, so anyone on the path can \
             take a user's session: use --tls 1 (the default), or say --insecure-plaintext"
                .into(),
        );
    }
    warnings.push(PLAINTEXT_WARNING.into());
    Ok(())
}

/// Where the server keeps its state when `--state-dir` is not given: systemd's
/// `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/pool-tunnel`, else
/// `$HOME/.local/state/pool-tunnel`; `None` when none of them is set.
pub fn default_state_dir(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
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

impl ServerArgs {
    /// Checks the arguments and reads or makes the key and certificate; `default_state`
    /// is the state directory to use when `--state-dir` is not given
    /// ([`default_state_dir`]).
    pub fn setup(
        &self,
        env_key: Option<String>,
        default_state: Option<PathBuf>,
    ) -> Result<ServerSetup, BoxError> {
        let mut warnings = Vec::new();
        plaintext_gate(self.tls, self.insecure_plaintext, &mut warnings)?;
        let state_dir = self.state_dir.clone().or(default_state);
        let (key, key_source) = match given_key(&self.key_args, env_key)? {
            Some(k) => k,
            None => match &state_dir {
                Some(dir) => {
                    let (k, origin, path) = state::tunnel_key(dir)?;
                    (k, KeySource::StateDir(path, origin))
                }
                None => (TunnelKey::generate()?, KeySource::Generated),
            },
        };
        let (tls, cert_note) = match self.tls {
            TlsMode::Off => {
                if self.cert.is_some() {
                    return Err("--cert/--key need --tls 1 or 2".into());
                }
                (None, None)
            }
            TlsMode::SelfSigned => match (&self.cert, &state_dir) {
                (Some(c), _) => {
                    let key = self.key.as_ref().ok_or("--cert needs --key")?;
                    let tls = ServerTls::from_pem_files(c, key)?;
                    (Some(tls), Some(format!("from {}", c.display())))
                }
                (None, Some(dir)) => {
                    let (tls, origin) = state::certificate(dir, &self.hostname)?;
                    let how = match origin {
                        Origin::Loaded => "reused from",
                        Origin::Created => "generated and kept in",
                    };
                    (Some(tls), Some(format!("{how} {}", dir.display())))
                }
                (None, None) => {
                    warnings.push(
                        "warning: --tls 1 with no state directory (no --state-dir, and none of \
                         $STATE_DIRECTORY, $XDG_STATE_HOME, $HOME is set): the certificate is \
                         new at every start, so a client's --pin breaks on restart"
                            .into(),
                    );
                    let tls = ServerTls::self_signed([self.hostname.clone()])?;
                    (Some(tls), Some("generated for this run only".into()))
                }
            },
            TlsMode::Verified => {
                let (Some(c), Some(k)) = (&self.cert, &self.key) else {
                    return Err("--tls 2 needs --cert FILE and --key FILE".into());
                };
                let tls = ServerTls::from_pem_files(c, k)?;
                (Some(tls), Some(format!("from {}", c.display())))
            }
        };
        let timeouts = Timeouts::default();
        Ok(ServerSetup {
            config: ServerConfig {
                tunnel: self.tunnel,
                public: self.public,
                control: self.control,
                tls,
                client_ip: self.client_ip.clone(),
                key,
                max_capacity: self.max as usize,
                max_sessions: self.max_sessions as usize,
                per_source: crate::server::PerSource {
                    sessions: self.max_sessions_per_source as usize,
                    new_per_s: self.new_sessions_per_source as f64,
                },
                candidates: crate::server::CandidateLimits {
                    total: self.max_candidates as usize,
                    per_source: self.max_candidates_per_source as usize,
                },
                relay: self.relay.limits(),
                quiet: crate::server::DEFAULT_QUIET,
                timeouts,
                pool_handshake: crate::server::DEFAULT_POOL_HANDSHAKE,
                // The public port's limits bound the associations.
                udp: self.udp.limits(crate::udp::UdpLimits {
                    max_associations: self.max_sessions as usize,
                    per_source: self.max_sessions_per_source as usize,
                    new_per_source_per_s: u32::try_from(self.new_sessions_per_source)
                        .unwrap_or(u32::MAX),
                    ..Default::default()
                }),
            },
            key_source,
            warnings,
            cert_note,
        })
    }
}

impl ClientArgs {
    /// Checks the arguments and reads the key; also the warnings to print.
    pub fn setup(
        &self,
        env_key: Option<String>,
    ) -> Result<(ClientConfig, KeySource, Vec<String>), BoxError> {
        let mut warnings = Vec::new();
        plaintext_gate(self.tls, self.insecure_plaintext, &mut warnings)?;
        let Some((key, source)) = given_key(&self.key_args, env_key)? else {
            return Err(format!(
                "the client needs the server's tunnel key: --tunnel-key-file PATH or \
                 ${KEY_ENV} (the server prints it when it generates one)"
            )
            .into());
        };
        if self.ca.is_some() && self.tls != TlsMode::Verified {
            return Err("--ca needs --tls 2".into());
        }
        if self.pin.is_some() && self.tls != TlsMode::SelfSigned {
            return Err("--pin needs --tls 1".into());
        }
        if self.tls == TlsMode::SelfSigned && self.pin.is_none() {
            warnings.push(
                "warning: --tls 1 without --pin: the server's certificate is not checked. A \
                 relay that terminates TLS still cannot take over the tunnel (the key proof is \
                 bound to the TLS session), but it sees the key's proofs, which an offline \
                 guess of a weak passphrase could use; give --pin with the fingerprint the \
                 server prints"
                    .into(),
            );
        }
        if self.min > self.max {
            return Err(format!("--min {} is above --max {}", self.min, self.max).into());
        }
        let mut cfg = ClientConfig::new(
            self.tunnel.clone(),
            self.control.clone(),
            self.target.clone(),
            key,
        );
        cfg.mode = self.tls;
        cfg.hostname = self.hostname.clone();
        cfg.ca = self.ca.clone();
        cfg.pin = self.pin;
        cfg.min = self.min as usize;
        cfg.max = self.max as usize;
        cfg.relay = self.relay.limits();
        cfg.udp = self.udp.limits(crate::udp::UdpLimits::default());
        Ok((cfg, source, warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_key_is_given_once_and_strong() {
        let hex = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
        let none = KeyArgs {
            tunnel_key_file: None,
        };
        assert!(given_key(&none, None).unwrap().is_none());
        let (k, src) = given_key(&none, Some(hex.into())).unwrap().unwrap();
        assert_eq!((k.to_hex().as_str(), src), (hex, KeySource::Env));
        let e = given_key(&none, Some("s3cret".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short"), "{e}");
        let file = KeyArgs {
            tunnel_key_file: Some("/nonexistent/key".into()),
        };
        let e = given_key(&file, Some(hex.into())).unwrap_err().to_string();
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn the_client_requires_a_key() {
        let cli = Cli::try_parse_from([
            "tunnel",
            "client",
            "--tunnel",
            "127.0.0.1:1",
            "--target",
            "127.0.0.1:2",
        ])
        .unwrap();
        let Side::Client(c) = cli.side else { panic!() };
        let e = c.setup(None).unwrap_err().to_string();
        assert!(e.contains("needs the server's tunnel key"), "{e}");
    }

    #[test]
    fn the_server_generates_a_key() {
        let cli = Cli::try_parse_from([
            "tunnel",
            "server",
            "--tunnel",
            "127.0.0.1:0",
            "--public",
            "127.0.0.1:0",
        ])
        .unwrap();
        let Side::Server(s) = cli.side else { panic!() };
        let setup = s.setup(None, None).unwrap();
        assert_eq!(setup.key_source, KeySource::Generated);
        assert!(setup.config.tls.is_some(), "TLS by default");
        // With no state directory at all, only the certificate's warning.
        assert_eq!(setup.warnings.len(), 1, "{:?}", setup.warnings);
    }

    fn parse(args: &[&str]) -> Side {
        Cli::try_parse_from(args).unwrap().side
    }

    #[test]
    fn plaintext_needs_the_insecure_word_on_both_sides() {
        let server = [
            "tunnel",
            "server",
            "--tunnel",
            "127.0.0.1:0",
            "--public",
            "127.0.0.1:0",
        ];
        let Side::Server(s) = parse(&[&server[..], &["--tls", "0"]].concat()) else {
            panic!()
        };
        let e = s.setup(None, None).unwrap_err().to_string();
        assert!(e.contains("--insecure-plaintext"), "{e}");
        let args = [&server[..], &["--tls", "0", "--insecure-plaintext"]].concat();
        let Side::Server(s) = parse(&args) else {
            panic!()
        };
        let setup = s.setup(None, None).unwrap();
        assert!(setup.config.tls.is_none());
        assert!(setup.warnings.iter().any(|w| w == PLAINTEXT_WARNING));

        let hex = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
        let client = [
            "tunnel",
            "client",
            "--tunnel",
            "127.0.0.1:1",
            "--target",
            "127.0.0.1:2",
        ];
        let Side::Client(c) = parse(&[&client[..], &["--tls", "0"]].concat()) else {
            panic!()
        };
        let e = c.setup(Some(hex.into())).unwrap_err().to_string();
        assert!(e.contains("--insecure-plaintext"), "{e}");
        let args = [&client[..], &["--tls", "0", "--insecure-plaintext"]].concat();
        let Side::Client(c) = parse(&args) else {
            panic!()
        };
        let (_, _, warnings) = c.setup(Some(hex.into())).unwrap();
        assert!(warnings.iter().any(|w| w == PLAINTEXT_WARNING));
        let Side::Client(c) = parse(&client) else {
            panic!()
        };
        assert_eq!(c.tls, TlsMode::SelfSigned, "TLS by default");
    }

    #[test]
    fn the_capacity_needs_no_room_for_strangers() {
        // Handshakes have their own slots: a --max just above the client's is fine.
        let Side::Server(s) = parse(&[
            "tunnel",
            "server",
            "--tunnel",
            "127.0.0.1:0",
            "--public",
            "127.0.0.1:0",
            "--max",
            "1100",
        ]) else {
            panic!()
        };
        let setup = s.setup(None, None).unwrap();
        assert_eq!(setup.config.max_capacity, 1100);
        assert!(
            !setup.warnings.iter().any(|w| w.contains("--max")),
            "{:?}",
            setup.warnings
        );
    }

    #[test]
    fn the_default_state_directory() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            default_state_dir(env(&[("STATE_DIRECTORY", "/var/lib/t:/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/var/lib/t"))
        );
        assert_eq!(
            default_state_dir(env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")])),
            Some(PathBuf::from("/s/pool-tunnel"))
        );
        assert_eq!(
            default_state_dir(env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.local/state/pool-tunnel"))
        );
        assert_eq!(default_state_dir(env(&[])), None);
    }
}
