//! Small pieces both drivers share: the clock, randomness, task accounting, shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{watch, Notify};

/// The core's `now`, from tokio's clock so that paused-time tests drive the core too.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(crate) fn sleep_until(at: Instant) -> tokio::time::Sleep {
    tokio::time::sleep_until(tokio::time::Instant::from_std(at))
}

/// Random bytes from the TLS provider's secure generator (the core draws none).
pub(crate) fn random4() -> [u8; 4] {
    let mut b = [0u8; 4];
    if pool_tls::provider().secure_random.fill(&mut b).is_err() {
        // The system generator failing is not something a pool can fix; fall back on
        // the clock's low bits, still unique enough with the collision check behind it.
        let t = Instant::now().elapsed().subsec_nanos() ^ std::process::id();
        b = t.to_le_bytes();
    }
    b
}

pub(crate) fn random_u32() -> u32 {
    u32::from_le_bytes(random4())
}

/// Counts the tasks a pool spawned, so that `close` can wait for all of them.
#[derive(Default)]
pub(crate) struct Tasks {
    live: AtomicUsize,
    done: Notify,
}

/// Held by a spawned task; dropping it marks the task finished.
pub(crate) struct TaskToken(Arc<Tasks>);

impl Tasks {
    pub(crate) fn token(self: &Arc<Self>) -> TaskToken {
        self.live.fetch_add(1, Ordering::AcqRel);
        TaskToken(self.clone())
    }

    pub(crate) async fn all_done(&self) {
        loop {
            let notified = self.done.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TaskToken {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

/// The shutdown signal every task of a pool listens to.
#[derive(Clone)]
pub(crate) struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub(crate) fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub(crate) async fn wait(&mut self) {
        // An error means the sender is gone: that is a shutdown too.
        let _ = self.0.wait_for(|v| *v).await;
    }
}
