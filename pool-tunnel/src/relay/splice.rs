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

use super::{Expect, Lead, Opening, Traffic, Way};

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
    traffic: &Traffic,
    opening: Opening,
) -> Way {
    match opening {
        Opening::Plain => {}
        Opening::Expect(e) => {
            if let Some(way) = expect_first(from, e).await {
                return way;
            }
            traffic.open();
        }
        Opening::Lead(lead) => match lead_with_first(from, to, lead).await {
            Some((n, ended)) => {
                count.fetch_add(n as u64, Relaxed);
                traffic.open();
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
    let ok = pump(from, to, &pipe, count, traffic).await;
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
async fn lead_with_first(from: &TcpStream, to: &TcpStream, lead: Lead) -> Option<(usize, bool)> {
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
    traffic: &Traffic,
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
        traffic.moved();
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
        traffic.moved();
    }
    rustix::net::shutdown(to, rustix::net::Shutdown::Write).is_ok()
}
