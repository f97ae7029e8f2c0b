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
//! let server = ServerPool::builder().bind("127.0.0.1:0".parse().unwrap()).build()?;
//! let client = ClientPool::builder().address(server.local_addr()).capacity(8, 64).build()?;
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

mod auth;
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

/// The sweep interval of a pool whose hang-up watch is on (Linux, `watch_idle`, the
/// default) and whose sweep was not set: the OS reports dead peers, so the sweep is
/// left with what readiness cannot see (an idle age past `max_idle_age`, bytes that
/// must not be there), and a quiet pool of thousands costs next to nothing.
pub const WATCHED_SWEEP: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether a pool gets [`WATCHED_SWEEP`]: watched, its sweep not set by hand, and not
/// built to Go's rules.
fn watched_sweep(watch: bool, sweep_set: bool, go_normalized: bool) -> bool {
    cfg!(target_os = "linux") && watch && !sweep_set && !go_normalized
}

pub use client::{ClientPool, ClientPoolBuilder};
pub use conn::{PoolConn, PoolStream};
pub use dialer::{Dialer, ServerAddr, TcpDialer};
pub use error::{BuildError, Cause, Failure, GetError, PoolError};
pub use handle::PoolHandle;
pub use pool_core::{
    Adapt, Adaptation, CapacityPolicy, ConfigError, ConnId, Counters, Decision, Fraction, GoRules,
    IdForm, IntervalPolicy, Observed, OfferedDemand, Refill, RoundInput, Stage, Status, Tracking,
    Trim, START,
};
pub use pool_net::{FilterError, IpFilter, Liveness, SocketOptions, INHERITED_AT_ACCEPT};
pub use pool_tls::{Fingerprint, KeyError, ServerTls, TlsError, TlsMode, TunnelKey};
/// Re-export of `rustls`, so users name the same version the pools are built with.
pub use rustls;
pub use server::{ServerPool, ServerPoolBuilder};
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
    send(&client.close());
    send(&client.wait_idle(1, timeout));
    send(&server.get());
    send(&server.get_timeout(timeout));
    send(&server.close());
};
