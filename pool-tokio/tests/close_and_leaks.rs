//! Flush and close under concurrent gets: every waiter gets `Closed`, no task hangs
//! (every await is bounded), and the open descriptors come back to their baseline.
//!
//! Everything runs inside one test function, one scenario after another, so that no
//! other test of this binary opens descriptors meanwhile. The baseline is taken with
//! the runtime already up: its own descriptors (and tokio's process-wide signal socket
//! pair, created once with the first runtime) are not leaks.

use std::time::Duration;

use pool_testkit::pair::{open_fds, verify_healthy, wait_until, Pair, PairBuilder};
use pool_testkit::proxy::{Fault, Script};
use pool_testkit::soak::fd_targets;
use pool_tokio::{ConnId, GetError, TlsMode};

const T: Duration = Duration::from_secs(5);

async fn back_to_baseline(name: &str, before: usize, before_list: &[String]) {
    let ok = wait_until(T, || open_fds() <= before).await;
    let after = open_fds();
    println!("{name}: fds before {before}, after {after}");
    if !ok {
        let now = fd_targets();
        let new: Vec<_> = now.iter().filter(|t| !before_list.contains(t)).collect();
        panic!("{name}: {} descriptors leaked: {new:?}", after - before);
    }
}

/// Gets waiting on both ends while the pools are flushed and closed.
async fn close_under_gets(tls: TlsMode, proxy: bool) {
    // Always through the proxy, so that the supply can be cut below; `proxy` adds
    // latency on top.
    let script = if proxy {
        Script::always(Fault::Latency(Duration::from_millis(2)))
    } else {
        Script::ok()
    };
    let b = PairBuilder::new()
        .tls(tls)
        .capacity(4, 8)
        .through_proxy(script);
    let pair = std::sync::Arc::new(b.build().await.unwrap());
    verify_healthy(&pair, 4, 8, 2048).await.unwrap();
    // Hold a pair across the close: the pool must not care.
    let held = pair.take(T).await.unwrap();
    // Cut the supply: new dials vanish into the proxy, so the client tops up in vain
    // and gets beyond what is idle wait until close.
    pair.proxy
        .as_ref()
        .expect("built with a proxy")
        .set_script(Script::always(Fault::Blackhole));
    let mut waiters = Vec::new();
    for i in 0..40u32 {
        let p = pair.clone();
        waiters.push(tokio::spawn(async move {
            let r = if i % 2 == 0 {
                p.server
                    .get_timeout(Duration::from_secs(30))
                    .await
                    .map(|_| ())
            } else {
                p.client
                    .get_any_timeout(Duration::from_secs(30))
                    .await
                    .map(|_| ())
            };
            (i, r)
        }));
    }
    // Once the idle ones are served and the rest wait on both sides, flush and close
    // concurrently with them.
    let all_waiting = || {
        let (s, c) = (pair.server.stats().status, pair.client.stats().status);
        s.idle == 0 && c.idle == 0 && s.waiting > 0 && c.waiting > 0
    };
    assert!(
        pool_testkit::pair::wait_until(T, all_waiting).await,
        "the gets never waited: {:?} / {:?}",
        pair.server.stats(),
        pair.client.stats()
    );
    pair.server.flush();
    pair.client.flush();
    let closer = {
        let p = pair.clone();
        tokio::spawn(async move { p.close().await })
    };
    tokio::time::timeout(T, closer)
        .await
        .expect("close hung")
        .unwrap();
    let mut closed = 0;
    for w in waiters {
        let (i, r) = tokio::time::timeout(T, w)
            .await
            .expect("a get hung past close")
            .expect("a get panicked");
        match r {
            Ok(()) => {}
            Err(GetError::Closed) => closed += 1,
            Err(e) => panic!("get {i}: {e} instead of Closed"),
        }
    }
    assert!(closed > 0, "no waiter was still waiting at close");
    // After close, every get fails at once with Closed.
    assert!(matches!(
        pair.server.get_timeout(T).await,
        Err(GetError::Closed)
    ));
    assert!(matches!(
        pair.client
            .get_timeout(ConnId::from_random([1, 2, 3, 4]), T)
            .await,
        Err(GetError::Closed)
    ));
    assert!(!pair.server.is_ready() && !pair.client.is_ready());
    println!("{tls:?} proxy={proxy}: {closed} of 40 gets got Closed");
    drop(held);
    drop(pair);
}

/// Dropping the last handles without close must release everything too.
async fn drop_without_close() {
    let pair = PairBuilder::new()
        .tls(TlsMode::SelfSigned)
        .capacity(8, 8)
        .build()
        .await
        .unwrap();
    assert!(pair.client.wait_idle(8, T).await);
    let Pair {
        server,
        client,
        proxy,
    } = pair;
    drop(client);
    drop(server);
    drop(proxy);
}

#[test]
fn close_under_concurrent_gets_leaks_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let before = open_fds();
        let list = fd_targets();
        for (tls, proxy) in [
            (TlsMode::Off, false),
            (TlsMode::SelfSigned, false),
            (TlsMode::Verified, false),
            (TlsMode::SelfSigned, true),
        ] {
            tokio::time::timeout(Duration::from_secs(20), close_under_gets(tls, proxy))
                .await
                .expect("scenario hung");
            back_to_baseline(&format!("{tls:?} proxy={proxy}"), before, &list).await;
        }
        tokio::time::timeout(Duration::from_secs(20), drop_without_close())
            .await
            .expect("drop scenario hung");
        back_to_baseline("dropped without close", before, &list).await;
    });
}
