//! The idle map: connections kept by id, taken by id or oldest first, all O(1).
//!
//! The map is a slab. The connections sit in one dense `Vec` of slots; a hash table maps
//! each id to its slot index, so the table holds only 12-byte `(id, index)` pairs rather
//! than whole connections, and a table grown to twice the live count costs little.
//! Arrival order is an intrusive doubly linked list threaded through the occupied slots
//! by `u32` indices, so taking the oldest connection, or any connection by id, unlinks
//! it in O(1) with no stale entries, lazy deletion or compaction. Vacant slots form a
//! free list and are reused before the `Vec` grows, so the slab never holds more slots
//! than the peak number of idle connections. (The Go package rebuilds its whole id
//! channel on every take.)

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU32;

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

    fn write_u64(&mut self, n: u64) {
        // Serials and waiter keys: one round.
        self.0 = (self.0.rotate_left(8) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_usize(&mut self, _len: usize) {
        // Only slice length prefixes reach here; every id has the same length.
    }
}

pub(crate) type IdBuild = BuildHasherDefault<IdHasher>;

/// A slot index in a link field, stored as `index + 1` so that the zero value is free
/// for the compiler to mark a vacant [`Slot`]: the enum then needs no tag of its own.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Link(NonZeroU32);

/// The end of a list: no slot.
const NIL: Link = Link(NonZeroU32::MAX);

/// How many slots a slab can hold: every index whose link is neither 0 nor [`NIL`].
const MAX_SLOTS: usize = u32::MAX as usize - 1;

impl Link {
    /// The link to slot `index`, which must be below [`MAX_SLOTS`].
    fn to(index: usize) -> Self {
        debug_assert!(index < MAX_SLOTS);
        // `index < MAX_SLOTS` fits a u32 and `index + 1` stays below `NIL`.
        Self(NonZeroU32::MIN.saturating_add(index as u32))
    }

    /// The slot this link points at, or `None` for [`NIL`].
    fn get(self) -> Option<usize> {
        (self != NIL).then(|| (self.0.get() - 1) as usize)
    }
}

/// One entry of the slab: an idle connection linked into the arrival list, or a free
/// slot linked into the free list.
enum Slot<C> {
    Occupied {
        id: ConnId,
        prev: Link,
        next: Link,
        conn: C,
    },
    Vacant {
        next_free: Link,
    },
}

/// The slab and its arrival list, without the id index.
struct Slab<C> {
    slots: Vec<Slot<C>>,
    /// The oldest connection.
    head: Link,
    /// The newest connection.
    tail: Link,
    /// The most recently vacated slot.
    free: Link,
}

impl<C> Slab<C> {
    fn with_capacity(n: usize) -> Self {
        Self {
            slots: Vec::with_capacity(n),
            head: NIL,
            tail: NIL,
            free: NIL,
        }
    }

    /// Puts `conn` at the new end of the list, in a free slot if there is one.
    fn push_back(&mut self, id: ConnId, conn: C) -> usize {
        let slot = Slot::Occupied {
            id,
            prev: self.tail,
            next: NIL,
            conn,
        };
        let i = match self.free.get() {
            Some(i) => {
                match std::mem::replace(&mut self.slots[i], slot) {
                    Slot::Vacant { next_free } => self.free = next_free,
                    Slot::Occupied { .. } => {
                        unreachable!("idle map: free list reached a live slot")
                    }
                }
                i
            }
            None => {
                let i = self.slots.len();
                assert!(i < MAX_SLOTS, "idle map: more than 2^32 - 2 connections");
                self.slots.push(slot);
                i
            }
        };
        let link = Link::to(i);
        match self.tail.get() {
            Some(t) => *self.next_mut(t) = link,
            None => self.head = link,
        }
        self.tail = link;
        i
    }

    /// Unlinks slot `i`, frees it and gives back what it held.
    fn remove(&mut self, i: usize) -> (ConnId, C) {
        let vacant = Slot::Vacant {
            next_free: self.free,
        };
        let Slot::Occupied {
            id,
            prev,
            next,
            conn,
        } = std::mem::replace(&mut self.slots[i], vacant)
        else {
            unreachable!("idle map: index pointed at a free slot")
        };
        self.free = Link::to(i);
        match prev.get() {
            Some(p) => *self.next_mut(p) = next,
            None => self.head = next,
        }
        match next.get() {
            Some(n) => *self.prev_mut(n) = prev,
            None => self.tail = prev,
        }
        (id, conn)
    }

    fn next_mut(&mut self, i: usize) -> &mut Link {
        match &mut self.slots[i] {
            Slot::Occupied { next, .. } => next,
            Slot::Vacant { .. } => unreachable!("idle map: list reached a free slot"),
        }
    }

    fn prev_mut(&mut self, i: usize) -> &mut Link {
        match &mut self.slots[i] {
            Slot::Occupied { prev, .. } => prev,
            Slot::Vacant { .. } => unreachable!("idle map: list reached a free slot"),
        }
    }

    #[cfg(test)]
    /// The slot after `i` in arrival order.
    fn next_of(&self, i: usize) -> Option<usize> {
        match &self.slots[i] {
            Slot::Occupied { next, .. } => next.get(),
            Slot::Vacant { .. } => unreachable!("idle map: list reached a free slot"),
        }
    }

    /// Forgets every slot, keeping the allocation.
    fn clear(&mut self) {
        self.slots.clear();
        self.head = NIL;
        self.tail = NIL;
        self.free = NIL;
    }
}

/// Idle connections of type `C`, by id and in arrival order. An insert of an id
/// already there is refused, never overwritten; a take by id and the oldest-first take
/// are O(1), and no removal rebuilds anything.
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
pub(crate) struct IdleMap<C> {
    /// Id to slot index; always exactly the occupied slots.
    index: HashMap<ConnId, u32, IdBuild>,
    slab: Slab<C>,
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
    pub(crate) fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty map with room for `n` connections before it allocates again.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            index: HashMap::with_capacity_and_hasher(n, IdBuild::default()),
            slab: Slab::with_capacity(n),
        }
    }

    /// How many connections are idle.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    #[cfg(test)]
    /// Whether nothing is idle.
    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether `id` is idle.
    pub(crate) fn contains(&self, id: &ConnId) -> bool {
        self.index.contains_key(id)
    }

    /// Keeps `conn` under `id`. An id already present is a collision: the connection
    /// comes back in the error and the one already idle stays.
    ///
    /// # Panics
    ///
    /// If `u32::MAX - 1` connections are already idle.
    pub(crate) fn insert(&mut self, id: ConnId, conn: C) -> Result<(), C> {
        match self.index.entry(id) {
            MapEntry::Occupied(_) => Err(conn),
            MapEntry::Vacant(v) => {
                let i = self.slab.push_back(id, conn);
                // `push_back` keeps every index below `MAX_SLOTS`, so it fits a u32.
                v.insert(i as u32);
                Ok(())
            }
        }
    }

    /// The connection with `id`, left in place.
    pub(crate) fn get_mut(&mut self, id: &ConnId) -> Option<&mut C> {
        let i = *self.index.get(id)? as usize;
        match self.slab.slots.get_mut(i) {
            Some(Slot::Occupied { conn, .. }) => Some(conn),
            _ => None,
        }
    }

    /// Takes the connection with `id`.
    pub(crate) fn take(&mut self, id: &ConnId) -> Option<C> {
        let i = self.index.remove(id)?;
        Some(self.slab.remove(i as usize).1)
    }

    /// Takes the connection that has been idle longest.
    pub(crate) fn take_oldest(&mut self) -> Option<(ConnId, C)> {
        let i = self.slab.head.get()?;
        let (id, conn) = self.slab.remove(i);
        self.index.remove(&id);
        Some((id, conn))
    }

    /// Takes the connection that arrived last.
    pub(crate) fn take_newest(&mut self) -> Option<(ConnId, C)> {
        let i = self.slab.tail.get()?;
        let (id, conn) = self.slab.remove(i);
        self.index.remove(&id);
        Some((id, conn))
    }

    /// Takes every connection, oldest first.
    pub(crate) fn drain(&mut self) -> Vec<(ConnId, C)> {
        let mut out = Vec::with_capacity(self.len());
        let mut cur = self.slab.head.get();
        while let Some(i) = cur {
            let slot = std::mem::replace(&mut self.slab.slots[i], Slot::Vacant { next_free: NIL });
            let Slot::Occupied { id, next, conn, .. } = slot else {
                unreachable!("idle map: list reached a free slot")
            };
            out.push((id, conn));
            cur = next.get();
        }
        // Every slot is vacant now; `clear` keeps the allocation for the next fill.
        self.slab.clear();
        self.index.clear();
        out
    }

    #[cfg(test)]
    /// Keeps only the connections for which `evict` answers false; returns the others,
    /// oldest first. O(n): meant for a periodic sweep, not for the hot path.
    pub(crate) fn evict_where(
        &mut self,
        mut evict: impl FnMut(&ConnId, &mut C) -> bool,
    ) -> Vec<(ConnId, C)> {
        let mut out = Vec::new();
        let mut cur = self.slab.head.get();
        while let Some(i) = cur {
            let Slot::Occupied { id, next, conn, .. } = &mut self.slab.slots[i] else {
                unreachable!("idle map: list reached a free slot")
            };
            cur = next.get();
            if evict(id, conn) {
                let (id, conn) = self.slab.remove(i);
                self.index.remove(&id);
                out.push((id, conn));
            }
        }
        out
    }

    #[cfg(test)]
    /// Ids in arrival order (for tests and diagnostics).
    pub(crate) fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        std::iter::successors(self.slab.head.get(), |&i| self.slab.next_of(i)).map(|i| match &self
            .slab
            .slots[i]
        {
            Slot::Occupied { id, .. } => *id,
            Slot::Vacant { .. } => unreachable!("idle map: list reached a free slot"),
        })
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

    /// Checks the slab against itself: the list runs both ways over exactly the indexed
    /// slots, and every other slot is on the free list.
    fn check_invariants<C>(map: &IdleMap<C>) {
        let slab = &map.slab;
        let mut forward = Vec::new();
        let (mut prev, mut cur) = (NIL, slab.head);
        while let Some(i) = cur.get() {
            let Slot::Occupied {
                id, prev: p, next, ..
            } = &slab.slots[i]
            else {
                panic!("list reached free slot {i}");
            };
            assert_eq!(*p, prev, "back link of slot {i}");
            assert_eq!(map.index.get(id).map(|&j| j as usize), Some(i));
            forward.push(i);
            (prev, cur) = (Link::to(i), *next);
        }
        assert_eq!(slab.tail, prev);
        assert_eq!(forward.len(), map.index.len());
        let mut free = 0;
        let mut cur = slab.free;
        while let Some(i) = cur.get() {
            let Slot::Vacant { next_free } = &slab.slots[i] else {
                panic!("free list reached live slot {i}");
            };
            free += 1;
            assert!(free <= slab.slots.len(), "free list loops");
            cur = *next_free;
        }
        assert_eq!(forward.len() + free, slab.slots.len());
    }

    #[test]
    fn slots_carry_no_tag() {
        use std::mem::size_of;
        // id 8 + two links 4 + 4 + the connection; the tag lives in a link's niche.
        assert_eq!(size_of::<Slot<[u8; 48]>>(), 64);
        assert_eq!(size_of::<Slot<u64>>(), 24);
        assert!(size_of::<Slot<()>>() <= 16);
        assert_eq!(size_of::<(ConnId, u32)>(), 12);
    }

    #[test]
    fn drain_keeps_the_slab_usable() {
        let mut map = IdleMap::with_capacity(4);
        for n in 0..10 {
            map.insert(id(n), n).unwrap();
        }
        assert_eq!(map.take(&id(3)), Some(3));
        let got: Vec<_> = map.drain().into_iter().map(|(_, v)| v).collect();
        assert_eq!(got, [0, 1, 2, 4, 5, 6, 7, 8, 9]);
        check_invariants(&map);
        assert!(map.is_empty() && map.take_oldest().is_none());
        map.insert(id(3), 30).unwrap();
        assert_eq!(map.take_oldest(), Some((id(3), 30)));
        check_invariants(&map);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8),
        Take(u8),
        Oldest,
        Newest,
        EvictOdd,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u8>().prop_map(Op::Insert),
            3 => any::<u8>().prop_map(Op::Take),
            2 => Just(Op::Oldest),
            1 => Just(Op::Newest),
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
            let mut peak = 0;
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
                    Op::Newest => prop_assert_eq!(map.take_newest(), model.pop_back()),
                    Op::EvictOdd => {
                        let gone = map.evict_where(|_, v| *v % 2 == 1);
                        let want: Vec<_> = model.iter().copied().filter(|(_, v)| v % 2 == 1).collect();
                        model.retain(|(_, v)| v % 2 == 0);
                        prop_assert_eq!(gone, want);
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                prop_assert!(map.ids().eq(model.iter().map(|(i, _)| *i)));
                for (k, _) in &model {
                    prop_assert!(map.contains(k));
                }
                peak = peak.max(model.len());
                prop_assert!(map.slab.slots.len() <= peak);
                check_invariants(&map);
            }
            let rest: Vec<_> = model.into_iter().collect();
            prop_assert_eq!(map.drain(), rest);
            check_invariants(&map);
        }

        /// Long runs of inserts and takes never grow the slab beyond the peak number
        /// of live entries: vacated slots are reused before the `Vec` grows.
        #[test]
        fn reuses_free_slots(
            ops in proptest::collection::vec((any::<bool>(), 0u16..2048, 0usize..4), 0..3000),
        ) {
            let mut map = IdleMap::new();
            let mut live = std::collections::HashSet::new();
            let mut peak = 0;
            for (insert, n, how) in ops {
                let k = id(u32::from(n));
                if insert {
                    let fresh = live.insert(k);
                    prop_assert_eq!(map.insert(k, n).is_ok(), fresh);
                } else {
                    match how {
                        0 => {
                            if let Some((k, _)) = map.take_oldest() {
                                prop_assert!(live.remove(&k));
                            }
                        }
                        _ => prop_assert_eq!(map.take(&k).is_some(), live.remove(&k)),
                    }
                }
                peak = peak.max(live.len());
                prop_assert_eq!(map.len(), live.len());
                prop_assert!(map.slab.slots.len() <= peak);
            }
            check_invariants(&map);
            prop_assert_eq!(map.slab.slots.len(), peak);
        }
    }
}
