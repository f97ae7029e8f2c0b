//! Delivery of answers to waiting gets, with cancellation safety.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use pool_core::{Answer, ConnId, GetError, WaiterKey};
use tokio::sync::oneshot;

use crate::conn::PoolConn;

pub(crate) type Delivery = Result<(ConnId, PoolConn), GetError>;
pub(crate) type Reply = oneshot::Sender<Delivery>;

/// The reply channels of waiting gets, by key.
#[derive(Default)]
pub(crate) struct Replies(HashMap<WaiterKey, Reply>);

/// What both machines offer the delivery code and the status getters.
pub(crate) trait Machine {
    fn poll_answer(&mut self) -> Option<Answer<PoolConn>>;
    fn put_back(&mut self, id: ConnId, conn: PoolConn) -> Result<(), PoolConn>;
    fn cancel(&mut self, key: WaiterKey) -> bool;
    fn status(&self) -> pool_core::Status;
    fn counters(&self) -> pool_core::Counters;
    fn add_error(&mut self);
    fn reset_errors(&mut self);
    fn is_closed(&self) -> bool;
}

/// Implements [`Machine`] for a core machine by delegation.
macro_rules! impl_machine {
    ($m:ty) => {
        impl $crate::shared::Machine for $m {
            fn poll_answer(&mut self) -> Option<pool_core::Answer<PoolConn>> {
                Self::poll_answer(self)
            }
            fn put_back(&mut self, id: ConnId, conn: PoolConn) -> Result<(), PoolConn> {
                Self::put_back(self, id, conn)
            }
            fn cancel(&mut self, key: WaiterKey) -> bool {
                Self::cancel(self, key)
            }
            fn status(&self) -> pool_core::Status {
                Self::status(self)
            }
            fn counters(&self) -> pool_core::Counters {
                Self::counters(self)
            }
            fn add_error(&mut self) {
                Self::add_error(self)
            }
            fn reset_errors(&mut self) {
                Self::reset_errors(self)
            }
            fn is_closed(&self) -> bool {
                Self::is_closed(self)
            }
        }
    };
}
pub(crate) use impl_machine;

/// The getters both pools share, each one short lock on the machine. The pool type
/// must have `fn machine(&self)` returning the locked state, whose `m` is the machine.
macro_rules! common_getters {
    () => {
        /// Whether the pool runs: true from `build` until `close` (Go: `Ready`).
        pub fn is_ready(&self) -> bool {
            !crate::shared::Machine::is_closed(&self.machine().m)
        }

        /// Idle connections (Go: `Active`).
        pub fn active(&self) -> usize {
            crate::shared::Machine::status(&self.machine().m).idle
        }

        /// Records an application error (Go: `AddError`).
        pub fn add_error(&self) {
            crate::shared::Machine::add_error(&mut self.machine().m);
        }

        /// Application errors recorded (Go: `ErrorCount`).
        pub fn error_count(&self) -> u64 {
            crate::shared::Machine::counters(&self.machine().m).app_errors
        }

        /// Resets the application error count (Go, later releases: `ResetError`).
        pub fn reset_error(&self) {
            crate::shared::Machine::reset_errors(&mut self.machine().m);
        }

        /// Status and counters, taken together.
        pub fn stats(&self) -> crate::stats::Stats {
            let st = self.machine();
            crate::stats::Stats {
                status: crate::shared::Machine::status(&st.m),
                counters: crate::shared::Machine::counters(&st.m),
            }
        }

        /// Waits until at least `n` connections are idle, or `timeout` passes; whether
        /// they are.
        pub async fn wait_idle(&self, n: usize, timeout: std::time::Duration) -> bool {
            crate::stats::wait_until(timeout, || self.active() >= n).await
        }
    };
}
pub(crate) use common_getters;

impl Replies {
    pub(crate) fn insert(&mut self, key: WaiterKey, tx: Reply) {
        self.0.insert(key, tx);
    }

    /// Sends every answer the machine has. A get that went away gets nothing: its
    /// connection goes back to the pool, never lost.
    pub(crate) fn deliver(&mut self, m: &mut impl Machine) {
        while let Some(a) = m.poll_answer() {
            let undelivered = match self.0.remove(&a.key) {
                Some(tx) => tx.send(a.result).err(),
                None => Some(a.result),
            };
            if let Some(Ok((id, conn))) = undelivered {
                // Fails only when closed; the connection is then dropped, i.e. closed.
                let _ = m.put_back(id, conn);
            }
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic in user code elsewhere: every critical
    // section here is short and does not call user code.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Something that can take the lock, run delivery and cancel a waiter.
pub(crate) trait Hub: Send + Sync + 'static {
    fn cancel_waiter(&self, key: WaiterKey, rx: &mut oneshot::Receiver<Delivery>);
}

/// A waiting get. Dropped before its answer came, it cancels the waiter; if the answer
/// came in the meantime, the connection goes back to the pool.
pub(crate) struct Waiting<'a, H: Hub> {
    pub(crate) hub: &'a H,
    pub(crate) key: WaiterKey,
    pub(crate) rx: Option<oneshot::Receiver<Delivery>>,
}

impl<H: Hub> Waiting<'_, H> {
    /// Waits for the answer. `deadline` is a safety net past the core's own deadline, so
    /// that even a driver that died cannot make a get hang.
    pub(crate) async fn wait(mut self, deadline: Instant) -> Delivery {
        let Some(rx) = self.rx.as_mut() else {
            return Err(GetError::Closed);
        };
        let net = crate::rt::sleep_until(deadline + std::time::Duration::from_secs(1));
        let out = tokio::select! {
            r = rx => r.unwrap_or(Err(GetError::Closed)),
            _ = net => return Err(GetError::Timeout), // the guard cancels
        };
        self.rx = None;
        out
    }
}

impl<H: Hub> Drop for Waiting<'_, H> {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            self.hub.cancel_waiter(self.key, &mut rx);
        }
    }
}

/// The cancel path shared by both pools.
pub(crate) fn cancel_in(
    m: &mut impl Machine,
    replies: &mut Replies,
    key: WaiterKey,
    rx: &mut oneshot::Receiver<Delivery>,
) {
    replies.0.remove(&key);
    if !m.cancel(key) {
        if let Ok(Ok((id, conn))) = rx.try_recv() {
            let _ = m.put_back(id, conn);
            replies.deliver(m);
        }
    }
}

/// Drains every reply with `Closed` (after the machine closed, as a last resort).
pub(crate) fn close_all(replies: &mut Replies) {
    for (_, tx) in replies.0.drain() {
        let _ = tx.send(Err(GetError::Closed));
    }
}

/// What a pool does when its last handle goes: close, without waiting.
pub(crate) trait Shut {
    fn shut(&self) -> Vec<(ConnId, PoolConn)>;
}

/// Held by every clone of a pool's handle; the last one dropped closes the pool.
pub(crate) struct Owner<I: Shut>(pub(crate) std::sync::Arc<I>);

impl<I: Shut> Drop for Owner<I> {
    fn drop(&mut self) {
        drop(self.0.shut());
    }
}
