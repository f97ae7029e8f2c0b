//! A loopback TCP proxy that injects faults, one scripted fault per connection.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and forwards every accepted
//! connection to a target. Each new connection asks the [`Script`] for one [`Fault`]
//! and keeps it for its whole life; [`FaultProxy::counts`] says how many connections got
//! which fault, and [`FaultProxy::fault_of`] which fault one given connection got (so a
//! test can excuse a failure that the proxy caused, and only that one).
//!
//! Each direction is a reader and a writer joined by a small queue of timestamped
//! chunks: latency delays every chunk by the same amount without serialising
//! throughput behind it (a chunk read while an earlier one waits is already queued),
//! and order is kept. Bandwidth is paced per direction against the ideal schedule
//! `bytes / rate`.
//!
//! Every loop of the proxy ends: the accept loop on [`close`](FaultProxy::close) (or
//! when the proxy is dropped), and every connection task is aborted at that moment
//! too; before that, a connection ends at end of stream or at the first error.
//!
//! ```no_run
//! # async fn f() -> std::io::Result<()> {
//! use pool_testkit::proxy::{Fault, FaultProxy, Script};
//! use std::time::Duration;
//! let target = "127.0.0.1:10101".parse().unwrap();
//! let proxy = FaultProxy::start(target, Script::always(Fault::Latency(Duration::from_millis(5)))).await?;
//! // Dial proxy.addr() instead of the target.
//! proxy.set_script(Script::random(7, 0.1, vec![Fault::ResetAfter(100), Fault::Blackhole]));
//! println!("{:?}", proxy.counts());
//! proxy.close().await;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::rng::SplitMix64;

/// What the proxy does to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward faithfully.
    Ok,
    /// Delay every chunk by this much, in each direction, keeping order.
    Latency(Duration),
    /// At most this many bytes per second in each direction.
    Bandwidth(u64),
    /// Connect to the target, then forward nothing for this long (ends early if the
    /// client closes meanwhile).
    Stall(Duration),
    /// Forward this many bytes (both directions together), then reset both sides
    /// (`SO_LINGER` 0, then close: an RST, not a FIN).
    ResetAfter(u64),
    /// Accept, read and discard everything, never connect to the target.
    Blackhole,
    /// Replace byte number `i` (`i < 8`) of the server-to-client stream by `b'z'`, a
    /// byte that is not lowercase hex: in plain mode that corrupts the connection id;
    /// in TLS mode it corrupts the server's first TLS record instead.
    CorruptId(usize),
    /// Forward only the first `k` bytes server to client (`k < 8`: a short id), then
    /// close both sides with a FIN.
    ShortId(usize),
}

/// The kind of a [`Fault`], without its parameter: what [`FaultCounts`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// [`Fault::Ok`].
    Ok,
    /// [`Fault::Latency`].
    Latency,
    /// [`Fault::Bandwidth`].
    Bandwidth,
    /// [`Fault::Stall`].
    Stall,
    /// [`Fault::ResetAfter`].
    Reset,
    /// [`Fault::Blackhole`].
    Blackhole,
    /// [`Fault::CorruptId`].
    CorruptId,
    /// [`Fault::ShortId`].
    ShortId,
}

impl Fault {
    /// The kind of this fault.
    pub fn kind(&self) -> FaultKind {
        match self {
            Self::Ok => FaultKind::Ok,
            Self::Latency(_) => FaultKind::Latency,
            Self::Bandwidth(_) => FaultKind::Bandwidth,
            Self::Stall(_) => FaultKind::Stall,
            Self::ResetAfter(_) => FaultKind::Reset,
            Self::Blackhole => FaultKind::Blackhole,
            Self::CorruptId(_) => FaultKind::CorruptId,
            Self::ShortId(_) => FaultKind::ShortId,
        }
    }

    /// Whether this fault can make a connection fail (latency, bandwidth and `Ok` only
    /// slow it down; a stall can outlast a deadline, so it counts as disruptive).
    pub fn is_disruptive(&self) -> bool {
        !matches!(self, Self::Ok | Self::Latency(_) | Self::Bandwidth(_))
    }
}

/// How many connections the proxy accepted, and which fault each got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Connections accepted while up (each got exactly one fault, `Ok` included).
    pub connections: u64,
    /// Connections closed at once because the proxy was [down](FaultProxy::set_down).
    pub refused_down: u64,
    /// Forwarded faithfully.
    pub ok: u64,
    /// Given latency.
    pub latency: u64,
    /// Given a bandwidth limit.
    pub bandwidth: u64,
    /// Stalled.
    pub stall: u64,
    /// Reset after some bytes.
    pub reset: u64,
    /// Blackholed.
    pub blackhole: u64,
    /// Given a corrupted id byte.
    pub corrupt_id: u64,
    /// Given a short id.
    pub short_id: u64,
}

