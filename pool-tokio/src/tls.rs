//! The TLS stream of a pooled connection: tokio-rustls's stream over TCP.
//!
//! # One TLS path
//!
//! Every TLS pool, with a tunnel key or without, runs tokio-rustls, so the tunnel and
//! the library run the same code (pool-threads runs rustls's blocking `StreamOwned`,
//! the same rustls connection for a blocking runtime).
//!
//! # Why not rustls's unbuffered API
//!
//! It lets a stream release its buffers while a connection sits idle. Measured
//! against this stream in one run (`BENCHMARKS.md`, "One TLS path"), it held half the
//! memory per idle pair but downloaded a fifth slower through the tunnel, and filled
//! a pool and ran sessions no faster; and rustls 0.23's unbuffered connection cannot
//! export keying material, which the tunnel-key proof binds to.
//!
//! # Flushing
//!
//! As with tokio-rustls, `poll_write` accepts bytes once they are encrypted, which may
//! be before the socket took them: call `flush` (or `shutdown`) to know they left.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pool_core::Liveness;
use rustls::pki_types::ServerName;
use rustls::CommonState;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// A TLS stream over TCP, client or server side, as a pool holds it: tokio-rustls's
/// stream, an ordinary `AsyncRead + AsyncWrite`.
///
/// Closing: `shutdown().await` sends `close_notify` and half-closes the TCP stream;
/// dropping it without closes the socket without an alert.
pub struct TlsConn(TlsStream<TcpStream>);

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("tcp", self.tcp())
            .field("client", &self.is_client())
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// Runs a client handshake on `tcp` for `name`.
    pub(crate) async fn connect(
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        tcp: TcpStream,
    ) -> io::Result<Self> {
        let s = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?;
        Ok(Self(TlsStream::Client(s)))
    }

    /// Runs a server handshake on `tcp`. `first` is queued as application data before
    /// the handshake starts: with `send_half_rtt_data` in `config` it leaves in the
    /// server's first flight, right behind its `Finished` (TLS 1.3 0.5-RTT data),
    /// otherwise as soon as the handshake is done.
    pub(crate) async fn accept(
        config: Arc<rustls::ServerConfig>,
        tcp: TcpStream,
        first: &[u8],
    ) -> io::Result<Self> {
        let s = tokio_rustls::TlsAcceptor::from(config)
            .accept_with(tcp, |c| {
                if !first.is_empty() {
                    // Buffered by rustls (far below its limit): cannot fail.
                    let _ = io::Write::write_all(&mut c.writer(), first);
                }
            })
            .await?;
        Ok(Self(TlsStream::Server(s)))
    }

    /// The TCP stream underneath.
    pub fn tcp(&self) -> &TcpStream {
        self.0.get_ref().0
    }

    /// The session's negotiated state: version, cipher suite, peer certificates.
    pub fn common_state(&self) -> &CommonState {
        self.0.get_ref().1
    }

    /// Whether this is the client side of the session.
    pub fn is_client(&self) -> bool {
        matches!(self.0, TlsStream::Client(_))
    }

    /// The session's channel binding for the tunnel-key proof.
    pub(crate) fn binding(
        &self,
    ) -> Result<[u8; pool_tls::proof::BINDING_LEN], pool_tls::ProofError> {
        match &self.0 {
            TlsStream::Client(c) => pool_tls::tls_binding(c.get_ref().1),
            TlsStream::Server(c) => pool_tls::tls_binding(c.get_ref().1),
        }
    }

    /// Whether payload already read from the socket waits in the session for the next
    /// read (bytes the handshake or the id read pulled in behind what they needed: a
    /// session the server started the moment the connection landed). No peek at the
    /// socket can see them.
    pub(crate) fn has_unread(&mut self) -> bool {
        match &mut self.0 {
            TlsStream::Client(s) => unread(s.get_mut().1),
            TlsStream::Server(s) => unread(s.get_mut().1),
        }
    }

    /// What the records queued on the socket say (called when a peek found bytes):
    /// payload is kept for the next read, a `close_notify` is a close. Never blocks.
    pub(crate) fn queued_records(&mut self) -> Liveness {
        match &mut self.0 {
            TlsStream::Client(s) => {
                let (tcp, conn) = s.get_mut();
                pool_tls::queued_records(conn, &mut TryRead(tcp))
            }
            TlsStream::Server(s) => {
                let (tcp, conn) = s.get_mut();
                pool_tls::queued_records(conn, &mut TryRead(tcp))
            }
        }
    }
}

/// How long a TLS server waits for a client's first byte before it tells a plaintext
/// client so. A TLS client writes its ClientHello the moment its connect returns, so
/// it arrives with the connection; a mode-0 client writes nothing and waits for its
/// id, and both ends would wait for each other until the handshake deadline.
pub(crate) const HELLO_WAIT: Duration = Duration::from_millis(750);

/// A fatal `unexpected_message` alert record, as a TLS server answers bytes it cannot
/// parse: what [`hint_if_silent`] writes to a client that sent nothing.
const SILENT_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a];

/// Waits up to [`HELLO_WAIT`] for the client's first byte; when none came, writes a
/// TLS alert record (a mode-0 client reads it where its id goes and names the
/// mismatch at once) and answers `true`. The connection is kept either way: the
/// handshake then runs under its deadline as for any peer, so the slot rules for
/// strangers do not change.
pub(crate) async fn hint_if_silent(tcp: &TcpStream) -> bool {
    // A peek, not `readable()`: tokio's readiness may say readable when nothing is.
    let mut first = [0u8; 1];
    if tokio::time::timeout(HELLO_WAIT, tcp.peek(&mut first))
        .await
        .is_ok()
    {
        return false;
    }
    // The socket's send buffer is empty: 7 bytes go at once, or not at all.
    let _ = tcp.try_write(&SILENT_ALERT);
    true
}

/// Whether the first bytes a mode-0 client read where its id goes open a TLS record
/// (an alert or a handshake message): the server runs TLS.
pub(crate) fn opens_tls_record(head: &[u8]) -> bool {
    matches!(head, [0x15 | 0x16] | [0x15 | 0x16, 0x03, ..])
}

/// Whether a raw 4-byte id is the first four bytes of the alert [`hint_if_silent`]
/// writes (one id in 2^32 is, and costs one dial).
pub(crate) fn is_silent_alert_head(id: &[u8; 4]) -> bool {
    id[..] == SILENT_ALERT[..4]
}

/// Whether rustls holds plaintext not read yet (records it has but not processed
/// are processed first; a failure there is left for the next read to report).
fn unread<D>(conn: &mut rustls::ConnectionCommon<D>) -> bool {
    conn.process_new_packets()
        .is_ok_and(|st| st.plaintext_bytes_to_read() > 0)
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

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests;
