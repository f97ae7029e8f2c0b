//! The server pool: accepts the client pool's connections and keeps them idle by id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pool_core::{
    Admission, ConnId, HandshakeTicket, IdForm, ServerConfig, ServerConfigBuilder, ServerMachine,
    Stage, Want,
};
use pool_net::{IpFilter, SocketOptions};
use pool_tls::{Fingerprint, ServerTls, TlsMode, TunnelKey};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::conn::{PoolConn, PoolStream};
use crate::engine::{self, drive, watch_hang_ups, Engine, Side, WatchFor};
use crate::error::{BuildError, GetError, StepError};
use crate::failures::FailureLog;
use crate::handle::{Owner, PoolHandle};
use crate::rt::{now, seeded, step};
use crate::tls::TlsConn;

enum Listen {
    Addr(SocketAddr),
    Std(std::net::TcpListener),
    Tokio(TcpListener),
}

enum Tls {
    Mode(TlsMode),
    Cert(ServerTls),
    Config(Arc<rustls::ServerConfig>),
}

/// Builder of a [`ServerPool`].
#[must_use]
pub struct ServerPoolBuilder {
    core: ServerConfigBuilder,
    go_normalized: bool,
    listen: Option<Listen>,
    backlog: u32,
    filter: Result<IpFilter, pool_net::FilterError>,
    tls: Tls,
    hostname: String,
    socket: SocketOptions,
    get_timeout: Duration,
    key: Option<TunnelKey>,
    name: String,
    watch_idle: bool,
    sweep_set: bool,
    settle: Option<Duration>,
}

impl std::fmt::Debug for ServerPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPoolBuilder")
            .field("core", &self.core)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl Default for ServerPoolBuilder {
    fn default() -> Self {
        Self {
            core: ServerConfig::builder(),
            go_normalized: false,
            listen: None,
            backlog: 1024,
            filter: Ok(IpFilter::any()),
            tls: Tls::Mode(TlsMode::Off),
            hostname: "localhost".into(),
            socket: SocketOptions::default(),
            get_timeout: Duration::from_secs(5),
            key: None,
            name: "pool".into(),
            watch_idle: true,
            sweep_set: false,
            settle: None,
        }
    }
}

