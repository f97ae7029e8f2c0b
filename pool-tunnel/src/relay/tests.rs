//! The relay's tests: every byte both ways, half-closes, leads and expected bytes,
//! deadlines measured as silence, and cuts that reset.

use super::*;

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

/// The splice tests share the process's kept pipes: one at a time.
static SPLICE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_tcp_relay_moves_every_byte_both_ways_and_passes_half_closes() {
    let _one = SPLICE.lock().await;
    let (mut a_peer, a) = tcp_pair().await;
    let (b, mut b_peer) = tcp_pair().await;
    let t = std::sync::Arc::new(Traffic::default());
    let t2 = t.clone();
    let relay = tokio::spawn(async move { relay_tcp(a, b, RelayLimits::default(), &t2).await });
    let up: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 % 251) as u8).collect();
    let down: Vec<u8> = (0..100_001u32).map(|i| (i * 13 % 241) as u8).collect();
    let (up2, down2) = (up.clone(), down.clone());
    let writer = tokio::spawn(async move {
        a_peer.write_all(&up2).await.unwrap();
        a_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        a_peer.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut got = Vec::new();
    b_peer.read_to_end(&mut got).await.unwrap();
    assert!(got == up, "up: {} bytes of {}", got.len(), up.len());
    b_peer.write_all(&down2).await.unwrap();
    b_peer.shutdown().await.unwrap();
    let back = writer.await.unwrap();
    assert!(back == down, "down: {} bytes of {}", back.len(), down.len());
    assert_eq!(relay.await.unwrap(), RelayEnd::Done);
    assert_eq!(t.a_to_b.load(Relaxed), up.len() as u64);
    assert_eq!(t.b_to_a.load(Relaxed), down.len() as u64);
}

/// A relay that reached EOF both ways keeps its two pipes, empty, and the next
/// relays reuse them with only their own bytes; one that failed keeps none.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn relays_reuse_empty_pipes_and_drop_the_ones_a_failure_left() {
    let _one = SPLICE.lock().await;
    splice::drop_spare_pipes();
    for round in 0..5u8 {
        let (mut a_peer, a) = tcp_pair().await;
        let (b, mut b_peer) = tcp_pair().await;
        let t = Traffic::default();
        let relay = relay_tcp(a, b, RelayLimits::default(), &t);
        let peers = async {
            a_peer.write_all(&[round; 3000]).await.unwrap();
            a_peer.shutdown().await.unwrap();
            let mut got = Vec::new();
            b_peer.read_to_end(&mut got).await.unwrap();
            b_peer.write_all(&[round ^ 0xff; 700]).await.unwrap();
            b_peer.shutdown().await.unwrap();
            let mut back = Vec::new();
            a_peer.read_to_end(&mut back).await.unwrap();
            (got, back)
        };
        let (end, (got, back)) = tokio::join!(relay, peers);
        assert_eq!(end, RelayEnd::Done);
        assert!(got == [round; 3000] && back == [round ^ 0xff; 700]);
        assert!(splice::spare_pipes_empty());
    }
    assert_eq!(
        splice::drop_spare_pipes(),
        2,
        "two pipes, reused each round"
    );
    // The target side resets while bytes are on their way: the relay fails and
    // its pipes, which may hold bytes, are closed.
    let (mut a_peer, a) = tcp_pair().await;
    let (b, b_peer) = tcp_pair().await;
    rustix::net::sockopt::set_socket_linger(&b_peer, Some(Duration::ZERO)).unwrap();
    drop(b_peer);
    let t = Traffic::default();
    let relay = relay_tcp(a, b, RelayLimits::default(), &t);
    let feed = async {
        // Bounded: the relay fails within a few writes, then this one fails too.
        for _ in 0..64 {
            if a_peer.write_all(&[7u8; 16 * 1024]).await.is_err() {
                break;
            }
        }
    };
    let (end, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(10), relay),
        async {
            let _ = tokio::time::timeout(Duration::from_secs(10), feed).await;
        }
    );
    assert_eq!(end.expect("the relay ends"), RelayEnd::Error);
    assert_eq!(splice::drop_spare_pipes(), 0);
}

const LEAD: u8 = 0x06;

/// `f`, which must end within 10 s.
async fn bound<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("ends within 10 s")
}

