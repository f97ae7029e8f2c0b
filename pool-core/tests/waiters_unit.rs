//! Waiters: FIFO order, deadlines, lazy cancellation.

use pool_core::{ConnId, Waiters, Want};
use std::time::{Duration, Instant};

#[test]
fn fifo_and_deadlines() {
    let t0 = Instant::now();
    let mut w = Waiters::new();
    let a = w.push(Want::Any, t0 + Duration::from_secs(3));
    let b = w.push(Want::Any, t0 + Duration::from_secs(1));
    let id = ConnId::from_random([1, 2, 3, 4]);
    let c = w.push(Want::Id(id), t0 + Duration::from_secs(2));
    assert_eq!(w.next_deadline(), Some(t0 + Duration::from_secs(1)));
    assert_eq!(w.any_len(), 2);
    assert_eq!(w.pop_expired(t0 + Duration::from_millis(1500)), Some(b));
    assert_eq!(w.any_len(), 1);
    assert_eq!(w.pop_expired(t0 + Duration::from_millis(1500)), None);
    assert_eq!(w.pop_any(), Some(a));
    assert_eq!(w.pop_any(), None);
    assert_eq!(w.pop_id(&ConnId::from_random([0; 4])), None);
    assert_eq!(w.pop_id(&id), Some(c));
    assert_eq!(w.next_deadline(), None);
    assert!(w.is_empty());
}

#[test]
fn cancel_is_skipped_everywhere() {
    let t0 = Instant::now();
    let mut w = Waiters::new();
    let a = w.push(Want::Any, t0);
    let b = w.push(Want::Any, t0);
    assert!(w.cancel(a));
    assert!(!w.cancel(a));
    assert_eq!(w.pop_expired(t0), Some(b));
    assert_eq!(w.pop_any(), None);
    assert_eq!(w.drain(), vec![]);
}
