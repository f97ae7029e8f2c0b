//! The server pool: answers the client pool's WebSocket upgrades and keeps each
//! connection idle under the id it sent as the first binary message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use pool_core::{Admission, ConfigError, ConnId, Counters, HandshakeTicket, IntoConfig};
use pool_core::{Refusal, ServerConfig};
use pool_core::{ServerMachine, Stage, Status, Want};
use pool_net::{IpFilter, SocketOptions};
use pool_tls::{Fingerprint, ServeTls, ServerProof, TunnelKey};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::engine::{drive, now, step, Engine, Owner, Side};
use crate::error::{BuildError, GetError, HandshakeError};
use crate::http;
use crate::proof;
use crate::stream::{ws_config, Io, WsConn};
use crate::{FirstZero, LastFailure};

/// Refusals answered at once at most (each reads the request head and writes `403` or
/// `503` within [`REFUSE_WAIT`]); past it a refused connection is closed unanswered.
/// Either way the core counts it.
pub const REFUSERS: usize = 64;

/// How long a refused connection is given to send its request head and take the answer.
pub const REFUSE_WAIT: Duration = Duration::from_secs(2);

/// Builder of a [`WsServerPool`].
#[must_use]
#[derive(Debug)]
pub struct WsServerPoolBuilder {
    config: Result<ServerConfig, ConfigError>,
    listen: Option<std::net::TcpListener>,
    bind: Option<SocketAddr>,
    filter: Result<IpFilter, pool_net::FilterError>,
    tls: ServeTls,
    path: String,
    socket: SocketOptions,
    get_timeout: Duration,
    key: Option<TunnelKey>,
}

impl WsServerPoolBuilder {
    /// The machine's settings: maximum capacity, handshakes at once and per source,
    /// the handshake deadline (TLS, upgrade and id message together), settle time,
    /// sweep: a [`ServerConfig`] or its builder, whose errors `build` reports. The id
    /// form is the wire's: 4 raw bytes, whatever it says. Default
    /// `ServerConfig::default()`.
    pub fn config(mut self, config: impl IntoConfig<ServerConfig>) -> Self {
        self.config = config.into_config();
        self
    }
    /// Listens on `addr`. One of `bind` and `listener` is required.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = Some(addr);
        self
    }
    /// Listens on a listener you made.
    pub fn listener(mut self, l: std::net::TcpListener) -> Self {
        self.listen = Some(l);
        self
    }
    /// Allowed client addresses: empty means anyone, else addresses and CIDR blocks
    /// separated by commas; others are answered `403`. A bad entry fails `build`.
    pub fn client_ip(mut self, spec: &str) -> Self {
        self.filter = IpFilter::parse(spec);
        self
    }
    /// TLS, as every pool of the workspace takes it: [`ServeTls::Off`] (the default)
    /// serves plain `ws://`, any other `wss://` (TLS codes 1 and 2).
    pub fn tls(mut self, tls: ServeTls) -> Self {
        self.tls = tls;
        self
    }
    /// The URL path of the upgrade. Default `/`, which (as the Go server) takes any
    /// path; another is matched exactly, and a request for any other path is answered
    /// `404`.
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.into();
        self
    }
    /// Socket options of every accepted connection. Default `SocketOptions::default()`.
    pub fn socket_options(mut self, o: SocketOptions) -> Self {
        self.socket = o;
        self
    }
    /// Timeout of [`WsServerPool::get`]. Default 5 s.
    pub fn get_timeout(mut self, d: Duration) -> Self {
        self.get_timeout = d;
        self
    }
    /// Admits a connection only once it proved this key, right after the id, in a
    /// mutual challenge-response over fresh nonces bound to the TLS session (unbound
    /// on plain `ws://`, as the TCP pools' mode 0); the bytes are in the crate's
    /// README. Any other connection is closed within the handshake deadline and
    /// counted in `auth_failures`; the settle time, unless set, is zero
    /// ([`ServerConfig::keyed`]). Not part of the Go wire: set it on both ends or on
    /// neither. Default none.
    pub fn tunnel_key(mut self, key: TunnelKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Binds and starts the accept loop. Call inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`BuildError`] names what is wrong.
    pub fn build(self) -> Result<WsServerPool, BuildError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        crate::check_path(&self.path)?;
        let filter = self.filter?;
        let mut config = self.config?;
        if self.key.is_some() {
            config = config.keyed();
        }
        let (acceptor, fingerprint) = match self.tls.build()? {
            Some((c, fp)) => (Some(c), fp),
            None => (None, None),
        };
        let io = |what| move |source| BuildError::Io { what, source };
        let std = match (self.listen, self.bind) {
            (Some(l), _) => l,
            (None, Some(a)) => pool_net::bind_listener(a, 1024).map_err(io("listen"))?,
            (None, None) => return Err(BuildError::Missing("bind address or listener")),
        };
        std.set_nonblocking(true).map_err(io("listen"))?;
        let listener = {
            let _g = rt.enter();
            TcpListener::from_std(std).map_err(io("listen"))?
        };
        let local = listener
            .local_addr()
            .map_err(io("read the listener's address"))?;
        let seed = pool_tls::secure_seed().map_err(|_| BuildError::Random)?;
        let machine = ServerMachine::new(config, FirstZero::new(seed), now());
        let inner = Arc::new_cyclic(|me| Inner {
            engine: Engine::new(machine, me.clone(), rt),
            filter,
            acceptor: acceptor.map(tokio_rustls::TlsAcceptor::from),
            path: self.path,
            socket: self.socket,
            refusers: Arc::new(Semaphore::new(REFUSERS)),
            last: LastFailure::default(),
            key: self.key,
        });
        inner.engine.spawn(accept_loop(inner.clone(), listener));
        inner.engine.spawn(drive(inner.clone()));
        Ok(WsServerPool {
            owner: Arc::new(Owner(inner)),
            local,
            fingerprint,
            get_timeout: self.get_timeout,
        })
    }
}

