//! Every setting of the tunnel and its default, in one place: the server and client
//! configurations the library takes, the deadlines both sides share, and the limits
//! the command line offers. The command line (`tunnel server|client`, flags or a
//! configuration file) parses into these structs; the sides only read them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pool_tls::{Fingerprint, ServerTls, TlsMode};
use pool_tokio::{SocketOptions, TunnelKey};

use crate::protocol::{OUTCOME_SLACK, REACHED_WITH_ANSWER};

pub(crate) mod file;
use crate::BoxError;

/// Handshakes under way that the server pool admits at once (strangers included).
pub const HANDSHAKE_SLOTS: usize = 4096;
/// The server pool's capacity (`--max`), by default.
pub const SERVER_MAX_CAPACITY: usize = 8192;
/// The server pool's capacity in [`ServerConfig::loopback`].
pub const LOOPBACK_CAPACITY: usize = 1024;
/// The client's `--min` default.
pub const CLIENT_MIN: usize = 64;
/// The client's `--max` default.
pub const CLIENT_MAX: usize = 1024;
/// Client pool dials in flight at most, by default.
pub const DEFAULT_PARALLELISM: usize = 8;
/// Default sessions at once from one source, under contention.
pub const DEFAULT_CONCURRENT_PER_SOURCE: usize = 256;
/// Default new sessions a second from one source, under contention.
pub const DEFAULT_RATE_PER_SOURCE: f64 = 200.0;
/// Default [`RelayLimits::idle`].
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// Default [`RelayLimits::half_close`].
pub const DEFAULT_HALF_CLOSE: Duration = Duration::from_secs(30);
/// The TLS server name a mode-1 server puts on its self-signed certificate, by default.
pub const DEFAULT_HOSTNAME: &str = "localhost";

/// Unsorted control candidates at most: more than a flood has sources, so the
/// candidates table's fairness keeps a lone client's slot (the `candidates` tables).
pub const DEFAULT_CANDIDATES: usize = 1024;
/// Unsorted control candidates from one source at most.
pub const DEFAULT_CANDIDATES_PER_SOURCE: usize = 16;
/// User sessions at once, by default.
pub const DEFAULT_MAX_SESSIONS: usize = 4096;
/// How long a connection to the tunnel (pool) port has for TLS and the key proof, by
/// default. Silent strangers hold a handshake slot for at most this long; the real
/// client's handshake and proof take a few round trips. Slots are many, so that a
/// crowd of silent peers is held to this deadline rather than refused at once (which
/// invites an immediate reconnect, and a churn that starves the accept loop).
pub const DEFAULT_POOL_HANDSHAKE: Duration = Duration::from_secs(2);
/// Default [`ServerService::quiet`]: short against the idle timeout a quiet session
/// would otherwise hold its slot for. A session's start does not count (a session is
/// quiet only from when its relay opened).
pub const DEFAULT_QUIET: Duration = Duration::from_secs(10);

/// Deadlines of the tunnel (the pools keep their own, set in the server and client
/// sides)).
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// A control candidate's TLS handshake (mode 0: nothing).
    pub tls: Duration,
    /// From the greeting to the client's full answer.
    pub answer: Duration,
    /// How long a user waits for a control connection before being closed.
    pub control_wait: Duration,
    /// How long the server waits for the client's [`RECEIVED`](crate::protocol::RECEIVED) on a pooled connection
    /// it started. None in time: the user is reset, and nothing is replayed (the client
    /// may have read the bytes).
    pub ack: Duration,
    /// One `get` from either pool.
    pub get: Duration,
    /// Heartbeat period on control, both ways.
    pub heartbeat: Duration,
    /// Silence after which either side drops control.
    pub dead_after: Duration,
    /// Client: connecting to the control port and to the target; writes on control.
    /// The server derives its wait for a session's outcome from it
    /// ([`outcome`](Self::outcome)), so both sides must use the same value.
    pub io: Duration,
    /// Client: the pauses between control reconnects.
    pub backoff: Reconnect,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tls: Duration::from_secs(3),
            answer: Duration::from_secs(1),
            control_wait: Duration::from_secs(1),
            ack: Duration::from_secs(3),
            get: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            io: Duration::from_secs(5),
            backoff: Reconnect::default(),
        }
    }
}

