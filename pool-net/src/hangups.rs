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

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use rustix::buffer::spare_capacity;
use rustix::event::{epoll, Timespec};

/// An `epoll` set of connections watched for their peer's hang-up, each named by a
/// key of the caller's (a pool's connection id).
///
/// # No table
///
/// The key itself is `epoll`'s 64-bit user data, so the set keeps nothing per
/// connection beyond the kernel's own registration: a pool of thousands of idle
/// connections pays no hash table for it (a table by descriptor cost 16 bytes a
/// connection, twice that while it grew). A key is therefore any `Copy` value that
/// converts to a `u64` and back (`Into<u64> + TryFrom<u64>`): small integers, or a
/// pool's `ConnId`.
///
/// Without a table the set cannot hold back a report that raced with an
/// [`unwatch`](Self::unwatch) on another thread: a key unwatched while
/// [`wait`](Self::wait) was collecting may still come out of that `wait`, once. A
/// caller that hands connections out concurrently checks that it still holds the key
/// it is told about (a pool's core does: a report for a connection it no longer holds
/// is ignored). A descriptor number reused by a new connection cannot be confused
/// with the old one: the report names the key, not the descriptor.
pub struct HangUps<K> {
    set: OwnedFd,
    /// Whether readable bytes are reported too ([`HangUps::with_bytes`]).
    bytes: bool,
    keys: PhantomData<fn(K) -> K>,
}

impl<K> std::fmt::Debug for HangUps<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HangUps")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

impl<K: Copy + Into<u64> + TryFrom<u64>> HangUps<K> {
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
            keys: PhantomData,
        })
    }

    /// Watches `conn` for its peer's hang-up, reported once as `key`. Answers whether
    /// it is watched (a failure leaves it to the caller's probes). Watching a
    /// connection again (reported, or still watched) re-arms it under the new key.
    pub fn watch(&self, key: K, conn: &impl AsFd) -> bool {
        let fd = conn.as_fd();
        let mut flags = epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        if self.bytes {
            flags |= epoll::EventFlags::IN;
        }
        let data = epoll::EventData::new_u64(key.into());
        // A connection reported before stays in the set, disarmed (`EPOLLONESHOT`):
        // watching it again re-arms it. A closed descriptor left the set with its
        // last close, so a new connection on a reused number is simply added.
        match epoll::add(&self.set, fd, data, flags) {
            Err(rustix::io::Errno::EXIST) => epoll::modify(&self.set, fd, data, flags).is_ok(),
            r => r.is_ok(),
        }
    }

    /// Stops watching `conn` (handed out, or about to be closed). Harmless for a
    /// connection that is not in the set.
    pub fn unwatch(&self, conn: &impl AsFd) {
        let _ = epoll::delete(&self.set, conn.as_fd());
    }

    /// The keys of the connections whose peers hung up, waiting at most `timeout`
    /// (`None`: until one does; zero: not at all). Each is reported once and is no
    /// longer watched until [`watch`](Self::watch)ed again (see the type's docs for a
    /// report that races with `unwatch`).
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
        // Every word came from a key through `into`, so it converts back.
        Ok(events[..n]
            .iter()
            .filter_map(|e| K::try_from(e.data.u64()).ok())
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
        a_peer.write_all(b"early bytes").unwrap();
        set.unwatch(&c);
        set.unwatch(&c); // twice: harmless
        drop((b_peer, c_peer));
        assert_eq!(set.wait(Some(Duration::from_secs(5))).unwrap(), vec![2]);
        assert!(set
            .wait(Some(Duration::from_millis(100)))
            .unwrap()
            .is_empty());
        drop(a_peer);
        assert_eq!(set.wait(Some(Duration::from_secs(5))).unwrap(), vec![1]);
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

    #[test]
    fn the_key_is_the_report_whole_and_a_reused_descriptor_is_a_new_key() {
        let set = HangUps::<u64>::new().unwrap();
        let (a, a_peer) = pair();
        assert!(set.watch(u64::MAX - 1, &a));
        drop(a_peer);
        assert_eq!(
            set.wait(Some(Duration::from_secs(5))).unwrap(),
            vec![u64::MAX - 1]
        );
        // Closed while still in the set (reported, not unwatched): a new socket,
        // perhaps on the same descriptor number, is reported under its own key.
        drop(a);
        let (b, b_peer) = pair();
        assert!(set.watch(7, &b));
        drop(b_peer);
        assert_eq!(set.wait(Some(Duration::from_secs(5))).unwrap(), vec![7]);
        // Watched again while its peer is gone: reported again, under the new key.
        assert!(set.watch(8, &b));
        assert_eq!(set.wait(Some(Duration::from_secs(5))).unwrap(), vec![8]);
    }
}
