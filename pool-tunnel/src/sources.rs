//! Per-source limits on the public port: what one source may hold and start.
//!
//! A source is a peer address cut to its prefix (/24 for IPv4, /64 for IPv6; an
//! IPv4-mapped IPv6 address counts as IPv4), so that one machine, or one small network,
//! cannot take every session slot or every pooled connection from the other users.
//! Each source has at most `concurrent` sessions at once and starts at most `rate` new
//! ones a second (a token bucket holding `2 * rate`, at least 1); a session over
//! either limit is closed at once and counted. The table holds only sources with a
//! session under way or a bucket not yet full again, and never more than
//! [`MAX_SOURCES`] entries: past that, entries with no session are dropped first.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// The most sources the table keeps.
pub const MAX_SOURCES: usize = 65_536;
/// Default sessions at once from one source.
pub const DEFAULT_CONCURRENT: usize = 256;
/// Default new sessions a second from one source.
pub const DEFAULT_RATE: f64 = 200.0;

/// Why a session was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its source holds its sessions at once.
    Concurrent,
    /// Its source started too many sessions in the last second.
    Rate,
}

/// A source's prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    /// The source of `peer`.
    pub fn of(peer: IpAddr) -> Self {
        match peer.to_canonical() {
            IpAddr::V4(a) => Self(u128::from(u32::from(a) & 0xffff_ff00)),
            IpAddr::V6(a) => Self((u128::from(a) & !0u128 << 64) | 1),
        }
    }
}

#[derive(Debug)]
struct Entry {
    active: usize,
    tokens: f64,
    last: Instant,
}

/// The limits and what each source holds.
#[derive(Debug)]
pub struct SourceLimits {
    concurrent: usize,
    rate: f64,
    table: HashMap<Source, Entry>,
}

impl SourceLimits {
    /// At most `concurrent` sessions at once and `rate` new ones a second per source.
    pub fn new(concurrent: usize, rate: f64) -> Self {
        Self {
            concurrent: concurrent.max(1),
            rate: rate.max(0.1),
            table: HashMap::new(),
        }
    }

    fn burst(&self) -> f64 {
        (2.0 * self.rate).max(1.0)
    }

    /// A session from `peer` arrives at `now`: admitted (call
    /// [`release`](Self::release) when it ends) or refused.
    pub fn admit(&mut self, peer: IpAddr, now: Instant) -> Result<Source, Refused> {
        if self.table.len() >= MAX_SOURCES {
            self.prune(now);
        }
        let source = Source::of(peer);
        let burst = self.burst();
        let rate = self.rate;
        let e = self.table.entry(source).or_insert(Entry {
            active: 0,
            tokens: burst,
            last: now,
        });
        let dt = now.saturating_duration_since(e.last).as_secs_f64();
        e.tokens = (e.tokens + dt * rate).min(burst);
        e.last = now;
        if e.active >= self.concurrent {
            return Err(Refused::Concurrent);
        }
        if e.tokens < 1.0 {
            return Err(Refused::Rate);
        }
        e.tokens -= 1.0;
        e.active += 1;
        Ok(source)
    }

    /// A session of `source` ended.
    pub fn release(&mut self, source: Source) {
        if let Some(e) = self.table.get_mut(&source) {
            e.active = e.active.saturating_sub(1);
        }
    }

    /// Sessions under way from `peer`'s source.
    pub fn active(&self, peer: IpAddr) -> usize {
        self.table.get(&Source::of(peer)).map_or(0, |e| e.active)
    }

    /// Sources in the table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Drops the sources that hold nothing: no session, and a bucket full again.
    fn prune(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst());
        self.table.retain(|_, e| {
            let dt = now.saturating_duration_since(e.last).as_secs_f64();
            e.active > 0 || e.tokens + dt * rate < burst
        });
        if self.table.len() >= MAX_SOURCES {
            // Every entry holds a session or a recent burst: drop idle ones anyway.
            self.table.retain(|_, e| e.active > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(a: u8, b: u8) -> IpAddr {
        IpAddr::from([127, 0, a, b])
    }

    #[test]
    fn one_source_cannot_hold_every_session() {
        let now = Instant::now();
        let mut t = SourceLimits::new(4, 1000.0);
        let held: Vec<Source> = (0..4)
            .map(|i| t.admit(ip(1, 2 + i), now).unwrap())
            .collect();
        // The same /24, another address: refused.
        assert_eq!(t.admit(ip(1, 200), now), Err(Refused::Concurrent));
        // Another /24 is not affected.
        assert!(t.admit(ip(0, 1), now).is_ok());
        t.release(held[0]);
        assert!(t.admit(ip(1, 2), now).is_ok());
        assert_eq!(t.active(ip(1, 9)), 4);
    }

    #[test]
    fn one_source_cannot_start_sessions_faster_than_its_rate() {
        let t0 = Instant::now();
        let mut t = SourceLimits::new(1_000_000, 10.0);
        let mut ok = 0;
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(u64::from(i)); // 1,000 a second for 1 s
            if let Ok(s) = t.admit(ip(1, 1), now) {
                t.release(s);
                ok += 1;
            }
        }
        // The burst of 20, then 10 a second: about 30 in the second.
        assert!((25..=32).contains(&ok), "{ok}");
        assert!(t.admit(ip(0, 1), t0 + Duration::from_millis(999)).is_ok());
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
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut t = SourceLimits::new(4, 1.0);
        for i in 0..(MAX_SOURCES + 100) as u32 {
            let peer = IpAddr::from((0x0a00_0000 + (i << 8)).to_be_bytes());
            if let Ok(s) = t.admit(peer, now) {
                t.release(s);
            }
        }
        assert!(t.len() <= MAX_SOURCES, "{}", t.len());
    }
}