/// A lead goes to `a` in the same write as `b`'s first bytes when they come in
/// time, alone when `b` stays silent past `within`, and just before the end when
/// `b` ends first; the relay then carries on as usual. `tcp` picks the plain TCP
/// relay (splice on Linux), else the generic one.
async fn a_lead_goes_with_the_first_bytes_or_alone(tcp: bool) {
    let run = |a: TcpStream, b: TcpStream, within: Duration| {
        let lead = Opening::Lead(Lead { byte: LEAD, within });
        tokio::spawn(async move {
            let t = Traffic::default();
            let end = if tcp {
                relay_tcp_with(a, b, RelayLimits::default(), &t, lead).await
            } else {
                relay_with(a, b, RelayLimits::default(), &t, lead).await
            };
            (end, t.b_to_a.load(Relaxed))
        })
    };
    // In time: one write, so the first read has the lead and the answer.
    let (mut a_peer, a) = tcp_pair().await;
    let (b, mut b_peer) = tcp_pair().await;
    let relay = run(a, b, Duration::from_secs(10));
    a_peer.write_all(b"question").await.unwrap();
    let mut q = [0u8; 8];
    b_peer.read_exact(&mut q).await.unwrap();
    // The question reached `b`, and the lead is still held back for the answer.
    let mut peek = [0u8; 1];
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    let held = rustix::net::recv(&a_peer, &mut peek, flags);
    assert_eq!(
        held.err(),
        Some(rustix::io::Errno::AGAIN),
        "nothing before the answer"
    );
    b_peer.write_all(b"answer").await.unwrap();
    let mut first = [0u8; 64];
    let n = bound(a_peer.read(&mut first)).await.unwrap();
    assert_eq!(
        &first[..n],
        b"\x06answer",
        "the lead and the answer in one read"
    );
    drop((a_peer, b_peer));
    let (_, moved) = bound(relay).await.unwrap();
    assert_eq!(moved, 6, "the lead is not counted as relayed");
    // Silent past `within`: the lead alone, then the relay as usual.
    let (mut a_peer, a) = tcp_pair().await;
    let (b, mut b_peer) = tcp_pair().await;
    let relay = run(a, b, Duration::from_millis(20));
    let mut one = [0u8; 1];
    bound(a_peer.read_exact(&mut one)).await.unwrap();
    assert_eq!(one, [LEAD]);
    b_peer.write_all(b"late").await.unwrap();
    b_peer.shutdown().await.unwrap();
    a_peer.shutdown().await.unwrap();
    let mut rest = Vec::new();
    bound(a_peer.read_to_end(&mut rest)).await.unwrap();
    assert_eq!(rest, b"late");
    let (end, moved) = bound(relay).await.unwrap();
    assert_eq!((end, moved), (RelayEnd::Done, 4));
    // `b` ends before a byte: the lead, then the end.
    let (mut a_peer, a) = tcp_pair().await;
    let (b, mut b_peer) = tcp_pair().await;
    let relay = run(a, b, Duration::from_secs(10));
    b_peer.shutdown().await.unwrap();
    let mut all = Vec::new();
    bound(a_peer.read_to_end(&mut all)).await.unwrap();
    assert_eq!(all, [LEAD]);
    drop((a_peer, b_peer));
    bound(relay).await.unwrap();
}

#[tokio::test]
async fn a_tcp_relay_leads_with_the_first_bytes_or_alone() {
    let _one = SPLICE.lock().await;
    a_lead_goes_with_the_first_bytes_or_alone(true).await;
}

#[tokio::test]
async fn a_copy_relay_leads_with_the_first_bytes_or_alone() {
    a_lead_goes_with_the_first_bytes_or_alone(false).await;
}

#[tokio::test(start_paused = true)]
async fn idle_and_half_closed_relays_end() {
    let limits = RelayLimits {
        idle: Duration::from_secs(5),
        half_close: Duration::from_secs(2),
    };
    // Idle: nobody sends.
    let (a, _a_peer) = tokio::io::duplex(64);
    let (b, _b_peer) = tokio::io::duplex(64);
    let t = Traffic::default();
    let start = Instant::now();
    assert_eq!(relay(a, b, limits, &t).await, RelayEnd::Idle);
    assert!(start.elapsed() < Duration::from_secs(7));

    // Half-closed: `a`'s peer sends and closes, `b`'s peer never closes.
    let (a, mut a_peer) = tokio::io::duplex(64);
    let (b, mut b_peer) = tokio::io::duplex(64);
    a_peer.write_all(b"hi").await.unwrap();
    a_peer.shutdown().await.unwrap();
    let t = Traffic::default();
    let start = Instant::now();
    assert_eq!(relay(a, b, limits, &t).await, RelayEnd::HalfClosed);
    assert!(start.elapsed() < Duration::from_secs(4));
    let mut got = Vec::new();
    b_peer.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hi");
    assert_eq!(t.a_to_b.load(Relaxed), 2);
}

