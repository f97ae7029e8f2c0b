//! The tokio adapter of pool-core's driver protocol ([`pool_core::driver`]).
//!
//! The protocol (lock, input, drain, perform outside the lock, probe, wait for an
//! answer, cancel, accept, abort, shut down) is pool-core's [`Driver`], shared with
//! pool-threads and the simulator. What is tokio's lives here: the [`Platform`]
//! (tokio's clock, a `Notify` to wake the timer task, oneshot reply channels, a task
//! and a cancel token per dial, the `epoll` watch through tokio's reactor), the timer
//! task, and a get's error as the user sees it.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pool_core::driver::{Driver, Platform, Reply, Role, Sleep, Task};
use pool_core::Liveness;
use pool_core::{ConnId, DialTicket, GetFailure, IdleWatch, Want};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::PoolConn;
use crate::failures::FailureLog;
use crate::rt::now;
use crate::stats::Stats;

type Delivery = pool_core::driver::Delivery<PoolConn>;

/// What differs between the client and the server pool, as the adapter sees it.
pub(crate) trait Side: Send + Sync + Sized + 'static {
    type M: Role<Conn = PoolConn> + Send + 'static;
    const CLIENT: bool;
    fn engine(&self) -> &Engine<Self>;
    /// Starts a dial: the client's work (a server machine never asks for one).
    fn dial(self: Arc<Self>, _ticket: DialTicket) {}
    /// A peek that tells quiet from bytes waiting; never loses a byte. What it finds
    /// wrong with a peer that once passed its handshake goes in the log (the server's
    /// does; this default finds nothing to note).
    fn peek(conn: &mut PoolConn, _log: &FailureLog) -> Liveness {
        conn.liveness()
    }
}

/// The tokio [`Platform`].
pub(crate) struct Rt<S> {
    side: Weak<S>,
    wake: Notify,
    /// Notified after every turn and every finished dial or handshake: `wait_idle`.
    changed: Notify,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    handle: tokio::runtime::Handle,
    /// The pool's last background failure (here, where a peek can note one).
    pub(crate) log: FailureLog,
    /// The held connections' `epoll` set (`None`: not watched, the sweep finds dead
    /// peers).
    #[cfg(target_os = "linux")]
    pub(crate) watch: Option<crate::watch::IdleWatch>,
}

impl<S: Side> Platform for Rt<S> {
    type Conn = PoolConn;
    type Reply = Sender;
    type Wait = oneshot::Receiver<Delivery>;
    type Abort = CancellationToken;
    fn now(&self) -> Instant {
        now()
    }
    fn peek(&self, conn: &mut PoolConn) -> Liveness {
        S::peek(conn, &self.log)
    }
    /// Watched for hang-ups (and bytes, in in-band mode).
    fn watch(&self, id: ConnId, conn: &mut PoolConn) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(w) = &self.watch {
            w.watch(id, conn);
        }
        let _ = (id, conn);
        false
    }
    fn buffered(&self, conn: &mut PoolConn) -> bool {
        conn.has_unread()
    }
    /// Only where bytes are watched (in-band mode): a hang-up watch is one-shot, so a
    /// connection handed out while still registered is reported at most once (its
    /// peer's hang-up, which finds it not held), and its close ends the registration;
    /// that spares every get an `epoll_ctl`.
    fn unwatch(&self, conn: &PoolConn) {
        #[cfg(target_os = "linux")]
        if let Some(w) = self.watch.as_ref().filter(|w| w.bytes()) {
            w.unwatch(conn);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = conn;
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
                None => drop(ticket), // the pool is gone
            },
            Task::Abort(_, token) => token.iter().for_each(CancellationToken::cancel),
        }
    }
}

/// A get's reply channel.
pub(crate) struct Sender(oneshot::Sender<Delivery>);

impl Reply<PoolConn> for Sender {
    fn send(self, delivery: Delivery) -> Result<(), Delivery> {
        self.0.send(delivery)
    }
}

/// A pool's driver with what the tokio pools keep beside it.
pub(crate) struct Engine<S: Side> {
    pub(crate) driver: Driver<S::M, Rt<S>>,
    name: Box<str>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics: crate::metrics::Publisher,
}

