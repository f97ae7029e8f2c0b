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
//! pool-threads and the simulator of pool-testkit are each a `Platform` and a loop
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
//! and the draining of its outputs. Probes, sends (which wake another task), drops of
//! connections and the platform's own calls all happen after the lock is let go.
//!
//! `DRIVING.md` beside this crate's `Cargo.toml` walks through a complete driver.

mod role;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use role::Role;

use crate::common::{Got, Output, Probe};
use crate::time::deadline_after;
use crate::waiters::{WaiterKey, Want};
use crate::{ConnId, DialTicket, GetFailure};

/// What a waiting get receives: the connection and its id, or why there is none.
pub type Delivery<C> = Result<(ConnId, C), GetFailure>;

/// Work the driver asks the platform to start.
#[derive(Debug)]
#[must_use = "a dial ticket must be started and reported back"]
pub enum Task {
    /// Start this dial; report it back exactly once (a client).
    Dial(DialTicket),
    /// Abort the dial or handshake with this serial (its deadline passed, or it was
    /// evicted); its ticket still comes back, as a failure.
    Abort(u64),
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

/// What differs between runtimes. Every method is called with no lock held.
pub trait Platform {
    /// The connection type.
    type Conn;
    /// The sending half of a get's reply channel.
    type Reply: Reply<Self::Conn>;
    /// The receiving half, which the runtime's get waits on.
    type Wait;
    /// The runtime's clock (tokio's, for paused-time tests; the simulator's).
    fn now(&self) -> Instant;
    /// Whether an idle connection may be handed out. Must never consume a byte.
    fn alive(&self, conn: &mut Self::Conn) -> bool;
    /// A peek that tells a quiet connection from one with bytes waiting. Must never
    /// consume a byte. The default knows only [`alive`](Self::alive), and calls every
    /// live connection quiet: a platform that drives in-band activation
    /// ([`Driver::idle_ready`]) overrides it.
    fn peek(&self, conn: &mut Self::Conn) -> Peek {
        if self.alive(conn) {
            Peek::Quiet
        } else {
            Peek::Dead
        }
    }
    /// Watches a held connection again after a spurious readiness report (a watch
    /// that fires once, like `EPOLLONESHOT`, needs re-arming). Called with the lock
    /// held: one non-blocking call at most. The default does nothing.
    fn watch_again(&self, id: ConnId, conn: &Self::Conn) {
        let _ = (id, conn);
    }
    /// A reply channel for a get that has to wait. Called under the lock: allocate,
    /// never block or make a system call.
    fn channel(&self) -> (Self::Reply, Self::Wait);
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
    fn start(&self, task: Task);
    /// Closes a connection. The default drops it.
    fn close(&self, id: ConnId, conn: Self::Conn) {
        drop((id, conn));
    }
}

/// What a non-blocking peek at a held connection found ([`Platform::peek`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peek {
    /// Alive, nothing to read.
    Quiet,
    /// Alive, with bytes waiting (left unread).
    Pending,
    /// Closed by the peer, reset, or failed.
    Dead,
}

/// What became of a held connection the OS reported ready ([`Driver::idle_ready`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readied {
    /// Dead: it left the pool and is closed.
    Closed,
    /// The peer started a session on it (in-band mode): it went to an accept.
    Started,
    /// Still held, and watched again ([`Platform::watch_again`]): the report was
    /// spurious.
    Quiet,
    /// Still held, with bytes waiting for the get that takes it (the Go protocol: the
    /// peer started relaying before this side's get); not watched again, as its
    /// readiness stays.
    Pending,
    /// Not held any more (taken, closed, out for a probe): nothing to do.
    NotHeld,
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
    /// A live connection.
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
}

impl<M: Role, P: Platform<Conn = M::Conn>> std::fmt::Debug for Driver<M, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("status", &self.read(Role::status))
            .finish_non_exhaustive()
    }
}

