//! Scenario 3: checkout throughput while the pool refills, and get latency on a warm pool.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use pool_sim::stats::quantile_sorted;
use pool_tokio::SocketOptions;
use tokio::net::TcpListener;
use tokio_rustls::TlsStream;

use crate::net::{
    pool_fill, raw_dial, raw_fill, runtime, wait_full, PoolSpec, Pools, RawConn, Res, Tls, LOOPBACK,
};
use crate::report::Figure;
use crate::Sizes;

const WORKERS: usize = 8;
const GET_TIMEOUT: Duration = Duration::from_secs(10);

/// One byte server -> client -> server.
async fn round_trip<S, C>(s: &mut S, c: &mut C) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut b = [1u8];
    s.write_all(&b).await?;
    c.read_exact(&mut b).await?;
    c.write_all(&b).await?;
    s.read_exact(&mut b).await?;
    Ok(())
}

/// Rate over the whole run and the lowest rate over 500 ms windows.
struct Rate {
    per_s: f64,
    min_window: f64,
}

/// Samples `count` every 500 ms for `dur`, then raises `stop`.
async fn sample(count: &AtomicU64, stop: &AtomicBool, dur: Duration) -> Rate {
    let start = Instant::now();
    let window = Duration::from_millis(500).min(dur);
    let (mut last_t, mut last_n) = (start, count.load(Ordering::Acquire));
    let first_n = last_n;
    let mut min_window = f64::INFINITY;
    let mut k = 1u32;
    while start.elapsed() < dur {
        tokio::time::sleep_until((start + window * k).into()).await;
        k += 1;
        let (t, c) = (Instant::now(), count.load(Ordering::Acquire));
        min_window = min_window.min((c - last_n) as f64 / (t - last_t).as_secs_f64());
        (last_t, last_n) = (t, c);
    }
    stop.store(true, Ordering::Release);
    Rate {
        per_s: (last_n - first_n) as f64 / (last_t - start).as_secs_f64(),
        min_window,
    }
}

/// Where a checkout worker's time went, summed over all workers (ns).
#[derive(Default)]
struct Stages {
    server_get: AtomicU64,
    client_get: AtomicU64,
    round_trip: AtomicU64,
    close: AtomicU64,
}

impl Stages {
    fn add(slot: &AtomicU64, since: Instant) -> Instant {
        let now = Instant::now();
        slot.fetch_add((now - since).as_nanos() as u64, Ordering::Relaxed);
        now
    }

    fn per_pair_us(&self, pairs: u64) -> String {
        let us = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e3 / pairs.max(1) as f64;
        format!(
            "per pair per worker: server get {:.1} us, client get {:.1} us, round trip {:.1} us, close {:.1} us",
            us(&self.server_get),
            us(&self.client_get),
            us(&self.round_trip),
            us(&self.close)
        )
    }
}

