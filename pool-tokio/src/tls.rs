//! The TLS stream of a pooled connection.
//!
//! # Why not tokio-rustls
//!
//! A pool holds thousands of TLS connections idle. tokio-rustls drives rustls's
//! buffered connection, which keeps a 4 KiB receive buffer per connection for its whole
//! life: at 2,000 idle pairs, 16 MB of buffers for traffic that is not flowing. A
//! [`TlsConn`] drives rustls's unbuffered API through [`pool_tls::TlsSession`]
//! instead, whose buffers exist while bytes flow and are released when the pool puts
//! the connection back to sleep. The handshake and the records are rustls's own, under
//! the same configs.
//!
//! rustls 0.23's unbuffered connection cannot export keying material, which the
//! tunnel-key proof binds to; a pool with a tunnel key therefore keeps tokio-rustls's
//! stream for its TLS connections (they cost what they did before).
//!
//! # Flushing
//!
//! As with tokio-rustls, `poll_write` accepts bytes once they are encrypted, which may
//! be before the socket took them: call `flush` (or `shutdown`) to know they left.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pool_tls::{Progress, RecordState, TlsSession};
use rustls::pki_types::ServerName;
use rustls::CommonState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// A TLS stream over TCP, client or server side, as a pool holds it: an ordinary
/// `AsyncRead + AsyncWrite` whose idle memory is rustls's session state and no
/// buffers (see the [module docs](self)).
///
/// Closing: `shutdown().await` sends `close_notify` and half-closes the TCP stream;
/// dropping it without closes the socket without an alert.
pub struct TlsConn(Inner);

