//! The server side: the pool on the tunnel port, the control port, the public port.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use pool_tokio::{IpFilter, ServerPool, TunnelKey};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::config::{CandidateLimits, RelayLimits, ServerConfig, Timeouts, HANDSHAKE_SLOTS};
use crate::protocol::{unix_ms, Session};
use crate::sources::SourceLimits;
use crate::stats::{ServerSnapshot, ServerStats};
use crate::BoxError;

mod control;
mod public;
mod session;

use session::user_session;

/// The active control connection, as user sessions see it.
#[derive(Clone)]
struct Control {
    gen: u64,
    /// Closed (its sender dropped) when this control connection ends.
    gone: watch::Receiver<()>,
}

struct Shared {
    pool: ServerPool,
    key: TunnelKey,
    t: Timeouts,
    relay: RelayLimits,
    stats: ServerStats,
    /// Users' bytes held in memory for a replay, in all (see [`session::BUFFER_BUDGET`]).
    buffered: std::sync::atomic::AtomicUsize,
    control: watch::Sender<Option<Control>>,
    next_gen: AtomicU64,
    /// The session tag of the client process whose control connection came last.
    session: std::sync::Mutex<Option<Session>>,
}

/// A running server side. Dropping it stops its tasks; [`shutdown`](Self::shutdown)
/// also waits for the pool to close.
pub struct ServerHandle {
    shared: Arc<Shared>,
    tunnel: SocketAddr,
    public: SocketAddr,
    control: SocketAddr,
    /// Runs the accept loops; when one ends, it stops them all (see `failed`).
    tasks: Vec<JoinHandle<()>>,
    failed: watch::Receiver<Option<String>>,
}

impl ServerHandle {
    /// The pool's address (where clients dial).
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel
    }
    /// Where users connect.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }
    /// Where the control connection comes in.
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }
    /// The server pool.
    pub fn pool(&self) -> &ServerPool {
        &self.shared.pool
    }
    /// The key in use.
    pub fn key(&self) -> &TunnelKey {
        &self.shared.key
    }
    /// Counters.
    pub fn stats(&self) -> ServerSnapshot {
        self.shared.stats.snapshot()
    }
    /// Whether an authenticated control connection is active.
    pub fn control_up(&self) -> bool {
        self.shared.control.borrow().is_some()
    }
    /// Waits until a control connection is active (`up`) or none is, or `within` passes.
    pub async fn wait_control_state(&self, up: bool, within: Duration) -> bool {
        let mut rx = self.shared.control.subscribe();
        let ok = matches!(
            timeout(within, rx.wait_for(|c| c.is_some() == up)).await,
            Ok(Ok(_))
        );
        ok
    }
    /// Waits until a control connection is active, or `within` passes.
    pub async fn wait_control(&self, within: Duration) -> bool {
        self.wait_control_state(true, within).await
    }
    /// Waits until a task of the server side died, and answers which and why. Its
    /// accept loops never end on their own: one that ends has panicked, and the others
    /// are stopped with it, so that the server is never half alive (its public port
    /// refusing everybody while control still runs). A process running the server
    /// should exit. Never ends after [`shutdown`](Self::shutdown) began.
    pub async fn failed(&self) -> String {
        crate::tasks::failure(&self.failed).await
    }
    /// Stops every task (sessions included) and closes the pool.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        self.shared.control.send_replace(None);
        self.shared.pool.close().await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds the three ports and starts the server side.
pub async fn start_server(cfg: ServerConfig) -> Result<ServerHandle, BoxError> {
    cfg.check()?;
    let started_ms = unix_ms();
    let filter = match &cfg.client_ip {
        Some(spec) => IpFilter::parse(spec).map_err(|e| format!("--client-ip: {e}"))?,
        None => IpFilter::any(),
    };
    let mut b = ServerPool::builder()
        .bind(cfg.tunnel)
        .max_capacity(cfg.max_capacity)
        .handshake_timeout(cfg.pool_handshake)
        // At most a quarter of the descriptors, whatever the limit.
        .max_handshakes(crate::limits::within_descriptors(HANDSHAKE_SLOTS, 4))
        .tunnel_key(cfg.key.clone())
        .filter(filter.clone());
    if let Some(tls) = &cfg.tls {
        b = b.tls(tls.clone());
    }
    let pool = b
        .build()
        .map_err(|e| format!("tunnel {}: {e}", cfg.tunnel))?;
    let tunnel = pool.local_addr();
    let control_addr = match cfg.control {
        Some(a) => a,
        None if tunnel.port() == 0 => tunnel,
        None => {
            let port = tunnel
                .port()
                .checked_add(1)
                .ok_or("tunnel port 65535 has no `port + 1` control port: give --control ADDR")?;
            SocketAddr::new(tunnel.ip(), port)
        }
    };
    let control_l = TcpListener::bind(control_addr)
        .await
        .map_err(|e| format!("control {control_addr}: {e}"))?;
    let public_l = TcpListener::bind(cfg.public)
        .await
        .map_err(|e| format!("public {}: {e}", cfg.public))?;
    let acceptor = match &cfg.tls {
        Some(t) => Some(TlsAcceptor::from(t.config()?)),
        None => None,
    };
    let shared = Arc::new(Shared {
        pool,
        key: cfg.key,
        t: cfg.timeouts,
        relay: cfg.relay,
        stats: ServerStats::default(),
        buffered: std::sync::atomic::AtomicUsize::new(0),
        control: watch::channel(None).0,
        next_gen: AtomicU64::new(0),
        session: std::sync::Mutex::new(None),
    });
    let control = control_l.local_addr()?;
    let public = public_l.local_addr()?;
    // At most an eighth of the descriptors.
    let candidates = CandidateLimits {
        total: crate::limits::within_descriptors(cfg.candidates.total, 8),
        per_source: cfg.candidates.per_source,
    };
    let mut loops = JoinSet::new();
    let mut names = HashMap::new();
    let h = loops.spawn(control::control_accept_loop(
        shared.clone(),
        control_l,
        acceptor,
        filter,
        candidates,
        started_ms,
    ));
    names.insert(h.id(), "the control port's accept loop");
    let h = loops.spawn(public::public_accept_loop(
        shared.clone(),
        public_l,
        SourceLimits::new(
            cfg.max_sessions,
            cfg.per_source.sessions,
            cfg.per_source.new_per_s,
        ),
        cfg.quiet,
    ));
    names.insert(h.id(), "the public port's accept loop");
    let (failed_tx, failed) = watch::channel(None);
    let tasks = vec![tokio::spawn(crate::tasks::supervise(
        "the server side",
        loops,
        names,
        failed_tx,
    ))];
    Ok(ServerHandle {
        shared,
        tunnel,
        public,
        control,
        tasks,
        failed,
    })
}

/// A lock whose critical sections are a few map or field operations.
fn lock<T>(l: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
