//! A TLS session that holds no buffers while it is idle.
//!
//! A pool keeps thousands of TLS connections idle for minutes. rustls's buffered
//! connection (`rustls::ClientConnection`, what tokio-rustls drives) keeps a 4 KiB
//! receive buffer per connection for its whole life, so most of an idle pooled
//! connection's memory is a buffer sized for traffic it does not carry. [`TlsSession`]
//! drives rustls's unbuffered API instead: rustls keeps the keys, sequence numbers and
//! handshake state, and the three buffers (received records, records to send, and
//! decrypted bytes not yet read) are this type's own, allocated when bytes flow and
//! released by [`trim`](TlsSession::trim) when the connection goes back to sleep.
//!
//! It is sans-IO, like rustls: the caller reads from its socket into
//! [`read_space`](TlsSession::read_space), reports the count with
//! [`received`](TlsSession::received), calls [`process`](TlsSession::process), and
//! writes out what [`pending_output`](TlsSession::pending_output) holds. A runtime's
//! stream (pool-tokio's `TlsConn`) is a thin loop around these calls.
//!
//! # What it does not do
//!
//! rustls 0.23's unbuffered connection has no keying-material exporter, so a session
//! whose caller needs [`tls_binding`](crate::tls_binding) (the tunnel-key proof) uses the
//! buffered connection instead.

use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::pki_types::ServerName;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};
use rustls::{ClientConfig, CommonState, Error, ServerConfig};

/// The largest TLS record on the wire: 16 KiB of payload, 256 bytes of expansion, the
/// 5-byte header (RFC 8446 §5.2).
const MAX_RECORD: usize = 16 * 1024 + 256 + 5;

/// How many bytes a socket read is offered at least.
const READ_CHUNK: usize = 4096;

/// Plaintext encrypted per [`TlsSession::encrypt`] at most: one full record.
pub const MAX_PLAINTEXT_PER_WRITE: usize = 16 * 1024;

/// One side of rustls's unbuffered API, each boxed at its own size: a client's
/// connection is about 100 bytes smaller than a server's (rustls 0.23: 976 against
/// 1,088), and an unboxed enum would make every client pay for the larger.
enum Side {
    Client(Box<UnbufferedClientConnection>),
    Server(Box<UnbufferedServerConnection>),
}

/// A session's three buffers and their cursors.
#[derive(Default)]
struct Io {
    /// Records received and not yet processed: `incoming[..in_len]`.
    incoming: Vec<u8>,
    in_len: usize,
    /// Records to send: `outgoing[sent..]`.
    outgoing: Vec<u8>,
    sent: usize,
    /// Decrypted bytes not yet read: `plain[taken..]`.
    plain: Vec<u8>,
    taken: usize,
}

/// What a session without buffers reads as.
static NO_IO: Io = Io {
    incoming: Vec::new(),
    in_len: 0,
    outgoing: Vec::new(),
    sent: 0,
    plain: Vec::new(),
    taken: 0,
};

impl Io {
    /// Whether it holds no buffer at all: the session can drop it.
    fn is_bare(&self) -> bool {
        self.incoming.capacity() + self.outgoing.capacity() + self.plain.capacity() == 0
    }
}

/// What [`TlsSession::process`] stopped at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The handshake needs more bytes from the peer.
    NeedInput,
    /// The handshake is done: application data may flow (both ways, unless the peer
    /// closed its side).
    Ready,
    /// Both sides sent `close_notify`: nothing more will be read or written.
    Closed,
}

/// What the session should do once it may send application data.
enum Act<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
    KeyUpdate,
}

/// A client or server TLS session over caller-owned I/O, with buffers that exist only
/// while bytes flow (see the [module docs](self)).
pub struct TlsSession {
    side: Side,
    /// The buffers, `None` while none holds anything (an idle connection): 8 bytes
    /// instead of 96 per idle session.
    io: Option<Box<Io>>,
    peer_closed: bool,
    close_sent: bool,
    /// The error the session failed with: every later call answers it again, without
    /// giving rustls the same records twice. Boxed: a `rustls::Error` is 64 bytes,
    /// which every idle session would carry for an error it almost never has.
    failed: Option<Box<Error>>,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("client", &matches!(self.side, Side::Client(_)))
            .field("handshaking", &self.common().is_handshaking())
            .field("buffered_in", &self.io().in_len)
            .field("buffered_out", &self.pending_output().len())
            .field("unread", &self.unread())
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// A client session for `name`, under `config` (built by
    /// [`ClientTlsBuilder`](crate::ClientTlsBuilder) or by hand).
    pub fn client(config: Arc<ClientConfig>, name: ServerName<'static>) -> Result<Self, Error> {
        Ok(Self::new(Side::Client(Box::new(
            UnbufferedClientConnection::new(config, name)?,
        ))))
    }

