//! The tunnel-key proof: a mutual challenge-response that runs right after the id,
//! written sans-IO (the caller moves the bytes and draws the nonces).
//!
//! # Messages
//!
//! All fixed length; the bytes are in `PROTOCOL.md` at the root of this crate, with
//! test vectors. `K` is the [`TunnelKey`], `id` the id exactly as it went over the wire,
//! `B` the channel binding ([`tls_binding`] in TLS modes 1 and 2, empty in mode 0):
//!
//! 1. server → client, [`CHALLENGE_LEN`] bytes: `Ns`, 32 fresh random bytes, written
//!    in the same write as the id (in TLS modes, both in the server's first flight as
//!    0.5-RTT data: `PROTOCOL.md`, "Flights").
//! 2. client → server, [`RESPONSE_LEN`] bytes: `Nc ‖ HMAC-SHA256(K, "nodepass-pool/proof/v1/client" ‖ Ns ‖ Nc ‖ id ‖ B)`,
//!    `Nc` 32 fresh random bytes.
//! 3. server → client, [`CONFIRM_LEN`] bytes: `HMAC-SHA256(K, "nodepass-pool/proof/v1/server" ‖ Ns ‖ Nc ‖ id ‖ B)`.
//!
//! Then the connection is pooled on both sides, and every later byte is payload.
//!
//! # Why the client proves first
//!
//! The attacker most likely to exist is a stranger who dials the server's public tunnel
//! port. With the client proving first, such a stranger receives an id and `Ns`, and
//! nothing made with the key: it has nothing to test key guesses against offline, and
//! its own guesses cost it one connection (and one counted `auth_failures`) each.
//!
//! Only a fake server that the client dials (a man in the middle, by DNS or routing, or
//! anyone in TLS mode 1 without a pin) receives a client tag. That tag covers a fresh
//! `Nc` the fake server cannot choose, so it is no oracle: whatever id and challenge the
//! fake server picks, the tag it gets is valid only for that one exchange, and never
//! replays against a real server's fresh `Ns`. What it can do with the tag is guess the
//! key offline, which is why [`TunnelKey`] refuses short keys and stretches passphrases.
//! The reverse order would hand that same offline test to every stranger on the port.
//!
//! # What each part buys
//!
//! - `Ns` (server freshness): a recorded response never verifies again.
//! - `Nc` (client freshness): a server tag, or a client tag obtained by a fake server,
//!   never verifies in another exchange, and the fake server cannot steer what is
//!   signed.
//! - Distinct labels per direction: a server tag reflected back is not a client tag.
//! - `id`: the proof belongs to the connection that carries it.
//! - `B`: in TLS modes, the proof belongs to one TLS session ([RFC 8446 §7.5] exporter
//!   with label [`EXPORTER_LABEL`], no context, [`BINDING_LEN`] bytes). A man in the
//!   middle who terminates TLS on each side sees two sessions with two bindings, so a
//!   tag relayed from one is refused on the other.
//!
//! Tags are compared in constant time by `ring::hmac::verify`.
//!
//! [RFC 8446 §7.5]: https://www.rfc-editor.org/rfc/rfc8446#section-7.5
//!
//! # Example
//!
//! ```
//! use pool_tls::proof::{ClientProof, ServerProof};
//! use pool_tls::TunnelKey;
//!
//! let key = TunnelKey::generate().unwrap();
//! let (ns, nc) = (pool_tls::fresh_nonce().unwrap(), pool_tls::fresh_nonce().unwrap());
//! let server = ServerProof::new(&key, ns, b"0a0b0c0d", &[]);
//! let (client, response) = ClientProof::respond(&key, &server.challenge(), nc, b"0a0b0c0d", &[]);
//! let confirm = server.check_response(&response).unwrap();
//! client.check_confirm(&confirm).unwrap();
//! ```

use ring::hmac;

use crate::key::{fill_random, KeyError, TunnelKey};

