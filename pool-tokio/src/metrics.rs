//! The pools' [`Stats`](crate::Stats), published through the
//! [metrics facade](::metrics) (feature `metrics`).
//!
//! Install a recorder (an exporter such as `metrics-exporter-prometheus`) **before**
//! building the pools: each pool registers its metrics once, when it is built, and
//! publishes into those handles from then on, so a recorder installed later sees
//! nothing of a pool built earlier.
//!
//! Every metric has the labels `role` (`client` or `server`) and `name` (the builders'
//! `name`, default `pool`), so several pools in one process stay apart.
//!
//! | name | kind | extra label | what |
//! | --- | --- | --- | --- |
//! | `pool_connections_idle` | gauge | | idle connections ready to hand out |
//! | `pool_connections_in_flight` | gauge | | dials (client) or handshakes (server) under way |
//! | `pool_gets_waiting` | gauge | | gets waiting for a connection |
//! | `pool_capacity` | gauge | | current capacity (server: its maximum) |
//! | `pool_interval_seconds` | gauge | | current refill interval (server: its sweep interval) |
//! | `pool_dials_started_total` | counter | | dials started (client) |
//! | `pool_dials_total` | counter | `result`: `ok`, `connect`, `tls`, `id`, `auth` | finished dials by outcome (client) |
//! | `pool_handshakes_total` | counter | `result`: as above | finished handshakes by outcome (server) |
//! | `pool_gets_total` | counter | `result`: `at_once`, `after_wait`, `timeout`, `not_found`, `unreachable` | gets by outcome |
//! | `pool_evicted_total` | counter | `reason`: `dead`, `aged` | idle connections dropped |
//! | `pool_refused_total` | counter | `reason`: `filter`, `full`, `busy` | connections refused at accept (server) |
//! | `pool_id_collisions_total` | counter | | ids drawn or read that were already in use |
//! | `pool_app_errors_total` | counter | | errors recorded with `add_error` |
//! | `pool_get_wait_seconds` | histogram | | how long each get took, from call to answer |
//!
//! # When they are published
//!
//! The counters and gauges are the core's own, read once per turn of the pool's
//! driver task (which runs at least once per sweep interval, 1 s by default, and after
//! events that move a deadline) and published as absolute values; a get costs nothing
//! more than before. So a scrape may lag the pool by up to one sweep interval.
//! `pool_get_wait_seconds` is recorded by each get as it ends, and
//! `pool_app_errors_total` by each `add_error` (a counter cannot go down, so
//! `reset_error` does not touch it).

use ::metrics::{Counter, Gauge, Histogram, Label, Unit};
use pool_core::{Counters, Status};

/// Idle connections ready to hand out (gauge).
pub const CONNECTIONS_IDLE: &str = "pool_connections_idle";
/// Dials (client) or handshakes (server) under way (gauge).
pub const CONNECTIONS_IN_FLIGHT: &str = "pool_connections_in_flight";
/// Gets waiting for a connection (gauge).
pub const GETS_WAITING: &str = "pool_gets_waiting";
/// Current capacity; a server pool's maximum (gauge).
pub const CAPACITY: &str = "pool_capacity";
/// Current refill interval in seconds; a server pool's sweep interval (gauge).
pub const INTERVAL_SECONDS: &str = "pool_interval_seconds";
/// Dials started (client; counter).
pub const DIALS_STARTED_TOTAL: &str = "pool_dials_started_total";
/// Finished dials by `result` (client; counter).
pub const DIALS_TOTAL: &str = "pool_dials_total";
/// Finished handshakes by `result` (server; counter).
pub const HANDSHAKES_TOTAL: &str = "pool_handshakes_total";
/// Gets by `result` (counter).
pub const GETS_TOTAL: &str = "pool_gets_total";
/// Idle connections dropped, by `reason` (counter).
pub const EVICTED_TOTAL: &str = "pool_evicted_total";
/// Connections refused at accept, by `reason` (server; counter).
pub const REFUSED_TOTAL: &str = "pool_refused_total";
/// Ids drawn or read that were already in use (counter).
pub const ID_COLLISIONS_TOTAL: &str = "pool_id_collisions_total";
/// Errors the application recorded with `add_error` (counter).
pub const APP_ERRORS_TOTAL: &str = "pool_app_errors_total";
/// How long each get took, from call to answer, in seconds (histogram).
pub const GET_WAIT_SECONDS: &str = "pool_get_wait_seconds";

/// The values of `result` on [`DIALS_TOTAL`] and [`HANDSHAKES_TOTAL`], in the order
/// [`Publisher::publish`] fills them.
const STEP_RESULTS: [&str; 5] = ["ok", "connect", "tls", "id", "auth"];
const GET_RESULTS: [&str; 5] = [
    "at_once",
    "after_wait",
    "timeout",
    "not_found",
    "unreachable",
];
const EVICT_REASONS: [&str; 2] = ["dead", "aged"];
const REFUSE_REASONS: [&str; 3] = ["filter", "full", "busy"];