impl Timeouts {
    /// How long the server waits, after the client's [`RECEIVED`](crate::protocol::RECEIVED), for [`REACHED`](crate::protocol::REACHED) or
    /// [`TARGET_FAILED`](crate::protocol::TARGET_FAILED): the client's target connect ([`io`](Self::io)), the time it
    /// holds [`REACHED`](crate::protocol::REACHED) for the answer, and [`OUTCOME_SLACK`]. Past it the user is
    /// reset; nothing is replayed.
    pub fn outcome(&self) -> Duration {
        self.io + REACHED_WITH_ANSWER + OUTCOME_SLACK
    }

    /// Socket options of a control connection: keep-alive probes every second after
    /// one idle second, three unanswered probes or unacknowledged data for
    /// `dead_after` drop it. The heartbeats decide first; these catch a peer whose
    /// host vanished while a write is pending.
    pub fn control_socket(&self) -> SocketOptions {
        SocketOptions {
            keepalive: Some(Duration::from_secs(1)),
            keepalive_interval: Some(Duration::from_secs(1)),
            keepalive_retries: Some(3),
            nodelay: true,
            user_timeout: Some(self.dead_after.max(Duration::from_secs(1))),
        }
    }
}

/// The client's pauses between control reconnects: from `first`, doubling to
/// `longest`, with up to 25 % jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnect {
    /// The first pause.
    pub first: Duration,
    /// The longest pause.
    pub longest: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            first: Duration::from_millis(100),
            longest: Duration::from_secs(2),
        }
    }
}

/// Deadlines of one relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Nothing moved either way for this long: the session ends.
    pub idle: Duration,
    /// One direction ended (EOF passed on) and the other has moved nothing for this
    /// long: the session ends (with a reset).
    pub half_close: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            idle: DEFAULT_IDLE,
            half_close: DEFAULT_HALF_CLOSE,
        }
    }
}

/// The public side.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where the pool listens (clients dial in here): a TCP port, or a UDP one for QUIC.
    pub tunnel: SocketAddr,
    /// The pool's transport; the client's must be the same.
    pub transport: crate::transport::Transport,
    /// Where the control connection comes in. `None`: tunnel port + 1 (or port 0 when
    /// the tunnel port is 0).
    pub control: Option<SocketAddr>,
    /// TLS certificate for pool and control (modes 1 and 2); `None` is mode 0.
    pub tls: Option<ServerTls>,
    /// Client-IP filter for pool and control (`None`: anyone).
    pub client_ip: Option<String>,
    /// The tunnel key: pool connections and control prove it.
    pub key: TunnelKey,
    /// Server pool maximum capacity.
    pub max_capacity: usize,
    /// Control candidates that have not sent their admission token yet, at most: in
    /// total and per source (/24, /64). TUNNEL.md, Control port.
    pub candidates: CandidateLimits,
    /// Control and session deadlines.
    pub timeouts: Timeouts,
    /// TLS and the key proof of a connection to the tunnel (pool) port.
    pub pool_handshake: Duration,
    /// The services users reach: each its own public port, all through the one pool
    /// and control connection. [`ServerHandle::reload`](crate::ServerHandle::reload)
    /// changes them while the server runs.
    pub services: Vec<ServerService>,
}

/// The name of the one service that the command line's flags describe, and of the
/// one service of [`ServerConfig::loopback`] and [`ClientConfig::new`].
pub const DEFAULT_SERVICE: &str = "default";
/// The longest service name, in bytes (it travels in each session's start).
pub const SERVICE_NAME_MAX: usize = 64;

/// What a service carries between users and its target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProtocol {
    /// TCP: one session per user connection (the default).
    #[default]
    Tcp,
    /// UDP datagrams: each user address an association over one pooled connection
    /// ([`crate::udp`]).
    Udp,
}

