//! One user session on the server side: the in-band start on a pooled connection, the
//! handover to the client (its receipt), and the relay that waits for the outcome.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use pool_tokio::PoolStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::services::Service;
use super::{Control, Shared};
use crate::config::ServiceProtocol;
use crate::protocol::{SessionStart, NO_SERVICE, REACHED, RECEIVED, TARGET_FAILED, WRONG_KIND};
use crate::relay::{
    graceful, relay_flushing, relay_tcp_with, relay_with, reset, Expect, Opening, RelayEnd, Traffic,
};
use crate::stats::{bump, bump_both};
use crate::transport::{ForRelay, Pooled};

/// Pooled connections one user session tries at most: each was found closed or broken
/// before the client's receipt (dead when picked).
const ATTEMPTS: usize = 16;
/// The user's bytes the server sends before the client's [`RECEIVED`] and keeps for a
/// replay, at most. Past it, the server reads nothing more from the user until the
/// receipt (one round trip): nothing is ever sent that could not be replayed.
pub(crate) const REPLAY_MAX: usize = 64 * 1024;
/// Users' bytes all sessions together hold in memory for a replay, at most. Past it, a
/// session sends what it holds and reads nothing more from its user until the receipt
/// (the bytes wait in the kernel; counted in `buffer_waits`).
pub(super) const BUFFER_BUDGET: usize = 32 * 1024 * 1024;
/// The user's bytes read at once before the receipt, at most.
const CHUNK: usize = 16 * 1024;

/// This session's share of [`BUFFER_BUDGET`], given back when dropped.
struct Buffered<'a> {
    total: &'a AtomicUsize,
    mine: usize,
}

impl<'a> Buffered<'a> {
    fn new(total: &'a AtomicUsize) -> Self {
        Self { total, mine: 0 }
    }

    /// Takes up to `want` bytes of the budget; answers how many it got (0: spent).
    fn reserve(&mut self, want: usize) -> usize {
        let got = self.total.fetch_update(Relaxed, Relaxed, |used| {
            let n = want.min(BUFFER_BUDGET.saturating_sub(used));
            (n > 0).then_some(used + n)
        });
        let n = got.map_or(0, |used| want.min(BUFFER_BUDGET - used));
        self.mine += n;
        n
    }

    /// Gives back `n` bytes reserved and not used.
    fn unreserve(&mut self, n: usize) {
        let n = n.min(self.mine);
        self.mine -= n;
        self.total.fetch_sub(n, Relaxed);
    }
}

impl Drop for Buffered<'_> {
    fn drop(&mut self) {
        self.total.fetch_sub(self.mine, Relaxed);
    }
}

/// How handing a user's bytes to one pooled connection went.
enum Handover {
    /// The client received the start ([`RECEIVED`]): from now on only it may deliver
    /// the user's bytes.
    Received(Pooled),
    /// Closed or broken before the receipt: the client never read the bytes, so they
    /// may go on another connection.
    Dead,
    /// No receipt within the deadline, or another byte in its place: the client may
    /// have read the bytes, so they go nowhere else.
    Unconfirmed,
    /// The control connection ended meanwhile.
    Orphaned,
    /// The user's connection failed (a reset): the session ends.
    UserGone,
}

