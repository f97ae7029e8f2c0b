//! The errors a pool user sees.

use std::io;

use pool_core::{ConfigError, ConnId, GetError};

/// Everything that can go wrong in the public API. Never a panic, never `None`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A `get` waited its whole timeout and nothing came.
    #[error("get timed out: no connection became available")]
    GetTimeout,
    /// The pool is closed (or was dropped).
    #[error("pool is closed")]
    Closed,
    /// A `get` by id for an id that is not idle and that no handshake in flight can
    /// produce.
    #[error("no connection with id {0}")]
    NotFound(ConnId),
    /// A bad setting.
    #[error("bad configuration: {0}")]
    Config(#[from] ConfigError),
    /// A client-IP filter entry that does not parse.
    #[error("bad client-IP filter: {0}")]
    Filter(#[from] pool_net::FilterError),
    /// A TLS setting that cannot work (a missing certificate file, a bad mode...).
    #[error("TLS setup: {0}")]
    Tls(#[from] pool_tls::TlsError),
    /// A required setting was not given.
    #[error("missing setting: {0}")]
    Missing(&'static str),
    /// The system's secure random generator failed, so no unpredictable ids could be
    /// drawn; the pool was not built.
    #[error("the system's secure random generator failed")]
    Random,
    /// The pool was built outside a tokio runtime.
    #[error("no tokio runtime: build the pool from inside one")]
    NoRuntime,
    /// An I/O error while setting the pool up (binding the listener...).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl PoolError {
    pub(crate) fn from_get(e: GetError, id: Option<ConnId>) -> Self {
        match (e, id) {
            (GetError::Timeout, _) => Self::GetTimeout,
            (GetError::NotFound, Some(id)) => Self::NotFound(id),
            (GetError::NotFound, None) => Self::GetTimeout,
            (GetError::Closed, _) => Self::Closed,
            (_, _) => Self::Closed,
        }
    }
}

impl From<PoolError> for io::Error {
    fn from(e: PoolError) -> Self {
        let kind = match &e {
            PoolError::GetTimeout => io::ErrorKind::TimedOut,
            PoolError::Closed => io::ErrorKind::NotConnected,
            PoolError::NotFound(_) => io::ErrorKind::NotFound,
            PoolError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        Self::new(kind, e)
    }
}

/// Why one dial or handshake failed; reported to tracing and counted by stage.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("bad id: {0}")]
    Id(#[from] pool_core::IdError),
    #[error("peer closed before the id was complete")]
    Eof,
    #[error("wrong tunnel-key proof")]
    BadProof,
    #[error("evicted by a newer connection, or the pool closed")]
    Evicted,
}
