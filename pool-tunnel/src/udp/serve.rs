//! The server side of a UDP service: the public socket, the table of associations, and
//! one task per association relaying between the socket and its stream.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::warn;

use super::{
    encode, Activity, Deframer, Dropped, UdpEnd, UdpLimits, UdpStats, BATCH, FRAME_HEADER,
};
use crate::limits::Backoff;
use crate::sources::{Refused, SessionId, Source, SourceLimits};

/// Datagrams waiting for one association's stream, at most, whatever their size (the
/// bytes are bounded by [`UdpLimits::queue`]).
const CHANNEL: usize = 256;
/// Bytes read from a stream at once.
const READ: usize = 4096;
/// The room an [`Outgoing`] keeps between batches, at most.
const KEEP: usize = 16 * 1024;

struct Entry {
    id: SessionId,
    tx: mpsc::Sender<Vec<u8>>,
    /// Bytes in `tx` not taken yet (frames counted whole).
    queued: Arc<AtomicU64>,
    activity: Arc<Activity>,
    task: AbortHandle,
    /// Ends (its sender dropped) when the association's task has ended: a newcomer
    /// that evicted it opens its stream only then, so that streams never outnumber
    /// the cap.
    gone: oneshot::Receiver<()>,
}

struct Table {
    limits: SourceLimits,
    by_addr: HashMap<SocketAddr, Entry>,
    by_id: HashMap<SessionId, SocketAddr>,
}

fn lock(t: &Mutex<Table>) -> MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An association's place in the table, given back however its task ends.
struct Slot {
    table: Arc<Mutex<Table>>,
    stats: Arc<UdpStats>,
    source: Source,
    id: SessionId,
    addr: SocketAddr,
    queued: Arc<AtomicU64>,
    /// Whether the association counts in `active` (from when its stream may open).
    counted: bool,
    _gone: oneshot::Sender<()>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        t.limits.release(self.source, self.id);
        t.by_id.remove(&self.id);
        if t.by_addr.get(&self.addr).is_some_and(|e| e.id == self.id) {
            t.by_addr.remove(&self.addr);
        }
        // Under the lock: nothing is queued for this association any more.
        self.stats
            .queued
            .fetch_sub(self.queued.swap(0, Relaxed), Relaxed);
        if self.counted {
            self.stats.ended();
        }
    }
}