async fn pool_checkout(pools: &Pools, dur: Duration) -> Res<(Rate, String)> {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let stages = Arc::new(Stages::default());
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (server, client) = (pools.server.clone(), pools.client.clone());
        let (count, stop, st) = (count.clone(), stop.clone(), stages.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let t = Instant::now();
                let (id, mut s) = server.get_timeout(GET_TIMEOUT).await?;
                let t = Stages::add(&st.server_get, t);
                let mut c = client.get_timeout(id, GET_TIMEOUT).await?;
                let t = Stages::add(&st.client_get, t);
                round_trip(&mut s, &mut c).await?;
                let t = Stages::add(&st.round_trip, t);
                drop((s, c));
                Stages::add(&st.close, t);
                count.fetch_add(1, Ordering::AcqRel);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    // Watch the refill pipeline every millisecond while the workers run: how often no
    // dial is in flight although gets wait on the server for a connection.
    let watch = {
        let (server, client, stop) = (pools.server.clone(), pools.client.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut samples, mut starved, mut idle_pipe) = (0u64, 0u64, 0u64);
            while !stop.load(Ordering::Acquire) {
                let (s, c) = (server.stats().status, client.stats().status);
                samples += 1;
                if s.waiting > 0 {
                    starved += 1;
                    if c.in_flight == 0 {
                        idle_pipe += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (samples, starved, idle_pipe)
        })
    };
    let rate = sample(&count, &stop, dur).await;
    for w in workers {
        w.await??;
    }
    let (samples, starved, idle_pipe) = watch.await?;
    let pct = |k: u64| 100.0 * k as f64 / samples.max(1) as f64;
    let stages = format!(
        "{}; refill watch ({samples} samples at 1 ms): server gets waiting {:.0}% of the time, waiting with no dial in flight {:.0}%",
        stages.per_pair_us(count.load(Ordering::Acquire)),
        pct(starved),
        pct(idle_pipe)
    );
    Ok((rate, stages))
}

/// The same one-use work without a pool: each of `WORKERS` workers opens a fresh raw
/// connection (connect, socket options, TLS if given, 8-byte id), does the same one-byte
/// round trip, and closes; nothing is dialed ahead.
async fn raw_churn(tls: Option<&Tls>, dur: Duration) -> Res<Rate> {
    let listener = TcpListener::bind(LOOPBACK).await?;
    let addr = listener.local_addr()?;
    let opts = SocketOptions::default();
    let acceptor = tls.map(|t| t.acceptor.clone());
    let accept = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = opts.apply(&tcp);
                let mut conn = match acceptor {
                    None => RawConn::Plain(tcp),
                    Some(a) => match a.accept(tcp).await {
                        Ok(s) => RawConn::Tls(Box::new(TlsStream::Server(s))),
                        Err(_) => return,
                    },
                };
                let mut b = [1u8];
                let _ = async {
                    conn.write_all(b"0a0b0c0d").await?;
                    conn.write_all(&b).await?;
                    conn.read_exact(&mut b).await?;
                    Ok::<_, std::io::Error>(())
                }
                .await;
            });
        }
    });
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (count, stop) = (count.clone(), stop.clone());
        let connector = tls.map(|t| t.connector.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let (_, mut c) = raw_dial(addr, opts, connector.as_ref()).await?;
                let mut b = [0u8];
                c.read_exact(&mut b).await?;
                c.write_all(&b).await?;
                c.flush().await?;
                drop(c);
                count.fetch_add(1, Ordering::AcqRel);
            }
            Ok::<_, std::io::Error>(())
        }));
    }
    let rate = sample(&count, &stop, dur).await;
    for w in workers {
        w.await??;
    }
    accept.abort();
    Ok(rate)
}

async fn raw_checkout(tls: Option<&Tls>, dur: Duration) -> Res<Rate> {
    let (_, mut pairs) = raw_fill(WORKERS, WORKERS, tls).await?;
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for (mut s, mut c) in pairs.server.drain(..).zip(pairs.client.drain(..)) {
        let (count, stop) = (count.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                round_trip(&mut s, &mut c).await?;
                count.fetch_add(1, Ordering::AcqRel);
            }
            Ok::<_, std::io::Error>(())
        }));
    }
    let rate = sample(&count, &stop, dur).await;
    for w in workers {
        w.await??;
    }
    Ok(rate)
}

/// The `p` quantile of sorted latencies, in microseconds (0 when there are none).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    quantile_sorted(sorted, p).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

