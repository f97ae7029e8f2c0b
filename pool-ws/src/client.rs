//! The client pool: dials `ws(s)://HOST:PORT/PATH`, reads the 4-byte id from the first
//! binary message, and keeps each connection idle under it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pool_core::{ClientConfig, ClientMachine, ConfigError, ConnId, Counters, DialTicket};
use pool_core::{IntoConfig, SeededRandom, Stage};
use pool_core::{Status, Want};
use pool_net::SocketOptions;
use pool_tls::{ClientTls, Roots, TunnelKey};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::engine::{drive, now, step, Engine, Owner, Side};
use crate::error::{BuildError, GetError, HandshakeError};
use crate::proof;
use crate::stream::{ws_config, Io, WsConn};
use crate::LastFailure;

/// Builder of a [`WsClientPool`].
#[must_use]
#[derive(Debug)]
pub struct WsClientPoolBuilder {
    addr: Option<SocketAddr>,
    config: Result<ClientConfig, ConfigError>,
    tls: Option<ClientTls>,
    host: Option<String>,
    path: String,
    socket: SocketOptions,
    key: Option<TunnelKey>,
}

impl WsClientPoolBuilder {
    /// The server to dial. Required.
    pub fn address(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }
    /// The machine's settings: capacity, intervals, parallelism, deadlines, sweep: a
    /// [`ClientConfig`] or its builder, whose errors `build` reports. The id form is
    /// the wire's (4 raw bytes). In single mode the id message is read and the
    /// machine's own id kept. Default `ClientConfig::default()`.
    pub fn config(mut self, config: impl IntoConfig<ClientConfig>) -> Self {
        self.config = config.into_config();
        self
    }
    /// TLS, as every pool of the workspace takes it (the Go pool's code):
    /// [`ClientTls::Off`] dials `ws://`, any other `wss://`. Not set, a pool dials
    /// `ws://`, or `wss://` verified against the web roots when the port is 443, as the
    /// Go pool does.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }
    /// The host name of the URL: the `Host` header and, over TLS, the server name
    /// unless the [`ClientTls`] names one. Default the server's IP address.
    pub fn host(mut self, name: impl Into<String>) -> Self {
        self.host = Some(name.into());
        self
    }
    /// The URL path. Default `/`.
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.into();
        self
    }
    /// Socket options of every dialed connection. Default `SocketOptions::default()`.
    pub fn socket_options(mut self, o: SocketOptions) -> Self {
        self.socket = o;
        self
    }
    /// Proves this key on every connection right after the id, before it is pooled, in
    /// a mutual challenge-response over fresh nonces bound to the TLS session (unbound
    /// on plain `ws://`, as the TCP pools' mode 0); a connection whose server fails its
    /// side is dropped and counted in `auth_failures`. Not part of the Go wire: set it
    /// on both ends or on neither. Default none.
    pub fn tunnel_key(mut self, key: TunnelKey) -> Self {
        self.key = Some(key);
        self
    }

    /// Starts the pool: its timer task dials as the machine decides. Call inside a
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// [`BuildError`] names what is wrong.
    pub fn build(self) -> Result<WsClientPool, BuildError> {
        let rt = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        crate::check_path(&self.path)?;
        let addr = self
            .addr
            .ok_or(BuildError::Missing("the server's address (`address`)"))?;
        let config = self.config?;
        let tls = self.tls.unwrap_or(match addr.port() {
            // Code 0 on port 443 is `wss://`, verified, as the Go pool dials it.
            443 => ClientTls::Verified {
                roots: Roots::Web,
                name: None,
            },
            _ => ClientTls::Off,
        });
        let host = self.host.unwrap_or_else(|| addr.ip().to_string());
        let tls = match tls.build()? {
            Some((c, Some(name))) => Some((c, Some(name))),
            Some((c, None)) => Some((c, Some(pool_tls::server_name(&host)?))),
            None => None,
        };
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let authority = match addr {
            SocketAddr::V6(_) if host.parse::<std::net::Ipv6Addr>().is_ok() => {
                format!("[{host}]:{}", addr.port())
            }
            _ => format!("{host}:{}", addr.port()),
        };
        let url = format!("{scheme}://{authority}{}", self.path);
        let seed = pool_tls::secure_seed().map_err(|_| BuildError::Random)?;
        let in_band = config.in_band();
        let machine = ClientMachine::new(config, SeededRandom::from_seed(seed), now());
        let inner = Arc::new_cyclic(|me| Inner {
            engine: Engine::new(machine, me.clone(), rt),
            addr,
            url,
            tls: tls.map(|(c, name)| (tokio_rustls::TlsConnector::from(c), name)),
            socket: self.socket,
            last: LastFailure::default(),
            key: self.key,
        });
        if in_band {
            crate::engine::watch_starts(&inner);
        }
        inner.engine.spawn(drive(inner.clone()));
        Ok(WsClientPool {
            owner: Arc::new(Owner(inner)),
        })
    }
}

