//! Validated configuration of the client and server machines.
//!
//! `build()` refuses a configuration that cannot work with a [`ConfigError`].
//! `build_go_normalized()` instead fixes it silently the way the Go package v1.0.6
//! does: a capacity of zero becomes 1, an interval of zero becomes 1 s, a minimum above
//! its maximum is swapped with it. The name says so on purpose.

use std::time::Duration;

use crate::adapt::Adaptation;
use crate::adjust::{CapacityPolicy, IntervalPolicy};
use crate::error::{show, ConfigError};
use crate::IdForm;

/// Settings of a [`ClientMachine`](crate::ClientMachine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    pub(crate) min_capacity: usize,
    pub(crate) max_capacity: usize,
    pub(crate) min_interval: Duration,
    pub(crate) max_interval: Duration,
    pub(crate) parallelism: usize,
    pub(crate) single: bool,
    pub(crate) handshake_timeout: Duration,
    pub(crate) id_timeout: Duration,
    pub(crate) id_form: IdForm,
    pub(crate) interval_policy: IntervalPolicy,
    pub(crate) capacity_policy: CapacityPolicy,
    pub(crate) adapt: Adaptation,
    pub(crate) sweep_interval: Duration,
    pub(crate) max_idle_age: Option<Duration>,
    pub(crate) fail_fast: bool,
    pub(crate) in_band: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            min_capacity: 64,
            max_capacity: 1024,
            min_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
            parallelism: 64,
            single: false,
            handshake_timeout: Duration::from_secs(5),
            id_timeout: Duration::from_secs(5),
            id_form: IdForm::Hex8,
            interval_policy: IntervalPolicy::default(),
            capacity_policy: CapacityPolicy::default(),
            adapt: Adaptation::default(),
            sweep_interval: Duration::from_secs(1),
            max_idle_age: None,
            fail_fast: true,
            in_band: false,
        }
    }
}

impl ClientConfig {
    /// A builder holding the defaults.
    ///
    /// ```
    /// use pool_core::ClientConfig;
    /// use std::time::Duration;
    /// let cfg = ClientConfig::builder().capacity(4, 16).parallelism(2).build().unwrap();
    /// assert_eq!(cfg.max_capacity(), 16);
    /// assert!(ClientConfig::builder().capacity(9, 3).build().is_err());
    /// let fixed = ClientConfig::builder().capacity(9, 3).build_go_normalized();
    /// assert_eq!((fixed.min_capacity(), fixed.max_capacity()), (3, 9));
    /// ```
    pub fn builder() -> ClientConfigBuilder {
        ClientConfigBuilder(Self::default())
    }

    /// Minimum capacity (the starting capacity).
    pub fn min_capacity(&self) -> usize {
        self.min_capacity
    }
    /// Maximum capacity.
    pub fn max_capacity(&self) -> usize {
        self.max_capacity
    }
    /// Minimum refill interval (the starting interval).
    pub fn min_interval(&self) -> Duration {
        self.min_interval
    }
    /// Maximum refill interval.
    pub fn max_interval(&self) -> Duration {
        self.max_interval
    }
    /// Dials in flight at most.
    pub fn parallelism(&self) -> usize {
        self.parallelism
    }
    /// Single mode: ids made here, nothing read from the server.
    pub fn single(&self) -> bool {
        self.single
    }
    /// Deadline of the connect plus TLS handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
    /// Deadline of the id read.
    pub fn id_timeout(&self) -> Duration {
        self.id_timeout
    }
    /// Wire form of the id.
    pub fn id_form(&self) -> IdForm {
        self.id_form
    }
    /// How often idle connections are probed.
    pub fn sweep_interval(&self) -> Duration {
        self.sweep_interval
    }
    /// Idle connections older than this are closed and replaced; `None`: no limit.
    pub fn max_idle_age(&self) -> Option<Duration> {
        self.max_idle_age
    }
    /// Whether gets fail at once while nothing can succeed.
    pub fn fail_fast(&self) -> bool {
        self.fail_fast
    }
    /// Whether the server starts sessions in band ([`Want::Started`](crate::Want::Started)).
    pub fn in_band(&self) -> bool {
        self.in_band
    }
    /// The adaptation policy.
    pub fn adaptation(&self) -> &Adaptation {
        &self.adapt
    }
}

