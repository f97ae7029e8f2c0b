//! The reverse-tunnel pool over HTTP/2: the wire of the NodePass `nph2` pools.
//!
//! One TLS connection with ALPN `h2` (TLS 1.3 by default, 1.2 where the TLS settings
//! allow it) carries every pooled connection as a stream: the client sends
//! `POST https://HOST/stream` whose request body starts with one byte `0x00`; the
//! server answers `200` whose response body starts with the stream's 4-byte id; then
//! both bodies carry the session's bytes. The server's maximum of concurrent streams
//! is its capacity.
//!
//! It lives in this crate beside WebSocket because the two share everything that is
//! not the wire: the tokio platform of the driver protocol, the TLS settings, the error
//! types, the id generator. The framing, flow control, `GOAWAY` and resets are the
//! [`h2`](https://crates.io/crates/h2) crate's.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use pool_ws::h2::{H2ClientPool, H2ServerPool};
//! use std::time::Duration;
//! // HTTP/2 runs over TLS: with no `tls`, a self-signed certificate is made at build.
//! let server = H2ServerPool::builder()
//!     .bind("127.0.0.1:0".parse()?)
//!     .build()?;
//! let client = H2ClientPool::builder().address(server.local_addr()).build()?;
//! let (id, _server_end) = server.get().await?;
//! let _client_end = client.get(id, Duration::from_secs(2)).await?;
//! # Ok(()) }
//! ```

mod client;
mod server;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use pool_core::ConnId;
use pool_core::Liveness;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use client::{H2ClientPool, H2ClientPoolBuilder};
pub use server::{H2ServerPool, H2ServerPoolBuilder, MAX_PREFACES};

/// The largest chunk a write sends in one `DATA` frame batch.
const MAX_SEND: usize = 64 * 1024;

/// Flow-control window of each stream: what one peer can make the other buffer on one
/// stream.
pub(crate) const STREAM_WINDOW: u32 = 256 * 1024;

/// Flow-control window of the connection: what one peer can make the other buffer on
/// all its streams together.
pub(crate) const CONN_WINDOW: u32 = 8 * 1024 * 1024;

/// What ended a pooled stream. It is the inner error of the [`io::Error`] a read or a
/// write returns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer reset the stream (`RST_STREAM`) with this error code.
    #[error("the peer reset the stream (code {0})")]
    Reset(u32),
    /// The connection is going away (`GOAWAY`) with this error code.
    #[error("the HTTP/2 connection is going away (code {0})")]
    GoAway(u32),
    /// The HTTP/2 connection failed.
    #[error("HTTP/2: {0}")]
    Connection(String),
}

fn io_error(e: h2::Error) -> io::Error {
    let code = e.reason().map_or(0, u32::from);
    let inner = if e.is_go_away() {
        StreamError::GoAway(code)
    } else if e.is_reset() {
        StreamError::Reset(code)
    } else if let Some(io) = e.get_io() {
        return io::Error::new(io.kind(), e.to_string());
    } else {
        StreamError::Connection(e.to_string())
    };
    let kind = match inner {
        StreamError::Reset(_) => io::ErrorKind::ConnectionReset,
        StreamError::GoAway(_) => io::ErrorKind::ConnectionAborted,
        StreamError::Connection(_) => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, inner)
}

/// The state of the HTTP/2 connection a stream rides on: cleared by the task that
/// drives it when it ends.
#[derive(Clone, Debug)]
pub(crate) struct Link(Arc<AtomicBool>);

