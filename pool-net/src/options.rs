//! Socket options applied to pooled TCP streams.

use std::time::Duration;

/// Largest keep-alive idle time or interval, in whole seconds, that is passed
/// to the kernel (Linux rejects anything above `MAX_TCP_KEEPIDLE` = 32767).
#[cfg_attr(not(unix), allow(dead_code))]
const MAX_KEEPALIVE_SECS: u64 = 32_767;

/// Socket options applied to every pooled TCP stream.
///
/// The defaults match the Go package this crate re-implements: keep-alive on
/// with a 30 s idle time (and the same probe interval), `TCP_NODELAY` on, and
/// everything else left at the operating system's default.
///
/// Keep-alive times are given to the kernel in whole seconds: they are rounded
/// up to at least 1 s and capped at 32767 s (the Linux maximum). The probe count
/// is clamped to `1..=127`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketOptions {
    /// TCP keep-alive idle time before the first probe; `None` turns keep-alive off.
    pub keepalive: Option<Duration>,
    /// Interval between keep-alive probes; `None` means the same as [`keepalive`](Self::keepalive).
    pub keepalive_interval: Option<Duration>,
    /// Number of unanswered probes before the connection is dropped (Linux and
    /// the BSDs only); `None` leaves the OS default.
    pub keepalive_retries: Option<u32>,
    /// Whether `TCP_NODELAY` is set (Nagle's algorithm off).
    pub nodelay: bool,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the
    /// connection is dropped. Linux (and Android/Fuchsia) only, ignored elsewhere;
    /// `None` leaves the OS default.
    pub user_timeout: Option<Duration>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            keepalive: Some(Duration::from_secs(30)),
            keepalive_interval: None,
            keepalive_retries: None,
            nodelay: true,
            user_timeout: None,
        }
    }
}

/// Whether a socket accepted from a listener carries the options set on the listener
/// with [`SocketOptions::apply_listener`]: true on Linux, whose accept copies them
/// (keep-alive and its three parameters, `TCP_NODELAY`, `TCP_USER_TIMEOUT`).
pub const INHERITED_AT_ACCEPT: bool = cfg!(target_os = "linux");

/// What [`SocketOptions::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The descriptor is a TCP socket and the options were set.
    Tcp,
    /// The descriptor is not a TCP socket (Unix socket, datagram socket, pipe,
    /// ...); nothing was changed.
    NotTcp,
}

/// Converts a keep-alive duration to what the kernel will actually use:
/// whole seconds, rounded up, within `1..=MAX_KEEPALIVE_SECS`.
#[cfg_attr(not(unix), allow(dead_code))]
fn keepalive_secs(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.clamp(1, MAX_KEEPALIVE_SECS))
}

#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
impl SocketOptions {
    /// Applies these options to `s`, which may be any descriptor.
    ///
    /// The descriptor counts as TCP when `SO_TYPE` is `SOCK_STREAM`, its local
    /// address is IPv4 or IPv6 and (on Linux, where `SO_PROTOCOL` exists) its
    /// protocol is TCP or MPTCP. Anything else, including a descriptor that is
    /// not a socket at all, yields `Ok(Applied::NotTcp)` and is left untouched.
    ///
    /// # Errors
    ///
    /// Any error from querying the socket (other than "not a socket") or from
    /// setting an option.
    pub fn apply<S: std::os::fd::AsFd>(&self, s: &S) -> std::io::Result<Applied> {
        let sock = socket2::SockRef::from(s);
        if !is_tcp(&sock)? {
            return Ok(Applied::NotTcp);
        }
        self.set_all(&sock)?;
        Ok(Applied::Tcp)
    }

    /// Applies these options to a socket whose type says it is TCP (a
    /// `std::net::TcpStream`, a `tokio::net::TcpStream`), skipping the three
    /// queries with which [`apply`](Self::apply) first makes sure. A pool sets up
    /// thousands of connections a second; each query is a system call.
    ///
    /// # Errors
    ///
    /// Any error from setting an option (on a socket that is not TCP, the kernel's).
    pub fn apply_tcp<S: std::os::fd::AsFd>(&self, s: &S) -> std::io::Result<()> {
        self.set_all(&socket2::SockRef::from(s))
    }

    /// Applies these options to a listening TCP socket. On Linux every socket it
    /// accepts from then on carries them (the kernel copies them at accept, see
    /// [`INHERITED_AT_ACCEPT`]), so a server need not set them again on each
    /// connection; elsewhere it must.
    ///
    /// # Errors
    ///
    /// Any error from setting an option.
    pub fn apply_listener<S: std::os::fd::AsFd>(&self, s: &S) -> std::io::Result<()> {
        self.set_all(&socket2::SockRef::from(s))
    }

    fn set_all(&self, sock: &socket2::SockRef<'_>) -> std::io::Result<()> {
        match self.keepalive {
            None => sock.set_keepalive(false)?,
            Some(idle) => {
                let params = socket2::TcpKeepalive::new().with_time(keepalive_secs(idle));
                #[cfg(any(
                    target_os = "linux",
                    target_os = "android",
                    target_os = "freebsd",
                    target_os = "netbsd",
                    target_os = "dragonfly",
                    target_os = "macos",
                    target_os = "ios",
                    target_os = "fuchsia",
                    target_os = "illumos",
                ))]
                let params = {
                    /// Largest probe count the kernel takes (Linux `MAX_TCP_KEEPCNT`).
                    const MAX_KEEPALIVE_RETRIES: u32 = 127;
                    let interval = self.keepalive_interval.unwrap_or(idle);
                    let params = params.with_interval(keepalive_secs(interval));
                    match self.keepalive_retries {
                        Some(n) => params.with_retries(n.clamp(1, MAX_KEEPALIVE_RETRIES)),
                        None => params,
                    }
                };
                // `set_tcp_keepalive` turns `SO_KEEPALIVE` on itself.
                sock.set_tcp_keepalive(&params)?;
            }
        }

        sock.set_nodelay(self.nodelay)?;

        #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
        if let Some(timeout) = self.user_timeout {
            sock.set_tcp_user_timeout(Some(timeout))?;
        }

        Ok(())
    }
}

/// Whether `sock` is a TCP (or MPTCP) socket over IPv4 or IPv6.
#[cfg(unix)]
fn is_tcp(sock: &socket2::SockRef<'_>) -> std::io::Result<bool> {
    let ty = match sock.r#type() {
        Ok(ty) => ty,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => return Ok(false),
        Err(e) => return Err(e),
    };
    if ty != socket2::Type::STREAM {
        return Ok(false);
    }
    let local = sock.local_addr()?;
    if !(local.is_ipv4() || local.is_ipv6()) {
        return Ok(false);
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Some(proto) = sock.protocol()? {
        return Ok(proto == socket2::Protocol::TCP || proto == socket2::Protocol::MPTCP);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_go() {
        let o = SocketOptions::default();
        assert_eq!(o.keepalive, Some(Duration::from_secs(30)));
        assert_eq!(o.keepalive_interval, None);
        assert_eq!(o.keepalive_retries, None);
        assert!(o.nodelay);
        assert_eq!(o.user_timeout, None);
    }

    #[test]
    fn keepalive_seconds_are_rounded_up_and_clamped() {
        assert_eq!(keepalive_secs(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            keepalive_secs(Duration::from_millis(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            keepalive_secs(Duration::from_millis(1500)),
            Duration::from_secs(2)
        );
        assert_eq!(
            keepalive_secs(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        assert_eq!(
            keepalive_secs(Duration::from_secs(u64::MAX)),
            Duration::from_secs(MAX_KEEPALIVE_SECS)
        );
    }
}
