//! The server side: the pool on the tunnel port, the control port, the public port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use pool_tls::admit::{Admitted, ReplayWindow, Untaken};

use pool_tls::ServerTls;
use pool_tokio::{IpFilter, PoolConn, PoolStream, ServerPool, TunnelKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::candidates::{CandidateId, Candidates};
use crate::limits::Backoff;
use crate::protocol::{
    read_token, server_handshake, unix_ms, Session, Timeouts, REACHED, TARGET_FAILED,
};
use crate::relay::{peer_socket_options, relay, relay_tcp, RelayEnd, RelayLimits, Traffic};
use crate::sources::{Refused, SessionId, Source, SourceLimits};
use crate::stats::{bump, QuietLog, Refusal, ServerSnapshot, ServerStats};
use crate::BoxError;

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
    pub per_source: (usize, f64),
    /// Control candidates that have not sent their admission token yet, at most: in
    /// total and per source (/24, /64). See [`crate::candidates`].
    pub candidates: (usize, usize),
    /// Relay deadlines.
    pub relay: RelayLimits,
    /// Control and session deadlines.
    pub timeouts: Timeouts,
    /// TLS and the key proof of a connection to the tunnel (pool) port.
    pub pool_handshake: Duration,
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
            per_source: (
                crate::sources::DEFAULT_CONCURRENT,
                crate::sources::DEFAULT_RATE,
            ),
            candidates: (DEFAULT_CANDIDATES, DEFAULT_CANDIDATES_PER_SOURCE),
            relay: RelayLimits::default(),
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
        check_count("per_source sessions", self.per_source.0)?;
        let rate = self.per_source.1;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(format!("per_source rate {rate}: must be a positive number").into());
        }
        check_count("candidates", self.candidates.0)?;
        check_count("candidates per source", self.candidates.1)?;
        check_secs("relay idle", self.relay.idle)?;
        check_secs("relay half_close", self.relay.half_close)?;
        check_secs("pool_handshake", self.pool_handshake)?;
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
        let mut rx = self.failed.clone();
        let why = match rx.wait_for(Option::is_some).await {
            Ok(why) => why.clone(),
            Err(_) => None,
        };
        match why {
            Some(why) => why,
            None => std::future::pending().await,
        }
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
    let public_l = TcpListener::bind(cfg.public)
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
        control: watch::channel(None).0,
        next_gen: AtomicU64::new(0),
        session: std::sync::Mutex::new(None),
    });
    let control = control_l.local_addr()?;
    let public = public_l.local_addr()?;
    let (total, per_source) = cfg.candidates;
    // At most an eighth of the descriptors.
    let total = crate::limits::within_descriptors(total, 8);
    let mut loops = JoinSet::new();
    let mut names = HashMap::new();
    let h = loops.spawn(control_accept_loop(
        shared.clone(),
        control_l,
        acceptor,
        filter,
        (total, per_source),
        started_ms,
    ));
    names.insert(h.id(), "the control port's accept loop");
    let h = loops.spawn(public_accept_loop(
        shared.clone(),
        public_l,
        SourceLimits::new(cfg.max_sessions, cfg.per_source.0, cfg.per_source.1),
    ));
    names.insert(h.id(), "the public port's accept loop");
    let (failed_tx, failed) = watch::channel(None);
    let tasks = vec![tokio::spawn(supervise(loops, names, failed_tx))];
    Ok(ServerHandle {
        shared,
        tunnel,
        public,
        control,
        tasks,
        failed,
    })
}

/// Waits for the first of `loops` to end (they end only by a panic), says which and
/// why on `failed`, and stops the others (dropping the set aborts them).
async fn supervise(
    mut loops: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
    failed: watch::Sender<Option<String>>,
) {
    let Some(end) = loops.join_next_with_id().await else {
        return;
    };
    let why = match end {
        Ok((id, ())) => format!("{} ended", names.get(&id).unwrap_or(&"a task")),
        Err(e) => {
            let name = names.get(&e.id()).unwrap_or(&"a task");
            if e.is_panic() {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("{name} panicked: {msg}")
            } else {
                format!("{name} was cancelled")
            }
        }
    };
    tracing::error!("{why}; stopping the server side");
    loops.shutdown().await;
    failed.send_replace(Some(why));
}

