//! Errors of the core, split by who is at fault: the peer (a bad id), the configuration,
//! or the caller of a `get`.

use std::time::Duration;

/// An id that came off the wire was not an id. The peer is at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// A byte that is not a lowercase hex digit.
    #[error("byte 0x{byte:02x} at position {at} is not a lowercase hex digit")]
    BadByte {
        /// The byte.
        byte: u8,
        /// Its position in the id.
        at: usize,
    },
    /// An id of the wrong length.
    #[error("an id is 8 bytes, not {0}")]
    BadLength(usize),
}

/// A configuration that cannot work. Returned by the strict `build()` of each config.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A capacity of zero.
    #[error("{what} must be at least 1")]
    Zero {
        /// Which setting.
        what: &'static str,
    },
    /// A duration of zero.
    #[error("{what} must be longer than zero")]
    ZeroDuration {
        /// Which setting.
        what: &'static str,
    },
    /// A minimum above its maximum.
    #[error("minimum {what} {min} is above the maximum {max}")]
    MinAboveMax {
        /// Which pair of settings.
        what: &'static str,
        /// The minimum, as written.
        min: String,
        /// The maximum, as written.
        max: String,
    },
    /// Two settings that cannot be used together.
    #[error("{first} and {second} do not go together: {hint}")]
    Conflict {
        /// One setting.
        first: &'static str,
        /// The other.
        second: &'static str,
        /// What to do about it.
        hint: &'static str,
    },
    /// A source prefix longer than its address.
    #[error("source prefixes /{v4} (IPv4, at most 32) and /{v6} (IPv6, at most 128)")]
    BadPrefix {
        /// The IPv4 prefix length.
        v4: u8,
        /// The IPv6 prefix length.
        v6: u8,
    },
    /// An adjustment threshold that is not a fraction between 0 and 1, or a low
    /// threshold above the high one.
    #[error("bad {what} threshold: {reason}")]
    BadThreshold {
        /// Which policy.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Why a `get` got no connection, as the core sees it. Drivers wrap it in errors of
/// their own (pool-tokio's `GetError` adds what failed in the background).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GetFailure {
    /// The deadline passed with nothing to hand out.
    #[error("get timed out")]
    Timeout,
    /// The pool is closed.
    #[error("pool is closed")]
    Closed,
    /// No connection with this id exists and none can still arrive: it is neither idle
    /// nor can a handshake in flight produce it.
    #[error("no connection with this id")]
    NotFound,
    /// Nothing can succeed: the pool has never made a connection and every recent
    /// dial failed (see `ClientConfigBuilder::fail_fast`). The driver knows why.
    #[error("no connection can be made: every dial so far failed")]
    Unreachable,
}

/// Formats a duration for a message: `2s`, `1s 500ms` (humantime's form, the one
/// every error of the workspace prints).
pub(crate) fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message prints a duration one way: whole units, no trailing decimals.
    #[test]
    fn durations_print_as_humantime_does() {
        assert_eq!(show(Duration::from_secs(2)), "2s");
        assert_eq!(show(Duration::from_millis(2500)), "2s 500ms");
        assert_eq!(show(Duration::from_millis(100)), "100ms");
    }
}
