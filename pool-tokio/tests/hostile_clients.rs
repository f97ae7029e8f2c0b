//! Hostile clients against a server pool: silent connections (slowloris), TLS hellos
//! cut in half, garbage before the hello, and peers that leave right after the id.

mod kit;

use std::time::{Duration, Instant};

use kit::{client_hello, fake_client, raise_nofile, Fake};
use pool_testkit::pair::{verify_healthy, wait_until, Pair};
use pool_tokio::{AdmissionLimits, ClientConfig, ClientTls, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, ServerPool, TlsMode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const HS: Duration = Duration::from_secs(1);

/// The handshake deadline of the server a slowloris holds: long enough that a fill
/// which had to wait for it would be seen waiting.
const SLOWLORIS_HS: Duration = Duration::from_secs(5);

fn tls_server(handshake: Duration) -> ServerPool {
    ServerPool::builder()
        .bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .config(
            ServerConfig::builder()
                .handshake_timeout(handshake)
                .max_capacity(2048)
                .admission(AdmissionLimits {
                    max_handshakes: 1024,
                    pending_per_source: None,
                    ..AdmissionLimits::default()
                }),
        )
        .tls(ServeTls::self_signed())
        // Every peer here is 127.0.0.1: these tests exercise the global handshake
        // slots; the per-source quota has its own tests (pool-tokio tests/admission.rs,
        // tests/attacks.rs here).
        .build()
        .unwrap()
}

fn tls_client(server: &ServerPool, cap: usize) -> ClientPool {
    ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(cap, cap))
        .tls(ClientTls::SelfSigned {
            pin: Some(server.fingerprint().unwrap()),
            name: None,
        })
        .build()
        .unwrap()
}

