//! The server pool: accepts the client pool's QUIC connections and their streams, and
//! keeps each stream idle under the id it wrote.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use pool_core::{Admission, ConfigError, ConnId, HandshakeTicket, IntoConfig, ServerConfig};
use pool_core::{ServerMachine, Stage, Status};
use pool_core::{Want, ID_LEN};
use pool_net::IpFilter;
use pool_tls::{Fingerprint, ServeTls, TunnelKey};
use quinn::{Endpoint, Incoming, RecvStream, SendStream, VarInt};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::engine::{self, drive, now, seeded, step, watch_link, Engine, Side};
use crate::error::{BuildError, Cause, GetError};
use crate::link::Link;
use crate::stream::QuicStream;
use crate::wire::{self, ALPN, HELLO, STREAMS_PER_CONNECTION};

/// The application error code a server resets a stream with when it refuses it (the
/// pool is full, the source is over its quota, the pool is closing).
pub const RESET_REFUSED: VarInt = VarInt::from_u32(1);

/// Bounds on what strangers can hold before any stream is pooled: QUIC connections
/// and their handshakes. Each is counted when it refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// QUIC connections at once, all sources. Default 256.
    pub connections: usize,
    /// QUIC connections at once from one address. Default 80: a client pool opens up
    /// to 64, plus room for its reconnections.
    pub per_source: usize,
    /// QUIC handshakes under way at once; over it, new ones are refused. Default 64.
    pub handshakes: usize,
    /// QUIC handshakes under way above which a client whose address is not validated
    /// yet is sent a stateless retry first (it costs the server no state, and proves
    /// the client receives at the address it claims). Default 8.
    pub retry_above: usize,
    /// Datagrams queued for connections not accepted yet. Default 1024.
    pub queued: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: 256,
            per_source: 80,
            handshakes: 64,
            retry_above: 8,
            queued: 1024,
        }
    }
}

/// What the server refused before the core saw a stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuicCounters {
    /// Connections refused: at a limit of [`Limits`].
    pub refused_connections: u64,
    /// Stateless retries sent to unvalidated addresses under load.
    pub retries: u64,
    /// QUIC handshakes that failed or ran out of time.
    pub failed_handshakes: u64,
    /// Connections closed because their tunnel-key proof failed or ran out of time.
    pub failed_proofs: u64,
}

/// Builder of a [`ServerPool`]. The pool's capacity, handshake bounds and deadlines
/// are pool-core's [`ServerConfig`]; what is QUIC's is set here.
#[must_use]
pub struct ServerPoolBuilder {
    bind: Option<SocketAddr>,
    core: Result<ServerConfig, ConfigError>,
    tls: ServeTls,
    filter: Result<IpFilter, pool_net::FilterError>,
    keepalive: Duration,
    get_timeout: Duration,
    limits: Limits,
    key: Option<TunnelKey>,
}

