//! Gets that found nothing to take, waiting in FIFO order, each with its own deadline.
//!
//! Removal is lazy: a served or cancelled waiter leaves stale entries in the queues and
//! in the deadline heap, skipped when met. Every operation is O(log n) amortised.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Instant;

use crate::idle::IdBuild;
use crate::ConnId;

/// Names one waiting get. The driver keeps its reply channel under this key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaiterKey(u64);

/// The bit of a [`WaiterKey`] that marks a get for [`Want::Started`]: an answer that
/// finds its get gone goes back to the started queue, not to the idle map.
const STARTED_BIT: u64 = 1 << 63;

impl WaiterKey {
    /// Whether this get waits for a connection the peer started.
    pub(crate) fn is_started(self) -> bool {
        self.0 & STARTED_BIT != 0
    }
}

/// What a waiter wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Any healthy connection (server get, single-mode client get).
    Any,
    /// The connection with this id (multi-mode client get).
    Id(ConnId),
    /// The next connection the peer started a session on (a client in in-band mode:
    /// an `accept`). Never found by id, never `NotFound`: it waits until its deadline.
    Started,
}

/// The waiting gets.
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    next: u64,
    live: HashMap<WaiterKey, Want, IdBuild>,
    any_live: usize,
    any: VecDeque<WaiterKey>,
    started_live: usize,
    started: VecDeque<WaiterKey>,
    by_id: HashMap<ConnId, VecDeque<WaiterKey>, IdBuild>,
    deadlines: BinaryHeap<Reverse<(Instant, WaiterKey)>>,
}

impl Waiters {
    /// No waiters.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// How many gets are waiting.
    pub(crate) fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether nobody waits.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// How many wait for any connection.
    pub(crate) fn any_len(&self) -> usize {
        self.any_live
    }

    /// Adds a waiter; it expires at `deadline`.
    pub(crate) fn push(&mut self, want: Want, deadline: Instant) -> WaiterKey {
        let key = match want {
            Want::Started => WaiterKey(self.next | STARTED_BIT),
            _ => WaiterKey(self.next),
        };
        self.next += 1;
        self.live.insert(key, want);
        match want {
            Want::Any => {
                self.any_live += 1;
                self.any.push_back(key);
            }
            Want::Started => {
                self.started_live += 1;
                self.started.push_back(key);
            }
            Want::Id(id) => self.by_id.entry(id).or_default().push_back(key),
        }
        self.deadlines.push(Reverse((deadline, key)));
        key
    }

    /// Removes a waiter (its get was dropped). Whether it was still waiting.
    pub(crate) fn cancel(&mut self, key: WaiterKey) -> bool {
        let was = self.live.remove(&key);
        match was {
            Some(Want::Id(id)) => {
                if let Some(q) = self.by_id.get_mut(&id) {
                    q.retain(|k| *k != key);
                    if q.is_empty() {
                        self.by_id.remove(&id);
                    }
                }
            }
            Some(Want::Any) => self.any_live -= 1,
            Some(Want::Started) => self.started_live -= 1,
            None => {}
        }
        was.is_some()
    }

    /// The oldest waiter for any connection.
    pub(crate) fn pop_any(&mut self) -> Option<WaiterKey> {
        while let Some(key) = self.any.pop_front() {
            if self.live.remove(&key).is_some() {
                self.any_live -= 1;
                return Some(key);
            }
        }
        None
    }

    /// The oldest waiter for a connection the peer started.
    pub(crate) fn pop_started(&mut self) -> Option<WaiterKey> {
        while let Some(key) = self.started.pop_front() {
            if self.live.remove(&key).is_some() {
                self.started_live -= 1;
                return Some(key);
            }
        }
        None
    }

    /// The oldest waiter for exactly `id`.
    pub(crate) fn pop_id(&mut self, id: &ConnId) -> Option<WaiterKey> {
        let q = self.by_id.get_mut(id)?;
        let mut found = None;
        while let Some(key) = q.pop_front() {
            if self.live.remove(&key).is_some() {
                found = Some(key);
                break;
            }
        }
        if q.is_empty() {
            self.by_id.remove(id);
        }
        found
    }

    /// Removes every waiter for a specific id, oldest first.
    pub(crate) fn take_all_by_id(&mut self) -> Vec<WaiterKey> {
        let mut out: Vec<WaiterKey> = Vec::new();
        for (_, q) in self.by_id.drain() {
            out.extend(q.into_iter().filter(|k| self.live.remove(k).is_some()));
        }
        out.sort();
        out
    }

    /// Removes and returns one waiter whose deadline is at or before `now`.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<WaiterKey> {
        while let Some(Reverse((at, key))) = self.deadlines.peek().copied() {
            if at > now {
                return None;
            }
            self.deadlines.pop();
            if self.cancel(key) {
                return Some(key);
            }
        }
        None
    }

    /// The earliest deadline of a live waiter.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, key))) = self.deadlines.peek().copied() {
            if self.live.contains_key(&key) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// Removes every waiter, oldest first.
    pub(crate) fn drain(&mut self) -> Vec<WaiterKey> {
        let mut keys: Vec<WaiterKey> = self.live.drain().map(|(k, _)| k).collect();
        keys.sort_by_key(|k| k.0 & !STARTED_BIT);
        self.any_live = 0;
        self.any.clear();
        self.started_live = 0;
        self.started.clear();
        self.by_id.clear();
        self.deadlines.clear();
        keys
    }
}

/// FIFO order, deadlines, lazy cancellation.
#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
}
