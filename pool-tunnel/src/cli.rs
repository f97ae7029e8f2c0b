//! The command line: `tunnel server ...` and `tunnel client ...`, and where the key
//! comes from.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pool_tls::{Fingerprint, TlsMode};

use crate::config::file::{
    self, ClientFile, ClientServiceSettings, ClientSettings, ServerFile, ServerServiceSettings,
    ServerSettings,
};
use crate::config::{self, CLIENT_MAX, CLIENT_MIN, DEFAULT_SERVICE, HANDSHAKE_SLOTS};
use crate::limits::{COUNT_LIMIT, SECS_LIMIT};
use crate::setup::{self};
pub(crate) use crate::setup::{default_state_dir, ClientSetup, KeySource, ServerSetup, KEY_ENV};
use crate::BoxError;

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

/// A reverse tunnel on the pool: the server side on the public machine, the client side
/// next to the service. Logs go to stderr, filtered by `RUST_LOG` (default `info`).
#[derive(Debug, Parser)]
#[command(name = "tunnel", version, propagate_version = true)]
pub(crate) struct Cli {
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

/// The two sides, and the commands that check or reload their configuration.
#[derive(Debug, Subcommand)]
pub(crate) enum Side {
    /// The public side: the tunnel (pool) port, the control port, a public port per
    /// service.
    ///
    /// Without a key (--tunnel-key-file, $POOL_TUNNEL_KEY, or the state directory) it
    /// generates a random 256-bit key and prints it once.
    Server(ServerArgs),
    /// The private side: dials the server's tunnel and control ports and forwards
    /// each user to the target. Requires the server's tunnel key.
    Client(ClientArgs),
    /// Checks a configuration file and names the line and field of every mistake;
    /// exits 1 if there is one. Reads no key and binds nothing.
    Check(CheckArgs),
    /// Tells a running side (`--pid-file`) to read its configuration file again
    /// (as SIGHUP does): added services start, removed ones drain, changed ones
    /// restart. The side logs the outcome; a bad file is refused and it runs on.
    Reload(ReloadArgs),
}

/// `tunnel check`.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// The configuration file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `tunnel reload`.
#[derive(Debug, Args)]
pub(crate) struct ReloadArgs {
    /// The pid file the side writes (its --pid-file).
    #[arg(long, value_name = "PATH")]
    pub pid_file: PathBuf,
}

/// Where a side's settings come from: a file, or the flags (one service).
#[derive(Debug, Args)]
pub(crate) struct FileArgs {
    /// Read the settings and the services from this TOML file (its [server] or
    /// [client] section; see TUNNEL.md) instead of the flags. SIGHUP, or `tunnel
    /// reload`, reads it again.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write this process's id here (removed at a clean exit), for `tunnel reload`.
    #[arg(long, value_name = "PATH")]
    pub pid_file: Option<PathBuf>,
}

/// Where the tunnel key comes from (one of them).
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// Read the tunnel key from this file: 64 hex digits as the server prints them,
    /// or a passphrase of at least 16 characters. Also: $POOL_TUNNEL_KEY.
    #[arg(long, conflicts_with = "config", value_name = "PATH")]
    pub tunnel_key_file: Option<PathBuf>,
}

/// Relay deadlines, both sides.
#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Close a session when nothing moved either way for this many seconds.
    #[arg(long, conflicts_with = "config", value_name = "SECS", default_value_t = config::DEFAULT_IDLE.as_secs(), value_parser = clap::value_parser!(u64).range(1..=SECS_LIMIT))]
    pub idle_timeout: u64,
    /// Reset a session when one direction has ended and the other has moved nothing
    /// for this many seconds.
    #[arg(long, conflicts_with = "config", value_name = "SECS", default_value_t = config::DEFAULT_HALF_CLOSE.as_secs(), value_parser = clap::value_parser!(u64).range(1..=SECS_LIMIT))]
    pub half_close_timeout: u64,
}

