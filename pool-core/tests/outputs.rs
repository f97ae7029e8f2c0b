//! One way out of the core: `poll_output` hands out every request in a fixed order and
//! ends with the next deadline; every deadline (dials, handshakes, the accept back-off)
//! is the core's.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use pool_core::{
    Admission, ClientConfig, ClientMachine, ConnId, GetFailure, Got, Output, SeededRandom,
    ServerConfig, ServerMachine, Stage,
};

const MS: fn(u64) -> Duration = Duration::from_millis;
const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn id(n: u8) -> ConnId {
    ConnId::from_random([n, 0, 0, 1])
}

/// Everything `poll_output` hands out until `Timeout`, and that deadline.
fn drain<C>(next: &mut impl FnMut() -> Output<C>) -> (Vec<Output<C>>, Option<Instant>) {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        match next() {
            Output::Timeout(at) => return (out, at),
            other => out.push(other),
        }
    }
    panic!("poll_output never reached Timeout");
}

fn client(capacity: usize, handshake: Duration, id_read: Duration) -> ClientMachine<u32> {
    let cfg = ClientConfig::builder()
        .capacity(capacity, capacity)
        .handshake_timeout(handshake)
        .id_timeout(id_read)
        .build()
        .expect("config");
    ClientMachine::new(cfg, SeededRandom::from_seed([3; 32]), Instant::now())
}

fn dials(out: Vec<Output<u32>>) -> Vec<pool_core::DialTicket> {
    out.into_iter()
        .map(|o| match o {
            Output::Dial(t) => t,
            other => panic!("expected only dials, got {other:?}"),
        })
        .collect()
}

#[test]
fn answers_come_before_dials_and_the_drain_ends_with_the_next_deadline() {
    let mut m = client(2, MS(500), MS(500));
    let t0 = Instant::now();
    m.handle_timeout(t0);
    let (out, at) = drain(&mut || m.poll_output(t0));
    let mut tickets = dials(out);
    assert_eq!(tickets.len(), 2);
    // The next deadline is the earliest of the refill and the dials' deadlines.
    assert_eq!(at, Some(m.refill_at().expect("refill").min(t0 + MS(500))));
    // A get for an id still in flight waits; the dial that brings it answers it, and
    // the answer comes out before the replacement dial.
    let Got::Wait(_) = m.get(id(1), t0, t0 + MS(100)) else {
        panic!("a get by id waits while dials are in flight");
    };
    let t = tickets.pop().expect("ticket");
    m.handle_dial_success(t, id(1), 1, t0);
    let (out, _) = drain(&mut || m.poll_output(t0));
    assert!(matches!(out.first(), Some(Output::Answer(a)) if a.result.is_ok()));
    assert!(matches!(out.get(1), Some(Output::Dial(_))), "{out:?}");
    assert_eq!(out.len(), 2);
}

#[test]
fn a_late_dial_is_aborted_once_and_still_counted_when_its_ticket_returns() {
    let mut m = client(1, MS(300), MS(200));
    let t0 = Instant::now();
    m.handle_timeout(t0);
    let (out, _) = drain(&mut || m.poll_output(t0));
    let t = dials(out).pop().expect("one dial");
    let serial = t.serial();
    // Connect and TLS took 100 ms; the id deadline starts then.
    m.handle_handshake_done(serial, t0 + MS(100));
    let (_, at) = drain(&mut || m.poll_output(t0 + MS(100)));
    assert!(at.is_some_and(|a| a <= t0 + MS(300)), "{at:?}");
    // 299 ms after the handshake: the id deadline (300 ms) has passed, the handshake
    // deadline would not have mattered.
    let late = t0 + MS(301);
    m.handle_timeout(late);
    let (out, _) = drain(&mut || m.poll_output(late));
    let aborts: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Abort(s) => Some(*s),
            _ => None,
        })
        .collect();
    assert_eq!(aborts, vec![serial], "{out:?}");
    // Firing again aborts nothing more.
    m.handle_timeout(late + MS(1000));
    let (out, _) = drain(&mut || m.poll_output(late + MS(1000)));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Abort(_))),
        "{out:?}"
    );
    // The ticket comes back as a failure and is counted then.
    let before = m.counters().id_errors;
    m.handle_dial_failure(t, Stage::Id, late);
    assert_eq!(m.counters().id_errors, before + 1);
}

#[test]
fn a_dial_that_returns_in_time_is_never_aborted() {
    let mut m = client(1, MS(300), MS(300));
    let t0 = Instant::now();
    m.handle_timeout(t0);
    let (out, _) = drain(&mut || m.poll_output(t0));
    let t = dials(out).pop().expect("one dial");
    m.handle_dial_success(t, id(7), 7, t0 + MS(10));
    let later = t0 + MS(5_000);
    m.handle_timeout(later);
    let (out, _) = drain(&mut || m.poll_output(later));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Abort(_))),
        "{out:?}"
    );
}

