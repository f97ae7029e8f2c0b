//! The tunnel over each transport other than TCP (`--transport quic|ws|h2`), each
//! figure beside its baseline in the same run:
//!
//! - `tunnel_T_ttfb_ms_p50`: first byte with the delay each way between the processes
//!   (QUIC's datagrams through a delaying UDP relay, the others' connections through
//!   `FaultProxy`). Baseline: the target, 1.1 × one-way + 1.5 ms.
//! - `tunnel_T_sessions_per_s`: sessions (connect, 1 KiB each way, close), 64 at once,
//!   no added delay. Baseline: `chain_sessions_per_s` of the same run.
//! - `tunnel_T_mbps`: one download, no added delay. Baseline: the TCP tunnel's
//!   `tunnel_mbps` of the same run (its mode).
//! - `tunnel_T_rss_per_stream_kib` (not with `--quick`): both processes' resident
//!   memory with 1,000 idle pooled streams (a fresh client, after 5 s) less that with 16
//!   (a fresh client, after 2 s), per stream; the server process is the same. Baseline:
//!   the TCP tunnel's figure per connection of the same run.
//!

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pool_bench::report::Figure;
use pool_sim::stats::quantile;
use pool_testkit::proxy::{Fault, FaultProxy, Script};

use crate::measure::{alternated, ms, sessions, ttfb, Arrivals};
use crate::procs::{rss_kib, Pair};
use crate::Res;

/// What the TCP part of the run measured, for the baselines.
pub(crate) struct Baselines {
    /// `chain_sessions_per_s`.
    pub(crate) chain_sps: f64,
    /// `tunnel_mbps`.
    pub(crate) tcp_mbps: f64,
    /// The TCP tunnel's resident memory per idle pooled connection (KiB).
    pub(crate) tcp_rss_per_conn: Option<f64>,
}

/// The figures of each transport in `which`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn figures(
    which: &[String],
    dir: &Path,
    (target, arrivals): (SocketAddr, &Arrivals),
    mode: u8,
    delay: Duration,
    quick: bool,
    dl_bytes: u64,
    base: &Baselines,
) -> Res<Vec<Figure>> {
    let mut out = Vec::new();
    let secs = if quick { 0.5 } else { 4.0 };
    let (n_ttfb, settle) = if quick {
        (10, Duration::from_millis(300))
    } else {
        (200, Duration::from_secs(1))
    };
    let goal = delay.as_secs_f64() * 1e3 * 1.1 + 1.5;
    for (i, t) in which.iter().enumerate() {
        let t = t.as_str();
        let extra = ["--transport", t];
        let pair = Pair::start_with(&dir.join(t), mode, true, &extra).await?;

        // First byte, with the delay between the processes.
        let control_wan =
            FaultProxy::start(pair.control, Script::always(Fault::Latency(delay))).await?;
        let (pool_via, _tcp_wan) = if t == "quic" {
            (crate::udp::delaying_relay(pair.tunnel, delay).await?, None)
        } else {
            let p = FaultProxy::start(pair.tunnel, Script::always(Fault::Latency(delay))).await?;
            (p.addr(), Some(p))
        };
        let client = pair
            .client_with(target, (pool_via, control_wan.addr()), 16, &extra)
            .await?;
        tokio::time::sleep(settle).await;
        let tag = 3_000_000 + 1_000_000 * i as u64;
        let got = ttfb(pair.public, arrivals, n_ttfb, tag).await;
        client.kill().await;
        out.push(
            Figure::vs(
                &format!("tunnel_{t}_ttfb_ms_p50"),
                ms(quantile(&got, 0.5)),
                "ms",
                goal,
            )
            .note(format!(
                "--transport {t}, mode {mode}, {} ms each way, {} of {n_ttfb} sessions; \
                 baseline: the target, 1.1 x one-way + 1.5 ms",
                delay.as_millis(),
                got.len()
            )),
        );

        // No added delay: sessions and a download.
        let client = pair
            .client_with(target, (pair.tunnel, pair.control), 16, &extra)
            .await?;
        tokio::time::sleep(settle).await;
        let sps = sessions(pair.public, 64, secs).await;
        out.push(
            Figure::vs(
                &format!("tunnel_{t}_sessions_per_s"),
                sps,
                "1/s",
                base.chain_sps,
            )
            .note(format!(
                "--transport {t}, mode {mode}, 64 at once, 1 KiB each way; baseline: \
                 chain_sessions_per_s of this run"
            )),
        );
        let (_, mbps, _) = alternated(target, &[pair.public], dl_bytes, true).await;
        out.push(
            Figure::vs(&format!("tunnel_{t}_mbps"), mbps[0], "MB/s", base.tcp_mbps).note(format!(
                "--transport {t}, mode {mode}, one download of {} MB; baseline: \
                     tunnel_mbps (TCP, mode {mode}) of this run",
                dl_bytes / 1_000_000
            )),
        );
        client.kill().await;

        // Memory per idle pooled stream: a fresh client with 16, then one with 1,000.
        if !quick {
            let client = pair
                .client_with(target, (pair.tunnel, pair.control), 16, &extra)
                .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss16 = rss_kib(pair.server.pid()) + rss_kib(client.pid());
            client.kill().await;
            let client = pair
                .client_with(target, (pair.tunnel, pair.control), 1000, &extra)
                .await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let rss1000 = rss_kib(pair.server.pid()) + rss_kib(client.pid());
            let per = (rss1000 - rss16) / 984.0;
            let mut f = Figure::vs(
                &format!("tunnel_{t}_rss_per_stream_kib"),
                per,
                "KiB",
                base.tcp_rss_per_conn.unwrap_or(0.0),
            )
            .note(format!(
                "--transport {t}, mode {mode}, both processes, (RSS with 1,000 idle pooled \
                 streams after 5 s - with 16 after 2 s, fresh clients) / 984; baseline: the \
                 TCP tunnel's per connection of this run"
            ));
            if base.tcp_rss_per_conn.is_none() {
                f.baseline = None;
                f.ratio = None;
            }
            out.push(f);
            client.kill().await;
        }
        pair.server.kill().await;
    }
    Ok(out)
}