/// `tunnel server`.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Address the pool listens on (clients dial it).
    #[arg(
        long,
        value_name = "ADDR",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub tunnel: Option<SocketAddr>,
    /// The pool's transport: tcp (TLS per --tls), quic (a UDP port, always TLS 1.3),
    /// ws (WebSocket; wss in modes 1 and 2), h2 (HTTP/2, always TLS). The client must
    /// give the same.
    #[arg(
        long,
        conflicts_with = "config",
        value_name = "tcp|quic|ws|h2",
        default_value = "tcp"
    )]
    pub transport: crate::Transport,
    /// Address users connect to (the one service, `default`).
    #[arg(
        long,
        value_name = "ADDR",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub public: Option<SocketAddr>,
    /// Control address [default: tunnel port + 1].
    #[arg(long, conflicts_with = "config", value_name = "ADDR")]
    pub control: Option<SocketAddr>,
    /// 1 TLS, self-signed, its certificate kept in the state directory (clients may
    /// --pin it); 2 TLS, verified; 0 plain, only with --insecure-plaintext.
    #[arg(
        long,
        conflicts_with = "config",
        value_name = "0|1|2",
        default_value = "1"
    )]
    pub tls: TlsMode,
    /// Allow --tls 0. In plaintext anyone on the path reads every id and every session
    /// and can inject into them; the tunnel key still keeps strangers out of the pool.
    #[arg(long, conflicts_with = "config")]
    pub insecure_plaintext: bool,
    /// PEM certificate chain (mode 2; mode 1: a stable certificate to pin).
    #[arg(long, conflicts_with = "config", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(
        long,
        conflicts_with = "config",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// Keep the generated tunnel key and (mode 1) certificate here, and reuse them on
    /// restart, so that clients need no new key or --pin [default: $STATE_DIRECTORY,
    /// else $XDG_STATE_HOME/pool-tunnel, else ~/.local/state/pool-tunnel]. Refused when
    /// another user owns it or can write to it, or can read the key files in it.
    #[arg(long, conflicts_with = "config", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Name on the self-signed certificate (mode 1).
    #[arg(long, conflicts_with = "config", value_name = "NAME", default_value = config::DEFAULT_HOSTNAME)]
    pub hostname: String,
    /// Allowed client addresses/CIDRs, comma separated (pool and control).
    #[arg(long, conflicts_with = "config", value_name = "IPS")]
    pub client_ip: Option<String>,
    /// Server pool capacity (the help text is `server_max_help`'s, which names the
    /// client's default from its constant).
    #[arg(long, conflicts_with = "config", value_name = "N", help = server_max_help(), default_value_t = config::SERVER_MAX_CAPACITY as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max: u64,
    /// User sessions at once. At the cap, a user from a source (a /24, a /64) holding
    /// fewer sessions than the source holding the most takes that source's newest
    /// session (reset); other users are closed at once.
    #[arg(long, conflicts_with = "config", value_name = "N", default_value_t = config::DEFAULT_MAX_SESSIONS as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max_sessions: u64,
    /// User sessions at once from one source (a /24, a /64) while the public port is
    /// contended (three quarters of --max-sessions in use, or the cap reached in the
    /// last second); more are closed at once. A source alone may hold more.
    #[arg(long, conflicts_with = "config", value_name = "N", default_value_t = config::DEFAULT_CONCURRENT_PER_SOURCE as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max_sessions_per_source: u64,
    /// New user sessions a second from one source (a /24, a /64), with bursts of twice
    /// that, while the public port is contended; more are closed at once, before they
    /// cost a pooled connection. A source alone may start more.
    #[arg(long, conflicts_with = "config", value_name = "N", default_value_t = config::DEFAULT_RATE_PER_SOURCE as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub new_sessions_per_source: u64,
    /// Control connections at once that have not sent their admission token yet. When
    /// full, the source holding the most loses its oldest: keep it above the number of
    /// sources a flood may have.
    #[arg(long, conflicts_with = "config", value_name = "N", default_value_t = config::DEFAULT_CANDIDATES as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max_candidates: u64,
    /// The same from one source (a /24, a /64); over it, the source's oldest goes.
    #[arg(long, conflicts_with = "config", value_name = "N", default_value_t = config::DEFAULT_CANDIDATES_PER_SOURCE as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max_candidates_per_source: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub key_args: KeyArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub file_args: FileArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub relay: RelayArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub udp: crate::udp::UdpArgs,
}

/// `tunnel client`.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The server's tunnel address.
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub tunnel: Option<String>,
    /// The pool's transport: tcp, quic, ws or h2, as the server's.
    #[arg(
        long,
        conflicts_with = "config",
        value_name = "tcp|quic|ws|h2",
        default_value = "tcp"
    )]
    pub transport: crate::Transport,
    /// The service behind the tunnel (the one service, `default`).
    #[arg(
        long,
        value_name = "HOST:PORT",
        required_unless_present = "config",
        conflicts_with = "config"
    )]
    pub target: Option<String>,
    /// The server's control address [default: tunnel port + 1].
    #[arg(long, conflicts_with = "config", value_name = "HOST:PORT")]
    pub control: Option<String>,
    /// 1 TLS, self-signed (give --pin); 2 TLS, verified; 0 plain, only with
    /// --insecure-plaintext.
    #[arg(
        long,
        conflicts_with = "config",
        value_name = "0|1|2",
        default_value = "1"
    )]
    pub tls: TlsMode,
    /// Allow --tls 0: anyone on the path then reads and can inject into the sessions.
    #[arg(long, conflicts_with = "config")]
    pub insecure_plaintext: bool,
    /// TLS server name [default: the tunnel host].
    #[arg(long, conflicts_with = "config", value_name = "NAME")]
    pub hostname: Option<String>,
    /// PEM CA file to trust (mode 2) instead of the web roots.
    #[arg(long, conflicts_with = "config", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// SHA-256 fingerprint of the server certificate (mode 1), as the server prints it.
    #[arg(long, conflicts_with = "config", value_name = "SHA256")]
    pub pin: Option<Fingerprint>,
    /// Client pool minimum capacity.
    #[arg(long, conflicts_with = "config", value_name = "N", default_value_t = CLIENT_MIN as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub min: u64,
    /// Client pool maximum capacity.
    #[arg(long, conflicts_with = "config", value_name = "N", default_value_t = CLIENT_MAX as u64, value_parser = clap::value_parser!(u64).range(1..=COUNT_LIMIT))]
    pub max: u64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub key_args: KeyArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub file_args: FileArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub relay: RelayArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub udp: crate::udp::UdpArgs,
}

