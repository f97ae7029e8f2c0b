//! The server side: the pool on the tunnel port, the control port, the public port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use pool_tls::ServerTls;
use pool_tokio::{IpFilter, ServerPool, TunnelKey};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::protocol::{unix_ms, Session, Timeouts};
use crate::relay::RelayLimits;
use crate::sources::SourceLimits;
use crate::stats::{ServerSnapshot, ServerStats};
use crate::BoxError;

mod control;
mod public;
mod session;
mod udp;

pub use control::{ADMIT_WINDOW, PROTECTED_SLOTS};
use session::user_session;
pub use session::REPLAY_MAX;

/// Unsorted control candidates at most: more than a flood has sources, so the
/// candidates table's fairness keeps a lone client's slot (see [`crate::candidates`]).
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

/// A plain or TLS control stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
/// A boxed control stream.
pub type BoxIo = Box<dyn Io>;

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
    /// closed at once ([`crate::sources`]).
    pub max_sessions: usize,
    /// Per source (/24, /64): sessions at once, and new sessions a second, enforced
    /// only while the public port is contended ([`crate::sources::SourceLimits`]).
    pub per_source: PerSource,
    /// Control candidates that have not sent their admission token yet, at most: in
    /// total and per source (/24, /64). See [`crate::candidates`].
    pub candidates: CandidateLimits,
    /// Relay deadlines.
    pub relay: RelayLimits,
    /// A session that moved no byte either way for this long is *quiet*: at the cap it
    /// yields its slot to a newcomer before any session moving bytes does
    /// ([`crate::sources::SourceLimits::admit_quiet`]). Outside the cap it costs
    /// nothing: the relay's idle timeout still ends it.
    pub quiet: Duration,
    /// Control and session deadlines.
    pub timeouts: Timeouts,
    /// TLS and the key proof of a connection to the tunnel (pool) port.
    pub pool_handshake: Duration,
    /// `Some`: the public address is a UDP socket, served within these limits
    /// ([`crate::udp`]); `None`: a TCP port.
    pub udp: Option<crate::udp::UdpLimits>,
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
            sessions: crate::sources::DEFAULT_CONCURRENT,
            new_per_s: crate::sources::DEFAULT_RATE,
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
            max_capacity: 1024,
            max_sessions: DEFAULT_MAX_SESSIONS,
            per_source: PerSource::default(),
            candidates: CandidateLimits::default(),
            relay: RelayLimits::default(),
            quiet: DEFAULT_QUIET,
            timeouts: Timeouts::default(),
            pool_handshake: DEFAULT_POOL_HANDSHAKE,
            udp: None,
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
        if let Some(udp) = &self.udp {
            udp.check()?;
        }
        Ok(())
    }
}

/// The active control connection, as user sessions see it.
#[derive(Clone)]
struct Control {
    gen: u64,
    /// Closed (its sender dropped) when this control connection ends.
    gone: watch::Receiver<()>,
}

struct Shared {
    pool: ServerPool,
    key: TunnelKey,
    t: Timeouts,
    relay: RelayLimits,
    stats: ServerStats,
    /// A UDP service's counters (all zero for a TCP one).
    udp: Arc<crate::udp::UdpStats>,
    /// Users' bytes held in memory for a replay, in all (see [`session::BUFFER_BUDGET`]).
    buffered: std::sync::atomic::AtomicUsize,
    control: watch::Sender<Option<Control>>,
    next_gen: AtomicU64,
    /// The session tag of the client process whose control connection came last.
    session: std::sync::Mutex<Option<Session>>,
}

/// A running server side. Dropping it stops its tasks; [`shutdown`](Self::shutdown)
/// also waits for the pool to close.
pub struct ServerHandle {
    shared: Arc<Shared>,
    tunnel: SocketAddr,
    public: SocketAddr,
    control: SocketAddr,
    /// Runs the accept loops; when one ends, it stops them all (see `failed`).
    tasks: Vec<JoinHandle<()>>,
    failed: watch::Receiver<Option<String>>,
}

