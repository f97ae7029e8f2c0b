//! The client pool: dials ahead so that idle connections wait at the server.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool_core::{
    CapacityPolicy, ClientConfig, ClientConfigBuilder, ClientMachine, ConnId, DialTicket, Got,
    IdForm, IdReader, IntervalPolicy, Landed, Stage, WaiterKey,
};
use pool_net::SocketOptions;
use pool_tls::{ClientTlsBuilder, Fingerprint, TlsMode, TunnelKey};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::timeout_at;
use tokio_rustls::{TlsConnector, TlsStream};
use tracing::{debug, info};

use crate::conn::{PoolConn, Stream};
use crate::dialer::{Dialer, TcpDialer};
use crate::error::{PoolError, StepError};
use crate::rt::{now, random4, random_u32, sleep_until, Shutdown, TaskToken, Tasks};
use crate::shared::{
    cancel_in, close_all, common_getters, impl_machine, lock, Delivery, Hub, Owner, Replies, Shut,
    Waiting,
};

/// Builder of a [`ClientPool`]. Each setter names the Go parameter it stands for and
/// its default.
#[must_use]
pub struct ClientPoolBuilder {
    core: ClientConfigBuilder,
    go_normalized: bool,
    dialer: Option<Arc<dyn Dialer>>,
    tls_mode: TlsMode,
    tls_config: Option<Arc<rustls::ClientConfig>>,
    pin: Option<Fingerprint>,
    ca_file: Option<PathBuf>,
    hostname: Option<String>,
    socket: SocketOptions,
    get_timeout: Duration,
    sweep_interval: Duration,
    key: Option<TunnelKey>,
}

impl std::fmt::Debug for ClientPoolBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPoolBuilder")
            .field("core", &self.core)
            .field("tls_mode", &self.tls_mode)
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

impl Default for ClientPoolBuilder {
    fn default() -> Self {
        Self {
            core: ClientConfig::builder(),
            go_normalized: false,
            dialer: None,
            tls_mode: TlsMode::Off,
            tls_config: None,
            pin: None,
            ca_file: None,
            hostname: None,
            socket: SocketOptions::default(),
            get_timeout: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(1),
            key: None,
        }
    }
}

