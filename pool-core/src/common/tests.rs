//! Unit tests of the shared part: gets that meet the sweep, the maximum idle age, and
//! deadlines that must never panic.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use crate::testing::{NextDeadline as _, SplitDials as _, SplitOutputs as _};
use crate::{
    deadline_after, Admission, ClientConfig, ClientMachine, ConnId, GetFailure, Got, SeededRandom,
    ServerConfig, ServerMachine, Stage,
};

const MS: fn(u64) -> Duration = Duration::from_millis;
const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn random() -> SeededRandom {
    SeededRandom::from_seed([9; 32])
}

fn server(cfg: ServerConfig, now: Instant) -> ServerMachine<u64> {
    ServerMachine::new(cfg, random(), now)
}

/// Admits, names and lands one connection.
fn land(m: &mut ServerMachine<u64>, conn: u64, now: Instant) -> ConnId {
    let Admission::Admit(mut t) = m.handle_accept(now, LOCAL, true) else {
        panic!("admitted")
    };
    let id = m.assign_id(&mut t);
    m.handle_ready(t, conn, now);
    m.handle_timeout(now);
    id
}

fn quick(sweep: Duration, age: Option<Duration>) -> ServerConfig {
    ServerConfig::builder()
        .settle(Duration::ZERO)
        .sweep_interval(sweep)
        .max_idle_age(age)
        .build()
        .expect("valid")
}

#[test]
fn a_get_waits_for_the_batch_out_and_is_served_when_it_comes_back() {
    let t0 = Instant::now();
    let mut m = server(quick(MS(1_000), None), t0);
    let id = land(&mut m, 7, t0);
    let t1 = t0 + MS(1_000);
    m.handle_timeout(t1);
    let mut probe = m
        .poll_probe(t1)
        .expect("the sweep wants the idle connection");
    assert_eq!((probe.len(), m.idle()), (1, 0));
    assert!(m.poll_probe(t1).is_none(), "one batch out at a time");
    let Got::Wait(key) = m.get(t1, t1 + MS(500)) else {
        panic!("the only connection is out for probing: the get waits")
    };
    probe.check(|_| true);
    m.handle_probe(probe, t1 + MS(1));
    let answer = m.poll_answer().expect("served when the batch came back");
    assert_eq!(answer.key, key);
    assert_eq!(answer.result, Ok((id, 7)));
    assert_eq!(m.counters().served_after_wait, 1);
    assert_eq!(m.idle(), 0);
}

#[test]
fn a_get_by_id_waits_for_the_batch_out() {
    let t0 = Instant::now();
    let cfg = ClientConfig::builder()
        .capacity(1, 1)
        .sweep_interval(MS(1_000))
        .build()
        .expect("valid");
    let mut m: ClientMachine<u64> = ClientMachine::new(cfg, random(), t0);
    m.handle_timeout(t0);
    let t = m.poll_dial(t0).expect("a dial");
    let id = ConnId::from_random([1, 2, 3, 4]);
    m.handle_dial_success(t, id, 5, t0);
    let t1 = t0 + MS(1_000);
    m.handle_timeout(t1);
    let probe = m.poll_probe(t1).expect("a batch");
    assert_eq!(m.in_flight(), 0);
    // Nothing in flight, but the batch can bring the id back.
    let Got::Wait(key) = m.get(id, t1, t1 + MS(500)) else {
        panic!("a get by id waits while its connection is out for probing")
    };
    m.handle_probe(probe, t1);
    let answer = m.poll_answer().expect("answered");
    assert_eq!((answer.key, answer.result), (key, Ok((id, 5))));
}

#[test]
fn a_dead_connection_in_a_batch_is_closed_and_id_waiters_fail() {
    let t0 = Instant::now();
    let cfg = ClientConfig::builder()
        .capacity(1, 1)
        .build()
        .expect("valid");
    let mut m: ClientMachine<u64> = ClientMachine::new(cfg, random(), t0);
    m.handle_timeout(t0);
    let t = m.poll_dial(t0).expect("a dial");
    let id = ConnId::from_random([1, 1, 1, 1]);
    m.handle_dial_success(t, id, 5, t0);
    let t1 = t0 + MS(1_000);
    m.handle_timeout(t1);
    let mut probe = m.poll_probe(t1).expect("a batch");
    let Got::Wait(key) = m.get(id, t1, t1 + MS(500)) else {
        panic!("waits")
    };
    probe.check(|_| false);
    m.handle_probe(probe, t1);
    assert_eq!(m.poll_close(), Some((id, 5)));
    let answer = m.poll_answer().expect("answered");
    assert_eq!(
        (answer.key, answer.result),
        (key, Err(GetFailure::NotFound))
    );
    assert_eq!(m.counters().evicted_dead, 1);
}

