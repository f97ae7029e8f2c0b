//! The control connection: its handshake, its messages, its deadlines.
//!
//! After TCP (and TLS in modes 1 and 2), in `TUNNEL.md`'s words:
//!
//! 1. server → client: [`MAGIC`] ‖ `Ns` (32 fresh random bytes), [`GREETING_LEN`] bytes;
//! 2. client → server: `S` ‖ `Nc` ‖ `tag_c` ([`SESSION_LEN`] + [`RESPONSE_LEN`]
//!    bytes), within [`Timeouts::answer`] of the greeting. `S` names the client
//!    process (drawn once when it starts, the same on every control connection it
//!    makes): a server that sees a new `S` knows the previous client process is gone,
//!    and closes every pooled connection it made, which nobody would ever accept;
//! 3. server → client: `tag_s` ([`CONFIRM_LEN`] bytes).
//!
//! The tags are `pool_tls::proof`'s: HMAC-SHA256 under the tunnel key over a direction
//! label, both nonces, the context [`CONTROL_CONTEXT`] ‖ `S` and the TLS channel
//! binding (empty in mode 0), compared in constant time by `ring`: `S` is proven with
//! the key, so nobody without it can make the server drop a client's connections. The
//! context has a length no pool id has (8 or 4 bytes), so a control tag is never a
//! pool-connection tag.
//!
//! The client proves first because the attacker most likely to exist dials the server:
//! such a stranger gets a nonce and nothing computed with the key.
//!
//! Then both sides send only heartbeats (`\n`); either side drops control after
//! [`Timeouts::dead_after`] without a byte from the other. Control carries no session:
//! the server starts each one in band, writing the pool's start header
//! ([`pool_tokio::START`]) and then the user's bytes on an idle pooled connection, and
//! the client's pool accepts it from the connection's readiness. The client writes
//! [`RECEIVED`] on it at once, then [`REACHED`] (or [`TARGET_FAILED`]) once it tried the
//! target.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pool_tls::admit::{check_token, make_token, Admitted, ADMIT_LEN};

use pool_tls::proof::{ClientProof, ServerProof, CONFIRM_LEN, NONCE_LEN, RESPONSE_LEN};
use pool_tls::TunnelKey;
use pool_tokio::SocketOptions;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::BoxError;

/// First bytes the server writes on a control connection (version 5: sessions start
/// in band with a [`KIND_TCP`] or [`KIND_UDP`] byte, and the client acknowledges each
/// with [`RECEIVED`] before it touches the target; a peer of another version is
/// refused by it, so that no server replays what a client of another version may have
/// delivered, nor sends it a kind byte it would take for the user's).
pub const MAGIC: &[u8; 4] = b"NPT5";
/// The first byte of a started session, right after the pool's start header: a TCP
/// session, the user's bytes follow.
pub const KIND_TCP: u8 = b'T';
/// The first byte of a started session: a UDP association, frames follow
/// ([`crate::udp`]). A client that does not serve this kind answers [`RECEIVED`] and
/// [`TARGET_FAILED`].
pub const KIND_UDP: u8 = b'U';
/// Length of the server's greeting.
pub const GREETING_LEN: usize = MAGIC.len() + NONCE_LEN;
pub use pool_tls::proof::{
    CONFIRM_LEN as CONTROL_CONFIRM_LEN, RESPONSE_LEN as CONTROL_RESPONSE_LEN,
};
/// What the control tags sign in place of a pool connection's id (followed by the
/// client's session tag).
pub const CONTROL_CONTEXT: &[u8] = b"nodepass-tunnel/control/v1";
/// Length of the client's session tag `S`.
pub const SESSION_LEN: usize = 16;

/// A client process's session tag: drawn once, sent on every control connection.
pub type Session = [u8; SESSION_LEN];

/// A fresh session tag from the system's secure generator.
pub fn fresh_session() -> Result<Session, BoxError> {
    let n = pool_tls::fresh_nonce()?;
    let mut s = [0u8; SESSION_LEN];
    s.copy_from_slice(&n[..SESSION_LEN]);
    Ok(s)
}

