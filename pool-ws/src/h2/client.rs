//! The HTTP/2 client pool: one TLS connection with ALPN `h2`, made again when it ends,
//! and a `POST /stream` for each pooled stream.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pool_core::{ClientConfig, ClientMachine, ConfigError, ConnId, Counters, DialTicket};
use pool_core::{IntoConfig, SeededRandom, Stage};
use pool_core::{Status, Want};
use pool_net::SocketOptions;
use pool_tls::{ClientTls, TunnelKey};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{H2Conn, Link, CONN_WINDOW, STREAM_WINDOW};
use crate::engine::{drive, now, step, Engine, Owner, Side};
use crate::error::{BuildError, GetError, HandshakeError};
use crate::proof::{self, H2_SCOPE, PROOF};
use crate::LastFailure;

/// Builder of an [`H2ClientPool`].
#[must_use]
#[derive(Debug)]
pub struct H2ClientPoolBuilder {
    addr: Option<SocketAddr>,
    config: Result<ClientConfig, ConfigError>,
    tls: ClientTls,
    host: Option<String>,
    socket: SocketOptions,
    key: Option<TunnelKey>,
}

impl H2ClientPoolBuilder {
    /// The machine's settings: capacity (keep it within the server's capacity, its
    /// maximum of concurrent streams), intervals, parallelism, deadlines: a
    /// [`ClientConfig`] or its builder, whose errors `build` reports.
    pub fn config(mut self, config: impl IntoConfig<ClientConfig>) -> Self {
        self.config = config.into_config();
        self
    }
    /// The server to dial. Required.
    pub fn address(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }
    /// TLS, as every pool of the workspace takes it; the ALPN is set to `h2` here.
    /// HTTP/2 runs over TLS, as in the Go pool: [`ClientTls::Off`] (the default) is
    /// taken as [`ClientTls::SelfSigned`] with no pin (codes 0 and 1 do not verify).
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = tls;
        self
    }
    /// The host name: the request's authority and the TLS server name unless the
    /// [`ClientTls`] names one. Default the server's IP address.
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
        self
    }
    /// Socket options of the connection.
    pub fn socket_options(mut self, o: SocketOptions) -> Self {
        self.socket = o;
        self
    }
    /// Proves this key once per connection, on its first stream, before any pooled
    /// stream rides on it: a mutual challenge-response over fresh nonces bound to the
    /// TLS session. A connection whose server fails its side (or refuses ours) is
    /// dropped, and the dial counted in `auth_failures`. Not part of the Go wire: set
    /// it on both ends or on neither. Default none.
    pub fn tunnel_key(mut self, key: TunnelKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Starts the pool. Call inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`BuildError`] names what is wrong.
    pub fn build(self) -> Result<H2ClientPool, BuildError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let addr = self
            .addr
            .ok_or(BuildError::Missing("the server's address (`address`)"))?;
        let config = self.config?;
        let (tls, name) = self
            .tls
            .encrypted()
            .build_alpn(&[b"h2"])?
            .ok_or(BuildError::Missing("a TLS configuration"))?;
        let host = self.host.unwrap_or_else(|| addr.ip().to_string());
        let name = match name {
            Some(name) => name,
            None => pool_tls::server_name(&host)?,
        };
        let authority = match addr {
            SocketAddr::V6(_) if host.parse::<std::net::Ipv6Addr>().is_ok() => format!("[{host}]"),
            _ => host,
        };
        let seed = pool_tls::secure_seed().map_err(|_| BuildError::Random)?;
        let in_band = config.in_band();
        let machine = ClientMachine::new(config, SeededRandom::from_seed(seed), now());
        let inner = Arc::new_cyclic(|me| Inner {
            engine: Engine::new(machine, me.clone(), rt),
            addr,
            uri: format!("https://{authority}/stream"),
            connector: tokio_rustls::TlsConnector::from(tls),
            name,
            socket: self.socket,
            link: tokio::sync::Mutex::new(None),
            last: LastFailure::default(),
            key: self.key,
        });
        if in_band {
            crate::engine::watch_starts(&inner);
        }
        inner.engine.spawn(drive(inner.clone()));
        Ok(H2ClientPool {
            owner: Arc::new(Owner(inner)),
        })
    }
}

type Failed = (Stage, HandshakeError);
type Sender = h2::client::SendRequest<Bytes>;

pub(crate) struct Inner {
    engine: Engine<Self>,
    addr: SocketAddr,
    uri: String,
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    socket: SocketOptions,
    /// The connection every stream rides on, while it is up.
    link: tokio::sync::Mutex<Option<(Sender, Link)>>,
    last: LastFailure,
    key: Option<TunnelKey>,
}

