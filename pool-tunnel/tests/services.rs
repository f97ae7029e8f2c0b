//! Many services through one pair: each session reaches its own service's target, a
//! service the client lacks resets its users, a reload adds, removes and changes
//! services under load without failing a session of the others, and the PROXY
//! protocol header carries the user's address to a target that parses it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pool_testkit::load::{self, LoadProgress};
use pool_testkit::udp_load::{self, query};
use pool_tunnel::config::{ClientService, ProxyProtocol, ServerService, ServiceProtocol};
use pool_tunnel::stats::ServiceFigures;
use pool_tunnel::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

mod tunnel_common;
use tunnel_common::*;

fn any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A server with `names` as its services (each on a port of its own) and a client
/// with `client` as its.
async fn pair(
    names: &[&str],
    client: Vec<ClientService>,
) -> (pool_tunnel::ServerHandle, pool_tunnel::ClientHandle) {
    let server = pool_tunnel::start_server(ServerConfig {
        services: names
            .iter()
            .map(|n| ServerService::new(*n, any()))
            .collect(),
        ..server_cfg(key())
    })
    .await
    .unwrap();
    let c = ClientConfig {
        services: client,
        ..client_cfg(&server, any())
    };
    let client = pool_tunnel::start_client(c).await.unwrap();
    assert!(client.wait_control(LIMIT).await);
    assert!(server.wait_control(LIMIT).await);
    (server, client)
}

/// A target that writes `name` to each connection and then echoes.
async fn named_target(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind(any()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                s.write_all(name.as_bytes()).await?;
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await
            });
        }
    });
    addr
}

