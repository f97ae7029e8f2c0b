//! The pool seam: the tunnel's sessions, control and relay over any of the pools
//! (`--transport`), through one enum of pools per side and one of pooled streams.
//!
//! Every transport gives the same three things: a server pool that starts a session
//! in band on an idle pooled stream (`ServerPools::start_with`), a client pool that
//! accepts it (`ClientPools::accept_timeout`), and a [`Pooled`] stream that is a byte
//! stream and can be cut with a reset the peer reads as an error, never as a clean
//! end: TCP `SO_LINGER` 0, QUIC `RESET_STREAM` (and `STOP_SENDING`), an RST under a
//! WebSocket, HTTP/2 `RST_STREAM`. A [`Pooled`] is
//! armed to be cut from the moment the tunnel has it; [`Pooled::disarm`] before a
//! clean end.
//!
//! Every transport's pool proves the tunnel key: TCP on each pooled connection, QUIC,
//! WebSocket and HTTP/2 once per connection, bound to its TLS session by the exporter.
//!
//! TCP keeps its own relay: a plain pooled connection is spliced as before
//! ([`Pooled::into_tcp`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pool_core::ConnId;
use pool_tokio::{PoolConn, PoolStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::relay::{graceful, reset};

/// Which pool the tunnel runs over: the same on both sides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP connections (TLS in modes 1 and 2), one per pooled connection: the default.
    #[default]
    Tcp,
    /// QUIC streams (np-quic, always TLS 1.3), up to 128 per QUIC connection.
    Quic,
    /// WebSocket connections (npws: `ws://`, `wss://` in modes 1 and 2), one TCP
    /// connection each, through HTTP proxies.
    Ws,
    /// HTTP/2 streams (nph2, always TLS), over one TLS connection.
    H2,
}

impl Transport {
    /// Its name, as `--transport` and `transport =` take it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Quic => "quic",
            Self::Ws => "ws",
            Self::H2 => "h2",
        }
    }

    /// Its byte in the control handshake.
    pub(crate) fn wire(self) -> u8 {
        match self {
            Self::Tcp => b't',
            Self::Quic => b'q',
            Self::Ws => b'w',
            Self::H2 => b'h',
        }
    }

    /// The transport of a control handshake's byte, if it names one.
    pub(crate) fn from_wire(b: u8) -> Option<Self> {
        match b {
            b't' => Some(Self::Tcp),
            b'q' => Some(Self::Quic),
            b'w' => Some(Self::Ws),
            b'h' => Some(Self::H2),
            _ => None,
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "quic" => Ok(Self::Quic),
            "ws" => Ok(Self::Ws),
            "h2" => Ok(Self::H2),
            _ => Err(format!("`{s}`: not a transport (tcp, quic, ws, h2)")),
        }
    }
}

/// The application error code of a QUIC stream the tunnel cuts short.
pub const QUIC_CUT: u32 = 0x74;

/// A pooled stream of any transport, armed to be cut (reset) when dropped until
/// [`disarm`](Self::disarm)ed.
#[derive(Debug)]
pub enum Pooled {
    /// A TCP (or TLS) pooled connection; armed with `SO_LINGER` 0.
    Tcp(PoolConn),
    /// A QUIC stream.
    Quic(Armed<pool_quic::QuicStream>),
    /// A WebSocket connection (boxed: it is large).
    Ws(Box<Armed<pool_ws::WsConn>>),
    /// An HTTP/2 stream.
    H2(Armed<pool_ws::h2::H2Conn>),
}

/// A pooled stream as the relay takes it.
#[derive(Debug)]
pub enum ForRelay {
    /// A TCP (or TLS) connection: relayed as before (spliced when plain).
    Tcp(PoolStream),
    /// Any other: relayed as a byte stream.
    Stream(Pooled),
}

/// A stream that is cut when dropped while `armed`.
#[derive(Debug)]
pub struct Armed<S: Cut> {
    stream: S,
    armed: bool,
}

