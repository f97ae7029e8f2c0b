//! A reverse tunnel in two processes on the pool, safe by default against strangers on
//! every port.
//!
//! The **server** side runs on the public machine: a [`ServerPool`](pool_tokio::ServerPool)
//! on the tunnel port, a control port, and the public port users connect to. The
//! **client** side runs next to the service and dials out: a
//! [`ClientPool`](pool_tokio::ClientPool) and one control connection. Sessions start in
//! band: for each user the server writes a start header and the user's first bytes on
//! an idle pooled connection; the client's pool accepts that connection when its first
//! byte arrives, the client answers a receipt, connects to the target and reports the
//! outcome, and both relay. Control carries the handshake and heartbeats, no session.
//!
//! Every port faces strangers, so each one admits only what proves the tunnel key:
//!
//! - pool connections run the pool's own key proof (`tunnel_key` on both builders), so a
//!   stranger never enters either pool;
//! - control runs the [`protocol`] handshake (fresh nonces from both sides, the client
//!   proves first, bound to the TLS session), with a bounded, evicting candidate table
//!   (the `candidates` tables) and heartbeats both ways;
//! - the public port caps concurrent sessions in all (at the cap, the source holding
//!   the most yields its newest to a source holding fewer), and while it is contended
//!   holds each source to its share of sessions at once and new sessions a second
//!   (`sources`); it relays with an idle and a half-close deadline ([`relay`]);
//! - the `--metrics` port is a listener of our own, capped, with a deadline per
//!   connection and a back-off on accept errors ([`metrics`]).
//!
//! `TUNNEL.md` beside this crate has the protocol, the threat model port by port and the
//! figures measured by `examples/attack/`.
#![forbid(unsafe_code)]

mod app;
mod candidates;
mod cli;
mod client;
pub mod config;
mod limits;
mod logs;
pub mod metrics;
pub mod protocol;
mod proxy_header;
pub mod relay;
mod server;
mod setup;
mod sources;
pub mod state;
pub mod stats;
mod tasks;
pub mod transport;
pub mod udp;

pub use app::main;
pub use client::{start_client, ClientHandle};
pub use config::{ClientConfig, ServerConfig, Timeouts};
pub use server::{start_server, ServerHandle};
pub use transport::Transport;

/// Errors of setup: shown to the user, never matched on.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
