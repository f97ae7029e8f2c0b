//! The client pool: dials ahead so that idle connections wait at the server.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pool_core::{
    CapacityPolicy, ClientConfig, ClientConfigBuilder, ClientMachine, ConnId, DialTicket, IdForm,
    IdReader, IntervalPolicy, Stage, Want,
};
use pool_net::SocketOptions;
use pool_tls::{ClientTlsBuilder, Fingerprint, TlsMode, TunnelKey};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::conn::{PoolConn, PoolStream};
use crate::dialer::{Dialer, TcpDialer};
use crate::engine::{self, drive, watch_hang_ups, Engine, Side, WatchFor};
use crate::error::{BuildError, GetError, StepError};
use crate::handle::{Owner, PoolHandle};
use crate::rt::{now, seeded, step};
use crate::tls::TlsConn;

/// Builder of a [`ClientPool`]. Each setter names the Go parameter it stands for and
/// its default.
#[must_use]
pub struct ClientPoolBuilder {
    core: ClientConfigBuilder,
    go_normalized: bool,
    dialer: Option<Arc<dyn Dialer>>,
    tls_mode: TlsMode,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    pin: Option<Fingerprint>,
    ca_file: Option<PathBuf>,
    hostname: Option<String>,
    socket: SocketOptions,
    get_timeout: Duration,
    key: Option<TunnelKey>,
    name: String,
    watch_idle: bool,
    sweep_set: bool,
    single_tls: bool,
}

impl std::fmt::Debug for ClientPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPoolBuilder")
            .field("core", &self.core)
            .field("tls_mode", &self.tls_mode)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl Default for ClientPoolBuilder {
    fn default() -> Self {
        Self {
            core: ClientConfig::builder(),
            go_normalized: false,
            dialer: None,
            tls_mode: TlsMode::Off,
            tls_config: None,
            pin: None,
            ca_file: None,
            hostname: None,
            socket: SocketOptions::default(),
            get_timeout: Duration::from_secs(5),
            key: None,
            name: "pool".into(),
            watch_idle: true,
            sweep_set: false,
            single_tls: false,
        }
    }
}