impl std::fmt::Debug for ServerPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPoolBuilder")
            .field("bind", &self.bind)
            .field("core", &self.core)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ServerPoolBuilder {
    /// The UDP address to listen on. Required.
    pub fn bind(mut self, at: SocketAddr) -> Self {
        self.bind = Some(at);
        self
    }
    /// The pool's settings (Go: `maxCap`): a [`ServerConfig`] or its builder, whose
    /// errors `build` reports. Default `ServerConfig::default()`. The id is always the
    /// wire's 4 raw bytes, whatever the id form says.
    pub fn config(mut self, core: impl IntoConfig<ServerConfig>) -> Self {
        self.core = core.into_config();
        self
    }
    /// The certificate to serve (Go: `tlsConfig`), as every pool of the workspace
    /// takes it; the ALPN is set to `np-quic` here. QUIC is always encrypted:
    /// [`ServeTls::Off`] (the default) is taken as [`ServeTls::self_signed`], a
    /// certificate for `localhost` made at build.
    pub fn tls(mut self, tls: ServeTls) -> Self {
        self.tls = tls;
        self
    }
    /// Allowed client addresses (Go: `clientIP`): empty means anyone, else addresses
    /// and CIDR blocks separated by commas. A connection from any other address is
    /// refused before its handshake.
    pub fn client_ip(mut self, spec: &str) -> Self {
        self.filter = IpFilter::parse(spec);
        self
    }
    /// Keep-alive period of each QUIC connection; its idle timeout is three times it
    /// (Go: `keepAlive`). Default 30 s.
    pub fn keepalive(mut self, period: Duration) -> Self {
        self.keepalive = period;
        self
    }
    /// Timeout of [`ServerPool::get`]. Default 5 s.
    pub fn get_timeout(mut self, d: Duration) -> Self {
        self.get_timeout = d;
        self
    }
    /// Bounds on connections and handshakes. Default [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Admits a QUIC connection's streams only once it proved this key (once per
    /// connection, bound to its TLS session, within the handshake timeout); others are
    /// closed and counted in [`QuicCounters::failed_proofs`]. Not part of the Go wire:
    /// set it on both ends or on neither. Default none.
    pub fn tunnel_key(mut self, key: TunnelKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Checks the settings, binds the UDP socket and starts accepting. Call from
    /// inside a tokio runtime (Go: `NewServerPool` followed by `go ServerManager()`).
    ///
    /// # Errors
    ///
    /// [`BuildError::NoRuntime`], [`BuildError::Filter`], [`BuildError::Tls`] or
    /// [`BuildError::Quic`] for TLS material that cannot work, [`BuildError::Io`]
    /// when the address cannot be bound, [`BuildError::Random`].
    pub fn build(self) -> Result<ServerPool, BuildError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let filter = self.filter?;
        let bind = self
            .bind
            .ok_or(BuildError::Missing("the address to listen on (`bind`)"))?;
        let core = self.core?;
        let (tls, fingerprint) = self
            .tls
            .encrypted()
            .build_alpn(&[ALPN])?
            .ok_or(BuildError::Quic("no TLS configuration".into()))?;
        let crypto = wire::quic_server(tls)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(wire::transport(
            self.keepalive,
            STREAMS_PER_CONNECTION + wire::CREDIT_SLACK,
            wire::Path::Other,
        ));
        config.max_incoming(self.limits.connections.max(1));
        config.incoming_buffer_size(64 * 1024);
        config.incoming_buffer_size_total(u64::from(self.limits.queued) * 1500);
        let mut loopback = config.clone();
        loopback.transport_config(wire::transport(
            self.keepalive,
            STREAMS_PER_CONNECTION + wire::CREDIT_SLACK,
            wire::Path::LoopbackAcceptor,
        ));
        let endpoint = {
            let _guard = handle.enter();
            wire::udp_socket(bind)
                .and_then(|socket| wire::endpoint(socket, Some(config)))
                .map_err(|source| BuildError::Io {
                    what: "bind the server's UDP socket",
                    source,
                })?
        };
        let local = endpoint.local_addr().map_err(|source| BuildError::Io {
            what: "the server's UDP address",
            source,
        })?;
        let handshake_timeout = core.handshake_timeout();
        let machine = ServerMachine::new(core, seeded()?, now());
        let inner = Arc::new_cyclic(|me| Inner {
            engine: Engine::new(machine, me.clone(), handle),
            endpoint,
            filter,
            limits: self.limits,
            handshake_timeout,
            sources: Mutex::new(HashMap::new()),
            handshaking: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            failed_proofs: AtomicU64::new(0),
            key: self.key,
            loopback: Arc::new(loopback),
        });
        inner.engine.spawn(accept_loop(inner.clone()));
        inner.engine.spawn(drive(inner.clone()));
        Ok(ServerPool {
            owner: Arc::new(Owner(inner)),
            local,
            fingerprint,
            get_timeout: self.get_timeout,
        })
    }
}

pub(crate) struct Inner {
    engine: Engine<Self>,
    endpoint: Endpoint,
    filter: IpFilter,
    limits: Limits,
    handshake_timeout: Duration,
    /// QUIC connections (handshaking or up) by source address.
    sources: Mutex<HashMap<IpAddr, usize>>,
    handshaking: AtomicUsize,
    refused: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    failed_proofs: AtomicU64,
    key: Option<TunnelKey>,
    /// The settings of a connection from a loopback address: its packets start at the
    /// largest size (see [`wire::transport`]).
    loopback: Arc<quinn::ServerConfig>,
}

impl Side for Inner {
    type M = ServerMachine<QuicStream>;
    fn engine(&self) -> &Engine<Self> {
        &self.engine
    }
    /// A server machine never asks for a dial.
    fn dial(self: Arc<Self>, ticket: pool_core::DialTicket) {
        drop(ticket);
    }
}

