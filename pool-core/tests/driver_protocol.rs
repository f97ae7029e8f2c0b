//! The driver protocol's own steps around the machine: no platform call under the lock
//! (asserted in debug builds), a connection watched before it lands and unwatched when
//! handed out, a readiness report that races ahead of its connection's landing, a
//! report that comes while the connection is out for its peek, the single-mode id
//! drawn by the core, the start header checked by the core.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use pool_core::driver::{Delivery, Driver, Platform, Readied, Reply, Step, Task};
use pool_core::Liveness;
use pool_core::{ClientConfig, ClientMachine, ConnId, DialTicket, SeededRandom, Want};

type Pool = Driver<ClientMachine<u64>, Fake>;

/// Connections are numbers; what a peek finds is the test's to set. Every watch and
/// unwatch is written down.
#[derive(Default)]
struct Fake {
    peeks: Mutex<HashMap<u64, Liveness>>,
    dials: Mutex<Vec<DialTicket>>,
    watched: Mutex<Vec<ConnId>>,
    unwatched: Mutex<Vec<u64>>,
    /// Connections with bytes already taken off their socket.
    buffered: Mutex<Vec<u64>>,
    /// A report for this id made from inside the next peek (as a watch thread would,
    /// while the connection is out for it).
    report_during_peek: Mutex<Option<(ConnId, Weak<Pool>)>>,
}

struct Tx(mpsc::Sender<Delivery<u64>>);

impl Reply<u64> for Tx {
    fn send(self, d: Delivery<u64>) -> Result<(), Delivery<u64>> {
        self.0.send(d).map_err(|e| e.0)
    }
}

impl Platform for Fake {
    type Conn = u64;
    type Reply = Tx;
    type Wait = mpsc::Receiver<Delivery<u64>>;
    type Abort = ();
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn alive(&self, conn: &mut u64) -> bool {
        self.peek(conn).is_alive()
    }
    fn peek(&self, conn: &mut u64) -> Liveness {
        let report = self.report_during_peek.lock().unwrap().take();
        if let Some((id, pool)) = report {
            let pool = pool.upgrade().expect("pool");
            assert_eq!(pool.idle_ready(id), Readied::NotHeld, "out for its peek");
        }
        let peeks = self.peeks.lock().unwrap();
        peeks.get(conn).copied().unwrap_or(Liveness::Idle)
    }
    fn watch(&self, id: ConnId, _conn: &mut u64) -> bool {
        self.watched.lock().unwrap().push(id);
        false
    }
    fn unwatch(&self, conn: &u64) {
        self.unwatched.lock().unwrap().push(*conn);
    }
    fn buffered(&self, conn: &mut u64) -> bool {
        self.buffered.lock().unwrap().contains(conn)
    }
    fn channel(&self) -> (Tx, Self::Wait) {
        let (tx, rx) = mpsc::channel();
        (Tx(tx), rx)
    }
    fn wake(&self) {}
    fn start(&self, task: Task) {
        if let Task::Dial(t) = task {
            self.dials.lock().unwrap().push(t);
        }
    }
}

fn id(n: u64) -> ConnId {
    ConnId::from_random((n as u32).to_be_bytes())
}

/// A client driver whose first round asked for `n` dials, none landed yet.
fn dialing(n: usize, in_band: bool, single: bool) -> (Arc<Pool>, Vec<DialTicket>) {
    let cfg = ClientConfig::builder()
        .capacity(n, n)
        .watch(if in_band {
            pool_core::IdleWatch::Starts
        } else {
            pool_core::IdleWatch::HangUps
        })
        .mode(if single {
            pool_core::Mode::Single
        } else {
            pool_core::Mode::Multi
        })
        .build()
        .expect("valid");
    let m = ClientMachine::new(cfg, SeededRandom::from_seed([5; 32]), Instant::now());
    let d = Arc::new(Driver::new(m, Fake::default()));
    let _ = d.turn();
    let tickets = std::mem::take(&mut *d.platform().dials.lock().unwrap());
    assert_eq!(tickets.len(), n, "the first round dials the capacity");
    (d, tickets)
}

