//! QUIC streams as the pooled connections of the reverse-tunnel pool: the wire of the
//! NodePass QUIC pool (`NodePassProject/quic`) on pool-core's machines.
//!
//! A [`ServerPool`] accepts QUIC connections and their bidirectional streams; each
//! stream the client opens starts with one byte, `0x00`, and the server answers with 4
//! random bytes, the id (its lowercase hex is the key both ends know the stream by).
//! The stream then waits idle until a get takes it: [`ServerPool::get`] hands out the
//! oldest with its id, and [`ClientPool::get`] the one with the id the application
//! sent over its own control channel. ALPN `np-quic`, TLS 1.3; at most 128 streams per
//! connection, over [`shards`] connections. `README.md` beside this crate's
//! `Cargo.toml` lays the wire out beside the TCP pool's.
//!
//! # Why a thin crate
//!
//! What a pool decides (the id map, gets by id or any, waiting gets with deadlines,
//! the refill rounds and their adaptation, the sweep, flush and close) is pool-core's,
//! written once and shared with the TCP pools. This crate is a
//! [`pool_core::driver::Platform`]: a "dial" opens a stream (and a connection when no
//! shard has room), a handshake reads `0x00` and writes the id, the liveness probe
//! asks whether a stream or its connection ended without losing a byte (what it reads
//! is kept for the reader), and a connection's end takes its idle streams out of the
//! pool at once.
//!
//! # Strangers
//!
//! A stranger who reaches the UDP port costs the server bounded state: connections
//! and QUIC handshakes are capped per source and in all ([`Limits`]); above a few
//! handshakes under way, a client whose address is not validated gets a stateless
//! retry first; datagrams for connections not yet accepted are capped; each stream's
//! handshake is admitted by pool-core's server machine (its slots, per-source quota,
//! deadline and eviction of the oldest), and the client-IP filter refuses a connection
//! before its handshake. With a tunnel key on both ends
//! ([`ServerPoolBuilder::tunnel_key`]), each connection proves it once, bound to its TLS
//! session, before any of its streams is pooled.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod client;
mod engine;
mod error;
mod link;
mod proof;
mod server;
mod stream;
mod wire;

pub use client::{ClientPool, ClientPoolBuilder};
pub use error::{BuildError, Cause, Failure, GetError};
pub use proof::{CLOSE_BAD_PROOF, PROOF};
pub use server::{Limits, QuicCounters, ServerPool, ServerPoolBuilder, RESET_REFUSED};
pub use stream::{QuicStream, RESET_UNUSED};
pub use wire::{
    shards, ALPN, CONNECTION_WINDOW, CREDIT_SLACK, HELLO, ID_WIRE_LEN, MAX_SHARDS, MAX_UDP_PAYLOAD,
    SOCKET_BUFFER, STREAMS_PER_CONNECTION, STREAM_WINDOW,
};

pub use pool_core::{ClientConfig, ConnId, ServerConfig};
pub use pool_tls::{ClientTls, Roots, ServeTls, TunnelKey};
pub use quinn;