type Connector = (tokio_rustls::TlsConnector, Option<ServerName<'static>>);

pub(crate) struct Inner {
    engine: Engine<Self>,
    addr: SocketAddr,
    url: String,
    tls: Option<Connector>,
    socket: SocketOptions,
    last: LastFailure,
    key: Option<TunnelKey>,
}

type Failed = (Stage, HandshakeError);

impl Side for Inner {
    type C = WsConn;
    type M = ClientMachine<WsConn>;
    fn engine(&self) -> &Engine<Self> {
        &self.engine
    }
    fn dial(self: Arc<Self>, ticket: DialTicket) {
        let serial = ticket.serial();
        let me = self.clone();
        self.engine
            .spawn_step(serial, move |token| dial(me, ticket, token));
    }
}

/// Maps the server's answer to the upgrade.
fn refused(e: tungstenite::Error) -> Failed {
    match e {
        tungstenite::Error::Http(resp) => match resp.status().as_u16() {
            503 => (Stage::Connect, HandshakeError::Full),
            403 => (Stage::Connect, HandshakeError::Forbidden),
            code => (Stage::Protocol, HandshakeError::Status(code)),
        },
        tungstenite::Error::Io(e) => (Stage::Connect, HandshakeError::Io(e.to_string())),
        e => (Stage::Protocol, HandshakeError::Ws(e.to_string())),
    }
}

impl Inner {
    /// Connect, TLS, upgrade; then the id message.
    async fn establish(&self, ticket: &DialTicket) -> Result<(ConnId, WsConn), Failed> {
        let io_err = |stage| move |e: std::io::Error| (stage, HandshakeError::Io(e.to_string()));
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(io_err(Stage::Connect))?;
        let _ = self.socket.apply_tcp(&tcp);
        let io = match &self.tls {
            None => Io::Plain(tcp),
            Some((connector, name)) => {
                let name = name.clone().unwrap_or_else(|| self.addr.ip().into());
                let tls = connector.connect(name, tcp).await;
                let tls = tls.map_err(|e| (Stage::Tls, HandshakeError::Tls(e.to_string())))?;
                Io::TlsClient(Box::new(tls))
            }
        };
        let up =
            tokio_tungstenite::client_async_with_config(self.url.as_str(), io, Some(ws_config()));
        let (ws, _response) = up.await.map_err(refused)?;
        let serial = ticket.serial();
        self.engine
            .driver
            .input(|m, now| m.handle_handshake_done(serial, now));
        let mut conn = WsConn::new(ConnId::from_random([0; 4]), ws);
        let mut raw = [0u8; 4];
        conn.read_exact(&mut raw)
            .await
            .map_err(|e| (Stage::Id, HandshakeError::BadId(e.to_string())))?;
        let id = ConnId::from_random(raw);
        conn.set_id(id);
        Ok((id, conn))
    }

    /// [`establish`](Self::establish), then the proof when keyed: each until it ends
    /// or the core aborts the dial.
    async fn handshake(
        &self,
        ticket: &DialTicket,
        token: &CancellationToken,
    ) -> Result<(ConnId, WsConn), Failed> {
        let aborted = (Stage::Connect, HandshakeError::Io("deadline passed".into()));
        let (id, mut conn) = step(token, aborted, self.establish(ticket)).await?;
        if let Some(key) = &self.key {
            let raw = pool_core::IdForm::Raw4.encode(&id);
            let auth = async {
                let binding = proof::ws_binding(conn.io())?;
                let scope = proof::ws_scope(raw.as_ref());
                proof::client(&mut conn, key, &scope, &binding).await
            };
            let aborted = proof::bad("no confirmation within the deadline");
            step(token, aborted, auth)
                .await
                .map_err(|e| (Stage::Auth, e))?;
        }
        Ok((id, conn))
    }
}

async fn dial(inner: Arc<Inner>, mut ticket: DialTicket, token: CancellationToken) {
    let serial = ticket.serial();
    let res = inner.handshake(&ticket, &token).await;
    let res = match res {
        Ok((id, mut conn)) if !ticket.reads_id() => {
            // Single mode: the machine's id, not the server's.
            let mine = inner.engine.driver.input(|m, _| m.assign_id(&mut ticket));
            conn.set_id(mine);
            let _ = id;
            Ok((mine, conn))
        }
        Ok(pair) => Ok(pair),
        Err((stage, e)) => {
            debug!(serial, ?stage, error = %e, "dial failed");
            inner.last.set(e);
            Err(stage)
        }
    };
    inner.engine.driver.dialed(ticket, res);
}

/// The client end of the WebSocket pool: the npws wire. Cheap to clone; the pool
/// closes when the last clone is dropped or [`close`](Self::close) is called.
#[derive(Clone)]
pub struct WsClientPool {
    owner: Arc<Owner<Inner>>,
}

impl std::fmt::Debug for WsClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClientPool")
            .field("url", &self.inner().url)
            .field("status", &self.status())
            .finish()
    }
}