impl FaultCounts {
    /// Connections that got any fault other than `Ok`.
    pub fn faulted(&self) -> u64 {
        self.connections - self.ok
    }

    /// The count of one kind.
    pub fn of(&self, kind: FaultKind) -> u64 {
        match kind {
            FaultKind::Ok => self.ok,
            FaultKind::Latency => self.latency,
            FaultKind::Bandwidth => self.bandwidth,
            FaultKind::Stall => self.stall,
            FaultKind::Reset => self.reset,
            FaultKind::Blackhole => self.blackhole,
            FaultKind::CorruptId => self.corrupt_id,
            FaultKind::ShortId => self.short_id,
        }
    }

    fn add(&mut self, kind: FaultKind) {
        self.connections += 1;
        let slot = match kind {
            FaultKind::Ok => &mut self.ok,
            FaultKind::Latency => &mut self.latency,
            FaultKind::Bandwidth => &mut self.bandwidth,
            FaultKind::Stall => &mut self.stall,
            FaultKind::Reset => &mut self.reset,
            FaultKind::Blackhole => &mut self.blackhole,
            FaultKind::CorruptId => &mut self.corrupt_id,
            FaultKind::ShortId => &mut self.short_id,
        };
        *slot += 1;
    }
}

/// Chooses the fault of each new connection.
#[derive(Clone, Debug)]
pub struct Script {
    inner: ScriptInner,
}

#[derive(Clone, Debug)]
enum ScriptInner {
    Always(Fault),
    Sequence(VecDeque<Fault>),
    Random {
        rng: SplitMix64,
        p: f64,
        faults: Vec<Fault>,
    },
}

impl Script {
    /// Every connection is forwarded faithfully.
    pub fn ok() -> Self {
        Self::always(Fault::Ok)
    }

    /// Every connection gets `fault`.
    pub fn always(fault: Fault) -> Self {
        Self {
            inner: ScriptInner::Always(fault),
        }
    }

    /// The n-th connection gets the n-th fault; once they are used up, `Ok`.
    pub fn sequence(faults: Vec<Fault>) -> Self {
        Self {
            inner: ScriptInner::Sequence(faults.into()),
        }
    }

    /// Each connection gets, with probability `p`, one of `faults` drawn uniformly, and
    /// `Ok` otherwise; the draws are fixed by `seed`.
    pub fn random(seed: u64, p: f64, faults: Vec<Fault>) -> Self {
        Self {
            inner: ScriptInner::Random {
                rng: SplitMix64::new(seed),
                p,
                faults,
            },
        }
    }

    /// The fault of the next connection.
    pub fn next_fault(&mut self) -> Fault {
        match &mut self.inner {
            ScriptInner::Always(f) => *f,
            ScriptInner::Sequence(q) => q.pop_front().unwrap_or(Fault::Ok),
            ScriptInner::Random { rng, p, faults } => {
                if faults.is_empty() || !rng.chance(*p) {
                    Fault::Ok
                } else {
                    faults[rng.below(faults.len() as u64) as usize]
                }
            }
        }
    }

    /// Whether a sequence script has used up its faults (always false for the others).
    pub fn is_spent(&self) -> bool {
        matches!(&self.inner, ScriptInner::Sequence(q) if q.is_empty())
    }
}

struct Shared {
    target: SocketAddr,
    script: Mutex<Script>,
    counts: Mutex<FaultCounts>,
    /// Faults by the client's local address (the proxy's peer).
    by_client: Mutex<HashMap<SocketAddr, Fault>>,
    /// Faults by the proxy's own local address towards the target. A map of its own:
    /// Linux gives one ephemeral port to connects towards different destinations, so
    /// a client's port and one of the proxy's can be equal (one shared map then
    /// answered, now and then, with another connection's fault).
    by_upstream: Mutex<HashMap<SocketAddr, Fault>>,
    down: AtomicBool,
    live: AtomicU64,
}

impl Shared {
    /// Notes the fault of a connection accepted from the client address `peer`.
    fn note_client(&self, peer: SocketAddr, fault: Fault) {
        lock(&self.by_client).insert(peer, fault);
    }

