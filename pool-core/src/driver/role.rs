//! What the driver protocol asks of a machine: the two roles seen through one trait.

use std::time::Instant;

use crate::common::{Check, Got, Output, PoolCommon, Probe, Readied, Reported};
use crate::stats::{Counters, Status};
use crate::waiters::{WaiterKey, Want};
use crate::Liveness;
use crate::{ClientMachine, ConnId, ServerMachine};

mod sealed {
    pub trait Sealed {}
    impl<C> Sealed for crate::ClientMachine<C> {}
    impl<C> Sealed for crate::ServerMachine<C> {}
}

/// A machine the [`Driver`](super::Driver) can run: [`ClientMachine`] or
/// [`ServerMachine`]. Sealed: the protocol is written for these two, and a get always
/// goes through the role, which tells the adaptation policy about it. What both roles
/// share comes from [`PoolCommon`], once.
pub trait Role: sealed::Sealed {
    /// The connection type the machine holds.
    type Conn;
    /// The shared part, for the methods both roles answer alike.
    #[doc(hidden)]
    fn shared(&self) -> &PoolCommon<Self::Conn>;
    /// The shared part, mutably.
    #[doc(hidden)]
    fn shared_mut(&mut self) -> &mut PoolCommon<Self::Conn>;
    /// A get: by id on a client in multi mode, any connection otherwise (a server
    /// answers `NotFound` to a get by id).
    fn get(&mut self, want: Want, now: Instant, deadline: Instant) -> Got<Self::Conn>;
    /// Time passed.
    fn handle_timeout(&mut self, now: Instant);
    /// The next request for the driver.
    fn poll_output(&mut self, now: Instant) -> Output<Self::Conn>;
    /// A connection whose answer could not be delivered comes back.
    fn put_back(&mut self, id: ConnId, conn: Self::Conn, now: Instant);
    /// Queues every idle connection for closing; how many.
    fn flush(&mut self, now: Instant) -> usize;
    /// Closes the machine.
    fn close(&mut self);
    /// The status snapshot.
    fn status(&self) -> Status;

    /// The verdict on a get's candidate.
    fn handle_check(
        &mut self,
        check: Check<Self::Conn>,
        alive: bool,
        now: Instant,
    ) -> Got<Self::Conn> {
        self.shared_mut().handle_check(check, alive, now)
    }
    /// A connection answered to a waiting get was dead when it got there.
    fn handle_dead_answer(&mut self, id: ConnId, conn: Self::Conn, now: Instant) {
        self.shared_mut().handle_dead_answer(id, conn, now);
    }
    /// A sweep batch comes back, probed.
    fn handle_probe(&mut self, probe: Probe<Self::Conn>, now: Instant) {
        self.shared_mut().handle_probe(probe, now);
    }
    /// The OS reported the held connection `id` ready: it leaves for one peek.
    fn take_held(&mut self, id: ConnId, now: Instant) -> Option<Reported<Self::Conn>>;
    /// The peek's verdict on a connection of `take_held`: what became of it, and
    /// whether to peek again.
    fn handle_peeked(
        &mut self,
        held: Reported<Self::Conn>,
        peek: Liveness,
        now: Instant,
    ) -> (Readied, bool);
    /// A connection answered to the get `key` comes back: that get went away. A
    /// started one returns to the started queue, any other to `put_back`.
    fn give_back(&mut self, key: WaiterKey, id: ConnId, conn: Self::Conn, now: Instant) {
        if key.is_started() {
            self.shared_mut().restore_started(id, conn);
        } else {
            self.put_back(id, conn, now);
        }
    }
    /// A waiting get went away; whether it was still waiting.
    fn cancel(&mut self, key: WaiterKey) -> bool {
        self.shared_mut().cancel(key)
    }
    /// Whether the peer starts sessions in band (a client's [`IdleWatch::Starts`](crate::IdleWatch::Starts)).
    fn in_band(&self) -> bool {
        false
    }
    /// Whether it is closed.
    fn is_closed(&self) -> bool {
        self.shared().is_closed()
    }
    /// The counters.
    fn counters(&self) -> Counters {
        self.shared().counters()
    }
    /// Records an application error (Go: `AddError`).
    fn add_error(&mut self) {
        self.shared_mut().add_error();
    }
    /// Resets the application error count.
    fn reset_errors(&mut self) {
        self.shared_mut().reset_errors();
    }
}

impl<C> Role for ClientMachine<C> {
    type Conn = C;
    fn shared(&self) -> &PoolCommon<C> {
        self.common()
    }
    fn shared_mut(&mut self) -> &mut PoolCommon<C> {
        self.common_mut()
    }
    fn get(&mut self, want: Want, now: Instant, deadline: Instant) -> Got<C> {
        match want {
            Want::Id(id) => Self::get(self, id, now, deadline),
            Want::Any => self.get_any(now, deadline),
            Want::Started => self.accept(now, deadline),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        Self::handle_timeout(self, now);
    }
    fn take_held(&mut self, id: ConnId, now: Instant) -> Option<Reported<C>> {
        Self::take_held(self, id, now)
    }
    fn handle_peeked(
        &mut self,
        held: Reported<C>,
        peek: Liveness,
        now: Instant,
    ) -> (Readied, bool) {
        Self::handle_peeked(self, held, peek, now)
    }
    fn handle_check(&mut self, check: Check<C>, alive: bool, now: Instant) -> Got<C> {
        Self::handle_check(self, check, alive, now)
    }
    fn poll_output(&mut self, now: Instant) -> Output<C> {
        Self::poll_output(self, now)
    }
    fn put_back(&mut self, id: ConnId, conn: C, now: Instant) {
        Self::put_back(self, id, conn, now);
    }
    fn flush(&mut self, now: Instant) -> usize {
        Self::flush(self, now)
    }
    fn close(&mut self) {
        Self::close(self);
    }
    fn status(&self) -> Status {
        Self::status(self)
    }
    fn in_band(&self) -> bool {
        self.config().in_band()
    }
}

impl<C> Role for ServerMachine<C> {
    type Conn = C;
    fn shared(&self) -> &PoolCommon<C> {
        self.common()
    }
    fn shared_mut(&mut self) -> &mut PoolCommon<C> {
        self.common_mut()
    }
    fn get(&mut self, want: Want, now: Instant, deadline: Instant) -> Got<C> {
        match want {
            Want::Any => Self::get(self, now, deadline),
            Want::Id(_) | Want::Started => self.get_by_id(),
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        Self::handle_timeout(self, now);
    }
    fn poll_output(&mut self, now: Instant) -> Output<C> {
        Self::poll_output(self, now)
    }
    fn take_held(&mut self, id: ConnId, now: Instant) -> Option<Reported<C>> {
        Self::take_held(self, id, now)
    }
    fn handle_peeked(
        &mut self,
        held: Reported<C>,
        peek: Liveness,
        now: Instant,
    ) -> (Readied, bool) {
        Self::handle_peeked(self, held, peek, now)
    }
    fn put_back(&mut self, id: ConnId, conn: C, now: Instant) {
        Self::put_back(self, id, conn, now);
    }
    fn flush(&mut self, _now: Instant) -> usize {
        Self::flush(self)
    }
    fn close(&mut self) {
        Self::close(self);
    }
    fn status(&self) -> Status {
        Self::status(self)
    }
}
