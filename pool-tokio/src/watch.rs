//! Event-driven liveness: the OS tells the pool when the peer of a held connection
//! closes or resets it, so the connection leaves the pool in milliseconds instead of
//! at the next sweep.
//!
//! Every connection the pool holds is also in a [`pool_net::HangUps`] set of the pool's
//! own: an `epoll` set watching for the peer's hang-up, and, in in-band mode only, for
//! bytes (there the first byte on an idle connection is a session the server
//! started). Under the Go protocol bytes are not watched: a peer may write on an idle
//! connection on purpose, a tunnel sending a session's first bytes ahead of its id, and
//! the pool's probes keep those bytes. One task waits on the set through tokio's
//! reactor and reports each connection to the core
//! ([`pool_core::driver::Driver::idle_ready`]). A connection leaves the set when it is
//! handed out or closed. The sweep stays for what readiness cannot see.
//!
//! Linux only; elsewhere the sweep finds dead peers as before.

use std::io;

use pool_core::ConnId;
use pool_net::HangUps;
use tokio::io::unix::AsyncFd;

use crate::conn::PoolConn;

/// One pool's set of held connections, registered with tokio's reactor.
pub(crate) struct IdleWatch {
    set: AsyncFd<HangUps<ConnId>>,
    bytes: bool,
}

impl IdleWatch {
    /// A new, empty set, registered with the current tokio reactor; `bytes`: readable
    /// bytes are reported too (in-band mode, where they are a session's start).
    pub(crate) fn new(bytes: bool) -> io::Result<Self> {
        let set = if bytes {
            HangUps::with_bytes()?
        } else {
            HangUps::new()?
        };
        // `with_interest` is deprecated because an arbitrary `AsRawFd` may close or
        // change its descriptor while registered; a `HangUps` owns its `epoll`
        // descriptor for its whole life and never changes it, so this safe call is
        // sound (its replacement is `unsafe`).
        #[allow(deprecated)]
        let set = AsyncFd::with_interest(set, tokio::io::Interest::READABLE)?;
        Ok(Self { set, bytes })
    }

    /// Whether bytes are watched too (in-band mode).
    pub(crate) fn bytes(&self) -> bool {
        self.bytes
    }

    /// Watches `conn` (whose id is `id`) for its peer's hang-up.
    pub(crate) fn watch(&self, id: ConnId, conn: &PoolConn) {
        self.set.get_ref().watch(id, conn.tcp());
    }

    /// Stops watching `conn` (handed out, or about to be closed).
    pub(crate) fn unwatch(&self, conn: &PoolConn) {
        self.set.get_ref().unwatch(conn.tcp());
    }

    /// Waits for hang-ups (and bytes, in in-band mode); the ids of the connections
    /// reported, each once until watched again.
    pub(crate) async fn hung_up(&self) -> io::Result<Vec<ConnId>> {
        loop {
            let mut ready = self.set.readable().await?;
            let ids = self.set.get_ref().wait(Some(std::time::Duration::ZERO))?;
            if ids.is_empty() {
                ready.clear_ready();
                continue;
            }
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
        let w = IdleWatch::new(false).unwrap();
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
        // Nothing more comes: `a` only has bytes.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), w.hung_up())
                .await
                .is_err()
        );
        drop((a, b, c));
    }
}
