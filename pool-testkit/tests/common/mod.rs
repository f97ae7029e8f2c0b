//! Helpers shared by the reliability tests (each test file is its own crate).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pool_tokio::{ConnId, TlsMode};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Raises the soft open-file limit to the hard one; the new soft limit.
pub(crate) fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass, which lives
    // on this stack frame for the whole call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// Sets the soft open-file limit (the hard one stays).
pub(crate) fn set_nofile(soft: u64) -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as in `raise_nofile`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return false;
        }
        lim.rlim_cur = soft.min(lim.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

/// Process CPU time (user + system) from /proc/self/stat, in clock ticks.
pub(crate) fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stime: u64 = f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    utime + stime
}

/// Clock ticks per second (sysconf).
pub(crate) fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
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
