//! A loopback pair: a server pool and a client pool wired together, in any TLS mode
//! and id form, optionally through a [`FaultProxy`].
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use pool_testkit::pair::{Pair, PairBuilder};
//! use pool_tokio::TlsMode;
//! use std::time::Duration;
//! let pair = PairBuilder::new()
//!     .tls(TlsMode::SelfSigned)
//!     .capacity(4, 16)
//!     .server(|b| b.handshake_timeout(Duration::from_secs(1)))
//!     .build()
//!     .await?;
//! let (_id, mut s, mut c) = pair.take(Duration::from_secs(5)).await?;
//! Pair::check_roundtrip(&mut s, &mut c, b"hello").await?;
//! pair.close().await;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use pool_tls::TestCa;
use pool_tokio::{
    ClientConfig, ClientConfigBuilder, ClientPool, ClientTls, ConnId, GetError, IdForm, PoolConn,
    Roots, ServeTls, ServerConfig, ServerConfigBuilder, ServerPool, TlsMode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proxy::{FaultProxy, Script};

type ServerFn = Box<dyn FnOnce(ServerConfigBuilder) -> ServerConfigBuilder + Send>;
type ClientFn = Box<dyn FnOnce(ClientConfigBuilder) -> ClientConfigBuilder + Send>;

/// The host name on the mode-2 test certificate.
pub const TEST_HOST: &str = "pool.test";

/// Builds a [`Pair`]. Defaults: plain TCP, hex ids, capacity 4..16, interval
/// 100 ms..1 s, parallelism 8, no proxy, server on `127.0.0.1:0`.
#[must_use]
pub struct PairBuilder {
    tls: TlsMode,
    id_form: IdForm,
    capacity: (usize, usize),
    interval: (Duration, Duration),
    parallelism: usize,
    bind: SocketAddr,
    script: Option<Script>,
    server_fn: Option<ServerFn>,
    client_fn: Option<ClientFn>,
}

impl std::fmt::Debug for PairBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairBuilder")
            .field("tls", &self.tls)
            .field("id_form", &self.id_form)
            .field("capacity", &self.capacity)
            .field("interval", &self.interval)
            .field("parallelism", &self.parallelism)
            .field("bind", &self.bind)
            .field("script", &self.script)
            .finish_non_exhaustive()
    }
}

impl Default for PairBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PairBuilder {
    /// The defaults.
    pub fn new() -> Self {
        Self {
            tls: TlsMode::Off,
            id_form: IdForm::Hex8,
            capacity: (4, 16),
            interval: (Duration::from_millis(100), Duration::from_secs(1)),
            parallelism: 8,
            bind: "127.0.0.1:0".parse().expect("literal address"),
            script: None,
            server_fn: None,
            client_fn: None,
        }
    }

    /// TLS mode of both ends. Mode 1: a self-signed certificate, pinned by the client.
    /// Mode 2: a [`TestCa`] leaf for [`TEST_HOST`], verified by the client.
    pub fn tls(mut self, mode: TlsMode) -> Self {
        self.tls = mode;
        self
    }

    /// Wire form of the id on both ends.
    pub fn id_form(mut self, form: IdForm) -> Self {
        self.id_form = form;
        self
    }

    /// Client capacity bounds.
    pub fn capacity(mut self, min: usize, max: usize) -> Self {
        self.capacity = (min, max);
        self
    }

    /// Client refill interval bounds.
    pub fn interval(mut self, min: Duration, max: Duration) -> Self {
        self.interval = (min, max);
        self
    }

    /// Client dials in flight at most.
    pub fn parallelism(mut self, n: usize) -> Self {
        self.parallelism = n;
        self
    }

    /// Where the server listens (a loopback address; port 0 for any).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// Puts a [`FaultProxy`] with this script between the client and the server.
    pub fn through_proxy(mut self, script: Script) -> Self {
        self.script = Some(script);
        self
    }

    /// Last word on the server's configuration (applied after the pair's own
    /// settings).
    pub fn server(
        mut self,
        f: impl FnOnce(ServerConfigBuilder) -> ServerConfigBuilder + Send + 'static,
    ) -> Self {
        self.server_fn = Some(Box::new(f));
        self
    }

    /// Last word on the client's configuration (applied after the pair's own
    /// settings).
    pub fn client(
        mut self,
        f: impl FnOnce(ClientConfigBuilder) -> ClientConfigBuilder + Send + 'static,
    ) -> Self {
        self.client_fn = Some(Box::new(f));
        self
    }