impl ServerPoolBuilder {
    /// Listens on `addr` (with address reuse). One of `bind` and `listener` is required
    /// (Go: `listener`).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(Listen::Addr(addr));
        self
    }
    /// Listens on a listener you made.
    pub fn listener(mut self, l: std::net::TcpListener) -> Self {
        self.listen = Some(Listen::Std(l));
        self
    }
    /// Listens on a tokio listener you made.
    pub fn tokio_listener(mut self, l: TcpListener) -> Self {
        self.listen = Some(Listen::Tokio(l));
        self
    }
    /// Listen backlog when binding. Default 1024.
    pub fn backlog(mut self, n: u32) -> Self {
        self.backlog = n;
        self
    }
    /// Allowed client addresses (Go: `clientIP`): empty means anyone, else addresses
    /// and CIDR blocks separated by commas. A bad entry fails `build`. Default anyone.
    pub fn client_ip(mut self, spec: &str) -> Self {
        self.filter = IpFilter::parse(spec);
        self
    }
    /// Allowed client addresses as a parsed filter.
    pub fn filter(mut self, f: IpFilter) -> Self {
        self.filter = Ok(f);
        self
    }
    /// TLS mode (Go: `tlsCode`). Mode 1 without a certificate generates a self-signed
    /// one for the [`hostname`](Self::hostname); mode 2 needs [`tls`](Self::tls).
    /// Default `0`, plain.
    pub fn tls_mode(mut self, mode: TlsMode) -> Self {
        self.tls = Tls::Mode(mode);
        self
    }
    /// Serves TLS with this certificate (Go: `tlsConfig`).
    pub fn tls(mut self, cert: ServerTls) -> Self {
        self.tls = Tls::Cert(cert);
        self
    }
    /// Serves TLS with a rustls config of your own.
    pub fn tls_config(mut self, cfg: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Tls::Config(cfg);
        self
    }
    /// Name on a generated self-signed certificate. Default `localhost`.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = name.into();
        self
    }
    /// TCP keep-alive period (Go: `keepAlive`). Default 30 s.
    pub fn keepalive(mut self, period: Duration) -> Self {
        self.socket.keepalive = Some(period);
        self
    }
    /// All socket options at once. Where accepted sockets inherit a listener's
    /// options (Linux), they are set once on the listener, bound or given, instead of
    /// on each connection.
    pub fn socket_options(mut self, o: SocketOptions) -> Self {
        self.socket = o;
        self
    }
    /// Authenticated connections kept at most (later Go releases: `maxCap`); handshakes
    /// under way do not count (see `max_handshakes`). Default 1024.
    pub fn max_capacity(mut self, n: usize) -> Self {
        self.core = self.core.max_capacity(n);
        self
    }
    /// Handshakes at once at most. Default 256. When every slot is taken, a new
    /// connection evicts the oldest handshake (slowloris defence, see
    /// [`pool_core::ServerConfigBuilder::max_handshakes`]).
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.core = self.core.max_handshakes(n);
        self
    }
    /// Handshakes under way from one source at most; over it, a new connection from
    /// that source evicts the source's oldest handshake. Default `Some(64)`: a client
    /// pool of this crate dials up to 64 at once, a Go client pool one. See
    /// [`pool_core::ServerConfigBuilder::pending_per_source`].
    pub fn pending_per_source(mut self, n: Option<usize>) -> Self {
        self.core = self.core.pending_per_source(n);
        self
    }
    /// Idle connections from one source at most; over it, new connections from that
    /// source are refused (`refused_quota`). Default `None`: the legitimate client is
    /// one source that holds the whole pool, so only an operator who knows the
    /// topology can set it. See [`pool_core::ServerConfigBuilder::idle_per_source`].
    pub fn idle_per_source(mut self, n: Option<usize>) -> Self {
        self.core = self.core.idle_per_source(n);
        self
    }
    /// Prefix lengths that group peer addresses into sources for the quotas. Default
    /// /32 for IPv4 and /64 for IPv6.
    pub fn source_prefixes(mut self, v4: u8, v6: u8) -> Self {
        self.core = self.core.source_prefixes(v4, v6);
        self
    }
    /// Deadline of TLS handshake plus id write. Default 5 s (Go: none).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.core = self.core.handshake_timeout(d);
        self
    }
    /// Wire form of the id. Default [`IdForm::Hex8`].
    pub fn id_form(mut self, form: IdForm) -> Self {
        self.core = self.core.id_form(form);
        self
    }
    /// Timeout of [`ServerPool::get`]. Default 5 s.
    pub fn get_timeout(mut self, d: Duration) -> Self {
        self.get_timeout = d;
        self
    }
    /// How often idle connections are probed and dead ones dropped. Default 1 s, or
    /// [`WATCHED_SWEEP`](crate::WATCHED_SWEEP) (30 s) while the hang-up watch is on
    /// (`watch_idle`, Linux): dead peers are then found without it.
    pub fn sweep_interval(mut self, d: Duration) -> Self {
        self.core = self.core.sweep_interval(d);
        self.sweep_set = true;
        self
    }
    /// Whether the OS reports the peers' hang-ups on held connections (Linux: an
    /// `epoll` set of the pool's own), so a dead peer leaves the pool in milliseconds
    /// instead of at the next sweep. Default `true`; elsewhere than Linux, no effect.
    pub fn watch_idle(mut self, on: bool) -> Self {
        self.watch_idle = on;
        self
    }
    /// Closes connections idle longer than this (checked at each sweep and each get).
    /// Default 10 minutes, so that a stranger cannot hold an idle slot for ever when no
    /// tunnel key is set; the client replaces a closed connection at its next sweep.
    /// `None`: no limit, as in the Go package. See
    /// [`pool_core::ServerConfigBuilder::max_idle_age`].
    pub fn max_idle_age(mut self, age: Option<Duration>) -> Self {
        self.core = self.core.max_idle_age(age);
        self
    }
    /// Admit only connections that prove this key right after their id (within the
    /// handshake deadline), in a mutual challenge-response over fresh nonces, bound to
    /// the TLS session in modes 1 and 2 (`pool_tls::proof`); the others are closed and
    /// counted as `auth_failures`, so a stranger who reaches the tunnel port never
    /// enters the pool (and never receives anything computed with the key). Not part of the Go
    /// wire protocol: set it on both ends or on neither. Default none.
    pub fn tunnel_key(mut self, key: TunnelKey) -> Self {
        self.key = Some(key);
        self
    }
    /// How long a new connection waits after its id was written before a get can take
    /// it, so that a Go client pool has registered the id by the time the application
    /// sends it over. Default 25 ms ([`pool_core::DEFAULT_SETTLE`]), or zero when a
    /// [`tunnel_key`](Self::tunnel_key) is set (the client registers the id before its
    /// proof arrives). Connections idle longer are not affected. See
    /// [`pool_core::ServerConfigBuilder::settle`].
    pub fn settle(mut self, d: Duration) -> Self {
        self.settle = Some(d);
        self
    }
    /// The pool's name: the `name` label of its metrics (feature `metrics`), so that
    /// several pools in one process stay apart, and shown by `Debug`. Default `pool`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }
    /// Zero settings become defaults instead of errors, as the Go package would.
    pub fn go_normalized(mut self, on: bool) -> Self {
        self.go_normalized = on;
        self
    }

    /// Checks the settings, binds, and starts the accept loop. Call from inside a tokio
    /// runtime (Go: `NewServerPool` followed by `go ServerManager()`).
    ///
    /// # Errors
    ///
    /// [`BuildError::NoRuntime`] outside a tokio runtime, [`BuildError::Config`] for a
    /// setting that cannot work, [`BuildError::Filter`] for a client-IP entry that does
    /// not parse, [`BuildError::Tls`] for TLS material that cannot be loaded or made,
    /// [`BuildError::Missing`] without an address or a mode-2 certificate,
    /// [`BuildError::Io`] when the address cannot be bound, [`BuildError::Random`] if
    /// the system's secure generator fails.
    pub fn build(self) -> Result<ServerPool, BuildError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let settle = match (self.settle, &self.key) {
            (Some(d), _) => d,
            (None, Some(_)) => Duration::ZERO,
            (None, None) => pool_core::DEFAULT_SETTLE,
        };
        let mut core = self.core.settle(settle);
        if crate::watched_sweep(self.watch_idle, self.sweep_set, self.go_normalized) {
            core = core.sweep_interval(crate::WATCHED_SWEEP);
        }
        let cfg = if self.go_normalized {
            core.build_go_normalized()
        } else {
            core.build()?
        };
        let filter = self.filter?;
        let (tls_config, fingerprint) = match self.tls {
            Tls::Mode(TlsMode::Off) => (None, None),
            Tls::Mode(TlsMode::SelfSigned) => {
                let cert = ServerTls::self_signed([self.hostname.clone()])?;
                (Some(cert.config()?), Some(cert.fingerprint()))
            }
            Tls::Mode(_) => {
                return Err(BuildError::Missing(
                    "a certificate for TLS mode 2 (use `tls`)",
                ))
            }
            Tls::Cert(cert) => (Some(cert.config()?), Some(cert.fingerprint())),
            Tls::Config(c) => (Some(c), None),
        };
        // Session tickets as the config says (rustls's default: two per handshake), so
        // that a client pool's next dials resume instead of running a full handshake.
        // They reach the client before the id; any a client has not read yet are
        // records the probe processes (`PoolConn::liveness`), never payload.
        let acceptor = tls_config;
        let listener = {
            let _guard = rt.enter();
            let io = |source| BuildError::Io {
                what: "listen",
                source,
            };
            match self
                .listen
                .ok_or(BuildError::Missing("bind address or listener"))?
            {
                Listen::Addr(a) => {
                    from_std(pool_net::bind_listener(a, self.backlog).map_err(io)?).map_err(io)?
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
            return Err(pool_core::ConfigError::Conflict {
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
                if self.watch_idle {
                    WatchFor::HangUps
                } else {
                    WatchFor::Nothing
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
    filter: IpFilter,
    acceptor: Option<Arc<rustls::ServerConfig>>,
    /// Options to set on each accepted socket; `None` when the listener carries them
    /// and every accepted socket inherits them.
    socket: Option<SocketOptions>,
    id_form: IdForm,
    key: Option<TunnelKey>,
}

impl Side for Inner {
    type M = ServerMachine<PoolConn>;
    const CLIENT: bool = false;
    fn engine(&self) -> &Engine<Self> {
        &self.engine
    }
    /// A server machine never asks for a dial.
    fn dial(self: Arc<Self>, ticket: pool_core::DialTicket) {
        drop(ticket);
    }
    /// Stricter than the client's rule: an idle server connection receives nothing
    /// from a pool client until the application takes it, so bytes pending on it come
    /// from something else. Pending bytes that open a TLS record (a client in the wrong
    /// mode), or pending bytes behind which the peer already closed, make it dead.
    ///
    /// A TLS record is that client's handshake failing late (its ClientHello came
    /// after the id was written): it goes in the log as the mismatch it is, so a get
    /// that times out names it.
    fn peek(conn: &mut PoolConn, log: &FailureLog) -> pool_core::driver::Peek {
        use pool_core::driver::Peek;
        match conn.liveness() {
            pool_net::Liveness::Pending if !conn.is_tls() => {
                let mut first = [0u8; 3];
                let tls = pool_net::peek_now(conn.tcp(), &mut first)
                    .is_ok_and(|n| pool_net::looks_like_tls(&first[..n]));
                if tls {
                    let peer = conn.tcp().peer_addr().ok();
                    log.fail(Stage::Protocol, StepError::ClientSpeaksTls, peer);
                }
                if tls || pool_net::peer_closed(conn.tcp()) {
                    Peek::Dead
                } else {
                    Peek::Pending
                }
            }
            pool_net::Liveness::Idle => Peek::Quiet,
            pool_net::Liveness::Pending => Peek::Pending,
            pool_net::Liveness::Closed | pool_net::Liveness::Dead(_) => Peek::Dead,
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
        if self.acceptor.is_some() {
            // A TLS client speaks first (its ClientHello): once a byte is in, this
            // handshake is no longer silent, and silent ones yield first when every
            // slot is taken (a slowloris crowd churns among itself).
            // A peek, not `readable()`: readiness alone may be a false positive.
            let hello = Box::pin(async {
                let mut first = [0u8; 1];
                tcp.peek(&mut first).await.map_err(StepError::from)
            });
            step(token, Stage::Tls, hello).await?;
            self.engine.driver.input(|m, _| m.handle_spoke(ticket));
        }
        let stream = match &self.acceptor {
            None => PoolStream::Plain(tcp),
            Some(acceptor) => {
                // As the client pool: tokio-rustls's stream only for the key proof.
                let lean = self.key.is_none();
                let tls = TlsConn::accept(acceptor.clone(), tcp, lean);
                // Boxed, as the key proof below: a handshake task's future holds only
                // what the mode needs (thousands are spawned to fill a pool).
                let tls = Box::pin(async { tls.await.map_err(StepError::from) });
                let s = step(token, Stage::Tls, tls).await?;
                PoolStream::Tls(Box::new(s))
            }
        };
        let id = self.engine.driver.input(|m, _| m.assign_id(ticket));
        let mut conn = PoolConn { id, stream };
        let wire = self.id_form.encode(&id);
        let write = async {
            conn.write_all(wire.as_ref()).await?;
            conn.flush().await
        };
        step(token, Stage::Id, async {
            write.await.map_err(StepError::from)
        })
        .await?;
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
        if let Some(key) = &self.key {
            let auth = Box::pin(crate::auth::server_auth(&mut conn, key, wire.as_ref()));
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
    let res = res.map(|mut conn| {
        conn.trim(); // idle from here: no I/O buffers
        conn
    });
    // Whether the core counts it: not when a newer connection evicted it, nor when
    // the pool closed.
    let counted = engine.report(ticket.serial(), |driver| {
        driver.handshaken(ticket, res.map_err(|(stage, _)| stage))
    });
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
    let cancel = engine.rt().cancel.clone();
    let mut refusals = Burst::default();
    loop {
        let res = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        let (tcp, peer) = match res {
            Ok(pair) => pair,
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
/// dropped or [`close`](Self::close) is called.
///
/// ```no_run
/// # async fn f() -> Result<(), pool_tokio::PoolError> {
/// use pool_tokio::ServerPool;
/// use std::time::Duration;
/// let pool = ServerPool::builder().bind("127.0.0.1:10101".parse().unwrap()).build()?;
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

impl std::ops::Deref for ServerPool {
    type Target = PoolHandle<ServerMachine<PoolConn>>;
    fn deref(&self) -> &Self::Target {
        &self.handle
    }
}

impl std::fmt::Debug for ServerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPool")
            .field("local", &self.local)
            .field("name", &self.name())
            .field("status", &self.stats().status)
            .finish()
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
    /// (always zero without one, see [`ServerPoolBuilder::idle_per_source`]).
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
    /// [`ClientPoolBuilder::in_band`](crate::ClientPoolBuilder::in_band)): takes the
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
        self.start_timeout(self.get_timeout).await
    }

    /// [`start`](Self::start) with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    ///
    /// # Cancel safety
    ///
    /// As [`start`](Self::start).
    pub async fn start_timeout(&self, timeout: Duration) -> Result<(ConnId, PoolConn), GetError> {
        self.start_with(&[], timeout).await
    }

    /// [`start_timeout`](Self::start_timeout) with the session's first bytes: the
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

    /// Closes every idle connection (Go: `Flush`).
    #[doc(alias = "Flush")]
    pub fn flush(&self) {
        let closed = self.inner().engine.driver.flush();
        info!(closed, "server pool flushed");
    }

    /// Closes the pool: the listener stops, waiting gets fail with
    /// [`GetError::Closed`], idle connections and handshakes in flight are closed, and
    /// this returns once every task of the pool has ended (Go: `Close`). Closing twice
    /// is harmless.
    ///
    /// # Cancel safety
    ///
    /// The pool is closed by the time the future is first polled; dropping the future
    /// only stops waiting for the pool's tasks to end.
    #[doc(alias = "Close")]
    pub async fn close(&self) {
        self.inner().engine.shut();
        self.inner().engine.rt().tasks.wait().await;
    }

    /// The maximum capacity (Go: `Capacity`).
    #[doc(alias = "Capacity")]
    pub fn capacity(&self) -> usize {
        self.stats().status.capacity
    }

    /// The sweep interval: a server pool does not refill, and what paces it is the
    /// sweep of its idle connections (Go: `Interval`).
    pub fn interval(&self) -> Duration {
        self.stats().status.interval
    }
}
