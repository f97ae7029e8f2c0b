//! Every message of the tunnel on the wire, in one place: its bytes, who sends it and
//! when. `WIRE.md` beside this crate is the same list for a reader without the code,
//! with what a bad message gets.
//!
//! | port | message | bytes | from | constant |
//! |---|---|---|---|---|
//! | pool | id | 8 (hex) or 4 | server, after TLS | [`ID_LEN`] |
//! | pool | key proof: challenge, response, confirm | 32, 64, 32 | server, client, server | `pool_tls::proof` |
//! | pool | start header | 4 | server, on an idle pooled connection | [`START`] |
//! | pool | session start: kind, service, user, public address | 2 + name + 2 × (1 + 4 or 16 + 2) | server, after the start header | [`SessionStart`] |
//! | pool | receipt | 1 | client, at once | [`RECEIVED`] |
//! | pool | outcome | 1 | client, after the target connect | [`REACHED`], [`TARGET_FAILED`], [`NO_SERVICE`], [`WRONG_KIND`] |
//! | control | admission token | 60 | client, before TLS | [`ADMIT_LEN`], [`ADMIT_MAGIC`] |
//! | control | greeting | 36 | server, after TLS | [`MAGIC`], [`GREETING_LEN`] |
//! | control | answer | 80 | client | [`SESSION_LEN`], [`CONTROL_RESPONSE_LEN`] |
//! | control | confirm | 32 | server | [`CONTROL_CONFIRM_LEN`] |
//! | control | heartbeat | 1 | both, every second | [`HEARTBEAT`] |
//!
//! ## Control
//!
//! After TCP (and TLS in modes 1 and 2), in `TUNNEL.md`'s words:
//!
//! 1. server → client: [`MAGIC`] ‖ `Ns` (32 fresh random bytes), [`GREETING_LEN`] bytes;
//! 2. client → server: `S` ‖ `Nc` ‖ `tag_c` ([`SESSION_LEN`] + [`CONTROL_RESPONSE_LEN`]
//!    bytes), within [`Timeouts::answer`](crate::config::Timeouts::answer) of the
//!    greeting. `S` names the client process (drawn once when it starts, the same on
//!    every control connection it makes): a server that sees a new `S` knows the
//!    previous client process is gone, and closes every pooled connection it made,
//!    which nobody would ever accept;
//! 3. server → client: `tag_s` ([`CONTROL_CONFIRM_LEN`] bytes).
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
//! Then both sides send only heartbeats ([`HEARTBEAT`]); either side drops control
//! after [`Timeouts::dead_after`](crate::config::Timeouts::dead_after) without a byte
//! from the other.
//!
//! ## Sessions
//!
//! Control carries no session: the server starts each one in band, writing the pool's
//! start header ([`START`]), the [`SessionStart`] (which service, which user) and then
//! the user's bytes on an idle pooled connection, and the client's pool accepts it from
//! the connection's readiness. The client writes [`RECEIVED`] on it at once, then
//! [`REACHED`] (or [`TARGET_FAILED`], or [`NO_SERVICE`]) once it tried the target.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::net::{IpAddr, SocketAddr};

pub use pool_core::ID_LEN;
use pool_tls::admit::{check_token, make_token, Admitted};
pub use pool_tls::admit::{ADMIT_LEN, ADMIT_MAGIC};
use pool_tls::proof::{ClientProof, ServerProof, CONFIRM_LEN, NONCE_LEN, RESPONSE_LEN};
use pool_tls::TunnelKey;
pub use pool_tokio::START;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::transport::Transport;
use crate::BoxError;

