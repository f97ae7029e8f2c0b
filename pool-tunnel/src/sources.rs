//! The public port's sessions: the global cap, and what each source may hold and start,
//! with limits that bite only under contention.
//!
//! A source is a peer address cut to its prefix (/24 for IPv4, /64 for IPv6; an
//! IPv4-mapped IPv6 address counts as IPv4), so that one machine, or one small network,
//! cannot take every session slot or every pooled connection from the other users.
//!
//! The rules, in the order they are applied to a newcomer:
//!
//! 1. **A share that binds only under contention.** Each source is entitled to
//!    `concurrent` sessions at once and `rate` new ones a second (`governor`'s keyed
//!    limiter: a bucket of `2 * rate`, at least 1, refilled at `rate`). The port is *contended* while the sessions under way
//!    reach three quarters of the cap, or for a second after a newcomer found the cap
//!    full. Outside contention a source alone may go past its share (a reverse proxy or
//!    a NAT in front of the port carries every user from one address); under it, a
//!    source over either share is refused at once.
//! 2. **The heaviest yields at the cap.** When the cap is reached, a newcomer whose
//!    source would still hold fewer sessions than the source holding the most takes the
//!    *newest* session of that source (the session is reset); otherwise the newcomer is
//!    refused. So a crowd of sources holding every slot cannot lock out a source that
//!    holds fewer, and sources of equal weight never churn each other's sessions.
//!    Before that rule, a *quiet* session (one that moved no byte for a while, as the
//!    caller judges: [`SourceLimits::admit_quiet`]) yields to any newcomer, the oldest
//!    quiet session of the heaviest source first: a crowd of as many sources as the
//!    cap has slots, each holding one silent session, locks nobody out, and a session
//!    moving bytes is never evicted while a quiet one is held.
//!
//! The table holds only sources with a session under way. The limiter keeps a state
//! per source that started a session, never more than [`MAX_SOURCES`]: at the bound it
//! drops the states of sources whose bucket is full again (idle keys,
//! `retain_recent`), and when that frees less than a quarter it forgets them all (every
//! bucket full again, as for a newcomer). Sans-IO: time is an argument (the limiter runs
//! on a clock this table advances to each `now`), and the caller resets the sessions
//! it is told to evict.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// The most sources the table keeps.
pub(crate) const MAX_SOURCES: usize = 65_536;
/// How long the port stays contended after a newcomer found the cap full.
pub(crate) const CONTENDED_FOR: Duration = Duration::from_secs(1);

/// Why a session was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The port is contended and its source holds its share of sessions at once.
    Concurrent,
    /// The port is contended and its source started its share in the last second.
    Rate,
    /// The cap is reached and its source holds as many as any other.
    Full,
}

/// A session's handle in the table.
pub(crate) type SessionId = u64;

/// A session admitted: release it with [`SourceLimits::release`] when it ends, and
/// reset `evict` (if any) at once: the table no longer counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub(crate) struct Admitted {
    /// Its source.
    pub source: Source,
    /// Its handle.
    pub id: SessionId,
    /// A session of the heaviest source that yields its slot to this one.
    pub evict: Option<SessionId>,
}

/// A source's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Source(u128);

impl Source {
    /// The source of `peer`.
    pub(crate) fn of(peer: IpAddr) -> Self {
        match peer.to_canonical() {
            IpAddr::V4(a) => Self(u128::from(u32::from(a) & 0xffff_ff00)),
            IpAddr::V6(a) => Self((u128::from(a) & !0u128 << 64) | 1),
        }
    }
}

/// Each source's rate: `governor`'s keyed limiter on a clock that [`Buckets::at`]
/// moves to the table's `now`.
struct Buckets {
    limiter:
        RateLimiter<Source, HashMapStateStore<Source>, FakeRelativeClock, NoOpMiddleware<Nanos>>,
    quota: Quota,
    clock: FakeRelativeClock,
    /// The first `now` seen (the clock's zero), and how far the clock has been moved.
    epoch: Option<Instant>,
    moved: Duration,
}