pub(crate) fn checkout(sz: &Sizes, out: &mut Vec<Figure>) -> Res<()> {
    let rt = runtime();
    rt.block_on(async {
        let tls = Tls::new()?;
        let n = sz.checkout_pool;
        for (name, t) in [("checkout_plain", None), ("checkout_tls", Some(&tls))] {
            // The pool's default parallelism (64); the refill interval only paces the
            // Go adjustment rules now that the pool tops up continuously.
            for (suffix, ivl) in [("", None::<Duration>)] {
                if !suffix.is_empty() && t.is_some() {
                    continue;
                }
                let spec = PoolSpec {
                    capacity: n,
                    server_max: n + n / 10,
                    parallelism: 64,
                    min_interval: ivl,
                };
                let (_, pools) = pool_fill(spec, t).await?;
                let before = (pools.server.stats(), pools.client.stats());
                let (pool, stages) = pool_checkout(&pools, sz.checkout).await?;
                let after = (pools.server.stats(), pools.client.stats());
                pools.close().await;
                let raw = raw_checkout(t, sz.checkout_raw).await?;
                eprintln!(
                    "  {name}{suffix}: pool {:.0}/s (min 500ms {:.0}), raw {:.0}/s; client dialed {} created {} fails {}/{}/{}; server refused full {} busy {}",
                    pool.per_s,
                    pool.min_window,
                    raw.per_s,
                    after.1.counters.dialed - before.1.counters.dialed,
                    after.1.counters.created - before.1.counters.created,
                    after.1.counters.dial_failures,
                    after.1.counters.handshake_failures,
                    after.1.counters.id_errors,
                    after.0.counters.refused_full,
                    after.0.counters.refused_busy,
                );
                eprintln!("    {stages}");
                let how = match ivl {
                    None => format!("pool {n}, {} dials in flight (the default), refill interval 100ms-1s", spec.parallelism),
                    Some(i) => format!("pool {n}, {} dials in flight, refill interval {i:?}-1s", spec.parallelism),
                };
                out.push(
                    Figure::vs(&format!("{name}{suffix}"), pool.per_s, "pairs/s", raw.per_s).note(
                        format!(
                            "{WORKERS} workers, {:.1}s; {how}; raw: same round trip on {WORKERS} open pairs",
                            sz.checkout.as_secs_f64()
                        ),
                    ),
                );
                out.push(
                    Figure::alone(
                        &format!("{name}{suffix}_min500ms"),
                        pool.min_window,
                        "pairs/s",
                    )
                    .note("lowest rate over the 500 ms windows of the run above"),
                );
            }
        }

        for (name, t) in [("raw_oneuse_plain", None), ("raw_oneuse_tls", Some(&tls))] {
            let r = raw_churn(t, sz.checkout_raw).await?;
            eprintln!("  {name}: {:.0}/s (min 500ms {:.0})", r.per_s, r.min_window);
            out.push(Figure::alone(name, r.per_s, "pairs/s").note(format!(
                "no pool: {WORKERS} workers each dial a fresh conn (+id), same round trip, close; {:.1}s",
                sz.checkout_raw.as_secs_f64()
            )));
        }

        // Get latency on a warm pool: batches of half the pool, refilled in between.
        let n = sz.latency_pool;
        let spec = PoolSpec {
            capacity: n,
            server_max: n + n / 10,
            parallelism: 8,
            min_interval: None,
        };
        let (_, pools) = pool_fill(spec, None).await?;
        let mut samples = Vec::with_capacity(sz.latency_samples);
        while samples.len() < sz.latency_samples {
            wait_full(&pools, n, Duration::from_secs(30)).await?;
            let mut held = Vec::with_capacity(n / 2);
            for _ in 0..n / 2 {
                let t0 = Instant::now();
                let (id, s) = pools.server.get_timeout(GET_TIMEOUT).await?;
                let c = pools.client.get_timeout(id, GET_TIMEOUT).await?;
                samples.push(t0.elapsed());
                held.push((s, c));
            }
            drop(held);
        }
        pools.close().await;
        samples.sort();
        let note = format!(
            "server get + client get by id, {} samples in batches of {} from a full pool of {n}",
            samples.len(),
            n / 2
        );
        out.push(Figure::alone("get_p50_us", percentile(&samples, 0.5), "us").note(note.clone()));
        out.push(Figure::alone("get_p99_us", percentile(&samples, 0.99), "us").note(note));
        Ok(())
    })
}