#[test]
fn an_idle_connection_closed_by_its_peer_leaves_at_once_and_is_refilled() {
    let cfg = ClientConfig::builder()
        .capacity(1, 1)
        .build()
        .expect("valid");
    let now = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(cfg, random(), now);
    m.handle_timeout(now);
    let t = m.poll_dial(now).expect("a dial");
    let id = ConnId::from_random([2, 2, 2, 2]);
    m.handle_dial_success(t, id, 7, now);
    assert_eq!(m.idle(), 1);
    assert!(m.poll_dial(now).is_none(), "full");
    // Not idle: unknown ids are left alone.
    assert!(!m.handle_idle_closed(ConnId::from_random([3, 3, 3, 3]), now));
    assert!(m.handle_idle_closed(id, now));
    assert_eq!(m.idle(), 0);
    assert_eq!(m.poll_close(), Some((id, 7)));
    assert_eq!(m.counters().evicted_dead, 1);
    assert!(!m.handle_idle_closed(id, now), "once");
    m.handle_timeout(now);
    assert!(m.poll_dial(now).is_some(), "the client refills");
}

#[test]
fn max_idle_age_closes_at_the_sweep_and_at_a_get() {
    let t0 = Instant::now();
    let mut m = server(quick(MS(1_000), Some(MS(2_000))), t0);
    let old = land(&mut m, 1, t0);
    // First sweep: 1 s old, probed and kept.
    let t1 = t0 + MS(1_000);
    m.handle_timeout(t1);
    let probe = m.poll_probe(t1).expect("a batch");
    m.handle_probe(probe, t1);
    assert_eq!(m.idle(), 1);
    let young = land(&mut m, 2, t0 + MS(1_500));
    // Second sweep: the first is 3 s old (closed unprobed), the second 1.5 s (probed).
    let t3 = t0 + MS(3_000);
    m.handle_timeout(t3);
    let probe = m.poll_probe(t3).expect("a batch");
    assert_eq!(probe.len(), 1);
    assert_eq!(m.poll_close(), Some((old, 1)));
    assert_eq!(m.counters().evicted_aged, 1);
    m.handle_probe(probe, t3);
    // Before the next sweep, a get meets the second one 2.5 s old: closed, not handed.
    let t4 = t0 + MS(4_000);
    assert!(matches!(m.get(t4, t4), Got::Failed(GetFailure::Timeout)));
    assert_eq!(m.poll_close(), Some((young, 2)));
    assert_eq!(m.counters().evicted_aged, 2);
    assert_eq!(m.idle(), 0);
}

#[test]
fn deadline_after_max_does_not_panic_and_a_get_with_it_waits() {
    let now = Instant::now();
    let never = deadline_after(now, Duration::MAX);
    assert!(never > now);
    assert!(never >= deadline_after(now, Duration::from_secs(3600 * 24 * 365)));
    let mut m = server(quick(MS(1_000), None), now);
    let Got::Wait(key) = m.get(now, never) else {
        panic!("a get with a far deadline waits")
    };
    let wake = m.next_deadline().expect("the sweep");
    assert!(wake <= never);
    m.handle_timeout(wake);
    assert!(m.poll_answer().is_none(), "still waiting");
    let id = land(&mut m, 3, wake);
    let answer = m.poll_answer().expect("served");
    assert_eq!((answer.key, answer.result), (key, Ok((id, 3))));
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..10_000).prop_map(Duration::from_millis),
        Just(Duration::ZERO),
        Just(Duration::MAX),
        Just(Duration::MAX - MS(1)),
    ]
}

/// Drives a client through rounds, dials, gets, failures and sweeps at the times it
/// asks for, however far away.
fn drive_client(cfg: ClientConfig, wait: Duration) {
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(cfg, random(), t0);
    let mut now = t0;
    for step in 0..6u64 {
        m.handle_timeout(now);
        let mut n = 0;
        while let Some(t) = m.poll_dial(now) {
            let _ = (t.handshake_deadline(), t.id_deadline(now));
            n += 1;
            if n % 3 == 0 {
                m.handle_dial_failure(t, Stage::Tls, now);
            } else {
                let id = ConnId::from_random([step as u8, (n >> 8) as u8, n as u8, 1]);
                m.handle_dial_success(t, id, n, now);
            }
            if n > 64 {
                break;
            }
        }
        let _ = m.get_any(now, deadline_after(now, wait));
        if let Some(mut p) = m.poll_probe(now) {
            p.check(|c| *c % 2 == 0);
            m.handle_probe(p, now);
        }
        while m.poll_close().is_some() || m.poll_answer().is_some() {}
        // Every other step jumps to the next round, however far.
        let next = if step % 2 == 1 {
            m.refill_at()
        } else {
            m.next_deadline()
        };
        match next {
            Some(t) if t > now => now = t,
            _ => now = deadline_after(now, Duration::from_millis(1)),
        }
    }
    m.close();
}