impl ServiceProtocol {
    /// As written in a configuration file.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// The PROXY protocol header the client writes to a service's target before the
/// user's bytes, carrying the user's address and the public address it connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    /// Version 1: one text line (`PROXY TCP4 ...\r\n`).
    V1,
    /// Version 2: binary.
    V2,
}

/// One service of the server side: where its users connect, and what each may take.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerService {
    /// Its name, the same as the client's service that it reaches: letters, digits,
    /// `-`, `_` and `.`, at most [`SERVICE_NAME_MAX`] bytes.
    pub name: String,
    /// Where users connect.
    pub public: SocketAddr,
    /// TCP or UDP; the client's service of this name must say the same.
    pub protocol: ServiceProtocol,
    /// User sessions at once at most (for UDP: associations). At the cap a newcomer takes the newest session
    /// of the source holding the most if its own source holds fewer, else it is
    /// closed at once (TUNNEL.md, Public port).
    pub max_sessions: usize,
    /// Per source (/24, /64): sessions at once, and new sessions a second, enforced
    /// only while the public port is contended.
    pub per_source: PerSource,
    /// Relay deadlines.
    pub relay: RelayLimits,
    /// A session that moved no byte either way for this long since its relay opened
    /// (while it starts it never is) is *quiet*: at the cap it yields its slot to a
    /// newcomer before any session moving bytes does (TUNNEL.md, Public port).
    /// Outside the cap it costs nothing: the relay's idle timeout still ends it.
    pub quiet: Duration,
}

impl ServerService {
    /// A TCP service `name` on `public`, every limit at its default.
    pub fn new(name: impl Into<String>, public: SocketAddr) -> Self {
        Self {
            name: name.into(),
            public,
            protocol: ServiceProtocol::Tcp,
            max_sessions: DEFAULT_MAX_SESSIONS,
            per_source: PerSource::default(),
            relay: RelayLimits::default(),
            quiet: DEFAULT_QUIET,
        }
    }

    /// Refuses a setting out of its range, naming the service and the setting.
    pub fn check(&self) -> Result<(), BoxError> {
        use crate::limits::{check_count, check_secs};
        let name = &self.name;
        check_name(name)?;
        let within = |r: Result<(), String>| r.map_err(|e| format!("service {name}: {e}"));
        within(check_count("max_sessions", self.max_sessions))?;
        within(check_count("per_source sessions", self.per_source.sessions))?;
        let rate = self.per_source.new_per_s;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!(
                "service {name}: per_source rate {rate}: must be a positive number"
            )
            .into());
        }
        within(check_secs("relay idle", self.relay.idle))?;
        within(check_secs("relay half_close", self.relay.half_close))?;
        if self.quiet.is_zero() || self.quiet > self.relay.idle {
            return Err(format!(
                "service {name}: quiet {:?}: must be above 0 and at most the idle timeout",
                self.quiet
            )
            .into());
        }
        Ok(())
    }
}

/// One service of the client side: where its sessions go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientService {
    /// Its name, the same as the server's service whose users it serves.
    pub name: String,
    /// The target, `HOST:PORT` (resolved at each connect).
    pub target: String,
    /// TCP or UDP; the server's service of this name must say the same.
    pub protocol: ServiceProtocol,
    /// A PROXY protocol header to the target first, or none (the default). TCP only.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Relay deadlines.
    pub relay: RelayLimits,
}

impl ClientService {
    /// A TCP service `name` forwarding to `target`, without a PROXY header, with the
    /// default relay deadlines.
    pub fn new(name: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            target: target.into(),
            protocol: ServiceProtocol::Tcp,
            proxy_protocol: None,
            relay: RelayLimits::default(),
        }
    }

    /// Refuses a setting out of its range, naming the service and the setting.
    pub fn check(&self) -> Result<(), BoxError> {
        use crate::limits::check_secs;
        let name = &self.name;
        check_name(name)?;
        check_proxy_protocol(self.protocol, self.proxy_protocol)
            .map_err(|e| format!("service {name}: {e}"))?;
        crate::protocol::split_host_port(&self.target)
            .map_err(|e| format!("service {name}: target: {e}"))?;
        check_secs("relay idle", self.relay.idle).map_err(|e| format!("service {name}: {e}"))?;
        check_secs("relay half_close", self.relay.half_close)
            .map_err(|e| format!("service {name}: {e}"))?;
        Ok(())
    }
}

