//! How a client pool reaches the server.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Opens one TCP connection to the server pool. The pool sets keep-alive and no-delay
/// on it, then runs TLS and reads the id.
///
/// Plain TCP to an address is built in ([`TcpDialer`]); an async closure works too:
///
/// ```
/// use pool_tokio::Dialer;
/// use tokio::net::TcpStream;
/// fn takes(_: impl Dialer) {}
/// takes(|| async { TcpStream::connect("127.0.0.1:9").await });
/// ```
///
/// The type says TCP on purpose: the liveness probe and keep-alive need a TCP socket, so
/// a dialer cannot hand the pool something it would have to refuse later.
#[async_trait::async_trait]
pub trait Dialer: Send + Sync + 'static {
    /// Connects.
    async fn dial(&self) -> io::Result<TcpStream>;

    /// The address dialed, when there is one fixed address: failures name it.
    fn target(&self) -> Option<SocketAddr> {
        None
    }
}

#[async_trait::async_trait]
impl<F, Fut> Dialer for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<TcpStream>> + Send,
{
    async fn dial(&self) -> io::Result<TcpStream> {
        self().await
    }
}

/// Where a client pool dials: a socket address, or a `host:port` resolved again at
/// every dial (so a server that moves to another address is found, as Go's dialer
/// does). Made from a [`SocketAddr`] or a string; a string that is already an
/// `ip:port` is kept as the address, so failures name it.
///
/// ```
/// use pool_tokio::ServerAddr;
/// let a: ServerAddr = "127.0.0.1:10101".into();
/// assert_eq!(a, ServerAddr::Addr("127.0.0.1:10101".parse().unwrap()));
/// let h: ServerAddr = "tunnel.example:10101".into();
/// assert_eq!(h, ServerAddr::Host("tunnel.example:10101".into()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerAddr {
    /// A fixed socket address.
    Addr(SocketAddr),
    /// A `host:port`, resolved at every dial.
    Host(String),
}

impl From<SocketAddr> for ServerAddr {
    fn from(a: SocketAddr) -> Self {
        Self::Addr(a)
    }
}

impl From<&str> for ServerAddr {
    fn from(s: &str) -> Self {
        match s.parse() {
            Ok(a) => Self::Addr(a),
            Err(_) => Self::Host(s.to_owned()),
        }
    }
}

impl From<String> for ServerAddr {
    fn from(s: String) -> Self {
        match s.parse() {
            Ok(a) => Self::Addr(a),
            Err(_) => Self::Host(s),
        }
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Addr(a) => a.fmt(f),
            Self::Host(h) => f.write_str(h),
        }
    }
}

/// Dials a fixed address, or a `host:port` resolved at each dial.
#[derive(Clone, Debug)]
pub struct TcpDialer {
    target: ServerAddr,
}

impl TcpDialer {
    /// Dials `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self::to(addr)
    }

    /// Dials `host:port`, resolved at every dial (Go: the `dialer` resolving a name).
    pub fn host(host_port: impl Into<String>) -> Self {
        Self {
            target: ServerAddr::Host(host_port.into()),
        }
    }

    /// Dials `addr`: a socket address, or a `host:port` resolved at every dial.
    pub fn to(addr: impl Into<ServerAddr>) -> Self {
        Self {
            target: addr.into(),
        }
    }
}

#[async_trait::async_trait]
impl Dialer for TcpDialer {
    async fn dial(&self) -> io::Result<TcpStream> {
        match &self.target {
            ServerAddr::Addr(a) => TcpStream::connect(*a).await,
            ServerAddr::Host(h) => TcpStream::connect(h.as_str()).await,
        }
    }

    fn target(&self) -> Option<SocketAddr> {
        match &self.target {
            ServerAddr::Addr(a) => Some(*a),
            ServerAddr::Host(_) => None,
        }
    }
}