    /// Starts the server, the proxy if any, then the client. Call from inside a tokio
    /// runtime.
    pub async fn build(self) -> io::Result<Pair> {
        let mut config = ServerConfig::builder().id_form(self.id_form);
        if let Some(f) = self.server_fn {
            config = f(config);
        }
        let mut ca_der = None;
        let tls = match self.tls {
            TlsMode::Off => ServeTls::Off,
            TlsMode::SelfSigned => ServeTls::self_signed(),
            TlsMode::Verified => {
                let ca = TestCa::new().map_err(io::Error::other)?;
                let leaf = ca.leaf(&[TEST_HOST], false).map_err(io::Error::other)?;
                ca_der = Some(ca.ca_der());
                ServeTls::Cert(leaf)
            }
        };
        let server = ServerPool::builder()
            .bind(self.bind)
            .config(config)
            .tls(tls)
            .build()?;
        let proxy = match self.script {
            Some(script) => Some(FaultProxy::start(server.local_addr(), script).await?),
            None => None,
        };
        let target = proxy.as_ref().map_or(server.local_addr(), FaultProxy::addr);
        let mut config = ClientConfig::builder()
            .id_form(self.id_form)
            .capacity(self.capacity.0, self.capacity.1)
            .interval(self.interval.0, self.interval.1)
            .parallelism(self.parallelism);
        if let Some(f) = self.client_fn {
            config = f(config);
        }
        let tls = match self.tls {
            TlsMode::Off => ClientTls::Off,
            TlsMode::SelfSigned => ClientTls::SelfSigned {
                pin: server.fingerprint(),
                name: None,
            },
            TlsMode::Verified => ClientTls::Verified {
                roots: Roots::CaDer(ca_der.unwrap_or_default()),
                name: Some(TEST_HOST.into()),
            },
        };
        let cb = ClientPool::builder()
            .address(target)
            .config(config)
            .tls(tls);
        let client = match cb.build() {
            Ok(c) => c,
            Err(e) => {
                if let Some(p) = &proxy {
                    p.close().await;
                }
                server.close().await;
                return Err(e.into());
            }
        };
        Ok(Pair {
            server,
            client,
            proxy,
        })
    }
}

/// A server pool and a client pool that dials it (maybe through a proxy).
#[derive(Debug)]
pub struct Pair {
    /// The server end.
    pub server: ServerPool,
    /// The client end.
    pub client: ClientPool,
    /// The fault proxy between them, if the builder asked for one.
    pub proxy: Option<FaultProxy>,
}

/// How long [`Pair::check_roundtrip`] may take at most.
pub const ROUNDTRIP_TIMEOUT: Duration = Duration::from_secs(10);

impl Pair {
    /// Takes one pair: a server `get`, then the client `get` of the same id, each
    /// waiting up to `timeout`. Both connections carry the id.
    pub async fn take(&self, timeout: Duration) -> Result<(ConnId, PoolConn, PoolConn), GetError> {
        let (id, s) = self.server.get_timeout(timeout).await?;
        let c = self.client.get_timeout(id, timeout).await?;
        Ok((id, s, c))
    }

    /// Sends `bytes` from `s` to `c`, then the same bytes from `c` to `s`, reading
    /// while writing, and checks that they arrive unchanged and that both ends carry
    /// the same id. Fails with `InvalidData` on a mismatch and `TimedOut` after
    /// [`ROUNDTRIP_TIMEOUT`].
    pub async fn check_roundtrip(
        s: &mut PoolConn,
        c: &mut PoolConn,
        bytes: &[u8],
    ) -> io::Result<()> {
        if s.id() != c.id() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("ids differ: server {} client {}", s.id(), c.id()),
            ));
        }
        let work = async {
            one_way(s, c, bytes).await?;
            one_way(c, s, bytes).await
        };
        match tokio::time::timeout(ROUNDTRIP_TIMEOUT, work).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "round trip timed out",
            )),
        }
    }

    /// Closes the client, the proxy and the server, in that order, waiting for each.
    pub async fn close(&self) {
        self.client.close().await;
        if let Some(p) = &self.proxy {
            p.close().await;
        }
        self.server.close().await;
    }
}

async fn one_way(from: &mut PoolConn, to: &mut PoolConn, bytes: &[u8]) -> io::Result<()> {
    let write = async {
        from.write_all(bytes).await?;
        from.flush().await
    };
    let read = async {
        let mut got = vec![0u8; bytes.len()];
        to.read_exact(&mut got).await?;
        Ok::<_, io::Error>(got)
    };
    let (w, r) = tokio::join!(write, read);
    w?;
    if r? != bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bytes changed on the way",
        ));
    }
    Ok(())
}

/// Open file descriptors of this process (entries of `/proc/self/fd`, minus the one
/// the listing itself holds), for leak checks. Zero where `/proc` is missing.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes: whether it held. The
/// bounded wait every test here uses instead of a bare sleep.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Checks that a pair is healthy: the client fills to `min_idle`, then `n` pairs are
/// taken and each carries `size` bytes both ways unchanged. The error says which pair
/// failed and how.
pub async fn verify_healthy(
    pair: &Pair,
    min_idle: usize,
    n: usize,
    size: usize,
) -> Result<(), String> {
    if !pair
        .client
        .wait_idle(min_idle, Duration::from_secs(10))
        .await
    {
        return Err(format!(
            "client did not refill to {min_idle} (idle {}, stats {:?})",
            pair.client.active(),
            pair.client.stats()
        ));
    }
    let mut rng = crate::rng::SplitMix64::new(n as u64 ^ size as u64);
    for i in 0..n {
        let (_id, mut s, mut c) = pair.take(Duration::from_secs(5)).await.map_err(|e| {
            format!(
                "pair {i}: take failed: {e}; server {:?} client {:?}",
                pair.server.stats(),
                pair.client.stats()
            )
        })?;
        let mut bytes = vec![0u8; size];
        rng.fill(&mut bytes);
        Pair::check_roundtrip(&mut s, &mut c, &bytes)
            .await
            .map_err(|e| format!("pair {i}: round trip failed: {e}"))?;
    }
    Ok(())
}
