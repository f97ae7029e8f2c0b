//! A shared tunnel key and the HMAC-SHA256 proofs made with it.

use sha2::{Digest, Sha256};

/// Length of an HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;

/// HMAC-SHA256 (RFC 2104) of the concatenation of `parts`.
///
/// ```
/// // RFC 4231, test case 2.
/// let tag = pool_tls::hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
/// assert_eq!(tag[..4], [0x5b, 0xdc, 0xc1, 0x46]);
/// ```
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_LEN] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Equality whose time does not depend on where the first difference is.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A secret both ends of a tunnel share. With it, every pooled connection proves the
/// key right after its id, so a stranger who reaches the tunnel port never enters the
/// server's pool.
///
/// ```
/// use pool_tls::TunnelKey;
/// let key = TunnelKey::new("s3cret");
/// let proof = key.proof(b"0a0b0c0d");
/// assert!(key.verify(b"0a0b0c0d", &proof));
/// assert!(!TunnelKey::new("guess").verify(b"0a0b0c0d", &proof));
/// ```
#[derive(Clone)]
pub struct TunnelKey(Vec<u8>);

impl std::fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelKey(..)")
    }
}

const LABEL_CONN: &[u8] = b"nodepass-pool/pool-conn/v1";

impl TunnelKey {
    /// A key from any bytes (a passphrase is fine: HMAC takes keys of any length).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self(secret.as_ref().to_vec())
    }

    /// The proof for the connection whose id went over the wire as `id_wire`.
    pub fn proof(&self, id_wire: &[u8]) -> [u8; TAG_LEN] {
        hmac_sha256(&self.0, &[LABEL_CONN, id_wire])
    }

    /// Whether `tag` is the proof for `id_wire`, in constant time.
    pub fn verify(&self, id_wire: &[u8], tag: &[u8]) -> bool {
        ct_eq(&self.proof(id_wire), tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn rfc4231_vectors() {
        // Test case 1.
        let tag = hmac_sha256(&[0x0b; 20], &[b"Hi There"]);
        assert_eq!(
            tag.to_vec(),
            unhex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        );
        // Test case 6: a key longer than the block.
        let tag = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            tag.to_vec(),
            unhex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
        );
    }

    #[test]
    fn a_proof_is_bound_to_its_id_and_key() {
        let k = TunnelKey::new("k");
        let p = k.proof(b"00000001");
        assert!(k.verify(b"00000001", &p));
        assert!(!k.verify(b"00000002", &p));
        assert!(!k.verify(b"00000001", &p[..31]));
        assert!(!TunnelKey::new("K").verify(b"00000001", &p));
    }
}
