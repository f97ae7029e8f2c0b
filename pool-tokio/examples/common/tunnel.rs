//! A reverse tunnel built on the pool, with an authenticated control channel.
//!
//! Shared by the `tunnel` and `demo` examples and by `tests/tunnel.rs` (each includes
//! this file with `#[path]`). The protocol is described in `examples/TUNNEL.md`; in
//! short:
//!
//! - **Pool connections** go through [`ServerPool`] / [`ClientPool`] unchanged.
//! - **Control** is a separate TCP port (same TLS mode as the pool). The server speaks
//!   first: `"NPT1"` + a 16-byte nonce `Ns`. The client answers a 16-byte nonce `Nc` and
//!   `HMAC-SHA256(key, "client" || Ns || Nc)`; the server checks it (constant time, 5 s
//!   deadline for the whole handshake) and answers `HMAC-SHA256(key, "server" || Ns ||
//!   Nc)`, so both sides proved the key. Only then does the connection become the
//!   control connection (a newer one replaces an older one). After that the server
//!   sends lines: `<8 hex id>\n` (take this connection) or `\n` (keep-alive).
//! - **Pooled-connection proof**: before relaying, the client writes
//!   `HMAC-SHA256(key, "conn" || Ns || id)` (32 bytes) on the pooled connection it took;
//!   the server relays nothing to a pooled connection until it has read and checked
//!   that proof. A stranger who slipped a connection into the server pool therefore
//!   never receives user traffic: the server drops it and tries another.
#![allow(dead_code)]

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_tls::{ClientTlsBuilder, Fingerprint, ServerTls, TlsMode};
use pool_tokio::{ClientPool, ConnId, IpFilter, ServerPool, TcpDialer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Errors of setup: shown to the user, never matched on.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// First bytes the server writes on a control connection.
pub(crate) const MAGIC: &[u8; 4] = b"NPT1";
/// Length of each side's nonce.
pub(crate) const NONCE_LEN: usize = 16;
/// Length of an HMAC-SHA256 tag.
pub(crate) const TAG_LEN: usize = 32;
/// Longest control line accepted (an id is 8 hex digits plus `\n`).
const MAX_LINE: u64 = 64;
/// Control candidates authenticating at once; more are closed at once.
const MAX_CANDIDATES: usize = 64;
/// Tries of one user session when a pooled connection fails its proof.
const ATTEMPTS: usize = 3;

const LABEL_CLIENT: &[u8] = b"nodepass-pool/control/client";
const LABEL_SERVER: &[u8] = b"nodepass-pool/control/server";
const LABEL_CONN: &[u8] = b"nodepass-pool/conn";

// ---------------------------------------------------------------------------------
// Keys, MACs, randomness
// ---------------------------------------------------------------------------------

/// The default tunnel key, derived from the tunnel port alone (as NodePass derives
/// its default from the port): `hex(SHA-256("nodepass-pool:" + port))`. Anyone who
/// knows the port knows it, so a real deployment sets its own key.
pub(crate) fn default_key(port: u16) -> Vec<u8> {
    hex(&Sha256::digest(format!("nodepass-pool:{port}").as_bytes())).into_bytes()
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`, by `ring`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Whether `tag` is the HMAC-SHA256 of the concatenation of `parts`, compared in
/// constant time by `ring`.
pub(crate) fn hmac_ok(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&key, &parts.concat(), tag).is_ok()
}

/// Random bytes from the TLS crypto provider.
pub(crate) fn random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut out = [0u8; N];
    pool_tls::provider()
        .secure_random
        .fill(&mut out)
        .map_err(|_| std::io::Error::other("no secure randomness"))?;
    Ok(out)
}

/// The proof a client writes on a pooled connection before relaying.
pub(crate) fn conn_proof(key: &[u8], server_nonce: &[u8; NONCE_LEN], id: &ConnId) -> [u8; TAG_LEN] {
    hmac(key, &[LABEL_CONN, server_nonce, id.as_bytes()])
}

/// Whether `tag` is [`conn_proof`], in constant time.
pub(crate) fn conn_proof_ok(
    key: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    id: &ConnId,
    tag: &[u8],
) -> bool {
    hmac_ok(key, &[LABEL_CONN, server_nonce, id.as_bytes()], tag)
}

/// Splits `host:port` (IPv6 in brackets) into host and port.
pub(crate) fn split_host_port(s: &str) -> Result<(&str, u16), BoxError> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{s}`: bad port `{port}`"))?;
    if host.is_empty() {
        return Err(format!("`{s}`: empty host").into());
    }
    Ok((host, port))
}

/// The default control address: the tunnel host, the tunnel port plus one.
pub(crate) fn default_control(tunnel: &str) -> Result<String, BoxError> {
    let (host, port) = split_host_port(tunnel)?;
    let next = port.checked_add(1).filter(|_| port != 0).ok_or_else(|| {
        format!("tunnel port {port} has no `port + 1` control port: give --control ADDR")
    })?;
    Ok(format!("{host}:{next}"))
}

// ---------------------------------------------------------------------------------
// Streams, counters, logging
// ---------------------------------------------------------------------------------

/// A plain or TLS control stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

macro_rules! counters {
    ($(#[$m:meta])* $name:ident / $snap:ident { $($(#[$fm:meta])* $f:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub(crate) struct $name { $($(#[$fm])* pub(crate) $f: AtomicU64,)* }
        /// A copy of the counters at one instant.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub(crate) struct $snap { $($(#[$fm])* pub(crate) $f: u64,)* }
        impl $name {
            /// The counters now.
            pub(crate) fn snapshot(&self) -> $snap {
                $snap { $($f: self.$f.load(Relaxed),)* }
            }
        }
    };
}

counters! {
    /// What the server side counted.
    ServerStats / ServerSnapshot {
        /// User connections accepted on the public port.
        users,
        /// User sessions whose relay ended without an I/O error.
        relayed,
        /// User sessions that failed (no control, no pooled connection, relay error).
        failed,
        /// Bytes relayed user -> client side.
        bytes_up,
        /// Bytes relayed client side -> user.
        bytes_down,
        /// Pooled connections dropped because their proof was missing or wrong.
        bad_proofs,
        /// Control candidates that proved the key.
        control_ok,
        /// Control candidates dropped: wrong key, garbage, silence, TLS failure.
        control_refused,
        /// Control candidates refused by the client-IP filter.
        control_ip_refused,
        /// Control candidates closed because too many were authenticating.
        control_busy,
    }
}

counters! {
    /// What the client side counted.
    ClientStats / ClientSnapshot {
        /// Ids received on the control connection.
        ids,
        /// Sessions whose relay ended without an I/O error.
        relayed,
        /// Sessions that failed (unknown id, target down, relay error).
        failed,
        /// Bytes relayed target -> server side.
        bytes_up,
        /// Bytes relayed server side -> target.
        bytes_down,
        /// Control connections established (key proved both ways).
        control_ok,
        /// Control attempts that failed (connect, TLS, key, timeout).
        control_failed,
    }
}

fn log(on: bool, args: fmt::Arguments<'_>) {
    if on {
        eprintln!("[tunnel] {args}");
    }
}

/// Deadlines of the tunnel (not of the pools, which keep their own defaults).
#[derive(Clone, Debug)]
pub(crate) struct Timeouts {
    /// The whole control handshake (TCP accept to key proved), per candidate.
    pub(crate) auth: Duration,
    /// How long a user connection waits for a control connection to exist.
    pub(crate) control_wait: Duration,
    /// One `get` from either pool.
    pub(crate) get: Duration,
    /// How long the server waits for the proof on a pooled connection.
    pub(crate) proof: Duration,
    /// Server keep-alive period on control; the client gives up after 3 silent periods.
    pub(crate) keepalive: Duration,
    /// Client: connecting to the control port and to the target; writes on control.
    pub(crate) io: Duration,
    /// Client: first and longest pause between control reconnects.
    pub(crate) backoff: (Duration, Duration),
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            auth: Duration::from_secs(5),
            control_wait: Duration::from_secs(10),
            get: Duration::from_secs(5),
            proof: Duration::from_secs(5),
            keepalive: Duration::from_secs(5),
            io: Duration::from_secs(5),
            backoff: (Duration::from_millis(200), Duration::from_secs(5)),
        }
    }
}