fn drive_server(cfg: ServerConfig, wait: Duration) {
    let t0 = Instant::now();
    let mut m = server(cfg, t0);
    let mut now = t0;
    for n in 0..6u64 {
        m.handle_timeout(now);
        if let Admission::Admit(mut t) = m.handle_accept(now, LOCAL, true) {
            let _ = (t.deadline(), m.assign_id(&mut t));
            m.handle_ready(t, n, now);
        }
        let got = m.get(now, deadline_after(now, wait));
        if let Got::Check(c) = got {
            let _ = m.handle_check(c, n % 2 == 0, now);
        }
        if let Some(p) = m.poll_probe(now) {
            m.handle_probe(p, now);
        }
        while m.poll_close().is_some() || m.poll_answer().is_some() {}
        match m.next_deadline() {
            Some(t) if t > now => now = t,
            _ => now = deadline_after(now, Duration::from_millis(1)),
        }
    }
    m.close();
}

proptest! {
    #[test]
    fn deadline_after_never_panics(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
        let now = Instant::now();
        let d = Duration::new(secs, nanos);
        let t = deadline_after(now, d);
        prop_assert!(t >= now);
        if d <= Duration::from_secs(365 * 24 * 3600) {
            prop_assert_eq!(t, now + d);
        } else {
            prop_assert!(t > now);
        }
    }

    #[test]
    fn no_client_duration_makes_a_panic(
        iv in (duration(), duration()),
        hs in duration(),
        id in duration(),
        sweep in duration(),
        age in proptest::option::of(duration()),
        wait in duration(),
    ) {
        let b = ClientConfig::builder()
            .capacity(2, 8)
            .parallelism(4)
            .interval(iv.0, iv.1)
            .handshake_timeout(hs)
            .id_timeout(id)
            .sweep_interval(sweep)
            .max_idle_age(age);
        if let Ok(cfg) = b.clone().build() {
            drive_client(cfg, wait);
        }
        drive_client(b.build_go_normalized(), wait);
    }

    #[test]
    fn no_server_duration_makes_a_panic(
        hs in duration(),
        sweep in duration(),
        age in proptest::option::of(duration()),
        settle in duration(),
        wait in duration(),
    ) {
        let b = ServerConfig::builder()
            .max_capacity(4)
            .handshake_timeout(hs)
            .sweep_interval(sweep)
            .max_idle_age(age)
            .settle(settle);
        if let Ok(cfg) = b.clone().build() {
            drive_server(cfg, wait);
        }
        drive_server(b.build_go_normalized(), wait);
    }
}

#[test]
fn an_interval_near_the_maximum_duration_does_not_panic() {
    let cfg = ClientConfig::builder()
        .capacity(2, 2)
        .interval(Duration::MAX - MS(1), Duration::MAX)
        .build()
        .expect("valid");
    let t0 = Instant::now();
    let mut m: ClientMachine<u64> = ClientMachine::new(cfg, random(), t0);
    let mut now = t0;
    for round in 0..3u8 {
        m.handle_timeout(now);
        while let Some(t) = m.poll_dial(now) {
            let id = ConnId::from_random([round, m.in_flight() as u8, 0, 0]);
            m.handle_dial_success(t, id, 0, now);
        }
        // A full pool steps the interval up, past the largest duration.
        now = m.refill_at().expect("a round ahead");
    }
}

/// A burst of handshakes (a pool filling) grows the settling queue and the reserved ids
/// to the burst's size; once they have settled, that room is given back, so an idle
/// pool does not keep its fill's peak for life.
#[test]
fn a_settled_burst_leaves_no_peak_sized_queue_behind() {
    let t0 = Instant::now();
    let cfg = ServerConfig::builder()
        .settle(MS(10))
        .build()
        .expect("valid");
    let mut m = server(cfg, t0);
    for conn in 0..600 {
        let Admission::Admit(mut t) = m.handle_accept(t0, LOCAL, true) else {
            panic!("admitted")
        };
        m.assign_id(&mut t);
        m.handle_ready(t, conn, t0);
    }
    let (queue, ids) = m.room();
    assert!(
        queue >= 600 && ids >= 600,
        "the burst's room: {queue}, {ids}"
    );
    m.handle_timeout(t0 + MS(10));
    assert_eq!(m.idle(), 600);
    let (queue, ids) = m.room();
    assert!(queue <= 128 && ids <= 128, "room kept: {queue}, {ids}");
}