/// Candidates whose admission token proved the key, at most (only key holders reach
/// this table: it needs no per-source quota).
pub const PROTECTED_SLOTS: usize = 16;
/// How far an admission token's clock may be from the server's.
pub const ADMIT_WINDOW: Duration = Duration::from_secs(120);
/// Admission nonces remembered at most (see [`ReplayWindow`]).
const ADMIT_MEMORY: usize = 4096;

/// A candidate that sent (or failed to send) its admission token.
type Sorted = (
    CandidateId,
    SocketAddr,
    TcpStream,
    Result<Admitted, BoxError>,
);
/// A candidate that finished (or failed) TLS and the handshake.
type Proved = (CandidateId, SocketAddr, Result<(BoxIo, Session), BoxError>);

/// The control port's candidates in their two stages, and what runs them.
struct ControlPort {
    shared: Arc<Shared>,
    acceptor: Option<TlsAcceptor>,
    /// Waiting for the admission token: strangers land here.
    unsorted: Candidates,
    /// Token taken: TLS and the handshake under way, out of strangers' reach.
    protected: Candidates,
    sorting: JoinSet<Sorted>,
    proving: JoinSet<Proved>,
    aborts: HashMap<CandidateId, tokio::task::AbortHandle>,
    replay: ReplayWindow,
    /// When this server started (ms since the epoch): a token stamped earlier was
    /// made for an earlier process, whose replay window is gone.
    started_ms: u64,
    /// Refusals are logged at a bounded rate, whatever their reason.
    quiet: QuietLog,
    next: CandidateId,
}

impl ControlPort {
    fn id(&mut self) -> CandidateId {
        self.next += 1;
        self.next
    }

    fn evict(&mut self, gone: Option<CandidateId>) {
        if let Some(h) = gone.and_then(|g| self.aborts.remove(&g)) {
            h.abort();
            bump(&self.shared.stats.control_evicted);
        }
    }

    /// A new connection: it has `answer` to send its token.
    fn accepted(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let id = self.id();
        let gone = self.unsorted.admit(id, Source::of(peer.ip()));
        self.evict(gone);
        let _ = self.shared.t.control_socket().apply_tcp(&tcp);
        let within = self.shared.t.answer;
        let key = self.shared.key.clone();
        let h = self.sorting.spawn(async move {
            let mut tcp = tcp;
            let res = read_token(&mut tcp, &key, within).await;
            (id, peer, tcp, res)
        });
        self.aborts.insert(id, h);
    }

    /// A token arrived (or did not): to the protected table, back to the unsorted one
    /// for the proof (a valid token with a skewed clock), or refused.
    fn sorted(&mut self, (id, peer, tcp, res): Sorted) {
        self.aborts.remove(&id);
        self.unsorted.remove(id);
        let source = Source::of(peer.ip());
        let token = match res {
            Ok(token) => token,
            Err(e) => {
                let why = if e.downcast_ref::<pool_tls::proof::ProofError>().is_some() {
                    Refusal::BadToken
                } else {
                    Refusal::NoToken
                };
                return self.refused(peer, why, &e);
            }
        };
        let id = self.id();
        let now = unix_ms();
        let window = ADMIT_WINDOW.as_millis() as u64;
        // Within the window but before this process: only an earlier process can have
        // seen it, and its memory is gone (a token further back is skewed anyway).
        let predated =
            token.unix_ms < self.started_ms && now.saturating_sub(token.unix_ms) <= window;
        let taken = if predated {
            Err(Refusal::Predated)
        } else {
            match self.replay.take(token, now) {
                Ok(()) => Ok(()),
                Err(Untaken::Replayed) => Err(Refusal::Replayed),
                Err(Untaken::Skewed(_)) => Err(Refusal::Skewed),
            }
        };
        match taken {
            Ok(()) => {
                bump(&self.shared.stats.control_admitted);
                let gone = self.protected.admit(id, source);
                self.evict(gone);
            }
            Err(Refusal::Replayed) => {
                bump(&self.shared.stats.control_replayed);
                let e = "its nonce was taken before";
                return self.refused(peer, Refusal::Replayed, &e);
            }
            Err(why) => {
                // A key holder whose clock is off, or who made its token before this
                // process started (a replay from before a restart, most likely): it
                // may still prove the key, but it competes with strangers for its slot.
                let (counter, e) = if why == Refusal::Predated {
                    let e = format!("stamped before this server started ({ADMIT_WINDOW:?} window)");
                    (&self.shared.stats.control_predated, e)
                } else {
                    let skew = i128::from(token.unix_ms) - i128::from(unix_ms());
                    let e = format!(
                        "the client's clock is {:+.1} s from ours (more than {ADMIT_WINDOW:?}); \
                         its connection is not protected from eviction",
                        skew as f64 / 1e3
                    );
                    (&self.shared.stats.control_skewed, e)
                };
                bump(counter);
                self.note(peer, why, &e);
                let gone = self.unsorted.admit(id, source);
                self.evict(gone);
            }
        }
        let shared = self.shared.clone();
        let acceptor = self.acceptor.clone();
        let h = self
            .proving
            .spawn(async move { (id, peer, authenticate(tcp, acceptor, &shared).await) });
        self.aborts.insert(id, h);
    }

