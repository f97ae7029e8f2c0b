//! The tunnel key, once per QUIC connection: both ends with the key pair; a wrong key,
//! a keyless Go-wire client or a keyless server is named and nothing of it is pooled.

mod common;

use std::time::Duration;

use common::{paired, raw};
use pool_quic::{Cause, ClientConfig, ClientPool, ClientTls, ServerConfig, ServerPool, TunnelKey};

fn keyed_server(key: Option<TunnelKey>) -> ServerPool {
    let core = ServerConfig::builder()
        .max_capacity(256)
        .settle(Duration::ZERO)
        .handshake_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let b = ServerPool::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .config(core);
    match key {
        Some(k) => b.tunnel_key(k),
        None => b,
    }
    .build()
    .unwrap()
}

fn keyed_client(server: &ServerPool, key: TunnelKey, n: usize) -> ClientPool {
    ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(n, n).build().unwrap())
        .tls(ClientTls::SelfSigned {
            pin: server.fingerprint(),
            name: None,
        })
        .tunnel_key(key)
        .build()
        .unwrap()
}

async fn until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_with_the_key_pair_after_one_proof_per_connection() {
    let key = TunnelKey::generate().unwrap();
    let server = keyed_server(Some(key.clone()));
    let client = keyed_client(&server, key, 200);
    assert!(client.wait_idle(200, Duration::from_secs(10)).await);
    for _ in 0..4 {
        let _ = paired(&server, &client).await;
    }
    assert_eq!(client.connections(), 2);
    assert_eq!(server.quic_counters().failed_proofs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_named_on_both_ends_and_nothing_is_pooled() {
    let server = keyed_server(Some(TunnelKey::generate().unwrap()));
    let client = keyed_client(&server, TunnelKey::generate().unwrap(), 4);
    assert!(until(|| client.last_failure().is_some()).await);
    let f = client.last_failure().unwrap();
    assert!(matches!(f.cause, Cause::BadProof), "{f}");
    assert!(server.quic_counters().failed_proofs >= 1);
    assert!(matches!(
        server.last_failure().unwrap().cause,
        Cause::BadProof
    ));
    assert_eq!((server.active(), client.active()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_go_wire_client_gets_no_stream_of_a_keyed_server() {
    let server = keyed_server(Some(TunnelKey::generate().unwrap()));
    let ep = raw::client("127.0.0.2", pool_quic::ALPN);
    let conn = raw::connect(&ep, server.local_addr()).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0x00]).await.unwrap();
    let mut id = [0u8; 4];
    assert!(
        recv.read_exact(&mut id).await.is_err(),
        "a keyless client got an id"
    );
    assert!(until(|| server.quic_counters().failed_proofs == 1).await);
    assert_eq!(server.active(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_client_against_a_keyless_server_is_named() {
    let server = keyed_server(None);
    let client = keyed_client(&server, TunnelKey::generate().unwrap(), 2);
    assert!(until(|| client.last_failure().is_some()).await);
    let f = client.last_failure().unwrap();
    assert!(matches!(f.cause, Cause::Reset(_)), "{f}");
    assert!(until(|| server.counters().protocol_mismatches >= 1).await);
    assert_eq!(client.active(), 0);
}