impl ClientPoolBuilder {
    /// Where to dial: the server pool's address (Go: the `dialer` function).
    pub fn address(self, addr: std::net::SocketAddr) -> Self {
        self.dialer(TcpDialer::new(addr))
    }
    /// How to dial. Required unless [`address`](Self::address) is given.
    pub fn dialer(mut self, d: impl Dialer) -> Self {
        self.dialer = Some(Arc::new(d));
        self
    }
    /// Minimum and maximum capacity (Go: `minCap`, `maxCap`). Default 64 and 1024.
    pub fn capacity(mut self, min: usize, max: usize) -> Self {
        self.core = self.core.capacity(min, max);
        self
    }
    /// Minimum and maximum refill interval (Go: `minIvl`, `maxIvl`). Default 100 ms, 1 s.
    pub fn interval(mut self, min: Duration, max: Duration) -> Self {
        self.core = self.core.interval(min, max);
        self
    }
    /// TCP keep-alive period (Go: `keepAlive`). Default 30 s.
    pub fn keepalive(mut self, period: Duration) -> Self {
        self.socket.keepalive = Some(period);
        self
    }
    /// All socket options at once. Default: keep-alive 30 s, no-delay on.
    pub fn socket_options(mut self, o: SocketOptions) -> Self {
        self.socket = o;
        self
    }
    /// TLS mode `0`, `1` or `2` (Go: `tlsCode`). Default `0`, plain.
    pub fn tls_mode(mut self, mode: TlsMode) -> Self {
        self.tls_mode = mode;
        self
    }
    /// A rustls client config of your own; it replaces what the mode would build.
    pub fn tls_config(mut self, cfg: Arc<rustls::ClientConfig>) -> Self {
        self.tls_config = Some(cfg);
        self
    }
    /// Mode 1: accept only a server certificate with this SHA-256 fingerprint.
    pub fn pin(mut self, fp: Fingerprint) -> Self {
        self.pin = Some(fp);
        self
    }
    /// Mode 2: trust this PEM CA bundle (instead of the bundled web roots).
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
    /// TLS server name (Go: `hostname`). Default: the server's IP address.
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = Some(name.into());
        self
    }
    /// Single mode (Go: `isSingle`): ids made here, nothing read. Default false.
    pub fn single(mut self, on: bool) -> Self {
        self.core = self.core.single(on);
        self
    }
    /// Dials in flight at most. Default 64 (Go: 1).
    pub fn parallelism(mut self, n: usize) -> Self {
        self.core = self.core.parallelism(n);
        self
    }
    /// Deadline of connect plus TLS handshake. Default 5 s (Go: none).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.core = self.core.handshake_timeout(d);
        self
    }
    /// Deadline of the id read. Default 5 s.
    pub fn id_timeout(mut self, d: Duration) -> Self {
        self.core = self.core.id_timeout(d);
        self
    }
    /// Timeout of [`ClientPool::get_default`]. Default 5 s.
    pub fn get_timeout(mut self, d: Duration) -> Self {
        self.get_timeout = d;
        self
    }
    /// Wire form of the id. Default [`IdForm::Hex8`] (Go v1.0.6).
    pub fn id_form(mut self, form: IdForm) -> Self {
        self.core = self.core.id_form(form);
        self
    }
    /// How often idle connections are probed and dead ones replaced. Default 1 s.
    pub fn sweep_interval(mut self, d: Duration) -> Self {
        self.sweep_interval = d;
        self
    }
    /// Interval policy. Default: the Go rules.
    pub fn interval_policy(mut self, p: IntervalPolicy) -> Self {
        self.core = self.core.interval_policy(p);
        self
    }
    /// Capacity policy. Default: the Go rules.
    pub fn capacity_policy(mut self, p: CapacityPolicy) -> Self {
        self.core = self.core.capacity_policy(p);
        self
    }
    /// Prove this key on every connection, right after reading its id, and require the
    /// server to prove it back: a mutual challenge-response over fresh nonces, bound to
    /// the TLS session in modes 1 and 2 (`pool_tls::proof`, bytes in pool-tls's
    /// `PROTOCOL.md`). The server pool (given the same key) admits nothing else, and a
    /// connection whose server fails its proof is dropped and counted as an auth
    /// failure. Not part of the Go wire protocol: set it on both ends or on neither.
    /// Default none.
    pub fn tunnel_key(mut self, key: TunnelKey) -> Self {
        self.key = Some(key);
        self
    }
    /// Fix bad bounds silently the way the Go package does (zero capacity becomes 1,
    /// zero interval 1 s, a minimum above its maximum is swapped) instead of refusing
    /// them. Default false.
    pub fn go_normalized(mut self, on: bool) -> Self {
        self.go_normalized = on;
        self
    }

    /// Checks the settings and starts the manager task. Call from inside a tokio
    /// runtime (Go: `NewClientPool` followed by `go ClientManager()`).
    pub fn build(self) -> Result<ClientPool, PoolError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| PoolError::NoRuntime)?;
        let cfg = if self.go_normalized {
            self.core.build_go_normalized()
        } else {
            self.core.build()?
        };
        let dialer = self.dialer.ok_or(PoolError::Missing("dialer or address"))?;
        let tls = match self.tls_config {
            Some(c) => Some(c),
            None => {
                let mut b = ClientTlsBuilder::new(self.tls_mode);
                if let Some(fp) = self.pin {
                    b = b.pin(fp);
                }
                if let Some(ca) = self.ca_file {
                    b = b.ca_file(ca);
                }
                b.build()?
            }
        };
        let name = match (&tls, &self.hostname) {
            (Some(_), Some(h)) if !h.is_empty() => Some(pool_tls::server_name(h)?),
            _ => None,
        };
        if self.sweep_interval.is_zero() {
            return Err(pool_core::ConfigError::ZeroDuration {
                what: "sweep interval",
            }
            .into());
        }
        let (shutdown_tx, shutdown) = Shutdown::new();
        let inner = Arc::new(Inner {
            id_form: cfg.id_form(),
            single: cfg.single(),
            state: Mutex::new(State {
                m: ClientMachine::new(cfg, now()),
                replies: Replies::default(),
            }),
            wake: Notify::new(),
            dialer,
            tls: tls.map(|c| (TlsConnector::from(c), name)),
            socket: self.socket,
            sweep_interval: self.sweep_interval,
            key: self.key,
            tasks: Arc::new(Tasks::default()),
            shutdown,
            shutdown_tx,
        });
        let token = inner.tasks.token();
        handle.spawn(drive(inner.clone(), token));
        Ok(ClientPool {
            owner: Arc::new(Owner(inner)),
            get_timeout: self.get_timeout,
        })
    }
}

