//! A get's steps: ask the role, probe a candidate with no lock held, make a reply
//! channel when it must wait, probe what arrives, cancel cleanly.

use std::time::{Duration, Instant};

use super::{Delivery, Driver, Platform, Role, Slot, State, Step, Waiting, WaitingGet};
use crate::common::{Check, Got};
use crate::time::deadline_after;
use crate::waiters::{WaiterKey, Want};
use crate::{ConnId, GetFailure};

/// Where a get stands inside the protocol.
enum Pending<C> {
    Ready(ConnId, C),
    Failed(GetFailure),
    Check(Check<C>),
    /// It waits under this key: its reply channel is still to be made.
    Wait(WaiterKey),
}

impl<M: Role, P: Platform<Conn = M::Conn>> Driver<M, P> {
    /// A get for `want`, giving up after `timeout`. A candidate is probed here with no
    /// lock held; a dead one is counted and the next is tried. A connection handed out
    /// is no longer watched ([`Platform::unwatch`]).
    pub fn get(&self, want: Want, timeout: Duration) -> Step<M::Conn, P::Wait> {
        let deadline = deadline_after(self.p().now(), timeout);
        self.get_until(want, deadline)
    }

    pub(super) fn get_until(&self, want: Want, deadline: Instant) -> Step<M::Conn, P::Wait> {
        let now = self.p().now();
        let (mut pending, mut out) = {
            let mut st = self.lock();
            let got = st.m.get(want, now, deadline);
            (
                Self::register(&mut st, got),
                Self::drain(&mut st, now, false),
            )
        };
        // Bounded: each turn hands out a connection, fails, waits, or evicts a dead one.
        loop {
            self.perform(out, false);
            let mut check = match pending {
                Pending::Ready(id, conn) => return self.ready(want, id, conn),
                Pending::Failed(e) => return Step::Failed(e),
                Pending::Wait(key) => return self.open(key, want, deadline),
                Pending::Check(check) => check,
            };
            let alive = self.p().alive(check.conn_mut());
            let now = self.p().now();
            let mut st = self.lock();
            let got = st.m.handle_check(check, alive, now);
            pending = Self::register(&mut st, got);
            out = Self::drain(&mut st, now, false);
        }
    }

    /// A connection leaves the pool for its get: not watched any more. One the peer
    /// started (an accept's) is not watched already: its report was its start, and a
    /// watch reports once.
    fn ready(&self, want: Want, id: ConnId, conn: M::Conn) -> Step<M::Conn, P::Wait> {
        if want != Want::Started {
            self.p().unwatch(&conn);
        }
        Step::Ready(id, conn)
    }

    /// Notes a get that must wait: its reply channel is made with no lock held
    /// ([`open`](Self::open)); an answer that comes meanwhile is kept for it.
    fn register(st: &mut State<M, P::Reply>, got: Got<M::Conn>) -> Pending<M::Conn> {
        match got {
            Got::Ready(id, conn) => Pending::Ready(id, conn),
            Got::Failed(e) => Pending::Failed(e),
            Got::Check(c) => Pending::Check(c),
            Got::Wait(key) => {
                st.replies.insert(key, Slot::Opening);
                Pending::Wait(key)
            }
        }
    }

    /// Makes the reply channel of the waiting get `key`, with no lock held, and puts
    /// it in place; an answer that came meanwhile is handled at once.
    fn open(&self, key: WaiterKey, want: Want, deadline: Instant) -> Step<M::Conn, P::Wait> {
        let (tx, wait) = self.p().channel();
        let get = WaitingGet {
            key,
            want,
            deadline,
        };
        let early = {
            let mut st = self.lock();
            match st.replies.remove(&key) {
                Some(Slot::Opening) => {
                    st.replies.insert(key, Slot::Open(tx));
                    None
                }
                Some(Slot::Early(delivery)) => Some(delivery),
                // Not registered, or registered twice: cannot happen.
                Some(Slot::Open(_)) | None => Some(Err(GetFailure::Closed)),
            }
        };
        match early {
            Some(delivery) => self.arrived(get, delivery),
            None => Step::Wait(Waiting { get, wait }),
        }
    }

    /// What a waiting get received. A connection is probed first: one whose peer gave
    /// up while it was on its way is counted and closed, and the get goes on.
    pub fn arrived(&self, get: WaitingGet, delivery: Delivery<M::Conn>) -> Step<M::Conn, P::Wait> {
        let (id, mut conn) = match delivery {
            Ok(pair) => pair,
            Err(e) => return Step::Failed(e),
        };
        if self.p().alive(&mut conn) {
            return self.ready(get.want, id, conn);
        }
        self.input(|m, now| m.handle_dead_answer(id, conn, now));
        self.get_until(get.want, get.deadline)
    }

    /// A waiting get gives up (its caller went away, say). `late` takes an answer that
    /// may have been sent meanwhile (a `try_recv`); its connection goes back to the
    /// pool, never lost. `late` runs with no lock held.
    pub fn cancel(&self, get: WaitingGet, late: impl FnOnce() -> Option<Delivery<M::Conn>>) {
        let now = self.p().now();
        let (waiting, out) = {
            let mut st = self.lock();
            let slot = st.replies.remove(&get.key);
            let waiting = st.m.cancel(get.key);
            if let Some(Slot::Early(Ok((id, conn)))) = slot {
                st.m.give_back(get.key, id, conn, now);
            }
            (waiting, Self::drain(&mut st, now, false))
        };
        self.perform(out, false);
        // Answered already: the answer was sent, or is being sent (a send that finds
        // the receiver gone gives the connection back itself).
        if !waiting {
            if let Some(Ok((id, conn))) = late() {
                self.input(|m, now| m.give_back(get.key, id, conn, now));
            }
        }
    }
}