impl ServerArgs {
    /// The settings: the file's `[server]` section, or the flags as one service.
    pub(crate) fn file(&self) -> Result<ServerFile, BoxError> {
        if let Some(path) = &self.file_args.config {
            return file::read(path)?
                .server
                .ok_or_else(|| format!("{}: no [server] section", path.display()).into());
        }
        Ok(ServerFile {
            settings: ServerSettings {
                tunnel: self.tunnel,
                transport: Some(self.transport),
                control: self.control,
                tls: Some(self.tls),
                insecure_plaintext: Some(self.insecure_plaintext),
                cert: self.cert.clone(),
                key: self.key.clone(),
                state_dir: self.state_dir.clone(),
                hostname: Some(self.hostname.clone()),
                client_ip: self.client_ip.clone(),
                max: Some(self.max),
                max_candidates: Some(self.max_candidates),
                max_candidates_per_source: Some(self.max_candidates_per_source),
                tunnel_key_file: self.key_args.tunnel_key_file.clone(),
            },
            services: vec![ServerServiceSettings {
                name: DEFAULT_SERVICE.into(),
                public: self.public,
                protocol: Some(self.udp.protocol()),
                max_sessions: Some(self.max_sessions),
                max_sessions_per_source: Some(self.max_sessions_per_source),
                new_sessions_per_source: Some(self.new_sessions_per_source),
                idle_timeout: Some(self.udp.idle_timeout(self.relay.idle_timeout)),
                half_close_timeout: Some(self.relay.half_close_timeout),
            }],
        })
    }

    /// Checks the settings and reads or makes the key and certificate (see
    /// [`setup::server`]).
    pub(crate) fn setup(
        &self,
        env_key: Option<String>,
        default_state: Option<PathBuf>,
    ) -> Result<ServerSetup, BoxError> {
        setup::server(&self.file()?, env_key, default_state)
    }
}

impl ClientArgs {
    /// The settings: the file's `[client]` section, or the flags as one service.
    pub(crate) fn file(&self) -> Result<ClientFile, BoxError> {
        if let Some(path) = &self.file_args.config {
            return file::read(path)?
                .client
                .ok_or_else(|| format!("{}: no [client] section", path.display()).into());
        }
        Ok(ClientFile {
            settings: ClientSettings {
                tunnel: self.tunnel.clone(),
                transport: Some(self.transport),
                control: self.control.clone(),
                tls: Some(self.tls),
                insecure_plaintext: Some(self.insecure_plaintext),
                hostname: self.hostname.clone(),
                ca: self.ca.clone(),
                pin: self.pin.map(|p| p.to_string()),
                min: Some(self.min),
                max: Some(self.max),
                tunnel_key_file: self.key_args.tunnel_key_file.clone(),
            },
            services: vec![ClientServiceSettings {
                name: DEFAULT_SERVICE.into(),
                target: self.target.clone(),
                protocol: Some(self.udp.protocol()),
                proxy_protocol: None,
                idle_timeout: Some(self.udp.idle_timeout(self.relay.idle_timeout)),
                half_close_timeout: Some(self.relay.half_close_timeout),
            }],
        })
    }

    /// Checks the settings and reads the key; also the warnings to print.
    pub(crate) fn setup(&self, env_key: Option<String>) -> Result<ClientSetup, BoxError> {
        setup::client(&self.file()?, env_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::{given_key, PLAINTEXT_WARNING};
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_key_is_given_once_and_strong() {
        let hex = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
        let none = None;
        assert!(given_key(none, None).unwrap().is_none());
        let (k, src) = given_key(none, Some(hex.into())).unwrap().unwrap();
        assert_eq!((k.to_hex().as_str(), src), (hex, KeySource::Env));
        let e = given_key(none, Some("s3cret".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short"), "{e}");
        let file = Some(std::path::Path::new("/nonexistent/key"));
        let e = given_key(file, Some(hex.into())).unwrap_err().to_string();
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
        let warnings = c.setup(Some(hex.into())).unwrap().warnings;
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
