//! The builder both pools share: what every pool is told (its configuration, TLS,
//! socket options, get timeout, tunnel key, name) is set here, once; what only one
//! side has (where to dial, where to listen) is set in `client.rs` and `server.rs`.

use std::time::Duration;

use pool_core::{ClientConfig, ConfigError, IntoConfig, ServerConfig};
use pool_net::SocketOptions;
use pool_tls::{ClientTls, ServeTls, TunnelKey};

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ClientSide {}
    impl Sealed for super::ServerSide {}
}

/// The side a [`PoolBuilder`] builds: [`ClientSide`] or [`ServerSide`]. Sealed.
pub trait Side: sealed::Sealed + Default {
    /// The side's configuration: [`ClientConfig`] or [`ServerConfig`].
    type Config: Default + std::fmt::Debug;
    /// The side's TLS: [`ClientTls`] or [`ServeTls`].
    type Tls: Default + std::fmt::Debug;
}

/// What only a client pool is told: how to dial.
#[derive(Default)]
pub struct ClientSide {
    pub(crate) dialer: Option<std::sync::Arc<dyn crate::Dialer>>,
}

/// What only a server pool is told: where to listen, and whom to let in.
pub struct ServerSide {
    pub(crate) listen: Option<crate::Listen>,
    pub(crate) backlog: u32,
    pub(crate) filter: pool_net::IpFilter,
}

impl Default for ServerSide {
    fn default() -> Self {
        Self {
            listen: None,
            backlog: 1024,
            filter: pool_net::IpFilter::any(),
        }
    }
}

impl Side for ClientSide {
    type Config = ClientConfig;
    type Tls = ClientTls;
}

impl Side for ServerSide {
    type Config = ServerConfig;
    type Tls = ServeTls;
}

/// Builder of a pool: [`ClientPoolBuilder`](crate::ClientPoolBuilder) or
/// [`ServerPoolBuilder`](crate::ServerPoolBuilder). Each thing is set in one place,
/// and no setter changes what another set.
#[must_use]
pub struct PoolBuilder<S: Side> {
    pub(crate) config: Result<S::Config, ConfigError>,
    pub(crate) tls: S::Tls,
    pub(crate) socket: SocketOptions,
    pub(crate) get_timeout: Duration,
    pub(crate) key: Option<TunnelKey>,
    pub(crate) name: String,
    pub(crate) side: S,
}

impl<S: Side> Default for PoolBuilder<S> {
    fn default() -> Self {
        Self {
            config: Ok(S::Config::default()),
            tls: S::Tls::default(),
            socket: SocketOptions::default(),
            get_timeout: Duration::from_secs(5),
            key: None,
            name: "pool".into(),
            side: S::default(),
        }
    }
}

impl<S: Side> std::fmt::Debug for PoolBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("config", &self.config)
            .field("tls", &self.tls)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<S: Side> PoolBuilder<S> {
    /// The pool's settings: a [`ClientConfig`] or [`ServerConfig`], or its builder,
    /// whose errors `build` reports. A client's holds the capacity and interval bounds
    /// (Go: `minCap`, `maxCap`, `minIvl`, `maxIvl`), single or multi mode (Go:
    /// `isSingle`), parallelism, deadlines, id form, what idle connections are watched
    /// for (in-band starts among them), adaptation, sweep, idle age and fail-fast; a
    /// server's its maximum capacity (later Go releases: `maxCap`), admission limits,
    /// deadlines, id form, sweep, idle age, settle time and hang-up watch. Default:
    /// the configuration's `default()`.
    pub fn config(mut self, config: impl IntoConfig<S::Config>) -> Self {
        self.config = config.into_config();
        self
    }
    /// TLS (Go: `tlsCode`, with `hostname` on a client and `tlsConfig` on a server):
    /// a [`ClientTls`] (off, mode 1 with an optional pin, mode 2 with its roots, or a
    /// rustls configuration of your own; single mode dials with it too, and the Go
    /// package's single mode is plain) or a [`ServeTls`] (off, a generated self-signed
    /// certificate, a certificate of yours, or a rustls configuration). Default off.
    pub fn tls(mut self, tls: S::Tls) -> Self {
        self.tls = tls;
        self
    }
    /// Socket options, keep-alive among them (Go: `keepAlive`). A server sets them once
    /// on its listener where accepted sockets inherit them (Linux), else on each
    /// connection. Default: keep-alive 30 s, no-delay on.
    pub fn socket_options(mut self, o: SocketOptions) -> Self {
        self.socket = o;
        self
    }
    /// Timeout of the gets that take none (`get`, a client's `get_any` and `accept`, a
    /// server's `start`). Default 5 s.
    pub fn get_timeout(mut self, d: Duration) -> Self {
        self.get_timeout = d;
        self
    }
    /// Prove this key on every connection right after its id, in a mutual
    /// challenge-response over fresh nonces, bound to the TLS session in modes 1 and 2
    /// (`pool_tls::proof`, bytes in pool-tls's `PROTOCOL.md`). A server admits nothing
    /// else (the others are closed and counted as `auth_failures`, so a stranger who
    /// reaches the tunnel port never enters the pool), and its settle time, unless
    /// set, is zero ([`ServerConfig::keyed`]); a client drops a connection whose server
    /// fails its proof. Not part of the Go wire protocol: set it on both ends or on
    /// neither. Default none.
    pub fn tunnel_key(mut self, key: TunnelKey) -> Self {
        self.key = Some(key);
        self
    }
    /// The pool's name: the `name` label of its metrics (feature `metrics`), so that
    /// several pools in one process stay apart, and shown by `Debug`. Default `pool`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }
}
