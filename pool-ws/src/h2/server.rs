//! The HTTP/2 server pool: TLS connections with ALPN `h2`, each `POST /stream` a pooled
//! stream under the id its response body starts with.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use pool_core::{Admission, ConfigError, ConnId, Counters, HandshakeTicket, IntoConfig};
use pool_core::{Refusal, ServerConfig};
use pool_core::{ServerMachine, Stage, Status, Want};
use pool_net::{IpFilter, SocketOptions};
use pool_tls::{Fingerprint, ServeTls, TunnelKey};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{H2Conn, Link, CONN_WINDOW, STREAM_WINDOW};
use crate::engine::{drive, now, step, Engine, Owner, Side};
use crate::error::{BuildError, GetError, HandshakeError};
use crate::proof::{self, H2_REFUSED, H2_SCOPE, PROOF};
use crate::{FirstZero, LastFailure};

/// Connections in their TLS handshake or HTTP/2 preface at once at most; a new one past
/// it evicts the oldest (slowloris on the preface). Each also has the core's handshake
/// deadline.
pub const MAX_PREFACES: usize = 64;

/// Builder of an [`H2ServerPool`].
#[must_use]
#[derive(Debug)]
pub struct H2ServerPoolBuilder {
    config: Result<ServerConfig, ConfigError>,
    bind: Option<SocketAddr>,
    listen: Option<std::net::TcpListener>,
    filter: Result<IpFilter, pool_net::FilterError>,
    tls: ServeTls,
    socket: SocketOptions,
    get_timeout: Duration,
    key: Option<TunnelKey>,
}

