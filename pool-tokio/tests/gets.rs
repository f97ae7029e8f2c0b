//! Get timeouts, gets by an id still in its handshake, cancellation safety, and the
//! typed errors where the Go package panics or returns nil.

mod common;

use std::time::Duration;

use common::*;
use pool_tokio::{BuildError, ClientPool, ConnId, GetError, ServerPool};
use pool_tokio::{ClientConfig, IpFilter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[tokio::test]
async fn server_get_times_out_with_a_typed_error() {
    let server = server();
    let err = server
        .get_timeout(Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(err, GetError::Timeout { .. }), "{err:?}");
    assert_eq!(server.stats().counters.get_timeouts, 1);
    let io: std::io::Error = err.into();
    assert_eq!(io.kind(), std::io::ErrorKind::TimedOut);
}

#[tokio::test]
async fn client_get_of_an_unknown_id_fails_fast_when_nothing_is_in_flight() {
    let server = server();
    let client = client(&server, 2, 2);
    assert!(client.wait_idle(2, T).await);
    assert!(eventually(|| client.stats().status.in_flight == 0).await);
    let id: ConnId = "00000000".parse().unwrap();
    let err = client.get_timeout(id, T).await.unwrap_err();
    assert!(matches!(err, GetError::NotFound(i) if i == id), "{err:?}");
}

/// A server that writes half the id, then waits for a signal before the rest.
async fn slow_id_server(
    id: &'static [u8; 8],
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    oneshot::Receiver<()>,
) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let (half_tx, half_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(&id[..4]).await.unwrap();
        let _ = half_tx.send(());
        let _ = go_rx.await;
        s.write_all(&id[4..]).await.unwrap();
        s.write_all(b"payload").await.unwrap();
        // Keep the socket open until the test is done with it.
        let mut sink = [0u8; 1];
        let _ = s.read(&mut sink).await;
    });
    (addr, go_tx, half_rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_by_id_waits_for_an_id_still_in_its_handshake() {
    let (addr, go, half) = slow_id_server(b"cafe0001").await;
    let client = ClientPool::builder()
        .address(addr)
        .config(ClientConfig::builder().capacity(1, 1))
        .build()
        .unwrap();
    half.await.unwrap();
    let id: ConnId = "cafe0001".parse().unwrap();
    let c2 = client.clone();
    let get = tokio::spawn(async move { c2.get_timeout(id, T).await });
    // The get is registered and waiting before the id completes.
    assert!(eventually(|| client.stats().status.waiting == 1).await);
    go.send(()).unwrap();
    let mut conn = get
        .await
        .unwrap()
        .expect("the waiting get receives the connection");
    assert_eq!(conn.id(), id);
    let mut buf = [0u8; 7];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"payload", "the id reader took a byte of payload");
    assert_eq!(client.stats().counters.served_after_wait, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_get_loses_no_connection() {
    let server = server();
    // Nothing idle yet: a get that waits, then is dropped.
    let dropped = tokio::time::timeout(Duration::from_millis(20), server.get_timeout(T)).await;
    assert!(dropped.is_err(), "the get should still have been waiting");
    assert_eq!(
        server.stats().status.waiting,
        0,
        "the dropped get left a waiter behind"
    );
    let client = client(&server, 3, 3);
    assert!(server.wait_idle(3, T).await);
    // Many gets raced against short timeouts: every connection either reaches a get or
    // stays idle; none vanishes.
    let mut taken = 0;
    for _ in 0..3 {
        if let Ok(Ok((id, mut s))) =
            tokio::time::timeout(Duration::from_millis(200), server.get_timeout(T)).await
        {
            let mut c = client.get_timeout(id, T).await.unwrap();
            roundtrip(&mut s, &mut c).await;
            taken += 1;
        }
    }
    assert_eq!(taken, 3);
}

#[tokio::test]
async fn bad_configuration_is_a_typed_error() {
    let e = ClientPool::builder()
        .address(loopback())
        .config(ClientConfig::builder().capacity(0, 4))
        .build()
        .unwrap_err();
    assert!(matches!(e, BuildError::Config(_)), "{e:?}");
    let e = ClientPool::builder().build().unwrap_err();
    assert!(matches!(e, BuildError::Missing(_)), "{e:?}");
    let e = BuildError::from(IpFilter::parse("300.1.1.1").unwrap_err());
    assert!(matches!(e, BuildError::Filter(_)), "{e:?}");
    assert!(e.to_string().contains("300.1.1.1"), "{e}");
    let e = ServerPool::builder().build().unwrap_err();
    assert!(matches!(e, BuildError::Missing(_)), "{e:?}");
    // The Go package silently fixes these; ours does it only when asked.
    let fixed = ClientPool::builder()
        .address(loopback())
        .config(
            ClientConfig::builder()
                .capacity(8, 2)
                .interval(Duration::ZERO, Duration::ZERO)
                .build_go_normalized(),
        )
        .build()
        .unwrap();
    assert_eq!(fixed.capacity(), 2);
    assert_eq!(fixed.interval(), Duration::from_secs(1));
}

#[test]
fn building_outside_a_runtime_is_a_typed_error() {
    let e = ServerPool::builder().bind(loopback()).build().unwrap_err();
    assert!(matches!(e, BuildError::NoRuntime), "{e:?}");
    let e = ClientPool::builder()
        .address(loopback())
        .build()
        .unwrap_err();
    assert!(matches!(e, BuildError::NoRuntime), "{e:?}");
}

/// On tokio's paused clock: the hour after the close passes at once, every timer of it
/// firing in order, so a closed pool that still dialed on a timer would be caught.
#[tokio::test(start_paused = true)]
async fn everything_after_close_is_a_typed_error_or_works() {
    let server = server();
    let client = client(&server, 1, 1);
    client.close().await;
    server.close().await;
    assert!(!client.is_ready() && !server.is_ready());
    assert!(matches!(server.get_timeout(T).await, Err(GetError::Closed)));
    assert!(matches!(
        client.get_any_timeout(T).await,
        Err(GetError::Closed)
    ));
    client.flush();
    server.flush();
    client.close().await; // twice is fine
    client.add_error();
    assert_eq!(client.error_count(), 1);
    client.reset_error();
    assert_eq!(client.error_count(), 0);
    let dialed = client.stats().counters.dialed;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        client.stats().counters.dialed,
        dialed,
        "a closed pool kept dialing"
    );
}

#[tokio::test]
async fn stats_add_up_the_time_gets_waited() {
    let server = server();
    let s = server.clone();
    let waiting = tokio::spawn(async move { s.get_timeout(T).await });
    assert!(eventually(|| server.stats().status.waiting == 1).await);
    let delay = Duration::from_millis(100);
    tokio::time::sleep(delay).await;
    let client = client(&server, 1, 1);
    let (id, _conn) = waiting.await.unwrap().unwrap();
    assert!(client.wait_idle(1, T).await);
    let _peer = client.get_timeout(id, T).await.unwrap();
    // One get waited (the server's); the client's was answered at once.
    let (st, ct) = (server.stats(), client.stats());
    assert_eq!(st.gets_waited, 1);
    assert!(st.get_wait >= delay, "{:?}", st.get_wait);
    assert_eq!(ct.gets_waited, 0);
    assert_eq!(ct.get_wait, Duration::ZERO);
    assert!(st.to_string().contains("1 gets waited"), "{st}");
}
