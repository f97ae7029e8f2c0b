//! One dial, blocking: connect, TLS, id, each under the deadline its ticket carries.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_core::{ConnId, DialTicket, IdForm, IdReader, Stage};
use pool_net::SocketOptions;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use crate::conn::{Stream, ThreadConn};

/// What every dial of a pool needs.
pub(crate) struct Dialing {
    pub(crate) addr: SocketAddr,
    pub(crate) socket: SocketOptions,
    pub(crate) tls: Option<(Arc<rustls::ClientConfig>, Option<ServerName<'static>>)>,
    pub(crate) id_form: IdForm,
}

/// The time left until `deadline`, or a timeout error naming `what` (std refuses a
/// zero timeout, and a deadline already past is a timeout anyway).
fn left(deadline: Instant, what: &str) -> io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out"),
        ));
    }
    Ok(d)
}

impl Dialing {
    /// Connect, TLS and id, as the ticket says; `handshaken` tells the machine that
    /// the id read starts (its deadline moves), or, in single mode, gives the id the
    /// machine drew.
    pub(crate) fn establish(
        &self,
        ticket: &mut DialTicket,
        handshaken: impl FnOnce(&mut DialTicket) -> Option<ConnId>,
    ) -> Result<ThreadConn, (Stage, io::Error)> {
        let hs = ticket.handshake_deadline();
        let connect = |at| (Stage::Connect, at);
        let tcp = TcpStream::connect_timeout(&self.addr, left(hs, "connect").map_err(connect)?)
            .map_err(connect)?;
        // Options are best effort, as in pool-tokio: a pool runs without keep-alive.
        let _ = self.socket.apply_tcp(&tcp);
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((config, name)) => Stream::Tls(Box::new(
                handshake(tcp, config, name, hs).map_err(|e| (Stage::Tls, e))?,
            )),
        };
        let mut conn = ThreadConn {
            id: ConnId::from_random([0; 4]),
            stream,
        };
        conn.id = match handshaken(ticket) {
            Some(id) => id,
            None => {
                let deadline = ticket.id_deadline(Instant::now());
                read_id(&mut conn, self.id_form, deadline).map_err(|e| (Stage::Id, e))?
            }
        };
        // Handed out blocking, with no timeout.
        let tcp = conn.tcp();
        tcp.set_read_timeout(None).map_err(connect)?;
        tcp.set_write_timeout(None).map_err(connect)?;
        Ok(conn)
    }
}

fn handshake(
    tcp: TcpStream,
    config: &Arc<rustls::ClientConfig>,
    name: &Option<ServerName<'static>>,
    deadline: Instant,
) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let name = match name {
        Some(n) => n.clone(),
        None => ServerName::IpAddress(tcp.peer_addr()?.ip().into()),
    };
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        let t = left(deadline, "TLS handshake")?;
        tls.sock.set_read_timeout(Some(t))?;
        tls.sock.set_write_timeout(Some(t))?;
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// Reads exactly the id, under a read timeout set from the deadline before each read:
/// never a byte of payload behind it (the buffer is as long as what the id still
/// needs, and rustls hands out no more plaintext than the buffer holds).
fn read_id(conn: &mut ThreadConn, form: IdForm, deadline: Instant) -> io::Result<ConnId> {
    let mut reader = IdReader::new(form);
    let mut buf = [0u8; pool_core::ID_LEN];
    loop {
        conn.tcp()
            .set_read_timeout(Some(left(deadline, "id read")?))?;
        let want = reader.remaining();
        let n = match conn.read(&mut buf[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let fed = reader
            .feed(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if let Some(id) = fed.id {
            return Ok(id);
        }
    }
}
