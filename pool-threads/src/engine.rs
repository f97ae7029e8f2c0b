//! The driving loop on plain threads: one lock around the machine, one condvar for the
//! driver's single timer, a channel of dial tickets to the workers, and one reply
//! channel per waiting get.
//!
//! The rule everywhere: under the lock, only the machine's inputs and the draining of
//! its outputs. Every system call (connect, read, peek, a wake-up of another thread)
//! and every drop of a connection happens after the lock is let go, in `perform`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pool_core::{
    deadline_after, ClientMachine, ConnId, DialTicket, GetError, Got, PoolCommon, Probe, Stage,
    WaiterKey, Want,
};

use crate::conn::ThreadConn;
use crate::dial::Dialing;

type Delivery = Result<(ConnId, ThreadConn), GetError>;

pub(crate) struct Inner {
    state: Mutex<State>,
    /// The driver's timer: it waits here until the machine's next deadline.
    timer: Condvar,
    /// Tickets to the dial workers; `None` once closed, which ends the workers.
    dials: Mutex<Option<Sender<DialTicket>>>,
    stopping: AtomicBool,
    pub(crate) dialing: Dialing,
}

struct State {
    m: ClientMachine<ThreadConn>,
    replies: HashMap<WaiterKey, SyncSender<Delivery>>,
}

/// What to perform once the lock is let go.
#[derive(Default)]
struct Out {
    dials: Vec<DialTicket>,
    answers: Vec<(SyncSender<Delivery>, Delivery)>,
    close: Vec<(ConnId, ThreadConn)>,
    probe: Option<Probe<ThreadConn>>,
}

/// Where a get stands after an input.
enum Step {
    Check(pool_core::Check<ThreadConn>),
    Done(Delivery),
    Wait(WaiterKey, Receiver<Delivery>),
}

impl State {
    /// Drains every output (sweep batches only for the driver: a get or a dial never
    /// pays for a sweep). A get that went away gets nothing: its connection goes back.
    fn outputs(&mut self, now: Instant, sweep: bool) -> Out {
        let mut out = Out::default();
        while let Some(a) = self.m.poll_answer() {
            match (self.replies.remove(&a.key), a.result) {
                (Some(tx), result) => out.answers.push((tx, result)),
                (None, Ok((id, conn))) => self.m.put_back(id, conn, now),
                (None, Err(_)) => {}
            }
        }
        out.dials
            .extend(std::iter::from_fn(|| self.m.poll_dial(now)));
        if sweep {
            out.probe = self.m.poll_probe(now);
        }
        out.close.extend(std::iter::from_fn(|| self.m.poll_close()));
        out
    }

    fn register(&mut self, got: Got<ThreadConn>) -> Step {
        match got {
            Got::Ready(id, conn) => Step::Done(Ok((id, conn))),
            Got::Failed(e) => Step::Done(Err(e)),
            Got::Check(c) => Step::Check(c),
            Got::Wait(key) => {
                let (tx, rx) = mpsc::sync_channel(1);
                self.replies.insert(key, tx);
                Step::Wait(key, rx)
            }
        }
    }
}

