//! Connection ids: the validated type, the two wire forms, and a byte-fed reader.
//!
//! The Go package v1.0.6 writes the id as 8 ASCII lowercase hex characters made from 4
//! random bytes ([`IdForm::Hex8`]). Later NodePass releases write the 4 raw bytes and use
//! their hex as the id ([`IdForm::Raw4`]). Either way the id a program sees is the same
//! 8-character string, so a [`ConnId`] is always stored in its hex form.

use std::fmt;
use std::str::FromStr;

use crate::error::IdError;

/// Length of an id in its hex form.
pub const ID_LEN: usize = 8;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A connection id: exactly 8 ASCII lowercase hex characters.
///
/// ```
/// use pool_core::ConnId;
/// let id = ConnId::from_random([0xde, 0xad, 0xbe, 0xef]);
/// assert_eq!(id.as_str(), "deadbeef");
/// assert_eq!("deadbeef".parse::<ConnId>().unwrap(), id);
/// assert!("DEADBEEF".parse::<ConnId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId([u8; ID_LEN]);

impl ConnId {
    /// The id made from 4 random bytes: their lowercase hex.
    pub fn from_random(bytes: [u8; 4]) -> Self {
        let mut out = [0u8; ID_LEN];
        for (i, b) in bytes.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        Self(out)
    }

    /// Validates 8 hex bytes as they came off the wire.
    pub fn from_hex_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        if bytes.len() != ID_LEN {
            return Err(IdError::BadLength(bytes.len()));
        }
        let mut out = [0u8; ID_LEN];
        for (at, &byte) in bytes.iter().enumerate() {
            if !is_lower_hex(byte) {
                return Err(IdError::BadByte { byte, at });
            }
            out[at] = byte;
        }
        Ok(Self(out))
    }

    /// The id as a string slice (always 8 lowercase hex characters).
    pub fn as_str(&self) -> &str {
        // Every constructor admits only ASCII hex digits.
        std::str::from_utf8(&self.0).unwrap_or("????????")
    }

    /// The id's 8 hex bytes.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// The 4 bytes whose hex this id is.
    pub fn to_raw(&self) -> [u8; 4] {
        let mut out = [0u8; 4];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(self.0[2 * i]) << 4) | nibble(self.0[2 * i + 1]);
        }
        out
    }
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn nibble(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        _ => b - b'a' + 10,
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({})", self.as_str())
    }
}

/// The id's 8 hex bytes read as one big-endian `u64`: a key that fits a machine word,
/// such as `epoll`'s user data, and comes back whole with [`TryFrom<u64>`].
///
/// ```
/// use pool_core::ConnId;
/// let id = ConnId::from_random([0xde, 0xad, 0xbe, 0xef]);
/// assert_eq!(ConnId::try_from(u64::from(id)), Ok(id));
/// assert!(ConnId::try_from(7u64).is_err());
/// ```
impl From<ConnId> for u64 {
    fn from(id: ConnId) -> Self {
        Self::from_be_bytes(id.0)
    }
}

/// The id whose [`u64`] form this is; anything else (bytes that are not lowercase hex)
/// is an [`IdError`].
impl TryFrom<u64> for ConnId {
    type Error = IdError;
    fn try_from(word: u64) -> Result<Self, IdError> {
        Self::from_hex_bytes(&word.to_be_bytes())
    }
}

impl FromStr for ConnId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::from_hex_bytes(s.as_bytes())
    }
}

/// How an id travels on the wire, chosen per pool; both ends must agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum IdForm {
    /// Go package v1.0.6: 8 ASCII lowercase hex bytes. The default.
    #[default]
    Hex8,
    /// Later NodePass releases: 4 raw bytes; the id is their hex.
    Raw4,
}

impl IdForm {
    /// How many bytes the id takes on the wire.
    pub const fn wire_len(self) -> usize {
        match self {
            Self::Hex8 => ID_LEN,
            Self::Raw4 => 4,
        }
    }

    /// The bytes to write for `id` in this form.
    ///
    /// ```
    /// use pool_core::{ConnId, IdForm};
    /// let id = ConnId::from_random([1, 2, 3, 4]);
    /// assert_eq!(IdForm::Hex8.encode(&id).as_ref(), b"01020304");
    /// assert_eq!(IdForm::Raw4.encode(&id).as_ref(), &[1, 2, 3, 4]);
    /// ```
    pub fn encode(self, id: &ConnId) -> WireId {
        let mut buf = [0u8; ID_LEN];
        match self {
            Self::Hex8 => buf.copy_from_slice(id.as_bytes()),
            Self::Raw4 => buf[..4].copy_from_slice(&id.to_raw()),
        }
        WireId {
            buf,
            len: self.wire_len() as u8,
        }
    }
}

/// An id encoded for the wire (see [`IdForm::encode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireId {
    buf: [u8; ID_LEN],
    len: u8,
}

impl AsRef<[u8]> for WireId {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// What one [`IdReader::feed`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fed {
    /// How many bytes of the input were taken. Never more than the id still needed.
    pub consumed: usize,
    /// The id, once complete.
    pub id: Option<ConnId>,
}

