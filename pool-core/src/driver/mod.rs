//! The driver protocol, written once for every runtime.
//!
//! A machine decides; a driver performs. What a driver must do around a machine is the
//! same on every runtime: take the lock, feed an input, drain the outputs until
//! [`Output::Timeout`], let go of the lock, then perform what was drained (answers to
//! the waiting gets, connections to close, dials to start, handshakes to abort, sweep
//! batches to probe), arm one timer. A get has its own steps: ask the role, probe a
//! candidate with no lock held, report the verdict, register a reply channel when it
//! must wait, probe what arrives, cancel cleanly when its caller goes away. Shutting
//! down answers every waiting get.
//!
//! [`Driver`] is that protocol. It is generic over a [`Platform`], the few things that
//! do differ between runtimes: the clock, the liveness probe, a reply channel, waking
//! the timer task, starting a dial or aborting one, closing a connection. pool-tokio,
//! pool-threads and the simulator of pool-sim are each a `Platform` and a loop
//! that calls [`Driver::turn`] and sleeps as it answers, so the simulator's models
//! and scoreboards run the same protocol code as the shipped drivers.
//!
//! It lives in pool-core, not in a crate of its own, because it needs nothing but
//! `std`: a [`std::sync::Mutex`] around the machine (every critical section is a few
//! machine calls with no system call and no user code, so a blocking lock is right on
//! an async runtime too, as tokio's own guidance says), and the platform's methods for
//! everything that touches the outside. It performs no I/O itself.
//!
//! The rule the protocol keeps everywhere: under the lock, only the machine's inputs
//! and the draining of its outputs. Probes, peeks, watches, reply channels, sends
//! (which wake another task), drops of connections and every other call of the
//! platform happen after the lock is let go. Debug builds check it: a platform call
//! made through the driver (or [`Driver::platform`]) while the calling thread holds
//! the driver's lock panics.
//!
//! `DRIVING.md` beside this crate's `Cargo.toml` walks through a complete driver.

mod get;
mod land;
mod role;
mod timer;
mod wait;

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

pub use crate::common::Readied;
pub use crate::Liveness;
pub use land::DialReport;
pub use role::Role;
pub use timer::Alarm;
pub use wait::Header;

use crate::common::{Output, Probe};
use crate::waiters::{WaiterKey, Want};
use crate::{ConnId, DialTicket, GetFailure};

/// What a waiting get receives: the connection and its id, or why there is none.
pub type Delivery<C> = Result<(ConnId, C), GetFailure>;

/// How long an accept waits for the start header of a connection the peer started
/// (in-band mode) once its first byte arrived: the peer writes the header first.
pub const START_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Work the driver asks the platform to start. `A` is the platform's
/// [`Abort`](Platform::Abort) handle.
#[derive(Debug)]
#[must_use = "a dial ticket must be started and reported back"]
pub enum Task<A = ()> {
    /// Start this dial; report it back exactly once (a client), with
    /// [`Driver::dialed`].
    Dial(DialTicket),
    /// Abort the dial or handshake with this serial (its deadline passed, or it was
    /// evicted), through the handle it was registered with ([`Driver::running`]), if
    /// it still runs; its ticket still comes back, as a failure.
    Abort(u64, Option<A>),
}

/// The sending half of a waiting get's reply channel.
pub trait Reply<C> {
    /// Sends the answer; gives it back when the get went away meanwhile (the
    /// connection then returns to the pool).
    ///
    /// # Errors
    ///
    /// The delivery itself, when nobody receives it any more.
    fn send(self, delivery: Delivery<C>) -> Result<(), Delivery<C>>;
}

