//! The timer loop of a runtime that blocks a thread: a turn of the protocol, then sleep
//! until the deadline it answered or until woken, with a wake that is never lost.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Driver, Platform, Role, Sleep};

/// What a blocking timer loop sleeps on ([`Driver::run_blocking`]): a condvar and the
/// flag beside it, so that a [`ring`](Self::ring) with nobody asleep is kept for the
/// next sleep (a blocking [`Platform::wake`] rings it).
#[derive(Debug, Default)]
pub struct Alarm {
    rung: Mutex<bool>,
    bell: Condvar,
}

impl Alarm {
    /// Wakes the sleeping loop, or the next sleep if nobody sleeps now.
    pub fn ring(&self) {
        *self.rung() = true;
        self.bell.notify_one();
    }

    fn rung(&self) -> MutexGuard<'_, bool> {
        self.rung.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sleeps until `until` (on the system clock; `None`: no deadline) or a ring.
    fn sleep(&self, until: Option<Instant>) {
        let mut rung = self.rung();
        while !*rung {
            let left = until.map(|at| at.saturating_duration_since(Instant::now()));
            rung = match left {
                Some(Duration::ZERO) => break,
                Some(d) => self
                    .bell
                    .wait_timeout(rung, d)
                    .map_or_else(|e| e.into_inner().0, |r| r.0),
                None => self.bell.wait(rung).unwrap_or_else(|e| e.into_inner()),
            };
        }
        *rung = false;
    }
}

impl<M: Role, P: Platform<Conn = M::Conn>> Driver<M, P> {
    /// The timer loop on a thread of its own: [`turn`](Self::turn), then sleep on
    /// `alarm` until the deadline it answers (the platform's clock must be the system
    /// clock) or until the platform rings it, until the machine closes.
    pub fn run_blocking(&self, alarm: &Alarm) {
        loop {
            match self.turn() {
                Sleep::Stop => return,
                Sleep::Until(at) => alarm.sleep(Some(at)),
                Sleep::Idle => alarm.sleep(None),
            }
        }
    }
}
