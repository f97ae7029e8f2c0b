//! The server's services: one public port each, all through the one pool and control
//! connection. They start with the server and change while it runs ([`reload`]):
//! an added service starts, a removed one stops accepting and drains (its sessions run
//! to their end), a changed one does both, and an unchanged one is not touched.
//!
//! A service's kind ([`ServiceProtocol`]) is dispatched in two places only: [`bind`]
//! (its public socket) and [`serve`] (its accept loop).
//!
//! [`reload`]: Services::reload

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::{lock, public, udp, Shared};
use crate::config::{check_services, RelayLimits, Reloaded, ServerService, ServiceProtocol};

/// What a user session needs of its service.
pub(super) struct Service {
    /// Its name, sent in each session's start.
    pub(super) name: String,
    /// Its relay deadlines.
    pub(super) relay: RelayLimits,
    /// Its counters.
    pub(super) stats: Arc<crate::stats::ServiceCounters>,
}

/// A service's public socket, by kind.
#[derive(Clone)]
pub(super) enum Bound {
    /// A TCP listener (shared with the service that replaces this one on the same
    /// address, so that a reload refuses no user).
    Tcp(Arc<TcpListener>),
    /// A UDP socket (likewise shared with the service that replaces this one: the old
    /// one's associations end when it stops, and the new one takes the datagrams).
    Udp(Arc<UdpSocket>),
}

impl Bound {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Self::Tcp(l) => l.local_addr(),
            Self::Udp(s) => s.local_addr(),
        }
    }
}

/// Binds a service's public socket, by its kind.
async fn bind(svc: &ServerService) -> Result<Bound, String> {
    let name = &svc.name;
    match svc.protocol {
        ServiceProtocol::Tcp => TcpListener::bind(svc.public)
            .await
            .map(|l| Bound::Tcp(Arc::new(l)))
            .map_err(|e| format!("service {name}: public {}: {e}", svc.public)),
        ServiceProtocol::Udp => UdpSocket::bind(svc.public)
            .await
            .map(|s| Bound::Udp(Arc::new(s)))
            .map_err(|e| format!("service {name}: public {} (udp): {e}", svc.public)),
    }
}

/// Runs a service on its socket, by its kind, until `stop` turns true; then drains its
/// sessions.
async fn serve(shared: Arc<Shared>, svc: ServerService, bound: Bound, stop: watch::Receiver<bool>) {
    match bound {
        Bound::Tcp(listener) => public::public_accept_loop(shared, svc, listener, stop).await,
        Bound::Udp(socket) => udp::udp_loop(shared, svc, socket, stop).await,
    }
}

/// A request to the task that runs the services.
pub(super) struct Reload {
    pub(super) services: Vec<ServerService>,
    pub(super) reply: oneshot::Sender<Result<Reloaded, String>>,
}

/// A service running now.
struct Running {
    cfg: ServerService,
    bound: Bound,
    stop: watch::Sender<bool>,
    task: tokio::task::Id,
}

/// The running services, and the public addresses they listen on (read by the handle).
pub(super) struct Services {
    running: BTreeMap<String, Running>,
    tasks: JoinSet<()>,
    /// Services told to stop, draining: their tasks end on their own.
    stopping: HashSet<tokio::task::Id>,
    pub(super) addrs: Arc<Mutex<BTreeMap<String, SocketAddr>>>,
}

impl Services {
    pub(super) fn new() -> Self {
        Self {
            running: BTreeMap::new(),
            tasks: JoinSet::new(),
            stopping: HashSet::new(),
            addrs: Arc::default(),
        }
    }

    /// Makes `services` the running set. Every new socket is bound before anything
    /// changes: when one cannot be, nothing changes and the error says which.
    pub(super) async fn reload(
        &mut self,
        shared: &Arc<Shared>,
        services: Vec<ServerService>,
    ) -> Result<Reloaded, String> {
        check_services(&services).map_err(|e| e.to_string())?;
        // Sockets of running services, by address: a service that takes over an
        // address (changed, or renamed) keeps accepting on the same socket.
        let held: HashMap<(SocketAddr, ServiceProtocol), Bound> = self
            .running
            .values()
            .filter_map(|r| {
                Some((
                    (r.bound.local_addr().ok()?, r.cfg.protocol),
                    r.bound.clone(),
                ))
            })
            .collect();
        let mut report = Reloaded::default();
        let mut start = Vec::new();
        for svc in &services {
            match self.running.get(&svc.name) {
                Some(r) if r.cfg == *svc => {
                    report.unchanged.push(svc.name.clone());
                    continue;
                }
                Some(_) => report.changed.push(svc.name.clone()),
                None => report.added.push(svc.name.clone()),
            }
            // Port 0 asks for a fresh port: never one in use.
            let reuse = (svc.public.port() != 0)
                .then(|| held.get(&(svc.public, svc.protocol)))
                .flatten();
            let bound = match reuse {
                Some(b) => b.clone(),
                None => bind(svc).await?,
            };
            start.push((svc.clone(), bound));
        }
        let keep: HashSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
        report.removed = self
            .running
            .keys()
            .filter(|n| !keep.contains(n.as_str()))
            .cloned()
            .collect();
        // Nothing can fail from here on.
        for name in report.removed.iter().chain(&report.changed) {
            if let Some(r) = self.running.remove(name) {
                r.stop.send_replace(true);
                self.stopping.insert(r.task);
                lock(&self.addrs).remove(name);
            }
        }
        for (svc, bound) in start {
            let addr = bound.local_addr().unwrap_or(svc.public);
            let (stop, stopped) = watch::channel(false);
            let task = self
                .tasks
                .spawn(serve(shared.clone(), svc.clone(), bound.clone(), stopped))
                .id();
            lock(&self.addrs).insert(svc.name.clone(), addr);
            self.running.insert(
                svc.name.clone(),
                Running {
                    cfg: svc,
                    bound,
                    stop,
                    task,
                },
            );
        }
        Ok(report)
    }
}

/// Runs the services and applies each reload. Ends only by a panic of a service's
/// accept loop (passed on, so the supervisor says which) or if one ends unasked;
/// a service that was told to stop ends when its sessions have.
pub(super) async fn run(
    shared: Arc<Shared>,
    mut services: Services,
    mut rx: mpsc::Receiver<Reload>,
) {
    loop {
        tokio::select! {
            req = rx.recv() => match req {
                Some(Reload { services: new, reply }) => {
                    let r = services.reload(&shared, new).await;
                    let _ = reply.send(r);
                }
                // The handle is gone; it stops this task.
                None => std::future::pending().await,
            },
            Some(end) = services.tasks.join_next_with_id() => match end {
                Ok((id, ())) if services.stopping.remove(&id) => {}
                Ok(_) => return,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => return,
            },
        }
    }
}
