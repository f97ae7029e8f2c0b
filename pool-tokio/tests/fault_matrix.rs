//! Ok / Err / Slow / Never at each handshake stage, on each side.
//!
//! Client side (what a `ClientPool` meets): connect (fake dialers), TLS handshake and
//! id read (the fault proxy). Server side (what a `ServerPool` meets): the connection
//! before its first byte, the TLS handshake, and the id write (raw fake clients).
//!
//! Each cell injects its fault three times (or for good, when the fault is a harmless
//! slowness), then checks that: the fault was counted in the right counter and nowhere
//! else; the pool is healthy once the fault stops (a client fills, and every pair
//! taken carries bytes both ways); no broken connection was ever handed out.
//!
//! "Slow" is slower than normal but inside the deadline (no failure may be counted);
//! "Never" never completes (the deadline must cut it and count it).

mod kit;

use std::time::Duration;

use kit::{client_hello, fake_client, reset, Fake};
use pool_testkit::dialers::{FailN, HangN, Slow};
use pool_testkit::pair::{verify_healthy, wait_until, Pair, PairBuilder};
use pool_testkit::proxy::{Fault, FaultProxy, Script};
use pool_tokio::{
    ClientConfig, ClientPool, ClientTls, Counters, ServeTls, ServerConfig, ServerPool, TlsMode,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_millis(300);
const K: u64 = 3;
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Err,
    Slow,
    Never,
}

/// Which counter a cell's failures must land in.
#[derive(Clone, Copy, Debug)]
enum Counter {
    Dial,
    Handshake,
    Id,
}

fn failures(c: &Counters) -> [u64; 3] {
    // A first TLS record whose content type is corrupted looks, to the client, like a
    // server speaking plaintext: it is counted as a protocol mismatch ("is it mode
    // 0?"), a kind of TLS failure.
    [
        c.dial_failures,
        c.handshake_failures + c.protocol_mismatches,
        c.id_errors,
    ]
}

fn expect(c: &Counters, which: Counter, n: u64, what: &str) {
    let mut want = [0u64; 3];
    want[which as usize] = n;
    assert_eq!(
        failures(c),
        want,
        "{what}: [dial_failures, handshake_failures, id_errors] (counters {c:?})"
    );
}

fn client_config(b: pool_tokio::ClientConfigBuilder) -> pool_tokio::ClientConfigBuilder {
    b.handshake_timeout(DEADLINE)
        .id_timeout(DEADLINE)
        .sweep_interval(Duration::from_millis(100))
}

fn server_config(b: pool_tokio::ServerConfigBuilder) -> pool_tokio::ServerConfigBuilder {
    b.handshake_timeout(DEADLINE)
        .sweep_interval(Duration::from_millis(100))
}

fn base() -> PairBuilder {
    PairBuilder::new()
        .capacity(4, 8)
        .interval(Duration::from_millis(20), Duration::from_millis(200))
        .server(server_config)
}

async fn healthy(pair: &Pair) {
    if let Err(e) = verify_healthy(pair, 4, 12, 4096).await {
        panic!("pool not healthy after the fault: {e}");
    }
}

// ---------------------------------------------------------------- client: connect

async fn client_connect(o: Outcome) {
    // The dialer needs the server address, so build the server first, then the client.
    let server = ServerPool::builder()
        .bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .config(server_config(ServerConfig::builder()))
        .build()
        .unwrap();
    let addr = server.local_addr();
    let b = ClientPool::builder().config(
        client_config(ClientConfig::builder())
            .capacity(4, 8)
            .interval(Duration::from_millis(20), Duration::from_millis(200)),
    );
    let (client, attempts): (ClientPool, Box<dyn Fn() -> u64>) = match o {
        Outcome::Ok => (b.address(addr).build().unwrap(), Box::new(|| 0)),
        Outcome::Err => {
            let d = FailN::new(K, addr);
            let d2 = d.clone();
            (
                b.dialer(d).build().unwrap(),
                Box::new(move || d2.attempts()),
            )
        }
        Outcome::Slow => {
            let d = Slow::new(Duration::from_millis(100), addr);
            let d2 = d.clone();
            (
                b.dialer(d).build().unwrap(),
                Box::new(move || d2.attempts()),
            )
        }
        Outcome::Never => {
            let d = HangN::new(K, addr);
            let d2 = d.clone();
            (
                b.dialer(d).build().unwrap(),
                Box::new(move || d2.attempts()),
            )
        }
    };
    let pair = Pair {
        server,
        client,
        proxy: None,
    };
    healthy(&pair).await;
    let n = match o {
        Outcome::Err | Outcome::Never => K,
        _ => 0,
    };
    expect(
        &pair.client.stats().counters,
        Counter::Dial,
        n,
        "client connect",
    );
    if matches!(o, Outcome::Err | Outcome::Never) {
        assert!(attempts() > K);
    }
    pair.close().await;
}

// ---------------------------------------------------------------- client: TLS, id