#[test]
fn close_disarms_every_deadline() {
    let mut m = client(2, MS(300), MS(300));
    let t0 = Instant::now();
    m.handle_timeout(t0);
    let (out, _) = drain(&mut || m.poll_output(t0));
    assert_eq!(dials(out).len(), 2);
    m.close();
    let late = t0 + MS(10_000);
    m.handle_timeout(late);
    let (out, at) = drain(&mut || m.poll_output(late));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Abort(_))),
        "{out:?}"
    );
    assert_eq!(at, None, "a closed machine arms nothing");
    let Got::Failed(GetFailure::Closed) = m.get_any(late, late) else {
        panic!("closed");
    };
}

fn server(timeout: Duration) -> ServerMachine<u32> {
    let cfg = ServerConfig::builder()
        .handshake_timeout(timeout)
        .build()
        .expect("config");
    ServerMachine::new(cfg, SeededRandom::from_seed([4; 32]), Instant::now())
}

#[test]
fn a_late_handshake_is_aborted_by_the_server_machine() {
    let mut m = server(MS(200));
    let t0 = Instant::now();
    let Admission::Admit(t) = m.handle_accept(t0, LOCAL, true) else {
        panic!("admitted");
    };
    let (out, at) = drain(&mut || m.poll_output(t0));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(at, Some(t.deadline()));
    m.handle_timeout(t.deadline());
    let (out, _) = drain(&mut || m.poll_output(t.deadline()));
    assert!(
        matches!(out.as_slice(), [Output::Abort(s)] if *s == t.serial()),
        "{out:?}"
    );
    // Its slot is held until the ticket comes back, and the failure counts then.
    assert_eq!(m.status().in_flight, 1);
    m.handle_failure(t, Stage::Tls, t0 + MS(300));
    assert_eq!(m.status().in_flight, 0);
    assert_eq!(m.counters().handshake_failures, 1);
}

#[test]
fn accept_errors_back_off_from_5_ms_to_1_s_and_reset() {
    let mut m = server(MS(200));
    let t0 = Instant::now();
    let waits: Vec<Duration> = (0..12).map(|_| m.handle_accept_error(t0) - t0).collect();
    assert_eq!(waits[0], MS(5));
    assert_eq!(waits[1], MS(10));
    assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
    assert_eq!(*waits.last().expect("waits"), MS(1000));
    let Admission::Admit(t) = m.handle_accept(t0, LOCAL, true) else {
        panic!("admitted");
    };
    assert_eq!(m.handle_accept_error(t0) - t0, MS(5), "an accept resets it");
    m.handle_failure(t, Stage::Tls, t0);
}

#[test]
fn flush_and_close_come_out_as_closes() {
    let mut m = server(MS(200));
    let t0 = Instant::now();
    for v in 0..3 {
        let Admission::Admit(mut t) = m.handle_accept(t0, LOCAL, true) else {
            panic!("admitted");
        };
        m.assign_id(&mut t);
        m.handle_ready(t, v, t0);
    }
    let settled = t0 + MS(100); // past the settle time, before the first sweep
    m.handle_timeout(settled);
    let _ = drain(&mut || m.poll_output(settled));
    assert_eq!(m.flush(), 3);
    let (out, _) = drain(&mut || m.poll_output(settled));
    let mut closed: Vec<u32> = out
        .into_iter()
        .map(|o| match o {
            Output::Close(_, v) => v,
            other => panic!("only closes, got {other:?}"),
        })
        .collect();
    closed.sort_unstable();
    assert_eq!(closed, vec![0, 1, 2]);
    m.close();
    let (out, at) = drain(&mut || m.poll_output(settled));
    assert!(out.is_empty() && at.is_none(), "{out:?} {at:?}");
}

#[test]
fn a_handshake_done_after_the_abort_never_aborts_again() {
    let mut m = client(1, MS(100), MS(100));
    let t0 = Instant::now();
    m.handle_timeout(t0);
    let (out, _) = drain(&mut || m.poll_output(t0));
    let t = dials(out).pop().expect("one dial");
    let late = t0 + MS(150);
    m.handle_timeout(late);
    let (out, _) = drain(&mut || m.poll_output(late));
    assert_eq!(
        out.iter().filter(|o| matches!(o, Output::Abort(_))).count(),
        1
    );
    // The dial's task reports its handshake just after the abort went out.
    m.handle_handshake_done(t.serial(), late);
    let later = late + MS(1_000);
    m.handle_timeout(later);
    let (out, _) = drain(&mut || m.poll_output(later));
    assert!(
        !out.iter().any(|o| matches!(o, Output::Abort(_))),
        "{out:?}"
    );
    m.handle_dial_failure(t, Stage::Tls, later);
}
