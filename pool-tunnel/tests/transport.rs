//! The tunnel over each transport (`--transport`): byte-checked sessions both ways, a
//! stream cut short reaches the user as a reset, a wrong key is refused over each, and
//! two sides on different transports are told so by name. Every wait is bounded.

mod tunnel_common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pool_testkit::load;
use pool_tunnel::{ClientConfig, ServerConfig, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_common::*;

/// The transports other than TCP (TCP has the other test files).
const OTHERS: [Transport; 3] = [Transport::Quic, Transport::Ws, Transport::H2];

async fn pair(
    transport: Transport,
    target: SocketAddr,
    client_key: Option<pool_tls::TunnelKey>,
) -> (pool_tunnel::ServerHandle, pool_tunnel::ClientHandle) {
    let server = pool_tunnel::start_server(ServerConfig {
        transport,
        max_capacity: 64,
        ..server_cfg(key())
    })
    .await
    .unwrap();
    let mut cfg = ClientConfig {
        min: 4,
        max: 16,
        ..client_cfg(&server, target)
    };
    if let Some(k) = client_key {
        cfg.key = k;
    }
    let client = pool_tunnel::start_client(cfg).await.unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_transport_carries_checked_bytes_both_ways() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    for t in OTHERS {
        let (server, client) = pair(t, echo, None).await;
        assert!(client.wait_control(Duration::from_secs(10)).await, "{t}");
        // Echo: every byte goes up to the target and comes back down, checked.
        let r = run(server.public_addr(), 40, 64 * 1024).await;
        assert_all_passed(&r, 40);
        assert_eq!(client.stats().relayed, 40, "{t}: {:?}", client.stats());
        assert_eq!(server.pool().transport(), t);
        client.shutdown().await;
        server.shutdown().await;
    }
    echo_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_reaches_the_user_as_a_reset() {
    let (target, target_task) = cutting_target().await;
    for t in OTHERS {
        let (server, client) = pair(t, target, None).await;
        assert!(client.wait_control(Duration::from_secs(10)).await, "{t}");
        let mut user = TcpStream::connect(server.public_addr()).await.unwrap();
        user.write_all(b"hello").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        let end = loop {
            match tokio::time::timeout(LIMIT, user.read(&mut buf)).await {
                Ok(Ok(0)) => break Ok(()),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => break Err(e),
                Err(_) => panic!("{t}: no end within {LIMIT:?}"),
            }
        };
        assert_eq!(got, b"partial", "{t}: the bytes before the cut arrive");
        let e = end.expect_err("a cut must not end as a clean end of stream");
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{t}: {e}");
        client.shutdown().await;
        server.shutdown().await;
    }
    target_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_over_every_transport() {
    let (echo, echo_task) = load::start_echo().await.unwrap();
    for t in OTHERS {
        let (server, client) = pair(t, echo, Some(key())).await;
        // The pool's proof fails on the connection the client dials.
        let mut proofs = 0;
        for _ in 0..200 {
            proofs = server.pool().failed_proofs();
            if proofs > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(proofs > 0, "{t}: no proof failed");
        assert_eq!(
            server.pool().idle(),
            0,
            "{t}: a stranger's stream was pooled"
        );
        assert_eq!(client.pool().idle(), 0, "{t}");
        assert!(!client.control_up(), "{t}");
        assert_eq!(server.stats().control_ok, 0, "{t}");
        client.shutdown().await;
        server.shutdown().await;
    }
    echo_task.abort();
}

/// A client whose pool never reached its server fails each accept at once while it backs
/// off: its accept loop waits between them. Asking again at once spun a core and, polling
/// nothing, never yielded to the shutdown (the mismatch test above hung on it).
///
/// Its own runtime, shut down with a bound: a spinning task would hold a worker forever
/// and hang the test's end instead of failing it.
#[test]
fn a_client_that_never_reached_its_server_does_not_spin() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let more = rt.block_on(async {
        let (echo, echo_task) = load::start_echo().await.unwrap();
        // The QUIC server's tunnel port is UDP: a TCP dial there is refused.
        let server = pool_tunnel::start_server(ServerConfig {
            transport: Transport::Quic,
            ..server_cfg(key())
        })
        .await
        .unwrap();
        let client = pool_tunnel::start_client(ClientConfig {
            transport: Transport::Tcp,
            min: 1,
            max: 1,
            ..client_cfg(&server, echo)
        })
        .await
        .unwrap();
        let failed = || client.pool().tcp().unwrap().stats().counters.unreachable;
        let mut first = 0;
        for _ in 0..250 {
            first = failed();
            if first > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(first > 0, "the pool never gave up on its server");
        tokio::time::sleep(Duration::from_millis(500)).await;
        // About five in half a second; a spinning loop makes hundreds of thousands.
        let more = failed() - first;
        if more < 50 {
            client.shutdown().await;
            server.shutdown().await;
        }
        echo_task.abort();
        more
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    assert!(more < 50, "{more} accepts failed in 0.5 s");
}

/// Log lines written by every task of this binary.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log() -> &'static Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        log
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_mismatch_is_named() {
    let log = log();
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let server = pool_tunnel::start_server(ServerConfig {
        transport: Transport::Quic,
        ..server_cfg(key())
    })
    .await
    .unwrap();
    let client = pool_tunnel::start_client(ClientConfig {
        transport: Transport::Tcp,
        min: 1,
        max: 1,
        ..client_cfg(&server, echo)
    })
    .await
    .unwrap();
    let said = "the server runs the tunnel over quic, the client over tcp";
    let mut seen = false;
    for _ in 0..200 {
        let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
        if text.matches(said).count() >= 2 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(seen, "both sides name both transports: {text}");
    assert!(!client.control_up());
    assert_eq!(server.stats().control_ok, 0);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}