async fn fill_time(server: &ServerPool, cap: usize) -> Duration {
    let start = Instant::now();
    let client = tls_client(server, cap);
    assert!(
        client.wait_idle(cap, Duration::from_secs(20)).await,
        "client never filled: {:?} / server {:?}",
        client.stats(),
        server.stats()
    );
    let t = start.elapsed();
    client.close().await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_delay_a_legitimate_fill() {
    let limit = raise_nofile();
    // Each silent connection costs two descriptors here (both ends live in-process).
    let n = 500usize.min((limit as usize).saturating_sub(400) / 2);
    assert!(n >= 100, "open-file limit {limit} too low for this test");
    let cap = 32;

    let quiet = tls_server(HS);
    let base = fill_time(&quiet, cap).await;
    quiet.close().await;

    let server = tls_server(SLOWLORIS_HS);
    let mut silent = Vec::with_capacity(n);
    for _ in 0..n {
        silent.push(TcpStream::connect(server.local_addr()).await.unwrap());
    }
    assert!(
        wait_until(Duration::from_secs(5), || server.stats().status.in_flight
            >= n)
        .await,
        "the silent connections were not all admitted: {:?}",
        server.stats()
    );
    let loaded = fill_time(&server, cap).await;
    println!(
        "slowloris: fill of {cap} took {base:?} alone and {loaded:?} beside {n} silent connections"
    );
    // The fill went through beside them: not one of them had been cut or evicted to
    // make room when it was done.
    let k = server.stats().counters;
    assert_eq!(
        (k.handshake_failures, k.evicted_handshakes),
        (0, 0),
        "the fill waited for the silent connections to go: {k:?}"
    );
    // Their deadline cut every one of them, and counted it.
    assert!(
        wait_until(SLOWLORIS_HS + Duration::from_secs(10), || server
            .stats()
            .counters
            .handshake_failures
            >= n as u64)
        .await,
        "silent connections not cut: {:?}",
        server.stats()
    );
    drop(silent);
    server.close().await;
}

async fn run_hostile(
    tls: bool,
    f: impl std::future::Future<Output = Vec<TcpStream>>,
) -> (ServerPool, Vec<TcpStream>) {
    let server = ServerPool::builder()
        .bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .config(ServerConfig::builder().handshake_timeout(Duration::from_millis(300)))
        .tls(if tls {
            ServeTls::self_signed()
        } else {
            ServeTls::Off
        })
        .build()
        .unwrap();
    let _ = tls;
    let held = f.await;
    (server, held)
}

async fn healthy_after(server: ServerPool) {
    let client = tls_client(&server, 4);
    let pair = Pair {
        server,
        client,
        proxy: None,
    };
    verify_healthy(&pair, 4, 12, 4096).await.unwrap();
    pair.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_hellos_cut_in_half() {
    let (server, _) = run_hostile(true, async { Vec::new() }).await;
    let addr = server.local_addr();
    let hello = client_hello();
    let mut held = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&hello[..hello.len() / 2]).await.unwrap();
        if i % 2 == 0 {
            held.push(s); // half a hello, then silence
        } // else half a hello, then close
    }
    assert!(
        wait_until(Duration::from_secs(5), || server
            .stats()
            .counters
            .handshake_failures
            >= 40)
        .await,
        "{:?}",
        server.stats()
    );
    println!("half hellos: {:?}", server.stats().counters);
    drop(held);
    assert_eq!(server.active(), 0);
    healthy_after(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_before_the_hello() {
    let (server, _) = run_hostile(true, async { Vec::new() }).await;
    let addr = server.local_addr();
    let hello = client_hello();
    for i in 0..20usize {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut junk = vec![0u8; 1 + i * 7];
        junk.iter_mut()
            .enumerate()
            .for_each(|(k, b)| *b = (k * 31 + i) as u8);
        junk.extend_from_slice(&hello);
        let _ = s.write_all(&junk).await;
    }
    assert!(
        wait_until(Duration::from_secs(5), || server
            .stats()
            .counters
            .handshake_failures
            >= 20)
        .await,
        "{:?}",
        server.stats()
    );
    assert_eq!(server.active(), 0);
    healthy_after(server).await;
}

/// Peers that read the id and leave at once: the server must evict them on `get`
/// (the sweep is set far away and the hang-up watch is off, so only the get's probe
/// can), never hand one out.
async fn leave_after_id(tls: bool, close_notify: bool) {
    let server = ServerPool::builder()
        .bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .config(
            ServerConfig::builder()
                .sweep_interval(Duration::from_secs(3600))
                .watch_hang_ups(false),
        )
        .tls(if tls {
            ServeTls::self_signed()
        } else {
            ServeTls::Off
        })
        .build()
        .unwrap();
    let addr = server.local_addr();
    for _ in 0..5 {
        let (_id, fake) = fake_client(addr, tls, Duration::ZERO).await.unwrap();
        match fake {
            Fake::Plain(s) => drop(s),
            Fake::Tls(mut s) => {
                if close_notify {
                    // As Go's tls.Conn.Close does: a close_notify alert, then FIN.
                    let _ = s.shutdown().await;
                }
                drop(s);
            }
        }
    }
    assert!(wait_until(Duration::from_secs(5), || server.active() >= 5).await);
    let client = ClientPool::builder()
        .address(addr)
        .config(ClientConfig::builder().capacity(4, 4))
        .tls(ClientTls::from(if tls {
            TlsMode::SelfSigned
        } else {
            TlsMode::Off
        }))
        .build()
        .unwrap();
    let pair = Pair {
        server,
        client,
        proxy: None,
    };
    // The five dead ones are the oldest: a FIFO get meets them first.
    verify_healthy(&pair, 4, 8, 1024).await.unwrap();
    let c = pair.server.stats().counters;
    println!("leave after id (tls={tls}, close_notify={close_notify}): {c:?}");
    assert!(c.evicted_dead >= 5, "dead peers not evicted: {c:?}");
    pair.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_closing_after_the_id_is_evicted_plain() {
    leave_after_id(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_closing_after_the_id_is_evicted_tls() {
    leave_after_id(true, false).await;
}

/// A TLS peer that closes the way Go's `tls.Conn.Close` does (a close_notify alert,
/// then FIN) leaves an alert record on the socket. A bare `MSG_PEEK` takes it for
/// payload; the TLS-aware probe hands the queued records to rustls and sees the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_closing_with_close_notify_after_the_id_is_evicted_tls() {
    leave_after_id(true, true).await;
}
