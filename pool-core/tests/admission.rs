//! Admission under pressure: eviction of the oldest handshake, per-source quotas, and
//! a bounded per-source table.

use pool_core::testing::SplitOutputs as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use pool_core::{
    Admission, AdmissionLimits, HandshakeTicket, Refusal, SeededRandom, ServerConfig,
    ServerMachine, Stage,
};
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn machine(cfg: ServerConfig) -> (ServerMachine<u64>, Instant) {
    let now = Instant::now();
    (
        ServerMachine::new(cfg, SeededRandom::from_seed([7; 32]), now),
        now,
    )
}

fn admit(m: &mut ServerMachine<u64>, now: Instant, peer: &str) -> HandshakeTicket {
    match m.handle_accept(now, ip(peer), true) {
        Admission::Admit(t) => t,
        Admission::Refuse(r) => panic!("refused: {r:?}"),
    }
}

fn ready(m: &mut ServerMachine<u64>, mut t: HandshakeTicket, conn: u64, now: Instant) {
    let _ = m.assign_id(&mut t);
    m.handle_ready(t, conn, now);
}

fn cfg() -> pool_core::ServerConfigBuilder {
    ServerConfig::builder().settle(Duration::ZERO)
}

fn limits(max_handshakes: usize, pending: Option<usize>, idle: Option<usize>) -> AdmissionLimits {
    AdmissionLimits {
        max_handshakes,
        pending_per_source: pending,
        idle_per_source: idle,
        ..AdmissionLimits::default()
    }
}

#[test]
fn a_full_table_evicts_the_oldest_and_ignores_its_late_report() {
    let (mut m, now) = machine(cfg().admission(limits(3, Some(64), None)).build().unwrap());
    let t1 = admit(&mut m, now, "10.0.0.1");
    let t2 = admit(&mut m, now, "10.0.0.2");
    let t3 = admit(&mut m, now, "10.0.0.3");
    assert_eq!(m.poll_abort(), None);
    let t4 = admit(&mut m, now, "10.0.0.4");
    assert_eq!(m.poll_abort(), Some(t1.serial()), "the oldest is evicted");
    assert_eq!(m.poll_abort(), None);
    assert_eq!(m.in_flight(), 3, "its slot is free at once");
    assert_eq!(m.counters().evicted_handshakes, 1);
    assert_eq!(m.counters().refused_busy, 0);
    // The evicted handshake finishes anyway: ignored, its connection closed.
    ready(&mut m, t1, 1, now);
    assert_eq!(m.poll_close().map(|(_, c)| c), Some(1));
    assert_eq!((m.idle(), m.in_flight()), (0, 3));
    assert_eq!(m.counters().created, 0);
    // The next eviction takes the next oldest; its failure is not counted twice.
    let t5 = admit(&mut m, now, "10.0.0.5");
    assert_eq!(m.poll_abort(), Some(t2.serial()));
    m.handle_failure(t2, Stage::Tls, now);
    assert_eq!(m.counters().handshake_failures, 0);
    assert_eq!(m.counters().evicted_handshakes, 2);
    for (t, c) in [(t3, 3), (t4, 4), (t5, 5)] {
        ready(&mut m, t, c, now);
    }
    assert_eq!((m.idle(), m.in_flight()), (3, 0));
    assert_eq!(
        m.sources(),
        0,
        "nothing pending, no idle quota: an empty table"
    );
}

#[test]
fn a_full_table_evicts_the_oldest_silent_handshake_before_one_that_spoke() {
    let (mut m, now) = machine(cfg().admission(limits(3, None, None)).build().unwrap());
    let client = admit(&mut m, now, "10.0.0.1");
    m.handle_spoke(&client); // its ClientHello came
    let s1 = admit(&mut m, now, "10.0.0.2");
    let _s2 = admit(&mut m, now, "10.0.0.3");
    let _s3 = admit(&mut m, now, "10.0.0.4");
    assert_eq!(
        m.poll_abort(),
        Some(s1.serial()),
        "the oldest silent one, not the client"
    );
    let _s4 = admit(&mut m, now, "10.0.0.5");
    assert_ne!(m.poll_abort(), Some(client.serial()));
    // Every one spoke: the oldest of all again.
    let (mut m2, now2) = machine(cfg().admission(limits(2, None, None)).build().unwrap());
    let a = admit(&mut m2, now2, "10.0.0.1");
    let b = admit(&mut m2, now2, "10.0.0.2");
    m2.handle_spoke(&a);
    m2.handle_spoke(&b);
    let _c = admit(&mut m2, now2, "10.0.0.3");
    assert_eq!(m2.poll_abort(), Some(a.serial()), "none silent: the oldest");
}