impl H2ServerPoolBuilder {
    /// The machine's settings. Its maximum capacity is also each connection's maximum
    /// of concurrent streams; its handshake deadline bounds the TLS handshake plus the
    /// preface of a connection, and the `0x00` plus id exchange of a stream. A
    /// [`ServerConfig`] or its builder, whose errors `build` reports.
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
    /// Allowed client addresses, as the WebSocket server's; a stream from another is
    /// answered `403`.
    pub fn client_ip(mut self, spec: &str) -> Self {
        self.filter = IpFilter::parse(spec);
        self
    }
    /// TLS, as every pool of the workspace takes it; the ALPN is set to `h2` here.
    /// HTTP/2 runs over TLS: [`ServeTls::Off`] (the default) is taken as
    /// [`ServeTls::self_signed`], a certificate for `localhost` made at build.
    pub fn tls(mut self, tls: ServeTls) -> Self {
        self.tls = tls;
        self
    }
    /// Socket options of every accepted connection.
    pub fn socket_options(mut self, o: SocketOptions) -> Self {
        self.socket = o;
        self
    }
    /// Timeout of [`H2ServerPool::get`]. Default 5 s.
    pub fn get_timeout(mut self, d: Duration) -> Self {
        self.get_timeout = d;
        self
    }
    /// Admits a connection's streams only once the connection proved this key on its
    /// first stream, in a mutual challenge-response over fresh nonces bound to the TLS
    /// session (the bytes are in the crate's README). A connection that does not, by
    /// the handshake deadline after its preface, is refused (`GOAWAY` with
    /// `INADEQUATE_SECURITY`) and counted in [`H2ServerPool::failed_proofs`]; until it
    /// has, it holds one of the [`MAX_PREFACES`] slots. Not part of the Go wire: set
    /// it on both ends or on neither. Default none.
    pub fn tunnel_key(mut self, key: TunnelKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Binds and starts the accept loop. Call inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`BuildError`] names what is wrong ([`BuildError::Missing`] without a certificate).
    pub fn build(self) -> Result<H2ServerPool, BuildError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let filter = self.filter?;
        let mut config = self.config?;
        if self.key.is_some() {
            config = config.keyed();
        }
        let (tls, fingerprint) = self
            .tls
            .encrypted()
            .build_alpn(&[b"h2"])?
            .ok_or(BuildError::Missing("a TLS configuration"))?;
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
        let streams = u32::try_from(config.max_capacity()).unwrap_or(u32::MAX);
        let deadline = config.handshake_timeout();
        let machine = ServerMachine::new(config, FirstZero::new(seed), now());
        let inner = Arc::new_cyclic(|me| Inner {
            engine: Engine::new(machine, me.clone(), rt),
            filter,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
            socket: self.socket,
            streams,
            deadline,
            prefaces: Mutex::new(VecDeque::new()),
            next: AtomicU64::new(0),
            preface_failures: AtomicU64::new(0),
            failed_proofs: AtomicU64::new(0),
            last: LastFailure::default(),
            key: self.key,
        });
        inner.engine.spawn(accept_loop(inner.clone(), listener));
        inner.engine.spawn(drive(inner.clone()));
        Ok(H2ServerPool {
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
    acceptor: tokio_rustls::TlsAcceptor,
    socket: SocketOptions,
    streams: u32,
    deadline: Duration,
    /// Connections in their TLS handshake or preface, oldest first.
    prefaces: Mutex<VecDeque<(u64, CancellationToken)>>,
    next: AtomicU64,
    preface_failures: AtomicU64,
    failed_proofs: AtomicU64,
    last: LastFailure,
    key: Option<TunnelKey>,
}

impl Side for Inner {
    type C = H2Conn;
    type M = ServerMachine<H2Conn>;
    fn engine(&self) -> &Engine<Self> {
        &self.engine
    }
    fn dial(self: Arc<Self>, ticket: pool_core::DialTicket) {
        drop(ticket); // a server machine never asks for one
    }
}

type Failed = (Stage, HandshakeError);
type Respond = h2::server::SendResponse<Bytes>;
type Conn = h2::server::Connection<tokio_rustls::server::TlsStream<TcpStream>, Bytes>;

fn answer(code: u16) -> http::Response<()> {
    let mut r = http::Response::new(());
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_REQUEST);
    r
}

impl Inner {
    fn prefaces(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, CancellationToken)>> {
        self.prefaces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// TLS with ALPN `h2`, then the HTTP/2 preface and settings; with the session's
    /// channel binding when keyed.
    async fn preface(&self, tcp: TcpStream) -> Result<(Conn, Vec<u8>), HandshakeError> {
        let _ = self.socket.apply_tcp(&tcp);
        let tls = self.acceptor.accept(tcp).await;
        let tls = tls.map_err(|e| HandshakeError::Tls(e.to_string()))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(HandshakeError::NoH2);
        }
        let binding = match self.key {
            Some(_) => proof::tls_binding(tls.get_ref().1)?.to_vec(),
            None => Vec::new(),
        };
        let conn = h2::server::Builder::new()
            .max_concurrent_streams(self.streams)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .handshake(tls)
            .await
            .map_err(|e| HandshakeError::Preface(e.to_string()))?;
        Ok((conn, binding))
    }

    /// The connection's proof on its first stream: `POST /stream` with `0x01`, `200`
    /// with `Ns`, then `Nc ‖ tag_c` in, `tag_s` out, and both bodies end.
    async fn prove(
        &self,
        key: &TunnelKey,
        binding: &[u8],
        req: http::Request<h2::RecvStream>,
        mut respond: Respond,
        link: Link,
    ) -> Result<(), HandshakeError> {
        if req.method() != http::Method::POST || req.uri().path() != "/stream" {
            respond.send_reset(H2_REFUSED);
            return Err(proof::bad("the first stream is not POST /stream"));
        }
        let mut recv = req.into_body();
        let io = |e: h2::Error| HandshakeError::Io(e.to_string());
        let mut first = match recv.data().await {
            Some(data) => data.map_err(io)?,
            None => return Err(proof::bad("the first stream has an empty body")),
        };
        let _ = recv.flow_control().release_capacity(first.len());
        if first.first() != Some(&PROOF) {
            respond.send_reset(H2_REFUSED);
            return Err(proof::bad("the first stream is not a proof (no key)"));
        }
        let rest = first.split_off(1);
        let p = proof::server_start(key, H2_SCOPE, binding)?;
        let mut send = respond.send_response(answer(200), false).map_err(io)?;
        send.send_data(Bytes::copy_from_slice(&p.challenge()), false)
            .map_err(io)?;
        let mut conn = H2Conn::new(send, recv, rest, link);
        proof::server_finish(&mut conn, p).await?;
        // The proof is done; the stream's end is a courtesy the peer may have made moot
        // by dropping its side already.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut conn).await;
        Ok(())
    }

