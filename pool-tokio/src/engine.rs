//! The driver loop both pools share, written once over a small trait.
//!
//! As quinn's `ConnectionDriver`: take the lock, feed inputs, drain the outputs, let go
//! of the lock, perform the outputs, arm one timer. The machine decides everything; the
//! engine only performs:
//! - answers to waiting gets go out through their reply channels (a get that went away
//!   gives its connection back, never losing it);
//! - connections the core wants closed are dropped after the lock is released;
//! - the role's own work (the client's dials) is started;
//! - liveness probes run with no lock held: a get's candidate is probed by the get
//!   itself, sweep batches by the driver task.

use std::collections::HashMap;
use std::ops::DerefMut;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use pool_core::{ConnId, GetError, Got, PoolCommon, Probe, Stage, Status, WaiterKey, Want};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::PoolConn;
use crate::error::{Cause, Failure};
use crate::rt::now;
use crate::stats::Stats;

type Delivery = Result<(ConnId, PoolConn), GetError>;

/// What differs between the client and the server machine, as the engine sees it.
///
/// Public only so that [`PoolHandle`] can name it; it lives in a private module, so
/// nobody outside can implement or call it (a sealed trait).
#[allow(unreachable_pub)]
pub trait Machine: DerefMut<Target = PoolCommon<PoolConn>> + Send + 'static {
    /// Work to start after any input: the client's dial tickets.
    type Work: Send;
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&mut self) -> Option<Instant>;
    fn put_back(&mut self, id: ConnId, conn: PoolConn, now: Instant);
    fn poll_work(&mut self, now: Instant) -> Self::Work;
    fn status(&self) -> Status;
    fn close(&mut self) -> Vec<(ConnId, PoolConn)>;
    fn is_client(&self) -> bool;
    /// Whether an idle connection may be handed out; never loses a byte.
    fn alive(conn: &mut PoolConn) -> bool {
        conn.liveness().is_alive()
    }
}

/// A pool's engine plus how its role starts work.
pub(crate) trait Side: Send + Sync + 'static {
    type M: Machine;
    fn engine(&self) -> &Engine<Self::M>;
    fn start(self: &Arc<Self>, work: <Self::M as Machine>::Work);
}

/// The machine behind its lock, the reply channels of waiting gets, the driver's wake-up,
/// and the pool's tasks.
pub(crate) struct Engine<M> {
    state: Mutex<State<M>>,
    pub(crate) wake: Notify,
    pub(crate) tasks: TaskTracker,
    pub(crate) cancel: CancellationToken,
    name: Box<str>,
    waits: WaitTotals,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::Publisher,
}

/// The time spent by gets that had to wait, kept with two relaxed atomics beside the
/// lock rather than under it: a get adds to them once, as it ends, and never takes the
/// lock again for it.
#[derive(Default)]
struct WaitTotals {
    nanos: AtomicU64,
    count: AtomicU64,
}

