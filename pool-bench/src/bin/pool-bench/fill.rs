//! Scenarios 1 and 2: filling a pool, on loopback and over a 50 ms round trip.

use std::time::{Duration, Instant};

use pool_sim::stats::median;
use pool_testkit::proxy::{Fault, FaultProxy, Script};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::net::{
    build_server, fill_client, pool_fill, raw_dial, raw_fill, runtime, PoolSpec, Res, Tls, LOOPBACK,
};
use crate::report::Figure;
use crate::Sizes;

/// Scenario 1: connections per second until a pool of `n` is idle on both ends, against
/// the same handshakes written directly on tokio / tokio-rustls, 8 in flight each.
pub(crate) fn fill(sz: &Sizes, out: &mut Vec<Figure>) -> Res<()> {
    let rt = runtime();
    rt.block_on(async {
        let tls = Tls::new()?;
        let n = sz.fill_n;
        let spec = PoolSpec {
            capacity: n,
            server_max: n + n / 10,
            parallelism: 8,
            min_interval: None,
        };
        for (name, t, reps) in [
            ("fill_plain", None, sz.fill_reps_plain),
            ("fill_tls", Some(&tls), sz.fill_reps_tls),
        ] {
            let (mut pool, mut raw) = (Vec::new(), Vec::new());
            // Warm-up (first accept, first handshake, allocator growth), not counted.
            drop(raw_fill(n / 4, 8, t).await?);
            let (_, p) = pool_fill(
                PoolSpec {
                    capacity: n / 4,
                    ..spec
                },
                t,
            )
            .await?;
            p.close().await;
            // Interleaved so that background noise falls on both alike.
            for _ in 0..reps {
                let (d, pairs) = raw_fill(n, 8, t).await?;
                raw.push(n as f64 / d.as_secs_f64());
                drop(pairs);
                tokio::time::sleep(Duration::from_millis(50)).await;
                let (d, p) = pool_fill(spec, t).await?;
                pool.push(n as f64 / d.as_secs_f64());
                p.close().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let (p, r) = (median(&pool).unwrap_or(0.0), median(&raw).unwrap_or(0.0));
            eprintln!("  {name}: pool {pool:.0?} raw {raw:.0?} conn/s");
            out.push(Figure::vs(name, p, "conn/s", r).note(format!(
                "{n} conns, 8 in flight, median of {reps} (pool: client build -> both ends idle)"
            )));
        }
        Ok(())
    })
}

/// Scenario 2: 1,000 TLS connections through a proxy adding 25 ms each way.
pub(crate) fn rtt(sz: &Sizes, out: &mut Vec<Figure>) -> Res<()> {
    let rt = runtime();
    rt.block_on(async {
        let tls = Tls::new()?;
        let one_way = Duration::from_millis(25);
        let rtt = 2.0 * one_way.as_secs_f64();
        let script = || Script::always(Fault::Latency(one_way));

        // One raw TLS connection through the proxy: how many round trips a handshake
        // costs here (connect is answered by the proxy locally, so it costs none).
        let listener = TcpListener::bind(LOOPBACK).await?;
        let target = listener.local_addr()?;
        let acceptor = tls.acceptor.clone();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    if s.write_all(b"0a0b0c0d").await.is_ok() && s.flush().await.is_ok() {
                        held.push(s);
                    }
                }
            }
        });
        let proxy = FaultProxy::start(target, script()).await?;
        let mut one = Vec::new();
        for _ in 0..3 {
            let t0 = Instant::now();
            let c = raw_dial(
                proxy.addr(),
                pool_tokio::SocketOptions::default(),
                Some(&tls.connector),
            )
            .await?;
            one.push(t0.elapsed().as_secs_f64());
            drop(c);
        }
        proxy.close().await;
        server.abort();
        let one = median(&one).unwrap_or(0.0);
        let trips = 2.0;
        out.push(
            Figure::vs("rtt50_tls_conn_ms", one * 1e3, "ms", rtt * trips * 1e3).note(
                "one raw TLS connect+id via the proxy; baseline 2 RTT (TLS 1.3 1 + client Finished->id 1)",
            ),
        );

        let n = sz.rtt_n;
        for (name, par) in [("fill_rtt50_tls_s", 64usize), ("fill_rtt50_tls_p8_s", 8)] {
            let spec = PoolSpec {
                capacity: n,
                server_max: n + n / 10,
                parallelism: par,
                min_interval: None,
            };
            let server = build_server(spec, Some(&tls))?;
            let proxy = FaultProxy::start(server.local_addr(), script()).await?;
            let (d, pools) = fill_client(server, spec, Some(&tls), proxy.addr()).await?;
            let stats = pools.client.stats();
            pools.close().await;
            proxy.close().await;
            let ideal = rtt * trips * (n as f64 / par as f64).ceil();
            eprintln!("  {name}: {d:?}, client {stats:?}");
            out.push(Figure::vs(name, d.as_secs_f64(), "s", ideal).note(format!(
                "{n} TLS conns, {par} in flight; baseline = RTT x 2 x ceil({n}/{par})"
            )));
        }
        Ok(())
    })
}
