//! The client pool: opens streams ahead so that idle streams wait at the server, over
//! up to [`shards`](crate::shards) QUIC connections.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pool_core::{ClientConfig, ClientMachine, ConfigError, ConnId, DialTicket, IdForm, IntoConfig};
use pool_core::{IdReader, Stage, Status, Want};
use pool_tls::{ClientTls, TunnelKey};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::Endpoint;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::engine::{self, drive, now, seeded, step, watch_link, Engine, Side};
use crate::error::{BuildError, Cause, GetError};
use crate::link::{Link, Slot};
use crate::stream::QuicStream;
use crate::wire::{self, ALPN, HELLO, ID_WIRE_LEN, STREAMS_PER_CONNECTION};

/// Builder of a [`ClientPool`]. The pool's capacity, intervals, parallelism, deadlines
/// and adaptation are pool-core's [`ClientConfig`]; what is QUIC's is set here.
#[must_use]
#[derive(Debug)]
pub struct ClientPoolBuilder {
    addr: Option<SocketAddr>,
    core: Result<ClientConfig, ConfigError>,
    tls: ClientTls,
    keepalive: Duration,
    get_timeout: Duration,
    bind: Option<SocketAddr>,
    key: Option<TunnelKey>,
}

impl ClientPoolBuilder {
    /// The server to dial. Required.
    pub fn address(mut self, server: SocketAddr) -> Self {
        self.addr = Some(server);
        self
    }
    /// The pool's settings (Go: `minCap`, `maxCap`, `minIvl`, `maxIvl`): a
    /// [`ClientConfig`] or its builder, whose errors `build` reports. Default:
    /// `ClientConfig::default()`. Single mode is TCP's and is refused; the id is always
    /// the wire's 4 raw bytes, whatever the id form says. In-band sessions
    /// (`IdleWatch::Starts`) watch every idle stream for the server's start
    /// ([`ClientPool::accept_timeout`]).
    pub fn config(mut self, core: impl IntoConfig<ClientConfig>) -> Self {
        self.core = core.into_config();
        self
    }
    /// How the server's certificate is checked (Go: `tlsCode`, `hostname`), as every
    /// pool of the workspace takes it; the ALPN is set to `np-quic` here. QUIC is always
    /// encrypted: [`ClientTls::Off`] (the default) is taken as
    /// [`ClientTls::SelfSigned`] with no pin, as the Go package takes codes 0 and 1.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = tls;
        self
    }
    /// Keep-alive period of each QUIC connection; its idle timeout is three times it
    /// (Go: `keepAlive`). Default 30 s.
    pub fn keepalive(mut self, period: Duration) -> Self {
        self.keepalive = period;
        self
    }
    /// Timeout of [`ClientPool::get`] and [`ClientPool::get_any`]. Default 5 s.
    pub fn get_timeout(mut self, d: Duration) -> Self {
        self.get_timeout = d;
        self
    }
    /// The local UDP address to send from. Default: any address of the server's
    /// family, any port.
    pub fn bind(mut self, local: SocketAddr) -> Self {
        self.bind = Some(local);
        self
    }

    /// Proves this key on each QUIC connection before any stream of it is pooled
    /// (once per connection, bound to its TLS session; see the crate's README). Not
    /// part of the Go wire: set it on both ends or on neither. Default none.
    pub fn tunnel_key(mut self, key: TunnelKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Checks the settings, binds the UDP socket and starts refilling. Call from inside
    /// a tokio runtime (Go: `NewClientPool` followed by `go ClientManager()`).
    ///
    /// # Errors
    ///
    /// [`BuildError::NoRuntime`] outside a runtime, [`BuildError::Config`] for single
    /// mode, [`BuildError::Tls`] or [`BuildError::Quic`] for TLS settings
    /// that cannot work, [`BuildError::Io`] when the socket cannot be bound,
    /// [`BuildError::Random`] if the secure generator fails.
    pub fn build(self) -> Result<ClientPool, BuildError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let addr = self
            .addr
            .ok_or(BuildError::Missing("the server's address (`address`)"))?;
        let core = self.core?;
        let refuse = |first, hint| {
            Err(BuildError::Config(ConfigError::Conflict {
                first,
                second: "a QUIC pool",
                hint,
            }))
        };
        if core.mode() == pool_core::Mode::Single {
            return refuse(
                "single mode",
                "the np-quic wire always takes the server's id",
            );
        }
        let (tls, name) = self
            .tls
            .encrypted()
            .build_alpn(&[ALPN])?
            .ok_or(BuildError::Quic("no TLS configuration".into()))?;
        let quic = Arc::new(wire::quic_client(tls)?);
        let local = self.bind.unwrap_or(match addr.ip() {
            IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        });
        let endpoint = {
            let _guard = handle.enter();
            wire::udp_socket(local)
                .and_then(|socket| wire::endpoint(socket, None))
                .map_err(|source| BuildError::Io {
                    what: "bind the client's UDP socket",
                    source,
                })?
        };
        let server_name = name.map_or_else(|| addr.ip().to_string(), |n| n.to_str().into_owned());
        let max_shards = wire::shards(core.max_capacity());
        let in_band = core.in_band();
        let machine = ClientMachine::new(core, seeded()?, now());
        let inner = Arc::new_cyclic(|me| Inner {
            engine: Engine::new(machine, me.clone(), handle),
            endpoint,
            quic,
            keepalive: self.keepalive,
            addr,
            server_name,
            shards: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            max_shards,
            key: self.key,
        });
        if in_band {
            engine::watch_starts(&inner);
        }
        inner.engine.spawn(drive(inner.clone()));
        Ok(ClientPool {
            owner: Arc::new(Owner(inner)),
            get_timeout: self.get_timeout,
        })
    }
}

