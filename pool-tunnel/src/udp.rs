//! UDP services: datagrams between users and a UDP target, carried over pooled streams.
//!
//! The server's public side is one UDP socket. Each user address (IP and port) that
//! sends a datagram becomes an **association**: one pooled stream, started for it,
//! carries its datagrams both ways as frames, and the client relays them to the target
//! through a UDP socket connected to it (so only the target's datagrams come back).
//!
//! ```text
//! user ──udp──► public socket ─┐        frames         ┌─► connected socket ──udp──► target
//!                              └─ pooled stream ═══════┘
//! ```
//!
//! **Framing.** A frame is the datagram's length (2 bytes, big endian) and the
//! datagram; an empty datagram is a frame of length 0. A frame longer than
//! [`UdpLimits::max_datagram`] is a bad frame: counted (`bad_frames`), and the
//! association ends; it never panics and never grows a buffer past the bound
//! ([`Deframer`]).
//!
//! **Bounds.** Every slot a stranger can take has a bound, a deadline and an eviction
//! rule:
//!
//! - associations at once: [`UdpLimits::max_associations`], with the public TCP port's
//!   rules of the `sources` module (per source shares under contention; at the cap a
//!   quiet association yields first, else the heaviest source's newest). A UDP source
//!   address can be forged, so the per-source shares bound honest crowds, not an
//!   attacker; the cap bounds what a flood costs either way: one pooled stream, one
//!   client socket and a few KiB each;
//! - an association ends after [`UdpLimits::idle`] without a datagram either way;
//! - datagrams waiting for an association's stream: [`UdpLimits::queue`] bytes each and
//!   [`UdpLimits::queue_total`] for the service's associations together (each service
//!   counts its own, [`serve`]'s `stats`); past either, a datagram is dropped and
//!   counted (`dropped`, `dropped_full`), as a router would drop it;
//! - in each direction at most one partial frame and one batch of whole ones
//!   ([`BATCH`]) are held; an idle association holds no buffer but its read buffer.
//!
//! The functions here are generic over the pooled stream, so that any service table can
//! call them: [`serve`] on the server side (given a way to open a stream for a new
//! association), [`relay_target`] on the client side (given the stream and the
//! connected target socket). The tunnel's in-band start and the session kind are the
//! callers' (`server/udp.rs`, `client/udp.rs`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

mod serve;
mod target;

pub use serve::serve;
pub use target::{connect_target, relay_target};

/// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers): the default
/// and the largest [`UdpLimits::max_datagram`].
pub const MAX_DATAGRAM: usize = 65_507;
/// Bytes of a frame's length prefix.
pub const FRAME_HEADER: usize = 2;
/// Whole frames gathered for one write to the stream, at most (plus one frame).
pub const BATCH: usize = 64 * 1024;

/// The one-service flags of a UDP service (`--udp`), on both sides.
#[derive(Debug, clap::Args)]
pub struct UdpArgs {
    /// Carry UDP instead of TCP: on the server the public address is a UDP socket and
    /// each user address an association over one pooled connection (--max-sessions and
    /// the per-source limits bound the associations); on the client the target is a
    /// UDP service. Both sides need it.
    #[arg(long, conflicts_with = "config")]
    pub udp: bool,
    /// End a UDP association after this many seconds without a datagram either way.
    #[arg(long, value_name = "SECS", default_value_t = 60, requires = "udp", value_parser = clap::value_parser!(u64).range(1..=crate::limits::SECS_LIMIT))]
    pub udp_idle_timeout: u64,
}

impl UdpArgs {
    /// The one service's protocol: UDP with `--udp`, else TCP.
    pub fn protocol(&self) -> crate::config::ServiceProtocol {
        if self.udp {
            crate::config::ServiceProtocol::Udp
        } else {
            crate::config::ServiceProtocol::Tcp
        }
    }

    /// The one service's idle timeout in seconds: `--udp-idle-timeout` with `--udp`,
    /// else `tcp` (the relay's).
    pub fn idle_timeout(&self, tcp: u64) -> u64 {
        if self.udp {
            self.udp_idle_timeout
        } else {
            tcp
        }
    }
}

