//! What both pools offer besides their gets, written once.

use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use pool_core::driver::Role;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::conn::PoolConn;
use crate::engine::Side;
use crate::rt::now;
use crate::stats::Stats;

/// What both pools offer besides their gets: status, counters, the error count and
/// readiness, flush and close. [`ClientPool`](crate::ClientPool) and
/// [`ServerPool`](crate::ServerPool) reach it through `Deref`, so it is written once. `M` names the pool's machine.
pub struct PoolHandle<M> {
    ops: Arc<dyn Ops>,
    role: PhantomData<fn() -> M>,
}

/// What a handle asks of its pool's engine, whatever the role.
trait Ops: Send + Sync {
    fn name(&self) -> &str;
    fn stats(&self) -> Stats;
    fn idle(&self) -> usize;
    fn closed(&self) -> bool;
    /// Application errors recorded since the last reset.
    fn error_count(&self) -> u64;
    /// Records one application error.
    fn add_error(&self);
    /// Sets the application error count back to zero.
    fn reset_errors(&self);
    fn changed(&self) -> &Notify;
    /// Closes every idle connection; how many.
    fn flush(&self) -> usize;
    /// Closes the pool; its tasks, to wait for.
    fn shut(&self) -> TaskTracker;
}

impl<M> Clone for PoolHandle<M> {
    fn clone(&self) -> Self {
        Self {
            ops: self.ops.clone(),
            role: PhantomData,
        }
    }
}

impl<M> PoolHandle<M> {
    pub(crate) fn new<S: Side<M = M>>(side: &Arc<S>) -> Self
    where
        M: Role<Conn = PoolConn> + Send + 'static,
    {
        let ops: Arc<dyn Ops> = Arc::new(EngineOf(side.clone()));
        Self {
            ops,
            role: PhantomData,
        }
    }

    /// A pool's `Debug`: what `d` holds already, then its name and status.
    pub(crate) fn debug(&self, mut d: std::fmt::DebugStruct<'_, '_>) -> std::fmt::Result {
        d.field("name", &self.name())
            .field("status", &self.stats().status)
            .finish()
    }

    /// The pool's name, set with the builder's `name` (default `pool`): the `name`
    /// label of its metrics.
    pub fn name(&self) -> &str {
        self.ops.name()
    }

    /// Whether the pool runs: true from `build` until `close` (Go: `Ready`).
    #[doc(alias = "Ready")]
    pub fn is_ready(&self) -> bool {
        !self.ops.closed()
    }

    /// Idle connections ready to hand out (Go: `Active`, which despite its name counts
    /// idle connections, not connections in use).
    #[doc(alias = "Active")]
    pub fn active(&self) -> usize {
        self.ops.idle()
    }

    /// Records an application error (Go: `AddError`).
    #[doc(alias = "AddError")]
    pub fn add_error(&self) {
        self.ops.add_error();
    }

    /// Application errors recorded (Go: `ErrorCount`).
    #[doc(alias = "ErrorCount")]
    pub fn error_count(&self) -> u64 {
        self.ops.error_count()
    }

    /// Resets the application error count (Go, later releases: `ResetError`).
    #[doc(alias = "ResetError")]
    pub fn reset_error(&self) {
        self.ops.reset_errors();
    }

    /// Status and counters, taken together.
    pub fn stats(&self) -> Stats {
        self.ops.stats()
    }

    /// Closes every idle connection (Go: `Flush`); a client pool refills at once.
    #[doc(alias = "Flush")]
    pub fn flush(&self) {
        let closed = self.ops.flush();
        info!(pool = self.name(), closed, "pool flushed");
    }

    /// Closes the pool: waiting gets fail with [`GetError::Closed`](crate::GetError::Closed),
    /// idle connections and dials or handshakes in flight are closed (a server's
    /// listener stops), and this returns once every task of the pool has ended (Go:
    /// `Close`). Dropping the last handle does the same without the wait. Closing twice
    /// is harmless.
    ///
    /// # Cancel safety
    ///
    /// The pool is closed by the time the future is first polled; dropping the future
    /// only stops waiting for the pool's tasks to end.
    #[doc(alias = "Close")]
    pub async fn close(&self) {
        let tasks = self.ops.shut();
        tasks.wait().await;
    }

