//! Wire compatibility with the Go package, byte by byte: peers written here the way the
//! Go v1.0.6 code behaves on the wire (TCP, TLS 1.3 per mode, then exactly 8 lowercase
//! hex bytes from the server, or 4 raw bytes in later releases), against our pools.

mod common;

use std::sync::Arc;

use common::*;
use pool_tls::{ClientTlsBuilder, ServerTls, TlsMode};
use pool_tokio::{ClientConfig, ClientTls, ServeTls, ServerConfig};
use pool_tokio::{ClientPool, ConnId, IdForm, ServerPool};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A Go-style server end: accept, TLS per mode, write the id, keep the stream.
async fn go_server(
    mode: TlsMode,
    form: IdForm,
    n: usize,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<(ConnId, Box<dyn Io>)>,
) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = (mode != TlsMode::Off).then(|| {
        let cert = ServerTls::self_signed(["localhost"]).unwrap();
        TlsAcceptor::from(cert.config().unwrap())
    });
    let (tx, rx) = tokio::sync::mpsc::channel(n);
    tokio::spawn(async move {
        for i in 0..n {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut stream: Box<dyn Io> = match &acceptor {
                Some(a) => Box::new(a.accept(tcp).await.unwrap()),
                None => Box::new(tcp),
            };
            let raw = (0x5eed_0000u32 + i as u32).to_be_bytes();
            let id = ConnId::from_random(raw);
            let wire: Vec<u8> = match form {
                IdForm::Hex8 => {
                    format!("{:02x}{:02x}{:02x}{:02x}", raw[0], raw[1], raw[2], raw[3]).into_bytes()
                }
                _ => raw.to_vec(),
            };
            // Go writes the id and, in a tunnel, payload may follow at once.
            let mut out = wire.clone();
            out.extend_from_slice(b"first-payload");
            stream.write_all(&out).await.unwrap();
            stream.flush().await.unwrap();
            if tx.send((id, stream)).await.is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

async fn our_client_against_go_server(mode: TlsMode, form: IdForm) {
    let (addr, mut streams) = go_server(mode, form, 4).await;
    let client = ClientPool::builder()
        .address(addr)
        .config(ClientConfig::builder().id_form(form).capacity(4, 4))
        .tls(ClientTls::from(mode))
        .build()
        .unwrap();
    for _ in 0..4 {
        let (id, mut go_end) = streams.recv().await.unwrap();
        let mut ours = client.get_timeout(id, T).await.unwrap();
        assert_eq!(ours.id(), id);
        let mut buf = [0u8; 13];
        ours.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"first-payload", "payload behind the id was lost");
        ours.write_all(b"reply").await.unwrap();
        ours.flush().await.unwrap();
        let mut back = [0u8; 5];
        go_end.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"reply");
    }
}

/// A Go-style client end: dial, TLS per mode (mode 1 without verification), read
/// exactly the id.
async fn go_client(server: &ServerPool, mode: TlsMode, form: IdForm) -> (String, Box<dyn Io>) {
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut stream: Box<dyn Io> = match mode {
        TlsMode::Off => Box::new(tcp),
        _ => {
            let cfg = ClientTlsBuilder::new(TlsMode::SelfSigned)
                .build()
                .unwrap()
                .unwrap();
            let name = pool_tls::server_name("localhost").unwrap();
            Box::new(
                TlsConnector::from(Arc::clone(&cfg))
                    .connect(name, tcp)
                    .await
                    .unwrap(),
            )
        }
    };
    let mut id = vec![0u8; form.wire_len()];
    stream.read_exact(&mut id).await.unwrap();
    let text = match form {
        IdForm::Hex8 => {
            assert!(
                id.iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)),
                "not lowercase hex: {id:?}"
            );
            String::from_utf8(id).unwrap()
        }
        _ => id.iter().map(|b| format!("{b:02x}")).collect(),
    };
    (text, stream)
}

async fn our_server_against_go_client(mode: TlsMode, form: IdForm) {
    let server = ServerPool::builder()
        .bind(loopback())
        .config(ServerConfig::builder().id_form(form))
        .tls(if mode == TlsMode::Off {
            ServeTls::Off
        } else {
            ServeTls::self_signed()
        })
        .build()
        .unwrap();
    for _ in 0..4 {
        let (text, mut go_end) = go_client(&server, mode, form).await;
        let (id, mut ours) = server.get_timeout(T).await.unwrap();
        assert_eq!(id.as_str(), text);
        go_end.write_all(b"hello").await.unwrap();
        go_end.flush().await.unwrap();
        let mut buf = [0u8; 5];
        ours.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pool_reads_go_server_ids_in_every_mode_and_form() {
    for mode in [TlsMode::Off, TlsMode::SelfSigned] {
        for form in [IdForm::Hex8, IdForm::Raw4] {
            our_client_against_go_server(mode, form).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pool_writes_ids_a_go_client_reads_in_every_mode_and_form() {
    for mode in [TlsMode::Off, TlsMode::SelfSigned] {
        for form in [IdForm::Hex8, IdForm::Raw4] {
            our_server_against_go_client(mode, form).await;
        }
    }
}
