//! What a machine hands its driver: requests, answers, candidates and sweep batches.

use std::time::Instant;

use super::Kept;
use crate::error::GetFailure;
use crate::waiters::{WaiterKey, Want};
use crate::ConnId;

/// Everything a machine asks of its driver, one request at a time: the single way out
/// of the core (str0m's `poll_output`). After every input, call `poll_output` until it
/// answers [`Output::Timeout`], performing each request outside any lock.
#[derive(Debug)]
#[must_use = "every output is a request the driver must perform"]
pub enum Output<C> {
    /// Hand the result to the get waiting under [`Answer::key`]. A get that went away
    /// gives the connection back with the machine's `put_back`.
    Answer(Answer<C>),
    /// Start a dial under this ticket and report it back exactly once (client).
    Dial(crate::DialTicket),
    /// Abort the dial or handshake with this serial: its deadline passed, or a newer
    /// connection evicted it. Its ticket still comes back, as a failure, exactly once.
    Abort(u64),
    /// Close this connection (drop it), after letting go of any lock.
    Close(ConnId, C),
    /// Probe each connection of this sweep batch with no lock held, then give the batch
    /// back with [`crate::PoolCommon::handle_probe`].
    Probe(Probe<C>),
    /// Nothing more to do now: arm one timer for this instant and call the machine's
    /// `handle_timeout` when it fires (`None`: no timer until the next input).
    Timeout(Option<Instant>),
}

/// The answer to a waiting get, one of the [`Output`]s.
#[derive(Debug)]
pub struct Answer<C> {
    /// Which get.
    pub key: WaiterKey,
    /// What it gets.
    pub result: Result<(ConnId, C), GetFailure>,
}

/// What a get found.
#[derive(Debug)]
#[must_use = "a Got may hold a connection, a candidate or a waiter key that must be kept"]
pub enum Got<C> {
    /// A live connection, at once.
    Ready(ConnId, C),
    /// A candidate to probe: report the verdict with [`crate::PoolCommon::handle_check`].
    Check(Check<C>),
    /// Nothing yet: the answer comes later under this key, as an [`Output::Answer`].
    Wait(WaiterKey),
    /// No connection, now or later.
    Failed(GetFailure),
}

/// A candidate a get took out of the idle map, to be probed by the driver outside any
/// lock and reported with [`crate::PoolCommon::handle_check`]. Dropping it closes the
/// connection without counting it: report it instead.
#[derive(Debug)]
#[must_use = "report the probe's verdict with handle_check"]
pub struct Check<C> {
    pub(crate) id: ConnId,
    pub(crate) conn: C,
    pub(crate) want: Want,
    pub(crate) deadline: Instant,
}

impl<C> Check<C> {
    /// The candidate's id.
    pub fn id(&self) -> ConnId {
        self.id
    }
    /// The candidate, to probe.
    pub fn conn_mut(&mut self) -> &mut C {
        &mut self.conn
    }
}

/// A batch of idle connections the sweep wants probed. Probe each with
/// [`check`](Self::check), outside any lock, then give the batch back with
/// [`crate::PoolCommon::handle_probe`]. A connection left unchecked counts as alive.
#[derive(Debug)]
#[must_use = "give the batch back with handle_probe, or its connections are lost"]
pub struct Probe<C> {
    pub(crate) items: Vec<Item<C>>,
}

#[derive(Debug)]
pub(crate) struct Item<C> {
    pub(crate) id: ConnId,
    pub(crate) kept: Kept<C>,
    pub(crate) alive: bool,
}

impl<C> Probe<C> {
    /// Records `alive(conn)` for every connection of the batch.
    pub fn check(&mut self, mut alive: impl FnMut(&mut C) -> bool) {
        for item in &mut self.items {
            item.alive = alive(&mut item.kept.conn);
        }
    }
    /// How many connections the batch holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// The ids of the batch, in the order they will be checked.
    pub fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.items.iter().map(|i| i.id)
    }
}
