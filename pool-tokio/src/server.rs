//! The server pool: accepts the client pool's connections and keeps them idle by id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pool_core::{
    Admission, ConfigError, ConnId, HandshakeTicket, IdForm, IdleWatch, Liveness, ServerMachine,
    Stage, Want,
};
use pool_net::{IpFilter, SocketOptions};
use pool_tls::{Fingerprint, TunnelKey};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::builder::{PoolBuilder, ServerSide};
use crate::conn::{PoolConn, PoolStream};
use crate::engine::{self, drive, watch_hang_ups, Engine, Side};
use crate::error::{BuildError, GetError, StepError};
use crate::failures::FailureLog;
use crate::handle::{Owner, PoolHandle};
use crate::rt::{now, seeded, step};
use crate::tls::TlsConn;

/// Where a server pool listens: an address to bind (with address reuse), or a
/// listener you made. `From` an address, a std listener or a tokio listener.
#[derive(Debug)]
pub enum Listen {
    /// Bind this address.
    Addr(SocketAddr),
    /// This listener.
    Std(std::net::TcpListener),
    /// This tokio listener.
    Tokio(TcpListener),
}

impl From<SocketAddr> for Listen {
    fn from(a: SocketAddr) -> Self {
        Self::Addr(a)
    }
}

impl From<std::net::TcpListener> for Listen {
    fn from(l: std::net::TcpListener) -> Self {
        Self::Std(l)
    }
}

impl From<TcpListener> for Listen {
    fn from(l: TcpListener) -> Self {
        Self::Tokio(l)
    }
}

/// Builder of a [`ServerPool`]: where to listen and whom to let in (here), and what
/// every pool is told ([`PoolBuilder`]): its [`ServerConfig`](crate::ServerConfig), its [`ServeTls`](crate::ServeTls),
/// socket options, get timeout, tunnel key and name. Each thing is set in one place,
/// and no setter changes what another set.
///
/// ```no_run
/// # async fn f() -> Result<(), pool_tokio::PoolError> {
/// use pool_tokio::{ServeTls, ServerConfig, ServerPool};
/// let pool = ServerPool::builder()
///     .bind("0.0.0.0:10101".parse::<std::net::SocketAddr>().unwrap())
///     .config(ServerConfig::builder().max_capacity(2048))
///     .tls(ServeTls::self_signed())
///     .build()?;
/// # Ok(()) }
/// ```
pub type ServerPoolBuilder = PoolBuilder<ServerSide>;

impl PoolBuilder<ServerSide> {
    /// Where to listen: an address to bind (with address reuse), or a std or tokio
    /// listener you made (Go: `listener`). Required.
    pub fn bind(mut self, at: impl Into<Listen>) -> Self {
        self.side.listen = Some(at.into());
        self
    }
    /// Listen backlog when binding an address. Default 1024.
    pub fn backlog(mut self, n: u32) -> Self {
        self.side.backlog = n;
        self
    }
    /// Allowed client addresses (Go: `clientIP`; parse its string with
    /// [`IpFilter::parse`]). Default anyone.
    pub fn filter(mut self, f: IpFilter) -> Self {
        self.side.filter = f;
        self
    }

