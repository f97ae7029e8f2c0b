//! What the application saw: each user's server get, served at once or after a wait,
//! per simulated second, and the idle connections held at both ends over time.

use std::time::Duration;

/// Wait histogram bounds: 10 µs steps to 10 ms, 1 ms steps to 1 s, 100 ms steps to 60 s.
const FINE: u64 = 1_000;
const MID: u64 = 990;
const COARSE: u64 = 590;

fn bucket(wait: Duration) -> usize {
    let us = wait.as_micros() as u64;
    let b = if us < 10_000 {
        us / 10
    } else if us < 1_000_000 {
        FINE + (us - 10_000) / 1_000
    } else {
        (FINE + MID + (us - 1_000_000) / 100_000).min(FINE + MID + COARSE - 1)
    };
    b as usize
}

fn bucket_top(b: usize) -> Duration {
    let b = b as u64;
    let us = if b < FINE {
        (b + 1) * 10
    } else if b < FINE + MID {
        10_000 + (b - FINE + 1) * 1_000
    } else {
        1_000_000 + (b - FINE - MID + 1) * 100_000
    };
    Duration::from_micros(us)
}

/// The application's view of a run: every user's server get, and the idle
/// connection-seconds of both pools.
#[derive(Clone, Debug)]
pub struct GetMetrics {
    /// Users who arrived.
    pub arrivals: u64,
    /// Server gets answered at once.
    pub at_once: u64,
    /// Server gets answered after a wait.
    pub waited: u64,
    /// Server gets that failed, and users who gave up (too many waiting).
    pub failed: u64,
    /// Idle connections at the client, integrated over simulated time (seconds).
    pub idle_conn_secs_client: f64,
    /// Idle (and settling) connections at the server, integrated over simulated time.
    pub idle_conn_secs_server: f64,
    /// Per simulated second: (arrivals, served at once).
    pub per_second: Vec<(u32, u32)>,
    waits: Vec<u64>,
}

impl Default for GetMetrics {
    fn default() -> Self {
        Self {
            arrivals: 0,
            at_once: 0,
            waited: 0,
            failed: 0,
            idle_conn_secs_client: 0.0,
            idle_conn_secs_server: 0.0,
            per_second: Vec::new(),
            waits: vec![0; (FINE + MID + COARSE) as usize],
        }
    }
}

impl GetMetrics {
    fn second(&mut self, at: Duration) -> &mut (u32, u32) {
        let s = at.as_secs() as usize;
        if self.per_second.len() <= s {
            self.per_second.resize(s + 1, (0, 0));
        }
        &mut self.per_second[s]
    }

    pub(super) fn arrived(&mut self, at: Duration) {
        self.arrivals += 1;
        self.second(at).0 += 1;
    }

    pub(super) fn served_at_once(&mut self, at: Duration) {
        self.at_once += 1;
        self.waits[0] += 1;
        self.second(at).1 += 1;
    }

    pub(super) fn served_after(&mut self, wait: Duration) {
        self.waited += 1;
        self.waits[bucket(wait)] += 1;
    }

    /// A failed get counts as a wait of `timeout` in the wait quantiles.
    pub(super) fn failed(&mut self, timeout: Duration) {
        self.failed += 1;
        self.waits[bucket(timeout)] += 1;
    }

    pub(super) fn idle_for(&mut self, dt: Duration, client: usize, server: usize) {
        let s = dt.as_secs_f64();
        self.idle_conn_secs_client += client as f64 * s;
        self.idle_conn_secs_server += server as f64 * s;
    }

    /// The share of users served at once, 0 to 1 (1 with no users).
    pub fn served_at_once_share(&self) -> f64 {
        if self.arrivals == 0 {
            return 1.0;
        }
        self.at_once as f64 / self.arrivals as f64
    }

    /// The `q` quantile of the server get's wait (a served-at-once get waits zero, a
    /// failed one its timeout), to the histogram's resolution (upper bucket bound).
    pub fn wait_quantile(&self, q: f64) -> Duration {
        let total: u64 = self.waits.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in self.waits.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return if b == 0 {
                    Duration::ZERO
                } else {
                    bucket_top(b)
                };
            }
        }
        bucket_top(self.waits.len() - 1)
    }

    /// Idle connection-seconds at both ends.
    pub fn idle_conn_secs(&self) -> f64 {
        self.idle_conn_secs_client + self.idle_conn_secs_server
    }

    /// Seconds after `step` until the first simulated second, at or after it, from
    /// which `window` seconds in a row each serve at least `share` of their users at
    /// once (seconds with no users count as good). `None` if that never happens before
    /// `until`.
    pub fn recovery(
        &self,
        step: Duration,
        until: Duration,
        share: f64,
        window: usize,
    ) -> Option<f64> {
        let (from, to) = (step.as_secs() as usize, until.as_secs() as usize);
        let good = |s: usize| {
            self.per_second
                .get(s)
                .is_none_or(|&(a, o)| a == 0 || f64::from(o) >= share * f64::from(a))
        };
        (from..to.saturating_sub(window - 1).max(from))
            .find(|&s| (s..s + window).all(good))
            .map(|s| (s - from) as f64)
    }
}
