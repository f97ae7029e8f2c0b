//! The tokio driver of the reverse-tunnel connection pool: [`ServerPool`] and
//! [`ClientPool`].
//!
//! The driver decides nothing that `pool-core` decides; it performs, with the driver
//! protocol written once in `pool_core::driver` (the same code pool-threads and the
//! simulator of pool-sim run). Each pool keeps its core machine behind one
//! short-held lock; a timer task arms one timer for the core's next deadline; dials and
//! handshakes run in their own tasks until they end or the core aborts them at their
//! deadline; every `get` is answered through a channel registered under its waiter
//! key, and a `get` dropped half-way gives its connection back instead of losing it.
//!
//! Time comes from tokio's clock, so `#[tokio::test(start_paused = true)]` tests drive
//! the core as well.
//!
//! ```no_run
//! use pool_tokio::{ClientPool, ServerPool};
//! use std::time::Duration;
//! # async fn f() -> Result<(), pool_tokio::PoolError> {
//! use pool_tokio::ClientConfig;
//! let at: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
//! let server = ServerPool::builder().bind(at).build()?;
//! let client = ClientPool::builder()
//!     .address(server.local_addr())
//!     .config(ClientConfig::builder().capacity(8, 64))
//!     .build()?;
//! let (id, on_server) = server.get_timeout(Duration::from_secs(1)).await?;
//! let on_client = client.get_timeout(id, Duration::from_secs(1)).await?; // same stream, other end
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// Settings that once overrode each other depending on the order of their setters
/// cannot be written together any more. Each `compile_fail` block below is a pair that
/// used to compile; the first block is the way to say each thing now, and compiles.
///
/// ```no_run
/// use pool_tokio::*;
/// # async fn f(server_cert: ServerTls, fp: Fingerprint) -> Result<(), BuildError> {
/// let at: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
/// let server = ServerPool::builder().bind(at).tls(ServeTls::Cert(server_cert)).build()?;
/// let client = ClientPool::builder()
///     .address(server.local_addr())
///     .config(
///         ClientConfig::builder()
///             .watch(IdleWatch::Starts)
///             .adapt(Adaptation::GoRules(GoRules::default())),
///     )
///     .tls(ClientTls::SelfSigned { pin: Some(fp), name: None })
///     .socket_options(SocketOptions { keepalive: Some(std::time::Duration::from_secs(9)), ..Default::default() })
///     .build()?;
/// # Ok(()) }
/// ```
///
/// `.tls(cert).tls_mode(TlsMode::Verified)` (failed, "missing a certificate"):
///
/// ```compile_fail,E0599
/// # fn f(cert: pool_tokio::ServerTls) {
/// let _ = pool_tokio::ServerPool::builder().tls(pool_tokio::ServeTls::Cert(cert)).tls_mode(pool_tokio::TlsMode::Verified);
/// # }
/// ```
///
/// A pin without TLS, or a CA file in mode 1 (refused by a check after the fact):
///
/// ```compile_fail,E0559
/// # fn f(fp: pool_tokio::Fingerprint) {
/// let _ = pool_tokio::ClientTls::Off { pin: Some(fp) };
/// # }
/// ```
///
/// ```compile_fail,E0559
/// let _ = pool_tokio::ClientTls::SelfSigned { pin: None, name: None, roots: pool_tokio::Roots::Web };
/// ```
///
/// `watch_idle(false)` beside `in_band(true)` (one of two bools over one state):
///
/// ```compile_fail,E0599
/// let _ = pool_tokio::ClientConfig::builder().watch(pool_tokio::IdleWatch::Starts).in_band(true);
/// ```
///
/// `interval_policy` under another policy than the Go rules (silently ignored):
///
/// ```compile_fail,E0599
/// let _ = pool_tokio::ClientConfig::builder().adapt(pool_tokio::Adaptation::default()).interval_policy(Default::default());
/// ```
///
/// `keepalive(d)` and `socket_options(o)` (the later one won):
///
/// ```compile_fail,E0599
/// let _ = pool_tokio::ClientPool::builder().socket_options(Default::default()).keepalive(std::time::Duration::from_secs(1));
/// ```
///
/// `single(true)` with a TLS mode, and `single_tls` (refused, ignored or honoured by
/// a third setter): single mode dials with the one `ClientTls` it is given.
///
/// ```compile_fail,E0599
/// let _ = pool_tokio::ClientPool::builder().tls(pool_tokio::ClientTls::Off).single_tls(true);
/// ```
#[cfg(doctest)]
struct OrderIndependence;

mod auth;
mod builder;
mod client;
mod conn;
mod dialer;
mod engine;
mod error;
mod failures;
mod handle;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod rt;
mod server;
mod stats;
pub mod tls;
#[cfg(target_os = "linux")]
mod watch;

pub use builder::{ClientSide, PoolBuilder, ServerSide, Side};
pub use client::{ClientPool, ClientPoolBuilder};
pub use conn::{PoolConn, PoolStream};
pub use dialer::{Dialer, ServerAddr, TcpDialer};
pub use error::{BuildError, Cause, Failure, GetError, PoolError};
pub use handle::PoolHandle;
pub use pool_core::{
    Adapt, Adaptation, AdmissionLimits, CapacityPolicy, ClientConfig, ClientConfigBuilder,
    ConfigError, ConnId, Counters, Decision, Fraction, GoRules, IdForm, IdleWatch, IntervalPolicy,
    IntoConfig, Mode, Observed, OfferedDemand, Refill, RoundInput, ServerConfig,
    ServerConfigBuilder, Stage, Status, Tracking, Trim, START, WATCHED_SWEEP,
};
pub use pool_net::{FilterError, IpFilter, Liveness, SocketOptions, INHERITED_AT_ACCEPT};
pub use pool_tls::{
    ClientTls, Fingerprint, KeyError, Roots, ServeTls, ServerTls, TlsError, TlsMode, TunnelKey,
};
/// Re-export of `rustls`, so users name the same version the pools are built with.
pub use rustls;
pub use server::{Listen, ServerPool, ServerPoolBuilder};
pub use stats::Stats;
pub use tls::TlsConn;

/// Compile-time proof that the pools, their connections and the futures of their
/// async methods can move across threads (a multi-threaded runtime's `tokio::spawn`
/// needs `Send`), and that the pools and `PoolConn` can be shared (`Sync`). A change
/// that held a `MutexGuard` or an `Rc` across an `.await` fails the build here, not in
/// a user's `spawn`.
const _: fn(&ClientPool, &ServerPool) = |client, server| {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ClientPool>();
    send_sync::<ServerPool>();
    send_sync::<PoolConn>();
    send_sync::<PoolStream>();
    send_sync::<PoolHandle<pool_core::ClientMachine<PoolConn>>>();
    send_sync::<PoolHandle<pool_core::ServerMachine<PoolConn>>>();
    send_sync::<Stats>();
    send_sync::<PoolError>();

    let id = ConnId::from_random([0; 4]);
    let timeout = std::time::Duration::ZERO;
    send(&client.get(id));
    send(&client.get_timeout(id, timeout));
    send(&client.get_any());
    send(&client.get_any_timeout(timeout));
    send(&client.accept_timeout(timeout));
    send(&client.close());
    send(&client.wait_idle(1, timeout));
    send(&server.get());
    send(&server.get_timeout(timeout));
    send(&server.start_with(&[], timeout));
    send(&server.close());
};
