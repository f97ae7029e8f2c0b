//! The idle map: connections kept by id, taken by id or oldest first, all O(1) amortised.
//!
//! A hash map holds the connections; a queue of `(sequence, id)` pairs remembers arrival
//! order. Taking by id leaves a stale pair in the queue, skipped later by sequence
//! mismatch, and the queue is compacted once stale pairs outnumber live ones, so no
//! removal ever rebuilds anything in proportion to the pool (the Go package rebuilds
//! its whole id channel on every take).

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::ConnId;

/// A fixed, seedless hasher for ids. Ids are random (drawn by the server or by us), so a
/// plain mix spreads them well and the core draws no randomness of its own.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // A final avalanche so that hashbrown's top bits depend on every input byte.
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, _len: usize) {
        // Only slice length prefixes reach here; every id has the same length.
    }
}

pub(crate) type IdBuild = BuildHasherDefault<IdHasher>;

struct Slot<C> {
    seq: u64,
    conn: C,
}

/// Idle connections of type `C`, by id and in arrival order.
///
/// ```
/// use pool_core::{ConnId, IdleMap};
/// let mut idle = IdleMap::new();
/// let a = ConnId::from_random([0, 0, 0, 1]);
/// let b = ConnId::from_random([0, 0, 0, 2]);
/// idle.insert(a, "first").unwrap();
/// idle.insert(b, "second").unwrap();
/// assert!(idle.insert(a, "again").is_err()); // a collision is refused, never overwritten
/// assert_eq!(idle.take(&b), Some("second"));
/// assert_eq!(idle.take_oldest(), Some((a, "first")));
/// assert!(idle.is_empty());
/// ```
pub struct IdleMap<C> {
    map: HashMap<ConnId, Slot<C>, IdBuild>,
    order: VecDeque<(u64, ConnId)>,
    next_seq: u64,
}

impl<C> Default for IdleMap<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> std::fmt::Debug for IdleMap<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleMap").field("len", &self.len()).finish()
    }
}

impl<C> IdleMap<C> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            map: HashMap::default(),
            order: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// How many connections are idle.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is idle.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `id` is idle.
    pub fn contains(&self, id: &ConnId) -> bool {
        self.map.contains_key(id)
    }

    /// Keeps `conn` under `id`. An id already present is a collision: the connection
    /// comes back in the error and the one already idle stays.
    pub fn insert(&mut self, id: ConnId, conn: C) -> Result<(), C> {
        match self.map.entry(id) {
            MapEntry::Occupied(_) => Err(conn),
            MapEntry::Vacant(v) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                v.insert(Slot { seq, conn });
                self.order.push_back((seq, id));
                Ok(())
            }
        }
    }

    /// Takes the connection with `id`.
    pub fn take(&mut self, id: &ConnId) -> Option<C> {
        let slot = self.map.remove(id)?;
        self.maybe_compact();
        Some(slot.conn)
    }

    /// Takes the connection that has been idle longest.
    pub fn take_oldest(&mut self) -> Option<(ConnId, C)> {
        while let Some((seq, id)) = self.order.pop_front() {
            if let MapEntry::Occupied(e) = self.map.entry(id) {
                if e.get().seq == seq {
                    return Some((id, e.remove().conn));
                }
            }
        }
        None
    }

    /// Takes every connection, oldest first.
    pub fn drain(&mut self) -> Vec<(ConnId, C)> {
        let mut out = Vec::with_capacity(self.map.len());
        while let Some(pair) = self.take_oldest() {
            out.push(pair);
        }
        self.order.clear();
        out
    }

    /// Keeps only the connections for which `keep` answers true; returns the others,
    /// oldest first. O(n): meant for a periodic sweep, not for the hot path.
    pub fn evict_where(
        &mut self,
        mut evict: impl FnMut(&ConnId, &mut C) -> bool,
    ) -> Vec<(ConnId, C)> {
        let mut out = Vec::new();
        let order = std::mem::take(&mut self.order);
        for (seq, id) in order {
            let Some(slot) = self.map.get_mut(&id).filter(|s| s.seq == seq) else {
                continue;
            };
            if evict(&id, &mut slot.conn) {
                if let Some(slot) = self.map.remove(&id) {
                    out.push((id, slot.conn));
                }
            } else {
                self.order.push_back((seq, id));
            }
        }
        out
    }

    /// Ids in arrival order (for tests and diagnostics).
    pub fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.order
            .iter()
            .filter(|(seq, id)| matches!(self.map.get(id), Some(s) if s.seq == *seq))
            .map(|(_, id)| *id)
    }

    /// Drops stale order entries once they outnumber live ones: amortised O(1).
    fn maybe_compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(seq, id)| matches!(map.get(id), Some(s) if s.seq == *seq));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn id(n: u32) -> ConnId {
        ConnId::from_random(n.to_be_bytes())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8),
        Take(u8),
        Oldest,
        EvictOdd,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u8>().prop_map(Op::Insert),
            3 => any::<u8>().prop_map(Op::Take),
            2 => Just(Op::Oldest),
            1 => Just(Op::EvictOdd),
        ]
    }

    proptest! {
        /// The map behaves exactly like a plain ordered list of (id, value) pairs.
        #[test]
        fn matches_a_list(ops in proptest::collection::vec(op(), 0..400)) {
            let mut map = IdleMap::new();
            let mut model: VecDeque<(ConnId, u32)> = VecDeque::new();
            let mut stamp = 0u32;
            for op in ops {
                match op {
                    Op::Insert(n) => {
                        stamp += 1;
                        let k = id(u32::from(n));
                        let res = map.insert(k, stamp);
                        if model.iter().any(|(i, _)| *i == k) {
                            prop_assert_eq!(res, Err(stamp));
                        } else {
                            prop_assert_eq!(res, Ok(()));
                            model.push_back((k, stamp));
                        }
                    }
                    Op::Take(n) => {
                        let k = id(u32::from(n));
                        let want = model.iter().position(|(i, _)| *i == k).and_then(|p| model.remove(p)).map(|(_, v)| v);
                        prop_assert_eq!(map.take(&k), want);
                    }
                    Op::Oldest => prop_assert_eq!(map.take_oldest(), model.pop_front()),
                    Op::EvictOdd => {
                        let gone = map.evict_where(|_, v| *v % 2 == 1);
                        let want: Vec<_> = model.iter().copied().filter(|(_, v)| v % 2 == 1).collect();
                        model.retain(|(_, v)| v % 2 == 0);
                        prop_assert_eq!(gone, want);
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert!(map.ids().eq(model.iter().map(|(i, _)| *i)));
                prop_assert!(map.order.len() <= 2 * map.len() + 65 + 1);
            }
            let rest: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(map.drain(), rest);
        }
    }
}