    /// The `0x00` at the head of the request body, then `200` and the id.
    async fn open(
        &self,
        ticket: &mut HandshakeTicket,
        req: http::Request<h2::RecvStream>,
        mut respond: Respond,
        link: Link,
    ) -> Result<H2Conn, Failed> {
        if req.method() != http::Method::POST || req.uri().path() != "/stream" {
            let _ = respond.send_response(answer(404), true);
            return Err((
                Stage::Protocol,
                HandshakeError::NotUpgrade("not POST /stream"),
            ));
        }
        let mut recv = req.into_body();
        let first = recv.data().await;
        let h2_err = |e: h2::Error| (Stage::Id, HandshakeError::Io(e.to_string()));
        let mut first = match first {
            Some(data) => data.map_err(h2_err)?,
            None => {
                return Err((
                    Stage::Id,
                    HandshakeError::BadId("empty request body".into()),
                ))
            }
        };
        let _ = recv.flow_control().release_capacity(first.len());
        if first.first() != Some(&0) {
            respond.send_reset(h2::Reason::PROTOCOL_ERROR);
            return Err((
                Stage::Protocol,
                HandshakeError::BadId("body does not start with 0x00".into()),
            ));
        }
        let rest = first.split_off(1);
        let id = self.engine.driver.input(|m, _| m.assign_id(ticket));
        let mut send = respond.send_response(answer(200), false).map_err(h2_err)?;
        let raw = pool_core::IdForm::Raw4.encode(&id);
        send.send_data(Bytes::copy_from_slice(raw.as_ref()), false)
            .map_err(h2_err)?;
        let mut conn = H2Conn::new(send, recv, rest, link);
        conn.set_id(id);
        Ok(conn)
    }