/// What differs between runtimes. Every method is called with no lock held: the driver
/// never calls one while it holds its lock (debug builds assert it), so a method may
/// make a system call or wake another thread.
pub trait Platform {
    /// The connection type.
    type Conn;
    /// The sending half of a get's reply channel.
    type Reply: Reply<Self::Conn>;
    /// The receiving half, which the runtime's get waits on.
    type Wait;
    /// What stops a dial or handshake under way ([`Driver::running`]): a cancel
    /// token; `()` where a step ends by its own deadlines.
    type Abort;
    /// The runtime's clock (tokio's, for paused-time tests; the simulator's).
    fn now(&self) -> Instant;
    /// The liveness probe: a peek that tells a quiet connection from one with bytes
    /// waiting and from a dead one. Must never consume a byte.
    fn peek(&self, conn: &mut Self::Conn) -> Liveness;
    /// Whether an idle connection may be handed out. Must never consume a byte. The
    /// default asks [`peek`](Self::peek); a platform with a cheaper answer overrides it.
    fn alive(&self, conn: &mut Self::Conn) -> bool {
        self.peek(conn).is_alive()
    }
    /// Watches a connection the pool is about to hold (it landed, or a spurious report
    /// was peeked quiet) for what the platform reports with [`Driver::idle_ready`]: a
    /// hang-up, and bytes in in-band mode. Answers whether to peek at it once held
    /// anyway: bytes already taken off the socket (a TLS session's buffer) that no
    /// readiness will report. The default watches nothing.
    fn watch(&self, id: ConnId, conn: &mut Self::Conn) -> bool {
        let _ = (id, conn);
        false
    }
    /// Whether bytes of this connection were already taken off the socket (a TLS
    /// session's buffer): no readiness will report them, so in in-band mode the driver
    /// peeks at a connection with such bytes once it holds it. Must never consume a
    /// byte. The default finds none.
    fn buffered(&self, conn: &mut Self::Conn) -> bool {
        let _ = conn;
        false
    }
    /// Stops watching a connection the pool hands out. The default does nothing.
    fn unwatch(&self, conn: &Self::Conn) {
        let _ = conn;
    }
    /// A reply channel for a get that has to wait.
    fn channel(&self) -> (Self::Reply, Self::Wait);
    /// An answer already sent on `wait`, taken without waiting: what a cancelled get
    /// gives back ([`Driver::cancel`]). A platform whose gets can be cancelled (an
    /// async one, [`Driver::get_async`]) implements it; the default takes nothing.
    fn sent(&self, wait: &mut Self::Wait) -> Option<Delivery<Self::Conn>> {
        let _ = wait;
        None
    }
    /// The machine's next deadline moved closer, or a sweep batch waits: run
    /// [`Driver::turn`] soon. A wake with nobody sleeping must not be lost (tokio's
    /// `Notify::notify_one` keeps a permit; a condvar needs a flag beside it).
    fn wake(&self);
    /// [`wake`](Self::wake), saying when the next turn is due: at `at` (a deadline
    /// that moved closer) or at once (`at` is now). The default wakes at once, which is
    /// always correct; a simulated clock overrides it to schedule the turn exactly.
    fn wake_at(&self, at: Instant) {
        let _ = at;
        self.wake();
    }
    /// Starts a dial, or aborts a dial or handshake.
    fn start(&self, task: Task<Self::Abort>);
    /// Closes a connection. The default drops it (which also ends its watch).
    fn close(&self, id: ConnId, conn: Self::Conn) {
        drop((id, conn));
    }
}

/// What the timer loop should do after a [`Driver::turn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sleep {
    /// Sleep until this instant, or until [`Platform::wake`].
    Until(Instant),
    /// Sleep until [`Platform::wake`]: no deadline is armed.
    Idle,
    /// The machine is closed: end the loop.
    Stop,
}

/// A get that waits for its answer: hand the [`Wait`](Platform::Wait) half to the
/// runtime, then report what it received with [`Driver::arrived`], or give up with
/// [`Driver::cancel`].
#[derive(Debug)]
pub struct Waiting<W> {
    /// Names this get to [`Driver::arrived`] and [`Driver::cancel`].
    pub get: WaitingGet,
    /// Where the answer comes.
    pub wait: W,
}

/// Names a waiting get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitingGet {
    key: WaiterKey,
    want: Want,
    deadline: Instant,
}

