//! The errors a pool user sees, split by operation (building a pool, getting a
//! stream), and the named cause of each failed dial or stream handshake.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_core::{ConfigError, ConnId, Stage};
use quinn::{ConnectionError, VarInt};

/// Why `build()` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A bad setting.
    #[error("bad configuration: {0}")]
    Config(#[from] ConfigError),
    /// A client-IP filter entry that does not parse.
    #[error("bad client-IP filter: {0}")]
    Filter(#[from] pool_net::FilterError),
    /// TLS material that cannot be loaded or made.
    #[error("TLS setup: {0}")]
    Tls(#[from] pool_tls::TlsError),
    /// A rustls configuration QUIC cannot use (no TLS 1.3 suite QUIC needs).
    #[error("TLS configuration unusable for QUIC: {0}")]
    Quic(String),
    /// A required setting was not given.
    #[error("missing setting: {0}")]
    Missing(&'static str),
    /// Built outside a tokio runtime.
    #[error("no tokio runtime: build the pool from inside one")]
    NoRuntime,
    /// The system's secure random generator failed; no pool with guessable ids is
    /// built.
    #[error("the system's secure random generator failed")]
    Random,
    /// Binding the UDP socket failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Why a get returned no stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The timeout passed with nothing to hand out; carries the pool's last
    /// background failure when one happened while the get waited.
    #[error("get timed out: no stream in {waited:?}{}", because(.failing))]
    Timeout {
        /// How long the get waited.
        waited: Duration,
        /// The last failure, if one happened since the get started.
        failing: Option<Box<Failure>>,
    },
    /// Nothing can succeed: the pool never made a stream and every recent dial failed.
    #[error("no stream can be made{}", because(.0))]
    Unreachable(Option<Box<Failure>>),
    /// No stream with this id is idle or can still arrive.
    #[error("no stream with id {0}")]
    NotFound(ConnId),
    /// The pool is closed.
    #[error("pool is closed")]
    Closed,
}

impl From<GetError> for io::Error {
    fn from(e: GetError) -> Self {
        let kind = match &e {
            GetError::Timeout { .. } => io::ErrorKind::TimedOut,
            GetError::Unreachable(_) => io::ErrorKind::ConnectionRefused,
            GetError::Closed => io::ErrorKind::NotConnected,
            GetError::NotFound(_) => io::ErrorKind::NotFound,
        };
        Self::new(kind, e)
    }
}

/// Why one dial (client) or stream handshake (server) failed. Each is named, so a
/// wrong ALPN, a truncated id or a reset reads as what it is.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Cause {
    /// The peer does not speak `np-quic`: the TLS handshake found no common
    /// application protocol.
    #[error("the peer does not speak np-quic (no common ALPN)")]
    WrongAlpn,
    /// The TLS handshake failed otherwise (a pin mismatch, an unknown issuer, a wrong
    /// name, ...).
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer refused the connection (a server's client-IP filter, or its limits).
    #[error("the server refused the connection (its client-IP filter, or it is at its limits)")]
    Refused,
    /// The QUIC connection ended (closed by the peer, timed out, reset).
    #[error("the QUIC connection ended: {0}")]
    Connection(ConnectionError),
    /// The peer reset the stream.
    #[error("the peer reset the stream (code {0})")]
    Reset(VarInt),
    /// The stream ended before the id was whole: how many of its 4 bytes came.
    #[error(
        "the stream ended after {got} of the id's 4 bytes (is the server at its maximum capacity?)"
    )]
    TruncatedId {
        /// Bytes of the id received.
        got: usize,
    },
    /// The stream ended before the client's opening byte.
    #[error("the stream ended before its opening byte")]
    NoHello,
    /// The client's opening byte was not `0x00`.
    #[error("the stream opened with {0:#04x}, not 0x00: not an np-quic client")]
    BadHello(u8),
    /// The tunnel-key proof of the connection did not verify: a wrong key, or a peer
    /// without one.
    #[error("the tunnel-key proof did not verify: a wrong key, or a peer without one")]
    BadProof,
    /// Any other I/O error.
    #[error("{0}")]
    Io(Arc<io::Error>),
    /// The step's deadline passed, or the pool evicted or closed it.
    #[error("timed out")]
    Timeout,
}

/// The TLS alert a QUIC transport error carries, if it is one (codes 0x100-0x1ff).
fn tls_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let c = u64::from(code);
    (0x100..0x200).contains(&c).then(|| (c - 0x100) as u8)
}

