//! Bad input from the network: a bad datagram, a wrong ALPN, a bad opening byte, a
//! truncated id, a reset at each step. Each gives a named cause, and what was already
//! paired is not lost.

mod common;

use std::time::Duration;

use common::{check_bytes, pair, paired, raw};
use pool_quic::{Cause, ClientConfig, ClientPool, ConnId, GetError};
use tokio::io::AsyncReadExt;

/// Waits (bounded) until `f` holds.
async fn until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_from_a_stranger_are_dropped_and_pooled_streams_still_pair() {
    let (server, client) = pair(4, 4);
    assert!(server.wait_idle(4, Duration::from_secs(5)).await);
    let stranger = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let mut junk = [0u8; 1200];
    for (n, b) in junk.iter_mut().enumerate() {
        *b = (n * 7 + 3) as u8;
    }
    // A random-looking datagram, a long-header Initial cut short, an empty one and a
    // short header for no connection.
    junk[0] = 0xc3;
    for d in [&junk[..], &junk[..20], &[][..], &[0x40, 1, 2, 3][..]] {
        stranger.send_to(d, server.local_addr()).unwrap();
    }
    for _ in 0..4 {
        let (mut s, mut c) = paired(&server, &client).await;
        check_bytes(&mut s, &mut c, b"still here").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_another_alpn_is_refused_in_the_handshake_and_named() {
    let server = common::server(4);
    let ep = raw::client("127.0.0.2", b"h3");
    let e = raw::connect(&ep, server.local_addr()).await.unwrap_err();
    assert!(matches!(Cause::from(e.clone()), Cause::WrongAlpn), "{e}");
    assert!(until(|| server.last_failure().is_some()).await);
    let f = server.last_failure().unwrap();
    assert!(matches!(f.cause, Cause::WrongAlpn), "{f}");
    assert_eq!(server.status().idle, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_against_a_server_of_another_alpn_names_it_in_the_get_error() {
    let ep = raw::server(b"h3");
    let addr = ep.local_addr().unwrap();
    let _accepting = tokio::spawn(async move {
        while let Some(i) = ep.accept().await {
            let _ = i.await;
        }
    });
    let client = ClientPool::builder()
        .address(addr)
        .config(ClientConfig::builder().capacity(1, 1).build().unwrap())
        .get_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let e = client.get_any().await.unwrap_err();
    let f = match &e {
        GetError::Unreachable(Some(f)) => f,
        GetError::Timeout {
            failing: Some(f), ..
        } => f,
        e => panic!("no failure named: {e}"),
    };
    assert!(matches!(f.cause, Cause::WrongAlpn), "{e}");
    assert!(e.to_string().contains("np-quic"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opening_with_another_byte_is_reset_and_named_while_paired_ones_stay() {
    let server = common::server(8);
    let client = common::client_to(server.local_addr(), &server, 2, 2);
    assert!(server.wait_idle(2, Duration::from_secs(5)).await);
    let ep = raw::client("127.0.0.2", pool_quic::ALPN);
    let conn = raw::connect(&ep, server.local_addr()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0x16]).await.unwrap();
    let mut buf = [0u8; 4];
    let e = recv.read_exact(&mut buf).await.unwrap_err();
    assert!(
        matches!(e, pool_quic::quinn::ReadExactError::ReadError(pool_quic::quinn::ReadError::Reset(c)) if c == pool_quic::RESET_REFUSED),
        "{e}"
    );
    assert!(until(|| server.counters().protocol_mismatches == 1).await);
    assert!(matches!(
        server.last_failure().unwrap().cause,
        Cause::BadHello(0x16)
    ));
    for _ in 0..2 {
        let _ = paired(&server, &client).await;
    }
}

/// A Go-wire server that answers each stream as `answer` says.
async fn odd_server(answer: fn(u32) -> Option<Vec<u8>>) -> std::net::SocketAddr {
    let ep = raw::server(pool_quic::ALPN);
    let addr = ep.local_addr().unwrap();
    tokio::spawn(async move {
        let conn = ep.accept().await.unwrap().await.unwrap();
        let mut n = 0;
        let mut held = Vec::new();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let mut hello = [0u8; 1];
            if recv.read_exact(&mut hello).await.is_err() {
                continue;
            }
            match answer(n) {
                Some(bytes) => {
                    send.write_all(&bytes).await.unwrap();
                    if bytes.len() < 4 {
                        let _ = send.finish();
                    }
                }
                None => {
                    let _ = send.reset(7u32.into());
                }
            }
            held.push((send, recv));
            n += 1;
        }
        drop(ep);
    });
    addr
}

async fn client_with_failure(addr: std::net::SocketAddr, n: usize) -> ClientPool {
    let client = ClientPool::builder()
        .address(addr)
        .config(ClientConfig::builder().capacity(n, n).build().unwrap())
        .build()
        .unwrap();
    let got = until(|| client.last_failure().is_some()).await;
    assert!(got, "no failure seen");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_id_is_named_and_streams_paired_before_it_stay() {
    // The first two streams get whole ids, every later one 2 bytes and an end.
    let addr = odd_server(|n| {
        Some(if n < 2 {
            vec![0, 0, 0, n as u8]
        } else {
            vec![9, 9]
        })
    })
    .await;
    let client = client_with_failure(addr, 4).await;
    let f = client.last_failure().unwrap();
    assert!(matches!(f.cause, Cause::TruncatedId { got: 2 }), "{f}");
    assert!(client.counters().id_errors >= 1);
    for n in 0..2u8 {
        let id = ConnId::from_random([0, 0, 0, n]);
        client
            .get_timeout(id, Duration::from_secs(2))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_id_is_named_and_streams_paired_before_it_stay() {
    let addr = odd_server(|n| (n < 1).then(|| vec![1, 2, 3, 4])).await;
    let client = client_with_failure(addr, 3).await;
    let f = client.last_failure().unwrap();
    assert!(
        matches!(f.cause, Cause::Reset(c) if c.into_inner() == 7),
        "{f}"
    );
    let mut c = client.get("01020304".parse().unwrap()).await.unwrap();
    assert_eq!(c.id().as_str(), "01020304");
    drop(c.read(&mut [0u8; 0]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_resetting_before_its_opening_byte_is_named_and_costs_nothing_paired() {
    let server = common::server(8);
    let client = common::client_to(server.local_addr(), &server, 2, 2);
    assert!(server.wait_idle(2, Duration::from_secs(5)).await);
    let ep = raw::client("127.0.0.3", pool_quic::ALPN);
    let conn = raw::connect(&ep, server.local_addr()).await.unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    // A stream frame with no data makes the stream exist; then the reset.
    send.write_all(&[]).await.unwrap();
    send.reset(5u32.into()).unwrap();
    let (mut send2, _recv2) = conn.open_bi().await.unwrap();
    send2.write_all(&[0x00]).await.unwrap();
    send2.reset(6u32.into()).unwrap();
    assert!(until(|| server.last_failure().is_some()).await);
    let f = server.last_failure().unwrap();
    assert!(matches!(f.cause, Cause::Reset(_) | Cause::NoHello), "{f}");
    for _ in 0..2 {
        let _ = paired(&server, &client).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_stream_the_peer_resets_is_never_handed_out() {
    let server = common::server(4);
    let ep = raw::client("127.0.0.1", pool_quic::ALPN);
    let conn = raw::connect(&ep, server.local_addr()).await.unwrap();
    let (dead, mut send, _recv) = raw::go_stream(&conn).await;
    let (live, _send2, _recv2) = raw::go_stream(&conn).await;
    send.reset(3u32.into()).unwrap();
    // A third stream's round trip: the reset, sent before it, has reached the server.
    let (third, _send3, _recv3) = raw::go_stream(&conn).await;
    // The reset one is never handed out: its probe finds it dead.
    let mut got = Vec::new();
    for _ in 0..2 {
        let (id, _s) = server.get().await.unwrap();
        got.push(id.as_str().to_owned());
    }
    assert!(
        !got.contains(&dead),
        "a reset stream was handed out: {got:?}"
    );
    // Handshakes run at once: they land in any order.
    got.sort();
    let mut want = [live, third];
    want.sort();
    assert_eq!(got, want);
    // Whenever it landed, a third get meets it, finds it dead, and has nothing.
    let third_get = server.get_timeout(Duration::from_millis(300)).await;
    assert!(
        matches!(third_get, Err(GetError::Timeout { .. })),
        "{third_get:?}"
    );
    assert_eq!(server.counters().evicted_dead, 1);
}