/// What a UDP service may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpLimits {
    /// Associations (user addresses) at once.
    pub max_associations: usize,
    /// Per source (a /24, a /64), while the table is contended: associations at once.
    pub per_source: usize,
    /// Per source, while the table is contended: new associations a second.
    pub new_per_source_per_s: u32,
    /// An association ends after this long without a datagram either way.
    pub idle: Duration,
    /// An association that moved no datagram for this long yields first at the cap.
    pub quiet: Duration,
    /// The largest datagram carried; a longer frame is a bad frame, and a longer
    /// datagram from a user or the target is dropped.
    pub max_datagram: usize,
    /// Bytes of datagrams waiting for one association's stream, at most.
    pub queue: usize,
    /// Bytes of datagrams waiting for every association's stream of the service
    /// together, at most.
    pub queue_total: usize,
}

impl Default for UdpLimits {
    fn default() -> Self {
        Self {
            max_associations: 1024,
            per_source: 256,
            new_per_source_per_s: 200,
            idle: Duration::from_secs(60),
            quiet: Duration::from_secs(10),
            max_datagram: MAX_DATAGRAM,
            queue: 64 * 1024,
            queue_total: 8 * 1024 * 1024,
        }
    }
}

impl UdpLimits {
    /// A server's UDP service's limits: its session limits bound the associations,
    /// its relay's idle timeout ends one, its quiet time makes one yield first.
    pub fn for_server(svc: &crate::config::ServerService) -> Self {
        Self {
            max_associations: svc.max_sessions,
            per_source: svc.per_source.sessions,
            // A rate under one a second still lets one a second through.
            new_per_source_per_s: (svc.per_source.new_per_s.ceil() as u64)
                .clamp(1, u64::from(u32::MAX)) as u32,
            idle: svc.relay.idle,
            quiet: svc.quiet,
            ..Self::default()
        }
    }

    /// A client's UDP service's limits: its relay's idle timeout ends an association.
    pub fn for_client(svc: &crate::config::ClientService) -> Self {
        Self {
            idle: svc.relay.idle,
            ..Self::default()
        }
    }

    /// Refuses a setting out of its range, naming it.
    pub fn check(&self) -> Result<(), crate::BoxError> {
        use crate::limits::{check_count, check_secs};
        check_count("udp max_associations", self.max_associations)?;
        check_count("udp per_source", self.per_source)?;
        check_count(
            "udp new_per_source_per_s",
            self.new_per_source_per_s as usize,
        )?;
        check_secs("udp idle", self.idle)?;
        check_secs("udp quiet", self.quiet)?;
        if !(1..=MAX_DATAGRAM).contains(&self.max_datagram) {
            return Err(format!(
                "udp max_datagram {}: must be 1 to {MAX_DATAGRAM}",
                self.max_datagram
            )
            .into());
        }
        if self.queue < self.max_datagram + FRAME_HEADER || self.queue_total < self.queue {
            return Err(format!(
                "udp queue {} / queue_total {}: a queue holds at least one datagram, the total at least one queue",
                self.queue, self.queue_total
            )
            .into());
        }
        Ok(())
    }
}

crate::stats::counters! {
    /// What a UDP service counted (each side counts what it sees).
    UdpStats / UdpSnapshot {
        /// Associations started (server: a new user address; client: a stream the
        /// server started for one).
        associations,
        /// Associations running now (a gauge).
        active,
        /// The most associations that ran at once.
        peak,
        /// New user addresses refused at once: the cap was reached and their source
        /// held as many as any other.
        refused,
        /// New user addresses refused at once: the table was contended and their
        /// source held its share, or started its share in the last second.
        refused_source,
        /// Associations ended to make room at the cap (a quiet one first).
        evicted,
        /// Associations ended after the idle timeout.
        idle_closed,
        /// Associations whose stream could not be opened (no control, no pooled
        /// connection, no receipt, the target unreachable).
        open_failed,
        /// Of `open_failed`: the client could not reach the target, or does not serve
        /// UDP.
        target_failed,
        /// Streams whose start went out again on another pooled connection (the first
        /// closed before the client's receipt).
        replayed,
        /// Datagrams user -> target.
        datagrams_up,
        /// Datagrams target -> user.
        datagrams_down,
        /// Payload bytes user -> target.
        bytes_up,
        /// Payload bytes target -> user.
        bytes_down,
        /// Datagrams dropped, for any reason (the sum of the three below).
        dropped,
        /// Of `dropped`: the association's queue or the service's total was full.
        dropped_full,
        /// Of `dropped`: longer than [`UdpLimits::max_datagram`].
        dropped_too_long,
        /// Of `dropped`: the send failed (the target refused it: an ICMP error).
        dropped_send_failed,
        /// Frames refused: longer than the limit. The association ends.
        bad_frames,
        /// Sessions of a kind this side does not serve (a UDP start at a TCP client, or
        /// the other way round): refused with `TARGET_FAILED`.
        kind_refused,
        /// Bytes of datagrams waiting for streams now (a gauge).
        queued,
        /// The most bytes that waited at once.
        queued_peak,
    }
}

