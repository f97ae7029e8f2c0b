//! The simulated network: a clock, latencies, fault draws, the connections between the
//! two machines as the network sees them, the event queue and the transcript.
//!
//! Nothing here touches a machine. The drivers ([`super::drivers`]) ask this model what
//! happens to a connection (is its connect refused, how does its handshake end, in
//! which chunks do its id bytes arrive) and feed the answers to the machines when the
//! events fall due.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::time::{Duration, Instant};

use pool_core::{ConnId, DialTicket, HandshakeTicket, IdForm, IdReader, Stage, ID_LEN};

use super::platform::Wire;
use crate::rng::SplitMix64;

/// A simulated clock: a fixed base instant plus a simulated offset.
#[derive(Clone, Copy, Debug)]
pub struct SimClock {
    base: Instant,
    offset: Duration,
}

impl SimClock {
    /// A clock at offset zero.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset: Duration::ZERO,
        }
    }
    /// The current simulated instant.
    pub fn now(&self) -> Instant {
        self.base + self.offset
    }
    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.offset
    }
    /// The offset of `at` from the start (zero for instants before it).
    pub fn offset_of(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.base)
    }
    /// The instant at offset `d`.
    pub fn at(&self, d: Duration) -> Instant {
        self.base + d
    }
    /// Moves the clock forward to offset `d` (never backwards).
    pub fn advance_to(&mut self, d: Duration) {
        self.offset = self.offset.max(d);
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Fault probabilities, one per stage of a connection. Each is drawn independently per
/// connection, in stage order; the first that hits decides its fate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// The client's connect is refused (client: `Stage::Connect`).
    pub connect_refused: f64,
    /// The TLS handshake fails on both ends (`Stage::Tls`).
    pub tls_fail: f64,
    /// One id byte is corrupted on the way (client: `Stage::Id`). In the raw 4-byte id
    /// form no byte can be told bad, so the id is cut short instead.
    pub bad_id: f64,
    /// The peer goes silent until the deadlines: half of the time during TLS (both ends
    /// time out), half of the time after part of the id (the client's id read times out).
    pub silence: f64,
}

impl Faults {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }
    /// The same probability for every kind.
    pub fn uniform(p: f64) -> Self {
        Self {
            connect_refused: p,
            tls_fail: p,
            bad_id: p,
            silence: p,
        }
    }
}

/// Timing of the simulated network and of the application. How often the pools sweep
/// is not here: it is each machine's `sweep_interval`.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// One-way network latency, drawn per delivery.
    pub latency: (Duration, Duration),
    /// Duration of a TLS handshake at the server.
    pub tls_time: (Duration, Duration),
    /// Latency of the application's control channel (server id to the client side).
    pub control_latency: (Duration, Duration),
    /// Deadline of the application's server `get`.
    pub server_get_timeout: Duration,
    /// Deadline of the application's client `get(id)`.
    pub client_get_timeout: Duration,
    /// A user who finds this many server gets already waiting gives up at once.
    pub max_waiting: usize,
    /// Users arrive as a Poisson process (exponential gaps) instead of at gaps drawn
    /// uniformly between half and one and a half of the mean. Default false.
    pub poisson: bool,
    /// Hash every event into the transcript ([`SimPair::transcript_hash`](super::SimPair::transcript_hash)).
    /// Default true; off, long scoreboard runs go several times faster.
    pub transcript: bool,
    /// Ids arrive in random chunks a little apart (the id reader's partial input), and
    /// the client's TLS end and its id are separate events. Default true. Off, a dial
    /// with no fault injected delivers its id whole with the end of TLS: one event
    /// instead of up to thirteen, for long scoreboard runs. Faulty ids keep their chunks.
    pub chunked_ids: bool,
    /// Check every turn of the client against the round oracle
    /// ([`SimStats::timer_desyncs`](super::SimStats::timer_desyncs)). Default true; the
    /// scoreboard turns it off.
    pub oracle: bool,
    /// Packet loss: the share of deliveries (network and control channel) whose
    /// packet is lost once and arrives only after a retransmission, `retransmit`
    /// later. Default 0 (then nothing is drawn for it, and a run is what it was
    /// without the option).
    pub loss: f64,
    /// The delay a lost packet adds: TCP's retransmission timeout (at least 200 ms on
    /// Linux, 1 s for a connection's first packet). Default 200 ms to 1 s.
    pub retransmit: (Duration, Duration),
    /// Both pools watch their held connections, as pool-tokio and pool-threads do on
    /// Linux: a peer's hang-up reaches the pool one network latency after the peer
    /// closed ([`Driver::idle_ready`](pool_core::driver::Driver::idle_ready)), instead
    /// of waiting for a sweep or a get to probe it. Default false (the scoreboard's
    /// figures are for pools that only probe). A client in in-band mode
    /// ([`IdleWatch::Starts`](pool_core::IdleWatch::Starts))
    /// watches its connections whatever this says: that is how it learns of a start.
    pub watch_idle: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            latency: (ms(1), ms(20)),
            tls_time: (ms(5), ms(40)),
            control_latency: (ms(1), ms(10)),
            server_get_timeout: ms(2_000),
            client_get_timeout: ms(3_000),
            max_waiting: 64,
            poisson: false,
            transcript: true,
            chunked_ids: true,
            oracle: true,
            loss: 0.0,
            retransmit: (ms(200), ms(1_000)),
            watch_idle: false,
        }
    }
}