/// Length of each side's nonce.
pub const NONCE_LEN: usize = 32;
/// Length of an HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;
/// Length of the server's challenge: `Ns`.
pub const CHALLENGE_LEN: usize = NONCE_LEN;
/// Length of the client's response: `Nc ‖ tag_c`.
pub const RESPONSE_LEN: usize = NONCE_LEN + TAG_LEN;
/// Length of the server's confirmation: `tag_s`.
pub const CONFIRM_LEN: usize = TAG_LEN;
/// Length of the TLS channel binding.
pub const BINDING_LEN: usize = 32;
/// The TLS exporter label of the channel binding (RFC 8446 §7.5; no context).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-nodepass-pool-proof";

const LABEL_CLIENT: &[u8] = b"nodepass-pool/proof/v1/client";
const LABEL_SERVER: &[u8] = b"nodepass-pool/proof/v1/server";

/// Why a proof failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The client's response does not verify.
    #[error(
        "the client's tunnel-key proof does not verify: a wrong key, a replay, \
         or not a tunnel client"
    )]
    BadResponse,

    /// The server's confirmation does not verify.
    #[error("the server's tunnel-key proof does not verify: a wrong key or not the tunnel server")]
    BadConfirm,

    /// An admission token ([`crate::admit`]) is malformed or does not verify.
    #[error("the admission token does not verify: a wrong key or not a tunnel client")]
    BadToken,

    /// The TLS session could not give a channel binding (handshake not finished).
    #[error("cannot bind the tunnel-key proof to the TLS session: {0}")]
    Binding(rustls::Error),
}

/// 32 fresh bytes from the crypto provider's secure random generator, for `Ns` or `Nc`.
pub fn fresh_nonce() -> Result<[u8; NONCE_LEN], KeyError> {
    let mut n = [0u8; NONCE_LEN];
    fill_random(&mut n)?;
    Ok(n)
}

/// The channel binding of a finished TLS session: [`BINDING_LEN`] bytes exported with
/// [`EXPORTER_LABEL`] and no context. Both ends of one session get the same bytes.
///
/// Takes a `rustls::ClientConnection` or `rustls::ServerConnection` (what
/// tokio-rustls's `get_ref().1` gives) or a `rustls::Connection`.
pub fn tls_binding<C>(conn: &C) -> Result<[u8; BINDING_LEN], ProofError>
where
    C: Exporter + ?Sized,
{
    conn.export(EXPORTER_LABEL)
}

/// A TLS session that can export keying material; see [`tls_binding`].
pub trait Exporter {
    /// Exports [`BINDING_LEN`] bytes under `label` with no context.
    fn export(&self, label: &[u8]) -> Result<[u8; BINDING_LEN], ProofError>;
}

impl<D> Exporter for rustls::ConnectionCommon<D> {
    fn export(&self, label: &[u8]) -> Result<[u8; BINDING_LEN], ProofError> {
        self.export_keying_material([0u8; BINDING_LEN], label, None)
            .map_err(ProofError::Binding)
    }
}

impl Exporter for rustls::ClientConnection {
    fn export(&self, label: &[u8]) -> Result<[u8; BINDING_LEN], ProofError> {
        (**self).export(label)
    }
}

impl Exporter for rustls::ServerConnection {
    fn export(&self, label: &[u8]) -> Result<[u8; BINDING_LEN], ProofError> {
        (**self).export(label)
    }
}

impl Exporter for rustls::Connection {
    fn export(&self, label: &[u8]) -> Result<[u8; BINDING_LEN], ProofError> {
        self.export_keying_material([0u8; BINDING_LEN], label, None)
            .map_err(ProofError::Binding)
    }
}

/// What both tags sign after their label: `Ns ‖ Nc ‖ id ‖ B`.
struct Transcript {
    key: hmac::Key,
    bytes: Vec<u8>,
}

impl Transcript {
    fn new(
        key: &hmac::Key,
        ns: &[u8; NONCE_LEN],
        nc: &[u8; NONCE_LEN],
        id: &[u8],
        binding: &[u8],
    ) -> Self {
        Self {
            key: key.clone(),
            bytes: [ns.as_slice(), nc, id, binding].concat(),
        }
    }