impl ClientPoolBuilder {
    /// Where to dial: the server pool's address, a [`SocketAddr`](std::net::SocketAddr)
    /// or a `host:port` string resolved at every dial ([`ServerAddr`](crate::ServerAddr);
    /// Go: the `dialer` function).
    pub fn address(self, addr: impl Into<crate::ServerAddr>) -> Self {
        self.dialer(TcpDialer::to(addr))
    }
    /// How to dial. Required unless [`address`](Self::address) is given.
    pub fn dialer(mut self, d: impl Dialer) -> Self {
        self.dialer = Some(Arc::new(d));
        self
    }
    /// Minimum and maximum capacity (Go: `minCap`, `maxCap`). Default 64 and 1024.
    pub fn capacity(mut self, min: usize, max: usize) -> Self {
        self.core = self.core.capacity(min, max);
        self
    }
    /// Minimum and maximum refill interval (Go: `minIvl`, `maxIvl`). Default 100 ms, 1 s.
    pub fn interval(mut self, min: Duration, max: Duration) -> Self {
        self.core = self.core.interval(min, max);
        self
    }
    /// TCP keep-alive period (Go: `keepAlive`). Default 30 s.
    pub fn keepalive(mut self, period: Duration) -> Self {
        self.socket.keepalive = Some(period);
        self
    }
    /// All socket options at once. Default: keep-alive 30 s, no-delay on.
    pub fn socket_options(mut self, o: SocketOptions) -> Self {
        self.socket = o;
        self
    }
    /// TLS mode `0`, `1` or `2` (Go: `tlsCode`). Default `0`, plain.
    pub fn tls_mode(mut self, mode: TlsMode) -> Self {
        self.tls_mode = mode;
        self
    }
    /// A rustls client config of your own; it replaces what the mode would build.
    pub fn tls_config(mut self, cfg: Arc<rustls::ClientConfig>) -> Self {
        self.tls_config = Some(cfg);
        self
    }
    /// Mode 1: accept only a server certificate with this SHA-256 fingerprint.
    pub fn pin(mut self, fp: Fingerprint) -> Self {
        self.pin = Some(fp);
        self
    }
    /// Mode 2: trust this PEM CA bundle (instead of the bundled web roots).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
    /// TLS server name (Go: `hostname`). Default: the server's IP address.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }
    /// Single mode (Go: `isSingle`): ids made here, nothing read, and plain TCP as in
    /// the Go package, whatever the TLS mode. A strict `build` refuses single mode with
    /// a TLS mode (say which you meant); with [`go_normalized`](Self::go_normalized)
    /// the TLS mode is ignored, as Go does. For TLS in single mode, an extension of
    /// ours, see [`single_tls`](Self::single_tls). Default false.
    pub fn single(mut self, on: bool) -> Self {
        self.core = self.core.single(on);
        self
    }
    /// Single mode over TLS: an extension (the Go package never runs TLS in single
    /// mode), for a server of this crate in TLS mode. Implies [`single`](Self::single).
    /// Default false.
    pub fn single_tls(mut self, on: bool) -> Self {
        self.single_tls = on;
        if on {
            self.core = self.core.single(true);
        }
        self
    }
    /// Dials in flight at most. Default 64 (Go: 1). Against a server pool of this crate,
    /// keep it at or below the server's pending handshakes per source (64 by default):
    /// above it, the server treats the surplus as a slowloris and evicts the oldest.
    pub fn parallelism(mut self, n: usize) -> Self {
        self.core = self.core.parallelism(n);
        self
    }
    /// Deadline of connect plus TLS handshake. Default 5 s (Go: none).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.core = self.core.handshake_timeout(d);
        self
    }
    /// Deadline of the id read. Default 5 s.
    pub fn id_timeout(mut self, d: Duration) -> Self {
        self.core = self.core.id_timeout(d);
        self
    }
    /// Timeout of [`ClientPool::get`] and [`ClientPool::get_any`]. Default 5 s.
    pub fn get_timeout(mut self, d: Duration) -> Self {
        self.get_timeout = d;
        self
    }
    /// Wire form of the id. Default [`IdForm::Hex8`] (Go v1.0.6).
    pub fn id_form(mut self, form: IdForm) -> Self {
        self.core = self.core.id_form(form);
        self
    }
    /// How often idle connections are probed and dead ones replaced. Default 1 s, or
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
    /// In-band activation (not in the Go protocol: set it on both ends). Default false.
    ///
    /// The server starts a session itself, on any idle connection
    /// ([`ServerPool::start`](crate::ServerPool::start) writes
    /// [`START`](pool_core::START), then the session's data follows), and this pool
    /// learns of it from the connection becoming readable: the OS reports it through
    /// the watch of held connections, never the sweep.
    /// [`accept`](ClientPool::accept) hands out the next started connection. No id
    /// travels over the application's control channel, so a session's first byte
    /// arrives one one-way delay after the server wrote it.
    ///
    /// Needs the watch (`watch_idle(true)`, Linux): [`build`](Self::build) refuses it
    /// otherwise. Gets by id still work beside it.
    pub fn in_band(mut self, on: bool) -> Self {
        self.core = self.core.in_band(on);
        self
    }
    /// Closes and replaces connections idle longer than this (checked at each sweep
    /// and each get). Default `None`: no limit, as in the Go package.
    pub fn max_idle_age(mut self, age: Option<Duration>) -> Self {
        self.core = self.core.max_idle_age(age);
        self
    }
    /// Interval rule of `Adaptation::GoRules`. Default: the Go package's.
    pub fn interval_policy(mut self, p: IntervalPolicy) -> Self {
        self.core = self.core.interval_policy(p);
        self
    }
    /// Capacity rule of `Adaptation::GoRules`. Default: the Go package's.
    pub fn capacity_policy(mut self, p: CapacityPolicy) -> Self {
        self.core = self.core.capacity_policy(p);
        self
    }
    /// How the capacity and the refill interval adapt to demand, inside the capacity
    /// and interval bounds. Default: `Adaptation::OfferedDemand`;
    /// `Adaptation::GoRules` is the Go package's rules (the two policies above apply
    /// to it only).
    pub fn adapt(mut self, policy: pool_core::Adaptation) -> Self {
        self.core = self.core.adapt(policy);
        self
    }
    /// Prove this key on every connection, right after reading its id, and require the
    /// server to prove it back: a mutual challenge-response over fresh nonces, bound to
    /// the TLS session in modes 1 and 2 (`pool_tls::proof`, bytes in pool-tls's
    /// `PROTOCOL.md`). The server pool (given the same key) admits nothing else, and a
    /// connection whose server fails its proof is dropped and counted as an auth
    /// failure. Not part of the Go wire protocol: set it on both ends or on neither.
    /// Default none.
    pub fn tunnel_key(mut self, key: TunnelKey) -> Self {
        self.key = Some(key);
        self
    }
    /// Fail gets at once while nothing can succeed: the pool has never made a
    /// connection and every recent dial failed, so a wrong address, port, pin or TLS
    /// mode shows within one backoff step as [`GetError::Unreachable`], naming the
    /// failure, instead of after a whole get timeout. Once a connection was made, an
    /// outage is a passing fault and gets wait as usual. Default true.
    pub fn fail_fast(mut self, on: bool) -> Self {
        self.core = self.core.fail_fast(on);
        self
    }
    /// The pool's name: the `name` label of its metrics (feature `metrics`), so that
    /// several pools in one process stay apart, and shown by `Debug`. Default `pool`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }
    /// Fix bad bounds silently the way the Go package does (zero capacity becomes 1,
    /// zero interval 1 s, a minimum above its maximum is swapped) instead of refusing
    /// them. Default false.
    pub fn go_normalized(mut self, on: bool) -> Self {
        self.go_normalized = on;
        self
    }

    /// Checks the settings and starts the manager task. Call from inside a tokio
    /// runtime (Go: `NewClientPool` followed by `go ClientManager()`).
    ///
    /// # Errors
    ///
    /// [`BuildError::NoRuntime`] outside a tokio runtime, [`BuildError::Config`] for a
    /// setting that cannot work (bounds, single mode with a TLS mode, a pin without
    /// TLS...), [`BuildError::Tls`] for TLS material that cannot be loaded,
    /// [`BuildError::Missing`] without a dialer, [`BuildError::Random`] if the system's
    /// secure generator fails.
    pub fn build(mut self) -> Result<ClientPool, BuildError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        if !self.go_normalized {
            self.check_tls_settings(self.tls_config.is_some())?;
        }
        if crate::watched_sweep(self.watch_idle, self.sweep_set, self.go_normalized) {
            self.core = self.core.sweep_interval(crate::WATCHED_SWEEP);
        }
        let cfg = if self.go_normalized {
            self.core.build_go_normalized()
        } else {
            self.core.build()?
        };
        if cfg.in_band() && (!self.watch_idle || !cfg!(target_os = "linux")) {
            return Err(pool_core::ConfigError::Conflict {
                first: "in-band activation",
                second: "no watch of idle connections",
                hint: "a started session is found by the OS's readiness on idle \
                       connections: keep `watch_idle(true)`, on Linux",
            }
            .into());
        }
        let watch = match (self.watch_idle, cfg.in_band()) {
            (false, _) => WatchFor::Nothing,
            (true, false) => WatchFor::HangUps,
            (true, true) => WatchFor::Bytes,
        };
        let dialer = self
            .dialer
            .ok_or(BuildError::Missing("dialer or address"))?;
        let wants_tls = self.tls_config.is_some() || self.tls_mode != TlsMode::Off;
        let tls_config = if cfg.single() && wants_tls && !self.single_tls {
            if !self.go_normalized {
                return Err(pool_core::ConfigError::Conflict {
                    first: "single mode",
                    second: "a TLS mode",
                    hint: "single mode dials plain TCP, as the Go package does; drop the TLS \
                           mode, drop single mode, or ask for TLS in single mode with \
                           `single_tls(true)`",
                }
                .into());
            }
            // Go's single mode skips TLS whatever `tlsCode` says.
            self.tls_mode = TlsMode::Off;
            None
        } else {
            self.tls_config
        };
        let tls = match tls_config {
            Some(c) => Some(c),
            None => {
                let mut b = ClientTlsBuilder::new(self.tls_mode);
                if let Some(fp) = self.pin {
                    b = b.pin(fp);
                }
                if let Some(ca) = self.ca_file {
                    b = b.ca_file(ca);
                }
                b.build()?
            }
        };
        let name = match (&tls, &self.hostname) {
            (Some(_), Some(h)) if !h.is_empty() => Some(pool_tls::server_name(h)?),
            _ => None,
        };
        let machine = ClientMachine::new(cfg.clone(), seeded()?, now());
        let inner = Arc::new_cyclic(|me| Inner {
            engine: Engine::new(machine, &self.name, me.clone(), rt, watch),
            id_form: cfg.id_form(),
            dialer,
            tls: tls.map(|c| (c, name)),
            socket: self.socket,
            key: self.key,
        });
        if cfg.in_band() && !inner.engine.watched() {
            inner.engine.shut();
            return Err(BuildError::Io {
                what: "watching idle connections for in-band starts",
                source: std::io::Error::other("the epoll set could not be made"),
            });
        }
        inner.engine.spawn(drive(inner.clone()));
        inner.engine.spawn(watch_hang_ups(inner.clone()));
        Ok(ClientPool {
            handle: PoolHandle::new(&inner),
            owner: Arc::new(Owner(inner)),
            get_timeout: self.get_timeout,
        })
    }
}

