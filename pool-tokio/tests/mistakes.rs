//! The common mistakes of a first hour, each of which used to look like the same bare
//! get timeout. Every row must end in an error whose cause names the mistake, never in
//! a silent success or a generic timeout. On the client, the name comes as soon as the
//! first run of dials has failed: `GetError::Unreachable`, which only that run gives
//! (the get's own deadline, `T`, gives `Timeout`), so the kind of the error is the proof
//! that it came early. Run with `--nocapture` to see what each row saw and how long it
//! took.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, loopback, T};
use pool_tokio::{BuildError, Cause, ClientPool, ConnId, GetError, PoolError, ServerPool, Stage};
use pool_tokio::{ClientConfig, ClientTls, IdleWatch, IpFilter, Mode, ServeTls, ServerConfig};

fn report(row: &str, took: Duration, what: &dyn std::fmt::Display) {
    println!("{row:<46} {:>7.1} ms  {what}", took.as_secs_f64() * 1e3);
}

fn any_id() -> ConnId {
    ConnId::from_random([1, 2, 3, 4])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_says_connection_refused() {
    let port = std::net::TcpListener::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap();
    // The listener is dropped: nothing listens there now.
    let client = ClientPool::builder().address(port).build().unwrap();
    let t0 = Instant::now();
    let err = client.get_timeout(any_id(), T).await.unwrap_err();
    let took = t0.elapsed();
    report("client pointed at a closed port", took, &err);
    let GetError::Unreachable(f) = &err else {
        panic!("expected Unreachable, got {err}")
    };
    assert_eq!(f.stage, Stage::Connect);
    assert!(
        matches!(&f.cause, Cause::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{err}"
    );
    assert_eq!(f.peer, Some(port));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_says_pin_mismatch() {
    let server = ServerPool::builder()
        .bind(loopback())
        .tls(ServeTls::self_signed())
        .build()
        .unwrap();
    let other = pool_tls::ServerTls::self_signed(["elsewhere"]).unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .tls(ClientTls::SelfSigned {
            pin: Some(other.fingerprint()),
            name: None,
        })
        .build()
        .unwrap();
    let t0 = Instant::now();
    let err = client.get_timeout(any_id(), T).await.unwrap_err();
    let took = t0.elapsed();
    report("wrong pin", took, &err);
    let GetError::Unreachable(f) = &err else {
        panic!("expected Unreachable, got {err}")
    };
    assert_eq!(f.stage, Stage::Tls);
    assert!(matches!(f.cause, Cause::Tls(_)), "{err}");
    assert!(err.to_string().contains("pin mismatch"), "{err}");
    client.close().await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_against_a_plain_server_is_named_on_both_sides() {
    let server = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().sweep_interval(Duration::from_millis(50)))
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .tls(ClientTls::SelfSigned {
            pin: None,
            name: None,
        })
        .build()
        .unwrap();
    // The client's view.
    let t0 = Instant::now();
    let err = client.get_timeout(any_id(), T).await.unwrap_err();
    let took = t0.elapsed();
    report("mode 1 client against a mode 0 server", took, &err);
    let GetError::Unreachable(f) = &err else {
        panic!("expected Unreachable, got {err}")
    };
    assert!(
        matches!(f.cause, Cause::NotTls(_)) && f.stage == Stage::Protocol,
        "{err}"
    );
    assert!(err.to_string().contains("is it mode 0?"), "{err}");
    // The server's view: nothing of it ever goes idle, and a get says why.
    let t0 = Instant::now();
    let err = server
        .get_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    let took = t0.elapsed();
    report("mode 0 server, mode 1 client (server side)", took, &err);
    let stats = server.stats();
    println!("{stats}");
    // Never handed out: caught at the handshake when its ClientHello is already there
    // (then named), else by the probe (bytes that open a TLS record) or by the watch
    // (the client hangs up on a plaintext id), before any get takes it. Which one is a
    // race between the client's first flight and the server's id write.
    let k = stats.counters;
    assert_eq!(k.served_at_once + k.served_after_wait, 0, "{stats}");
    assert!(k.protocol_mismatches + k.evicted_dead > 0, "{stats}");
    // A get names a failure only while a run of failures is under way or one came
    // during its wait: a handshake that wrote its id before the ClientHello came
    // counts as a success and ends the run, so a bare timeout is possible. Whatever
    // is named, here or in the stats, is the mode mismatch.
    if let GetError::Timeout {
        failing: Some(f), ..
    } = &err
    {
        assert_eq!(f.stage, Stage::Protocol, "{err}");
        assert!(err.to_string().contains("client speaks TLS"), "{err}");
    }
    if k.protocol_mismatches > 0 {
        let last = stats.last_failure.as_ref().expect("a mismatch is recorded");
        assert!(last.to_string().contains("client speaks TLS"), "{stats}");
    }
    client.close().await;
    server.close().await;
}

/// A raw TCP client of `server` that has read the first `n` bytes the server wrote.
async fn raw_client_after(server: &ServerPool, n: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncReadExt;
    let mut raw = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let mut first = vec![0u8; n];
    tokio::time::timeout(T, raw.read_exact(&mut first))
        .await
        .expect("the server writes its first bytes")
        .unwrap();
    raw
}

/// The late half of the race above, made certain: a client whose ClientHello comes
/// only after its connection went idle. Finding it is that handshake failing late, and
/// a get that then times out names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_on_an_idle_plain_connection_is_named_by_the_get() {
    use tokio::io::AsyncWriteExt;
    let server = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().sweep_interval(Duration::from_millis(50)))
        .build()
        .unwrap();
    // The id: 8 hex characters.
    let mut raw = raw_client_after(&server, 8).await;
    assert!(server.wait_idle(1, T).await, "{}", server.stats());
    // The first bytes of a TLS record, as a ClientHello opens one; the socket stays
    // open, so only the bytes tell.
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0x2f])
        .await
        .unwrap();
    let err = server
        .get_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    let stats = server.stats();
    report(
        "ClientHello on an idle plain connection",
        Duration::ZERO,
        &err,
    );
    assert_eq!(stats.counters.evicted_dead, 1, "{stats}");
    assert!(err.to_string().contains("client speaks TLS"), "{err}");
    let last = stats.last_failure.as_ref().expect("the mismatch is noted");
    assert_eq!(last.stage, Stage::Protocol, "{stats}");
    drop(raw);
    server.close().await;
}