pub(crate) struct Inner {
    engine: Engine<Self>,
    endpoint: Endpoint,
    quic: Arc<QuicClientConfig>,
    keepalive: Duration,
    addr: SocketAddr,
    server_name: String,
    /// The connections streams are opened on.
    shards: Mutex<Vec<Arc<Link>>>,
    /// Held while a new connection is being made, so that one is made at a time.
    connecting: tokio::sync::Mutex<()>,
    max_shards: usize,
    key: Option<TunnelKey>,
}

impl Side for Inner {
    type M = ClientMachine<QuicStream>;
    fn engine(&self) -> &Engine<Self> {
        &self.engine
    }
    fn dial(self: Arc<Self>, ticket: DialTicket) {
        let serial = ticket.serial();
        self.engine
            .spawn_step(serial, |token| dial(self.clone(), ticket, token));
    }
}

/// The stage a connection failure counts at: TLS when the handshake failed, connect
/// otherwise.
fn connect_stage(c: &Cause) -> Stage {
    match c {
        Cause::WrongAlpn | Cause::Tls(_) => Stage::Tls,
        Cause::BadProof => Stage::Auth,
        _ => Stage::Connect,
    }
}

impl Inner {
    fn shards(&self) -> MutexGuard<'_, Vec<Arc<Link>>> {
        self.shards.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A running connection with room for one more stream.
    fn pick(&self) -> Option<(Arc<Link>, Slot)> {
        let mut shards = self.shards();
        shards.retain(|l| l.is_up());
        shards.iter().find_map(|l| {
            l.try_slot(STREAMS_PER_CONNECTION as usize)
                .map(|s| (l.clone(), s))
        })
    }

    /// A connection to open the next stream on: one with room, else a new one while
    /// fewer than the shard count run, else the least loaded (its stream limit makes
    /// the open wait for room).
    async fn slot(self: &Arc<Self>) -> Result<(Arc<Link>, Slot), (Stage, Cause)> {
        if let Some(s) = self.pick() {
            return Ok(s);
        }
        let _one = self.connecting.lock().await;
        if let Some(s) = self.pick() {
            return Ok(s);
        }
        if self.shards().len() < self.max_shards {
            let link = self.connect().await.map_err(|c| (connect_stage(&c), c))?;
            let slot = link.slot();
            self.shards().push(link.clone());
            watch_link(self, link.clone());
            return Ok((link, slot));
        }
        let least = self.shards().iter().min_by_key(|l| l.open()).cloned();
        let link = least.ok_or((Stage::Connect, Cause::Timeout))?;
        let slot = link.slot();
        Ok((link, slot))
    }

