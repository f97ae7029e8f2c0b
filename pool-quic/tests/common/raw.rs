//! Raw quinn peers written from the Go package's wire, with no pool code: what a Go
//! NodePass peer does, byte by byte.

use std::net::SocketAddr;
use std::sync::Arc;

use pool_quic::quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use pool_quic::quinn::{self, Endpoint};
use pool_tls::{ClientTlsBuilder, ServerTls, TlsMode};

/// A client endpoint bound to `ip` that offers `alpn` and checks no certificate (the
/// Go client's codes 0 and 1).
pub(crate) fn client(ip: &str, alpn: &[u8]) -> Endpoint {
    let tls = ClientTlsBuilder::new(TlsMode::SelfSigned)
        .alpn(vec![alpn.to_vec()])
        .build()
        .unwrap()
        .unwrap();
    let quic = QuicClientConfig::try_from(tls).unwrap();
    let mut ep = Endpoint::client(format!("{ip}:0").parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep
}

/// Connects as a Go client does.
pub(crate) async fn connect(
    ep: &Endpoint,
    to: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    ep.connect(to, "localhost").unwrap().await
}

/// The Go client's stream: open, write `0x00`, read exactly 4 bytes; the id is their
/// hex.
pub(crate) async fn go_stream(
    conn: &quinn::Connection,
) -> (String, quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0x00]).await.unwrap();
    let mut raw = [0u8; 4];
    recv.read_exact(&mut raw).await.unwrap();
    let id = raw.iter().map(|b| format!("{b:02x}")).collect();
    (id, send, recv)
}

/// A server endpoint on 127.0.0.1 offering `alpn` with a self-signed certificate, as
/// a Go server is set up (128 streams per connection).
pub(crate) fn server(alpn: &[u8]) -> Endpoint {
    let cert = ServerTls::self_signed(["localhost"]).unwrap();
    let mut tls = (*cert.config().unwrap()).clone();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicServerConfig::try_from(tls).unwrap();
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(128u32.into());
    config.transport_config(Arc::new(t));
    Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap()
}

/// The Go server's side of one stream: read the opening byte, then write `id`.
pub(crate) async fn serve_stream(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    id: [u8; 4],
) -> u8 {
    let mut hello = [0u8; 1];
    recv.read_exact(&mut hello).await.unwrap();
    send.write_all(&id).await.unwrap();
    hello[0]
}
