//! `--quic-only`: the QUIC tunnel's download and sessions beside their baselines, each
//! pair alternated within one run (for iterating on the QUIC pool and relay path):
//!
//! - `tunnel_mbps` (TCP tunnel, the run's mode) against a download straight from the
//!   service, and `tunnel_quic_mbps` against `tunnel_mbps`: the three downloads
//!   alternate, five rounds (one with `--quick`), medians.
//! - `chain_sessions_per_s` against sessions straight to the service, and
//!   `tunnel_quic_sessions_per_s` against `chain_sessions_per_s`: 64 at once, 1 KiB
//!   each way, alternated, three rounds (one with `--quick`), medians.
//!
//! With `--quic-vs PATH` (another `tunnel` binary, e.g. a build of the commit before a
//! change) its QUIC tunnel is measured in the same rounds too, as `tunnel_quic_vs_*`,
//! each against this build's figure: an A/B taken side by side, not minutes apart.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pool_bench::report::Figure;
use pool_sim::stats::median;

use crate::measure::{alternated, sessions};
use crate::procs::{bin, Pair, Proc};
use crate::relay::relay_chain;
use crate::Res;

/// One tunnel pair with its client (16 pooled), idle and ready.
struct Running {
    pair: Pair,
    client: Proc,
}

impl Running {
    async fn start(program: &Path, dir: &Path, target: SocketAddr, mode: u8, t: &str) -> Res<Self> {
        let extra = ["--transport", t];
        let pair = Pair::start_program(program, dir, mode, true, &extra).await?;
        let client = pair
            .client_with(target, (pair.tunnel, pair.control), 16, &extra)
            .await?;
        Ok(Self { pair, client })
    }

    async fn stop(self) {
        self.client.kill().await;
        self.pair.server.kill().await;
    }
}

/// The figures of `--quic-only`.
pub(crate) async fn figures(
    dir: &Path,
    target: SocketAddr,
    mode: u8,
    quick: bool,
    dl_bytes: u64,
    secs: f64,
    vs: Option<&Path>,
) -> Res<Vec<Figure>> {
    let tcp = Running::start(&bin(), &dir.join("tcp"), target, mode, "tcp").await?;
    let quic = Running::start(&bin(), &dir.join("quic"), target, mode, "quic").await?;
    let other = match vs {
        Some(p) => Some(Running::start(p, &dir.join("quic-vs"), target, mode, "quic").await?),
        None => None,
    };
    let (chain, chain_procs) = relay_chain(target, false).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut entries = vec![tcp.pair.public, quic.pair.public];
    entries.extend(other.as_ref().map(|o| o.pair.public));
    let (rounds, mbps, direct) = alternated(target, &entries, dl_bytes, quick).await;

    let sps_rounds = if quick { 1 } else { 3 };
    let mut sps: Vec<Vec<f64>> = vec![Vec::new(); entries.len() + 1];
    let mut sps_entries = vec![target, chain, quic.pair.public];
    sps_entries.extend(other.as_ref().map(|o| o.pair.public));
    for _ in 0..sps_rounds {
        for (runs, e) in sps.iter_mut().zip(&sps_entries) {
            runs.push(sessions(*e, 64, secs).await);
        }
    }
    let sps: Vec<f64> = sps.iter().map(|r| median(r).unwrap_or(0.0)).collect();

    for r in [Some(tcp), Some(quic), other].into_iter().flatten() {
        r.stop().await;
    }
    for p in chain_procs {
        p.kill().await;
    }

    let dl = format!(
        "mode {mode}, a {} MB download, median of {rounds} alternated",
        dl_bytes / 1_000_000
    );
    let ss = format!("mode {mode}, 64 at once, 1 KiB each way, median of {sps_rounds} alternated");
    let mut out = vec![
        Figure::vs("tunnel_mbps", mbps[0], "MB/s", direct)
            .note(format!("{dl}; baseline: straight from the service")),
        Figure::vs("tunnel_quic_mbps", mbps[1], "MB/s", mbps[0]).note(format!(
            "--transport quic, {dl}; baseline: tunnel_mbps (TCP)"
        )),
        Figure::vs("chain_sessions_per_s", sps[1], "1/s", sps[0])
            .note(format!("{ss}; baseline: straight to the service")),
        Figure::vs("tunnel_quic_sessions_per_s", sps[2], "1/s", sps[1]).note(format!(
            "--transport quic, {ss}; baseline: chain_sessions_per_s"
        )),
    ];
    if let Some(p) = vs {
        let who = format!("--transport quic with {}", p.display());
        out.push(
            Figure::vs("tunnel_quic_vs_mbps", mbps[2], "MB/s", mbps[1])
                .note(format!("{who}, {dl}; baseline: tunnel_quic_mbps")),
        );
        out.push(
            Figure::vs("tunnel_quic_vs_sessions_per_s", sps[3], "1/s", sps[2])
                .note(format!("{who}, {ss}; baseline: tunnel_quic_sessions_per_s")),
        );
    }
    Ok(out)
}
