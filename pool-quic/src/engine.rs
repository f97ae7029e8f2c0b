//! The QUIC adapter of pool-core's driver protocol ([`pool_core::driver`]).
//!
//! The protocol (the id map, gets by id or any, waiting gets, adaptation, the sweep,
//! flush and close) is pool-core's [`Driver`], the code pool-tokio, pool-threads and
//! the simulator run. What is QUIC's lives here: the [`Platform`] (tokio's clock, a
//! `Notify` for the timer task, oneshot replies, dials as tasks with a cancel token
//! each, the liveness peek of a stream, and the watch: a stream's connection that
//! ends reports the streams the pool holds on it).

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pool_core::driver::{Driver, Platform, Reply, Role, Sleep, Task};
use pool_core::{ConnId, DialTicket, Stage, Want};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Cause, FailureLog, GetError};
use crate::link::Link;
use crate::stream::{QuicStream, RESET_UNUSED};
use pool_core::Liveness;

type Delivery = pool_core::driver::Delivery<QuicStream>;

/// The core's `now`, from tokio's clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The seed of a machine's generator, from the TLS provider's secure generator.
pub(crate) fn seeded() -> Result<pool_core::SeededRandom, crate::BuildError> {
    let seed = pool_tls::secure_seed().map_err(|_| crate::BuildError::Random)?;
    Ok(pool_core::SeededRandom::from_seed(seed))
}

/// Runs one step of a dial or handshake until it ends or the core aborts it.
pub(crate) async fn step<T>(
    token: &CancellationToken,
    stage: Stage,
    fut: impl Future<Output = Result<T, Cause>>,
) -> Result<T, (Stage, Cause)> {
    tokio::select! {
        r = fut => r.map_err(|e| (stage, e)),
        _ = token.cancelled() => Err((stage, Cause::Timeout)),
    }
}

/// What differs between the client and the server pool, as the adapter sees it.
pub(crate) trait Side: Send + Sync + Sized + 'static {
    type M: Role<Conn = QuicStream> + Send + 'static;
    fn engine(&self) -> &Engine<Self>;
    /// Starts a dial (the client's work; a server never gets one).
    fn dial(self: Arc<Self>, ticket: DialTicket);
}

/// The QUIC [`Platform`].
pub(crate) struct Rt<S> {
    side: Weak<S>,
    wake: Notify,
    /// Notified after every turn and every finished dial or handshake.
    changed: Notify,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    handle: tokio::runtime::Handle,
    pub(crate) log: FailureLog,
    /// Where held streams' wakers report, in in-band mode ([`watch_starts`]).
    starts: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<ConnId>>,
}

impl<S: Side> Platform for Rt<S> {
    type Conn = QuicStream;
    type Reply = Sender;
    type Wait = oneshot::Receiver<Delivery>;
    type Abort = CancellationToken;
    fn now(&self) -> Instant {
        now()
    }
    fn peek(&self, conn: &mut QuicStream) -> Liveness {
        conn.liveness()
    }
    /// Held streams are reported when their connection ends; one whose connection has
    /// ended already is peeked at once. In in-band mode each held stream is also
    /// reported when bytes (the peer's start), its end or a reset arrive.
    fn watch(&self, id: ConnId, conn: &mut QuicStream) -> bool {
        let ended = conn.link().hold(id);
        match self.starts.get() {
            Some(tx) => {
                let waker = std::task::Waker::from(Arc::new(StartWaker { tx: tx.clone(), id }));
                conn.watch_bytes(waker) || ended
            }
            None => ended,
        }
    }
    fn unwatch(&self, conn: &QuicStream) {
        conn.link().release(conn.id);
    }
    fn channel(&self) -> (Sender, Self::Wait) {
        let (tx, rx) = oneshot::channel();
        (Sender(tx), rx)
    }
    fn sent(&self, rx: &mut Self::Wait) -> Option<Delivery> {
        rx.try_recv().ok()
    }
    fn wake(&self) {
        self.wake.notify_one();
    }
    fn start(&self, task: Task<CancellationToken>) {
        match task {
            Task::Dial(ticket) => match self.side.upgrade() {
                Some(side) => S::dial(side, ticket),
                None => drop(ticket),
            },
            Task::Abort(_, token) => token.iter().for_each(CancellationToken::cancel),
        }
    }
    /// A stream the pool closes unused is reset, never finished: its peer must not
    /// take it for a complete exchange.
    fn close(&self, id: ConnId, mut conn: QuicStream) {
        conn.link().release(id);
        conn.reset(RESET_UNUSED);
    }
}

/// Reports one held stream to the task that runs [`Driver::idle_ready`] for it: a
/// waker may be called under quinn's connection lock, where a peek cannot run.
struct StartWaker {
    tx: tokio::sync::mpsc::UnboundedSender<ConnId>,
    id: ConnId,
}

impl std::task::Wake for StartWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.tx.send(self.id);
    }
}

/// A get's reply channel.
pub(crate) struct Sender(oneshot::Sender<Delivery>);

