//! The tunnel over WebSocket through nginx (`pool_testkit::nginx`, a child process of
//! the bench proxying the upgrade to the server's tunnel port), each figure beside the
//! same figure straight to the tunnel port, measured in the same run on the same pair:
//!
//! - `tunnel_ws_nginx_ttfb_ms_p50`: first byte with the delay each way between the
//!   client and nginx (nginx sits beside the server) and between the client and the
//!   server's control port. Baseline: the same straight to the tunnel port through the
//!   same delay.
//! - `tunnel_ws_nginx_sessions_per_s`: sessions (connect, 1 KiB each way, close), 64
//!   at once, no added delay. Baseline: the same straight to the tunnel port.
//! - `tunnel_ws_nginx_mbps`: one download, no added delay. Baseline: the same straight
//!   to the tunnel port.
//!
//! Sessions and downloads alternate between the two, one client at a time, three
//! rounds (one with `--quick`), medians. Always mode 0 (plain `ws://` and the insecure
//! word, whatever `--mode`): the one mode whose key proof crosses an HTTP proxy (a
//! TLS-terminating one breaks the proof's binding: `pool-tunnel/tests/nginx.rs`).
//! Where nginx is missing the bench says so and writes none of these.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pool_bench::report::Figure;
use pool_sim::stats::{median, quantile};
use pool_testkit::nginx::{self, Nginx};
use pool_testkit::proxy::{Fault, FaultProxy, Script};

use crate::measure::{download, ms, sessions, ttfb, Arrivals};
use crate::procs::Pair;
use crate::Res;

/// The first-byte tags of this part (no other part's overlap).
const TAG: u64 = 20_000_000;

/// The nginx figures, or none (and a line saying so) where nginx is missing.
pub(crate) async fn figures(
    dir: &Path,
    (target, arrivals): (SocketAddr, &Arrivals),
    delay: Duration,
    quick: bool,
    dl_bytes: u64,
) -> Res<Vec<Figure>> {
    let Some(bin) = nginx::binary() else {
        eprintln!("nginx not found: no tunnel_ws_nginx_* figures (apt-get install nginx)");
        return Ok(Vec::new());
    };
    let (n_ttfb, settle, secs, rounds) = if quick {
        (10, Duration::from_millis(300), 0.5, 1)
    } else {
        (200, Duration::from_secs(1), 4.0, 3)
    };
    let extra = ["--transport", "ws"];
    let pair = Pair::start_with(dir, 0, true, &extra).await?;
    let mut proxy = Nginx::new(bin, pair.tunnel);
    proxy.start().await;
    // [straight to the tunnel port, through nginx]
    let entries = [pair.tunnel, proxy.listen];

    // First byte, with the delay between the client and the server's side.
    let mut p50 = [0.0; 2];
    let mut got = [0; 2];
    for (i, entry) in entries.into_iter().enumerate() {
        let wan = || Script::always(Fault::Latency(delay));
        let (pool_wan, control_wan) = (
            FaultProxy::start(entry, wan()).await?,
            FaultProxy::start(pair.control, wan()).await?,
        );
        let client = pair
            .client_with(target, (pool_wan.addr(), control_wan.addr()), 16, &extra)
            .await?;
        tokio::time::sleep(settle).await;
        let t = ttfb(pair.public, arrivals, n_ttfb, TAG + 1_000_000 * i as u64).await;
        client.kill().await;
        p50[i] = ms(quantile(&t, 0.5));
        got[i] = t.len();
    }

    // No added delay: sessions and a download, alternated.
    let (mut sps, mut mbps) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for _ in 0..rounds {
        for (i, entry) in entries.into_iter().enumerate() {
            let client = pair
                .client_with(target, (entry, pair.control), 16, &extra)
                .await?;
            tokio::time::sleep(settle).await;
            sps[i].push(sessions(pair.public, 64, secs).await);
            mbps[i].push(download(pair.public, dl_bytes).await);
            client.kill().await;
        }
    }
    drop(proxy);
    pair.server.kill().await;

    let med = |v: &[f64]| median(v).unwrap_or(0.0);
    let what = "--transport ws, mode 0 (plain ws://), nginx 1 worker beside the server";
    Ok(vec![
        Figure::vs("tunnel_ws_nginx_ttfb_ms_p50", p50[1], "ms", p50[0]).note(format!(
            "{what}, {} ms each way, {} of {n_ttfb} sessions; baseline: the same straight to \
             the tunnel port ({} of {n_ttfb}); target 1.1 x one-way + 1.5 ms = {:.2}",
            delay.as_millis(),
            got[1],
            got[0],
            delay.as_secs_f64() * 1e3 * 1.1 + 1.5
        )),
        Figure::vs(
            "tunnel_ws_nginx_sessions_per_s",
            med(&sps[1]),
            "1/s",
            med(&sps[0]),
        )
        .note(format!(
            "{what}, 64 at once, 1 KiB each way, median of {rounds} alternated; baseline: \
             the same straight to the tunnel port"
        )),
        Figure::vs("tunnel_ws_nginx_mbps", med(&mbps[1]), "MB/s", med(&mbps[0])).note(format!(
            "{what}, a {} MB download, median of {rounds} alternated; baseline: the same \
             straight to the tunnel port",
            dl_bytes / 1_000_000
        )),
    ])
}
