use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

use super::*;

fn frames(datagrams: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for d in datagrams {
        encode(&mut out, d);
    }
    out
}

#[test]
fn frames_come_out_whole_however_the_bytes_arrive() {
    let wire = frames(&[b"abc", b"", &[7u8; 300]]);
    for step in [1, 2, 3, 5, 64, wire.len()] {
        let mut de = Deframer::new(MAX_DATAGRAM);
        let mut got: Vec<Vec<u8>> = Vec::new();
        for chunk in wire.chunks(step) {
            de.push(chunk);
            while let Some(f) = de.next_frame().unwrap() {
                got.push(f.to_vec());
            }
            assert!(
                de.held() < FRAME_HEADER + 300 + step,
                "one partial frame at most"
            );
        }
        assert_eq!(
            got,
            vec![b"abc".to_vec(), vec![], vec![7u8; 300]],
            "step {step}"
        );
        assert_eq!(de.held(), 0);
    }
}

#[test]
fn a_frame_over_the_limit_is_refused_from_its_header() {
    let mut de = Deframer::new(100);
    de.push(&frames(&[&[1u8; 100]]));
    assert_eq!(de.next_frame().unwrap().map(<[u8]>::len), Some(100));
    // Only the length is in: refused before its bytes come.
    de.push(&101u16.to_be_bytes());
    assert_eq!(de.next_frame(), Err(BadFrame { len: 101, max: 100 }));
}

/// A target that answers each datagram with its bytes reversed.
async fn reversing_target() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        // Ends with the test (the task is aborted).
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            buf[..n].reverse();
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    (addr, task)
}

#[tokio::test]
async fn the_client_side_relays_frames_to_the_target_and_back() {
    let (addr, task) = reversing_target().await;
    let target = connect_target(&addr.to_string()).await.unwrap();
    let (mut near, far) = tokio::io::duplex(1 << 16);
    let stats = UdpStats::default();
    let limits = UdpLimits::default();
    let relay = relay_target(far, &target, &limits, &stats);
    let user = async {
        let big = vec![9u8; 40_000];
        near.write_all(&frames(&[b"hello", b"", &big]))
            .await
            .unwrap();
        let mut de = Deframer::new(MAX_DATAGRAM);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < 3 {
            let n = near.read(&mut buf).await.unwrap();
            assert!(n > 0);
            de.push(&buf[..n]);
            while let Some(f) = de.next_frame().unwrap() {
                got.push(f.to_vec());
            }
        }
        got.sort();
        assert!(
            got == vec![vec![], big, b"olleh".to_vec()],
            "each answer whole"
        );
        drop(near); // the association ends from the server's side
    };
    let (end, ()) = tokio::join!(relay, user);
    assert_eq!(end, UdpEnd::Closed);
    let s = stats.snapshot();
    assert_eq!((s.datagrams_up, s.datagrams_down), (3, 3));
    assert_eq!(s.bytes_down, 40_005);
    task.abort();
}

#[tokio::test]
async fn a_bad_frame_ends_the_relay_and_is_counted() {
    let (addr, task) = reversing_target().await;
    let target = connect_target(&addr.to_string()).await.unwrap();
    let (mut near, far) = tokio::io::duplex(1 << 16);
    let stats = UdpStats::default();
    let limits = UdpLimits {
        max_datagram: 512,
        queue: 1024,
        ..UdpLimits::default()
    };
    let mut wire = frames(&[b"ok"]);
    wire.extend_from_slice(&600u16.to_be_bytes());
    near.write_all(&wire).await.unwrap();
    let end = relay_target(far, &target, &limits, &stats).await;
    assert_eq!(end, UdpEnd::BadFrame);
    let s = stats.snapshot();
    assert_eq!((s.bad_frames, s.datagrams_up), (1, 1));
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn an_association_without_a_datagram_ends_at_the_idle_timeout() {
    let (addr, task) = reversing_target().await;
    let target = connect_target(&addr.to_string()).await.unwrap();
    let (_near, far) = tokio::io::duplex(1 << 16);
    let stats = UdpStats::default();
    let limits = UdpLimits {
        idle: Duration::from_secs(30),
        ..UdpLimits::default()
    };
    let start = tokio::time::Instant::now();
    let end = relay_target(far, &target, &limits, &stats).await;
    assert_eq!(end, UdpEnd::Idle);
    assert_eq!(start.elapsed(), Duration::from_secs(30), "paused clock");
    assert_eq!(stats.snapshot().idle_closed, 1);
    task.abort();
}

#[tokio::test]
async fn the_server_side_keeps_an_association_per_address_within_the_cap() {
    // Each association's stream is a duplex whose far end echoes frames (a client and
    // target in one); the table holds 2 at most.
    let public = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = public.local_addr().unwrap();
    let stats = Arc::new(UdpStats::default());
    let limits = UdpLimits {
        max_associations: 2,
        ..UdpLimits::default()
    };
    let open = |_user, first: Vec<u8>| async move {
        let (near, mut far) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            far.write_all(&first).await?;
            let mut buf = [0u8; 4096];
            loop {
                let n = far.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                far.write_all(&buf[..n]).await?;
            }
        });
        Some(near)
    };
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(serve(
        Arc::new(public),
        open,
        limits,
        stats.clone(),
        stopped,
    ));
    let mut users = Vec::new();
    for i in 0..2u8 {
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        u.connect(addr).await.unwrap();
        for k in 0..3u8 {
            u.send(&[i, k]).await.unwrap();
            let mut b = [0u8; 8];
            let n = u.recv(&mut b).await.unwrap();
            assert_eq!(&b[..n], &[i, k]);
        }
        users.push(u);
    }
    let s = stats.snapshot();
    assert_eq!((s.associations, s.active, s.datagrams_down), (2, 2, 6));
    // A third address from the same source: the cap is reached and nobody is quiet
    // yet, and its source holds as many as any: refused, its datagram dropped.
    let third = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    third.send_to(b"x", addr).await.unwrap();
    // The next datagram of a known user is answered after it: the third was handled.
    users[0].send(b"after").await.unwrap();
    let mut b = [0u8; 8];
    let n = users[0].recv(&mut b).await.unwrap();
    assert_eq!(&b[..n], b"after");
    let s = stats.snapshot();
    assert_eq!((s.associations, s.refused, s.peak), (2, 1, 2));
    server.abort();
}
