//! The tunnel's own figures on `--metrics`: a server and a client in this process (one
//! recorder, told apart by `role`), some sessions through them, a stranger on control,
//! then the client gone; each step's series scraped over HTTP and checked. Its own
//! test binary: the recorder is global to the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_testkit::load::{self, LoadProgress};
use pool_tls::TunnelKey;
use pool_tunnel::metrics::{follow_client, follow_server, serve};
use pool_tunnel::{start_client, start_server, ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod tunnel_common;
use tunnel_common::{fast, LIMIT};

const SESSIONS: u64 = 20;
const BYTES: usize = 10_000;

async fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

/// The value of the series `name` whose labels include `labels`, if served.
fn value(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, v) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let have: Vec<(&str, &str)> = rest
            .trim_end_matches('}')
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        labels
            .iter()
            .all(|l| have.contains(l))
            .then(|| v.parse().ok())?
    })
}

/// Scrapes until `done(body)` holds, or fails after `LIMIT` with the last body.
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let body = scrape(addr).await;
        if done(&body) {
            return body;
        }
        assert!(start.elapsed() < LIMIT, "never {what}:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn at_least(body: &str, name: &str, labels: &[(&str, &str)], min: f64) -> bool {
    value(body, name, labels).is_some_and(|v| v >= min)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_sessions_bytes_and_control_are_counted_on_both_sides() {
    let (metrics, _task) = serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (target, _echo) = load::start_echo().await.unwrap();
    let server = start_server(ServerConfig {
        timeouts: fast(),
        ..ServerConfig::loopback(TunnelKey::generate().unwrap())
    })
    .await
    .unwrap();
    let client = start_client(ClientConfig {
        timeouts: fast(),
        ..ClientConfig::for_server(&server, target)
    })
    .await
    .unwrap();
    const S: (&str, &str) = ("role", "server");
    const C: (&str, &str) = ("role", "client");
    let sessions = async {
        assert!(server.wait_control(LIMIT).await, "no control");
        let report = load::run_load(
            server.public_addr(),
            SESSIONS,
            10,
            BYTES,
            LIMIT,
            Arc::new(LoadProgress::default()),
        )
        .await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let n = SESSIONS as f64;
        let sent = (SESSIONS as usize * BYTES) as f64;
        let body = scrape_until(metrics, "every session ended on both sides", |b| {
            [S, C].iter().all(|&r| {
                at_least(
                    b,
                    "tunnel_sessions_ended_total",
                    &[r, ("outcome", "relayed")],
                    n,
                )
            }) && [S, C]
                .iter()
                .all(|&r| value(b, "tunnel_sessions_active", &[r]) == Some(0.0))
        })
        .await;
        // The server counts each user once; the client may count more, when a session
        // was replayed on another pooled connection (a slow ack under load).
        assert_eq!(
            value(&body, "tunnel_sessions_total", &[S]),
            Some(n),
            "{body}"
        );
        assert!(at_least(&body, "tunnel_sessions_total", &[C], n), "{body}");
        let failed = [S, ("outcome", "failed")];
        assert_eq!(
            value(&body, "tunnel_sessions_ended_total", &failed),
            Some(0.0)
        );
        for r in [S, C] {
            for d in ["to_target", "to_user"] {
                // Every byte sent came back (an echo), and was counted each way.
                let bytes = value(&body, "tunnel_bytes_total", &[r, ("direction", d)]);
                assert!(
                    bytes.is_some_and(|b| b >= sent),
                    "{r:?} {d}: {bytes:?}\n{body}"
                );
            }
            assert_eq!(value(&body, "tunnel_control_up", &[r]), Some(1.0), "{body}");
            // Once at least (a loaded machine may lose a heartbeat and reconnect).
            let ups = [r, ("to", "up")];
            assert!(
                at_least(&body, "tunnel_control_changes_total", &ups, 1.0),
                "{body}"
            );
            assert!(at_least(
                &body,
                "tunnel_control_connections_total",
                &[r],
                1.0
            ));
        }
        assert_eq!(value(&body, "tunnel_users_total", &[S]), Some(n), "{body}");
        for reason in ["full", "source"] {
            let refused = [S, ("reason", reason)];
            assert_eq!(
                value(&body, "tunnel_users_refused_total", &refused),
                Some(0.0)
            );
        }
        // A stranger on control who sends nothing and leaves: refused for no token.
        let no_token = [S, ("reason", "no_token")];
        assert_eq!(
            value(&body, "tunnel_control_refused_total", &no_token),
            Some(0.0)
        );
        drop(TcpStream::connect(server.control_addr()).await.unwrap());
        scrape_until(metrics, "the stranger refused", |b| {
            at_least(b, "tunnel_control_refused_total", &no_token, 1.0)
        })
        .await;
    };
    // The client's figures are followed while it runs; the server's until the end.
    let with_client = async {
        tokio::select! {
            _ = follow_client(&client) => unreachable!(),
            () = sessions => {}
        }
        client.shutdown().await;
        let body = scrape_until(metrics, "control down at the server", |b| {
            value(b, "tunnel_control_up", &[S]) == Some(0.0)
        })
        .await;
        let downs = [S, ("to", "down")];
        assert!(
            at_least(&body, "tunnel_control_changes_total", &downs, 1.0),
            "{body}"
        );
    };
    tokio::select! {
        _ = follow_server(&server) => unreachable!(),
        () = with_client => {}
    }
}
