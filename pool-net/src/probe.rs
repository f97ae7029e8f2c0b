//! The zero-loss liveness probe.

use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::os::fd::AsFd;

pub use pool_core::Liveness;

/// Checks whether the connection behind `s` is still alive, without consuming
/// any data and without blocking.
///
/// Performs one `recv(fd, buf, 1, MSG_PEEK | MSG_DONTWAIT)` (retried only when
/// interrupted by a signal). `MSG_PEEK` leaves any pending byte in the kernel's
/// receive queue, so the next ordinary read still returns it; `MSG_DONTWAIT`
/// makes this single call non-blocking whatever the descriptor's blocking mode,
/// which is left unchanged. See the [crate documentation](crate) for why.
///
/// `s` should be a connected stream socket; it may be the TCP socket under a
/// TLS session (only the kernel's queue is inspected, not the TLS library's own
/// buffer). Anything else gives [`Liveness::Dead`] with the error the kernel
/// reports (for example `NotConnected` for a listener).
pub fn probe<S: AsFd>(s: &S) -> Liveness {
    let sock = socket2::SockRef::from(s);
    let mut buf = [MaybeUninit::<u8>::uninit(); 1];
    loop {
        return match sock.recv_with_flags(&mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(0) => Liveness::Closed,
            Ok(_) => Liveness::Pending,
            Err(e) => match e.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => Liveness::Idle,
                kind => Liveness::Dead(kind),
            },
        };
    }
}

/// Copies the first bytes already queued on the socket into `buf` without taking them
/// off the queue and without waiting: `Ok(0)` when nothing is queued or the peer
/// closed. A plain server uses it to spot a TLS ClientHello (`16 03 ..`) from a client
/// in the wrong mode.
pub fn peek_now<S: AsFd>(s: &S, buf: &mut [u8]) -> std::io::Result<usize> {
    use rustix::net::{recv, RecvFlags};
    loop {
        return match recv(s, &mut *buf, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((n, _)) => Ok(n),
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) if e == rustix::io::Errno::AGAIN => Ok(0),
            Err(e) => Err(e.into()),
        };
    }
}

/// Reads what is queued on the socket now, never waiting (`MSG_DONTWAIT`):
/// `Err(WouldBlock)` when nothing is, `Ok(0)` at end of stream.
///
/// It goes to the kernel whatever a runtime believes of the socket: tokio's own
/// `try_read` answers `WouldBlock` until its reactor has seen the socket become
/// readable, which a pool that learns of the bytes through a watch of its own (an
/// in-band start) may know first. Feeding a TLS library's records from here never
/// misses them.
pub fn read_now<S: AsFd>(s: &S, buf: &mut [u8]) -> std::io::Result<usize> {
    use rustix::net::{recv, RecvFlags};
    loop {
        return match recv(s, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => Ok(n),
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) => Err(e.into()),
        };
    }
}

/// Whether the first bytes of a stream are a TLS handshake record (a ClientHello):
/// content type 22, protocol major version 3.
pub fn looks_like_tls(first: &[u8]) -> bool {
    matches!(first, [0x16, 0x03, ..])
}

/// Whether the peer has shut down its sending side (a FIN arrived), even when bytes
/// it sent before are still queued unread. [`probe`] cannot tell: it sees the first
/// pending byte and stops. One `poll` with `POLLRDHUP` and no wait; it reads nothing.
///
/// A pool uses it where pending bytes are suspect: on a server, an idle connection
/// whose client pool has not taken it yet receives nothing from a well-behaved peer,
/// so pending bytes followed by a close are a stranger (or a client in the wrong TLS
/// mode) that gave up. (On a client, pending bytes then a close can be an early reply,
/// so it keeps such a connection.)
pub fn peer_closed<S: AsFd>(s: &S) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(s, PollFlags::RDHUP)];
    match poll(&mut fds, Some(&rustix::event::Timespec::default())) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
        _ => false,
    }
}
