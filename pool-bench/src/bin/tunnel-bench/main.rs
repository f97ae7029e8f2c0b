//! `tunnel-bench`: the tunnel's own figures, each beside a baseline measured in the same
//! run, in the `pool-bench` JSON format.
//!
//! ```text
//! cargo build --release -p pool-tunnel --bin tunnel
//! cargo build --release -p pool-bench --bin tunnel-bench
//! target/release/tunnel-bench [--quick] [--mode 0|1] [--delay-ms 25] [--json FILE]
//!                                      [--peer-rathole PATH] [--sessions-only | --download-only | --udp-only | --msgs-only | --nginx-only]
//!                                      [--quic-only [--quic-vs PATH]]
//! ```
//!
//! It starts the two `tunnel` processes (`$TUNNEL_BIN`, else
//! `$CARGO_TARGET_DIR/release/tunnel`, else `target/release/tunnel`) and a service of its
//! own, all on loopback, then measures:
//!
//! - `tunnel_ttfb_ms_p50`, `tunnel_ttfb_ms_p99`: from a user's first `send` at the public
//!   port until that byte reaches the service, with `FaultProxy` adding the delay each way
//!   between the client process and the server process (pool and control). Baseline:
//!   the same byte sent straight to the service through the same kind of proxy, which is
//!   the one-way delay plus a connect.
//! - `tunnel_mbps`: a download through the tunnel, no added delay. Baseline: the same
//!   download straight from the service. The two alternate five times (once with
//!   `--quick`) and each figure is the median: one loopback download's rate swings by
//!   2-3 x from run to run here, the baseline's as much as the tunnel's.
//! - `tunnel_sessions_per_s`: sessions (connect, 1 KiB each way, close), 64 at once, no
//!   added delay. Baseline: the same straight to the service.
//! - `tunnel_one_source_ratio`: the same sessions from one address through a server
//!   with the default public-port limits; baseline: the same with them lifted (a
//!   source alone gets the full rate: the limits bind only under contention). The
//!   ratio is the figure.
//! - `tunnel_rss_kib`: resident memory of both processes with 1,000 idle pooled
//!   connections, on a fresh pair. Baseline: the same pair with 16.
//!
//! - `chain_mbps`, `chain_sessions_per_s`: the same download and sessions through a
//!   **relay chain**: two processes in series (this binary, `--relay-child`), each
//!   accepting, connecting onwards and relaying with the tunnel's own `splice(2)` relay
//!   per session, with no pool, no proof and no id. That is the least any tunnel of two
//!   processes does (the user's connection, one between the processes, the one to the
//!   service), so it is the ceiling a two-process tunnel with this relay can reach here.
//!   `chain_copy_mbps`: the same chain relaying with `tokio::io::copy_bidirectional`.
//!   Baseline: straight to the service.
//! - `udp_rtt_ms_p50`, `udp_rtt_ms_p99`, `udp_loss`: a DNS-like UDP service behind a
//!   `--udp` pair with the delay between its processes, 1,000 requests a second from
//!   10 user addresses. Baseline: the same service straight through a UDP relay with
//!   the same delay each way (`udp.rs`).
//! - `tunnel_msgs_per_pooled_conn`, `tunnel_round_trips_per_pooled_conn`: messages on
//!   the wire (both directions) and round trips per pooled connection of the tunnel's
//!   pools in mode 1 with the key, until idle and ready at both ends (`msgs.rs`).
//!   Baseline: the same pools without the key (TLS 1.3 and the id).
//! - `relay_copy_mbps`, `relay_splice_mbps`: one download through one relay in this
//!   process, the userspace copy (the TLS path) and `splice(2)` (the plain path).
//!   Baseline: `tokio::io::copy_bidirectional`.
//!
//! - `tunnel_T_ttfb_ms_p50`, `tunnel_T_sessions_per_s`, `tunnel_T_mbps`,
//!   `tunnel_T_rss_per_stream_kib` for each `--transports` (default `quic,ws,h2`): the
//!   tunnel over that transport, beside the target or the TCP figures of the same run
//!   (`transports.rs`).
//! - `tunnel_ws_nginx_ttfb_ms_p50`, `tunnel_ws_nginx_sessions_per_s`,
//!   `tunnel_ws_nginx_mbps` (`--nginx-only` alone): the tunnel over WebSocket through
//!   nginx in front of the tunnel port, beside the same straight to it, mode 0
//!   (`nginx.rs`); none where nginx is missing.
//!
//! With `--peer-rathole PATH` (a `rathole` binary, e.g. from `cargo install rathole`),
//! the first three are measured for rathole under the same harness too, as
//! `rathole_*`, and its messages per data channel (plain and Noise) beside ours,
//! `rathole_msgs_per_data_channel` and `rathole_noise_msgs_per_data_channel`
//! (`peer_msgs.rs`; with `--msgs-only` too). CI runs `--quick` without it.
mod measure;
mod msgs;
mod nginx;
mod peer;
mod peer_msgs;
mod procs;
mod quic;
mod relay;
mod transports;
mod udp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pool_bench::report::{Figure, Report};
use pool_sim::stats::{median, quantile};
use pool_testkit::proxy::{Fault, FaultProxy, Script};