/// A connection's place among the sources, given back when it ends.
struct Held {
    inner: Arc<Inner>,
    ip: IpAddr,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut sources = self.inner.sources();
        if let Some(n) = sources.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                sources.remove(&self.ip);
            }
        }
    }
}

/// A QUIC handshake's slot, given back when it ends.
struct Handshaking(Arc<Inner>);

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Inner {
    fn sources(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to do with a new connection, before any state is spent on it: refuse it
    /// (filtered, or at a limit), ask for a retry (many handshakes under way and its
    /// address not validated), or take a source place and a handshake slot for it.
    fn admit(self: &Arc<Self>, incoming: Incoming) -> Option<(Incoming, Held, Handshaking)> {
        let peer = incoming.remote_address();
        let ip = peer.ip().to_canonical();
        if !self.filter.allows(ip) {
            // Counted by the core as a filtered refusal.
            let _ = self
                .engine
                .driver
                .input(|m, now| m.handle_accept(now, ip, false));
            incoming.refuse();
            return None;
        }
        let busy = self.handshaking.load(Ordering::Acquire);
        let validated = incoming.remote_address_validated();
        if busy >= self.limits.retry_above && !validated && incoming.may_retry() {
            self.retries.fetch_add(1, Ordering::Relaxed);
            let _ = incoming.retry();
            return None;
        }
        let over = {
            let mut sources = self.sources();
            let total: usize = sources.values().sum();
            let mine = sources.get(&ip).copied().unwrap_or(0);
            let over = busy >= self.limits.handshakes
                || total >= self.limits.connections
                || mine >= self.limits.per_source;
            if !over {
                *sources.entry(ip).or_default() += 1;
            }
            over
        };
        if over {
            self.refused.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            return None;
        }
        self.handshaking.fetch_add(1, Ordering::AcqRel);
        let held = Held {
            inner: self.clone(),
            ip,
        };
        Some((incoming, held, Handshaking(self.clone())))
    }

    /// One stream's handshake: `0x00` in, the id's 4 bytes out.
    async fn handshake(
        &self,
        ticket: &mut HandshakeTicket,
        send: &mut SendStream,
        recv: &mut RecvStream,
        token: &CancellationToken,
    ) -> Result<ConnId, (Stage, Cause)> {
        let hello = step(token, Stage::Id, read_hello(recv)).await?;
        if hello != HELLO {
            return Err((Stage::Protocol, Cause::BadHello(hello)));
        }
        let id = self.engine.driver.input(|m, _| m.assign_id(ticket));
        let raw = id.to_raw();
        let write = async { send.write_all(&raw).await.map_err(Cause::from) };
        step(token, Stage::Id, write).await?;
        Ok(id)
    }
}

/// Reads the client's one opening byte, and nothing past it.
async fn read_hello(recv: &mut RecvStream) -> Result<u8, Cause> {
    let mut b = [0u8; 1];
    match recv.read(&mut b).await? {
        Some(1) => Ok(b[0]),
        _ => Err(Cause::NoHello),
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    let cancel = inner.engine.rt().cancel.clone();
    loop {
        let incoming = tokio::select! {
            i = inner.endpoint.accept() => i,
            _ = cancel.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        if let Some((incoming, held, slot)) = inner.admit(incoming) {
            let me = inner.clone();
            inner.engine.spawn(connection(me, incoming, held, slot));
        }
    }
}

/// One QUIC connection: its handshake under the core's handshake timeout, then its
/// streams, each admitted by the core and run through its handshake.
async fn connection(inner: Arc<Inner>, incoming: Incoming, held: Held, slot: Handshaking) {
    let peer = incoming.remote_address();
    let cancel = inner.engine.rt().cancel.clone();
    let up = async {
        let connecting = if peer.ip().to_canonical().is_loopback() {
            incoming.accept_with(inner.loopback.clone())
        } else {
            incoming.accept()
        };
        let connecting = connecting.map_err(Cause::from)?;
        connecting.await.map_err(Cause::from)
    };
    let conn = tokio::select! {
        r = tokio::time::timeout(inner.handshake_timeout, up) => match r {
            Ok(Ok(c)) => c,
            Ok(Err(cause)) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                debug!(%peer, %cause, "QUIC handshake failed");
                inner.engine.rt().log.fail(Stage::Tls, cause, Some(peer));
                return;
            }
            Err(_) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                inner.engine.rt().log.fail(Stage::Tls, Cause::Timeout, Some(peer));
                return;
            }
        },
        _ = cancel.cancelled() => return,
    };
    if let Some(key) = &inner.key {
        let proof = tokio::time::timeout(inner.handshake_timeout, crate::proof::server(&conn, key));
        let failed = tokio::select! {
            r = proof => match r {
                Ok(Ok(())) => None,
                Ok(Err(cause)) => Some(cause),
                Err(_) => Some(Cause::Timeout),
            },
            _ = cancel.cancelled() => return,
        };
        if let Some(cause) = failed {
            inner.failed_proofs.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, %cause, "tunnel-key proof failed");
            inner.engine.rt().log.fail(Stage::Auth, cause, Some(peer));
            conn.close(crate::proof::CLOSE_BAD_PROOF.into(), b"proof failed");
            return;
        }
    }
    drop(slot);
    let link = Link::new(conn);
    watch_link(&inner, link.clone());
    loop {
        let stream = tokio::select! {
            s = link.conn.accept_bi() => s,
            _ = cancel.cancelled() => break,
        };
        let Ok((mut send, mut recv)) = stream else {
            break;
        };
        let ip = link.conn.remote_address().ip().to_canonical();
        let admission = inner
            .engine
            .driver
            .input(|m, now| m.handle_accept(now, ip, true));
        match admission {
            Admission::Admit(ticket) => {
                let serial = ticket.serial();
                let (me, link) = (inner.clone(), link.clone());
                inner.engine.spawn_step(serial, move |token| {
                    stream_handshake(me, ticket, send, recv, link, token)
                });
            }
            Admission::Refuse(why) => {
                debug!(%peer, ?why, "stream refused");
                let _ = send.reset(RESET_REFUSED);
                let _ = recv.stop(RESET_REFUSED);
            }
        }
    }
    drop(held);
}