/// The half-close timeout measures silence: a half-closed relay whose other
/// direction moves a byte every half of it runs for three times it and ends
/// cleanly with every byte; once that direction falls silent, it is cut.
#[tokio::test(start_paused = true)]
async fn a_half_closed_relay_that_keeps_moving_is_not_cut() {
    let limits = RelayLimits {
        idle: Duration::from_secs(60),
        half_close: Duration::from_secs(2),
    };
    let (a, mut a_peer) = tokio::io::duplex(64);
    let (b, mut b_peer) = tokio::io::duplex(64);
    a_peer.write_all(b"go").await.unwrap();
    a_peer.shutdown().await.unwrap();
    let trickle = tokio::spawn(async move {
        for i in 0..6u8 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            b_peer.write_all(&[i]).await.unwrap();
        }
        b_peer.shutdown().await.unwrap();
        b_peer
    });
    let t = Traffic::default();
    let (end, got) = tokio::join!(relay(a, b, limits, &t), async {
        let mut got = Vec::new();
        a_peer.read_to_end(&mut got).await.unwrap();
        got
    });
    assert_eq!(end, RelayEnd::Done);
    assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    drop(trickle.await.unwrap());

    // The same trickle, stopping after two bytes without closing: cut.
    let (a, mut a_peer) = tokio::io::duplex(64);
    let (b, mut b_peer) = tokio::io::duplex(64);
    a_peer.shutdown().await.unwrap();
    let trickle = tokio::spawn(async move {
        for i in 0..2u8 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            b_peer.write_all(&[i]).await.unwrap();
        }
        b_peer
    });
    let start = Instant::now();
    assert_eq!(relay(a, b, limits, &t).await, RelayEnd::HalfClosed);
    assert!(start.elapsed() >= Duration::from_secs(4));
    drop(trickle.await.unwrap());
}

/// An expected byte opens the `b` → `a` direction and is not relayed; another
/// byte in its place, or none in time, ends the relay as `NotExpected`.
#[tokio::test(start_paused = true)]
async fn an_expected_byte_opens_the_way_back_and_anything_else_ends_it() {
    let expect = Opening::Expect(Expect {
        byte: LEAD,
        within: Duration::from_secs(5),
    });
    for (first, want) in [
        (Some(LEAD), RelayEnd::Done),
        (Some(0x15), RelayEnd::NotExpected(Some(0x15))),
        (None, RelayEnd::NotExpected(None)),
    ] {
        let (a, mut a_peer) = tokio::io::duplex(64);
        let (b, mut b_peer) = tokio::io::duplex(64);
        a_peer.write_all(b"up").await.unwrap();
        a_peer.shutdown().await.unwrap();
        if let Some(first) = first {
            b_peer.write_all(&[first]).await.unwrap();
            b_peer.write_all(b"down").await.unwrap();
            b_peer.shutdown().await.unwrap();
        }
        let t = Traffic::default();
        let end = relay_with(a, b, RelayLimits::default(), &t, expect).await;
        assert_eq!(end, want);
        // The way up is open from the start (all of it went through a clean relay);
        // the way back only after the byte.
        let mut up = Vec::new();
        let _ = b_peer.read_to_end(&mut up).await;
        assert!(b"up".starts_with(&up), "{up:?}");
        if want == RelayEnd::Done {
            assert_eq!(up, b"up");
        }
        let mut down = Vec::new();
        let _ = a_peer.read_to_end(&mut down).await;
        let want_down: &[u8] = if want == RelayEnd::Done { b"down" } else { b"" };
        assert_eq!(down, want_down);
    }
}