/// A seedless hasher for serials (sequential numbers, never chosen by a peer).
#[derive(Default)]
pub(super) struct SerialHasher(u64);

impl Hasher for SerialHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Maps keyed by serial.
pub(super) type Serials = BuildHasherDefault<SerialHasher>;

/// An event in the queue: due at `at`, in the order scheduled among equals.
#[derive(Debug)]
struct Due {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Where a connection is, at one end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// Not there (yet).
    None,
    /// Handshaking.
    Pending,
    /// Ready at the server, waiting out the settle time before it can be handed out.
    Settling,
    /// Idle in the pool.
    Idle,
    /// Handed to the application.
    Taken,
    /// Failed, refused or dropped.
    Gone,
}

/// How the id bytes travel.
#[derive(Clone, Copy, Debug)]
pub(super) enum Delivery {
    /// The whole id arrives.
    Full,
    /// The byte at this position is corrupted.
    Corrupt(usize),
    /// Only this many bytes arrive, then nothing.
    Partial(usize),
}

/// How an admitted connection's handshake ends, as drawn from the faults.
#[derive(Clone, Copy, Debug)]
pub(super) enum Handshake {
    /// TLS fails on both ends after the TLS time.
    TlsFail(Duration),
    /// Silence during TLS: nothing more happens, both deadlines fire.
    SilentTls,
    /// The server is ready after the TLS time and sends the id this way.
    Ready(Duration, Delivery),
}

/// One simulated connection, both ends.
#[derive(Debug)]
pub(super) struct Conn {
    /// The client's dial ticket while the dial is in flight.
    pub(super) ticket: Option<DialTicket>,
    /// The server's handshake ticket while it handshakes.
    pub(super) hs: Option<HandshakeTicket>,
    /// The id reader while the client reads the id.
    pub(super) reader: Option<IdReader>,
    /// The id the server drew.
    pub(super) id: Option<ConnId>,
    pub(super) client: Side,
    pub(super) server: Side,
    pub(super) client_closed: bool,
    pub(super) server_closed: bool,
}

/// A network or application event, due at a simulated time.
#[derive(Clone, Copy, Debug)]
pub(super) enum Ev {
    ServerAccept(u64),
    ServerTlsFail(u64),
    ServerReady(u64, Delivery),
    ClientFail(u64, Stage),
    ClientTlsDone(u64, Delivery),
    ClientBytes(u64, [u8; ID_LEN + 4], u8),
    Control(ConnId, u64),
    /// The server's start header reached the client (in-band mode).
    Started(u64),
    /// The OS tells the client that the server's end hung up (a watched pool).
    ClientHangUp(u64),
    /// The OS tells the server that the client's end hung up (a watched pool).
    ServerHangUp(u64),
}

/// The network model and everything random about it.
#[derive(Debug)]
pub(super) struct Net {
    pub(super) clock: SimClock,
    rng: SplitMix64,
    /// The users' arrivals, a stream of their own: every policy run on the same seed
    /// sees the same users, whatever the network draws.
    arrivals: SplitMix64,
    pub(super) faults: Faults,
    pub(super) opts: SimOptions,
    events: BinaryHeap<Reverse<Due>>,
    event_seq: u64,
    pub(super) conns: HashMap<u64, Conn, Serials>,
    /// What the drivers' platforms see of the connections (which ends are open).
    pub(super) wire: Rc<Wire>,
    hash: u64,
    lines: Option<Vec<String>>,
}

