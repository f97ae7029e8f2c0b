//! The tunnel's own figures on `--metrics`: a server and a client in this process (one
//! recorder, told apart by `role`) with two services, one TCP and one UDP; known
//! sessions and datagrams through each, a stranger on control, then the client gone;
//! each step's series scraped over HTTP and checked, the tunnel's and each service's.
//! Its own test binary: the recorder is global to the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_testkit::load::{self, LoadProgress};
use pool_testkit::udp_load::{answer, query, request};
use pool_tls::TunnelKey;
use pool_tunnel::config::{ClientService, ServerService, ServiceProtocol};
use pool_tunnel::metrics::{follow_client, follow_server, serve};
use pool_tunnel::{start_client, start_server, ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

mod tunnel_common;
use tunnel_common::{fast, LIMIT};

const SESSIONS: u64 = 20;
const BYTES: usize = 10_000;
/// Queries to the UDP service, from one user address.
const QUERIES: u16 = 30;

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
    let dns = pool_testkit::udp_load::service("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    // The UDP service holds one association: a second user address is refused.
    let mut udp = ServerService::new("dns", any);
    udp.protocol = ServiceProtocol::Udp;
    udp.max_sessions = 1;
    let server = start_server(ServerConfig {
        timeouts: fast(),
        services: vec![ServerService::new("web", any), udp],
        ..ServerConfig::loopback(TunnelKey::generate().unwrap())
    })
    .await
    .unwrap();
    let mut udp = ClientService::new("dns", dns.addr.to_string());
    udp.protocol = ServiceProtocol::Udp;
    let client = start_client(ClientConfig {
        timeouts: fast(),
        services: vec![ClientService::new("web", target.to_string()), udp],
        ..ClientConfig::for_server(&server, target)
    })
    .await
    .unwrap();
    const S: (&str, &str) = ("role", "server");
    const C: (&str, &str) = ("role", "client");
    let sessions = async {
        assert!(server.wait_control(LIMIT).await, "no control");
        // The TCP service's sessions and the UDP service's queries at once.
        let tcp = load::run_load(
            server.service_addr("web").unwrap(),
            SESSIONS,
            10,
            BYTES,
            LIMIT,
            Arc::new(LoadProgress::default()),
        );
        let (report, udp) = tokio::join!(tcp, udp_traffic(&server));
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let n = SESSIONS as f64;
        let sent = (SESSIONS as usize * BYTES) as f64;
        let q = f64::from(QUERIES);
        let body = scrape_until(
            metrics,
            "every session and datagram counted on both sides",
            |b| {
                [S, C].iter().all(|&r| {
                    at_least(
                        b,
                        "tunnel_sessions_ended_total",
                        &[r, ("outcome", "relayed")],
                        n,
                    ) && ["to_target", "to_user"].iter().all(|&d| {
                        let labels = [r, ("service", "dns"), ("direction", d)];
                        value(b, "tunnel_udp_datagrams_total", &labels) == Some(q)
                    })
                }) && [S, C].iter().all(|&r| {
                    let web = [r, ("service", "web")];
                    value(b, "tunnel_service_sessions_active", &web) == Some(0.0)
                })
                    // The client's own figure counts the UDP association, which lives on.
                    && value(b, "tunnel_sessions_active", &[S]) == Some(0.0)
                    && value(b, "tunnel_sessions_active", &[C]) == Some(1.0)
                    && value(
                        b,
                        "tunnel_udp_refused_total",
                        &[S, ("service", "dns"), ("reason", "full")],
                    ) == Some(1.0)
            },
        )
        .await;
        each_service_counts_its_own(&body, n, udp);
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

/// [`QUERIES`] queries to the UDP service `dns` from one user address, each answer
/// checked, then a datagram from a second address, which the service (holding one
/// association) refuses; the payload bytes sent each way.
async fn udp_traffic(server: &pool_tunnel::ServerHandle) -> (usize, usize) {
    assert!(server.wait_control(LIMIT).await, "no control");
    let public = server.service_addr("dns").unwrap();
    let user = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    user.connect(public).await.unwrap();
    let (mut up, mut down) = (0usize, 0usize);
    for id in 0..QUERIES {
        let name = format!("q{id}.example.test");
        query(&user, id, name.as_bytes(), LIMIT).await.unwrap();
        let req = request(id, name.as_bytes());
        up += req.len();
        down += answer(&req).unwrap().len();
    }
    // A second address while the one association is live (and not quiet): refused.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other.send_to(b"\0\0late", public).await.unwrap();
    (up, down)
}

/// The per-service series in `body`: the TCP service `web` carried `n` echo sessions
/// of [`BYTES`] each way, the UDP service `dns` [`QUERIES`] queries of `udp` payload
/// bytes each way from one user address and refused a second address; each side's
/// series of each service are exactly that traffic, and nothing of one service shows
/// in the other's.
fn each_service_counts_its_own(body: &str, n: f64, (up, down): (usize, usize)) {
    const S: (&str, &str) = ("role", "server");
    const C: (&str, &str) = ("role", "client");
    const WEB: (&str, &str) = ("service", "web");
    const DNS: (&str, &str) = ("service", "dns");
    let is = |name: &str, labels: &[(&str, &str)], want: f64| {
        let got = value(body, name, labels);
        assert_eq!(got, Some(want), "{name} {labels:?}\n{body}");
    };
    let get = |name: &str, labels: &[(&str, &str)]| value(body, name, labels).unwrap();
    let bytes = (n as usize * BYTES) as f64;
    for r in [S, C] {
        // The TCP service: its sessions and bytes; none of the UDP service's.
        let ended = |outcome| {
            get(
                "tunnel_service_sessions_ended_total",
                &[r, WEB, ("outcome", outcome)],
            )
        };
        is(
            "tunnel_service_sessions_ended_total",
            &[r, WEB, ("outcome", "relayed")],
            n,
        );
        // The client may have started a session twice (replayed by the server); every
        // one it started ended.
        is(
            "tunnel_service_sessions_total",
            &[r, WEB],
            ended("relayed") + ended("failed"),
        );
        is("tunnel_service_sessions_active", &[r, WEB], 0.0);
        for d in ["to_target", "to_user"] {
            is(
                "tunnel_service_bytes_total",
                &[r, WEB, ("direction", d)],
                bytes,
            );
            is(
                "tunnel_udp_datagrams_total",
                &[r, WEB, ("direction", d)],
                0.0,
            );
            is(
                "tunnel_service_bytes_total",
                &[r, DNS, ("direction", d)],
                0.0,
            );
        }
        // The UDP service: one live association, every datagram and payload byte.
        is("tunnel_udp_associations_total", &[r, DNS], 1.0);
        is("tunnel_udp_associations_active", &[r, DNS], 1.0);
        let to = |d| [r, DNS, ("direction", d)];
        is("tunnel_udp_bytes_total", &to("to_target"), up as f64);
        is("tunnel_udp_bytes_total", &to("to_user"), down as f64);
        for reason in ["full", "too_long", "send_failed"] {
            is(
                "tunnel_udp_dropped_total",
                &[r, DNS, ("reason", reason)],
                0.0,
            );
        }
        is("tunnel_service_sessions_total", &[r, DNS], 0.0);
    }
    // Only the server sees users and refusals.
    is("tunnel_service_users_total", &[S, WEB], n);
    is("tunnel_service_sessions_total", &[S, WEB], n);
    is(
        "tunnel_service_sessions_ended_total",
        &[S, WEB, ("outcome", "failed")],
        0.0,
    );
    for reason in ["full", "source"] {
        is(
            "tunnel_service_refused_total",
            &[S, WEB, ("reason", reason)],
            0.0,
        );
    }
    is(
        "tunnel_udp_refused_total",
        &[S, DNS, ("reason", "source")],
        0.0,
    );
    is(
        "tunnel_udp_refused_total",
        &[S, WEB, ("reason", "full")],
        0.0,
    );
    is("tunnel_service_users_total", &[S, DNS], 0.0);
}
