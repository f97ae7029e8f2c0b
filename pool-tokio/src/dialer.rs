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

/// Dials a fixed address, or a `host:port` resolved at each dial.
#[derive(Clone, Debug)]
pub struct TcpDialer {
    target: Target,
}

#[derive(Clone, Debug)]
enum Target {
    Addr(SocketAddr),
    Host(String),
}

impl TcpDialer {
    /// Dials `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            target: Target::Addr(addr),
        }
    }

    /// Dials `host:port`, resolved at every dial (Go: the `dialer` resolving a name).
    pub fn host(host_port: impl Into<String>) -> Self {
        Self {
            target: Target::Host(host_port.into()),
        }
    }
}

#[async_trait::async_trait]
impl Dialer for TcpDialer {
    async fn dial(&self) -> io::Result<TcpStream> {
        match &self.target {
            Target::Addr(a) => TcpStream::connect(*a).await,
            Target::Host(h) => TcpStream::connect(h.as_str()).await,
        }
    }

    fn target(&self) -> Option<SocketAddr> {
        match &self.target {
            Target::Addr(a) => Some(*a),
            Target::Host(_) => None,
        }
    }
}