fn control_context(session: &Session) -> Vec<u8> {
    [CONTROL_CONTEXT, session].concat()
}
/// The byte the client writes on a started pooled connection as soon as its pool
/// accepted it (start header read), before it does anything else: before the target
/// connect, before reading a byte of the user's. From it on, only that client may
/// deliver the user's bytes: the server replays its copy on another pooled connection
/// only when this one closed or broke *without* this byte, and never on a timer. It
/// costs no round trip: the client writes it and goes on to the target at once.
pub const RECEIVED: u8 = 0x01;
/// The byte the client writes after [`RECEIVED`] once it reached the target. It
/// travels just ahead of the target's first bytes: the client writes it in the same
/// write as the target's first answer when that comes within [`REACHED_WITH_ANSWER`],
/// else alone. The server expects it as the first byte of the download, within
/// [`Timeouts::outcome`] of the receipt. Not a proof: the connection proved the key
/// when it entered the pool.
pub const REACHED: u8 = 0x06;
/// How long the client holds [`REACHED`] back for the target's first answer to go with
/// it: most targets answer a request within it, and the server then wakes once for the
/// outcome and the answer. The user's bytes go on to the target at once.
pub const REACHED_WITH_ANSWER: Duration = Duration::from_millis(10);
/// The byte the client writes after [`RECEIVED`] instead of [`REACHED`] when the target
/// cannot be reached within [`Timeouts::io`]: the server resets the user at once and
/// retries nothing.
pub const TARGET_FAILED: u8 = 0x15;
/// What the server allows beyond the client's target-connect deadline for the outcome
/// ([`REACHED`] or [`TARGET_FAILED`]) to arrive: the one-way trip back and scheduling.
pub const OUTCOME_SLACK: Duration = Duration::from_secs(1);

/// Deadlines of the tunnel (the pools keep their own, set in [`crate::server`] and
/// [`crate::client`]).
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// A control candidate's TLS handshake (mode 0: nothing).
    pub tls: Duration,
    /// From the greeting to the client's full answer.
    pub answer: Duration,
    /// How long a user waits for a control connection before being closed.
    pub control_wait: Duration,
    /// How long the server waits for the client's [`RECEIVED`] on a pooled connection
    /// it started. None in time: the user is reset, and nothing is replayed (the client
    /// may have read the bytes).
    pub ack: Duration,
    /// One `get` from either pool.
    pub get: Duration,
    /// Heartbeat period on control, both ways.
    pub heartbeat: Duration,
    /// Silence after which either side drops control.
    pub dead_after: Duration,
    /// Client: connecting to the control port and to the target; writes on control.
    /// The server derives its wait for a session's outcome from it
    /// ([`outcome`](Self::outcome)), so both sides must use the same value.
    pub io: Duration,
    /// Client: first and longest pause between control reconnects.
    pub backoff: (Duration, Duration),
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tls: Duration::from_secs(3),
            answer: Duration::from_secs(1),
            control_wait: Duration::from_secs(1),
            ack: Duration::from_secs(3),
            get: Duration::from_secs(2),
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(3),
            io: Duration::from_secs(5),
            backoff: (Duration::from_millis(100), Duration::from_secs(2)),
        }
    }
}

impl Timeouts {
    /// How long the server waits, after the client's [`RECEIVED`], for [`REACHED`] or
    /// [`TARGET_FAILED`]: the client's target connect ([`io`](Self::io)), the time it
    /// holds [`REACHED`] for the answer, and [`OUTCOME_SLACK`]. Past it the user is
    /// reset; nothing is replayed.
    pub fn outcome(&self) -> Duration {
        self.io + REACHED_WITH_ANSWER + OUTCOME_SLACK
    }

    /// Socket options of a control connection: keep-alive probes every second after
    /// one idle second, three unanswered probes or unacknowledged data for
    /// `dead_after` drop it. The heartbeats decide first; these catch a peer whose
    /// host vanished while a write is pending.
    pub fn control_socket(&self) -> SocketOptions {
        SocketOptions {
            keepalive: Some(Duration::from_secs(1)),
            keepalive_interval: Some(Duration::from_secs(1)),
            keepalive_retries: Some(3),
            nodelay: true,
            user_timeout: Some(self.dead_after.max(Duration::from_secs(1))),
        }
    }
}

