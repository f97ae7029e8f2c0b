//! The tokio driver of the reverse-tunnel connection pool: [`ServerPool`] and
//! [`ClientPool`].
//!
//! The driver decides nothing that `pool-core` decides; it performs. Each pool keeps
//! its core machine behind one short-held lock; a driver task arms one timer for the
//! core's next deadline; dials and handshakes run in their own tasks under deadlines
//! the core set; every `get` is answered through a channel registered under its waiter
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
mod rt;
mod server;
mod stats;

pub use client::{ClientPool, ClientPoolBuilder};
pub use conn::PoolConn;
pub use dialer::{Dialer, TcpDialer};
pub use engine::PoolHandle;
pub use error::{BuildError, Cause, Failure, GetError, PoolError};
pub use pool_core::{
    Adaptation, CapacityPolicy, ConfigError, ConnId, Counters, Fraction, IdForm, IntervalPolicy,
    Stage, Status,
};
pub use pool_net::{FilterError, IpFilter, Liveness, SocketOptions};
pub use pool_tls::{Fingerprint, KeyError, ServerTls, TlsError, TlsMode, TunnelKey};
/// Re-export of `rustls`, so users name the same version the pools are built with.
pub use rustls;
pub use server::{ServerPool, ServerPoolBuilder};
pub use stats::Stats;
