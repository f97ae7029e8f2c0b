//! Descriptor exhaustion, in a child process with a low open-file limit: the server
//! keeps running through it (no crash; the CPU spent meanwhile is printed, where a
//! spinning accept loop would show), and serves again once the pressure lifts.
//!
//! The parent re-runs this test binary with `POOL_FD_CHILD=1`, filtered to the child
//! test; the child sets its limit before starting a runtime, reports on stdout and by
//! its exit code, and the parent asserts on both.

mod kit;

use std::time::{Duration, Instant};

use kit::{cpu_time, set_nofile};
use pool_testkit::pair::{verify_healthy, Pair};
use pool_tokio::ClientConfig;
use pool_tokio::{ClientPool, ServerPool};

const LIMIT: u64 = 256;

#[test]
fn fd_pressure_parent() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "fd_pressure_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("POOL_FD_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("child stdout:\n{stdout}");
    if !out.status.success() {
        println!("child stderr:\n{stderr}");
    }
    assert!(out.status.success(), "child failed: {:?}", out.status);
    assert!(
        stdout.contains("FD_CHILD_OK"),
        "child did not report success"
    );
}

#[test]
fn fd_pressure_child() {
    if std::env::var_os("POOL_FD_CHILD").is_none() {
        return; // Only meaningful as the parent's child.
    }
    assert!(set_nofile(LIMIT), "setrlimit failed");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), child()).await })
        .expect("child scenario hung");
    println!("FD_CHILD_OK");
}

async fn child() {
    let server = ServerPool::builder()
        .bind("127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap())
        .build()
        .unwrap();
    let addr = server.local_addr();
    // Sockets made now, connected later: connecting needs no new descriptor, so the
    // server's accept is what meets the exhaustion.
    let pending: Vec<socket2::Socket> = (0..20)
        .map(|_| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap())
        .collect();
    // Exhaust the table (bounded by the limit).
    let mut hogs = Vec::new();
    for _ in 0..LIMIT {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hogs.push(f),
            Err(_) => break,
        }
    }
    assert!(
        std::fs::File::open("/dev/null").is_err(),
        "the table is not full"
    );
    for s in &pending {
        s.connect(&addr.into()).unwrap();
    }
    // A client pool made under pressure cannot dial yet (no descriptor for a socket);
    // it must not crash either. Its failed dials are the sign that the pressure
    // reached the pools; meanwhile the server's accepts fail the same way. The CPU the
    // process spends meanwhile is printed: a spinning accept loop shows there.
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let client = ClientPool::builder()
        .address(addr)
        .config(
            ClientConfig::builder()
                .capacity(4, 8)
                .interval(Duration::from_millis(100), Duration::from_millis(500)),
        )
        .build()
        .unwrap();
    assert!(
        pool_testkit::pair::wait_until(Duration::from_secs(10), || {
            client.stats().counters.dial_failures >= 2
        })
        .await,
        "the client never failed a dial under pressure: {:?}",
        client.stats()
    );
    let cpu_pct = 100.0 * (cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    println!(
        "under pressure: {} hogs, cpu {cpu_pct:.1}% over {:?}, server {:?}",
        hogs.len(),
        t0.elapsed(),
        server.stats()
    );
    println!("client under pressure: {:?}", client.stats().counters);
    // That the server kept running through it, the backlog served below shows.
    // Lift the pressure.
    drop(hogs);
    let lifted = Instant::now();
    // The backlog is accepted: the pending connections each get an id.
    let accepted = pool_testkit::pair::wait_until(Duration::from_secs(5), || {
        server.stats().counters.created >= 20
    })
    .await;
    println!(
        "after lifting: accepted backlog {accepted} in {:?}",
        lifted.elapsed()
    );
    assert!(accepted, "the backlog was not served: {:?}", server.stats());
    drop(pending);
    let pair = Pair {
        server,
        client,
        proxy: None,
    };
    verify_healthy(&pair, 4, 8, 1024).await.unwrap();
    println!(
        "client filled {:?} after lifting; server {:?}",
        lifted.elapsed(),
        pair.server.stats().counters
    );
    pair.close().await;
}
