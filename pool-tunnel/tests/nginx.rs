//! The tunnel over WebSocket (`--transport ws`) through a real nginx in front of the
//! server's tunnel port, as a user deploys it where the only way out is an HTTP proxy.
//!
//! What crosses an HTTP proxy, and what it costs:
//!
//! - **Plain `ws://` (mode 0, `--tls 0 --insecure-plaintext`) crosses.** nginx forwards
//!   the upgrade and then the binary messages; the tunnel key is still proven on every
//!   WebSocket connection (a stranger who knows no key gets no pooled connection), but
//!   the proof binds to no TLS session and everything (ids, the user's bytes) travels in
//!   the clear, readable and open to an on-path party taking a session, as TCP's mode 0.
//!   TLS to the proxy, if any, must then come from the network around it.
//! - **`wss://` through a proxy that terminates TLS does not.** The key proof is bound
//!   to the TLS session by its exporter: the client's session ends at nginx and the
//!   server's is nginx's second one (`proxy_pass https://`), so the two ends sign
//!   different bindings and every proof fails, by design (a proxy in the middle is what
//!   the binding refuses). `wss://` needs a proxy that passes the TLS through untouched
//!   (nginx's `stream` module, a TCP proxy, which Debian ships apart as
//!   `libnginx-mod-stream`), or none.
//! - **Control is TCP** (TLS per mode) on every transport: it does not cross an HTTP
//!   proxy, and here goes straight to the server, as it must in any deployment.
//!
//! Through nginx the pool refills by itself after nginx restarts, and a session cut
//! short still reaches the user as a reset.
//!
//! nginx runs as a child process of the test (`pool_testkit::nginx`: `daemon off`, its
//! own configuration in a temp dir), never as the system service. Where nginx is
//! missing the tests say so and pass; under CI (`CI` set) a missing nginx fails them.
//! Every wait is bounded and waits for an event.

mod tunnel_common;