async fn client_via_proxy(tls: TlsMode, script: Script, counter: Counter, n: u64) {
    let pair = base()
        .tls(tls)
        .through_proxy(script)
        .client(client_config)
        .build()
        .await
        .unwrap();
    let proxy = pair.proxy.as_ref().unwrap();
    assert!(
        wait_until(WAIT, || proxy.counts().connections >= n + 4).await,
        "the client did not dial past the faults: {:?}",
        proxy.counts()
    );
    healthy(&pair).await;
    assert!(
        wait_until(WAIT, || {
            let c = pair.client.stats().counters;
            failures(&c).iter().sum::<u64>() >= n
        })
        .await
    );
    expect(&pair.client.stats().counters, counter, n, "client");
    pair.close().await;
}

async fn client_tls(o: Outcome) {
    let (script, n) = match o {
        Outcome::Ok => (Script::ok(), 0),
        // The server's first TLS record loses its content type.
        Outcome::Err => (Script::sequence(vec![Fault::CorruptId(0); K as usize]), K),
        Outcome::Slow => (Script::always(Fault::Latency(Duration::from_millis(30))), 0),
        // The ClientHello goes nowhere: only the handshake deadline ends it.
        Outcome::Never => (Script::sequence(vec![Fault::Blackhole; K as usize]), K),
    };
    client_via_proxy(TlsMode::SelfSigned, script, Counter::Handshake, n).await;
}

