//! The simulator as a [`Platform`] of pool-core's driver protocol: the same
//! [`Driver`](pool_core::driver::Driver) code the tokio and threads pools run, with the
//! simulated clock, the network model's verdict as the liveness probe, and every
//! request of the driver (a dial, an abort, an answer, a close, a wake-up) queued on a
//! [`Wire`] for the simulation to play out when the driver call returns.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Instant;

use pool_core::driver::{Delivery, Platform, Reply, Task};
use pool_core::ConnId;
use pool_core::Liveness;

/// Which pool a request comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    Client,
    Server,
}

/// A request of one of the drivers, in the order it was made.
#[derive(Debug)]
pub(super) enum Request {
    /// Start a dial, or abort a dial or handshake.
    Task(End, Task),
    /// The answer to the waiting get with this reply tag.
    Reply(u64, Delivery<u64>),
    /// The pool closed its end of this connection.
    Close(End, u64),
    /// Run the driver's next turn at this instant (or earlier).
    Wake(End, Instant),
}

/// What both platforms share with the simulation: the clock, whether each end of each
/// connection is still open, and the queue of requests.
#[derive(Debug)]
pub(super) struct Wire {
    now: Cell<Instant>,
    /// Per connection: (client end closed, server end closed).
    ends: RefCell<HashMap<u64, (bool, bool), super::net::Serials>>,
    /// Connections with bytes waiting at the client's end: the server started a
    /// session on them (in-band mode).
    pending: RefCell<HashSet<u64, super::net::Serials>>,
    queue: RefCell<VecDeque<Request>>,
    next_tag: Cell<u64>,
    /// Probes that found a connection dead: client side, server side.
    dead: [Cell<u64>; 2],
}

impl Wire {
    pub(super) fn new(now: Instant) -> Rc<Self> {
        Rc::new(Self {
            now: Cell::new(now),
            ends: RefCell::default(),
            pending: RefCell::default(),
            queue: RefCell::default(),
            next_tag: Cell::new(0),
            dead: [Cell::new(0), Cell::new(0)],
        })
    }

    pub(super) fn set_now(&self, now: Instant) {
        self.now.set(now);
    }

    /// A connection opened, closed at one end, or forgotten.
    pub(super) fn opened(&self, serial: u64) {
        self.ends.borrow_mut().insert(serial, (false, false));
    }
    pub(super) fn closed(&self, serial: u64, client_end: bool) {
        if let Some(e) = self.ends.borrow_mut().get_mut(&serial) {
            if client_end {
                e.0 = true;
            } else {
                e.1 = true;
            }
        }
    }
    pub(super) fn forget(&self, serial: u64) {
        self.ends.borrow_mut().remove(&serial);
        self.pending.borrow_mut().remove(&serial);
    }
    /// The server's start header reached the client's end of `serial`.
    pub(super) fn set_pending(&self, serial: u64) {
        self.pending.borrow_mut().insert(serial);
    }
    /// Whether bytes wait at the client's end of `serial`.
    pub(super) fn is_pending(&self, serial: u64) -> bool {
        self.pending.borrow().contains(&serial)
    }

    pub(super) fn pop(&self) -> Option<Request> {
        self.queue.borrow_mut().pop_front()
    }

    /// Puts requests back at the front of the queue, in their order.
    pub(super) fn requeue(&self, requests: Vec<Request>) {
        let mut q = self.queue.borrow_mut();
        for r in requests.into_iter().rev() {
            q.push_front(r);
        }
    }

    fn push(&self, r: Request) {
        self.queue.borrow_mut().push_back(r);
    }

    /// Connections the probes of `end` found dead.
    pub(super) fn dead(&self, end: End) -> u64 {
        self.dead[end as usize].get()
    }
}

/// One pool's platform.
#[derive(Debug)]
pub(super) struct Sim {
    pub(super) wire: Rc<Wire>,
    pub(super) end: End,
}

/// A waiting get's reply channel: its answer joins the queue under its tag.
#[derive(Debug)]
pub(super) struct Tagged {
    tag: u64,
    wire: Rc<Wire>,
}

impl Reply<u64> for Tagged {
    fn send(self, delivery: Delivery<u64>) -> Result<(), Delivery<u64>> {
        self.wire.push(Request::Reply(self.tag, delivery));
        Ok(())
    }
}

impl Platform for Sim {
    type Conn = u64;
    type Reply = Tagged;
    type Wait = u64;
    type Abort = ();
    fn now(&self) -> Instant {
        self.wire.now.get()
    }
    /// What a probe finds: whether the other end is still open.
    fn alive(&self, serial: &mut u64) -> bool {
        let ends = self.wire.ends.borrow();
        let alive = ends
            .get(serial)
            .is_some_and(|&(client, server)| match self.end {
                End::Client => !server,
                End::Server => !client,
            });
        if !alive {
            let dead = &self.wire.dead[self.end as usize];
            dead.set(dead.get() + 1);
        }
        alive
    }
    /// Dead as [`alive`](Self::alive) finds it; at the client, bytes wait on a
    /// connection the server started a session on.
    fn peek(&self, serial: &mut u64) -> Liveness {
        if !self.alive(serial) {
            Liveness::Closed
        } else if self.end == End::Client && self.wire.is_pending(*serial) {
            Liveness::Pending
        } else {
            Liveness::Idle
        }
    }
    fn channel(&self) -> (Tagged, u64) {
        let tag = self.wire.next_tag.get();
        self.wire.next_tag.set(tag + 1);
        let wire = self.wire.clone();
        (Tagged { tag, wire }, tag)
    }
    fn wake(&self) {
        self.wake_at(self.now());
    }
    fn wake_at(&self, at: Instant) {
        self.wire.push(Request::Wake(self.end, at));
    }
    fn start(&self, task: Task) {
        self.wire.push(Request::Task(self.end, task));
    }
    fn close(&self, _id: ConnId, serial: u64) {
        self.wire.push(Request::Close(self.end, serial));
    }
}
