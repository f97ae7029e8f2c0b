//! Strangers on the UDP port, from 127.0.0.2 and up: the client-IP filter, the
//! per-source connection cap, and stateless retry under a flood of Initial packets.
//! What they can hold is bounded, and the real client still fills its pool.

mod common;

use std::time::Duration;

use common::{paired, raw};
use pool_quic::{Cause, ClientConfig, ClientPool, ClientTls, Limits, ServerConfig, ServerPool};

fn server_with(limits: Limits, client_ip: &str) -> ServerPool {
    let core = ServerConfig::builder()
        .max_capacity(16)
        .settle(Duration::ZERO)
        .handshake_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    ServerPool::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .config(core)
        .limits(limits)
        .client_ip(client_ip)
        .build()
        .unwrap()
}

fn client(server: &ServerPool, n: usize) -> ClientPool {
    ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(n, n).build().unwrap())
        .tls(ClientTls::SelfSigned {
            pin: server.fingerprint(),
            name: None,
        })
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_ip_filter_refuses_another_address_before_its_handshake() {
    let server = server_with(Limits::default(), "127.0.0.1");
    let ep = raw::client("127.0.0.2", pool_quic::ALPN);
    let e = raw::connect(&ep, server.local_addr()).await.unwrap_err();
    assert!(matches!(Cause::from(e.clone()), Cause::Refused), "{e}");
    assert_eq!(server.counters().refused_filter, 1);
    let c = client(&server, 2);
    assert!(c.wait_idle(2, Duration::from_secs(5)).await);
    let _ = paired(&server, &c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holds_at_most_its_share_of_connections() {
    let limits = Limits {
        per_source: 2,
        ..Limits::default()
    };
    let server = server_with(limits, "");
    let ep = raw::client("127.0.0.2", pool_quic::ALPN);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(raw::connect(&ep, server.local_addr()).await.unwrap());
    }
    let e = raw::connect(&ep, server.local_addr()).await.unwrap_err();
    assert!(matches!(Cause::from(e.clone()), Cause::Refused), "{e}");
    assert_eq!(server.quic_counters().refused_connections, 1);
    // Another source is not affected.
    let c = client(&server, 4);
    assert!(c.wait_idle(4, Duration::from_secs(5)).await);
    let _ = paired(&server, &c).await;
    assert_eq!(server.connections(), 3);
}

/// The first datagrams (Initials) of `n` QUIC connection attempts, each with its own
/// connection id, caught on a socket of ours.
async fn initials(n: usize) -> Vec<Vec<u8>> {
    let catch = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ep = raw::client("127.0.0.1", pool_quic::ALPN);
    let mut attempts = Vec::new();
    for _ in 0..n {
        attempts.push(
            ep.connect(catch.local_addr().unwrap(), "localhost")
                .unwrap(),
        );
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    while out.len() < n {
        let mut buf = vec![0u8; 2048];
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), catch.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf.truncate(len);
        // Long header: flags, version (4), then the destination id's length and bytes.
        let dcid = buf[6..6 + buf[5] as usize].to_vec();
        if seen.insert(dcid) {
            out.push(buf);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_flood_of_initials_unvalidated_sources_get_a_stateless_retry() {
    let limits = Limits {
        retry_above: 2,
        handshakes: 8,
        ..Limits::default()
    };
    let server = server_with(limits, "");
    // Forty half-open handshakes from forty ports of 127.0.0.2: each Initial is
    // valid, and none of them ever answers the server.
    let mut socks = Vec::new();
    for initial in initials(40).await {
        let s = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
        s.send_to(&initial, server.local_addr()).await.unwrap();
        socks.push(s);
    }
    // Each of them hears back (a retry or the server's handshake): the server has
    // seen them all.
    for s in &socks {
        let mut buf = [0u8; 2048];
        tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
            .await
            .expect("the server answers every Initial")
            .unwrap();
    }
    let q = server.quic_counters();
    assert!(q.retries >= 38, "{q:?}");
    assert!(server.connections() <= 2, "{}", server.connections());
    // The real client passes the retry and fills its pool meanwhile.
    let c = client(&server, 4);
    assert!(c.wait_idle(4, Duration::from_secs(5)).await);
    let _ = paired(&server, &c).await;
}