    /// Checks the settings, binds, and starts the accept loop. Call from inside a tokio
    /// runtime (Go: `NewServerPool` followed by `go ServerManager()`).
    ///
    /// # Errors
    ///
    /// [`BuildError::NoRuntime`] outside a tokio runtime, [`BuildError::Config`] for a
    /// setting that cannot work, [`BuildError::Tls`] for TLS material that cannot be
    /// loaded or made, [`BuildError::Missing`] without an address,
    /// [`BuildError::Io`] when the address cannot be bound, [`BuildError::Random`] if
    /// the system's secure generator fails.
    pub fn build(self) -> Result<ServerPool, BuildError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let mut cfg = self.config?.watched();
        if self.key.is_some() {
            cfg = cfg.keyed();
        }
        let filter = self.side.filter;
        // Session tickets as the config says (rustls's default: two per handshake), so
        // that a client pool's next dials resume instead of running a full handshake.
        // They reach the client before the id; any a client has not read yet are
        // records the probe processes (`PoolConn::liveness`), never payload.
        let (acceptor, fingerprint) = self.tls.build()?.unzip();
        let fingerprint = fingerprint.flatten();
        // With a key, the id and the proof's challenge leave in the server's first TLS
        // flight, behind its `Finished` (0.5-RTT data; see `crate::auth`).
        let acceptor = match (acceptor, &self.key) {
            (Some(c), Some(_)) => {
                let mut c = Arc::unwrap_or_clone(c);
                c.send_half_rtt_data = true;
                Some(Arc::new(c))
            }
            (acceptor, _) => acceptor,
        };
        let listener = {
            let _guard = rt.enter();
            let io = |source| BuildError::Io {
                what: "listen",
                source,
            };
            match self
                .side
                .listen
                .ok_or(BuildError::Missing("bind address or listener"))?
            {
                Listen::Addr(a) => {
                    from_std(pool_net::bind_listener(a, self.side.backlog).map_err(io)?)
                        .map_err(io)?
                }
                Listen::Std(l) => from_std(l).map_err(io)?,
                Listen::Tokio(l) => l,
            }
        };
        let local = listener.local_addr().map_err(|source| BuildError::Io {
            what: "listener address",
            source,
        })?;
        // Where accepted sockets inherit the listener's options, set them once here
        // rather than with five system calls on every connection.
        let socket =
            if pool_net::INHERITED_AT_ACCEPT && self.socket.apply_listener(&listener).is_ok() {
                None
            } else {
                Some(self.socket)
            };
        // A filter that can never match the listener's address family shuts everybody
        // out, silently: refuse it here instead.
        let reachable = match local.ip() {
            std::net::IpAddr::V4(_) => filter.can_match_family(true),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                filter.can_match_family(true) || filter.can_match_family(false)
            }
            std::net::IpAddr::V6(_) => filter.can_match_family(false),
        };
        if !reachable {
            return Err(ConfigError::Conflict {
                first: "the client-IP filter",
                second: "the listening address",
                hint: "no entry of the filter is of the listener's address family, so every \
                       client would be refused",
            }
            .into());
        }
        let machine = ServerMachine::new(cfg.clone(), seeded()?, now());
        let inner = Arc::new_cyclic(|me| Inner {
            engine: Engine::new(
                machine,
                &self.name,
                me.clone(),
                rt,
                if cfg.watch_hang_ups() {
                    IdleWatch::HangUps
                } else {
                    IdleWatch::Off
                },
            ),
            id_form: cfg.id_form(),
            filter,
            acceptor,
            socket,
            key: self.key,
        });
        inner.engine.spawn(accept_loop(inner.clone(), listener));
        inner.engine.spawn(drive(inner.clone()));
        inner.engine.spawn(watch_hang_ups(inner.clone()));
        Ok(ServerPool {
            handle: PoolHandle::new(&inner),
            owner: Arc::new(Owner(inner)),
            local,
            fingerprint,
            get_timeout: self.get_timeout,
        })
    }
}

