//! The pooled connection: a byte stream over WebSocket binary messages.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::{Sink, Stream};
use pool_core::ConnId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Bytes, Message};
use tokio_tungstenite::WebSocketStream;

use crate::error::FrameError;

/// The largest message sent: a write of more is cut into messages of this size.
pub(crate) const MAX_SEND: usize = 64 * 1024;

/// What a peer may send in one message (and one frame) at most. A larger one ends the
/// connection with [`FrameError::TooBig`], so one peer never makes the pool hold more.
pub const MAX_MESSAGE: usize = 1 << 20;

/// The framing settings of every pooled connection: no compression (tungstenite has
/// none), a bounded message and frame, a small read buffer (an idle pooled connection
/// keeps it), and every message written out as it is sent.
pub(crate) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * MAX_SEND)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// The transport under the WebSocket: plain TCP or TLS, either role.
#[derive(Debug)]
pub enum Io {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`, the client's end.
    TlsClient(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// `wss://`, the server's end.
    TlsServer(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Io {
    /// The TCP socket under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(t) => t,
            Self::TlsClient(t) => t.get_ref().0,
            Self::TlsServer(t) => t.get_ref().0,
        }
    }

    /// Whether TLS runs on it.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Io::TlsClient($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Io::TlsServer($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
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

/// A pooled WebSocket connection as a byte stream: what is written leaves as binary
/// messages (at most 64 KiB each), and the payloads of the binary messages that come
/// are read back to back. A text message, an oversized one or a broken frame ends the
/// stream with an [`io::Error`] whose inner error is a [`FrameError`]; the peer's close
/// is the end of the stream. [`shutdown`](tokio::io::AsyncWriteExt::shutdown) sends a
/// close frame.
#[derive(Debug)]
pub struct WsConn {
    id: ConnId,
    ws: WebSocketStream<Io>,
    /// The payload of the message being read, and how much of it was read.
    rest: Bytes,
    at: usize,
    /// The read side saw the close, or failed.
    read_done: bool,
    /// In-band mode, while the pool holds it: woken when a message arrives.
    watcher: Option<std::task::Waker>,
    /// `shutdown` ends this side's byte stream with an empty binary message (a
    /// half-close) instead of a close frame ([`set_half_close`](Self::set_half_close)).
    half_close: bool,
    /// The half-close went (its flush may still be under way).
    half_closed: bool,
}

impl WsConn {
    pub(crate) fn new(id: ConnId, ws: WebSocketStream<Io>) -> Self {
        Self {
            id,
            ws,
            rest: Bytes::new(),
            at: 0,
            read_done: false,
            watcher: None,
            half_close: false,
            half_closed: false,
        }
    }

    pub(crate) fn set_id(&mut self, id: ConnId) {
        self.id = id;
    }

    /// The pool id of this connection.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The transport under the WebSocket.
    pub fn io(&self) -> &Io {
        self.ws.get_ref()
    }

    /// Whether the connection may be handed out; never consumes a byte. A closed or
    /// failed socket is dead; on plain `ws`, a close frame waiting at the head of the
    /// socket is too (the peer closed the WebSocket but not yet the TCP connection).
    pub fn liveness(&self) -> pool_net::Liveness {
        let io = self.io();
        let l = pool_net::probe(io.tcp());
        if l == pool_net::Liveness::Pending && !io.is_tls() && self.rest.len() == self.at {
            let mut first = [0u8; 1];
            if pool_net::peek_now(io.tcp(), &mut first).is_ok_and(|n| n == 1)
                && first[0] & 0x0f == 0x08
            {
                return pool_net::Liveness::Closed;
            }
        }
        l
    }

    /// Half-closes: from now on [`shutdown`](tokio::io::AsyncWriteExt::shutdown) sends
    /// an empty binary message, which ends the byte stream the peer reads while the
    /// other way stays open (a close frame ends both ways). Not part of the Go wire:
    /// both ends must agree on it. An empty binary message is the end of the stream on
    /// every [`WsConn`] (this pool never sends one otherwise).
    pub fn set_half_close(&mut self, on: bool) {
        self.half_close = on;
    }

