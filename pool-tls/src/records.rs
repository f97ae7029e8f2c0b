//! What the TLS records already queued on an idle socket say.
//!
//! A raw `MSG_PEEK` on a TLS connection sees bytes, not meaning: pending bytes may be
//! payload, a session ticket, or the peer's `close_notify` before its FIN (what Go's
//! `tls.Conn.Close` sends). Every driver that probes an idle TLS connection needs the
//! same few steps, so they live here, beside the configs, for any runtime.

use std::io;

use pool_core::Liveness;

/// Feeds the records already queued on a **non-blocking** socket to rustls (at most 8
/// reads) and reports what they said. Payload they carry stays in rustls's plaintext
/// buffer and is the first thing the next read returns: nothing is lost.
///
/// `sock` must not block: a tokio socket's `try_read`, or a std socket switched to
/// non-blocking for the call.
pub fn queued_records<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut dyn io::Read,
) -> Liveness {
    for _ in 0..8 {
        match conn.read_tls(sock) {
            Ok(0) => {
                // End of stream right behind the records: closed unless they held payload.
                return match conn.process_new_packets() {
                    Ok(st) if st.plaintext_bytes_to_read() > 0 => Liveness::Pending,
                    Ok(_) => Liveness::Closed,
                    Err(_) => Liveness::Dead(io::ErrorKind::InvalidData),
                };
            }
            Ok(_) => match conn.process_new_packets() {
                Err(_) => return Liveness::Dead(io::ErrorKind::InvalidData),
                Ok(st) if st.plaintext_bytes_to_read() > 0 => return Liveness::Pending,
                Ok(st) if st.peer_has_closed() => return Liveness::Closed,
                Ok(_) => {}
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Liveness::Idle,
            // rustls refuses more input while its buffers are full: payload is waiting.
            Err(e) if e.kind() == io::ErrorKind::Other => return Liveness::Pending,
            Err(e) => return Liveness::Dead(e.kind()),
        }
    }
    Liveness::Pending
}