/// Serves a UDP service on `socket` until `stop` turns true (or its sender is gone):
/// each new user address becomes an association, for which `open` is called with the
/// address and the first datagram as a frame ([`encode`]) and answers the stream that
/// carries it (`None`: it could not; the association ends, counted in `open_failed`).
/// At the stop every association ends with it (their streams close). Datagrams of a known address go to its
/// stream; frames read from the stream go back to the address. Bounded by `limits`
/// (see the [module](super)); counted in `stats`.
pub async fn serve<F, Fut, S>(
    socket: Arc<UdpSocket>,
    open: F,
    limits: UdpLimits,
    stats: Arc<UdpStats>,
    mut stop: watch::Receiver<bool>,
) where
    F: Fn(SocketAddr, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let open = Arc::new(open);
    let table = Arc::new(Mutex::new(Table {
        limits: SourceLimits::new(
            limits.max_associations,
            limits.per_source,
            f64::from(limits.new_per_source_per_s),
        ),
        by_addr: HashMap::new(),
        by_id: HashMap::new(),
    }));
    let mut tasks = JoinSet::new();
    let mut backoff = Backoff::default();
    // One more byte than the longest datagram carried: a longer one is seen as such.
    let mut buf = vec![0u8; limits.max_datagram + 1];
    loop {
        while tasks.try_join_next().is_some() {}
        let got = tokio::select! {
            got = socket.recv_from(&mut buf) => got,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (n, peer) = match got {
            Ok(got) => {
                backoff.succeeded();
                got
            }
            Err(e) => {
                let pause = backoff.failed();
                warn!("udp: receive: {e}; pausing {pause:?}");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if n > limits.max_datagram {
            stats.drop_one(Dropped::TooLong);
            continue;
        }
        let datagram = &buf[..n];
        let mut guard = lock(&table);
        let t = &mut *guard;
        if let Some(e) = t.by_addr.get(&peer) {
            enqueue(e, datagram, &limits, &stats);
            continue;
        }
        // A new address: the cap and the shares of `crate::sources`, quiet ones first.
        let now = Instant::now();
        let (by_addr, by_id) = (&t.by_addr, &t.by_id);
        let is_quiet = |id| {
            by_id
                .get(&id)
                .and_then(|a| by_addr.get(a))
                .is_some_and(|e| e.activity.quiet_for(now) >= limits.quiet)
        };
        let admitted = match t.limits.admit_quiet(peer.ip(), now.into_std(), is_quiet) {
            Ok(a) => a,
            Err(Refused::Full) => {
                stats.refused.fetch_add(1, Relaxed);
                continue;
            }
            Err(_) => {
                stats.refused_source.fetch_add(1, Relaxed);
                continue;
            }
        };
        let mut evicted = None;
        if let Some(victim) = admitted.evict {
            if let Some(e) = t.by_id.remove(&victim).and_then(|a| t.by_addr.remove(&a)) {
                e.task.abort();
                evicted = Some(e.gone);
                stats.evicted.fetch_add(1, Relaxed);
            }
        }
        let mut first = Vec::with_capacity(FRAME_HEADER + n);
        encode(&mut first, datagram);
        stats.datagrams_up.fetch_add(1, Relaxed);
        stats.bytes_up.fetch_add(n as u64, Relaxed);
        let (tx, rx) = mpsc::channel(CHANNEL);
        let queued = Arc::new(AtomicU64::new(0));
        let activity = Arc::new(Activity::new());
        let (gone_tx, gone) = oneshot::channel();
        let slot = Slot {
            table: table.clone(),
            stats: stats.clone(),
            source: admitted.source,
            id: admitted.id,
            addr: peer,
            queued: queued.clone(),
            counted: false,
            _gone: gone_tx,
        };
        let a = Association {
            socket: socket.clone(),
            peer,
            limits,
            stats: stats.clone(),
            activity: activity.clone(),
            queued: queued.clone(),
        };
        let open = open.clone();
        // Spawned under the lock: the slot cannot be given back before its entry is in.
        let task = tasks.spawn(async move {
            let mut slot = slot;
            if let Some(evicted) = evicted {
                let _ = evicted.await;
            }
            a.stats.started();
            slot.counted = true;
            let Some(stream) = open(peer, first).await else {
                a.stats.open_failed.fetch_add(1, Relaxed);
                return;
            };
            let end = a.relay(stream, rx).await;
            let counter = match end {
                UdpEnd::Idle => &a.stats.idle_closed,
                UdpEnd::BadFrame => &a.stats.bad_frames,
                UdpEnd::Closed | UdpEnd::Error => return,
            };
            counter.fetch_add(1, Relaxed);
        });
        t.by_id.insert(admitted.id, peer);
        t.by_addr.insert(
            peer,
            Entry {
                id: admitted.id,
                tx,
                queued,
                activity,
                task,
                gone,
            },
        );
    }
}

/// Queues a known address's datagram for its stream, or drops it (counted) when its
/// queue or the total is full.
fn enqueue(e: &Entry, datagram: &[u8], limits: &UdpLimits, stats: &UdpStats) {
    let cost = (FRAME_HEADER + datagram.len()) as u64;
    let mine = e.queued.load(Relaxed);
    let all = stats.queued.load(Relaxed);
    if mine + cost > limits.queue as u64 || all + cost > limits.queue_total as u64 {
        stats.drop_one(Dropped::Full);
        return;
    }
    // Counted before it is sent: the task takes it off when it reads it.
    e.queued.fetch_add(cost, Relaxed);
    let now = stats.queued.fetch_add(cost, Relaxed) + cost;
    stats.queued_peak.fetch_max(now, Relaxed);
    if e.tx.try_send(datagram.to_vec()).is_err() {
        e.queued.fetch_sub(cost, Relaxed);
        stats.queued.fetch_sub(cost, Relaxed);
        stats.drop_one(Dropped::Full);
        return;
    }
    e.activity.moved();
}

/// What one association's task needs besides its stream.
struct Association {
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    limits: UdpLimits,
    stats: Arc<UdpStats>,
    activity: Arc<Activity>,
    queued: Arc<AtomicU64>,
}

impl Association {
    /// Relays until the idle timeout, the stream's end or a bad frame: queued datagrams
    /// go to the stream as frames, frames from the stream to the user's address.
    async fn relay<S>(&self, stream: S, mut rx: mpsc::Receiver<Vec<u8>>) -> UdpEnd
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut out = Outgoing::default();
        let mut rbuf = vec![0u8; READ];
        let mut de = Deframer::new(self.limits.max_datagram);
        loop {
            let deadline = self.activity.idle_deadline(self.limits.idle);
            tokio::select! {
                d = rx.recv(), if out.is_empty() => {
                    let Some(d) = d else { return UdpEnd::Error };
                    self.take(&mut out.buf, &d);
                    while out.buf.len() < BATCH {
                        match rx.try_recv() {
                            Ok(d) => self.take(&mut out.buf, &d),
                            Err(_) => break,
                        }
                    }
                },
                w = out.write_to(&mut wr), if !out.is_empty() => if w.is_err() {
                    return UdpEnd::Error;
                },
                r = rd.read(&mut rbuf) => match r {
                    Ok(0) => return UdpEnd::Closed,
                    Ok(n) => {
                        de.push(&rbuf[..n]);
                        loop {
                            match de.next_frame() {
                                Ok(Some(f)) => {
                                    let len = f.len() as u64;
                                    if self.socket.send_to(f, self.peer).await.is_ok() {
                                        self.stats.datagrams_down.fetch_add(1, Relaxed);
                                        self.stats.bytes_down.fetch_add(len, Relaxed);
                                    } else {
                                        self.stats.drop_one(Dropped::SendFailed);
                                    }
                                    self.activity.moved();
                                }
                                Ok(None) => break,
                                Err(_) => return UdpEnd::BadFrame,
                            }
                        }
                    }
                    Err(_) => return UdpEnd::Error,
                },
                () = tokio::time::sleep_until(deadline) => {
                    if self.activity.quiet_for(Instant::now()) >= self.limits.idle {
                        return UdpEnd::Idle;
                    }
                }
            }
        }
    }

    /// Takes a queued datagram off the counts and frames it into `out`.
    fn take(&self, out: &mut Vec<u8>, d: &[u8]) {
        let cost = (FRAME_HEADER + d.len()) as u64;
        self.queued.fetch_sub(cost, Relaxed);
        self.stats.queued.fetch_sub(cost, Relaxed);
        self.stats.datagrams_up.fetch_add(1, Relaxed);
        self.stats.bytes_up.fetch_add(d.len() as u64, Relaxed);
        encode(out, d);
    }
}

/// Frames on their way to a stream: written, then flushed (a TLS stream holds a record
/// until then), then cleared for the next batch.
#[derive(Default)]
pub(super) struct Outgoing {
    pub(super) buf: Vec<u8>,
    written: usize,
    flushing: bool,
}

impl Outgoing {
    /// Nothing to write or flush: the next batch may be gathered.
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_empty() && !self.flushing
    }

    /// Writes some of what is pending, or flushes once it all went. Cancel-safe: a
    /// `write` dropped wrote nothing, and a flush may be repeated.
    pub(super) async fn write_to<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
    ) -> std::io::Result<()> {
        if self.written < self.buf.len() {
            let n = w.write(&self.buf[self.written..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.written += n;
            if self.written == self.buf.len() {
                self.flushing = true;
            }
            return Ok(());
        }
        w.flush().await?;
        self.flushing = false;
        self.written = 0;
        self.buf.clear();
        // An idle association keeps no large buffer.
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        }
        Ok(())
    }
}