impl Buckets {
    fn new(rate: f64) -> Self {
        // A bucket of twice the rate, at least 1; one token back every 1/rate s.
        let burst = NonZeroU32::new((2.0 * rate).clamp(1.0, f64::from(u32::MAX)) as u32)
            .unwrap_or(NonZeroU32::MIN);
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("a period above zero")
            .allow_burst(burst);
        let clock = FakeRelativeClock::default();
        Self {
            limiter: RateLimiter::hashmap_with_clock(quota, clock.clone()),
            quota,
            clock,
            epoch: None,
            moved: Duration::ZERO,
        }
    }

    /// Moves the limiter's clock to `now` (never back).
    fn at(&mut self, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let since = now.saturating_duration_since(epoch);
        if since > self.moved {
            self.clock.advance(since - self.moved);
            self.moved = since;
        }
    }

    /// Takes a token of `source` at `now` if it has one.
    fn take(&mut self, source: Source, now: Instant) -> bool {
        self.at(now);
        if self.limiter.len() >= MAX_SOURCES {
            self.limiter.retain_recent();
            if self.limiter.len() > MAX_SOURCES / 4 * 3 {
                self.limiter = RateLimiter::hashmap_with_clock(self.quota, self.clock.clone());
            }
        }
        self.limiter.check_key(&source).is_ok()
    }
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buckets")
            .field("quota", &self.quota)
            .field("sources", &self.limiter.len())
            .finish_non_exhaustive()
    }
}

/// The cap, the shares, and what each source holds.
#[derive(Debug)]
pub(crate) struct SourceLimits {
    max_total: usize,
    concurrent: usize,
    total: usize,
    /// Sources holding a session, their sessions oldest first.
    table: HashMap<Source, VecDeque<SessionId>>,
    buckets: Buckets,
    /// Sources holding a session, by how many they hold.
    by_held: BTreeSet<(usize, Source)>,
    contended_until: Option<Instant>,
    next: SessionId,
}

impl SourceLimits {
    /// At most `max_total` sessions at once in all; under contention, at most
    /// `concurrent` at once and `rate` new ones a second per source.
    pub(crate) fn new(max_total: usize, concurrent: usize, rate: f64) -> Self {
        let rate = if rate.is_finite() {
            rate.max(0.1)
        } else {
            f64::from(u32::MAX)
        };
        Self {
            max_total: max_total.max(1),
            concurrent: concurrent.max(1),
            total: 0,
            table: HashMap::new(),
            buckets: Buckets::new(rate),
            by_held: BTreeSet::new(),
            contended_until: None,
            next: 0,
        }
    }

    /// Whether the shares bind at `now`: the cap is near, or was reached a moment ago.
    pub(crate) fn contended(&self, now: Instant) -> bool {
        self.total * 4 >= self.max_total * 3 || self.contended_until.is_some_and(|t| now < t)
    }

    fn held(&self, source: Source) -> usize {
        self.table.get(&source).map_or(0, VecDeque::len)
    }

    fn reindex(&mut self, source: Source, from: usize, to: usize) {
        if from > 0 {
            self.by_held.remove(&(from, source));
        }
        if to > 0 {
            self.by_held.insert((to, source));
        }
    }

    /// A session from `peer` arrives at `now`: admitted, maybe in another's place, or
    /// refused. No session counts as quiet: see [`SourceLimits::admit_quiet`].
    #[cfg(test)]
    pub(crate) fn admit(&mut self, peer: IpAddr, now: Instant) -> Result<Admitted, Refused> {
        self.admit_quiet(peer, now, |_| false)
    }

    /// [`SourceLimits::admit`], where `quiet` says which sessions have moved no byte for
    /// a while: at the cap one of them yields first (the oldest quiet session of the
    /// heaviest source holding one), whoever the newcomer; only when none is quiet
    /// does the heaviest source yield its newest to a lighter one.
    pub(crate) fn admit_quiet(
        &mut self,
        peer: IpAddr,
        now: Instant,
        quiet: impl Fn(SessionId) -> bool,
    ) -> Result<Admitted, Refused> {
        let source = Source::of(peer);
        let contended = self.contended(now);
        if contended && self.held(source) >= self.concurrent {
            return Err(Refused::Concurrent);
        }
        // At the cap: who yields, decided before a token is spent.
        let mut yields = None;
        if self.total >= self.max_total {
            self.contended_until = Some(now + CONTENDED_FOR);
            yields = Some(match self.oldest_quiet(&quiet) {
                Some(q) => Yield::Quiet(q),
                None => match self.by_held.last().copied() {
                    Some((most, victim)) if self.held(source) + 1 < most => Yield::Newest(victim),
                    _ => return Err(Refused::Full),
                },
            });
        }
        // Alone, a source may go past its share; it still spends its tokens, so that
        // when contention comes it is the first held to its rate.
        if !self.buckets.take(source, now) && contended {
            return Err(Refused::Rate);
        }
        let evict = match yields {
            Some(Yield::Quiet((victim, id))) => self.take(victim, id),
            Some(Yield::Newest(victim)) => self.pop_newest(victim),
            None => None,
        };
        self.next += 1;
        let id = self.next;
        let own = self.held(source);
        self.table.entry(source).or_default().push_back(id);
        self.total += 1;
        self.reindex(source, own, own + 1);
        Ok(Admitted { source, id, evict })
    }

