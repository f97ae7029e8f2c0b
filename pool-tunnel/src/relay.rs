//! The relay between a user (or target) and a pooled connection, with deadlines.
//!
//! `tokio::io::copy_bidirectional` runs for as long as both peers keep their sockets
//! open: a user who connects and goes quiet, or half-closes and never reads, holds two
//! descriptors and a pooled connection for ever. [`relay`] ends a session when nothing
//! moved either way for [`RelayLimits::idle`], and when one direction has ended and the
//! other has moved nothing for [`RelayLimits::half_close`]: a half-closed transfer that
//! is still moving is never cut.
//!
//! A relay cut short (a deadline, an error on either side, this process killed) must
//! not pass for a complete one: [`relay_tcp`] arms both sockets to reset when they are
//! closed (`SO_LINGER` 0, see [`reset`]) and disarms them ([`graceful`]) only when both
//! directions ended cleanly; callers of [`relay`] do the same with theirs. Half-closes
//! still pass as FINs (`shutdown` is not affected by the linger), so neither peer
//! mistakes a cut for a clean end of stream.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use pool_tokio::SocketOptions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Deadlines of one relay.
#[derive(Clone, Copy, Debug)]
pub struct RelayLimits {
    /// Nothing moved either way for this long: the session ends.
    pub idle: Duration,
    /// One direction ended (EOF passed on) and the other has moved nothing for this
    /// long: the session ends (with a reset).
    pub half_close: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(300),
            half_close: Duration::from_secs(30),
        }
    }
}

/// How a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both directions reached EOF.
    Done,
    /// An I/O error on either side.
    Error,
    /// Nothing moved for the idle timeout.
    Idle,
    /// One direction ended, and the other moved nothing for the half-close timeout.
    HalfClosed,
    /// `b`'s first byte was not the one an [`Expect`] wanted: `Some` the byte it sent
    /// instead, `None` when none came in time (or `b` ended or failed first).
    NotExpected(Option<u8>),
}

/// A byte a relay must read first from its `b` side, within `within`, before anything
/// of `b`'s goes to `a` (the byte itself is not relayed). The tunnel's server waits
/// this way for the client's [`REACHED`](crate::protocol::REACHED) while the user's
/// bytes already flow the other way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    /// The byte.
    pub byte: u8,
    /// How long it may take.
    pub within: Duration,
}

/// What a relay does on its `b` → `a` direction before relaying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Opening {
    /// Nothing: relay at once.
    #[default]
    Plain,
    /// Write a byte to `a` first ([`Lead`]).
    Lead(Lead),
    /// Read a byte from `b` first ([`Expect`]).
    Expect(Expect),
}

/// Arms `tcp` to reset when it is closed: `SO_LINGER` 0, so that dropping it (or the
/// process dying) sends an RST, and the peer's read fails with `ECONNRESET`, instead of
/// a FIN that would pass for the clean end of a complete stream. Unsent bytes are
/// dropped then: [`graceful`] first for a stream that ended as it should.
pub fn reset(tcp: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(tcp, Some(Duration::ZERO));
}

/// Undoes [`reset`]: closing `tcp` is an orderly close again (the default).
pub fn graceful(tcp: &TcpStream) {
    let _ = rustix::net::sockopt::set_socket_linger(tcp, None);
}

/// A byte a relay writes to its `a` side before anything from `b`: in the same write as
/// `b`'s first bytes when they come within `within`, else alone once `within` has
/// passed (or as soon as `b` ends). The tunnel's client acknowledges a session this way
/// ([`REACHED`](crate::protocol::REACHED)): the acknowledgement travels with the
/// target's first answer, one segment and one wake-up of the server fewer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lead {
    /// The byte.
    pub byte: u8,
    /// How long it waits for `b`'s first bytes.
    pub within: Duration,
}

