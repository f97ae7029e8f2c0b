//! Close leaves no descriptor behind. Alone in its file: descriptor counts are per
//! process, and other tests would disturb them.

mod common;

use std::time::Duration;

use common::*;
use pool_tokio::{ClientConfig, ClientTls, ServeTls};
use pool_tokio::{ClientPool, ServerPool, TlsMode};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_and_drop_leave_no_descriptor() {
    // Warm the runtime's own descriptors (timer, I/O driver) first.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let baseline = open_fds();
    for mode in [TlsMode::Off, TlsMode::SelfSigned] {
        let server = ServerPool::builder()
            .bind(loopback())
            .tls(if mode == TlsMode::Off {
                ServeTls::Off
            } else {
                ServeTls::self_signed()
            })
            .build()
            .unwrap();
        let client = ClientPool::builder()
            .address(server.local_addr())
            .config(ClientConfig::builder().capacity(32, 32))
            .tls(ClientTls::from(mode))
            .build()
            .unwrap();
        assert!(client.wait_idle(32, T).await && server.wait_idle(32, T).await);
        assert!(open_fds() >= baseline + 64);
        // Gets in flight while closing.
        let s2 = server.clone();
        let (id, _held) = s2.get_timeout(T).await.unwrap();
        let _c = client.get_timeout(id, T).await.unwrap();
        let waiter = tokio::spawn(async move { s2.get_timeout(T).await.map(|_| ()) });
        client.close().await;
        server.close().await;
        let _ = waiter.await;
    }
    // Dropping without close also releases everything, once the tasks notice.
    {
        let server = ServerPool::builder().bind(loopback()).build().unwrap();
        let client = ClientPool::builder()
            .address(server.local_addr())
            .config(ClientConfig::builder().capacity(8, 8))
            .build()
            .unwrap();
        assert!(client.wait_idle(8, T).await);
    }
    assert!(
        eventually(|| open_fds() <= baseline).await,
        "descriptors leaked: {} open, baseline {baseline}",
        open_fds()
    );
}
