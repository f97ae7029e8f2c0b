//! One connection type for plain and TLS pooled streams.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use pool_core::ConnId;
use pool_net::Liveness;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::Tls(s) => s.get_ref().0,
        }
    }
}

/// A pooled connection: plain TCP or TLS, with its id and its peer's address.
///
/// It implements `AsyncRead + AsyncWrite`; bytes the peer sent while it sat idle are
/// all still there (the pool's health check only peeks).
pub struct PoolConn {
    pub(crate) id: ConnId,
    pub(crate) stream: Stream,
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

    /// Whether the stream runs TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The TCP stream underneath, for socket options or addresses.
    pub fn tcp(&self) -> &TcpStream {
        self.stream.tcp()
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
        let tcp_state = pool_net::probe(self.stream.tcp());
        match (&mut self.stream, tcp_state) {
            (Stream::Tls(tls), Liveness::Pending) => match tls.as_mut() {
                TlsStream::Client(s) => {
                    let (tcp, conn) = s.get_mut();
                    tls_liveness(tcp, conn)
                }
                TlsStream::Server(s) => {
                    let (tcp, conn) = s.get_mut();
                    tls_liveness(tcp, conn)
                }
            },
            (_, state) => state,
        }
    }
}

/// A non-blocking `io::Read` over tokio's socket, for rustls's `read_tls`.
struct TryRead<'a>(&'a TcpStream);

impl io::Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

/// Feeds the records already queued on the socket to rustls (a bounded number of
/// reads) and reports what they said.
fn tls_liveness<D>(tcp: &TcpStream, conn: &mut rustls::ConnectionCommon<D>) -> Liveness {
    for _ in 0..8 {
        match conn.read_tls(&mut TryRead(tcp)) {
            Ok(0) => {
                // End of stream right behind the records: closed unless they held payload.
                return match conn.process_new_packets() {
                    Ok(st) if st.plaintext_bytes_to_read() > 0 => Liveness::Pending,
                    Ok(_) => Liveness::Closed,
                    Err(_) => Liveness::Dead(io::ErrorKind::InvalidData),
                };
            }
            Ok(_) => match conn.process_new_packets() {
                Err(_) => return Liveness::Dead(io::ErrorKind::InvalidData),
                Ok(st) if st.plaintext_bytes_to_read() > 0 => return Liveness::Pending,
                Ok(st) if st.peer_has_closed() => return Liveness::Closed,
                Ok(_) => {}
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Liveness::Idle,
            // rustls refuses more input while its buffers are full: payload is waiting.
            Err(e) if e.kind() == io::ErrorKind::Other => return Liveness::Pending,
            Err(e) => return Liveness::Dead(e.kind()),
        }
    }
    Liveness::Pending
}

impl AsyncRead for PoolConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PoolConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}
