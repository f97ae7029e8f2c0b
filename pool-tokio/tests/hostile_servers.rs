//! Hostile servers against a client pool: a non-hex id, a short id then close, no id
//! at all, a wrong certificate in mode 2, a pin mismatch in mode 1. Each must be
//! refused (no connection ever lands) and counted in the right counter, alone. The
//! attempt rate is printed; the back-off schedule is pool-tokio's
//! `tests/paused_clock.rs`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_testkit::pair::wait_until;
use pool_tls::{ClientTlsBuilder, ServerTls, TestCa};
use pool_tokio::{ClientConfig, ClientTls};
use pool_tokio::{ClientPool, Counters, TlsMode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy)]
enum Behaviour {
    Write(&'static [u8], bool),
    Silent,
    Tls,
}

/// A fake server: accepts (at most 10 000 times), does `b`, counts the connections.
async fn fake_server(
    b: Behaviour,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let n2 = n.clone();
    let task = tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        for _ in 0..10_000 {
            let Ok((mut s, _)) = l.accept().await else {
                break;
            };
            n2.fetch_add(1, Ordering::AcqRel);
            match b {
                Behaviour::Write(bytes, close) => {
                    let _ = s.write_all(bytes).await;
                    if !close {
                        held.push(s);
                    }
                }
                Behaviour::Silent => held.push(s),
                Behaviour::Tls => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone().unwrap());
                    tokio::spawn(async move {
                        if let Ok(mut t) = acceptor.accept(s).await {
                            let _ = t.write_all(b"0a0b0c0d").await;
                            let _ = t.flush().await;
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                    });
                }
            }
        }
    });
    (addr, n, task)
}

fn base_config() -> pool_tokio::ClientConfigBuilder {
    ClientConfig::builder()
        .capacity(4, 8)
        .interval(Duration::from_millis(100), Duration::from_secs(1))
        .handshake_timeout(Duration::from_millis(300))
        .id_timeout(Duration::from_millis(300))
}

fn base(addr: SocketAddr) -> pool_tokio::ClientPoolBuilder {
    ClientPool::builder().address(addr).config(base_config())
}

async fn refused(
    name: &str,
    client: ClientPool,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    counter: fn(&Counters) -> u64,
) {
    let start = Instant::now();
    // Refused again and again, each time in the right counter.
    assert!(
        wait_until(Duration::from_secs(30), || counter(
            &client.stats().counters
        ) >= 3)
        .await,
        "{name}: not counted in the right counter: {:?}",
        client.stats()
    );
    let secs = start.elapsed().as_secs_f64();
    let attempts = client.stats().counters.dialed;
    let c = client.stats().counters;
    let rate = attempts as f64 / secs;
    println!(
        "{name}: {attempts} attempts in {secs:.1} s = {rate:.1}/s, accepted {}, counters {c:?}",
        accepted.load(Ordering::Acquire)
    );
    assert_eq!(c.created, 0, "{name}: a bad connection was kept: {c:?}");
    assert_eq!(
        c.dial_failures + c.handshake_failures + c.id_errors,
        counter(&c),
        "{name}: counted elsewhere too: {c:?}"
    );
    client.close().await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_hex_id() {
    let (addr, n, t) = fake_server(Behaviour::Write(b"zzzzzzzz", false), None).await;
    refused("non-hex id", base(addr).build().unwrap(), n, t, |c| {
        c.id_errors
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_id_then_close() {
    let (addr, n, t) = fake_server(Behaviour::Write(b"0a0b", true), None).await;
    refused("short id", base(addr).build().unwrap(), n, t, |c| {
        c.id_errors
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_id_at_all() {
    let (addr, n, t) = fake_server(Behaviour::Silent, None).await;
    refused("no id", base(addr).build().unwrap(), n, t, |c| c.id_errors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificate_mode2() {
    let theirs = TestCa::new().unwrap();
    let ours = TestCa::new().unwrap();
    let cert = theirs.leaf(&["pool.test"], false).unwrap();
    let (addr, n, t) = fake_server(Behaviour::Tls, Some(cert.config().unwrap())).await;
    let cfg = ClientTlsBuilder::new(TlsMode::Verified)
        .ca_der(ours.ca_der())
        .build()
        .unwrap()
        .unwrap();
    let client = base(addr)
        .tls(ClientTls::Custom {
            config: cfg,
            name: Some("pool.test".into()),
        })
        .build()
        .unwrap();
    refused("wrong certificate (mode 2)", client, n, t, |c| {
        c.handshake_failures
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_mismatch_mode1() {
    let served = ServerTls::self_signed(["localhost"]).unwrap();
    let expected = ServerTls::self_signed(["localhost"]).unwrap();
    let (addr, n, t) = fake_server(Behaviour::Tls, Some(served.config().unwrap())).await;
    let client = base(addr)
        .tls(ClientTls::SelfSigned {
            pin: Some(expected.fingerprint()),
            name: None,
        })
        .build()
        .unwrap();
    refused("pin mismatch (mode 1)", client, n, t, |c| {
        c.handshake_failures
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_fake_with_right_pin_is_accepted() {
    // Control: the TLS fake server is not broken; with the right pin the client fills.
    let served = ServerTls::self_signed(["localhost"]).unwrap();
    let (addr, _n, t) = fake_server(Behaviour::Tls, Some(served.config().unwrap())).await;
    let client = base(addr)
        .config(base_config().capacity(1, 1))
        .tls(ClientTls::SelfSigned {
            pin: Some(served.fingerprint()),
            name: None,
        })
        .build()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || client.active() == 1).await);
    client.close().await;
    t.abort();
}
