//! The tunnel-key proof, once per QUIC connection: pool-tls's mutual
//! challenge-response on the connection's first stream, bound to the connection's TLS
//! session by its exporter. Not part of the Go wire: set the key on both ends or on
//! neither.
//!
//! The client opens the first stream and writes [`PROOF`] (`0x01`, where a pooled
//! stream opens with `0x00`); the server answers the challenge `Ns`, the client its
//! response `Nc ‖ tag_c`, the server its confirmation `tag_s` (`pool_tls::proof`, with
//! the id field empty: the proof covers the connection, and every stream on it). The
//! server accepts no pooled stream of a connection before its proof verified, and the
//! client opens none; a connection whose proof fails or runs out of time is closed.

use pool_tls::proof::{BINDING_LEN, CHALLENGE_LEN, CONFIRM_LEN, EXPORTER_LABEL, RESPONSE_LEN};
use pool_tls::{fresh_nonce, ClientProof, ServerProof, TunnelKey};

use crate::error::Cause;

/// The opening byte of a connection's proof stream.
pub const PROOF: u8 = 0x01;

/// The code a connection is closed with when its proof fails.
pub const CLOSE_BAD_PROOF: u32 = 0x4b;

/// What the proof covers besides the session: the connection, not one stream.
const SCOPE: &[u8] = b"np-quic connection";

fn binding(conn: &quinn::Connection) -> Result<[u8; BINDING_LEN], Cause> {
    let mut b = [0u8; BINDING_LEN];
    conn.export_keying_material(&mut b, EXPORTER_LABEL, &[])
        .map_err(|_| Cause::Tls("no TLS exporter for the proof".into()))?;
    Ok(b)
}

fn random() -> Result<[u8; 32], Cause> {
    fresh_nonce().map_err(|e| Cause::Io(std::sync::Arc::new(std::io::Error::other(e))))
}

/// The client's side, on a stream it opens first on `conn`. A server that closed the
/// connection for a bad proof reads as [`Cause::BadProof`].
pub(crate) async fn client(conn: &quinn::Connection, key: &TunnelKey) -> Result<(), Cause> {
    client_exchange(conn, key).await.map_err(|e| {
        let refused = matches!(
            conn.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == quinn::VarInt::from_u32(CLOSE_BAD_PROOF)
        );
        if refused {
            Cause::BadProof
        } else {
            e
        }
    })
}

async fn client_exchange(conn: &quinn::Connection, key: &TunnelKey) -> Result<(), Cause> {
    let b = binding(conn)?;
    let nc = random()?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[PROOF]).await?;
    let mut challenge = [0u8; CHALLENGE_LEN];
    read_exact(&mut recv, &mut challenge).await?;
    let (proof, response) = ClientProof::respond(key, &challenge, nc, SCOPE, &b);
    send.write_all(&response).await?;
    let mut confirm = [0u8; CONFIRM_LEN];
    read_exact(&mut recv, &mut confirm).await?;
    proof.check_confirm(&confirm).map_err(|_| Cause::BadProof)?;
    let _ = send.finish();
    Ok(())
}

/// The server's side, on the first stream the client opened: its opening byte must be
/// [`PROOF`].
pub(crate) async fn server(conn: &quinn::Connection, key: &TunnelKey) -> Result<(), Cause> {
    let b = binding(conn)?;
    let ns = random()?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let mut first = [0u8; 1];
    read_exact(&mut recv, &mut first).await?;
    if first[0] != PROOF {
        return Err(Cause::BadProof);
    }
    let proof = ServerProof::new(key, ns, SCOPE, &b);
    send.write_all(&proof.challenge()).await?;
    let mut response = [0u8; RESPONSE_LEN];
    read_exact(&mut recv, &mut response).await?;
    let confirm = proof
        .check_response(&response)
        .map_err(|_| Cause::BadProof)?;
    send.write_all(&confirm).await?;
    let _ = send.finish();
    Ok(())
}

async fn read_exact(recv: &mut quinn::RecvStream, buf: &mut [u8]) -> Result<(), Cause> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(Cause::BadProof),
        Err(quinn::ReadExactError::ReadError(e)) => Err(e.into()),
    }
}
