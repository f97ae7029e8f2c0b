//! A loopback UDP proxy that injects datagram faults: drop, delay, duplicate,
//! reorder, blackhole, and a rebind of the client's source port (what a NAT rebinding
//! or a phone changing networks looks like to the server).
//!
//! [`UdpProxy::start`] binds `127.0.0.1:0` and forwards each client's datagrams to
//! the target from an upstream socket of that client's own, and the target's answers
//! back. [`Faults`] apply per datagram in both directions, drawn from one seeded
//! generator so that a failing run replays from its seed. [`UdpProxy::rebind`] gives
//! every client a fresh upstream socket: the target sees the same peer arrive from a
//! new port, and packets it sends to the old one are lost.
//!
//! Every task of the proxy ends when it is closed or dropped; a delayed datagram is
//! one short task that sleeps once.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use pool_testkit::udp_proxy::{Faults, UdpProxy};
//! let target = "127.0.0.1:10101".parse().unwrap();
//! let proxy = UdpProxy::start(target, Faults::loss(0.01), 7).await?;
//! // Send to proxy.local_addr() instead of the target.
//! proxy.rebind()?;
//! println!("{:?}", proxy.stats());
//! proxy.close();
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::rng::SplitMix64;

/// What happens to each datagram, in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Chance that a datagram is dropped.
    pub drop: f64,
    /// Chance that a datagram is sent twice.
    pub duplicate: f64,
    /// Chance that a datagram is held back by `reorder_by`, so that later ones
    /// overtake it.
    pub reorder: f64,
    /// How long a reordered datagram is held back.
    pub reorder_by: Duration,
    /// Delay of every datagram.
    pub delay: Duration,
}

impl Faults {
    /// Forward faithfully.
    pub fn none() -> Self {
        Self::default()
    }

    /// Drop this share of datagrams, nothing else.
    pub fn loss(p: f64) -> Self {
        Self {
            drop: p,
            ..Self::default()
        }
    }
}

/// What the proxy did, per datagram, both directions together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams sent on (duplicates counted once).
    pub forwarded: u64,
    /// Datagrams dropped (by chance or blackhole).
    pub dropped: u64,
    /// Datagrams sent twice.
    pub duplicated: u64,
    /// Datagrams held back.
    pub reordered: u64,
    /// Rebinds done.
    pub rebinds: u64,
}

/// A client's upstream socket and the task reading the target's answers on it.
type Upstream = (Arc<UdpSocket>, JoinHandle<()>);

struct Shared {
    front: Arc<UdpSocket>,
    target: SocketAddr,
    faults: Mutex<Faults>,
    rng: Mutex<SplitMix64>,
    blackhole: AtomicBool,
    /// Each client's upstream socket and the task reading the target's answers.
    clients: Mutex<HashMap<SocketAddr, Upstream>>,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    rebinds: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What to do with one datagram.
enum Fate {
    Drop,
    Send { after: Duration, copies: usize },
}

impl Shared {
    fn fate(&self) -> Fate {
        if self.blackhole.load(Ordering::Acquire) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Fate::Drop;
        }
        let f = *lock(&self.faults);
        let mut rng = lock(&self.rng);
        if f.drop > 0.0 && rng.chance(f.drop) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Fate::Drop;
        }
        let mut after = f.delay;
        if f.reorder > 0.0 && rng.chance(f.reorder) {
            self.reordered.fetch_add(1, Ordering::Relaxed);
            after += f.reorder_by;
        }
        let copies = if f.duplicate > 0.0 && rng.chance(f.duplicate) {
            self.duplicated.fetch_add(1, Ordering::Relaxed);
            2
        } else {
            1
        };
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        Fate::Send { after, copies }
    }

    /// Sends `data` to `to` on `sock` as its fate says.
    fn send(&self, sock: &Arc<UdpSocket>, data: &[u8], to: SocketAddr) {
        let Fate::Send { after, copies } = self.fate() else {
            return;
        };
        if after.is_zero() {
            for sent in 0..copies {
                // A socket the reactor has not yet seen writable (a fresh upstream
                // socket) refuses a `try_send`: that datagram is sent by a task
                // instead of being lost.
                if let Err(e) = sock.try_send_to(data, to) {
                    if e.kind() == io::ErrorKind::WouldBlock {
                        let (sock, data) = (sock.clone(), data.to_vec());
                        tokio::spawn(async move {
                            for _ in sent..copies {
                                let _ = sock.send_to(&data, to).await;
                            }
                        });
                        return;
                    }
                }
            }
            return;
        }
        let (sock, data) = (sock.clone(), data.to_vec());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            for _ in 0..copies {
                let _ = sock.send_to(&data, to).await;
            }
        });
    }

    /// The upstream socket of `client`, made (with its reader) on its first datagram.
    fn upstream(self: &Arc<Self>, client: SocketAddr) -> io::Result<Arc<UdpSocket>> {
        let mut clients = lock(&self.clients);
        if let Some((sock, _)) = clients.get(&client) {
            return Ok(sock.clone());
        }
        let (sock, reader) = self.open_upstream(client)?;
        clients.insert(client, (sock.clone(), reader));
        Ok(sock)
    }

    fn open_upstream(self: &Arc<Self>, client: SocketAddr) -> io::Result<Upstream> {
        let std = std::net::UdpSocket::bind("127.0.0.1:0")?;
        std.set_nonblocking(true)?;
        let sock = Arc::new(UdpSocket::from_std(std)?);
        let (me, up) = (self.clone(), sock.clone());
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = up.recv_from(&mut buf).await {
                if from == me.target {
                    me.send(&me.front, &buf[..n], client);
                }
            }
        });
        Ok((sock, reader))
    }
}

