//! Settings of the server machine, and the admission limits that bound what strangers
//! can hold.

use std::time::Duration;

use super::{check_sweep, fix_sweep, DEFAULT_SWEEP, WATCHED_SWEEP};
use crate::error::ConfigError;
use crate::IdForm;

/// Settings of a [`ServerMachine`](crate::ServerMachine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub(crate) max_capacity: usize,
    pub(crate) admission: AdmissionLimits,
    pub(crate) handshake_timeout: Duration,
    pub(crate) id_form: IdForm,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) max_idle_age: Option<Duration>,
    pub(crate) settle: Option<Duration>,
    pub(crate) watch_hang_ups: bool,
}

/// Who a server pool lets in while handshakes run, and how many of a source's
/// connections it keeps: the slots a stranger can take, each with its bound. Every
/// field has its default in [`Default`]; set the ones you need:
///
/// ```
/// use pool_core::AdmissionLimits;
/// let limits = AdmissionLimits { max_handshakes: 512, ..AdmissionLimits::default() };
/// # assert_eq!(limits.pending_per_source, Some(64));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Handshakes at once at most. Default 256. When every slot is taken, a new
    /// connection evicts the oldest handshake under way instead of being refused: a
    /// peer that opens connections and stays silent (slowloris) can then delay the
    /// legitimate client's handshakes by at most the time it takes to open this many
    /// newer connections, never shut it out until its deadline.
    pub max_handshakes: usize,
    /// Handshakes under way from one source (see
    /// [`source_prefixes`](Self::source_prefixes)) at most. Default `Some(64)`
    /// ([`DEFAULT_PENDING_PER_SOURCE`]): a client pool of this crate dials up to 64 at
    /// once (a Go client pool one), so the legitimate client never meets it. Over the
    /// quota a new connection from that source evicts the same source's oldest
    /// handshake: one source cannot take more than this many of the
    /// [`max_handshakes`](Self::max_handshakes) slots. `None`: no limit.
    pub pending_per_source: Option<usize>,
    /// Idle (and settling) connections from one source at most; over it, a new
    /// connection from that source is refused and counted as `refused_quota`. Default
    /// `None`, no limit, as in the Go package: the legitimate client is one source
    /// that holds the whole pool, so only an operator who knows the topology (for
    /// example several clients behind distinct addresses) can choose a quota that
    /// does not starve it. Connections a get handed out and that came back with
    /// `put_back` are not counted.
    pub idle_per_source: Option<usize>,
    /// How peer addresses group into sources for the per-source quotas: the lengths
    /// of the IPv4 and IPv6 prefixes. Default /32 and /64 (one host; one IPv6 site,
    /// since a single host is commonly given a whole /64). An IPv4-mapped IPv6 address
    /// counts as IPv4. At most 32 and 128.
    pub source_prefixes: (u8, u8),
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            max_handshakes: 256,
            pending_per_source: Some(DEFAULT_PENDING_PER_SOURCE),
            idle_per_source: None,
            source_prefixes: (32, 64),
        }
    }
}

/// The default [`ServerConfigBuilder::settle`] time.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(25);

/// The default [`ServerConfigBuilder::max_idle_age`] of a server: 10 minutes.
pub const DEFAULT_SERVER_MAX_IDLE_AGE: Duration = Duration::from_secs(600);

/// The default [`AdmissionLimits::pending_per_source`]: 64, the most handshakes a
/// client pool of this crate runs at once (its default parallelism).
pub const DEFAULT_PENDING_PER_SOURCE: usize = 64;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_capacity: 1024,
            admission: AdmissionLimits::default(),
            handshake_timeout: Duration::from_secs(5),
            id_form: IdForm::Hex8,
            sweep_interval: None,
            max_idle_age: Some(DEFAULT_SERVER_MAX_IDLE_AGE),
            settle: None,
            watch_hang_ups: cfg!(target_os = "linux"),
        }
    }
}