#[test]
fn silent_handshakes_never_make_the_pool_full() {
    // Capacity 2 and eight silent strangers: the client's connections still get in,
    // and only a connection past the capacity is refused, at accept or when ready.
    let (mut m, now) = machine(
        cfg()
            .max_capacity(2)
            .admission(limits(16, Some(64), None))
            .build()
            .unwrap(),
    );
    let strangers: Vec<_> = (1..=8)
        .map(|n| admit(&mut m, now, &format!("10.0.{n}.1")))
        .collect();
    let a = admit(&mut m, now, "192.0.2.1");
    let b = admit(&mut m, now, "192.0.2.1");
    let c = admit(&mut m, now, "192.0.2.1");
    ready(&mut m, a, 100, now);
    ready(&mut m, b, 101, now);
    assert_eq!(m.idle(), 2);
    assert_eq!(m.counters().refused_full, 0);
    // Full now: the third finishes into a full pool and is closed, counted.
    ready(&mut m, c, 102, now);
    assert_eq!(m.poll_close().map(|(_, c)| c), Some(102));
    assert_eq!(m.counters().refused_full, 1);
    assert_eq!(m.idle(), 2);
    // And a new connection is refused at once while the kept ones fill the capacity.
    assert!(matches!(
        m.handle_accept(now, ip("192.0.2.1"), true),
        Admission::Refuse(Refusal::Full)
    ));
    assert_eq!(m.in_flight(), strangers.len());
}

#[test]
fn a_hang_up_while_settling_or_idle_takes_the_connection_out() {
    let (mut m, now) = machine(
        ServerConfig::builder()
            .settle(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let mut t = admit(&mut m, now, "10.0.0.1");
    let id = m.assign_id(&mut t);
    m.handle_ready(t, 1, now);
    assert_eq!(m.status().idle, 1, "settling counts as idle");
    assert!(m.handle_idle_closed(id, now));
    assert_eq!(m.poll_close().map(|(_, c)| c), Some(1));
    assert_eq!((m.status().idle, m.counters().evicted_dead), (0, 1));
    assert!(!m.handle_idle_closed(id, now), "once");
    // Settled, then hung up.
    let mut t = admit(&mut m, now, "10.0.0.1");
    let id = m.assign_id(&mut t);
    m.handle_ready(t, 2, now);
    m.handle_timeout(now + Duration::from_secs(2));
    assert_eq!(m.idle(), 1);
    assert!(m.handle_idle_closed(id, now));
    assert_eq!(m.poll_close().map(|(_, c)| c), Some(2));
    assert_eq!(m.counters().evicted_dead, 2);
}

#[test]
fn a_source_over_its_quota_evicts_its_own_oldest() {
    let c = cfg().admission(limits(10, Some(2), None));
    let (mut m, now) = machine(c.build().unwrap());
    let legit = admit(&mut m, now, "10.0.0.1");
    let a1 = admit(&mut m, now, "10.0.0.9");
    let a2 = admit(&mut m, now, "10.0.0.9");
    let _a3 = admit(&mut m, now, "10.0.0.9");
    assert_eq!(
        m.poll_abort(),
        Some(a1.serial()),
        "not the older legitimate one"
    );
    assert_eq!(m.pending_from(ip("10.0.0.9")), 2);
    assert_eq!(m.pending_from(ip("10.0.0.1")), 1);
    let _a4 = admit(&mut m, now, "10.0.0.9");
    assert_eq!(m.poll_abort(), Some(a2.serial()));
    ready(&mut m, legit, 1, now);
    assert_eq!(m.idle(), 1);
    m.handle_failure(a1, Stage::Tls, now);
    m.handle_failure(a2, Stage::Tls, now);
    assert_eq!(m.counters().handshake_failures, 0);
    assert_eq!(m.counters().evicted_handshakes, 2);
    assert_eq!(m.in_flight(), 2);
}

#[test]
fn sources_group_by_prefix() {
    let c = cfg().admission(AdmissionLimits {
        source_prefixes: (24, 48),
        ..limits(10, Some(1), None)
    });
    let (mut m, now) = machine(c.build().unwrap());
    let a = admit(&mut m, now, "192.0.2.1");
    let _b = admit(&mut m, now, "192.0.2.200");
    assert_eq!(m.poll_abort(), Some(a.serial()), "one /24, one source");
    let _c = admit(&mut m, now, "192.0.3.1");
    assert_eq!(m.poll_abort(), None, "another /24");
    let v6 = admit(&mut m, now, "2001:db8:1:2::1");
    let _w = admit(&mut m, now, "2001:db8:1:3::1");
    assert_eq!(m.poll_abort(), Some(v6.serial()), "one /48");
    let _mapped = admit(&mut m, now, "::ffff:192.0.3.7");
    assert!(m.poll_abort().is_some(), "mapped IPv4 groups as IPv4");
}

#[test]
fn the_idle_quota_refuses_and_frees_as_connections_leave() {
    let c = cfg().admission(limits(10, Some(64), Some(2)));
    let (mut m, now) = machine(c.build().unwrap());
    for n in 0..2 {
        let t = admit(&mut m, now, "10.0.0.9");
        ready(&mut m, t, n, now);
    }
    assert_eq!(m.idle_from(ip("10.0.0.9")), 2);
    assert_eq!(
        m.handle_accept(now, ip("10.0.0.9"), true),
        Admission::Refuse(Refusal::Quota)
    );
    assert_eq!(m.counters().refused_quota, 1);
    let t = admit(&mut m, now, "10.0.0.1");
    ready(&mut m, t, 10, now);
    // A get takes the oldest, from 10.0.0.9: its source has room again.
    let got = m.get(now, now + Duration::from_secs(1));
    let pool_core::Got::Check(check) = got else {
        panic!("a candidate")
    };
    let got = m.handle_check(check, true, now);
    assert!(matches!(got, pool_core::Got::Ready(_, 0)));
    assert_eq!(m.idle_from(ip("10.0.0.9")), 1);
    let _t = admit(&mut m, now, "10.0.0.9");
    // Entries are removed at zero: a flush leaves only the pending source.
    m.flush();
    assert_eq!(m.sources(), 1);
    assert_eq!(m.idle_from(ip("10.0.0.1")), 0);
}

#[test]
fn the_defaults_against_strangers() {
    let c = ServerConfig::default();
    assert_eq!(c.admission(), AdmissionLimits::default());
    assert_eq!(c.admission().pending_per_source, Some(64));
    assert_eq!(c.admission().idle_per_source, None);
    assert_eq!(c.admission().source_prefixes, (32, 64));
    assert_eq!(c.max_idle_age(), Some(Duration::from_secs(600)));
    let prefixes = |v4, v6| AdmissionLimits {
        source_prefixes: (v4, v6),
        ..AdmissionLimits::default()
    };
    assert!(cfg().admission(prefixes(33, 64)).build().is_err());
    assert!(cfg()
        .admission(limits(256, Some(64), Some(0)))
        .build()
        .is_err());
    let fixed = cfg()
        .admission(AdmissionLimits {
            pending_per_source: Some(0),
            ..prefixes(40, 200)
        })
        .build_go_normalized();
    assert_eq!(fixed.admission().source_prefixes, (32, 128));
    assert_eq!(fixed.admission().pending_per_source, Some(64));
}

#[derive(Clone, Debug)]
enum Op {
    Accept(u8),
    Ready(usize),
    Fail(usize),
    Get,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u8..6).prop_map(Op::Accept),
        2 => any::<usize>().prop_map(Op::Ready),
        2 => any::<usize>().prop_map(Op::Fail),
        1 => Just(Op::Get),
    ]
}