use pool_testkit::load;
use pool_testkit::nginx::{self, Nginx, TlsFiles};
use pool_tls::{Fingerprint, ServerTls, TlsMode};
use pool_tunnel::{ClientConfig, ServerConfig, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunnel_common::*;

/// A tunnel server on plain `ws` with the test key, nginx in front of its tunnel port,
/// and a client relaying to `target` whose pool (`min`..`max`) goes through nginx and
/// whose control goes straight to the server; answers once control is up and `ready`
/// pooled connections are idle at the server.
async fn through_nginx(
    bin: std::path::PathBuf,
    target: std::net::SocketAddr,
    (min, max, ready): (usize, usize, usize),
) -> (pool_tunnel::ServerHandle, Nginx, pool_tunnel::ClientHandle) {
    let server = pool_tunnel::start_server(ServerConfig {
        transport: Transport::Ws,
        max_capacity: 64,
        ..server_cfg(key())
    })
    .await
    .unwrap();
    let mut proxy = Nginx::new(bin, server.tunnel_addr());
    proxy.start().await;
    let client = pool_tunnel::start_client(ClientConfig {
        tunnel: proxy.listen.to_string(),
        min,
        max,
        ..client_cfg(&server, target)
    })
    .await
    .unwrap();
    assert!(
        client.wait_control(LIMIT).await,
        "{}",
        client.failed().await
    );
    assert!(
        server.pool().wait_idle(ready, LIMIT).await,
        "no pooled connection through nginx: {}",
        proxy.error_log()
    );
    (server, proxy, client)
}

/// Why the client's WebSocket pool last failed a connection.
fn ws_failure(client: &pool_tunnel::ClientHandle) -> Option<String> {
    match client.pool() {
        pool_tunnel::transport::ClientPools::Ws(p) => p.last_failure().map(|e| e.to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ws_through_nginx_carries_checked_bytes_and_recovers_from_its_restart() {
    let Some(bin) = nginx::for_test("the tunnel-through-nginx test") else {
        return;
    };
    let (echo, echo_task) = load::start_echo().await.unwrap();
    let (server, mut proxy, client) = through_nginx(bin, echo, (4, 16, 4)).await;
    let r = run(server.public_addr(), 40, 64 * 1024).await;
    assert_all_passed(&r, 40);

    // Every connection through nginx is cut; both pools find out by themselves.
    proxy.stop();
    assert!(
        until(|| client.pool().idle() == 0 && server.pool().idle() == 0).await,
        "the pools never saw nginx go: client {} idle, server {} idle",
        client.pool().idle(),
        server.pool().idle()
    );
    proxy.start().await;

    // Recovered without help: the client dials through the new nginx, and sessions
    // carry checked bytes again.
    assert!(
        server.pool().wait_idle(4, LIMIT).await,
        "the pool did not refill through the restarted nginx: {}",
        proxy.error_log()
    );
    let r = run(server.public_addr(), 40, 64 * 1024).await;
    assert_all_passed(&r, 40);
    assert!(client.control_up());
    assert_eq!(server.pool().failed_proofs(), 0);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

/// nginx terminating `wss://` with the server's own certificate and re-encrypting to
/// the server (`proxy_pass https://`): the TLS sessions and the upgrade all succeed,
/// and the key proof fails on every connection, since each end's proof binds to its
/// own TLS session. Nothing is pooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_through_a_tls_terminating_nginx_fails_the_key_proof() {
    let Some(bin) = nginx::for_test("the TLS-terminating nginx test") else {
        return;
    };
    let (echo, echo_task) = load::start_echo().await.unwrap();
    // One certificate for the server and for nginx, as an operator who moves the
    // server's certificate onto the proxy has: the client's pin holds for both.
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pin = Fingerprint::of(made.cert.der());
    let cert = ServerTls::from_der(
        vec![made.cert.der().to_vec()],
        made.key_pair.serialize_der(),
    )
    .unwrap();
    let server = pool_tunnel::start_server(ServerConfig {
        transport: Transport::Ws,
        tls: Some(cert),
        ..server_cfg(key())
    })
    .await
    .unwrap();
    let files = TlsFiles {
        cert_pem: made.cert.pem(),
        key_pem: made.key_pair.serialize_pem(),
    };
    let mut proxy = Nginx::terminating_tls(bin, server.tunnel_addr(), &files);
    proxy.start().await;
    let client = pool_tunnel::start_client(ClientConfig {
        tunnel: proxy.listen.to_string(),
        mode: TlsMode::SelfSigned,
        pin: Some(pin),
        hostname: Some("localhost".into()),
        min: 2,
        max: 2,
        ..client_cfg(&server, echo)
    })
    .await
    .unwrap();
    // Control (straight to the server, same certificate) comes up: TLS and the pin hold.
    assert!(
        client.wait_control(LIMIT).await,
        "{}",
        client.failed().await
    );
    assert!(
        until(|| server.pool().failed_proofs() >= 2).await,
        "no proof failed through the TLS-terminating nginx: {}; client: {:?}; server: {:?}",
        proxy.error_log(),
        ws_failure(&client),
        server.pool()
    );
    // The client's side sees its proof refused, not a TLS or upgrade failure.
    assert!(
        until(|| ws_failure(&client).is_some_and(|e| e.starts_with("tunnel-key proof"))).await,
        "{:?}",
        ws_failure(&client)
    );
    assert_eq!(
        server.pool().idle(),
        0,
        "a connection through nginx was pooled"
    );
    assert_eq!(client.pool().idle(), 0);
    client.shutdown().await;
    server.shutdown().await;
    echo_task.abort();
}

/// The tunnel cuts the pooled WebSocket connection with an RST; nginx passes the cut on
/// to the server as a plain close with no WebSocket close frame, which the server's side
/// reads as a reset: the user's stream still ends in a reset, never a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_short_behind_nginx_reaches_the_user_as_a_reset() {
    let Some(bin) = nginx::for_test("the cut-through-nginx test") else {
        return;
    };
    let (target, target_task) = cutting_target().await;
    let (server, _nginx, client) = through_nginx(bin, target, (2, 2, 1)).await;
    let mut user = TcpStream::connect(server.public_addr()).await.unwrap();
    user.write_all(b"hello").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let end = loop {
        match tokio::time::timeout(LIMIT, user.read(&mut buf)).await {
            Ok(Ok(0)) => break Ok(()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => break Err(e),
            Err(_) => panic!("no end within {LIMIT:?}"),
        }
    };
    assert_eq!(got, b"partial", "the bytes before the cut arrive");
    let e = end.expect_err("a cut must not end as a clean end of stream");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    client.shutdown().await;
    server.shutdown().await;
    target_task.abort();
}