fn from_std(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

struct Inner {
    engine: Engine<Self>,
    acceptor: Option<Arc<rustls::ServerConfig>>,
    /// Options to set on each accepted socket; `None` when the listener carries them
    /// and every accepted socket inherits them.
    socket: Option<SocketOptions>,
    id_form: IdForm,
    key: Option<TunnelKey>,
    filter: IpFilter,
}

impl Side for Inner {
    type M = ServerMachine<PoolConn>;
    const CLIENT: bool = false;
    fn engine(&self) -> &Engine<Self> {
        &self.engine
    }
    /// Stricter than the client's rule: an idle server connection receives nothing
    /// from a pool client until the application takes it, so bytes pending on it come
    /// from something else. Pending bytes that open a TLS record (a client in the wrong
    /// mode), or pending bytes behind which the peer already closed, make it dead.
    ///
    /// A TLS record is that client's handshake failing late (its ClientHello came
    /// after the id was written): it goes in the log as the mismatch it is, so a get
    /// that times out names it.
    fn peek(conn: &mut PoolConn, log: &FailureLog) -> Liveness {
        match conn.liveness() {
            Liveness::Pending if !conn.is_tls() => {
                let mut first = [0u8; 3];
                let tls = pool_net::peek_now(conn.tcp(), &mut first)
                    .is_ok_and(|n| pool_net::looks_like_tls(&first[..n]));
                if tls {
                    let peer = conn.tcp().peer_addr().ok();
                    log.fail(Stage::Protocol, StepError::ClientSpeaksTls, peer);
                }
                if tls {
                    Liveness::Dead(std::io::ErrorKind::InvalidData)
                } else if pool_net::peer_closed(conn.tcp()) {
                    Liveness::Closed
                } else {
                    Liveness::Pending
                }
            }
            other => other,
        }
    }
}

impl Inner {
    /// TLS, id write, key proof: each step until it ends or the core aborts the
    /// handshake (its deadline passed, a newer connection evicted it, or the pool
    /// closed).
    async fn handshake(
        &self,
        ticket: &mut HandshakeTicket,
        tcp: TcpStream,
        token: &CancellationToken,
    ) -> Result<PoolConn, (Stage, StepError)> {
        if let Some(Err(e)) = self.socket.map(|o| o.apply_tcp(&tcp)) {
            debug!(error = %e, "socket options not applied");
        }
        // A client silent past `HELLO_WAIT` is told that this server runs TLS; if it
        // then gives up before the deadline, it is named as the mode mismatch (a
        // mode-0 client of this crate closes at once).
        let mut hinted = false;
        if self.acceptor.is_some() {
            // A TLS client speaks first (its ClientHello): once a byte is in, this
            // handshake is no longer silent, and silent ones yield first when every
            // slot is taken (a slowloris crowd churns among itself).
            // A peek, not `readable()`: readiness alone may be a false positive.
            let hinted_ref = &mut hinted;
            let hello = Box::pin(async {
                *hinted_ref = crate::tls::hint_if_silent(&tcp).await;
                let mut first = [0u8; 1];
                tcp.peek(&mut first).await.map_err(StepError::from)
            });
            match step(token, Stage::Tls, hello).await {
                Ok(_) => {}
                // A deadline stays a deadline: a silent stranger is not a mismatch.
                Err(e @ (_, StepError::Timeout)) => return Err(e),
                Err(_) if hinted => return Err((Stage::Protocol, StepError::ClientSilent)),
                Err(e) => return Err(e),
            }
            self.engine.driver.input(|m, _| m.handle_spoke(ticket));
        }
        // With a key, `Ns` leaves in the same write as the id: the id's message is
        // the proof's first (`crate::auth`).
        let ns = match &self.key {
            Some(_) => Some(crate::auth::server_nonce().map_err(|e| (Stage::Auth, e))?),
            None => None,
        };
        let hello = |id: &ConnId| {
            let wire = self.id_form.encode(id);
            let mut hello = wire.as_ref().to_vec();
            hello.extend_from_slice(ns.as_ref().map_or(&[][..], |n| &n[..]));
            hello
        };
        // Keyed TLS: the id is drawn before the handshake, and the hello rides in the
        // server's first flight (0.5-RTT data), not a flight of its own.
        let early = match (&self.acceptor, &self.key) {
            (Some(_), Some(_)) => {
                let id = self.engine.driver.input(|m, _| m.assign_id(ticket));
                hello(&id)
            }
            _ => Vec::new(),
        };
        let stream = match &self.acceptor {
            None => PoolStream::Plain(tcp),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let early = &early;
                // Boxed, as the key proof below: a handshake task's future holds only
                // what the mode needs (thousands are spawned to fill a pool).
                let tls = Box::pin(async move {
                    TlsConn::accept(acceptor, tcp, early)
                        .await
                        .map_err(StepError::from)
                });
                match step(token, Stage::Tls, tls).await {
                    Ok(s) => PoolStream::Tls(Box::new(s)),
                    Err(e @ (_, StepError::Timeout)) => return Err(e),
                    Err(_) if hinted => return Err((Stage::Protocol, StepError::ClientSilent)),
                    Err(e) => return Err(e),
                }
            }
        };
        let id = self.engine.driver.input(|m, _| m.assign_id(ticket));
        let mut conn = PoolConn { id, stream };
        let wire = self.id_form.encode(&id);
        if early.is_empty() {
            let hello = hello(&id);
            let write = async {
                conn.write_all(&hello).await?;
                conn.flush().await
            };
            step(token, Stage::Id, async {
                write.await.map_err(StepError::from)
            })
            .await?;
        }
        if let (PoolStream::Plain(tcp), None) = (&conn.stream, &self.key) {
            // A client in TLS mode sends its ClientHello at once: if it is already
            // here, say so now (it would otherwise sit idle until the client gives up).
            // With a key the proof reads those bytes as its response and names them.
            let mut first = [0u8; 3];
            if pool_net::peek_now(tcp, &mut first)
                .is_ok_and(|n| pool_net::looks_like_tls(&first[..n]))
            {
                return Err((Stage::Protocol, StepError::ClientSpeaksTls));
            }
        }
        if let (Some(key), Some(ns)) = (&self.key, ns) {
            let auth = Box::pin(crate::auth::server_auth(&mut conn, key, wire.as_ref(), ns));
            step(token, Stage::Auth, auth)
                .await
                .map_err(|(stage, e)| match e {
                    StepError::ClientSpeaksTls => (Stage::Protocol, e),
                    e => (stage, e),
                })?;
        }
        Ok(conn)
    }
}

