//! `tunnel_msgs_per_pooled_conn`, `tunnel_round_trips_per_pooled_conn`: what one pooled
//! connection of the tunnel's pools costs on the wire until it is idle and ready at
//! both ends, counted by a proxy between the pools
//! ([`pool_testkit::count_proxy::CountProxy`]): messages (chunks the proxy read, both
//! directions: what a link that charges per message charges) and the round trips the
//! client waited for (the TCP connect aside).
//!
//! Measured on the tunnel's own pools (pool-tokio, TLS mode 1, a tunnel key), in this
//! process, filled to [`N`]. Baseline: the same pools without the key, a plain TLS 1.3
//! connection and the 8-byte id (what a Go peer's pool costs).

use std::time::Duration;

use pool_bench::report::Figure;
use pool_testkit::count_proxy::{CountProxy, Tally};
use pool_tokio::{ClientConfig, ClientPool, ClientTls, ServeTls, ServerPool, TlsMode, TunnelKey};

use crate::Res;

/// Connections filled per side.
const N: usize = 64;

/// Both figures.
pub(crate) async fn figures() -> Res<Vec<Figure>> {
    let key = TunnelKey::generate()?;
    let keyed = fill(Some(&key)).await?;
    let plain = fill(None).await?;
    let per = |t: &Tally, v: u64| v as f64 / t.connections.max(1) as f64;
    let note = format!(
        "the tunnel's pools, mode 1 with the key, {N} connections, both directions, {:.1} \
         flights ({:.0} bytes) each; baseline: the same without the key (TLS 1.3 and the \
         id), {:.1} flights ({:.0} bytes)",
        per(&keyed, keyed.flights),
        per(&keyed, keyed.bytes_to_client + keyed.bytes_to_server),
        per(&plain, plain.flights),
        per(&plain, plain.bytes_to_client + plain.bytes_to_server),
    );
    Ok(vec![
        Figure::vs(
            "tunnel_msgs_per_pooled_conn",
            per(&keyed, keyed.chunks()),
            "msgs",
            per(&plain, plain.chunks()),
        )
        .note(note),
        Figure::vs(
            "tunnel_round_trips_per_pooled_conn",
            per(&keyed, keyed.answers),
            "RTT",
            per(&plain, plain.answers),
        )
        .note("the same connections: round trips before ready, the TCP connect aside"),
    ])
}

/// Fills a pool pair through the counting proxy; the tallies once both hold [`N`].
async fn fill(key: Option<&TunnelKey>) -> Res<Tally> {
    let mut server = ServerPool::builder()
        .bind("127.0.0.1:0".parse::<std::net::SocketAddr>()?)
        .tls(ServeTls::self_signed());
    if let Some(k) = key {
        server = server.tunnel_key(k.clone());
    }
    let server = server.build()?;
    let proxy = CountProxy::start(server.local_addr()).await?;
    let mut client = ClientPool::builder()
        .address(proxy.addr())
        .config(ClientConfig::builder().capacity(N, N))
        .tls(ClientTls::from(TlsMode::SelfSigned));
    if let Some(k) = key {
        client = client.tunnel_key(k.clone());
    }
    let client = client.build()?;
    let wait = Duration::from_secs(10);
    let filled = server.wait_idle(N, wait).await && client.wait_idle(N, wait).await;
    let tally = proxy.total();
    client.close().await;
    server.close().await;
    proxy.close().await;
    if !filled {
        return Err(format!("the pools did not fill to {N} in {wait:?}").into());
    }
    Ok(tally)
}
