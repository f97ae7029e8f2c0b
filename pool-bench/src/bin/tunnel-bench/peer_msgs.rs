//! `rathole_msgs_per_data_channel`, `rathole_noise_msgs_per_data_channel`: what one
//! pooled data channel of rathole costs on the wire until it is ready at both ends,
//! counted by the same proxy as ours (`msgs.rs`,
//! [`pool_testkit::count_proxy::CountProxy`]) between rathole's client and server,
//! with `--peer-rathole PATH`: plain TCP, and its Noise transport.
//!
//! rathole's server asks its client for a few data channels as soon as the control
//! channel is up (8 per TCP service in rathole 0.5), and the client dials each: a TCP
//! connection, the Noise handshake with the Noise transport, then its hello. The
//! server answers nothing until a visitor comes, when it writes the start command on
//! one channel (as ours writes a start header on a pooled connection: neither is
//! counted). The control channel is the first connection that carries bytes (the
//! client dials it before any data channel) and is left out, as are connections that
//! carried none (dials made before rathole's server listened). The figures are the mean over
//! the data channels, once no byte has crossed for 300 ms. Baseline: ours,
//! `tunnel_msgs_per_pooled_conn` of the same run (the tunnel's pools in mode 1 with
//! the key).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pool_bench::report::Figure;
use pool_testkit::count_proxy::{CountProxy, Tally};

use crate::procs::free_addr;
use crate::Res;

/// Data channels to wait for (what rathole 0.5 asks for per TCP service).
const CHANNELS: usize = 8;

/// Both figures, beside `ours` (messages per pooled connection of our tunnel).
pub(crate) async fn figures(path: &Path, dir: &Path, ours: f64) -> Res<Vec<Figure>> {
    let mut out = Vec::new();
    for (noise, name, what) in [
        (false, "rathole_msgs_per_data_channel", "plain TCP"),
        (
            true,
            "rathole_noise_msgs_per_data_channel",
            "Noise transport",
        ),
    ] {
        let sub = dir.join(if noise { "msgs-noise" } else { "msgs-plain" });
        let per = channels(path, &sub, noise).await?;
        let n = per.len() as f64;
        let mean = |f: fn(&Tally) -> u64| per.iter().map(f).sum::<u64>() as f64 / n.max(1.0);
        out.push(
            Figure::vs(name, mean(Tally::chunks), "msgs", ours).note(format!(
                "rathole, {what}, {} data channels, both directions, {:.1} flights, {:.1} round \
                 trips, {:.0} bytes each; baseline: ours, tunnel_msgs_per_pooled_conn",
                per.len(),
                mean(|t| t.flights),
                mean(|t| t.answers),
                mean(|t| t.bytes_to_client + t.bytes_to_server),
            )),
        );
    }
    Ok(out)
}

/// Starts rathole through the counting proxy; each data channel's tally once the
/// channels are up and quiet.
async fn channels(path: &Path, dir: &Path, noise: bool) -> Res<Vec<Tally>> {
    let (control, public) = (free_addr(), free_addr());
    // Its service: nothing connects to it here, any address does.
    let target: SocketAddr = free_addr();
    let proxy = CountProxy::start(control).await?;
    let procs = crate::peer::start(path, dir, (control, proxy.addr()), public, target, noise)?;
    // A connection that carried no byte is a dial made before rathole's server
    // listened (the proxy accepted it and could not reach the server): not a channel.
    // The first that carried bytes is the control channel.
    let channels = |proxy: &CountProxy| -> Vec<Tally> {
        let per: Vec<Tally> = proxy
            .per_connection()
            .into_iter()
            .filter(|t| t.to_server > 0)
            .collect();
        per.get(1..).map(<[Tally]>::to_vec).unwrap_or_default()
    };
    // Bounded: 500 polls of 20 ms. Ready once the channels have sent their hellos,
    // and no byte has crossed for 300 ms.
    let (mut last, mut quiet) = (None, 0);
    let mut ready = false;
    for _ in 0..500 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let up = channels(&proxy).len() >= CHANNELS;
        let total = proxy.total();
        quiet = if last == Some(total) { quiet + 1 } else { 0 };
        last = Some(total);
        if up && quiet >= 15 {
            ready = true;
            break;
        }
    }
    let per = channels(&proxy);
    for p in procs {
        p.kill().await;
    }
    proxy.close().await;
    if !ready {
        return Err(format!(
            "rathole ({}) did not open {CHANNELS} data channels in 10 s: {per:?}",
            if noise { "noise" } else { "plain" }
        )
        .into());
    }
    Ok(per)
}
