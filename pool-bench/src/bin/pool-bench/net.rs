//! Building blocks shared by the scenarios: TLS configs, raw (pool-free) connections,
//! pool pairs, and the two ways to fill: through the pool, and directly on tokio.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pool_tls::{ClientTlsBuilder, ServerTls, TlsMode};
use pool_tokio::{ClientConfig, ClientTls, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, ServerPool, SocketOptions};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

pub(crate) type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub(crate) const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// One certificate and both rustls ends, configured as the pool configures them: TLS 1.3
/// only, mode 1 (no verification on the client), rustls's session tickets and
/// resumption as they come.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) cert: ServerTls,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
}

impl Tls {
    pub(crate) fn new() -> Res<Self> {
        let cert = ServerTls::self_signed(["localhost"])?;
        let server = (*cert.config()?).clone();
        let client = ClientTlsBuilder::new(TlsMode::SelfSigned)
            .build()?
            .ok_or("mode 1 builds a client config")?;
        Ok(Self {
            cert,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(client),
        })
    }
}

/// A raw connection: what a hand-written tunnel would hold, with no pool around it.
pub(crate) enum RawConn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for RawConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for RawConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, b),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Raw pairs held open: the server ends and the client ends.
pub(crate) struct RawPairs {
    pub(crate) server: Vec<RawConn>,
    pub(crate) client: Vec<RawConn>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for RawPairs {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Opens `n` raw pairs with `par` connects in flight, each doing what the pool's
/// handshake does: connect, the same socket options on both ends, TLS if given, the
/// server writes an 8-byte hex id, the client reads exactly 8 bytes.
/// Returns the time until both ends hold all `n`, measured the
/// way the pool fill is (polled every millisecond).
pub(crate) async fn raw_fill(n: usize, par: usize, tls: Option<&Tls>) -> Res<(Duration, RawPairs)> {
    let listener = TcpListener::bind(LOOPBACK).await?;
    let dial = listener.local_addr()?;
    let server_held = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let server_count = Arc::new(AtomicUsize::new(0));
    let client_count = Arc::new(AtomicUsize::new(0));
    let opts = SocketOptions::default();

    let accept_task = {
        let held = server_held.clone();
        let count = server_count.clone();
        let acceptor = tls.map(|t| t.acceptor.clone());
        tokio::spawn(async move {
            let serial = Arc::new(AtomicUsize::new(0));
            while let Ok((tcp, _)) = listener.accept().await {
                let (held, count, acceptor, serial) = (
                    held.clone(),
                    count.clone(),
                    acceptor.clone(),
                    serial.clone(),
                );
                tokio::spawn(async move {
                    let _ = opts.apply(&tcp);
                    let mut conn = match acceptor {
                        None => RawConn::Plain(tcp),
                        Some(a) => match a.accept(tcp).await {
                            Ok(s) => RawConn::Tls(Box::new(TlsStream::Server(s))),
                            Err(_) => return,
                        },
                    };
                    let id = serial.fetch_add(1, Ordering::Relaxed) as u32;
                    let wire = format!("{id:08x}");
                    if conn.write_all(wire.as_bytes()).await.is_err() || conn.flush().await.is_err()
                    {
                        return;
                    }
                    lock(&held).push((id, conn));
                    count.fetch_add(1, Ordering::AcqRel);
                });
            }
        })
    };

    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(None::<String>));
    let mut workers = Vec::with_capacity(par);
    for _ in 0..par {
        let (next, count, failed) = (next.clone(), client_count.clone(), failed.clone());
        let connector = tls.map(|t| t.connector.clone());
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while next.fetch_add(1, Ordering::AcqRel) < n {
                match raw_dial(dial, opts, connector.as_ref()).await {
                    Ok(pair) => {
                        mine.push(pair);
                        count.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(e) => {
                        *lock(&failed) = Some(e.to_string());
                        break;
                    }
                }
            }
            mine
        }));
    }
    let deadline = start + Duration::from_secs(120);
    loop {
        if server_count.load(Ordering::Acquire) >= n && client_count.load(Ordering::Acquire) >= n {
            break;
        }
        if let Some(e) = lock(&failed).take() {
            return Err(format!("raw fill: {e}").into());
        }
        if Instant::now() > deadline {
            return Err("raw fill timed out".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = start.elapsed();
    let mut client = Vec::with_capacity(n);
    for w in workers {
        client.extend(w.await?);
    }
    // Match the two ends by id, so that server[i] and client[i] are one connection.
    let mut server = std::mem::take(&mut *lock(&server_held));
    server.sort_unstable_by_key(|(id, _)| *id);
    client.sort_unstable_by_key(|(id, _)| *id);
    let server = server.into_iter().map(|(_, c)| c).collect();
    let client = client.into_iter().map(|(_, c)| c).collect();
    Ok((
        elapsed,
        RawPairs {
            server,
            client,
            accept_task,
        },
    ))
}

/// One raw client connection: connect, socket options, TLS if given, read the 8-byte
/// id; returns the id (as a number) and the connection.
pub(crate) async fn raw_dial(
    dial: SocketAddr,
    opts: SocketOptions,
    connector: Option<&TlsConnector>,
) -> io::Result<(u32, RawConn)> {
    let tcp = TcpStream::connect(dial).await?;
    let _ = opts.apply(&tcp);
    let mut conn = match connector {
        None => RawConn::Plain(tcp),
        Some(c) => {
            let name = ServerName::IpAddress(dial.ip().into());
            RawConn::Tls(Box::new(TlsStream::Client(c.connect(name, tcp).await?)))
        }
    };
    let mut id = [0u8; 8];
    conn.read_exact(&mut id).await?;
    let id = std::str::from_utf8(&id)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad id"))?;
    Ok((id, conn))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A server pool and a client pool connected to it.
pub(crate) struct Pools {
    pub(crate) server: ServerPool,
    pub(crate) client: ClientPool,
}

impl Pools {
    pub(crate) async fn close(self) {
        self.client.close().await;
        self.server.close().await;
    }
}

/// How to build a pair of pools.
#[derive(Clone, Copy)]
pub(crate) struct PoolSpec {
    pub(crate) capacity: usize,
    pub(crate) server_max: usize,
    pub(crate) parallelism: usize,
    /// The client's minimum refill interval (the pool's default is 100 ms).
    pub(crate) min_interval: Option<Duration>,
}

/// The server pool of `spec`, bound on loopback.
pub(crate) fn build_server(spec: PoolSpec, tls: Option<&Tls>) -> Res<ServerPool> {
    let mut sb = ServerPool::builder()
        .bind(LOOPBACK)
        .config(ServerConfig::builder().max_capacity(spec.server_max));
    if let Some(t) = tls {
        sb = sb.tls(ServeTls::Cert(t.cert.clone()));
    }
    Ok(sb.build()?)
}

/// Binds a server pool, then (timer started) builds the client pool and waits until
/// both ends hold `spec.capacity` idle connections.
pub(crate) async fn pool_fill(spec: PoolSpec, tls: Option<&Tls>) -> Res<(Duration, Pools)> {
    let server = build_server(spec, tls)?;
    let dial = server.local_addr();
    fill_client(server, spec, tls, dial).await
}

/// Starts the timer, builds the client pool dialing `dial` (the server, or a proxy in
/// front of it) and waits until both ends hold `spec.capacity` idle connections.
pub(crate) async fn fill_client(
    server: ServerPool,
    spec: PoolSpec,
    tls: Option<&Tls>,
    dial: SocketAddr,
) -> Res<(Duration, Pools)> {
    let start = Instant::now();
    let mut config = ClientConfig::builder()
        .capacity(spec.capacity, spec.capacity)
        .parallelism(spec.parallelism);
    if let Some(ivl) = spec.min_interval {
        config = config.interval(ivl, Duration::from_secs(1));
    }
    let tls = match tls {
        Some(_) => ClientTls::from(TlsMode::SelfSigned),
        None => ClientTls::Off,
    };
    let client = ClientPool::builder()
        .address(dial)
        .config(config)
        .tls(tls)
        .build()?;
    let pools = Pools { server, client };
    wait_full(&pools, spec.capacity, Duration::from_secs(120)).await?;
    Ok((start.elapsed(), pools))
}

/// Waits (polling every millisecond) until both ends hold `n` idle connections.
pub(crate) async fn wait_full(p: &Pools, n: usize, timeout: Duration) -> Res<()> {
    let end = Instant::now() + timeout;
    loop {
        if p.server.active() >= n && p.client.active() >= n {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!(
                "pool not full after {timeout:?}: server {:?}, client {:?}",
                p.server.stats(),
                p.client.stats()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A fresh multi-threaded runtime (one worker per core, as a server would run).
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `n` raw plain peers of the server pool at `addr`, each having read its 8-byte id,
/// dialled in waves of 256 so that the handshake limit is never hit.
pub(crate) async fn raw_peers(addr: SocketAddr, n: usize) -> Res<Vec<TcpStream>> {
    use tokio::io::AsyncReadExt as _;
    let mut peers = Vec::with_capacity(n);
    while peers.len() < n {
        let mut wave = tokio::task::JoinSet::new();
        for _ in 0..(n - peers.len()).min(256) {
            wave.spawn(async move {
                let mut s = TcpStream::connect(addr).await?;
                let mut id = [0u8; 8];
                s.read_exact(&mut id).await?;
                Ok::<_, std::io::Error>(s)
            });
        }
        while let Some(s) = wave.join_next().await {
            peers.push(s??);
        }
    }
    Ok(peers)
}