impl<S: Cut> Armed<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            armed: true,
        }
    }
}

impl<S: Cut> Drop for Armed<S> {
    fn drop(&mut self) {
        if self.armed {
            self.stream.cut();
        }
    }
}

/// A stream that can be cut with a reset its peer reads as an error.
pub trait Cut {
    /// Cuts it.
    fn cut(&mut self);
}

/// `SO_LINGER` 0 on the connection under the WebSocket: dropped, it sends an RST, and
/// the peer's read fails (no close frame passes for a clean end).
impl Cut for pool_ws::WsConn {
    fn cut(&mut self) {
        reset(self.io().tcp());
    }
}

/// `RST_STREAM` (`CANCEL`).
impl Cut for pool_ws::h2::H2Conn {
    fn cut(&mut self) {
        self.reset();
    }
}

impl Cut for pool_quic::QuicStream {
    fn cut(&mut self) {
        self.reset(pool_quic::quinn::VarInt::from_u32(QUIC_CUT));
    }
}

impl Pooled {
    fn tcp(conn: PoolConn) -> Self {
        reset(conn.stream().tcp());
        Self::Tcp(conn)
    }

    /// A WebSocket connection, whose `shutdown` half-closes (an empty message) as the
    /// relay needs.
    fn ws(mut conn: pool_ws::WsConn) -> Self {
        conn.set_half_close(true);
        Self::Ws(Box::new(Armed::new(conn)))
    }

    /// The id both pools know it by.
    pub fn id(&self) -> ConnId {
        match self {
            Self::Tcp(c) => c.id(),
            Self::Quic(s) => s.stream.id(),
            Self::Ws(s) => s.stream.id(),
            Self::H2(s) => s.stream.id(),
        }
    }

    /// Closing it is an orderly end again (after a relay that ended cleanly, or
    /// before a last answer that must not be dropped with the stream).
    pub fn disarm(&mut self) {
        match self {
            Self::Tcp(c) => graceful(c.stream().tcp()),
            Self::Quic(s) => s.armed = false,
            Self::Ws(s) => s.armed = false,
            Self::H2(s) => s.armed = false,
        }
    }

    /// Cuts it now: the peer's reads fail with a reset.
    pub fn cut(mut self) {
        match &mut self {
            Self::Tcp(c) => reset(c.stream().tcp()),
            Self::Quic(s) => s.armed = true,
            Self::Ws(s) => s.armed = true,
            Self::H2(s) => s.armed = true,
        }
        drop(self);
    }

    /// The TCP connection, for the splicing relay; anything else as it is.
    pub fn into_tcp(self) -> ForRelay {
        match self {
            Self::Tcp(c) => ForRelay::Tcp(c.into_inner()),
            other => ForRelay::Stream(other),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Pooled::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            Pooled::Quic(a) => {
                let $s = Pin::new(&mut a.stream);
                $e
            }
            Pooled::Ws(a) => {
                let $s = Pin::new(&mut a.stream);
                $e
            }
            Pooled::H2(a) => {
                let $s = Pin::new(&mut a.stream);
                $e
            }
        }
    };
}

impl AsyncRead for Pooled {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Pooled {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, b))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}

/// The server side's pool.
#[derive(Debug)]
pub enum ServerPools {
    /// TCP / TLS.
    Tcp(pool_tokio::ServerPool),
    /// QUIC.
    Quic(pool_quic::ServerPool),
    /// WebSocket.
    Ws(pool_ws::WsServerPool),
    /// HTTP/2.
    H2(pool_ws::h2::H2ServerPool),
}

impl ServerPools {
    /// The transport.
    pub fn transport(&self) -> Transport {
        match self {
            Self::Tcp(_) => Transport::Tcp,
            Self::Quic(_) => Transport::Quic,
            Self::Ws(_) => Transport::Ws,
            Self::H2(_) => Transport::H2,
        }
    }

    /// The TCP pool, when the tunnel runs over TCP.
    pub fn tcp(&self) -> Option<&pool_tokio::ServerPool> {
        match self {
            Self::Tcp(p) => Some(p),
            _ => None,
        }
    }

