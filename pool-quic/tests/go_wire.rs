//! The np-quic wire, byte by byte: raw quinn peers written from the Go package (no
//! pool code) pair with our server and our client.

mod common;

use std::time::Duration;

use common::raw;
use pool_quic::{ClientConfig, ClientPool, ClientTls, ConnId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_client_opens_a_stream_writes_0x00_and_reads_the_4_byte_id_our_server_hands_out() {
    let server = common::server(16);
    let ep = raw::client("127.0.0.1", pool_quic::ALPN);
    let conn = raw::connect(&ep, server.local_addr()).await.unwrap();
    assert_eq!(
        conn.handshake_data()
            .unwrap()
            .downcast::<pool_quic::quinn::crypto::rustls::HandshakeData>()
            .unwrap()
            .protocol
            .as_deref(),
        Some(&b"np-quic"[..])
    );
    let (id, mut send, mut recv) = raw::go_stream(&conn).await;
    let (got, mut s) = server.get().await.unwrap();
    assert_eq!(
        got.as_str(),
        id,
        "the key is the hex of the 4 bytes written"
    );
    s.write_all(b"to go").await.unwrap();
    let mut buf = [0u8; 5];
    recv.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"to go");
    send.write_all(b"from go").await.unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"from go");
    server.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_client_pairs_with_a_go_server_by_the_ids_it_writes() {
    let ep = raw::server(pool_quic::ALPN);
    let addr = ep.local_addr().unwrap();
    let go = tokio::spawn(async move {
        let conn = ep.accept().await.unwrap().await.unwrap();
        let mut streams = Vec::new();
        for n in 0..3u8 {
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let hello = raw::serve_stream(&mut send, &mut recv, [0xde, 0xad, 0xbe, n]).await;
            assert_eq!(hello, 0x00, "the client's opening byte");
            streams.push((send, recv));
        }
        let (send, recv) = &mut streams[1];
        send.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        recv.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        conn
    });
    let core = ClientConfig::builder().capacity(3, 3).build().unwrap();
    let client = ClientPool::builder()
        .address(addr)
        .config(core)
        .tls(ClientTls::SelfSigned {
            pin: None,
            name: None,
        })
        .build()
        .unwrap();
    let id: ConnId = "deadbe01".parse().unwrap();
    let mut c = client.get(id).await.unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    c.write_all(b"pong").await.unwrap();
    let conn = tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .unwrap()
        .unwrap();
    assert!(client.wait_idle(2, Duration::from_secs(5)).await);
    conn.close(0u32.into(), b"done");
    client.close().await;
}

/// quic-go reads datagrams into 1,452-byte buffers unless GRO is on, and drops a larger
/// one whole: our client's first Initial, sent before the server's transport
/// parameters say how large a packet it takes, must fit, even towards loopback where
/// later packets are larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_first_initial_to_a_loopback_server_fits_a_go_servers_read_buffer() {
    let go = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = ClientPool::builder()
        .address(go.local_addr().unwrap())
        .config(ClientConfig::builder().capacity(1, 1).build().unwrap())
        .tls(ClientTls::SelfSigned {
            pin: None,
            name: None,
        })
        .build()
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), go.recv_from(&mut buf))
        .await
        .expect("no Initial came")
        .unwrap();
    assert!(
        buf[0] & 0xf0 == 0xc0,
        "a long-header Initial: {:#x}",
        buf[0]
    );
    assert!(
        (1200..=1452).contains(&n),
        "the first Initial is {n} bytes; a Go server reads at most 1,452"
    );
    client.close().await;
}
