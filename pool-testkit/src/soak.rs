//! The soak runner: a TLS mode-1 server pool and client pool through the fault proxy
//! under random faults, with a steady stream of gets, every pair checked end to end.
//!
//! Each worker takes a pair (server `get`, then client `get` of the same id), checks
//! that both ends carry that id, sends random bytes from the server end and reads them
//! on the client end, then the other way. A pair that fails on the way is excused only
//! when the proxy says its connection got a disruptive fault (a reset after some
//! bytes, a stall...); otherwise its unread bytes count as `lost_bytes`. Bytes that
//! arrive changed are never excused (`mismatched`). Worker panics are caught from the
//! join handles. After close, the open descriptors are compared with the count before
//! the runtime started (`leaked_fds`).
//!
//! ```no_run
//! let report = pool_testkit::soak::run(&pool_testkit::soak::SoakConfig::seconds(10));
//! println!("{}", report.line());
//! assert!(report.is_clean());
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_tokio::{GetError, PoolConn, TlsMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::pair::{open_fds, PairBuilder};
use crate::proxy::{Fault, FaultProxy, Script};
use crate::rng::SplitMix64;

/// What to run.
#[derive(Clone, Debug)]
pub struct SoakConfig {
    /// How long the gets go on.
    pub duration: Duration,
    /// Seed of the fault script and of the payloads.
    pub seed: u64,
    /// Concurrent get workers.
    pub workers: usize,
    /// Probability that a new connection gets a fault.
    pub fault_p: f64,
    /// Largest payload per direction, in bytes.
    pub max_payload: usize,
    /// Print progress to stderr every second.
    pub progress: bool,
    /// At most this many pairs are tried in all, whatever the duration (the fault
    /// matrix's cells stop on a count).
    pub max_pairs: u64,
}

impl SoakConfig {
    /// The defaults with a duration: seed 1, 4 workers, 20 % faulted connections,
    /// payloads up to 16 KiB, no progress.
    pub fn seconds(s: u64) -> Self {
        Self {
            duration: Duration::from_secs(s),
            seed: 1,
            workers: 4,
            fault_p: 0.2,
            max_payload: 16 * 1024,
            progress: false,
            max_pairs: 10_000_000,
        }
    }
}

/// What a soak run saw. Defects: `mismatched`, `lost_bytes`, `leaked_fds`, `panics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoakReport {
    /// Pairs checked end to end without a problem.
    pub pairs: u64,
    /// Pairs whose ids differed or whose bytes arrived changed.
    pub mismatched: u64,
    /// Bytes lost on pairs the proxy had not faulted.
    pub lost_bytes: u64,
    /// Descriptors open after close beyond the count before the run.
    pub leaked_fds: u64,
    /// Worker tasks that panicked.
    pub panics: u64,
    /// Connections the proxy faulted.
    pub faults: u64,
    /// Pairs that failed on a connection the proxy had faulted (allowed).
    pub excused: u64,
    /// Gets that timed out or found nothing (not a defect: faults slow the refill).
    pub get_failures: u64,
}

impl SoakReport {
    /// Whether every defect counter is zero.
    pub fn is_clean(&self) -> bool {
        self.mismatched == 0 && self.lost_bytes == 0 && self.leaked_fds == 0 && self.panics == 0
    }

    /// The one-line summary the soak binary ends with (the TCP pools).
    pub fn line(&self) -> String {
        self.line_labelled("soak")
    }

    /// The same summary under another label (`soak_quic` for the QUIC pools).
    pub fn line_labelled(&self, label: &str) -> String {
        format!(
            "{label}: pairs={} mismatched={} lost_bytes={} leaked_fds={} panics={} faults={}",
            self.pairs, self.mismatched, self.lost_bytes, self.leaked_fds, self.panics, self.faults
        )
    }