    /// Notes the fault of a connection whose leg to the target starts at `local`.
    fn note_upstream(&self, local: SocketAddr, fault: Fault) {
        lock(&self.by_upstream).insert(local, fault);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fault-injecting proxy. Dropping it stops it as [`close`](Self::close) does,
/// without waiting.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("target", &self.shared.target)
            .field("counts", &self.counts())
            .finish()
    }
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards to `target` under `script`. Call from
    /// inside a tokio runtime.
    pub async fn start(target: SocketAddr, script: Script) -> io::Result<Self> {
        let bind: SocketAddr = if target.is_ipv6() {
            "[::1]:0".parse().expect("literal address")
        } else {
            "127.0.0.1:0".parse().expect("literal address")
        };
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            script: Mutex::new(script),
            counts: Mutex::new(FaultCounts::default()),
            by_client: Mutex::new(HashMap::new()),
            by_upstream: Mutex::new(HashMap::new()),
            down: AtomicBool::new(false),
            live: AtomicU64::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));
        Ok(Self {
            addr,
            shared,
            stop,
            task: tokio::sync::Mutex::new(Some(task)),
        })
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Faults applied so far, by kind.
    pub fn counts(&self) -> FaultCounts {
        *lock(&self.shared.counts)
    }

    /// Connections being forwarded right now.
    pub fn live(&self) -> u64 {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Replaces the script; connections already open keep their fault.
    pub fn set_script(&self, script: Script) {
        *lock(&self.shared.script) = script;
    }

    /// Whether the current script is a used-up sequence.
    pub fn script_spent(&self) -> bool {
        lock(&self.shared.script).is_spent()
    }

    /// While down, every new connection is accepted and closed at once (the client sees
    /// its connect succeed and then an end of stream); open connections are kept.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::Release);
    }

    /// The fault given to the connection whose client end has the local address
    /// `addr` (the proxy's peer). The latest connection wins when a port was reused.
    pub fn fault_of(&self, addr: SocketAddr) -> Option<Fault> {
        lock(&self.shared.by_client).get(&addr).copied()
    }

    /// The fault given to the connection whose server end sees `addr` as its peer
    /// (the proxy's own local address towards the target). The latest connection wins
    /// when a port was reused.
    pub fn fault_of_upstream(&self, addr: SocketAddr) -> Option<Fault> {
        lock(&self.shared.by_upstream).get(&addr).copied()
    }

    /// Stops listening and aborts every connection task; returns when all have ended.
    /// Calling it again does nothing.
    pub async fn close(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().await.take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    let mut stop2 = stop.clone();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = listener.accept() => match r {
                Ok((down, peer)) => {
                    if shared.down.load(Ordering::Acquire) {
                        lock(&shared.counts).refused_down += 1;
                        drop(down);
                        continue;
                    }
                    let fault = lock(&shared.script).next_fault();
                    lock(&shared.counts).add(fault.kind());
                    shared.note_client(peer, fault);
                    conns.spawn(handle(down, peer, fault, shared.clone()));
                }
                Err(_) => {
                    // Out of descriptors and the like: do not spin.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                        _ = stopped(&mut stop2) => break,
                    }
                }
            }
        }
    }
    drop(listener);
    conns.shutdown().await;
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: stopped too.
    let _ = rx.wait_for(|v| *v).await;
}

struct LiveGuard(Arc<Shared>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

fn linger_zero(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

async fn handle(down: TcpStream, _peer: SocketAddr, fault: Fault, shared: Arc<Shared>) {
    shared.live.fetch_add(1, Ordering::AcqRel);
    let _guard = LiveGuard(shared.clone());
    let mut down = down;
    if fault == Fault::Blackhole {
        let mut buf = [0u8; 4096];
        // Ends at end of stream, at an error, or when the proxy aborts the task.
        while let Ok(n) = down.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        return;
    }
    let Ok(up) = TcpStream::connect(shared.target).await else {
        return;
    };
    if let Ok(local) = up.local_addr() {
        shared.note_upstream(local, fault);
    }
    let _ = down.set_nodelay(true);
    let _ = up.set_nodelay(true);
    if let Fault::ResetAfter(_) = fault {
        linger_zero(&down);
        linger_zero(&up);
    }
    if let Fault::Stall(d) = fault {
        if !stall(&down, d).await {
            return;
        }
    }
    let latency = match fault {
        Fault::Latency(d) => d,
        _ => Duration::ZERO,
    };
    let bandwidth = match fault {
        Fault::Bandwidth(b) => Some(b.max(1)),
        _ => None,
    };
    let budget = Arc::new(AtomicU64::new(match fault {
        Fault::ResetAfter(n) => n,
        _ => u64::MAX,
    }));
    let c2s_cfg = Dir {
        latency,
        bandwidth,
        corrupt: None,
        limit: None,
    };
    let s2c_cfg = Dir {
        latency,
        bandwidth,
        corrupt: match fault {
            Fault::CorruptId(i) => Some(i as u64),
            _ => None,
        },
        limit: match fault {
            Fault::ShortId(k) => Some(k as u64),
            _ => None,
        },
    };
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    let c2s = pump(dr, uw, c2s_cfg, budget.clone());
    let s2c = pump(ur, dw, s2c_cfg, budget);
    tokio::pin!(c2s);
    tokio::pin!(s2c);
    let (mut c2s_done, mut s2c_done) = (false, false);
    // At most two iterations: each arm is taken once.
    while !(c2s_done && s2c_done) {
        let end = tokio::select! {
            e = &mut c2s, if !c2s_done => { c2s_done = true; e }
            e = &mut s2c, if !s2c_done => { s2c_done = true; e }
        };
        if end == End::Abort {
            // Dropping both halves of both sockets closes them (RST under linger 0).
            return;
        }
    }
}

/// Waits `d`, or less if the client closes first: whether the client is still there.
async fn stall(down: &TcpStream, d: Duration) -> bool {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    let mut watch = true;
    let mut b = [0u8; 1];
    // At most two iterations: once data is seen, only the sleep is left.
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            r = down.peek(&mut b), if watch => match r {
                Ok(0) | Err(_) => return false,
                Ok(_) => watch = false,
            },
        }
    }
}

