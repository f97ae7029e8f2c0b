//! Validated configuration of the client and server machines.
//!
//! `build()` refuses a configuration that cannot work with a [`ConfigError`].
//! `build_go_normalized()` instead fixes it silently the way the Go package v1.0.6
//! does: a capacity of zero becomes 1, an interval of zero becomes 1 s, a minimum above
//! its maximum is swapped with it. The name says so on purpose.

use std::time::Duration;

use crate::adapt::Adaptation;
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
    pub(crate) mode: Mode,
    pub(crate) handshake_timeout: Duration,
    pub(crate) id_timeout: Duration,
    pub(crate) id_form: IdForm,
    pub(crate) adapt: Adaptation,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) max_idle_age: Option<Duration>,
    pub(crate) fail_fast: bool,
    pub(crate) watch: IdleWatch,
}

/// Where a client pool's ids come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The Go protocol's multi mode (the default): the server writes each
    /// connection's id, the client reads it, and the application names the connection
    /// it wants by that id.
    #[default]
    Multi,
    /// The Go package's single mode (`isSingle`): the client draws its own ids and
    /// reads nothing from the server, and a get for any connection dials one at once
    /// when none is idle. It dials with the TLS the pool is given, plain TCP when that
    /// is off (the Go package's single mode is always plain).
    Single,
}

/// What a pool's runtime watches its idle connections for, through the OS's
/// readiness (Linux `epoll`), so that it learns of them without the sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleWatch {
    /// Nothing: the sweep finds dead peers.
    Off,
    /// The peer's hang-up: a dead peer leaves the pool in milliseconds instead of at
    /// the next sweep. The default where the OS reports it (Linux).
    HangUps,
    /// Hang-ups, and bytes on an idle connection as a session the server started in
    /// band (a client only; not in the Go protocol, so set it on both ends).
    ///
    /// The server starts a session itself, on any idle connection, by writing
    /// [`START`](crate::START) and then the session's data; the client learns of it
    /// from the connection becoming readable
    /// ([`Driver::idle_ready`](crate::driver::Driver::idle_ready)), the connection
    /// leaves the idle map, and a get for [`Want::Started`](crate::Want::Started) (an
    /// `accept`) receives it. No id travels over the application's control channel:
    /// the first byte arrives one one-way delay after the server wrote it. Gets by id
    /// still work beside it.
    Starts,
}

impl IdleWatch {
    /// What a readiness watch waits for: `None`, no watch; `Some(bytes)`, hang-ups,
    /// and bytes too when `bytes` (in-band starts).
    pub fn readiness(self) -> Option<bool> {
        match self {
            Self::Off => None,
            Self::HangUps => Some(false),
            Self::Starts => Some(true),
        }
    }
}

impl Default for IdleWatch {
    /// [`HangUps`](Self::HangUps) on Linux, [`Off`](Self::Off) elsewhere (no runtime
    /// of this workspace watches there).
    fn default() -> Self {
        if cfg!(target_os = "linux") {
            Self::HangUps
        } else {
            Self::Off
        }
    }
}

/// The sweep interval of a pool whose idle connections are watched and whose sweep
/// was not set: the OS reports dead peers, so the sweep is left with what readiness
/// cannot see (an idle age past the limit, bytes that must not be there), and a quiet
/// pool of thousands costs next to nothing.
pub const WATCHED_SWEEP: Duration = Duration::from_secs(30);

