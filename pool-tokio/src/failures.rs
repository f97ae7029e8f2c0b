//! The last background failure of a pool and the run it belongs to, kept beside the
//! machine's lock (a dial or handshake writes it once as it ends).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use pool_core::Stage;

use crate::error::{Failure, StepError};
use crate::rt::now;

/// The failure log of one pool.
pub(crate) struct FailureLog {
    run: Mutex<Run>,
    client: bool,
    /// A server's listening address, set when it starts accepting.
    listening: OnceLock<SocketAddr>,
    /// Whether a server accepted any connection yet.
    reached: AtomicBool,
}

#[derive(Default)]
struct Run {
    last: Option<Failure>,
    in_a_row: u64,
}

impl FailureLog {
    pub(crate) fn new(client: bool) -> Self {
        Self {
            run: Mutex::default(),
            client,
            listening: OnceLock::new(),
            reached: AtomicBool::new(false),
        }
    }

    /// A server started accepting on `addr`.
    pub(crate) fn listening(&self, addr: SocketAddr) {
        let _ = self.listening.set(addr);
    }

    /// A server accepted a connection (whatever became of it).
    pub(crate) fn reached(&self) {
        if !self.reached.load(Ordering::Relaxed) {
            self.reached.store(true, Ordering::Relaxed);
        }
    }

    /// A server's listening address while no connection ever reached it: what a get
    /// that times out on a pool nobody dials names.
    pub(crate) fn unreached(&self) -> Option<SocketAddr> {
        if self.reached.load(Ordering::Relaxed) {
            return None;
        }
        self.listening.get().copied()
    }

    fn run(&self) -> MutexGuard<'_, Run> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A dial or handshake failed.
    pub(crate) fn fail(&self, stage: Stage, cause: StepError, peer: Option<SocketAddr>) {
        let mut run = self.run();
        run.in_a_row += 1;
        let in_a_row = run.in_a_row;
        let client = self.client;
        run.last = Some(Failure {
            stage,
            cause,
            peer,
            in_a_row,
            at: now(),
            client,
        });
    }

    /// A dial or handshake succeeded: the run of failures is over.
    pub(crate) fn succeed(&self) {
        self.run().in_a_row = 0;
    }

    /// The last failure, whether or not its run is over.
    pub(crate) fn last(&self) -> Option<Failure> {
        self.run().last.clone()
    }

    /// The failure of the run under way, if one is.
    pub(crate) fn failing(&self) -> Option<Failure> {
        let run = self.run();
        (run.in_a_row > 0).then(|| run.last.clone()).flatten()
    }

    /// The failure of the run under way, or else the last one if it happened at or
    /// after `since` (failures mixed with successes, as strangers among clients).
    pub(crate) fn failing_since(&self, since: Instant) -> Option<Failure> {
        self.failing()
            .or_else(|| self.last().filter(|f| f.at >= since))
    }
}