/// What a reload did, by service name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Services started.
    pub added: Vec<String>,
    /// Services that stopped accepting; their sessions drain.
    pub removed: Vec<String>,
    /// Services restarted with their new settings; their old sessions drain.
    pub changed: Vec<String>,
    /// Services left as they were.
    pub unchanged: Vec<String>,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "added {}; removed {}; changed {}; unchanged {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed),
            list(&self.unchanged)
        )
    }
}

/// Refuses a service name that is empty, too long, or holds other than letters,
/// digits, `-`, `_`, `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= SERVICE_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "service name `{name}`: 1 to {SERVICE_NAME_MAX} letters, digits, `-`, `_` or `.`"
        ))
    }
}

/// Refuses a PROXY protocol header on a UDP service: the header is written on a TCP
/// connection to the target, and a UDP target has none.
pub fn check_proxy_protocol(
    protocol: ServiceProtocol,
    proxy: Option<ProxyProtocol>,
) -> Result<(), String> {
    match (protocol, proxy) {
        (ServiceProtocol::Udp, Some(_)) => {
            Err("proxy_protocol: a PROXY protocol header goes to TCP targets only".into())
        }
        _ => Ok(()),
    }
}

/// Refuses two services of one name, and (server) two on one public address.
fn check_unique<'a>(
    names: impl Iterator<Item = &'a str>,
    publics: impl Iterator<Item = SocketAddr>,
) -> Result<(), BoxError> {
    let mut seen = std::collections::HashSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(format!("service {n}: the name is used twice").into());
        }
    }
    let mut seen = std::collections::HashSet::new();
    for a in publics {
        if a.port() != 0 && !seen.insert(a) {
            return Err(format!("public address {a} is used by two services").into());
        }
    }
    Ok(())
}

/// What one source (a /24, a /64) may take of the public port while it is contended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PerSource {
    /// Sessions at once.
    pub sessions: usize,
    /// New sessions a second (bursts of twice that).
    pub new_per_s: f64,
}

impl Default for PerSource {
    fn default() -> Self {
        Self {
            sessions: DEFAULT_CONCURRENT_PER_SOURCE,
            new_per_s: DEFAULT_RATE_PER_SOURCE,
        }
    }
}

/// Bounds of the table of control candidates that have not sent their admission token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CandidateLimits {
    /// Candidates at most, in all.
    pub total: usize,
    /// Candidates at most from one source (a /24, a /64).
    pub per_source: usize,
}

impl Default for CandidateLimits {
    fn default() -> Self {
        Self {
            total: DEFAULT_CANDIDATES,
            per_source: DEFAULT_CANDIDATES_PER_SOURCE,
        }
    }
}

impl ServerConfig {
    /// Loopback everywhere, port 0 everywhere, mode 0, the given key, one service
    /// ([`DEFAULT_SERVICE`]).
    pub fn loopback(key: TunnelKey) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            tunnel: any,
            transport: crate::transport::Transport::Tcp,
            control: Some(any),
            tls: None,
            client_ip: None,
            key,
            max_capacity: LOOPBACK_CAPACITY,
            candidates: CandidateLimits::default(),
            timeouts: Timeouts::default(),
            pool_handshake: DEFAULT_POOL_HANDSHAKE,
            services: vec![ServerService::new(DEFAULT_SERVICE, any)],
        }
    }

    /// Refuses a setting out of its range, naming it: a value past what a table or a
    /// semaphore holds fails here, at start-up, never in a task at run time.
    pub fn check(&self) -> Result<(), BoxError> {
        use crate::limits::{check_count, check_secs};
        check_count("max_capacity", self.max_capacity)?;
        check_count("candidates", self.candidates.total)?;
        check_count("candidates per source", self.candidates.per_source)?;
        check_secs("pool_handshake", self.pool_handshake)?;
        check_services(&self.services)
    }

    /// This configuration with `f` applied to each service.
    pub fn map_services(mut self, f: impl FnMut(&mut ServerService)) -> Self {
        self.services.iter_mut().for_each(f);
        self
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&ServerService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The service named `name`, to change it.
    pub fn service_mut(&mut self, name: &str) -> Option<&mut ServerService> {
        self.services.iter_mut().find(|s| s.name == name)
    }
}