impl ServerHandle {
    /// The pool's address (where clients dial).
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel
    }
    /// Where users connect.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }
    /// Where the control connection comes in.
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }
    /// The server pool.
    pub fn pool(&self) -> &ServerPool {
        &self.shared.pool
    }
    /// The key in use.
    pub fn key(&self) -> &TunnelKey {
        &self.shared.key
    }
    /// Counters.
    pub fn stats(&self) -> ServerSnapshot {
        self.shared.stats.snapshot()
    }
    /// A UDP service's counters (all zero for a TCP one).
    pub fn udp_stats(&self) -> crate::udp::UdpSnapshot {
        self.shared.udp.snapshot()
    }
    /// Whether an authenticated control connection is active.
    pub fn control_up(&self) -> bool {
        self.shared.control.borrow().is_some()
    }
    /// Waits until a control connection is active (`up`) or none is, or `within` passes.
    pub async fn wait_control_state(&self, up: bool, within: Duration) -> bool {
        let mut rx = self.shared.control.subscribe();
        let ok = matches!(
            timeout(within, rx.wait_for(|c| c.is_some() == up)).await,
            Ok(Ok(_))
        );
        ok
    }
    /// Waits until a control connection is active, or `within` passes.
    pub async fn wait_control(&self, within: Duration) -> bool {
        self.wait_control_state(true, within).await
    }
    /// Waits until a task of the server side died, and answers which and why. Its
    /// accept loops never end on their own: one that ends has panicked, and the others
    /// are stopped with it, so that the server is never half alive (its public port
    /// refusing everybody while control still runs). A process running the server
    /// should exit. Never ends after [`shutdown`](Self::shutdown) began.
    pub async fn failed(&self) -> String {
        crate::tasks::failure(&self.failed).await
    }
    /// Stops every task (sessions included) and closes the pool.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.shared.control.send_replace(None);
        self.shared.pool.close().await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds the three ports and starts the server side.
pub async fn start_server(cfg: ServerConfig) -> Result<ServerHandle, BoxError> {
    cfg.check()?;
    let started_ms = unix_ms();
    let filter = match &cfg.client_ip {
        Some(spec) => IpFilter::parse(spec).map_err(|e| format!("--client-ip: {e}"))?,
        None => IpFilter::any(),
    };
    let mut b = ServerPool::builder()
        .bind(cfg.tunnel)
        .max_capacity(cfg.max_capacity)
        .handshake_timeout(cfg.pool_handshake)
        // At most a quarter of the descriptors, whatever the limit.
        .max_handshakes(crate::limits::within_descriptors(
            crate::cli::HANDSHAKE_SLOTS,
            4,
        ))
        .tunnel_key(cfg.key.clone())
        .filter(filter.clone());
    if let Some(tls) = &cfg.tls {
        b = b.tls(tls.clone());
    }
    let pool = b
        .build()
        .map_err(|e| format!("tunnel {}: {e}", cfg.tunnel))?;
    let tunnel = pool.local_addr();
    let control_addr = match cfg.control {
        Some(a) => a,
        None if tunnel.port() == 0 => tunnel,
        None => {
            let port = tunnel
                .port()
                .checked_add(1)
                .ok_or("tunnel port 65535 has no `port + 1` control port: give --control ADDR")?;
            SocketAddr::new(tunnel.ip(), port)
        }
    };
    let control_l = TcpListener::bind(control_addr)
        .await
        .map_err(|e| format!("control {control_addr}: {e}"))?;
    let public_l = udp::Public::bind(cfg.public, cfg.udp.is_some())
        .await
        .map_err(|e| format!("public {}: {e}", cfg.public))?;
    let acceptor = match &cfg.tls {
        Some(t) => Some(TlsAcceptor::from(t.config()?)),
        None => None,
    };
    let shared = Arc::new(Shared {
        pool,
        key: cfg.key,
        t: cfg.timeouts,
        relay: cfg.relay,
        stats: ServerStats::default(),
        udp: Arc::default(),
        buffered: std::sync::atomic::AtomicUsize::new(0),
        control: watch::channel(None).0,
        next_gen: AtomicU64::new(0),
        session: std::sync::Mutex::new(None),
    });
    let control = control_l.local_addr()?;
    let public = public_l.local_addr()?;
    // At most an eighth of the descriptors.
    let candidates = CandidateLimits {
        total: crate::limits::within_descriptors(cfg.candidates.total, 8),
        per_source: cfg.candidates.per_source,
    };
    let mut loops = JoinSet::new();
    let mut names = HashMap::new();
    let h = loops.spawn(control::control_accept_loop(
        shared.clone(),
        control_l,
        acceptor,
        filter,
        candidates,
        started_ms,
    ));
    names.insert(h.id(), "the control port's accept loop");
    let h = match (public_l, cfg.udp) {
        (udp::Public::Tcp(l), _) => loops.spawn(public::public_accept_loop(
            shared.clone(),
            l,
            SourceLimits::new(
                cfg.max_sessions,
                cfg.per_source.sessions,
                cfg.per_source.new_per_s,
            ),
            cfg.quiet,
        )),
        (udp::Public::Udp(s), limits) => {
            loops.spawn(udp::udp_loop(shared.clone(), s, limits.unwrap_or_default()))
        }
    };
    names.insert(h.id(), "the public port's accept loop");
    let (failed_tx, failed) = watch::channel(None);
    let tasks = vec![tokio::spawn(crate::tasks::supervise(
        "the server side",
        loops,
        names,
        failed_tx,
    ))];
    Ok(ServerHandle {
        shared,
        tunnel,
        public,
        control,
        tasks,
        failed,
    })
}

/// A lock whose critical sections are a few map or field operations.
fn lock<T>(l: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