    /// The oldest quiet session of the heaviest source that holds one.
    fn oldest_quiet(&self, quiet: &impl Fn(SessionId) -> bool) -> Option<(Source, SessionId)> {
        self.by_held.iter().rev().find_map(|&(_, source)| {
            self.table
                .get(&source)?
                .iter()
                .find(|&&id| quiet(id))
                .map(|&id| (source, id))
        })
    }

    /// Takes session `id` of `source` out of the table.
    fn take(&mut self, source: Source, id: SessionId) -> Option<SessionId> {
        self.release(source, id).then_some(id)
    }

    /// Takes the newest session of `source` out of the table.
    fn pop_newest(&mut self, source: Source) -> Option<SessionId> {
        let e = self.table.get_mut(&source)?;
        let id = e.pop_back()?;
        self.forget_if_empty(source);
        Some(id)
    }

    /// Session `id` of `source` ended; answers whether the table still held it (an
    /// evicted session was taken out when it was evicted).
    pub(crate) fn release(&mut self, source: Source, id: SessionId) -> bool {
        let Some(e) = self.table.get_mut(&source) else {
            return false;
        };
        let Some(i) = e.iter().rposition(|&s| s == id) else {
            return false;
        };
        e.remove(i);
        self.forget_if_empty(source);
        true
    }

    /// Counts one session of `source` fewer (just taken out), and drops its entry when
    /// it holds none.
    fn forget_if_empty(&mut self, source: Source) {
        let left = self.held(source);
        if left == 0 {
            self.table.remove(&source);
        }
        self.total -= 1;
        self.reindex(source, left + 1, left);
    }

    /// Sessions under way from `peer`'s source.
    #[cfg(test)]
    pub(crate) fn active(&self, peer: IpAddr) -> usize {
        self.held(Source::of(peer))
    }

    /// Sessions under way in all.
    #[cfg(test)]
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Sources with state: a session under way, or a bucket not yet full again (at
    /// most [`MAX_SOURCES`] of these).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len().max(self.buckets.limiter.len())
    }
}