impl WaitTotals {
    fn add(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

struct State<M> {
    m: M,
    replies: HashMap<WaiterKey, oneshot::Sender<Delivery>>,
    log: FailureLog,
}

/// The last background failure and the run it belongs to.
#[derive(Default)]
pub(crate) struct FailureLog {
    last: Option<Failure>,
    in_a_row: u64,
}

impl FailureLog {
    /// A dial or handshake failed.
    pub(crate) fn fail(
        &mut self,
        stage: Stage,
        cause: Cause,
        peer: Option<SocketAddr>,
        client: bool,
    ) {
        self.in_a_row += 1;
        self.last = Some(Failure {
            stage,
            cause,
            peer,
            in_a_row: self.in_a_row,
            at: now(),
            client,
        });
    }

    /// A dial or handshake succeeded: the run of failures is over.
    pub(crate) fn succeed(&mut self) {
        self.in_a_row = 0;
    }

    /// The failure of the run under way, if one is.
    fn failing(&self) -> Option<Failure> {
        (self.in_a_row > 0).then(|| self.last.clone()).flatten()
    }

    /// The failure of the run under way, or else the last one if it happened at or
    /// after `since` (failures mixed with successes, as strangers among clients).
    fn failing_since(&self, since: Instant) -> Option<Failure> {
        self.failing()
            .or_else(|| self.last.clone().filter(|f| f.at >= since))
    }
}

/// What to perform once the lock is released.
pub(crate) struct Out<W> {
    work: W,
    close: Vec<(ConnId, PoolConn)>,
    probe: Option<Probe<PoolConn>>,
    sends: Sends,
}

/// Answers to send to waiting gets: sending wakes a task, which is kept out of the lock.
type Sends = Vec<(oneshot::Sender<Delivery>, Delivery)>;

impl<M: Machine> State<M> {
    /// Drains the machine after an input. Sweep batches only for the driver task: a get
    /// never pays for a sweep.
    fn outputs(&mut self, now: Instant, sweep: bool) -> Out<M::Work> {
        let sends = self.deliver(now);
        let work = self.m.poll_work(now);
        let probe = if sweep { self.m.poll_probe(now) } else { None };
        let close = self.closes();
        Out {
            work,
            close,
            probe,
            sends,
        }
    }

    fn closes(&mut self) -> Vec<(ConnId, PoolConn)> {
        std::iter::from_fn(|| self.m.poll_close()).collect()
    }

    /// Pairs every answer with its get's reply channel, to be sent after the lock is
    /// released. An answer whose get went away gives its connection back to the pool.
    fn deliver(&mut self, now: Instant) -> Sends {
        let mut sends = Vec::new();
        while let Some(a) = self.m.poll_answer() {
            match self.replies.remove(&a.key) {
                Some(tx) => sends.push((tx, a.result)),
                None => {
                    if let Ok((id, conn)) = a.result {
                        self.m.put_back(id, conn, now);
                    }
                }
            }
        }
        sends
    }
}

impl<M: Machine> Engine<M> {
    /// Sends answers with no lock held. A get that went away between the answer and
    /// the send gives its connection back (which may answer another get: repeat).
    fn send_all(&self, mut sends: Sends) -> Vec<(ConnId, PoolConn)> {
        let mut close = Vec::new();
        while !sends.is_empty() {
            let back: Vec<_> = sends
                .drain(..)
                .filter_map(|(tx, d)| tx.send(d).err().and_then(Result::ok))
                .collect();
            if back.is_empty() {
                break;
            }
            let now = now();
            let mut st = self.lock();
            for (id, conn) in back {
                st.m.put_back(id, conn, now);
            }
            sends = st.deliver(now);
            close.extend(st.closes());
        }
        close
    }
}

impl<M: Machine> Engine<M> {
    pub(crate) fn new(m: M, name: &str) -> Self {
        #[cfg(feature = "metrics")]
        let metrics = crate::metrics::Publisher::new(m.is_client(), name);
        Self {
            state: Mutex::new(State {
                m,
                replies: HashMap::new(),
                log: FailureLog::default(),
            }),
            wake: Notify::new(),
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            name: name.into(),
            waits: WaitTotals::default(),
            #[cfg(feature = "metrics")]
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // Every critical section is short and calls no user code; the state stays
        // consistent even if a thread panicked elsewhere while holding it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `input` on the machine under the lock and drains its outputs (no sweep).
    /// When the input moved the machine's next deadline closer (a settle time, the end
    /// of a backoff), the driver is woken to re-arm its timer; a later deadline it finds
    /// when it wakes anyway, so most inputs cost no task switch.
    pub(crate) fn with<R>(&self, input: impl FnOnce(&mut M, Instant) -> R) -> (R, Out<M::Work>) {
        self.with_log(|m, _, now| input(m, now))
    }

    /// [`with`](Self::with), with the failure log at hand.
    pub(crate) fn with_log<R>(
        &self,
        input: impl FnOnce(&mut M, &mut FailureLog, Instant) -> R,
    ) -> (R, Out<M::Work>) {
        let now = now();
        let mut st = self.lock();
        let before = st.m.poll_timeout();
        let st = &mut *st;
        let r = input(&mut st.m, &mut st.log, now);
        let after = st.m.poll_timeout();
        let out = st.outputs(now, false);
        if after.is_some_and(|a| before.is_none_or(|b| a < b)) {
            self.wake.notify_one();
        }
        (r, out)
    }

    /// An input that makes no output (drawing an id), under the lock.
    pub(crate) fn draw<R>(&self, f: impl FnOnce(&mut M) -> R) -> R {
        f(&mut self.lock().m)
    }

    /// A read of the machine under the lock.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&M) -> R) -> R {
        f(&self.lock().m)
    }

    pub(crate) fn stats(&self) -> Stats {
        let st = self.lock();
        Stats {
            status: st.m.status(),
            counters: st.m.counters(),
            last_failure: st.log.last.clone(),
            get_wait: Duration::from_nanos(self.waits.nanos.load(Relaxed)),
            gets_waited: self.waits.count.load(Relaxed),
            client: st.m.is_client(),
        }
    }

    /// The run of failures under way, if any.
    pub(crate) fn failing(&self) -> Option<Failure> {
        self.lock().log.failing()
    }

    /// See [`FailureLog::failing_since`].
    pub(crate) fn failing_since(&self, since: Instant) -> Option<Failure> {
        self.lock().log.failing_since(since)
    }

    /// Closes the machine: waiting gets are answered `Closed`, every task is told to
    /// stop, and the connections come back to be dropped by the caller.
    pub(crate) fn shut(&self) -> Vec<(ConnId, PoolConn)> {
        self.cancel.cancel();
        self.tasks.close();
        let mut st = self.lock();
        let mut conns = Machine::close(&mut st.m);
        let now = now();
        let sends = st.deliver(now);
        let replies: Vec<_> = st.replies.drain().map(|(_, tx)| tx).collect();
        conns.extend(st.closes());
        drop(st);
        // A closed machine answers only `Closed`: nothing can come back to put away.
        conns.extend(self.send_all(sends));
        for tx in replies {
            let _ = tx.send(Err(GetError::Closed));
        }
        conns
    }
}

/// Performs what the machine asked for, outside the lock. Sweep batches are probed
/// here and handed back, batch after batch, until the sweep is done.
pub(crate) fn perform<S: Side>(side: &Arc<S>, mut out: Out<<S::M as Machine>::Work>) {
    loop {
        drop(out.close);
        drop(side.engine().send_all(out.sends));
        side.start(out.work);
        let Some(mut probe) = out.probe else { return };
        probe.check(<S::M as Machine>::alive);
        let now = now();
        let mut st = side.engine().lock();
        st.m.handle_probe(probe, now);
        out = st.outputs(now, true);
    }
}

/// The driver task: wakes at the machine's next deadline, or when poked.
pub(crate) async fn drive<S: Side>(side: Arc<S>) {
    let engine = side.engine();
    let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
    let mut armed: Option<Instant> = None;
    loop {
        let (out, wake_at, reading) = {
            let now = now();
            let mut st = engine.lock();
            if st.m.is_closed() {
                return;
            }
            st.m.handle_timeout(now);
            // Before the outputs: a sweep batch out for probing is not in the idle
            // count, and the gauge should not dip at every sweep.
            let reading = Reading::take(&st.m);
            let out = st.outputs(now, true);
            (out, st.m.poll_timeout(), reading)
        };
        reading.publish(engine);
        perform(&side, out);
        // Reset the timer only when the deadline moved.
        if wake_at != armed {
            armed = wake_at;
            // No deadline at all: sleep a long time; a poke or a cancel ends it.
            let at = wake_at.unwrap_or_else(|| pool_core::deadline_after(now(), Duration::MAX));
            sleep.as_mut().reset(tokio::time::Instant::from_std(at));
        }
        tokio::select! {
            _ = sleep.as_mut(), if armed.is_some() => armed = None,
            _ = engine.wake.notified() => {}
            _ = engine.cancel.cancelled() => return,
        }
    }
}

/// What the driver reads for the metrics once per turn, under the lock it holds
/// anyway: the status and the counters with feature `metrics`, nothing without.
struct Reading {
    #[cfg(feature = "metrics")]
    status: Status,
    #[cfg(feature = "metrics")]
    counters: pool_core::Counters,
}

impl Reading {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn take<M: Machine>(m: &M) -> Self {
        Self {
            #[cfg(feature = "metrics")]
            status: m.status(),
            #[cfg(feature = "metrics")]
            counters: m.counters(),
        }
    }

    /// Publishes the reading, with no lock held.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn publish<M>(self, engine: &Engine<M>) {
        #[cfg(feature = "metrics")]
        engine.metrics.publish(&self.status, &self.counters);
    }
}

/// A get as the user sees it: the core's answer, with a failing pool's last
/// [`Failure`] attached to the error.
pub(crate) async fn get_for_user<S: Side>(
    side: &Arc<S>,
    want: Want,
    timeout: Duration,
) -> Result<(ConnId, PoolConn), crate::GetError> {
    use crate::GetError as E;
    let start = now();
    let res = get(side, want, timeout).await;
    #[cfg(feature = "metrics")]
    side.engine()
        .metrics
        .get_wait
        .record(now().saturating_duration_since(start));
    let e = match res {
        Ok(got) => return Ok(got),
        Err(e) => e,
    };
    let failing = side.engine().failing_since(start).map(Box::new);
    let waited = now().saturating_duration_since(start);
    Err(match (e, want) {
        (GetError::NotFound, Want::Id(id)) => E::NotFound(id),
        (GetError::Closed, _) => E::Closed,
        (GetError::Unreachable, _) if failing.is_some() => {
            E::Unreachable(failing.expect("checked"))
        }
        _ => E::Timeout { waited, failing },
    })
}

/// A get, from the first look to the answer: candidates are probed here with no lock
/// held, and a get that has to wait registers its reply channel under the same lock
/// that queued it. A connection that arrives for a waiting get (a new one, or one back
/// from a sweep) is probed here too before it is handed out: a peer that gave up while
/// the connection settled is found dead, counted, and the get goes on waiting.
async fn get<S: Side>(
    side: &Arc<S>,
    want: Want,
    timeout: Duration,
) -> Result<(ConnId, PoolConn), GetError> {
    let engine = side.engine();
    let deadline = pool_core::deadline_after(now(), timeout);
    // Bounded: each turn either hands out a connection, fails, or evicts a dead one.
    loop {
        let start = now();
        let (mut got, mut rx, out) = {
            let mut st = engine.lock();
            let got = st.m.get(want, start, deadline);
            let (got, rx) = register(&mut st, got);
            let out = st.outputs(start, false);
            (got, rx, out)
        };
        perform(side, out);
        while let Some(Got::Check(mut check)) = got {
            let alive = S::M::alive(check.conn_mut());
            let now = now();
            let mut st = engine.lock();
            let next = st.m.handle_check(check, alive, now);
            let (next, r) = register(&mut st, next);
            let out = st.outputs(now, false);
            drop(st);
            perform(side, out);
            got = next;
            rx = r;
        }
        let (id, mut conn) = match got {
            Some(Got::Ready(id, conn)) => return Ok((id, conn)),
            Some(Got::Failed(e)) => return Err(e),
            Some(Got::Check(_)) => unreachable!("the loop above consumed every candidate"),
            Some(Got::Wait(_)) | None => {
                let Some((key, rx)) = rx else {
                    return Err(GetError::Closed);
                };
                engine.wake.notify_one();
                let waiting = Waiting {
                    engine,
                    key,
                    rx: Some(rx),
                };
                let began = now();
                let res = waiting.wait(deadline).await;
                engine.waits.add(now().saturating_duration_since(began));
                res?
            }
        };
        if S::M::alive(&mut conn) {
            return Ok((id, conn));
        }
        let out = {
            let now = now();
            let mut st = engine.lock();
            st.m.handle_dead_answer(id, conn, now);
            st.outputs(now, false)
        };
        perform(side, out);
    }
}

type Registered = Option<(WaiterKey, oneshot::Receiver<Delivery>)>;

/// Registers the reply channel of a get that must wait.
fn register<M: Machine>(
    st: &mut State<M>,
    got: Got<PoolConn>,
) -> (Option<Got<PoolConn>>, Registered) {
    match got {
        Got::Wait(key) => {
            let (tx, rx) = oneshot::channel();
            st.replies.insert(key, tx);
            (Some(Got::Wait(key)), Some((key, rx)))
        }
        other => (Some(other), None),
    }
}

/// A waiting get. Dropped before its answer came, it cancels the waiter; if the answer
/// came in the meantime, the connection goes back to the pool.
struct Waiting<'a, M: Machine> {
    engine: &'a Engine<M>,
    key: WaiterKey,
    rx: Option<oneshot::Receiver<Delivery>>,
}

impl<M: Machine> Waiting<'_, M> {
    /// Waits for the answer. A second past the core's own deadline is a safety net, so
    /// that even a driver that died cannot make a get hang.
    async fn wait(mut self, deadline: Instant) -> Delivery {
        let Some(rx) = self.rx.as_mut() else {
            return Err(GetError::Closed);
        };
        let net = pool_core::deadline_after(deadline, Duration::from_secs(1));
        let out = tokio::select! {
            r = rx => r.unwrap_or(Err(GetError::Closed)),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(net)) => {
                return Err(GetError::Timeout); // the guard cancels
            }
        };
        self.rx = None;
        out
    }
}

