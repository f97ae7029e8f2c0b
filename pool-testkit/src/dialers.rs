//! Fake [`Dialer`]s: failing, flaky, slow, hanging, and a counting wrapper.
//!
//! Every dialer is cheap to clone and its clones share their counters, so a test keeps
//! one clone to read [`attempts`](FailN::attempts) while the pool owns another.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_tokio::Dialer;
use tokio::net::TcpStream;

use crate::rng::SplitMix64;

fn refused(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, what.to_owned())
}

/// Fails the first `n` dials with `ConnectionRefused`, then dials `addr`.
#[derive(Clone, Debug)]
pub struct FailN {
    n: u64,
    addr: SocketAddr,
    attempts: Arc<AtomicU64>,
}

impl FailN {
    /// Fails `n` times, then dials `addr`.
    pub fn new(n: u64, addr: SocketAddr) -> Self {
        Self {
            n,
            addr,
            attempts: Arc::default(),
        }
    }
    /// Dials so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }
}

#[async_trait::async_trait]
impl Dialer for FailN {
    async fn dial(&self) -> io::Result<TcpStream> {
        let k = self.attempts.fetch_add(1, Ordering::AcqRel);
        if k < self.n {
            return Err(refused("FailN: scripted failure"));
        }
        TcpStream::connect(self.addr).await
    }
}

/// Fails each dial with probability `p` (seeded), else dials `addr`.
#[derive(Clone, Debug)]
pub struct Flaky {
    p: f64,
    addr: SocketAddr,
    rng: Arc<Mutex<SplitMix64>>,
    attempts: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

impl Flaky {
    /// Fails with probability `p`, the draws fixed by `seed`.
    pub fn new(p: f64, seed: u64, addr: SocketAddr) -> Self {
        Self {
            p,
            addr,
            rng: Arc::new(Mutex::new(SplitMix64::new(seed))),
            attempts: Arc::default(),
            failures: Arc::default(),
        }
    }
    /// Dials so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }
    /// Dials failed on purpose so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Acquire)
    }
}

#[async_trait::async_trait]
impl Dialer for Flaky {
    async fn dial(&self) -> io::Result<TcpStream> {
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let fail = self
            .rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .chance(self.p);
        if fail {
            self.failures.fetch_add(1, Ordering::AcqRel);
            return Err(refused("Flaky: drawn failure"));
        }
        TcpStream::connect(self.addr).await
    }
}

/// Waits `delay`, then dials `addr`.
#[derive(Clone, Debug)]
pub struct Slow {
    delay: Duration,
    addr: SocketAddr,
    attempts: Arc<AtomicU64>,
}

impl Slow {
    /// Waits `delay` before each dial of `addr`.
    pub fn new(delay: Duration, addr: SocketAddr) -> Self {
        Self {
            delay,
            addr,
            attempts: Arc::default(),
        }
    }
    /// Dials so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }
}

#[async_trait::async_trait]
impl Dialer for Slow {
    async fn dial(&self) -> io::Result<TcpStream> {
        self.attempts.fetch_add(1, Ordering::AcqRel);
        tokio::time::sleep(self.delay).await;
        TcpStream::connect(self.addr).await
    }
}

/// Never finishes a dial: only the pool's handshake deadline ends it.
#[derive(Clone, Debug, Default)]
pub struct Never {
    attempts: Arc<AtomicU64>,
}

impl Never {
    /// A dialer that hangs.
    pub fn new() -> Self {
        Self::default()
    }
    /// Dials so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }
}

#[async_trait::async_trait]
impl Dialer for Never {
    async fn dial(&self) -> io::Result<TcpStream> {
        self.attempts.fetch_add(1, Ordering::AcqRel);
        std::future::pending().await
    }
}

/// Hangs on the first `n` dials (only the pool's deadline ends them), then dials
/// `addr`: [`Never`] that heals.
#[derive(Clone, Debug)]
pub struct HangN {
    n: u64,
    addr: SocketAddr,
    attempts: Arc<AtomicU64>,
}

impl HangN {
    /// Hangs `n` times, then dials `addr`.
    pub fn new(n: u64, addr: SocketAddr) -> Self {
        Self {
            n,
            addr,
            attempts: Arc::default(),
        }
    }
    /// Dials so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Acquire)
    }
}

#[async_trait::async_trait]
impl Dialer for HangN {
    async fn dial(&self) -> io::Result<TcpStream> {
        let k = self.attempts.fetch_add(1, Ordering::AcqRel);
        if k < self.n {
            std::future::pending::<()>().await;
        }
        TcpStream::connect(self.addr).await
    }
}

/// Wraps a dialer and records the instant of every attempt.
#[derive(Debug)]
pub struct Counting<D> {
    inner: Arc<D>,
    times: Arc<Mutex<Vec<Instant>>>,
}

impl<D> Clone for Counting<D> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            times: self.times.clone(),
        }
    }
}

impl<D: Dialer> Counting<D> {
    /// Counts the dials of `inner`.
    pub fn new(inner: D) -> Self {
        Self {
            inner: Arc::new(inner),
            times: Arc::default(),
        }
    }
    /// Dials so far.
    pub fn attempts(&self) -> usize {
        self.times.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
    /// When each dial started.
    pub fn times(&self) -> Vec<Instant> {
        self.times.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Dials that started in `[from, to)`.
    pub fn attempts_between(&self, from: Instant, to: Instant) -> usize {
        self.times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count()
    }
}

#[async_trait::async_trait]
impl<D: Dialer> Dialer for Counting<D> {
    async fn dial(&self) -> io::Result<TcpStream> {
        self.times
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Instant::now());
        self.inner.dial().await
    }
}
