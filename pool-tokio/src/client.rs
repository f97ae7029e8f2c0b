//! The client pool: dials ahead so that idle connections wait at the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_core::{ClientMachine, ConfigError, ConnId, DialTicket, IdForm, IdReader, Stage, Want};
use pool_net::SocketOptions;
use pool_tls::TunnelKey;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use crate::builder::{ClientSide, PoolBuilder};
use crate::conn::{PoolConn, PoolStream};
use crate::dialer::{Dialer, TcpDialer};
use crate::engine::{self, drive, watch_hang_ups, Engine, Side};
use crate::error::{BuildError, GetError, StepError};
use crate::handle::{Owner, PoolHandle};
use crate::rt::{now, seeded, step};
use crate::tls::TlsConn;

/// Builder of a [`ClientPool`]: where to dial (here), and what every pool is told
/// ([`PoolBuilder`]): its [`ClientConfig`](crate::ClientConfig), its [`ClientTls`](crate::ClientTls), socket options, get
/// timeout, tunnel key and name. Each thing is set in one place, and no setter changes
/// what another set.
///
/// ```no_run
/// # async fn f() -> Result<(), pool_tokio::PoolError> {
/// use pool_tokio::{ClientConfig, ClientPool, ClientTls};
/// let pool = ClientPool::builder()
///     .address("127.0.0.1:10101")
///     .config(ClientConfig::builder().capacity(16, 256))
///     .tls(ClientTls::SelfSigned { pin: None, name: None })
///     .build()?;
/// # Ok(()) }
/// ```
pub type ClientPoolBuilder = PoolBuilder<ClientSide>;

impl PoolBuilder<ClientSide> {
    /// Where to dial: the server pool's address, a [`SocketAddr`](std::net::SocketAddr)
    /// or a `host:port` string resolved at every dial ([`ServerAddr`](crate::ServerAddr);
    /// Go: the `dialer` function). The same setting as [`dialer`](Self::dialer), given
    /// as an address.
    pub fn address(self, addr: impl Into<crate::ServerAddr>) -> Self {
        self.dialer(TcpDialer::to(addr))
    }
    /// How to dial. Required, or [`address`](Self::address).
    pub fn dialer(mut self, d: impl Dialer) -> Self {
        self.side.dialer = Some(Arc::new(d));
        self
    }

    /// Checks the settings and starts the manager task. Call from inside a tokio
    /// runtime (Go: `NewClientPool` followed by `go ClientManager()`).
    ///
    /// # Errors
    ///
    /// [`BuildError::NoRuntime`] outside a tokio runtime, [`BuildError::Config`] for a
    /// setting that cannot work (bounds, in-band starts where idle connections cannot
    /// be watched...), [`BuildError::Tls`] for TLS material that cannot be loaded,
    /// [`BuildError::Missing`] without a dialer, [`BuildError::Random`] if the system's
    /// secure generator fails.
    pub fn build(self) -> Result<ClientPool, BuildError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let cfg = self.config?.watched();
        if cfg.in_band() && !cfg!(target_os = "linux") {
            return Err(ConfigError::Conflict {
                first: "in-band starts (`IdleWatch::Starts`)",
                second: "a platform without a readiness watch",
                hint: "a started session is found by the OS's readiness on idle \
                       connections, which this crate watches on Linux only",
            }
            .into());
        }
        let dialer = self
            .side
            .dialer
            .ok_or(BuildError::Missing("dialer or address"))?;
        let tls = self.tls.build()?;
        let machine = ClientMachine::new(cfg.clone(), seeded()?, now());
        let inner = Arc::new_cyclic(|me| Inner {
            engine: Engine::new(machine, &self.name, me.clone(), rt, cfg.watch()),
            id_form: cfg.id_form(),
            dialer,
            tls,
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
        // Single mode: the machine draws the id; otherwise its deadline moves.
        if let Some(id) = self.engine.driver.handshake_done(ticket) {
            conn.id = id;
            return Ok(conn);
        }
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
    let report = engine.report(|driver| driver.dialed(ticket, res.map_err(|(stage, _)| stage)));
    if !report.was_backing_off && report.backing_off && !closing {
        let failing = engine.log().failing();
        warn!(failure = %failing.map(|f| f.to_string()).unwrap_or_default(), "client pool backing off: the server looks unreachable");
    } else if report.was_backing_off && !report.backing_off {
        warn!("client pool recovered: a dial succeeded");
    }
}

/// The client end of the pool. Cheap to clone; the pool closes when the last clone is
/// dropped or [`close`](PoolHandle::close) is called. What both pools offer (stats, error
/// counts, readiness) comes through `Deref` to [`PoolHandle`].
///
/// ```no_run
/// # async fn f() -> Result<(), pool_tokio::PoolError> {
/// use pool_tokio::{ClientConfig, ClientPool};
/// use std::time::Duration;
/// let pool = ClientPool::builder()
///     .address("127.0.0.1:10101")
///     .config(ClientConfig::builder().capacity(16, 256))
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

crate::handle::deref_to_handle!(ClientPool, ClientMachine<PoolConn>);

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle.debug(f.debug_struct("ClientPool"))
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
    /// [`ClientConfigBuilder::fail_fast`](pool_core::ClientConfigBuilder::fail_fast)); [`GetError::Closed`].
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
    /// [`IdleWatch::Starts`](pool_core::IdleWatch::Starts)), waiting up to the builder's `get_timeout`. The
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
        let engine = &self.inner().engine;
        let start = now();
        let read = |mut conn: PoolConn, by: Instant| async move {
            let mut header = [0u8; pool_core::START.len()];
            let by = tokio::time::Instant::from_std(by);
            let read = tokio::time::timeout_at(by, conn.read_exact(&mut header)).await;
            (conn, matches!(read, Ok(Ok(_))).then_some(header))
        };
        let res = engine.driver.accept_async(timeout, read).await;
        engine
            .answer(Want::Started, start, res)
            .map(|(_, conn)| conn)
    }

    async fn take(&self, want: Want, timeout: Duration) -> Result<PoolConn, GetError> {
        engine::get_for_user(self.inner(), want, timeout)
            .await
            .map(|(_, conn)| conn)
    }
}