/// One user: a pooled connection started in band, a relay. The pool's start header
/// and then the user's bytes go onto an idle pooled connection at once, and the
/// client's pool accepts it when its first byte arrives: the user's first byte
/// reaches the client one one-way trip after it was sent, with nothing on control.
///
/// The client answers [`RECEIVED`] as soon as it accepted, before it connects to the
/// target. Until then the server keeps a copy of what it sent, and a pooled connection
/// that closes or breaks without the receipt is replaced and the copy replayed: that
/// client never read it. After the receipt nothing is replayed, whatever happens: the
/// relay starts at once (the user's further bytes flow on), and the first byte of the
/// download must be [`REACHED`] within [`Timeouts::outcome`](crate::Timeouts::outcome). [`TARGET_FAILED`] in its
/// place, a pooled connection that dies first, or no outcome in time resets the user.
/// So does every failure, and this process's death: the user's socket is armed to reset
/// from the start and disarmed only when its relay ended cleanly, so a user never sees
/// a clean end of stream for a session cut short. A user for whom no control connection
/// comes within `control_wait` is reset at once (no client is there to accept); so is
/// one whose control connection is lost before the receipt.
pub(super) async fn user_session(
    shared: &Shared,
    service: &Service,
    mut user: TcpStream,
    traffic: &Traffic,
) -> bool {
    reset(&user);
    let mine = &service.stats.sessions;
    let (Ok(from), Ok(to)) = (user.peer_addr(), user.local_addr()) else {
        return false; // already gone
    };
    // The session's start goes first, then the user's bytes; both are replayed alike.
    let start = SessionStart {
        kind: ServiceProtocol::Tcp,
        service: service.name.clone(),
        user: from,
        public: to,
    }
    .encode();
    let mut control = shared.control.subscribe();
    // What the user sent already goes out with the start, in one write. A user that
    // shut down its write side before a byte (a half-close) still gets its session:
    // many services speak first. One that already failed costs nothing.
    // Each byte held for a replay counts against the server's budget, until the
    // receipt frees it.
    let mut budget = Buffered::new(&shared.buffered);
    let want = budget.reserve(CHUNK);
    let (early, mut user_done) = match early_bytes(&user, want) {
        Early::Bytes(b) => (b, false),
        Early::HalfClosed => (Vec::new(), true),
        Early::Gone => return false,
    };
    budget.unreserve(want - early.len());
    let mut sent = start.clone();
    sent.extend_from_slice(&early);
    if want < CHUNK {
        bump(&shared.stats.buffer_waits);
    }
    let mut tries = 0;
    let conn = loop {
        if tries == ATTEMPTS {
            return false;
        }
        tries += 1;
        let ctl = match timeout(shared.t.control_wait, control.wait_for(Option::is_some)).await {
            Ok(Ok(c)) => c.clone(),
            _ => return false,
        };
        let Some(mut ctl) = ctl else { return false };
        // Whatever ends this connection from now on, but a clean relay, is a cut.
        let Some(conn) = shared.pool.start_with(&sent, shared.t.get).await else {
            return false;
        };
        if tries > 1 {
            bump(&shared.stats.replayed);
        }
        let handover = handover(
            shared,
            &mut user,
            conn,
            &mut ctl,
            (&mut sent, &mut budget),
            &mut user_done,
        )
        .await;
        match handover {
            Handover::Received(conn) => break conn,
            Handover::Dead => bump(&shared.stats.dead_picked),
            Handover::Unconfirmed => {
                bump_both(&shared.stats.not_taken, &mine.not_taken);
                return false;
            }
            Handover::Orphaned => {
                bump_both(&shared.stats.orphaned, &mine.orphaned);
                return false;
            }
            Handover::UserGone => return false,
        }
    };
    // The copy is not needed any more: nothing is replayed after the receipt.
    let sent = std::mem::take(&mut sent).len() - start.len();
    drop(budget);
    let reached = Opening::Expect(Expect {
        byte: REACHED,
        within: shared.t.outcome(),
    });
    let end = match conn.into_tcp() {
        ForRelay::Tcp(PoolStream::Plain(tcp)) => {
            relay_tcp_with(user, tcp, service.relay, traffic, reached).await
        }
        ForRelay::Tcp(mut tls) => {
            let end = relay_with(&mut user, &mut tls, service.relay, traffic, reached).await;
            if end == RelayEnd::Done {
                graceful(&user);
                graceful(tls.tcp());
            }
            end
        }
        ForRelay::Stream(mut stream) => {
            let end = relay_flushing(&mut user, &mut stream, service.relay, traffic, reached).await;
            if end == RelayEnd::Done {
                graceful(&user);
                stream.disarm();
            }
            end
        }
    };
    let up = traffic.a_to_b.load(Relaxed) + sent as u64;
    let down = traffic.b_to_a.load(Relaxed);
    shared.stats.bytes_up.fetch_add(up, Relaxed);
    shared.stats.bytes_down.fetch_add(down, Relaxed);
    mine.bytes_to_target.fetch_add(up, Relaxed);
    mine.bytes_to_user.fetch_add(down, Relaxed);
    match end {
        RelayEnd::Done => true,
        RelayEnd::Error => false,
        RelayEnd::Idle => {
            bump_both(&shared.stats.idle_closed, &mine.idle_closed);
            false
        }
        RelayEnd::HalfClosed => {
            bump_both(&shared.stats.half_close_timeouts, &mine.half_close_timeouts);
            false
        }
        RelayEnd::NotExpected(Some(TARGET_FAILED)) => {
            bump_both(&shared.stats.target_failed, &mine.target_failed);
            false
        }
        RelayEnd::NotExpected(Some(NO_SERVICE)) => {
            bump_both(&shared.stats.no_service, &mine.no_service);
            false
        }
        RelayEnd::NotExpected(Some(WRONG_KIND)) => {
            bump_both(&shared.stats.wrong_kind, &mine.wrong_kind);
            false
        }
        RelayEnd::NotExpected(_) => {
            bump_both(&shared.stats.no_outcome, &mine.no_outcome);
            false
        }
    }
}