impl Reply<QuicStream> for Sender {
    fn send(self, delivery: Delivery) -> Result<(), Delivery> {
        self.0.send(delivery)
    }
}

/// A pool's driver with what the QUIC pools keep beside it.
pub(crate) struct Engine<S: Side> {
    pub(crate) driver: Driver<S::M, Rt<S>>,
}

impl<S: Side> Engine<S> {
    pub(crate) fn new(m: S::M, side: Weak<S>, handle: tokio::runtime::Handle) -> Self {
        let rt = Rt {
            side,
            wake: Notify::new(),
            changed: Notify::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            handle,
            log: FailureLog::default(),
            starts: std::sync::OnceLock::new(),
        };
        Self {
            driver: Driver::new(m, rt),
        }
    }

    pub(crate) fn rt(&self) -> &Rt<S> {
        self.driver.platform()
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let rt = self.rt();
        rt.tasks.spawn_on(task, &rt.handle);
    }

    /// Spawns the dial or handshake `serial` under a cancel token of its own, which
    /// the core's `Abort` cancels.
    pub(crate) fn spawn_step<F: Future<Output = ()> + Send + 'static>(
        &self,
        serial: u64,
        task: impl FnOnce(CancellationToken) -> F,
    ) {
        let token = self.rt().cancel.child_token();
        self.driver.running(serial, token.clone());
        self.spawn(task(token));
    }

    /// A dial or handshake ended: `report` gives its ticket back.
    pub(crate) fn report<R>(&self, report: impl FnOnce(&Driver<S::M, Rt<S>>) -> R) -> R {
        let r = report(&self.driver);
        self.rt().changed.notify_waiters();
        r
    }

    /// Closes the pool: waiting gets are answered `Closed`, every task is told to stop.
    pub(crate) fn shut(&self) {
        self.rt().cancel.cancel();
        self.rt().tasks.close();
        self.driver.shutdown();
    }

    /// Waits until at least `n` streams are idle, or `timeout` passes.
    pub(crate) async fn wait_idle(&self, n: usize, timeout: Duration) -> bool {
        let idle = || self.driver.read(|m| m.status().idle);
        let reached = async {
            loop {
                let mut changed = pin!(self.rt().changed.notified());
                changed.as_mut().enable();
                if idle() >= n {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, reached).await.is_ok() || idle() >= n
    }
}

/// Watches a QUIC connection: when it ends, every stream the pool holds on it leaves
/// the pool at once (reported to the core, peeked dead, closed).
pub(crate) fn watch_link<S: Side>(side: &Arc<S>, link: Arc<Link>) {
    let me = side.clone();
    side.engine().spawn(async move {
        let engine = me.engine();
        tokio::select! {
            _ = link.conn.closed() => {}
            _ = engine.rt().cancel.cancelled() => return,
        }
        engine.driver.idle_ready_all(link.take_held());
        engine.rt().changed.notify_waiters();
    });
}

/// In-band mode: every held stream is watched for bytes, and a task peeks at each one
/// reported (the peer's start goes to an accept). Each held stream has at most one
/// waker armed, so the queue holds at most one report per held stream and wake.
pub(crate) fn watch_starts<S: Side>(side: &Arc<S>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    if side.engine().rt().starts.set(tx).is_err() {
        return;
    }
    let me = Arc::downgrade(side);
    let cancel = side.engine().rt().cancel.clone();
    side.engine().spawn(async move {
        loop {
            let id = tokio::select! {
                id = rx.recv() => id,
                _ = cancel.cancelled() => return,
            };
            let (Some(id), Some(me)) = (id, me.upgrade()) else {
                return;
            };
            me.engine().driver.idle_ready(id);
            me.engine().rt().changed.notify_waiters();
        }
    });
}

/// The timer task: a turn of the protocol, then sleep until its deadline or a wake.
pub(crate) async fn drive<S: Side>(side: Arc<S>) {
    let engine = side.engine();
    let rt = engine.rt();
    let mut sleep = pin!(tokio::time::sleep(Duration::ZERO));
    let mut armed = None;
    loop {
        let wake_at = match engine.driver.turn() {
            Sleep::Stop => return,
            Sleep::Until(at) => Some(at),
            Sleep::Idle => None,
        };
        rt.changed.notify_waiters();
        if wake_at != armed {
            armed = wake_at;
            let at = wake_at.unwrap_or_else(|| pool_core::deadline_after(now(), Duration::MAX));
            sleep.as_mut().reset(tokio::time::Instant::from_std(at));
        }
        tokio::select! {
            _ = sleep.as_mut(), if armed.is_some() => armed = None,
            _ = rt.wake.notified() => {}
            _ = rt.cancel.cancelled() => return,
        }
    }
}

/// A get as the user sees it.
pub(crate) async fn get_for_user<S: Side>(
    side: &Arc<S>,
    want: Want,
    timeout: Duration,
) -> Result<(ConnId, QuicStream), GetError> {
    let engine = side.engine();
    let start = now();
    engine
        .driver
        .get_async(want, timeout)
        .await
        .map_err(|e| crate::error::get_error(e, want, &engine.rt().log, start))
}
