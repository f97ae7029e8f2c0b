//! A client pool of the reverse-tunnel pool on plain `std` threads, with no async
//! runtime: the proof that `pool-core`, `pool-net` and `pool-tls` are enough to drive
//! the pool on a runtime of one's own.
//!
//! [`ThreadClientPool`] pairs with any server pool of the wire protocol (the tokio
//! `ServerPool`, the Go package). It decides nothing: the [`ClientMachine`] decides
//! when to dial, which connection a get receives, when to sweep and when to back off,
//! and pool-core's driver protocol (`pool_core::driver::Driver`, the same code
//! pool-tokio and the simulator run) performs it. What is left here is what threads
//! do differently, with three kinds of threads:
//!
//! - **one timer thread** runs the protocol's turn and sleeps on a condvar until the
//!   deadline it answers (or until an input brings an earlier one);
//! - **N dial workers** (N = the configured parallelism) take tickets from a channel,
//!   connect with `TcpStream::connect_timeout`, set the socket options of
//!   [`SocketOptions`], run TLS through rustls's blocking `StreamOwned` (as
//!   [`ClientTls`] says), read the id with the core's [`IdReader`](pool_core::IdReader)
//!   under the ticket's deadlines as socket timeouts, and report each ticket exactly
//!   once;
//! - **the callers of [`get`](ThreadClientPool::get)**, blocked on a per-get channel
//!   while they wait (the machine answers `Timeout` at the deadline); a candidate is
//!   probed by the caller with [`pool_net::probe`], with no lock held.
//!
//! `pool-core/DRIVING.md` walks through this crate as the worked example of driving
//! the core on another runtime.
//!
//! ```no_run
//! use pool_threads::ThreadClientPool;
//! use std::io::{Read, Write};
//! use std::time::Duration;
//! # fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = ThreadClientPool::builder("127.0.0.1:10101".parse()?).build()?;
//! # let id = "0a0b0c0d".parse()?;
//! // `id` came from the server side over the application's control channel.
//! let mut conn = pool.get(id, Duration::from_secs(2))?;
//! conn.write_all(b"hello")?;
//! pool.close();
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod conn;
mod dial;
mod engine;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use conn::ThreadConn;

pub use pool_core::{
    ClientConfig, ClientConfigBuilder, ConfigError, ConnId, Counters, GetFailure, IdleWatch, Mode,
    Status,
};
pub use pool_net::{Liveness, SocketOptions};
pub use pool_tls::{ClientTls, Roots, TlsMode};

use pool_core::{ClientMachine, IntoConfig, SeededRandom, Want};

use crate::dial::Dialing;
use crate::engine::{Inner, Threads};

/// Why a pool could not be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// A bad setting.
    Config(ConfigError),
    /// The secure generator that seeds the machine failed: no pool with guessable ids.
    Random,
    /// The TLS configuration or the host name.
    Tls(pool_tls::TlsError),
    /// A thread could not be started.
    Spawn(std::io::Error),
    /// In-band mode needs the OS to report bytes on idle connections (Linux `epoll`),
    /// and that watch could not be set up.
    InBand(std::io::Error),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "bad configuration: {e}"),
            Self::Random => f.write_str("the secure random generator failed"),
            Self::Tls(e) => write!(f, "TLS configuration: {e}"),
            Self::Spawn(e) => write!(f, "cannot start a pool thread: {e}"),
            Self::InBand(e) => write!(f, "in-band mode: cannot watch idle connections: {e}"),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Random => None,
            Self::Config(e) => Some(e),
            Self::Tls(e) => Some(e),
            Self::Spawn(e) | Self::InBand(e) => Some(e),
        }
    }
}

impl From<ConfigError> for BuildError {
    fn from(e: ConfigError) -> Self {
        Self::Config(e)
    }
}

impl From<pool_tls::TlsError> for BuildError {
    fn from(e: pool_tls::TlsError) -> Self {
        Self::Tls(e)
    }
}

/// Builder of a [`ThreadClientPool`]: the same [`ClientConfig`], [`ClientTls`] and
/// [`SocketOptions`] a pool-tokio `ClientPool` takes.
#[must_use]
#[derive(Debug)]
pub struct ThreadClientPoolBuilder {
    addr: SocketAddr,
    config: Result<ClientConfig, ConfigError>,
    tls: ClientTls,
    socket: SocketOptions,
}