impl Side for Inner {
    type C = H2Conn;
    type M = ClientMachine<H2Conn>;
    fn engine(&self) -> &Engine<Self> {
        &self.engine
    }
    fn dial(self: Arc<Self>, ticket: DialTicket) {
        let me = self.clone();
        self.engine
            .spawn_step(ticket.serial(), move |token| dial(me, ticket, token));
    }
}

impl Inner {
    /// The connection, made first when there is none or it ended (one dial makes it,
    /// the others wait for it).
    /// `proving` is set while this dial runs the connection's proof.
    async fn sender(&self, proving: &AtomicBool) -> Result<(Sender, Link), Failed> {
        let mut held = self.link.lock().await;
        if let Some((s, l)) = held.as_ref().filter(|(_, l)| l.is_up()) {
            return Ok((s.clone(), l.clone()));
        }
        *held = None;
        let io = |stage| move |e: std::io::Error| (stage, HandshakeError::Io(e.to_string()));
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(io(Stage::Connect))?;
        let _ = self.socket.apply_tcp(&tcp);
        let tls = self.connector.connect(self.name.clone(), tcp).await;
        let tls = tls.map_err(|e| (Stage::Tls, HandshakeError::Tls(e.to_string())))?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err((Stage::Protocol, HandshakeError::NoH2));
        }
        let binding = match self.key {
            Some(_) => proof::tls_binding(tls.get_ref().1)
                .map_err(|e| (Stage::Auth, e))?
                .to_vec(),
            None => Vec::new(),
        };
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| (Stage::Protocol, HandshakeError::Preface(e.to_string())))?;
        let link = Link::new();
        let down = link.clone();
        // Not the pool's task: streams handed out ride on it after the pool closed, and
        // it ends when the last of them and the pool's handle are gone.
        self.engine.spawn_detached(async move {
            let r = connection.await;
            debug!(result = ?r, "HTTP/2 connection ended");
            down.down();
        });
        if let Some(key) = &self.key {
            proving.store(true, Ordering::Relaxed);
            let proved = self.prove(send.clone(), key, &binding, link.clone()).await;
            if let Err(e) = proved {
                link.down();
                return Err((Stage::Auth, e));
            }
            proving.store(false, Ordering::Relaxed);
        }
        *held = Some((send.clone(), link.clone()));
        Ok((send, link))
    }

    /// The connection's proof, on its first stream: `POST /stream` with `0x01`, the
    /// challenge in the `200` body, the response, the confirmation; both bodies end.
    async fn prove(
        &self,
        send: Sender,
        key: &TunnelKey,
        binding: &[u8],
        link: Link,
    ) -> Result<(), HandshakeError> {
        let refused = |e: h2::Error| match e.reason() {
            Some(r) if r == proof::H2_REFUSED => proof::bad("the server refused the proof"),
            _ => HandshakeError::Io(e.to_string()),
        };
        let mut send = send.ready().await.map_err(refused)?;
        let req = http::Request::post(self.uri.as_str())
            .body(())
            .map_err(|e| HandshakeError::Ws(e.to_string()))?;
        let (response, mut body) = send.send_request(req, false).map_err(refused)?;
        body.send_data(Bytes::from_static(&[PROOF]), false)
            .map_err(refused)?;
        let response = response.await.map_err(|e| match e.reason() {
            // An unkeyed server resets a stream that does not start with 0x00.
            Some(h2::Reason::PROTOCOL_ERROR) => proof::bad("the server takes no key"),
            _ => refused(e),
        })?;
        if response.status() != http::StatusCode::OK {
            return Err(HandshakeError::Status(response.status().as_u16()));
        }
        let mut conn = H2Conn::new(body, response.into_body(), Bytes::new(), link);
        proof::client(&mut conn, key, H2_SCOPE, binding).await?;
        // The proof is done; the stream's end is a courtesy the peer may have made moot
        // by dropping its side already.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut conn).await;
        Ok(())
    }

    /// A stream: `POST /stream` with `0x00`, a `200`, the id.
    async fn establish(
        &self,
        ticket: &DialTicket,
        proving: &AtomicBool,
    ) -> Result<(ConnId, H2Conn), Failed> {
        let (send, link) = self.sender(proving).await?;
        let h2_err = |stage| {
            move |e: h2::Error| match e.is_go_away() {
                true => (
                    stage,
                    HandshakeError::GoAway(e.reason().map_or(0, u32::from)),
                ),
                false => (stage, HandshakeError::Io(e.to_string())),
            }
        };
        let mut send = send.ready().await.map_err(|e| {
            link.down(); // refused new streams: make another connection next time
            h2_err(Stage::Connect)(e)
        })?;
        let req = http::Request::post(self.uri.as_str())
            .body(())
            .map_err(|e| (Stage::Protocol, HandshakeError::Ws(e.to_string())))?;
        let (response, mut body) = send
            .send_request(req, false)
            .map_err(h2_err(Stage::Connect))?;
        body.send_data(Bytes::from_static(&[0]), false)
            .map_err(h2_err(Stage::Connect))?;
        let response = response.await.map_err(h2_err(Stage::Connect))?;
        match response.status().as_u16() {
            200 => {}
            503 => return Err((Stage::Connect, HandshakeError::Full)),
            403 => return Err((Stage::Connect, HandshakeError::Forbidden)),
            code => return Err((Stage::Protocol, HandshakeError::Status(code))),
        }
        let serial = ticket.serial();
        self.engine
            .driver
            .input(|m, now| m.handle_handshake_done(serial, now));
        let mut conn = H2Conn::new(body, response.into_body(), Bytes::new(), link);
        let mut raw = [0u8; 4];
        conn.read_exact(&mut raw)
            .await
            .map_err(|e| (Stage::Id, HandshakeError::BadId(e.to_string())))?;
        let id = ConnId::from_random(raw);
        conn.set_id(id);
        Ok((id, conn))
    }
}