    /// A server session under `config` (built by [`ServerTls`](crate::ServerTls) or by
    /// hand).
    pub fn server(config: Arc<ServerConfig>) -> Result<Self, Error> {
        Ok(Self::new(Side::Server(Box::new(
            UnbufferedServerConnection::new(config)?,
        ))))
    }

    fn new(side: Side) -> Self {
        Self {
            side,
            io: None,
            peer_closed: false,
            close_sent: false,
            failed: None,
        }
    }

    /// The session's negotiated state: version, cipher suite, peer certificates.
    pub fn common(&self) -> &CommonState {
        match &self.side {
            Side::Client(c) => c,
            Side::Server(s) => s,
        }
    }

    /// Whether this is the client side.
    pub fn is_client(&self) -> bool {
        matches!(self.side, Side::Client(_))
    }

    /// Space for the next socket read, at least 4 KiB, allocated now if the session
    /// had released its buffer. Report what was read with [`received`](Self::received).
    pub fn read_space(&mut self) -> &mut [u8] {
        let io = self.io_mut();
        if io.incoming.len() - io.in_len < READ_CHUNK {
            let size = (io.in_len + READ_CHUNK).max(io.incoming.len());
            io.incoming.resize(size.min(MAX_RECORD + READ_CHUNK), 0);
        }
        &mut io.incoming[io.in_len..]
    }

    fn io(&self) -> &Io {
        self.io.as_deref().unwrap_or(&NO_IO)
    }

    fn io_mut(&mut self) -> &mut Io {
        self.io.get_or_insert_with(Box::default)
    }

    /// `n` bytes were read into [`read_space`](Self::read_space).
    pub fn received(&mut self, n: usize) {
        if let Some(io) = &mut self.io {
            io.in_len = (io.in_len + n).min(io.incoming.len());
        }
    }

    /// Bytes received that do not yet make a whole record.
    pub fn partial_input(&self) -> usize {
        self.io().in_len
    }

    /// Processes the records received: handshake messages advance the handshake (their
    /// answers go to [`pending_output`](Self::pending_output)), application data goes
    /// first into `out` and the rest is kept for [`read_plain`](Self::read_plain).
    /// Returns where the session stands and how many bytes went into `out`.
    pub fn process(&mut self, out: &mut [u8]) -> Result<(Progress, usize), Error> {
        self.drive(out, Act::Nothing).map(|(p, n, _)| (p, n))
    }

    /// Encrypts up to [`MAX_PLAINTEXT_PER_WRITE`] bytes of `data` into
    /// [`pending_output`](Self::pending_output). `None` while the handshake is not done.
    pub fn encrypt(&mut self, data: &[u8]) -> Result<Option<usize>, Error> {
        let data = &data[..data.len().min(MAX_PLAINTEXT_PER_WRITE)];
        if data.is_empty() {
            return Ok(Some(0));
        }
        let (progress, _, done) = self.drive(&mut [], Act::Encrypt(data))?;
        Ok(match progress {
            Progress::Ready if done => Some(data.len()),
            Progress::Closed => return Err(Error::General("TLS session closed".into())),
            _ => None,
        })
    }

    /// Queues a `close_notify` alert (once); nothing can be written after it.
    pub fn close_notify(&mut self) -> Result<(), Error> {
        if self.close_sent {
            return Ok(());
        }
        let (_, _, done) = self.drive(&mut [], Act::CloseNotify)?;
        self.close_sent = done;
        Ok(())
    }

    /// Asks for new traffic keys both ways (TLS 1.3 `key_update`, update requested):
    /// the message goes to [`pending_output`](Self::pending_output).
    pub fn refresh_traffic_keys(&mut self) -> Result<(), Error> {
        self.drive(&mut [], Act::KeyUpdate).map(drop)
    }