/// First bytes the server writes on a control connection: `NPT` and the version of
/// the tunnel's wire (7: both sides of the control handshake name their transport;
/// 6: each session's start names its kind, TCP or UDP; 5: it names
/// its service and its user; 4: the client acknowledges each session with [`RECEIVED`]
/// before it touches the target). A client refuses a server of another version, and a
/// server never starts a session for a client that has no control connection, so the
/// two never pair: no server replays what a client of another version may have
/// delivered, and no client reads a start it cannot parse.
pub const MAGIC: &[u8; 4] = b"NPT7";
/// The heartbeat, both ways on control, and the only byte control carries after the
/// handshake.
pub const HEARTBEAT: u8 = b'\n';
/// The first byte of a [`SessionStart`] of a TCP service: the user's bytes follow the
/// start.
pub const KIND_TCP: u8 = b'T';
/// The first byte of a [`SessionStart`] of a UDP service: an association, whose frames
/// follow the start ([`crate::udp`]).
pub const KIND_UDP: u8 = b'U';
/// Length of the server's greeting: [`MAGIC`], the transport's byte, the nonce.
pub const GREETING_LEN: usize = MAGIC.len() + 1 + NONCE_LEN;
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

fn control_context(session: &Session, transport: Transport) -> Vec<u8> {
    [CONTROL_CONTEXT, session, &[transport.wire()]].concat()
}

/// The words for two sides on different transports.
fn transport_mismatch(server: Transport, client: Transport) -> String {
    format!(
        "the server runs the tunnel over {server}, the client over {client}: give the same \
         --transport (or `transport =`) on both sides"
    )
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
/// [`Timeouts::outcome`](crate::config::Timeouts::outcome) of the receipt. Not a proof: the connection proved the key
/// when it entered the pool.
pub const REACHED: u8 = 0x06;
/// How long the client holds [`REACHED`] back for the target's first answer to go with
/// it: most targets answer a request within it, and the server then wakes once for the
/// outcome and the answer. The user's bytes go on to the target at once.
pub const REACHED_WITH_ANSWER: Duration = Duration::from_millis(10);
/// The byte the client writes after [`RECEIVED`] instead of [`REACHED`] when the target
/// cannot be reached within [`Timeouts::io`](crate::config::Timeouts::io): the server resets the user at once and
/// retries nothing.
pub const TARGET_FAILED: u8 = 0x15;
/// What the server allows beyond the client's target-connect deadline for the outcome
/// ([`REACHED`] or [`TARGET_FAILED`]) to arrive: the one-way trip back and scheduling.
pub const OUTCOME_SLACK: Duration = Duration::from_secs(1);
/// The byte the client writes after [`RECEIVED`] instead of [`REACHED`] when it has no
/// service of the name the session's start gave (a service the server has and the
/// client does not, as during a reload of one side): the server resets the user at
/// once and retries nothing.
pub const NO_SERVICE: u8 = 0x18;
/// The byte the client writes after [`RECEIVED`] instead of [`REACHED`] when its
/// service of the start's name is of another kind (TCP at one side, UDP at the other,
/// as when the two configurations disagree): the server resets the user (or drops the
/// association) at once and retries nothing; both sides count it.
pub const WRONG_KIND: u8 = 0x1a;

/// Family bytes of an address in a [`SessionStart`].
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// What the server writes on a pooled connection right after the pool's start header
/// ([`START`]) and before the user's bytes: which service the session is for, and the
/// user's and the public port's addresses (for a PROXY protocol header at the target).
///
/// Bytes: the kind ([`KIND_TCP`] or [`KIND_UDP`]) ‖ the name's length (1 to
/// [`SERVICE_NAME_MAX`](crate::config::SERVICE_NAME_MAX)) ‖ the name (ASCII) ‖ the
/// user's address ‖ the public address, each address a family byte (4 or 6) ‖ its 4 or
/// 16 bytes ‖ the port (2 bytes, big endian): 16 bytes and the name for IPv4, 40 and
/// the name for IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionStart {
    /// The service's kind: the client checks it against its service of that name.
    pub kind: crate::config::ServiceProtocol,
    /// The service's name.
    pub service: String,
    /// Where the user connected from.
    pub user: SocketAddr,
    /// The public address the user connected to.
    pub public: SocketAddr,
}

