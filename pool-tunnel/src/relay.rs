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

use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::time::Duration;

pub use crate::config::RelayLimits;
use pool_tokio::SocketOptions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

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
/// passed (or as soon as `b` ends). The tunnel's client reports a reached target this
/// way ([`REACHED`](crate::protocol::REACHED)): the outcome travels with the target's
/// first answer, one segment and one wake-up of the server fewer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lead {
    /// The byte.
    pub byte: u8,
    /// How long it waits for `b`'s first bytes.
    pub within: Duration,
}

/// Bytes moved so far, and when the last one moved, readable while the relay runs
/// (the public port's accept loop reads [`Traffic::quiet_for`] to choose whom to evict).
#[derive(Debug)]
pub struct Traffic {
    /// `a` → `b`.
    pub a_to_b: AtomicU64,
    /// `b` → `a`.
    pub b_to_a: AtomicU64,
    /// When this was made: the relay's deadlines count from here until a byte moves.
    born: Instant,
    /// Milliseconds since `born` at the last byte moved (or the relay opened).
    last: AtomicU64,
    /// Whether the relay has opened: its opening (an expected first byte, a lead)
    /// went, or it had none. Until then the session is still starting, under the
    /// start's own deadlines, and is never quiet.
    opened: AtomicBool,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            a_to_b: AtomicU64::new(0),
            b_to_a: AtomicU64::new(0),
            born: Instant::now(),
            last: AtomicU64::new(0),
            opened: AtomicBool::new(false),
        }
    }
}

impl Traffic {
    /// How long no byte has moved either way at `now`, counted from when the relay
    /// opened at the earliest: zero while the session is still starting (waiting for
    /// a pooled connection, the client's receipt or the target's outcome), however
    /// long that takes.
    pub fn quiet_for(&self, now: Instant) -> Duration {
        if !self.opened.load(Acquire) {
            return Duration::ZERO;
        }
        let last = self.born + Duration::from_millis(self.last.load(Relaxed));
        now.saturating_duration_since(last)
    }

    /// The relay opened now: its quiet time counts from here.
    fn open(&self) {
        self.moved();
        self.opened.store(true, Release);
    }

    /// A byte moved now.
    fn moved(&self) {
        self.last
            .store(self.born.elapsed().as_millis() as u64, Relaxed);
    }
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

/// A direction's buffer until a read fills it: what a quiet session holds.
const BUF_MIN: usize = 4 * 1024;
/// A direction's buffer once a read filled the small one.
const BUF_MAX: usize = 64 * 1024;

async fn copy_one<R, W>(
    mut r: R,
    mut w: W,
    count: &AtomicU64,
    traffic: &Traffic,
    opening: Opening,
    flush: bool,
) -> Way
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Small while the session is quiet; grown to `BUF_MAX` once a read fills it.
    let mut buf = vec![0u8; BUF_MIN];
    match opening {
        Opening::Plain => {}
        Opening::Expect(e) => {
            // One byte, so that nothing after it is taken from `r`.
            let first = tokio::time::timeout(e.within, r.read(&mut buf[..1])).await;
            if let Some(way) = expect_outcome(first, buf[0], e) {
                return way;
            }
            traffic.open();
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
            traffic.open();
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
        let full = n == buf.len() && n < BUF_MAX;
        traffic.moved();
        if w.write_all(&buf[..n]).await.is_err() {
            return Way::Failed;
        }
        if flush && w.flush().await.is_err() {
            return Way::Failed;
        }
        count.fetch_add(n as u64, Relaxed);
        traffic.moved();
        if full {
            buf = vec![0u8; BUF_MAX];
        }
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
    relay_both(a, b, limits, traffic, opening, false).await
}

/// [`relay_with`] for streams that hold written bytes until a flush (a WebSocket's
/// messages): each write is flushed.
pub async fn relay_flushing<A, B>(
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
    relay_both(a, b, limits, traffic, opening, true).await
}

async fn relay_both<A, B>(
    a: A,
    b: B,
    limits: RelayLimits,
    traffic: &Traffic,
    opening: Opening,
    flush: bool,
) -> RelayEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = traffic.born;
    if matches!(opening, Opening::Plain) {
        traffic.open();
    }
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let up = copy_one(ar, bw, &traffic.a_to_b, traffic, Opening::Plain, flush);
    let down = copy_one(br, aw, &traffic.b_to_a, traffic, opening, flush);
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
        let start = traffic.born;
        if matches!(opening, Opening::Plain) {
            traffic.open();
        }
        let up = splice::one_way(&a, &b, &traffic.a_to_b, traffic, Opening::Plain);
        let down = splice::one_way(&b, &a, &traffic.b_to_a, traffic, opening);
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
mod splice;

#[cfg(test)]
mod tests;
