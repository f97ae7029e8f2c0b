//! The client side: the pool that dials the tunnel port, the control connection, and
//! one relay to the target per id.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_core::{Random, SeededRandom};
use pool_tls::{ClientTlsBuilder, Fingerprint, TlsMode};
use pool_tokio::{ClientPool, PoolConn, PoolStream, TcpDialer, TunnelKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use crate::protocol::{
    client_handshake, default_control, fresh_session, send_token, split_host_port, Session,
    Timeouts, KIND_TCP, KIND_UDP, REACHED, REACHED_WITH_ANSWER, RECEIVED, TARGET_FAILED,
};
use crate::relay::{
    graceful, peer_socket_options, relay_tcp_with, relay_with, reset, Lead, Opening, RelayEnd,
    RelayLimits, Traffic,
};
use crate::server::BoxIo;
use crate::stats::{bump, ClientSnapshot, ClientStats};
use crate::BoxError;

/// The private side.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The server's tunnel address, `HOST:PORT`.
    pub tunnel: String,
    /// The server's control address; `None`: the tunnel host, tunnel port + 1.
    pub control: Option<String>,
    /// The service behind the tunnel, `HOST:PORT`.
    pub target: String,
    /// TLS mode of pool and control.
    pub mode: TlsMode,
    /// TLS server name (mode 2: checked); default: the tunnel host.
    pub hostname: Option<String>,
    /// Mode 2: trust this PEM CA file instead of the web roots.
    pub ca: Option<PathBuf>,
    /// Mode 1: accept only this server certificate.
    pub pin: Option<Fingerprint>,
    /// Client pool capacity bounds.
    pub min: usize,
    /// See `min`.
    pub max: usize,
    /// Client pool dials in flight at most.
    pub parallelism: usize,
    /// The tunnel key (the server's).
    pub key: TunnelKey,
    /// Relay deadlines.
    pub relay: RelayLimits,
    /// Control deadlines.
    pub timeouts: Timeouts,
    /// `Some`: the target is a UDP service, relayed within these limits
    /// ([`crate::udp`]); `None`: a TCP one.
    pub udp: Option<crate::udp::UdpLimits>,
}

impl ClientConfig {
    /// A client of the server at `tunnel` / `control` forwarding to `target`, mode 0,
    /// capacity 16..256.
    pub fn new(tunnel: String, control: Option<String>, target: String, key: TunnelKey) -> Self {
        Self {
            tunnel,
            control,
            target,
            mode: TlsMode::Off,
            hostname: None,
            ca: None,
            pin: None,
            min: 16,
            max: 256,
            parallelism: 8,
            key,
            relay: RelayLimits::default(),
            timeouts: Timeouts::default(),
            udp: None,
        }
    }

    /// A client of `server` (in this process) forwarding to `target`.
    pub fn for_server(server: &crate::ServerHandle, target: std::net::SocketAddr) -> Self {
        Self::new(
            server.tunnel_addr().to_string(),
            Some(server.control_addr().to_string()),
            target.to_string(),
            server.key().clone(),
        )
    }
}

struct Shared {
    pool: ClientPool,
    control: String,
    target: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    key: TunnelKey,
    t: Timeouts,
    relay: RelayLimits,
    stats: ClientStats,
    /// `Some`: the target is a UDP service.
    udp: Option<crate::udp::UdpLimits>,
    /// A UDP service's counters (all zero for a TCP one).
    udp_stats: crate::udp::UdpStats,
    up: watch::Sender<bool>,
    /// This process's session tag, on every control connection it makes.
    session: Session,
}

/// A running client side. Dropping it stops its tasks.
pub struct ClientHandle {
    shared: Arc<Shared>,
    started: Instant,
    /// Supervises the control loop and the session acceptor; when one ends, it stops
    /// the other (see `failed`). Aborting it aborts both.
    task: JoinHandle<()>,
    failed: watch::Receiver<Option<String>>,
}

