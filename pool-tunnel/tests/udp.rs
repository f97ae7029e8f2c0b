//! UDP services through the tunnel: a DNS-like service behind it, answers checked byte
//! for byte, associations that expire, a flood of user addresses held to the bounds.

mod tunnel_common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use pool_testkit::udp_load::{query, service, Service};
use pool_tls::{ServerTls, TlsMode};
use pool_tunnel::config::{ServerService, ServiceProtocol};
use pool_tunnel::udp::UdpLimits;
use pool_tunnel::{start_client, start_server, ClientHandle, ServerHandle};
use tokio::net::UdpSocket;
use tunnel_common::{client_cfg, key, server_cfg, LIMIT};

/// Waits until `ok` holds (an event), polling, for at most `LIMIT`.
async fn until(what: &str, ok: impl Fn() -> bool) {
    let give_up = tokio::time::Instant::now() + LIMIT;
    while !ok() {
        assert!(tokio::time::Instant::now() < give_up, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A server and client whose one service is UDP, to a fresh DNS-like service; the
/// server's service shaped by `shape`, in TLS mode 1 when `tls`.
async fn pair(
    shape: impl Fn(&mut ServerService),
    tls: bool,
) -> (ServerHandle, ClientHandle, Service) {
    let svc = service("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut cfg = server_cfg(key()).map_services(|s| {
        s.protocol = ServiceProtocol::Udp;
        shape(s);
    });
    if tls {
        cfg.tls = Some(ServerTls::self_signed(["localhost"]).unwrap());
    }
    let server = start_server(cfg).await.unwrap();
    // The client's idle timeout stays its default: the server's ends an association.
    let mut ccfg =
        client_cfg(&server, svc.addr).map_services(|s| s.protocol = ServiceProtocol::Udp);
    ccfg.min = 8;
    if tls {
        ccfg.mode = TlsMode::SelfSigned;
    }
    let client = start_client(ccfg).await.unwrap();
    assert!(server.wait_control(LIMIT).await);
    (server, client, svc)
}

async fn user_from(ip: [u8; 4], to: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::new(IpAddr::from(ip), 0))
        .await
        .unwrap();
    s.connect(to).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode1_50_users_get_every_answer_byte_checked() {
    let (server, client, svc) = pair(|_| {}, true).await;
    let public = server.public_addr();
    let users = (0..50u16).map(|u| async move {
        let s = user_from([127, 0, 0, 1], public).await;
        for q in 0..20u16 {
            let name = format!("user{u}-q{q}.example.test");
            let r = query(&s, q, name.as_bytes(), Duration::from_secs(10)).await;
            r.map_err(|e| format!("user {u}: {e}"))?;
        }
        Ok::<_, String>(())
    });
    for r in futures_join(users).await {
        r.unwrap();
    }
    // The server counts an answer once its send returned, which may be after the user
    // read it.
    until("the server and the service counted every answer", || {
        server.udp_stats().datagrams_down == 1000
            && svc.answered.load(std::sync::atomic::Ordering::Relaxed) == 1000
    })
    .await;
    let (s, c) = (server.udp_stats(), client.udp_stats());
    assert_eq!(s.associations, 50, "one association per user address");
    assert_eq!(c.associations, 50);
    assert_eq!(s.datagrams_up, 1000);
    assert_eq!((s.dropped, s.bad_frames, c.bad_frames), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_association_expires_on_both_sides_and_a_new_one_starts() {
    let (server, client, _svc) = pair(
        |s| {
            s.relay.idle = Duration::from_millis(300);
            s.quiet = Duration::from_millis(100);
        },
        false,
    )
    .await;
    let user = user_from([127, 0, 0, 1], server.public_addr()).await;
    query(&user, 1, b"a.example.test", LIMIT).await.unwrap();
    assert_eq!(server.udp_stats().active, 1);
    until("the association idles out on both sides", || {
        let (s, c) = (server.udp_stats(), client.udp_stats());
        // The server's timer runs out first and closes the stream: the client's
        // association ends with it.
        s.active == 0 && s.idle_closed == 1 && c.active == 0
    })
    .await;
    // The same address again: a new association, answered.
    query(&user, 2, b"b.example.test", LIMIT).await.unwrap();
    assert_eq!(server.udp_stats().associations, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_user_addresses_stays_within_the_table_and_the_queues() {
    let (server, client, _svc) = pair(
        |s| {
            s.max_sessions = 32;
            s.per_source.sessions = 8;
        },
        false,
    )
    .await;
    let queue_total = UdpLimits::default().queue_total as u64;
    let public = server.public_addr();
    // 20 networks of strangers, 50 addresses each, 3 datagrams of 1 KB from each.
    let flood = async {
        let mut sent = 0u32;
        for net in 1..=20u8 {
            for host in 2..52u8 {
                let s = user_from([127, 0, net, host], public).await;
                for _ in 0..3 {
                    if s.send(&[0x55; 1000]).await.is_ok() {
                        sent += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
        }
        sent
    };
    // An honest user meanwhile: 50 queries, each retried as a resolver does (a
    // datagram may be dropped while the queues are full).
    let honest = async {
        let s = user_from([127, 0, 0, 1], public).await;
        let mut retries = 0;
        for q in 0..50u16 {
            let name = format!("honest-{q}.example.test");
            let mut tries = 0;
            while let Err(e) = query(&s, q, name.as_bytes(), Duration::from_millis(500)).await {
                tries += 1;
                assert!(tries < 10, "query {q}: {e}");
            }
            retries += tries;
        }
        retries
    };
    let (sent, retries) = tokio::join!(flood, honest);
    let (s, c) = (server.udp_stats(), client.udp_stats());
    println!("flood: {sent} datagrams; honest retries {retries}; server {s:?}; client {c:?}");
    assert_eq!(sent, 3000);
    assert!(s.peak <= 32, "associations at once: {}", s.peak);
    assert!(s.queued_peak <= queue_total, "queued: {}", s.queued_peak);
    assert!(
        s.refused + s.refused_source + s.evicted > 0,
        "the table was full"
    );
    // The client ends an evicted association when the server's close reaches it (its
    // peak may pass the cap by the closes in flight), and then holds what the server
    // holds.
    until("the client holds what the server holds", || {
        client.udp_stats().active == server.udp_stats().active
    })
    .await;
    assert!(client.udp_stats().active <= 32);
    until(
        "every queued datagram went to its stream or was counted",
        || server.udp_stats().queued == 0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_session_at_a_tcp_client_is_refused_and_counted_on_both_sides() {
    let svc = service("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let cfg = server_cfg(key()).map_services(|s| s.protocol = ServiceProtocol::Udp);
    let server = start_server(cfg).await.unwrap();
    let client = start_client(client_cfg(&server, svc.addr)).await.unwrap();
    assert!(server.wait_control(LIMIT).await);
    let user = user_from([127, 0, 0, 1], server.public_addr()).await;
    user.send(&pool_testkit::udp_load::request(1, b"x.example.test"))
        .await
        .unwrap();
    until("the client refuses the kind, the server counts it", || {
        client.stats().wrong_kind == 1 && server.stats().wrong_kind == 1
    })
    .await;
    let (s, c) = (server.udp_stats(), client.udp_stats());
    assert_eq!((s.open_failed, s.kind_refused, c.kind_refused), (1, 1, 1));
    assert_eq!(
        s.target_failed, 0,
        "a kind mismatch is not a target failure"
    );
    assert_eq!(client.stats().relayed, 0, "nothing reached the TCP target");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_session_at_a_udp_client_is_reset_and_counted_on_both_sides() {
    let svc = service("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let server = start_server(server_cfg(key())).await.unwrap();
    let ccfg = client_cfg(&server, svc.addr).map_services(|s| s.protocol = ServiceProtocol::Udp);
    let client = start_client(ccfg).await.unwrap();
    assert!(server.wait_control(LIMIT).await);
    // The session starts on the connect (many services speak first), so the reset may
    // come before the user's first byte, even before its connect returned.
    let user = async {
        let mut user = tokio::net::TcpStream::connect(server.public_addr()).await?;
        tokio::io::AsyncWriteExt::write_all(&mut user, b"GET / HTTP/1.0\r\n\r\n").await?;
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut user, &mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    let end = tokio::time::timeout(LIMIT, user)
        .await
        .expect("the user's connection ends");
    let e = end.expect_err("a reset, not a clean end");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    until("both sides count the kind mismatch", || {
        client.stats().wrong_kind == 1 && server.stats().wrong_kind == 1
    })
    .await;
    assert_eq!(client.udp_stats().associations, 0, "no association started");
}

/// Runs the futures at once, each on its own task; their results in order.
async fn futures_join<F>(fs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