/// The client's admission token, written first on a control connection, before TLS:
/// the server sorts the connection from strangers' by it, without a round trip
/// ([`pool_tls::admit`]). Stamped with this machine's clock.
pub async fn send_token<S: AsyncWrite + Unpin>(
    io: &mut S,
    key: &TunnelKey,
) -> Result<(), BoxError> {
    let token = make_token(key, CONTROL_CONTEXT, unix_ms())?;
    io.write_all(&token).await?;
    Ok(())
}

/// Reads and checks a control connection's admission token within `within`; the
/// clock and replay checks are the caller's ([`pool_tls::admit::ReplayWindow`]).
pub async fn read_token<S: AsyncRead + Unpin>(
    io: &mut S,
    key: &TunnelKey,
    within: Duration,
) -> Result<Admitted, BoxError> {
    let mut token = [0u8; ADMIT_LEN];
    match timeout(within, io.read_exact(&mut token)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("no admission token: {e}").into()),
        Err(_) => return Err(format!("no admission token within {within:?}").into()),
    }
    Ok(check_token(key, CONTROL_CONTEXT, &token)?)
}

/// This machine's clock in ms since the Unix epoch (0 before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The server's half of the handshake, after TLS. `binding` is the TLS channel binding
/// (empty in mode 0). `Ok` when the client proved the key, with the session tag it
/// proved; the confirmation is sent.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    key: &TunnelKey,
    binding: &[u8],
    answer_within: Duration,
) -> Result<Session, BoxError> {
    let ns = pool_tls::fresh_nonce()?;
    let mut hello = [0u8; GREETING_LEN];
    hello[..MAGIC.len()].copy_from_slice(MAGIC);
    hello[MAGIC.len()..].copy_from_slice(&ns);
    io.write_all(&hello).await?;
    io.flush().await?;
    let mut answer = [0u8; SESSION_LEN + RESPONSE_LEN];
    match timeout(answer_within, io.read_exact(&mut answer)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(format!("short answer: {e}").into()),
        Err(_) => return Err(format!("no answer within {answer_within:?}").into()),
    }
    let (session, response) = answer.split_at(SESSION_LEN);
    let session: Session = session.try_into().map_err(|_| "short session tag")?;
    let response: &[u8; RESPONSE_LEN] = response.try_into().map_err(|_| "short answer")?;
    let proof = ServerProof::new(key, ns, &control_context(&session), binding);
    let confirm = proof
        .check_response(response)
        .map_err(|_| "wrong tunnel key (or not a tunnel client)")?;
    io.write_all(&confirm).await?;
    io.flush().await?;
    Ok(session)
}

/// The client's half of the handshake, after TLS, for the client process whose tag is
/// `session`. `Ok` when the server proved the key.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    key: &TunnelKey,
    binding: &[u8],
    session: &Session,
) -> Result<(), BoxError> {
    let mut hello = [0u8; GREETING_LEN];
    io.read_exact(&mut hello)
        .await
        .map_err(|e| format!("no greeting: {e}"))?;
    if &hello[..MAGIC.len()] != MAGIC {
        return Err("not a tunnel control port (bad greeting)".into());
    }
    let mut ns = [0u8; NONCE_LEN];
    ns.copy_from_slice(&hello[MAGIC.len()..]);
    let nc = pool_tls::fresh_nonce()?;
    let context = control_context(session);
    let (proof, response) = ClientProof::respond(key, &ns, nc, &context, binding);
    io.write_all(&[session.as_slice(), &response].concat())
        .await?;
    io.flush().await?;
    let mut confirm = [0u8; CONFIRM_LEN];
    io.read_exact(&mut confirm)
        .await
        .map_err(|_| "refused by the server: wrong tunnel key?")?;
    proof
        .check_confirm(&confirm)
        .map_err(|_| "the server does not know the tunnel key")?;
    Ok(())
}

