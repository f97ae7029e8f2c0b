//! The part both machines share: idle connections, waiting gets, their answers, counters.

use std::collections::VecDeque;
use std::time::Instant;

use crate::error::GetError;
use crate::idle::IdleMap;
use crate::stats::Counters;
use crate::waiters::{WaiterKey, Waiters, Want};
use crate::ConnId;

/// The answer to a waiting get, drained with `poll_answer`.
#[derive(Debug)]
pub struct Answer<C> {
    /// Which get.
    pub key: WaiterKey,
    /// What it gets.
    pub result: Result<(ConnId, C), GetError>,
}

/// What a get found.
#[derive(Debug)]
#[must_use = "a Got may hold a connection or a waiter key that must be kept"]
pub enum Got<C> {
    /// A live connection, at once.
    Ready(ConnId, C),
    /// Nothing yet: the answer comes later under this key through `poll_answer`.
    Wait(WaiterKey),
    /// No connection, now or later.
    Failed(GetError),
}

/// What became of a connection that finished its handshake.
#[derive(Debug)]
#[must_use = "a collision hands back the connection and the ticket"]
pub enum Landed<C, T> {
    /// Idle under its id, or handed to a waiting get (see `poll_answer`).
    Kept,
    /// The id is already in use: the connection and its ticket come back. Draw a fresh
    /// id and try again, or report the ticket as failed.
    Collision(T, C),
    /// The pool is closed; the connection was dropped.
    Closed,
}

#[derive(Debug)]
pub(crate) struct Hub<C> {
    pub(crate) idle: IdleMap<C>,
    pub(crate) waiters: Waiters,
    answers: VecDeque<Answer<C>>,
    pub(crate) counters: Counters,
    pub(crate) closed: bool,
}

impl<C> Hub<C> {
    pub(crate) fn new() -> Self {
        Self {
            idle: IdleMap::new(),
            waiters: Waiters::new(),
            answers: VecDeque::new(),
            counters: Counters::default(),
            closed: false,
        }
    }

    /// A finished connection: to the oldest waiter for its id, else the oldest waiter
    /// for any, else idle. `Err` gives it back when the id is already idle.
    pub(crate) fn land(&mut self, id: ConnId, conn: C) -> Result<(), C> {
        if self.idle.contains(&id) {
            self.counters.id_collisions += 1;
            return Err(conn);
        }
        let key = self.waiters.pop_id(&id).or_else(|| self.waiters.pop_any());
        match key {
            Some(key) => {
                self.counters.served_after_wait += 1;
                self.answers.push_back(Answer {
                    key,
                    result: Ok((id, conn)),
                });
                Ok(())
            }
            None => self.idle.insert(id, conn),
        }
    }

    pub(crate) fn get(
        &mut self,
        want: Want,
        now: Instant,
        deadline: Instant,
        mut alive: impl FnMut(&mut C) -> bool,
        can_arrive: bool,
    ) -> Got<C> {
        if self.closed {
            return Got::Failed(GetError::Closed);
        }
        match want {
            Want::Any => {
                while let Some((id, mut conn)) = self.idle.take_oldest() {
                    if alive(&mut conn) {
                        self.counters.served_at_once += 1;
                        return Got::Ready(id, conn);
                    }
                    self.counters.evicted_dead += 1;
                }
            }
            Want::Id(id) => {
                if let Some(mut conn) = self.idle.take(&id) {
                    if alive(&mut conn) {
                        self.counters.served_at_once += 1;
                        return Got::Ready(id, conn);
                    }
                    self.counters.evicted_dead += 1;
                }
                if !can_arrive {
                    self.counters.not_found += 1;
                    return Got::Failed(GetError::NotFound);
                }
            }
        }
        if deadline <= now {
            self.counters.get_timeouts += 1;
            return Got::Failed(GetError::Timeout);
        }
        Got::Wait(self.waiters.push(want, deadline))
    }

    /// Answers every waiter whose deadline passed.
    pub(crate) fn expire(&mut self, now: Instant) {
        while let Some(key) = self.waiters.pop_expired(now) {
            self.counters.get_timeouts += 1;
            self.answers.push_back(Answer {
                key,
                result: Err(GetError::Timeout),
            });
        }
    }

    /// Answers every get by id with `NotFound` (no handshake can produce their ids).
    pub(crate) fn fail_id_waiters(&mut self) {
        for key in self.waiters.take_all_by_id() {
            self.counters.not_found += 1;
            self.answers.push_back(Answer {
                key,
                result: Err(GetError::NotFound),
            });
        }
    }

    pub(crate) fn sweep(&mut self, mut alive: impl FnMut(&mut C) -> bool) -> usize {
        let dead = self.idle.evict_where(|_, c| !alive(c));
        self.counters.evicted_dead += dead.len() as u64;
        dead.len()
    }

    pub(crate) fn close(&mut self) -> Vec<(ConnId, C)> {
        self.closed = true;
        for key in self.waiters.drain() {
            self.answers.push_back(Answer {
                key,
                result: Err(GetError::Closed),
            });
        }
        self.idle.drain()
    }

    pub(crate) fn poll_answer(&mut self) -> Option<Answer<C>> {
        self.answers.pop_front()
    }

    pub(crate) fn put_back(&mut self, id: ConnId, conn: C) -> Result<(), C> {
        if self.closed {
            return Err(conn);
        }
        // Not a new connection: undo the served count it got on the way out.
        self.counters.served_after_wait = self.counters.served_after_wait.saturating_sub(1);
        self.land(id, conn)
    }
}