fn set(d: &Pool, conn: u64, peek: Liveness) {
    d.platform().peeks.lock().unwrap().insert(conn, peek);
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
#[cfg(debug_assertions)]
#[should_panic(expected = "a Platform call under the driver lock")]
fn a_platform_call_under_the_driver_lock_panics() {
    let (d, tickets) = dialing(1, false, false);
    // A driver that performs a platform call in its input closure, under the lock (as
    // a watch made while landing a connection once was).
    let t = tickets.into_iter().next().expect("ticket");
    d.input(|m, now| {
        d.platform().wake();
        m.handle_dial_success(t, id(1), 1, now);
    });
}

#[test]
fn a_landing_is_watched_first_and_a_get_unwatches_what_it_hands_out() {
    let (d, tickets) = dialing(2, false, false);
    for (i, t) in tickets.into_iter().enumerate() {
        let conn = i as u64 + 1;
        let report = d.dialed(t, Ok((id(conn), conn)));
        assert!(!report.failed && !report.backing_off);
    }
    assert_eq!(*d.platform().watched.lock().unwrap(), vec![id(1), id(2)]);
    match d.get(Want::Id(id(2)), SECOND) {
        Step::Ready(got, 2) => assert_eq!(got, id(2)),
        other => panic!("{other:?}"),
    }
    assert_eq!(*d.platform().unwatched.lock().unwrap(), vec![2]);
}

#[test]
fn a_report_that_raced_ahead_of_the_landing_is_peeked_once_landed() {
    let (d, tickets) = dialing(1, true, false);
    let t = tickets.into_iter().next().expect("ticket");
    // The server's start header arrived and the watch fired before the pool held it.
    set(&d, 7, Liveness::Pending);
    assert_eq!(d.idle_ready(id(7)), Readied::NotHeld);
    let _ = d.dialed(t, Ok((id(7), 7)));
    match d.get(Want::Started, SECOND) {
        Step::Ready(got, 7) => assert_eq!(got, id(7)),
        other => panic!("the landing did not look at it: {other:?}"),
    }
    assert_eq!(d.read(|m| m.counters()).started, 1);
}

#[test]
fn a_landing_with_buffered_bytes_is_peeked_once_held_in_band_only() {
    for in_band in [true, false] {
        let (d, tickets) = dialing(1, in_band, false);
        let t = tickets.into_iter().next().expect("ticket");
        // The start came with the id's record: no readiness will ever report it.
        d.platform().buffered.lock().unwrap().push(7);
        set(&d, 7, Liveness::Pending);
        let _ = d.dialed(t, Ok((id(7), 7)));
        let started = d.read(|m| m.counters()).started;
        assert_eq!(started, u64::from(in_band), "in band: {in_band}");
    }
}

#[test]
fn a_report_while_out_for_its_peek_is_peeked_again() {
    let (d, tickets) = dialing(1, true, false);
    let t = tickets.into_iter().next().expect("ticket");
    let _ = d.dialed(t, Ok((id(3), 3)));
    // The first peek finds it quiet; while it is out, bytes arrive and are reported.
    *d.platform().report_during_peek.lock().unwrap() = Some((id(3), Arc::downgrade(&d)));
    set(&d, 3, Liveness::Idle);
    let (tx, rx) = mpsc::channel();
    let pool = d.clone();
    // The second peek (the report that came meanwhile) finds the bytes.
    let peeker = std::thread::spawn(move || tx.send(pool.idle_ready(id(3))));
    let readied = rx.recv_timeout(10 * SECOND).expect("idle_ready returned");
    peeker.join().expect("join").expect("send");
    // Quiet once, then quiet again: watched twice more (landing, two quiet peeks).
    assert_eq!(readied, Readied::Quiet);
    assert_eq!(
        *d.platform().watched.lock().unwrap(),
        vec![id(3), id(3), id(3)]
    );
    assert_eq!(d.read(|m| m.idle()), 1, "back in the pool");
}

#[test]
fn single_mode_ids_come_from_the_core_and_are_reserved() {
    let (d, tickets) = dialing(2, false, true);
    let mut ids = Vec::new();
    for (i, mut t) in tickets.into_iter().enumerate() {
        assert!(!t.reads_id(), "single mode reads no id");
        let drawn = d.input(|m, _| m.assign_id(&mut t));
        assert_eq!(
            d.input(|m, _| m.assign_id(&mut t)),
            drawn,
            "once per ticket"
        );
        assert_eq!(t.id(), Some(drawn));
        ids.push(drawn);
        let conn = i as u64 + 1;
        let _ = d.dialed(t, Ok((drawn, conn)));
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(*d.platform().watched.lock().unwrap(), ids);
    assert_eq!(d.read(|m| m.idle()), 2);
}

#[test]
fn the_core_checks_the_start_header() {
    let (d, _) = dialing(1, true, false);
    assert!(d.start_deadline() > Instant::now());
    assert_eq!(d.check_start(id(1), 1, &pool_core::START), Some(1));
    assert_eq!(d.check_start(id(2), 2, b"NPS2"), None);
    assert_eq!(d.check_start(id(3), 3, &[]), None);
    assert_eq!(d.read(|m| m.counters()).starts_dropped, 2);
}