    /// Every counter as `(name, value)`, defects first after `pairs`.
    pub fn counters(&self) -> [(&'static str, u64); 8] {
        [
            ("pairs", self.pairs),
            ("mismatched", self.mismatched),
            ("lost_bytes", self.lost_bytes),
            ("leaked_fds", self.leaked_fds),
            ("panics", self.panics),
            ("faults", self.faults),
            ("excused", self.excused),
            ("get_failures", self.get_failures),
        ]
    }
}

/// The counters of two runs side by side, one row per counter: the TCP pools' and the
/// QUIC pools' (`-` for a run not made).
pub fn columns(tcp: Option<&SoakReport>, quic: Option<&SoakReport>) -> String {
    let cell = |r: Option<&SoakReport>, i: usize| {
        r.map_or("-".to_owned(), |r| r.counters()[i].1.to_string())
    };
    let mut out = format!("{:<14}{:>12}{:>12}\n", "counter", "tcp", "quic");
    for (i, (name, _)) in SoakReport::default().counters().iter().enumerate() {
        out.push_str(&format!(
            "{name:<14}{:>12}{:>12}\n",
            cell(tcp, i),
            cell(quic, i)
        ));
    }
    out
}

/// The counts the workers of a run share.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) pairs: AtomicU64,
    pub(crate) mismatched: AtomicU64,
    pub(crate) lost_bytes: AtomicU64,
    pub(crate) excused: AtomicU64,
    pub(crate) get_failures: AtomicU64,
    /// Pairs tried so far (the bound of [`SoakConfig::max_pairs`]).
    pub(crate) tried: AtomicU64,
}

impl Tally {
    /// Counts one more try: its number from 0, or `None` once `max` were tried.
    pub(crate) fn try_one(&self, max: u64) -> Option<u64> {
        let n = self.tried.fetch_add(1, Ordering::Relaxed);
        (n < max).then_some(n)
    }

    /// The report of what was counted (descriptors are counted by [`measured`]).
    pub(crate) fn report(&self, panics: u64, faults: u64) -> SoakReport {
        SoakReport {
            pairs: self.pairs.load(Ordering::Relaxed),
            mismatched: self.mismatched.load(Ordering::Relaxed),
            lost_bytes: self.lost_bytes.load(Ordering::Relaxed),
            leaked_fds: 0,
            panics,
            faults,
            excused: self.excused.load(Ordering::Relaxed),
            get_failures: self.get_failures.load(Ordering::Relaxed),
        }
    }