// The lean variant is the common one and stays inline: `PoolStream` boxes the whole
// `TlsConn` once, and a second box would cost an allocation per connection.
#[allow(clippy::large_enum_variant)]
enum Inner {
    /// rustls's unbuffered API, buffers released while idle.
    Lean { tcp: TcpStream, session: TlsSession },
    /// tokio-rustls (pools with a tunnel key: the proof needs the exporter).
    Buffered(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lean = matches!(self.0, Inner::Lean { .. });
        f.debug_struct("TlsConn")
            .field("tcp", self.tcp())
            .field("lean", &lean)
            .finish_non_exhaustive()
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    // The shape tokio-rustls gives, so that callers find the rustls error inside.
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsConn {
    /// Runs a client handshake on `tcp` for `name`. `lean`: through
    /// [`TlsSession`]; otherwise through tokio-rustls.
    pub(crate) async fn connect(
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        tcp: TcpStream,
        lean: bool,
    ) -> io::Result<Self> {
        if !lean {
            let s = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            return Ok(Self(Inner::Buffered(Box::new(TlsStream::Client(s)))));
        }
        let session = TlsSession::client(config, name).map_err(tls_error)?;
        Self::handshake(tcp, session).await
    }

    /// Runs a server handshake on `tcp`; `lean` as for [`connect`](Self::connect).
    pub(crate) async fn accept(
        config: Arc<rustls::ServerConfig>,
        tcp: TcpStream,
        lean: bool,
    ) -> io::Result<Self> {
        if !lean {
            let s = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
            return Ok(Self(Inner::Buffered(Box::new(TlsStream::Server(s)))));
        }
        let session = TlsSession::server(config).map_err(tls_error)?;
        Self::handshake(tcp, session).await
    }

    async fn handshake(mut tcp: TcpStream, mut session: TlsSession) -> io::Result<Self> {
        loop {
            let progress = session.process(&mut []);
            // Our flight, or the alert that says why the handshake failed.
            let out = session.pending_output().len();
            if out > 0 {
                let sent = tcp.write_all(session.pending_output()).await;
                session.output_sent(out);
                if progress.is_ok() {
                    sent?;
                }
            }
            match progress.map_err(tls_error)?.0 {
                Progress::Ready => break,
                Progress::Closed => return Err(io::ErrorKind::UnexpectedEof.into()),
                Progress::NeedInput => {
                    let n = tcp.read(session.read_space()).await?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tls handshake eof",
                        ));
                    }
                    session.received(n);
                }
            }
        }
        Ok(Self(Inner::Lean { tcp, session }))
    }

    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream {
        match &self.0 {
            Inner::Lean { tcp, .. } => tcp,
            Inner::Buffered(s) => s.get_ref().0,
        }
    }

    /// The session's negotiated state: version, cipher suite, peer certificates.
    pub fn common_state(&self) -> &CommonState {
        match &self.0 {
            Inner::Lean { session, .. } => session.common(),
            Inner::Buffered(s) => s.get_ref().1,
        }
    }

    /// Whether this is the client side of the session.
    pub fn is_client(&self) -> bool {
        match &self.0 {
            Inner::Lean { session, .. } => session.is_client(),
            Inner::Buffered(s) => matches!(s.as_ref(), TlsStream::Client(_)),
        }
    }

    /// Heap bytes held by the stream's I/O buffers now: zero on an idle pooled
    /// connection (the session state aside). `None` for tokio-rustls's stream, whose
    /// buffers are rustls's.
    pub fn buffer_capacity(&self) -> Option<usize> {
        match &self.0 {
            Inner::Lean { session, .. } => Some(session.buffer_capacity()),
            Inner::Buffered(_) => None,
        }
    }

    /// The session's channel binding for the tunnel-key proof (tokio-rustls's stream
    /// only).
    pub(crate) fn binding(
        &self,
    ) -> Result<[u8; pool_tls::proof::BINDING_LEN], pool_tls::ProofError> {
        match &self.0 {
            Inner::Buffered(s) => match s.as_ref() {
                TlsStream::Client(c) => pool_tls::tls_binding(c.get_ref().1),
                TlsStream::Server(c) => pool_tls::tls_binding(c.get_ref().1),
            },
            Inner::Lean { .. } => Err(pool_tls::ProofError::Binding(rustls::Error::General(
                "this TLS stream cannot export keying material".into(),
            ))),
        }
    }

    /// Releases the I/O buffers that hold nothing: the pool calls it when the
    /// connection goes idle.
    pub(crate) fn trim(&mut self) {
        if let Inner::Lean { session, .. } = &mut self.0 {
            session.trim();
        }
    }

    /// Whether payload already read from the socket waits in the session for the next
    /// read (bytes the handshake or the id read pulled in behind what they needed: a
    /// session the server started the moment the connection landed). No peek at the
    /// socket can see them.
    pub(crate) fn has_unread(&mut self) -> bool {
        match &mut self.0 {
            Inner::Buffered(s) => match s.as_mut() {
                TlsStream::Client(s) => unread(s.get_mut().1),
                TlsStream::Server(s) => unread(s.get_mut().1),
            },
            Inner::Lean { session, .. } => session.unread() > 0,
        }
    }

    /// What the records queued on the socket say (called when a peek found bytes):
    /// payload is kept for the next read, a `close_notify` is a close. Never blocks.
    pub(crate) fn queued_records(&mut self) -> RecordState {
        match &mut self.0 {
            Inner::Buffered(s) => match s.as_mut() {
                TlsStream::Client(s) => {
                    let (tcp, conn) = s.get_mut();
                    pool_tls::queued_records(conn, &mut TryRead(tcp))
                }
                TlsStream::Server(s) => {
                    let (tcp, conn) = s.get_mut();
                    pool_tls::queued_records(conn, &mut TryRead(tcp))
                }
            },
            Inner::Lean { tcp, session } => {
                let state = lean_records(tcp, session);
                session.trim();
                state
            }
        }
    }
}

/// Whether rustls holds plaintext not read yet (records it has but not processed
/// are processed first; a failure there is left for the next read to report).
fn unread<D>(conn: &mut rustls::ConnectionCommon<D>) -> bool {
    conn.process_new_packets()
        .is_ok_and(|st| st.plaintext_bytes_to_read() > 0)
}

