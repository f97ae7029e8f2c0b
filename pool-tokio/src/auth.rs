//! The tunnel-key step after the id: the I/O around `pool_tls::proof`.
//!
//! # Flights
//!
//! The proof's messages ride with the handshake's own, so a keyed connection costs
//! the flights of an unkeyed one:
//!
//! - the server's `Ns` leaves in the same write as the id; in TLS modes both ride in
//!   the server's first TLS flight, behind its `Finished`, as TLS 1.3 0.5-RTT data
//!   (`send_half_rtt_data`: the server's config in a keyed pool sets it);
//! - the client's response leaves as soon as it has read `id ‖ Ns` (in TLS modes,
//!   right behind its own `Finished`);
//! - the server's confirmation answers it.
//!
//! Each side reads exactly the bytes of the message it expects (`read_exact` on an
//! array of that length), so payload that follows is never consumed. Both sides run
//! under the deadline the core armed for the handshake (the caller aborts them when it
//! passes), as the `Stage::Auth` step.

use pool_tls::proof::{BINDING_LEN, CHALLENGE_LEN, CONFIRM_LEN, NONCE_LEN, RESPONSE_LEN};
use pool_tls::{fresh_nonce, ClientProof, ProofError, ServerProof, TunnelKey};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::conn::{PoolConn, PoolStream};
use crate::error::StepError;

/// The server's `Ns`, drawn before the id is written: the challenge leaves with it.
pub(crate) fn server_nonce() -> Result<[u8; NONCE_LEN], StepError> {
    fresh_nonce().map_err(|e| StepError::from(std::io::Error::other(e)))
}

/// The server's side once `id ‖ Ns` went out: check the response, confirm. The
/// connection is ready only when this returns `Ok`.
pub(crate) async fn server_auth(
    conn: &mut PoolConn,
    key: &TunnelKey,
    id_wire: &[u8],
    ns: [u8; NONCE_LEN],
) -> Result<(), StepError> {
    let binding = binding(conn)?;
    let proof = ServerProof::new(key, ns, id_wire, or_empty(&binding));
    let exchange = async {
        let mut response = [0u8; RESPONSE_LEN];
        conn.read_exact(&mut response).await?;
        let confirm = proof.check_response(&response).map_err(|e| {
            // A plain server's TLS client: its ClientHello came where the response
            // goes. Asked only of a response that failed (a good one may begin so too).
            let plain = matches!(conn.stream, PoolStream::Plain(_));
            if plain && pool_net::looks_like_tls(&response) {
                StepError::ClientSpeaksTls
            } else {
                StepError::from(e)
            }
        })?;
        conn.write_all(&confirm).await?;
        conn.flush().await?;
        Ok(())
    };
    exchange.await
}

/// The client's side: read the challenge, respond, check the confirmation.
pub(crate) async fn client_auth(
    conn: &mut PoolConn,
    key: &TunnelKey,
    id_wire: &[u8],
) -> Result<(), StepError> {
    let binding = binding(conn)?;
    let nc = fresh_nonce().map_err(|e| StepError::from(std::io::Error::other(e)))?;
    let exchange = async {
        let mut challenge = [0u8; CHALLENGE_LEN];
        conn.read_exact(&mut challenge).await?;
        let (proof, response) =
            ClientProof::respond(key, &challenge, nc, id_wire, or_empty(&binding));
        conn.write_all(&response).await?;
        conn.flush().await?;
        let mut confirm = [0u8; CONFIRM_LEN];
        conn.read_exact(&mut confirm).await?;
        proof.check_confirm(&confirm)?;
        Ok(())
    };
    exchange.await
}

fn or_empty(b: &Option<[u8; BINDING_LEN]>) -> &[u8] {
    b.as_ref().map_or(&[], |b| b)
}

/// The TLS session's channel binding, or `None` on a plain stream.
fn binding(conn: &PoolConn) -> Result<Option<[u8; BINDING_LEN]>, StepError> {
    let b = match &conn.stream {
        PoolStream::Plain(_) => return Ok(None),
        PoolStream::Tls(s) => s.binding(),
    };
    Ok(Some(b?))
}

impl From<ProofError> for StepError {
    fn from(e: ProofError) -> Self {
        match e {
            ProofError::BadResponse | ProofError::BadConfirm => Self::BadProof,
            other => Self::from(std::io::Error::other(other)),
        }
    }
}