impl Link {
    pub(crate) fn new() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }
    pub(crate) fn is_up(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    pub(crate) fn down(&self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A pooled HTTP/2 stream as a byte stream: writes leave as `DATA` frames of the
/// request (client) or response (server) body, reads are the other body. The end of
/// the peer's body is the end of the stream; a reset or a `GOAWAY` is an
/// [`io::Error`] whose inner error is a [`StreamError`].
/// [`shutdown`](tokio::io::AsyncWriteExt::shutdown) ends this side's body; dropping
/// the stream before that resets it (`CANCEL`), so a session cut short never looks
/// complete.
pub struct H2Conn {
    id: ConnId,
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    rest: Bytes,
    link: Link,
    read_done: bool,
    write_done: bool,
    /// In-band mode, while the pool holds it: woken when data arrives.
    watcher: Option<std::task::Waker>,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn")
            .field("id", &self.id)
            .field("link_up", &self.link.is_up())
            .finish_non_exhaustive()
    }
}

impl H2Conn {
    pub(crate) fn new(
        send: h2::SendStream<Bytes>,
        recv: h2::RecvStream,
        rest: Bytes,
        link: Link,
    ) -> Self {
        Self {
            id: ConnId::from_random([0; 4]),
            send,
            recv,
            rest,
            link,
            read_done: false,
            write_done: false,
            watcher: None,
        }
    }

    pub(crate) fn set_id(&mut self, id: ConnId) {
        self.id = id;
    }

    /// The pool id of this stream.
    pub fn id(&self) -> ConnId {
        self.id
    }
}

impl crate::engine::Pooled for H2Conn {
    /// Dead when the connection is down, the peer's body ended or the peer reset the
    /// stream; alive otherwise (nothing is read).
    fn peek(&mut self) -> Liveness {
        if !self.rest.is_empty() {
            return Liveness::Pending;
        }
        if !self.link.is_up() || self.recv.is_end_stream() || self.was_reset() {
            return Liveness::Closed;
        }
        if let Some(w) = self.watcher.clone() {
            return self.poll_watched(&w);
        }
        Liveness::Idle
    }
    fn watch_bytes(&mut self, waker: std::task::Waker) -> bool {
        self.watcher = Some(waker);
        self.peek() != Liveness::Idle
    }
}

impl H2Conn {
    /// A peek in in-band mode: takes the next `DATA` frame, if one came, and keeps it
    /// for the reader; the watcher is woken when one comes.
    fn poll_watched(&mut self, waker: &std::task::Waker) -> Liveness {
        if self.read_done {
            return Liveness::Closed;
        }
        let mut cx = Context::from_waker(waker);
        loop {
            match self.recv.poll_data(&mut cx) {
                Poll::Pending => return Liveness::Idle,
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if !data.is_empty() {
                        self.rest = data;
                        return Liveness::Pending;
                    }
                }
                Poll::Ready(None | Some(Err(_))) => {
                    self.read_done = true;
                    return Liveness::Closed;
                }
            }
        }
    }

    /// Resets the stream (`RST_STREAM` `CANCEL`): the peer's reads fail with a reset,
    /// never a clean end, even after this side ended its body.
    pub fn reset(&mut self) {
        self.write_done = true;
        self.send.send_reset(h2::Reason::CANCEL);
    }
}

impl H2Conn {
    /// Whether the peer reset this stream; polled without blocking.
    fn was_reset(&mut self) -> bool {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        matches!(self.send.poll_reset(&mut cx), Poll::Ready(_))
    }
}

impl AsyncRead for H2Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if !me.rest.is_empty() {
                let n = buf.remaining().min(me.rest.len());
                buf.put_slice(&me.rest.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if me.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(me.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = me.recv.flow_control().release_capacity(data.len());
                    me.rest = data;
                }
                Some(Err(e)) => {
                    me.read_done = true;
                    return Poll::Ready(Err(io_error(e)));
                }
                None => {
                    me.read_done = true;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl AsyncWrite for H2Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if b.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if me.write_done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        me.send.reserve_capacity(b.len().min(MAX_SEND));
        loop {
            match ready!(me.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(b.len());
                    me.send
                        .send_data(Bytes::copy_from_slice(&b[..n]), false)
                        .map_err(io_error)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what the streams send.
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.write_done {
            me.write_done = true;
            me.send.send_data(Bytes::new(), true).map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Conn {
    fn drop(&mut self) {
        if !self.write_done {
            self.send.send_reset(h2::Reason::CANCEL);
        }
    }
}
