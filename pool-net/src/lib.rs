//! Socket-level building blocks for a pool of reverse-tunnel connections.
//!
//! This crate has three independent parts, none of which needs an async runtime:
//!
//! 1. **Socket setup** ([`SocketOptions`], [`bind_listener`]): TCP keep-alive
//!    (idle time, probe interval, probe count), `TCP_NODELAY`, optionally
//!    `TCP_USER_TIMEOUT`, and listeners bound with `SO_REUSEADDR` and an explicit
//!    backlog. [`SocketOptions::apply`] accepts any file descriptor and leaves
//!    anything that is not a TCP socket (for example a Unix stream) untouched
//!    instead of failing or panicking.
//! 2. **The client-IP filter** ([`IpFilter`]): "accept anyone", or a list of exact
//!    addresses and CIDR blocks, IPv4 and IPv6. IPv4-mapped IPv6 addresses
//!    (`::ffff:a.b.c.d`) compare as the IPv4 address they carry, so a dual-stack
//!    listener sees the same decisions as an IPv4-only one. Invalid configuration
//!    is a [`FilterError`] naming the bad entry, never a silent accept-all.
//! 3. **The liveness probe** ([`probe`]): decides whether an idle pooled
//!    connection is still usable right before it is handed out.
//!
//! # Why the probe uses `MSG_PEEK`
//!
//! A pooled connection sits idle until someone takes it; by then the peer may
//! have closed or reset it. The only cheap, reliable way to learn that is to ask
//! the kernel for the receive queue's state. A plain `read` would answer the
//! question but *consume* whatever the peer may already have sent, and those
//! bytes belong to the application that takes the connection (or to a TLS
//! record layered on top of it): they would be lost. A blocking read would also
//! stall the caller on a quiet but healthy connection.
//!
//! [`probe`] therefore issues a single `recv(fd, buf, 1, MSG_PEEK | MSG_DONTWAIT)`:
//!
//! * `MSG_PEEK` leaves any pending byte in the kernel queue, so the probe is
//!   lossless: the next ordinary read returns exactly what the peer sent.
//! * `MSG_DONTWAIT` makes this one call non-blocking whatever the descriptor's
//!   own blocking mode is, so the probe never stalls and never has to flip the
//!   descriptor's flags (which another thread or a runtime may rely on).
//!
//! The result maps directly to [`Liveness`]: would-block means alive and quiet,
//! one byte means alive with payload pending, zero bytes means the peer closed,
//! and an error (such as a reset) means dead. Because it works on the raw file
//! descriptor, it also works on the TCP socket underneath a TLS stream; bytes
//! that a TLS library has already pulled into its own user-space buffer are,
//! of course, invisible to it.
//!
//! The descriptor-based APIs ([`SocketOptions::apply`] and [`probe`]) exist on
//! Unix only; the crate targets Linux and also builds on the BSDs and macOS.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod filter;
#[cfg(target_os = "linux")]
mod hangups;
mod listener;
mod options;
#[cfg(unix)]
mod probe;

pub use filter::{FilterError, IpFilter};
#[cfg(target_os = "linux")]
pub use hangups::HangUps;
pub use listener::bind_listener;
pub use options::{Applied, SocketOptions, INHERITED_AT_ACCEPT};
#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
pub use probe::{looks_like_tls, peek_now, peer_closed, probe, read_now, Liveness};
