//! The tunnel-key proof of both wires: pool-tls's mutual challenge-response
//! (`pool_tls::proof`), once per TLS connection, bound to the session by its exporter.
//! Not part of the Go wires: set the key on both ends or on neither.
//!
//! - WebSocket: the server's first binary message is the id followed by its challenge
//!   `Ns` (36 bytes instead of 4); the client answers `Nc ‖ tag_c` (64 bytes), the
//!   server confirms with `tag_s` (32 bytes), each as a binary message. What is signed
//!   besides the nonces is [`WS_SCOPE`] and the raw id, and the TLS binding (none on
//!   plain `ws://`, as the TCP pools' mode 0).
//! - HTTP/2: the connection's first stream is `POST /stream` whose body starts with
//!   [`PROOF`] (`0x01`, where a pooled stream starts with `0x00`); the `200` response
//!   body carries `Ns`, the request body `Nc ‖ tag_c`, the response body `tag_s`, and
//!   both bodies end. What is signed is [`H2_SCOPE`] and the TLS binding: the proof
//!   covers the connection and every stream on it.
//!
//! The byte streams the messages travel in are read with `read_exact` on arrays of the
//! message's length, so nothing past them is consumed.

use pool_tls::proof::{BINDING_LEN, CHALLENGE_LEN, CONFIRM_LEN, RESPONSE_LEN};
use pool_tls::{fresh_nonce, ClientProof, ServerProof, TunnelKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::HandshakeError;
use crate::stream::Io;

/// The opening byte of an HTTP/2 connection's proof stream.
pub const PROOF: u8 = 0x01;

/// What a WebSocket connection's proof covers besides the session: this, then the id.
pub const WS_SCOPE: &[u8] = b"npws connection ";

/// What an HTTP/2 connection's proof covers besides the session.
pub const H2_SCOPE: &[u8] = b"nph2 connection";

/// The reset and `GOAWAY` code of an HTTP/2 connection whose proof failed.
pub(crate) const H2_REFUSED: h2::Reason = h2::Reason::INADEQUATE_SECURITY;

/// A proof failure the peer caused.
pub(crate) fn bad(why: &'static str) -> HandshakeError {
    HandshakeError::BadProof(why)
}

/// The TLS session's channel binding; empty on plain `ws://`.
pub(crate) fn ws_binding(io: &Io) -> Result<Vec<u8>, HandshakeError> {
    let b = match io {
        Io::Plain(_) => return Ok(Vec::new()),
        Io::TlsClient(s) => pool_tls::tls_binding(s.get_ref().1),
        Io::TlsServer(s) => pool_tls::tls_binding(s.get_ref().1),
    };
    b.map(|b| b.to_vec())
        .map_err(|e| HandshakeError::Tls(e.to_string()))
}

/// The TLS session's channel binding.
pub(crate) fn tls_binding<C: pool_tls::proof::Exporter + ?Sized>(
    conn: &C,
) -> Result<[u8; BINDING_LEN], HandshakeError> {
    pool_tls::tls_binding(conn).map_err(|e| HandshakeError::Tls(e.to_string()))
}

/// `WS_SCOPE ‖ id`.
pub(crate) fn ws_scope(raw_id: &[u8]) -> Vec<u8> {
    [WS_SCOPE, raw_id].concat()
}

fn nonce() -> Result<[u8; 32], HandshakeError> {
    fresh_nonce().map_err(|e| HandshakeError::Io(e.to_string()))
}

/// The server's first move: its proof state, whose challenge goes to the client.
pub(crate) fn server_start(
    key: &TunnelKey,
    scope: &[u8],
    binding: &[u8],
) -> Result<ServerProof, HandshakeError> {
    Ok(ServerProof::new(key, nonce()?, scope, binding))
}

/// The server's rest, after the challenge went: check the response, confirm.
pub(crate) async fn server_finish<S>(s: &mut S, proof: ServerProof) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut response = [0u8; RESPONSE_LEN];
    read(s, &mut response).await?;
    let confirm = proof
        .check_response(&response)
        .map_err(|_| bad("the client's response does not verify"))?;
    s.write_all(&confirm).await.map_err(io)?;
    s.flush().await.map_err(io)
}

/// The client's side: read the challenge, respond, check the confirmation.
pub(crate) async fn client<S>(
    s: &mut S,
    key: &TunnelKey,
    scope: &[u8],
    binding: &[u8],
) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let nc = nonce()?;
    let mut challenge = [0u8; CHALLENGE_LEN];
    read(s, &mut challenge).await?;
    let (proof, response) = ClientProof::respond(key, &challenge, nc, scope, binding);
    s.write_all(&response).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut confirm = [0u8; CONFIRM_LEN];
    read(s, &mut confirm).await?;
    proof
        .check_confirm(&confirm)
        .map_err(|_| bad("the server's confirmation does not verify"))
}

/// Reads one message of the proof. The peer ending the stream or resetting it (a keyed
/// end refuses a failed proof so) is a [`HandshakeError::BadProof`].
async fn read<S: AsyncRead + Unpin>(s: &mut S, buf: &mut [u8]) -> Result<(), HandshakeError> {
    s.read_exact(buf).await.map(drop).map_err(|e| {
        use std::io::ErrorKind as K;
        let refused = matches!(
            e.get_ref()
                .and_then(|i| i.downcast_ref::<crate::h2::StreamError>()),
            Some(crate::h2::StreamError::Reset(c) | crate::h2::StreamError::GoAway(c))
                if *c == u32::from(H2_REFUSED)
        );
        match e.kind() {
            _ if refused => bad("the peer refused the proof"),
            K::UnexpectedEof
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe => bad("the peer closed the connection during the proof"),
            _ => io(e),
        }
    })
}

fn io(e: std::io::Error) -> HandshakeError {
    HandshakeError::Io(e.to_string())
}
