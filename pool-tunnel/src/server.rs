//! The server side: the pool on the tunnel port, the control port, the public port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use pool_tls::admit::{Admitted, ReplayWindow, Untaken};

use pool_tls::ServerTls;
use pool_tokio::{IpFilter, ServerPool, TunnelKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::candidates::{CandidateId, Candidates};
use crate::protocol::{read_token, server_handshake, unix_ms, Session, Timeouts};
use crate::relay::{peer_socket_options, RelayLimits};
use crate::sources::{Source, SourceLimits};
use crate::stats::{bump, ServerSnapshot, ServerStats};
use crate::BoxError;

mod session;
use session::user_session;
pub use session::REPLAY_MAX;

/// Unsorted control candidates at most: more than a flood has sources, so the
/// candidates table's fairness keeps a lone client's slot (see [`crate::candidates`]).
pub const DEFAULT_CANDIDATES: usize = 1024;
/// Unsorted control candidates from one source at most.
pub const DEFAULT_CANDIDATES_PER_SOURCE: usize = 16;

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
    /// User sessions at once at most; more are closed at once.
    pub max_sessions: usize,
    /// Per source (/24, /64): sessions at once, and new sessions a second
    /// ([`crate::sources::SourceLimits`]).
    pub per_source: (usize, f64),
    /// Control candidates that have not sent their admission token yet, at most: in
    /// total and per source (/24, /64). See [`crate::candidates`].
    pub candidates: (usize, usize),
    /// Relay deadlines.
    pub relay: RelayLimits,
    /// Control and session deadlines.
    pub timeouts: Timeouts,
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
            max_sessions: 4096,
            per_source: (
                crate::sources::DEFAULT_CONCURRENT,
                crate::sources::DEFAULT_RATE,
            ),
            candidates: (DEFAULT_CANDIDATES, DEFAULT_CANDIDATES_PER_SOURCE),
            relay: RelayLimits::default(),
            timeouts: Timeouts::default(),
        }
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
    tasks: Vec<JoinHandle<()>>,
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
    let filter = match &cfg.client_ip {
        Some(spec) => IpFilter::parse(spec).map_err(|e| format!("--client-ip: {e}"))?,
        None => IpFilter::any(),
    };
    let mut b = ServerPool::builder()
        .bind(cfg.tunnel)
        .max_capacity(cfg.max_capacity)
        // Silent strangers hold a handshake slot for at most this long; the real
        // client's handshake and proof take a few round trips. Slots are many, so that
        // a crowd of silent peers is held to this deadline rather than refused at
        // once (which invites an immediate reconnect, and a churn that starves the
        // accept loop).
        .handshake_timeout(Duration::from_secs(2))
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
    let tasks = vec![
        tokio::spawn(control_accept_loop(
            shared.clone(),
            control_l,
            acceptor,
            filter,
            (total, per_source),
        )),
        tokio::spawn(public_accept_loop(
            shared.clone(),
            public_l,
            cfg.max_sessions,
            SourceLimits::new(cfg.per_source.0, cfg.per_source.1),
        )),
    ];
    Ok(ServerHandle {
        shared,
        tunnel,
        public,
        control,
        tasks,
    })
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
            Err(e) => return self.refused(peer, e),
        };
        let id = self.id();
        match self.replay.take(token, unix_ms()) {
            Ok(()) => {
                bump(&self.shared.stats.control_admitted);
                let gone = self.protected.admit(id, source);
                self.evict(gone);
            }
            Err(Untaken::Replayed) => {
                return self.refused(peer, "admission token replayed".into());
            }
            Err(Untaken::Skewed(ms)) => {
                // The key holder's clock is off: it may still prove the key, but it
                // competes with strangers for its slot.
                bump(&self.shared.stats.control_skewed);
                warn!(
                    "control: {peer}: the client's clock is {:+.1} s from ours (more than \
                     {ADMIT_WINDOW:?}); its connection is not protected from eviction",
                    ms as f64 / 1e3
                );
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

    fn refused(&mut self, peer: SocketAddr, e: BoxError) {
        bump(&self.shared.stats.control_refused);
        debug!("control: {peer} refused: {e}");
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
        next: 0,
    };
    let mut controls = JoinSet::new();
    loop {
        while controls.try_join_next().is_some() {}
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: do not spin.
                        warn!("control: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
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
                    Err(e) => port.refused(peer, e),
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
    let mut heartbeat = tokio::time::interval(t.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let mut buf = [0u8; 64];
    let reason = loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if write_flush(&mut wr, b"\n", t.dead_after).await.is_err() {
                    break "write failed or stalled";
                }
            }
            r = rd.read(&mut buf) => match r {
                Ok(0) => break "closed by the client",
                Ok(n) if buf[..n].iter().all(|&b| b == b'\n') => heard = Instant::now(),
                Ok(_) => break "unexpected bytes from the client",
                Err(_) => break "read error",
            },
            _ = tokio::time::sleep_until(heard + t.dead_after) => {
                bump(&shared.stats.control_silent);
                break "no heartbeat from the client";
            }
            r = current.changed() => {
                let now = current.borrow_and_update().as_ref().map(|c| c.gen);
                if r.is_err() || now != Some(gen) {
                    break "replaced by a newer control connection";
                }
            }
        }
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

async fn public_accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    max_sessions: usize,
    limits: SourceLimits,
) {
    let gate = Arc::new(Semaphore::new(max_sessions.max(1)));
    let limits = Arc::new(std::sync::Mutex::new(limits));
    let mut sessions = JoinSet::new();
    // Set once on the listener where accepted sockets inherit it (Linux), else on
    // each user.
    let options = peer_socket_options();
    let each = !(pool_tokio::INHERITED_AT_ACCEPT && options.apply_listener(&listener).is_ok());
    loop {
        while sessions.try_join_next().is_some() {}
        let (user, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                warn!("public: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        bump(&shared.stats.users);
        // One source (a /24, a /64) holds and starts only its share: a flood from one
        // address is closed here, before it costs a pooled connection.
        let source = match lock(&limits).admit(peer.ip(), std::time::Instant::now()) {
            Ok(source) => source,
            Err(_) => {
                bump(&shared.stats.users_refused_source);
                continue; // closed at once
            }
        };
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            lock(&limits).release(source);
            bump(&shared.stats.users_refused);
            continue; // closed at once
        };
        if each {
            let _ = options.apply_tcp(&user);
        }
        let shared = shared.clone();
        let limits = limits.clone();
        sessions.spawn(async move {
            let ok = user_session(&shared, user).await;
            drop(permit);
            lock(&limits).release(source);
            bump(if ok {
                &shared.stats.relayed
            } else {
                &shared.stats.failed
            });
        });
    }
}

/// A lock whose critical sections are a few map or field operations.
fn lock<T>(l: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
