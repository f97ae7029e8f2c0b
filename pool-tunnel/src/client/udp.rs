//! A UDP association on the client side: the receipt, a socket connected to the
//! target, and [`crate::udp::relay_target`].

use std::sync::atomic::Ordering::Relaxed;

use pool_tokio::PoolConn;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use tracing::{debug, warn};

use super::Shared;
use crate::protocol::{KIND_TCP, KIND_UDP, REACHED, RECEIVED, TARGET_FAILED};
use crate::relay::graceful;
use crate::udp::{connect_target, relay_target, UdpEnd, UdpLimits};

/// One association the server started: [`RECEIVED`] first (from then on only this
/// side may deliver its datagrams), then a UDP socket connected to the target and
/// [`REACHED`] (or [`TARGET_FAILED`] when the target's address does not resolve or
/// take a connect within the io deadline), then the relay until the server ends the
/// association or it is idle.
pub(super) async fn udp_session(s: &Shared, mut conn: PoolConn, limits: &UdpLimits) -> bool {
    let id = conn.id();
    let receipt = timeout(s.t.io, async {
        conn.write_all(&[RECEIVED]).await?;
        conn.flush().await
    });
    if !matches!(receipt.await, Ok(Ok(()))) {
        debug!("association {id}: the receipt could not be written");
        return false;
    }
    let target = match timeout(s.t.io, connect_target(&s.target)).await {
        Ok(Ok(t)) => t,
        why => {
            bump_target_failed(s);
            debug!("association {id}: target {} unusable: {why:?}", s.target);
            answer_failed(s, conn).await;
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
    s.udp_stats.started();
    let end = relay_target(conn, &target, limits, &s.udp_stats).await;
    s.udp_stats.ended();
    matches!(end, UdpEnd::Closed | UdpEnd::Idle)
}

/// A session of a kind this side does not serve (the server runs `--udp` and this
/// client not, or the other way round, or a byte that names no kind): the server is
/// told the target failed, so that it resets the user and replays nothing. Logged
/// for the 1st, 2nd, 4th, 8th... such session.
pub(super) async fn refuse_kind(s: &Shared, mut conn: PoolConn, kind: u8) -> bool {
    let n = s.udp_stats.kind_refused.fetch_add(1, Relaxed) + 1;
    if n.is_power_of_two() {
        let (theirs, ours) = match kind {
            KIND_UDP => ("UDP", "TCP"),
            KIND_TCP => ("TCP", "UDP"),
            _ => (
                "an unknown kind of",
                if s.udp.is_some() { "UDP" } else { "TCP" },
            ),
        };
        warn!(
            "the server started {theirs} sessions and this client serves {ours} (--udp on \
             both sides, or on neither): refused, {n} so far"
        );
    }
    let receipt = timeout(s.t.io, async {
        conn.write_all(&[RECEIVED]).await?;
        conn.flush().await
    });
    if matches!(receipt.await, Ok(Ok(()))) {
        answer_failed(s, conn).await;
    }
    false
}

fn bump_target_failed(s: &Shared) {
    crate::stats::bump(&s.stats.target_failed);
    s.udp_stats.target_failed.fetch_add(1, Relaxed);
}

/// Writes [`TARGET_FAILED`] and closes in order, so that the byte is not dropped with
/// the connection.
async fn answer_failed(s: &Shared, mut conn: PoolConn) {
    graceful(conn.stream().tcp());
    let _ = timeout(s.t.io, async {
        conn.write_all(&[TARGET_FAILED]).await?;
        conn.flush().await
    })
    .await;
}
