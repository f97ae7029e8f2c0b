//! The idle map: connections kept by id, taken by id or oldest first, all O(1).
//!
//! The map is a slab with its own id index. The connections sit in slots; arrival order
//! is an intrusive doubly linked list threaded through the occupied slots by `u32`
//! indices, so taking the oldest connection, or any connection by id, unlinks it in
//! O(1) with no stale entries, lazy deletion or compaction. Vacant slots form a free
//! list and are reused before the slab grows, so it never holds more slots than the
//! peak number of idle connections. (The Go package rebuilds its whole id channel on
//! every take.)
//!
//! # Memory, with thousands idle
//!
//! A pool keeps its idle map for its whole life, so the map is built to cost little
//! more than the connections it holds:
//!
//! - The slots live in **segments** of a fixed size (about 16 KiB; only the first one
//!   grows, by doubling, so a small pool stays small). The slab grows by adding a
//!   segment: nothing is copied, and no freed half of an outgrown array is left in the
//!   allocator, as a `Vec` grown by doubling leaves one at every step.
//! - The id index is a table of **bucket heads** (4 bytes each, one per idle
//!   connection at most) whose chains run through the slots. An id is 4 bytes of
//!   entropy written as 8 hex characters, so a slot stores the 4 bytes: the chain link
//!   fits where the other 4 were, and a slot costs what it did without an index. A
//!   hash table of `(id, index)` pairs cost 13 bytes a bucket at twice the live count,
//!   and as much again freed while it grew.

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

/// An id as a slot keeps it: the 4 bytes whose hex it is.
type Key = u32;

fn key_of(id: &ConnId) -> Key {
    Key::from_be_bytes(id.to_raw())
}

fn id_of(key: Key) -> ConnId {
    ConnId::from_random(key.to_be_bytes())
}

/// One entry of the slab: an idle connection linked into the arrival list and into its
/// bucket's chain, or a free slot linked into the free list.
enum Slot<C> {
    Occupied {
        key: Key,
        prev: Link,
        next: Link,
        /// The next slot in the same bucket.
        chain: Link,
        conn: C,
    },
    Vacant {
        next_free: Link,
    },
}

/// About how many bytes a segment of slots takes.
const SEGMENT_BYTES: usize = 16 * 1024;

/// log2 of the slots in a segment: the most that fit in [`SEGMENT_BYTES`], at least one.
const fn segment_shift(slot_bytes: usize) -> u32 {
    let mut shift = 0;
    while slot_bytes << (shift + 1) <= SEGMENT_BYTES {
        shift += 1;
    }
    shift
}

/// The slab and its arrival list, without the id index.
struct Slab<C> {
    /// Every segment before the one slot `len` falls in is full; the ones after it
    /// are empty (kept from an earlier fill).
    segments: Vec<Vec<Slot<C>>>,
    /// Slots in use, occupied or on the free list.
    len: usize,
    /// The oldest connection.
    head: Link,
    /// The newest connection.
    tail: Link,
    /// The most recently vacated slot.
    free: Link,
}

impl<C> Slab<C> {
    const SHIFT: u32 = segment_shift(std::mem::size_of::<Slot<C>>());
    const SEGMENT: usize = 1 << Self::SHIFT;

    fn new() -> Self {
        Self {
            segments: Vec::new(),
            len: 0,
            head: NIL,
            tail: NIL,
            free: NIL,
        }
    }

    fn slot(&self, i: usize) -> &Slot<C> {
        &self.segments[i >> Self::SHIFT][i & (Self::SEGMENT - 1)]
    }

    fn slot_mut(&mut self, i: usize) -> &mut Slot<C> {
        &mut self.segments[i >> Self::SHIFT][i & (Self::SEGMENT - 1)]
    }

    /// Appends a slot at index `len`: into the segment it falls in, which is allocated
    /// at its full size unless it is the first (that one grows by doubling).
    fn grow(&mut self, slot: Slot<C>) -> usize {
        let i = self.len;
        assert!(i < MAX_SLOTS, "idle map: more than 2^32 - 2 connections");
        let s = i >> Self::SHIFT;
        if s == self.segments.len() {
            let segment = if s == 0 {
                Vec::new()
            } else {
                Vec::with_capacity(Self::SEGMENT)
            };
            self.segments.push(segment);
        }
        self.segments[s].push(slot);
        self.len += 1;
        i
    }

