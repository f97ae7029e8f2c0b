//! One QUIC connection of a pool (a "shard"): its streams' budget, and the ids of
//! its streams the pool holds idle, so that the connection's end takes them out at
//! once instead of at the next sweep.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use pool_core::ConnId;

/// A QUIC connection of a pool.
pub(crate) struct Link {
    pub(crate) conn: quinn::Connection,
    /// Streams of this connection that are open (dialling, idle or handed out).
    open: AtomicUsize,
    /// Ids of its streams the pool holds idle (watched).
    held: Mutex<HashSet<ConnId>>,
}

impl Link {
    pub(crate) fn new(conn: quinn::Connection) -> Arc<Self> {
        Arc::new(Self {
            conn,
            open: AtomicUsize::new(0),
            held: Mutex::new(HashSet::new()),
        })
    }

    fn held(&self) -> MutexGuard<'_, HashSet<ConnId>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Streams open on it.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Whether the connection still runs.
    pub(crate) fn is_up(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// Takes a stream slot if fewer than `limit` are open.
    pub(crate) fn try_slot(self: &Arc<Self>, limit: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Takes a stream slot whatever the count (the peer's stream limit still holds:
    /// opening the stream then waits for credit).
    pub(crate) fn slot(self: &Arc<Self>) -> Slot {
        self.open.fetch_add(1, Ordering::AcqRel);
        Slot(self.clone())
    }

    /// The pool holds `id` idle: its connection's end reports it. Answers whether the
    /// connection has ended already (then the caller peeks at it at once).
    pub(crate) fn hold(&self, id: ConnId) -> bool {
        self.held().insert(id);
        !self.is_up()
    }

    /// The pool no longer holds `id`.
    pub(crate) fn release(&self, id: ConnId) {
        self.held().remove(&id);
    }

    /// The ids held when the connection ended.
    pub(crate) fn take_held(&self) -> Vec<ConnId> {
        self.held().drain().collect()
    }
}

/// A stream's place in its connection's budget, given back when the stream drops.
pub(crate) struct Slot(Arc<Link>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}
