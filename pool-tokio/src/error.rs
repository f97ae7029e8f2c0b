//! The errors a pool user sees, split by operation: building a pool, and getting a
//! connection. Neither is ever a panic or a `None`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_core::{ConfigError, ConnId, Stage};

/// Why `build()` failed: the settings, or the machine the pool was built on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A bad setting.
    #[error("bad configuration: {0}")]
    Config(#[from] ConfigError),
    /// A client-IP filter entry that does not parse, or can never match.
    #[error("bad client-IP filter: {0}")]
    Filter(#[from] pool_net::FilterError),
    /// A TLS setting that cannot work (a missing certificate file, a bad mode...).
    #[error("TLS setup: {0}")]
    Tls(#[from] pool_tls::TlsError),
    /// A required setting was not given.
    #[error("missing setting: {0}")]
    Missing(&'static str),
    /// The pool was built outside a tokio runtime.
    #[error("no tokio runtime: build the pool from inside one")]
    NoRuntime,
    /// The system's secure random generator failed, so no unpredictable ids could be
    /// drawn; the pool was not built.
    #[error("the system's secure random generator failed")]
    Random,
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

/// Why a get returned no connection. When background dials or handshakes are failing,
/// the error carries the last [`Failure`], so a wrong address, pin or TLS mode names
/// itself instead of showing as a bare timeout.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// The timeout passed with nothing to hand out.
    #[error("get timed out: no connection in {}{}{}", show(*.waited), because(.failing), no_client(.unreached))]
    Timeout {
        /// How long the get waited.
        waited: Duration,
        /// The run of failures under way when it gave up, if any.
        failing: Option<Box<Failure>>,
        /// A server pool's listening address, when no client has ever connected to
        /// it (a client pool dialing another address or port, or not started).
        unreached: Option<SocketAddr>,
    },
    /// Nothing can succeed: the pool has never made a connection and every recent dial
    /// failed (`fail_fast`, on by default). Answered within one backoff step.
    #[error("no connection can be made: {0}")]
    Unreachable(Box<Failure>),
    /// A get by id for an id that is not idle and that no handshake in flight can
    /// produce.
    #[error("no connection with id {0}")]
    NotFound(ConnId),
    /// The pool is closed (or was dropped).
    #[error("pool is closed")]
    Closed,
}

impl GetError {
    /// The core's answer as the user sees it: a timeout names how long it waited and
    /// what was failing meanwhile (`failing`, asked only when needed).
    pub(crate) fn from_core(
        e: pool_core::GetFailure,
        want: pool_core::Want,
        failing: impl FnOnce() -> Option<Box<Failure>>,
        start: Instant,
        unreached: Option<SocketAddr>,
    ) -> Self {
        use pool_core::GetFailure as F;
        match (e, want) {
            (F::NotFound, pool_core::Want::Id(id)) => Self::NotFound(id),
            (F::Closed, _) => Self::Closed,
            (e, _) => match (e, failing()) {
                (F::Unreachable, Some(failing)) => Self::Unreachable(failing),
                (_, failing) => Self::Timeout {
                    waited: crate::rt::now().saturating_duration_since(start),
                    failing,
                    unreached,
                },
            },
        }
    }
}

/// Any error of this crate: a build error or a get error. Convenient for an
/// application's `?`; match on the inner error for the details.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// Building a pool failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A get failed.
    #[error(transparent)]
    Get(#[from] GetError),
    /// An I/O error in the application's own use of a connection (so that `?` works
    /// inside a session that returns this error). The pool itself never returns it.
    #[error(transparent)]
    Io(#[from] io::Error),
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

impl From<BuildError> for io::Error {
    fn from(e: BuildError) -> Self {
        let kind = match &e {
            BuildError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        Self::new(kind, e)
    }
}

impl From<PoolError> for io::Error {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Build(e) => e.into(),
            PoolError::Get(e) => e.into(),
            PoolError::Io(e) => e,
        }
    }
}

/// Why one dial or handshake failed: counted by stage in the core, logged at `debug`,
/// and kept as the pool's last [`Failure`].
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Cause {
    /// An I/O error (connection refused, reset, ...).
    #[error("{0}")]
    Io(Arc<io::Error>),
    /// The step's deadline passed.
    #[error("timed out")]
    Timeout,
    /// The TLS handshake failed (a pin mismatch, an unknown issuer, a wrong name...).
    #[error("{0}")]
    Tls(rustls::Error),
    /// The client's TLS handshake met plaintext: the server is not speaking TLS.
    #[error("the server does not speak TLS: is it mode 0? ({0})")]
    NotTls(rustls::Error),
    /// A server in mode 0 received a TLS ClientHello: the client speaks TLS.
    #[error("the client speaks TLS but this server is in mode 0: is the client in mode 1 or 2?")]
    ClientSpeaksTls,
    /// A mode-0 client's id read met a TLS record: the server speaks TLS.
    #[error("the server speaks TLS but this client is in mode 0: is the server in mode 1 or 2?")]
    ServerSpeaksTls,
    /// A client of a TLS server sent nothing for a while after connecting (a TLS client
    /// sends its hello at once), was told this server runs TLS, and gave up before the
    /// handshake deadline: a mode-0 client, most likely.
    #[error("the client sent no TLS hello and stayed silent: is it in mode 0 while this server is in mode 1 or 2?")]
    ClientSilent,
    /// The id on the wire was not an id.
    #[error("bad id: {0}")]
    Id(#[from] pool_core::IdError),
    /// The peer closed before the id was complete.
    #[error("the server closed the connection before the id was complete (does its client-IP filter allow this address? is it at its maximum capacity?)")]
    Eof,
    /// The server's client-IP filter refused the peer.
    #[error("refused by the client-IP filter")]
    Filtered,
    /// The tunnel-key proof was wrong.
    #[error("wrong tunnel-key proof")]
    BadProof,
    /// The handshake was aborted: a newer connection evicted it, or the pool closed.
    #[error("evicted by a newer connection, or the pool closed")]
    Evicted,
}

impl From<io::Error> for Cause {
    /// Keeps a TLS error a TLS error: tokio-rustls wraps rustls's errors in
    /// `io::Error`, and the cause would be lost as text.
    fn from(e: io::Error) -> Self {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return match tls {
                rustls::Error::InvalidMessage(_) => Self::NotTls(tls.clone()),
                _ => Self::Tls(tls.clone()),
            };
        }
        Self::Io(Arc::new(e))
    }
}

/// The crate-internal name of a step's error.
pub(crate) type StepError = Cause;

/// The last background failure of a pool: which step, why, against which peer, how
/// many in a row, and when.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Failure {
    /// The step that failed.
    pub stage: Stage,
    /// Why.
    pub cause: Cause,
    /// The peer, when known (the dialed address, or the accepted client).
    pub peer: Option<SocketAddr>,
    /// Failures in a row with no success since, this one included.
    pub in_a_row: u64,
    /// When it happened (tokio's clock).
    pub at: Instant,
    /// Which side saw it.
    pub(crate) client: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.client { "dial" } else { "handshake" };
        match self.in_a_row {
            1 => write!(f, "the last {what} failed")?,
            n => write!(f, "the last {n} {what}s failed")?,
        }
        write!(f, " at the {} step: {}", stage_name(self.stage), self.cause)?;
        if let Some(p) = self.peer {
            write!(f, " ({p})")?;
        }
        Ok(())
    }
}

fn stage_name(s: Stage) -> &'static str {
    match s {
        Stage::Connect => "connect",
        Stage::Tls => "TLS",
        Stage::Id => "id",
        Stage::Auth => "tunnel-key",
        Stage::Protocol => "protocol",
        _ => "handshake",
    }
}

/// A wait as a message prints it: `2s`, `1s 500ms` (humantime's form, as pool-core's
/// errors). Below a millisecond nobody reads the rest.
fn show(d: Duration) -> String {
    let d = if d >= Duration::from_millis(1) {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    } else {
        d
    };
    humantime::format_duration(d).to_string()
}

fn no_client(addr: &Option<SocketAddr>) -> String {
    addr.map(|a| {
        format!("; no client has connected to {a} yet (is the client pool dialing this address?)")
    })
    .unwrap_or_default()
}

fn because(f: &Option<Box<Failure>>) -> String {
    f.as_ref().map(|f| format!("; {f}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(waited: Duration) -> String {
        GetError::Timeout {
            waited,
            failing: None,
            unreached: None,
        }
        .to_string()
    }

    /// A wait prints as pool-core's durations do (`2s`, `2s 500ms`), never `2 s` beside
    /// `2.00 s`; what lies under a millisecond is not printed.
    #[test]
    fn a_wait_prints_as_the_core_prints_durations() {
        assert_eq!(
            timeout(Duration::from_secs(2)),
            "get timed out: no connection in 2s"
        );
        assert_eq!(
            timeout(Duration::from_micros(2_500_700)),
            "get timed out: no connection in 2s 500ms"
        );
    }
}
