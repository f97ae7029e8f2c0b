//! A UDP service on its public socket: [`crate::udp::serve`], each association's
//! stream a pooled connection started in band with a [`SessionStart`] of kind UDP.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::transport::Pooled;
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::timeout;

use super::Shared;
use crate::config::{ServerService, ServiceProtocol};
use crate::protocol::{SessionStart, NO_SERVICE, REACHED, RECEIVED, TARGET_FAILED, WRONG_KIND};
use crate::stats::bump;
use crate::udp::{UdpLimits, UdpStats};

/// Pooled connections one association's start tries at most: each was found closed
/// before the client's receipt.
const ATTEMPTS: usize = 16;

/// Serves the UDP service `svc` on `socket` until `stop` turns true; its associations
/// end with it.
pub(super) async fn udp_loop(
    shared: Arc<Shared>,
    svc: ServerService,
    socket: Arc<UdpSocket>,
    stop: watch::Receiver<bool>,
) {
    let stats = shared.per_service.service(&svc.name).udp.clone();
    let limits = UdpLimits::for_server(&svc);
    let public = socket.local_addr().unwrap_or(svc.public);
    let name: Arc<str> = svc.name.into();
    let counts = stats.clone();
    let open = move |user: SocketAddr, first: Vec<u8>| {
        let start = SessionStart {
            kind: ServiceProtocol::Udp,
            service: name.to_string(),
            user,
            public,
        };
        open(shared.clone(), counts.clone(), start, first)
    };
    crate::udp::serve(socket, open, limits, stats, stop).await;
}

/// Starts a pooled connection for a new association: the pool's start header, the
/// [`SessionStart`] and the first datagram's frame in one write; then the client's
/// [`RECEIVED`] within `ack` (a connection that closes without it was never read: the
/// start goes out again on the next, as a TCP session's does), then [`REACHED`] within
/// the outcome's deadline. `None` when any of it fails (counted in `open_failed` by the
/// caller; also in `target_failed`, `no_service` or `wrong_kind` when the client
/// answered so).
async fn open(
    shared: Arc<Shared>,
    udp: Arc<UdpStats>,
    start: SessionStart,
    first: Vec<u8>,
) -> Option<Pooled> {
    let mut sent = start.encode();
    sent.extend_from_slice(&first);
    drop(first);
    let mut control = shared.control.subscribe();
    for tries in 0..ATTEMPTS {
        let ctl = match timeout(shared.t.control_wait, control.wait_for(Option::is_some)).await {
            Ok(Ok(c)) => c.clone(),
            _ => return None,
        };
        let mut ctl = ctl?;
        let mut conn = shared.pool.start_with(&sent, shared.t.get).await?;
        if tries > 0 {
            udp.replayed.fetch_add(1, Relaxed);
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
                conn.disarm();
                Some(conn)
            }
            Ok(Ok(TARGET_FAILED)) => {
                bump(&shared.stats.target_failed);
                udp.target_failed.fetch_add(1, Relaxed);
                None
            }
            Ok(Ok(NO_SERVICE)) => {
                bump(&shared.stats.no_service);
                None
            }
            Ok(Ok(WRONG_KIND)) => {
                bump(&shared.stats.wrong_kind);
                udp.kind_refused.fetch_add(1, Relaxed);
                None
            }
            _ => None,
        };
    }
    None
}
