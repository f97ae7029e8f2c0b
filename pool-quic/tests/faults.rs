//! Datagram faults through pool-testkit's UDP proxy: loss, reordering and
//! duplication, a shard's connection killed, a client whose address changes, a peer
//! that vanishes, a server restart.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{check_bytes, paired};
use pool_quic::{ClientConfig, ClientPool, ClientTls, ServerPool};
use pool_testkit::udp_proxy::{Faults, UdpProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client_via(proxy: SocketAddr, server: &ServerPool, n: usize, keepalive: Duration) -> ClientPool {
    let core = ClientConfig::builder()
        .capacity(n, n)
        .interval(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .unwrap();
    ClientPool::builder()
        .address(proxy)
        .config(core)
        .tls(ClientTls::SelfSigned {
            pin: server.fingerprint(),
            name: None,
        })
        .keepalive(keepalive)
        .build()
        .unwrap()
}

/// A pattern that tells every offset apart.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

/// Eight byte-checked pairs of `kib` KiB each way through `loss` drops, as many
/// duplicates and reorders; enough datagrams must pass for each fault to happen (on
/// loopback a packet carries up to `MAX_UDP_PAYLOAD` bytes).
async fn lossy_pairs(loss: f64, seed: u64, kib: usize) {
    let server = common::server(16);
    let faults = Faults {
        drop: loss,
        duplicate: loss,
        reorder: loss,
        reorder_by: Duration::from_millis(3),
        delay: Duration::ZERO,
    };
    let proxy = UdpProxy::start(server.local_addr(), faults, seed)
        .await
        .unwrap();
    let client = client_via(proxy.local_addr(), &server, 8, Duration::from_secs(5));
    assert!(client.wait_idle(8, Duration::from_secs(10)).await);
    for n in 0..8u8 {
        let (mut s, mut c) = paired(&server, &client).await;
        check_bytes(&mut s, &mut c, &pattern(n, kib * 1024)).await;
    }
    let st = proxy.stats();
    assert!(
        st.dropped > 0 && st.reordered > 0 && st.duplicated > 0,
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_checked_pairs_through_one_percent_loss() {
    lossy_pairs(0.01, 1, 256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_checked_pairs_through_five_percent_loss() {
    lossy_pairs(0.05, 5, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shard_loses_only_its_streams_and_the_pool_refills() {
    let server = common::server(300);
    let client = common::client_to(server.local_addr(), &server, 300, 300);
    assert!(client.wait_idle(300, Duration::from_secs(10)).await);
    assert_eq!(client.connections(), 3);
    let (s, c) = paired(&server, &client).await;
    let before = client.counters().evicted_dead;
    c.connection().close(9u32.into(), b"killed");
    drop((s, c));
    // The server learns of it from the close frame (until then, as with TCP, a stream
    // of it could still be handed out, and its client side answer NotFound).
    let mut seen = false;
    for _ in 0..300 {
        if server.counters().evicted_dead > 0 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "the server never saw the connection end");
    // The killed connection's idle streams leave both pools at once; the others stay.
    for _ in 0..20 {
        let (mut s, mut c) = paired(&server, &client).await;
        check_bytes(&mut s, &mut c, b"other shards").await;
    }
    let lost = client.counters().evicted_dead - before;
    assert!((1..=128).contains(&lost), "lost {lost}");
    let back = client.wait_idle(300, Duration::from_secs(10)).await;
    assert!(
        back,
        "{:?} {:?} {:?} {:?}",
        client.status(),
        client.counters(),
        client.last_failure(),
        server.status()
    );
    assert_eq!(client.connections(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_the_clients_address_changing_mid_stream() {
    let server = common::server(4);
    let proxy = UdpProxy::start(server.local_addr(), Faults::none(), 3)
        .await
        .unwrap();
    let client = client_via(proxy.local_addr(), &server, 2, Duration::from_secs(5));
    let (mut s, mut c) = paired(&server, &client).await;
    let before = s.peer_addr();
    check_bytes(&mut s, &mut c, &pattern(1, 16 * 1024)).await;
    proxy.rebind().unwrap();
    // The server learns the new address from the client's next packet (data here, a
    // keep-alive otherwise); until then what it sends goes to the old one.
    let hello = pattern(9, 4096);
    c.write_all(&hello).await.unwrap();
    let mut got = vec![0u8; hello.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("client to server after the rebind")
        .unwrap();
    assert_eq!(got, hello);
    check_bytes(&mut s, &mut c, &pattern(2, 16 * 1024)).await;
    assert_ne!(s.peer_addr(), before, "the server saw the new address");
    check_bytes(&mut s, &mut c, &pattern(3, 16 * 1024)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_vanishes_is_timed_out_after_three_keepalive_periods() {
    let core = pool_quic::ServerConfig::builder()
        .settle(Duration::ZERO)
        .build()
        .unwrap();
    let keepalive = Duration::from_millis(100);
    let server = ServerPool::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .config(core)
        .keepalive(keepalive)
        .build()
        .unwrap();
    let proxy = UdpProxy::start(server.local_addr(), Faults::none(), 4)
        .await
        .unwrap();
    let client = client_via(proxy.local_addr(), &server, 4, keepalive);
    assert!(server.wait_idle(4, Duration::from_secs(5)).await);
    proxy.blackhole(true);
    // Both ends time the connection out; the server's streams leave its pool.
    let mut left = false;
    for _ in 0..300 {
        if server.active() == 0 && server.connections() == 0 {
            left = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(left, "{:?}", server.status());
    proxy.blackhole(false);
    assert!(client.wait_idle(4, Duration::from_secs(10)).await);
    let _ = paired(&server, &client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_restart_every_shard_comes_back() {
    let server = common::server(300);
    let addr = server.local_addr();
    // No pin: the restarted server makes a new self-signed certificate.
    let client = ClientPool::builder()
        .address(addr)
        .config(ClientConfig::builder().capacity(260, 260).build().unwrap())
        .build()
        .unwrap();
    assert!(client.wait_idle(260, Duration::from_secs(10)).await);
    assert_eq!(client.connections(), 3);
    server.close().await;
    drop(server);
    let core = pool_quic::ServerConfig::builder()
        .max_capacity(300)
        .settle(Duration::ZERO)
        .build()
        .unwrap();
    // The old endpoint lets go of the port as its task ends, a moment after the
    // close: bind again until it is free (bounded).
    let mut server = None;
    for _ in 0..100 {
        match ServerPool::builder()
            .bind(addr)
            .config(core.clone())
            .build()
        {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let server = server.expect("the port is free again");
    assert!(client.wait_idle(260, Duration::from_secs(10)).await);
    assert_eq!(client.connections(), 3);
    assert!(client.counters().evicted_dead >= 260);
    let _ = paired(&server, &client).await;
}