    fn refused(&mut self, peer: SocketAddr, why: Refusal, e: &dyn std::fmt::Display) {
        bump(&self.shared.stats.control_refused);
        self.note(peer, why, e);
    }

    /// Logs a refusal (or a token let through unprotected), at most once a
    /// [`QUIET_PERIOD`](crate::stats::QUIET_PERIOD) per reason.
    fn note(&mut self, peer: SocketAddr, why: Refusal, e: &dyn std::fmt::Display) {
        let Some(quiet) = self.quiet.note(why, std::time::Instant::now()) else {
            return;
        };
        let more = if quiet > 0 {
            format!(" ({quiet} more for this reason since the last line)")
        } else {
            String::new()
        };
        match why {
            // A key holder's clock is off: worth the operator's attention.
            Refusal::Skewed => warn!("control: {peer}: {}: {e}{more}", why.words()),
            _ => info!("control: {peer}: {}: {e}{more}", why.words()),
        }
    }
}

/// Accepts control candidates: each sends its admission token, then runs TLS and the
/// handshake in its own task under its deadlines; the winner runs as the control
/// connection. See [`crate::candidates`] for the two tables.
async fn control_accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    filter: IpFilter,
    (total, per_source): (usize, usize),
    started_ms: u64,
) {
    let mut port = ControlPort {
        shared: shared.clone(),
        acceptor,
        unsorted: Candidates::new(total, per_source),
        protected: Candidates::new(PROTECTED_SLOTS, PROTECTED_SLOTS),
        sorting: JoinSet::new(),
        proving: JoinSet::new(),
        aborts: HashMap::new(),
        replay: ReplayWindow::new(ADMIT_WINDOW, ADMIT_MEMORY),
        started_ms,
        quiet: QuietLog::default(),
        next: 0,
    };
    let mut controls = JoinSet::new();
    let mut backoff = Backoff::default();
    // After a failed accept, accepting pauses; candidates go on meanwhile.
    let mut paused: Option<Instant> = None;
    loop {
        while controls.try_join_next().is_some() {}
        tokio::select! {
            _ = async { tokio::time::sleep_until(paused.unwrap_or_else(Instant::now)).await },
                if paused.is_some() => paused = None,
            accepted = listener.accept(), if paused.is_none() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => {
                        backoff.succeeded();
                        x
                    }
                    Err(e) => {
                        // Out of descriptors and the like: do not spin.
                        let pause = backoff.failed();
                        warn!("control: accept: {e}; pausing {pause:?}");
                        paused = Some(Instant::now() + pause);
                        continue;
                    }
                };
                if !filter.allows(peer.ip()) {
                    bump(&shared.stats.control_ip_refused);
                    debug!("control: {peer} refused by --client-ip");
                    continue;
                }
                port.accepted(tcp, peer);
            }
            Some(done) = port.sorting.join_next() => {
                if let Ok(sorted) = done {
                    port.sorted(sorted);
                } // else evicted
            }
            Some(done) = port.proving.join_next() => {
                let Ok((id, peer, res)) = done else { continue }; // evicted
                port.aborts.remove(&id);
                port.unsorted.remove(id);
                port.protected.remove(id);
                match res {
                    Ok((io, session)) => {
                        bump(&shared.stats.control_ok);
                        controls.spawn(serve_control(shared.clone(), io, peer, session));
                    }
                    Err(e) => port.refused(peer, Refusal::Handshake, &e),
                }
            }
        }
    }
}