/// A byte-fed id reader: takes whatever arrived, keeps partial state, never takes a byte
/// past the id.
///
/// A driver reads into a buffer of at most [`remaining`](IdReader::remaining) bytes so
/// that no payload byte behind the id is ever taken off the socket.
///
/// ```
/// use pool_core::{IdForm, IdReader};
/// let mut r = IdReader::new(IdForm::Hex8);
/// assert_eq!(r.feed(b"0a0b").unwrap().id, None);
/// let fed = r.feed(b"0c0dPAYLOAD").unwrap();
/// assert_eq!(fed.consumed, 4);
/// assert_eq!(fed.id.unwrap().as_str(), "0a0b0c0d");
/// ```
#[derive(Clone, Debug)]
pub struct IdReader {
    form: IdForm,
    buf: [u8; ID_LEN],
    have: usize,
}

impl IdReader {
    /// A reader for one id in `form`.
    pub fn new(form: IdForm) -> Self {
        Self {
            form,
            buf: [0; ID_LEN],
            have: 0,
        }
    }

    /// Bytes still needed to complete the id.
    pub fn remaining(&self) -> usize {
        self.form.wire_len() - self.have
    }

    /// Feeds bytes; takes at most [`remaining`](Self::remaining) of them.
    ///
    /// A byte that cannot belong to an id (only in the hex form) is refused with
    /// [`IdError::BadByte`]; the reader is then spent.
    pub fn feed(&mut self, input: &[u8]) -> Result<Fed, IdError> {
        let take = input.len().min(self.remaining());
        for (i, &byte) in input[..take].iter().enumerate() {
            if self.form == IdForm::Hex8 && !is_lower_hex(byte) {
                return Err(IdError::BadByte {
                    byte,
                    at: self.have + i,
                });
            }
        }
        self.buf[self.have..self.have + take].copy_from_slice(&input[..take]);
        self.have += take;
        let id = (self.remaining() == 0).then(|| self.complete());
        Ok(Fed { consumed: take, id })
    }

    fn complete(&self) -> ConnId {
        match self.form {
            IdForm::Hex8 => ConnId(self.buf),
            IdForm::Raw4 => {
                ConnId::from_random([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refuses_uppercase_and_garbage() {
        let mut r = IdReader::new(IdForm::Hex8);
        assert_eq!(r.feed(b"ab").unwrap().consumed, 2);
        assert_eq!(r.feed(b"cZ"), Err(IdError::BadByte { byte: b'Z', at: 3 }));
        assert!(ConnId::from_hex_bytes(b"abc").is_err());
        assert!("0123456G".parse::<ConnId>().is_err());
    }

    #[test]
    fn raw_form_reads_four_bytes() {
        let mut r = IdReader::new(IdForm::Raw4);
        let fed = r.feed(&[0xff, 0x00, 0x10, 0x7f, 1, 2, 3]).unwrap();
        assert_eq!(fed.consumed, 4);
        assert_eq!(fed.id.unwrap().as_str(), "ff00107f");
    }

    proptest! {
        /// Every id survives the trip through its `u64` form, and a word that is no id
        /// is refused rather than turned into one.
        #[test]
        fn the_u64_form_round_trips(raw in any::<[u8; 4]>(), word in any::<u64>()) {
            let id = ConnId::from_random(raw);
            prop_assert_eq!(ConnId::try_from(u64::from(id)), Ok(id));
            match ConnId::try_from(word) {
                Ok(id) => prop_assert_eq!(u64::from(id), word),
                Err(_) => prop_assert!(!word.to_be_bytes().iter().all(|&b| is_lower_hex(b))),
            }
        }

        /// Whatever a peer sends, the reader answers an id or a typed error, takes no
        /// more than the id's length, and never panics.
        #[test]
        fn any_bytes_give_an_id_or_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..32), raw_form in any::<bool>()) {
            let form = if raw_form { IdForm::Raw4 } else { IdForm::Hex8 };
            let mut r = IdReader::new(form);
            match r.feed(&bytes) {
                Ok(fed) => {
                    prop_assert!(fed.consumed <= form.wire_len());
                    prop_assert_eq!(fed.id.is_some(), bytes.len() >= form.wire_len());
                    if let Some(id) = fed.id {
                        let wire = form.encode(&id);
                        prop_assert_eq!(wire.as_ref(), &bytes[..form.wire_len()]);
                    }
                }
                Err(IdError::BadByte { byte, at }) => {
                    prop_assert!(!raw_form);
                    prop_assert_eq!(bytes[at], byte);
                    prop_assert!(bytes[..at].iter().all(|b| is_lower_hex(*b)));
                }
                Err(e) => prop_assert!(false, "unexpected {e:?}"),
            }
        }

        #[test]
        fn chunked_feed_never_overreads(raw in any::<[u8; 4]>(), tail in proptest::collection::vec(any::<u8>(), 0..16), cuts in proptest::collection::vec(0usize..6, 0..12), raw_form in any::<bool>()) {
            let form = if raw_form { IdForm::Raw4 } else { IdForm::Hex8 };
            let id = ConnId::from_random(raw);
            let mut wire = form.encode(&id).as_ref().to_vec();
            let id_len = wire.len();
            wire.extend_from_slice(&tail);
            let mut r = IdReader::new(form);
            let mut pos = 0;
            let mut got = None;
            for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let end = pos + (*cut).min(wire.len() - pos);
                let fed = r.feed(&wire[pos..end]).unwrap();
                pos += fed.consumed;
                prop_assert!(pos <= id_len);
                if fed.id.is_some() { got = fed.id; break; }
            }
            prop_assert_eq!(got, Some(id));
            prop_assert_eq!(pos, id_len);
            prop_assert_eq!(id.as_str().parse::<ConnId>().unwrap(), id);
            prop_assert_eq!(ConnId::from_random(id.to_raw()), id);
        }
    }
}