async fn dial(inner: Arc<Inner>, mut ticket: DialTicket, token: CancellationToken) {
    let serial = ticket.serial();
    let aborted = (Stage::Connect, HandshakeError::Io("deadline passed".into()));
    let proving = AtomicBool::new(false);
    let res = step(&token, aborted, inner.establish(&ticket, &proving)).await;
    let res = res.map_err(|failed| match failed {
        (Stage::Connect, _) if token.is_cancelled() && proving.load(Ordering::Relaxed) => (
            Stage::Auth,
            proof::bad("no confirmation within the deadline"),
        ),
        failed => failed,
    });
    let res = match res {
        Ok((_, mut conn)) if !ticket.reads_id() => {
            let mine = inner.engine.driver.input(|m, _| m.assign_id(&mut ticket));
            conn.set_id(mine);
            Ok((mine, conn))
        }
        Ok(pair) => Ok(pair),
        Err((stage, e)) => {
            debug!(serial, ?stage, error = %e, "stream dial failed");
            inner.last.set(e);
            Err(stage)
        }
    };
    inner.engine.driver.dialed(ticket, res);
}

/// The client end of the HTTP/2 pool: the nph2 wire. Cheap to clone; the pool closes
/// when the last clone is dropped or [`close`](Self::close) is called.
#[derive(Clone)]
pub struct H2ClientPool {
    owner: Arc<Owner<Inner>>,
}

impl std::fmt::Debug for H2ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2ClientPool")
            .field("uri", &self.inner().uri)
            .field("status", &self.status())
            .finish()
    }
}

impl H2ClientPool {
    /// A builder with the defaults; name the server with
    /// [`address`](H2ClientPoolBuilder::address).
    pub fn builder() -> H2ClientPoolBuilder {
        H2ClientPoolBuilder {
            addr: None,
            config: Ok(ClientConfig::default()),
            tls: ClientTls::Off,
            host: None,
            socket: SocketOptions::default(),
            key: None,
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.0
    }

    /// The stream with `id` (Go: `OutgoingGet`).
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`], [`GetError::NotFound`], [`GetError::Closed`].
    pub async fn get(&self, id: ConnId, timeout: Duration) -> Result<H2Conn, GetError> {
        let got = self.inner().engine.get(Want::Id(id), timeout).await;
        got.map(|(_, c)| c)
    }

    /// Any live idle stream, oldest first.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_any(&self, timeout: Duration) -> Result<(ConnId, H2Conn), GetError> {
        self.inner().engine.get(Want::Any, timeout).await
    }

    /// Idle streams ready to hand out.
    pub fn idle(&self) -> usize {
        self.status().idle
    }

    /// In-band mode (`IdleWatch::Starts` in the config): the next stream the server
    /// started (`start_with` on the server pool), its start header
    /// ([`pool_core::START`]) read and checked; the session's bytes follow on it. No
    /// id travels over a control channel. Not part of the Go wire.
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`] when nothing was started in time, [`GetError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// One still waiting in the pool is never lost; one whose header is being read
    /// when the future is dropped is closed.
    pub async fn accept_timeout(&self, timeout: Duration) -> Result<H2Conn, GetError> {
        crate::engine::accept(self.inner(), timeout).await
    }

    /// Closes every idle stream; how many.
    pub fn flush(&self) -> usize {
        self.inner().engine.driver.flush()
    }

    /// Closes the pool and waits for its tasks to end. Streams handed out live on: the
    /// connection closes after the last of them.
    pub async fn close(&self) {
        self.inner().engine.close().await;
        drop(self.inner().link.lock().await.take());
    }

    /// The status snapshot.
    pub fn status(&self) -> Status {
        self.inner().engine.driver.read(|m| m.status())
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.inner().engine.driver.read(|m| m.counters())
    }

    /// Why the last dial failed, if one did.
    pub fn last_failure(&self) -> Option<HandshakeError> {
        self.inner().last.get()
    }
}