/// Bytes moved so far, readable while the relay runs.
#[derive(Debug, Default)]
pub struct Traffic {
    /// `a` → `b`.
    pub a_to_b: AtomicU64,
    /// `b` → `a`.
    pub b_to_a: AtomicU64,
    /// Milliseconds since the relay started at the last byte moved.
    last: AtomicU64,
}

/// Socket options of user and target connections: keep-alive after 30 s idle, probes
/// every 10 s, 3 unanswered drop it; unacknowledged data for 60 s drops it too. A peer
/// whose host vanished is noticed within about a minute even when the relay is idle.
pub fn peer_socket_options() -> SocketOptions {
    SocketOptions {
        keepalive: Some(Duration::from_secs(30)),
        keepalive_interval: Some(Duration::from_secs(10)),
        keepalive_retries: Some(3),
        nodelay: true,
        user_timeout: Some(Duration::from_secs(60)),
    }
}

/// How one direction of a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// At EOF, passed on.
    Ended,
    /// An error on either side.
    Failed,
    /// The [`Expect`]ed byte did not come (see [`RelayEnd::NotExpected`]).
    NotExpected(Option<u8>),
}

async fn copy_one<R, W>(
    mut r: R,
    mut w: W,
    count: &AtomicU64,
    last: &AtomicU64,
    start: Instant,
    opening: Opening,
) -> Way
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    match opening {
        Opening::Plain => {}
        Opening::Expect(e) => {
            // One byte, so that nothing after it is taken from `r`.
            let first = tokio::time::timeout(e.within, r.read(&mut buf[..1])).await;
            if let Some(way) = expect_outcome(first, buf[0], e) {
                return way;
            }
        }
        Opening::Lead(lead) => {
            buf[0] = lead.byte;
            // `read` is cancel-safe: a read the deadline drops has taken nothing.
            let first = tokio::time::timeout(lead.within, r.read(&mut buf[1..])).await;
            let Some((n, ended)) = lead_outcome(first) else {
                return Way::Failed;
            };
            if w.write_all(&buf[..1 + n]).await.is_err() || w.flush().await.is_err() {
                return Way::Failed;
            }
            count.fetch_add(n as u64, Relaxed);
            last.store(start.elapsed().as_millis() as u64, Relaxed);
            if ended {
                return ended_way(w.shutdown().await.is_ok());
            }
        }
    }
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return Way::Failed,
        };
        last.store(start.elapsed().as_millis() as u64, Relaxed);
        if w.write_all(&buf[..n]).await.is_err() {
            return Way::Failed;
        }
        count.fetch_add(n as u64, Relaxed);
        last.store(start.elapsed().as_millis() as u64, Relaxed);
    }
    ended_way(w.shutdown().await.is_ok())
}

fn ended_way(shut: bool) -> Way {
    if shut {
        Way::Ended
    } else {
        Way::Failed
    }
}

/// What reading an [`Expect`]ed byte gave (`byte` is what was read, if one was):
/// `None` to go on relaying, else how the direction ends.
fn expect_outcome(
    first: Result<std::io::Result<usize>, tokio::time::error::Elapsed>,
    byte: u8,
    e: Expect,
) -> Option<Way> {
    match first {
        Ok(Ok(1)) if byte == e.byte => None,
        Ok(Ok(1)) => Some(Way::NotExpected(Some(byte))),
        _ => Some(Way::NotExpected(None)),
    }
}

/// What waiting for `b`'s first bytes under a [`Lead`]'s deadline gave: how many were
/// read and whether `b` ended instead; a deadline that passed is none read, not ended.
/// `None` on an error.
fn lead_outcome(
    first: Result<std::io::Result<usize>, tokio::time::error::Elapsed>,
) -> Option<(usize, bool)> {
    match first {
        Ok(Ok(0)) => Some((0, true)),
        Ok(Ok(n)) => Some((n, false)),
        Ok(Err(_)) => None,
        Err(_) => Some((0, false)),
    }
}