/// [`TlsConn::queued_records`] for the lean stream: at most 8 reads.
fn lean_records(tcp: &TcpStream, session: &mut TlsSession) -> RecordState {
    for _ in 0..8 {
        let n = match pool_net::read_now(tcp, session.read_space()) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return RecordState::Dead(e.kind()),
        };
        session.received(n);
        if session.process(&mut []).is_err() {
            return RecordState::Dead(io::ErrorKind::InvalidData);
        }
        // An answer the peer asked for (a key update): send it if the socket takes it.
        while !session.pending_output().is_empty() {
            match tcp.try_write(session.pending_output()) {
                Ok(k) if k > 0 => session.output_sent(k),
                _ => break,
            }
        }
        if session.unread() > 0 {
            return RecordState::Pending;
        }
        if session.peer_closed() || n == 0 {
            return RecordState::Closed;
        }
    }
    if session.unread() > 0 {
        RecordState::Pending
    } else {
        RecordState::Idle
    }
}

/// A non-blocking `io::Read` over tokio's socket, for rustls's `read_tls`. It reads
/// from the kernel directly ([`pool_net::read_now`]), not through tokio's `try_read`:
/// that one answers `WouldBlock` until tokio's reactor has seen the socket readable,
/// and the pool's own watch (in-band starts) may learn of the bytes first; a peek
/// that then found nothing would re-arm the watch, which fires again at once, and spin.
struct TryRead<'a>(&'a TcpStream);

impl io::Read for TryRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        pool_net::read_now(self.0, buf)
    }
}

/// Writes the session's pending records until none is left.
fn poll_output(
    tcp: &mut TcpStream,
    s: &mut TlsSession,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while !s.pending_output().is_empty() {
        let n = ready!(Pin::new(&mut *tcp).poll_write(cx, s.pending_output()))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        s.output_sent(n);
    }
    Poll::Ready(Ok(()))
}

fn poll_read_lean(
    tcp: &mut TcpStream,
    s: &mut TlsSession,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if buf.remaining() == 0 {
        return Poll::Ready(Ok(()));
    }
    loop {
        if s.unread() > 0 {
            let n = s.read_plain(buf.initialize_unfilled());
            buf.advance(n);
            return Poll::Ready(Ok(()));
        }
        if s.peer_closed() {
            return Poll::Ready(Ok(()));
        }
        let (progress, n) = s.process(buf.initialize_unfilled()).map_err(tls_error)?;
        buf.advance(n);
        // Records the peer asked for (a key update's answer) go out with the reads;
        // if the socket is full, its readiness wakes this task again.
        if let Poll::Ready(Err(e)) = poll_output(tcp, s, cx) {
            return Poll::Ready(Err(e));
        }
        if n > 0 || progress == Progress::Closed {
            return Poll::Ready(Ok(()));
        }
        if s.peer_closed() {
            continue;
        }
        let mut space = ReadBuf::new(s.read_space());
        ready!(Pin::new(&mut *tcp).poll_read(cx, &mut space))?;
        let got = space.filled().len();
        if got == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed connection without sending TLS close_notify",
            )));
        }
        s.received(got);
    }
}

fn poll_write_lean(
    tcp: &mut TcpStream,
    session: &mut TlsSession,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        return Poll::Ready(Ok(0));
    }
    ready!(poll_output(tcp, session, cx))?;
    if session.close_sent() {
        return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
    }
    let n = session
        .encrypt(buf)
        .map_err(tls_error)?
        .ok_or_else(|| io::Error::other("TLS handshake not complete"))?;
    // Taken: the record is on its way; `poll_flush` finishes the write.
    if let Poll::Ready(Err(e)) = poll_output(tcp, session, cx) {
        return Poll::Ready(Err(e));
    }
    Poll::Ready(Ok(n))
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Lean { tcp, session } => poll_read_lean(tcp, session, cx, buf),
            Inner::Buffered(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Lean { tcp, session } => poll_write_lean(tcp, session, cx, buf),
            Inner::Buffered(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Lean { tcp, session } => {
                ready!(poll_output(tcp, session, cx))?;
                Pin::new(tcp).poll_flush(cx)
            }
            Inner::Buffered(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Lean { tcp, session } => {
                // A session that already failed has no alert to send: close the TCP side.
                let _ = session.close_notify();
                ready!(poll_output(tcp, session, cx))?;
                Pin::new(tcp).poll_shutdown(cx)
            }
            Inner::Buffered(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Buffered(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Inner::Lean { tcp, session } => {
                let buf = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                poll_write_lean(tcp, session, cx, buf)
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.0 {
            Inner::Lean { .. } => false,
            Inner::Buffered(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests;
