//! A UDP service on the public address: [`crate::udp::serve`], each association's
//! stream a pooled connection started in band with [`KIND_UDP`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use pool_tokio::PoolConn;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::timeout;

use super::Shared;
use crate::protocol::{KIND_UDP, REACHED, RECEIVED, TARGET_FAILED};
use crate::relay::{graceful, reset};
use crate::udp::UdpLimits;

/// Pooled connections one association's start tries at most: each was found closed
/// before the client's receipt.
const ATTEMPTS: usize = 16;

/// The public address's socket: a TCP listener, or a UDP socket.
pub(super) enum Public {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Public {
    pub(super) async fn bind(addr: SocketAddr, udp: bool) -> std::io::Result<Self> {
        Ok(if udp {
            Self::Udp(UdpSocket::bind(addr).await?)
        } else {
            Self::Tcp(TcpListener::bind(addr).await?)
        })
    }

    pub(super) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr(),
            Self::Udp(s) => s.local_addr(),
        }
    }
}

/// Serves the UDP service until the socket fails.
pub(super) async fn udp_loop(shared: Arc<Shared>, socket: UdpSocket, limits: UdpLimits) {
    let stats = shared.udp.clone();
    let open = move |first: Vec<u8>| open(shared.clone(), first);
    crate::udp::serve(socket, open, limits, stats).await;
}

/// Starts a pooled connection for a new association: the pool's start header,
/// [`KIND_UDP`] and the first datagram's frame in one write; then the client's
/// [`RECEIVED`] within `ack` (a connection that closes without it was never read: the
/// start goes out again on the next, as a TCP session's does), then [`REACHED`] within
/// the outcome's deadline. `None` when any of it fails (counted in `open_failed` by the
/// caller; `target_failed` too when the client answered [`TARGET_FAILED`]).
async fn open(shared: Arc<Shared>, first: Vec<u8>) -> Option<PoolConn> {
    let mut start = Vec::with_capacity(1 + first.len());
    start.push(KIND_UDP);
    start.extend_from_slice(&first);
    drop(first);
    let mut control = shared.control.subscribe();
    for tries in 0..ATTEMPTS {
        let ctl = match timeout(shared.t.control_wait, control.wait_for(Option::is_some)).await {
            Ok(Ok(c)) => c.clone(),
            _ => return None,
        };
        let mut ctl = ctl?;
        let (_, mut conn) = shared.pool.start_with(&start, shared.t.get).await.ok()?;
        reset(conn.stream().tcp());
        if tries > 0 {
            shared.udp.replayed.fetch_add(1, Relaxed);
        }
        let receipt = tokio::select! {
            r = conn.read_u8() => r,
            () = tokio::time::sleep(shared.t.ack) => return None,
            _ = ctl.gone.changed() => return None,
        };
        match receipt {
            Ok(RECEIVED) => {}
            Ok(_) => return None,
            Err(_) => continue, // closed before the receipt: never read
        }
        return match timeout(shared.t.outcome(), conn.read_u8()).await {
            Ok(Ok(REACHED)) => {
                // An association has no end a reset must tell apart: it closes in order.
                graceful(conn.stream().tcp());
                Some(conn)
            }
            Ok(Ok(TARGET_FAILED)) => {
                shared.udp.target_failed.fetch_add(1, Relaxed);
                None
            }
            _ => None,
        };
    }
    None
}
