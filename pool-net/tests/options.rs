//! Tests of socket options and listener binding.
#![cfg(unix)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use pool_net::{bind_listener, Applied, SocketOptions};
use socket2::SockRef;

fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

#[test]
fn default_options_take_effect() {
    let (client, _server) = pair();
    let sock = SockRef::from(&client);
    sock.set_nodelay(false).unwrap();
    assert_eq!(
        SocketOptions::default().apply(&client).unwrap(),
        Applied::Tcp
    );
    assert!(sock.keepalive().unwrap());
    assert!(sock.nodelay().unwrap());
    #[cfg(target_os = "linux")]
    {
        assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(30));
    }
}

#[test]
fn custom_options_take_effect() {
    let (client, _server) = pair();
    let opts = SocketOptions {
        keepalive: Some(Duration::from_secs(45)),
        keepalive_interval: Some(Duration::from_millis(4500)),
        keepalive_retries: Some(4),
        nodelay: false,
        user_timeout: Some(Duration::from_secs(12)),
    };
    assert_eq!(opts.apply(&client).unwrap(), Applied::Tcp);
    let sock = SockRef::from(&client);
    assert!(sock.keepalive().unwrap());
    assert!(!sock.nodelay().unwrap());
    #[cfg(target_os = "linux")]
    {
        assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(45));
        assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(5));
        assert_eq!(sock.keepalive_retries().unwrap(), 4);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(12))
        );
    }
}

#[test]
fn extreme_values_are_clamped_not_rejected() {
    let (client, _server) = pair();
    let opts = SocketOptions {
        keepalive: Some(Duration::from_secs(u64::MAX)),
        keepalive_interval: Some(Duration::ZERO),
        keepalive_retries: Some(0),
        ..SocketOptions::default()
    };
    assert_eq!(opts.apply(&client).unwrap(), Applied::Tcp);
    #[cfg(target_os = "linux")]
    {
        let sock = SockRef::from(&client);
        assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(32767));
        assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(1));
        assert_eq!(sock.keepalive_retries().unwrap(), 1);
    }
}

#[test]
fn keepalive_off() {
    let (client, _server) = pair();
    SocketOptions::default().apply(&client).unwrap();
    let opts = SocketOptions {
        keepalive: None,
        ..SocketOptions::default()
    };
    assert_eq!(opts.apply(&client).unwrap(), Applied::Tcp);
    assert!(!SockRef::from(&client).keepalive().unwrap());
}

#[test]
fn applies_to_ipv6_streams() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        return; // no IPv6 loopback here
    };
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    for s in [&client, &server] {
        assert_eq!(SocketOptions::default().apply(s).unwrap(), Applied::Tcp);
        assert!(SockRef::from(s).nodelay().unwrap());
    }
}

#[test]
fn unix_stream_is_not_tcp() {
    let (a, _b) = UnixStream::pair().unwrap();
    assert_eq!(SocketOptions::default().apply(&a).unwrap(), Applied::NotTcp);
    let dir = std::env::temp_dir().join(format!("pool-net-test-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let listener = UnixListener::bind(&dir).unwrap();
    assert_eq!(
        SocketOptions::default().apply(&listener).unwrap(),
        Applied::NotTcp
    );
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn udp_and_files_are_not_tcp() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        SocketOptions::default().apply(&udp).unwrap(),
        Applied::NotTcp
    );
    let file = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(
        SocketOptions::default().apply(&file).unwrap(),
        Applied::NotTcp
    );
}

#[test]
fn bind_listener_accepts_connections() {
    let listener = bind_listener("127.0.0.1:0".parse().unwrap(), 128).unwrap();
    let addr = listener.local_addr().unwrap();
    assert!(SockRef::from(&listener).reuse_address().unwrap());
    // Several connections queue up in the backlog before any accept.
    let clients: Vec<_> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for _ in &clients {
        let (s, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), addr.ip());
        assert_eq!(SocketOptions::default().apply(&s).unwrap(), Applied::Tcp);
    }
}

#[test]
fn bind_listener_is_blocking() {
    let listener = bind_listener("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    assert!(!SockRef::from(&listener).nonblocking().unwrap());
}

#[test]
fn rebind_right_after_close_with_time_wait() {
    let listener = bind_listener("127.0.0.1:0".parse().unwrap(), 16).unwrap();
    let addr = listener.local_addr().unwrap();
    {
        let mut client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        // The server side closes first, so its end of the connection (on the
        // listening port) goes into TIME_WAIT.
        drop(server);
        let mut buf = [0u8; 1];
        use std::io::Read;
        assert_eq!(client.read(&mut buf).unwrap(), 0);
    }
    drop(listener);
    let again = bind_listener(addr, 16).expect("rebind with SO_REUSEADDR");
    assert_eq!(again.local_addr().unwrap(), addr);
    let _c = TcpStream::connect(addr).unwrap();
    again.accept().unwrap();
}

#[test]
fn bind_listener_ipv6_loopback() {
    // Loopback only: the tests never listen on every interface.
    let Ok(loop6) = bind_listener("[::1]:0".parse().unwrap(), 16) else {
        return; // no IPv6 on this host
    };
    let _c = TcpStream::connect(loop6.local_addr().unwrap()).unwrap();
    loop6.accept().unwrap();
}

#[test]
fn apply_tcp_sets_the_same_options_without_asking() {
    let (a, _b) = pair();
    let opts = SocketOptions {
        keepalive: Some(Duration::from_secs(17)),
        ..SocketOptions::default()
    };
    opts.apply_tcp(&a).unwrap();
    let sock = SockRef::from(&a);
    assert!(sock.keepalive().unwrap());
    #[cfg(target_os = "linux")]
    assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(17));
    assert!(sock.nodelay().unwrap());
    // On something that is not TCP the kernel says no: an error, not a panic.
    let (u, _v) = UnixStream::pair().unwrap();
    assert!(opts.apply_tcp(&u).is_err());
}

/// Linux copies a listener's socket options into each socket it accepts, which lets a
/// server set them once instead of with five system calls per connection.
#[cfg(target_os = "linux")]
#[test]
fn accepted_sockets_inherit_the_listeners_options() {
    let opts = SocketOptions {
        keepalive: Some(Duration::from_secs(45)),
        keepalive_interval: Some(Duration::from_secs(7)),
        keepalive_retries: Some(4),
        nodelay: true,
        user_timeout: Some(Duration::from_secs(12)),
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    opts.apply_listener(&listener).unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    let sock = SockRef::from(&server);
    assert!(sock.keepalive().unwrap());
    assert!(sock.nodelay().unwrap());
    assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(45));
    assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(7));
    assert_eq!(sock.keepalive_retries().unwrap(), 4);
    assert_eq!(
        sock.tcp_user_timeout().unwrap(),
        Some(Duration::from_secs(12))
    );
}