pub(crate) struct Inner {
    engine: Engine<Self>,
    filter: IpFilter,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    path: String,
    socket: SocketOptions,
    refusers: Arc<Semaphore>,
    last: LastFailure,
    key: Option<TunnelKey>,
}

impl Side for Inner {
    type C = WsConn;
    type M = ServerMachine<WsConn>;
    fn engine(&self) -> &Engine<Self> {
        &self.engine
    }
    fn dial(self: Arc<Self>, ticket: pool_core::DialTicket) {
        drop(ticket); // a server machine never asks for one
    }
}

type Failed = (Stage, HandshakeError);

impl Inner {
    /// TLS, the upgrade, the id message (with the proof's challenge behind the id when
    /// keyed): each until it ends or the core aborts the handshake (its deadline
    /// passed, a newer connection evicted it, the pool closed).
    async fn upgrade(
        &self,
        ticket: &mut HandshakeTicket,
        tcp: TcpStream,
    ) -> Result<(WsConn, Option<ServerProof>), Failed> {
        let _ = self.socket.apply_tcp(&tcp);
        let mut io = match &self.acceptor {
            None => Io::Plain(tcp),
            Some(a) => {
                let tls = a.accept(tcp).await;
                let tls = tls.map_err(|e| (Stage::Tls, HandshakeError::Tls(e.to_string())))?;
                Io::TlsServer(Box::new(tls))
            }
        };
        let head = match http::read_head(&mut io).await {
            Ok(head) => head,
            Err((e, answer)) => {
                if let Some(code) = answer {
                    let _ = http::send(&mut io, &http::status(code)).await;
                }
                let stage = match (&e, answer) {
                    (HandshakeError::ClientSpeaksTls, _) | (_, Some(_)) => Stage::Protocol,
                    _ => Stage::Id,
                };
                return Err((stage, e));
            }
        };
        let upgrade = match http::parse(&head, &self.path) {
            Ok(u) => u,
            Err((e, code)) => {
                let _ = http::send(&mut io, &http::status(code)).await;
                return Err((Stage::Protocol, e));
            }
        };
        drop(head);
        let io_err = |e: std::io::Error| (Stage::Id, HandshakeError::Io(e.to_string()));
        http::send(&mut io, &upgrade.answer())
            .await
            .map_err(io_err)?;
        let mut ws = WebSocketStream::from_raw_socket(io, WsRole::Server, Some(ws_config())).await;
        let id = self.engine.driver.input(|m, _| m.assign_id(ticket));
        let raw = pool_core::IdForm::Raw4.encode(&id);
        let mut first = raw.as_ref().to_vec();
        let proof = match &self.key {
            None => None,
            Some(key) => {
                let auth = |e| (Stage::Auth, e);
                let binding = proof::ws_binding(ws.get_ref()).map_err(auth)?;
                let scope = proof::ws_scope(raw.as_ref());
                let p = proof::server_start(key, &scope, &binding).map_err(auth)?;
                first.extend_from_slice(&p.challenge());
                Some(p)
            }
        };
        ws.send(Message::binary(first))
            .await
            .map_err(|e| (Stage::Id, HandshakeError::Io(e.to_string())))?;
        Ok((WsConn::new(id, ws), proof))
    }