    fn labelled(&self, label: &[u8]) -> Vec<u8> {
        [label, &self.bytes].concat()
    }

    fn tag(&self, label: &[u8]) -> [u8; TAG_LEN] {
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(hmac::sign(&self.key, &self.labelled(label)).as_ref());
        out
    }

    fn verify(&self, label: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.key, &self.labelled(label), tag).is_ok()
    }
}

/// The server's side of one proof: made when the id is written, it gives the challenge
/// and checks the client's response once.
pub struct ServerProof {
    key: hmac::Key,
    ns: [u8; NONCE_LEN],
    id: Vec<u8>,
    binding: Vec<u8>,
}

impl std::fmt::Debug for ServerProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProof").finish_non_exhaustive()
    }
}

impl ServerProof {
    /// A proof for the connection whose id went out as `id_wire`, with the fresh nonce
    /// `ns` ([`fresh_nonce`]) and the channel binding (empty without TLS).
    pub fn new(key: &TunnelKey, ns: [u8; NONCE_LEN], id_wire: &[u8], binding: &[u8]) -> Self {
        Self {
            key: key.hmac_key().clone(),
            ns,
            id: id_wire.to_vec(),
            binding: binding.to_vec(),
        }
    }

    /// The challenge to write right after the id.
    pub fn challenge(&self) -> [u8; CHALLENGE_LEN] {
        self.ns
    }

    /// Checks the client's response; on success, the confirmation to write back.
    pub fn check_response(
        self,
        response: &[u8; RESPONSE_LEN],
    ) -> Result<[u8; CONFIRM_LEN], ProofError> {
        let (nc, tag) = response.split_at(NONCE_LEN);
        let mut nc_arr = [0u8; NONCE_LEN];
        nc_arr.copy_from_slice(nc);
        let t = Transcript::new(&self.key, &self.ns, &nc_arr, &self.id, &self.binding);
        if !t.verify(LABEL_CLIENT, tag) {
            return Err(ProofError::BadResponse);
        }
        Ok(t.tag(LABEL_SERVER))
    }
}

/// The client's side of one proof: made from the server's challenge, it gives the
/// response and checks the server's confirmation once.
pub struct ClientProof {
    transcript: Transcript,
}

impl std::fmt::Debug for ClientProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientProof").finish_non_exhaustive()
    }
}

impl ClientProof {
    /// Answers `challenge` for the connection whose id was read as `id_wire`, with the
    /// fresh nonce `nc` ([`fresh_nonce`]) and the channel binding (empty without TLS).
    pub fn respond(
        key: &TunnelKey,
        challenge: &[u8; CHALLENGE_LEN],
        nc: [u8; NONCE_LEN],
        id_wire: &[u8],
        binding: &[u8],
    ) -> (Self, [u8; RESPONSE_LEN]) {
        let transcript = Transcript::new(key.hmac_key(), challenge, &nc, id_wire, binding);
        let mut response = [0u8; RESPONSE_LEN];
        response[..NONCE_LEN].copy_from_slice(&nc);
        response[NONCE_LEN..].copy_from_slice(&transcript.tag(LABEL_CLIENT));
        (Self { transcript }, response)
    }

