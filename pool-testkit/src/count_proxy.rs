//! A loopback TCP proxy that counts messages and flights, to measure what a handshake
//! costs on a link that charges per message.
//!
//! [`CountProxy::start`] listens on loopback and forwards every accepted connection to
//! a target, faithfully. For each connection it counts, per direction:
//!
//! - **chunks**: reads that returned bytes, each forwarded as one write. A sender's
//!   write burst (one `write`/`writev`, or several that leave before the proxy reads)
//!   is one chunk: what a proxy that pays per message pays for.
//! - **flights**: runs of chunks in one direction; a chunk in the other direction than
//!   the one before opens a new flight. A protocol that waits for an answer between two
//!   messages costs two flights; two writes back to back cost one. Unlike chunks, the
//!   flight count does not depend on how the kernel split or merged the writes.
//!
//! The count is taken before the chunk is forwarded, so an answer (which the peer can
//! only write after the chunk reached it) is always counted after it.
//!
//! A connection opened by the client is the client's first flight; a handshake that
//! ends with the server's answer has `flights / 2` round trips (the TCP connect aside).
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use pool_testkit::count_proxy::CountProxy;
//! let proxy = CountProxy::start("127.0.0.1:10101".parse().unwrap()).await?;
//! // Dial proxy.addr() instead of the target, then:
//! let t = proxy.total();
//! println!("{} chunks in {} flights over {} connections", t.chunks(), t.flights, t.connections);
//! proxy.close().await;
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What crossed one connection (or, summed, several): see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Connections counted.
    pub connections: u64,
    /// Chunks from the client to the server.
    pub to_server: u64,
    /// Chunks from the server to the client.
    pub to_client: u64,
    /// Flights, both directions.
    pub flights: u64,
    /// Flights from the server to the client: the round trips the client waited for.
    pub answers: u64,
    /// Bytes from the client to the server.
    pub bytes_to_server: u64,
    /// Bytes from the server to the client.
    pub bytes_to_client: u64,
}

impl Tally {
    /// Chunks, both directions.
    pub fn chunks(&self) -> u64 {
        self.to_server + self.to_client
    }

    fn add(&mut self, o: &Self) {
        self.connections += o.connections;
        self.to_server += o.to_server;
        self.to_client += o.to_client;
        self.flights += o.flights;
        self.answers += o.answers;
        self.bytes_to_server += o.bytes_to_server;
        self.bytes_to_client += o.bytes_to_client;
    }
}

#[derive(Default)]
struct Conn {
    tally: Tally,
    /// The direction of the last chunk: `Some(true)` towards the server.
    last: Option<bool>,
}

impl Conn {
    fn count(&mut self, to_server: bool, n: usize) {
        let n = n as u64;
        if to_server {
            self.tally.to_server += 1;
            self.tally.bytes_to_server += n;
        } else {
            self.tally.to_client += 1;
            self.tally.bytes_to_client += n;
        }
        if self.last != Some(to_server) {
            self.tally.flights += 1;
            if !to_server {
                self.tally.answers += 1;
            }
            self.last = Some(to_server);
        }
    }
}

type Conns = Arc<Mutex<Vec<Arc<Mutex<Conn>>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The counting proxy. Dropping it (or [`close`](Self::close)) stops it and every
/// connection it forwards.
pub struct CountProxy {
    addr: SocketAddr,
    conns: Conns,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for CountProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountProxy")
            .field("addr", &self.addr)
            .field("total", &self.total())
            .finish()
    }
}

impl CountProxy {
    /// Listens on loopback (of `target`'s family) and forwards to `target`. Call from
    /// inside a tokio runtime.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let bind: SocketAddr = if target.is_ipv6() {
            "[::1]:0".parse().expect("literal address")
        } else {
            "127.0.0.1:0".parse().expect("literal address")
        };
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let conns: Conns = Arc::default();
        let task = tokio::spawn(accept_loop(listener, target, conns.clone()));
        Ok(Self {
            addr,
            conns,
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Each connection's tally, in the order they were accepted.
    pub fn per_connection(&self) -> Vec<Tally> {
        lock(&self.conns).iter().map(|c| lock(c).tally).collect()
    }

    /// The tallies of every connection so far, summed.
    pub fn total(&self) -> Tally {
        let mut t = Tally::default();
        for c in self.per_connection() {
            t.add(&c);
        }
        t
    }

    /// Stops listening and ends every connection; returns when all have ended.
    pub async fn close(&self) {
        if let Some(t) = self.task.lock().await.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for CountProxy {
    fn drop(&mut self) {
        if let Ok(mut t) = self.task.try_lock() {
            if let Some(t) = t.take() {
                t.abort();
            }
        }
    }
}

/// Accepts until aborted; the connection tasks live in its `JoinSet`, so aborting it
/// ends them too.
async fn accept_loop(listener: TcpListener, target: SocketAddr, conns: Conns) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((client, _)) = r else { continue };
                let conn = Arc::new(Mutex::new(Conn::default()));
                lock(&conn).tally.connections = 1;
                lock(&conns).push(conn.clone());
                tasks.spawn(forward(client, target, conn));
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

async fn forward(client: TcpStream, target: SocketAddr, conn: Arc<Mutex<Conn>>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(pump(cr, sw, true, conn.clone()), pump(sr, cw, false, conn));
}

/// One direction: read, count, forward, until end of stream or an error.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    to_server: bool,
    conn: Arc<Mutex<Conn>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        lock(&conn).count(to_server, n);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ping-pong of three messages and a burst of two back to back: the chunks and
    /// flights are counted per direction, and the flights do not depend on how the
    /// burst was split.
    #[tokio::test]
    async fn counts_chunks_and_flights() {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = CountProxy::start(server.local_addr().unwrap())
            .await
            .unwrap();
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut s, _) = server.accept().await.unwrap();
        let mut b = [0u8; 8];
        c.write_all(b"ping").await.unwrap();
        s.read_exact(&mut b[..4]).await.unwrap();
        s.write_all(b"pong").await.unwrap();
        s.write_all(b"more").await.unwrap();
        c.read_exact(&mut b).await.unwrap();
        c.write_all(b"done").await.unwrap();
        s.read_exact(&mut b[..4]).await.unwrap();
        let t = proxy.total();
        assert_eq!(t.connections, 1);
        assert_eq!(t.flights, 3);
        assert_eq!(t.answers, 1);
        assert_eq!(t.to_server, 2);
        assert!((1..=2).contains(&t.to_client), "{t:?}");
        assert_eq!((t.bytes_to_server, t.bytes_to_client), (8, 8));
        proxy.close().await;
    }
}
