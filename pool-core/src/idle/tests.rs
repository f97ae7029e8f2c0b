use super::*;
use proptest::prelude::*;
use std::collections::VecDeque;

fn id(n: u32) -> ConnId {
    ConnId::from_random(n.to_be_bytes())
}

/// Checks the slab against itself: the list runs both ways over exactly the
/// occupied slots, every occupied slot is in its bucket's chain once, every other
/// slot is on the free list, and the segments are full up to the last slot.
fn check_invariants<C>(map: &IdleMap<C>) {
    let slab = &map.slab;
    let mut forward = Vec::new();
    let (mut prev, mut cur) = (NIL, slab.head);
    while let Some(i) = cur.get() {
        let Slot::Occupied {
            key, prev: p, next, ..
        } = slab.slot(i)
        else {
            panic!("list reached free slot {i}");
        };
        assert_eq!(*p, prev, "back link of slot {i}");
        assert_eq!(map.find(*key), Some(i));
        forward.push(i);
        (prev, cur) = (Link::to(i), *next);
    }
    assert_eq!(slab.tail, prev);
    assert_eq!(forward.len(), map.len());
    let chained: usize = (0..map.buckets.len())
        .map(|b| {
            let mut n = 0;
            let mut cur = map.buckets[b];
            while let Some(i) = cur.get() {
                let (key, chain) = slab.key_and_chain(i);
                assert_eq!(map.bucket(key), b, "slot {i} chained in the wrong bucket");
                n += 1;
                assert!(n <= slab.len, "chain loops");
                cur = chain;
            }
            n
        })
        .sum();
    assert_eq!(chained, map.len());
    assert!(map.buckets.len() >= map.len());
    assert!(map.buckets.is_empty() || map.buckets.len().is_power_of_two());
    let mut free = 0;
    let mut cur = slab.free;
    while let Some(i) = cur.get() {
        let Slot::Vacant { next_free } = slab.slot(i) else {
            panic!("free list reached live slot {i}");
        };
        free += 1;
        assert!(free <= slab.len, "free list loops");
        cur = *next_free;
    }
    assert_eq!(forward.len() + free, slab.len);
    let used: usize = slab.segments.iter().map(Vec::len).sum();
    assert_eq!(used, slab.len);
    for (s, segment) in slab.segments.iter().enumerate() {
        let before = s * Slab::<C>::SEGMENT;
        let want = slab.len.saturating_sub(before).min(Slab::<C>::SEGMENT);
        assert_eq!(segment.len(), want, "segment {s}");
    }
}

#[test]
fn slots_carry_no_tag() {
    use std::mem::size_of;
    // key 4 + three links 4 + 4 + 4 + the connection; the tag lives in a link's
    // niche, and the index costs the slot nothing.
    assert_eq!(size_of::<Slot<[u8; 48]>>(), 64);
    assert_eq!(size_of::<Slot<u64>>(), 24);
    assert!(size_of::<Slot<()>>() <= 16);
}

#[test]
fn the_slab_grows_by_whole_segments_and_the_index_with_the_count() {
    type Map = IdleMap<[u8; 48]>;
    let seg = Slab::<[u8; 48]>::SEGMENT;
    assert_eq!(seg, 256, "64-byte slots, 16 KiB segments");
    let mut map = Map::new();
    assert_eq!(map.buckets.capacity() + map.slab.segments.capacity(), 0);
    let n = 3 * seg + 5;
    for k in 0..n as u32 {
        map.insert(id(k), [0; 48]).unwrap();
        // Never pre-sized: the buckets are the live count rounded up.
        assert!(map.buckets.len() < 2 * map.len().max(MIN_BUCKETS / 2) + 1);
    }
    check_invariants(&map);
    assert_eq!(map.slab.segments.len(), 4);
    // Every segment after the first was made at its full size and never moved.
    for segment in &map.slab.segments[1..] {
        assert_eq!(segment.capacity(), seg);
    }
    assert_eq!(map.slab.segments[0].capacity(), seg);
    for k in 0..n as u32 {
        assert_eq!(map.take(&id(k)), Some([0; 48]));
    }
    check_invariants(&map);
}

#[test]
fn drain_keeps_the_slab_usable() {
    let mut map = IdleMap::new();
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
            prop_assert!(map.slab.len <= peak);
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
            prop_assert!(map.slab.len <= peak);
        }
        check_invariants(&map);
        prop_assert_eq!(map.slab.len, peak);
    }
}