    /// The QUIC pool, when the tunnel runs over QUIC.
    pub fn quic(&self) -> Option<&pool_quic::ServerPool> {
        match self {
            Self::Quic(p) => Some(p),
            _ => None,
        }
    }

    /// Connections refused because their tunnel-key proof failed (per TCP connection;
    /// per QUIC, WebSocket or HTTP/2 connection).
    pub fn failed_proofs(&self) -> u64 {
        match self {
            Self::Tcp(p) => p.stats().counters.auth_failures,
            Self::Quic(p) => p.quic_counters().failed_proofs,
            Self::Ws(p) => p.counters().auth_failures,
            Self::H2(p) => p.failed_proofs(),
        }
    }

    /// Where clients dial (a UDP port for QUIC).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        match self {
            Self::Tcp(p) => p.local_addr(),
            Self::Quic(p) => p.local_addr(),
            Self::Ws(p) => p.local_addr(),
            Self::H2(p) => p.local_addr(),
        }
    }

    /// Starts a session in band: the start header and `first` on an idle pooled
    /// stream, armed to be cut.
    pub(crate) async fn start_with(&self, first: &[u8], within: Duration) -> Option<Pooled> {
        match self {
            Self::Tcp(p) => p
                .start_with(first, within)
                .await
                .ok()
                .map(|(_, c)| Pooled::tcp(c)),
            Self::Quic(p) => p
                .start_with(first, within)
                .await
                .ok()
                .map(|(_, s)| Pooled::Quic(Armed::new(s))),
            Self::Ws(p) => p
                .start_with(first, within)
                .await
                .ok()
                .map(|(_, s)| Pooled::ws(s)),
            Self::H2(p) => p
                .start_with(first, within)
                .await
                .ok()
                .map(|(_, s)| Pooled::H2(Armed::new(s))),
        }
    }

    /// Idle pooled streams.
    pub fn idle(&self) -> usize {
        match self {
            Self::Tcp(p) => p.stats().status.idle,
            Self::Quic(p) => p.status().idle,
            Self::Ws(p) => p.status().idle,
            Self::H2(p) => p.status().idle,
        }
    }

    /// Idle pooled streams (Go: `Active`).
    pub fn active(&self) -> usize {
        match self {
            Self::Tcp(p) => p.active(),
            Self::Quic(p) => p.active(),
            Self::Ws(p) => p.status().idle,
            Self::H2(p) => p.status().idle,
        }
    }

    /// Closes every idle pooled stream.
    pub fn flush(&self) {
        match self {
            Self::Tcp(p) => p.flush(),
            Self::Quic(p) => {
                p.flush();
            }
            Self::Ws(p) => {
                p.flush();
            }
            Self::H2(p) => {
                p.flush();
            }
        }
    }

    /// Waits until `n` streams are idle, or `within` passes; whether they are.
    pub async fn wait_idle(&self, n: usize, within: Duration) -> bool {
        match self {
            Self::Tcp(p) => p.wait_idle(n, within).await,
            Self::Quic(p) => p.wait_idle(n, within).await,
            Self::Ws(p) => wait_for(|| p.status().idle >= n, within).await,
            Self::H2(p) => wait_for(|| p.status().idle >= n, within).await,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Self::Tcp(p) => p.close().await,
            Self::Quic(p) => p.close().await,
            Self::Ws(p) => p.close().await,
            Self::H2(p) => p.close().await,
        }
    }
}

/// Why an accept gave nothing.
pub(crate) enum AcceptError {
    /// The pool is closed.
    Closed,
    /// Nothing started in time, or no server yet.
    Nothing,
}

/// The client side's pool.
#[derive(Debug)]
pub enum ClientPools {
    /// TCP / TLS.
    Tcp(pool_tokio::ClientPool),
    /// QUIC.
    Quic(pool_quic::ClientPool),
    /// WebSocket.
    Ws(pool_ws::WsClientPool),
    /// HTTP/2.
    H2(pool_ws::h2::H2ClientPool),
}