struct State {
    m: ClientMachine<PoolConn>,
    replies: Replies,
}

impl_machine!(ClientMachine<PoolConn>);

struct Inner {
    state: Mutex<State>,
    wake: Notify,
    dialer: Arc<dyn Dialer>,
    tls: Option<(TlsConnector, Option<ServerName<'static>>)>,
    socket: SocketOptions,
    id_form: IdForm,
    single: bool,
    sweep_interval: Duration,
    key: Option<TunnelKey>,
    tasks: Arc<Tasks>,
    shutdown: Shutdown,
    shutdown_tx: watch::Sender<bool>,
}

impl Hub for Inner {
    fn cancel_waiter(&self, key: WaiterKey, rx: &mut oneshot::Receiver<Delivery>) {
        let mut st = lock(&self.state);
        let st = &mut *st;
        cancel_in(&mut st.m, &mut st.replies, key, rx);
    }
}

impl Inner {
    /// After any input: deliver answers, collect the dials to start.
    fn outputs(st: &mut State, now: std::time::Instant) -> Vec<DialTicket> {
        st.replies.deliver(&mut st.m);
        let mut out = Vec::new();
        while let Some(t) = st.m.poll_dial(now) {
            out.push(t);
        }
        out
    }

    fn start_dials(self: &Arc<Self>, tickets: Vec<DialTicket>) {
        for t in tickets {
            let token = self.tasks.token();
            tokio::spawn(dial(self.clone(), t, token));
        }
    }
}

impl Shut for Inner {
    fn shut(&self) -> Vec<(ConnId, PoolConn)> {
        let _ = self.shutdown_tx.send(true);
        let mut st = lock(&self.state);
        let st = &mut *st;
        let conns = st.m.close();
        st.replies.deliver(&mut st.m);
        close_all(&mut st.replies);
        conns
    }
}

impl Inner {
    async fn establish(&self, ticket: &DialTicket) -> Result<PoolConn, (Stage, StepError)> {
        let deadline = tokio::time::Instant::from_std(ticket.handshake_deadline());
        let tcp = match timeout_at(deadline, self.dialer.dial()).await {
            Err(_) => return Err((Stage::Connect, StepError::Timeout)),
            Ok(Err(e)) => return Err((Stage::Connect, e.into())),
            Ok(Ok(s)) => s,
        };
        if let Err(e) = self.socket.apply_tcp(&tcp) {
            debug!(error = %e, "socket options not applied");
        }
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let name = match name {
                    Some(name) => name.clone(),
                    None => {
                        let peer = tcp.peer_addr().map_err(|e| (Stage::Connect, e.into()))?;
                        ServerName::IpAddress(peer.ip().into())
                    }
                };
                match timeout_at(deadline, connector.connect(name, tcp)).await {
                    Err(_) => return Err((Stage::Tls, StepError::Timeout)),
                    Ok(Err(e)) => return Err((Stage::Tls, e.into())),
                    Ok(Ok(s)) => Stream::Tls(Box::new(TlsStream::Client(s))),
                }
            }
        };
        let mut conn = PoolConn {
            id: ConnId::from_random([0; 4]),
            stream,
        };
        conn.id = if self.single {
            ConnId::from_random(random4())
        } else {
            let id_deadline = tokio::time::Instant::from_std(ticket.id_deadline(now()));
            match timeout_at(id_deadline, read_id(&mut conn, self.id_form)).await {
                Err(_) => return Err((Stage::Id, StepError::Timeout)),
                Ok(Err(e)) => return Err((Stage::Id, e)),
                Ok(Ok(id)) => id,
            }
        };
        if let (Some(key), false) = (&self.key, self.single) {
            let wire = self.id_form.encode(&conn.id);
            let deadline = tokio::time::Instant::from_std(ticket.id_deadline(now()));
            crate::auth::client_auth(&mut conn, key, wire.as_ref(), deadline).await?;
        }
        Ok(conn)
    }
}