/// TLS (if any) and the handshake, each under its deadline.
async fn authenticate(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    shared: &Shared,
) -> Result<(BoxIo, Session), BoxError> {
    let t = &shared.t;
    match acceptor {
        Some(a) => {
            let mut tls = timeout(t.tls, a.accept(tcp))
                .await
                .map_err(|_| "no TLS handshake in time")?
                .map_err(|e| format!("TLS: {e}"))?;
            let binding = pool_tls::tls_binding(tls.get_ref().1)?;
            let session = server_handshake(&mut tls, &shared.key, &binding, t.answer).await?;
            Ok((Box::new(tls), session))
        }
        None => {
            let mut tcp = tcp;
            let session = server_handshake(&mut tcp, &shared.key, &[], t.answer).await?;
            Ok((Box::new(tcp), session))
        }
    }
}

/// Runs one authenticated control connection until it breaks, falls silent, or is
/// replaced by a newer one. A control connection from a new client process (a session
/// tag not seen last) first closes every idle pooled connection: the previous process
/// made them, and would never accept a session on them (a crashed host's connections
/// stay open here until keep-alive gives up). The new process's own are dialed again
/// at once, as its pool sees them close.
async fn serve_control(shared: Arc<Shared>, io: BoxIo, peer: SocketAddr, session: Session) {
    let previous = lock(&shared.session).replace(session);
    if previous.is_some_and(|p| p != session) {
        let stale = shared.pool.stats().status.idle;
        shared.pool.flush();
        bump(&shared.stats.client_restarts);
        info!("control: {peer} is a new client process: {stale} pooled connections of the previous one closed");
    }
    let gen = shared.next_gen.fetch_add(1, Relaxed) + 1;
    let (gone_tx, gone) = watch::channel(());
    let mut current = shared.control.subscribe();
    let old = shared.control.send_replace(Some(Control { gen, gone }));
    info!(
        "control: {peer} authenticated{}",
        if old.is_some() {
            ", replacing the previous control connection"
        } else {
            ""
        }
    );
    let (mut rd, mut wr) = tokio::io::split(io);
    let t = shared.t.clone();
    // Three watches run side by side, so that a heartbeat write that stalls never
    // keeps the others from noticing silence or a replacement.
    let writing = async {
        let mut heartbeat = tokio::time::interval(t.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            heartbeat.tick().await;
            if write_flush(&mut wr, b"\n", t.dead_after).await.is_err() {
                return "write failed or stalled";
            }
        }
    };
    let reading = async {
        let mut buf = [0u8; 64];
        loop {
            match timeout(t.dead_after, rd.read(&mut buf)).await {
                Err(_) => {
                    bump(&shared.stats.control_silent);
                    return "no heartbeat from the client";
                }
                Ok(Ok(0)) => return "closed by the client",
                Ok(Ok(n)) if buf[..n].iter().all(|&b| b == b'\n') => {}
                Ok(Ok(_)) => return "unexpected bytes from the client",
                Ok(Err(_)) => return "read error",
            }
        }
    };
    let replaced = async {
        loop {
            let r = current.changed().await;
            let now = current.borrow_and_update().as_ref().map(|c| c.gen);
            if r.is_err() || now != Some(gen) {
                return "replaced by a newer control connection";
            }
        }
    };
    let reason = tokio::select! {
        r = writing => r,
        r = reading => r,
        r = replaced => r,
    };
    shared.control.send_if_modified(|c| {
        if c.as_ref().map(|c| c.gen) == Some(gen) {
            *c = None;
            true
        } else {
            false
        }
    });
    drop(gone_tx);
    info!("control: {peer} ended: {reason}");
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8], t: Duration) -> Result<(), ()> {
    match timeout(t, async {
        w.write_all(buf).await?;
        w.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// The public port's sessions: the table of sources, and how to reset each session
/// it may evict.
struct Public {
    limits: SourceLimits,
    held: HashMap<SessionId, Held>,
}

/// A running session, as the accept loop may have to end it.
struct Held {
    task: tokio::task::AbortHandle,
    /// A second descriptor of the user's socket: an evicted user gets a reset (linger
    /// 0), never a clean end that passes for a complete answer.
    socket: std::os::fd::OwnedFd,
}

impl Held {
    fn reset(self) {
        let _ = rustix::net::sockopt::set_socket_linger(&self.socket, Some(Duration::ZERO));
        self.task.abort();
    }
}

/// A session's place in [`Public`], given back however the session ends (an evicted
/// one was taken out already).
struct Slot {
    public: Arc<std::sync::Mutex<Public>>,
    source: Source,
    id: SessionId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = lock(&self.public);
        p.limits.release(self.source, self.id);
        p.held.remove(&self.id);
    }
}

async fn public_accept_loop(shared: Arc<Shared>, listener: TcpListener, limits: SourceLimits) {
    let public = Arc::new(std::sync::Mutex::new(Public {
        limits,
        held: HashMap::new(),
    }));
    let mut sessions = JoinSet::new();
    let mut backoff = Backoff::default();
    // Set once on the listener where accepted sockets inherit it (Linux), else on
    // each user.
    let options = peer_socket_options();
    let each = !(pool_tokio::INHERITED_AT_ACCEPT && options.apply_listener(&listener).is_ok());
    loop {
        while sessions.try_join_next().is_some() {}
        let (user, peer) = match listener.accept().await {
            Ok(pair) => {
                backoff.succeeded();
                pair
            }
            Err(e) => {
                let pause = backoff.failed();
                warn!("public: accept: {e}; pausing {pause:?}");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        bump(&shared.stats.users);
        let mut p = lock(&public);
        // The cap, and under contention each source's share: see `crate::sources`.
        let admitted = match p.limits.admit(peer.ip(), std::time::Instant::now()) {
            Ok(a) => a,
            Err(Refused::Full) => {
                bump(&shared.stats.users_refused);
                continue; // closed at once
            }
            Err(_) => {
                bump(&shared.stats.users_refused_source);
                continue; // closed at once
            }
        };
        if let Some(held) = admitted.evict.and_then(|v| p.held.remove(&v)) {
            held.reset();
            bump(&shared.stats.users_evicted);
        }
        let Ok(socket) = user.as_fd().try_clone_to_owned() else {
            // Out of descriptors: this user is refused, not a running one reset later.
            p.limits.release(admitted.source, admitted.id);
            bump(&shared.stats.users_refused);
            continue;
        };
        if each {
            let _ = options.apply_tcp(&user);
        }
        let slot = Slot {
            public: public.clone(),
            source: admitted.source,
            id: admitted.id,
        };
        let shared = shared.clone();
        // Spawned under the lock: the session's slot cannot be given back before its
        // entry is in `held`.
        let task = sessions.spawn(async move {
            let _slot = slot;
            let ok = user_session(&shared, user).await;
            bump(if ok {
                &shared.stats.relayed
            } else {
                &shared.stats.failed
            });
        });
        p.held.insert(admitted.id, Held { task, socket });
    }
}

/// A lock whose critical sections are a few map or field operations.
fn lock<T>(l: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Pooled connections one user session tries at most, and of them at most
/// [`SILENT_TRIES`] that stayed silent until the ack deadline (the others closed
/// at once: dead when picked).
const ATTEMPTS: usize = 16;
/// See [`ATTEMPTS`].
const SILENT_TRIES: usize = 3;
/// The user's bytes the server sends before the client's [`REACHED`] and keeps for a
/// replay, at most. Past it, the server reads nothing more from the user until the
/// ack (one round trip): nothing is ever sent that could not be replayed.
pub const REPLAY_MAX: usize = 64 * 1024;

/// How one pooled connection ended before the relay.
enum Pick {
    /// The client accepted it and reached the target.
    Reached(PoolConn),
    /// The client could not reach the target: the user is closed, nothing retried.
    TargetFailed,
    /// Closed or broken before the ack: dead when picked.
    Dead,
    /// No ack within the deadline.
    Silent,
    /// The control connection ended meanwhile.
    Orphaned,
}

/// One user: a pooled connection started in band, a relay. The pool's start header
/// and then the user's bytes go onto an idle pooled connection at once, and the
/// client's pool accepts it when its first byte arrives: the user's first byte
/// reaches the client one one-way trip after it was sent, with nothing on control.
/// The server keeps a copy of what it sent until the client's [`REACHED`] says it
/// reached the target; a pooled connection that dies first, or stays silent past the
/// ack deadline, is replaced and the copy replayed. [`TARGET_FAILED`] closes the user
/// at once. A user for whom no control connection comes within `control_wait` is
/// closed at once (no client is there to accept); so is one whose control connection
/// is lost while it waits.
async fn user_session(shared: &Shared, mut user: TcpStream) -> bool {
    let mut control = shared.control.subscribe();
    // What the user sent already goes out with the start, in one write; a user that
    // already closed costs no pooled connection (a connect/close flood).
    let mut sent = vec![0u8; 16 * 1024];
    let Some(n) = early_bytes(&user, &mut sent) else {
        return false;
    };
    sent.truncate(n);
    let mut user_done = false;
    let (mut tries, mut silent) = (0, 0);
    let conn = loop {
        if tries == ATTEMPTS || silent == SILENT_TRIES {
            return false;
        }
        tries += 1;
        let ctl = match timeout(shared.t.control_wait, control.wait_for(Option::is_some)).await {
            Ok(Ok(c)) => c.clone(),
            _ => return false,
        };
        let Some(mut ctl) = ctl else { return false };
        let Ok((_, conn)) = shared.pool.start_with(&sent, shared.t.get).await else {
            return false;
        };
        if tries > 1 {
            bump(&shared.stats.replayed);
        }
        let pick = pick(shared, &mut user, conn, &mut ctl, &mut sent, &mut user_done).await;
        match pick {
            Pick::Reached(conn) => break conn,
            Pick::TargetFailed => {
                bump(&shared.stats.target_failed);
                return false;
            }
            Pick::Dead => bump(&shared.stats.dead_picked),
            Pick::Silent => {
                silent += 1;
                bump(&shared.stats.not_taken);
            }
            Pick::Orphaned => {
                bump(&shared.stats.orphaned);
                return false;
            }
        }
    };
    let traffic = Traffic::default();
    let end = match conn.into_inner() {
        PoolStream::Plain(tcp) => relay_tcp(user, tcp, shared.relay, &traffic).await,
        tls => relay(user, tls, shared.relay, &traffic).await,
    };
    let up = traffic.a_to_b.load(Relaxed) + sent.len() as u64;
    shared.stats.bytes_up.fetch_add(up, Relaxed);
    shared
        .stats
        .bytes_down
        .fetch_add(traffic.b_to_a.load(Relaxed), Relaxed);
    match end {
        RelayEnd::Done => true,
        RelayEnd::Error => false,
        RelayEnd::Idle => {
            bump(&shared.stats.idle_closed);
            false
        }
        RelayEnd::HalfClosed => {
            bump(&shared.stats.half_close_timeouts);
            false
        }
    }
}

/// Sends the user's bytes as they come on `conn` (the copy of the earlier ones went
/// with the start) until the client's first byte (or the deadline, or control's end)
/// says how the pick went.
async fn pick(
    shared: &Shared,
    user: &mut TcpStream,
    mut conn: PoolConn,
    ctl: &mut Control,
    sent: &mut Vec<u8>,
    user_done: &mut bool,
) -> Pick {
    let deadline = Instant::now() + shared.t.ack;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let room = REPLAY_MAX - sent.len();
        tokio::select! {
            r = conn.read_u8() => return match r {
                Ok(REACHED) => Pick::Reached(conn),
                Ok(TARGET_FAILED) => Pick::TargetFailed,
                _ => Pick::Dead,
            },
            n = user.read(&mut buf[..room.min(16 * 1024)]), if !*user_done && room > 0 => {
                match n {
                    Ok(0) | Err(_) => *user_done = true,
                    Ok(n) => {
                        sent.extend_from_slice(&buf[..n]);
                        if conn.write_all(&buf[..n]).await.is_err() {
                            return Pick::Dead;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Pick::Silent,
            _ = ctl.gone.changed() => return Pick::Orphaned,
        }
    }
}

/// What the user has sent so far, read into `buf` without waiting (straight from the
/// kernel: tokio's readiness for a socket just accepted is not known yet): how many
/// bytes, 0 for none yet, `None` when the user already closed or failed.
#[cfg(unix)]
fn early_bytes(user: &TcpStream, buf: &mut [u8]) -> Option<usize> {
    use rustix::io::Errno;
    match rustix::io::read(user, buf) {
        Ok(0) => None,
        Ok(n) => Some(n),
        Err(Errno::AGAIN | Errno::INTR) => Some(0),
        Err(_) => None,
    }
}

/// Elsewhere: none read; a closed user is found by the relay.
#[cfg(not(unix))]
fn early_bytes(_user: &TcpStream, _buf: &mut [u8]) -> Option<usize> {
    Some(0)
}
