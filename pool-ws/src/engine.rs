//! The tokio adapter of pool-core's driver protocol ([`pool_core::driver`]) for
//! WebSocket connections.
//!
//! The protocol (lock, input, drain, perform outside the lock, probe, register a
//! waiting get, cancel, shut down) is pool-core's [`Driver`], the code pool-tokio,
//! pool-threads and the simulator run. What is here is the tokio [`Platform`]: tokio's
//! clock, a `Notify` for the timer task, oneshot reply channels, a task per dial, and a
//! cancel token per dial or handshake that the core aborts.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use pool_core::driver::{Driver, Platform, Reply, Role, Sleep, Task};
use pool_core::{ClientMachine, ConnId, DialTicket, Want};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::GetError;
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Delivery<C> = pool_core::driver::Delivery<C>;

/// A connection the pool holds: WebSocket or HTTP/2 stream.
pub(crate) trait Pooled: Send + 'static {
    /// Whether it is quiet, has bytes waiting, or is dead; never loses a byte.
    fn peek(&mut self) -> pool_core::Liveness;
    /// In-band mode: arms `waker` to be woken when a message, the end or a reset
    /// arrives on the held connection (what is read is kept for the reader); answers
    /// whether something is there already (then the pool peeks at once).
    fn watch_bytes(&mut self, waker: std::task::Waker) -> bool;
}

/// The runtime's clock: tokio's, so that paused-time tests control the core too.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What differs between the client and the server pool, as the adapter sees it.
pub(crate) trait Side: Send + Sync + Sized + 'static {
    type C: Pooled;
    type M: Role<Conn = Self::C> + Send + 'static;
    fn engine(&self) -> &Engine<Self>;
    /// Starts a dial (the client's work; a server never gets one).
    fn dial(self: Arc<Self>, ticket: DialTicket);
}

/// The tokio [`Platform`].
pub(crate) struct Rt<S> {
    side: Weak<S>,
    wake: Notify,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    handle: tokio::runtime::Handle,
    /// Where held connections' wakers report, in in-band mode ([`watch_starts`]).
    starts: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<ConnId>>,
}