impl ClientHandle {
    /// The client pool.
    pub fn pool(&self) -> &ClientPool {
        &self.shared.pool
    }
    /// When the pool was built.
    pub fn started(&self) -> Instant {
        self.started
    }
    /// Counters.
    pub fn stats(&self) -> ClientSnapshot {
        self.shared.stats.snapshot()
    }
    /// A UDP service's counters (all zero for a TCP one).
    pub fn udp_stats(&self) -> crate::udp::UdpSnapshot {
        self.shared.udp_stats.snapshot()
    }
    /// Whether the control connection is up.
    pub fn control_up(&self) -> bool {
        *self.shared.up.borrow()
    }
    /// Waits until the control connection is `up` (or down), or `within` passes.
    pub async fn wait_control_state(&self, up: bool, within: Duration) -> bool {
        let mut rx = self.shared.up.subscribe();
        let ok = matches!(timeout(within, rx.wait_for(|u| *u == up)).await, Ok(Ok(_)));
        ok
    }
    /// Waits until the control connection is up, or `within` passes.
    pub async fn wait_control(&self, within: Duration) -> bool {
        self.wait_control_state(true, within).await
    }
    /// Waits until a task of the client side died, and answers which and why. Its
    /// control loop and session acceptor never end on their own while the pool is
    /// open: one that ends has panicked (or its pool was closed), and the other is
    /// stopped with it, so that the client is never half alive. A process running the
    /// client should exit. Never ends after [`shutdown`](Self::shutdown) began.
    pub async fn failed(&self) -> String {
        crate::tasks::failure(&self.failed).await
    }
    /// Stops every task (sessions included) and closes the pool.
    pub async fn shutdown(self) {
        self.task.abort();
        let shared = self.shared.clone();
        drop(self);
        shared.pool.close().await;
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the client pool and the control loop.
pub async fn start_client(cfg: ClientConfig) -> Result<ClientHandle, BoxError> {
    let (host, _) = split_host_port(&cfg.tunnel).map_err(|e| format!("--tunnel: {e}"))?;
    split_host_port(&cfg.target).map_err(|e| format!("--target: {e}"))?;
    let control = match cfg.control {
        Some(c) => c,
        None => default_control(&cfg.tunnel)?,
    };
    let name = cfg.hostname.clone().unwrap_or_else(|| host.to_owned());
    let mut b = ClientPool::builder()
        .dialer(TcpDialer::host(cfg.tunnel.clone()))
        .capacity(cfg.min, cfg.max)
        .parallelism(cfg.parallelism)
        .tunnel_key(cfg.key.clone())
        .in_band(true)
        .tls_mode(cfg.mode);
    let mut tls = ClientTlsBuilder::new(cfg.mode);
    if let Some(fp) = cfg.pin {
        b = b.pin(fp);
        tls = tls.pin(fp);
    }
    if let Some(ca) = &cfg.ca {
        b = b.ca_file(ca.clone());
        tls = tls.ca_file(ca.clone());
    }
    if cfg.mode.is_tls() {
        b = b.hostname(name.clone());
    }
    let tls = match tls.build()? {
        Some(c) => Some((TlsConnector::from(c), pool_tls::server_name(&name)?)),
        None => None,
    };
    let started = Instant::now();
    let pool = b.build()?;
    let shared = Arc::new(Shared {
        pool,
        control,
        target: cfg.target,
        tls,
        key: cfg.key,
        t: cfg.timeouts,
        relay: cfg.relay,
        stats: ClientStats::default(),
        udp: cfg.udp,
        udp_stats: crate::udp::UdpStats::default(),
        up: watch::channel(false).0,
        session: fresh_session()?,
    });
    let mut loops = JoinSet::new();
    let mut names = std::collections::HashMap::new();
    names.insert(
        loops.spawn(control_loop(shared.clone())).id(),
        "the client's control loop",
    );
    names.insert(
        loops.spawn(accept_loop(shared.clone())).id(),
        "the client's session acceptor",
    );
    let (failed_tx, failed) = watch::channel(None);
    let task = tokio::spawn(crate::tasks::supervise(
        "the client side",
        loops,
        names,
        failed_tx,
    ));
    Ok(ClientHandle {
        shared,
        started,
        task,
        failed,
    })
}

/// Accepts the sessions the server starts in band, one task each, until the pool
/// closes (then the supervisor stops the client side, and says so). Sessions end with
/// the handle (their tasks are aborted with this one).
async fn accept_loop(shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        while sessions.try_join_next().is_some() {}
        let conn = match shared.pool.accept_timeout(Duration::from_secs(3600)).await {
            Ok(conn) => conn,
            Err(pool_tokio::GetError::Closed) => return,
            Err(_) => continue, // nothing started for an hour, or no server yet
        };
        bump(&shared.stats.accepted);
        let shared = shared.clone();
        sessions.spawn(async move {
            let ok = client_session(&shared, conn).await;
            bump(if ok {
                &shared.stats.relayed
            } else {
                &shared.stats.failed
            });
        });
    }
}

/// Keeps one control connection up, reconnecting with exponential backoff and jitter.
async fn control_loop(shared: Arc<Shared>) {
    let (first, longest) = shared.t.backoff;
    let mut pause = first;
    let mut rng = SeededRandom::from_seed(pool_tls::fresh_nonce().unwrap_or([7; 32]));
    loop {
        let attempt = timeout(
            shared.t.io + shared.t.tls + shared.t.answer,
            connect_control(&shared),
        )
        .await;
        match attempt {
            Ok(Ok(io)) => {
                bump(&shared.stats.control_ok);
                shared.up.send_replace(true);
                info!("control: connected to {}", shared.control);
                pause = first;
                let why = run_control(&shared, io).await;
                shared.up.send_replace(false);
                warn!("control: lost: {why}");
            }
            Ok(Err(e)) => {
                bump(&shared.stats.control_failed);
                warn!("control: {}: {e}; retry in {pause:?}", shared.control);
            }
            Err(_) => {
                bump(&shared.stats.control_failed);
                warn!(
                    "control: {}: no handshake in time; retry in {pause:?}",
                    shared.control
                );
            }
        }
        // Up to 25 % jitter so that many clients do not retry in step.
        let jitter = f64::from(rng.next_u32()) / f64::from(u32::MAX) / 4.0;
        tokio::time::sleep(pause + pause.mul_f64(jitter)).await;
        pause = (pause * 2).min(longest);
    }
}

/// TCP, TLS and the client half of the handshake.
async fn connect_control(s: &Shared) -> Result<BoxIo, BoxError> {
    let tcp = timeout(s.t.io, TcpStream::connect(&s.control))
        .await
        .map_err(|_| "connect: timed out")?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.t.control_socket().apply_tcp(&tcp);
    // The admission token goes first, before TLS: the server sorts this connection
    // from strangers' by it, with no round trip (see `pool_tls::admit`).
    let mut tcp = tcp;
    timeout(s.t.io, send_token(&mut tcp, &s.key))
        .await
        .map_err(|_| "admission token: write timed out")?
        .map_err(|e| format!("admission token: {e}"))?;
    match &s.tls {
        Some((c, name)) => {
            let mut tls = c
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            let binding = pool_tls::tls_binding(tls.get_ref().1)?;
            client_handshake(&mut tls, &s.key, &binding, &s.session).await?;
            Ok(Box::new(tls))
        }
        None => {
            client_handshake(&mut tcp, &s.key, &[], &s.session).await?;
            Ok(Box::new(tcp))
        }
    }
}

/// Exchanges heartbeats until control breaks or falls silent. Control carries no
/// session: they start in band ([`accept_loop`]).
async fn run_control(shared: &Arc<Shared>, io: BoxIo) -> String {
    let (mut rd, mut wr) = tokio::io::split(io);
    let t = &shared.t;
    let mut heartbeat = tokio::time::interval(t.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => return "closed by the server".into(),
                Ok(n) if buf[..n].iter().all(|&b| b == b'\n') => {
                    heard = tokio::time::Instant::now();
                }
                Ok(_) => return "unexpected bytes from the server".into(),
                Err(e) => return format!("read error: {e}"),
            },
            _ = heartbeat.tick() => {
                let w = timeout(t.dead_after, async {
                    wr.write_all(b"\n").await?;
                    wr.flush().await
                });
                if !matches!(w.await, Ok(Ok(()))) {
                    return "heartbeat write failed or stalled".into();
                }
            }
            _ = tokio::time::sleep_until(heard + t.dead_after) => {
                bump(&shared.stats.control_silent);
                return format!("no heartbeat from the server for {:?}", t.dead_after);
            }
        }
    }
}