impl ClientPoolBuilder {
    /// Settings that only make sense with TLS, or with another TLS mode, are refused
    /// rather than silently ignored (a pin in plaintext would make a user believe the
    /// server is authenticated).
    fn check_tls_settings(&self, own_config: bool) -> Result<(), BuildError> {
        let conflict = |first, second, hint| {
            Err(pool_core::ConfigError::Conflict {
                first,
                second,
                hint,
            }
            .into())
        };
        let plain = self.tls_mode == TlsMode::Off && !own_config;
        if plain && self.pin.is_some() {
            return conflict(
                "a certificate pin",
                "TLS mode 0",
                "a pin checks the server's TLS certificate; set tls_mode(SelfSigned) or drop the pin",
            );
        }
        if plain && self.hostname.is_some() {
            return conflict(
                "a TLS server name",
                "TLS mode 0",
                "the hostname is what TLS verifies; set a TLS mode or drop the hostname",
            );
        }
        if plain && self.ca_file.is_some() {
            return conflict(
                "a CA file",
                "TLS mode 0",
                "a CA file verifies the server in mode 2 (Verified)",
            );
        }
        if self.tls_mode == TlsMode::SelfSigned && self.ca_file.is_some() {
            return conflict(
                "a CA file",
                "TLS mode 1",
                "mode 1 does not verify chains; use mode 2 (Verified) with a CA file, or a pin",
            );
        }
        Ok(())
    }
}

