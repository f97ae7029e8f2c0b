//! A get as a runtime waits for it: blocking on a channel or awaiting it, cancelled
//! cleanly when an async caller goes away, and an accept's loop over started
//! connections. Written once, so a runtime brings only its reply channel.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use super::{Delivery, Driver, Platform, Reply, Role, Step, WaitingGet};
use crate::time::deadline_after;
use crate::waiters::Want;
use crate::{ClientMachine, ConnId, GetFailure, START};

/// A start header as an accept read it: `None` when it did not come whole in time.
pub type Header = Option<[u8; START.len()]>;

/// The time spent by gets that had to wait, kept with two relaxed atomics beside the
/// lock rather than under it: a get adds to them once per wait.
#[derive(Debug, Default)]
pub(super) struct Waits {
    nanos: AtomicU64,
    count: AtomicU64,
}

impl Waits {
    fn add(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(nanos, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

impl<C> Reply<C> for SyncSender<Delivery<C>> {
    fn send(self, delivery: Delivery<C>) -> Result<(), Delivery<C>> {
        Self::send(&self, delivery).map_err(|e| e.0)
    }
}

impl<M: Role, P: Platform<Conn = M::Conn>> Driver<M, P> {
    /// How many times gets waited for an answer, and how long in all, from the wait's
    /// start to its answer, on the platform's clock (bb8: `get_waited`,
    /// `get_wait_time`). Counted by [`get_async`](Self::get_async) and
    /// [`get_blocking`](Self::get_blocking).
    pub fn waited(&self) -> (u64, Duration) {
        let w = &self.waits;
        (
            w.count.load(Relaxed),
            Duration::from_nanos(w.nanos.load(Relaxed)),
        )
    }

    /// A get on an async runtime: [`get`](Self::get), awaiting the reply channel when
    /// it must wait. Dropped while it waits, it cancels its waiter, and a connection
    /// already sent to it comes back to the pool ([`Platform::sent`]).
    pub async fn get_async<E>(
        &self,
        want: Want,
        timeout: Duration,
    ) -> Result<(ConnId, M::Conn), GetFailure>
    where
        P::Wait: Future<Output = Result<Delivery<M::Conn>, E>> + Unpin,
    {
        let deadline = deadline_after(self.p().now(), timeout);
        self.wait_async(self.get_until(want, deadline)).await
    }

    async fn wait_async<E>(
        &self,
        mut step: Step<M::Conn, P::Wait>,
    ) -> Result<(ConnId, M::Conn), GetFailure>
    where
        P::Wait: Future<Output = Result<Delivery<M::Conn>, E>> + Unpin,
    {
        loop {
            let waiting = match step {
                Step::Ready(id, conn) => return Ok((id, conn)),
                Step::Failed(e) => return Err(e),
                Step::Wait(w) => w,
            };
            let began = self.p().now();
            let mut guard = Cancel {
                driver: self,
                get: waiting.get,
                wait: Some(waiting.wait),
            };
            let delivery = match guard.wait.as_mut() {
                Some(wait) => wait.await.unwrap_or(Err(GetFailure::Closed)),
                None => Err(GetFailure::Closed),
            };
            guard.wait = None;
            self.waits
                .add(self.p().now().saturating_duration_since(began));
            step = self.arrived(waiting.get, delivery);
        }
    }
}

impl<M: Role, P: Platform<Conn = M::Conn, Wait = Receiver<Delivery<M::Conn>>>> Driver<M, P> {
    /// A get on threads: [`get`](Self::get), blocking on the reply channel when it must
    /// wait (the machine answers it `Timeout` at its deadline).
    pub fn get_blocking(
        &self,
        want: Want,
        timeout: Duration,
    ) -> Result<(ConnId, M::Conn), GetFailure> {
        let deadline = deadline_after(self.p().now(), timeout);
        self.wait_blocking(self.get_until(want, deadline))
    }

    fn wait_blocking(
        &self,
        mut step: Step<M::Conn, P::Wait>,
    ) -> Result<(ConnId, M::Conn), GetFailure> {
        loop {
            step = match step {
                Step::Ready(id, conn) => return Ok((id, conn)),
                Step::Failed(e) => return Err(e),
                Step::Wait(w) => {
                    let began = self.p().now();
                    let delivery = w.wait.recv().unwrap_or(Err(GetFailure::Closed));
                    self.waits
                        .add(self.p().now().saturating_duration_since(began));
                    self.arrived(w.get, delivery)
                }
            };
        }
    }
}

impl<C, P: Platform<Conn = C>> Driver<ClientMachine<C>, P> {
    /// An accept on an async runtime (in-band mode): the next connection the server
    /// started, its start header read by `read` before the instant it is given
    /// ([`start_deadline`](Self::start_deadline)) and checked here
    /// ([`check_start`](Self::check_start)); one that brings anything else is closed
    /// and counted, and the accept goes on until `timeout`.
    pub async fn accept_async<E, F>(
        &self,
        timeout: Duration,
        mut read: impl FnMut(C, Instant) -> F,
    ) -> Result<(ConnId, C), GetFailure>
    where
        P::Wait: Future<Output = Result<Delivery<C>, E>> + Unpin,
        F: Future<Output = (C, Header)>,
    {
        let deadline = deadline_after(self.p().now(), timeout);
        loop {
            let (id, conn) = self
                .wait_async(self.get_until(Want::Started, deadline))
                .await?;
            let (conn, header) = read(conn, self.start_deadline()).await;
            if let Some(conn) = self.check_start(id, conn, header.as_ref().map_or(&[], |h| h)) {
                return Ok((id, conn));
            }
        }
    }
}

impl<C, P: Platform<Conn = C, Wait = Receiver<Delivery<C>>>> Driver<ClientMachine<C>, P> {
    /// [`accept_async`](Self::accept_async) on threads: `read` blocks until the
    /// instant it is given at most.
    pub fn accept_blocking(
        &self,
        timeout: Duration,
        mut read: impl FnMut(&mut C, Instant) -> Header,
    ) -> Result<(ConnId, C), GetFailure> {
        let deadline = deadline_after(self.p().now(), timeout);
        loop {
            let (id, mut conn) = self.wait_blocking(self.get_until(Want::Started, deadline))?;
            let header = read(&mut conn, self.start_deadline());
            if let Some(conn) = self.check_start(id, conn, header.as_ref().map_or(&[], |h| h)) {
                return Ok((id, conn));
            }
        }
    }
}

/// A waiting async get. Dropped before its answer came (its caller's future was
/// dropped), it cancels the waiter; an answer sent meanwhile goes back to the pool.
struct Cancel<'a, M: Role, P: Platform<Conn = M::Conn>> {
    driver: &'a Driver<M, P>,
    get: WaitingGet,
    wait: Option<P::Wait>,
}

impl<M: Role, P: Platform<Conn = M::Conn>> Drop for Cancel<'_, M, P> {
    fn drop(&mut self) {
        if let Some(mut wait) = self.wait.take() {
            let p = self.driver.p();
            self.driver.cancel(self.get, || p.sent(&mut wait));
        }
    }
}
