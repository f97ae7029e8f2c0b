//! The threaded client pool, with no async runtime of its own, pairs with the tokio
//! server pool: bytes both ways on the same id, a server restart, and a close that
//! leaves no descriptor behind.
//!
//! The tests take one lock each so that they run one at a time: descriptor counts are
//! per process, and two cores are shared.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_core::{ClientConfig, IdleWatch, Mode};
use pool_threads::{ClientTls, ThreadClientPool, TlsMode};
use pool_tokio::{ServeTls, ServerPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(5);
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn config(min: usize, max: usize) -> ClientConfig {
    ClientConfig::builder()
        .capacity(min, max)
        .parallelism(8)
        .interval(Duration::from_millis(100), Duration::from_millis(500))
        .sweep_interval(Duration::from_millis(100))
        .build()
        .unwrap()
}

/// The client TLS that pairs with `server` in `mode`: pinned to its certificate.
fn tls(server: &ServerPool, mode: TlsMode) -> ClientTls {
    match mode {
        TlsMode::Off => ClientTls::Off,
        _ => ClientTls::SelfSigned {
            pin: server.fingerprint(),
            name: None,
        },
    }
}

fn serve(mode: TlsMode) -> ServeTls {
    match mode {
        TlsMode::Off => ServeTls::Off,
        _ => ServeTls::self_signed(),
    }
}

fn client(server: &ServerPool, mode: TlsMode, min: usize, max: usize) -> Arc<ThreadClientPool> {
    let tls = tls(server, mode);
    let pool = ThreadClientPool::builder(server.local_addr())
        .config(config(min, max))
        .tls(tls)
        .build()
        .unwrap();
    Arc::new(pool)
}

/// Polls `f` every 5 ms until it holds or `within` passes.
async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f()
}

/// One pair: the server writes 8 bytes while the connection is still idle at the
/// client (a get must not lose them), the client takes the same id and answers with
/// its id and the bytes reversed.
async fn pair(server: &ServerPool, client: &Arc<ThreadClientPool>, n: u64) {
    let (id, mut on_server) = server.get_timeout(T).await.expect("server get");
    let sent = n.to_be_bytes();
    on_server.write_all(&sent).await.unwrap();
    on_server.flush().await.unwrap();
    let pool = client.clone();
    let on_client = tokio::task::spawn_blocking(move || {
        let mut c = pool.get(id, T).expect("client get");
        assert_eq!(c.id(), id);
        let mut got = [0u8; 8];
        c.read_exact(&mut got).unwrap();
        got.reverse();
        c.write_all(id.as_bytes()).unwrap();
        c.write_all(&got).unwrap();
        c.flush().unwrap();
        c
    });
    let mut back = [0u8; 16];
    on_server.read_exact(&mut back).await.unwrap();
    let mut want = sent;
    want.reverse();
    assert_eq!(&back[..8], id.as_bytes());
    assert_eq!(back[8..], want);
    drop(on_client.await.unwrap());
}

fn pairs_1000(mode: TlsMode) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let server = ServerPool::builder()
            .bind(loopback())
            .tls(serve(mode))
            .build()
            .unwrap();
        assert_eq!(server.fingerprint().is_some(), mode != TlsMode::Off);
        let client = client(&server, mode, 16, 64);
        let start = Instant::now();
        for n in 0..1000 {
            pair(&server, &client, n).await;
        }
        println!("{mode:?}: 1000 pairs in {:?}", start.elapsed());
        let c = client.counters();
        assert!(c.created >= 1000, "{c:?}");
        assert_eq!(c.evicted_dead + c.id_collisions + c.id_errors, 0, "{c:?}");
        tokio::task::spawn_blocking(move || client.close())
            .await
            .unwrap();
        server.close().await;
    });
}

#[test]
fn pairs_with_the_tokio_server_1000_times_plain() {
    pairs_1000(TlsMode::Off);
}

#[test]
fn pairs_with_the_tokio_server_1000_times_pinned_tls() {
    pairs_1000(TlsMode::SelfSigned);
}

#[test]
fn a_wrong_pin_never_fills() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let server = ServerPool::builder()
            .bind(loopback())
            .tls(ServeTls::self_signed())
            .build()
            .unwrap();
        let other = pool_tls::ServerTls::self_signed(["localhost"]).unwrap();
        let pool = ThreadClientPool::builder(server.local_addr())
            .config(config(4, 4))
            .tls(ClientTls::SelfSigned {
                pin: Some(other.fingerprint()),
                name: None,
            })
            .build()
            .unwrap();
        assert!(eventually(T, || pool.counters().handshake_failures >= 4).await);
        assert_eq!(pool.idle(), 0);
        tokio::task::spawn_blocking(move || drop(pool))
            .await
            .unwrap();
        server.close().await;
    });
}