impl<M: Machine> Drop for Waiting<'_, M> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let now = now();
        let (sends, close) = {
            let mut st = self.engine.lock();
            st.replies.remove(&self.key);
            let mut sends = Vec::new();
            if !st.m.cancel(self.key) {
                // The answer was already sent: give its connection back.
                if let Ok(Ok((id, conn))) = rx.try_recv() {
                    st.m.put_back(id, conn, now);
                    sends = st.deliver(now);
                }
            }
            (sends, st.closes())
        };
        drop(close);
        drop(self.engine.send_all(sends));
    }
}

/// What both pools offer besides their gets: status, counters, the error count and
/// readiness. [`ClientPool`](crate::ClientPool) and [`ServerPool`](crate::ServerPool)
/// reach it through `Deref`, so it is written once.
pub struct PoolHandle<M> {
    engine: Arc<Engine<M>>,
}

impl<M> Clone for PoolHandle<M> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
        }
    }
}

impl<M: Machine> PoolHandle<M> {
    pub(crate) fn new(engine: Arc<Engine<M>>) -> Self {
        Self { engine }
    }

    /// The pool's name, set with the builder's `name` (default `pool`): the `name`
    /// label of its metrics.
    pub fn name(&self) -> &str {
        &self.engine.name
    }

    /// Whether the pool runs: true from `build` until `close` (Go: `Ready`).
    #[doc(alias = "Ready")]
    pub fn is_ready(&self) -> bool {
        !self.engine.read(|m| m.is_closed())
    }

