//! The client side of a UDP service: one association's stream relayed to the target
//! through a UDP socket connected to it.

use std::io::ErrorKind;
use std::sync::atomic::Ordering::Relaxed;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::serve::Outgoing;
use super::{Activity, Deframer, Dropped, UdpEnd, UdpLimits, UdpStats, BATCH, FRAME_HEADER};

/// Bytes read from the stream at once.
const READ: usize = 4096;

/// A UDP socket connected to `target` (`HOST:PORT`, resolved now; the first address
/// that takes a connect): only the target's datagrams reach it.
pub async fn connect_target(target: &str) -> std::io::Result<UdpSocket> {
    let mut last = None;
    for addr in tokio::net::lookup_host(target).await? {
        let local: std::net::SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(local).await?;
        match sock.connect(addr).await {
            Ok(()) => return Ok(sock),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(ErrorKind::NotFound, "no address")))
}

/// Relays one association: frames read from `stream` go to `target` as datagrams, the
/// target's datagrams come back as frames, until no datagram moved either way for
/// [`UdpLimits::idle`], the stream ends, or a bad frame comes (counted in `stats`).
/// A datagram the target refuses (an ICMP error: nothing listens) or longer than the
/// limit is dropped and counted; the association goes on.
pub async fn relay_target<S>(
    stream: S,
    target: &UdpSocket,
    limits: &UdpLimits,
    stats: &UdpStats,
) -> UdpEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut out = Outgoing::default();
    let mut rbuf = vec![0u8; READ];
    let mut de = Deframer::new(limits.max_datagram);
    let activity = Activity::new();
    loop {
        let deadline = activity.idle_deadline(limits.idle);
        tokio::select! {
            r = rd.read(&mut rbuf) => match r {
                Ok(0) => return UdpEnd::Closed,
                Ok(n) => {
                    de.push(&rbuf[..n]);
                    loop {
                        match de.next_frame() {
                            Ok(Some(f)) => {
                                if target.send(f).await.is_ok() {
                                    stats.datagrams_up.fetch_add(1, Relaxed);
                                    stats.bytes_up.fetch_add(f.len() as u64, Relaxed);
                                } else {
                                    stats.drop_one(Dropped::SendFailed);
                                }
                                activity.moved();
                            }
                            Ok(None) => break,
                            Err(_) => {
                                stats.bad_frames.fetch_add(1, Relaxed);
                                return UdpEnd::BadFrame;
                            }
                        }
                    }
                }
                Err(_) => return UdpEnd::Error,
            },
            w = out.write_to(&mut wr), if !out.is_empty() => if w.is_err() {
                return UdpEnd::Error;
            },
            r = target.readable(), if out.is_empty() => {
                if r.is_err() {
                    return UdpEnd::Error;
                }
                if gather(target, &mut out.buf, limits.max_datagram, stats) {
                    activity.moved();
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                if activity.quiet_for(Instant::now()) >= limits.idle {
                    stats.idle_closed.fetch_add(1, Relaxed);
                    return UdpEnd::Idle;
                }
            }
        }
    }
}

/// Reads the target's waiting datagrams into `out` as frames, up to a batch; answers
/// whether one came.
fn gather(target: &UdpSocket, out: &mut Vec<u8>, max: usize, stats: &UdpStats) -> bool {
    let mut any = false;
    while out.len() < BATCH {
        let start = out.len();
        // One byte more than the limit: a longer datagram shows as such. Reserved, not
        // zeroed: the datagram is received into the spare room.
        out.reserve(FRAME_HEADER + max + 1);
        out.extend_from_slice(&[0; FRAME_HEADER]);
        match target.try_recv_buf(out) {
            Ok(n) if n <= max => {
                let len = u16::try_from(n).expect("at most MAX_DATAGRAM");
                out[start..start + FRAME_HEADER].copy_from_slice(&len.to_be_bytes());
                stats.datagrams_down.fetch_add(1, Relaxed);
                stats.bytes_down.fetch_add(n as u64, Relaxed);
                any = true;
            }
            Ok(_) => {
                out.truncate(start);
                stats.drop_one(Dropped::TooLong);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                out.truncate(start);
                break;
            }
            Err(_) => {
                // An ICMP error for an earlier datagram (nothing listens there).
                out.truncate(start);
                stats.drop_one(Dropped::SendFailed);
            }
        }
    }
    any
}