    /// Decrypted bytes not yet read, copied into `out`; returns the count.
    pub fn read_plain(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.unread());
        let Some(io) = &mut self.io else {
            return 0;
        };
        out[..n].copy_from_slice(&io.plain[io.taken..io.taken + n]);
        io.taken += n;
        if io.taken == io.plain.len() {
            io.plain.clear();
            io.taken = 0;
        }
        n
    }

    /// How many decrypted bytes wait to be read.
    pub fn unread(&self) -> usize {
        self.io().plain.len() - self.io().taken
    }

    /// Whether the peer sent `close_notify`: once [`unread`](Self::unread) is zero,
    /// the stream has ended cleanly.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether this side queued its `close_notify`.
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Records waiting to be written to the socket, oldest first.
    pub fn pending_output(&self) -> &[u8] {
        let io = self.io();
        &io.outgoing[io.sent..]
    }

    /// `n` bytes of [`pending_output`](Self::pending_output) were written.
    pub fn output_sent(&mut self, n: usize) {
        let Some(io) = &mut self.io else { return };
        io.sent = (io.sent + n).min(io.outgoing.len());
        if io.sent == io.outgoing.len() {
            io.outgoing.clear();
            io.sent = 0;
        }
    }

    /// Releases every buffer that holds nothing: what an idle connection should do.
    /// Buffers come back, as large as needed, when bytes flow again.
    pub fn trim(&mut self) {
        let Some(io) = &mut self.io else { return };
        if io.in_len == 0 {
            io.incoming = Vec::new();
        }
        if io.sent == io.outgoing.len() {
            io.outgoing = Vec::new();
            io.sent = 0;
        }
        if io.taken == io.plain.len() {
            io.plain = Vec::new();
            io.taken = 0;
        }
        if io.is_bare() {
            self.io = None;
        }
    }

    /// Heap bytes held by this type's own buffers (not rustls's state).
    pub fn buffer_capacity(&self) -> usize {
        let io = self.io();
        io.incoming.capacity() + io.outgoing.capacity() + io.plain.capacity()
    }

    fn drive(&mut self, out: &mut [u8], act: Act<'_>) -> Result<(Progress, usize, bool), Error> {
        if let Some(e) = &self.failed {
            return Err(Error::clone(e));
        }
        let io = self.io.get_or_insert_with(Box::default);
        let mut bufs = Bufs {
            incoming: &mut io.incoming,
            in_len: &mut io.in_len,
            outgoing: &mut io.outgoing,
            plain: &mut io.plain,
            peer_closed: &mut self.peer_closed,
            out,
            got: 0,
        };
        let result = match &mut self.side {
            Side::Client(c) => drive(&mut **c, &mut bufs, act),
            Side::Server(s) => drive(&mut **s, &mut bufs, act),
        };
        let got = bufs.got;
        // A call that needed no buffer (a probe of an idle session) leaves none.
        if io.is_bare() {
            self.io = None;
        }
        if let Err(e) = &result {
            self.failed = Some(Box::new(e.clone()));
        }
        result.map(|(p, done)| (p, got, done))
    }
}

/// The session's buffers, borrowed apart from the rustls connection.
struct Bufs<'a> {
    incoming: &'a mut Vec<u8>,
    in_len: &'a mut usize,
    outgoing: &'a mut Vec<u8>,
    plain: &'a mut Vec<u8>,
    peer_closed: &'a mut bool,
    out: &'a mut [u8],
    got: usize,
}

impl Bufs<'_> {
    fn discard(&mut self, n: usize) {
        if n > 0 {
            self.incoming.copy_within(n..*self.in_len, 0);
            *self.in_len -= n;
        }
    }
}

/// Plaintext to the caller's buffer first (`out[*got..]`), the rest kept in `plain`.
fn deliver(out: &mut [u8], got: &mut usize, plain: &mut Vec<u8>, payload: &[u8]) {
    let direct = payload.len().min(out.len() - *got);
    out[*got..*got + direct].copy_from_slice(&payload[..direct]);
    *got += direct;
    plain.extend_from_slice(&payload[direct..]);
}