async fn stream_handshake(
    inner: Arc<Inner>,
    mut ticket: HandshakeTicket,
    mut send: SendStream,
    mut recv: RecvStream,
    link: Arc<Link>,
    token: CancellationToken,
) {
    let res = inner
        .handshake(&mut ticket, &mut send, &mut recv, &token)
        .await;
    let engine = &inner.engine;
    let res = match res {
        Ok(id) => Ok(QuicStream::new(id, send, recv, link.clone(), link.slot())),
        Err((stage, cause)) => {
            debug!(?stage, %cause, "stream handshake failed");
            if !engine.rt().cancel.is_cancelled() {
                let peer = Some(link.conn.remote_address());
                engine.rt().log.fail(stage, cause, peer);
            }
            let _ = send.reset(RESET_REFUSED);
            let _ = recv.stop(RESET_REFUSED);
            Err(stage)
        }
    };
    engine.report(|driver| driver.handshaken(ticket, res));
}

/// Held by every clone of a pool; the last one dropped closes the pool.
struct Owner(Arc<Inner>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.engine.shut();
        self.0.endpoint.close(0u32.into(), b"pool closed");
    }
}

/// The server end of a QUIC pool (Go: the QUIC package's server `Pool`). Cheap to
/// clone; the pool closes when the last clone is dropped or [`close`](Self::close) is
/// called.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use pool_quic::ServerPool;
/// let pool = ServerPool::builder().bind("127.0.0.1:10101".parse()?).build()?;
/// let (id, stream) = pool.get().await?;
/// // Send `id` to the client side over the control channel, then relay on `stream`.
/// # drop((id, stream)); Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerPool {
    owner: Arc<Owner>,
    local: SocketAddr,
    fingerprint: Option<Fingerprint>,
    get_timeout: Duration,
}

impl std::fmt::Debug for ServerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerPool")
            .field("local", &self.local)
            .field("status", &self.status())
            .finish()
    }
}

