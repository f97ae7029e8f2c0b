//! Sans-IO state machines of a connection pool for reverse tunnels.
//!
//! This crate decides; it does no I/O. It never reads a clock, sleeps, spawns or
//! touches a socket: every input carries `now`, every machine answers with decisions
//! and with the next instant at which it wants to be woken, and randomness comes from a
//! generator the machine owns, seeded once by the driver ([`SeededRandom`]). That is why
//! the same machines run under tokio (`pool-tokio`), on plain threads, under any other
//! runtime, and under a simulated clock at millions of simulated seconds per second
//! (`pool-testkit`).
//!
//! # The contract
//!
//! Methods fall into four groups, as in quinn-proto:
//! - getters: [`ClientMachine::status`], [`PoolCommon::counters`], ...
//! - `handle_*`: inputs, each with `now` ([`ClientMachine::handle_timeout`],
//!   [`ClientMachine::handle_dial_success`], [`ServerMachine::handle_accept`],
//!   [`PoolCommon::handle_check`], [`PoolCommon::handle_probe`], ...);
//! - commands: `get`, `flush`, `close`;
//! - `poll_*`: outputs. **After every input, drain them, then ask `poll_timeout` for
//!   the next wake-up** (str0m's rule: "drain outputs until timeout").
//!
//! | output | what the driver does with it |
//! |---|---|
//! | [`ClientMachine::poll_dial`] | start a dial under the [`DialTicket`]'s deadlines; report it back exactly once |
//! | [`PoolCommon::poll_answer`] | hand the connection (or error) to the get waiting under that key |
//! | [`PoolCommon::poll_close`] | drop the connection, after letting go of any lock |
//! | [`PoolCommon::poll_probe`] | probe each connection of the batch with no lock held, give the batch back |
//! | [`ServerMachine::poll_abort`] | abort the handshake with that serial (it was evicted); its ticket still comes back |
//! | `poll_timeout` | arm one timer; call `handle_timeout` when it fires |
//!
//! The liveness of an idle connection is a fact only the driver can learn, so it is
//! asked for as an output ([`Got::Check`], [`Probe`]) and answered as an input; no
//! callback ever runs inside the machine, and nothing forces a system call under the
//! driver's lock. See [`PoolCommon`] for the details.
//!
//! ```
//! use pool_core::{ClientMachine, ConnId};
//! use std::time::Instant;
//!
//! /// One turn of a driver: `now` from the driver's clock, ids from the wire.
//! fn turn(m: &mut ClientMachine<String>, now: Instant, read_id: impl Fn() -> ConnId) {
//!     m.handle_timeout(now);                                   // time passed
//!     while let Some(t) = m.poll_dial(now) {                   // start the dials
//!         m.handle_dial_success(t, read_id(), "conn".into(), now); // (later, really)
//!     }
//!     while let Some(mut batch) = m.poll_probe(now) {          // the sweep: probe
//!         batch.check(|conn| !conn.is_empty());                // (outside the lock)
//!         m.handle_probe(batch, now);
//!     }
//!     while let Some(_answer) = m.poll_answer() { /* to the waiting get */ }
//!     while let Some(_conn) = m.poll_close() { /* drop it */ }
//!     let _wake_at = m.poll_timeout();                         // arm one timer
//! }
//! ```
//!
//! A real driver starts dials concurrently and reports each ticket when its dial ends;
//! `pool-tokio`, the simulated driver of `pool-testkit` and its plain-threads example
//! do exactly that. A `get` runs the same way: [`ClientMachine::get`] answers
//! [`Got::Check`] with a candidate, the driver probes it outside its lock and reports
//! with [`PoolCommon::handle_check`], which answers [`Got::Ready`] (or moves on to the
//! next candidate after a dead one). On a warm pool that is one probe per get.
//!
//! Dials and handshakes are accounted by `#[must_use]` tickets ([`DialTicket`],
//! [`HandshakeTicket`]): each must come back exactly once as success or failure, so the
//! in-flight count is right by construction. Every deadline is computed with
//! [`deadline_after`], which saturates: a timeout of `Duration::MAX` means "never", not
//! a panic.
//!
//! See `DRIVING.md` beside this crate's `Cargo.toml`, "Driving pool-core on your own
//! runtime": inputs, outputs, the timer and the lock, with `pool-threads` as the example.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod adapt;
mod adjust;
mod client;
mod common;
mod config;
mod error;
mod id;
mod idle;
mod random;
mod server;
mod source;
mod stats;
mod time;
mod waiters;

pub use adapt::{Adapt, Adaptation, Decision, DemandTracking, GoRules, Observed, RoundInput};
pub use adjust::{CapacityPolicy, Fraction, IntervalPolicy};
pub use client::{backoff, ClientMachine, DialTicket};
pub use common::{Answer, Check, Got, PoolCommon, Probe, PROBE_BATCH};
pub use config::{
    go_caps, go_intervals, ClientConfig, ClientConfigBuilder, ServerConfig, ServerConfigBuilder,
    DEFAULT_PENDING_PER_SOURCE, DEFAULT_SERVER_MAX_IDLE_AGE, DEFAULT_SETTLE,
};
pub use error::{ConfigError, GetError, IdError};
pub use id::{ConnId, Fed, IdForm, IdReader, WireId, ID_LEN};
pub use idle::IdleMap;
pub use random::{Random, SeededRandom};
pub use server::{Admission, HandshakeTicket, Refusal, ServerMachine};
pub use source::Source;
pub use stats::{Counters, Stage, Status};
pub use time::deadline_after;
pub use waiters::{WaiterKey, Waiters, Want};