/// TLS alert 120, no_application_protocol: the peers share no ALPN.
const NO_APPLICATION_PROTOCOL: u8 = 120;

impl From<ConnectionError> for Cause {
    fn from(e: ConnectionError) -> Self {
        let code = match &e {
            ConnectionError::ConnectionClosed(c) => Some(c.error_code),
            ConnectionError::TransportError(t) => Some(t.code),
            _ => None,
        };
        match code.map(|c| (c, tls_alert(c))) {
            Some((_, Some(NO_APPLICATION_PROTOCOL))) => Self::WrongAlpn,
            Some((_, Some(_))) => Self::Tls(e.to_string()),
            Some((c, None)) if c == quinn::TransportErrorCode::CONNECTION_REFUSED => Self::Refused,
            _ => Self::Connection(e),
        }
    }
}

impl From<quinn::ReadError> for Cause {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::Reset(code) => Self::Reset(code),
            quinn::ReadError::ConnectionLost(c) => c.into(),
            e => Self::Io(Arc::new(io::Error::from(e))),
        }
    }
}

impl From<quinn::WriteError> for Cause {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::Stopped(code) => Self::Reset(code),
            quinn::WriteError::ConnectionLost(c) => c.into(),
            e => Self::Io(Arc::new(io::Error::from(e))),
        }
    }
}

impl From<quinn::ConnectError> for Cause {
    fn from(e: quinn::ConnectError) -> Self {
        Self::Io(Arc::new(io::Error::other(e)))
    }
}

/// The last background failure of a pool.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Failure {
    /// The step that failed.
    pub stage: Stage,
    /// Why.
    pub cause: Cause,
    /// The peer, when known.
    pub peer: Option<SocketAddr>,
    /// When (tokio's clock).
    pub at: Instant,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the last failure, at the {:?} step: {}",
            self.stage, self.cause
        )?;
        if let Some(p) = self.peer {
            write!(f, " ({p})")?;
        }
        Ok(())
    }
}

fn because(f: &Option<Box<Failure>>) -> String {
    f.as_ref().map(|f| format!("; {f}")).unwrap_or_default()
}

/// The last failure of a pool, written as a dial or handshake ends.
#[derive(Default)]
pub(crate) struct FailureLog(Mutex<Option<Failure>>);

impl FailureLog {
    pub(crate) fn fail(&self, stage: Stage, cause: Cause, peer: Option<SocketAddr>) {
        let at = crate::engine::now();
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Failure {
            stage,
            cause,
            peer,
            at,
        });
    }

    pub(crate) fn last(&self) -> Option<Failure> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last failure if it happened at or after `since`.
    pub(crate) fn since(&self, since: Instant) -> Option<Failure> {
        self.last().filter(|f| f.at >= since)
    }
}

/// The core's answer as the user sees it.
pub(crate) fn get_error(
    e: pool_core::GetFailure,
    want: pool_core::Want,
    log: &FailureLog,
    start: Instant,
) -> GetError {
    use pool_core::GetFailure as F;
    match (e, want) {
        (F::NotFound, pool_core::Want::Id(id)) => GetError::NotFound(id),
        (F::Closed, _) => GetError::Closed,
        (F::Unreachable, _) => GetError::Unreachable(log.last().map(Box::new)),
        _ => GetError::Timeout {
            waited: crate::engine::now().saturating_duration_since(start),
            failing: log.since(start).map(Box::new),
        },
    }
}