    /// The current capacity of a client pool, the maximum capacity of a server pool
    /// (Go: `Capacity`).
    #[doc(alias = "Capacity")]
    pub fn capacity(&self) -> usize {
        self.stats().status.capacity
    }

    /// The current refill interval of a client pool; the sweep interval of a server
    /// pool, which does not refill and is paced by the sweep of its idle connections
    /// (Go: `Interval`).
    #[doc(alias = "Interval")]
    pub fn interval(&self) -> Duration {
        self.stats().status.interval
    }

    /// Waits until at least `n` connections are idle, or `timeout` passes; whether
    /// they are. Woken by the pool as connections land, never by polling.
    pub async fn wait_idle(&self, n: usize, timeout: Duration) -> bool {
        let end = pool_core::deadline_after(now(), timeout);
        let reached = async {
            loop {
                let mut changed = pin!(self.ops.changed().notified());
                changed.as_mut().enable();
                if self.active() >= n {
                    return;
                }
                changed.await;
            }
        };
        let end = tokio::time::Instant::from_std(end);
        tokio::time::timeout_at(end, reached).await.is_ok() || self.active() >= n
    }
}

/// The engine of a side, as a handle holds it (the side keeps the engine alive).
struct EngineOf<S>(Arc<S>);

impl<S: Side> Ops for EngineOf<S> {
    fn name(&self) -> &str {
        self.0.engine().name()
    }
    fn stats(&self) -> Stats {
        self.0.engine().stats()
    }
    fn idle(&self) -> usize {
        self.0.engine().driver.read(|m| m.status().idle)
    }
    fn closed(&self) -> bool {
        self.0.engine().driver.read(Role::is_closed)
    }
    fn error_count(&self) -> u64 {
        self.0.engine().driver.read(|m| m.counters().app_errors)
    }
    fn add_error(&self) {
        let engine = self.0.engine();
        #[cfg(feature = "metrics")]
        engine.metrics.app_errors.increment(1);
        engine.driver.input(|m, _| m.add_error());
    }
    fn reset_errors(&self) {
        self.0.engine().driver.input(|m, _| m.reset_errors());
    }
    fn changed(&self) -> &Notify {
        self.0.engine().changed()
    }
    fn flush(&self) -> usize {
        self.0.engine().driver.flush()
    }
    fn shut(&self) -> TaskTracker {
        let engine = self.0.engine();
        engine.shut();
        engine.rt().tasks.clone()
    }
}

/// `Deref` from a pool to its [`PoolHandle`] (field `handle`), where what both pools
/// offer lives.
macro_rules! deref_to_handle {
    ($pool:ty, $machine:ty) => {
        impl std::ops::Deref for $pool {
            type Target = $crate::handle::PoolHandle<$machine>;
            fn deref(&self) -> &Self::Target {
                &self.handle
            }
        }
    };
}
pub(crate) use deref_to_handle;

/// Held by every clone of a pool's handle; the last one dropped closes the pool.
pub(crate) struct Owner<S: Side>(pub(crate) Arc<S>);

impl<S: Side> Drop for Owner<S> {
    fn drop(&mut self) {
        self.0.engine().shut();
    }
}

#[cfg(test)]
mod tests {
    use crate::{ClientConfig, ClientPool, ServerPool};

    #[tokio::test]
    async fn the_error_count_is_recorded_read_and_reset_through_any_handle() {
        let server = ServerPool::builder()
            .bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
            .build()
            .unwrap();
        let client = ClientPool::builder()
            .address(server.local_addr())
            .config(ClientConfig::builder().capacity(1, 1))
            .build()
            .unwrap();
        assert_eq!((server.error_count(), client.error_count()), (0, 0));
        let other = server.clone();
        server.add_error();
        other.add_error();
        client.add_error();
        // Reading counts nothing.
        assert_eq!(server.error_count(), 2);
        assert_eq!(other.error_count(), 2);
        assert_eq!(client.error_count(), 1);
        other.reset_error();
        assert_eq!((server.error_count(), client.error_count()), (0, 1));
        server.add_error();
        assert_eq!(other.error_count(), 1);
    }
}