async fn handshake(
    inner: Arc<Inner>,
    mut ticket: HandshakeTicket,
    tcp: TcpStream,
    peer: SocketAddr,
    token: CancellationToken,
) {
    let span = tracing::debug_span!("handshake", serial = ticket.serial(), %peer);
    let res = inner
        .handshake(&mut ticket, tcp, &token)
        .instrument(span.clone())
        .await;
    let engine = &inner.engine;
    let failure = match &res {
        Ok(conn) => {
            span.in_scope(|| debug!(id = %conn.id, "handshake done"));
            None
        }
        Err((stage, e)) => Some((*stage, e.clone())),
    };
    // Whether the core counts it: not when a newer connection evicted it, nor when
    // the pool closed.
    let counted =
        engine.report(|driver| driver.handshaken(ticket, res.map_err(|(stage, _)| stage)));
    match failure {
        None => engine.log().succeed(),
        Some((stage, e)) => {
            span.in_scope(|| debug!(?stage, error = %e, counted, "handshake failed"));
            if counted {
                engine.log().fail(stage, e, Some(peer));
            }
        }
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let engine = &inner.engine;
    if let Ok(addr) = listener.local_addr() {
        engine.log().listening(addr);
    }
    let cancel = engine.rt().cancel.clone();
    let mut refusals = Burst::default();
    loop {
        let res = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        let (tcp, peer) = match res {
            Ok(pair) => {
                engine.log().reached();
                pair
            }
            Err(e) => {
                // Out of descriptors and the like: the core says when to try again.
                let resume = engine.driver.input(|m, now| m.handle_accept_error(now));
                warn!(error = %e, "accept failed; backing off");
                tokio::select! {
                    _ = tokio::time::sleep_until(resume.into()) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        let allowed = inner.filter.allows(peer.ip());
        if !allowed {
            // Seen by a get that times out: a filter that shuts out the real client
            // names itself.
            engine
                .log()
                .fail(Stage::Connect, StepError::Filtered, Some(peer));
        }
        // Aborts the handshake this one evicted, if any.
        let admission = engine
            .driver
            .input(|m, now| m.handle_accept(now, peer.ip(), allowed));
        match admission {
            Admission::Admit(ticket) => {
                // Only this loop admits, so the token is registered before any later
                // accept can evict its handshake.
                let serial = ticket.serial();
                let task = |token| handshake(inner.clone(), ticket, tcp, peer, token);
                engine.spawn_step(serial, task);
            }
            Admission::Refuse(why) => {
                debug!(%peer, ?why, "connection refused");
                drop(tcp);
                refusals.count(peer, why);
            }
        }
    }
}

/// Refusals, warned about at most once every ten seconds: a filter that shuts out the
/// real client shows at once, and a flood of strangers does not flood the log.
#[derive(Default)]
struct Burst {
    last_warn: Option<tokio::time::Instant>,
    since: u64,
}

impl Burst {
    const EVERY: Duration = Duration::from_secs(10);

    fn count(&mut self, peer: SocketAddr, why: pool_core::Refusal) {
        self.since += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_warn
            .is_some_and(|t| now.duration_since(t) < Self::EVERY)
        {
            return;
        }
        match why {
            pool_core::Refusal::Filter => warn!(
                %peer, refused = self.since,
                "client-IP filter refused a connection (is the filter shutting out the real client?)"
            ),
            _ => warn!(%peer, ?why, refused = self.since, "server pool refusing connections"),
        }
        self.last_warn = Some(now);
        self.since = 0;
    }
}

/// The server end of the pool. Cheap to clone; the pool closes when the last clone is
/// dropped or [`close`](PoolHandle::close) is called.
///
/// ```no_run
/// # async fn f() -> Result<(), pool_tokio::PoolError> {
/// use pool_tokio::ServerPool;
/// use std::time::Duration;
/// let pool = ServerPool::builder().bind("127.0.0.1:10101".parse::<std::net::SocketAddr>().unwrap()).build()?;
/// let (id, conn) = pool.get_timeout(Duration::from_secs(2)).await?;
/// // Send `id` to the client side over the control channel, then relay on `conn`.
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerPool {
    owner: Arc<Owner<Inner>>,
    handle: PoolHandle<ServerMachine<PoolConn>>,
    local: SocketAddr,
    fingerprint: Option<Fingerprint>,
    get_timeout: Duration,
}

crate::handle::deref_to_handle!(ServerPool, ServerMachine<PoolConn>);

impl std::fmt::Debug for ServerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ServerPool");
        d.field("local", &self.local);
        self.handle.debug(d)
    }
}

impl ServerPool {
    /// A builder with the defaults (Go: `NewServerPool`).
    #[doc(alias = "NewServerPool")]
    pub fn builder() -> ServerPoolBuilder {
        ServerPoolBuilder::default()
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.0
    }

    /// The address the pool listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Idle and settling connections counted for `peer`'s source under the idle quota
    /// (always zero without one, see
    /// [`AdmissionLimits::idle_per_source`](pool_core::AdmissionLimits::idle_per_source)).
    pub fn idle_from(&self, peer: std::net::IpAddr) -> usize {
        self.inner().engine.driver.input(|m, _| m.idle_from(peer))
    }

    /// The SHA-256 fingerprint of the certificate served, for a mode-1 client to pin.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The oldest live idle connection and its id, waiting up to the builder's
    /// [`get_timeout`](ServerPoolBuilder::get_timeout) (Go: `ServerGet`; later releases:
    /// `IncomingGet`). The connection passed the liveness probe; no byte of it was
    /// read by the pool. It is yours to use once: dropping it closes it.
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`] (with the handshake failure behind it, if every recent
    /// one failed); [`GetError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future before it completes loses no connection. A
    /// connection that was already on its way to this get goes back to the pool.
    #[doc(alias = "ServerGet")]
    #[doc(alias = "IncomingGet")]
    pub async fn get(&self) -> Result<(ConnId, PoolConn), GetError> {
        self.get_timeout(self.get_timeout).await
    }

    /// [`get`](Self::get) with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    ///
    /// # Cancel safety
    ///
    /// As [`get`](Self::get).
    pub async fn get_timeout(&self, timeout: Duration) -> Result<(ConnId, PoolConn), GetError> {
        engine::get_for_user(self.inner(), Want::Any, timeout).await
    }

    /// Starts a session in band (for a client pool built with
    /// [`IdleWatch::Starts`](pool_core::IdleWatch::Starts)): takes the
    /// oldest live idle connection as [`get`](Self::get) does, writes
    /// [`START`](pool_core::START) on it, and hands it out. The client's
    /// [`accept`](crate::ClientPool::accept) receives the same connection as soon as
    /// the header reaches it: no id over a control channel, no round trip. Write the
    /// session's data right after. A connection whose header cannot be written (its
    /// peer reset it) is closed and the next one is tried, within `get_timeout`.
    ///
    /// Not part of the Go wire protocol: a Go client pool would take the header for
    /// payload.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    ///
    /// # Cancel safety
    ///
    /// A connection still in the pool is never lost; one whose header is being written
    /// when the future is dropped is closed.
    pub async fn start(&self) -> Result<(ConnId, PoolConn), GetError> {
        self.start_with(&[], self.get_timeout).await
    }

    /// [`start`](Self::start) with the session's first bytes and its own timeout: the
    /// header and `first` leave in one write (one TCP segment, one TLS record), where a
    /// start followed by a write of its own costs two of each. If the connection turns
    /// out to be closed, the next one is tried with the same bytes.
    ///
    /// ```no_run
    /// # async fn f(server: pool_tokio::ServerPool) -> Result<(), pool_tokio::GetError> {
    /// let hello = b"GET / HTTP/1.1\r\n\r\n";
    /// let (_id, conn) = server
    ///     .start_with(hello, std::time::Duration::from_secs(2))
    ///     .await?;
    /// # drop(conn); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    ///
    /// # Cancel safety
    ///
    /// As [`start`](Self::start).
    pub async fn start_with(
        &self,
        first: &[u8],
        timeout: Duration,
    ) -> Result<(ConnId, PoolConn), GetError> {
        let deadline = pool_core::deadline_after(now(), timeout);
        let mut message = Vec::with_capacity(pool_core::START.len() + first.len());
        message.extend_from_slice(&pool_core::START);
        message.extend_from_slice(first);
        loop {
            let left = deadline.saturating_duration_since(now());
            let (id, mut conn) = engine::get_for_user(self.inner(), Want::Any, left).await?;
            let write = async {
                conn.write_all(&message).await?;
                conn.flush().await
            };
            match tokio::time::timeout(left, write).await {
                Ok(Ok(())) => return Ok((id, conn)),
                _ => debug!(%id, "start header not written: the connection is closed"),
            }
        }
    }
}
