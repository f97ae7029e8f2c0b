//! Sans-IO state machines of a connection pool for reverse tunnels.
//!
//! This crate decides; it does no I/O. It never reads a clock, sleeps, spawns or
//! touches a socket: every input carries `now`, every machine answers with decisions
//! and with the next instant at which it wants to be woken, and randomness comes from a
//! generator the machine owns, seeded once by the driver ([`SeededRandom`]). That is why
//! the same machines run under tokio (`pool-tokio`), on plain threads, under any other
//! runtime, and under a simulated clock at millions of simulated seconds per second
//! (`pool-sim`).
//!
//! # The contract
//!
//! Methods fall into four groups, as in quinn-proto:
//! - getters: [`ClientMachine::status`], [`PoolCommon::counters`], ...
//! - `handle_*`: inputs, each with `now` ([`ClientMachine::handle_timeout`],
//!   [`ClientMachine::handle_dial_success`], [`ServerMachine::handle_accept`],
//!   [`PoolCommon::handle_check`], [`PoolCommon::handle_probe`], ...);
//! - commands: the role's gets ([`ClientMachine::get`], [`ClientMachine::get_any`],
//!   [`ServerMachine::get`]: the only way to ask for a connection, and the way the
//!   adaptation policy hears of demand), `flush`, `close`;
//! - **one way out**: `poll_output(now)` ([`ClientMachine::poll_output`],
//!   [`ServerMachine::poll_output`]). After every input, call it until it answers
//!   [`Output::Timeout`], which names the next instant to be woken (str0m's rule:
//!   "drain outputs until timeout").
//!
//! | [`Output`] | what the driver does with it |
//! |---|---|
//! | `Answer` | hand the connection (or error) to the get waiting under that key |
//! | `Dial` | start a dial; report its [`DialTicket`] back exactly once |
//! | `Abort` | stop the dial or handshake with that serial (late, or evicted); its ticket still comes back |
//! | `Close` | drop the connection, after letting go of any lock |
//! | `Probe` | probe each connection of the batch with no lock held, give the batch back |
//! | `Timeout` | arm one timer; call `handle_timeout` when it fires |
//!
//! Every deadline is the core's: dials and handshakes ([`Output::Abort`]), waiting gets
//! (answered `Timeout`), the sweep, backoff and rounds, the accept back-off
//! ([`ServerMachine::handle_accept_error`]). The liveness of an idle connection is a
//! fact only the driver can learn, so it is asked for as an output ([`Got::Check`],
//! [`Output::Probe`]) and answered as an input; no callback ever runs inside the
//! machine, and nothing forces a system call under the driver's lock.
//!
//! ```
//! use pool_core::{ClientConfig, ClientMachine, ConnId, Output, SeededRandom};
//! use std::time::Instant;
//!
//! /// One turn of a driver: `now` from the driver's clock, ids from the wire.
//! fn turn(m: &mut ClientMachine<String>, now: Instant, mut read_id: impl FnMut() -> ConnId) -> Option<Instant> {
//!     m.handle_timeout(now);                                     // time passed
//!     loop {
//!         match m.poll_output(now) {
//!             Output::Dial(t) => m.handle_dial_success(t, read_id(), "conn".into(), now), // (later, really)
//!             Output::Probe(mut batch) => {                      // the sweep: probe
//!                 batch.check(|conn| !conn.is_empty());          // (outside the lock)
//!                 m.handle_probe(batch, now);
//!             }
//!             Output::Answer(_) | Output::Close(..) | Output::Abort(_) => {} // perform
//!             Output::Timeout(wake_at) => return wake_at,        // arm one timer
//!             _ => {}
//!         }
//!     }
//! }
//! let cfg = ClientConfig::builder().capacity(2, 4).build().unwrap();
//! let now = Instant::now();
//! let mut m = ClientMachine::new(cfg, SeededRandom::from_seed([1; 32]), now);
//! let mut n = 0u8;
//! let next = turn(&mut m, now, || { n += 1; ConnId::from_random([n, 0, 0, 0]) });
//! assert_eq!(m.status().idle, 2);
//! assert!(next.is_some());
//! ```
//!
//! Nobody needs to write that loop: [`driver::Driver`] is the driver protocol, written
//! once (the lock, the drain, performing outside the lock, the get with its probe, the
//! waiting get, cancellation, shutdown), generic over a small [`driver::Platform`]
//! (clock, probe, reply channel, wake, start a dial). pool-tokio, pool-threads and
//! pool-sim's simulator are thin platforms over it, so the simulator's models run
//! the code the shipped drivers run.
//!
//! Dials and handshakes are accounted by `#[must_use]` tickets ([`DialTicket`],
//! [`HandshakeTicket`]): each must come back exactly once as success or failure, so the
//! in-flight count is right by construction. Every deadline is computed with
//! [`deadline_after`], which saturates: a timeout of `Duration::MAX` means "never", not
//! a panic.
//!
//! See `DRIVING.md` beside this crate's `Cargo.toml`, "Driving pool-core on your own
//! runtime": a complete driver on plain threads, in about 150 lines.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// DRIVING.md's complete driver, compiled so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../DRIVING.md")]
struct DrivingDoctests;

mod adapt;
mod adjust;
mod client;
mod common;
mod config;
pub mod driver;
mod error;
mod id;
mod idle;
mod liveness;
mod random;
mod server;
mod source;
mod stats;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
mod time;
mod waiters;

pub use adapt::{
    Adapt, Adaptation, Decision, GoRules, Observed, OfferedDemand, Refill, RoundInput, Tracking,
    Trim,
};
pub use adjust::{CapacityPolicy, Fraction, IntervalPolicy};
pub use client::{backoff, ClientMachine, DialTicket};
pub use common::{
    Answer, Check, Got, Output, PoolCommon, Probe, Reported, PROBE_BATCH, STARTED_QUEUE,
};
pub use config::{
    go_caps, go_intervals, AdmissionLimits, ClientConfig, ClientConfigBuilder, IdleWatch,
    IntoConfig, Mode, ServerConfig, ServerConfigBuilder, DEFAULT_PENDING_PER_SOURCE,
    DEFAULT_SERVER_MAX_IDLE_AGE, DEFAULT_SETTLE, DEFAULT_SWEEP, WATCHED_SWEEP,
};
pub use error::{ConfigError, GetFailure, IdError};
pub use id::{ConnId, Fed, IdForm, IdReader, WireId, ID_LEN};
pub use liveness::Liveness;
pub use random::{Random, SeededRandom};
pub use server::{Admission, HandshakeTicket, Refusal, ServerMachine};
pub use stats::{Counters, Stage, Status};
pub use time::deadline_after;
pub use waiters::{WaiterKey, Want};

/// The start header of a session started in band
/// ([`IdleWatch::Starts`]): the server writes these four bytes on an idle
/// pooled connection, then the session's data; the client's accept reads and checks
/// them, and hands out the connection with the data that follows unread. A connection
/// that brings anything else is no session and is closed (counted in
/// [`Counters::starts_dropped`]): a server speaking the Go protocol to an in-band
/// client, say.
pub const START: [u8; 4] = *b"NPS1";