/// One session: the pooled connection the server started, a fresh target connection,
/// a relay. The receipt ([`RECEIVED`]) goes back before anything else, before the
/// target connect: from then on the server counts on this side alone to deliver the
/// user's bytes, and resets the user if this side fails. The pooled connection and the
/// target's are armed to reset from the start and disarmed only when the relay ended
/// cleanly: a relay cut short, or this process's death, is a reset on both, so that
/// the target never takes a cut request for a complete one, nor the server a cut
/// answer.
async fn client_session(s: &Shared, mut conn: PoolConn) -> bool {
    let id = conn.id();
    reset(conn.stream().tcp());
    // The session's kind came with the start header. Unread (the connection failed),
    // nothing is received: the server starts it elsewhere.
    let Ok(Ok(kind)) = timeout(s.t.io, conn.read_u8()).await else {
        return false;
    };
    match (kind, &s.udp) {
        (KIND_TCP, None) => {}
        (KIND_UDP, Some(limits)) => return udp::udp_session(s, conn, limits).await,
        _ => return udp::refuse_kind(s, conn, kind).await,
    }
    let receipt = timeout(s.t.io, async {
        conn.write_all(&[RECEIVED]).await?;
        conn.flush().await
    });
    if !matches!(receipt.await, Ok(Ok(()))) {
        // Not received: the server replays its copy elsewhere; the target was not touched.
        debug!("session {id}: the receipt could not be written");
        return false;
    }
    let target = match timeout(s.t.io, TcpStream::connect(&s.target)).await {
        Ok(Ok(t)) => t,
        why => {
            bump(&s.stats.target_failed);
            debug!("session {id}: target {} unreachable: {why:?}", s.target);
            // The server resets the user at once and retries nothing. An orderly close,
            // so that the byte is not dropped with the connection.
            graceful(conn.stream().tcp());
            let _ = timeout(s.t.io, async {
                conn.write_all(&[TARGET_FAILED]).await?;
                conn.flush().await
            })
            .await;
            return false;
        }
    };
    let _ = peer_socket_options().apply_tcp(&target);
    reset(&target);
    // The outcome goes with the target's first answer (one write), or alone if that is
    // slow.
    let reached = Opening::Lead(Lead {
        byte: REACHED,
        within: REACHED_WITH_ANSWER,
    });
    let traffic = Traffic::default();
    let end = match conn.into_inner() {
        PoolStream::Plain(tcp) => relay_tcp_with(tcp, target, s.relay, &traffic, reached).await,
        mut tls => {
            let mut target = target;
            let end = relay_with(&mut tls, &mut target, s.relay, &traffic, reached).await;
            if end == RelayEnd::Done {
                graceful(&target);
                graceful(tls.tcp());
            }
            end
        }
    };
    s.stats
        .bytes_down
        .fetch_add(traffic.a_to_b.load(Relaxed), Relaxed);
    s.stats
        .bytes_up
        .fetch_add(traffic.b_to_a.load(Relaxed), Relaxed);
    end == RelayEnd::Done
}

mod udp;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_ends_stops_the_client_side_and_says_why() {
        // Nothing listens there: the control loop keeps retrying, never ending.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let mut cfg = ClientConfig::new(
            addr.to_string(),
            None,
            addr.to_string(),
            TunnelKey::generate().unwrap(),
        );
        cfg.min = 1;
        cfg.max = 1;
        let client = start_client(cfg).await.unwrap();
        assert_eq!(
            Arc::strong_count(&client.shared),
            3,
            "both loops hold the state"
        );
        // The session acceptor ends when its pool closes underneath it.
        client.pool().close().await;
        let why = timeout(Duration::from_secs(30), client.failed())
            .await
            .unwrap();
        assert_eq!(why, "the client's session acceptor ended");
        // The control loop was stopped with it (before `failed` was told): only the
        // handle holds the state now.
        assert_eq!(Arc::strong_count(&client.shared), 1);
    }
}