async fn client_id(o: Outcome) {
    let (script, n) = match o {
        Outcome::Ok => (Script::ok(), 0),
        Outcome::Err => (Script::sequence(vec![Fault::CorruptId(3); K as usize]), K),
        Outcome::Slow => (Script::always(Fault::Stall(Duration::from_millis(100))), 0),
        Outcome::Never => (
            Script::sequence(vec![Fault::Stall(Duration::from_secs(60)); K as usize]),
            K,
        ),
    };
    client_via_proxy(TlsMode::Off, script, Counter::Id, n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_short_then_close() {
    client_via_proxy(
        TlsMode::Off,
        Script::sequence(vec![Fault::ShortId(5); K as usize]),
        Counter::Id,
        K,
    )
    .await;
}

// ---------------------------------------------------------------- server side

/// Runs `fakes` against a fresh server, checks the counters with `check`, then drops
/// the fakes and proves the server still serves a real client pool.
async fn server_cell(
    tls: TlsMode,
    fakes: impl FnOnce(std::net::SocketAddr) -> tokio::task::JoinHandle<Vec<Fake>>,
    counter: Counter,
    n: u64,
    also_evicted: bool,
) {
    let server = ServerPool::builder()
        .bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .config(server_config(ServerConfig::builder()))
        .tls(match tls {
            TlsMode::SelfSigned => ServeTls::self_signed(),
            _ => ServeTls::Off,
        })
        .build()
        .unwrap();
    let held = tokio::time::timeout(WAIT, fakes(server.local_addr()))
        .await
        .expect("fake clients hung")
        .expect("fake clients panicked");
    let counted = wait_until(WAIT, || {
        let c = server.stats().counters;
        let f = failures(&c).iter().sum::<u64>();
        if also_evicted {
            f + c.evicted_dead >= n
        } else {
            f >= n && server.stats().status.in_flight == 0
        }
    })
    .await;
    assert!(counted, "not counted: {:?}", server.stats());
    let c = server.stats().counters;
    if also_evicted {
        // An id written into a socket that the peer reset: either the write fails
        // (id error) or the connection lands and the probe evicts it.
        assert_eq!(c.dial_failures + c.handshake_failures, 0, "{c:?}");
        assert!(c.id_errors + c.evicted_dead >= n, "{c:?}");
    } else {
        expect(&c, counter, n, "server");
    }
    drop(held);
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(
            client_config(ClientConfig::builder())
                .capacity(4, 8)
                .interval(Duration::from_millis(20), Duration::from_millis(200)),
        )
        .tls(match tls {
            TlsMode::SelfSigned => ClientTls::SelfSigned {
                pin: server.fingerprint(),
                name: None,
            },
            _ => ClientTls::Off,
        })
        .build()
        .unwrap();
    let pair = Pair {
        server,
        client,
        proxy: None,
    };
    healthy(&pair).await;
    let c = pair.server.stats().counters;
    if !also_evicted {
        expect(&c, counter, n, "server after healthy");
    }
    pair.close().await;
}

fn spawn_fakes<F, Fut>(
    f: F,
) -> impl FnOnce(std::net::SocketAddr) -> tokio::task::JoinHandle<Vec<Fake>>
where
    F: Fn(std::net::SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Option<Fake>> + Send,
{
    move |addr| {
        tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..K {
                if let Some(f) = f(addr).await {
                    out.push(f);
                }
            }
            out
        })
    }
}

async fn good_fake(addr: std::net::SocketAddr, tls: bool, delay: Duration) -> Option<Fake> {
    let (_id, f) = fake_client(addr, tls, delay)
        .await
        .expect("a well-behaved client was refused");
    Some(f)
}

async fn server_connect(o: Outcome) {
    match o {
        Outcome::Ok => {
            server_cell(
                TlsMode::SelfSigned,
                spawn_fakes(|a| good_fake(a, true, Duration::ZERO)),
                Counter::Handshake,
                0,
                false,
            )
            .await
        }
        // Connect and reset at once.
        Outcome::Err => {
            let f = spawn_fakes(|a| async move {
                reset(TcpStream::connect(a).await.unwrap());
                None
            });
            server_cell(TlsMode::SelfSigned, f, Counter::Handshake, K, false).await
        }
        Outcome::Slow => {
            server_cell(
                TlsMode::SelfSigned,
                spawn_fakes(|a| good_fake(a, true, Duration::from_millis(100))),
                Counter::Handshake,
                0,
                false,
            )
            .await
        }
        // Connect and never speak.
        Outcome::Never => {
            let f =
                spawn_fakes(
                    |a| async move { Some(Fake::Plain(TcpStream::connect(a).await.unwrap())) },
                );
            server_cell(TlsMode::SelfSigned, f, Counter::Handshake, K, false).await
        }
    }
}

async fn server_tls(o: Outcome) {
    match o {
        Outcome::Ok => {
            server_cell(
                TlsMode::SelfSigned,
                spawn_fakes(|a| good_fake(a, true, Duration::ZERO)),
                Counter::Handshake,
                0,
                false,
            )
            .await
        }
        // Garbage instead of a ClientHello.
        Outcome::Err => {
            let f = spawn_fakes(|a| async move {
                let mut s = TcpStream::connect(a).await.unwrap();
                let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
                Some(Fake::Plain(s))
            });
            server_cell(TlsMode::SelfSigned, f, Counter::Handshake, K, false).await
        }
        // A real handshake through 30 ms of latency each way.
        Outcome::Slow => {
            let f = move |addr: std::net::SocketAddr| {
                tokio::spawn(async move {
                    let proxy = FaultProxy::start(
                        addr,
                        Script::always(Fault::Latency(Duration::from_millis(30))),
                    )
                    .await
                    .unwrap();
                    let mut out = Vec::new();
                    for _ in 0..K {
                        out.push(good_fake(proxy.addr(), true, Duration::ZERO).await.unwrap());
                    }
                    proxy.close().await;
                    out
                })
            };
            server_cell(TlsMode::SelfSigned, f, Counter::Handshake, 0, false).await
        }
        // Half a ClientHello, then silence.
        Outcome::Never => {
            let f = spawn_fakes(|a| async move {
                let hello = client_hello();
                let mut s = TcpStream::connect(a).await.unwrap();
                s.write_all(&hello[..hello.len() / 2]).await.unwrap();
                Some(Fake::Plain(s))
            });
            server_cell(TlsMode::SelfSigned, f, Counter::Handshake, K, false).await
        }
    }
}

async fn server_id(o: Outcome) {
    match o {
        Outcome::Ok => {
            server_cell(
                TlsMode::Off,
                spawn_fakes(|a| good_fake(a, false, Duration::ZERO)),
                Counter::Id,
                0,
                false,
            )
            .await
        }
        // Reset before the id could be read.
        Outcome::Err => {
            let f = spawn_fakes(|a| async move {
                reset(TcpStream::connect(a).await.unwrap());
                None
            });
            server_cell(TlsMode::Off, f, Counter::Id, K, true).await
        }
        Outcome::Slow => {
            server_cell(
                TlsMode::Off,
                spawn_fakes(|a| good_fake(a, false, Duration::from_millis(100))),
                Counter::Id,
                0,
                false,
            )
            .await
        }
        // Never reads the id. An 8-byte write into a fresh socket cannot be made to
        // block from user space, so the write succeeds: the cell checks that a peer
        // that never reads costs nothing and is evicted once it leaves.
        Outcome::Never => {
            let f =
                spawn_fakes(
                    |a| async move { Some(Fake::Plain(TcpStream::connect(a).await.unwrap())) },
                );
            server_cell(TlsMode::Off, f, Counter::Id, 0, false).await
        }
    }
}

macro_rules! cells {
    ($($name:ident => $f:ident($o:ident);)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            tokio::time::timeout(Duration::from_secs(30), $f(Outcome::$o))
                .await
                .expect("cell hung");
        }
    )*};
}

cells! {
    client_connect_ok => client_connect(Ok);
    client_connect_err => client_connect(Err);
    client_connect_slow => client_connect(Slow);
    client_connect_never => client_connect(Never);
    client_tls_ok => client_tls(Ok);
    client_tls_err => client_tls(Err);
    client_tls_slow => client_tls(Slow);
    client_tls_never => client_tls(Never);
    client_id_ok => client_id(Ok);
    client_id_err => client_id(Err);
    client_id_slow => client_id(Slow);
    client_id_never => client_id(Never);
    server_connect_ok => server_connect(Ok);
    server_connect_err => server_connect(Err);
    server_connect_slow => server_connect(Slow);
    server_connect_never => server_connect(Never);
    server_tls_ok => server_tls(Ok);
    server_tls_err => server_tls(Err);
    server_tls_slow => server_tls(Slow);
    server_tls_never => server_tls(Never);
    server_id_ok => server_id(Ok);
    server_id_err => server_id(Err);
    server_id_slow => server_id(Slow);
    server_id_never => server_id(Never);
}