/// A plain TCP relay cut by its idle deadline resets both peers: neither reads a
/// clean end of stream.
#[tokio::test]
async fn a_tcp_relay_cut_short_resets_both_peers() {
    let _one = SPLICE.lock().await;
    let (mut a_peer, a) = tcp_pair().await;
    let (b, mut b_peer) = tcp_pair().await;
    let limits = RelayLimits {
        idle: Duration::from_millis(200),
        half_close: Duration::from_secs(60),
    };
    let t = Traffic::default();
    let (mut ab, mut bb) = ([0u8; 8], [0u8; 8]);
    let (end, a_got, b_got) = tokio::join!(
        relay_tcp(a, b, limits, &t),
        bound(a_peer.read(&mut ab)),
        bound(b_peer.read(&mut bb)),
    );
    assert_eq!(end, RelayEnd::Idle);
    for got in [a_got, b_got] {
        assert_eq!(
            got.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }
}

#[tokio::test]
async fn both_halves_closing_is_done() {
    let (a, mut a_peer) = tokio::io::duplex(64);
    let (b, mut b_peer) = tokio::io::duplex(64);
    let t = Traffic::default();
    let run = relay(a, b, RelayLimits::default(), &t);
    let peers = async {
        a_peer.write_all(b"ping").await.unwrap();
        a_peer.shutdown().await.unwrap();
        let mut got = [0u8; 4];
        b_peer.read_exact(&mut got).await.unwrap();
        b_peer.write_all(b"pong!").await.unwrap();
        b_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        a_peer.read_to_end(&mut back).await.unwrap();
        back
    };
    let (end, back) = tokio::join!(run, peers);
    assert_eq!(end, RelayEnd::Done);
    assert_eq!(back, b"pong!");
    assert_eq!(t.b_to_a.load(Relaxed), 5);
}

/// Yields until `f` holds, at most `n` times; answers whether it did. No time passes
/// on a paused clock.
async fn yields_until(n: usize, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..n {
        if f() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    f()
}

/// A session still waiting for its opening (the server's relay waits for the client's
/// outcome byte) is never quiet, however long that takes: the public port must not
/// evict a session that has not started. Once the byte came its quiet time counts
/// from there, and any byte moved starts it again.
#[tokio::test(start_paused = true)]
async fn a_relay_is_quiet_only_from_when_it_opened() {
    let expect = Opening::Expect(Expect {
        byte: LEAD,
        within: Duration::from_secs(60),
    });
    let (a, mut a_peer) = tokio::io::duplex(64);
    let (b, mut b_peer) = tokio::io::duplex(64);
    let t = std::sync::Arc::new(Traffic::default());
    let t2 = t.clone();
    let relay =
        tokio::spawn(async move { relay_with(a, b, RelayLimits::default(), &t2, expect).await });
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        t.quiet_for(Instant::now()),
        Duration::ZERO,
        "quiet while starting"
    );
    b_peer.write_all(&[LEAD]).await.unwrap();
    assert!(yields_until(1000, || t.opened.load(Acquire)).await);
    tokio::time::advance(Duration::from_secs(2)).await;
    let q = t.quiet_for(Instant::now());
    assert!(
        q >= Duration::from_secs(2) && q < Duration::from_secs(3),
        "quiet for {q:?}, counted from the opening"
    );
    b_peer.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    a_peer.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"x");
    assert!(t.quiet_for(Instant::now()) < Duration::from_secs(1));
    drop((a_peer, b_peer));
    relay.await.unwrap();
}

/// The same on the splice path: never quiet before the outcome byte, whatever the
/// instant asked about; quiet from it after.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_spliced_relay_is_quiet_only_from_when_it_opened() {
    let _one = SPLICE.lock().await;
    let expect = Opening::Expect(Expect {
        byte: LEAD,
        within: Duration::from_secs(30),
    });
    let (a_peer, a) = tcp_pair().await;
    let (b, mut b_peer) = tcp_pair().await;
    let t = std::sync::Arc::new(Traffic::default());
    let t2 = t.clone();
    let relay =
        tokio::spawn(
            async move { relay_tcp_with(a, b, RelayLimits::default(), &t2, expect).await },
        );
    let hour = Duration::from_secs(3600);
    assert_eq!(t.quiet_for(Instant::now() + hour), Duration::ZERO);
    b_peer.write_all(&[LEAD]).await.unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while !t.opened.load(Acquire) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(t.quiet_for(Instant::now() + hour) >= hour);
    drop((a_peer, b_peer));
    relay.await.unwrap();
}