impl WsClientPool {
    /// A builder with the defaults; name the server with
    /// [`address`](WsClientPoolBuilder::address).
    pub fn builder() -> WsClientPoolBuilder {
        WsClientPoolBuilder {
            addr: None,
            config: Ok(ClientConfig::default()),
            tls: None,
            host: None,
            path: "/".into(),
            socket: SocketOptions::default(),
            key: None,
        }
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.0
    }

    /// The URL the pool dials.
    pub fn url(&self) -> &str {
        &self.inner().url
    }

    /// The connection with `id`, waiting up to `timeout` while a dial in flight may
    /// still bring it (Go: `OutgoingGet`).
    ///
    /// # Errors
    ///
    /// [`GetError::Timeout`], [`GetError::NotFound`], [`GetError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses no connection.
    pub async fn get(&self, id: ConnId, timeout: Duration) -> Result<WsConn, GetError> {
        let got = self.inner().engine.get(Want::Id(id), timeout).await;
        got.map(|(_, c)| c)
    }

    /// Any live idle connection, oldest first.
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get).
    pub async fn get_any(&self, timeout: Duration) -> Result<(ConnId, WsConn), GetError> {
        self.inner().engine.get(Want::Any, timeout).await
    }

    /// Idle connections ready to hand out (Go: `Active`).
    pub fn idle(&self) -> usize {
        self.status().idle
    }

    /// In-band mode (`IdleWatch::Starts` in the config): the next connection the server
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
    pub async fn accept_timeout(&self, timeout: Duration) -> Result<WsConn, GetError> {
        crate::engine::accept(self.inner(), timeout).await
    }

    /// Closes every idle connection (Go: `Flush`); how many.
    pub fn flush(&self) -> usize {
        self.inner().engine.driver.flush()
    }

    /// Closes the pool and waits for its tasks to end.
    pub async fn close(&self) {
        self.inner().engine.close().await;
    }

    /// The status snapshot.
    pub fn status(&self) -> Status {
        self.inner().engine.driver.read(|m| m.status())
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.inner().engine.driver.read(|m| m.counters())
    }

    /// Why the last dial failed, if one did: [`HandshakeError::Full`] and
    /// [`HandshakeError::Forbidden`] name the server's refusals.
    pub fn last_failure(&self) -> Option<HandshakeError> {
        self.inner().last.get()
    }
}