/// rustls's two unbuffered connection types, behind one call.
trait Records:
    std::ops::Deref<Target = rustls::unbuffered::UnbufferedConnectionCommon<Self::Data>>
{
    type Data;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Records for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Records for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn records<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// Grows `buf` by exactly what `write` asks for and lets it write there: rustls's
/// encoders answer a short buffer with the size they need, and leave it untouched.
fn append<E>(
    buf: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needs: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = buf.len();
    match write(&mut []) {
        Ok(_) => return Ok(()),
        Err(e) => match needs(&e) {
            Some(size) => buf.resize(start + size, 0),
            None => return Err(e),
        },
    }
    match write(&mut buf[start..]) {
        Ok(n) => {
            buf.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}

fn encode_needs(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn encrypt_needs(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

fn encrypt_error(e: EncryptError) -> Error {
    Error::General(e.to_string())
}

/// Runs the connection over the buffered records until it needs input or may send
/// application data, then does `act`. Returns where it stopped and whether `act` was
/// done.
fn drive<C: Records>(
    conn: &mut C,
    b: &mut Bufs<'_>,
    mut act: Act<'_>,
) -> Result<(Progress, bool), Error> {
    loop {
        let UnbufferedStatus { mut discard, state } = conn.records(&mut b.incoming[..*b.in_len]);
        let state = match state {
            Ok(state) => state,
            Err(e) => {
                b.discard(discard);
                queue_alerts(conn, b);
                return Err(e);
            }
        };
        let mut stop = None;
        match state {
            ConnectionState::ReadTraffic(mut r) => {
                while let Some(record) = r.next_record() {
                    let record = record?;
                    discard += record.discard;
                    deliver(b.out, &mut b.got, b.plain, record.payload);
                }
            }
            ConnectionState::ReadEarlyData(_) => {
                // Only a server whose config sets `max_early_data_size` gets here; the
                // pool's never do, and 0-RTT data would be replayable.
                b.discard(discard);
                return Err(Error::General("TLS early data is not accepted".into()));
            }
            ConnectionState::EncodeTlsData(mut e) => {
                append(b.outgoing, |out| e.encode(out), encode_needs)
                    .map_err(|e| Error::General(e.to_string()))?;
            }
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::BlockedHandshake => stop = Some((Progress::NeedInput, false)),
            ConnectionState::PeerClosed => *b.peer_closed = true,
            ConnectionState::Closed => {
                *b.peer_closed = true;
                stop = Some((Progress::Closed, false));
            }
            ConnectionState::WriteTraffic(mut w) => match std::mem::replace(&mut act, Act::Nothing)
            {
                Act::Nothing => stop = Some((Progress::Ready, true)),
                Act::Encrypt(data) => {
                    append(b.outgoing, |out| w.encrypt(data, out), encrypt_needs)
                        .map_err(encrypt_error)?;
                    stop = Some((Progress::Ready, true));
                }
                Act::CloseNotify => {
                    append(b.outgoing, |out| w.queue_close_notify(out), encrypt_needs)
                        .map_err(encrypt_error)?;
                    stop = Some((Progress::Ready, true));
                }
                // The key update message comes out of the next round as `EncodeTlsData`.
                Act::KeyUpdate => w.refresh_traffic_keys()?,
            },
            _ => return Err(Error::General("unexpected unbuffered TLS state".into())),
        }
        b.discard(discard);
        if let Some(stop) = stop {
            return Ok(stop);
        }
    }
}

/// After a failure rustls may have queued an alert for the peer (why the handshake
/// failed): put it in the output, best effort. The records are passed again (rustls
/// may still hold positions in them) but no longer processed: rustls hands out what it
/// queued before it looks at input.
fn queue_alerts<C: Records>(conn: &mut C, b: &mut Bufs<'_>) {
    // Only while something is queued: otherwise rustls would read the records again
    // and fail (and alert) twice.
    for _ in 0..4 {
        if !conn.wants_write() {
            return;
        }
        let status = conn.records(&mut b.incoming[..*b.in_len]);
        match status.state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                if append(b.outgoing, |out| e.encode(out), encode_needs).is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// The session a pool boxes per idle connection holds rustls's connection behind a
    /// box of its own size and no inline error: a client does not pay for a server's
    /// larger connection, nor anyone for a 64-byte error they do not have.
    #[test]
    fn the_session_stays_small_beside_rustls_state() {
        assert!(size_of::<UnbufferedClientConnection>() > 512);
        assert!(size_of::<TlsSession>() <= 64, "{}", size_of::<TlsSession>());
    }

    /// The buffers come into being when bytes flow and leave whole at `trim`, their
    /// cursors with them.
    #[test]
    fn a_trimmed_session_holds_no_buffers_at_all() {
        let config = crate::ClientTlsBuilder::new(crate::TlsMode::SelfSigned)
            .build()
            .unwrap()
            .unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut s = TlsSession::client(config, name).unwrap();
        assert!(s.io.is_none());
        assert_eq!(s.process(&mut []).unwrap().0, Progress::NeedInput);
        let hello = s.pending_output().len();
        assert!(hello > 0 && s.io.is_some());
        s.output_sent(hello);
        s.trim();
        assert!(s.io.is_none());
        assert_eq!(
            (s.buffer_capacity(), s.unread(), s.partial_input()),
            (0, 0, 0)
        );
        // Reading into it brings them back.
        assert!(s.read_space().len() >= READ_CHUNK);
        assert!(s.io.is_some());
    }
}