#[test]
fn refills_after_the_server_restarts() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let server = ServerPool::builder().bind(loopback()).build().unwrap();
        let addr = server.local_addr();
        let client = client(&server, TlsMode::Off, 8, 8);
        assert!(eventually(T, || client.idle() >= 8).await);
        pair(&server, &client, 1).await;

        server.close().await;
        drop(server);
        // The sweep finds the dead ones, the dials are refused, the pool backs off.
        assert!(
            eventually(T, || {
                let c = client.counters();
                client.idle() == 0 && c.dial_failures >= 8
            })
            .await,
            "{:?} {:?}",
            client.status(),
            client.counters()
        );

        let server = ServerPool::builder().bind(addr).build().unwrap();
        assert!(
            eventually(T, || client.idle() >= 8).await,
            "{:?}",
            client.counters()
        );
        for n in 0..10 {
            pair(&server, &client, n).await;
        }
        tokio::task::spawn_blocking(move || client.close())
            .await
            .unwrap();
        server.close().await;
    });
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[test]
fn close_and_drop_leave_no_descriptor() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    rt.block_on(async {
        // Warm the runtime's own descriptors (timer, I/O driver) and the blocking pool.
        tokio::time::sleep(Duration::from_millis(1)).await;
        tokio::task::spawn_blocking(|| ()).await.unwrap();
        let baseline = open_fds();
        for mode in [TlsMode::Off, TlsMode::SelfSigned] {
            let server = ServerPool::builder()
                .bind(loopback())
                .tls(serve(mode))
                .build()
                .unwrap();
            let client = client(&server, mode, 32, 32);
            assert!(eventually(T, || client.idle() >= 32).await);
            assert!(open_fds() >= baseline + 64);
            pair(&server, &client, 7).await;
            // A connection handed out stays the user's; the rest go with the pool.
            let (id, held) = server.get_timeout(T).await.unwrap();
            let pool = client.clone();
            let taken = tokio::task::spawn_blocking(move || pool.get(id, T).unwrap())
                .await
                .unwrap();
            tokio::task::spawn_blocking(move || client.close())
                .await
                .unwrap();
            drop((held, taken));
            server.close().await;
        }
        // Dropped without close: the same.
        {
            let server = ServerPool::builder().bind(loopback()).build().unwrap();
            let client = client(&server, TlsMode::Off, 8, 8);
            assert!(eventually(T, || client.idle() >= 8).await);
            tokio::task::spawn_blocking(move || drop(client))
                .await
                .unwrap();
            server.close().await;
        }
        assert!(
            eventually(T, || open_fds() <= baseline).await,
            "descriptors leaked: {} open, baseline {baseline}",
            open_fds()
        );
    });
}

#[cfg(target_os = "linux")]
#[test]
fn a_server_hang_up_takes_the_idle_connection_out_without_a_sweep() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    rt.block_on(async {
        let server = ServerPool::builder().bind(loopback()).build().unwrap();
        // The sweep an hour away: only the hang-up watch can find dead peers.
        let cfg = ClientConfig::builder()
            .capacity(8, 8)
            .sweep_interval(Duration::from_secs(3600))
            .build()
            .unwrap();
        let client = ThreadClientPool::builder(server.local_addr())
            .config(cfg)
            .build()
            .unwrap();
        assert!(eventually(T, || client.idle() == 8).await);
        assert!(server.wait_idle(8, T).await);
        // The flush closes settling connections too: every one of the eight.
        server.flush();
        assert!(
            eventually(T, || client.counters().evicted_dead >= 8).await,
            "{:?}",
            client.counters()
        );
        assert!(eventually(T, || client.idle() == 8).await, "refilled");
        client.close();
    });
}