impl Net {
    pub(super) fn new(seed: u64, faults: Faults, opts: SimOptions) -> Self {
        let clock = SimClock::new();
        Self {
            wire: Wire::new(clock.now()),
            clock,
            rng: SplitMix64::new(seed),
            arrivals: SplitMix64::new(seed ^ 0x5eed_a771_7a15_0000),
            faults,
            opts,
            events: BinaryHeap::new(),
            event_seq: 0,
            conns: HashMap::default(),
            hash: 0xcbf2_9ce4_8422_2325,
            lines: None,
        }
    }

    pub(super) fn now(&self) -> Instant {
        self.clock.now()
    }

    pub(super) fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }

    pub(super) fn offset(&self, t: Option<Instant>) -> Option<Duration> {
        t.map(|t| self.clock.offset_of(t))
    }

    // ---- transcript ----

    /// Adds a line to the transcript (hashed always, kept when recording).
    pub(super) fn log(&mut self, what: std::fmt::Arguments<'_>) {
        if !self.opts.transcript && self.lines.is_none() {
            return;
        }
        let mut line = String::new();
        let _ = write!(line, "{:>12} ", self.clock.elapsed().as_micros());
        let _ = line.write_fmt(what);
        for b in line.bytes() {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        if let Some(lines) = self.lines.as_mut() {
            lines.push(line);
        }
    }

    pub(super) fn record(&mut self) {
        self.lines.get_or_insert_with(Vec::new);
    }

    pub(super) fn lines(&self) -> &[String] {
        self.lines.as_deref().unwrap_or(&[])
    }

    pub(super) fn hash(&self) -> u64 {
        self.hash
    }

    // ---- events ----

    /// Schedules `ev` after `delay`.
    pub(super) fn at(&mut self, delay: Duration, ev: Ev) {
        self.event_seq += 1;
        let at = self.clock.elapsed() + delay;
        let seq = self.event_seq;
        self.events.push(Reverse(Due { at, seq, ev }));
    }

    /// When the next event is due.
    pub(super) fn next_event(&self) -> Option<Duration> {
        self.events.peek().map(|Reverse(d)| d.at)
    }

    /// The first event, if it is due.
    pub(super) fn pop_due(&mut self) -> Option<Ev> {
        let due = self.events.peek()?.0.at <= self.clock.elapsed();
        due.then(|| self.events.pop().map(|Reverse(d)| d.ev))
            .flatten()
    }

    // ---- draws ----

    /// A one-way latency (a retransmission included when the packet is lost).
    pub(super) fn latency(&mut self) -> Duration {
        let (lo, hi) = self.opts.latency;
        self.rng.between(lo, hi) + self.lost()
    }

    /// A control-channel latency (a retransmission included when the packet is lost).
    pub(super) fn control_latency(&mut self) -> Duration {
        let (lo, hi) = self.opts.control_latency;
        self.rng.between(lo, hi) + self.lost()
    }

    /// The retransmission delay of a lost packet, or zero.
    fn lost(&mut self) -> Duration {
        if self.rng.chance(self.opts.loss) {
            let (lo, hi) = self.opts.retransmit;
            self.rng.between(lo, hi)
        } else {
            Duration::ZERO
        }
    }

    /// A number in `[0, 1)`, for the application's pacing.
    /// A draw of the arrivals' own stream, in `[0, 1)`.
    pub(super) fn arrival_unit(&mut self) -> f64 {
        self.arrivals.unit()
    }

    /// A 32-byte seed for a machine's generator.
    pub(super) fn seed32(&mut self) -> [u8; 32] {
        self.rng.seed32()
    }

    /// Whether a connect is refused.
    pub(super) fn connect_refused(&mut self) -> bool {
        self.rng.chance(self.faults.connect_refused)
    }

    /// How an admitted connection's handshake ends: the faults in stage order.
    pub(super) fn handshake(&mut self) -> Handshake {
        let (lo, hi) = self.opts.tls_time;
        let tls = self.rng.between(lo, hi);
        let f = self.faults;
        if self.rng.chance(f.tls_fail) {
            Handshake::TlsFail(tls)
        } else if self.rng.chance(f.silence) {
            if self.rng.below(2) == 0 {
                Handshake::SilentTls
            } else {
                Handshake::Ready(tls, Delivery::Partial(self.rng.below(8) as usize))
            }
        } else if self.rng.chance(f.bad_id) {
            Handshake::Ready(tls, Delivery::Corrupt(self.rng.below(8) as usize))
        } else {
            Handshake::Ready(tls, Delivery::Full)
        }
    }

    /// Puts `id` on the wire to the client in `form`, as `delivery` says, followed by
    /// payload bytes that must never be read as id: random chunks, in order, a little
    /// apart.
    pub(super) fn send_id(&mut self, serial: u64, id: &ConnId, form: IdForm, delivery: Delivery) {
        let (bytes, sent) = Self::id_bytes(id, form, delivery);
        let mut from = 0;
        let mut delay = Duration::ZERO;
        while from < sent {
            let size = 1 + self.rng.below(sent as u64) as usize;
            let to = (from + size).min(sent);
            let mut chunk = [0u8; ID_LEN + 4];
            chunk[..to - from].copy_from_slice(&bytes[from..to]);
            delay += self.rng.between(Duration::ZERO, Duration::from_millis(3));
            self.at(delay, Ev::ClientBytes(serial, chunk, (to - from) as u8));
            from = to;
        }
    }

    /// The id on the wire in `form`, as `delivery` says, followed by payload bytes
    /// that must never be read as id; and how many of them arrive.
    pub(super) fn id_bytes(
        id: &ConnId,
        form: IdForm,
        delivery: Delivery,
    ) -> ([u8; ID_LEN + 4], usize) {
        let wire = form.encode(id);
        let mut bytes = [b'P'; ID_LEN + 4];
        let len = wire.as_ref().len();
        bytes[..len].copy_from_slice(wire.as_ref());
        let mut sent = len + 4;
        match delivery {
            Delivery::Full => {}
            Delivery::Corrupt(pos) if form == IdForm::Hex8 => bytes[pos % len] = b'Z',
            Delivery::Corrupt(pos) | Delivery::Partial(pos) => sent = pos % len,
        }
        (bytes, sent)
    }

    // ---- connections ----

    /// A new connection for a client dial; its serial.
    /// The connection's serial is its ticket's, which the core's aborts name.
    pub(super) fn open(&mut self, ticket: DialTicket) -> u64 {
        let serial = ticket.serial();
        self.conns.insert(
            serial,
            Conn {
                ticket: Some(ticket),
                hs: None,
                reader: None,
                id: None,
                client: Side::Pending,
                server: Side::None,
                client_closed: false,
                server_closed: false,
            },
        );
        self.wire.opened(serial);
        serial
    }

    /// The client end is gone (failed, dropped or found dead).
    pub(super) fn client_gone(&mut self, serial: u64) {
        if let Some(c) = self.conns.get_mut(&serial) {
            c.reader = None;
            c.client = Side::Gone;
            c.client_closed = true;
            self.wire.closed(serial, true);
        }
    }

    /// The server end is gone (failed, refused, dropped or found dead).
    pub(super) fn server_gone(&mut self, serial: u64) {
        if let Some(c) = self.conns.get_mut(&serial) {
            c.server = Side::Gone;
            c.server_closed = true;
            self.wire.closed(serial, false);
        }
    }

    /// The application closed the server end of a connection it took.
    pub(super) fn server_end_closed(&mut self, serial: u64) {
        if let Some(c) = self.conns.get_mut(&serial) {
            c.server_closed = true;
            self.wire.closed(serial, false);
        }
    }

    /// Whether the server end of a connection the client holds is still there: what a
    /// probe at the client finds.
    pub(super) fn alive_at_client(&self, serial: u64) -> bool {
        self.conns.get(&serial).is_some_and(|c| !c.server_closed)
    }

    /// Forgets a connection both of whose ends are done with the pools.
    pub(super) fn retire(&mut self, serial: u64) {
        let done = |s: Side| matches!(s, Side::None | Side::Gone | Side::Taken);
        if let Some(c) = self.conns.get(&serial) {
            let client_done = matches!(c.client, Side::Gone | Side::Taken);
            if client_done && done(c.server) && c.hs.is_none() && c.ticket.is_none() {
                self.conns.remove(&serial);
                self.wire.forget(serial);
            }
        }
    }

    /// How many connections match `f`.
    pub(super) fn count(&self, f: impl Fn(&Conn) -> bool) -> usize {
        self.conns.values().filter(|c| f(c)).count()
    }
}
