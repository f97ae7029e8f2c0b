//! In-band activation through the driver protocol: bytes on an idle connection mean a
//! session the server started (in-band mode), and an accept (`Want::Started`) takes
//! it at once or waits for it; outside in-band mode the same bytes stay for a get by
//! id. A fake platform stands in for the sockets: each connection's peek is set by the
//! test.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pool_core::driver::{Delivery, Driver, Platform, Readied, Reply, Step, Task};
use pool_core::Liveness;
use pool_core::{ClientConfig, ClientMachine, ConnId, DialTicket, SeededRandom, Want};

/// Connections are numbers; what a peek finds is the test's to set.
#[derive(Default)]
struct Fake {
    peeks: Mutex<HashMap<u64, Liveness>>,
    dials: Mutex<Vec<DialTicket>>,
    rewatched: Mutex<Vec<ConnId>>,
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
        let peeks = self.peeks.lock().unwrap();
        peeks.get(conn).copied().unwrap_or(Liveness::Idle)
    }
    fn watch(&self, id: ConnId, _conn: &mut u64) -> bool {
        self.rewatched.lock().unwrap().push(id);
        false
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

/// A client driver holding connections `1..=n` idle, under ids `id(1)..`.
fn filled(n: usize, in_band: bool) -> Driver<ClientMachine<u64>, Fake> {
    let cfg = ClientConfig::builder()
        .capacity(n, n)
        .watch(if in_band {
            pool_core::IdleWatch::Starts
        } else {
            pool_core::IdleWatch::HangUps
        })
        .build()
        .expect("valid");
    let m = ClientMachine::new(cfg, SeededRandom::from_seed([3; 32]), Instant::now());
    let d = Driver::new(m, Fake::default());
    let _ = d.turn();
    let tickets: Vec<DialTicket> = std::mem::take(&mut *d.platform().dials.lock().unwrap());
    assert_eq!(tickets.len(), n, "the first round dials the capacity");
    for (i, t) in tickets.into_iter().enumerate() {
        let conn = i as u64 + 1;
        d.input(|m, now| m.handle_dial_success(t, id(conn), conn, now));
    }
    assert_eq!(d.read(|m| m.idle()), n);
    d
}

fn set(d: &Driver<ClientMachine<u64>, Fake>, conn: u64, peek: Liveness) {
    d.platform().peeks.lock().unwrap().insert(conn, peek);
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn a_started_connection_goes_to_an_accept_at_once_or_to_the_one_waiting() {
    let d = filled(3, true);
    // Bytes on connection 2: the server started a session on it.
    set(&d, 2, Liveness::Pending);
    assert_eq!(d.idle_ready(id(2)), Readied::Started);
    assert_eq!(d.read(|m| (m.idle(), m.started_waiting())), (2, 1));
    let Step::Ready(got, conn) = d.get(Want::Started, SECOND) else {
        panic!("a started connection is accepted at once")
    };
    assert_eq!((got, conn), (id(2), 2));
    // Nothing started now: the accept waits, and never takes an idle one.
    let Step::Wait(w) = d.get(Want::Started, SECOND) else {
        panic!("an accept waits for a start")
    };
    assert_eq!(d.read(|m| m.idle()), 2);
    set(&d, 3, Liveness::Pending);
    assert_eq!(d.idle_ready(id(3)), Readied::Started);
    let delivery = w.wait.recv_timeout(SECOND).expect("answered");
    let Step::Ready(got, conn) = d.arrived(w.get, delivery) else {
        panic!("the waiting accept receives the started connection")
    };
    assert_eq!((got, conn), (id(3), 3));
    let k = d.read(|m| m.counters());
    assert_eq!(
        (k.started, k.served_at_once, k.served_after_wait),
        (2, 1, 1)
    );
}

#[test]
fn a_start_answered_to_an_accept_that_went_away_waits_for_the_next_one() {
    let d = filled(2, true);
    let Step::Wait(w) = d.get(Want::Started, SECOND) else {
        panic!("an accept waits for a start")
    };
    drop(w.wait); // the accept's caller went away before the start came
    set(&d, 1, Liveness::Pending);
    assert_eq!(d.idle_ready(id(1)), Readied::Started);
    assert_eq!(d.read(|m| (m.idle(), m.started_waiting())), (1, 1));
    let Step::Ready(got, _) = d.get(Want::Started, SECOND) else {
        panic!("the next accept takes it at once")
    };
    assert_eq!(got, id(1));
}

#[test]
fn quiet_dead_and_pending_outside_in_band_mode() {
    let d = filled(3, true);
    // A spurious report: still idle, watched again.
    assert_eq!(d.idle_ready(id(1)), Readied::Quiet);
    assert_eq!(*d.platform().rewatched.lock().unwrap(), vec![id(1)]);
    // A dead one leaves.
    set(&d, 2, Liveness::Closed);
    assert_eq!(d.idle_ready(id(2)), Readied::Closed);
    assert_eq!(d.read(|m| (m.idle(), m.counters().evicted_dead)), (2, 1));
    // Not held any more: nothing happens.
    assert_eq!(d.idle_ready(id(2)), Readied::NotHeld);

    // The Go protocol: bytes on an idle connection wait for the get by its id.
    let go = filled(2, false);
    set(&go, 1, Liveness::Pending);
    assert_eq!(go.idle_ready(id(1)), Readied::Pending);
    assert_eq!(go.read(|m| (m.idle(), m.counters().started)), (2, 0));
    let Step::Ready(got, _) = go.get(Want::Id(id(1)), SECOND) else {
        panic!("the get by id takes it")
    };
    assert_eq!(got, id(1));
}

#[test]
fn a_start_refills_like_a_get_and_close_answers_waiting_accepts() {
    let d = filled(2, true);
    set(&d, 1, Liveness::Pending);
    assert_eq!(d.idle_ready(id(1)), Readied::Started);
    // The next turn dials a replacement: the start took a connection out of the pool.
    let _ = d.turn();
    assert_eq!(d.platform().dials.lock().unwrap().len(), 1);
    let Step::Ready(got, _) = d.get(Want::Started, SECOND) else {
        panic!("the queued start is accepted at once")
    };
    assert_eq!(got, id(1));
    let Step::Wait(w) = d.get(Want::Started, SECOND) else {
        panic!("a second accept waits")
    };
    d.shutdown();
    let delivery = w.wait.recv_timeout(SECOND).expect("answered");
    assert!(matches!(
        d.arrived(w.get, delivery),
        Step::Failed(pool_core::GetFailure::Closed)
    ));
}