/// Sends the user's bytes as they come on `conn` (the copy of the earlier ones went
/// with the start) until the client's first byte, the connection's end, the receipt
/// deadline or control's end says how the handover went. A connection that closes or
/// fails without the receipt is dead; anything else but the receipt is not replayed.
///
/// Every one of those is polled while a write to `conn` is stalled too: the write is a
/// branch of the same `select!` (`write` is cancel-safe: a branch not taken wrote
/// nothing), and `sent[written..]` is what is still to go. Nothing more is read from
/// the user until it went.
async fn handover(
    shared: &Shared,
    user: &mut TcpStream,
    mut conn: Pooled,
    ctl: &mut Control,
    (sent, budget): (&mut Vec<u8>, &mut Buffered<'_>),
    user_done: &mut bool,
) -> Handover {
    let deadline = Instant::now() + shared.t.ack;
    // What the start carried went already.
    let mut written = sent.len();
    let mut buf = Vec::new();
    let mut waited = false;
    let how = {
        let (mut rd, mut wr) = tokio::io::split(&mut conn);
        loop {
            let room = REPLAY_MAX - sent.len();
            let mut want = 0;
            if !*user_done && room > 0 && written == sent.len() {
                want = budget.reserve(room.min(CHUNK));
                if want == 0 && !waited {
                    waited = true;
                    bump(&shared.stats.buffer_waits);
                }
            }
            let reading = want > 0;
            if reading && buf.is_empty() {
                buf = vec![0u8; CHUNK];
            }
            tokio::select! {
                // `read_u8` is cancel-safe: a select that takes another branch read nothing.
                r = rd.read_u8() => break match r {
                    Ok(RECEIVED) => None,
                    Ok(_) => Some(Handover::Unconfirmed),
                    Err(_) => Some(Handover::Dead),
                },
                w = wr.write(&sent[written..]), if written < sent.len() => match w {
                    Ok(n) if n > 0 => written += n,
                    _ => break Some(Handover::Dead),
                },
                n = user.read(&mut buf[..want]), if reading => match n {
                    Ok(0) => *user_done = true,
                    Ok(n) => {
                        sent.extend_from_slice(&buf[..n]);
                        want -= n;
                    }
                    // The client may have read part of it: it sees a cut (a reset).
                    Err(_) => break Some(Handover::UserGone),
                },
                _ = tokio::time::sleep_until(deadline) => break Some(Handover::Unconfirmed),
                _ = ctl.gone.changed() => break Some(Handover::Orphaned),
            }
            budget.unreserve(want);
        }
    };
    match how {
        None if written == sent.len() => Handover::Received(conn),
        // A receipt before all the user's bytes went: the rest goes first, under the
        // same deadlines.
        None => match finish(shared, &mut conn, &sent[written..], ctl).await {
            None => Handover::Received(conn),
            Some(h) => h,
        },
        Some(h) => h,
    }
}

/// Writes `rest` on `conn` after the receipt came, while the outcome's deadline (the
/// client reads again once its target connect ended) and control's end are polled:
/// `None` when it all went. The client has the start: nothing is replayed now.
async fn finish(
    shared: &Shared,
    conn: &mut Pooled,
    rest: &[u8],
    ctl: &mut Control,
) -> Option<Handover> {
    let deadline = Instant::now() + shared.t.outcome();
    tokio::select! {
        w = conn.write_all(rest) => w.err().map(|_| Handover::Unconfirmed),
        _ = tokio::time::sleep_until(deadline) => Some(Handover::Unconfirmed),
        _ = ctl.gone.changed() => Some(Handover::Orphaned),
    }
}

/// What a user sent before its session started.
enum Early {
    /// These bytes (none yet: empty).
    Bytes(Vec<u8>),
    /// Nothing, and its write side is shut down (a half-close, not a departure).
    HalfClosed,
    /// Its connection failed (a reset): nobody is there.
    Gone,
}

/// What the user has sent so far, at most `max` bytes, read without waiting (straight
/// from the kernel: tokio's readiness for a socket just accepted is not known yet) into
/// a buffer of the size read. With `max` 0 (the budget is spent) only whether the user
/// is still there is asked.
#[cfg(unix)]
fn early_bytes(user: &TcpStream, max: usize) -> Early {
    use rustix::io::Errno;
    let mut buf = [0u8; CHUNK];
    let peek = max == 0;
    let r = if peek {
        rustix::net::recv(user, &mut buf[..1], rustix::net::RecvFlags::PEEK).map(|(n, _)| n)
    } else {
        rustix::io::read(user, &mut buf[..max.min(CHUNK)])
    };
    match r {
        Ok(0) => Early::HalfClosed,
        Ok(_) if peek => Early::Bytes(Vec::new()),
        Ok(n) => Early::Bytes(buf[..n].to_vec()),
        Err(Errno::AGAIN | Errno::INTR) => Early::Bytes(Vec::new()),
        Err(_) => Early::Gone,
    }
}

/// Elsewhere: none read; the relay finds what the user did.
#[cfg(not(unix))]
fn early_bytes(_user: &TcpStream, _max: usize) -> Early {
    Early::Bytes(Vec::new())
}