    /// Puts `conn` at the new end of the list, in a free slot if there is one.
    fn push_back(&mut self, key: Key, chain: Link, conn: C) -> usize {
        let slot = Slot::Occupied {
            key,
            prev: self.tail,
            next: NIL,
            chain,
            conn,
        };
        let i = match self.free.get() {
            Some(i) => {
                match std::mem::replace(self.slot_mut(i), slot) {
                    Slot::Vacant { next_free } => self.free = next_free,
                    Slot::Occupied { .. } => {
                        unreachable!("idle map: free list reached a live slot")
                    }
                }
                i
            }
            None => self.grow(slot),
        };
        let link = Link::to(i);
        match self.tail.get() {
            Some(t) => *self.next_mut(t) = link,
            None => self.head = link,
        }
        self.tail = link;
        i
    }

    /// Unlinks slot `i` from the arrival list, frees it and gives back what it held
    /// and its chain link. The caller has unlinked it from its bucket.
    fn remove(&mut self, i: usize) -> (Key, C) {
        let vacant = Slot::Vacant {
            next_free: self.free,
        };
        let Slot::Occupied {
            key,
            prev,
            next,
            conn,
            ..
        } = std::mem::replace(self.slot_mut(i), vacant)
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
        (key, conn)
    }

    fn next_mut(&mut self, i: usize) -> &mut Link {
        match self.slot_mut(i) {
            Slot::Occupied { next, .. } => next,
            Slot::Vacant { .. } => unreachable!("idle map: list reached a free slot"),
        }
    }

    fn prev_mut(&mut self, i: usize) -> &mut Link {
        match self.slot_mut(i) {
            Slot::Occupied { prev, .. } => prev,
            Slot::Vacant { .. } => unreachable!("idle map: list reached a free slot"),
        }
    }

    fn chain_mut(&mut self, i: usize) -> &mut Link {
        match self.slot_mut(i) {
            Slot::Occupied { chain, .. } => chain,
            Slot::Vacant { .. } => unreachable!("idle map: chain reached a free slot"),
        }
    }

    /// The key of occupied slot `i` and the next slot in its chain.
    fn key_and_chain(&self, i: usize) -> (Key, Link) {
        match self.slot(i) {
            Slot::Occupied { key, chain, .. } => (*key, *chain),
            Slot::Vacant { .. } => unreachable!("idle map: chain reached a free slot"),
        }
    }

    /// The slot after `i` in arrival order.
    fn next_of(&self, i: usize) -> Option<usize> {
        match self.slot(i) {
            Slot::Occupied { next, .. } => next.get(),
            Slot::Vacant { .. } => unreachable!("idle map: list reached a free slot"),
        }
    }