/// Checks each service and that names and public addresses are unique.
pub fn check_services(services: &[ServerService]) -> Result<(), BoxError> {
    for s in services {
        s.check()?;
    }
    check_unique(
        services.iter().map(|s| s.name.as_str()),
        services.iter().map(|s| s.public),
    )
}

/// The private side.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's tunnel address, `HOST:PORT`.
    pub tunnel: String,
    /// The pool's transport; the server's must be the same.
    pub transport: crate::transport::Transport,
    /// The server's control address; `None`: the tunnel host, tunnel port + 1.
    pub control: Option<String>,
    /// TLS mode of pool and control.
    pub mode: TlsMode,
    /// TLS server name (mode 2: checked); default: the tunnel host.
    pub hostname: Option<String>,
    /// Mode 2: trust this PEM CA file instead of the web roots.
    pub ca: Option<PathBuf>,
    /// Mode 1: accept only this server certificate.
    pub pin: Option<Fingerprint>,
    /// Client pool capacity bounds.
    pub min: usize,
    /// See `min`.
    pub max: usize,
    /// Client pool dials in flight at most.
    pub parallelism: usize,
    /// The tunnel key (the server's).
    pub key: TunnelKey,
    /// Control deadlines.
    pub timeouts: Timeouts,
    /// The services behind the tunnel, by the names the server's services give.
    /// [`ClientHandle::reload`](crate::ClientHandle::reload) changes them while the
    /// client runs.
    pub services: Vec<ClientService>,
}

impl ClientConfig {
    /// A client of the server at `tunnel` / `control` forwarding its one service
    /// ([`DEFAULT_SERVICE`]) to `target`, mode 0, capacity 16..256.
    pub fn new(tunnel: String, control: Option<String>, target: String, key: TunnelKey) -> Self {
        Self {
            tunnel,
            transport: crate::transport::Transport::Tcp,
            control,
            mode: TlsMode::Off,
            hostname: None,
            ca: None,
            pin: None,
            min: 16,
            max: 256,
            parallelism: DEFAULT_PARALLELISM,
            key,
            timeouts: Timeouts::default(),
            services: vec![ClientService::new(DEFAULT_SERVICE, target)],
        }
    }

    /// A client of `server` (in this process) forwarding to `target`, on its
    /// transport.
    pub fn for_server(server: &crate::ServerHandle, target: std::net::SocketAddr) -> Self {
        Self {
            transport: server.pool().transport(),
            ..Self::new(
                server.tunnel_addr().to_string(),
                Some(server.control_addr().to_string()),
                target.to_string(),
                server.key().clone(),
            )
        }
    }
}

impl ClientConfig {
    /// Refuses a setting out of its range, naming it.
    pub fn check(&self) -> Result<(), BoxError> {
        use crate::limits::check_count;
        check_count("min", self.min)?;
        check_count("max", self.max)?;
        check_count("parallelism", self.parallelism)?;
        if self.min > self.max {
            return Err(format!("min {} is above max {}", self.min, self.max).into());
        }
        check_client_services(&self.services)
    }

    /// This configuration with `f` applied to each service.
    pub fn map_services(mut self, f: impl FnMut(&mut ClientService)) -> Self {
        self.services.iter_mut().for_each(f);
        self
    }

    /// The service named `name`, to change it.
    pub fn service_mut(&mut self, name: &str) -> Option<&mut ClientService> {
        self.services.iter_mut().find(|s| s.name == name)
    }
}

/// Checks each service and that names are unique.
pub fn check_client_services(services: &[ClientService]) -> Result<(), BoxError> {
    for s in services {
        s.check()?;
    }
    check_unique(services.iter().map(|s| s.name.as_str()), std::iter::empty())
}