    /// The upgrade, then the rest of the proof when keyed.
    async fn handshake(
        &self,
        ticket: &mut HandshakeTicket,
        tcp: TcpStream,
        token: &CancellationToken,
    ) -> Result<WsConn, Failed> {
        let aborted = (
            Stage::Id,
            HandshakeError::Io("deadline passed or evicted".into()),
        );
        let (mut conn, proof) = step(token, aborted, self.upgrade(ticket, tcp)).await?;
        if let Some(p) = proof {
            let aborted = proof::bad("no response within the deadline, or evicted");
            let fin = async { proof::server_finish(&mut conn, p).await };
            step(token, aborted, fin)
                .await
                .map_err(|e| (Stage::Auth, e))?;
        }
        Ok(conn)
    }

    /// Answers a refused connection `403` or `503`, within [`REFUSE_WAIT`], when a
    /// refuser is free; closes it otherwise.
    fn refuse(self: &Arc<Self>, tcp: TcpStream, why: Refusal) {
        let Ok(permit) = self.refusers.clone().try_acquire_owned() else {
            return;
        };
        let code = if why == Refusal::Filter { 403 } else { 503 };
        let me = self.clone();
        self.engine.spawn(async move {
            let _permit = permit;
            let answer = async {
                let mut io = match &me.acceptor {
                    None => Io::Plain(tcp),
                    Some(a) => Io::TlsServer(Box::new(a.accept(tcp).await.ok()?)),
                };
                http::read_head(&mut io).await.ok()?;
                http::send(&mut io, &http::status(code)).await.ok()
            };
            let cancel = me.engine.rt().cancel.clone();
            tokio::select! {
                _ = tokio::time::timeout(REFUSE_WAIT, answer) => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}

async fn handshake(
    inner: Arc<Inner>,
    mut ticket: HandshakeTicket,
    tcp: TcpStream,
    token: CancellationToken,
) {
    let serial = ticket.serial();
    let res = inner.handshake(&mut ticket, tcp, &token).await;
    let res = res.map_err(|(stage, e)| {
        debug!(serial, ?stage, error = %e, "upgrade failed");
        inner.last.set(e);
        stage
    });
    inner.engine.driver.handshaken(ticket, res);
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let engine = &inner.engine;
    let cancel = engine.rt().cancel.clone();
    loop {
        let res = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        let (tcp, peer) = match res {
            Ok(pair) => pair,
            Err(_) => {
                let resume = engine.driver.input(|m, now| m.handle_accept_error(now));
                tokio::select! {
                    _ = tokio::time::sleep_until(resume.into()) => continue,
                    _ = cancel.cancelled() => return,
                }
            }
        };
        let allowed = inner.filter.allows(peer.ip());
        match engine
            .driver
            .input(|m, now| m.handle_accept(now, peer.ip(), allowed))
        {
            Admission::Admit(ticket) => {
                let serial = ticket.serial();
                let task = |token| handshake(inner.clone(), ticket, tcp, token);
                engine.spawn_step(serial, task);
            }
            Admission::Refuse(why) => {
                debug!(%peer, ?why, "upgrade refused");
                inner.refuse(tcp, why);
            }
        }
    }
}

/// The server end of the WebSocket pool: the npws wire. Cheap to clone; the pool
/// closes when the last clone is dropped or [`close`](Self::close) is called.
///
/// Each client connection is answered: `403` when the client-IP filter refuses it,
/// `503` when the pool holds its maximum capacity, `101` otherwise, followed by the
/// connection's 4-byte id as the first binary message (the first connection after
/// start gets `00000000`, as the Go pools do; the next are random).
#[derive(Clone)]
pub struct WsServerPool {
    owner: Arc<Owner<Inner>>,
    local: SocketAddr,
    fingerprint: Option<Fingerprint>,
    get_timeout: Duration,
}

impl std::fmt::Debug for WsServerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsServerPool")
            .field("local", &self.local)
            .field("status", &self.status())
            .finish()
    }
}

impl WsServerPool {
    /// A builder with the defaults.
    pub fn builder() -> WsServerPoolBuilder {
        WsServerPoolBuilder {
            config: Ok(ServerConfig::default()),
            listen: None,
            bind: None,
            filter: Ok(IpFilter::any()),
            tls: ServeTls::Off,
            path: "/".into(),
            socket: SocketOptions::default(),
            get_timeout: Duration::from_secs(5),
            key: None,
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.0
    }

    /// The address the pool listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The SHA-256 fingerprint of the certificate served, for a code-1 client to pin.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The oldest live idle connection and its id, waiting up to the builder's
    /// [`get_timeout`](WsServerPoolBuilder::get_timeout) (Go: `IncomingGet`).
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`], [`GetError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses no connection.
    pub async fn get(&self) -> Result<(ConnId, WsConn), GetError> {
        self.get_timeout(self.get_timeout).await
    }

    /// [`get`](Self::get) with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_timeout(&self, timeout: Duration) -> Result<(ConnId, WsConn), GetError> {
        self.inner().engine.get(Want::Any, timeout).await
    }

    /// In-band sessions: the oldest idle connection with [`pool_core::START`] and `first`
    /// written on it in one write; the client pool's `accept_timeout` receives it as
    /// soon as they arrive. One whose write fails is closed and the next one tried,
    /// within `timeout`. Not part of the Go wire.
    ///
    /// # Errors
    ///
    /// As `get`.
    pub async fn start_with(
        &self,
        first: &[u8],
        timeout: Duration,
    ) -> Result<(ConnId, WsConn), GetError> {
        crate::engine::start_with(self.inner(), first, timeout).await
    }

    /// Closes every idle connection (Go: `Flush`); how many.
    pub fn flush(&self) -> usize {
        self.inner().engine.driver.flush()
    }

    /// Closes the pool and waits for its tasks to end: waiting gets fail with
    /// [`GetError::Closed`], idle connections and upgrades under way are closed.
    pub async fn close(&self) {
        self.inner().engine.close().await;
    }

    /// The status snapshot.
    pub fn status(&self) -> Status {
        self.inner().engine.driver.read(|m| m.status())
    }

    /// The counters: refusals by reason, failed upgrades by stage, evictions.
    pub fn counters(&self) -> Counters {
        self.inner().engine.driver.read(|m| m.counters())
    }

    /// Why the last upgrade failed, if one did.
    pub fn last_failure(&self) -> Option<HandshakeError> {
        self.inner().last.get()
    }
}