/// Splits `host:port` (IPv6 in brackets) into host and port.
pub fn split_host_port(s: &str) -> Result<(&str, u16), BoxError> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("`{s}` is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{s}`: bad port `{port}`"))?;
    if host.is_empty() {
        return Err(format!("`{s}`: empty host").into());
    }
    Ok((host, port))
}

/// The default control address: the tunnel host, the tunnel port plus one.
pub fn default_control(tunnel: &str) -> Result<String, BoxError> {
    let (host, port) = split_host_port(tunnel)?;
    let next = port.checked_add(1).filter(|_| port != 0).ok_or_else(|| {
        format!("tunnel port {port} has no `port + 1` control port: give --control ADDR")
    })?;
    Ok(format!("{host}:{next}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> TunnelKey {
        TunnelKey::from_bytes(&std::array::from_fn::<u8, 32, _>(|i| {
            b.wrapping_add(7 * i as u8)
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn the_same_key_passes_a_wrong_one_fails_both_ways() {
        for (ks, kc, ok) in [(1, 1, true), (1, 2, false)] {
            let (mut a, mut b) = tokio::io::duplex(256);
            let (ks, kc) = (key(ks), key(kc));
            let server = async move {
                // A refused client sees the server close: nothing more is sent.
                let r = server_handshake(&mut a, &ks, &[], Duration::from_secs(1)).await;
                drop(a);
                r
            };
            let tag = fresh_session().unwrap();
            let (s, c) = tokio::join!(server, client_handshake(&mut b, &kc, &[], &tag));
            assert_eq!(
                s.as_ref().ok(),
                ok.then_some(&tag),
                "the proven tag comes out"
            );
            assert_eq!(c.is_ok(), ok);
        }
    }

    #[tokio::test]
    async fn a_session_tag_changed_on_the_way_fails_the_proof() {
        let (mut a, mut b) = tokio::io::duplex(256);
        let k = key(1);
        let server = server_handshake(&mut a, &k, &[], Duration::from_secs(1));
        let forger = async {
            // Answers with the key for one tag, then sends another in its place.
            let mut hello = [0u8; GREETING_LEN];
            b.read_exact(&mut hello).await.unwrap();
            let ns: [u8; NONCE_LEN] = hello[MAGIC.len()..].try_into().unwrap();
            let (honest, other) = ([1u8; SESSION_LEN], [2u8; SESSION_LEN]);
            let nc = pool_tls::fresh_nonce().unwrap();
            let (_, response) = ClientProof::respond(&k, &ns, nc, &control_context(&honest), &[]);
            b.write_all(&[other.as_slice(), &response].concat())
                .await
                .unwrap();
        };
        let (r, ()) = tokio::join!(server, forger);
        assert!(r.is_err(), "the tag is proven with the key");
    }

    #[tokio::test]
    async fn a_silent_client_is_refused_after_the_answer_deadline() {
        let (mut a, mut b) = tokio::io::duplex(256);
        let start = std::time::Instant::now();
        let r = server_handshake(&mut a, &key(1), &[], Duration::from_millis(200)).await;
        assert!(r.unwrap_err().to_string().contains("no answer"));
        assert!(start.elapsed() < Duration::from_secs(1));
        // It got the greeting and nothing else.
        let mut got = Vec::new();
        drop(a);
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), GREETING_LEN);
    }

    #[test]
    fn the_control_context_is_no_pool_id_length() {
        assert!(![4, 8].contains(&control_context(&[0; SESSION_LEN]).len()));
        assert_eq!(CONTROL_RESPONSE_LEN, 2 * NONCE_LEN);
        assert_eq!(CONTROL_CONFIRM_LEN, 32);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            default_control("example.org:10101").unwrap(),
            "example.org:10102"
        );
        assert_eq!(default_control("[::1]:80").unwrap(), "[::1]:81");
        assert!(default_control("h:65535").is_err());
        assert!(default_control("no-port").is_err());
    }
}
