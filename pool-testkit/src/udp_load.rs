//! A DNS-like UDP service and its users, for tests and benchmarks: a request is a
//! 2-byte id and a name, the answer the id, the name and a 16-byte record computed
//! from the name, so that every answer can be checked byte for byte.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};

/// The record the service answers for `name` (FNV-1a, twice): not a secret, a check.
fn record(name: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (half, seed) in [(0, 0xcbf2_9ce4_8422_2325u64), (8, 0x8422_2325_cbf2_9ce4)] {
        let mut h = seed;
        for &b in name {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out[half..half + 8].copy_from_slice(&h.to_be_bytes());
    }
    out
}

/// The request for `name` under `id`.
pub fn request(id: u16, name: &[u8]) -> Vec<u8> {
    [&id.to_be_bytes()[..], name].concat()
}

/// The service's answer to `request` (`None`: too short to be one).
pub fn answer(request: &[u8]) -> Option<Vec<u8>> {
    let name = request.get(2..)?;
    Some([request, &record(name)].concat())
}

/// A running service: its address, how many requests it answered, its task.
pub struct Service {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered.
    pub answered: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the service on `bind` (loopback in tests); it runs until dropped.
pub async fn service(bind: SocketAddr) -> std::io::Result<Service> {
    let sock = UdpSocket::bind(bind).await?;
    let addr = sock.local_addr()?;
    let answered = Arc::new(AtomicU64::new(0));
    let count = answered.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        // Ends when dropped (the task is aborted) or the socket fails.
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if let Some(a) = answer(&buf[..n]) {
                if sock.send_to(&a, from).await.is_ok() {
                    count.fetch_add(1, Relaxed);
                }
            }
        }
    });
    Ok(Service {
        addr,
        answered,
        task,
    })
}

/// Sends the request for `name` under `id` on `sock` (connected to the service, or to
/// a tunnel in front of it) and waits for its answer until `within` passes: the round
/// trip, or why not (a wrong answer, none in time). Answers to other ids are skipped.
pub async fn query(
    sock: &UdpSocket,
    id: u16,
    name: &[u8],
    within: Duration,
) -> Result<Duration, String> {
    let req = request(id, name);
    let want = answer(&req).expect("a request");
    let start = Instant::now();
    sock.send(&req).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = vec![0u8; 2048];
    loop {
        let n = match timeout_at(start + within, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("receive: {e}")),
            Err(_) => return Err(format!("no answer to {id} within {within:?}")),
        };
        if buf.get(..2) != Some(&id.to_be_bytes()[..]) {
            continue;
        }
        if buf[..n] != want[..] {
            return Err(format!("a wrong answer to {id}: {} bytes", n));
        }
        return Ok(start.elapsed());
    }
}

/// What [`paced`] measured.
#[derive(Clone, Debug, Default)]
pub struct PacedReport {
    /// Requests sent.
    pub sent: u64,
    /// Right answers received by the end.
    pub answered: u64,
    /// Answers that did not match their request.
    pub wrong: u64,
    /// Round trips of the answered requests, sorted.
    pub rtts: Vec<Duration>,
}

impl PacedReport {
    /// The share of requests not answered.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.answered as f64 / self.sent as f64
    }

    /// The `q` quantile of the round trips, in ms (0 with none).
    pub fn rtt_ms(&self, q: f64) -> f64 {
        if self.rtts.is_empty() {
            return 0.0;
        }
        let i = ((self.rtts.len() - 1) as f64 * q).round() as usize;
        self.rtts[i].as_secs_f64() * 1e3
    }
}

/// Sends `total` requests to `to` at `per_s` a second, round robin over `users`
/// sockets on 127.0.0.1, each answered request timed; then waits `grace` for late
/// answers. Bounded: `total` requests, and `total / per_s + grace` of time.
pub async fn paced(
    to: SocketAddr,
    users: usize,
    per_s: u32,
    total: u64,
    grace: Duration,
) -> std::io::Result<PacedReport> {
    let mut socks = Vec::new();
    for _ in 0..users.max(1) {
        let s = UdpSocket::bind("127.0.0.1:0").await?;
        s.connect(to).await?;
        socks.push(Arc::new(s));
    }
    let period = Duration::from_secs_f64(1.0 / f64::from(per_s.max(1)));
    let start = Instant::now();
    let end = start + period * u32::try_from(total).unwrap_or(u32::MAX) + grace;
    let mut readers = Vec::new();
    let sent_at: Vec<Arc<std::sync::Mutex<HashMap<u16, Instant>>>> =
        socks.iter().map(|_| Arc::default()).collect();
    for (s, pending) in socks.iter().zip(&sent_at) {
        let (s, pending) = (s.clone(), pending.clone());
        readers.push(tokio::spawn(async move {
            let mut r = PacedReport::default();
            let mut buf = vec![0u8; 2048];
            while let Ok(Ok(n)) = timeout_at(end, s.recv(&mut buf)).await {
                let Some(id) = buf.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
                    continue;
                };
                let Some(at) = pending.lock().unwrap().remove(&id) else {
                    continue;
                };
                if answer(&request(id, &name(id))).as_deref() == Some(&buf[..n]) {
                    r.answered += 1;
                    r.rtts.push(at.elapsed());
                } else {
                    r.wrong += 1;
                }
            }
            r
        }));
    }
    let mut report = PacedReport::default();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        tick.tick().await;
        let u = (i % socks.len() as u64) as usize;
        // Ids wrap per user at 65,536 requests in flight: more than any run sends.
        let id = (i / socks.len() as u64) as u16;
        sent_at[u].lock().unwrap().insert(id, Instant::now());
        if socks[u].send(&request(id, &name(id))).await.is_ok() {
            report.sent += 1;
        }
    }
    for r in readers {
        let r = r.await.unwrap_or_default();
        report.answered += r.answered;
        report.wrong += r.wrong;
        report.rtts.extend(r.rtts);
    }
    report.rtts.sort();
    Ok(report)
}

/// The name [`paced`] asks under `id`.
fn name(id: u16) -> Vec<u8> {
    format!("host-{id}.example.test").into_bytes()
}
