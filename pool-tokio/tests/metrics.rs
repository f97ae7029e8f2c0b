//! The `metrics` feature: a Prometheus exporter installed before the pools sees every
//! counter and gauge of `Stats` under its name, with the `role` and `name` labels.

mod common;

use std::time::Duration;

use common::*;
use metrics_exporter_prometheus::PrometheusBuilder;
use pool_tokio::metrics as m;
use pool_tokio::{ClientConfig, IpFilter, ServerConfig};
use pool_tokio::{ClientPool, ConnId, GetError, ServerPool};

/// The value of the sample `name{labels...}` in a Prometheus text rendering: the line
/// of that name whose labels include all of `labels` (in any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let ok = n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse().ok()).flatten()
        })
        .next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stat_is_published_with_its_labels() {
    // Before the pools: they register their metrics when built.
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let tick = Duration::from_millis(50);

    // No settle time: the exact "at once" count below must not depend on whether the
    // get comes before or after a new connection settles (active() counts settling).
    let server = ServerPool::builder()
        .bind(loopback())
        .config(
            ServerConfig::builder()
                .sweep_interval(tick)
                .settle(Duration::ZERO),
        )
        .name("tunnel")
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(2, 2).sweep_interval(tick))
        .name("tunnel")
        .build()
        .unwrap();
    assert_eq!(client.name(), "tunnel");
    // A server nobody may reach: its gets time out and a stranger is refused.
    let lonely = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().sweep_interval(tick))
        .name("lonely")
        .filter(IpFilter::parse("192.0.2.1").unwrap())
        .build()
        .unwrap();
    assert_eq!(lonely.name(), "lonely");

    assert!(server.wait_idle(2, T).await);
    let (id, mut s) = server.get_timeout(T).await.unwrap();
    let mut c = client.get_timeout(id, T).await.unwrap();
    roundtrip(&mut s, &mut c).await;
    let unknown: ConnId = "00000000".parse().unwrap();
    assert!(eventually(|| client.stats().status.in_flight == 0).await);
    let err = client.get_timeout(unknown, T).await.unwrap_err();
    assert!(matches!(err, GetError::NotFound(_)), "{err:?}");
    server.add_error();
    let stranger = tokio::net::TcpStream::connect(lonely.local_addr()).await;
    drop(stranger);
    let err = lonely.get_timeout(tick).await.unwrap_err();
    assert!(matches!(err, GetError::Timeout { .. }), "{err:?}");
    assert!(eventually(|| lonely.stats().counters.refused_filter == 1).await);

    let client_l = [("role", "client"), ("name", "tunnel")];
    let server_l = [("role", "server"), ("name", "tunnel")];
    let lonely_l = [("role", "server"), ("name", "lonely")];
    let with = |base: &[(&'static str, &'static str)], k, v| {
        let mut l = base.to_vec();
        l.push((k, v));
        l
    };
    // Counts and gauges are published at each pool's next driver turn: wait until the
    // exact figures asserted below are all out, then read the rendering again.
    let exact = [
        ("pool_gets_total", with(&server_l, "result", "at_once"), 1.0),
        ("pool_gets_total", with(&client_l, "result", "at_once"), 1.0),
        (
            "pool_gets_total",
            with(&client_l, "result", "not_found"),
            1.0,
        ),
        ("pool_gets_total", with(&lonely_l, "result", "timeout"), 1.0),
        (
            "pool_refused_total",
            with(&lonely_l, "reason", "filter"),
            1.0,
        ),
        ("pool_app_errors_total", server_l.to_vec(), 1.0),
        ("pool_capacity", client_l.to_vec(), 2.0),
        ("pool_connections_idle", client_l.to_vec(), 2.0),
        ("pool_connections_idle", server_l.to_vec(), 2.0),
    ];
    assert!(
        eventually(|| {
            let text = prometheus.render();
            exact
                .iter()
                .all(|(name, labels, v)| sample(&text, name, labels) == Some(*v))
        })
        .await,
        "not all published:\n{}",
        prometheus.render()
    );
    let text = prometheus.render();
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };

    // Gauges, on both sides.
    for l in [&client_l, &server_l] {
        for g in [
            m::CONNECTIONS_IDLE,
            m::CONNECTIONS_IN_FLIGHT,
            m::GETS_WAITING,
            m::CAPACITY,
            m::INTERVAL_SECONDS,
        ] {
            get(g, l);
        }
    }
    assert_eq!(get("pool_capacity", &client_l), 2.0);
    assert_eq!(get("pool_connections_idle", &client_l), 2.0);
    assert_eq!(get("pool_connections_idle", &server_l), 2.0);
    assert!(get("pool_interval_seconds", &client_l) > 0.0);
    // A server does not refill: its interval is the sweep's, never zero.
    assert!(get("pool_interval_seconds", &server_l) > 0.0);

    // Dials (client) and handshakes (server) by result.
    for r in ["ok", "connect", "tls", "id", "auth"] {
        get("pool_dials_total", &with(&client_l, "result", r));
        get("pool_handshakes_total", &with(&server_l, "result", r));
    }
    assert!(get("pool_dials_total", &with(&client_l, "result", "ok")) >= 2.0);
    assert!(get("pool_handshakes_total", &with(&server_l, "result", "ok")) >= 2.0);
    assert!(get("pool_dials_started_total", &client_l) >= 2.0);
    assert!(sample(&text, "pool_handshakes_total", &client_l).is_none());
    assert!(sample(&text, "pool_dials_total", &server_l).is_none());

    // Gets by result.
    for r in [
        "at_once",
        "after_wait",
        "timeout",
        "not_found",
        "unreachable",
    ] {
        get("pool_gets_total", &with(&client_l, "result", r));
        get("pool_gets_total", &with(&server_l, "result", r));
    }
    assert_eq!(
        get("pool_gets_total", &with(&server_l, "result", "at_once")),
        1.0
    );
    assert_eq!(
        get("pool_gets_total", &with(&client_l, "result", "at_once")),
        1.0
    );
    assert_eq!(
        get("pool_gets_total", &with(&client_l, "result", "not_found")),
        1.0
    );
    assert_eq!(
        get("pool_gets_total", &with(&lonely_l, "result", "timeout")),
        1.0
    );

    // Evictions, refusals (server only), collisions, application errors.
    for r in ["dead", "aged"] {
        get("pool_evicted_total", &with(&client_l, "reason", r));
        get("pool_evicted_total", &with(&server_l, "reason", r));
    }
    for r in ["filter", "full", "busy"] {
        get("pool_refused_total", &with(&server_l, "reason", r));
    }
    assert_eq!(
        get("pool_refused_total", &with(&lonely_l, "reason", "filter")),
        1.0
    );
    assert!(sample(&text, "pool_refused_total", &client_l).is_none());
    get("pool_id_collisions_total", &client_l);
    get("pool_id_collisions_total", &server_l);
    assert_eq!(get("pool_app_errors_total", &server_l), 1.0);
    assert_eq!(get("pool_app_errors_total", &client_l), 0.0);

    // The wait of each get (a summary by default in this exporter: _count and _sum).
    assert_eq!(get("pool_get_wait_seconds_count", &server_l), 1.0);
    assert_eq!(get("pool_get_wait_seconds_count", &client_l), 2.0);
    assert_eq!(get("pool_get_wait_seconds_count", &lonely_l), 1.0);
    assert!(get("pool_get_wait_seconds_sum", &lonely_l) >= tick.as_secs_f64());
    assert!(text.contains("# HELP pool_gets_total"), "{text}");
}