#[derive(Clone, Copy)]
struct Dir {
    latency: Duration,
    bandwidth: Option<u64>,
    corrupt: Option<u64>,
    limit: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Eof,
    Abort,
}

enum Chunk {
    Data(Vec<u8>),
    Eof,
    Abort,
}

/// Takes up to `want` bytes from the shared reset budget.
fn take_budget(budget: &AtomicU64, want: u64) -> u64 {
    let mut cur = budget.load(Ordering::Acquire);
    loop {
        let take = cur.min(want);
        match budget.compare_exchange_weak(cur, cur - take, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return take,
            Err(now) => cur = now,
        }
    }
}

async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    cfg: Dir,
    budget: Arc<AtomicU64>,
) -> End {
    let (tx, mut rx) = mpsc::channel::<(Instant, Chunk)>(64);
    let reader = async move {
        let mut offset = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) => {
                    let _ = tx.send((Instant::now() + cfg.latency, Chunk::Eof)).await;
                    return;
                }
                Ok(n) => n,
                Err(_) => {
                    let _ = tx.send((Instant::now(), Chunk::Abort)).await;
                    return;
                }
            };
            let mut data = buf[..n].to_vec();
            if let Some(i) = cfg.corrupt {
                if i >= offset && i < offset + n as u64 {
                    data[(i - offset) as usize] = b'z';
                }
            }
            let mut end = false;
            if let Some(k) = cfg.limit {
                let left = k.saturating_sub(offset);
                if n as u64 >= left {
                    data.truncate(left as usize);
                    end = true;
                }
            }
            let granted = take_budget(&budget, data.len() as u64);
            if granted < data.len() as u64 {
                data.truncate(granted as usize);
                end = true;
            }
            offset += n as u64;
            let due = Instant::now() + cfg.latency;
            if !data.is_empty() && tx.send((due, Chunk::Data(data))).await.is_err() {
                return;
            }
            if end {
                let _ = tx.send((due, Chunk::Abort)).await;
                return;
            }
        }
    };
    let writer = async move {
        let start = Instant::now();
        let mut sent = 0u64;
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            match chunk {
                Chunk::Data(d) => {
                    if w.write_all(&d).await.is_err() {
                        return End::Abort;
                    }
                    sent += d.len() as u64;
                    if let Some(bps) = cfg.bandwidth {
                        let ideal = Duration::from_secs_f64(sent as f64 / bps as f64);
                        tokio::time::sleep_until(start + ideal).await;
                    }
                }
                Chunk::Eof => {
                    let _ = w.shutdown().await;
                    return End::Eof;
                }
                Chunk::Abort => return End::Abort,
            }
        }
        End::Abort
    };
    tokio::pin!(reader);
    tokio::pin!(writer);
    let mut reader_done = false;
    // At most two iterations: the reader ends once, then only the writer is left.
    loop {
        tokio::select! {
            _ = &mut reader, if !reader_done => reader_done = true,
            e = &mut writer => return e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux hands one ephemeral port to connects towards different destinations, so
    /// a client's address can equal one the proxy uses towards the target: each is
    /// still told its own connection's fault. (The kernel picks those ports, so the
    /// test writes the two records itself, as the accept and the connect do.)
    #[tokio::test]
    async fn a_client_address_equal_to_an_upstream_address_keeps_its_fault() {
        let proxy = FaultProxy::start("127.0.0.1:9".parse().unwrap(), Script::ok())
            .await
            .unwrap();
        let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        proxy.shared.note_client(a, Fault::ResetAfter(100));
        proxy.shared.note_upstream(a, Fault::Ok);
        assert_eq!(proxy.fault_of(a), Some(Fault::ResetAfter(100)));
        assert_eq!(proxy.fault_of_upstream(a), Some(Fault::Ok));
        proxy.close().await;
    }
}