    /// Checks the server's confirmation: `Ok` means the server knows the key too.
    pub fn check_confirm(self, confirm: &[u8; CONFIRM_LEN]) -> Result<(), ProofError> {
        if self.transcript.verify(LABEL_SERVER, confirm) {
            Ok(())
        } else {
            Err(ProofError::BadConfirm)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &[u8] = b"0a0b0c0d";

    fn key(b: u8) -> TunnelKey {
        TunnelKey::from_bytes(&std::array::from_fn::<u8, 32, _>(|i| {
            b.wrapping_add(7 * i as u8)
        }))
        .unwrap()
    }

    fn seq<const N: usize>(start: u8) -> [u8; N] {
        std::array::from_fn(|i| start + i as u8)
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// One exchange: the response, and the server's answer to it.
    fn exchange(
        server_key: &TunnelKey,
        client_key: &TunnelKey,
        binding: &[u8],
    ) -> (ClientProof, Result<[u8; CONFIRM_LEN], ProofError>) {
        let server = ServerProof::new(server_key, seq(1), ID, binding);
        let (client, resp) =
            ClientProof::respond(client_key, &server.challenge(), seq(2), ID, binding);
        (client, server.check_response(&resp))
    }

    #[test]
    fn the_same_key_proves_both_ways() {
        for binding in [&[][..], &[9; BINDING_LEN]] {
            let (client, confirm) = exchange(&key(1), &key(1), binding);
            client.check_confirm(&confirm.unwrap()).unwrap();
        }
    }

    #[test]
    fn a_wrong_key_fails_both_ways() {
        // The client's key is wrong: the server refuses its response.
        let (_, confirm) = exchange(&key(1), &key(2), &[]);
        assert_eq!(confirm.unwrap_err(), ProofError::BadResponse);
        // The server's key is wrong (a fake server that relays a real server's
        // challenge and answer can only reach this point with a valid confirmation).
        let server = ServerProof::new(&key(1), seq(1), ID, &[]);
        let (client, resp) = ClientProof::respond(&key(1), &server.challenge(), seq(2), ID, &[]);
        let impostor = ServerProof::new(&key(2), seq(1), ID, &[]);
        assert!(impostor.check_response(&resp).is_err());
        let mut forged = server.check_response(&resp).unwrap();
        forged[0] ^= 1;
        assert_eq!(client.check_confirm(&forged), Err(ProofError::BadConfirm));
    }

    #[test]
    fn a_response_replayed_against_a_fresh_challenge_fails() {
        let k = key(1);
        let first = ServerProof::new(&k, seq(1), ID, &[]);
        let (_, resp) = ClientProof::respond(&k, &first.challenge(), seq(2), ID, &[]);
        assert!(first.check_response(&resp).is_ok());
        let second = ServerProof::new(&k, seq(3), ID, &[]);
        assert_eq!(second.check_response(&resp), Err(ProofError::BadResponse));
    }

    #[test]
    fn a_tag_is_bound_to_its_id_binding_and_direction() {
        let k = key(1);
        let b1 = [1u8; BINDING_LEN];
        let b2 = [2u8; BINDING_LEN];
        let ns = seq(1);
        let (_, resp) = ClientProof::respond(&k, &ns, seq(2), ID, &b1);
        // Another id, another binding, no binding: refused.
        for (id, b) in [(&b"0a0b0c0e"[..], &b1[..]), (ID, &b2), (ID, &[])] {
            assert!(ServerProof::new(&k, ns, id, b)
                .check_response(&resp)
                .is_err());
        }
        // Reflection: the server's tag, sent back as a client tag, is refused.
        let confirm = ServerProof::new(&k, ns, ID, &b1)
            .check_response(&resp)
            .unwrap();
        let mut reflected = resp;
        reflected[NONCE_LEN..].copy_from_slice(&confirm);
        assert!(ServerProof::new(&k, ns, ID, &b1)
            .check_response(&reflected)
            .is_err());
        // And a client tag is not a confirmation.
        let (client, resp) = ClientProof::respond(&k, &ns, seq(2), ID, &b1);
        let mut tag = [0u8; CONFIRM_LEN];
        tag.copy_from_slice(&resp[NONCE_LEN..]);
        assert!(client.check_confirm(&tag).is_err());
    }

    #[test]
    fn any_flipped_byte_fails() {
        let k = key(1);
        let (client, resp) = ClientProof::respond(&k, &seq(1), seq(2), ID, &[]);
        for i in 0..RESPONSE_LEN {
            let mut bad = resp;
            bad[i] ^= 0x80;
            assert!(ServerProof::new(&k, seq(1), ID, &[])
                .check_response(&bad)
                .is_err());
        }
        let confirm = ServerProof::new(&k, seq(1), ID, &[])
            .check_response(&resp)
            .unwrap();
        for i in 0..CONFIRM_LEN {
            let mut bad = confirm;
            bad[i] ^= 1;
            let (c, _) = ClientProof::respond(&k, &seq(1), seq(2), ID, &[]);
            assert!(c.check_confirm(&bad).is_err());
        }
        // Truncated: the missing bytes read as zeros (what a short buffer would hold).
        for keep in [0, 1, NONCE_LEN, RESPONSE_LEN - 1] {
            let mut short = [0u8; RESPONSE_LEN];
            short[..keep].copy_from_slice(&resp[..keep]);
            assert!(ServerProof::new(&k, seq(1), ID, &[])
                .check_response(&short)
                .is_err());
        }
        client.check_confirm(&confirm).unwrap();
    }

    /// Fixed inputs, exact bytes: the same vectors are in `PROTOCOL.md`, and were
    /// computed independently (Python's `hmac` module).
    #[test]
    fn test_vectors() {
        let k =
            TunnelKey::from_hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
                .unwrap();
        let ns: [u8; NONCE_LEN] = seq(0x20);
        let nc: [u8; NONCE_LEN] = seq(0x40);
        let b: [u8; BINDING_LEN] = seq(0x60);
        let cases: [(&[u8], &str, &str); 2] = [
            (
                &[],
                "f1883c5724a9c03023b7c512eaa7aceb73dad8b9cca1232334e0f634c42b3382",
                "81d88fe3abb20931258a0e50feda785794fadc2c08a25e9292064935f5139e9a",
            ),
            (
                &b,
                "b469506bb3a068f509346452fd8520ed5ea87ac7e3c971eb634e4edf617ac899",
                "617f63c3cc6eb33e54a6083830b442f84a9b8b186bcae3f0aa145a7653bd553e",
            ),
        ];
        for (binding, tag_c, tag_s) in cases {
            let server = ServerProof::new(&k, ns, ID, binding);
            let challenge = server.challenge();
            assert_eq!(
                challenge.to_vec(),
                unhex("202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f")
            );
            let (client, resp) = ClientProof::respond(&k, &challenge, nc, ID, binding);
            let want = unhex(&format!(
                "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f{tag_c}"
            ));
            assert_eq!(resp.to_vec(), want);
            let confirm = server.check_response(&resp).unwrap();
            assert_eq!(confirm.to_vec(), unhex(tag_s));
            client.check_confirm(&confirm).unwrap();
        }
    }

    #[test]
    fn a_tls_session_gives_both_ends_the_same_binding() {
        use std::sync::Arc;
        let tls = crate::ServerTls::self_signed(["localhost"]).unwrap();
        let mut server = rustls::ServerConnection::new(tls.config().unwrap()).unwrap();
        let cfg = crate::ClientTlsBuilder::new(crate::TlsMode::SelfSigned)
            .build()
            .unwrap()
            .unwrap();
        let mut client = rustls::ClientConnection::new(
            Arc::clone(&cfg),
            crate::server_name("localhost").unwrap(),
        )
        .unwrap();
        // Not before the handshake is done.
        assert!(matches!(tls_binding(&client), Err(ProofError::Binding(_))));
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        let b = tls_binding(&client).unwrap();
        assert_eq!(b, tls_binding(&server).unwrap());
        assert_eq!(b, tls_binding(&rustls::Connection::from(client)).unwrap());
        assert_ne!(b, [0; BINDING_LEN]);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_are_never_a_response(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, RESPONSE_LEN),
        ) {
            let mut resp = [0u8; RESPONSE_LEN];
            resp.copy_from_slice(&bytes);
            let server = ServerProof::new(&key(1), seq(1), ID, &[]);
            proptest::prop_assert!(server.check_response(&resp).is_err());
        }
    }
}
