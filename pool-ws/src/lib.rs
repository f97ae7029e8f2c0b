//! The reverse-tunnel pool over WebSocket, the wire of the NodePass `npws` pools, and
//! over HTTP/2 ([`h2`]), the wire of `nph2`: both on pool-core's machines and driver
//! protocol.
//!
//! WebSocket is what a tunnel picks when the only way out of a network is HTTP(S): a
//! corporate proxy, a CDN, a load balancer that speaks HTTP only. The pool is the TCP
//! pool's, with another handshake:
//!
//! - the client pool ([`WsClientPool`]) dials `ws://HOST:PORT/` (`wss://` for TLS codes
//!   1 and 2, and for code 0 on port 443, verified), upgrades with no compression, and
//!   reads the 4-byte id from the first binary message;
//! - the server pool ([`WsServerPool`]) answers `403` to a filtered client address and
//!   `503` when it holds its maximum capacity, both before the upgrade; otherwise `101`,
//!   then the id as the first binary message (the first connection after start gets
//!   `00000000`, as the Go pools do);
//! - after that, each pooled connection ([`WsConn`]) is a byte stream
//!   (`AsyncRead + AsyncWrite`) over binary messages both ways.
//!
//! Which connection a get receives, waiting gets, ids in flight, adaptation, the sweep,
//! flush and close are pool-core's ([`pool_core::driver::Driver`]), exactly as for the
//! tokio TCP pools and pool-threads: this crate is a [`Platform`](pool_core::driver::Platform)
//! over WebSocket connections and the handshakes of the wire.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use pool_ws::{WsClientPool, WsServerPool};
//! use std::time::Duration;
//! let server = WsServerPool::builder().bind("127.0.0.1:0".parse()?).build()?;
//! let client = WsClientPool::builder().address(server.local_addr()).build()?;
//! let (id, _server_end) = server.get().await?;
//! // `id` goes to the client side over the application's control channel.
//! let _client_end = client.get(id, Duration::from_secs(2)).await?;
//! # Ok(()) }
//! ```
//!
//! With a [`TunnelKey`] on both ends (`tunnel_key` on each builder), every TLS
//! connection proves the key once before anything on it is pooled: pool-tls's mutual
//! challenge-response over fresh nonces, bound to the TLS session by its exporter (on
//! plain `ws://` unbound, as the TCP pools' mode 0). A peer without the key is refused
//! and counted ([`HandshakeError::BadProof`]); without a key the wire is the Go
//! pools'. The bytes are in the crate's README.
//!
//! Bad input ends in a named error or a counted refusal: a request that is not an
//! upgrade is answered `426`/`400` and counted (`protocol_mismatches`), a request head
//! over 8 KiB `431`, a text message or an oversized one ends the stream with a
//! [`FrameError`]; a slow upgrade holds a handshake slot only until the core's deadline
//! and is evicted first when the slots run out.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod engine;
mod error;
pub mod h2;
mod http;
mod proof;
mod server;
mod stream;

use std::sync::Mutex;

pub use client::{WsClientPool, WsClientPoolBuilder};
pub use error::{BuildError, FrameError, GetError, HandshakeError};
pub use http::MAX_HEAD;
pub use proof::{H2_SCOPE, PROOF, WS_SCOPE};
pub use server::{WsServerPool, WsServerPoolBuilder, REFUSERS, REFUSE_WAIT};
pub use stream::{Io, WsConn, MAX_MESSAGE};

pub use pool_core::{ClientConfig, ConnId, Counters, ServerConfig, Status};
pub use pool_tls::{ClientTls, Roots, ServeTls, ServerTls, TunnelKey};

/// The server's id generator: `00000000` first, as the Go pools' first connection
/// after start, then the seeded generator's draws (the core draws a fresh one on a
/// collision).
struct FirstZero {
    first: bool,
    rest: pool_core::SeededRandom,
}

impl FirstZero {
    fn new(seed: [u8; 32]) -> Self {
        Self {
            first: true,
            rest: pool_core::SeededRandom::from_seed(seed),
        }
    }
}

impl pool_core::Random for FirstZero {
    fn next_u32(&mut self) -> u32 {
        if std::mem::take(&mut self.first) {
            return 0;
        }
        self.rest.next_u32()
    }
}

/// The last handshake failure of a pool, for the user and the tests.
#[derive(Default)]
struct LastFailure(Mutex<Option<HandshakeError>>);

impl LastFailure {
    fn set(&self, e: HandshakeError) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }
    fn get(&self) -> Option<HandshakeError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A URL path: absolute, no space, no fragment.
fn check_path(path: &str) -> Result<(), BuildError> {
    let ok = path.starts_with('/')
        && !path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || b == b'#');
    if ok {
        Ok(())
    } else {
        Err(BuildError::Path(path.into()))
    }
}