    /// Counts how one checked pair ended; `excusable` says whether a failure on it
    /// came from an injected fault that may cut a pair.
    pub(crate) fn outcome(&self, outcome: Result<(), (usize, bool)>, excusable: bool) {
        match outcome {
            Ok(()) => {
                self.pairs.fetch_add(1, Ordering::Relaxed);
            }
            Err((_, true)) => {
                self.mismatched.fetch_add(1, Ordering::Relaxed);
            }
            Err((missing, false)) => {
                if excusable {
                    self.excused.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.lost_bytes.fetch_add(missing as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The faults a soak draws from.
pub fn soak_faults() -> Vec<Fault> {
    vec![
        Fault::Latency(Duration::from_millis(3)),
        Fault::Bandwidth(2 * 1024 * 1024),
        Fault::Stall(Duration::from_millis(50)),
        Fault::Stall(Duration::from_secs(3)),
        Fault::ResetAfter(100),
        Fault::ResetAfter(3_000),
        Fault::ResetAfter(20_000),
        Fault::Blackhole,
        Fault::CorruptId(0),
        Fault::ShortId(3),
    ]
}

/// Runs a soak on a runtime of its own (two worker threads) and reports.
pub fn run(cfg: &SoakConfig) -> SoakReport {
    measured(cfg.progress, true, || {
        soak(cfg, Script::random(cfg.seed, cfg.fault_p, soak_faults()))
    })
}

/// One cell of the fault matrix on the TCP pools: `pairs` pairs checked end to end
/// while half the connections (drawn from `seed`) get `fault`.
pub fn run_case(fault: Fault, pairs: u64, seed: u64) -> SoakReport {
    case(fault, pairs, seed, true)
}

/// [`run_case`], counting the descriptors left open or not (a caller running cells
/// side by side counts them once for all).
pub(crate) fn case(fault: Fault, pairs: u64, seed: u64, count_fds: bool) -> SoakReport {
    let mut cfg = SoakConfig::seconds(60);
    cfg.seed = seed;
    cfg.workers = 2;
    cfg.max_payload = 4096;
    cfg.max_pairs = pairs;
    measured(false, count_fds, || {
        soak(&cfg, Script::random(seed, 0.5, vec![fault]))
    })
}

/// A pair's two payloads, one each way, of 1 to `max` random bytes each.
pub(crate) fn payloads(rng: &mut SplitMix64, max: usize) -> (Vec<u8>, Vec<u8>) {
    let n1 = 1 + rng.below(max as u64) as usize;
    let n2 = 1 + rng.below(max as u64) as usize;
    let (mut a, mut b) = (vec![0u8; n1], vec![0u8; n2]);
    rng.fill(&mut a);
    rng.fill(&mut b);
    (a, b)
}

pub(crate) fn measured<F>(progress: bool, count_fds: bool, work: impl FnOnce() -> F) -> SoakReport
where
    F: std::future::Future<Output = SoakReport>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Measured with the runtime up: its own descriptors (and tokio's process-wide
    // signal socket pair, made once with the first runtime) are not leaks.
    let baseline = open_fds();
    let report = rt.block_on(async {
        let mut report = work().await;
        if count_fds {
            report.leaked_fds = settle_fds(baseline).await;
        }
        report
    });
    if report.leaked_fds > 0 && progress {
        eprintln!("open descriptors after close: {:?}", fd_targets());
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    report
}

/// The descriptors open beyond `baseline`, once they stop closing: polled every
/// 20 ms for up to 5 s. A QUIC endpoint keeps its socket until its connections have
/// drained, and one closed in its handshake (no round-trip sample yet) drains for
/// three probe timeouts of about 1 s each.
pub(crate) async fn settle_fds(baseline: usize) -> u64 {
    let mut after = open_fds();
    for _ in 0..250 {
        if after <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = open_fds();
    }
    after.saturating_sub(baseline) as u64
}

async fn soak(cfg: &SoakConfig, script: Script) -> SoakReport {
    let hs = Duration::from_secs(1);
    let pair = PairBuilder::new()
        .tls(TlsMode::SelfSigned)
        .capacity(8, 64)
        .interval(Duration::from_millis(50), Duration::from_millis(500))
        .through_proxy(script)
        .server(move |b| {
            b.handshake_timeout(hs)
                .sweep_interval(Duration::from_millis(200))
        })
        .client(move |b| {
            b.handshake_timeout(hs)
                .id_timeout(hs)
                .sweep_interval(Duration::from_millis(200))
        })
        .build()
        .await
        .expect("soak pair");
    let pair = Arc::new(pair);
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + cfg.duration;
    let mut handles = Vec::new();
    for w in 0..cfg.workers.max(1) {
        let pair = pair.clone();
        let tally = tally.clone();
        let seed = cfg.seed.wrapping_mul(0x1000_0001).wrapping_add(w as u64);
        let max = cfg.max_payload.max(1);
        let max_pairs = cfg.max_pairs;
        handles.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(seed);
            // Bounded by the deadline and by the count of pairs.
            while tally.try_one(max_pairs).is_some() {
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                one_pair(&pair, &tally, &mut rng, max).await;
            }
        }));
    }
    if cfg.progress {
        let start = Instant::now();
        while tokio::time::Instant::now() < deadline && !handles.iter().all(|h| h.is_finished()) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            eprintln!(
                "[{:>4}s] pairs={} excused={} get_failures={} faults={} client_idle={} server_idle={}",
                start.elapsed().as_secs(),
                tally.pairs.load(Ordering::Relaxed),
                tally.excused.load(Ordering::Relaxed),
                tally.get_failures.load(Ordering::Relaxed),
                pair.proxy.as_ref().map_or(0, |p| p.counts().faulted()),
                pair.client.active(),
                pair.server.active(),
            );
        }
    }
    let mut panics = 0;
    for h in handles {
        // Each worker stops at the deadline; a pair in progress has its own timeouts.
        match tokio::time::timeout(cfg.duration + Duration::from_secs(30), h).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => panics += 1,
            Ok(Err(_)) => {}
            Err(_) => panics += 1,
        }
    }
    let faults = pair.proxy.as_ref().map_or(0, |p| p.counts().faulted());
    if cfg.progress {
        eprintln!("server {:?}", pair.server.stats());
        eprintln!("client {:?}", pair.client.stats());
        if let Some(p) = &pair.proxy {
            eprintln!("proxy {:?}", p.counts());
        }
    }
    pair.close().await;
    drop(pair);
    tally.report(panics, faults)
}

/// What each open descriptor points at (`/proc/self/fd` links), for leak reports.
pub fn fd_targets() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map_or_else(|_| "?".into(), |t| t.display().to_string());
            format!("{}->{}", e.file_name().to_string_lossy(), target)
        })
        .collect()
}

