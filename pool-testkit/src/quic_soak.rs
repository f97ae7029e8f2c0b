//! The soak and the fault matrix's cells on the QUIC pools (`pool-quic`): a server
//! pool and a client pool through the UDP fault proxy ([`crate::udp_proxy`]), every
//! pair checked end to end with the same counters as the TCP soak ([`SoakReport`]).
//!
//! The faults are what a datagram path does to QUIC: delay, loss, duplication and
//! reordering (conditions, set on the proxy for a while), a stall (every datagram
//! dropped for a moment), the client's address changing (the proxy rebinds), one
//! shard's connection killed, and a server restart on the same address and
//! certificate. QUIC must carry a pair's bytes through every condition, a stall and an
//! address change: a pair that fails through them loses bytes. Only a killed
//! connection or a restart may cut a pair: a failed pair is excused when one of those
//! came while it ran and its connection ended.
//!
//! Each pair also checks its ends: after the bytes both ways, each side finishes its
//! stream and the other must read the end at once, so a duplicated byte shows as a
//! mismatch.
//!
//! ```no_run
//! use pool_testkit::quic_soak::{run, QuicFault};
//! use pool_testkit::soak::SoakConfig;
//! let report = run(&SoakConfig::seconds(10));
//! println!("{}", report.line_labelled("soak_quic"));
//! let (cell, datagrams) = pool_testkit::quic_soak::run_case(QuicFault::Loss(0.05), 24, 1);
//! assert!(cell.is_clean() && datagrams.dropped > 0);
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_quic::{
    ClientConfig, ClientPool, ClientTls, GetError, ServeTls, ServerConfig, ServerPool,
};
use pool_tls::ServerTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::rng::SplitMix64;
use crate::soak::{measured, payloads, transfer, SoakConfig, SoakReport, Tally};
use crate::udp_proxy::{Faults, UdpProxy, UdpStats};

/// One fault on the QUIC pools' path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum QuicFault {
    /// Every datagram delayed this long, each way.
    Delay(Duration),
    /// This share of datagrams dropped, each way.
    Loss(f64),
    /// This share of datagrams sent twice.
    Duplicate(f64),
    /// This share of datagrams held back 3 ms, so that later ones overtake them.
    Reorder(f64),
    /// Every datagram dropped for this long, then the path comes back.
    Stall(Duration),
    /// The client's address changes (the proxy gives it a new source port).
    Rebind,
    /// One of the client's QUIC connections (a shard) is closed.
    KillShard,
    /// The server pool closes and a new one binds the same address and certificate.
    ServerRestart,
}

impl QuicFault {
    /// Whether the fault is a condition of the path (set for a while) rather than an
    /// event (done once).
    pub fn is_condition(&self) -> bool {
        matches!(
            self,
            Self::Delay(_) | Self::Loss(_) | Self::Duplicate(_) | Self::Reorder(_)
        )
    }

    /// Whether the fault may cut a pair under way (a failed pair is then excused).
    pub fn is_disruptive(&self) -> bool {
        matches!(self, Self::KillShard | Self::ServerRestart)
    }

    /// The proxy's faults for a condition (none for an event).
    fn faults(&self) -> Faults {
        let reorder_by = Duration::from_millis(3);
        match *self {
            Self::Delay(d) => Faults {
                delay: d,
                ..Faults::none()
            },
            Self::Loss(p) => Faults::loss(p),
            Self::Duplicate(p) => Faults {
                duplicate: p,
                ..Faults::none()
            },
            Self::Reorder(p) => Faults {
                reorder: p,
                reorder_by,
                ..Faults::none()
            },
            _ => Faults::none(),
        }
    }
}

/// The conditions a QUIC soak draws from, one at a time.
pub fn soak_conditions() -> Vec<QuicFault> {
    vec![
        QuicFault::Delay(Duration::from_millis(3)),
        QuicFault::Loss(0.01),
        QuicFault::Loss(0.05),
        QuicFault::Duplicate(0.05),
        QuicFault::Reorder(0.05),
    ]
}

/// The events a QUIC soak draws from.
pub fn soak_events() -> Vec<QuicFault> {
    vec![
        QuicFault::Stall(Duration::from_millis(50)),
        QuicFault::Stall(Duration::from_secs(1)),
        QuicFault::Rebind,
        QuicFault::KillShard,
        QuicFault::ServerRestart,
    ]
}

