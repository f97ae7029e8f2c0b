//! A pooled QUIC stream: one bidirectional stream of a QUIC connection, with its id.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use pool_core::{ConnId, Liveness};
use quinn::{ReadError, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::link::{Link, Slot};

/// The application error code a pool resets a stream with when it closes it unused
/// (flushed, found dead, the pool closed): the peer sees the stream reset, never a
/// clean end of stream that could pass for a complete exchange.
pub const RESET_UNUSED: VarInt = VarInt::from_u32(0);

/// A pooled QUIC stream, as a get hands it out: the id both ends know it by, and a
/// byte stream ([`AsyncRead`] + [`AsyncWrite`]) over one bidirectional QUIC stream.
///
/// Dropping it finishes the sending side (a clean end of stream, as quinn does) and
/// stops the receiving side. To cut a session short so that the peer cannot take
/// what it got for complete, call [`reset`](Self::reset) first.
pub struct QuicStream {
    pub(crate) id: ConnId,
    send: SendStream,
    recv: RecvStream,
    /// Bytes a liveness peek took off the stream, served first to the reader.
    stash: Vec<u8>,
    /// Where `stash` has been read up to.
    at: usize,
    /// The peer finished its side: nothing comes after `stash`.
    fin: bool,
    link: Arc<Link>,
    /// Woken when bytes, the end or a reset arrive while the pool holds the stream
    /// idle (in-band sessions: the peer's start); `None` outside that mode.
    watcher: Option<Waker>,
    /// Counts the stream against its connection's stream budget while it lives.
    _slot: Slot,
}

impl std::fmt::Debug for QuicStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicStream")
            .field("id", &self.id)
            .field("stream", &self.send.id())
            .field("peer", &self.link.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl QuicStream {
    pub(crate) fn new(
        id: ConnId,
        send: SendStream,
        recv: RecvStream,
        link: Arc<Link>,
        slot: Slot,
    ) -> Self {
        Self {
            id,
            send,
            recv,
            stash: Vec::new(),
            at: 0,
            fin: false,
            link,
            watcher: None,
            _slot: slot,
        }
    }

    /// The id both pools know this stream by.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The peer's address as the QUIC connection sees it now (it changes when the
    /// peer migrates).
    pub fn peer_addr(&self) -> SocketAddr {
        self.link.conn.remote_address()
    }

    /// The QUIC connection this stream belongs to.
    pub fn connection(&self) -> &quinn::Connection {
        &self.link.conn
    }

    /// Resets both directions with `code`: the peer's reads fail with a reset, and its
    /// writes are stopped. Use it to end a session that was cut short.
    pub fn reset(&mut self, code: VarInt) {
        let _ = self.send.reset(code);
        let _ = self.recv.stop(code);
    }

    /// The link this stream belongs to.
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    /// Arms `waker` to be woken when bytes, the end or a reset arrive on the held
    /// stream, and answers whether something is there already (then the pool peeks
    /// at once).
    pub(crate) fn watch_bytes(&mut self, waker: Waker) -> bool {
        self.watcher = Some(waker);
        self.liveness() != Liveness::Idle
    }

    /// Whether the stream may be handed out, and whether bytes wait on it, without
    /// losing a byte: what a peek reads is kept and served first to the reader. A
    /// stream whose peer finished it with nothing left is dead, as a TCP connection
    /// that reads end of file.
    pub(crate) fn liveness(&mut self) -> Liveness {
        if self.link.conn.close_reason().is_some() {
            return Liveness::Dead(io::ErrorKind::ConnectionAborted);
        }
        let waiting = self.at < self.stash.len();
        if self.fin {
            return if waiting {
                Liveness::Pending
            } else {
                Liveness::Closed
            };
        }
        if waiting {
            // What waits was read already: reading more would buffer here what
            // flow control holds at the peer.
            return Liveness::Pending;
        }
        // The watcher, where there is one: a peek must not take its place in quinn.
        let waker = self
            .watcher
            .clone()
            .unwrap_or_else(|| Waker::noop().clone());
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 2048];
        match self.recv.poll_read(&mut cx, &mut buf) {
            Poll::Pending => Liveness::Idle,
            Poll::Ready(Ok(0)) => {
                self.fin = true;
                Liveness::Closed
            }
            Poll::Ready(Ok(n)) => {
                self.stash = buf[..n].to_vec();
                self.at = 0;
                Liveness::Pending
            }
            Poll::Ready(Err(e)) => Liveness::Dead(read_error(e).kind()),
        }
    }
}

/// A read error as an I/O error, with resets named.
pub(crate) fn read_error(e: ReadError) -> io::Error {
    match e {
        ReadError::Reset(code) => io::Error::new(
            io::ErrorKind::ConnectionReset,
            format!("the peer reset the stream (code {code})"),
        ),
        e => io::Error::from(e),
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.at < me.stash.len() {
            let n = (me.stash.len() - me.at).min(buf.remaining());
            buf.put_slice(&me.stash[me.at..me.at + n]);
            me.at += n;
            if me.at == me.stash.len() {
                me.stash = Vec::new();
                me.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if me.fin {
            return Poll::Ready(Ok(()));
        }
        me.recv.poll_read_buf(cx, buf).map_err(read_error)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}
