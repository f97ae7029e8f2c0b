//! A set of held connections watched for their peer's hang-up (Linux, `epoll`).
//!
//! A pool holds idle connections for a long time, and a dead peer should leave it when
//! the OS learns of it, not at the next probe. [`HangUps`] keeps one `epoll` set in
//! which every connection is watched once (`EPOLLONESHOT`) for `EPOLLRDHUP` (the
//! peer's FIN) and, as `epoll` always reports them, `EPOLLHUP` and `EPOLLERR` (a
//! reset, a keep-alive or user timeout). Never for readable bytes: a peer may write on
//! an idle connection on purpose, and the pool's probe keeps those bytes.
//!
//! The set is sans-runtime: [`wait`](HangUps::wait) blocks for at most a timeout (a
//! thread driver calls it in a loop), and the set's descriptor ([`AsFd`]) becomes
//! readable when a hang-up is pending, for an async runtime's reactor.
//!
//! ```
//! use std::net::{TcpListener, TcpStream};
//! use std::time::Duration;
//! use pool_net::HangUps;
//!
//! let l = TcpListener::bind("127.0.0.1:0").unwrap();
//! let mine = TcpStream::connect(l.local_addr().unwrap()).unwrap();
//! let (theirs, _) = l.accept().unwrap();
//! let set = HangUps::new().unwrap();
//! set.watch(7u32, &mine);
//! drop(theirs); // the peer closes
//! assert_eq!(set.wait(Some(Duration::from_secs(5))).unwrap(), vec![7]);
//! ```

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};

/// The watched connections, by descriptor, each with the generation of its
/// registration: `epoll` carries `generation << 32 | descriptor`, so one small map
/// serves both the event and `unwatch`, and an event of an earlier connection on a
/// reused descriptor number is told apart. (Two maps, by tag and by descriptor, cost
/// 40 bytes of table per connection; this one 16 with a `u64` key.)
struct Watched<K> {
    next: u32,
    by_fd: HashMap<RawFd, (u32, K)>,
}

/// An `epoll` set of connections watched for their peer's hang-up, each named by a
/// key of the caller's (a pool's connection id).
pub struct HangUps<K> {
    set: OwnedFd,
    watched: Mutex<Watched<K>>,
    /// Whether readable bytes are reported too ([`HangUps::with_bytes`]).
    bytes: bool,
}

