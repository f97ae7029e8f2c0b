//! Bad input from strangers (127.0.0.2 and up): each gets a named error or a counted
//! refusal, memory stays bounded, and a pair made before keeps carrying bytes.

mod common;

use std::io::ErrorKind;

use common::{frame, pair, response_head, roundtrip, stranger, take, upgrade_by_hand, wait_until};
use common::{UPGRADE, WAIT};
use pool_ws::{FrameError, HandshakeError, WsConn, WsServerPool, MAX_HEAD, MAX_MESSAGE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server, and one pair taken from it and held; the client pool is closed so that
/// the server's next connection is a stranger's.
async fn held_pair() -> (WsServerPool, WsConn, WsConn) {
    let (server, client) = pair(8, 1).await;
    let (_, s, c) = take(&server, &client).await;
    client.close().await;
    assert!(wait_until(|| server.status().idle == 0).await);
    (server, s, c)
}

/// What the next read on the server's end of a stranger's connection fails with.
async fn read_error(server: &WsServerPool) -> std::io::Error {
    let (_, mut conn) = server.get_timeout(WAIT).await.unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, conn.read(&mut buf))
            .await
            .unwrap()
        {
            Ok(0) => panic!("the stream ended cleanly"),
            Ok(_) => continue,
            Err(e) => return e,
        }
    }
}

fn frame_error(e: &std::io::Error) -> Option<FrameError> {
    e.get_ref()?.downcast_ref::<FrameError>().cloned()
}

#[tokio::test]
async fn a_request_that_is_not_an_upgrade_is_answered_and_counted() {
    let (server, mut s, mut c) = held_pair().await;
    let before = server.counters().protocol_mismatches;
    let mut t = stranger(server.local_addr(), 2).await;
    t.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(response_head(&mut t).await.starts_with("HTTP/1.1 426"));
    let mut t = stranger(server.local_addr(), 3).await;
    t.write_all(b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(response_head(&mut t).await.starts_with("HTTP/1.1 400"));
    assert!(wait_until(|| server.counters().protocol_mismatches == before + 2).await);
    assert!(matches!(
        server.last_failure(),
        Some(HandshakeError::NotUpgrade(_))
    ));
    assert_eq!(server.status().idle, 0);
    roundtrip(&mut s, &mut c, 50_000, 1).await;
}

#[tokio::test]
async fn a_request_head_past_the_limit_is_answered_431() {
    let (server, mut s, mut c) = held_pair().await;
    let mut t = stranger(server.local_addr(), 2).await;
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(4 * MAX_HEAD, b'a');
    // The server stops reading at the limit: the rest may not be taken.
    let _ = t.write_all(&big).await;
    assert!(response_head(&mut t).await.starts_with("HTTP/1.1 431"));
    assert!(
        wait_until(|| server.last_failure() == Some(HandshakeError::HeadTooLarge(MAX_HEAD))).await
    );
    assert!(server.counters().protocol_mismatches >= 1);
    roundtrip(&mut s, &mut c, 50_000, 2).await;
}

#[tokio::test]
async fn a_text_message_ends_the_stream_with_a_named_error() {
    let (server, mut s, mut c) = held_pair().await;
    let mut t = stranger(server.local_addr(), 2).await;
    upgrade_by_hand(&mut t).await;
    t.write_all(&frame(0x82, b"bytes first")).await.unwrap();
    t.write_all(&frame(0x81, b"then text")).await.unwrap();
    let (_, mut conn) = server.get_timeout(WAIT).await.unwrap();
    let mut first = [0u8; 11];
    conn.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"bytes first");
    let e = conn.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData);
    assert_eq!(frame_error(&e), Some(FrameError::Text));
    roundtrip(&mut s, &mut c, 50_000, 3).await;
}

#[tokio::test]
async fn a_frame_announcing_a_terabyte_is_refused_before_its_payload() {
    let (server, mut s, mut c) = held_pair().await;
    let mut t = stranger(server.local_addr(), 2).await;
    upgrade_by_hand(&mut t).await;
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[0; 4]);
    t.write_all(&header).await.unwrap();
    let e = read_error(&server).await;
    assert!(
        matches!(frame_error(&e), Some(FrameError::TooBig { max_size, .. }) if max_size == MAX_MESSAGE),
        "{e:?}"
    );
    roundtrip(&mut s, &mut c, 50_000, 4).await;
}

#[tokio::test]
async fn fragments_are_joined_but_never_past_the_message_limit() {
    let (server, mut s, mut c) = held_pair().await;
    // A message in three fragments arrives whole.
    let mut t = stranger(server.local_addr(), 2).await;
    upgrade_by_hand(&mut t).await;
    for f in [
        frame(0x02, b"abc"),
        frame(0x00, b"def"),
        frame(0x80, b"ghi"),
    ] {
        t.write_all(&f).await.unwrap();
    }
    let (_, mut conn) = server.get_timeout(WAIT).await.unwrap();
    let mut got = [0u8; 9];
    conn.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abcdefghi");
    drop(conn);
    // A continuation with nothing to continue is a protocol error.
    let mut t = stranger(server.local_addr(), 3).await;
    upgrade_by_hand(&mut t).await;
    t.write_all(&frame(0x80, b"stray")).await.unwrap();
    let e = read_error(&server).await;
    assert!(
        matches!(frame_error(&e), Some(FrameError::Protocol(_))),
        "{e:?}"
    );
    // Fragments that add up past the limit end the stream.
    let mut t = stranger(server.local_addr(), 4).await;
    upgrade_by_hand(&mut t).await;
    let chunk = vec![7u8; 64 * 1024];
    let sender = tokio::spawn(async move {
        let _ = t.write_all(&frame(0x02, &chunk)).await;
        for _ in 0..(MAX_MESSAGE / chunk.len()) {
            if t.write_all(&frame(0x00, &chunk)).await.is_err() {
                break;
            }
        }
        t
    });
    let e = read_error(&server).await;
    assert!(
        matches!(frame_error(&e), Some(FrameError::TooBig { .. })),
        "{e:?}"
    );
    drop(sender.await);
    roundtrip(&mut s, &mut c, 50_000, 5).await;
}

#[tokio::test]
async fn a_slowloris_on_the_upgrade_holds_a_bounded_number_of_slots() {
    let server = WsServerPool::builder()
        .config(
            pool_ws::ServerConfig::builder()
                .max_capacity(8)
                .admission(pool_core::AdmissionLimits {
                    max_handshakes: 4,
                    ..Default::default()
                })
                .build()
                .unwrap(),
        )
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let client = pool_ws::WsClientPool::builder()
        .address(server.local_addr())
        .config(common::client_config(1))
        .build()
        .unwrap();
    let (_, mut s, mut c) = take(&server, &client).await;
    // Eight strangers each send half a request head and hold it.
    let mut held = Vec::new();
    for n in 2..10u8 {
        let mut t = stranger(server.local_addr(), n).await;
        t.write_all(&UPGRADE[..20]).await.unwrap();
        held.push(t);
    }
    assert!(wait_until(|| server.counters().evicted_handshakes >= 4).await);
    assert!(server.status().in_flight <= 4, "{:?}", server.status());
    // The real client still gets in: its connections evict the oldest handshakes.
    let before = server.counters().evicted_handshakes;
    client.flush();
    let (_, mut s2, mut c2) = take(&server, &client).await;
    assert!(server.counters().evicted_handshakes >= before);
    roundtrip(&mut s2, &mut c2, 10_000, 6).await;
    roundtrip(&mut s, &mut c, 10_000, 7).await;
    drop(held);
    client.close().await;
    server.close().await;
}