/// Who yields at the cap.
enum Yield {
    /// The oldest quiet session of the heaviest source holding one.
    Quiet((Source, SessionId)),
    /// The newest session of this source, the heaviest.
    Newest(Source),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8) -> IpAddr {
        IpAddr::from([127, 0, a, b])
    }

    /// Others fill the table until it is contended: 4 sessions from each of 10.9.x.1.
    fn crowd(t: &mut SourceLimits, now: Instant) -> Vec<Admitted> {
        let mut held = Vec::new();
        while !t.contended(now) {
            let x = (held.len() / 4) as u8;
            held.push(t.admit(IpAddr::from([10, 9, x, 1]), now).unwrap());
        }
        held
    }

    #[test]
    fn under_contention_one_source_cannot_hold_every_session() {
        let now = Instant::now();
        let mut t = SourceLimits::new(100, 4, 1000.0);
        crowd(&mut t, now);
        let held: Vec<Admitted> = (0..4)
            .map(|i| t.admit(ip(1, 2 + i), now).unwrap())
            .collect();
        // The same /24, another address: refused.
        assert_eq!(t.admit(ip(1, 200), now), Err(Refused::Concurrent));
        // Another /24 is not affected.
        assert!(t.admit(ip(0, 1), now).is_ok());
        assert!(t.release(held[0].source, held[0].id));
        assert!(!t.release(held[0].source, held[0].id), "released twice");
        assert!(t.admit(ip(1, 2), now).is_ok());
        assert_eq!(t.active(ip(1, 9)), 4);
    }

    #[test]
    fn under_contention_one_source_cannot_start_sessions_faster_than_its_rate() {
        let t0 = Instant::now();
        let mut t = SourceLimits::new(1000, 1_000_000, 10.0);
        crowd(&mut t, t0);
        let mut ok = 0;
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i)); // 1,000 a second for 1 s
            if let Ok(a) = t.admit(ip(1, 1), now) {
                t.release(a.source, a.id);
                ok += 1;
            }
        }
        // The burst of 20, then 10 a second: about 30 in the second.
        assert!((25..=32).contains(&ok), "{ok}");
        assert!(t.admit(ip(0, 1), t0 + Duration::from_millis(999)).is_ok());
    }

    #[test]
    fn a_lone_source_goes_past_its_share_until_others_wait() {
        let t0 = Instant::now();
        // A share of 10 a second and 8 at once; 40 at once, at 4x the rate: all in.
        let mut t = SourceLimits::new(1000, 8, 10.0);
        let lone: Vec<Admitted> = (0..40).map(|_| t.admit(ip(0, 1), t0).unwrap()).collect();
        assert_eq!(t.total(), 40);
        // Others fill the port to near its cap: the lone source is held to its share
        // (its bucket is spent, and it holds more than 8).
        crowd(&mut t, t0);
        assert_eq!(t.admit(ip(0, 1), t0), Err(Refused::Concurrent));
        for a in &lone {
            t.release(a.source, a.id);
        }
        crowd(&mut t, t0);
        assert_eq!(t.admit(ip(0, 1), t0), Err(Refused::Rate));
        let later = t0 + Duration::from_millis(150);
        assert!(t.admit(ip(0, 1), later).is_ok(), "a token came back");
    }

    #[test]
    fn at_the_cap_the_heaviest_source_yields_its_newest() {
        let now = Instant::now();
        let mut t = SourceLimits::new(6, 100, 1000.0);
        let a: Vec<Admitted> = (0..4).map(|_| t.admit(ip(1, 1), now).unwrap()).collect();
        let b: Vec<Admitted> = (0..2).map(|_| t.admit(ip(2, 1), now).unwrap()).collect();
        assert!(a.iter().chain(&b).all(|x| x.evict.is_none()));
        // A newcomer holding nothing takes source 1's newest.
        let c = t.admit(ip(0, 1), now).unwrap();
        assert_eq!(c.evict, Some(a[3].id));
        assert!(!t.release(a[3].source, a[3].id), "already out of the table");
        assert_eq!(t.total(), 6);
        // 1 holds 3, 2 holds 2, 0 holds 1: source 2 would hold 3, not fewer: refused.
        assert_eq!(t.admit(ip(2, 9), now), Err(Refused::Full));
        // Source 0 would hold 2 < 3: source 1 yields again.
        assert_eq!(t.admit(ip(0, 2), now).unwrap().evict, Some(a[2].id));
        // Now 2, 2, 2: nobody of them yields to another.
        for s in [0, 1, 2] {
            assert_eq!(t.admit(ip(s, 7), now), Err(Refused::Full));
        }
        // A fourth source holding none still gets in.
        assert!(t.admit(ip(3, 7), now).unwrap().evict.is_some());
    }

    #[test]
    fn eighteen_sources_holding_the_cap_never_lock_a_newcomer_out() {
        let now = Instant::now();
        let mut t = SourceLimits::new(4096, 256, 200.0);
        for s in 1..=18u8 {
            for i in 0..256u16 {
                let peer = IpAddr::from([127, 0, s, (i % 250) as u8 + 2]);
                let _ = t.admit(peer, now);
            }
        }
        assert_eq!(t.total(), 4096);
        // 196 honest users one after another, each from 127.0.0.1 while the last runs.
        let mut served = 0;
        let mut prev: Option<Admitted> = None;
        for _ in 0..196 {
            if let Ok(a) = t.admit(ip(0, 1), now) {
                served += 1;
                if let Some(p) = prev.replace(a) {
                    t.release(p.source, p.id);
                }
            }
        }
        assert_eq!(served, 196);
    }

    #[test]
    fn at_the_cap_a_quiet_session_yields_before_any_moving_one() {
        let now = Instant::now();
        let mut t = SourceLimits::new(6, 100, 1000.0);
        // Source 1 holds 4 sessions moving bytes; sources 2 and 3 one quiet each.
        let a: Vec<Admitted> = (0..4).map(|_| t.admit(ip(1, 1), now).unwrap()).collect();
        let q2 = t.admit(ip(2, 1), now).unwrap();
        let q3 = t.admit(ip(3, 1), now).unwrap();
        let quiet = |id| id == q2.id || id == q3.id;
        // A newcomer from the heaviest source itself takes a quiet session, not one of
        // its own moving ones, and not by weight.
        let n = t.admit_quiet(ip(1, 1), now, quiet).unwrap();
        assert!(
            n.evict == Some(q2.id) || n.evict == Some(q3.id),
            "{:?}",
            n.evict
        );
        let n2 = t
            .admit_quiet(ip(4, 1), now, |id| quiet(id) && Some(id) != n.evict)
            .unwrap();
        assert!(n2.evict.is_some() && n2.evict != n.evict);
        assert!(a.iter().all(|x| Some(x.id) != n2.evict));
        // No quiet session left: the weight rule again (source 1 holds 5, 4 would hold 2).
        let n3 = t.admit_quiet(ip(4, 2), now, |_| false).unwrap();
        assert_eq!(n3.evict, Some(n.id), "the heaviest yields its newest");
    }

    #[test]
    fn as_many_sources_as_slots_each_holding_a_quiet_session_lock_nobody_out() {
        let now = Instant::now();
        let mut t = SourceLimits::new(64, 4, 1000.0);
        let crowd: Vec<Admitted> = (0..64u8)
            .map(|s| t.admit(ip(s + 1, 1), now).unwrap())
            .collect();
        assert_eq!(t.total(), 64);
        // By weight alone a newcomer holding nothing is refused (everyone holds one).
        assert_eq!(t.admit(ip(0, 1), now), Err(Refused::Full));
        let quiet = |id| crowd.iter().any(|c| c.id == id);
        // 50 newcomers from 50 networks, each staying: each takes a quiet one's slot.
        let mut evicted = BTreeSet::new();
        for n in 0..50u8 {
            let a = t
                .admit_quiet(IpAddr::from([10, 1, n, 1]), now, quiet)
                .unwrap();
            assert!(evicted.insert(a.evict.expect("a quiet one yields")));
        }
        assert_eq!(t.total(), 64);
    }

    #[test]
    fn ipv6_sources_are_64s_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let c: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let m: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(Source::of(m), Source::of("10.1.2.200".parse().unwrap()));
    }

    #[test]
    fn at_the_bound_idle_sources_are_forgotten_and_a_busy_one_is_not() {
        let t0 = Instant::now();
        // 1 a second, a bucket of 2.
        let mut t = SourceLimits::new(1 << 20, 1 << 20, 1.0);
        for i in 0..(MAX_SOURCES - 1) as u32 {
            let peer = IpAddr::from((0x0a00_0000 + (i << 8)).to_be_bytes());
            let a = t.admit(peer, t0).unwrap();
            t.release(a.source, a.id);
        }
        // Ten seconds later every one of them has a full bucket again (idle). A busy
        // source takes a token: the table reaches its bound.
        let later = t0 + Duration::from_secs(10);
        let busy = IpAddr::from([192, 0, 2, 1]);
        let a = t.admit(busy, later).unwrap();
        t.release(a.source, a.id);
        assert_eq!(t.len(), MAX_SOURCES);
        // Its next session finds the table at its bound: the idle states go, its own
        // (a bucket not full) stays, and it spends its last token.
        let a = t.admit(busy, later).unwrap();
        t.release(a.source, a.id);
        assert_eq!(t.len(), 1, "only the busy source");
        crowd(&mut t, later);
        assert_eq!(
            t.admit(busy, later),
            Err(Refused::Rate),
            "its bucket is still spent"
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut t = SourceLimits::new(1 << 20, 4, 1.0);
        for i in 0..(MAX_SOURCES + 100) as u32 {
            let peer = IpAddr::from((0x0a00_0000 + (i << 8)).to_be_bytes());
            if let Ok(a) = t.admit(peer, now) {
                t.release(a.source, a.id);
            }
        }
        assert!(t.len() <= MAX_SOURCES, "{}", t.len());
    }
}