impl<K> std::fmt::Debug for HangUps<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HangUps")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl<K: Copy> HangUps<K> {
    /// A new, empty set, watching for hang-ups only.
    pub fn new() -> io::Result<Self> {
        Self::build(false)
    }

    /// A new, empty set that reports readable bytes as well as hang-ups: for a pool
    /// whose peer starts sessions in band, where the first byte on an idle connection
    /// is the news. Each connection is still reported once; the caller peeks to tell
    /// which it was, and [`watch`](Self::watch)es it again if neither.
    pub fn with_bytes() -> io::Result<Self> {
        Self::build(true)
    }

    fn build(bytes: bool) -> io::Result<Self> {
        Ok(Self {
            bytes,
            set: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            watched: Mutex::new(Watched {
                next: 0,
                by_fd: HashMap::new(),
            }),
        })
    }

    fn watched(&self) -> MutexGuard<'_, Watched<K>> {
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `conn` for its peer's hang-up, reported once as `key`. Answers whether
    /// it is watched (a failure leaves it to the caller's probes).
    pub fn watch(&self, key: K, conn: &impl AsFd) -> bool {
        let fd = conn.as_fd();
        let raw = fd.as_raw_fd();
        let mut w = self.watched();
        // A descriptor number seen before belongs to a connection that was closed
        // without `unwatch` (its registration went with it): the new entry replaces it.
        w.next = w.next.wrapping_add(1);
        let generation = w.next;
        let data = (u64::from(generation) << 32) | u64::from(raw as u32);
        let mut flags = epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        if self.bytes {
            flags |= epoll::EventFlags::IN;
        }
        let data = epoll::EventData::new_u64(data);
        // A connection reported before stays in the set, disarmed (`EPOLLONESHOT`):
        // watching it again re-arms it.
        let ok = match epoll::add(&self.set, fd, data, flags) {
            Err(rustix::io::Errno::EXIST) => epoll::modify(&self.set, fd, data, flags).is_ok(),
            r => r.is_ok(),
        };
        if ok {
            w.by_fd.insert(raw, (generation, key));
        } else {
            w.by_fd.remove(&raw);
        }
        ok
    }

    /// Stops watching `conn` (handed out, or about to be closed).
    pub fn unwatch(&self, conn: &impl AsFd) {
        let fd = conn.as_fd();
        let mut w = self.watched();
        if w.by_fd.remove(&fd.as_raw_fd()).is_some() {
            let _ = epoll::delete(&self.set, fd);
        }
    }

    /// Connections watched now.
    pub fn len(&self) -> usize {
        self.watched().by_fd.len()
    }

    /// Whether none is watched.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys of the connections whose peers hung up, waiting at most `timeout`
    /// (`None`: until one does; zero: not at all). Each is reported once and is no
    /// longer watched.
    pub fn wait(&self, timeout: Option<Duration>) -> io::Result<Vec<K>> {
        let mut events = Vec::with_capacity(256);
        let timeout = timeout.map(|d| Timespec {
            tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(d.subsec_nanos()),
        });
        let n = match epoll::wait(&self.set, spare_capacity(&mut events), timeout.as_ref()) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => 0,
            Err(e) => return Err(e.into()),
        };
        let mut w = self.watched();
        Ok(events[..n]
            .iter()
            .filter_map(|e| {
                let data = e.data.u64();
                let (fd, generation) = (data as u32 as RawFd, (data >> 32) as u32);
                match w.by_fd.get(&fd) {
                    Some(&(g, key)) if g == generation => {
                        w.by_fd.remove(&fd);
                        Some(key)
                    }
                    _ => None,
                }
            })
            .collect())
    }
}

impl<K> AsFd for HangUps<K> {
    /// The set's own descriptor: readable while a hang-up is pending.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.set.as_fd()
    }
}

impl<K> AsRawFd for HangUps<K> {
    fn as_raw_fd(&self) -> RawFd {
        self.set.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn hang_ups_are_reported_once_bytes_and_unwatched_ones_never() {
        let set = HangUps::new().unwrap();
        let (a, mut a_peer) = pair();
        let (b, b_peer) = pair();
        let (c, c_peer) = pair();
        assert!(set.watch(1u8, &a) && set.watch(2, &b) && set.watch(3, &c));
        assert_eq!(set.len(), 3);
        a_peer.write_all(b"early bytes").unwrap();
        set.unwatch(&c);
        drop((b_peer, c_peer));
        assert_eq!(set.wait(Some(Duration::from_secs(5))).unwrap(), vec![2]);
        assert_eq!(set.len(), 1);
        assert!(set
            .wait(Some(Duration::from_millis(100)))
            .unwrap()
            .is_empty());
        drop(a_peer);
        assert_eq!(set.wait(Some(Duration::from_secs(5))).unwrap(), vec![1]);
        assert!(set.is_empty());
        drop((a, b, c));
    }

    #[test]
    fn with_bytes_reports_the_first_byte_once_and_again_once_rewatched() {
        let set = HangUps::with_bytes().unwrap();
        let (a, mut a_peer) = pair();
        let (b, _b_peer) = pair();
        assert!(set.watch(1u8, &a) && set.watch(2, &b));
        assert!(set
            .wait(Some(Duration::from_millis(50)))
            .unwrap()
            .is_empty());
        a_peer.write_all(b"NPS1").unwrap();
        assert_eq!(set.wait(Some(Duration::from_secs(5))).unwrap(), vec![1]);
        // Reported once: the bytes stay, the report does not repeat.
        assert!(set
            .wait(Some(Duration::from_millis(50)))
            .unwrap()
            .is_empty());
        // Watched again with the bytes still there: reported again.
        assert!(set.watch(1, &a));
        assert_eq!(set.wait(Some(Duration::from_secs(5))).unwrap(), vec![1]);
        drop((a, b));
    }
}
