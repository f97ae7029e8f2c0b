//! The deadlines of dials and handshakes under way.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use crate::idle::IdBuild;

/// Deadlines of dials and handshakes under way, by serial: a heap with lazy removal
/// (an entry whose serial was disarmed or re-armed is skipped when met). Most deadlines
/// are disarmed long before they fall due, so the heap is rebuilt from the live ones
/// whenever stale entries outnumber them: it stays about the size of what is in flight.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    pub(crate) at: HashMap<u64, Instant, IdBuild>,
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Deadlines {
    pub(crate) fn arm(&mut self, serial: u64, at: Instant) {
        self.at.insert(serial, at);
        if self.heap.len() > 2 * self.at.len() + 64 {
            self.heap = self.at.iter().map(|(&s, &a)| Reverse((a, s))).collect();
        } else {
            self.heap.push(Reverse((at, serial)));
        }
    }

    pub(crate) fn disarm(&mut self, serial: u64) {
        self.at.remove(&serial);
        if self.at.is_empty() {
            self.heap.clear();
        }
    }

    fn live(&self, at: Instant, serial: u64) -> bool {
        self.at.get(&serial) == Some(&at)
    }

    pub(crate) fn next(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, serial))) = self.heap.peek().copied() {
            if self.live(at, serial) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<u64> {
        while let Some(Reverse((at, serial))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if self.live(at, serial) {
                self.at.remove(&serial);
                return Some(serial);
            }
        }
        None
    }
}