struct State<M: Role, R> {
    m: M,
    replies: HashMap<WaiterKey, R>,
    /// The deadline the timer loop sleeps until (`None`: none); an input that brings
    /// an earlier one wakes it.
    armed: Option<Instant>,
    /// A sweep batch that came out of an input other than the timer loop's: the loop
    /// probes it (a get never pays for a sweep).
    stashed: Option<Probe<M::Conn>>,
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

/// Where a get stands inside the protocol.
enum Pending<C, W> {
    Step(Step<C, W>),
    Check(crate::Check<C>),
}

impl<M: Role, P: Platform<Conn = M::Conn>> Driver<M, P> {
    /// A driver for `machine` on `platform`. Start the timer loop ([`turn`](Self::turn))
    /// right after.
    pub fn new(machine: M, platform: P) -> Self {
        Self {
            state: Mutex::new(State {
                m: machine,
                replies: HashMap::new(),
                armed: None,
                stashed: None,
            }),
            platform,
        }
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    fn lock(&self) -> MutexGuard<'_, State<M, P::Reply>> {
        // Every critical section runs machine calls only and leaves the machine
        // consistent, even if a thread panicked elsewhere while holding the lock.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A read of the machine under the lock.
    pub fn read<R>(&self, f: impl FnOnce(&M) -> R) -> R {
        f(&self.lock().m)
    }

    /// An input: `f` runs on the machine under the lock, the outputs are drained and
    /// then performed with no lock held. Use it for the role's own inputs (a dial's
    /// result, an accepted connection).
    pub fn input<R>(&self, f: impl FnOnce(&mut M, Instant) -> R) -> R {
        let now = self.platform.now();
        let (r, out) = {
            let mut st = self.lock();
            let r = f(&mut st.m, now);
            (r, self.drain(&mut st, now, false))
        };
        self.perform(out, false);
        r
    }

    /// One turn of the timer loop: time passed (`handle_timeout`), every output is
    /// drained and performed, sweep batches are probed here and given back, batch
    /// after batch. Then sleep as it answers.
    pub fn turn(&self) -> Sleep {
        let now = self.platform.now();
        let out = {
            let mut st = self.lock();
            if st.m.is_closed() {
                return Sleep::Stop;
            }
            st.m.handle_timeout(now);
            let mut out = self.drain(&mut st, now, true);
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

    /// A get for `want`, giving up after `timeout`. A candidate is probed here with no
    /// lock held; a dead one is counted and the next is tried.
    pub fn get(&self, want: Want, timeout: Duration) -> Step<M::Conn, P::Wait> {
        let deadline = deadline_after(self.platform.now(), timeout);
        self.get_until(want, deadline)
    }

    fn get_until(&self, want: Want, deadline: Instant) -> Step<M::Conn, P::Wait> {
        let now = self.platform.now();
        let (mut pending, mut out) = {
            let mut st = self.lock();
            let got = st.m.get(want, now, deadline);
            let pending = self.register(&mut st, got, want, deadline);
            (pending, self.drain(&mut st, now, false))
        };
        // Bounded: each turn hands out a connection, fails, waits, or evicts a dead one.
        loop {
            self.perform(out, false);
            let mut check = match pending {
                Pending::Step(step) => return step,
                Pending::Check(check) => check,
            };
            let alive = self.platform.alive(check.conn_mut());
            let now = self.platform.now();
            let mut st = self.lock();
            let got = st.m.handle_check(check, alive, now);
            pending = self.register(&mut st, got, want, deadline);
            out = self.drain(&mut st, now, false);
        }
    }

    /// What a waiting get received. A connection is probed first: one whose peer gave
    /// up while it was on its way is counted and closed, and the get goes on.
    pub fn arrived(&self, get: WaitingGet, delivery: Delivery<M::Conn>) -> Step<M::Conn, P::Wait> {
        let (id, mut conn) = match delivery {
            Ok(pair) => pair,
            Err(e) => return Step::Failed(e),
        };
        if self.platform.alive(&mut conn) {
            return Step::Ready(id, conn);
        }
        self.input(|m, now| m.handle_dead_answer(id, conn, now));
        self.get_until(get.want, get.deadline)
    }

    /// A waiting get gives up (its caller went away, say). `late` takes an answer that
    /// may have been sent meanwhile (a `try_recv`); its connection goes back to the
    /// pool, never lost. Called under the lock: no blocking in `late`.
    pub fn cancel(&self, get: WaitingGet, late: impl FnOnce() -> Option<Delivery<M::Conn>>) {
        let now = self.platform.now();
        let out = {
            let mut st = self.lock();
            st.replies.remove(&get.key);
            if !st.m.cancel(get.key) {
                if let Some(Ok((id, conn))) = late() {
                    st.m.give_back(get.key, id, conn, now);
                }
            }
            self.drain(&mut st, now, false)
        };
        self.perform(out, false);
    }

    /// The OS reported the held connection `id` ready: its peer closed or reset it
    /// (a hang-up or an error), or, on a platform that watches for bytes, bytes arrived.
    /// The driver peeks at it once ([`Platform::peek`], under the lock: one
    /// non-blocking call) and acts on what it finds:
    /// - dead: it leaves the pool at once and is closed
    ///   ([`crate::PoolCommon::handle_idle_closed`]; on a server, a connection still
    ///   settling too);
    /// - bytes waiting, in in-band mode: the peer started a session, and the
    ///   connection goes to the oldest accept, or waits for the next
    ///   ([`crate::PoolCommon::handle_idle_started`]);
    /// - bytes waiting otherwise: it stays for the get that takes it (a session the
    ///   peer started before this side's get, perhaps half-closed behind its bytes);
    /// - quiet: it stays, and is watched again ([`Platform::watch_again`]).
    ///
    /// A platform that watches held connections calls it; one that does not leaves
    /// dead peers to the sweep, and cannot run in-band mode.
    pub fn idle_ready(&self, id: ConnId) -> Readied {
        let now = self.platform.now();
        let (readied, out) = {
            let mut st = self.lock();
            let in_band = st.m.in_band();
            let Some(conn) = st.m.held_conn_mut(id) else {
                return Readied::NotHeld;
            };
            let readied = match self.platform.peek(conn) {
                Peek::Quiet => {
                    self.platform.watch_again(id, conn);
                    return Readied::Quiet;
                }
                Peek::Pending if !in_band => return Readied::Pending,
                Peek::Pending if st.m.handle_idle_started(id, now) => Readied::Started,
                Peek::Pending => Readied::NotHeld, // settling on a server: not idle yet
                Peek::Dead if st.m.handle_idle_closed(id, now) => Readied::Closed,
                Peek::Dead => Readied::NotHeld,
            };
            (readied, self.drain(&mut st, now, false))
        };
        self.perform(out, false);
        readied
    }

    /// [`idle_ready`](Self::idle_ready) for a hang-up: whether the connection left
    /// the pool dead.
    pub fn idle_closed(&self, id: ConnId) -> bool {
        self.idle_ready(id) == Readied::Closed
    }

    /// Closes every idle connection (Go: `Flush`); how many.
    pub fn flush(&self) -> usize {
        self.input(|m, now| m.flush(now))
    }

    /// Closes the machine: every waiting get is answered `Closed`, every connection
    /// is closed, and the timer loop stops at its next turn (it is woken).
    pub fn shutdown(&self) {
        let now = self.platform.now();
        let mut out = {
            let mut st = self.lock();
            st.m.close();
            if let Some(p) = st.stashed.take() {
                st.m.handle_probe(p, now);
            }
            let mut out = self.drain(&mut st, now, false);
            for (key, tx) in st.replies.drain() {
                out.sends.push((key, tx, Err(GetFailure::Closed)));
            }
            out
        };
        out.wake(now);
        self.perform(out, false);
    }

    /// Registers the reply channel of a get that must wait.
    fn register(
        &self,
        st: &mut State<M, P::Reply>,
        got: Got<M::Conn>,
        want: Want,
        deadline: Instant,
    ) -> Pending<M::Conn, P::Wait> {
        Pending::Step(match got {
            Got::Ready(id, conn) => Step::Ready(id, conn),
            Got::Failed(e) => Step::Failed(e),
            Got::Check(c) => return Pending::Check(c),
            Got::Wait(key) => {
                let (tx, wait) = self.platform.channel();
                st.replies.insert(key, tx);
                let get = WaitingGet {
                    key,
                    want,
                    deadline,
                };
                Step::Wait(Waiting { get, wait })
            }
        })
    }

    /// Drains the machine until `Timeout`. An answer whose get went away gives its
    /// connection back. Sweep batches go to the timer loop: taken here when
    /// `sweeping`, stashed for it otherwise.
    fn drain(
        &self,
        st: &mut State<M, P::Reply>,
        now: Instant,
        sweeping: bool,
    ) -> Out<M::Conn, P::Reply> {
        let mut out = Out::new();
        loop {
            match st.m.poll_output(now) {
                Output::Answer(a) => match st.replies.remove(&a.key) {
                    Some(tx) => out.sends.push((a.key, tx, a.result)),
                    None => {
                        if let Ok((id, conn)) = a.result {
                            st.m.give_back(a.key, id, conn, now);
                        }
                    }
                },
                Output::Dial(t) => out.tasks.push(Task::Dial(t)),
                Output::Abort(serial) => out.tasks.push(Task::Abort(serial)),
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
                self.platform.wake_at(at);
            }
            for task in out.tasks {
                self.platform.start(task);
            }
            let mut back = Vec::new();
            for (key, tx, delivery) in out.sends {
                if let Err(Ok((id, conn))) = tx.send(delivery) {
                    back.push((key, id, conn));
                }
            }
            for (id, conn) in out.close {
                self.platform.close(id, conn);
            }
            let probe = out.probe.map(|mut p| {
                p.check(|c| self.platform.alive(c));
                p
            });
            if back.is_empty() && probe.is_none() {
                return timeout;
            }
            let now = self.platform.now();
            let mut st = self.lock();
            for (key, id, conn) in back {
                st.m.give_back(key, id, conn, now);
            }
            if let Some(p) = probe {
                st.m.handle_probe(p, now);
            }
            out = self.drain(&mut st, now, sweeping);
        }
    }
}