impl ServerPool {
    /// A builder; name the address to listen on with [`bind`](ServerPoolBuilder::bind).
    pub fn builder() -> ServerPoolBuilder {
        ServerPoolBuilder {
            bind: None,
            core: Ok(ServerConfig::default()),
            tls: ServeTls::Off,
            filter: Ok(IpFilter::any()),
            keepalive: Duration::from_secs(30),
            get_timeout: Duration::from_secs(5),
            limits: Limits::default(),
            key: None,
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.0
    }

    /// The UDP address the pool listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The SHA-256 fingerprint of the certificate served, for a client to pin; `None`
    /// with a rustls configuration of your own ([`ServeTls::Custom`]).
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The oldest live idle stream and its id, waiting up to the builder's get timeout
    /// (Go: `IncomingGet`).
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`] (with the last failure, if one happened meanwhile),
    /// [`GetError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses no stream.
    #[doc(alias = "IncomingGet")]
    pub async fn get(&self) -> Result<(ConnId, QuicStream), GetError> {
        self.get_timeout(self.get_timeout).await
    }

    /// [`get`](Self::get) with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_timeout(&self, timeout: Duration) -> Result<(ConnId, QuicStream), GetError> {
        engine::get_for_user(self.inner(), Want::Any, timeout).await
    }

    /// In-band sessions: the oldest idle stream with [`pool_core::START`] and `first`
    /// written on it in one write; the client pool's
    /// [`accept`](crate::ClientPool::accept_timeout) receives it as soon as they
    /// arrive. A stream whose write fails (its peer reset it) is reset and the next one
    /// is tried, within `timeout`. Not part of the Go wire.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn start_with(
        &self,
        first: &[u8],
        timeout: Duration,
    ) -> Result<(ConnId, QuicStream), GetError> {
        use tokio::io::AsyncWriteExt;
        let deadline = pool_core::deadline_after(now(), timeout);
        let mut message = Vec::with_capacity(pool_core::START.len() + first.len());
        message.extend_from_slice(&pool_core::START);
        message.extend_from_slice(first);
        loop {
            let left = deadline.saturating_duration_since(now());
            let (id, mut s) = engine::get_for_user(self.inner(), Want::Any, left).await?;
            match tokio::time::timeout(left, s.write_all(&message)).await {
                Ok(Ok(())) => return Ok((id, s)),
                _ => s.reset(crate::RESET_UNUSED),
            }
        }
    }

    /// Resets every idle stream (Go: `Flush`); how many.
    #[doc(alias = "Flush")]
    pub fn flush(&self) -> usize {
        self.inner().engine.driver.flush()
    }

    /// Closes the pool: the endpoint stops accepting, waiting gets fail with
    /// [`GetError::Closed`], idle streams are reset and connections closed; returns once
    /// every task ended (Go: `Close`).
    #[doc(alias = "Close")]
    pub async fn close(&self) {
        let inner = self.inner();
        inner.engine.shut();
        inner.endpoint.close(0u32.into(), b"pool closed");
        inner.engine.rt().tasks.wait().await;
        // Its connections drained, the endpoint lets go of the port.
        inner.endpoint.wait_idle().await;
    }

    /// Idle streams (Go: `Active`).
    #[doc(alias = "Active")]
    pub fn active(&self) -> usize {
        self.status().idle
    }

    /// The maximum capacity (Go: `Capacity`).
    #[doc(alias = "Capacity")]
    pub fn capacity(&self) -> usize {
        self.status().capacity
    }

    /// The sweep interval (Go: `Interval`).
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

    /// What was refused before the core saw a stream.
    pub fn quic_counters(&self) -> QuicCounters {
        let i = self.inner();
        QuicCounters {
            refused_connections: i.refused.load(Ordering::Relaxed),
            retries: i.retries.load(Ordering::Relaxed),
            failed_handshakes: i.failed.load(Ordering::Relaxed),
            failed_proofs: i.failed_proofs.load(Ordering::Relaxed),
        }
    }

    /// QUIC connections held or handshaking, all sources.
    pub fn connections(&self) -> usize {
        self.inner().sources().values().sum()
    }

    /// The last handshake failure, if any.
    pub fn last_failure(&self) -> Option<crate::Failure> {
        self.inner().engine.rt().log.last()
    }

    /// Waits until at least `n` streams are idle, or `timeout` passes; whether they
    /// are.
    pub async fn wait_idle(&self, n: usize, timeout: Duration) -> bool {
        self.inner().engine.wait_idle(n, timeout).await
    }
}

const _: () = assert!(ID_LEN == 2 * crate::wire::ID_WIRE_LEN);