proptest! {
    // A test file alone in `tests/` has no `lib.rs` or `main.rs` above it, where
    // proptest's default looks for the root of the `proptest-regressions` directory:
    // name the file beside the model test's seeds, where it would be in a test directory.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/proptest-regressions/admission.txt",
            ),
        )),
        ..ProptestConfig::default()
    })]

    /// Whatever the arrivals, the slots, the per-source quotas and the table stay
    /// bounded, every eviction is announced once, and every ticket comes back once.
    #[test]
    fn admission_stays_bounded(
        hs in 1usize..8,
        pend in proptest::option::of(1usize..4),
        idle in proptest::option::of(1usize..4),
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let c = cfg().max_capacity(12).admission(limits(hs, pend, idle));
        let (mut m, now) = machine(c.build().unwrap());
        let mut held: Vec<(HandshakeTicket, bool)> = Vec::new();
        let mut aborted = 0u64;
        let mut next = 0u64;
        for op in ops {
            match op {
                Op::Accept(p) => {
                    let peer = IpAddr::from([10, 0, 0, p]);
                    if let Admission::Admit(t) = m.handle_accept(now, peer, true) {
                        held.push((t, false));
                    }
                }
                Op::Ready(i) if !held.is_empty() => {
                    let (t, _) = held.swap_remove(i % held.len());
                    next += 1;
                    ready(&mut m, t, next, now);
                }
                Op::Fail(i) if !held.is_empty() => {
                    let (t, _) = held.swap_remove(i % held.len());
                    m.handle_failure(t, Stage::Tls, now);
                }
                Op::Ready(_) | Op::Fail(_) => {}
                Op::Get => {
                    if let pool_core::Got::Check(c) = m.get(now, now) {
                        let _ = m.handle_check(c, true, now);
                    }
                }
            }
            while let Some(serial) = m.poll_abort() {
                let t = held.iter_mut().find(|(t, _)| t.serial() == serial);
                let t = t.expect("an abort names a handshake under way");
                prop_assert!(!t.1, "aborted twice");
                t.1 = true;
                aborted += 1;
            }
            while m.poll_close().is_some() {}
            let live = held.iter().filter(|(_, a)| !a).count();
            prop_assert_eq!(m.in_flight(), live);
            prop_assert!(live <= hs);
            prop_assert_eq!(m.counters().evicted_handshakes, aborted);
            for p in 0..6u8 {
                let peer = IpAddr::from([10, 0, 0, p]);
                if let Some(q) = pend {
                    prop_assert!(m.pending_from(peer) <= q);
                }
                if let Some(q) = idle {
                    prop_assert!(m.idle_from(peer) <= q);
                }
            }
            prop_assert!(m.sources() <= 6);
        }
        for (t, _) in held {
            m.handle_failure(t, Stage::Tls, now);
        }
        m.flush();
        prop_assert_eq!(m.in_flight(), 0);
        prop_assert_eq!(m.sources(), 0, "the table empties");
    }
}