/// Relays `a` ⇄ `b` until both directions end or a limit is reached; half-closes pass
/// through. Counts into `traffic`. Anything but [`RelayEnd::Done`] is a cut: arm the
/// TCP sockets underneath with [`reset`] before, and disarm them ([`graceful`]) only
/// after `Done`.
pub async fn relay<A, B>(a: A, b: B, limits: RelayLimits, traffic: &Traffic) -> RelayEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay_with(a, b, limits, traffic, Opening::Plain).await
}

/// [`relay`], opening the `b` → `a` direction with `opening` (see [`Opening`]).
pub async fn relay_with<A, B>(
    a: A,
    b: B,
    limits: RelayLimits,
    traffic: &Traffic,
    opening: Opening,
) -> RelayEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let up = copy_one(
        ar,
        bw,
        &traffic.a_to_b,
        &traffic.last,
        start,
        Opening::Plain,
    );
    let down = copy_one(br, aw, &traffic.b_to_a, &traffic.last, start, opening);
    drive(up, down, start, limits, traffic).await
}

/// [`relay`] between two plain TCP streams. On Linux the bytes go socket to pipe to
/// socket with `splice(2)` and never enter this process; elsewhere it is [`relay`].
/// Both sockets reset when they are closed unless the relay ended cleanly
/// ([`reset`], [`graceful`]).
pub async fn relay_tcp(
    a: TcpStream,
    b: TcpStream,
    limits: RelayLimits,
    traffic: &Traffic,
) -> RelayEnd {
    relay_tcp_with(a, b, limits, traffic, Opening::Plain).await
}

/// [`relay_tcp`], opening the `b` → `a` direction with `opening` (see [`Opening`]). On
/// Linux a lead and `b`'s first bytes go through this process in one write, an
/// expected byte is read here alone; the rest is spliced.
pub async fn relay_tcp_with(
    #[cfg_attr(target_os = "linux", allow(unused_mut))] mut a: TcpStream,
    #[cfg_attr(target_os = "linux", allow(unused_mut))] mut b: TcpStream,
    limits: RelayLimits,
    traffic: &Traffic,
    opening: Opening,
) -> RelayEnd {
    reset(&a);
    reset(&b);
    #[cfg(target_os = "linux")]
    let end = {
        let start = Instant::now();
        let up = splice::one_way(
            &a,
            &b,
            &traffic.a_to_b,
            &traffic.last,
            start,
            Opening::Plain,
        );
        let down = splice::one_way(&b, &a, &traffic.b_to_a, &traffic.last, start, opening);
        drive(up, down, start, limits, traffic).await
    };
    #[cfg(not(target_os = "linux"))]
    let end = relay_with(&mut a, &mut b, limits, traffic, opening).await;
    if end == RelayEnd::Done {
        graceful(&a);
        graceful(&b);
    }
    end
}

/// Runs both directions under the relay's deadlines.
async fn drive(
    up: impl std::future::Future<Output = Way>,
    down: impl std::future::Future<Output = Way>,
    start: Instant,
    limits: RelayLimits,
    traffic: &Traffic,
) -> RelayEnd {
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let mut half_since: Option<Instant> = None;
    let tick = limits
        .idle
        .min(limits.half_close)
        .min(Duration::from_secs(1));
    loop {
        let way = tokio::select! {
            way = &mut up, if !up_done => {
                up_done = true;
                way
            }
            way = &mut down, if !down_done => {
                down_done = true;
                way
            }
            _ = tokio::time::sleep(tick) => Way::Ended,
        };
        match way {
            Way::Ended => {}
            Way::Failed => return RelayEnd::Error,
            Way::NotExpected(b) => return RelayEnd::NotExpected(b),
        }
        if up_done && down_done {
            return RelayEnd::Done;
        }
        let now = Instant::now();
        let last = start + Duration::from_millis(traffic.last.load(Relaxed));
        if up_done || down_done {
            // Silence, not age: the open direction is cut only when it too has moved
            // nothing for the whole timeout since the other ended.
            let since = (*half_since.get_or_insert(now)).max(last);
            if now.duration_since(since) >= limits.half_close {
                return RelayEnd::HalfClosed;
            }
        }
        if now.duration_since(last) >= limits.idle {
            return RelayEnd::Idle;
        }
    }
}