impl ServerConfig {
    /// A builder holding the defaults.
    ///
    /// ```
    /// use pool_core::ServerConfig;
    /// let cfg = ServerConfig::builder().max_capacity(2000).build().unwrap();
    /// assert_eq!(cfg.max_capacity(), 2000);
    /// let none = pool_core::AdmissionLimits { max_handshakes: 0, ..Default::default() };
    /// assert!(ServerConfig::builder().admission(none).build().is_err());
    /// ```
    pub fn builder() -> ServerConfigBuilder {
        ServerConfigBuilder(Self::default())
    }
    /// Authenticated connections kept at most (idle, settling, out for a probe);
    /// handshakes under way have their own bound, `max_handshakes`.
    pub fn max_capacity(&self) -> usize {
        self.max_capacity
    }
    /// The admission limits.
    pub fn admission(&self) -> AdmissionLimits {
        self.admission
    }
    /// Deadline of TLS handshake plus id write.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
    /// Wire form of the id.
    pub fn id_form(&self) -> IdForm {
        self.id_form
    }
    /// How often idle connections are probed: as set, else [`DEFAULT_SWEEP`] (a
    /// runtime that watches makes it [`WATCHED_SWEEP`] with
    /// [`watched`](Self::watched)).
    pub fn sweep_interval(&self) -> Duration {
        self.sweep_interval.unwrap_or(DEFAULT_SWEEP)
    }
    /// This configuration for a runtime that watches hang-ups as
    /// [`watch_hang_ups`](Self::watch_hang_ups) says: the sweep, unless set, runs
    /// every [`WATCHED_SWEEP`]. A configuration built to the Go package's rules has
    /// its sweep set already, and keeps it.
    #[must_use]
    pub fn watched(mut self) -> Self {
        if self.watch_hang_ups {
            self.sweep_interval.get_or_insert(WATCHED_SWEEP);
        }
        self
    }
    /// Whether idle connections are watched for their peer's hang-up.
    pub fn watch_hang_ups(&self) -> bool {
        self.watch_hang_ups
    }
    /// Idle connections older than this are closed; `None`: no limit.
    pub fn max_idle_age(&self) -> Option<Duration> {
        self.max_idle_age
    }
    /// How long after its id was written a connection waits before it can be handed
    /// out: as set, else [`DEFAULT_SETTLE`].
    pub fn settle(&self) -> Duration {
        self.settle.unwrap_or(DEFAULT_SETTLE)
    }
    /// This configuration for a pool whose clients prove a tunnel key: the settle
    /// time, unless set, is zero (a client registers the id before its proof
    /// arrives, so there is no race to wait out).
    #[must_use]
    pub fn keyed(mut self) -> Self {
        self.settle.get_or_insert(Duration::ZERO);
        self
    }
}

/// Builder of a [`ServerConfig`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ServerConfigBuilder(ServerConfig);