impl ThreadClientPoolBuilder {
    /// The pool's settings: capacity, intervals, parallelism (also the number of
    /// dial workers), deadlines, id form, mode, watch, sweep. A [`ClientConfig`] or its
    /// builder, whose errors `build` reports. Default `ClientConfig::default()`.
    pub fn config(mut self, config: impl IntoConfig<ClientConfig>) -> Self {
        self.config = config.into_config();
        self
    }
    /// TLS: off, mode 1 with an optional pin, mode 2 with its roots, or a rustls
    /// configuration of your own. Default off. Single mode dials with it too, as a
    /// pool-tokio `ClientPool` does (the Go package's single mode is plain: leave it
    /// off).
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = tls;
        self
    }
    /// Socket options of every dialed stream, keep-alive among them. Default
    /// `SocketOptions::default()`.
    pub fn socket_options(mut self, o: SocketOptions) -> Self {
        self.socket = o;
        self
    }

    /// Seeds the machine from `pool_tls::secure_seed` and starts the driver and the
    /// dial workers.
    pub fn build(self) -> Result<ThreadClientPool, BuildError> {
        let config = self.config?.watched();
        let seed = pool_tls::secure_seed().map_err(|_| BuildError::Random)?;
        let workers = config.parallelism().max(1);
        let dialing = Dialing {
            addr: self.addr,
            socket: self.socket,
            tls: self.tls.build()?,
            id_form: config.id_form(),
        };
        let watch = config.watch();
        let m = ClientMachine::new(config, SeededRandom::from_seed(seed), Instant::now());
        #[cfg(target_os = "linux")]
        let hang_ups = match watch {
            IdleWatch::Starts => Some(pool_net::HangUps::with_bytes().map_err(BuildError::InBand)?),
            IdleWatch::HangUps => pool_net::HangUps::new().ok(),
            IdleWatch::Off => None,
        };
        #[cfg(not(target_os = "linux"))]
        let _ = watch;
        #[cfg(not(target_os = "linux"))]
        if watch == IdleWatch::Starts {
            return Err(BuildError::InBand(std::io::Error::other(
                "no readiness watch on this platform",
            )));
        }
        let (tx, tickets) = std::sync::mpsc::channel();
        let threads = Threads {
            alarm: pool_core::driver::Alarm::default(),
            dials: Mutex::new(Some(tx)),
            stopping: std::sync::atomic::AtomicBool::new(false),
            dialing,
            #[cfg(target_os = "linux")]
            hang_ups,
        };
        let inner = Inner {
            driver: pool_core::driver::Driver::new(m, threads),
        };
        let pool = ThreadClientPool {
            inner: Arc::new(inner),
            threads: Mutex::new(Vec::with_capacity(workers + 1)),
        };
        let tickets = Arc::new(Mutex::new(tickets));
        for i in 0..workers {
            let (inner, tickets) = (pool.inner.clone(), tickets.clone());
            pool.spawn(format!("pool-dial-{i}"), move || inner.work(&tickets))?;
        }
        let inner = pool.inner.clone();
        pool.spawn("pool-driver".into(), move || {
            inner.driver.run_blocking(&inner.driver.platform().alarm)
        })?;
        #[cfg(target_os = "linux")]
        {
            let inner = pool.inner.clone();
            pool.spawn("pool-hang-ups".into(), move || inner.watch_hang_ups())?;
        }
        Ok(pool)
    }
}

/// The client end of the pool, on plain threads. Share it with an `Arc`; it closes on
/// [`close`](Self::close) or when dropped.
pub struct ThreadClientPool {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ThreadClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadClientPool")
            .field("status", &self.status())
            .finish()
    }
}

impl ThreadClientPool {
    /// A builder dialing `addr`, with the defaults.
    pub fn builder(addr: SocketAddr) -> ThreadClientPoolBuilder {
        ThreadClientPoolBuilder {
            addr,
            config: Ok(ClientConfig::default()),
            tls: ClientTls::Off,
            socket: SocketOptions::default(),
        }
    }

    fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) -> Result<(), BuildError> {
        match std::thread::Builder::new().name(name).spawn(f) {
            Ok(h) => {
                self.threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(h);
                Ok(())
            }
            Err(e) => Err(BuildError::Spawn(e)), // dropping `self` closes what started
        }
    }

    /// The connection with `id`, blocking up to `timeout` while a dial in flight may
    /// still bring it (Go: `ClientGet`). It passed the liveness probe; no byte of it
    /// was read by the pool.
    pub fn get(&self, id: ConnId, timeout: Duration) -> Result<ThreadConn, GetFailure> {
        let got = self.inner.driver.get_blocking(Want::Id(id), timeout);
        got.map(|(_, c)| c)
    }

    /// Any live idle connection, oldest first; in single mode one is dialed at once
    /// when none is idle.
    pub fn get_any(&self, timeout: Duration) -> Result<ThreadConn, GetFailure> {
        let got = self.inner.driver.get_blocking(Want::Any, timeout);
        got.map(|(_, c)| c)
    }

    /// The next connection the server started a session on (in-band mode,
    /// [`IdleWatch::Starts`]),
    /// blocking up to `timeout`. Its start header is read and checked; the session's
    /// data follows unread. A connection that brings anything else within
    /// two seconds ([`pool_core::driver::START_WAIT`]) is closed and counted (`starts_dropped`).
    pub fn accept(&self, timeout: Duration) -> Result<ThreadConn, GetFailure> {
        let read = engine::read_start;
        let got = self.inner.driver.accept_blocking(timeout, read);
        got.map(|(_, c)| c)
    }

    /// Idle connections ready to hand out (Go: `Active`).
    pub fn idle(&self) -> usize {
        self.inner.driver.read(|m| m.idle())
    }

    /// The status snapshot.
    pub fn status(&self) -> Status {
        self.inner.driver.read(ClientMachine::status)
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.inner.driver.read(|m| m.counters())
    }

    /// Closes the pool and returns once every thread of it has ended: waiting gets
    /// fail with [`GetFailure::Closed`], idle connections are dropped, workers finish the
    /// dial they are in (bounded by its deadlines) and drop its connection. Idempotent.
    pub fn close(&self) {
        self.inner.shut();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for ThreadClientPool {
    fn drop(&mut self) {
        self.close();
    }
}
