//! Shared helpers for the integration tests: a loopback handshake with bounded timeouts,
//! and scratch directories.

#![allow(dead_code, unreachable_pub)]

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ProtocolVersion, ServerConfig,
    ServerConnection, SideData,
};

/// Upper bound on every socket read and write, so a broken test fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why one side of a handshake failed.
#[derive(Debug)]
pub enum HsError {
    /// rustls refused the handshake.
    Tls(rustls::Error),
    /// The socket failed (timeout, reset, EOF).
    Io(io::Error),
}

impl From<io::Error> for HsError {
    fn from(e: io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Self::Tls(tls.clone()),
            None => Self::Io(e),
        }
    }
}

impl From<rustls::Error> for HsError {
    fn from(e: rustls::Error) -> Self {
        Self::Tls(e)
    }
}

/// The result of each side: the negotiated version, after a ping/pong exchange.
#[derive(Debug)]
pub struct Outcome {
    pub client: Result<ProtocolVersion, HsError>,
    pub server: Result<ProtocolVersion, HsError>,
}

impl Outcome {
    /// Both sides succeeded, with this version.
    #[track_caller]
    pub fn expect_ok(self) -> ProtocolVersion {
        let client = self.client.expect("client side failed");
        let server = self.server.expect("server side failed");
        assert_eq!(client, server);
        client
    }

    /// The client's rustls error (panics if the client succeeded or failed otherwise).
    #[track_caller]
    pub fn client_err(&self) -> &rustls::Error {
        match &self.client {
            Err(HsError::Tls(e)) => e,
            other => panic!(
                "expected a rustls error on the client, got {other:?} (server: {:?})",
                self.server
            ),
        }
    }

    /// The server's rustls error (panics if the server succeeded or failed otherwise).
    #[track_caller]
    pub fn server_err(&self) -> &rustls::Error {
        match &self.server {
            Err(HsError::Tls(e)) => e,
            other => panic!(
                "expected a rustls error on the server, got {other:?} (client: {:?})",
                self.client
            ),
        }
    }
}

fn timeouts(sock: &TcpStream) -> io::Result<()> {
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    sock.set_nodelay(true)
}

/// Drives the handshake to its end and flushes what is left to send.
fn finish_handshake<D: SideData>(
    conn: &mut ConnectionCommon<D>,
    sock: &mut TcpStream,
) -> Result<ProtocolVersion, HsError> {
    while conn.is_handshaking() {
        conn.complete_io(sock)?;
    }
    while conn.wants_write() {
        conn.write_tls(sock)?;
    }
    Ok(conn
        .protocol_version()
        .expect("version known after handshake"))
}

/// Runs a real handshake over loopback between a server using `server` and a client
/// using `client` that connects to server name `name`; on success the client sends
/// `ping` and the server answers `pong` through the TLS streams.
pub fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>, name: &str) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let server_side = thread::spawn(move || -> Result<ProtocolVersion, HsError> {
        let (mut sock, _) = listener.accept()?;
        timeouts(&sock)?;
        let mut conn = ServerConnection::new(server)?;
        let version = finish_handshake(&mut conn, &mut sock)?;
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong")?;
        tls.flush()?;
        Ok(version)
    });

    let client_side = (|| -> Result<ProtocolVersion, HsError> {
        let mut sock = TcpStream::connect(addr)?;
        timeouts(&sock)?;
        let name = pool_tls::server_name(name).expect("valid server name");
        let mut conn = ClientConnection::new(client, name)?;
        let version = finish_handshake(&mut conn, &mut sock)?;
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(b"ping")?;
        tls.flush()?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)?;
        assert_eq!(&buf, b"pong");
        Ok(version)
    })();

    let server = server_side.join().expect("server thread panicked");
    Outcome {
        client: client_side,
        server,
    }
}

/// A fresh, unique scratch directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = std::env::temp_dir().join(format!(
            "pool-tls-test-{}-{tag}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