impl WaitingGet {
    /// When the get gives up; the machine answers it `Timeout` then.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

/// Where a get stands.
#[derive(Debug)]
#[must_use = "a step may hold a connection or a waiting get"]
pub enum Step<C, W> {
    /// A live connection, no longer watched.
    Ready(ConnId, C),
    /// No connection.
    Failed(GetFailure),
    /// Wait for the answer.
    Wait(Waiting<W>),
}

/// A machine behind its lock, and the reply channels of its waiting gets, driven on a
/// [`Platform`]. See the [module docs](self).
pub struct Driver<M: Role, P: Platform<Conn = M::Conn>> {
    state: Mutex<State<M, P::Reply>>,
    platform: P,
    waits: wait::Waits,
    /// The abort handle of each dial or handshake under way, by ticket serial: kept
    /// apart from the machine's lock, as the platform's own step is.
    aborts: Mutex<HashMap<u64, P::Abort>>,
    /// In-band mode (a client watching for starts): a landing with bytes already
    /// [`buffered`](Platform::buffered) is peeked once held.
    in_band: bool,
}

impl<M: Role, P: Platform<Conn = M::Conn>> std::fmt::Debug for Driver<M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("status", &self.read(Role::status))
            .finish_non_exhaustive()
    }
}

/// The reply channel of a waiting get.
enum Slot<R, C> {
    /// The get is making its channel, with no lock held.
    Opening,
    /// The answer came while the channel was being made.
    Early(Delivery<C>),
    /// The channel.
    Open(R),
}

struct State<M: Role, R> {
    m: M,
    replies: HashMap<WaiterKey, Slot<R, M::Conn>>,
    /// The deadline the timer loop sleeps until (`None`: none); an input that brings
    /// an earlier one wakes it.
    armed: Option<Instant>,
    /// A sweep batch that came out of an input other than the timer loop's: the loop
    /// probes it (a get never pays for a sweep).
    stashed: Option<Probe<M::Conn>>,
    /// Ids of the last readiness reports for connections the machine did not hold: a
    /// report that raced ahead of its connection's landing is found here.
    unheld: VecDeque<ConnId>,
}

/// Readiness reports for connections not held, remembered for the landing that may
/// follow ([`State::unheld`]).
const UNHELD: usize = 16;

impl<M: Role, R> State<M, R> {
    fn note_unheld(&mut self, id: ConnId) {
        if self.unheld.len() == UNHELD {
            self.unheld.pop_front();
        }
        self.unheld.push_back(id);
    }

    /// Whether a report for `id` came before it landed (and forgets it).
    fn take_unheld(&mut self, id: ConnId) -> bool {
        let i = self.unheld.iter().position(|u| *u == id);
        i.and_then(|i| self.unheld.remove(i)).is_some()
    }
}

/// What to perform once the lock is let go.
struct Out<C, R> {
    sends: Vec<(WaiterKey, R, Delivery<C>)>,
    close: Vec<(ConnId, C)>,
    tasks: Vec<Task>,
    probe: Option<Probe<C>>,
    /// When the timer loop must run its next turn, when that moved closer.
    wake: Option<Instant>,
    /// The machine's next deadline, as the drain ended.
    timeout: Option<Instant>,
}

impl<C, R> Out<C, R> {
    fn wake(&mut self, at: Instant) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    fn new() -> Self {
        Self {
            sends: Vec::new(),
            close: Vec::new(),
            tasks: Vec::new(),
            probe: None,
            wake: None,
            timeout: None,
        }
    }
}

#[cfg(debug_assertions)]
thread_local! {
    /// Driver locks this thread holds (debug builds): a platform call made while it is
    /// not zero breaks the protocol's rule.
    static LOCKS_HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The driver's lock, held; debug builds count it for the thread.
struct Locked<'a, T> {
    guard: MutexGuard<'a, T>,
}

impl<T> std::ops::Deref for Locked<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for Locked<'_, T> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        LOCKS_HELD.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

