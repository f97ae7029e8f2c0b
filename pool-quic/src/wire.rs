//! The wire of the NodePass QUIC pool: its constants, and the QUIC and TLS settings
//! both ends use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::BuildError;

/// The ALPN protocol both ends offer; a peer that offers another is refused in the
/// TLS handshake.
pub const ALPN: &[u8] = b"np-quic";

/// The byte a client writes first on each stream it opens.
pub const HELLO: u8 = 0x00;

/// Bytes of the id the server writes back: 4 random bytes, whose lowercase hex is the
/// id both ends know the stream by.
pub const ID_WIRE_LEN: usize = 4;

/// Concurrent bidirectional streams per QUIC connection (each end's limit).
pub const STREAMS_PER_CONNECTION: u32 = 128;

/// Streams over [`STREAMS_PER_CONNECTION`] a server allows: quinn gives stream
/// credit back in batches of an eighth of the limit, so a client that keeps 128 open,
/// using and replacing them, would otherwise wait for up to 15 streams' worth of
/// credit. The client still opens at most 128 at once.
pub const CREDIT_SLACK: u32 = STREAMS_PER_CONNECTION / 8;

/// Connections (shards) a client pool opens at most.
pub const MAX_SHARDS: usize = 64;

/// The connections a pool of `max_capacity` streams spreads over:
/// `clamp(ceil(max_capacity / 128), 1, 64)`.
///
/// ```
/// use pool_quic::shards;
/// assert_eq!(shards(1), 1);
/// assert_eq!(shards(128), 1);
/// assert_eq!(shards(129), 2);
/// assert_eq!(shards(1_000_000), 64);
/// ```
pub fn shards(max_capacity: usize) -> usize {
    max_capacity
        .div_ceil(STREAMS_PER_CONNECTION as usize)
        .clamp(1, MAX_SHARDS)
}

/// Bytes a peer may send on one stream ahead of what is read (the Go package's
/// quic-go allows up to 6 MiB).
pub const STREAM_WINDOW: u32 = 6 << 20;

/// Bytes a peer may send on one connection, all streams together, ahead of what is
/// read (quic-go: up to 15 MiB). With the connection caps of [`Limits`](crate::Limits)
/// it bounds what strangers can make a server buffer.
pub const CONNECTION_WINDOW: u32 = 15 << 20;

/// The kernel buffers asked for each UDP socket, each way. The default (about 208 KiB)
/// overflows under a full-rate stream on a fast path, and every datagram it drops
/// costs a loss recovery and a smaller congestion window; the kernel caps the request
/// at its `rmem_max` / `wmem_max`.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// The largest UDP payload either end accepts, and the size of every packet towards a
/// loopback address, whose path carries 64 KiB datagrams: ten of them (the most quinn
/// sends in one segmentation-offload batch) fit in one 65,507-byte UDP send, which a
/// larger size would overflow and lose whole. Each packet then carries four and a half
/// times the bytes of one sized for Ethernet (1,452). Towards any other address the
/// path's MTU is discovered as quinn does by default (up to 1,452).
pub const MAX_UDP_PAYLOAD: u16 = 6550;

/// The endpoint settings of both ends: [`MAX_UDP_PAYLOAD`].
pub(crate) fn endpoint_config() -> EndpointConfig {
    let mut c = EndpointConfig::default();
    // Only values under 1200 are refused, which this is not.
    let _ = c.max_udp_payload_size(MAX_UDP_PAYLOAD);
    c
}

/// A UDP socket bound to `at`, with [`SOCKET_BUFFER`] asked for each way (a request
/// the kernel refuses leaves its default); an IPv6 one also takes IPv4 where it can.
pub(crate) fn udp_socket(at: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))?;
    if at.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&at.into())?;
    Ok(socket.into())
}

/// An endpoint on `socket` with [`endpoint_config`], serving `server` if given.
pub(crate) fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<Endpoint> {
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    Endpoint::new(endpoint_config(), server, socket, runtime)
}

/// Where a connection's packets go, which sets how large they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// Any address but loopback: quinn's default path MTU discovery (up to 1,452).
    Other,
    /// A loopback server, from the dialing side. Packets are up to [`MAX_UDP_PAYLOAD`]
    /// once the server's transport parameters have capped them at its own largest
    /// payload, but the padded Initial that goes before those parameters is 1,200
    /// bytes: a server that reads 1,452-byte datagrams (quic-go without GRO) would
    /// drop a larger one whole and never answer. The price: a burst lost on a loaded
    /// host can drop its packets to 1,200 bytes for the rest of the connection.
    LoopbackDialer,
    /// A loopback client, from the accepting side, which has the client's largest
    /// payload from its first Initial before it sends anything: every packet is up to
    /// [`MAX_UDP_PAYLOAD`] (or the client's own limit), and a burst lost on a loaded
    /// host never drops it to 1,200 bytes for the rest of the connection.
    LoopbackAcceptor,
}

/// The transport settings of both ends: keep-alive at `keepalive`, idle timeout three
/// times it, at most `streams` concurrent bidirectional streams opened by the peer,
/// no unidirectional streams, bounded receive windows, and packets sized for the
/// [`Path`]. Towards a loopback peer there is no path MTU discovery (nothing to
/// discover); once the peer's transport parameters arrive, no packet is larger than
/// its own largest payload.
pub(crate) fn transport(keepalive: Duration, streams: u32, path: Path) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    match path {
        Path::Other => {}
        Path::LoopbackDialer => {
            t.initial_mtu(MAX_UDP_PAYLOAD);
            t.mtu_discovery_config(None);
        }
        Path::LoopbackAcceptor => {
            t.initial_mtu(MAX_UDP_PAYLOAD);
            t.min_mtu(MAX_UDP_PAYLOAD);
            t.mtu_discovery_config(None);
        }
    }
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_WINDOW));
    t.keep_alive_interval(Some(keepalive));
    let idle = keepalive.saturating_mul(3);
    t.max_idle_timeout(IdleTimeout::try_from(idle).ok());
    t.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    Arc::new(t)
}

/// A client's rustls configuration as QUIC takes it (TLS 1.3, ALPN `np-quic` set by
/// [`ClientTls::build_alpn`](pool_tls::ClientTls::build_alpn)).
pub(crate) fn quic_client(c: Arc<rustls::ClientConfig>) -> Result<QuicClientConfig, BuildError> {
    QuicClientConfig::try_from(c).map_err(|e| BuildError::Quic(e.to_string()))
}

/// A server's rustls configuration as QUIC takes it (TLS 1.3, ALPN `np-quic` set by
/// [`ServeTls::build_alpn`](pool_tls::ServeTls::build_alpn)).
pub(crate) fn quic_server(c: Arc<rustls::ServerConfig>) -> Result<QuicServerConfig, BuildError> {
    QuicServerConfig::try_from(c).map_err(|e| BuildError::Quic(e.to_string()))
}
