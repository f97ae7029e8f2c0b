//! One blocking connection type for plain and TLS pooled streams.

use std::io::{self, Read, Write};
use std::net::TcpStream;

use pool_core::ConnId;
use pool_core::Liveness;
use rustls::{ClientConnection, StreamOwned};

/// The stream under a [`ThreadConn`]. TLS is rustls's `StreamOwned`: the same rustls
/// buffered connection that pool-tokio's streams drive through tokio-rustls, with
/// blocking I/O, so both runtimes run one TLS path.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// A pooled connection: a blocking `std::net::TcpStream`, or rustls's `StreamOwned`
/// over one, with its id. It implements [`Read`] and [`Write`]; bytes the server sent
/// while it sat idle are all still there (the pool's health check only peeks).
///
/// The pool hands it out with no read or write timeout set.
pub struct ThreadConn {
    pub(crate) id: ConnId,
    pub(crate) stream: Stream,
}

impl std::fmt::Debug for ThreadConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadConn")
            .field("id", &self.id)
            .field("tls", &self.is_tls())
            .finish()
    }
}

impl ThreadConn {
    /// The connection's id, the same on both ends.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Whether the stream runs TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The TCP stream underneath, for socket options or addresses.
    pub fn tcp(&self) -> &TcpStream {
        match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Whether the connection is still usable, without losing a byte.
    ///
    /// A plain stream costs one non-blocking `MSG_PEEK` ([`pool_net::probe`]). On a
    /// TLS stream whose socket holds pending bytes, those bytes may be a record rather
    /// than payload (a peer's `close_notify`): the records already queued are handed to
    /// rustls and processed, as `pool-tokio` does. Any payload they carry stays in
    /// rustls's plaintext buffer and is the first thing the next read returns. Only on
    /// that path the socket is switched to non-blocking for the reads and back (two
    /// `fcntl`s): the connection is out of the pool while it is probed, so nobody else
    /// sees the flag.
    pub fn liveness(&mut self) -> Liveness {
        if self.has_unread() {
            return Liveness::Pending;
        }
        let state = pool_net::probe(self.tcp());
        match (&mut self.stream, state) {
            (Stream::Tls(s), Liveness::Pending) => {
                let StreamOwned { conn, sock } = s.as_mut();
                if sock.set_nonblocking(true).is_err() {
                    return Liveness::Pending;
                }
                let state = pool_tls::queued_records(conn, &mut &*sock);
                match sock.set_nonblocking(false) {
                    Ok(()) => state,
                    Err(e) => Liveness::Dead(e.kind()),
                }
            }
            (_, state) => state,
        }
    }

    /// Whether payload the TLS session already took off the socket waits for the next
    /// read (no peek at the socket can see it): bytes the handshake or the id read
    /// pulled in behind what they needed.
    pub(crate) fn has_unread(&mut self) -> bool {
        match &mut self.stream {
            Stream::Tls(s) => s
                .conn
                .process_new_packets()
                .is_ok_and(|st| st.plaintext_bytes_to_read() > 0),
            Stream::Plain(_) => false,
        }
    }
}

impl Read for ThreadConn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ThreadConn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stream {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stream {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}
