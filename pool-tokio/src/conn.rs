//! One connection type for plain and TLS pooled streams.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use pool_core::ConnId;
use pool_core::Liveness;
use rustls::pki_types::CertificateDer;
use rustls::{ProtocolVersion, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::TlsConn;

/// The stream under a [`PoolConn`]: plain TCP, or TLS over TCP.
///
/// [`PoolConn::into_inner`] hands it out for what needs the concrete type: a plain
/// stream's `into_split` (owned halves without a lock), `splice` or other zero-copy
/// relays on its file descriptor, or a TLS one's [`TlsConn`]. It implements
/// `AsyncRead + AsyncWrite` itself, so code that does not care which it is can use it
/// (or [`tokio::io::split`]) as it is.
///
/// The TLS variant is boxed: a TLS session takes kilobytes, and the pool keeps its
/// idle connections in this type, so the box keeps a plain pool as small as a TCP
/// stream plus a tag.
///
/// Two variants, on purpose exhaustive: matching on them is how one reaches the
/// `TcpStream`.
pub enum PoolStream {
    /// Plain TCP (TLS mode 0, and the Go package's single mode).
    Plain(TcpStream),
    /// TLS over TCP, client or server side (TLS modes 1 and 2).
    Tls(Box<TlsConn>),
}

impl std::fmt::Debug for PoolStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain(s) => f.debug_tuple("Plain").field(s).finish(),
            Self::Tls(s) => f.debug_tuple("Tls").field(s.as_ref()).finish(),
        }
    }
}

impl PoolStream {
    /// The TCP stream underneath, for socket options or addresses.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.tcp(),
        }
    }

    /// Whether the stream runs TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// The TLS session's shared state, `None` on a plain stream.
    fn tls_state(&self) -> Option<&rustls::CommonState> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(s) => Some(s.common_state()),
        }
    }

    /// The TLS version negotiated, `None` on a plain stream.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.tls_state()?.protocol_version()
    }

    /// The TLS cipher suite negotiated, `None` on a plain stream.
    pub fn cipher_suite(&self) -> Option<SupportedCipherSuite> {
        self.tls_state()?.negotiated_cipher_suite()
    }

    /// Whether the TLS handshake was full or resumed a session from an earlier one
    /// (a client pool keeps the server's session tickets and its next dials resume:
    /// no certificate is sent, signed or checked again). `None` on a plain stream.
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.tls_state()?.handshake_kind()
    }

    /// The certificate chain the peer presented, leaf first: the server's on a client
    /// pool's connection; on a server pool's, the client's if client authentication was
    /// configured (`tls_config`), else `None`. `None` on a plain stream.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls_state()?.peer_certificates()
    }
}

/// A pooled connection: plain TCP or TLS, with its id.
///
/// It implements `AsyncRead + AsyncWrite`; bytes the peer sent while it sat idle are
/// all still there (the pool's health check only peeks).
///
/// # Used once, closed on drop
///
/// A `PoolConn` is yours once a get returns it: the pool no longer tracks it, and it
/// never goes back to the pool (unlike a bb8 or deadpool connection, whose guard
/// returns it on drop). Dropping it closes the socket. The peer's end is handed out
/// the same way on the other side, so a tunnel's stream is used for one session and
/// the pools dial fresh ones.
///
/// # Closing TLS cleanly
///
/// Dropping a TLS connection closes the socket without a TLS `close_notify`, which the
/// peer sees as a truncated stream (rustls reports `UnexpectedEof`). To end a session
/// cleanly, call `shutdown().await` ([`tokio::io::AsyncWriteExt::shutdown`]): it
/// flushes, sends `close_notify`, and half-closes the TCP stream; then drop it. On a
/// plain stream `shutdown` sends a FIN, as usual.
///
/// # Taking it apart
///
/// [`into_inner`](Self::into_inner) and [`into_parts`](Self::into_parts) give the
/// [`PoolStream`] for `into_split`, `splice` or another relay that wants the concrete
/// stream.
///
/// # Size
///
/// The pool holds a `PoolConn` per idle connection, and a tunnel keeps thousands idle,
/// so it is kept to 40 bytes (a test asserts it): the id and the stream, no cached
/// address (the socket answers [`peer_addr`](Self::peer_addr) and
/// [`local_addr`](Self::local_addr)).
pub struct PoolConn {
    pub(crate) id: ConnId,
    pub(crate) stream: PoolStream,
}

impl std::fmt::Debug for PoolConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConn")
            .field("id", &self.id)
            .field("peer", &self.peer_addr().ok())
            .field("tls", &self.is_tls())
            .finish()
    }
}