struct Inner {
    engine: Engine<Self>,
    dialer: Arc<dyn Dialer>,
    tls: Option<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>)>,
    socket: SocketOptions,
    id_form: IdForm,
    key: Option<TunnelKey>,
}

impl Side for Inner {
    type M = ClientMachine<PoolConn>;
    const CLIENT: bool = true;
    fn engine(&self) -> &Engine<Self> {
        &self.engine
    }
    fn dial(self: Arc<Self>, ticket: DialTicket) {
        let engine = &self.engine;
        engine.spawn_step(ticket.serial(), |token| dial(self.clone(), ticket, token));
    }
}

impl Inner {
    /// Connect, TLS, id, key proof: each step until it ends or the core aborts the
    /// dial (its deadline passed, or the pool closed).
    async fn establish(
        &self,
        ticket: &mut DialTicket,
        token: &CancellationToken,
    ) -> Result<PoolConn, (Stage, StepError)> {
        let dial = async { self.dialer.dial().await.map_err(StepError::from) };
        let tcp = step(token, Stage::Connect, dial).await?;
        if let Err(e) = self.socket.apply_tcp(&tcp) {
            debug!(error = %e, "socket options not applied");
        }
        let stream = match &self.tls {
            None => PoolStream::Plain(tcp),
            Some((config, name)) => {
                let name = match name {
                    Some(name) => name.clone(),
                    None => {
                        let peer = tcp.peer_addr().map_err(|e| (Stage::Connect, e.into()))?;
                        ServerName::IpAddress(peer.ip().into())
                    }
                };
                let tls = TlsConn::connect(config.clone(), name, tcp);
                // Boxed, as the key proof below: a dial task's future holds only what
                // the mode needs (thousands are spawned to fill a pool).
                let tls = Box::pin(async { tls.await.map_err(StepError::from) });
                match step(token, Stage::Tls, tls).await {
                    Err((_, cause @ StepError::NotTls(_))) => return Err((Stage::Protocol, cause)),
                    Err(e) => return Err(e),
                    Ok(s) => PoolStream::Tls(Box::new(s)),
                }
            }
        };
        let mut conn = PoolConn {
            id: ConnId::from_random([0; 4]),
            stream,
        };
        if !ticket.reads_id() {
            // Single mode: no id on the wire; the machine draws one.
            conn.id = self.engine.driver.input(|m, _| m.assign_id(ticket));
            return Ok(conn);
        }
        // The core's deadline becomes the id deadline.
        let serial = ticket.serial();
        self.engine
            .driver
            .input(|m, now| m.handle_handshake_done(serial, now));
        conn.id = match step(token, Stage::Id, read_id(&mut conn, self.id_form)).await {
            Err((_, cause @ StepError::ServerSpeaksTls)) => return Err((Stage::Protocol, cause)),
            r => r?,
        };
        if let Some(key) = &self.key {
            let wire = self.id_form.encode(&conn.id);
            let auth = Box::pin(crate::auth::client_auth(&mut conn, key, wire.as_ref()));
            step(token, Stage::Auth, auth).await?;
        }
        Ok(conn)
    }
}