/// The sweep interval of a pool whose idle connections are not watched.
pub const DEFAULT_SWEEP: Duration = Duration::from_secs(1);

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            min_capacity: 64,
            max_capacity: 1024,
            min_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
            parallelism: 64,
            mode: Mode::Multi,
            handshake_timeout: Duration::from_secs(5),
            id_timeout: Duration::from_secs(5),
            id_form: IdForm::Hex8,
            adapt: Adaptation::default(),
            sweep_interval: None,
            max_idle_age: None,
            fail_fast: true,
            watch: IdleWatch::default(),
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
    /// Where the ids come from.
    pub fn mode(&self) -> Mode {
        self.mode
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
    /// How often idle connections are probed: as set, else [`DEFAULT_SWEEP`] (a
    /// runtime that watches makes it [`WATCHED_SWEEP`] with
    /// [`watched`](Self::watched)).
    pub fn sweep_interval(&self) -> Duration {
        self.sweep_interval.unwrap_or(DEFAULT_SWEEP)
    }
    /// This configuration for a runtime that watches idle connections as
    /// [`watch`](Self::watch) says: the sweep, unless set, runs every
    /// [`WATCHED_SWEEP`] (the OS reports dead peers), and every [`DEFAULT_SWEEP`] when
    /// nothing is watched. A configuration built to the Go package's rules has its
    /// sweep set already, and keeps it.
    #[must_use]
    pub fn watched(mut self) -> Self {
        if self.watch != IdleWatch::Off {
            self.sweep_interval.get_or_insert(WATCHED_SWEEP);
        }
        self
    }
    /// Idle connections older than this are closed and replaced; `None`: no limit.
    pub fn max_idle_age(&self) -> Option<Duration> {
        self.max_idle_age
    }
    /// Whether gets fail at once while nothing can succeed.
    pub fn fail_fast(&self) -> bool {
        self.fail_fast
    }
    /// What idle connections are watched for.
    pub fn watch(&self) -> IdleWatch {
        self.watch
    }
    /// Whether the server starts sessions in band ([`IdleWatch::Starts`]).
    pub fn in_band(&self) -> bool {
        self.watch == IdleWatch::Starts
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
    /// Where ids come from. Default [`Mode::Multi`] (Go: `isSingle` false).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.0.mode = mode;
        self
    }
    /// What idle connections are watched for. Default [`IdleWatch::HangUps`] on Linux,
    /// [`IdleWatch::Off`] elsewhere; [`IdleWatch::Starts`] is in-band activation.
    pub fn watch(mut self, watch: IdleWatch) -> Self {
        self.0.watch = watch;
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
    /// How the capacity and the refill interval adapt to demand, within the bounds of
    /// [`capacity`](Self::capacity) and [`interval`](Self::interval), which the machine
    /// enforces on whatever the policy answers. Default:
    /// [`Adaptation::OfferedDemand`]; [`Adaptation::GoRules`] is the Go package's
    /// rules, rule for rule, with their interval and capacity rules inside;
    /// [`Adaptation::custom`] takes a policy of your own.
    pub fn adapt(mut self, policy: Adaptation) -> Self {
        self.0.adapt = policy;
        self
    }
    /// How often idle connections are probed and dead ones replaced. Default 1 s
    /// ([`DEFAULT_SWEEP`]; the Go package probes only at `get`), or
    /// [`WATCHED_SWEEP`] (30 s) in a runtime that watches idle connections
    /// ([`watch`](Self::watch), [`ClientConfig::watched`]): dead peers are then found
    /// without it.
    pub fn sweep_interval(mut self, d: Duration) -> Self {
        self.0.sweep_interval = Some(d);
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
        if let Adaptation::GoRules(rules) = &c.adapt {
            rules.interval.validate()?;
            rules.capacity.validate()?;
        }
        if c.mode == Mode::Single && c.watch == IdleWatch::Starts {
            return Err(ConfigError::Conflict {
                first: "single mode",
                second: "in-band starts (`IdleWatch::Starts`)",
                hint: "a single-mode pool dials a service that starts no session; use \
                       `Mode::Multi` against a server pool, or watch for `HangUps`",
            });
        }
        Ok(c)
    }

    /// Fixes the bounds the way the Go package does (zero capacity becomes 1, zero
    /// interval becomes 1 s, a minimum above its maximum is swapped), and any other
    /// bad value falls back to its default; the sweep, unless set, runs every second,
    /// watched or not. Never fails.
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
        if let Adaptation::GoRules(rules) = &mut c.adapt {
            let go = crate::GoRules::default();
            if rules.interval.validate().is_err() {
                rules.interval = go.interval;
            }
            if rules.capacity.validate().is_err() {
                rules.capacity = go.capacity;
            }
        }
        if c.mode == Mode::Single && c.watch == IdleWatch::Starts {
            c.watch = IdleWatch::HangUps;
        }
        c
    }
}

mod server;

pub use server::{
    AdmissionLimits, ServerConfig, ServerConfigBuilder, DEFAULT_PENDING_PER_SOURCE,
    DEFAULT_SERVER_MAX_IDLE_AGE, DEFAULT_SETTLE,
};

/// A configuration, or a builder of one: what a runtime's `config` setter takes, so
/// that `ClientConfig::builder().capacity(8, 64)` can be passed as it is and its
/// errors come out of the pool's `build`.
pub trait IntoConfig<C> {
    /// The configuration, checked.
    ///
    /// # Errors
    ///
    /// What the builder's `build` refuses.
    fn into_config(self) -> Result<C, ConfigError>;
}

impl IntoConfig<Self> for ClientConfig {
    fn into_config(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl IntoConfig<ClientConfig> for ClientConfigBuilder {
    fn into_config(self) -> Result<ClientConfig, ConfigError> {
        self.build()
    }
}

impl IntoConfig<Self> for ServerConfig {
    fn into_config(self) -> Result<Self, ConfigError> {
        Ok(self)
    }
}

impl IntoConfig<ServerConfig> for ServerConfigBuilder {
    fn into_config(self) -> Result<ServerConfig, ConfigError> {
        self.build()
    }
}

pub(crate) fn check_sweep(
    interval: Option<Duration>,
    max_idle_age: Option<Duration>,
) -> Result<(), ConfigError> {
    if interval.is_some_and(|i| i.is_zero()) {
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

/// An unset or zero sweep interval becomes 1 s, as the Go package would probe; a zero
/// idle age means no limit.
pub(crate) fn fix_sweep(
    interval: Option<Duration>,
    max_idle_age: Option<Duration>,
) -> (Option<Duration>, Option<Duration>) {
    let interval = interval.filter(|i| !i.is_zero()).unwrap_or(DEFAULT_SWEEP);
    (Some(interval), max_idle_age.filter(|a| !a.is_zero()))
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
