//! The liveness peek of an idle stream: it tells a live stream from one whose peer
//! reset or finished it, or whose connection ended, and never loses a byte.

mod common;

use common::raw;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_arrive_on_an_idle_stream_are_kept_for_the_get_that_takes_it() {
    let server = common::server(4);
    let ep = raw::client("127.0.0.1", pool_quic::ALPN);
    let conn = raw::connect(&ep, server.local_addr()).await.unwrap();
    let (id, mut send, _recv) = raw::go_stream(&conn).await;
    // The Go side starts relaying before our side took the stream, then ends it.
    send.write_all(b"early bytes").await.unwrap();
    send.finish().unwrap();
    let (got, mut s) = server.get().await.unwrap();
    assert_eq!(got.as_str(), id);
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    assert_eq!(all, b"early bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_its_peer_finished_empty_or_whose_connection_closed_is_never_handed_out() {
    let server = common::server(8);
    let ep = raw::client("127.0.0.1", pool_quic::ALPN);
    let a = raw::connect(&ep, server.local_addr()).await.unwrap();
    let b = raw::connect(&ep, server.local_addr()).await.unwrap();
    let (finished, mut send, _r1) = raw::go_stream(&a).await;
    let (closed, _s2, _r2) = raw::go_stream(&b).await;
    let (live, _s3, _r3) = raw::go_stream(&a).await;
    send.finish().unwrap();
    // A round trip on `a` after the finish: the server has seen it.
    let (later, _s4, _r4) = raw::go_stream(&a).await;
    // The server counts `b` gone once its close arrived.
    b.close(0u32.into(), b"gone");
    let mut gone = false;
    for _ in 0..500 {
        if server.connections() == 1 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(gone);
    let mut got = Vec::new();
    for _ in 0..2 {
        let (id, _s) = server.get().await.unwrap();
        got.push(id.as_str().to_owned());
    }
    assert!(
        !got.contains(&finished) && !got.contains(&closed),
        "{got:?} finished {finished} closed {closed}"
    );
    // Handshakes run at once: they land in any order.
    got.sort();
    let mut want = [live, later];
    want.sort();
    assert_eq!(got, want);
    // The two gets examine only what they pass: a dead stream that landed behind both
    // live ones is still idle. One more get examines (and evicts) whatever is left and
    // finds nothing live.
    assert!(server
        .get_timeout(std::time::Duration::from_millis(200))
        .await
        .is_err());
    assert_eq!(server.counters().evicted_dead, 2);
}