impl Inner {
    pub(crate) fn new(
        m: ClientMachine<ThreadConn>,
        dialing: Dialing,
    ) -> (Self, Receiver<DialTicket>) {
        let (tx, rx) = mpsc::channel();
        let inner = Self {
            state: Mutex::new(State {
                m,
                replies: HashMap::new(),
            }),
            timer: Condvar::new(),
            dials: Mutex::new(Some(tx)),
            stopping: AtomicBool::new(false),
            dialing,
        };
        (inner, rx)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Critical sections run no user code and leave the machine consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&ClientMachine<ThreadConn>) -> R) -> R {
        f(&self.lock().m)
    }

    /// One input under the lock, its outputs drained, then performed with no lock held.
    /// When the input moved the machine's next deadline closer, the driver is woken to
    /// re-arm its timer; a later one it finds when it wakes anyway.
    fn with<R>(&self, input: impl FnOnce(&mut State, Instant) -> R) -> R {
        let now = Instant::now();
        let mut st = self.lock();
        let before = st.m.poll_timeout();
        let r = input(&mut st, now);
        let after = st.m.poll_timeout();
        let out = st.outputs(now, false);
        drop(st);
        if after.is_some_and(|a| before.is_none_or(|b| a < b)) {
            self.timer.notify_one();
        }
        self.perform(out);
        r
    }

    /// Performs the outputs, outside the lock: dials to the workers, answers to their
    /// gets, drops, and sweep batches probed and given back, until nothing is left.
    fn perform(&self, mut out: Out) {
        loop {
            let mut unsent = Vec::new();
            if !out.dials.is_empty() {
                let dials = self.dials.lock().unwrap_or_else(|e| e.into_inner());
                for t in out.dials {
                    match dials.as_ref() {
                        Some(tx) => {
                            if let Err(mpsc::SendError(t)) = tx.send(t) {
                                unsent.push(t);
                            }
                        }
                        None => unsent.push(t),
                    }
                }
            }
            let mut back = Vec::new();
            for (tx, result) in out.answers {
                if let Err(mpsc::SendError(Ok(conn))) = tx.send(result) {
                    back.push(conn); // the get gave up meanwhile
                }
            }
            drop(out.close);
            let mut probe = out.probe;
            if let Some(p) = probe.as_mut() {
                p.check(ThreadConn::is_alive);
            }
            if unsent.is_empty() && back.is_empty() && probe.is_none() {
                return;
            }
            let sweep = probe.is_some();
            let now = Instant::now();
            let mut st = self.lock();
            for t in unsent {
                st.m.handle_dial_failure(t, Stage::Connect, now);
            }
            for (id, conn) in back {
                st.m.put_back(id, conn, now);
            }
            if let Some(p) = probe {
                st.m.handle_probe(p, now);
            }
            out = st.outputs(now, sweep);
        }
    }

    /// The driver thread: handle the timeout, perform, sleep until the next deadline.
    pub(crate) fn drive(&self) {
        loop {
            let out = {
                let mut st = self.lock();
                loop {
                    if st.m.is_closed() {
                        return;
                    }
                    let now = Instant::now();
                    match st.m.poll_timeout() {
                        Some(at) if at <= now => break,
                        Some(at) => {
                            st = self
                                .timer
                                .wait_timeout(st, at - now)
                                .map_or_else(|e| e.into_inner().0, |r| r.0)
                        }
                        None => st = self.timer.wait(st).unwrap_or_else(|e| e.into_inner()),
                    }
                }
                let now = Instant::now();
                st.m.handle_timeout(now);
                st.outputs(now, true)
            };
            self.perform(out);
        }
    }

    /// A dial worker: takes tickets until the channel closes, dials, reports each once.
    pub(crate) fn work(&self, tickets: &Mutex<Receiver<DialTicket>>) {
        loop {
            let next = tickets.lock().unwrap_or_else(|e| e.into_inner()).recv();
            let Ok(ticket) = next else { return };
            let res = if self.stopping.load(Ordering::Acquire) {
                Err(Stage::Connect)
            } else {
                self.dialing.establish(&ticket).map_err(|(stage, _)| stage)
            };
            let single = self.dialing.single;
            self.with(|st, now| match res {
                Ok(mut conn) => {
                    if single {
                        conn.id = st.m.make_id();
                    }
                    let id = conn.id;
                    st.m.handle_dial_success(ticket, id, conn, now);
                }
                Err(stage) => st.m.handle_dial_failure(ticket, stage, now),
            });
        }
    }

    /// A get, from the first look to the answer. Candidates are probed here, with no
    /// lock held; a get that has to wait blocks on its own reply channel.
    pub(crate) fn get(&self, want: Want, timeout: Duration) -> Delivery {
        let deadline = deadline_after(Instant::now(), timeout);
        let mut step = self.with(|st, now| {
            // The shared get (by id or any), reached through `Deref`.
            let got = PoolCommon::get(&mut st.m, want, now, deadline);
            st.register(got)
        });
        loop {
            step = match step {
                Step::Done(d) => return d,
                Step::Wait(key, rx) => return self.wait(key, rx, deadline),
                Step::Check(mut check) => {
                    let alive = check.conn_mut().is_alive();
                    self.with(|st, now| {
                        let got = st.m.handle_check(check, alive, now);
                        st.register(got)
                    })
                }
            };
        }
    }

    /// Waits for the answer. A second past the core's own deadline is a safety net: even
    /// a driver that died cannot make a get hang. A get that gives up cancels its
    /// waiter; if the answer came meanwhile, the connection goes back to the pool.
    fn wait(&self, key: WaiterKey, rx: Receiver<Delivery>, deadline: Instant) -> Delivery {
        let net = deadline_after(deadline, Duration::from_secs(1));
        let err = match rx.recv_timeout(net.saturating_duration_since(Instant::now())) {
            Ok(d) => return d,
            Err(mpsc::RecvTimeoutError::Timeout) => GetError::Timeout,
            Err(mpsc::RecvTimeoutError::Disconnected) => GetError::Closed,
        };
        self.with(|st, now| {
            st.replies.remove(&key);
            if !st.m.cancel(key) {
                if let Ok(Ok((id, conn))) = rx.try_recv() {
                    st.m.put_back(id, conn, now);
                }
            }
        });
        Err(err)
    }

    /// Closes the machine: waiting gets are answered `Closed`, the driver is woken to
    /// end, the ticket channel is closed (which ends the workers once their dials
    /// return), and every connection is dropped here, outside the lock.
    pub(crate) fn shut(&self) {
        self.stopping.store(true, Ordering::Release);
        let out = {
            let mut st = self.lock();
            let conns = st.m.close();
            let mut out = st.outputs(Instant::now(), false);
            out.close.extend(conns);
            for (_, tx) in st.replies.drain() {
                out.answers.push((tx, Err(GetError::Closed)));
            }
            out
        };
        self.timer.notify_all();
        drop(self.dials.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.perform(out);
    }
}