/// Reads exactly the id: never a byte of payload behind it.
async fn read_id(conn: &mut PoolConn, form: IdForm) -> Result<ConnId, StepError> {
    let mut reader = IdReader::new(form);
    let mut buf = [0u8; pool_core::ID_LEN];
    loop {
        let want = reader.remaining();
        let n = conn.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(StepError::Eof);
        }
        if let Some(id) = reader.feed(&buf[..n])?.id {
            return Ok(id);
        }
    }
}

async fn dial(inner: Arc<Inner>, ticket: DialTicket, _token: TaskToken) {
    let mut shutdown = inner.shutdown.clone();
    let res = tokio::select! {
        r = inner.establish(&ticket) => r,
        _ = shutdown.wait() => Err((Stage::Connect, StepError::Timeout)),
    };
    let (tickets, sooner) = {
        let mut st = lock(&inner.state);
        let st = &mut *st;
        let now = now();
        let before = st.m.refill_at();
        match res {
            Ok(conn) => land(&mut st.m, ticket, conn, inner.single, now),
            Err((stage, e)) => {
                debug!(?stage, error = %e, "dial failed");
                st.m.handle_dial_failure(ticket, stage, random_u32(), now);
            }
        }
        (Inner::outputs(st, now), st.m.refill_at() < before)
    };
    inner.start_dials(tickets);
    // The driver's timer only needs re-arming when the next round moved closer (the
    // end of a backoff); a later one it notices when it wakes. Waking it for every
    // dial would cost a task switch per connection.
    if sooner {
        inner.wake.notify_one();
    }
}

fn land(
    m: &mut ClientMachine<PoolConn>,
    mut ticket: DialTicket,
    mut conn: PoolConn,
    single: bool,
    now: std::time::Instant,
) {
    loop {
        let id = conn.id;
        match m.handle_dial_success(ticket, id, conn, now) {
            Landed::Kept | Landed::Closed => return,
            Landed::Collision(t, mut c) if single => {
                c.id = ConnId::from_random(random4());
                ticket = t;
                conn = c;
            }
            Landed::Collision(t, _) => {
                debug!(%id, "server sent an id already idle here");
                m.handle_dial_failure(t, Stage::Id, random_u32(), now);
                return;
            }
        }
    }
}

async fn drive(inner: Arc<Inner>, _token: TaskToken) {
    let mut shutdown = inner.shutdown.clone();
    let mut next_sweep = now() + inner.sweep_interval;
    loop {
        let now = now();
        let (tickets, wake_at, dead) = {
            let mut st = lock(&inner.state);
            let st = &mut *st;
            if st.m.is_closed() {
                return;
            }
            st.m.handle_timeout(now);
            let mut dead = 0;
            if now >= next_sweep {
                dead = st.m.sweep(PoolConn::is_alive);
                next_sweep = now + inner.sweep_interval;
            }
            let t = Inner::outputs(st, now);
            (t, st.m.poll_timeout(), dead)
        };
        if dead > 0 {
            debug!(dead, "evicted dead idle connections");
        }
        inner.start_dials(tickets);
        let wake_at = wake_at.map_or(next_sweep, |w| w.min(next_sweep));
        tokio::select! {
            _ = sleep_until(wake_at) => {}
            _ = inner.wake.notified() => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// The client end of the pool. Cheap to clone; the pool closes when the last clone is
/// dropped or [`close`](Self::close) is called.
///
/// ```no_run
/// # async fn f() -> Result<(), pool_tokio::PoolError> {
/// use pool_tokio::ClientPool;
/// use std::time::Duration;
/// let pool = ClientPool::builder()
///     .address("127.0.0.1:10101".parse().unwrap())
///     .capacity(16, 256)
///     .build()?;
/// # let id = "0a0b0c0d".parse().unwrap();
/// // `id` came from the server over the application's control channel.
/// let conn = pool.get(id, Duration::from_secs(2)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientPool {
    owner: Arc<Owner<Inner>>,
    get_timeout: Duration,
}

impl std::fmt::Debug for ClientPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPool")
            .field("status", &self.stats().status)
            .finish()
    }
}