/// Why a [`SessionStart`] could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The connection ended or failed first.
    #[error("session start: {0}")]
    Io(#[from] std::io::Error),
    /// A name of length 0 or past the longest.
    #[error("session start: a service name of {0} bytes")]
    NameLength(u8),
    /// A name with a byte a service name never holds.
    #[error("session start: a service name that is not one")]
    Name,
    /// An address family other than 4 and 6.
    #[error("session start: address family {0}")]
    Family(u8),
    /// A kind byte other than [`KIND_TCP`] and [`KIND_UDP`].
    #[error("session start: kind {0:#04x}")]
    Kind(u8),
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(FAMILY_V4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(FAMILY_V6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

async fn read_addr<R: AsyncRead + Unpin>(r: &mut R) -> Result<SocketAddr, StartError> {
    let ip = match r.read_u8().await? {
        FAMILY_V4 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).await?;
            IpAddr::from(b)
        }
        FAMILY_V6 => {
            let mut b = [0u8; 16];
            r.read_exact(&mut b).await?;
            IpAddr::from(b)
        }
        other => return Err(StartError::Family(other)),
    };
    Ok(SocketAddr::new(ip, r.read_u16().await?))
}

impl SessionStart {
    /// Its bytes. The name must pass [`crate::config::check_name`] (the server's
    /// configuration is checked so).
    pub fn encode(&self) -> Vec<u8> {
        let name = self.service.as_bytes();
        let mut out = Vec::with_capacity(2 + name.len() + 2 * 19);
        out.push(match self.kind {
            crate::config::ServiceProtocol::Tcp => KIND_TCP,
            crate::config::ServiceProtocol::Udp => KIND_UDP,
        });
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name);
        put_addr(&mut out, self.user);
        put_addr(&mut out, self.public);
        out
    }

    /// Reads one from `r`, never a byte past it. The caller bounds the time.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, StartError> {
        let kind = match r.read_u8().await? {
            KIND_TCP => crate::config::ServiceProtocol::Tcp,
            KIND_UDP => crate::config::ServiceProtocol::Udp,
            other => return Err(StartError::Kind(other)),
        };
        let len = r.read_u8().await?;
        if len == 0 || usize::from(len) > crate::config::SERVICE_NAME_MAX {
            return Err(StartError::NameLength(len));
        }
        let mut name = vec![0u8; usize::from(len)];
        r.read_exact(&mut name).await?;
        let service = String::from_utf8(name).map_err(|_| StartError::Name)?;
        crate::config::check_name(&service).map_err(|_| StartError::Name)?;
        let user = read_addr(r).await?;
        let public = read_addr(r).await?;
        Ok(Self {
            kind,
            service,
            user,
            public,
        })
    }
}

/// A plain or TLS control stream.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
/// A boxed control stream.
pub type BoxIo = Box<dyn Io>;

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

/// The server's half of the handshake over TCP ([`server_handshake_over`]).
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    key: &TunnelKey,
    binding: &[u8],
    answer_within: Duration,
) -> Result<Session, BoxError> {
    server_handshake_over(io, key, binding, answer_within, Transport::Tcp).await
}

/// The server's half of the handshake, after TLS, for a tunnel over `transport`.
/// `binding` is the TLS channel binding (empty in mode 0). `Ok` when the client proved
/// the key, with the session tag it proved; the confirmation is sent. A client on
/// another transport is refused with both named.
pub async fn server_handshake_over<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    key: &TunnelKey,
    binding: &[u8],
    answer_within: Duration,
    transport: Transport,
) -> Result<Session, BoxError> {
    let ns = pool_tls::fresh_nonce()?;
    let mut hello = [0u8; GREETING_LEN];
    hello[..MAGIC.len()].copy_from_slice(MAGIC);
    hello[MAGIC.len()] = transport.wire();
    hello[MAGIC.len() + 1..].copy_from_slice(&ns);
    io.write_all(&hello).await?;
    io.flush().await?;
    let mut answer = [0u8; 1 + SESSION_LEN + RESPONSE_LEN];
    let read = timeout(answer_within, async {
        // The transport's byte first: a client on another one sends only that.
        io.read_exact(&mut answer[..1]).await?;
        match Transport::from_wire(answer[0]) {
            Some(t) if t == transport => {}
            Some(t) => return Ok(Err(transport_mismatch(transport, t))),
            None => return Ok(Err("not a tunnel client (unknown transport)".into())),
        }
        io.read_exact(&mut answer[1..]).await.map(|_| Ok(()))
    });
    match read.await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(why))) => return Err(why.into()),
        Ok(Err(e)) => return Err(format!("short answer: {e}").into()),
        Err(_) => return Err(format!("no answer within {answer_within:?}").into()),
    }
    let (session, response) = answer[1..].split_at(SESSION_LEN);
    let session: Session = session.try_into().map_err(|_| "short session tag")?;
    let response: &[u8; RESPONSE_LEN] = response.try_into().map_err(|_| "short answer")?;
    let proof = ServerProof::new(key, ns, &control_context(&session, transport), binding);
    let confirm = proof
        .check_response(response)
        .map_err(|_| "wrong tunnel key (or not a tunnel client)")?;
    io.write_all(&confirm).await?;
    io.flush().await?;
    Ok(session)
}