/// With a tunnel key the server skips its early look for a ClientHello: the proof reads
/// those bytes as the client's response, and a response that fails and opens a TLS
/// record names the mode mismatch, not a wrong key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_plain_server_names_a_client_hello_where_the_proof_goes() {
    use tokio::io::AsyncWriteExt;
    let key = pool_tokio::TunnelKey::generate().unwrap();
    let server = ServerPool::builder()
        .bind(loopback())
        .tunnel_key(key)
        .build()
        .unwrap();
    // The id (8 hex characters) and the challenge (32 bytes), then a ClientHello's
    // opening where the 64-byte response goes.
    let mut raw = raw_client_after(&server, 8 + 32).await;
    let mut hello = [0u8; 96];
    hello[..5].copy_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x5b]);
    raw.write_all(&hello).await.unwrap();
    let err = server
        .get_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    let stats = server.stats();
    report("ClientHello at a keyed plain server", Duration::ZERO, &err);
    assert_eq!(stats.counters.protocol_mismatches, 1, "{stats}");
    assert_eq!(stats.counters.auth_failures, 0, "{stats}");
    assert!(err.to_string().contains("client speaks TLS"), "{err}");
    drop(raw);
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_shuts_out_the_client_names_itself() {
    // The README sample's filter, with a client on loopback.
    let server = ServerPool::builder()
        .bind(loopback())
        .filter(IpFilter::parse("203.0.113.7, 10.0.0.0/8").unwrap())
        .build()
        .unwrap();
    let client = ClientPool::builder()
        .address(server.local_addr())
        .build()
        .unwrap();
    let t0 = Instant::now();
    let err = client.get_timeout(any_id(), T).await.unwrap_err();
    let took = t0.elapsed();
    report("client-IP filter refuses the client (client)", took, &err);
    assert!(matches!(err, GetError::Unreachable(_)), "{err}");
    assert!(err.to_string().contains("client-IP filter"), "{err}");
    let err = server
        .get_timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    report(
        "client-IP filter refuses the client (server)",
        Duration::from_millis(200),
        &err,
    );
    assert!(
        err.to_string().contains("refused by the client-IP filter"),
        "{err}"
    );
    assert!(server.stats().counters.refused_filter > 0);
    client.close().await;
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_make_no_sense_are_refused_at_build() {
    // A pin in plaintext, a CA file in mode 1, a host name without TLS: `ClientTls`
    // cannot hold them (the `compile_fail` doctests in pool-tokio's `lib.rs` show it).
    // What can still be written and cannot work fails `build`, naming both.
    let server = common::server();
    let err = ClientPool::builder()
        .address(server.local_addr())
        .config(
            ClientConfig::builder()
                .mode(Mode::Single)
                .watch(IdleWatch::Starts),
        )
        .build()
        .unwrap_err();
    report("single mode with in-band starts", Duration::ZERO, &err);
    assert!(matches!(err, BuildError::Config(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("single mode") && text.contains("IdleWatch::Starts"),
        "{text}"
    );
    // A filter of IPv6 entries on an IPv4 listener can never let anyone in.
    let err = ServerPool::builder()
        .bind(loopback())
        .filter(IpFilter::parse("::1, fe80::/10").unwrap())
        .build()
        .unwrap_err();
    report("IPv6-only filter on an IPv4 listener", Duration::ZERO, &err);
    assert!(matches!(err, BuildError::Config(_)), "{err}");
    assert!(err.to_string().contains("address family"), "{err}");
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn question_mark_works_inside_a_session() {
    // `PoolError` takes both a get error and an I/O error: a session can use `?` on
    // both (the pool's own errors never carry an I/O error).
    async fn session(server: &ServerPool, client: &ClientPool) -> Result<(), PoolError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (id, mut s) = server.get_timeout(T).await?;
        let mut c = client.get_timeout(id, T).await?;
        s.write_all(b"hello").await?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"hello");
        Ok(())
    }
    let server = common::server();
    let client = common::client(&server, 2, 4);
    session(&server, &client).await.unwrap();
    client.close().await;
    server.close().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_nobody_dials_says_no_client_has_connected_yet() {
    let server = ServerPool::builder().bind(loopback()).build().unwrap();
    let err = server
        .get_timeout(Duration::from_secs(2))
        .await
        .unwrap_err();
    report("server pool that no client dials", Duration::ZERO, &err);
    let GetError::Timeout { unreached, .. } = &err else {
        panic!("expected Timeout, got {err}")
    };
    assert_eq!(*unreached, Some(server.local_addr()), "{err}");
    let text = err.to_string();
    let addr = server.local_addr().to_string();
    assert!(
        text.contains("no client has connected to") && text.contains(&addr),
        "{text}"
    );
    // Once something connected, the hint is gone: the timeout is another story.
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    assert!(server.wait_idle(1, T).await);
    let (_, _conn) = server.get_timeout(T).await.unwrap();
    let err = server
        .get_timeout(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            GetError::Timeout {
                unreached: None,
                ..
            }
        ),
        "{err}"
    );
    drop(tcp);
    server.close().await;
}

/// A mode-0 client against a TLS server: both ends used to wait for the other until a
/// deadline. Every deadline here is a minute, so a failure named within the get's `T`
/// comes from the first handshakes themselves, never from a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_against_a_tls_server_is_named_on_both_sides() {
    const LONG: Duration = Duration::from_secs(60);
    for form in [pool_tokio::IdForm::Hex8, pool_tokio::IdForm::Raw4] {
        let server = ServerPool::builder()
            .bind(loopback())
            .tls(ServeTls::self_signed())
            .config(
                ServerConfig::builder()
                    .handshake_timeout(LONG)
                    .id_form(form),
            )
            .build()
            .unwrap();
        let client = ClientPool::builder()
            .address(server.local_addr())
            .config(
                ClientConfig::builder()
                    .handshake_timeout(LONG)
                    .id_timeout(LONG)
                    .id_form(form),
            )
            .build()
            .unwrap();
        // The client's view: the first run of dials names it (`Unreachable`).
        let t0 = Instant::now();
        let err = client.get_timeout(any_id(), T).await.unwrap_err();
        report(
            &format!("mode 0 client, mode 1 server ({form:?})"),
            t0.elapsed(),
            &err,
        );
        let GetError::Unreachable(f) = &err else {
            panic!("expected Unreachable, got {err}")
        };
        assert!(
            matches!(f.cause, Cause::ServerSpeaksTls) && f.stage == Stage::Protocol,
            "{err}"
        );
        assert!(
            err.to_string().contains("is the server in mode 1 or 2?"),
            "{err}"
        );
        // The server's view: the handshake failed as the mismatch, not by a deadline.
        assert!(eventually(|| server.stats().last_failure.is_some()).await);
        let stats = server.stats();
        let last = stats.last_failure.as_ref().unwrap();
        report("  (server side)", t0.elapsed(), last);
        assert!(
            matches!(last.cause, Cause::ClientSilent) && last.stage == Stage::Protocol,
            "{stats}"
        );
        assert!(last.to_string().contains("is it in mode 0"), "{stats}");
        assert!(stats.counters.protocol_mismatches > 0, "{stats}");
        client.close().await;
        server.close().await;
    }
}
