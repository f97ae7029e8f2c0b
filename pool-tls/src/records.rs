//! What the TLS records already queued on an idle socket say.
//!
//! A raw `MSG_PEEK` on a TLS connection sees bytes, not meaning: pending bytes may be
//! payload, a session ticket, or the peer's `close_notify` before its FIN (what Go's
//! `tls.Conn.Close` sends). Every driver that probes an idle TLS connection needs the
//! same few steps, so they live here, beside the configs, for any runtime.

use std::io;

/// What the queued records said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// Nothing more queued: the connection is quiet.
    Idle,
    /// Payload is waiting, left for the next read (in rustls's plaintext buffer).
    Pending,
    /// The peer closed (`close_notify`, or end of stream behind the records).
    Closed,
    /// The records or the socket failed.
    Dead(io::ErrorKind),
}

/// Feeds the records already queued on a **non-blocking** socket to rustls (at most 8
/// reads) and reports what they said. Payload they carry stays in rustls's plaintext
/// buffer and is the first thing the next read returns: nothing is lost.
///
/// `sock` must not block: a tokio socket's `try_read`, or a std socket switched to
/// non-blocking for the call.
pub fn queued_records<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut dyn io::Read,
) -> RecordState {
    for _ in 0..8 {
        match conn.read_tls(sock) {
            Ok(0) => {
                // End of stream right behind the records: closed unless they held payload.
                return match conn.process_new_packets() {
                    Ok(st) if st.plaintext_bytes_to_read() > 0 => RecordState::Pending,
                    Ok(_) => RecordState::Closed,
                    Err(_) => RecordState::Dead(io::ErrorKind::InvalidData),
                };
            }
            Ok(_) => match conn.process_new_packets() {
                Err(_) => return RecordState::Dead(io::ErrorKind::InvalidData),
                Ok(st) if st.plaintext_bytes_to_read() > 0 => return RecordState::Pending,
                Ok(st) if st.peer_has_closed() => return RecordState::Closed,
                Ok(_) => {}
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return RecordState::Idle,
            // rustls refuses more input while its buffers are full: payload is waiting.
            Err(e) if e.kind() == io::ErrorKind::Other => return RecordState::Pending,
            Err(e) => return RecordState::Dead(e.kind()),
        }
    }
    RecordState::Pending
}
