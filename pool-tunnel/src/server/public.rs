//! A TCP service's accept loop on its public port: the cap and the per-source shares
//! of [`crate::sources`], and the reset of a session evicted to make room.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::warn;

use super::services::Service;
use super::{lock, user_session, Shared};
use crate::config::ServerService;
use crate::limits::Backoff;
use crate::relay::{peer_socket_options, Traffic};
use crate::sources::{Refused, SessionId, Source, SourceLimits};
use crate::stats::bump;

/// The public port's sessions: the table of sources, and how to reset each session
/// it may evict.
struct Public {
    limits: SourceLimits,
    held: HashMap<SessionId, Held>,
}

/// A running session, as the accept loop may have to end it.
struct Held {
    task: tokio::task::AbortHandle,
    /// The session's bytes and when the last one moved since its relay opened: a quiet
    /// session yields first, one still starting never.
    traffic: Arc<Traffic>,
    /// A second descriptor of the user's socket: an evicted user gets a reset (linger
    /// 0), never a clean end that passes for a complete answer. The socket closes
    /// when both descriptors are closed: at the latest when the session's task ends
    /// (its slot drops this one).
    socket: std::os::fd::OwnedFd,
}

impl Held {
    fn reset(self) {
        let _ = rustix::net::sockopt::set_socket_linger(&self.socket, Some(Duration::ZERO));
        self.task.abort();
    }
}

/// A session's place in [`Public`], given back however the session ends (an evicted
/// one was taken out already).
struct Slot {
    public: Arc<std::sync::Mutex<Public>>,
    source: Source,
    id: SessionId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = lock(&self.public);
        p.limits.release(self.source, self.id);
        p.held.remove(&self.id);
    }
}

/// Accepts the users of `svc` until `stop` turns true, then stops accepting (its last
/// handle on `listener` goes) and returns once every session it started has ended.
pub(super) async fn public_accept_loop(
    shared: Arc<Shared>,
    svc: ServerService,
    listener: Arc<TcpListener>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let limits = SourceLimits::new(
        svc.max_sessions,
        svc.per_source.sessions,
        svc.per_source.new_per_s,
    );
    let quiet = svc.quiet;
    let service = Arc::new(Service {
        name: svc.name.clone(),
        relay: svc.relay,
        stats: shared.per_service.service(&svc.name),
    });
    let counts = service.stats.clone();
    let counts = &counts.sessions;
    let public = Arc::new(std::sync::Mutex::new(Public {
        limits,
        held: HashMap::new(),
    }));
    let mut sessions = JoinSet::new();
    let mut backoff = Backoff::default();
    // Set once on the listener where accepted sockets inherit it (Linux), else on
    // each user.
    let options = peer_socket_options();
    let each = !(pool_tokio::INHERITED_AT_ACCEPT && options.apply_listener(&listener).is_ok());
    loop {
        while sessions.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a,
        };
        let (user, peer) = match accepted {
            Ok(pair) => {
                backoff.succeeded();
                pair
            }
            Err(e) => {
                let pause = backoff.failed();
                warn!("public: accept: {e}; pausing {pause:?}");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        bump(&shared.stats.users);
        bump(&counts.users);
        let mut guard = lock(&public);
        let p = &mut *guard;
        // The cap, and under contention each source's share: see `crate::sources`. A
        // session that moved nothing for `quiet` since its relay opened yields first at
        // the cap; one still starting (a slow pool, a slow target) is not quiet, so a
        // newcomer never resets a user whose session has not begun.
        let now = tokio::time::Instant::now();
        let held = &p.held;
        let is_quiet = |id| {
            held.get(&id)
                .is_some_and(|h: &Held| h.traffic.quiet_for(now) >= quiet)
        };
        let admitted = match p.limits.admit_quiet(peer.ip(), now.into_std(), is_quiet) {
            Ok(a) => a,
            Err(Refused::Full) => {
                bump(&shared.stats.users_refused);
                bump(&counts.users_refused);
                continue; // closed at once
            }
            Err(_) => {
                bump(&shared.stats.users_refused_source);
                bump(&counts.users_refused_source);
                continue; // closed at once
            }
        };
        if let Some(held) = admitted.evict.and_then(|v| p.held.remove(&v)) {
            held.reset();
            bump(&shared.stats.users_evicted);
            bump(&counts.users_evicted);
        }
        let Ok(socket) = user.as_fd().try_clone_to_owned() else {
            // Out of descriptors: this user is refused, not a running one reset later.
            p.limits.release(admitted.source, admitted.id);
            bump(&shared.stats.users_refused);
            bump(&counts.users_refused);
            continue;
        };
        if each {
            let _ = options.apply_tcp(&user);
        }
        let slot = Slot {
            public: public.clone(),
            source: admitted.source,
            id: admitted.id,
        };
        let shared = shared.clone();
        let service = service.clone();
        let traffic = Arc::new(Traffic::default());
        let seen = traffic.clone();
        // Spawned under the lock: the session's slot cannot be given back before its
        // entry is in `held`.
        let task = sessions.spawn(async move {
            let _slot = slot;
            let _running = shared.stats.session_running();
            let _live = service.stats.sessions.session_running();
            let ok = user_session(&shared, &service, user, &seen).await;
            let (all, mine) = (&shared.stats, &service.stats.sessions);
            if ok {
                bump(&all.relayed);
                bump(&mine.relayed);
            } else {
                bump(&all.failed);
                bump(&mine.failed);
            }
        });
        p.held.insert(
            admitted.id,
            Held {
                task,
                traffic,
                socket,
            },
        );
    }
    // Draining: no user is accepted any more (the listener closes unless the service
    // that replaces this one holds it), and the sessions under way run to their end.
    drop(listener);
    while sessions.join_next().await.is_some() {}
}