fn faulted(proxy: Option<&FaultProxy>, c: &PoolConn) -> bool {
    let Some(p) = proxy else { return false };
    let by_client = c.tcp().local_addr().ok().and_then(|a| p.fault_of(a));
    by_client.is_some_and(|f| f.is_disruptive())
}

async fn one_pair(pair: &crate::pair::Pair, tally: &Tally, rng: &mut SplitMix64, max: usize) {
    let t = Duration::from_secs(2);
    let (id, mut s) = match pair.server.get_timeout(t).await {
        Ok(x) => x,
        Err(GetError::Closed) => return,
        Err(_) => {
            tally.get_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let mut c = match pair.client.get_timeout(id, t).await {
        Ok(c) => c,
        Err(_) => {
            // The server end exists but the client end does not: allowed only if the
            // proxy broke that connection (the client dropped it on a bad id, or the
            // proxy is stalling it).
            tally.get_failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if s.id() != id || c.id() != id {
        tally.mismatched.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let excusable = faulted(pair.proxy.as_ref(), &c);
    let (a, b) = payloads(rng, max);
    let (n1, n2) = (a.len(), b.len());
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        let r1 = transfer(&mut s, &mut c, &a).await;
        if r1.is_err() {
            return (r1, n2);
        }
        (transfer(&mut c, &mut s, &b).await, 0)
    })
    .await;
    let outcome = match res {
        Ok((r, rest)) => r.map_err(|(missing, changed)| (missing + rest, changed)),
        Err(_) => Err((n1 + n2, false)),
    };
    tally.outcome(outcome, excusable);
}

/// Writes `bytes` on `from` while reading them on `to`. On failure: how many bytes
/// did not arrive, and whether the ones that did were changed.
pub(crate) async fn transfer<A, B>(
    from: &mut A,
    to: &mut B,
    bytes: &[u8],
) -> Result<(), (usize, bool)>
where
    A: AsyncWrite + Unpin,
    B: AsyncRead + Unpin,
{
    let write = async {
        from.write_all(bytes).await?;
        from.flush().await
    };
    let read = async {
        let mut got = vec![0u8; bytes.len()];
        let mut n = 0;
        // Bounded: each read makes progress or ends the loop.
        while n < got.len() {
            match to.read(&mut got[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        (got, n)
    };
    let (w, (got, n)) = tokio::join!(write, read);
    let changed = got[..n] != bytes[..n];
    if changed {
        return Err((bytes.len() - n, true));
    }
    if n < bytes.len() || w.is_err() {
        return Err((bytes.len() - n, false));
    }
    Ok(())
}