impl ServerConfigBuilder {
    /// Authenticated connections kept at most (idle, settling, out for a probe); more
    /// are refused, at accept or when their handshake finishes (later Go releases:
    /// `maxCap`). Handshakes under way do not count: see `max_handshakes`. Default 1024.
    pub fn max_capacity(mut self, n: usize) -> Self {
        self.0.max_capacity = n;
        self
    }
    /// Handshakes at once, and the per-source quotas. Default
    /// [`AdmissionLimits::default`].
    pub fn admission(mut self, limits: AdmissionLimits) -> Self {
        self.0.admission = limits;
        self
    }
    /// Whether idle connections are watched for their peer's hang-up (Linux `epoll`),
    /// so a dead peer leaves the pool in milliseconds instead of at the next sweep.
    /// Default on Linux; elsewhere no runtime watches.
    pub fn watch_hang_ups(mut self, on: bool) -> Self {
        self.0.watch_hang_ups = on;
        self
    }
    /// Deadline of TLS handshake plus id write. Default 5 s (the Go package has none, so
    /// one silent peer stalls its TLS accept loop).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.0.handshake_timeout = d;
        self
    }
    /// Wire form of the id. Default [`IdForm::Hex8`].
    pub fn id_form(mut self, form: IdForm) -> Self {
        self.0.id_form = form;
        self
    }
    /// How often idle connections are probed and dead ones dropped. Default 1 s, or
    /// [`WATCHED_SWEEP`] (30 s) in a runtime that watches hang-ups
    /// ([`ServerConfig::watched`]).
    pub fn sweep_interval(mut self, d: Duration) -> Self {
        self.0.sweep_interval = Some(d);
        self
    }
    /// Closes connections idle longer than this, checked at each sweep and at each
    /// get. Default 10 minutes ([`DEFAULT_SERVER_MAX_IDLE_AGE`]; the Go package has no
    /// limit).
    ///
    /// Why a limit on the server: without a tunnel key, a stranger who connects and
    /// stays silent holds an idle slot for as long as it keeps its socket open, and
    /// the sweep only finds closed sockets. An age bounds that. Why 10 minutes: the
    /// legitimate client notices the close at its next sweep and dials a replacement,
    /// so a full pool of 1,024 connections costs under two dials a second, and the
    /// pool a get finds stays warm. `None` turns it off (the Go behaviour).
    pub fn max_idle_age(mut self, age: Option<Duration>) -> Self {
        self.0.max_idle_age = age;
        self
    }
    /// How long a new connection waits, after its id was written, before a get can
    /// take it. Default [`DEFAULT_SETTLE`] (25 ms), or zero for a pool whose clients
    /// prove a tunnel key ([`ServerConfig::keyed`]).
    ///
    /// Why: a Go client pool makes an id findable only once its read of the id has
    /// returned and it has stored the connection, and its `ClientGet` never waits. A
    /// server that hands a brand-new connection to a get at once lets the application
    /// send the id over its control channel before the Go client has registered it, and
    /// the Go client answers `nil`. (A Go server hides the race: each of its gets spends
    /// at least 1 ms in a health check.) Connections idle longer than this are not
    /// affected, so a get on a warm pool pays nothing; a waiting get is answered the
    /// moment the time ends. How long: a Go client registers the id well under a
    /// millisecond after the bytes arrive on an idle machine, but a loaded one delays
    /// it: a Go-timed peer (`pool-tokio/tests/go_fidelity.rs`, which registers 1 ms
    /// after its read) missed 1 to 4 ids in 2,000 at 5 ms on a 2-core machine at load
    /// average 10, and none at 25 ms. Zero turns it off, which is right when the client is this
    /// crate's (its get by id waits for a handshake in flight) or when a tunnel key is
    /// proven (the client registers the id before its proof arrives).
    pub fn settle(mut self, d: Duration) -> Self {
        self.0.settle = Some(d);
        self
    }
    /// Checks and returns the configuration.
    pub fn build(self) -> Result<ServerConfig, ConfigError> {
        let c = self.0;
        if c.max_capacity == 0 {
            return Err(ConfigError::Zero {
                what: "maximum capacity",
            });
        }
        if c.admission.max_handshakes == 0 {
            return Err(ConfigError::Zero {
                what: "maximum handshakes",
            });
        }
        if c.handshake_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration {
                what: "handshake timeout",
            });
        }
        check_sweep(c.sweep_interval, c.max_idle_age)?;
        let a = &c.admission;
        if a.pending_per_source == Some(0) {
            return Err(ConfigError::Zero {
                what: "pending handshakes per source",
            });
        }
        if a.idle_per_source == Some(0) {
            return Err(ConfigError::Zero {
                what: "idle connections per source",
            });
        }
        let (v4, v6) = a.source_prefixes;
        if v4 > 32 || v6 > 128 {
            return Err(ConfigError::BadPrefix { v4, v6 });
        }
        Ok(c)
    }
    /// Zero values become their defaults, as the Go package's would, and a prefix
    /// too long is cut to the address length. Never fails.
    pub fn build_go_normalized(self) -> ServerConfig {
        let mut c = self.0;
        let d = ServerConfig::default();
        if c.max_capacity == 0 {
            c.max_capacity = 1;
        }
        let a = &mut c.admission;
        if a.max_handshakes == 0 {
            a.max_handshakes = d.admission.max_handshakes;
        }
        if c.handshake_timeout.is_zero() {
            c.handshake_timeout = d.handshake_timeout;
        }
        if a.pending_per_source == Some(0) {
            a.pending_per_source = d.admission.pending_per_source;
        }
        if a.idle_per_source == Some(0) {
            a.idle_per_source = d.admission.idle_per_source;
        }
        a.source_prefixes = (a.source_prefixes.0.min(32), a.source_prefixes.1.min(128));
        (c.sweep_interval, c.max_idle_age) = fix_sweep(c.sweep_interval, c.max_idle_age);
        c
    }
}
