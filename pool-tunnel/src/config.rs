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
/// Default [`ServerConfig::quiet`]: longer than a session's start takes (the receipt
/// deadline), short against the idle timeout a quiet session would otherwise hold its
/// slot for.
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
#[derive(Clone, Copy, Debug)]
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
    /// Where the pool listens (clients dial in here).
    pub tunnel: SocketAddr,
    /// Where users connect.
    pub public: SocketAddr,
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
    /// User sessions at once at most. At the cap a newcomer takes the newest session
    /// of the source holding the most if its own source holds fewer, else it is
    /// closed at once (the `sources` rules in `TUNNEL.md`).
    pub max_sessions: usize,
    /// Per source (/24, /64): sessions at once, and new sessions a second, enforced
    /// only while the public port is contended.
    pub per_source: PerSource,
    /// Control candidates that have not sent their admission token yet, at most: in
    /// total and per source (/24, /64). TUNNEL.md, Control port.
    pub candidates: CandidateLimits,
    /// Relay deadlines.
    pub relay: RelayLimits,
    /// A session that moved no byte either way for this long is *quiet*: at the cap it
    /// yields its slot to a newcomer before any session moving bytes does
    /// (TUNNEL.md, Public port). Outside the cap it costs
    /// nothing: the relay's idle timeout still ends it.
    pub quiet: Duration,
    /// Control and session deadlines.
    pub timeouts: Timeouts,
    /// TLS and the key proof of a connection to the tunnel (pool) port.
    pub pool_handshake: Duration,
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
    /// Loopback everywhere, port 0 everywhere, mode 0, the given key.
    pub fn loopback(key: TunnelKey) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            tunnel: any,
            public: any,
            control: Some(any),
            tls: None,
            client_ip: None,
            key,
            max_capacity: LOOPBACK_CAPACITY,
            max_sessions: DEFAULT_MAX_SESSIONS,
            per_source: PerSource::default(),
            candidates: CandidateLimits::default(),
            relay: RelayLimits::default(),
            quiet: DEFAULT_QUIET,
            timeouts: Timeouts::default(),
            pool_handshake: DEFAULT_POOL_HANDSHAKE,
        }
    }

    /// Refuses a setting out of its range, naming it: a value past what a table or a
    /// semaphore holds fails here, at start-up, never in a task at run time.
    pub fn check(&self) -> Result<(), BoxError> {
        use crate::limits::{check_count, check_secs};
        check_count("max_capacity", self.max_capacity)?;
        check_count("max_sessions", self.max_sessions)?;
        check_count("per_source sessions", self.per_source.sessions)?;
        let rate = self.per_source.new_per_s;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("per_source rate {rate}: must be a positive number").into());
        }
        check_count("candidates", self.candidates.total)?;
        check_count("candidates per source", self.candidates.per_source)?;
        check_secs("relay idle", self.relay.idle)?;
        check_secs("relay half_close", self.relay.half_close)?;
        if self.quiet.is_zero() || self.quiet > self.relay.idle {
            return Err(format!(
                "quiet {:?}: must be above 0 and at most the idle timeout",
                self.quiet
            )
            .into());
        }
        check_secs("pool_handshake", self.pool_handshake)?;
        Ok(())
    }
}

/// The private side.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's tunnel address, `HOST:PORT`.
    pub tunnel: String,
    /// The server's control address; `None`: the tunnel host, tunnel port + 1.
    pub control: Option<String>,
    /// The service behind the tunnel, `HOST:PORT`.
    pub target: String,
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
    /// Relay deadlines.
    pub relay: RelayLimits,
    /// Control deadlines.
    pub timeouts: Timeouts,
}

impl ClientConfig {
    /// A client of the server at `tunnel` / `control` forwarding to `target`, mode 0,
    /// capacity 16..256.
    pub fn new(tunnel: String, control: Option<String>, target: String, key: TunnelKey) -> Self {
        Self {
            tunnel,
            control,
            target,
            mode: TlsMode::Off,
            hostname: None,
            ca: None,
            pin: None,
            min: 16,
            max: 256,
            parallelism: DEFAULT_PARALLELISM,
            key,
            relay: RelayLimits::default(),
            timeouts: Timeouts::default(),
        }
    }

    /// A client of `server` (in this process) forwarding to `target`.
    pub fn for_server(server: &crate::ServerHandle, target: std::net::SocketAddr) -> Self {
        Self::new(
            server.tunnel_addr().to_string(),
            Some(server.control_addr().to_string()),
            target.to_string(),
            server.key().clone(),
        )
    }
}