    /// Forgets every slot, keeping the segments for the next fill.
    fn clear(&mut self) {
        for segment in &mut self.segments {
            segment.clear();
        }
        self.len = 0;
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
    /// The first slot of each bucket's chain: a power of two of them, at least as many
    /// as idle connections (none while nothing was ever idle).
    buckets: Vec<Link>,
    /// Idle connections: exactly the occupied slots.
    len: usize,
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

/// The fewest buckets a table has once it has any.
const MIN_BUCKETS: usize = 8;

impl<C> IdleMap<C> {
    /// An empty map; it allocates nothing until the first insert.
    pub(crate) fn new() -> Self {
        Self {
            buckets: Vec::new(),
            len: 0,
            slab: Slab::new(),
        }
    }

    /// How many connections are idle.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    /// Whether nothing is idle.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bucket of `key`: Fibonacci hashing, the top bits of a multiplication (ids
    /// are random, and their 4 bytes all reach the top bits).
    fn bucket(&self, key: Key) -> usize {
        let bits = self.buckets.len().trailing_zeros();
        let mixed = u64::from(key).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (mixed >> (64 - bits)) as usize
    }

    /// The slot holding `key`, if any.
    fn find(&self, key: Key) -> Option<usize> {
        if self.buckets.is_empty() {
            return None;
        }
        let mut cur = self.buckets[self.bucket(key)];
        while let Some(i) = cur.get() {
            let (k, chain) = self.slab.key_and_chain(i);
            if k == key {
                return Some(i);
            }
            cur = chain;
        }
        None
    }

    /// Takes occupied slot `i` out of its bucket's chain.
    fn unchain(&mut self, i: usize) {
        let (key, after) = self.slab.key_and_chain(i);
        let b = self.bucket(key);
        let me = Link::to(i);
        if self.buckets[b] == me {
            self.buckets[b] = after;
            return;
        }
        let mut cur = self.buckets[b];
        while let Some(j) = cur.get() {
            let (_, chain) = self.slab.key_and_chain(j);
            if chain == me {
                *self.slab.chain_mut(j) = after;
                return;
            }
            cur = chain;
        }
        unreachable!("idle map: slot missing from its chain")
    }

    /// Doubles the buckets (or makes the first ones) and rechains every idle
    /// connection: O(n), once per doubling of the idle count.
    fn rehash(&mut self) {
        let n = (self.buckets.len() * 2).max(MIN_BUCKETS);
        self.buckets.clear();
        self.buckets.resize(n, NIL);
        let mut cur = self.slab.head.get();
        while let Some(i) = cur {
            let (key, _) = self.slab.key_and_chain(i);
            let b = self.bucket(key);
            *self.slab.chain_mut(i) = self.buckets[b];
            self.buckets[b] = Link::to(i);
            cur = self.slab.next_of(i);
        }
    }

    /// Whether `id` is idle.
    pub(crate) fn contains(&self, id: &ConnId) -> bool {
        self.find(key_of(id)).is_some()
    }

    /// Keeps `conn` under `id`. An id already present is a collision: the connection
    /// comes back in the error and the one already idle stays.
    ///
    /// # Panics
    ///
    /// If `u32::MAX - 1` connections are already idle.
    pub(crate) fn insert(&mut self, id: ConnId, conn: C) -> Result<(), C> {
        let key = key_of(&id);
        if self.find(key).is_some() {
            return Err(conn);
        }
        if self.len == self.buckets.len() {
            self.rehash();
        }
        let b = self.bucket(key);
        let i = self.slab.push_back(key, self.buckets[b], conn);
        self.buckets[b] = Link::to(i);
        self.len += 1;
        Ok(())
    }

    /// The connection with `id`, left in place.
    pub(crate) fn get_mut(&mut self, id: &ConnId) -> Option<&mut C> {
        let i = self.find(key_of(id))?;
        match self.slab.slot_mut(i) {
            Slot::Occupied { conn, .. } => Some(conn),
            Slot::Vacant { .. } => None,
        }
    }

    /// Removes occupied slot `i` from the chain, the list and the count.
    fn remove(&mut self, i: usize) -> (ConnId, C) {
        self.unchain(i);
        self.len -= 1;
        let (key, conn) = self.slab.remove(i);
        (id_of(key), conn)
    }

    /// Takes the connection with `id`.
    pub(crate) fn take(&mut self, id: &ConnId) -> Option<C> {
        let i = self.find(key_of(id))?;
        Some(self.remove(i).1)
    }

    /// Takes the connection that has been idle longest.
    pub(crate) fn take_oldest(&mut self) -> Option<(ConnId, C)> {
        let i = self.slab.head.get()?;
        Some(self.remove(i))
    }

    /// Takes the connection that arrived last.
    pub(crate) fn take_newest(&mut self) -> Option<(ConnId, C)> {
        let i = self.slab.tail.get()?;
        Some(self.remove(i))
    }

    /// Takes every connection, oldest first.
    pub(crate) fn drain(&mut self) -> Vec<(ConnId, C)> {
        let mut out = Vec::with_capacity(self.len());
        let mut cur = self.slab.head.get();
        while let Some(i) = cur {
            let slot = std::mem::replace(self.slab.slot_mut(i), Slot::Vacant { next_free: NIL });
            let Slot::Occupied {
                key, next, conn, ..
            } = slot
            else {
                unreachable!("idle map: list reached a free slot")
            };
            out.push((id_of(key), conn));
            cur = next.get();
        }
        // Every slot is vacant now; `clear` keeps the segments and the buckets for the
        // next fill.
        self.slab.clear();
        self.buckets.fill(NIL);
        self.len = 0;
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
            let Slot::Occupied {
                key, next, conn, ..
            } = self.slab.slot_mut(i)
            else {
                unreachable!("idle map: list reached a free slot")
            };
            cur = next.get();
            if evict(&id_of(*key), conn) {
                out.push(self.remove(i));
            }
        }
        out
    }

    #[cfg(test)]
    /// Ids in arrival order (for tests and diagnostics).
    pub(crate) fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        std::iter::successors(self.slab.head.get(), |&i| self.slab.next_of(i))
            .map(|i| id_of(self.slab.key_and_chain(i).0))
    }
}

#[cfg(test)]
mod tests;
