//! The table of control candidates: connections that reached the control port and have
//! not proved the key yet.
//!
//! A stranger can open as many connections as it likes; each one costs the server a
//! slot until it answers or its deadline passes. The table bounds those slots in total
//! and per source address, and when a bound is reached it makes room by evicting the
//! **oldest** candidate (of the same source when that source is over its quota, of all
//! otherwise) rather than refusing the newest: a real client arriving under a flood of
//! silent peers gets its slot at once, and keeps it for as long as it takes a fast
//! client to answer (milliseconds), while the flood only churns its own slots.
//!
//! Sans-IO: the accept loop feeds arrivals and departures and aborts what it is told.

use std::collections::VecDeque;
use std::net::IpAddr;

/// One candidate's handle in the table.
pub type CandidateId = u64;

/// Bounded, evict-oldest candidate table.
#[derive(Debug)]
pub struct Candidates {
    next: CandidateId,
    /// Oldest first.
    slots: VecDeque<(CandidateId, IpAddr)>,
    max_total: usize,
    max_per_source: usize,
}

impl Candidates {
    /// A table of at most `max_total` candidates, `max_per_source` from one address
    /// (both at least 1).
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            next: 0,
            slots: VecDeque::new(),
            max_total: max_total.max(1),
            max_per_source: max_per_source.clamp(1, max_total.max(1)),
        }
    }

    /// A new candidate from `source`: its id, and the candidates to close now to make
    /// room for it (oldest first, at most one).
    pub fn admit(&mut self, source: IpAddr) -> (CandidateId, Option<CandidateId>) {
        let same = self.slots.iter().filter(|(_, ip)| *ip == source).count();
        let evicted = if same >= self.max_per_source {
            let i = self.slots.iter().position(|(_, ip)| *ip == source);
            i.and_then(|i| self.slots.remove(i)).map(|(id, _)| id)
        } else if self.slots.len() >= self.max_total {
            self.slots.pop_front().map(|(id, _)| id)
        } else {
            None
        };
        let id = self.next;
        self.next += 1;
        self.slots.push_back((id, source));
        (id, evicted)
    }

    /// A candidate left (proved the key, failed, or timed out). Unknown ids (already
    /// evicted) are ignored.
    pub fn remove(&mut self, id: CandidateId) {
        if let Some(i) = self.slots.iter().position(|(c, _)| *c == id) {
            self.slots.remove(i);
        }
    }

    /// Candidates in the table.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn a_full_table_evicts_the_oldest_not_the_newest() {
        let mut t = Candidates::new(3, 3);
        let (a, _) = t.admit(ip(2));
        let (b, _) = t.admit(ip(3));
        let (_, none) = t.admit(ip(4));
        assert_eq!(none, None);
        let (d, gone) = t.admit(ip(1));
        assert_eq!(gone, Some(a));
        assert_eq!(t.len(), 3);
        let (_, gone) = t.admit(ip(5));
        assert_eq!(gone, Some(b));
        t.remove(d);
        t.remove(d);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn one_source_only_churns_its_own_slots() {
        let mut t = Candidates::new(64, 4);
        let (client, _) = t.admit(ip(1));
        let mut evicted = Vec::new();
        for _ in 0..1000 {
            let (_, gone) = t.admit(ip(2));
            evicted.extend(gone);
        }
        assert!(!evicted.contains(&client));
        assert_eq!(t.len(), 5);
    }

    #[test]
    fn many_sources_never_evict_a_newer_candidate_first() {
        let mut t = Candidates::new(64, 4);
        for n in 0..64u8 {
            t.admit(ip(n + 2));
        }
        let (client, gone) = t.admit(ip(1));
        assert!(gone.is_some());
        // 63 more arrivals before the client answers: it is still there.
        for n in 0..63u8 {
            let (_, gone) = t.admit(ip(100 + n));
            assert_ne!(gone, Some(client));
        }
        assert!(t.slots.iter().any(|(c, _)| *c == client));
    }
}