impl ClientPool {
    /// A builder with the defaults.
    pub fn builder() -> ClientPoolBuilder {
        ClientPoolBuilder::default()
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.0
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, State> {
        lock(&self.inner().state)
    }

    common_getters!();

    /// The connection with `id`, waiting up to `timeout` while a handshake in flight
    /// may still bring it (Go: `ClientGet`; later releases: `OutgoingGet`). The
    /// connection passed the liveness probe; no byte of it was read by the pool.
    pub async fn get(&self, id: ConnId, timeout: Duration) -> Result<PoolConn, PoolError> {
        self.take(Some(id), timeout).await
    }

    /// Any live idle connection, oldest first; in single mode one is dialed at once
    /// when none is idle.
    pub async fn get_any(&self, timeout: Duration) -> Result<PoolConn, PoolError> {
        self.take(None, timeout).await
    }

    /// [`get`](Self::get) with the pool's default timeout.
    pub async fn get_default(&self, id: ConnId) -> Result<PoolConn, PoolError> {
        self.take(Some(id), self.get_timeout).await
    }

    async fn take(&self, id: Option<ConnId>, timeout: Duration) -> Result<PoolConn, PoolError> {
        let inner = self.inner();
        let now = now();
        let deadline = now + timeout;
        let (rx, key, tickets) = {
            let mut st_guard = lock(&inner.state);
            let st = &mut *st_guard;
            let got = match id {
                Some(id) => st.m.get(id, now, deadline, PoolConn::is_alive),
                None => st.m.get_any(now, deadline, PoolConn::is_alive),
            };
            match got {
                Got::Ready(_, c) => {
                    // Replace it at once: the core tops up below the capacity.
                    let tickets = Inner::outputs(st, now);
                    drop(st_guard);
                    inner.start_dials(tickets);
                    return Ok(c);
                }
                Got::Failed(e) => return Err(PoolError::from_get(e, id)),
                Got::Wait(key) => {
                    let (tx, rx) = oneshot::channel();
                    st.replies.insert(key, tx);
                    (rx, key, Inner::outputs(st, now))
                }
            }
        };
        inner.start_dials(tickets);
        inner.wake.notify_one();
        let waiting = Waiting {
            hub: &**inner,
            key,
            rx: Some(rx),
        };
        match waiting.wait(deadline).await {
            Ok((_, c)) => Ok(c),
            Err(e) => Err(PoolError::from_get(e, id)),
        }
    }

    /// Closes every idle connection and refills at once (Go: `Flush`).
    pub fn flush(&self) {
        let (conns, tickets) = {
            let mut st = lock(&self.inner().state);
            let st = &mut *st;
            let now = now();
            let conns = st.m.flush(now);
            (conns, Inner::outputs(st, now))
        };
        info!(closed = conns.len(), "client pool flushed");
        drop(conns);
        self.inner().start_dials(tickets);
    }

    /// Closes the pool: waiting gets fail with [`PoolError::Closed`], idle connections
    /// are closed, dials in flight are abandoned, and this returns once every task of
    /// the pool has ended (Go: `Close`). Dropping the last handle does the same
    /// without the wait.
    pub async fn close(&self) {
        drop(self.inner().shut());
        self.inner().tasks.all_done().await;
    }

    /// Current capacity (Go: `Capacity`).
    pub fn capacity(&self) -> usize {
        lock(&self.inner().state).m.status().capacity
    }

    /// Current refill interval (Go: `Interval`).
    pub fn interval(&self) -> Duration {
        lock(&self.inner().state).m.status().interval
    }
}