/// Reads exactly the id: never a byte of payload behind it.
async fn read_id(conn: &mut PoolConn, form: IdForm) -> Result<ConnId, StepError> {
    let mut reader = IdReader::new(form);
    let mut buf = [0u8; pool_core::ID_LEN];
    // The first bytes read, to tell a TLS record from a bad id.
    let mut head = [0u8; 4];
    let mut got = 0;
    loop {
        let want = reader.remaining();
        let n = conn.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(StepError::Eof);
        }
        let k = n.min(head.len() - got);
        head[got..got + k].copy_from_slice(&buf[..k]);
        got += k;
        match reader.feed(&buf[..n]) {
            Ok(fed) => {
                if let Some(id) = fed.id {
                    // Any 4 bytes are a raw id, a TLS alert's first four too.
                    let alert = crate::tls::is_silent_alert_head(&head);
                    if alert && form == IdForm::Raw4 && !conn.is_tls() {
                        return Err(StepError::ServerSpeaksTls);
                    }
                    return Ok(id);
                }
            }
            // A plain client that reads a TLS record where its id goes: a TLS server
            // (its alert to a silent client, or its answer to bytes it cannot parse).
            Err(_) if !conn.is_tls() && crate::tls::opens_tls_record(&head[..got]) => {
                return Err(StepError::ServerSpeaksTls)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn dial(inner: Arc<Inner>, mut ticket: DialTicket, token: CancellationToken) {
    let span =
        tracing::debug_span!("dial", serial = ticket.serial(), peer = ?inner.dialer.target());
    let res = inner
        .establish(&mut ticket, &token)
        .instrument(span.clone())
        .await;
    let engine = &inner.engine;
    let closing = engine.rt().cancel.is_cancelled();
    match &res {
        Ok(conn) => {
            span.in_scope(|| debug!(id = %conn.id, "dial landed"));
            engine.log().succeed();
        }
        Err((stage, e)) => {
            span.in_scope(|| debug!(?stage, error = %e, "dial failed"));
            if !closing {
                engine.log().fail(*stage, e.clone(), inner.dialer.target());
            }
        }
    }
    let res = res.map(|conn| (conn.id, conn));
    let report = engine.report(ticket.serial(), |driver| {
        driver.dialed(ticket, res.map_err(|(stage, _)| stage))
    });
    if !report.was_backing_off && report.backing_off && !closing {
        let failing = engine.log().failing();
        warn!(failure = %failing.map(|f| f.to_string()).unwrap_or_default(), "client pool backing off: the server looks unreachable");
    } else if report.was_backing_off && !report.backing_off {
        warn!("client pool recovered: a dial succeeded");
    }
}

/// The client end of the pool. Cheap to clone; the pool closes when the last clone is
/// dropped or [`close`](Self::close) is called. What both pools offer (stats, error
/// counts, readiness) comes through `Deref` to [`PoolHandle`].
///
/// ```no_run
/// # async fn f() -> Result<(), pool_tokio::PoolError> {
/// use pool_tokio::ClientPool;
/// use std::time::Duration;
/// let pool = ClientPool::builder()
///     .address("127.0.0.1:10101")
///     .capacity(16, 256)
///     .get_timeout(Duration::from_secs(2))
///     .build()?;
/// # let id = "0a0b0c0d".parse().unwrap();
/// // `id` came from the server over the application's control channel.
/// let conn = pool.get(id).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientPool {
    owner: Arc<Owner<Inner>>,
    handle: PoolHandle<ClientMachine<PoolConn>>,
    get_timeout: Duration,
}

impl std::ops::Deref for ClientPool {
    type Target = PoolHandle<ClientMachine<PoolConn>>;
    fn deref(&self) -> &Self::Target {
        &self.handle
    }
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool")
            .field("name", &self.name())
            .field("status", &self.stats().status)
            .finish()
    }
}

impl ClientPool {
    /// A builder with the defaults (Go: `NewClientPool`).
    #[doc(alias = "NewClientPool")]
    pub fn builder() -> ClientPoolBuilder {
        ClientPoolBuilder::default()
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.0
    }

    /// The connection with `id`, waiting up to the builder's
    /// [`get_timeout`](ClientPoolBuilder::get_timeout) while a handshake in flight may
    /// still bring it (Go: `ClientGet`; later releases: `OutgoingGet`). The connection
    /// passed the liveness probe; no byte of it was read by the pool. It is yours to
    /// use once: dropping it closes it (it does not go back to the pool).
    ///
    /// # Errors
    ///
    /// [`GetError::NotFound`] at once when the id is not idle and no dial in flight
    /// can bring it; [`GetError::Timeout`] (with the failure behind it, if the pool is
    /// failing); [`GetError::Unreachable`] when nothing can succeed (see
    /// [`fail_fast`](ClientPoolBuilder::fail_fast)); [`GetError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future before it completes loses no connection. A
    /// connection that was already on its way to this get goes back to the pool.
    #[doc(alias = "ClientGet")]
    #[doc(alias = "OutgoingGet")]
    pub async fn get(&self, id: ConnId) -> Result<PoolConn, GetError> {
        self.take(Want::Id(id), self.get_timeout).await
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
    pub async fn get_timeout(&self, id: ConnId, timeout: Duration) -> Result<PoolConn, GetError> {
        self.take(Want::Id(id), timeout).await
    }

    /// Any live idle connection, oldest first, waiting up to the builder's
    /// `get_timeout`; in single mode one is dialed at once when none is idle (Go:
    /// `ClientGet("")` in single mode).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get), but never `NotFound`.
    ///
    /// # Cancel safety
    ///
    /// As [`get`](Self::get).
    pub async fn get_any(&self) -> Result<PoolConn, GetError> {
        self.take(Want::Any, self.get_timeout).await
    }

    /// [`get_any`](Self::get_any) with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`get_any`](Self::get_any).
    ///
    /// # Cancel safety
    ///
    /// As [`get`](Self::get).
    pub async fn get_any_timeout(&self, timeout: Duration) -> Result<PoolConn, GetError> {
        self.take(Want::Any, timeout).await
    }

    /// The next connection the server started a session on (in-band mode,
    /// [`ClientPoolBuilder::in_band`]), waiting up to the builder's `get_timeout`. The
    /// start header is read and checked here; the session's data follows unread. A
    /// connection whose header is wrong, or does not come within two seconds
    /// ([`START_WAIT`](pool_core::driver::START_WAIT)), is
    /// closed and counted (`starts_dropped`), and the accept goes on.
    ///
    /// ```no_run
    /// # async fn demo(pool: pool_tokio::ClientPool) -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio::io::AsyncReadExt;
    /// loop {
    ///     let mut conn = pool.accept().await?;
    ///     tokio::spawn(async move {
    ///         let mut first = [0u8; 1024];
    ///         let n = conn.read(&mut first).await; // the session's first bytes
    ///         # drop(n);
    ///     });
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`] when nothing was started in time; [`GetError::Closed`];
    /// [`GetError::Unreachable`] as for a get.
    ///
    /// # Cancel safety
    ///
    /// A connection still waiting in the pool is never lost. One whose header is
    /// being read when the future is dropped is closed: its session ends (a server
    /// that keeps a copy of what it sent replays it elsewhere, as the tunnel does).
    pub async fn accept(&self) -> Result<PoolConn, GetError> {
        self.accept_timeout(self.get_timeout).await
    }

    /// [`accept`](Self::accept) with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`accept`](Self::accept).
    ///
    /// # Cancel safety
    ///
    /// As [`accept`](Self::accept).
    pub async fn accept_timeout(&self, timeout: Duration) -> Result<PoolConn, GetError> {
        let deadline = pool_core::deadline_after(now(), timeout);
        loop {
            let left = deadline.saturating_duration_since(now());
            let (id, mut conn) = engine::get_for_user(self.inner(), Want::Started, left).await?;
            let driver = &self.inner().engine.driver;
            let by = tokio::time::Instant::from_std(driver.start_deadline());
            let mut header = [0u8; pool_core::START.len()];
            let read = tokio::time::timeout_at(by, conn.read_exact(&mut header)).await;
            let header: &[u8] = if matches!(read, Ok(Ok(_))) {
                &header
            } else {
                &[]
            };
            match driver.check_start(id, conn, header) {
                Some(conn) => return Ok(conn),
                None => debug!(%id, "a started connection brought no start header: closed"),
            }
        }
    }

    async fn take(&self, want: Want, timeout: Duration) -> Result<PoolConn, GetError> {
        engine::get_for_user(self.inner(), want, timeout)
            .await
            .map(|(_, conn)| conn)
    }

    /// Closes every idle connection and refills at once (Go: `Flush`).
    #[doc(alias = "Flush")]
    pub fn flush(&self) {
        let closed = self.inner().engine.driver.flush();
        info!(closed, "client pool flushed");
    }

    /// Closes the pool: waiting gets fail with [`GetError::Closed`], idle connections
    /// are closed, dials in flight are abandoned, and this returns once every task of
    /// the pool has ended (Go: `Close`). Dropping the last handle does the same
    /// without the wait. Closing twice is harmless.
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

    /// Current capacity (Go: `Capacity`).
    #[doc(alias = "Capacity")]
    pub fn capacity(&self) -> usize {
        self.stats().status.capacity
    }

    /// Current refill interval (Go: `Interval`).
    #[doc(alias = "Interval")]
    pub fn interval(&self) -> Duration {
        self.stats().status.interval
    }
}