use measure::{alternated, download_figure, ms, service, sessions, ttfb};
use peer::rathole;
use procs::{rss_kib, until_descriptors, Pair};
use relay::{chain_figures, relay_child, relay_mbps, ChainRun, Relay};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The tunnel's own figures, each beside a baseline measured in the same run.
#[derive(clap::Parser)]
#[command(name = "tunnel-bench")]
struct Args {
    /// Smaller runs (CI's smoke run): fewer sessions, a 16 MB download, one round.
    #[arg(long)]
    quick: bool,
    /// The tunnel's TLS mode.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    mode: u8,
    /// Delay added each way between the two tunnel processes for the first-byte figures.
    #[arg(long, default_value_t = 25)]
    delay_ms: u64,
    /// Writes the figures as pool-bench JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Measures rathole (the binary at PATH) under the same harness too.
    #[arg(long, value_name = "PATH")]
    peer_rathole: Option<PathBuf>,
    /// The sessions figures alone (for iterating on the per-session path).
    #[arg(long, conflicts_with = "download_only")]
    sessions_only: bool,
    /// The download figures alone (for iterating on the relay path).
    #[arg(long, conflicts_with = "udp_only")]
    download_only: bool,
    /// The UDP figures alone.
    #[arg(long, conflicts_with = "sessions_only")]
    udp_only: bool,
    /// The messages-per-pooled-connection figures alone.
    #[arg(long, conflicts_with_all = ["sessions_only", "download_only", "udp_only"])]
    msgs_only: bool,
    /// The QUIC tunnel's download and sessions alone, alternated with their baselines
    /// (for iterating on the QUIC path; `quic.rs`).
    #[arg(long, conflicts_with_all = ["sessions_only", "download_only", "udp_only", "msgs_only"])]
    quic_only: bool,
    /// With `--quic-only`: another `tunnel` binary whose QUIC tunnel is measured in the
    /// same rounds (an A/B against this build).
    #[arg(long, value_name = "PATH", requires = "quic_only")]
    quic_vs: Option<PathBuf>,
    /// The WebSocket-through-nginx figures alone.
    #[arg(long, conflicts_with_all = ["sessions_only", "download_only", "udp_only", "msgs_only", "quic_only"])]
    nginx_only: bool,
    /// The transports other than TCP to measure the tunnel over (comma separated; empty:
    /// none).
    #[arg(long, default_value = "quic,ws,h2", value_delimiter = ',')]
    transports: Vec<String>,
    /// Runs as one link of the relay chain: `LISTEN UPSTREAM [copy]` (the bench starts
    /// itself so).
    #[arg(long, num_args = 2..=3, value_names = ["LISTEN", "UPSTREAM", "copy"], hide = true)]
    relay_child: Option<Vec<String>>,
}

