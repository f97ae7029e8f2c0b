//! The UDP figures of `tunnel-bench`: a DNS-like service behind a `--udp` pair whose
//! processes are `delay` apart (the pool and control through `FaultProxy`), against the
//! same service reached straight through a UDP relay adding the same delay each way.
//!
//! - `udp_rtt_ms_p50`, `udp_rtt_ms_p99`: a request's round trip, paced at 1,000
//!   datagrams a second over 10 user addresses;
//! - `udp_loss`: the share of those requests not answered within a second of the last.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use pool_bench::report::Figure;
use pool_testkit::proxy::FaultProxy;
use pool_testkit::udp_load::{paced, service, PacedReport};
use tokio::net::UdpSocket;

use crate::procs::Pair;
use crate::Res;

/// Datagrams a second, and user addresses, of the paced load.
const RATE: u32 = 1000;
const USERS: usize = 10;

/// A UDP relay in front of `target` that holds each datagram `delay` in each direction
/// (one upstream socket per user address); its address. Runs until the bench ends.
pub(crate) async fn delaying_relay(target: SocketAddr, delay: Duration) -> Res<SocketAddr> {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let addr = front.local_addr()?;
    tokio::spawn(async move {
        let mut ups: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, user)) = front.recv_from(&mut buf).await {
            let up = match ups.get(&user) {
                Some(u) => u.clone(),
                None => {
                    let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                        continue;
                    };
                    if u.connect(target).await.is_err() {
                        continue;
                    }
                    let u = Arc::new(u);
                    ups.insert(user, u.clone());
                    let (back, from) = (front.clone(), u.clone());
                    tokio::spawn(async move {
                        let mut b = vec![0u8; 65_536];
                        while let Ok(n) = from.recv(&mut b).await {
                            let d = b[..n].to_vec();
                            let back = back.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = back.send_to(&d, user).await;
                            });
                        }
                    });
                    u
                }
            };
            let d = buf[..n].to_vec();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = up.send(&d).await;
            });
        }
    });
    Ok(addr)
}

/// The three UDP figures, from a `--udp` pair in `mode` started under `dir`.
pub(crate) async fn figures(
    dir: &Path,
    mode: u8,
    delay: Duration,
    quick: bool,
) -> Res<Vec<Figure>> {
    let total = if quick { 1000 } else { 5000 };
    let grace = Duration::from_secs(1);
    let svc = service("127.0.0.1:0".parse()?).await?;
    let direct = delaying_relay(svc.addr, delay).await?;
    let base = paced(direct, USERS, RATE, total, grace).await?;

    let pair = Pair::start_with(dir, mode, true, &["--udp"]).await?;
    let wan = || pool_testkit::proxy::Script::always(pool_testkit::proxy::Fault::Latency(delay));
    let (pool_wan, control_wan) = (
        FaultProxy::start(pair.tunnel, wan()).await?,
        FaultProxy::start(pair.control, wan()).await?,
    );
    let client = pair
        .client_with(
            svc.addr,
            (pool_wan.addr(), control_wan.addr()),
            16,
            &["--udp"],
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = paced(pair.public, USERS, RATE, total, grace).await?;
    client.kill().await;
    pair.server.kill().await;

    let ms = delay.as_millis();
    let note = |r: &PacedReport, b: &PacedReport| {
        format!(
            "mode {mode}, {ms} ms each way, {RATE} datagrams/s over {USERS} users: {} of {} \
             answered ({} wrong); baseline: straight through a UDP relay with the same delay, \
             {} of {} answered",
            r.answered, r.sent, r.wrong, b.answered, b.sent
        )
    };
    Ok(vec![
        Figure::vs("udp_rtt_ms_p50", t.rtt_ms(0.5), "ms", base.rtt_ms(0.5)).note(note(&t, &base)),
        Figure::vs("udp_rtt_ms_p99", t.rtt_ms(0.99), "ms", base.rtt_ms(0.99)).note(note(&t, &base)),
        Figure::vs("udp_loss", t.loss(), "", base.loss()).note(note(&t, &base)),
    ])
}