/// The pools, the proxy between them, and what the faults did.
struct Rig {
    /// `None` while a restart is under way: the old pool is dropped before the new
    /// one binds, so that its endpoint lets go of the port.
    server: Mutex<Option<ServerPool>>,
    client: ClientPool,
    proxy: UdpProxy,
    addr: SocketAddr,
    tls: ServerTls,
    core: ServerConfig,
    keepalive: Duration,
    /// Disruptive faults done so far: a pair that saw this change may be cut.
    disruptions: AtomicU64,
    /// Faults done so far (conditions set and events).
    faults: AtomicU64,
    /// Events done so far: stalls, rebinds, shards killed, restarts.
    events: [AtomicU64; 4],
}

impl Rig {
    async fn new(seed: u64, (min, max): (usize, usize), keepalive: Duration) -> Self {
        let tls = ServerTls::self_signed(["localhost"]).expect("a self-signed certificate");
        let core = ServerConfig::builder()
            .max_capacity(max)
            .settle(Duration::ZERO)
            .build()
            .expect("server config");
        let server = Self::server(
            &tls,
            &core,
            keepalive,
            "127.0.0.1:0".parse().expect("literal"),
        )
        .expect("a QUIC server pool on loopback");
        let addr = server.local_addr();
        let proxy = UdpProxy::start(addr, Faults::none(), seed)
            .await
            .expect("the UDP proxy");
        let client_core = ClientConfig::builder()
            .capacity(min, max)
            .interval(Duration::from_millis(50), Duration::from_millis(500))
            .sweep_interval(Duration::from_millis(100))
            .build()
            .expect("client config");
        let client = ClientPool::builder()
            .address(proxy.local_addr())
            .config(client_core)
            .tls(ClientTls::SelfSigned {
                pin: server.fingerprint(),
                name: None,
            })
            .keepalive(keepalive)
            .build()
            .expect("a QUIC client pool");
        Self {
            server: Mutex::new(Some(server)),
            client,
            proxy,
            addr,
            tls,
            core,
            keepalive,
            disruptions: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            events: Default::default(),
        }
    }

    fn server(
        tls: &ServerTls,
        core: &ServerConfig,
        keepalive: Duration,
        at: SocketAddr,
    ) -> Result<ServerPool, pool_quic::BuildError> {
        ServerPool::builder()
            .bind(at)
            .config(core.clone())
            .tls(ServeTls::Cert(tls.clone()))
            .keepalive(keepalive)
            .build()
    }

    fn current(&self) -> Option<ServerPool> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets a condition on the proxy from now on.
    fn set(&self, condition: Option<QuicFault>) {
        let faults = condition.map_or_else(Faults::none, |c| c.faults());
        if condition.is_some() {
            self.faults.fetch_add(1, Ordering::Relaxed);
        }
        self.proxy.set_faults(faults);
    }