    async fn connect(&self) -> Result<Arc<Link>, Cause> {
        let mut config = quinn::ClientConfig::new(self.quic.clone());
        let path = if self.addr.ip().to_canonical().is_loopback() {
            wire::Path::LoopbackDialer
        } else {
            wire::Path::Other
        };
        config.transport_config(wire::transport(self.keepalive, 0, path));
        let conn = self
            .endpoint
            .connect_with(config, self.addr, &self.server_name)?
            .await?;
        if let Some(key) = &self.key {
            if let Err(e) = crate::proof::client(&conn, key).await {
                conn.close(crate::proof::CLOSE_BAD_PROOF.into(), b"proof failed");
                return Err(e);
            }
        }
        debug!(peer = %self.addr, "QUIC connection up");
        Ok(Link::new(conn))
    }

    /// A stream: a connection with room, the stream, `0x00`, then exactly the 4 bytes
    /// of the id; each step until it ends or the core aborts the dial.
    async fn establish(
        self: &Arc<Self>,
        ticket: &DialTicket,
        token: &CancellationToken,
    ) -> Result<QuicStream, (Stage, Cause)> {
        let (link, slot) = tokio::select! {
            r = self.slot() => r?,
            _ = token.cancelled() => return Err((Stage::Connect, Cause::Timeout)),
        };
        let open = async { link.conn.open_bi().await.map_err(Cause::from) };
        let (mut send, mut recv) = step(token, Stage::Connect, open).await?;
        let hello = async { send.write_all(&[HELLO]).await.map_err(Cause::from) };
        step(token, Stage::Id, hello).await?;
        let serial = ticket.serial();
        self.engine
            .driver
            .input(|m, now| m.handle_handshake_done(serial, now));
        let id = step(token, Stage::Id, read_id(&mut recv)).await?;
        Ok(QuicStream::new(id, send, recv, link, slot))
    }
}

/// Reads exactly the 4 bytes of the id: never a byte past it.
pub(crate) async fn read_id(recv: &mut quinn::RecvStream) -> Result<ConnId, Cause> {
    let mut reader = IdReader::new(IdForm::Raw4);
    let mut buf = [0u8; ID_WIRE_LEN];
    loop {
        let want = reader.remaining();
        let got = ID_WIRE_LEN - want;
        let n = match recv.read(&mut buf[..want]).await? {
            None | Some(0) => return Err(Cause::TruncatedId { got }),
            Some(n) => n,
        };
        let fed = reader
            .feed(&buf[..n])
            .map_err(|e| Cause::Io(Arc::new(std::io::Error::other(e))))?;
        if let Some(id) = fed.id {
            return Ok(id);
        }
    }
}

async fn dial(inner: Arc<Inner>, ticket: DialTicket, token: CancellationToken) {
    let res = inner.establish(&ticket, &token).await;
    let engine = &inner.engine;
    if let Err((stage, cause)) = &res {
        debug!(?stage, %cause, "stream dial failed");
        if !engine.rt().cancel.is_cancelled() {
            engine
                .rt()
                .log
                .fail(*stage, cause.clone(), Some(inner.addr));
        }
    }
    let res = res.map(|s| (s.id, s)).map_err(|(stage, _)| stage);
    engine.report(|driver| driver.dialed(ticket, res));
}

/// Held by every clone of a pool; the last one dropped closes the pool.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.engine.shut();
        self.0.endpoint.close(0u32.into(), b"pool closed");
    }
}

/// The client end of a QUIC pool (Go: the QUIC package's client `Pool`). Cheap to
/// clone; the pool closes when the last clone is dropped or [`close`](Self::close) is
/// called.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use pool_quic::ClientPool;
/// let pool = ClientPool::builder().address("127.0.0.1:10101".parse()?).build()?;
/// // `id` comes from the server's side over the application's control channel.
/// let id = "0a0b0c0d".parse()?;
/// let stream = pool.get(id).await?;
/// # drop(stream); Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientPool {
    owner: Arc<Owner>,
    get_timeout: Duration,
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool")
            .field("server", &self.inner().addr)
            .field("status", &self.status())
            .finish()
    }
}