/// One pool's metric handles, registered when the pool is built.
pub(crate) struct Publisher {
    idle: Gauge,
    in_flight: Gauge,
    waiting: Gauge,
    capacity: Gauge,
    interval: Gauge,
    dials_started: Option<Counter>,
    steps: [Counter; 5],
    gets: [Counter; 5],
    evicted: [Counter; 2],
    refused: Option<[Counter; 3]>,
    id_collisions: Counter,
    pub(crate) app_errors: Counter,
    pub(crate) get_wait: Histogram,
}

impl Publisher {
    pub(crate) fn new(client: bool, name: &str) -> Self {
        describe();
        let base = vec![
            Label::new("role", if client { "client" } else { "server" }),
            Label::new("name", name.to_owned()),
        ];
        let with = |key: &'static str, value: &'static str| {
            let mut l = base.clone();
            l.push(Label::new(key, value));
            l
        };
        let gauge = |n: &'static str| ::metrics::gauge!(n, base.clone());
        let counter = |n: &'static str| ::metrics::counter!(n, base.clone());
        let step = if client {
            DIALS_TOTAL
        } else {
            HANDSHAKES_TOTAL
        };
        Self {
            idle: gauge(CONNECTIONS_IDLE),
            in_flight: gauge(CONNECTIONS_IN_FLIGHT),
            waiting: gauge(GETS_WAITING),
            capacity: gauge(CAPACITY),
            interval: gauge(INTERVAL_SECONDS),
            dials_started: client.then(|| counter(DIALS_STARTED_TOTAL)),
            steps: STEP_RESULTS.map(|r| ::metrics::counter!(step, with("result", r))),
            gets: GET_RESULTS.map(|r| ::metrics::counter!(GETS_TOTAL, with("result", r))),
            evicted: EVICT_REASONS.map(|r| ::metrics::counter!(EVICTED_TOTAL, with("reason", r))),
            refused: (!client).then(|| {
                REFUSE_REASONS.map(|r| ::metrics::counter!(REFUSED_TOTAL, with("reason", r)))
            }),
            id_collisions: counter(ID_COLLISIONS_TOTAL),
            app_errors: counter(APP_ERRORS_TOTAL),
            get_wait: ::metrics::histogram!(GET_WAIT_SECONDS, base.clone()),
        }
    }

    /// Publishes one reading of the core's status and counters.
    pub(crate) fn publish(&self, s: &Status, k: &Counters) {
        self.idle.set(s.idle as f64);
        self.in_flight.set(s.in_flight as f64);
        self.waiting.set(s.waiting as f64);
        self.capacity.set(s.capacity as f64);
        self.interval.set(s.interval.as_secs_f64());
        if let Some(c) = &self.dials_started {
            c.absolute(k.dialed);
        }
        let steps = [
            k.created,
            k.dial_failures,
            k.handshake_failures,
            k.id_errors,
            k.auth_failures,
        ];
        let gets = [
            k.served_at_once,
            k.served_after_wait,
            k.get_timeouts,
            k.not_found,
            k.unreachable,
        ];
        for (c, v) in self.steps.iter().zip(steps) {
            c.absolute(v);
        }
        for (c, v) in self.gets.iter().zip(gets) {
            c.absolute(v);
        }
        for (c, v) in self.evicted.iter().zip([k.evicted_dead, k.evicted_aged]) {
            c.absolute(v);
        }
        if let Some(refused) = &self.refused {
            let v = [k.refused_filter, k.refused_full, k.refused_busy];
            for (c, v) in refused.iter().zip(v) {
                c.absolute(v);
            }
        }
        self.id_collisions.absolute(k.id_collisions);
    }
}

/// Units and help texts, for exporters that show them (Prometheus's `# HELP`).
fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(
        CONNECTIONS_IDLE,
        Unit::Count,
        "Idle connections ready to hand out."
    );
    describe_gauge!(
        CONNECTIONS_IN_FLIGHT,
        Unit::Count,
        "Dials (client) or handshakes (server) under way."
    );
    describe_gauge!(GETS_WAITING, Unit::Count, "Gets waiting for a connection.");
    describe_gauge!(CAPACITY, Unit::Count, "Current capacity (server: maximum).");
    describe_gauge!(
        INTERVAL_SECONDS,
        Unit::Seconds,
        "Current refill interval (server: 0)."
    );
    describe_counter!(DIALS_STARTED_TOTAL, Unit::Count, "Dials started.");
    describe_counter!(DIALS_TOTAL, Unit::Count, "Finished dials by result.");
    describe_counter!(
        HANDSHAKES_TOTAL,
        Unit::Count,
        "Finished handshakes by result."
    );
    describe_counter!(GETS_TOTAL, Unit::Count, "Gets by result.");
    describe_counter!(
        EVICTED_TOTAL,
        Unit::Count,
        "Idle connections dropped, by reason."
    );
    describe_counter!(
        REFUSED_TOTAL,
        Unit::Count,
        "Connections refused at accept, by reason."
    );
    describe_counter!(ID_COLLISIONS_TOTAL, Unit::Count, "Ids already in use.");
    describe_counter!(
        APP_ERRORS_TOTAL,
        Unit::Count,
        "Errors recorded by the application."
    );
    describe_histogram!(
        GET_WAIT_SECONDS,
        Unit::Seconds,
        "How long each get took, from call to answer."
    );
}