impl ClientPools {
    /// The transport.
    pub fn transport(&self) -> Transport {
        match self {
            Self::Tcp(_) => Transport::Tcp,
            Self::Quic(_) => Transport::Quic,
            Self::Ws(_) => Transport::Ws,
            Self::H2(_) => Transport::H2,
        }
    }

    /// The TCP pool, when the tunnel runs over TCP.
    pub fn tcp(&self) -> Option<&pool_tokio::ClientPool> {
        match self {
            Self::Tcp(p) => Some(p),
            _ => None,
        }
    }

    /// The QUIC pool, when the tunnel runs over QUIC.
    pub fn quic(&self) -> Option<&pool_quic::ClientPool> {
        match self {
            Self::Quic(p) => Some(p),
            _ => None,
        }
    }

    /// The next stream the server started, armed to be cut.
    pub(crate) async fn accept_timeout(&self, within: Duration) -> Result<Pooled, AcceptError> {
        match self {
            Self::Tcp(p) => match p.accept_timeout(within).await {
                Ok(c) => Ok(Pooled::tcp(c)),
                Err(pool_tokio::GetError::Closed) => Err(AcceptError::Closed),
                Err(_) => Err(AcceptError::Nothing),
            },
            Self::Quic(p) => match p.accept_timeout(within).await {
                Ok(s) => Ok(Pooled::Quic(Armed::new(s))),
                Err(pool_quic::GetError::Closed) => Err(AcceptError::Closed),
                Err(_) => Err(AcceptError::Nothing),
            },
            Self::Ws(p) => match p.accept_timeout(within).await {
                Ok(s) => Ok(Pooled::ws(s)),
                Err(pool_ws::GetError::Closed) => Err(AcceptError::Closed),
                Err(_) => Err(AcceptError::Nothing),
            },
            Self::H2(p) => match p.accept_timeout(within).await {
                Ok(s) => Ok(Pooled::H2(Armed::new(s))),
                Err(pool_ws::GetError::Closed) => Err(AcceptError::Closed),
                Err(_) => Err(AcceptError::Nothing),
            },
        }
    }

    /// Idle pooled streams.
    pub fn idle(&self) -> usize {
        match self {
            Self::Tcp(p) => p.stats().status.idle,
            Self::Quic(p) => p.status().idle,
            Self::Ws(p) => p.status().idle,
            Self::H2(p) => p.status().idle,
        }
    }

    /// Idle pooled streams (Go: `Active`).
    pub fn active(&self) -> usize {
        match self {
            Self::Tcp(p) => p.active(),
            Self::Quic(p) => p.active(),
            Self::Ws(p) => p.status().idle,
            Self::H2(p) => p.status().idle,
        }
    }

    /// The pool's capacity now.
    pub fn capacity(&self) -> usize {
        match self {
            Self::Tcp(p) => p.capacity(),
            Self::Quic(p) => p.capacity(),
            Self::Ws(p) => p.status().capacity,
            Self::H2(p) => p.status().capacity,
        }
    }

    /// Waits until `n` streams are idle, or `within` passes; whether they are.
    pub async fn wait_idle(&self, n: usize, within: Duration) -> bool {
        match self {
            Self::Tcp(p) => p.wait_idle(n, within).await,
            Self::Quic(p) => p.wait_idle(n, within).await,
            Self::Ws(p) => wait_for(|| p.status().idle >= n, within).await,
            Self::H2(p) => wait_for(|| p.status().idle >= n, within).await,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        match self {
            Self::Tcp(p) => p.close().await,
            Self::Quic(p) => p.close().await,
            Self::Ws(p) => p.close().await,
            Self::H2(p) => p.close().await,
        }
    }
}

/// Polls `done` until it holds or `within` passes (pools with no wait of their own).
async fn wait_for(done: impl Fn() -> bool, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    while !done() {
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}