/// Builder of a [`ClientConfig`]. Every setter documents its default.
#[derive(Clone, Debug)]
#[must_use]
pub struct ClientConfigBuilder(ClientConfig);

impl ClientConfigBuilder {
    /// Minimum and maximum capacity. Default 64 and 1024. The pool starts at the
    /// minimum (Go: `minCap`, `maxCap`).
    pub fn capacity(mut self, min: usize, max: usize) -> Self {
        self.0.min_capacity = min;
        self.0.max_capacity = max;
        self
    }
    /// Minimum and maximum refill interval. Default 100 ms and 1 s. The pool starts at
    /// the minimum (Go: `minIvl`, `maxIvl`).
    pub fn interval(mut self, min: Duration, max: Duration) -> Self {
        self.0.min_interval = min;
        self.0.max_interval = max;
        self
    }
    /// Dials in flight at most. Default 64 (the Go package dials one at a time): over a
    /// 50 ms round trip, 1,000 TLS connections then take about 2 s instead of 13 s.
    pub fn parallelism(mut self, n: usize) -> Self {
        self.0.parallelism = n;
        self
    }
    /// Single mode. Default false (Go: `isSingle`).
    pub fn single(mut self, on: bool) -> Self {
        self.0.single = on;
        self
    }
    /// In-band activation. Default false (the Go protocol: the application names the
    /// connection it wants by id).
    ///
    /// On: the server starts a session on an idle connection itself, by writing
    /// [`START`](crate::START) and then data on it, and bytes arriving on an idle
    /// connection mean just that. The driver reports them
    /// ([`Driver::idle_ready`](crate::driver::Driver::idle_ready)), the connection leaves
    /// the idle map, and a get for [`Want::Started`](crate::Want::Started) (an
    /// `accept`) receives it. No round trip over the application's control channel:
    /// the first byte arrives one one-way delay after the server wrote it. The driver
    /// must watch idle connections for readable bytes (readiness, not the sweep).
    pub fn in_band(mut self, on: bool) -> Self {
        self.0.in_band = on;
        self
    }
    /// Deadline of connect plus TLS handshake. Default 5 s (the Go package has none).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.0.handshake_timeout = d;
        self
    }
    /// Deadline of the id read. Default 5 s.
    pub fn id_timeout(mut self, d: Duration) -> Self {
        self.0.id_timeout = d;
        self
    }
    /// Wire form of the id. Default [`IdForm::Hex8`] (Go v1.0.6).
    pub fn id_form(mut self, form: IdForm) -> Self {
        self.0.id_form = form;
        self
    }
    /// The interval rule of [`Adaptation::GoRules`] (no effect under another policy).
    /// Default: the Go package's.
    pub fn interval_policy(mut self, p: IntervalPolicy) -> Self {
        self.0.interval_policy = p;
        self
    }
    /// The capacity rule of [`Adaptation::GoRules`] (no effect under another policy).
    /// Default: the Go package's.
    pub fn capacity_policy(mut self, p: CapacityPolicy) -> Self {
        self.0.capacity_policy = p;
        self
    }
    /// How the capacity and the refill interval adapt to demand, within the bounds of
    /// [`capacity`](Self::capacity) and [`interval`](Self::interval), which the machine
    /// enforces on whatever the policy answers. Default:
    /// [`Adaptation::OfferedDemand`]; [`Adaptation::GoRules`] is the Go package's
    /// rules, rule for rule; [`Adaptation::custom`] takes a policy of your own.
    pub fn adapt(mut self, policy: Adaptation) -> Self {
        self.0.adapt = policy;
        self
    }
    /// How often idle connections are probed and dead ones replaced. Default 1 s (the
    /// Go package probes only at `get`).
    pub fn sweep_interval(mut self, d: Duration) -> Self {
        self.0.sweep_interval = d;
        self
    }
    /// Closes and replaces connections idle longer than this, checked at each sweep
    /// and at each get, so a connection lives at most this plus one sweep interval.
    /// Default `None`: no limit, as in the Go package.
    pub fn max_idle_age(mut self, age: Option<Duration>) -> Self {
        self.0.max_idle_age = age;
        self
    }
    /// Fail gets at once, with [`GetFailure::Unreachable`](crate::GetFailure::Unreachable),
    /// while nothing can succeed: the pool has never made a connection and it is
    /// backing off (a run of failed dials as long as the parallelism, or the capacity
    /// if smaller). Waiting gets are answered the same way when the pool gets there, so
    /// a wrong address, port, pin or TLS mode shows within one backoff step instead of
    /// after a whole get timeout. Once a connection was made, a server outage is a
    /// passing fault and gets wait as usual. Default true.
    pub fn fail_fast(mut self, on: bool) -> Self {
        self.0.fail_fast = on;
        self
    }

    /// Checks and returns the configuration.
    pub fn build(self) -> Result<ClientConfig, ConfigError> {
        let c = self.0;
        check_bounds(
            c.min_capacity,
            c.max_capacity,
            c.min_interval,
            c.max_interval,
        )?;
        if c.parallelism == 0 {
            return Err(ConfigError::Zero {
                what: "parallelism",
            });
        }
        if c.handshake_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration {
                what: "handshake timeout",
            });
        }
        if c.id_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration { what: "id timeout" });
        }
        check_sweep(c.sweep_interval, c.max_idle_age)?;
        c.interval_policy.validate()?;
        c.capacity_policy.validate()?;
        Ok(c)
    }

    /// Fixes the bounds the way the Go package does (zero capacity becomes 1, zero
    /// interval becomes 1 s, a minimum above its maximum is swapped), and any other
    /// bad value falls back to its default. Never fails.
    pub fn build_go_normalized(self) -> ClientConfig {
        let mut c = self.0;
        let d = ClientConfig::default();
        (c.min_capacity, c.max_capacity) = go_caps(c.min_capacity, c.max_capacity);
        (c.min_interval, c.max_interval) = go_intervals(c.min_interval, c.max_interval);
        if c.parallelism == 0 {
            c.parallelism = d.parallelism;
        }
        if c.handshake_timeout.is_zero() {
            c.handshake_timeout = d.handshake_timeout;
        }
        if c.id_timeout.is_zero() {
            c.id_timeout = d.id_timeout;
        }
        (c.sweep_interval, c.max_idle_age) = fix_sweep(c.sweep_interval, c.max_idle_age);
        if c.interval_policy.validate().is_err() {
            c.interval_policy = d.interval_policy;
        }
        if c.capacity_policy.validate().is_err() {
            c.capacity_policy = d.capacity_policy;
        }
        c
    }
}

