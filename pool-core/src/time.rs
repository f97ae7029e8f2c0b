//! Deadline arithmetic that never panics.

use std::time::{Duration, Instant};

/// `now + d`, saturating: a duration too large to add (`Duration::MAX`, or anything past
/// what the platform's clock can name) means "never", which is a point about a century
/// away. Every deadline and timer of the core goes through this, so no setting and no
/// `get` timeout can make the pool panic.
///
/// ```
/// use pool_core::deadline_after;
/// use std::time::{Duration, Instant};
/// # fn t(now: Instant) {
/// let never = deadline_after(now, Duration::MAX);
/// assert!(never > deadline_after(now, Duration::from_secs(3600 * 24 * 365)));
/// # }
/// ```
pub fn deadline_after(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(d)
        .or_else(|| now.checked_add(d.min(CENTURY)))
        .or_else(|| now.checked_add(d.min(YEAR)))
        .unwrap_or(now)
}