// ---------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------

/// The public side.
#[derive(Clone, Debug)]
pub(crate) struct ServerConfig {
    /// Where the pool listens (clients dial in here).
    pub(crate) tunnel: SocketAddr,
    /// Where users connect.
    pub(crate) public: SocketAddr,
    /// Where the control connection comes in. `None`: tunnel port + 1 (or port 0 when
    /// the tunnel port is 0).
    pub(crate) control: Option<SocketAddr>,
    /// TLS certificate for pool and control (modes 1 and 2); `None` is mode 0.
    pub(crate) tls: Option<ServerTls>,
    /// Client-IP filter for pool and control (`None`: anyone).
    pub(crate) client_ip: Option<String>,
    /// Tunnel key; `None` derives [`default_key`] from the bound tunnel port.
    pub(crate) key: Option<Vec<u8>>,
    /// Server pool maximum capacity.
    pub(crate) max_capacity: usize,
    /// Deadlines.
    pub(crate) timeouts: Timeouts,
    /// Log control events to stderr.
    pub(crate) verbose: bool,
}

impl ServerConfig {
    /// Loopback everywhere, port 0 everywhere, mode 0, default key.
    pub(crate) fn loopback() -> Self {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());
        Self {
            tunnel: any,
            public: any,
            control: Some(any),
            tls: None,
            client_ip: None,
            key: None,
            max_capacity: 1024,
            timeouts: Timeouts::default(),
            verbose: false,
        }
    }
}