/// Connects to `public`, reads the target's name, checks an echo; the name.
async fn ask(public: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(public).await?;
    let mut name = [0u8; 5];
    tokio::time::timeout(LIMIT, s.read_exact(&mut name)).await??;
    s.write_all(b"ping").await?;
    let mut back = [0u8; 4];
    tokio::time::timeout(LIMIT, s.read_exact(&mut back)).await??;
    assert_eq!(&back, b"ping");
    Ok(String::from_utf8_lossy(&name).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_session_reaches_its_own_services_target() {
    let (alpha, bravo) = (named_target("alpha").await, named_target("bravo").await);
    let (server, client) = pair(
        &["a", "b"],
        vec![
            ClientService::new("a", alpha.to_string()),
            ClientService::new("b", bravo.to_string()),
        ],
    )
    .await;
    for _ in 0..5 {
        assert_eq!(
            ask(server.service_addr("a").unwrap()).await.unwrap(),
            "alpha"
        );
        assert_eq!(
            ask(server.service_addr("b").unwrap()).await.unwrap(),
            "bravo"
        );
    }
    assert_eq!(server.stats().no_service, 0);
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_the_client_lacks_resets_its_users_and_nothing_else() {
    let alpha = named_target("alpha").await;
    let (server, client) = pair(
        &["a", "ghost"],
        vec![ClientService::new("a", alpha.to_string())],
    )
    .await;
    // The session starts at once (many services speak first): no byte is needed, and
    // the reset may come before the connect has returned.
    let r = async {
        let mut user = TcpStream::connect(server.service_addr("ghost").unwrap()).await?;
        let mut buf = [0u8; 16];
        user.read(&mut buf).await
    };
    let r = tokio::time::timeout(LIMIT, r).await.unwrap();
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "a reset, never a clean end"
    );
    assert_eq!(server.stats().no_service, 1);
    assert_eq!(client.stats().no_service, 1);
    assert_eq!(
        ask(server.service_addr("a").unwrap()).await.unwrap(),
        "alpha"
    );
    client.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_services_under_load_and_fails_no_session_of_the_others() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let bravo = named_target("bravo").await;
    let (server, client) = pair(
        &["steady", "old"],
        vec![
            ClientService::new("steady", echo.to_string()),
            ClientService::new("old", bravo.to_string()),
        ],
    )
    .await;
    let steady = server.service_addr("steady").unwrap();
    let old = server.service_addr("old").unwrap();
    // A session of the service to be removed, open across the reload: it drains.
    let mut held = TcpStream::connect(old).await.unwrap();
    let mut name = [0u8; 5];
    held.read_exact(&mut name).await.unwrap();
    // Load on the service that stays, for the whole reload (bounded: 2,000 sessions,
    // 8 at once, and `LIMIT`).
    const SESSIONS: u64 = 2000;
    let progress = Arc::new(LoadProgress::default());
    let load = tokio::spawn(load::run_load(
        steady,
        SESSIONS,
        8,
        16 * 1024,
        LIMIT,
        progress.clone(),
    ));
    // Wait until the load is under way, then reload both sides: "old" goes, "new"
    // comes.
    let under_way = async {
        while progress.done.load(std::sync::atomic::Ordering::Relaxed) < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(LIMIT, under_way).await.unwrap();
    let alpha = named_target("alpha").await;
    let r = client
        .reload(vec![
            ClientService::new("steady", echo.to_string()),
            ClientService::new("new", alpha.to_string()),
        ])
        .unwrap();
    assert_eq!(
        (r.added, r.removed),
        (vec!["new".into()], vec!["old".into()])
    );
    let r = server
        .reload(vec![
            ServerService::new("steady", any()),
            ServerService::new("new", any()),
        ])
        .await
        .unwrap();
    assert_eq!(r.added, ["new"]);
    assert_eq!(r.removed, ["old"]);
    assert_eq!(r.unchanged, ["steady"], "its sessions never notice");
    let done = progress.done.load(std::sync::atomic::Ordering::Relaxed);
    assert!(done < SESSIONS, "the load was still running ({done} done)");
    assert_eq!(server.service_addr("steady"), Some(steady));
    assert_eq!(server.service_addr("old"), None);
    // The new service serves at once; the removed one accepts nobody.
    assert_eq!(
        ask(server.service_addr("new").unwrap()).await.unwrap(),
        "alpha"
    );
    // The old accept loop closes its listener as soon as it sees the reload.
    let closed = async {
        while TcpStream::connect(old).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(LIMIT, closed)
        .await
        .expect("the removed service's port still accepts");
    // The session of the removed service still runs to its end.
    held.write_all(b"still").await.unwrap();
    let mut back = [0u8; 5];
    tokio::time::timeout(LIMIT, held.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"still");
    drop(held);
    let report = load.await.unwrap();
    assert_all_passed(&report, SESSIONS);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_service_restarts_on_its_socket_and_a_bad_reload_changes_nothing() {
    let alpha = named_target("alpha").await;
    let (server, client) = pair(&["a"], vec![ClientService::new("a", alpha.to_string())]).await;
    let public = server.service_addr("a").unwrap();
    // The same address, now fixed (not port 0), with another cap: a restart that
    // keeps the socket.
    let mut changed = ServerService::new("a", public);
    changed.max_sessions = 8;
    let r = server.reload(vec![changed.clone()]).await.unwrap();
    assert_eq!(r.changed, ["a"]);
    assert_eq!(server.service_addr("a"), Some(public));
    assert_eq!(ask(public).await.unwrap(), "alpha");
    // A bad set (two services of one name) is refused whole.
    let e = server
        .reload(vec![changed.clone(), changed.clone()])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("used twice"), "{e}");
    // An address that cannot be bound (taken by someone else) refuses it too.
    let squatter = TcpListener::bind(any()).await.unwrap();
    let e = server
        .reload(vec![
            changed.clone(),
            ServerService::new("b", squatter.local_addr().unwrap()),
        ])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("service b"), "{e}");
    assert_eq!(server.services(), [("a".to_owned(), public)]);
    assert_eq!(ask(public).await.unwrap(), "alpha");
    client.shutdown().await;
    server.shutdown().await;
}

/// A UDP service `name` on both sides, to `target`.
fn udp_service(name: &str, target: SocketAddr) -> (ServerService, ClientService) {
    let mut server = ServerService::new(name, any());
    server.protocol = ServiceProtocol::Udp;
    let mut client = ClientService::new(name, target.to_string());
    client.protocol = ServiceProtocol::Udp;
    (server, client)
}

/// The figures of the service `name` in `all`.
fn figures(all: Vec<ServiceFigures>, name: &str) -> ServiceFigures {
    all.into_iter().find(|f| f.name == name).unwrap()
}

/// Polls `ok` until it holds, for at most `LIMIT`.
async fn until(what: &str, ok: impl Fn() -> bool) {
    let give_up = tokio::time::Instant::now() + LIMIT;
    while !ok() {
        assert!(tokio::time::Instant::now() < give_up, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_a_udp_service_while_a_tcp_service_fails_no_session() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let dns = udp_load::service(any()).await.unwrap();
    let steady = ClientService::new("steady", echo.to_string());
    let (server, client) = pair(&["steady"], vec![steady.clone()]).await;
    let public = server.service_addr("steady").unwrap();
    // Load on the TCP service for the whole of both reloads (bounded: 2,000 sessions,
    // 8 at once, and `LIMIT`).
    const SESSIONS: u64 = 2000;
    let progress = Arc::new(LoadProgress::default());
    let load = tokio::spawn(load::run_load(
        public,
        SESSIONS,
        8,
        16 * 1024,
        LIMIT,
        progress.clone(),
    ));
    let done = || progress.done.load(std::sync::atomic::Ordering::Relaxed);
    until("the load under way", || done() >= 20).await;
    // Added: the client first, so that no datagram finds the server ahead of it.
    let (dns_server, dns_client) = udp_service("dns", dns.addr);
    let r = client.reload(vec![steady.clone(), dns_client]).unwrap();
    assert_eq!(r.added, ["dns"]);
    let r = server
        .reload(vec![ServerService::new("steady", any()), dns_server])
        .await
        .unwrap();
    assert_eq!(
        (r.added, r.unchanged),
        (vec!["dns".into()], vec!["steady".into()])
    );
    let user = UdpSocket::bind(any()).await.unwrap();
    user.connect(server.service_addr("dns").unwrap())
        .await
        .unwrap();
    for id in 0..10u16 {
        let name = format!("q{id}.example.test");
        query(&user, id, name.as_bytes(), LIMIT).await.unwrap();
    }
    assert_eq!(server.udp_stats().active, 1);
    // Removed: the server first, then the client.
    let r = server
        .reload(vec![ServerService::new("steady", any())])
        .await
        .unwrap();
    assert_eq!(
        (r.removed, r.unchanged),
        (vec!["dns".into()], vec!["steady".into()])
    );
    assert_eq!(client.reload(vec![steady]).unwrap().removed, ["dns"]);
    assert!(
        done() < SESSIONS,
        "the load was still running ({} done)",
        done()
    );
    // A datagram has no session to drain: the association ends at once on both sides,
    // and the port closes (a datagram to it is refused by the kernel).
    until("the association ended on both sides", || {
        server.udp_stats().active == 0 && client.udp_stats().active == 0
    })
    .await;
    let refused = async {
        let mut buf = [0u8; 64];
        loop {
            let _ = user
                .send(&udp_load::request(99, b"gone.example.test"))
                .await;
            let got = tokio::time::timeout(Duration::from_millis(200), user.recv(&mut buf)).await;
            if let Ok(Err(e)) = got {
                break e.kind();
            }
        }
    };
    let why = tokio::time::timeout(LIMIT, refused).await.unwrap();
    assert_eq!(why, std::io::ErrorKind::ConnectionRefused);
    // Zero failed sessions on the TCP service: at its users, and in its own counters.
    let report = load.await.unwrap();
    assert_all_passed(&report, SESSIONS);
    // Each side counts a session once its relay ended, which may be after its user
    // saw the end. The server counts each user once; the client may also count a
    // session the server replayed on another pooled connection (no user saw it).
    let n = SESSIONS;
    let steady = |h: Vec<ServiceFigures>| figures(h, "steady").sessions;
    until("every session counted on both sides", || {
        let (s, c) = (
            steady(server.service_stats()),
            steady(client.service_stats()),
        );
        s.relayed + s.failed == n && c.relayed == n
    })
    .await;
    assert_eq!(steady(server.service_stats()).failed, 0);
    let dns_figures = figures(server.service_stats(), "dns").udp;
    assert_eq!(
        (dns_figures.datagrams_up, dns_figures.datagrams_down),
        (10, 10)
    );
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

/// Writes a byte on `s` and reads it back from the echo.
async fn echo_once(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    tokio::time::timeout(LIMIT, s.read_exact(&mut b)).await??;
    Ok(())
}

/// Waits until `s` ends (a close or a reset; no byte comes), for at most `LIMIT`.
async fn ended(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(LIMIT, s.read(&mut b)).await;
    assert!(matches!(r, Ok(Ok(0) | Err(_))), "not ended: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_keeps_its_own_limits() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    // "small" holds 2 sessions at once, "short" ends a session idle for 300 ms, "big"
    // has the defaults; all three through one pool.
    let mut small = ServerService::new("small", any());
    small.max_sessions = 2;
    let mut short = ServerService::new("short", any());
    short.relay.idle = Duration::from_millis(300);
    short.quiet = Duration::from_millis(300);
    let server = pool_tunnel::start_server(ServerConfig {
        services: vec![small, short, ServerService::new("big", any())],
        ..server_cfg(key())
    })
    .await
    .unwrap();
    let client = pool_tunnel::start_client(ClientConfig {
        services: ["small", "short", "big"]
            .map(|n| ClientService::new(n, echo.to_string()))
            .into(),
        ..client_cfg(&server, any())
    })
    .await
    .unwrap();
    assert!(server.wait_control(LIMIT).await);
    let addr = |n| server.service_addr(n).unwrap();
    let open = |n| async move {
        let mut s = TcpStream::connect(addr(n)).await.unwrap();
        echo_once(&mut s).await.unwrap();
        s
    };
    // "small" at its cap: the next user is closed at once (same source, no quiet one).
    let mut held = vec![open("small").await, open("small").await];
    let mut third = TcpStream::connect(addr("small")).await.unwrap();
    ended(&mut third).await;
    // "big" takes more than "small"'s cap meanwhile.
    let mut big = Vec::new();
    for _ in 0..5 {
        big.push(open("big").await);
    }
    // "short" ends its silent session at its idle timeout; "big"'s sessions, silent as
    // long, live on, and so do "small"'s.
    let mut quiet = open("short").await;
    ended(&mut quiet).await;
    for s in big.iter_mut().chain(held.iter_mut()) {
        echo_once(s).await.unwrap();
    }
    let of = |n| figures(server.service_stats(), n).sessions;
    // The idle session's user saw its reset before its task counted it.
    until("the idle session counted", || of("short").failed == 1).await;
    let (small, short, big_f) = (of("small"), of("short"), of("big"));
    assert_eq!(
        (small.users_refused, small.sessions_active),
        (1, 2),
        "{small:?}"
    );
    assert_eq!(
        (big_f.users_refused, big_f.sessions_active),
        (0, 5),
        "{big_f:?}"
    );
    assert_eq!((short.idle_closed, short.relayed), (1, 0), "{short:?}");
    assert_eq!(big_f.idle_closed + small.idle_closed, 0);
    drop((held, big));
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

/// What a target that reads a PROXY header learned.
#[derive(Debug, PartialEq, Eq)]
struct Proxied {
    source: SocketAddr,
    destination: SocketAddr,
}

/// Reads a PROXY protocol header, v1 or v2, written here from HAProxy's specification
/// (not with the crate the tunnel writes it with).
async fn read_proxy_header(s: &mut TcpStream) -> Result<Proxied, String> {
    const V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
    let mut first = [0u8; 12];
    s.read_exact(&mut first).await.map_err(|e| e.to_string())?;
    if &first == V2 {
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await.map_err(|e| e.to_string())?;
        if head[0] != 0x21 {
            return Err(format!("version/command {:#x}", head[0]));
        }
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        return match head[1] {
            0x11 if len >= 12 => {
                let ip = |b: &[u8]| std::net::IpAddr::from([b[0], b[1], b[2], b[3]]);
                Ok(Proxied {
                    source: SocketAddr::new(ip(&body[0..4]), port(&body[8..10])),
                    destination: SocketAddr::new(ip(&body[4..8]), port(&body[10..12])),
                })
            }
            0x21 if len >= 36 => {
                let ip = |b: &[u8]| {
                    let a: [u8; 16] = b.try_into().unwrap();
                    std::net::IpAddr::from(a)
                };
                Ok(Proxied {
                    source: SocketAddr::new(ip(&body[0..16]), port(&body[32..34])),
                    destination: SocketAddr::new(ip(&body[16..32]), port(&body[34..36])),
                })
            }
            other => Err(format!("family/protocol {other:#x}, length {len}")),
        };
    }
    // Version 1: "PROXY TCP4 src dst sport dport\r\n", at most 107 bytes.
    let mut line = first.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() > 107 {
            return Err("a v1 line longer than 107 bytes".into());
        }
        line.push(s.read_u8().await.map_err(|e| e.to_string())?);
    }
    let text = String::from_utf8(line).map_err(|e| e.to_string())?;
    let parts: Vec<&str> = text.trim_end().split(' ').collect();
    match parts[..] {
        ["PROXY", "TCP4" | "TCP6", src, dst, sport, dport] => {
            let at = |ip: &str, port: &str| -> Result<SocketAddr, String> {
                Ok(SocketAddr::new(
                    ip.parse().map_err(|e| format!("{ip}: {e}"))?,
                    port.parse().map_err(|e| format!("{port}: {e}"))?,
                ))
            };
            Ok(Proxied {
                source: at(src, sport)?,
                destination: at(dst, dport)?,
            })
        }
        _ => Err(format!("not a PROXY line: {text:?}")),
    }
}

/// A target that parses the header and answers `source destination\n`, then echoes.
async fn proxy_target() -> SocketAddr {
    let l = TcpListener::bind(any()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let answer = match read_proxy_header(&mut s).await {
                    Ok(p) => format!("{} {}\n", p.source, p.destination),
                    Err(e) => format!("bad header: {e}\n"),
                };
                s.write_all(answer.as_bytes()).await?;
                let (mut r, mut w) = s.split();
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await
            });
        }
    });
    addr
}

/// One line from `s`, without its end.
async fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    loop {
        let b = tokio::time::timeout(LIMIT, s.read_u8())
            .await
            .unwrap()
            .unwrap();
        if b == b'\n' {
            return String::from_utf8_lossy(&line).into_owned();
        }
        line.push(b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_carries_the_users_address_to_the_target() {
    let target = proxy_target().await;
    let mut v1 = ClientService::new("v1", target.to_string());
    v1.proxy_protocol = Some(ProxyProtocol::V1);
    let mut v2 = ClientService::new("v2", target.to_string());
    v2.proxy_protocol = Some(ProxyProtocol::V2);
    let plain = ClientService::new("plain", target.to_string());
    let (server, client) = pair(&["v1", "v2", "plain"], vec![v1, v2, plain]).await;
    for name in ["v1", "v2"] {
        let public = server.service_addr(name).unwrap();
        // The user comes from 127.0.0.2: not the client's address, nor the server's.
        let mut user = connect_from(2, public).await.unwrap();
        let me = user.local_addr().unwrap();
        user.write_all(b"after the header").await.unwrap();
        let line = read_line(&mut user).await;
        assert_eq!(line, format!("{me} {public}"), "service {name}");
        let mut echo = [0u8; 16];
        tokio::time::timeout(LIMIT, user.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &echo, b"after the header",
            "the user's bytes follow the header"
        );
    }
    // Off by default: the target reads the user's bytes as they are.
    let mut user = TcpStream::connect(server.service_addr("plain").unwrap())
        .await
        .unwrap();
    user.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let line = read_line(&mut user).await;
    assert!(line.starts_with("bad header: not a PROXY line"), "{line}");
    client.shutdown().await;
    server.shutdown().await;
}
