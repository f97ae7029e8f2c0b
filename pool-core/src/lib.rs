//! Sans-IO state machines of a connection pool for reverse tunnels.
//!
//! This crate decides; it does no I/O. It never reads a clock, sleeps, spawns, touches a
//! socket or draws randomness: every input carries `now`, random bytes are arguments,
//! and every machine answers with decisions and with the next instant at which it wants
//! to be woken. That is why the same machines run under tokio (`pool-tokio`), under any
//! other runtime, and under a simulated clock at millions of simulated seconds per
//! second (`pool-testkit`).
//!
//! # The contract
//!
//! Methods fall into four groups, as in quinn-proto:
//! - getters: [`ClientMachine::status`], [`ClientMachine::counters`], ...
//! - `handle_*`: inputs, each with `now` ([`ClientMachine::handle_timeout`],
//!   [`ClientMachine::handle_dial_success`], [`ServerMachine::handle_accept`], ...);
//! - commands: `get`, `flush`, `close`;
//! - `poll_*`: outputs. After every input, drain them (`poll_dial`, `poll_answer`) and
//!   then ask `poll_timeout` for the next wake-up.
//!
//! ```
//! use pool_core::{ClientMachine, ConnId};
//! use std::time::Instant;
//!
//! /// One turn of a driver: `now` comes from the driver's clock, ids from the wire.
//! fn turn(m: &mut ClientMachine<String>, now: Instant, read_id: impl Fn() -> ConnId) {
//!     m.handle_timeout(now);                                   // time passed
//!     while let Some(ticket) = m.poll_dial(now) {              // perform the dials
//!         let _ = m.handle_dial_success(ticket, read_id(), "conn".into(), now);
//!     }
//!     while let Some(_answer) = m.poll_answer() { /* deliver to the waiting get */ }
//!     let _wake_at = m.poll_timeout();                         // arm one timer
//! }
//! ```
//!
//! (A real driver starts dials concurrently and reports each ticket when its dial
//! ends; `pool-tokio` and the simulated driver of `pool-testkit` do exactly that.)
//!
//! Dials and handshakes are accounted by `#[must_use]` tickets ([`DialTicket`],
//! [`HandshakeTicket`]): each must come back exactly once as success or failure, so the
//! in-flight count is right by construction.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod adjust;
mod client;
mod config;
mod error;
mod hub;
mod id;
mod idle;
mod server;
mod stats;
mod waiters;

pub use adjust::{CapacityPolicy, Fraction, IntervalPolicy};
pub use client::{backoff, ClientMachine, DialTicket};
pub use config::{
    go_caps, go_intervals, ClientConfig, ClientConfigBuilder, ServerConfig, ServerConfigBuilder,
};
pub use error::{ConfigError, GetError, IdError};
pub use hub::{Answer, Got, Landed};
pub use id::{ConnId, Fed, IdForm, IdReader, WireId, ID_LEN};
pub use idle::IdleMap;
pub use server::{Admission, HandshakeTicket, IdCollision, Refusal, ServerMachine};
pub use stats::{Counters, Stage, Status};
pub use waiters::{WaiterKey, Waiters, Want};
