//! The server side: the pool on the tunnel port, the control port, and one public
//! port per service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use pool_tokio::{AdmissionLimits, IpFilter, ServeTls, ServerPool, TunnelKey};

use crate::transport::{ServerPools, Transport};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use crate::config::{
    CandidateLimits, Reloaded, ServerConfig, ServerService, Timeouts, HANDSHAKE_SLOTS,
};
use crate::protocol::{unix_ms, Session};
use crate::stats::{ServerSnapshot, ServerStats};
use crate::BoxError;

mod control;
pub(crate) use control::ADMIT_WINDOW;
mod public;
mod services;
mod session;
mod udp;

use session::user_session;

/// The active control connection, as user sessions see it.
#[derive(Clone)]
struct Control {
    gen: u64,
    /// Closed (its sender dropped) when this control connection ends.
    gone: watch::Receiver<()>,
}

struct Shared {
    pool: ServerPools,
    key: TunnelKey,
    t: Timeouts,
    stats: ServerStats,
    /// Each service's counters (its UDP associations' among them).
    per_service: crate::stats::PerService,
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
    control: SocketAddr,
    /// The first service's name at start.
    first: String,
    /// Each running service's public address.
    addrs: Arc<std::sync::Mutex<std::collections::BTreeMap<String, SocketAddr>>>,
    reloads: tokio::sync::mpsc::Sender<services::Reload>,
    /// Runs the accept loops; when one ends, it stops them all (see `failed`).
    tasks: Vec<JoinHandle<()>>,
    failed: watch::Receiver<Option<String>>,
}

impl ServerHandle {
    /// The pool's address (where clients dial).
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel
    }
    /// Where the users of the first service (in the configuration it started with)
    /// connect; all zeros once a reload removed it.
    pub fn public_addr(&self) -> SocketAddr {
        self.service_addr(&self.first)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
    /// Where the users of the running service `name` connect.
    pub fn service_addr(&self, name: &str) -> Option<SocketAddr> {
        lock(&self.addrs).get(name).copied()
    }
    /// The running services' names and public addresses.
    pub fn services(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.addrs)
            .iter()
            .map(|(n, a)| (n.clone(), *a))
            .collect()
    }
    /// Makes `services` the running set: added services start, removed ones stop
    /// accepting and their sessions run to their end, changed ones do both (a
    /// service that keeps its address keeps its socket: no user is refused
    /// meanwhile), and the sessions of unchanged ones never notice. Every new socket
    /// is bound first: when one cannot be, or a service is refused by its check,
    /// nothing changes and the error says why.
    pub async fn reload(&self, services: Vec<ServerService>) -> Result<Reloaded, BoxError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.reloads
            .send(services::Reload { services, reply })
            .await
            .map_err(|_| "the server side has stopped")?;
        Ok(answer.await.map_err(|_| "the server side has stopped")??)
    }
    /// Where the control connection comes in.
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }
    /// The server pool, whichever its transport.
    pub fn pool(&self) -> &ServerPools {
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
    /// The UDP services' counters, all together (all zero without one).
    pub fn udp_stats(&self) -> crate::udp::UdpSnapshot {
        self.shared.per_service.udp_total()
    }
    /// Each service's counters, sorted by name (a removed service's included).
    pub fn service_stats(&self) -> Vec<crate::stats::ServiceFigures> {
        self.shared.per_service.figures()
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
    let pool = server_pool(&cfg, &filter)?;
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
    let acceptor = match &cfg.tls {
        Some(t) => Some(TlsAcceptor::from(t.config()?)),
        None => None,
    };
    let shared = Arc::new(Shared {
        pool,
        key: cfg.key,
        t: cfg.timeouts,
        stats: ServerStats::default(),
        per_service: crate::stats::PerService::default(),
        buffered: std::sync::atomic::AtomicUsize::new(0),
        control: watch::channel(None).0,
        next_gen: AtomicU64::new(0),
        session: std::sync::Mutex::new(None),
    });
    let control = control_l.local_addr()?;
    let mut services = services::Services::new();
    services.reload(&shared, cfg.services.clone()).await?;
    let addrs = services.addrs.clone();
    let (reloads, requests) = tokio::sync::mpsc::channel(4);
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
    let h = loops.spawn(services::run(shared.clone(), services, requests));
    names.insert(h.id(), "the services' accept loops");
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
        control,
        first: cfg
            .services
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        addrs,
        reloads,
        tasks,
        failed,
    })
}

/// The pool on the tunnel port, over the configured transport, with the tunnel key's
/// proof on every pooled connection (TCP) or QUIC connection.
fn server_pool(cfg: &ServerConfig, filter: &IpFilter) -> Result<ServerPools, BoxError> {
    let at = |e: &dyn std::fmt::Display| format!("tunnel {} ({}): {e}", cfg.tunnel, cfg.transport);
    let core = pool_tokio::ServerConfig::builder()
        .max_capacity(cfg.max_capacity)
        .handshake_timeout(cfg.pool_handshake);
    // The QUIC, WebSocket and HTTP/2 builders take the same settings by the same names.
    macro_rules! keyed {
        ($pool:ty) => {{
            let mut b = <$pool>::builder()
                .bind(cfg.tunnel)
                .config(core)
                .tunnel_key(cfg.key.clone());
            if let Some(spec) = &cfg.client_ip {
                b = b.client_ip(spec);
            }
            if let Some(tls) = &cfg.tls {
                b = b.tls(ServeTls::Cert(tls.clone()));
            }
            b.build().map_err(|e| at(&e))?
        }};
    }
    Ok(match cfg.transport {
        Transport::Tcp => {
            let mut b = ServerPool::builder()
                .bind(cfg.tunnel)
                .config(core.admission(AdmissionLimits {
                    // At most a quarter of the descriptors, whatever the limit.
                    max_handshakes: crate::limits::within_descriptors(HANDSHAKE_SLOTS, 4),
                    ..AdmissionLimits::default()
                }))
                .tunnel_key(cfg.key.clone())
                .filter(filter.clone());
            if let Some(tls) = &cfg.tls {
                b = b.tls(ServeTls::Cert(tls.clone()));
            }
            ServerPools::Tcp(b.build().map_err(|e| at(&e))?)
        }
        // QUIC and HTTP/2 are always TLS: with no certificate (mode 0) each makes one
        // for this run. WebSocket's mode 0 is plain `ws://`, as TCP's is plain TCP.
        Transport::Quic => ServerPools::Quic(keyed!(pool_quic::ServerPool)),
        Transport::Ws => ServerPools::Ws(keyed!(pool_ws::WsServerPool)),
        Transport::H2 => ServerPools::H2(keyed!(pool_ws::h2::H2ServerPool)),
    })
}

/// A lock whose critical sections are a few map or field operations.
fn lock<T>(l: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