impl<S: Side> Engine<S> {
    pub(crate) fn new(
        m: S::M,
        name: &str,
        side: Weak<S>,
        handle: tokio::runtime::Handle,
        watch: IdleWatch,
    ) -> Self {
        #[cfg(not(target_os = "linux"))]
        let _ = watch;
        let rt = Rt {
            side,
            wake: Notify::new(),
            changed: Notify::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            handle,
            log: FailureLog::new(S::CLIENT),
            #[cfg(target_os = "linux")]
            watch: watch
                .readiness()
                .and_then(|b| crate::watch::IdleWatch::new(b).ok()),
        };
        Self {
            driver: Driver::new(m, rt),
            name: name.into(),
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::Publisher::new(S::CLIENT, name),
        }
    }

    pub(crate) fn rt(&self) -> &Rt<S> {
        self.driver.platform()
    }

    /// Whether held connections are watched (Linux, and the set could be made).
    pub(crate) fn watched(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.rt().watch.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// The pool's last background failure and the run it belongs to.
    pub(crate) fn log(&self) -> &FailureLog {
        &self.rt().log
    }

    /// The pool's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Notified after every turn and every finished dial or handshake.
    pub(crate) fn changed(&self) -> &Notify {
        &self.rt().changed
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let rt = self.rt();
        rt.tasks.spawn_on(task, &rt.handle);
    }

    /// Spawns the dial or handshake `serial` under a cancel token of its own (a child
    /// of the pool's), which the core's `Abort` cancels.
    pub(crate) fn spawn_step<F: Future<Output = ()> + Send + 'static>(
        &self,
        serial: u64,
        task: impl FnOnce(CancellationToken) -> F,
    ) {
        let token = self.rt().cancel.child_token();
        self.driver.running(serial, token.clone());
        self.spawn(task(token));
    }

    /// A dial or handshake ended: `report` gives its ticket back to the driver.
    pub(crate) fn report<R>(&self, report: impl FnOnce(&Driver<S::M, Rt<S>>) -> R) -> R {
        let r = report(&self.driver);
        self.rt().changed.notify_waiters();
        r
    }

    /// The core's answer to a get begun at `start`, as the user sees it: a failing
    /// pool's last [`Failure`](crate::Failure) attached to the error.
    pub(crate) fn answer<T>(
        &self,
        want: Want,
        start: Instant,
        res: Result<T, GetFailure>,
    ) -> Result<T, crate::GetError> {
        #[cfg(feature = "metrics")]
        self.metrics
            .get_wait
            .record(now().saturating_duration_since(start));
        let log = self.log();
        let failing = || log.failing_since(start).map(Box::new);
        res.map_err(|e| crate::GetError::from_core(e, want, failing, start, log.unreached()))
    }

    pub(crate) fn stats(&self) -> Stats {
        let (status, counters) = self.driver.read(|m| (m.status(), m.counters()));
        let (gets_waited, get_wait) = self.driver.waited();
        Stats {
            status,
            counters,
            last_failure: self.log().last(),
            get_wait,
            gets_waited,
            client: S::CLIENT,
        }
    }

    /// Closes the pool: waiting gets are answered `Closed`, every task is told to stop.
    pub(crate) fn shut(&self) {
        self.rt().cancel.cancel();
        self.rt().tasks.close();
        self.driver.shutdown();
    }
}

/// The timer task: a turn of the protocol, then sleep until the deadline it answers
/// or until woken.
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
        #[cfg(feature = "metrics")]
        {
            let (status, counters) = engine.driver.read(|m| (m.status(), m.counters()));
            engine.metrics.publish(&status, &counters);
        }
        // Reset the timer only when the deadline moved.
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

/// Reports what the `epoll` set sees (hang-ups; bytes in in-band mode) to the core,
/// until the pool closes.
pub(crate) async fn watch_hang_ups<S: Side>(side: Arc<S>) {
    #[cfg(target_os = "linux")]
    {
        let engine = side.engine();
        let rt = engine.rt();
        let Some(w) = &rt.watch else { return };
        loop {
            let ids = tokio::select! {
                r = w.hung_up() => match r {
                    Ok(ids) => ids,
                    Err(_) => return, // the sweep carries on alone
                },
                _ = rt.cancel.cancelled() => return,
            };
            engine.driver.idle_ready_all(ids);
            rt.changed.notify_waiters();
        }
    }
    #[cfg(not(target_os = "linux"))]
    drop(side);
}

/// A get as the user sees it: the core's answer, with a failing pool's last
/// [`Failure`] attached to the error.
pub(crate) async fn get_for_user<S: Side>(
    side: &Arc<S>,
    want: Want,
    timeout: Duration,
) -> Result<(ConnId, PoolConn), crate::GetError> {
    let engine = side.engine();
    let start = now();
    let res = engine.driver.get_async(want, timeout).await;
    engine.answer(want, start, res)
}