    /// Does an event (a condition is set instead).
    async fn apply(&self, fault: QuicFault) {
        if fault.is_condition() {
            self.set(Some(fault));
            return;
        }
        if fault.is_disruptive() {
            self.disruptions.fetch_add(1, Ordering::Relaxed);
        }
        let done = match fault {
            QuicFault::Stall(d) => {
                self.proxy.blackhole(true);
                tokio::time::sleep(d).await;
                self.proxy.blackhole(false);
                true
            }
            QuicFault::Rebind => self.proxy.rebind().is_ok(),
            QuicFault::KillShard => {
                // A pair's client end names its connection.
                let t = Duration::from_secs(2);
                let Some(server) = self.current() else {
                    return;
                };
                match server.get_timeout(t).await {
                    Ok((id, _s)) => match self.client.get_timeout(id, t).await {
                        Ok(c) => {
                            c.connection().close(9u32.into(), b"shard killed");
                            true
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                }
            }
            QuicFault::ServerRestart => self.restart().await,
            _ => false,
        };
        if done {
            self.faults.fetch_add(1, Ordering::Relaxed);
            let kind = match fault {
                QuicFault::Stall(_) => 0,
                QuicFault::Rebind => 1,
                QuicFault::KillShard => 2,
                _ => 3,
            };
            self.events[kind].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the new server is up.
    async fn restart(&self) -> bool {
        let old = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(old) = old else { return false };
        old.close().await;
        drop(old);
        // The old endpoint lets go of the port as its task ends, a moment after the
        // close: bind again until it is free (bounded: 250 tries of 20 ms).
        for _ in 0..250 {
            match Self::server(&self.tls, &self.core, self.keepalive, self.addr) {
                Ok(s) => {
                    *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
                    return true;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        eprintln!("quic soak: the server's port did not come free; the server stays down");
        false
    }

    async fn close(&self) {
        self.client.close().await;
        if let Some(s) = self.current() {
            s.close().await;
        }
        self.proxy.close();
    }
}

/// Runs a QUIC soak on a runtime of its own (two worker threads) and reports: every
/// 500 ms a condition drawn from [`soak_conditions`] (or none) holds, and with
/// `cfg.fault_p` an event from [`soak_events`] happens.
pub fn run(cfg: &SoakConfig) -> SoakReport {
    measured(cfg.progress, true, || soak(cfg))
}

/// One cell of the fault matrix on the QUIC pools: `pairs` pairs checked end to end
/// (two workers, up to 16 KiB each way; more, up to eight times as many,
/// until a condition that acts by chance has acted) with `fault` set from the start if
/// it is a condition, or done twice (after a third and two thirds of the pairs) if it is an
/// event. Returns the report and what the proxy did to the datagrams.
pub fn run_case(fault: QuicFault, pairs: u64, seed: u64) -> (SoakReport, UdpStats) {
    case(fault, pairs, seed, true)
}

/// [`run_case`], counting the descriptors left open or not (a caller running cells
/// side by side counts them once for all).
pub(crate) fn case(
    fault: QuicFault,
    pairs: u64,
    seed: u64,
    count_fds: bool,
) -> (SoakReport, UdpStats) {
    let mut datagrams = UdpStats::default();
    let report = measured(false, count_fds, || async {
        let rig = Arc::new(Rig::new(seed, (16, 32), Duration::from_millis(300)).await);
        if fault.is_condition() {
            rig.set(Some(fault));
        }
        let tally = Arc::new(Tally::default());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let marks = if fault.is_condition() {
            Vec::new()
        } else {
            vec![pairs / 3, 2 * pairs / 3]
        };
        let mut handles = Vec::new();
        for w in 0..2u64 {
            let (rig, tally, marks) = (rig.clone(), tally.clone(), marks.clone());
            handles.push(tokio::spawn(async move {
                let mut rng = SplitMix64::new(seed ^ (w + 1).wrapping_mul(0x9e37_79b9));
                // Bounded by the count of pairs and by the deadline. Only pairs the
                // server handed out count: a restart under way costs none.
                while tokio::time::Instant::now() < deadline && {
                    let tried = tally.tried.load(Ordering::Relaxed);
                    tried < pairs
                        || (tried < pairs * CHANCE_ROUNDS && !acted(fault, &rig.proxy.stats()))
                } {
                    if one_pair(&rig, &tally, &mut rng, 16 * 1024).await {
                        let n = tally.tried.fetch_add(1, Ordering::Relaxed) + 1;
                        if marks.contains(&n) {
                            rig.apply(fault).await;
                        }
                    }
                }
            }));
        }
        let panics = join(handles, Duration::from_secs(90)).await;
        datagrams = rig.proxy.stats();
        let faults = rig.faults.load(Ordering::Relaxed);
        rig.close().await;
        tally.report(panics, faults)
    });
    (report, datagrams)
}

/// How many times a cell's count of pairs a condition that acts by chance (loss,
/// duplication, reorder) may run to act at least once: with 6,550-byte packets on
/// loopback a dozen pairs are about a hundred datagrams, which a 1 % loss misses
/// about a third of the time; eight times that misses one time in 20,000.
const CHANCE_ROUNDS: u64 = 8;

/// Whether the proxy has done `fault` to a datagram yet (always, for a fault that does
/// not act by chance).
fn acted(fault: QuicFault, s: &UdpStats) -> bool {
    match fault {
        QuicFault::Loss(_) => s.dropped > 0,
        QuicFault::Duplicate(_) => s.duplicated > 0,
        QuicFault::Reorder(_) => s.reordered > 0,
        _ => true,
    }
}

/// Waits for each worker (bounded): how many panicked or hung.
async fn join(handles: Vec<tokio::task::JoinHandle<()>>, bound: Duration) -> u64 {
    let mut bad = 0;
    for h in handles {
        match tokio::time::timeout(bound, h).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => bad += 1,
            Ok(Err(_)) => {}
            Err(_) => bad += 1,
        }
    }
    bad
}

async fn soak(cfg: &SoakConfig) -> SoakReport {
    // Above 128 streams the client spreads over several connections (shards).
    let rig = Arc::new(Rig::new(cfg.seed, (8, 300), Duration::from_secs(1)).await);
    let tally = Arc::new(Tally::default());
    let deadline = tokio::time::Instant::now() + cfg.duration;
    let mut handles = Vec::new();
    for w in 0..cfg.workers.max(1) {
        let (rig, tally) = (rig.clone(), tally.clone());
        let seed = cfg.seed.wrapping_mul(0x1000_0001).wrapping_add(w as u64);
        let (max, max_pairs) = (cfg.max_payload.max(1), cfg.max_pairs);
        handles.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(seed);
            // Bounded by the deadline and by the count of pairs.
            while tally.try_one(max_pairs).is_some() && tokio::time::Instant::now() < deadline {
                one_pair(&rig, &tally, &mut rng, max).await;
            }
        }));
    }
    // The fault schedule, in ticks of 500 ms until the deadline.
    let (conditions, events) = (soak_conditions(), soak_events());
    let mut rng = SplitMix64::new(cfg.seed ^ 0x51_0a4c);
    let start = Instant::now();
    let mut tick = 0u64;
    while tokio::time::Instant::now() < deadline && !handles.iter().all(|h| h.is_finished()) {
        let pick = rng.below(conditions.len() as u64 + 1) as usize;
        rig.set(conditions.get(pick).copied());
        if rng.chance(cfg.fault_p) {
            let e = events[rng.below(events.len() as u64) as usize];
            rig.apply(e).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        tick += 1;
        if cfg.progress && tick.is_multiple_of(2) {
            eprintln!(
                "[{:>4}s] quic pairs={} excused={} get_failures={} faults={} client_idle={} connections={} {:?}",
                start.elapsed().as_secs(),
                tally.pairs.load(Ordering::Relaxed),
                tally.excused.load(Ordering::Relaxed),
                tally.get_failures.load(Ordering::Relaxed),
                rig.faults.load(Ordering::Relaxed),
                rig.client.active(),
                rig.client.connections(),
                rig.proxy.stats(),
            );
        }
    }
    rig.set(None);
    let panics = join(handles, cfg.duration + Duration::from_secs(30)).await;
    if cfg.progress {
        eprintln!("quic server {:?}", rig.current().map(|s| s.counters()));
        eprintln!("quic client {:?}", rig.client.counters());
        eprintln!("quic proxy {:?}", rig.proxy.stats());
        let n = |i: usize| rig.events[i].load(Ordering::Relaxed);
        eprintln!(
            "quic events: stalls={} rebinds={} shards_killed={} restarts={}",
            n(0),
            n(1),
            n(2),
            n(3)
        );
    }
    let faults = rig.faults.load(Ordering::Relaxed);
    rig.close().await;
    tally.report(panics, faults)
}

/// Takes a pair (server `get`, then the client's `get` of its id), checks both ids,
/// random bytes each way and then each side's end of stream. Whether the server
/// handed out a stream.
async fn one_pair(rig: &Rig, tally: &Tally, rng: &mut SplitMix64, max: usize) -> bool {
    let t = Duration::from_secs(2);
    let before = rig.disruptions.load(Ordering::Relaxed);
    // The server pool is not kept past the get: a restart drops the old one.
    let got = match rig.current() {
        Some(server) => server.get_timeout(t).await,
        None => Err(GetError::Closed),
    };
    let (id, mut s) = match got {
        Ok(x) => x,
        Err(e) => {
            if !matches!(e, GetError::Closed) {
                tally.get_failures.fetch_add(1, Ordering::Relaxed);
            }
            // A restart under way: back off instead of spinning on the closed pool.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return false;
        }
    };
    let mut c = match rig.client.get_timeout(id, t).await {
        Ok(c) => c,
        Err(_) => {
            tally.get_failures.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    };
    if s.id() != id || c.id() != id {
        tally.mismatched.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    let (a, b) = payloads(rng, max);
    let (n1, n2) = (a.len(), b.len());
    let res = tokio::time::timeout(Duration::from_secs(10), async {
        transfer(&mut s, &mut c, &a)
            .await
            .map_err(|(missing, changed)| (missing + n2, changed))?;
        transfer(&mut c, &mut s, &b).await?;
        // Nothing after the bytes: each side finishes, the other reads the end.
        let _ = s.shutdown().await;
        let _ = c.shutdown().await;
        let mut extra = [0u8; 64];
        for end in [c.read(&mut extra).await, s.read(&mut extra).await] {
            match end {
                Ok(0) => {}
                Ok(_) => return Err((0, true)),
                // The end itself was lost: counted as one byte.
                Err(_) => return Err((1, false)),
            }
        }
        Ok(())
    })
    .await;
    let outcome = res.unwrap_or(Err((n1 + n2, false)));
    let cut = rig.disruptions.load(Ordering::Relaxed) != before
        && (s.connection().close_reason().is_some() || c.connection().close_reason().is_some());
    tally.outcome(outcome, cut);
    true
}
