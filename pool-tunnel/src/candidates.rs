//! The tables of control candidates: connections that reached the control port and have
//! not proved the key yet.
//!
//! A stranger can open as many connections as it likes; each one costs the server a
//! slot until it answers or its deadline passes. A table bounds those slots in total
//! and per source (a /24, a /64: [`Source`]), and when a bound is reached it makes room
//! by evicting rather than refusing the newest:
//! - a source at its quota loses its own oldest candidate;
//! - a full table takes the oldest candidate of the source holding the most.
//!
//! So a real client arriving under a flood gets its slot at once, and a source with a
//! single candidate keeps it for as long as any other source holds two: the flood only
//! churns its own slots, however many sources it has, until it holds at most one slot
//! per source everywhere.
//!
//! The server keeps two tables (see `server.rs`): one for connections that have not
//! sent their admission token yet (large, cheap: a socket waiting for 60 bytes), and a
//! small one for connections whose token proved the key, which strangers cannot reach.
//!
//! Sans-IO: the accept loop feeds arrivals and departures and aborts what it is told.

use std::collections::{HashMap, VecDeque};

use crate::sources::Source;

/// One candidate's handle, given by the caller (unique across the caller's tables).
pub(crate) type CandidateId = u64;

/// A bounded, fair, evict-oldest candidate table.
#[derive(Debug)]
pub(crate) struct Candidates {
    /// Oldest first.
    slots: VecDeque<(CandidateId, Source)>,
    held: HashMap<Source, usize>,
    max_total: usize,
    max_per_source: usize,
}

impl Candidates {
    /// A table of at most `max_total` candidates, `max_per_source` from one source
    /// (both at least 1).
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            slots: VecDeque::new(),
            held: HashMap::new(),
            max_total: max_total.max(1),
            max_per_source: max_per_source.clamp(1, max_total.max(1)),
        }
    }

    /// Candidate `id` from `source` enters; answers the candidate to close now to make
    /// room for it, if any.
    pub(crate) fn admit(&mut self, id: CandidateId, source: Source) -> Option<CandidateId> {
        let own = self.held.get(&source).copied().unwrap_or(0);
        let victim = if own >= self.max_per_source {
            Some(source)
        } else if self.slots.len() >= self.max_total {
            self.greediest()
        } else {
            None
        };
        let evicted = victim.and_then(|v| {
            let i = self.slots.iter().position(|(_, s)| *s == v)?;
            Some(self.take(i))
        });
        self.slots.push_back((id, source));
        *self.held.entry(source).or_default() += 1;
        evicted
    }

    /// The source holding the most candidates; of those, the one whose oldest is oldest.
    fn greediest(&self) -> Option<Source> {
        let most = self.held.values().copied().max()?;
        self.slots
            .iter()
            .find(|(_, s)| self.held.get(s) == Some(&most))
            .map(|(_, s)| *s)
    }

    fn take(&mut self, i: usize) -> CandidateId {
        let (id, source) = self.slots.remove(i).expect("index from position");
        if let Some(n) = self.held.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&source);
            }
        }
        id
    }

    /// A candidate left (proved the key, failed, timed out, moved to another table).
    /// Unknown ids (already evicted) are ignored.
    pub(crate) fn remove(&mut self, id: CandidateId) {
        if let Some(i) = self.slots.iter().position(|(c, _)| *c == id) {
            self.take(i);
        }
    }

    #[cfg(test)]
    /// Whether candidate `id` is in the table.
    pub(crate) fn contains(&self, id: CandidateId) -> bool {
        self.slots.iter().any(|(c, _)| *c == id)
    }

    #[cfg(test)]
    /// Candidates in the table.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    #[cfg(test)]
    /// Sources holding a candidate.
    pub(crate) fn sources(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// A source per `n`: 10.0.n.1.
    fn src(n: u16) -> Source {
        let [hi, lo] = n.to_be_bytes();
        Source::of(IpAddr::from([10, hi, lo, 1]))
    }

    #[test]
    fn a_full_table_evicts_the_oldest_of_the_greediest_source() {
        let mut t = Candidates::new(3, 3);
        assert_eq!(t.admit(1, src(2)), None);
        assert_eq!(t.admit(2, src(3)), None);
        assert_eq!(t.admit(3, src(3)), None);
        // Full: source 3 holds two, so its oldest goes, not the older 1.
        assert_eq!(t.admit(4, src(4)), Some(2));
        // Now every source holds one: the oldest of all goes.
        assert_eq!(t.admit(5, src(5)), Some(1));
        t.remove(4);
        t.remove(4);
        assert_eq!(t.len(), 2);
        assert_eq!(t.sources(), 2);
    }

    #[test]
    fn one_source_only_churns_its_own_slots() {
        let mut t = Candidates::new(64, 4);
        t.admit(0, src(1));
        for id in 1..1000 {
            assert_ne!(t.admit(id, src(2)), Some(0));
        }
        assert!(t.contains(0));
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn a_lone_candidate_outlives_a_flood_from_many_sources() {
        // 200 sources churn a table of 256; the client's single candidate stays however
        // long the flood goes on (fairness protects it while the table has more slots
        // than the flood has sources).
        let mut t = Candidates::new(256, 8);
        let mut id = 0;
        for round in 0..50u16 {
            for s in 0..200u16 {
                id += 1;
                assert_ne!(t.admit(id, src(1000 + s)), Some(0));
            }
            if round == 3 {
                let gone = t.admit(0, src(1));
                assert!(gone.is_some_and(|g| g != 0), "a stranger makes room");
            }
        }
        assert!(t.contains(0));
        assert_eq!(t.len(), 256);
    }
}