impl ClientPool {
    /// A builder; name the server with [`address`](ClientPoolBuilder::address).
    pub fn builder() -> ClientPoolBuilder {
        ClientPoolBuilder {
            addr: None,
            core: Ok(ClientConfig::default()),
            tls: ClientTls::Off,
            keepalive: Duration::from_secs(30),
            get_timeout: Duration::from_secs(5),
            bind: None,
            key: None,
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.0
    }

    /// The stream with this id, waiting up to the builder's get timeout for it to
    /// arrive (Go: `OutgoingGet`). It passed the liveness peek; no byte of it was lost.
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`] (with the last dial failure, if one happened meanwhile),
    /// [`GetError::NotFound`], [`GetError::Unreachable`], [`GetError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses no stream: one on its way goes back to the pool.
    #[doc(alias = "OutgoingGet")]
    pub async fn get(&self, id: ConnId) -> Result<QuicStream, GetError> {
        self.get_timeout(id, self.get_timeout).await
    }

    /// [`get`](Self::get) with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_timeout(&self, id: ConnId, timeout: Duration) -> Result<QuicStream, GetError> {
        let got = engine::get_for_user(self.inner(), Want::Id(id), timeout).await;
        got.map(|(_, s)| s)
    }

    /// Any live idle stream, oldest first.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_any(&self) -> Result<QuicStream, GetError> {
        let got = engine::get_for_user(self.inner(), Want::Any, self.get_timeout).await;
        got.map(|(_, s)| s)
    }

    /// In-band mode (`IdleWatch::Starts` in the builder's config): the next stream the
    /// server started ([`ServerPool::start_with`](crate::ServerPool::start_with)), its
    /// start header ([`pool_core::START`]) read and checked; the session's bytes follow
    /// on it. No id travels over a control channel. Not part of the Go wire.
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`] when nothing was started in time, [`GetError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// A stream still waiting in the pool is never lost; one whose header is being
    /// read when the future is dropped is reset.
    pub async fn accept_timeout(&self, timeout: Duration) -> Result<QuicStream, GetError> {
        use tokio::io::AsyncReadExt;
        let engine = &self.inner().engine;
        let start = now();
        let read = |mut s: QuicStream, by: std::time::Instant| async move {
            let mut header = [0u8; pool_core::START.len()];
            let by = tokio::time::Instant::from_std(by);
            let read = tokio::time::timeout_at(by, s.read_exact(&mut header)).await;
            (s, matches!(read, Ok(Ok(_))).then_some(header))
        };
        engine
            .driver
            .accept_async(timeout, read)
            .await
            .map(|(_, s)| s)
            .map_err(|e| crate::error::get_error(e, Want::Started, &engine.rt().log, start))
    }

    /// Resets every idle stream (Go: `Flush`); how many.
    #[doc(alias = "Flush")]
    pub fn flush(&self) -> usize {
        self.inner().engine.driver.flush()
    }

    /// Closes the pool: waiting gets fail with [`GetError::Closed`], idle streams are
    /// reset, the connections are closed, and this returns once every task ended (Go:
    /// `Close`).
    #[doc(alias = "Close")]
    pub async fn close(&self) {
        let inner = self.inner();
        inner.engine.shut();
        inner.engine.rt().tasks.wait().await;
        inner.endpoint.close(0u32.into(), b"pool closed");
    }

    /// Idle streams (Go: `Active`).
    #[doc(alias = "Active")]
    pub fn active(&self) -> usize {
        self.status().idle
    }

    /// The current capacity (Go: `Capacity`).
    #[doc(alias = "Capacity")]
    pub fn capacity(&self) -> usize {
        self.status().capacity
    }

    /// The current refill interval (Go: `Interval`).
    #[doc(alias = "Interval")]
    pub fn interval(&self) -> Duration {
        self.status().interval
    }

    /// The status snapshot.
    pub fn status(&self) -> Status {
        self.inner().engine.driver.read(|m| m.status())
    }

    /// The core's counters.
    pub fn counters(&self) -> pool_core::Counters {
        self.inner().engine.driver.read(|m| m.counters())
    }

    /// The last dial failure, if any.
    pub fn last_failure(&self) -> Option<crate::Failure> {
        self.inner().engine.rt().log.last()
    }

    /// QUIC connections running.
    pub fn connections(&self) -> usize {
        let mut shards = self.inner().shards();
        shards.retain(|l| l.is_up());
        shards.len()
    }

    /// The local UDP address.
    ///
    /// # Errors
    ///
    /// When the socket has no address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner().endpoint.local_addr()
    }

    /// Waits until at least `n` streams are idle, or `timeout` passes; whether they
    /// are. Woken as streams land, never by polling.
    pub async fn wait_idle(&self, n: usize, timeout: Duration) -> bool {
        self.inner().engine.wait_idle(n, timeout).await
    }
}
