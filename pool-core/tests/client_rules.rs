//! Plain unit tests of the rules of the client (backoff, rounds, gets by id) and of the
//! server's put-back, written against the machines' public API.

use pool_core::testing::{NextDeadline as _, Shared as _, SplitDials as _, SplitOutputs as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_core::{
    backoff, Admission, ClientConfig, ClientMachine, ConnId, GetFailure, Got, Random, SeededRandom,
    ServerConfig, ServerMachine, Stage,
};

const MS: fn(u64) -> Duration = Duration::from_millis;
const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A generator that plays a script, then zeros.
#[derive(Clone, Default)]
struct Script(Arc<Mutex<Vec<u32>>>);

impl Script {
    fn new(mut v: Vec<u32>) -> Self {
        v.reverse();
        Self(Arc::new(Mutex::new(v)))
    }
}

impl Random for Script {
    fn next_u32(&mut self) -> u32 {
        self.0.lock().expect("script").pop().unwrap_or(0)
    }
}

fn seeded(seed: u64) -> SeededRandom {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    SeededRandom::from_seed(s)
}

/// A live candidate is served at once.
fn ready<C: std::fmt::Debug>(
    m: &mut pool_core::PoolCommon<C>,
    got: Got<C>,
    now: Instant,
) -> (ConnId, C) {
    match got {
        Got::Check(check) => match m.handle_check(check, true, now) {
            Got::Ready(id, c) => (id, c),
            other => panic!("expected ready, got {other:?}"),
        },
        other => panic!("expected a candidate, got {other:?}"),
    }
}

fn cfg(min_iv: u64, max_iv: u64) -> ClientConfig {
    ClientConfig::builder()
        .capacity(4, 16)
        .interval(MS(min_iv), MS(max_iv))
        .parallelism(2)
        .build()
        .expect("valid config")
}

#[test]
fn backoff_grows_jittered_and_bounded() {
    let c = cfg(100, 5_000);
    let mut last_full = Duration::ZERO;
    for failures in 1..40u32 {
        let full = (MS(100) * 2u32.saturating_pow((failures - 1).min(20))).min(MS(5_000));
        assert!(full >= last_full, "backoff shrank");
        last_full = full;
        for jitter in [0, 1, u32::MAX / 3, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
            let d = backoff(&c, failures, jitter);
            let low = (full / 2).max(c.min_interval());
            assert!(
                d >= low && d <= full,
                "failures {failures} jitter {jitter}: {d:?} not in [{low:?}, {full:?}]"
            );
            assert!(d >= c.min_interval() && d <= c.max_interval());
        }
        assert_eq!(backoff(&c, failures, 0), (full / 2).max(c.min_interval()));
        assert!(backoff(&c, failures, u32::MAX).abs_diff(full) <= Duration::from_micros(1));
    }
    // Exponential: the undelayed bound doubles until the cap.
    assert_eq!(backoff(&c, 3, u32::MAX), MS(400));
    assert_eq!(backoff(&c, 4, u32::MAX), MS(800));
    assert_eq!(backoff(&c, 30, u32::MAX), MS(5_000));
}

/// Drives a client whose every dial fails at connect; returns the dial instants.
fn always_failing(c: &ClientConfig, secs: u64, seed: u64) -> (Vec<Instant>, ClientMachine<u64>) {
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(c.clone(), seeded(seed), t0);
    let mut now = t0;
    let mut dials = Vec::new();
    let mut steps = 0;
    while now < t0 + Duration::from_secs(secs) {
        steps += 1;
        assert!(steps < 1_000_000, "the driver spins");
        m.handle_timeout(now);
        while let Some(t) = m.poll_dial(now) {
            dials.push(now);
            m.handle_dial_failure(t, Stage::Connect, now + MS(5));
        }
        let next = m.next_deadline().expect("a failing client keeps a timer");
        assert!(next > now, "timer not in the future");
        now = next;
    }
    (dials, m)
}

#[test]
fn failing_server_does_not_spin() {
    let c = cfg(100, 1_000);
    let (dials, m) = always_failing(&c, 60, 0x9e37_79b9);
    // After a few doublings every probe is at least max_interval/2 after the last: at
    // most two per max_interval, plus the first probes of the ramp.
    let ramp = 1 + (c.max_interval().as_millis() / c.min_interval().as_millis()).ilog2() as usize;
    // The first round dials in parallel; backing off starts after `parallelism`
    // failures in a row (the capacity, 4, is larger).
    let threshold = c.parallelism();
    let bound = (60_000 / (c.max_interval().as_millis() as usize / 2)) + ramp + threshold;
    assert!(
        dials.len() <= bound,
        "{} dials in 60 s against a dead server (bound {bound})",
        dials.len()
    );
    assert!(dials.len() >= 30, "it still probes: {}", dials.len());
    for w in dials[threshold - 1..].windows(2) {
        assert!(
            w[1] - w[0] >= c.min_interval(),
            "probes closer than the minimum interval"
        );
        // Each failure is reported 5 ms after its dial; the wait counts from there.
        assert!(
            w[1] - w[0] <= c.max_interval() + MS(5),
            "probes further apart than the maximum"
        );
    }
    assert_eq!(m.failures() as usize, dials.len());
    assert_eq!(m.counters().dial_failures as usize, dials.len());
    assert_eq!(m.status().in_flight, 0);
}

#[test]
fn success_resets_backoff() {
    let c = cfg(100, 10_000);
    let (_, mut m) = always_failing(&c, 30, 7);
    assert!(m.failures() > 5);
    let mut now = m.refill_at().expect("a round ahead");
    m.handle_timeout(now);
    let t = m.poll_dial(now).expect("a probe");
    assert!(
        m.poll_dial(now).is_none(),
        "a single probe while backing off"
    );
    now += MS(1);
    m.handle_dial_success(t, ConnId::from_random([1, 2, 3, 4]), 1, now);
    assert_eq!(m.idle(), 1);
    assert_eq!(m.failures(), 0);
    assert!(!m.backing_off());
    // The top-up resumes at once, with no need to wait for the next round.
    let mut n = 0;
    while let Some(t) = m.poll_dial(now) {
        n += 1;
        m.handle_dial_failure(t, Stage::Tls, now);
        if m.backing_off() {
            break;
        }
    }
    assert_eq!(
        n,
        c.parallelism(),
        "a run of failures as long as the parallelism stops the top-up"
    );
    assert!(m.poll_dial(now).is_none(), "no dial while backing off");
    // Just past the threshold: a minimal backoff again.
    let wait = m.next_deadline().expect("timer") - now;
    assert!(
        wait <= c.min_interval().max(m.status().interval) * 2,
        "{wait:?}"
    );
}

#[test]
fn single_mode_get_any_dials_urgently() {
    let c = ClientConfig::builder()
        .capacity(2, 4)
        .parallelism(1)
        .mode(pool_core::Mode::Single)
        .build()
        .expect("valid");
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(c, seeded(1), t0);
    // No round has run: nothing idle.
    let key = match m.get_any(t0, t0 + MS(500)) {
        Got::Wait(k) => k,
        other => panic!("expected to wait, got {other:?}"),
    };
    let t = m.poll_dial(t0).expect("an urgent dial");
    assert!(t.is_urgent());
    assert!(m.poll_dial(t0).is_none(), "one urgent dial per waiting get");
    let id = ConnId::from_random([9, 9, 9, 9]);
    m.handle_dial_success(t, id, 42, t0 + MS(3));
    let a = m.poll_answer().expect("answer");
    assert_eq!(a.key, key);
    assert_eq!(a.result.expect("served"), (id, 42));
    assert_eq!(m.status().idle, 0);
}

#[test]
fn get_by_id_not_found_rules() {
    let c = cfg(100, 1_000);
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(c, seeded(1), t0);
    let id = ConnId::from_random([1, 1, 1, 1]);
    // Before the first round: the dials it is about to start may bring the id.
    let early = match m.get(id, t0, t0 + MS(1_000)) {
        Got::Wait(k) => k,
        other => panic!("a get before the first round must wait, got {other:?}"),
    };
    m.handle_timeout(t0);
    let a = m.poll_dial(t0).expect("dial");
    let b = m.poll_dial(t0).expect("dial");
    let key = match m.get(id, t0, t0 + MS(1_000)) {
        Got::Wait(k) => k,
        other => panic!("expected to wait, got {other:?}"),
    };
    // Another id lands: still one in flight, keep waiting.
    let other = ConnId::from_random([2, 2, 2, 2]);
    m.handle_dial_success(a, other, 1, t0 + MS(1));
    assert_eq!(m.idle(), 1);
    assert!(m.poll_answer().is_none());
    // The last one fails: in flight drops to 0, nothing can bring the id.
    m.handle_dial_failure(b, Stage::Id, t0 + MS(2));
    let mut answered: Vec<_> = std::iter::from_fn(|| m.poll_answer()).collect();
    answered.sort_by_key(|a| a.key);
    assert_eq!(answered.len(), 2);
    for (a, k) in answered.iter().zip([early, key]) {
        assert_eq!(a.key, k);
        assert_eq!(a.result.as_ref().err(), Some(&GetFailure::NotFound));
    }
    // With nothing in flight any more, a new get by id fails at once.
    assert!(matches!(
        m.get(id, t0, t0 + MS(1_000)),
        Got::Failed(GetFailure::NotFound)
    ));
    assert_eq!(m.counters().not_found, 3);
}

#[test]
fn server_put_back_never_takes_a_pending_id() {
    let now = Instant::now();
    let cfg = ServerConfig::builder()
        .settle(Duration::ZERO)
        .build()
        .expect("valid");
    // The generator draws the same number for both handshakes.
    let random = Script::new(vec![7, 7]);
    let mut s: ServerMachine<u64> = ServerMachine::new(cfg, random, now);
    let Admission::Admit(mut t1) = s.handle_accept(now, LOCAL, true) else {
        panic!("admitted")
    };
    let x = s.assign_id(&mut t1);
    s.handle_ready(t1, 1, now);
    let got = s.get(now, now + MS(1_000));
    let (id, conn) = ready(s.shared_mut(), got, now);
    assert_eq!(id, x);
    // The same id is drawn again for a new handshake while the first is out.
    let Admission::Admit(mut t2) = s.handle_accept(now, LOCAL, true) else {
        panic!("admitted")
    };
    assert_eq!(s.assign_id(&mut t2), x);
    assert_eq!(s.counters().id_collisions, 0, "the id was free");
    // Its get went away: the first connection must not come back under that id.
    s.put_back(id, conn, now);
    assert_eq!(s.poll_close(), Some((x, 1)));
    s.handle_ready(t2, 2, now);
    assert_eq!(s.idle(), 1);
    // With no handshake holding the id, put_back works.
    let got = s.get(now, now + MS(1_000));
    let (id, conn) = ready(s.shared_mut(), got, now);
    assert_eq!(conn, 2);
    s.put_back(id, conn, now);
    assert_eq!(s.poll_close(), None);
    assert_eq!(s.idle(), 1);
}

#[test]
fn single_mode_ids_are_drawn_free() {
    let c = ClientConfig::builder()
        .capacity(2, 4)
        .mode(pool_core::Mode::Single)
        .build()
        .expect("valid");
    let t0 = Instant::now();
    // Draws 5, then 5 again (idle by then: counted and drawn again), then 6.
    let mut m: ClientMachine<u64> = ClientMachine::new(c, Script::new(vec![5, 5, 6]), t0);
    m.handle_timeout(t0);
    let a = m.poll_dial(t0).expect("dial");
    let b = m.poll_dial(t0).expect("dial");
    let first = m.make_id();
    m.handle_dial_success(a, first, 1, t0);
    let second = m.make_id();
    assert_ne!(first, second);
    assert_eq!(m.counters().id_collisions, 1);
    m.handle_dial_success(b, second, 2, t0);
    assert_eq!(m.idle(), 2);
}

#[test]
fn a_colliding_dial_is_closed_and_counted() {
    let c = cfg(100, 1_000);
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(c, seeded(3), t0);
    m.handle_timeout(t0);
    let a = m.poll_dial(t0).expect("dial");
    let b = m.poll_dial(t0).expect("dial");
    let id = ConnId::from_random([4, 4, 4, 4]);
    m.handle_dial_success(a, id, 1, t0);
    m.handle_dial_success(b, id, 2, t0);
    assert_eq!(m.poll_close(), Some((id, 2)));
    let k = m.counters();
    assert_eq!((k.created, k.id_collisions, k.id_errors), (1, 1, 1));
    assert_eq!((m.idle(), m.in_flight(), m.failures()), (1, 0, 1));
}

#[test]
fn scattered_failures_do_not_cut_the_round() {
    let c = ClientConfig::builder()
        .capacity(16, 16)
        .parallelism(4)
        .build()
        .expect("valid");
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(c, seeded(1), t0);
    m.handle_timeout(t0);
    let mut issued = 0u64;
    while let Some(t) = m.poll_dial(t0) {
        issued += 1;
        if issued.is_multiple_of(3) {
            m.handle_dial_failure(t, Stage::Tls, t0);
        } else {
            let id = ConnId::from_random((issued as u32).to_be_bytes());
            m.handle_dial_success(t, id, issued, t0);
        }
        assert!(
            !m.backing_off(),
            "one failure among successes is not an outage"
        );
    }
    assert_eq!(
        m.status().idle,
        16,
        "the top-up replaced every failure at once"
    );
    assert_eq!(issued, 16 + issued / 3);
    assert!(m.poll_dial(t0).is_none(), "nothing beyond the capacity");
}