impl UdpStats {
    pub(crate) fn started(&self) {
        self.associations.fetch_add(1, Relaxed);
        let now = self.active.fetch_add(1, Relaxed) + 1;
        self.peak.fetch_max(now, Relaxed);
    }

    pub(crate) fn ended(&self) {
        self.active.fetch_sub(1, Relaxed);
    }

    /// Counts a datagram dropped, and why.
    pub(crate) fn drop_one(&self, why: Dropped) {
        self.dropped.fetch_add(1, Relaxed);
        let reason = match why {
            Dropped::Full => &self.dropped_full,
            Dropped::TooLong => &self.dropped_too_long,
            Dropped::SendFailed => &self.dropped_send_failed,
        };
        reason.fetch_add(1, Relaxed);
    }
}

/// Why a datagram was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A queue or the total was full.
    Full,
    /// Longer than the limit.
    TooLong,
    /// The send failed.
    SendFailed,
}

/// Appends `datagram` to `out` as one frame. The caller bounds the datagram's length
/// by [`MAX_DATAGRAM`].
pub fn encode(out: &mut Vec<u8>, datagram: &[u8]) {
    let len = u16::try_from(datagram.len()).expect("a datagram fits a frame");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
}

/// A frame longer than the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadFrame {
    /// The length it announced.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a frame of {} bytes, over the limit of {}",
            self.len, self.max
        )
    }
}

impl std::error::Error for BadFrame {}

/// A byte-fed reader of frames: takes whatever bytes arrived, hands out each whole
/// frame, keeps at most one partial frame.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl Deframer {
    /// Frames of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Adds bytes read from the stream. Take every frame ([`next_frame`](Self::next_frame))
    /// before pushing more: then the buffer holds at most one partial frame and one push.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > 2 * BATCH {
                self.buf = Vec::new();
            }
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame's datagram, `None` until one is whole; an error for a frame
    /// longer than the limit (its length is known from its first two bytes).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, BadFrame> {
        let have = &self.buf[self.start..];
        let Some(head) = have.get(..FRAME_HEADER) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
        if len > self.max {
            return Err(BadFrame { len, max: self.max });
        }
        if have.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let from = self.start + FRAME_HEADER;
        self.start = from + len;
        Ok(Some(&self.buf[from..from + len]))
    }

    /// Bytes held (a partial frame, and whole ones not taken yet).
    pub fn held(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// When the last datagram moved, readable by the table (to find quiet associations). On
/// tokio's clock, so that a paused test clock drives it.
#[derive(Debug)]
pub(crate) struct Activity {
    born: Instant,
    /// Milliseconds since `born` at the last datagram.
    last: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Self {
            born: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// A datagram moved now.
    pub(crate) fn moved(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Relaxed);
    }

    /// How long no datagram has moved, at `now`.
    pub(crate) fn quiet_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.born + Duration::from_millis(self.last.load(Relaxed)))
    }

    /// When the idle deadline falls.
    pub(crate) fn idle_deadline(&self, idle: Duration) -> Instant {
        self.born + Duration::from_millis(self.last.load(Relaxed)) + idle
    }
}

/// How a relay of frames ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpEnd {
    /// No datagram either way for the idle timeout.
    Idle,
    /// The stream closed (the other side ended the association).
    Closed,
    /// The stream failed, or the table ended the association.
    Error,
    /// A bad frame came ([`BadFrame`]).
    BadFrame,
}

#[cfg(test)]
mod tests;