/// In-band activation on the threaded driver: the tokio server starts sessions
/// (`ServerPool::start`), the threaded client accepts them from readiness, with the
/// sweep an hour away so only the watch can find them; every session's bytes are its
/// own, in plain TCP and pinned TLS.
fn in_band_sessions(mode: TlsMode) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let server = ServerPool::builder()
            .bind(loopback())
            .tls(serve(mode))
            .build()
            .unwrap();
        let tls = tls(&server, mode);
        let cfg = ClientConfig::builder()
            .capacity(8, 8)
            .parallelism(4)
            .sweep_interval(Duration::from_secs(3600))
            .watch(IdleWatch::Starts)
            .build()
            .unwrap();
        let client = Arc::new(
            ThreadClientPool::builder(server.local_addr())
                .config(cfg)
                .tls(tls)
                .build()
                .unwrap(),
        );
        const SESSIONS: u64 = 100;
        let accepts = {
            let client = client.clone();
            tokio::task::spawn_blocking(move || {
                let mut seen = Vec::new();
                for _ in 0..SESSIONS {
                    let mut c = client.accept(T).expect("accepted");
                    let mut n = [0u8; 8];
                    c.read_exact(&mut n).unwrap();
                    c.write_all(&n).unwrap();
                    c.flush().unwrap();
                    seen.push(u64::from_be_bytes(n));
                }
                seen
            })
        };
        // All at once: most starts wait for a connection and take it the moment it
        // lands, so the start often reaches the client with the end of its handshake.
        let mut starts = tokio::task::JoinSet::new();
        for n in 0..SESSIONS {
            let server = server.clone();
            starts.spawn(async move {
                let (_, mut s) = server.start_with(&[], T).await.expect("started");
                s.write_all(&n.to_be_bytes()).await.unwrap();
                s.flush().await.unwrap();
                let mut back = [0u8; 8];
                s.read_exact(&mut back).await.unwrap();
                assert_eq!(u64::from_be_bytes(back), n);
            });
        }
        while let Some(r) = starts.join_next().await {
            r.unwrap();
        }
        let mut seen = accepts.await.unwrap();
        seen.sort_unstable();
        assert_eq!(seen, (0..SESSIONS).collect::<Vec<_>>());
        let c = client.counters();
        assert_eq!((c.started, c.starts_dropped), (SESSIONS, 0), "{c:?}");
        tokio::task::spawn_blocking(move || client.close())
            .await
            .unwrap();
        server.close().await;
    });
}

#[test]
#[cfg(target_os = "linux")]
fn in_band_sessions_plain() {
    in_band_sessions(TlsMode::Off);
}

#[test]
#[cfg(target_os = "linux")]
fn in_band_sessions_pinned_tls() {
    in_band_sessions(TlsMode::SelfSigned);
}

/// A server that writes the id, the start header and the session's first bytes in one
/// TLS record: the client's TLS session takes the start off the socket with the id,
/// where no readiness will report it; the pool looks at the connection as it lands.
#[test]
#[cfg(target_os = "linux")]
fn a_start_that_came_with_the_id_is_not_missed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        let cert = pool_tls::ServerTls::self_signed(["localhost"]).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(cert.config().unwrap());
        let l = tokio::net::TcpListener::bind(loopback()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut all = b"0a0b0c0d".to_vec();
            all.extend_from_slice(&pool_core::START);
            all.extend_from_slice(b"early session");
            tls.write_all(&all).await.unwrap();
            tls.flush().await.unwrap();
            tls
        });
        let cfg = ClientConfig::builder()
            .capacity(1, 1)
            .sweep_interval(Duration::from_secs(3600))
            .watch(IdleWatch::Starts)
            .build()
            .unwrap();
        let client = ThreadClientPool::builder(addr)
            .config(cfg)
            .tls(ClientTls::from(TlsMode::SelfSigned))
            .build()
            .unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let mut c = client.accept(T).expect("the start is found");
            let mut got = [0u8; 13];
            c.read_exact(&mut got).unwrap();
            client.close();
            got
        })
        .await
        .unwrap();
        assert_eq!(&got, b"early session");
        drop(server.await.unwrap());
    });
}

/// Single mode with TLS set dials TLS on both runtimes: the threaded pool and the tokio
/// pool, given the same `ClientConfig` and `ClientTls`, agree (and with TLS off both
/// dial plain, as the Go package's single mode does).
#[test]
fn single_mode_dials_the_tls_it_is_given_on_both_runtimes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    runtime().block_on(async {
        for mode in [TlsMode::Off, TlsMode::SelfSigned] {
            let target = ServerPool::builder()
                .bind(loopback())
                .tls(serve(mode))
                .build()
                .unwrap();
            let cfg = ClientConfig::builder()
                .mode(Mode::Single)
                .capacity(1, 1)
                .build()
                .unwrap();
            let tokio_pool = pool_tokio::ClientPool::builder()
                .address(target.local_addr())
                .config(cfg.clone())
                .tls(tls(&target, mode))
                .build()
                .unwrap();
            let threads = ThreadClientPool::builder(target.local_addr())
                .config(cfg)
                .tls(tls(&target, mode))
                .build()
                .unwrap();
            let on_tokio = tokio_pool.get_any_timeout(T).await.unwrap();
            let (on_threads, threads) = tokio::task::spawn_blocking(move || {
                let c = threads.get_any(T).expect("a single-mode connection");
                (c.is_tls(), threads)
            })
            .await
            .unwrap();
            // A connection came back from each: each finished its handshake with the
            // target, in the target's mode.
            assert_eq!(on_tokio.is_tls(), mode != TlsMode::Off, "{mode:?}");
            assert_eq!(
                on_threads,
                on_tokio.is_tls(),
                "the runtimes agree in {mode:?}"
            );
            tokio_pool.close().await;
            tokio::task::spawn_blocking(move || drop(threads))
                .await
                .unwrap();
            target.close().await;
        }
    });
}
