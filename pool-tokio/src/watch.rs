//! Event-driven liveness: the OS tells the pool when the peer of an idle connection
//! closes or resets it, so the connection leaves the pool in milliseconds instead of
//! at the next sweep, and a quiet pool costs no probing.
//!
//! Every connection the pool holds is also in one `epoll` set of its own, watched for
//! a hang-up (`EPOLLRDHUP`: the peer's FIN) and, implicitly, `EPOLLHUP` and `EPOLLERR`
//! (a reset), once (`EPOLLONESHOT`). Not for readable bytes: a peer may write on an
//! idle connection on purpose (a tunnel sending a session's first bytes ahead of its
//! id), and the pool's probes keep those bytes. One task waits on the set through
//! tokio's reactor and reports each hang-up to the core
//! ([`pool_core::driver::Driver::idle_closed`]). A connection leaves the set when it is
//! handed out or closed. The sweep stays for what readiness cannot see: a silent
//! host, caught by keep-alive and `TCP_USER_TIMEOUT`.
//!
//! Linux only; elsewhere the sweep finds dead peers as before.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use pool_core::ConnId;
use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};
use tokio::io::unix::AsyncFd;

use crate::conn::PoolConn;

/// The watched connections, by key and by descriptor.
#[derive(Default)]
struct Watched {
    next: u64,
    by_key: HashMap<u64, (ConnId, RawFd)>,
    by_fd: HashMap<RawFd, u64>,
}

/// One pool's `epoll` set of held connections.
pub(crate) struct IdleWatch {
    set: AsyncFd<OwnedFd>,
    watched: Mutex<Watched>,
}

impl IdleWatch {
    /// A new, empty set, registered with the current tokio reactor.
    pub(crate) fn new() -> io::Result<Self> {
        let fd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        // `with_interest` is deprecated because an arbitrary `AsRawFd` may close or
        // change its descriptor while registered; an `OwnedFd` owned by the `AsyncFd`
        // does neither, so this safe call is sound (its replacement is `unsafe`).
        #[allow(deprecated)]
        let set = AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
        Ok(Self {
            set,
            watched: Mutex::default(),
        })
    }

    fn watched(&self) -> MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `conn` (whose id is `id`) for its peer's hang-up. A failure leaves it
    /// to the sweep.
    pub(crate) fn watch(&self, id: ConnId, conn: &PoolConn) {
        let tcp = conn.tcp();
        let fd = tcp.as_raw_fd();
        let mut w = self.watched();
        // A descriptor number seen before belongs to a connection that was closed
        // without telling us (its registration went with it): forget that one.
        if let Some(old) = w.by_fd.remove(&fd) {
            w.by_key.remove(&old);
        }
        w.next += 1;
        let key = w.next;
        let flags = epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        if epoll::add(
            self.set.get_ref(),
            tcp,
            epoll::EventData::new_u64(key),
            flags,
        )
        .is_ok()
        {
            w.by_key.insert(key, (id, fd));
            w.by_fd.insert(fd, key);
        }
    }

    /// Stops watching `conn` (handed out, or about to be closed).
    pub(crate) fn unwatch(&self, conn: &PoolConn) {
        let tcp = conn.tcp();
        let mut w = self.watched();
        if let Some(key) = w.by_fd.remove(&tcp.as_raw_fd()) {
            w.by_key.remove(&key);
            let _ = epoll::delete(self.set.get_ref(), tcp);
        }
    }

    /// Connections watched now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.watched().by_key.len()
    }

    /// Waits for hang-ups; the ids of the connections whose peers hung up.
    pub(crate) async fn hung_up(&self) -> io::Result<Vec<ConnId>> {
        loop {
            let mut ready = self.set.readable().await?;
            let mut events = Vec::with_capacity(256);
            let zero = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            let n = epoll::wait(self.set.get_ref(), spare_capacity(&mut events), Some(&zero))?;
            if n == 0 {
                ready.clear_ready();
                continue;
            }
            let mut w = self.watched();
            let ids = events
                .iter()
                .filter_map(|e| {
                    let key = e.data.u64();
                    let (id, fd) = w.by_key.remove(&key)?;
                    w.by_fd.remove(&fd);
                    Some(id)
                })
                .collect();
            return Ok(ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::PoolStream;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (PoolConn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (
            PoolConn {
                id: ConnId::from_random([1, 2, 3, 4]),
                stream: PoolStream::Plain(c),
            },
            s,
        )
    }

    #[tokio::test]
    async fn a_peer_hang_up_is_reported_and_bytes_are_not() {
        let w = IdleWatch::new().unwrap();
        let (a, mut a_peer) = pair().await;
        let (b, b_peer) = pair().await;
        let (c, c_peer) = pair().await;
        w.watch(ConnId::from_random([0, 0, 0, 1]), &a);
        w.watch(ConnId::from_random([0, 0, 0, 2]), &b);
        w.watch(ConnId::from_random([0, 0, 0, 3]), &c);
        // Bytes on `a` are no hang-up; `c` is handed out (unwatched) before its peer
        // closes; `b`'s peer closes.
        tokio::io::AsyncWriteExt::write_all(&mut a_peer, b"early")
            .await
            .unwrap();
        w.unwatch(&c);
        drop(c_peer);
        drop(b_peer);
        let ids = tokio::time::timeout(Duration::from_secs(5), w.hung_up())
            .await
            .expect("reported within 5 s")
            .unwrap();
        assert_eq!(ids, vec![ConnId::from_random([0, 0, 0, 2])]);
        assert_eq!(w.len(), 1);
        // Nothing more comes: `a` only has bytes.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), w.hung_up())
                .await
                .is_err()
        );
        drop((a, b, c));
    }
}