/// Settings of a [`ServerMachine`](crate::ServerMachine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub(crate) max_capacity: usize,
    pub(crate) max_handshakes: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) id_form: IdForm,
    pub(crate) sweep_interval: Duration,
    pub(crate) max_idle_age: Option<Duration>,
    pub(crate) settle: Duration,
    pub(crate) pending_per_source: Option<usize>,
    pub(crate) idle_per_source: Option<usize>,
    pub(crate) source_prefix_v4: u8,
    pub(crate) source_prefix_v6: u8,
}

/// The default [`ServerConfigBuilder::settle`] time.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(25);

/// The default [`ServerConfigBuilder::max_idle_age`] of a server: 10 minutes.
pub const DEFAULT_SERVER_MAX_IDLE_AGE: Duration = Duration::from_secs(600);

/// The default [`ServerConfigBuilder::pending_per_source`]: 64, the most handshakes a
/// client pool of this crate runs at once (its default parallelism).
pub const DEFAULT_PENDING_PER_SOURCE: usize = 64;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_capacity: 1024,
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(5),
            id_form: IdForm::Hex8,
            sweep_interval: Duration::from_secs(1),
            max_idle_age: Some(DEFAULT_SERVER_MAX_IDLE_AGE),
            settle: DEFAULT_SETTLE,
            pending_per_source: Some(DEFAULT_PENDING_PER_SOURCE),
            idle_per_source: None,
            source_prefix_v4: 32,
            source_prefix_v6: 64,
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
    /// assert!(ServerConfig::builder().max_handshakes(0).build().is_err());
    /// ```
    pub fn builder() -> ServerConfigBuilder {
        ServerConfigBuilder(Self::default())
    }
    /// Authenticated connections kept at most (idle, settling, out for a probe);
    /// handshakes under way have their own bound, `max_handshakes`.
    pub fn max_capacity(&self) -> usize {
        self.max_capacity
    }
    /// Handshakes at once at most.
    pub fn max_handshakes(&self) -> usize {
        self.max_handshakes
    }
    /// Deadline of TLS handshake plus id write.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
    /// Wire form of the id.
    pub fn id_form(&self) -> IdForm {
        self.id_form
    }
    /// How often idle connections are probed.
    pub fn sweep_interval(&self) -> Duration {
        self.sweep_interval
    }
    /// Idle connections older than this are closed; `None`: no limit.
    pub fn max_idle_age(&self) -> Option<Duration> {
        self.max_idle_age
    }
    /// How long after its id was written a connection waits before it can be handed
    /// out.
    pub fn settle(&self) -> Duration {
        self.settle
    }
    /// Handshakes under way from one source at most; `None`: no limit.
    pub fn pending_per_source(&self) -> Option<usize> {
        self.pending_per_source
    }
    /// Idle (and settling) connections from one source at most; `None`: no limit.
    pub fn idle_per_source(&self) -> Option<usize> {
        self.idle_per_source
    }
    /// The prefix lengths that group peer addresses into sources: IPv4, IPv6.
    pub fn source_prefixes(&self) -> (u8, u8) {
        (self.source_prefix_v4, self.source_prefix_v6)
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
    /// Handshakes at once at most. Default 256. When every slot is taken, a new
    /// connection evicts the oldest handshake under way instead of being refused: a
    /// peer that opens connections and stays silent (slowloris) can then delay the
    /// legitimate client's handshakes by at most the time it takes to open this many
    /// newer connections, never shut it out until its deadline.
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.0.max_handshakes = n;
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
    /// How often idle connections are probed and dead ones dropped. Default 1 s.
    pub fn sweep_interval(mut self, d: Duration) -> Self {
        self.0.sweep_interval = d;
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
    /// Handshakes under way from one source (see
    /// [`source_prefixes`](Self::source_prefixes)) at most. Default `Some(64)`
    /// ([`DEFAULT_PENDING_PER_SOURCE`]): a client pool of this crate dials up to 64 at
    /// once (a Go client pool one), so the legitimate client never meets it. Over the
    /// quota a new connection from that source evicts the same source's oldest
    /// handshake: one source cannot take more than this many of the
    /// [`max_handshakes`](Self::max_handshakes) slots. `None`: no limit.
    pub fn pending_per_source(mut self, n: Option<usize>) -> Self {
        self.0.pending_per_source = n;
        self
    }
    /// Idle (and settling) connections from one source at most; over it, a new
    /// connection from that source is refused and counted as `refused_quota`. Default
    /// `None`, no limit, as in the Go package: the legitimate client is one source
    /// that holds the whole pool, so only an operator who knows the topology (for
    /// example several clients behind distinct addresses) can choose a quota that
    /// does not starve it. Connections a get handed out and that came back with
    /// `put_back` are not counted.
    pub fn idle_per_source(mut self, n: Option<usize>) -> Self {
        self.0.idle_per_source = n;
        self
    }
    /// How peer addresses group into sources for the per-source quotas: the lengths
    /// of the IPv4 and IPv6 prefixes. Default /32 and /64 (one host; one IPv6 site,
    /// since a single host is commonly given a whole /64). An IPv4-mapped IPv6 address
    /// counts as IPv4. At most 32 and 128.
    pub fn source_prefixes(mut self, v4: u8, v6: u8) -> Self {
        self.0.source_prefix_v4 = v4;
        self.0.source_prefix_v6 = v6;
        self
    }
    /// How long a new connection waits, after its id was written, before a get can
    /// take it. Default [`DEFAULT_SETTLE`] (25 ms).
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
        self.0.settle = d;
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
        if c.max_handshakes == 0 {
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
        if c.pending_per_source == Some(0) {
            return Err(ConfigError::Zero {
                what: "pending handshakes per source",
            });
        }
        if c.idle_per_source == Some(0) {
            return Err(ConfigError::Zero {
                what: "idle connections per source",
            });
        }
        if c.source_prefix_v4 > 32 || c.source_prefix_v6 > 128 {
            return Err(ConfigError::BadPrefix {
                v4: c.source_prefix_v4,
                v6: c.source_prefix_v6,
            });
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
        if c.max_handshakes == 0 {
            c.max_handshakes = d.max_handshakes;
        }
        if c.handshake_timeout.is_zero() {
            c.handshake_timeout = d.handshake_timeout;
        }
        (c.sweep_interval, c.max_idle_age) = fix_sweep(c.sweep_interval, c.max_idle_age);
        if c.pending_per_source == Some(0) {
            c.pending_per_source = d.pending_per_source;
        }
        if c.idle_per_source == Some(0) {
            c.idle_per_source = d.idle_per_source;
        }
        c.source_prefix_v4 = c.source_prefix_v4.min(32);
        c.source_prefix_v6 = c.source_prefix_v6.min(128);
        c
    }
}

fn check_sweep(interval: Duration, max_idle_age: Option<Duration>) -> Result<(), ConfigError> {
    if interval.is_zero() {
        return Err(ConfigError::ZeroDuration {
            what: "sweep interval",
        });
    }
    if max_idle_age.is_some_and(|a| a.is_zero()) {
        return Err(ConfigError::ZeroDuration {
            what: "maximum idle age",
        });
    }
    Ok(())
}

/// A zero sweep interval becomes the default 1 s; a zero idle age means no limit.
fn fix_sweep(interval: Duration, max_idle_age: Option<Duration>) -> (Duration, Option<Duration>) {
    let interval = if interval.is_zero() {
        Duration::from_secs(1)
    } else {
        interval
    };
    (interval, max_idle_age.filter(|a| !a.is_zero()))
}

fn check_bounds(
    min_cap: usize,
    max_cap: usize,
    min_iv: Duration,
    max_iv: Duration,
) -> Result<(), ConfigError> {
    if min_cap == 0 {
        return Err(ConfigError::Zero {
            what: "minimum capacity",
        });
    }
    if max_cap == 0 {
        return Err(ConfigError::Zero {
            what: "maximum capacity",
        });
    }
    if min_cap > max_cap {
        return Err(ConfigError::MinAboveMax {
            what: "capacity",
            min: min_cap.to_string(),
            max: max_cap.to_string(),
        });
    }
    if min_iv.is_zero() {
        return Err(ConfigError::ZeroDuration {
            what: "minimum interval",
        });
    }
    if max_iv.is_zero() {
        return Err(ConfigError::ZeroDuration {
            what: "maximum interval",
        });
    }
    if min_iv > max_iv {
        return Err(ConfigError::MinAboveMax {
            what: "interval",
            min: show(min_iv),
            max: show(max_iv),
        });
    }
    Ok(())
}

/// The Go package's capacity normalisation: zero becomes 1, then swap if reversed.
pub fn go_caps(min: usize, max: usize) -> (usize, usize) {
    let min = min.max(1);
    let max = max.max(1);
    if min > max {
        (max, min)
    } else {
        (min, max)
    }
}

/// The Go package's interval normalisation: zero becomes 1 s, then swap if reversed.
pub fn go_intervals(min: Duration, max: Duration) -> (Duration, Duration) {
    let fix = |d: Duration| {
        if d.is_zero() {
            Duration::from_secs(1)
        } else {
            d
        }
    };
    let (min, max) = (fix(min), fix(max));
    if min > max {
        (max, min)
    } else {
        (min, max)
    }
}

#[cfg(test)]
mod tests;