impl<M: Role, P: Platform<Conn = M::Conn>> Driver<M, P> {
    /// A driver for `machine` on `platform`. Start the timer loop ([`turn`](Self::turn))
    /// right after.
    pub fn new(machine: M, platform: P) -> Self {
        Self {
            in_band: machine.in_band(),
            waits: wait::Waits::default(),
            aborts: Mutex::new(HashMap::new()),
            state: Mutex::new(State {
                m: machine,
                replies: HashMap::new(),
                armed: None,
                stashed: None,
                unheld: VecDeque::new(),
            }),
            platform,
        }
    }

    /// The platform, for what the runtime keeps in it. Like every platform call, not
    /// while the driver's lock is held (in a closure of [`input`](Self::input) or
    /// [`read`](Self::read)): debug builds panic.
    pub fn platform(&self) -> &P {
        self.p()
    }

    /// The platform, for a call: never under the lock (checked in debug builds).
    fn p(&self) -> &P {
        #[cfg(debug_assertions)]
        LOCKS_HELD.with(|n| {
            assert!(
                n.get() == 0,
                "a Platform call under the driver lock: the driver protocol performs \
                 every platform call after letting go of it"
            );
        });
        &self.platform
    }

    fn lock(&self) -> Locked<'_, State<M, P::Reply>> {
        // Every critical section runs machine calls only and leaves the machine
        // consistent, even if a thread panicked elsewhere while holding the lock.
        let guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        #[cfg(debug_assertions)]
        LOCKS_HELD.with(|n| n.set(n.get() + 1));
        Locked { guard }
    }

    /// The dial or handshake `serial` is under way: `abort` stops it when the core
    /// aborts it ([`Task::Abort`]). The handle is dropped when its ticket comes back.
    pub fn running(&self, serial: u64, abort: P::Abort) {
        self.aborts().insert(serial, abort);
    }

    /// The dial or handshake `serial` ended, or is aborted: its handle, if it had one.
    fn ended(&self, serial: u64) -> Option<P::Abort> {
        self.aborts().remove(&serial)
    }

    fn aborts(&self) -> MutexGuard<'_, HashMap<u64, P::Abort>> {
        self.aborts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read of the machine under the lock.
    pub fn read<R>(&self, f: impl FnOnce(&M) -> R) -> R {
        f(&self.lock().m)
    }

    /// An input: `f` runs on the machine under the lock, the outputs are drained and
    /// then performed with no lock held. Use it for the role's own inputs (an accepted
    /// connection, a drawn id); a dial's or a handshake's result goes through
    /// [`dialed`](Self::dialed) or [`handshaken`](Self::handshaken).
    pub fn input<R>(&self, f: impl FnOnce(&mut M, Instant) -> R) -> R {
        let now = self.p().now();
        let (r, out) = {
            let mut st = self.lock();
            let r = f(&mut st.m, now);
            (r, Self::drain(&mut st, now, false))
        };
        self.perform(out, false);
        r
    }

    /// One turn of the timer loop: time passed (`handle_timeout`), every output is
    /// drained and performed, sweep batches are probed here and given back, batch
    /// after batch. Then sleep as it answers.
    pub fn turn(&self) -> Sleep {
        let now = self.p().now();
        let out = {
            let mut st = self.lock();
            if st.m.is_closed() {
                return Sleep::Stop;
            }
            st.m.handle_timeout(now);
            let mut out = Self::drain(&mut st, now, true);
            if out.probe.is_none() {
                out.probe = st.stashed.take();
            }
            out
        };
        match self.perform(out, true) {
            Some(at) => Sleep::Until(at),
            None if self.read(Role::is_closed) => Sleep::Stop,
            None => Sleep::Idle,
        }
    }

    /// Closes every idle connection (Go: `Flush`); how many.
    pub fn flush(&self) -> usize {
        self.input(|m, now| m.flush(now))
    }

    /// Closes the machine: every waiting get is answered `Closed`, every connection
    /// is closed, and the timer loop stops at its next turn (it is woken).
    pub fn shutdown(&self) {
        let now = self.p().now();
        let mut out = {
            let mut st = self.lock();
            st.m.close();
            if let Some(p) = st.stashed.take() {
                st.m.handle_probe(p, now);
            }
            let mut out = Self::drain(&mut st, now, false);
            let keys: Vec<WaiterKey> = st.replies.keys().copied().collect();
            for key in keys {
                match st.replies.remove(&key) {
                    Some(Slot::Open(tx)) => out.sends.push((key, tx, Err(GetFailure::Closed))),
                    // The get finds it when its channel is made.
                    Some(Slot::Opening) => {
                        st.replies.insert(key, Slot::Early(Err(GetFailure::Closed)));
                    }
                    Some(early) => {
                        st.replies.insert(key, early);
                    }
                    None => {}
                }
            }
            out
        };
        out.wake(now);
        self.perform(out, false);
    }

    /// Drains the machine until `Timeout`. An answer whose get went away gives its
    /// connection back. Sweep batches go to the timer loop: taken here when
    /// `sweeping`, stashed for it otherwise. No platform call: this runs under the lock.
    fn drain(st: &mut State<M, P::Reply>, now: Instant, sweeping: bool) -> Out<M::Conn, P::Reply> {
        let mut out = Out::new();
        loop {
            match st.m.poll_output(now) {
                Output::Answer(a) => match st.replies.remove(&a.key) {
                    Some(Slot::Open(tx)) => out.sends.push((a.key, tx, a.result)),
                    Some(Slot::Opening) => {
                        st.replies.insert(a.key, Slot::Early(a.result));
                    }
                    Some(early @ Slot::Early(_)) => {
                        // Cannot happen (one answer per get); never lose a connection.
                        st.replies.insert(a.key, early);
                        if let Ok((id, conn)) = a.result {
                            out.close.push((id, conn));
                        }
                    }
                    None => {
                        if let Ok((id, conn)) = a.result {
                            st.m.give_back(a.key, id, conn, now);
                        }
                    }
                },
                Output::Dial(t) => out.tasks.push(Task::Dial(t)),
                Output::Abort(serial) => out.tasks.push(Task::Abort(serial, None)),
                Output::Close(id, conn) => out.close.push((id, conn)),
                Output::Probe(p) if sweeping && out.probe.is_none() => out.probe = Some(p),
                Output::Probe(p) => {
                    st.stashed = Some(p);
                    out.wake(now);
                }
                Output::Timeout(at) => {
                    out.timeout = at;
                    if sweeping {
                        st.armed = at;
                    } else if let Some(a) = at.filter(|a| st.armed.is_none_or(|b| *a < b)) {
                        // Earlier than the timer loop sleeps: wake it to re-arm.
                        st.armed = at;
                        out.wake(a);
                    }
                    return out;
                }
            }
        }
    }

    /// Performs what was drained, with no lock held; a sweep batch is probed and given
    /// back, and what that drains is performed in turn. Answers whose get went away
    /// come back to the pool. Returns the machine's next deadline as the last drain
    /// found it.
    fn perform(&self, mut out: Out<M::Conn, P::Reply>, sweeping: bool) -> Option<Instant> {
        loop {
            let timeout = out.timeout;
            if let Some(at) = out.wake {
                self.p().wake_at(at);
            }
            for task in out.tasks {
                self.p().start(match task {
                    Task::Dial(ticket) => Task::Dial(ticket),
                    Task::Abort(serial, _) => Task::Abort(serial, self.ended(serial)),
                });
            }
            let mut back = Vec::new();
            for (key, tx, delivery) in out.sends {
                if let Err(Ok((id, conn))) = tx.send(delivery) {
                    back.push((key, id, conn));
                }
            }
            for (id, conn) in out.close {
                self.p().close(id, conn);
            }
            let probe = out.probe.map(|mut p| {
                p.check(|c| self.p().alive(c));
                p
            });
            if back.is_empty() && probe.is_none() {
                return timeout;
            }
            let now = self.p().now();
            let mut st = self.lock();
            for (key, id, conn) in back {
                st.m.give_back(key, id, conn, now);
            }
            if let Some(p) = probe {
                st.m.handle_probe(p, now);
            }
            out = Self::drain(&mut st, now, sweeping);
        }
    }
}
