//! Listener construction.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds a TCP listener on `addr` with the given accept `backlog`.
///
/// * `SO_REUSEADDR` is set on Unix, so a listener can be re-bound right after the
///   previous one closed even while old connections linger in `TIME_WAIT`. (It is
///   not set on Windows, where it would allow stealing a port that is in use.)
/// * For IPv6 addresses `IPV6_V6ONLY` is turned off where the system allows it, so
///   `[::]:port` also accepts IPv4 clients (they appear as `::ffff:a.b.c.d`, which
///   [`IpFilter`](crate::IpFilter) compares as IPv4). A refusal is ignored.
/// * The backlog is capped at `i32::MAX`; the kernel caps it further
///   (`net.core.somaxconn` on Linux).
/// * The listener is left in blocking mode; the caller decides (for example by
///   calling `set_nonblocking(true)` before handing it to an async runtime).
///
/// # Errors
///
/// Any error from creating, configuring, binding or listening on the socket,
/// such as `AddrInUse` or `PermissionDenied`.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Best effort: some systems force v6-only; that is not an error here.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&addr.into())?;
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    socket.listen(backlog)?;
    socket.set_nonblocking(false)?;
    Ok(socket.into())
}