    /// Sends a close frame and ends the connection at once with a reset (`SO_LINGER`
    /// 0): a session cut short must never look complete to the other side.
    pub fn abort(self) {
        let _ = socket2::SockRef::from(self.io().tcp()).set_linger(Some(std::time::Duration::ZERO));
        drop(self);
    }
}

impl crate::engine::Pooled for WsConn {
    fn peek(&mut self) -> pool_core::Liveness {
        match self.watcher.clone() {
            Some(w) => self.poll_watched(&w),
            None => self.liveness(),
        }
    }
    fn watch_bytes(&mut self, waker: std::task::Waker) -> bool {
        self.watcher = Some(waker.clone());
        self.poll_watched(&waker) != pool_core::Liveness::Idle
    }
}

impl WsConn {
    /// A peek in in-band mode: reads the next message, if one came, and keeps its
    /// payload for the reader; `waker` is woken when one comes.
    fn poll_watched(&mut self, waker: &std::task::Waker) -> pool_core::Liveness {
        use pool_core::Liveness;
        if self.at < self.rest.len() {
            return Liveness::Pending;
        }
        if self.read_done {
            return Liveness::Closed;
        }
        let mut cx = Context::from_waker(waker);
        loop {
            match Pin::new(&mut self.ws).poll_next(&mut cx) {
                Poll::Pending => return Liveness::Idle,
                Poll::Ready(Some(Ok(Message::Binary(b)))) if !b.is_empty() => {
                    self.rest = b;
                    self.at = 0;
                    return Liveness::Pending;
                }
                Poll::Ready(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {}
                Poll::Ready(Some(Ok(Message::Close(_) | Message::Binary(_))) | None) => {
                    self.read_done = true;
                    return Liveness::Closed;
                }
                Poll::Ready(Some(Ok(Message::Text(_)) | Err(_))) => {
                    self.read_done = true;
                    return Liveness::Dead(io::ErrorKind::InvalidData);
                }
            }
        }
    }
}

/// A tungstenite error as the stream reports it.
pub(crate) fn io_error(e: tungstenite::Error) -> io::Error {
    use tungstenite::error::{CapacityError, ProtocolError};
    use tungstenite::Error as E;
    match e {
        E::Io(e) => e,
        E::ConnectionClosed | E::AlreadyClosed => io::ErrorKind::NotConnected.into(),
        E::Capacity(CapacityError::MessageTooLong { size, max_size }) => io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::TooBig { size, max_size },
        ),
        E::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            io::ErrorKind::ConnectionReset.into()
        }
        E::Protocol(p) => io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::Protocol(p.to_string()),
        ),
        e => io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::Protocol(e.to_string()),
        ),
    }
}

impl AsyncRead for WsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.at < me.rest.len() {
                let n = buf.remaining().min(me.rest.len() - me.at);
                buf.put_slice(&me.rest[me.at..me.at + n]);
                me.at += n;
                if me.at == me.rest.len() {
                    // Let go of the read buffer the payload shares (an idle pooled
                    // connection keeps nothing of its id message).
                    me.rest = Bytes::new();
                    me.at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if me.read_done {
                return Poll::Ready(Ok(()));
            }
            let next = ready!(Pin::new(&mut me.ws).poll_next(cx));
            match next {
                // The peer's half-close (see `set_half_close`).
                Some(Ok(Message::Binary(b))) if b.is_empty() => {
                    me.read_done = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Ok(Message::Binary(b))) => {
                    me.rest = b;
                    me.at = 0;
                }
                // Answered by tungstenite (a pong goes out with the next read or write).
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    me.read_done = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        FrameError::Text,
                    )));
                }
                Some(Ok(Message::Close(_))) | None => {
                    me.read_done = true;
                    return Poll::Ready(Ok(()));
                }
                Some(Ok(Message::Frame(_))) => {} // only produced when writing raw frames
                Some(Err(e)) => {
                    me.read_done = true;
                    return Poll::Ready(Err(io_error(e)));
                }
            }
        }
    }
}

impl AsyncWrite for WsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if b.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut ws = Pin::new(&mut me.ws);
        ready!(ws.as_mut().poll_ready(cx)).map_err(io_error)?;
        let n = b.len().min(MAX_SEND);
        ws.start_send(Message::binary(b[..n].to_vec()))
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().ws)
            .poll_flush(cx)
            .map_err(io_error)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.half_close {
            let mut ws = Pin::new(&mut me.ws);
            if me.half_close {
                ready!(ws.as_mut().poll_ready(cx)).map_err(io_error)?;
                ws.as_mut()
                    .start_send(Message::binary(Vec::new()))
                    .map_err(io_error)?;
                // Sent once: what is left is the flush.
                me.half_close = false;
                me.half_closed = true;
            }
            return Pin::new(&mut me.ws).poll_flush(cx).map_err(io_error);
        }
        if me.half_closed {
            return Pin::new(&mut me.ws).poll_flush(cx).map_err(io_error);
        }
        match ready!(Pin::new(&mut me.ws).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(io_error(e))),
        }
    }
}