/// A UDP proxy in front of one target. Dropping it stops every task.
pub struct UdpProxy {
    shared: Arc<Shared>,
    front: JoinHandle<()>,
}

impl std::fmt::Debug for UdpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpProxy")
            .field("local", &self.local_addr())
            .field("target", &self.shared.target)
            .field("stats", &self.stats())
            .finish()
    }
}

impl UdpProxy {
    /// Binds `127.0.0.1:0` and forwards to `target` with `faults`, drawn from `seed`.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound.
    pub async fn start(target: SocketAddr, faults: Faults, seed: u64) -> io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let shared = Arc::new(Shared {
            front: front.clone(),
            target,
            faults: Mutex::new(faults),
            rng: Mutex::new(SplitMix64::new(seed)),
            blackhole: AtomicBool::new(false),
            clients: Mutex::new(HashMap::new()),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            rebinds: AtomicU64::new(0),
        });
        let me = shared.clone();
        let front = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, client)) = me.front.recv_from(&mut buf).await {
                if let Ok(up) = me.upstream(client) {
                    me.send(&up, &buf[..n], me.target);
                }
            }
        });
        Ok(Self { shared, front })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared
            .front
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Changes the faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.shared.faults) = faults;
    }

    /// Drops every datagram while on (a cut link), or forwards again.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::Release);
    }

    /// Gives every client a new upstream socket: the target sees each peer arrive
    /// from a new port, and what it still sends to the old one is lost.
    ///
    /// # Errors
    ///
    /// When a new socket cannot be bound.
    pub fn rebind(&self) -> io::Result<()> {
        let mut clients = lock(&self.shared.clients);
        let addrs: Vec<SocketAddr> = clients.keys().copied().collect();
        for client in addrs {
            let fresh = self.shared.open_upstream(client)?;
            if let Some((_, old)) = clients.insert(client, fresh) {
                old.abort();
            }
        }
        self.shared.rebinds.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// What the proxy did so far.
    pub fn stats(&self) -> UdpStats {
        let s = &self.shared;
        UdpStats {
            forwarded: s.forwarded.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            duplicated: s.duplicated.load(Ordering::Relaxed),
            reordered: s.reordered.load(Ordering::Relaxed),
            rebinds: s.rebinds.load(Ordering::Relaxed),
        }
    }

    /// Stops forwarding: every task of the proxy ends.
    pub fn close(&self) {
        self.front.abort();
        for (_, (_, reader)) in lock(&self.shared.clients).drain() {
            reader.abort();
        }
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first datagram of a client reaches the target and the answer comes back,
    /// though the client's upstream socket is made on that datagram (a socket the
    /// reactor has not seen writable yet refuses `try_send_to`).
    #[tokio::test]
    async fn a_clients_first_datagram_is_forwarded() {
        let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let proxy = UdpProxy::start(target.local_addr().unwrap(), Faults::none(), 1)
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"first", proxy.local_addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let wait = Duration::from_secs(5);
        let (n, from) = tokio::time::timeout(wait, target.recv_from(&mut buf))
            .await
            .expect("the first datagram reached the target")
            .unwrap();
        assert_eq!(&buf[..n], b"first");
        target.send_to(b"answer", from).await.unwrap();
        let (n, _) = tokio::time::timeout(wait, client.recv_from(&mut buf))
            .await
            .expect("the answer came back")
            .unwrap();
        assert_eq!(&buf[..n], b"answer");
        assert_eq!(proxy.stats().forwarded, 2);
        proxy.close();
    }
}
