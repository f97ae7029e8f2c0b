//! The plain-threads adapter of pool-core's driver protocol ([`pool_core::driver`]).
//!
//! The protocol (lock, input, drain, perform outside the lock, probe, register a
//! waiting get, shut down, the timer loop) is pool-core's [`Driver`], the same code
//! pool-tokio and the simulator run. What is left here is what threads do differently:
//! a channel of dial tickets to the workers, a blocking reply channel per waiting get.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pool_core::driver::{Alarm, Driver, Header, Platform, Task};
use pool_core::Liveness;
use pool_core::{ClientMachine, ConnId, DialTicket, Stage};

use crate::conn::ThreadConn;
use crate::dial::Dialing;

type Delivery = pool_core::driver::Delivery<ThreadConn>;

pub(crate) struct Inner {
    pub(crate) driver: Driver<ClientMachine<ThreadConn>, Threads>,
}

/// The plain-threads [`Platform`].
pub(crate) struct Threads {
    /// What the timer thread sleeps on.
    pub(crate) alarm: Alarm,
    /// Tickets to the dial workers; `None` once closed, which ends the workers.
    pub(crate) dials: Mutex<Option<Sender<DialTicket>>>,
    pub(crate) stopping: AtomicBool,
    pub(crate) dialing: Dialing,
    /// The held connections watched for their peer's hang-up (Linux; `None`: the
    /// sweep finds dead peers).
    #[cfg(target_os = "linux")]
    pub(crate) hang_ups: Option<pool_net::HangUps<ConnId>>,
}

impl Platform for Threads {
    type Conn = ThreadConn;
    type Reply = SyncSender<Delivery>;
    type Wait = Receiver<Delivery>;
    type Abort = ();
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn peek(&self, conn: &mut ThreadConn) -> Liveness {
        conn.liveness()
    }
    /// Watched for hang-ups (and bytes, in in-band mode).
    fn watch(&self, id: ConnId, conn: &mut ThreadConn) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(h) = &self.hang_ups {
            h.watch(id, conn.tcp());
        }
        let _ = (id, conn);
        false
    }
    fn buffered(&self, conn: &mut ThreadConn) -> bool {
        conn.has_unread()
    }
    fn unwatch(&self, conn: &ThreadConn) {
        #[cfg(target_os = "linux")]
        if let Some(h) = &self.hang_ups {
            h.unwatch(conn.tcp());
        }
        #[cfg(not(target_os = "linux"))]
        let _ = conn;
    }
    fn channel(&self) -> (SyncSender<Delivery>, Receiver<Delivery>) {
        mpsc::sync_channel(1)
    }
    fn wake(&self) {
        self.alarm.ring();
    }
    /// A dial goes to the workers (dropped once the pool is closed: the machine is
    /// closed too). An abort needs nothing: a worker's blocking calls carry the same
    /// deadlines as socket timeouts, so the dial is ending by itself.
    fn start(&self, task: Task) {
        if let Task::Dial(ticket) = task {
            if let Some(tx) = lock(&self.dials).as_ref() {
                let _ = tx.send(ticket);
            }
        }
    }
}

/// Reads the start header before `by`, with the socket's read timeout set meanwhile
/// (and off again after); nothing when it did not come whole.
pub(crate) fn read_start(conn: &mut ThreadConn, by: Instant) -> Header {
    use std::io::Read;
    let left = by.saturating_duration_since(Instant::now());
    conn.tcp()
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .ok()?;
    let mut header = [0u8; pool_core::START.len()];
    conn.read_exact(&mut header).ok()?;
    conn.tcp().set_read_timeout(None).ok()?;
    Some(header)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    /// A dial worker: takes tickets until the channel closes, dials, reports each once.
    pub(crate) fn work(&self, tickets: &Mutex<Receiver<DialTicket>>) {
        let p = self.driver.platform();
        loop {
            let Ok(mut ticket) = lock(tickets).recv() else {
                return;
            };
            let res = if p.stopping.load(Ordering::Acquire) {
                Err(Stage::Connect)
            } else {
                let handshaken = |t: &mut DialTicket| self.driver.handshake_done(t);
                let res = p.dialing.establish(&mut ticket, handshaken);
                res.map(|conn| (conn.id, conn)).map_err(|(stage, _)| stage)
            };
            let _ = self.driver.dialed(ticket, res);
        }
    }

    /// The hang-up thread (Linux): reports each peer's hang-up on a held connection
    /// (and, in in-band mode, its first bytes) to the core, until the pool stops
    /// (checked every 200 ms).
    pub(crate) fn watch_hang_ups(&self) {
        #[cfg(target_os = "linux")]
        {
            let p = self.driver.platform();
            let Some(h) = &p.hang_ups else { return };
            while !p.stopping.load(Ordering::Acquire) {
                let Ok(ids) = h.wait(Some(Duration::from_millis(200))) else {
                    return; // the sweep carries on alone
                };
                self.driver.idle_ready_all(ids);
            }
        }
    }

    /// Closes: waiting gets are answered `Closed`, the timer thread is woken to end,
    /// the ticket channel is closed (which ends the workers once their dials return).
    pub(crate) fn shut(&self) {
        let p = self.driver.platform();
        p.stopping.store(true, Ordering::Release);
        self.driver.shutdown();
        drop(lock(&p.dials).take());
    }
}