/// The active control connection, as user sessions see it.
#[derive(Clone)]
struct Control {
    gen: u64,
    nonce: [u8; NONCE_LEN],
    tx: mpsc::Sender<ConnId>,
}

struct ServerShared {
    pool: ServerPool,
    key: Vec<u8>,
    t: Timeouts,
    stats: ServerStats,
    control: watch::Sender<Option<Control>>,
    next_gen: AtomicU64,
    verbose: bool,
}

/// A running server side. Dropping it stops its tasks; [`shutdown`](Self::shutdown)
/// also waits for the pool to close.
pub(crate) struct ServerHandle {
    shared: Arc<ServerShared>,
    tunnel: SocketAddr,
    public: SocketAddr,
    control: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl ServerHandle {
    /// The pool's address (where clients dial).
    pub(crate) fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel
    }
    /// Where users connect.
    pub(crate) fn public_addr(&self) -> SocketAddr {
        self.public
    }
    /// Where the control connection comes in.
    pub(crate) fn control_addr(&self) -> SocketAddr {
        self.control
    }
    /// The server pool.
    pub(crate) fn pool(&self) -> &ServerPool {
        &self.shared.pool
    }
    /// The key in use.
    pub(crate) fn key(&self) -> &[u8] {
        &self.shared.key
    }
    /// Counters.
    pub(crate) fn stats(&self) -> ServerSnapshot {
        self.shared.stats.snapshot()
    }
    /// Whether an authenticated control connection is active.
    pub(crate) fn control_up(&self) -> bool {
        self.shared.control.borrow().is_some()
    }
    /// Waits until a control connection is active, or `within` passes.
    pub(crate) async fn wait_control(&self, within: Duration) -> bool {
        let mut rx = self.shared.control.subscribe();
        let ok = matches!(
            timeout(within, rx.wait_for(Option::is_some)).await,
            Ok(Ok(_))
        );
        ok
    }
    /// Stops every task (sessions included) and closes the pool.
    pub(crate) async fn shutdown(mut self) {
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
pub(crate) async fn start_server(cfg: ServerConfig) -> Result<ServerHandle, BoxError> {
    let filter = match &cfg.client_ip {
        Some(spec) => IpFilter::parse(spec).map_err(|e| format!("--client-ip: {e}"))?,
        None => IpFilter::any(),
    };
    let mut b = ServerPool::builder()
        .bind(cfg.tunnel)
        .max_capacity(cfg.max_capacity)
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
    let key = cfg.key.unwrap_or_else(|| default_key(tunnel.port()));
    if key.is_empty() {
        return Err("the tunnel key is empty".into());
    }
    let shared = Arc::new(ServerShared {
        pool,
        key,
        t: cfg.timeouts,
        stats: ServerStats::default(),
        control: watch::channel(None).0,
        next_gen: AtomicU64::new(0),
        verbose: cfg.verbose,
    });
    let control = control_l.local_addr()?;
    let public = public_l.local_addr()?;
    let tasks = vec![
        tokio::spawn(control_accept_loop(
            shared.clone(),
            control_l,
            acceptor,
            filter,
        )),
        tokio::spawn(public_accept_loop(shared.clone(), public_l)),
    ];
    Ok(ServerHandle {
        shared,
        tunnel,
        public,
        control,
        tasks,
    })
}

/// Accepts control candidates; each one authenticates in its own task under a
/// deadline, so a silent or slow stranger holds up nobody.
async fn control_accept_loop(
    shared: Arc<ServerShared>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    filter: IpFilter,
) {
    let slots = Arc::new(Semaphore::new(MAX_CANDIDATES));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                // Out of descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !filter.allows(peer.ip()) {
            shared.stats.control_ip_refused.fetch_add(1, Relaxed);
            log(
                shared.verbose,
                format_args!("control: {peer} refused by --client-ip"),
            );
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared.stats.control_busy.fetch_add(1, Relaxed);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tasks.spawn(async move {
            let auth = timeout(shared.t.auth, server_handshake(tcp, acceptor, &shared.key)).await;
            drop(slot);
            match auth {
                Ok(Ok((io, nonce))) => {
                    shared.stats.control_ok.fetch_add(1, Relaxed);
                    serve_control(shared, io, peer, nonce).await;
                }
                Ok(Err(e)) => {
                    shared.stats.control_refused.fetch_add(1, Relaxed);
                    log(shared.verbose, format_args!("control: {peer} refused: {e}"));
                }
                Err(_) => {
                    shared.stats.control_refused.fetch_add(1, Relaxed);
                    log(
                        shared.verbose,
                        format_args!("control: {peer} refused: no valid answer in time"),
                    );
                }
            }
        });
    }
}

/// The server half of the control handshake.
async fn server_handshake(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    key: &[u8],
) -> Result<(BoxIo, [u8; NONCE_LEN]), BoxError> {
    let mut io: BoxIo = match acceptor {
        Some(a) => Box::new(a.accept(tcp).await.map_err(|e| format!("TLS: {e}"))?),
        None => Box::new(tcp),
    };
    let ns: [u8; NONCE_LEN] = random()?;
    let mut hello = [0u8; MAGIC.len() + NONCE_LEN];
    hello[..MAGIC.len()].copy_from_slice(MAGIC);
    hello[MAGIC.len()..].copy_from_slice(&ns);
    io.write_all(&hello).await?;
    io.flush().await?;
    let mut answer = [0u8; NONCE_LEN + TAG_LEN];
    io.read_exact(&mut answer)
        .await
        .map_err(|e| format!("short answer: {e}"))?;
    let (nc, tag) = answer.split_at(NONCE_LEN);
    if !hmac_ok(key, &[LABEL_CLIENT, &ns, nc], tag) {
        return Err("wrong tunnel key (or not a tunnel client)".into());
    }
    io.write_all(&hmac(key, &[LABEL_SERVER, &ns, nc])).await?;
    io.flush().await?;
    Ok((io, ns))
}

/// Runs one authenticated control connection until it breaks or is replaced.
async fn serve_control(
    shared: Arc<ServerShared>,
    io: BoxIo,
    peer: SocketAddr,
    nonce: [u8; NONCE_LEN],
) {
    let gen = shared.next_gen.fetch_add(1, Relaxed) + 1;
    let (tx, mut rx) = mpsc::channel::<ConnId>(4096);
    let mut watch = shared.control.subscribe();
    let old = shared
        .control
        .send_replace(Some(Control { gen, nonce, tx }));
    log(
        shared.verbose,
        format_args!(
            "control: {peer} authenticated{}",
            if old.is_some() {
                ", replacing the previous control connection"
            } else {
                ""
            }
        ),
    );
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut keepalive = tokio::time::interval(shared.t.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let io_t = shared.t.keepalive.max(Duration::from_secs(1)) * 2;
    let mut junk = [0u8; 1];
    let mut out = Vec::with_capacity(1024);
    let reason = loop {
        tokio::select! {
            id = rx.recv() => {
                let Some(id) = id else { break "closed" };
                out.clear();
                push_id(&mut out, &id);
                while out.len() < 8192 {
                    match rx.try_recv() {
                        Ok(id) => push_id(&mut out, &id),
                        Err(_) => break,
                    }
                }
                if write_flush(&mut wr, &out, io_t).await.is_err() {
                    break "write failed";
                }
            }
            _ = keepalive.tick() => {
                if write_flush(&mut wr, b"\n", io_t).await.is_err() {
                    break "write failed";
                }
            }
            r = rd.read(&mut junk) => break match r {
                Ok(0) => "closed by the client",
                Ok(_) => "unexpected bytes from the client",
                Err(_) => "read error",
            },
            r = watch.changed() => {
                let current = watch.borrow_and_update().as_ref().map(|c| c.gen);
                if r.is_err() || current != Some(gen) {
                    break "replaced by a newer control connection";
                }
            }
        }
    };
    shared.control.send_if_modified(|c| {
        if c.as_ref().map(|c| c.gen) == Some(gen) {
            *c = None;
            true
        } else {
            false
        }
    });
    log(
        shared.verbose,
        format_args!("control: {peer} ended: {reason}"),
    );
}

fn push_id(out: &mut Vec<u8>, id: &ConnId) {
    out.extend_from_slice(id.as_bytes());
    out.push(b'\n');
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8], t: Duration) -> Result<(), ()> {
    match timeout(t, async {
        w.write_all(buf).await?;
        w.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn public_accept_loop(shared: Arc<ServerShared>, listener: TcpListener) {
    let mut sessions = JoinSet::new();
    loop {
        while sessions.try_join_next().is_some() {}
        let Ok((user, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = user.set_nodelay(true);
        shared.stats.users.fetch_add(1, Relaxed);
        let shared = shared.clone();
        sessions.spawn(async move {
            let ok = user_session(&shared, user).await;
            let counter = if ok {
                &shared.stats.relayed
            } else {
                &shared.stats.failed
            };
            counter.fetch_add(1, Relaxed);
        });
    }
}

/// One user: a control connection, a pooled connection that proves itself, a relay.
async fn user_session(shared: &ServerShared, mut user: TcpStream) -> bool {
    let mut control = shared.control.subscribe();
    let deadline = tokio::time::Instant::now() + shared.t.control_wait;
    for _ in 0..ATTEMPTS {
        let ctl = match tokio::time::timeout_at(deadline, control.wait_for(Option::is_some)).await {
            Ok(Ok(c)) => c.clone(),
            _ => return false,
        };
        let Some(ctl) = ctl else { return false };
        let Ok((id, mut conn)) = shared.pool.get_timeout(shared.t.get).await else {
            return false;
        };
        if ctl.tx.send(id).await.is_err() {
            continue; // that control connection just ended; `conn` is dropped
        }
        let mut proof = [0u8; TAG_LEN];
        let read = timeout(shared.t.proof, conn.read_exact(&mut proof)).await;
        let good = matches!(read, Ok(Ok(_))) && conn_proof_ok(&shared.key, &ctl.nonce, &id, &proof);
        if !good {
            shared.stats.bad_proofs.fetch_add(1, Relaxed);
            continue;
        }
        return match tokio::io::copy_bidirectional(&mut user, &mut conn).await {
            Ok((up, down)) => {
                shared.stats.bytes_up.fetch_add(up, Relaxed);
                shared.stats.bytes_down.fetch_add(down, Relaxed);
                true
            }
            Err(_) => false,
        };
    }
    false
}

// ---------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------

/// The private side.
#[derive(Clone, Debug)]
pub(crate) struct ClientConfig {
    /// The server's tunnel address, `HOST:PORT`.
    pub(crate) tunnel: String,
    /// The server's control address; `None`: the tunnel host, tunnel port + 1.
    pub(crate) control: Option<String>,
    /// The service behind the tunnel, `HOST:PORT`.
    pub(crate) target: String,
    /// TLS mode of pool and control.
    pub(crate) mode: TlsMode,
    /// TLS server name (mode 2: checked); default: the tunnel host.
    pub(crate) hostname: Option<String>,
    /// Mode 2: trust this PEM CA file instead of the web roots.
    pub(crate) ca: Option<PathBuf>,
    /// Mode 1: accept only this server certificate.
    pub(crate) pin: Option<Fingerprint>,
    /// Client pool capacity bounds.
    pub(crate) min: usize,
    /// See `min`.
    pub(crate) max: usize,
    /// Client pool dials in flight at most.
    pub(crate) parallelism: usize,
    /// Tunnel key; `None` derives [`default_key`] from the tunnel port.
    pub(crate) key: Option<Vec<u8>>,
    /// Deadlines.
    pub(crate) timeouts: Timeouts,
    /// Log control events to stderr.
    pub(crate) verbose: bool,
}

impl ClientConfig {
    /// A client of `server` forwarding to `target`, mode 0, capacity 16..256.
    pub(crate) fn for_server(server: &ServerHandle, target: SocketAddr) -> Self {
        Self {
            tunnel: server.tunnel_addr().to_string(),
            control: Some(server.control_addr().to_string()),
            target: target.to_string(),
            mode: TlsMode::Off,
            hostname: None,
            ca: None,
            pin: None,
            min: 16,
            max: 256,
            parallelism: 8,
            key: Some(server.key().to_vec()),
            timeouts: Timeouts::default(),
            verbose: false,
        }
    }
}

struct ClientShared {
    pool: ClientPool,
    control: String,
    target: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    key: Vec<u8>,
    t: Timeouts,
    stats: ClientStats,
    up: watch::Sender<bool>,
    verbose: bool,
}

/// A running client side. Dropping it stops its tasks.
pub(crate) struct ClientHandle {
    shared: Arc<ClientShared>,
    started: Instant,
    task: JoinHandle<()>,
}

impl ClientHandle {
    /// The client pool.
    pub(crate) fn pool(&self) -> &ClientPool {
        &self.shared.pool
    }
    /// When the pool was built.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }
    /// Counters.
    pub(crate) fn stats(&self) -> ClientSnapshot {
        self.shared.stats.snapshot()
    }
    /// Whether the control connection is up.
    pub(crate) fn control_up(&self) -> bool {
        *self.shared.up.borrow()
    }
    /// Waits until the control connection is up, or `within` passes.
    pub(crate) async fn wait_control(&self, within: Duration) -> bool {
        let mut rx = self.shared.up.subscribe();
        let ok = matches!(timeout(within, rx.wait_for(|up| *up)).await, Ok(Ok(_)));
        ok
    }
    /// Stops every task (sessions included) and closes the pool.
    pub(crate) async fn shutdown(self) {
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
pub(crate) async fn start_client(cfg: ClientConfig) -> Result<ClientHandle, BoxError> {
    let (host, port) = split_host_port(&cfg.tunnel).map_err(|e| format!("--tunnel: {e}"))?;
    let control = match cfg.control {
        Some(c) => c,
        None => default_control(&cfg.tunnel)?,
    };
    let key = cfg.key.unwrap_or_else(|| default_key(port));
    if key.is_empty() {
        return Err("the tunnel key is empty".into());
    }
    let name = cfg.hostname.clone().unwrap_or_else(|| host.to_owned());
    let mut b = ClientPool::builder()
        .dialer(TcpDialer::host(cfg.tunnel.clone()))
        .capacity(cfg.min, cfg.max)
        .parallelism(cfg.parallelism)
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
    let shared = Arc::new(ClientShared {
        pool,
        control,
        target: cfg.target,
        tls,
        key,
        t: cfg.timeouts,
        stats: ClientStats::default(),
        up: watch::channel(false).0,
        verbose: cfg.verbose,
    });
    let task = tokio::spawn(control_loop(shared.clone()));
    Ok(ClientHandle {
        shared,
        started,
        task,
    })
}

/// Keeps one control connection up, reconnecting with exponential backoff.
async fn control_loop(shared: Arc<ClientShared>) {
    let (first, longest) = shared.t.backoff;
    let mut pause = first;
    let mut sessions = JoinSet::new();
    loop {
        let attempt = timeout(shared.t.auth, client_handshake(&shared)).await;
        match attempt {
            Ok(Ok((io, nonce))) => {
                shared.stats.control_ok.fetch_add(1, Relaxed);
                shared.up.send_replace(true);
                log(
                    shared.verbose,
                    format_args!("control: connected to {}", shared.control),
                );
                pause = first;
                let why = run_control(&shared, io, nonce, &mut sessions).await;
                shared.up.send_replace(false);
                log(shared.verbose, format_args!("control: lost: {why}"));
            }
            Ok(Err(e)) => {
                shared.stats.control_failed.fetch_add(1, Relaxed);
                log(
                    shared.verbose,
                    format_args!("control: {}: {e}; retry in {pause:?}", shared.control),
                );
            }
            Err(_) => {
                shared.stats.control_failed.fetch_add(1, Relaxed);
                log(
                    shared.verbose,
                    format_args!(
                        "control: {}: no handshake in time; retry in {pause:?}",
                        shared.control
                    ),
                );
            }
        }
        // Up to 25 % jitter so that many clients do not retry in step.
        let jitter = random::<2>().map(u16::from_le_bytes).unwrap_or(0);
        let extra = pause.mul_f64(f64::from(jitter) / f64::from(u16::MAX) / 4.0);
        tokio::time::sleep(pause + extra).await;
        pause = (pause * 2).min(longest);
        while sessions.try_join_next().is_some() {}
    }
}

/// The client half of the control handshake.
async fn client_handshake(s: &ClientShared) -> Result<(BoxIo, [u8; NONCE_LEN]), BoxError> {
    let tcp = TcpStream::connect(&s.control)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let mut io: BoxIo = match &s.tls {
        Some((c, name)) => Box::new(
            c.connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?,
        ),
        None => Box::new(tcp),
    };
    let mut hello = [0u8; MAGIC.len() + NONCE_LEN];
    io.read_exact(&mut hello)
        .await
        .map_err(|e| format!("no greeting: {e}"))?;
    if &hello[..MAGIC.len()] != MAGIC {
        return Err("not a tunnel control port (bad greeting)".into());
    }
    let mut ns = [0u8; NONCE_LEN];
    ns.copy_from_slice(&hello[MAGIC.len()..]);
    let nc: [u8; NONCE_LEN] = random()?;
    let mut answer = [0u8; NONCE_LEN + TAG_LEN];
    answer[..NONCE_LEN].copy_from_slice(&nc);
    answer[NONCE_LEN..].copy_from_slice(&hmac(&s.key, &[LABEL_CLIENT, &ns, &nc]));
    io.write_all(&answer).await?;
    io.flush().await?;
    let mut tag = [0u8; TAG_LEN];
    io.read_exact(&mut tag)
        .await
        .map_err(|_| "refused by the server: wrong tunnel key?")?;
    if !hmac_ok(&s.key, &[LABEL_SERVER, &ns, &nc], &tag) {
        return Err("the server does not know the tunnel key".into());
    }
    Ok((io, ns))
}

/// Reads ids until the control connection breaks; one session task per id.
async fn run_control(
    shared: &Arc<ClientShared>,
    io: BoxIo,
    nonce: [u8; NONCE_LEN],
    sessions: &mut JoinSet<()>,
) -> String {
    let mut rd = BufReader::new(io);
    let mut line = Vec::with_capacity(16);
    let silence = shared.t.keepalive * 3;
    loop {
        line.clear();
        let read = timeout(
            silence,
            (&mut rd).take(MAX_LINE).read_until(b'\n', &mut line),
        )
        .await;
        match read {
            Err(_) => return format!("no keep-alive for {silence:?}"),
            Ok(Err(e)) => return format!("read error: {e}"),
            Ok(Ok(0)) => return "closed by the server".into(),
            Ok(Ok(_)) => {}
        }
        if line.pop() != Some(b'\n') {
            return "line too long or cut".into();
        }
        if line.is_empty() {
            continue; // keep-alive
        }
        let Ok(id) = ConnId::from_hex_bytes(&line) else {
            return format!("bad line {:?}", String::from_utf8_lossy(&line));
        };
        shared.stats.ids.fetch_add(1, Relaxed);
        while sessions.try_join_next().is_some() {}
        let shared = shared.clone();
        sessions.spawn(async move {
            let ok = client_session(&shared, id, &nonce).await;
            let counter = if ok {
                &shared.stats.relayed
            } else {
                &shared.stats.failed
            };
            counter.fetch_add(1, Relaxed);
        });
    }
}

/// One session: the pooled connection with `id`, a fresh target connection, a proof,
/// a relay.
async fn client_session(s: &ClientShared, id: ConnId, nonce: &[u8; NONCE_LEN]) -> bool {
    let Ok(mut conn) = s.pool.get_timeout(id, s.t.get).await else {
        return false;
    };
    let Ok(Ok(mut target)) = timeout(s.t.io, TcpStream::connect(&s.target)).await else {
        log(
            s.verbose,
            format_args!("session {id}: target {} unreachable", s.target),
        );
        return false; // dropping `conn` tells the server side
    };
    let _ = target.set_nodelay(true);
    if conn
        .write_all(&conn_proof(&s.key, nonce, &id))
        .await
        .is_err()
    {
        return false;
    }
    match tokio::io::copy_bidirectional(&mut conn, &mut target).await {
        Ok((down, up)) => {
            s.stats.bytes_down.fetch_add(down, Relaxed);
            s.stats.bytes_up.fetch_add(up, Relaxed);
            true
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------
// Echo target and load generator (demo and tests)
// ---------------------------------------------------------------------------------

/// An echo server on loopback port 0: every byte comes back, then the write half
/// closes when the read half does.
pub(crate) async fn start_echo() -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            conns.spawn(async move {
                let (mut r, mut w) = s.into_split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Ok((addr, task))
}

/// A small deterministic generator (SplitMix64) for per-session payloads.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator of session `n`.
    pub(crate) fn for_session(n: u64) -> Self {
        Self(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Fills `buf`, one draw per byte, so the stream does not depend on how it is cut
    /// into buffers.
    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = (self.next() >> 24) as u8;
        }
    }
}

/// The outcome of one user session.
pub(crate) type SessionResult = Result<Duration, String>;

/// One user: connects to `public`, sends `bytes` pseudo-random bytes (seeded by `n`)
/// and half-closes, while reading the echo back, checking every byte, and then the
/// end of stream.
pub(crate) async fn user_session_echo(
    public: SocketAddr,
    n: u64,
    bytes: usize,
    limit: Duration,
) -> SessionResult {
    let start = Instant::now();
    let run = async {
        let s = TcpStream::connect(public)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        let (mut r, mut w) = s.into_split();
        let send = async {
            let mut rng = Rng::for_session(n);
            let mut buf = [0u8; 8192];
            let mut left = bytes;
            while left > 0 {
                let k = left.min(buf.len());
                rng.fill(&mut buf[..k]);
                w.write_all(&buf[..k])
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                left -= k;
            }
            w.shutdown().await.map_err(|e| format!("half-close: {e}"))
        };
        let check = async {
            let mut rng = Rng::for_session(n);
            let mut buf = [0u8; 8192];
            let mut want = [0u8; 8192];
            let mut got = 0usize;
            while got < bytes {
                let k = r
                    .read(&mut buf[..(bytes - got).min(8192)])
                    .await
                    .map_err(|e| format!("receive after {got} bytes: {e}"))?;
                if k == 0 {
                    return Err(format!("closed after {got} of {bytes} bytes"));
                }
                rng.fill(&mut want[..k]);
                if let Some(i) = (0..k).find(|&i| buf[i] != want[i]) {
                    return Err(format!("byte {} differs", got + i));
                }
                got += k;
            }
            // The service closes after our half-close: that EOF must come back too,
            // with no byte before it.
            match r.read(&mut buf[..1]).await {
                Ok(0) => Ok(()),
                Ok(_) => Err(format!("bytes after the {bytes} expected")),
                Err(e) => Err(format!("no clean end: {e}")),
            }
        };
        tokio::try_join!(send, check)?;
        Ok::<_, String>(())
    };
    match timeout(limit, run).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("timed out after {limit:?}")),
    }
}

/// Progress of a load run, readable while it runs.
#[derive(Debug, Default)]
pub(crate) struct LoadProgress {
    /// Sessions finished (either way).
    pub(crate) done: AtomicU64,
    /// Sessions that failed.
    pub(crate) failed: AtomicU64,
}

/// The outcome of a load run.
#[derive(Debug, Default)]
pub(crate) struct LoadReport {
    /// Latency of each session that passed.
    pub(crate) latencies: Vec<Duration>,
    /// Errors of the sessions that failed (session number, error).
    pub(crate) errors: Vec<(u64, String)>,
    /// Wall time of the run.
    pub(crate) elapsed: Duration,
}

impl LoadReport {
    /// The `q` quantile (0..=1) of the latencies, if any passed.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let last = v.len().checked_sub(1)?;
        let i = ((last as f64) * q).round() as usize;
        v.get(i.min(last)).copied()
    }
}

/// Runs `sessions` echo sessions against `public`, `concurrency` at once.
pub(crate) async fn run_load(
    public: SocketAddr,
    sessions: u64,
    concurrency: usize,
    bytes: usize,
    limit: Duration,
    progress: Arc<LoadProgress>,
) -> LoadReport {
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for n in 0..sessions {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let progress = progress.clone();
        set.spawn(async move {
            let r = user_session_echo(public, n, bytes, limit).await;
            drop(permit);
            if r.is_err() {
                progress.failed.fetch_add(1, Relaxed);
            }
            progress.done.fetch_add(1, Relaxed);
            (n, r)
        });
    }
    let mut report = LoadReport::default();
    while let Some(j) = set.join_next().await {
        match j {
            Ok((_, Ok(d))) => report.latencies.push(d),
            Ok((n, Err(e))) => report.errors.push((n, e)),
            Err(e) => report.errors.push((u64::MAX, format!("task: {e}"))),
        }
    }
    report.errors.sort();
    report.elapsed = start.elapsed();
    report
}
