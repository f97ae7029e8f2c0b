//! Helpers of the reliability tests that drive pools through the test kit (each test
//! file is its own crate; `common` holds the helpers of the API tests).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pool_tokio::{ConnId, TlsMode};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Raises the soft open-file limit to the hard one; the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
    pool_testkit::process::raise_nofile().unwrap_or(0)
}

/// Sets the soft open-file limit (the hard one stays).
pub(crate) fn set_nofile(soft: u64) -> bool {
    pool_testkit::process::set_nofile_soft(soft).is_ok()
}

/// CPU time (user + system) this process has used.
pub(crate) fn cpu_time() -> Duration {
    pool_testkit::process::cpu_time().unwrap_or_default()
}

/// Closes a socket with an RST.
pub(crate) fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// A mode-1 TLS client config (no verification).
pub(crate) fn tls1_client() -> tokio_rustls::TlsConnector {
    let cfg = pool_tls::ClientTlsBuilder::new(TlsMode::SelfSigned)
        .build()
        .unwrap()
        .unwrap();
    tokio_rustls::TlsConnector::from(cfg)
}

/// A well-behaved fake client: connect (optionally waiting first), TLS per `tls`,
/// read the 8-byte id; returns the stream so the caller decides when to drop it.
pub(crate) enum Fake {
    /// Plain stream.
    Plain(TcpStream),
    /// TLS stream.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

pub(crate) async fn fake_client(
    addr: SocketAddr,
    tls: bool,
    delay: Duration,
) -> std::io::Result<(ConnId, Fake)> {
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::sleep(delay).await;
    let mut id = [0u8; 8];
    if tls {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = tls1_client().connect(name, tcp).await?;
        s.read_exact(&mut id).await?;
        let id = ConnId::from_hex_bytes(&id).map_err(std::io::Error::other)?;
        Ok((id, Fake::Tls(Box::new(s))))
    } else {
        let mut s = tcp;
        s.read_exact(&mut id).await?;
        let id = ConnId::from_hex_bytes(&id).map_err(std::io::Error::other)?;
        Ok((id, Fake::Plain(s)))
    }
}

/// The bytes of a TLS 1.3 ClientHello as a mode-1 client would send it.
pub(crate) fn client_hello() -> Vec<u8> {
    let cfg = pool_tls::ClientTlsBuilder::new(TlsMode::SelfSigned)
        .build()
        .unwrap()
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::clone(&cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}