#[cfg(target_os = "linux")]
mod splice {
    //! One direction of a plain relay with `splice(2)`: socket → pipe → socket.
    //!
    //! Pipes are kept for the next relay when one ends with its pipe empty: a short
    //! session would otherwise spend a `pipe2` and two `close`s per direction, as many
    //! system calls as its bytes need.

    use std::io;
    use std::os::fd::{AsFd, OwnedFd};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::Mutex;

    use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use super::{Expect, Lead, Opening, Way};

    /// At most this much in the pipe at once (the default pipe size).
    const CHUNK: usize = 64 * 1024;

    /// Empty pipes kept for reuse at most: two descriptors each, so 128 at most held
    /// while no session runs.
    pub(super) const SPARE_PIPES: usize = 64;

    /// A pipe's read and write ends.
    type Pipe = (OwnedFd, OwnedFd);

    static SPARE: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

    fn spare() -> std::sync::MutexGuard<'static, Vec<Pipe>> {
        SPARE.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty pipe: a kept one, else a new one.
    fn take_pipe() -> io::Result<Pipe> {
        if let Some(p) = spare().pop() {
            return Ok(p);
        }
        Ok(pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?)
    }

    /// Keeps an empty pipe for the next relay, unless enough are kept already.
    fn give_back(pipe: Pipe) {
        let mut s = spare();
        if s.len() < SPARE_PIPES {
            s.push(pipe);
        }
    }

    /// Drops every kept pipe; how many there were.
    #[cfg(test)]
    pub(super) fn drop_spare_pipes() -> usize {
        std::mem::take(&mut *spare()).len()
    }

    /// Whether every kept pipe is empty (its read end would block).
    #[cfg(test)]
    pub(super) fn spare_pipes_empty() -> bool {
        spare().iter().all(|(r, _)| {
            let mut b = [0u8; 1];
            rustix::io::read(r, &mut b) == Err(rustix::io::Errno::AGAIN)
        })
    }

    /// Moves `from` → `to` until EOF (then half-closes `to`) or an error, after
    /// `opening`.
    pub(super) async fn one_way(
        from: &TcpStream,
        to: &TcpStream,
        count: &AtomicU64,
        last: &AtomicU64,
        start: Instant,
        opening: Opening,
    ) -> Way {
        match opening {
            Opening::Plain => {}
            Opening::Expect(e) => {
                if let Some(way) = expect_first(from, e).await {
                    return way;
                }
            }
            Opening::Lead(lead) => match lead_with_first(from, to, lead).await {
                Some((n, ended)) => {
                    count.fetch_add(n as u64, Relaxed);
                    last.store(start.elapsed().as_millis() as u64, Relaxed);
                    if ended {
                        return super::ended_way(
                            rustix::net::shutdown(to, rustix::net::Shutdown::Write).is_ok(),
                        );
                    }
                }
                None => return Way::Failed,
            },
        }
        let Ok(pipe) = take_pipe() else {
            return Way::Failed;
        };
        let ok = pump(from, to, &pipe, count, last, start).await;
        // Only a relay that ended at EOF left its pipe empty; any other end may have
        // left bytes in it that the next session must never see.
        if ok {
            give_back(pipe);
        }
        super::ended_way(ok)
    }

    /// Reads the one byte `e` wants from `from` within `e.within`: `None` to go on.
    async fn expect_first(from: &TcpStream, e: Expect) -> Option<Way> {
        let mut one = [0u8; 1];
        let read = async {
            loop {
                from.readable().await?;
                match from.try_read(&mut one) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            }
        };
        let first = tokio::time::timeout(e.within, read).await;
        super::expect_outcome(first, one[0], e)
    }

