//! A UDP association on the client side: the receipt, a socket connected to the
//! service's target, and [`crate::udp::relay_target`].

use std::sync::atomic::Ordering::Relaxed;

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tracing::{debug, warn};

use super::Shared;
use crate::config::{ClientService, ServiceProtocol};
use crate::protocol::{SessionStart, REACHED, RECEIVED, TARGET_FAILED};
use crate::stats::{bump, ServiceCounters};
use crate::transport::Pooled;
use crate::udp::{connect_target, relay_target, UdpEnd, UdpLimits, UdpStats};

/// One association the server started for `svc`: [`RECEIVED`] first (from then on
/// only this side may deliver its datagrams), then a UDP socket connected to the
/// target and [`REACHED`] (or [`TARGET_FAILED`] when the target's address does not
/// resolve or take a connect within the io deadline), then the relay until the server
/// ends the association or it is idle.
pub(super) async fn udp_session(
    s: &Shared,
    mut conn: Pooled,
    svc: &ClientService,
    udp: &UdpStats,
) -> bool {
    let id = conn.id();
    let limits = UdpLimits::for_client(svc);
    let receipt = timeout(s.t.io, async {
        conn.write_all(&[RECEIVED]).await?;
        conn.flush().await
    });
    if !matches!(receipt.await, Ok(Ok(()))) {
        debug!("association {id}: the receipt could not be written");
        return false;
    }
    let target = match timeout(s.t.io, connect_target(&svc.target)).await {
        Ok(Ok(t)) => t,
        why => {
            bump(&s.stats.target_failed);
            udp.target_failed.fetch_add(1, Relaxed);
            debug!("association {id}: target {} unusable: {why:?}", svc.target);
            // The server drops the association and retries nothing. An orderly close,
            // so that the byte is not dropped with the connection.
            conn.disarm();
            let _ = timeout(s.t.io, async {
                conn.write_all(&[TARGET_FAILED]).await?;
                conn.flush().await
            })
            .await;
            return false;
        }
    };
    let reached = timeout(s.t.io, async {
        conn.write_all(&[REACHED]).await?;
        conn.flush().await
    });
    if !matches!(reached.await, Ok(Ok(()))) {
        return false;
    }
    udp.started();
    let end = relay_target(conn, &target, &limits, udp).await;
    udp.ended();
    matches!(end, UdpEnd::Closed | UdpEnd::Idle)
}

/// Counts a session whose kind is not its service's here (`ours`), and says so for the
/// 1st, 2nd, 4th, 8th... such session; the caller answers
/// [`WRONG_KIND`](crate::protocol::WRONG_KIND).
pub(super) fn wrong_kind(
    s: &Shared,
    start: &SessionStart,
    ours: ServiceProtocol,
    counts: &ServiceCounters,
) {
    bump(&counts.sessions.wrong_kind);
    counts.udp.kind_refused.fetch_add(1, Relaxed);
    let n = s.stats.wrong_kind.fetch_add(1, Relaxed) + 1;
    if n.is_power_of_two() {
        warn!(
            "service {}: the server started a {} session and this client serves it as {} \
             (the service's protocol must be the same on both sides): refused, {n} so far",
            start.service,
            start.kind.name(),
            ours.name()
        );
    }
}