/// The client's half of the handshake over TCP ([`client_handshake_over`]).
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    key: &TunnelKey,
    binding: &[u8],
    session: &Session,
) -> Result<(), BoxError> {
    client_handshake_over(io, key, binding, session, Transport::Tcp).await
}

/// The client's half of the handshake, after TLS, for the client process whose tag is
/// `session`, on a tunnel over `transport`. `Ok` when the server proved the key. A
/// server on another transport is refused with both named, before anything computed
/// with the key is sent.
pub async fn client_handshake_over<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    key: &TunnelKey,
    binding: &[u8],
    session: &Session,
    transport: Transport,
) -> Result<(), BoxError> {
    let mut hello = [0u8; GREETING_LEN];
    let mut head = [0u8; MAGIC.len()];
    io.read_exact(&mut head)
        .await
        .map_err(|e| format!("no greeting: {e}"))?;
    if head[..3] == MAGIC[..3] && head[3] != MAGIC[3] {
        return Err(format!(
            "the server speaks the tunnel's wire version {}, this client version {}: run \
             the same release on both sides",
            char::from(head[3]),
            char::from(MAGIC[3])
        )
        .into());
    }
    if &head != MAGIC {
        return Err("not a tunnel control port (bad greeting)".into());
    }
    io.read_exact(&mut hello[MAGIC.len()..])
        .await
        .map_err(|e| format!("no greeting: {e}"))?;
    match Transport::from_wire(hello[MAGIC.len()]) {
        Some(t) if t == transport => {}
        Some(t) => {
            // This side's transport alone, so that the server names both too.
            let _ = io.write_all(&[transport.wire()]).await;
            let _ = io.flush().await;
            return Err(transport_mismatch(t, transport).into());
        }
        None => return Err("not a tunnel control port (unknown transport)".into()),
    }
    let mut ns = [0u8; NONCE_LEN];
    ns.copy_from_slice(&hello[MAGIC.len() + 1..]);
    let nc = pool_tls::fresh_nonce()?;
    let context = control_context(session, transport);
    let (proof, response) = ClientProof::respond(key, &ns, nc, &context, binding);
    io.write_all(&[&[transport.wire()][..], session.as_slice(), &response].concat())
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
            let ns: [u8; NONCE_LEN] = hello[MAGIC.len() + 1..].try_into().unwrap();
            let (honest, other) = ([1u8; SESSION_LEN], [2u8; SESSION_LEN]);
            let nc = pool_tls::fresh_nonce().unwrap();
            let t = Transport::Tcp;
            let (_, response) =
                ClientProof::respond(&k, &ns, nc, &control_context(&honest, t), &[]);
            b.write_all(&[&[t.wire()][..], other.as_slice(), &response].concat())
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

    #[tokio::test]
    async fn a_server_of_another_wire_version_is_refused_by_name() {
        let (mut a, mut b) = tokio::io::duplex(256);
        let old = async move {
            let mut hello = [0u8; GREETING_LEN];
            hello[..4].copy_from_slice(b"NPT5");
            a.write_all(&hello).await.unwrap();
            a
        };
        let (k, tag) = (key(1), fresh_session().unwrap());
        let (_a, r) = tokio::join!(old, client_handshake(&mut b, &k, &[], &tag));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("wire version 5, this client version 7"), "{e}");
    }

    #[tokio::test]
    async fn a_transport_mismatch_is_named_on_both_sides() {
        let (mut a, mut b) = tokio::io::duplex(256);
        let (k, tag) = (key(1), fresh_session().unwrap());
        let within = Duration::from_secs(5);
        let server = server_handshake_over(&mut a, &k, &[], within, Transport::Quic);
        let client = async {
            let r = client_handshake_over(&mut b, &k, &[], &tag, Transport::Tcp).await;
            drop(b);
            r
        };
        let (s, c) = tokio::join!(server, client);
        let c = c.unwrap_err().to_string();
        assert!(
            c.contains("server runs the tunnel over quic, the client over tcp"),
            "{c}"
        );
        let s = s.unwrap_err().to_string();
        assert!(
            s.contains("server runs the tunnel over quic, the client over tcp"),
            "{s}"
        );
        // A client that answers anyway on another transport is named by the server.
        let (mut a, mut b) = tokio::io::duplex(256);
        let server = server_handshake_over(&mut a, &k, &[], within, Transport::Tcp);
        let liar = async {
            let mut hello = [0u8; GREETING_LEN];
            b.read_exact(&mut hello).await.unwrap();
            let mut answer = vec![Transport::Quic.wire()];
            answer.extend_from_slice(&[0u8; SESSION_LEN + RESPONSE_LEN]);
            b.write_all(&answer).await.unwrap();
            b
        };
        let (s, _b) = tokio::join!(server, liar);
        let s = s.unwrap_err().to_string();
        assert!(
            s.contains("server runs the tunnel over tcp, the client over quic"),
            "{s}"
        );
    }

    #[test]
    fn the_control_context_is_no_pool_id_length() {
        assert!(![4, 8].contains(&control_context(&[0; SESSION_LEN], Transport::Quic).len()));
        assert_eq!(CONTROL_RESPONSE_LEN, 2 * NONCE_LEN);
        assert_eq!(CONTROL_CONFIRM_LEN, 32);
    }

    #[tokio::test]
    async fn a_session_start_reads_back_and_never_past_its_end() {
        for (user, public) in [
            ("127.0.0.2:40000", "127.0.0.1:8080"),
            ("[::1]:1", "[2001:db8::1]:65535"),
        ] {
            let start = SessionStart {
                kind: crate::config::ServiceProtocol::Udp,
                service: "web-1.a_b".into(),
                user: user.parse().unwrap(),
                public: public.parse().unwrap(),
            };
            let mut bytes = start.encode();
            bytes.extend_from_slice(b"payload");
            let mut r = &bytes[..];
            assert_eq!(SessionStart::read(&mut r).await.unwrap(), start);
            assert_eq!(r, b"payload", "nothing past the start is read");
        }
    }

    #[tokio::test]
    async fn a_bad_session_start_is_a_typed_error() {
        let ok = SessionStart {
            kind: crate::config::ServiceProtocol::Tcp,
            service: "web".into(),
            user: "127.0.0.1:1".parse().unwrap(),
            public: "127.0.0.1:2".parse().unwrap(),
        }
        .encode();
        let cases: [(Vec<u8>, &str); 6] = [
            (vec![b'X'], "kind 0x58"),
            (vec![KIND_TCP, 0], "of 0 bytes"),
            (vec![KIND_UDP, 65], "of 65 bytes"),
            ([&[KIND_TCP, 3u8][..], b"w b"].concat(), "not one"),
            ([&ok[..5], &[5u8][..]].concat(), "family 5"),
            (ok[..ok.len() - 1].to_vec(), "session start: "),
        ];
        for (bytes, says) in cases {
            let e = SessionStart::read(&mut &bytes[..]).await.unwrap_err();
            assert!(e.to_string().contains(says), "{e} (wanted {says})");
        }
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
