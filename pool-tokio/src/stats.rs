//! What a pool reports.

use std::time::Duration;

use pool_core::{Counters, Status};

/// A pool's status snapshot and counters, taken together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Idle, capacity, interval, in flight, waiting.
    pub status: Status,
    /// Event counters.
    pub counters: Counters,
}

/// Polls `cond` every 2 ms until it holds or `timeout` passes.
pub(crate) async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    // Saturating: a timeout of `Duration::MAX` means never, not a panic.
    let end = tokio::time::Instant::from_std(pool_core::deadline_after(
        tokio::time::Instant::now().into_std(),
        timeout,
    ));
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