    /// Idle connections ready to hand out (Go: `Active`, which despite its name counts
    /// idle connections, not connections in use).
    #[doc(alias = "Active")]
    pub fn active(&self) -> usize {
        self.engine.read(|m| m.status().idle)
    }

    /// Records an application error (Go: `AddError`).
    #[doc(alias = "AddError")]
    pub fn add_error(&self) {
        self.engine.lock().m.add_error();
        #[cfg(feature = "metrics")]
        self.engine.metrics.app_errors.increment(1);
    }

    /// Application errors recorded (Go: `ErrorCount`).
    #[doc(alias = "ErrorCount")]
    pub fn error_count(&self) -> u64 {
        self.engine.read(|m| m.counters().app_errors)
    }

    /// Resets the application error count (Go, later releases: `ResetError`).
    #[doc(alias = "ResetError")]
    pub fn reset_error(&self) {
        self.engine.lock().m.reset_errors();
    }

    /// Status and counters, taken together.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Waits until at least `n` connections are idle, or `timeout` passes; whether
    /// they are.
    pub async fn wait_idle(&self, n: usize, timeout: Duration) -> bool {
        crate::stats::wait_until(timeout, || self.active() >= n).await
    }
}

/// Held by every clone of a pool's handle; the last one dropped closes the pool.
pub(crate) struct Owner<S: Side>(pub(crate) Arc<S>);

impl<S: Side> Drop for Owner<S> {
    fn drop(&mut self) {
        drop(self.0.engine().shut());
    }
}