    /// Writes `lead` to `to` with what `from` sends within `lead.within` (read here,
    /// at most 16 KiB), or alone: the bytes of `from` it carried, and whether `from`
    /// already ended. `None` on an error.
    async fn lead_with_first(
        from: &TcpStream,
        to: &TcpStream,
        lead: Lead,
    ) -> Option<(usize, bool)> {
        let mut buf = vec![0u8; 1 + 16 * 1024];
        buf[0] = lead.byte;
        let first = async {
            loop {
                from.readable().await?;
                match from.try_read(&mut buf[1..]) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            }
        };
        let (n, ended) = super::lead_outcome(tokio::time::timeout(lead.within, first).await)?;
        let mut out = &buf[..1 + n];
        while !out.is_empty() {
            to.writable().await.ok()?;
            match to.try_write(out) {
                Ok(m) => out = &out[m..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return None,
            }
        }
        Some((n, ended))
    }

    /// The loop of [`one_way`] over `pipe`; true at EOF, with the pipe empty.
    async fn pump(
        from: &TcpStream,
        to: &TcpStream,
        (pipe_r, pipe_w): &Pipe,
        count: &AtomicU64,
        last: &AtomicU64,
        start: Instant,
    ) -> bool {
        let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
        loop {
            let filled = from.try_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe_w, None, CHUNK, flags).map_err(io::Error::from)
            });
            let n = match filled {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if from.readable().await.is_err() {
                        return false;
                    }
                    continue;
                }
                Err(_) => return false,
            };
            last.store(start.elapsed().as_millis() as u64, Relaxed);
            let mut left = n;
            while left > 0 {
                let drained = to.try_io(Interest::WRITABLE, || {
                    splice(pipe_r, None, to.as_fd(), None, left, flags).map_err(io::Error::from)
                });
                match drained {
                    Ok(0) => return false,
                    Ok(m) => left -= m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if to.writable().await.is_err() {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
            count.fetch_add(n as u64, Relaxed);
            last.store(start.elapsed().as_millis() as u64, Relaxed);
        }
        rustix::net::shutdown(to, rustix::net::Shutdown::Write).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    /// The splice tests share the process's kept pipes: one at a time.
    static SPLICE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn a_tcp_relay_moves_every_byte_both_ways_and_passes_half_closes() {
        let _one = SPLICE.lock().await;
        let (mut a_peer, a) = tcp_pair().await;
        let (b, mut b_peer) = tcp_pair().await;
        let t = std::sync::Arc::new(Traffic::default());
        let t2 = t.clone();
        let relay = tokio::spawn(async move { relay_tcp(a, b, RelayLimits::default(), &t2).await });
        let up: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..100_001u32).map(|i| (i * 13 % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let writer = tokio::spawn(async move {
            a_peer.write_all(&up2).await.unwrap();
            a_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            a_peer.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got = Vec::new();
        b_peer.read_to_end(&mut got).await.unwrap();
        assert!(got == up, "up: {} bytes of {}", got.len(), up.len());
        b_peer.write_all(&down2).await.unwrap();
        b_peer.shutdown().await.unwrap();
        let back = writer.await.unwrap();
        assert!(back == down, "down: {} bytes of {}", back.len(), down.len());
        assert_eq!(relay.await.unwrap(), RelayEnd::Done);
        assert_eq!(t.a_to_b.load(Relaxed), up.len() as u64);
        assert_eq!(t.b_to_a.load(Relaxed), down.len() as u64);
    }

    /// A relay that reached EOF both ways keeps its two pipes, empty, and the next
    /// relays reuse them with only their own bytes; one that failed keeps none.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn relays_reuse_empty_pipes_and_drop_the_ones_a_failure_left() {
        let _one = SPLICE.lock().await;
        splice::drop_spare_pipes();
        for round in 0..5u8 {
            let (mut a_peer, a) = tcp_pair().await;
            let (b, mut b_peer) = tcp_pair().await;
            let t = Traffic::default();
            let relay = relay_tcp(a, b, RelayLimits::default(), &t);
            let peers = async {
                a_peer.write_all(&[round; 3000]).await.unwrap();
                a_peer.shutdown().await.unwrap();
                let mut got = Vec::new();
                b_peer.read_to_end(&mut got).await.unwrap();
                b_peer.write_all(&[round ^ 0xff; 700]).await.unwrap();
                b_peer.shutdown().await.unwrap();
                let mut back = Vec::new();
                a_peer.read_to_end(&mut back).await.unwrap();
                (got, back)
            };
            let (end, (got, back)) = tokio::join!(relay, peers);
            assert_eq!(end, RelayEnd::Done);
            assert!(got == [round; 3000] && back == [round ^ 0xff; 700]);
            assert!(splice::spare_pipes_empty());
        }
        assert_eq!(
            splice::drop_spare_pipes(),
            2,
            "two pipes, reused each round"
        );
        // The target side resets while bytes are on their way: the relay fails and
        // its pipes, which may hold bytes, are closed.
        let (mut a_peer, a) = tcp_pair().await;
        let (b, b_peer) = tcp_pair().await;
        rustix::net::sockopt::set_socket_linger(&b_peer, Some(Duration::ZERO)).unwrap();
        drop(b_peer);
        let t = Traffic::default();
        let relay = relay_tcp(a, b, RelayLimits::default(), &t);
        let feed = async {
            // Bounded: the relay fails within a few writes, then this one fails too.
            for _ in 0..64 {
                if a_peer.write_all(&[7u8; 16 * 1024]).await.is_err() {
                    break;
                }
            }
        };
        let (end, ()) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(10), relay),
            async {
                let _ = tokio::time::timeout(Duration::from_secs(10), feed).await;
            }
        );
        assert_eq!(end.expect("the relay ends"), RelayEnd::Error);
        assert_eq!(splice::drop_spare_pipes(), 0);
    }

    const LEAD: u8 = 0x06;

    /// `f`, which must end within 10 s.
    async fn bound<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("ends within 10 s")
    }

    /// A lead goes to `a` in the same write as `b`'s first bytes when they come in
    /// time, alone when `b` stays silent past `within`, and just before the end when
    /// `b` ends first; the relay then carries on as usual. `tcp` picks the plain TCP
    /// relay (splice on Linux), else the generic one.
    async fn a_lead_goes_with_the_first_bytes_or_alone(tcp: bool) {
        let run = |a: TcpStream, b: TcpStream, within: Duration| {
            let lead = Opening::Lead(Lead { byte: LEAD, within });
            tokio::spawn(async move {
                let t = Traffic::default();
                let end = if tcp {
                    relay_tcp_with(a, b, RelayLimits::default(), &t, lead).await
                } else {
                    relay_with(a, b, RelayLimits::default(), &t, lead).await
                };
                (end, t.b_to_a.load(Relaxed))
            })
        };
        // In time: one write, so the first read has the lead and the answer.
        let (mut a_peer, a) = tcp_pair().await;
        let (b, mut b_peer) = tcp_pair().await;
        let relay = run(a, b, Duration::from_secs(10));
        a_peer.write_all(b"question").await.unwrap();
        let mut q = [0u8; 8];
        b_peer.read_exact(&mut q).await.unwrap();
        // The question reached `b`, and the lead is still held back for the answer.
        let mut peek = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        let held = rustix::net::recv(&a_peer, &mut peek, flags);
        assert_eq!(
            held.err(),
            Some(rustix::io::Errno::AGAIN),
            "nothing before the answer"
        );
        b_peer.write_all(b"answer").await.unwrap();
        let mut first = [0u8; 64];
        let n = bound(a_peer.read(&mut first)).await.unwrap();
        assert_eq!(
            &first[..n],
            b"\x06answer",
            "the lead and the answer in one read"
        );
        drop((a_peer, b_peer));
        let (_, moved) = bound(relay).await.unwrap();
        assert_eq!(moved, 6, "the lead is not counted as relayed");
        // Silent past `within`: the lead alone, then the relay as usual.
        let (mut a_peer, a) = tcp_pair().await;
        let (b, mut b_peer) = tcp_pair().await;
        let relay = run(a, b, Duration::from_millis(20));
        let mut one = [0u8; 1];
        bound(a_peer.read_exact(&mut one)).await.unwrap();
        assert_eq!(one, [LEAD]);
        b_peer.write_all(b"late").await.unwrap();
        b_peer.shutdown().await.unwrap();
        a_peer.shutdown().await.unwrap();
        let mut rest = Vec::new();
        bound(a_peer.read_to_end(&mut rest)).await.unwrap();
        assert_eq!(rest, b"late");
        let (end, moved) = bound(relay).await.unwrap();
        assert_eq!((end, moved), (RelayEnd::Done, 4));
        // `b` ends before a byte: the lead, then the end.
        let (mut a_peer, a) = tcp_pair().await;
        let (b, mut b_peer) = tcp_pair().await;
        let relay = run(a, b, Duration::from_secs(10));
        b_peer.shutdown().await.unwrap();
        let mut all = Vec::new();
        bound(a_peer.read_to_end(&mut all)).await.unwrap();
        assert_eq!(all, [LEAD]);
        drop((a_peer, b_peer));
        bound(relay).await.unwrap();
    }

    #[tokio::test]
    async fn a_tcp_relay_leads_with_the_first_bytes_or_alone() {
        let _one = SPLICE.lock().await;
        a_lead_goes_with_the_first_bytes_or_alone(true).await;
    }

    #[tokio::test]
    async fn a_copy_relay_leads_with_the_first_bytes_or_alone() {
        a_lead_goes_with_the_first_bytes_or_alone(false).await;
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_half_closed_relays_end() {
        let limits = RelayLimits {
            idle: Duration::from_secs(5),
            half_close: Duration::from_secs(2),
        };
        // Idle: nobody sends.
        let (a, _a_peer) = tokio::io::duplex(64);
        let (b, _b_peer) = tokio::io::duplex(64);
        let t = Traffic::default();
        let start = Instant::now();
        assert_eq!(relay(a, b, limits, &t).await, RelayEnd::Idle);
        assert!(start.elapsed() < Duration::from_secs(7));

        // Half-closed: `a`'s peer sends and closes, `b`'s peer never closes.
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        a_peer.write_all(b"hi").await.unwrap();
        a_peer.shutdown().await.unwrap();
        let t = Traffic::default();
        let start = Instant::now();
        assert_eq!(relay(a, b, limits, &t).await, RelayEnd::HalfClosed);
        assert!(start.elapsed() < Duration::from_secs(4));
        let mut got = Vec::new();
        b_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        assert_eq!(t.a_to_b.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn both_halves_closing_is_done() {
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        let t = Traffic::default();
        let run = relay(a, b, RelayLimits::default(), &t);
        let peers = async {
            a_peer.write_all(b"ping").await.unwrap();
            a_peer.shutdown().await.unwrap();
            let mut got = [0u8; 4];
            b_peer.read_exact(&mut got).await.unwrap();
            b_peer.write_all(b"pong!").await.unwrap();
            b_peer.shutdown().await.unwrap();
            let mut back = Vec::new();
            a_peer.read_to_end(&mut back).await.unwrap();
            back
        };
        let (end, back) = tokio::join!(run, peers);
        assert_eq!(end, RelayEnd::Done);
        assert_eq!(back, b"pong!");
        assert_eq!(t.b_to_a.load(Relaxed), 5);
    }
}