impl PoolConn {
    /// The connection's id, the same on both ends.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The address of the other end, asked of the socket (not stored: an idle pool
    /// holds thousands of connections, and every byte of each counts).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.tcp().peer_addr()
    }

    /// The address of this end, asked of the socket.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.tcp().local_addr()
    }

    /// Whether the stream runs TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// The TCP stream underneath, for socket options or addresses.
    pub fn tcp(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// The stream, by reference.
    pub fn stream(&self) -> &PoolStream {
        &self.stream
    }

    /// The TLS version negotiated (1.2 or 1.3), `None` on a plain stream.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.stream.protocol_version()
    }

    /// The TLS cipher suite negotiated, `None` on a plain stream.
    pub fn cipher_suite(&self) -> Option<SupportedCipherSuite> {
        self.stream.cipher_suite()
    }

    /// Full or resumed TLS handshake, `None` on a plain stream (see
    /// [`PoolStream::handshake_kind`]).
    pub fn handshake_kind(&self) -> Option<rustls::HandshakeKind> {
        self.stream.handshake_kind()
    }

    /// The certificate chain the peer presented, leaf first; `None` on a plain stream
    /// (see [`PoolStream::peer_certificates`]).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.stream.peer_certificates()
    }

    /// The id and the stream, for a relay that wants the concrete stream.
    pub fn into_parts(self) -> (ConnId, PoolStream) {
        (self.id, self.stream)
    }

    /// The stream, for `into_split`, `splice` or other zero-copy relays:
    ///
    /// ```no_run
    /// # async fn f(conn: pool_tokio::PoolConn) {
    /// use pool_tokio::PoolStream;
    /// match conn.into_inner() {
    ///     PoolStream::Plain(tcp) => {
    ///         let (read, write) = tcp.into_split(); // owned halves, no lock
    /// #       drop((read, write));
    ///     }
    ///     PoolStream::Tls(tls) => {
    ///         let (read, write) = tokio::io::split(tls);
    /// #       drop((read, write));
    ///     }
    /// }
    /// # }
    /// ```
    pub fn into_inner(self) -> PoolStream {
        self.stream
    }

    /// Whether the connection is still usable, without losing a byte.
    ///
    /// A plain stream costs one non-blocking `MSG_PEEK`. On a TLS stream whose socket
    /// holds pending bytes, those bytes may be a record rather than payload: a
    /// peer's `close_notify` (what Go's `tls.Conn.Close` sends before its FIN) or a
    /// session ticket. So the records already queued are handed to rustls and
    /// processed; any payload they carry stays in rustls's plaintext buffer and is the
    /// first thing the next read returns. Nothing blocks and nothing is lost.
    pub fn liveness(&mut self) -> Liveness {
        if let PoolStream::Tls(tls) = &mut self.stream {
            if tls.has_unread() {
                return Liveness::Pending;
            }
        }
        let tcp_state = pool_net::probe(self.stream.tcp());
        match (&mut self.stream, tcp_state) {
            (PoolStream::Tls(tls), Liveness::Pending) => tls.queued_records(),
            (_, state) => state,
        }
    }

    /// Whether payload the TLS session already took off the socket waits for the next
    /// read (no peek at the socket can see it). Always false on a plain stream.
    pub(crate) fn has_unread(&mut self) -> bool {
        match &mut self.stream {
            PoolStream::Tls(tls) => tls.has_unread(),
            PoolStream::Plain(_) => false,
        }
    }
}

impl AsyncRead for PoolStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PoolStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

impl AsyncRead for PoolConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PoolConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool holds one `PoolConn` per idle connection: its size is the pool's
    /// memory per idle connection, beside the kernel's socket. 40 bytes: the id (8) and
    /// a tokio `TcpStream` (32), the enum's tag hidden in a niche and TLS boxed.
    #[test]
    fn pool_conn_stays_small() {
        // mio gives every socket a selector id in builds with debug assertions (8
        // bytes, `mio::IoSource`); the memory benchmark's release build has none.
        let mio_debug = if cfg!(debug_assertions) { 8 } else { 0 };
        assert!(
            size_of::<PoolConn>() <= 40 + mio_debug,
            "PoolConn grew to {} bytes",
            size_of::<PoolConn>()
        );
        // In every build: nothing beyond the id and the TCP stream.
        assert_eq!(
            size_of::<PoolConn>(),
            size_of::<ConnId>() + size_of::<TcpStream>()
        );
    }
}
