//! Tests of the liveness probe on real loopback sockets.
#![cfg(unix)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use pool_net::{probe, Liveness};

fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

fn pair_v6() -> Option<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("[::1]:0").ok()?;
    let client = TcpStream::connect(listener.local_addr().unwrap()).ok()?;
    let (server, _) = listener.accept().unwrap();
    Some((client, server))
}

/// Probes until the state is no longer `Idle`, for at most 2 s.
fn probe_until_not_idle<S: std::os::fd::AsFd>(s: &S) -> Liveness {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let state = probe(s);
        if state != Liveness::Idle || Instant::now() >= deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn quiet_peer_is_idle() {
    let (client, server) = pair();
    assert_eq!(probe(&client), Liveness::Idle);
    assert_eq!(probe(&server), Liveness::Idle);
    assert!(probe(&client).is_alive());
}

#[test]
fn peer_closed_is_closed() {
    let (client, server) = pair();
    drop(server);
    assert_eq!(probe_until_not_idle(&client), Liveness::Closed);
    assert!(!probe(&client).is_alive());
}

#[test]
fn peer_shutdown_write_is_closed() {
    let (client, server) = pair();
    server.shutdown(Shutdown::Write).unwrap();
    assert_eq!(probe_until_not_idle(&client), Liveness::Closed);
}

#[test]
fn peer_reset_is_dead() {
    let (client, server) = pair();
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(server);
    assert_eq!(
        probe_until_not_idle(&client),
        Liveness::Dead(ErrorKind::ConnectionReset)
    );
}

fn check_pending_is_lossless(mut client: TcpStream, mut server: TcpStream) {
    let payload: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    server.write_all(&payload).unwrap();
    assert_eq!(probe_until_not_idle(&client), Liveness::Pending);
    for _ in 0..5 {
        assert_eq!(probe(&client), Liveness::Pending);
    }
    let mut got = vec![0u8; payload.len()];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.read_exact(&mut got).unwrap();
    assert_eq!(got, payload);
    assert_eq!(probe(&client), Liveness::Idle);
}

#[test]
fn pending_bytes_are_left_unread() {
    let (client, server) = pair();
    check_pending_is_lossless(client, server);
}

#[test]
fn pending_bytes_are_left_unread_v6() {
    if let Some((client, server)) = pair_v6() {
        check_pending_is_lossless(client, server);
    }
}

#[test]
fn single_byte_then_close_reads_byte_then_closed() {
    let (mut client, mut server) = pair();
    server.write_all(b"x").unwrap();
    drop(server);
    assert_eq!(probe_until_not_idle(&client), Liveness::Pending);
    let mut b = [0u8; 1];
    client.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
    assert_eq!(probe_until_not_idle(&client), Liveness::Closed);
}

#[test]
fn probe_on_blocking_socket_does_not_block() {
    let (client, _server) = pair();
    client.set_nonblocking(false).unwrap();
    let start = Instant::now();
    for _ in 0..100 {
        assert_eq!(probe(&client), Liveness::Idle);
    }
    assert!(start.elapsed() < Duration::from_secs(1));
    // The descriptor's own mode is untouched: a blocking read still times out
    // rather than returning WouldBlock immediately.
    client
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut buf = [0u8; 1];
    let start = Instant::now();
    let err = (&client).read(&mut buf).unwrap_err();
    assert!(matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    assert!(start.elapsed() >= Duration::from_millis(15));
}

#[test]
fn probe_on_nonblocking_socket() {
    let (client, mut server) = pair();
    client.set_nonblocking(true).unwrap();
    assert_eq!(probe(&client), Liveness::Idle);
    server.write_all(b"hi").unwrap();
    assert_eq!(probe_until_not_idle(&client), Liveness::Pending);
}

#[test]
fn probe_on_unix_stream() {
    let (a, mut b) = UnixStream::pair().unwrap();
    assert_eq!(probe(&a), Liveness::Idle);
    b.write_all(b"z").unwrap();
    assert_eq!(probe(&a), Liveness::Pending);
    drop(b);
    let mut a = a;
    let mut buf = [0u8; 1];
    a.read_exact(&mut buf).unwrap();
    assert_eq!(probe(&a), Liveness::Closed);
}

#[test]
fn probe_on_listener_is_dead_not_a_panic() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(matches!(probe(&listener), Liveness::Dead(_)));
}
