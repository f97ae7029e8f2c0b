//! Scenario: adaptation on real sockets, beside the simulator's prediction.
//!
//! A tokio `ServerPool` and a client pool on loopback, all defaults but the client's
//! capacity (4 to 1,024), take a flash crowd: 20 pairs a second for 3 s, then 500 a
//! second for 6 s, open loop (`pool_bench::flash`). The figure is the share of the
//! pairs of the last 4 s that were ready within 2 ms (idle on both sides), once with the
//! tokio client pool and once with the plain-threads one (and once more with the Go
//! rules on the tokio pool, the policy the default replaced); its baseline is the
//! simulator's prediction of the same trace with the same configurations, whose pools
//! run the same driver protocol. Failed gets are reported beside it (the target is 0).

use std::sync::Arc;
use std::time::Duration;

use pool_bench::flash::{self, Client, FlashReport, FlashTrace};
use pool_core::{Adaptation, ClientConfig, ServerConfig};
use pool_threads::ThreadClientPool;
use pool_tokio::{ClientPool, ServerPool};

use crate::net::{runtime, Res, LOOPBACK};
use crate::report::Figure;
use crate::Sizes;

const MIN: usize = 4;
const MAX: usize = 1024;

fn client_config(policy: &Adaptation) -> ClientConfig {
    ClientConfig::builder()
        .capacity(MIN, MAX)
        .adapt(policy.clone())
        .build()
        .expect("valid bounds")
}

async fn real(trace: &FlashTrace, threads: bool, policy: &Adaptation) -> Res<FlashReport> {
    let server = ServerPool::builder().bind(LOOPBACK).build()?;
    let addr = server.local_addr();
    let client = if threads {
        let pool = ThreadClientPool::builder(addr)
            .config(client_config(policy))
            .build()
            .map_err(|e| e.to_string())?;
        Client::Threads(Arc::new(pool))
    } else {
        let pool = ClientPool::builder()
            .address(addr)
            .config(
                ClientConfig::builder()
                    .capacity(MIN, MAX)
                    .adapt(policy.clone()),
            )
            .build()?;
        Client::Tokio(pool)
    };
    // Warm: the minimum is idle at both ends before the first user.
    server.wait_idle(MIN, Duration::from_secs(5)).await;
    let report = flash::run(trace, &server, &client).await;
    match client {
        Client::Tokio(c) => c.close().await,
        Client::Threads(c) => {
            tokio::task::spawn_blocking(move || c.close()).await?;
        }
    }
    server.close().await;
    Ok(report)
}

pub(crate) fn adapt(sizes: &Sizes, out: &mut Vec<Figure>) -> Res<()> {
    let trace = if sizes.quick {
        FlashTrace::quick()
    } else {
        FlashTrace::step_20_to_500()
    };
    let rt = runtime();
    let runs = [
        ("tokio", false, Adaptation::default()),
        ("threads", true, Adaptation::default()),
        (
            "gorules",
            false,
            Adaptation::GoRules(pool_core::GoRules::default()),
        ),
    ];
    for (driver, threads, policy) in runs {
        let predicted = flash::predict(&trace, client_config(&policy), ServerConfig::default(), 1);
        let r = rt.block_on(real(&trace, threads, &policy))?;
        let name = match driver {
            "tokio" => "adapt_real_flash_at_once_pct".to_owned(),
            d => format!("adapt_real_flash_at_once_pct_{d}"),
        };
        let note = format!(
            "{} policy, {driver} client, capacity {MIN}..{MAX}: {} of {} pairs at once in the \
             last {:?} of {}/s; capacity {} -> peak {} (sim {}); baseline: the simulator's \
             prediction",
            policy.name(),
            r.at_once,
            r.pairs,
            trace.window,
            trace.step,
            r.capacity_before,
            r.capacity_peak,
            predicted.capacity_peak
        );
        out.push(Figure::vs(&name, r.at_once_pct(), "%", predicted.at_once_pct()).note(note));
        out.push(
            Figure::alone(
                &format!("adapt_real_flash_failed_{driver}"),
                r.failed as f64,
                "gets",
            )
            .note(format!(
                "{driver}: pairs that failed in the window (target 0)"
            )),
        );
    }
    Ok(())
}