    /// A stream arrived: the core admits it (or it is answered `403` / `503`), then it
    /// opens under the handshake deadline.
    fn stream(
        self: &Arc<Self>,
        req: http::Request<h2::RecvStream>,
        mut respond: Respond,
        peer: SocketAddr,
        link: &Link,
    ) {
        let allowed = self.filter.allows(peer.ip());
        let engine = &self.engine;
        match engine
            .driver
            .input(|m, now| m.handle_accept(now, peer.ip(), allowed))
        {
            Admission::Admit(ticket) => {
                let (me, link) = (self.clone(), link.clone());
                let serial = ticket.serial();
                engine.spawn_step(serial, move |token| {
                    open(me, ticket, req, respond, link, token)
                });
            }
            Admission::Refuse(why) => {
                let code = if why == Refusal::Filter { 403 } else { 503 };
                let _ = respond.send_response(answer(code), true);
            }
        }
    }
}

async fn open(
    inner: Arc<Inner>,
    mut ticket: HandshakeTicket,
    req: http::Request<h2::RecvStream>,
    respond: Respond,
    link: Link,
    token: CancellationToken,
) {
    let serial = ticket.serial();
    let aborted = (
        Stage::Id,
        HandshakeError::Io("deadline passed or evicted".into()),
    );
    let res = step(&token, aborted, inner.open(&mut ticket, req, respond, link)).await;
    let res = res.map_err(|(stage, e)| {
        debug!(serial, ?stage, error = %e, "stream open failed");
        inner.last.set(e);
        stage
    });
    inner.engine.driver.handshaken(ticket, res);
}

/// One connection: its preface under the deadline (the oldest evicted past
/// [`MAX_PREFACES`]), then its streams until it ends.
async fn connection(inner: Arc<Inner>, tcp: TcpStream, peer: SocketAddr) {
    let serial = inner.next.fetch_add(1, Ordering::Relaxed);
    let token = inner.engine.rt().cancel.child_token();
    let evicted = {
        let mut p = inner.prefaces();
        let old = (p.len() >= MAX_PREFACES).then(|| p.pop_front()).flatten();
        p.push_back((serial, token.clone()));
        old
    };
    if let Some((_, old)) = evicted {
        old.cancel();
    }
    let preface = async {
        match tokio::time::timeout(inner.deadline, inner.preface(tcp)).await {
            Ok(r) => r,
            Err(_) => Err(HandshakeError::Preface("deadline passed".into())),
        }
    };
    let evicted = HandshakeError::Preface("evicted by a newer connection".into());
    let res = step(&token, evicted, preface).await;
    if inner.key.is_none() {
        inner.prefaces().retain(|(s, _)| *s != serial);
    }
    let (mut conn, binding) = match res {
        Ok(c) => c,
        Err(e) => {
            debug!(%peer, error = %e, "HTTP/2 preface failed");
            inner.preface_failures.fetch_add(1, Ordering::Relaxed);
            inner.prefaces().retain(|(s, _)| *s != serial);
            inner.last.set(e);
            return;
        }
    };
    let link = Link::new();
    let cancel = inner.engine.rt().cancel.clone();
    let mut closing = false;
    // A connection that opens no stream (or, keyed, proves no key) within the deadline
    // after its preface is closed: a stranger's empty connection holds nothing for long.
    let first = tokio::time::sleep(inner.deadline);
    tokio::pin!(first);
    let mut opened = false;
    let mut proven = inner.key.is_none();
    let mut proving: Option<std::pin::Pin<Box<dyn Future<Output = _> + Send + '_>>> = None;
    loop {
        let waiting = if inner.key.is_some() {
            !proven
        } else {
            !opened
        };
        let next = tokio::select! {
            n = conn.accept() => n,
            Some(r) = async { Some(proving.as_mut()?.await) }, if proving.is_some() => {
                proving = None;
                match r {
                    Ok(()) => {
                        proven = true;
                        inner.prefaces().retain(|(s, _)| *s != serial);
                        continue;
                    }
                    Err(e) => {
                        refuse(&inner, &mut conn, peer, e).await;
                        break;
                    }
                }
            }
            _ = &mut first, if waiting => {
                debug!(%peer, "no stream within the deadline: connection closed");
                if inner.key.is_some() {
                    let e = proof::bad("no proof within the deadline");
                    refuse(&inner, &mut conn, peer, e).await;
                    break;
                }
                inner.preface_failures.fetch_add(1, Ordering::Relaxed);
                inner.last.set(HandshakeError::Preface("no stream within the deadline".into()));
                break;
            }
            _ = token.cancelled(), if !proven && !cancel.is_cancelled() => {
                if cancel.is_cancelled() {
                    continue; // the pool closes: the arm below says so
                }
                let e = proof::bad("evicted by a newer connection before its proof");
                refuse(&inner, &mut conn, peer, e).await;
                break;
            }
            _ = cancel.cancelled(), if !closing => {
                // GOAWAY: no new stream; those handed out run to their end.
                conn.graceful_shutdown();
                closing = true;
                continue;
            }
        };
        match next {
            Some(Ok((req, respond))) if !proven => {
                opened = true;
                // Unproven only when keyed.
                let Some(key) = inner.key.as_ref() else { break };
                if proving.is_some() {
                    // A keyed client opens nothing before its proof ends.
                    drop((req, respond));
                    let e = proof::bad("a stream before the proof ended");
                    refuse(&inner, &mut conn, peer, e).await;
                    break;
                }
                let p = inner.prove(key, &binding, req, respond, link.clone());
                proving = Some(Box::pin(p));
            }
            Some(Ok((req, respond))) => {
                opened = true;
                inner.stream(req, respond, peer, &link);
            }
            Some(Err(e)) => {
                debug!(%peer, error = %e, "HTTP/2 connection failed");
                break;
            }
            None => break,
        }
    }
    inner.prefaces().retain(|(s, _)| *s != serial);
    link.down();
}

/// Refuses a connection whose proof failed: counted, `GOAWAY` with
/// `INADEQUATE_SECURITY`, then closed once that is written or the deadline passed.
async fn refuse(inner: &Inner, conn: &mut Conn, peer: SocketAddr, e: HandshakeError) {
    debug!(%peer, error = %e, "tunnel-key proof failed: connection refused");
    inner.failed_proofs.fetch_add(1, Ordering::Relaxed);
    inner.last.set(e);
    conn.abrupt_shutdown(H2_REFUSED);
    let closed = std::future::poll_fn(|cx| conn.poll_closed(cx));
    let _ = tokio::time::timeout(inner.deadline, closed).await;
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener) {
    let engine = &inner.engine;
    let cancel = engine.rt().cancel.clone();
    loop {
        let res = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        match res {
            // Not the pool's task: streams handed out ride on it after the pool closed.
            Ok((tcp, peer)) => engine.spawn_detached(connection(inner.clone(), tcp, peer)),
            Err(_) => {
                let resume = engine.driver.input(|m, now| m.handle_accept_error(now));
                tokio::select! {
                    _ = tokio::time::sleep_until(resume.into()) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
    }
}

/// The server end of the HTTP/2 pool: the nph2 wire. Cheap to clone; the pool closes
/// when the last clone is dropped or [`close`](Self::close) is called.
///
/// A stream from a filtered address is answered `403`, one past the maximum capacity
/// `503` (the Go server answers `404`; its client reads no status), a request that is
/// not `POST /stream` `404`.
#[derive(Clone)]
pub struct H2ServerPool {
    owner: Arc<Owner<Inner>>,
    local: SocketAddr,
    fingerprint: Option<Fingerprint>,
    get_timeout: Duration,
}

impl std::fmt::Debug for H2ServerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2ServerPool")
            .field("local", &self.local)
            .field("status", &self.status())
            .finish()
    }
}

impl H2ServerPool {
    /// A builder with the defaults.
    pub fn builder() -> H2ServerPoolBuilder {
        H2ServerPoolBuilder {
            config: Ok(ServerConfig::default()),
            bind: None,
            listen: None,
            filter: Ok(IpFilter::any()),
            tls: ServeTls::Off,
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

    /// The SHA-256 fingerprint of the certificate served, for a client to pin; `None`
    /// with a rustls configuration of your own ([`ServeTls::Custom`]).
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        self.fingerprint
    }

    /// The oldest live idle stream and its id (Go: `IncomingGet`).
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`], [`GetError::Closed`].
    pub async fn get(&self) -> Result<(ConnId, H2Conn), GetError> {
        self.get_timeout(self.get_timeout).await
    }

    /// [`get`](Self::get) with its own timeout.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_timeout(&self, timeout: Duration) -> Result<(ConnId, H2Conn), GetError> {
        self.inner().engine.get(Want::Any, timeout).await
    }

    /// In-band sessions: the oldest idle stream with [`pool_core::START`] and `first`
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
    ) -> Result<(ConnId, H2Conn), GetError> {
        crate::engine::start_with(self.inner(), first, timeout).await
    }

    /// Closes every idle stream; how many.
    pub fn flush(&self) -> usize {
        self.inner().engine.driver.flush()
    }

    /// Closes the pool and waits for its tasks to end: `GOAWAY` on every connection,
    /// idle streams reset; streams handed out live on, and each connection closes
    /// after its last.
    pub async fn close(&self) {
        self.inner().engine.close().await;
    }

    /// The status snapshot.
    pub fn status(&self) -> Status {
        self.inner().engine.driver.read(|m| m.status())
    }

    /// The counters (streams: refusals, failed opens, evictions).
    pub fn counters(&self) -> Counters {
        self.inner().engine.driver.read(|m| m.counters())
    }

    /// Connections whose TLS handshake or preface failed, ran out of time or was
    /// evicted, or that opened no stream within the handshake deadline after it.
    pub fn preface_failures(&self) -> u64 {
        self.inner().preface_failures.load(Ordering::Relaxed)
    }

    /// Connections refused because their tunnel-key proof failed, ran out of time or
    /// was evicted by a newer connection (keyed pools only).
    pub fn failed_proofs(&self) -> u64 {
        self.inner().failed_proofs.load(Ordering::Relaxed)
    }

    /// Why the last connection or stream failed, if one did.
    pub fn last_failure(&self) -> Option<HandshakeError> {
        self.inner().last.get()
    }
}