impl<S: Side> Platform for Rt<S> {
    type Conn = S::C;
    type Reply = Sender<S::C>;
    type Wait = oneshot::Receiver<Delivery<S::C>>;
    type Abort = CancellationToken;
    fn now(&self) -> Instant {
        now()
    }
    fn peek(&self, conn: &mut S::C) -> pool_core::Liveness {
        conn.peek()
    }
    /// In in-band mode each held connection is reported when a message, its end or a
    /// reset arrives; otherwise nothing is watched (the sweep finds dead peers).
    fn watch(&self, id: ConnId, conn: &mut S::C) -> bool {
        match self.starts.get() {
            Some(tx) => {
                let tx = tx.clone();
                conn.watch_bytes(std::task::Waker::from(Arc::new(StartWaker { tx, id })))
            }
            None => false,
        }
    }
    fn channel(&self) -> (Self::Reply, Self::Wait) {
        let (tx, rx) = oneshot::channel();
        (Sender(tx), rx)
    }
    fn sent(&self, rx: &mut Self::Wait) -> Option<Delivery<S::C>> {
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
pub(crate) struct Sender<C>(oneshot::Sender<Delivery<C>>);

impl<C> Reply<C> for Sender<C> {
    fn send(self, delivery: Delivery<C>) -> Result<(), Delivery<C>> {
        self.0.send(delivery)
    }
}

/// Closes the pool when the last clone of its handle goes.
pub(crate) struct Owner<S: Side>(pub(crate) Arc<S>);

impl<S: Side> Drop for Owner<S> {
    fn drop(&mut self) {
        self.0.engine().shut();
    }
}

/// A pool's driver and its tasks.
pub(crate) struct Engine<S: Side> {
    pub(crate) driver: Driver<S::M, Rt<S>>,
}

impl<S: Side> Engine<S> {
    pub(crate) fn new(m: S::M, side: Weak<S>, handle: tokio::runtime::Handle) -> Self {
        let rt = Rt {
            side,
            wake: Notify::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            handle,
            starts: std::sync::OnceLock::new(),
        };
        Self {
            driver: Driver::new(m, rt),
        }
    }

    pub(crate) fn rt(&self) -> &Rt<S> {
        self.driver.platform()
    }

    /// A get as every pool of this crate answers it.
    pub(crate) async fn get(
        &self,
        want: Want,
        timeout: Duration,
    ) -> Result<(ConnId, S::C), GetError> {
        let got = self.driver.get_async(want, timeout).await;
        got.map_err(GetError::from)
    }

    /// Closes the pool and waits for its tasks to end.
    pub(crate) async fn close(&self) {
        self.shut();
        self.rt().tasks.wait().await;
    }

    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let rt = self.rt();
        rt.tasks.spawn_on(task, &rt.handle);
    }

    /// Spawns a task that outlives the pool's close: an HTTP/2 connection that streams
    /// handed out still ride on (it ends with them).
    pub(crate) fn spawn_detached(&self, task: impl Future<Output = ()> + Send + 'static) {
        drop(self.rt().handle.spawn(task));
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

/// Runs `fut` until it ends or `token` is cancelled (the core aborted the step).
pub(crate) async fn step<T, E>(
    token: &CancellationToken,
    aborted: E,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::select! {
        r = fut => r,
        _ = token.cancelled() => Err(aborted),
    }
}

/// Reports one held connection to the task that peeks at it: a waker may be called
/// where a peek cannot run (inside the connection's own poll).
struct StartWaker {
    tx: tokio::sync::mpsc::UnboundedSender<ConnId>,
    id: ConnId,
}

impl std::task::Wake for StartWaker {
    fn wake(self: Arc<Self>) {
        let _ = self.tx.send(self.id);
    }
}

/// In-band mode: every held connection is watched for the peer's start, and a task
/// peeks at each one reported (a start goes to an accept). Each held connection has at
/// most one waker armed, so the queue holds at most one report per held connection
/// and wake.
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
        }
    });
}

/// An accept of a client pool in in-band mode: the next connection the server
/// started, its start header read and checked.
pub(crate) async fn accept<S>(side: &Arc<S>, timeout: Duration) -> Result<S::C, GetError>
where
    S: Side<M = ClientMachine<<S as Side>::C>>,
    S::C: AsyncRead + Unpin,
{
    let read = |mut c: S::C, by: Instant| async move {
        let mut header = [0u8; pool_core::START.len()];
        let by = tokio::time::Instant::from_std(by);
        let read = tokio::time::timeout_at(by, c.read_exact(&mut header)).await;
        (c, matches!(read, Ok(Ok(_))).then_some(header))
    };
    let got = side.engine().driver.accept_async(timeout, read).await;
    got.map(|(_, c)| c).map_err(GetError::from)
}

/// A start of a server pool in in-band mode: the oldest idle connection with the start
/// header and `first` written on it in one write; one whose write fails is dropped
/// and the next one tried, within `timeout`.
pub(crate) async fn start_with<S>(
    side: &Arc<S>,
    first: &[u8],
    timeout: Duration,
) -> Result<(ConnId, S::C), GetError>
where
    S: Side,
    S::C: AsyncWrite + Unpin,
{
    let deadline = pool_core::deadline_after(now(), timeout);
    let mut message = Vec::with_capacity(pool_core::START.len() + first.len());
    message.extend_from_slice(&pool_core::START);
    message.extend_from_slice(first);
    loop {
        let left = deadline.saturating_duration_since(now());
        let (id, mut c) = side
            .engine()
            .driver
            .get_async(Want::Any, left)
            .await
            .map_err(GetError::from)?;
        let write = async {
            c.write_all(&message).await?;
            c.flush().await
        };
        if let Ok(Ok(())) = tokio::time::timeout(left, write).await {
            return Ok((id, c));
        }
    }
}
