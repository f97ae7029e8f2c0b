//! The server's side of the HTTP upgrade, bounded: a request head of at most
//! [`MAX_HEAD`] bytes, read before the handshake deadline, parsed with `httparse`, and
//! answered `101` or with the status that says why not.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::error::HandshakeError;

/// The largest request head the server reads; a larger one is answered `431`.
pub const MAX_HEAD: usize = 8 * 1024;

/// Headers a request may carry at most.
const MAX_HEADERS: usize = 32;

/// An upgrade the server accepts: the key to answer.
#[derive(Debug)]
pub(crate) struct Upgrade {
    key: String,
}

impl Upgrade {
    /// The `101` answer.
    pub(crate) fn answer(&self) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(self.key.as_bytes())
        )
    }
}

/// A short plain-text answer that ends the connection.
pub(crate) fn status(code: u16) -> String {
    let reason = match code {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let extra = if code == 426 {
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    )
}

/// Reads one request head, never more than [`MAX_HEAD`] bytes; the answer status for
/// a failure comes with it.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<Vec<u8>, (HandshakeError, Option<u16>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        if room == 0 {
            return Err((HandshakeError::HeadTooLarge(MAX_HEAD), Some(431)));
        }
        let n = io
            .read(&mut chunk[..room])
            .await
            .map_err(|e| (HandshakeError::Io(e.to_string()), None))?;
        if n == 0 {
            return Err((
                HandshakeError::Io("closed before the request head".into()),
                None,
            ));
        }
        // Only the new bytes and the three before them can complete the end marker.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() >= 2 && buf[..2] == [0x16, 0x03] {
            // A TLS handshake record: a `wss://` client against a plain server.
            return Err((HandshakeError::ClientSpeaksTls, None));
        }
        if let Some(end) = find_end(&buf[from..]).map(|e| e + from) {
            if end != buf.len() {
                return Err((HandshakeError::EarlyData, Some(400)));
            }
            return Ok(buf);
        }
    }
}

fn find_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Checks a request head: a `GET` of `path` (any path when it is `/`, as the Go
/// server's mux) asking for a version-13 WebSocket upgrade.
pub(crate) fn parse(head: &[u8], path: &str) -> Result<Upgrade, (HandshakeError, u16)> {
    let not = |why| (HandshakeError::NotUpgrade(why), 400);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(not("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(not("too many headers")),
        Err(_) => return Err(not("malformed request head")),
    }
    if req.method != Some("GET") {
        return Err(not("method is not GET"));
    }
    if req.version != Some(1) {
        return Err(not("not HTTP/1.1"));
    }
    let want = req.path.unwrap_or("");
    if path != "/" && want != path {
        return Err((HandshakeError::NotUpgrade("unknown path"), 404));
    }
    let h = req.headers;
    let upgrade = header(h, "upgrade").is_some_and(|v| has_token(v, "websocket"));
    let connection = header(h, "connection").is_some_and(|v| has_token(v, "upgrade"));
    if !upgrade || !connection {
        return Err((HandshakeError::NotUpgrade("no Upgrade: websocket"), 426));
    }
    if header(h, "sec-websocket-version") != Some(b"13") {
        return Err((
            HandshakeError::NotUpgrade("WebSocket version is not 13"),
            426,
        ));
    }
    let key = header(h, "sec-websocket-key")
        .and_then(|k| std::str::from_utf8(k).ok())
        .map(str::trim)
        .filter(|k| k.len() == 24)
        .ok_or_else(|| not("no valid Sec-WebSocket-Key"))?;
    Ok(Upgrade { key: key.into() })
}

/// Writes `answer` and flushes it.
pub(crate) async fn send<S: AsyncWrite + Unpin>(io: &mut S, answer: &str) -> std::io::Result<()> {
    io.write_all(answer.as_bytes()).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn the_rfc_example_key_is_answered() {
        let up = parse(GOOD, "/").unwrap();
        assert!(up
            .answer()
            .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    }

    #[test]
    fn a_plain_get_is_not_an_upgrade() {
        let e = parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "/").unwrap_err();
        assert_eq!(e.1, 426);
        assert!(matches!(e.0, HandshakeError::NotUpgrade(_)));
        let e = parse(b"POST / HTTP/1.1\r\n\r\n", "/").unwrap_err();
        assert_eq!(e.1, 400);
    }

    #[test]
    fn a_configured_path_must_match() {
        let head = String::from_utf8(GOOD.to_vec())
            .unwrap()
            .replace("GET /", "GET /ws");
        assert!(parse(head.as_bytes(), "/ws").is_ok());
        assert_eq!(parse(GOOD, "/ws").unwrap_err().1, 404);
    }

    #[tokio::test]
    async fn a_head_past_the_limit_is_refused_without_reading_on() {
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD * 4));
        let mut io = &big[..];
        let e = read_head(&mut io).await.unwrap_err();
        assert_eq!(e, (HandshakeError::HeadTooLarge(MAX_HEAD), Some(431)));
        assert_eq!(big.len() - io.len(), MAX_HEAD, "read exactly the limit");
    }

    #[tokio::test]
    async fn a_tls_client_hello_is_named_at_once() {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        let mut io = &hello[..];
        assert_eq!(
            read_head(&mut io).await.unwrap_err(),
            (HandshakeError::ClientSpeaksTls, None)
        );
    }

    #[tokio::test]
    async fn bytes_after_the_head_are_refused() {
        let mut with = GOOD.to_vec();
        with.extend_from_slice(b"\x82\x00");
        let mut io = &with[..];
        assert_eq!(
            read_head(&mut io).await.unwrap_err().0,
            HandshakeError::EarlyData
        );
        let mut io = GOOD;
        assert_eq!(read_head(&mut io).await.unwrap(), GOOD);
    }
}
