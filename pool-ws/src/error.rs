//! Errors, split by operation: building a pool, a get, a handshake step, a frame.

use pool_core::GetFailure;

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A bad setting.
    #[error("bad configuration: {0}")]
    Config(#[from] pool_core::ConfigError),
    /// Not called inside a tokio runtime.
    #[error("a WebSocket pool must be built inside a tokio runtime")]
    NoRuntime,
    /// The TLS configuration or the host name.
    #[error("TLS configuration: {0}")]
    Tls(#[from] pool_tls::TlsError),
    /// A client-IP filter entry does not parse.
    #[error("client-IP filter: {0}")]
    Filter(#[from] pool_net::FilterError),
    /// The listener could not be bound or read.
    #[error("cannot {what}: {source}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// A required setting is missing.
    #[error("missing: {0}")]
    Missing(&'static str),
    /// The path is not an absolute URL path.
    #[error("the WebSocket path must start with `/` and hold no space: {0:?}")]
    Path(String),
    /// The secure generator that seeds the machine failed: no pool with guessable ids.
    #[error("the secure random generator failed")]
    Random,
}

/// Why a get returned no connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The deadline passed with nothing to hand out.
    #[error("get timed out")]
    Timeout,
    /// The pool is closed.
    #[error("pool is closed")]
    Closed,
    /// No connection with this id exists and none can still arrive.
    #[error("no connection with this id")]
    NotFound,
    /// Nothing can succeed: every dial so far failed.
    #[error("no connection can be made: every dial so far failed")]
    Unreachable,
}

impl From<GetFailure> for GetError {
    fn from(e: GetFailure) -> Self {
        match e {
            GetFailure::Closed => Self::Closed,
            GetFailure::NotFound => Self::NotFound,
            GetFailure::Unreachable => Self::Unreachable,
            _ => Self::Timeout,
        }
    }
}

impl From<GetError> for std::io::Error {
    fn from(e: GetError) -> Self {
        let kind = match e {
            GetError::Timeout => std::io::ErrorKind::TimedOut,
            GetError::Closed => std::io::ErrorKind::NotConnected,
            GetError::NotFound => std::io::ErrorKind::NotFound,
            GetError::Unreachable => std::io::ErrorKind::ConnectionRefused,
        };
        Self::new(kind, e)
    }
}

/// What a peer sent that a pooled byte stream cannot carry. It is the inner error of the
/// [`std::io::Error`] a read returns (`InvalidData`); the stream ends there.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A text message: the pool carries bytes in binary messages only.
    #[error("the peer sent a text message; the pool carries binary messages only")]
    Text,
    /// A message or frame over the limit ([`MAX_MESSAGE`](crate::MAX_MESSAGE)).
    #[error("a message of {size} bytes is over the limit of {max_size}")]
    TooBig {
        /// Its size, as far as it was read.
        size: usize,
        /// The limit.
        max_size: usize,
    },
    /// A broken frame: bad opcode, bad continuation, unmasked client frame and so on.
    #[error("WebSocket protocol violation: {0}")]
    Protocol(String),
}

/// Why one dial or one accepted connection failed, before it joined the pool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The server answered the upgrade with `503`: its pool is full.
    #[error("the server's pool is full (HTTP 503)")]
    Full,
    /// The server answered the upgrade with `403`: this address is not allowed.
    #[error("the server refused this client's address (HTTP 403)")]
    Forbidden,
    /// The server answered with another status.
    #[error("the server answered HTTP {0} instead of switching protocols")]
    Status(u16),
    /// An HTTP request that is not a WebSocket upgrade (answered `400` or `426`).
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(&'static str),
    /// A request head over the size limit (answered `431`).
    #[error("request head over {0} bytes")]
    HeadTooLarge(usize),
    /// A TLS handshake came to a plain server: the client dials `wss://` (TLS code 1
    /// or 2) and the server serves `ws://`. Set TLS on both ends or on neither.
    #[error("the client speaks TLS to a plain ws:// server: set TLS on both ends or neither")]
    ClientSpeaksTls,
    /// The peer spoke before the upgrade was answered.
    #[error("bytes after the request head before the upgrade was answered")]
    EarlyData,
    /// The first message was not the 4-byte binary id.
    #[error("the id message was not 4 bytes of binary: {0}")]
    BadId(String),
    /// The tunnel-key proof failed: the peer holds another key or none, refused ours,
    /// or did not finish the proof within the handshake deadline. Counted in
    /// `auth_failures` (and, per HTTP/2 connection, in the server's
    /// [`failed_proofs`](crate::h2::H2ServerPool::failed_proofs)).
    #[error("tunnel-key proof: {0}")]
    BadProof(&'static str),
    /// TLS did not agree on ALPN `h2`.
    #[error("the peer did not agree on ALPN h2")]
    NoH2,
    /// The HTTP/2 connection is going away (`GOAWAY`, with this code): the next
    /// stream goes on a new connection.
    #[error("the HTTP/2 connection is going away (code {0})")]
    GoAway(u32),
    /// The HTTP/2 preface and settings exchange failed, ran out of time, or was
    /// evicted by a newer connection.
    #[error("HTTP/2 preface: {0}")]
    Preface(String),
    /// The WebSocket handshake failed otherwise.
    #[error("WebSocket handshake: {0}")]
    Ws(String),
    /// TLS failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The socket failed.
    #[error("I/O: {0}")]
    Io(String),
}