#[tokio::main]
async fn main() -> Res<()> {
    let args = <Args as clap::Parser>::parse();
    if let Some(link) = &args.relay_child {
        let copy = link.get(2).map(String::as_str) == Some("copy");
        return relay_child(&link[0], &link[1], copy).await;
    }
    let Args {
        quick,
        mode,
        delay_ms,
        json,
        peer_rathole: peer,
        sessions_only,
        download_only,
        udp_only,
        msgs_only,
        quic_only,
        quic_vs,
        nginx_only,
        transports: which,
        ..
    } = args;
    let which: Vec<String> = which.into_iter().filter(|t| !t.is_empty()).collect();
    if let Some(t) = which
        .iter()
        .find(|t| !["quic", "ws", "h2"].contains(&t.as_str()))
    {
        return Err(format!("--transports: `{t}` is not quic, ws or h2").into());
    }
    let delay = Duration::from_millis(delay_ms);
    let (n_ttfb, dl_bytes, secs) = if quick {
        (20, 16_000_000, 1.0)
    } else {
        (200, 256_000_000, 4.0)
    };
    let dir = std::env::temp_dir().join(format!("tunnel-bench-{}", std::process::id()));
    let (target, arrivals) = service().await?;
    let mut figures = Vec::new();
    let wan = || Script::always(Fault::Latency(delay));
    if msgs_only {
        let mut figures = msgs::figures().await?;
        if let Some(path) = &peer {
            figures.extend(rathole_msgs(path, &dir, &figures).await?);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return publish(figures, json, quick);
    }
    if quic_only {
        let vs = quic_vs.as_deref();
        let at = dir.join("quic");
        figures.extend(quic::figures(&at, target, mode, quick, dl_bytes, secs, vs).await?);
        let _ = std::fs::remove_dir_all(&dir);
        return publish(figures, json, quick);
    }
    if nginx_only {
        let at = (target, &arrivals);
        figures.extend(nginx::figures(&dir.join("nginx"), at, delay, quick, dl_bytes).await?);
        let _ = std::fs::remove_dir_all(&dir);
        return publish(figures, json, quick);
    }
    if udp_only {
        figures.extend(udp::figures(&dir.join("udp"), mode, delay, quick).await?);
        let _ = std::fs::remove_dir_all(&dir);
        return publish(figures, json, quick);
    }
    if download_only {
        // For iterating on (and profiling) the relay path: the download figure alone.
        let pair = Pair::start(&dir.join("download"), mode, true).await?;
        let client = pair.client(target, (pair.tunnel, pair.control), 16).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        figures.push(download_figure(target, pair.public, dl_bytes, quick, mode).await);
        client.kill().await;
        pair.server.kill().await;
        figures.extend(chain_figures(target, ChainRun::Download, dl_bytes, quick, secs).await?);
        let _ = std::fs::remove_dir_all(&dir);
        return publish(figures, json, quick);
    }
    if sessions_only {
        // For iterating on (and profiling) the per-session path: the sessions figure
        // and its baseline, nothing else.
        let base_sps = sessions(target, 64, secs).await;
        let pair = Pair::start(&dir.join("sessions"), mode, true).await?;
        let client = pair.client(target, (pair.tunnel, pair.control), 16).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sps = sessions(pair.public, 64, secs).await;
        figures.push(
            Figure::vs("tunnel_sessions_per_s", sps, "1/s", base_sps).note(format!(
                "mode {mode}, 64 at once, 1 KiB each way; baseline: straight to the service"
            )),
        );
        client.kill().await;
        pair.server.kill().await;
        figures.push(one_source_ratio(&dir, target, mode, quick, secs).await?);
        figures.extend(chain_figures(target, ChainRun::Sessions, dl_bytes, quick, secs).await?);
        let _ = std::fs::remove_dir_all(&dir);
        return publish(figures, json, quick);
    }

    // Baselines: straight to the service (through a proxy with the delay for ttfb).
    let direct_wan = FaultProxy::start(target, wan()).await?;
    let base_ttfb = ttfb(direct_wan.addr(), &arrivals, n_ttfb, 1_000_000).await;
    let base_sps = sessions(target, 64, secs).await;

    // The relay alone, in this process: each kind against the raw relay.
    let raw = relay_mbps(target, Relay::Raw, dl_bytes).await?;
    for (name, kind) in [
        ("relay_copy_mbps", Relay::Copy),
        ("relay_splice_mbps", Relay::Splice),
    ] {
        let v = relay_mbps(target, kind, dl_bytes).await?;
        figures.push(Figure::vs(name, v, "MB/s", raw).note(
            "one download through one in-process relay; baseline: tokio::io::copy_bidirectional",
        ));
    }

    // The tunnel, with the delay between its processes.
    let pair = Pair::start(&dir.join("tunnel"), mode, true).await?;
    let (pool_wan, control_wan) = (
        FaultProxy::start(pair.tunnel, wan()).await?,
        FaultProxy::start(pair.control, wan()).await?,
    );
    let client = pair
        .client(target, (pool_wan.addr(), control_wan.addr()), 16)
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = ttfb(pair.public, &arrivals, n_ttfb, 0).await;
    client.kill().await;
    let (b50, b99) = (
        ms(quantile(&base_ttfb, 0.5)),
        ms(quantile(&base_ttfb, 0.99)),
    );
    let note = format!("mode {mode}, {delay_ms} ms each way, {} of {n_ttfb} sessions; baseline: straight through the same delay", t.len());
    figures.push(
        Figure::vs("tunnel_ttfb_ms_p50", ms(quantile(&t, 0.5)), "ms", b50).note(note.clone()),
    );
    figures.push(Figure::vs("tunnel_ttfb_ms_p99", ms(quantile(&t, 0.99)), "ms", b99).note(note));

    // No added delay: throughput and sessions.
    let client = pair.client(target, (pair.tunnel, pair.control), 16).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    figures.push(download_figure(target, pair.public, dl_bytes, quick, mode).await);
    let sps = sessions(pair.public, 64, secs).await;
    figures.push(
        Figure::vs("tunnel_sessions_per_s", sps, "1/s", base_sps).note(format!(
            "mode {mode}, 64 at once, 1 KiB each way; baseline: straight to the service"
        )),
    );
    client.kill().await;
    pair.server.kill().await;
    figures.push(one_source_ratio(&dir, target, mode, quick, secs).await?);
    figures.extend(chain_figures(target, ChainRun::Both, dl_bytes, quick, secs).await?);
    figures.extend(udp::figures(&dir.join("udp"), mode, delay, quick).await?);
    figures.extend(msgs::figures().await?);

    // Memory, on a fresh pair: 16 idle pooled connections, then 1,000.
    let pair = Pair::start(&dir.join("memory"), mode, true).await?;
    let client = pair.client(target, (pair.tunnel, pair.control), 16).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss16 = rss_kib(pair.server.pid()) + rss_kib(client.pid());
    client.kill().await;
    let client = pair
        .client(target, (pair.tunnel, pair.control), 1000)
        .await?;
    let filled = until_descriptors(client.pid(), 1000, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1000 = rss_kib(pair.server.pid()) + rss_kib(client.pid());
    figures.push(Figure::vs("tunnel_rss_kib", rss1000, "KiB", rss16).note(format!(
        "mode {mode}, both processes, 1,000 idle pooled connections{}; baseline: 16 ({:.2} KiB per connection)",
        if filled { "" } else { " (NOT filled in 30 s)" },
        (rss1000 - rss16) / 984.0
    )));
    client.kill().await;
    pair.server.kill().await;

    let value = |name: &str| {
        figures
            .iter()
            .find(|f| f.name == name)
            .map_or(0.0, |f| f.value)
    };
    let base = transports::Baselines {
        chain_sps: value("chain_sessions_per_s"),
        tcp_mbps: value("tunnel_mbps"),
        tcp_rss_per_conn: filled.then_some((rss1000 - rss16) / 984.0),
    };
    let more = transports::figures(
        &which,
        &dir.join("transports"),
        (target, &arrivals),
        mode,
        delay,
        quick,
        dl_bytes,
        &base,
    )
    .await?;
    figures.extend(more);
    let at = (target, &arrivals);
    figures.extend(nginx::figures(&dir.join("nginx"), at, delay, quick, dl_bytes).await?);

    if let Some(path) = peer {
        let more = rathole_msgs(&path, &dir, &figures).await?;
        figures.extend(more);
        let (public, procs, _wan) =
            rathole(&path, &dir.join("rathole"), target, delay, false).await?;
        let t = ttfb(public, &arrivals, n_ttfb, 2_000_000).await;
        figures.push(
            Figure::vs("rathole_ttfb_ms_p50", ms(quantile(&t, 0.5)), "ms", b50)
                .note("rathole, plain TCP, same delay"),
        );
        figures.push(
            Figure::vs("rathole_ttfb_ms_p99", ms(quantile(&t, 0.99)), "ms", b99)
                .note("rathole, plain TCP, same delay"),
        );
        for p in procs {
            p.kill().await;
        }
        // Throughput and sessions with no delay: its plain TCP transport, and in mode 1
        // (encrypted) its own encrypted transport, Noise, too.
        let transports = [
            (false, "rathole", "plain TCP"),
            (true, "rathole_noise", "Noise transport"),
        ];
        for (noise, name, what) in transports.into_iter().filter(|t| !t.0 || mode == 1) {
            let dir = dir.join(format!("{name}-0"));
            let (public, procs, _wan) = rathole(&path, &dir, target, Duration::ZERO, noise).await?;
            let note = format!("rathole, {what}");
            let (rounds, mbps, direct) = alternated(target, &[public], dl_bytes, quick).await;
            figures.push(
                Figure::vs(&format!("{name}_mbps"), mbps[0], "MB/s", direct).note(format!(
                    "{note}; median of {rounds} alternated with the baseline, as ours"
                )),
            );
            let sps = sessions(public, 64, secs).await;
            figures.push(
                Figure::vs(&format!("{name}_sessions_per_s"), sps, "1/s", base_sps).note(note),
            );
            for p in procs {
                p.kill().await;
            }
        }
    }

    let _ = std::fs::remove_dir_all(&dir);
    publish(figures, json, quick)
}

/// `tunnel_one_source_ratio`: sessions a second from one address (64 at once, 1 KiB
/// each way) through a server with the default public-port limits, against the same
/// through a server with them lifted; alternated (twice each, once with `--quick`),
/// medians. A source alone must get the full rate: the limits bind only under
/// contention.
async fn one_source_ratio(
    dir: &Path,
    target: SocketAddr,
    mode: u8,
    quick: bool,
    secs: f64,
) -> Res<Figure> {
    let rounds = if quick { 1 } else { 2 };
    let (mut defaults, mut lifted) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for lift in [false, true] {
            let pair =
                Pair::start(&dir.join(format!("one-source-{round}-{lift}")), mode, lift).await?;
            let client = pair.client(target, (pair.tunnel, pair.control), 16).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let sps = sessions(pair.public, 64, secs).await;
            if lift { &mut lifted } else { &mut defaults }.push(sps);
            client.kill().await;
            pair.server.kill().await;
        }
    }
    let (d, l) = (
        median(&defaults).unwrap_or(0.0),
        median(&lifted).unwrap_or(0.0),
    );
    Ok(
        Figure::vs("tunnel_one_source_ratio", d, "1/s", l).note(format!(
            "mode {mode}, one address, 64 at once, 1 KiB each way, default limits; baseline: \
         the same with the per-source limits and the cap lifted; median of {rounds} \
         alternated; the ratio is the figure (target >= 0.9)"
        )),
    )
}

/// rathole's messages per data channel (`peer_msgs.rs`), beside ours from `figures`.
async fn rathole_msgs(path: &Path, dir: &Path, figures: &[Figure]) -> Res<Vec<Figure>> {
    let ours = figures
        .iter()
        .find(|f| f.name == "tunnel_msgs_per_pooled_conn")
        .map_or(0.0, |f| f.value);
    peer_msgs::figures(path, &dir.join("rathole-msgs"), ours).await
}

/// Prints the figures, and writes them as pool-bench JSON to `json` if given.
fn publish(figures: Vec<Figure>, json: Option<PathBuf>, quick: bool) -> Res<()> {
    let machine = pool_bench::report::machine(quick);
    let report = Report { machine, figures };
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report.json())?)?;
    }
    Ok(())
}
