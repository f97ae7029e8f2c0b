//! The client side: the pool that dials the tunnel port, the control connection, and
//! one relay per session to the target of the session's service.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_core::{Random, SeededRandom};
use pool_tls::{ClientTls, Roots, TlsMode};
use pool_tokio::{ClientPool, IdleWatch, PoolStream, TcpDialer, TunnelKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use crate::config::{
    check_client_services, ClientConfig, ClientService, Reloaded, ServiceProtocol, Timeouts,
};
use crate::protocol::{
    client_handshake_over, default_control, fresh_session, send_token, split_host_port, BoxIo,
    Session, SessionStart, HEARTBEAT, NO_SERVICE, REACHED, REACHED_WITH_ANSWER, RECEIVED,
    TARGET_FAILED, WRONG_KIND,
};
use crate::relay::{
    graceful, peer_socket_options, relay_flushing, relay_tcp_with, relay_with, reset, Lead,
    Opening, RelayEnd, Traffic,
};
use crate::stats::{bump, bump_both, ClientSnapshot, ClientStats, ServiceStats};
use crate::transport::{AcceptError, ClientPools, ForRelay, Pooled, Transport};
use crate::BoxError;

type ServiceMap = std::collections::HashMap<String, Arc<ClientService>>;

fn service_map(services: Vec<ClientService>) -> Arc<ServiceMap> {
    Arc::new(
        services
            .into_iter()
            .map(|s| (s.name.clone(), Arc::new(s)))
            .collect(),
    )
}

struct Shared {
    pool: ClientPools,
    control: String,
    /// The services by name; a reload swaps the whole map, and a session keeps the
    /// service it started with.
    services: std::sync::Mutex<Arc<ServiceMap>>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    key: TunnelKey,
    t: Timeouts,
    stats: ClientStats,
    /// Each service's counters (its UDP associations' among them).
    per_service: crate::stats::PerService,
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
    /// The client pool, whichever its transport.
    pub fn pool(&self) -> &ClientPools {
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
    /// The UDP services' counters, all together (all zero without one).
    pub fn udp_stats(&self) -> crate::udp::UdpSnapshot {
        self.shared.per_service.udp_total()
    }
    /// Each service's counters, sorted by name: a service's from its first session on
    /// (a removed service's included).
    pub fn service_stats(&self) -> Vec<crate::stats::ServiceFigures> {
        self.shared.per_service.figures()
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

impl ClientHandle {
    /// Makes `services` the client's services: a session that starts from now on goes
    /// to its service's new target (or is answered [`NO_SERVICE`] when its service
    /// is gone); sessions under way keep the target they have. Refused, with nothing
    /// changed, when a service fails its check.
    pub fn reload(&self, services: Vec<ClientService>) -> Result<Reloaded, BoxError> {
        check_client_services(&services)?;
        let new = service_map(services);
        let old = std::mem::replace(&mut *lock(&self.shared.services), new.clone());
        let mut r = Reloaded::default();
        for (name, svc) in new.iter() {
            match old.get(name) {
                None => r.added.push(name.clone()),
                Some(o) if o == svc => r.unchanged.push(name.clone()),
                Some(_) => r.changed.push(name.clone()),
            }
        }
        r.removed = old
            .keys()
            .filter(|n| !new.contains_key(*n))
            .cloned()
            .collect();
        for v in [
            &mut r.added,
            &mut r.removed,
            &mut r.changed,
            &mut r.unchanged,
        ] {
            v.sort();
        }
        Ok(r)
    }

    /// The services' names, sorted.
    pub fn services(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.shared.services).keys().cloned().collect();
        v.sort();
        v
    }
}

/// A lock whose critical sections are a map swap or a lookup.
fn lock<T>(l: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the client pool and the control loop.
pub async fn start_client(cfg: ClientConfig) -> Result<ClientHandle, BoxError> {
    let (host, _) = split_host_port(&cfg.tunnel).map_err(|e| format!("--tunnel: {e}"))?;
    cfg.check()?;
    let control = match cfg.control.clone() {
        Some(c) => c,
        None => default_control(&cfg.tunnel)?,
    };
    let name = cfg.hostname.clone().unwrap_or_else(|| host.to_owned());
    // One TLS setting for the pool and the control channel.
    let client_tls = match cfg.mode {
        TlsMode::Off => ClientTls::Off,
        TlsMode::SelfSigned => ClientTls::SelfSigned {
            pin: cfg.pin,
            name: Some(name.clone()),
        },
        TlsMode::Verified => ClientTls::Verified {
            roots: cfg.ca.clone().map_or(Roots::Web, Roots::CaFile),
            name: Some(name.clone()),
        },
    };
    let tls = match client_tls.build()? {
        Some((c, server)) => Some((
            TlsConnector::from(c),
            server.map_or_else(|| pool_tls::server_name(&name), Ok)?,
        )),
        None => None,
    };
    let started = Instant::now();
    let pool = client_pool(&cfg, client_tls, &name).await?;
    let shared = Arc::new(Shared {
        pool,
        control,
        services: std::sync::Mutex::new(service_map(cfg.services)),
        tls,
        key: cfg.key,
        t: cfg.timeouts,
        stats: ClientStats::default(),
        per_service: crate::stats::PerService::default(),
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

/// The pool that dials the tunnel port, over the configured transport, with the
/// tunnel key's proof on every pooled TCP connection, or once per QUIC, WebSocket or
/// HTTP/2 connection.
async fn client_pool(
    cfg: &ClientConfig,
    client_tls: ClientTls,
    name: &str,
) -> Result<ClientPools, BoxError> {
    let core = pool_tokio::ClientConfig::builder()
        .capacity(cfg.min, cfg.max)
        .parallelism(cfg.parallelism)
        .watch(IdleWatch::Starts);
    Ok(match cfg.transport {
        Transport::Tcp => ClientPools::Tcp(
            ClientPool::builder()
                .dialer(TcpDialer::host(cfg.tunnel.clone()))
                .config(core)
                .tls(client_tls)
                .tunnel_key(cfg.key.clone())
                .build()?,
        ),
        // QUIC and HTTP/2 are always TLS: mode 0 takes any certificate there, as the
        // np-quic and nph2 wires' code 0 does; the key proof still binds to it.
        Transport::Quic => ClientPools::Quic(
            pool_quic::ClientPool::builder()
                .address(resolve(&cfg.tunnel).await?)
                .config(core)
                .tls(client_tls)
                .tunnel_key(cfg.key.clone())
                .build()?,
        ),
        Transport::Ws => ClientPools::Ws(
            pool_ws::WsClientPool::builder()
                .address(resolve(&cfg.tunnel).await?)
                .config(core)
                .tls(client_tls)
                .host(name)
                .tunnel_key(cfg.key.clone())
                .build()?,
        ),
        Transport::H2 => ClientPools::H2(
            pool_ws::h2::H2ClientPool::builder()
                .address(resolve(&cfg.tunnel).await?)
                .config(core)
                .tls(client_tls)
                .host(name)
                .tunnel_key(cfg.key.clone())
                .build()?,
        ),
    })
}

/// The first address of `HOST:PORT`.
async fn resolve(tunnel: &str) -> Result<std::net::SocketAddr, BoxError> {
    Ok(tokio::net::lookup_host(tunnel)
        .await
        .map_err(|e| format!("--tunnel {tunnel}: {e}"))?
        .next()
        .ok_or_else(|| format!("--tunnel {tunnel}: no address"))?)
}

/// How long the accept loop waits before it asks again after an accept that failed at
/// once.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Accepts the sessions the server starts in band, one task each, until the pool
/// closes (then the supervisor stops the client side, and says so). Sessions end with
/// the handle (their tasks are aborted with this one).
async fn accept_loop(shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        while sessions.try_join_next().is_some() {}
        let asked = tokio::time::Instant::now();
        let conn = match shared.pool.accept_timeout(Duration::from_secs(3600)).await {
            Ok(conn) => conn,
            Err(AcceptError::Closed) => return,
            Err(AcceptError::Nothing) => {
                // Nothing started for an hour, or no server yet: a pool that never
                // reached its server fails an accept at once while it backs off, and
                // asking again at once would spin (and, polling nothing, never yield
                // to the abort that ends this task).
                if asked.elapsed() < ACCEPT_PAUSE {
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
                continue;
            }
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
    let crate::config::Reconnect { first, longest } = shared.t.backoff;
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
                .map_err(|e| match is_closed(&e) {
                    true => closed_before("TLS"),
                    false => format!("TLS: {e}"),
                })?;
            let binding = pool_tls::tls_binding(tls.get_ref().1)?;
            client_handshake_over(&mut tls, &s.key, &binding, &s.session, s.pool.transport())
                .await?;
            Ok(Box::new(tls))
        }
        None => {
            // The greeting is the server's first byte: an end before it is a refusal.
            let mut first = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) = timeout(s.t.io, tcp.peek(&mut first)).await {
                return Err(closed_before("the greeting").into());
            }
            client_handshake_over(&mut tcp, &s.key, &[], &s.session, s.pool.transport()).await?;
            Ok(Box::new(tcp))
        }
    }
}

/// What a control connection that the server closed right after the admission token
/// means. The server closes it without a word whatever was wrong (a stranger learns
/// nothing from it); the two usual causes are this end's: the key, or the clock the
/// token is stamped with.
fn closed_before(what: &str) -> String {
    format!(
        "the server closed the connection before {what}: a wrong tunnel key, or this \
         machine's clock more than {}s off the server's, is the usual cause (the server's \
         log says which)",
        crate::server::ADMIT_WINDOW.as_secs()
    )
}

/// Whether a TLS handshake failed because the server closed or reset the connection.
fn is_closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
    )
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
                Ok(n) if buf[..n].iter().all(|&b| b == HEARTBEAT) => {
                    heard = tokio::time::Instant::now();
                }
                Ok(_) => return "unexpected bytes from the server".into(),
                Err(e) => return format!("read error: {e}"),
            },
            _ = heartbeat.tick() => {
                let w = timeout(t.dead_after, async {
                    wr.write_all(&[HEARTBEAT]).await?;
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

/// One session: the pooled connection the server started, its start read (which
/// service, which user), then the session by the service's kind. A start that cannot
/// be read closes the connection before the receipt: nothing was delivered, so the
/// server may replay it elsewhere.
async fn client_session(s: &Shared, mut conn: Pooled) -> bool {
    let id = conn.id();
    let start = match timeout(s.t.answer, SessionStart::read(&mut conn)).await {
        Ok(Ok(start)) => start,
        why => {
            bump(&s.stats.bad_start);
            debug!("session {id}: no session start: {why:?}");
            return false;
        }
    };
    let service = lock(&s.services).get(&start.service).cloned();
    let Some(service) = service else {
        bump(&s.stats.no_service);
        debug!("session {id}: no service `{}` here", start.service);
        refuse(s, conn, NO_SERVICE).await;
        return false;
    };
    let counts = s.per_service.service(&service.name);
    let mine = &counts.sessions;
    if service.protocol != start.kind {
        udp::wrong_kind(s, &start, service.protocol, &counts);
        refuse(s, conn, WRONG_KIND).await;
        return false;
    }
    match service.protocol {
        ServiceProtocol::Tcp => {
            let _live = mine.session_running();
            let ok = tcp_session(s, conn, &service, &start, mine).await;
            bump(if ok { &mine.relayed } else { &mine.failed });
            ok
        }
        ServiceProtocol::Udp => udp::udp_session(s, conn, &service, &counts.udp).await,
    }
}

/// Answers the receipt and `outcome` in one write, then closes in order (so that the
/// bytes are not dropped with the connection): the server resets the user at once and
/// retries nothing.
async fn refuse(s: &Shared, mut conn: Pooled, outcome: u8) {
    conn.disarm();
    let _ = timeout(s.t.io, async {
        conn.write_all(&[RECEIVED, outcome]).await?;
        conn.flush().await
    })
    .await;
}

/// A TCP session: a fresh target connection (a PROXY protocol header first, if the
/// service wants one), a relay. The receipt ([`RECEIVED`]) goes back before the target
/// connect: from then on the server counts on this side alone to deliver the user's
/// bytes, and resets the user if this side fails. The pooled connection and the
/// target's are armed to reset from the start and disarmed only when the relay ended
/// cleanly: a relay cut short, or this process's death, is a reset on both, so that
/// the target never takes a cut request for a complete one, nor the server a cut
/// answer.
async fn tcp_session(
    s: &Shared,
    mut conn: Pooled,
    svc: &ClientService,
    start: &SessionStart,
    mine: &ServiceStats,
) -> bool {
    let id = conn.id();
    let receipt = timeout(s.t.io, async {
        conn.write_all(&[RECEIVED]).await?;
        conn.flush().await
    });
    if !matches!(receipt.await, Ok(Ok(()))) {
        // Not received: the server replays its copy elsewhere; the target was not touched.
        debug!("session {id}: the receipt could not be written");
        return false;
    }
    let target = timeout(s.t.io, async {
        let mut target = TcpStream::connect(&svc.target).await?;
        if let Some(version) = svc.proxy_protocol {
            let header = crate::proxy_header::header(version, start.user, start.public);
            target.write_all(&header).await?;
        }
        Ok::<_, std::io::Error>(target)
    })
    .await;
    let target = match target {
        Ok(Ok(t)) => t,
        why => {
            bump_both(&s.stats.target_failed, &mine.target_failed);
            debug!("session {id}: target {} unreachable: {why:?}", svc.target);
            // The server resets the user at once and retries nothing. An orderly close,
            // so that the byte is not dropped with the connection.
            conn.disarm();
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
    let end = match conn.into_tcp() {
        ForRelay::Tcp(PoolStream::Plain(tcp)) => {
            relay_tcp_with(tcp, target, svc.relay, &traffic, reached).await
        }
        ForRelay::Tcp(mut tls) => {
            let mut target = target;
            let end = relay_with(&mut tls, &mut target, svc.relay, &traffic, reached).await;
            if end == RelayEnd::Done {
                graceful(&target);
                graceful(tls.tcp());
            }
            end
        }
        ForRelay::Stream(mut stream) => {
            let mut target = target;
            let end = relay_flushing(&mut stream, &mut target, svc.relay, &traffic, reached).await;
            if end == RelayEnd::Done {
                graceful(&target);
                stream.disarm();
            }
            end
        }
    };
    let (to_target, to_user) = (traffic.a_to_b.load(Relaxed), traffic.b_to_a.load(Relaxed));
    s.stats.bytes_down.fetch_add(to_target, Relaxed);
    s.stats.bytes_up.fetch_add(to_user, Relaxed);
    mine.bytes_to_target.fetch_add(to_target, Relaxed);
    mine.bytes_to_user.fetch_add(to_user, Relaxed);
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
