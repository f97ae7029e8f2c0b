//! The control port: candidates sorted by their admission token into two evicting
//! tables ([`crate::candidates`]), refusals counted and logged at a bounded rate, and
//! the control connection that wins, watched for silence and replacement.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use pool_tls::admit::{Admitted, ReplayWindow, Untaken};
use pool_tokio::IpFilter;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{lock, Control, Shared};
use crate::candidates::{CandidateId, Candidates};
use crate::limits::Backoff;
use crate::protocol::BoxIo;
use crate::protocol::{read_token, server_handshake_over, unix_ms, Session, HEARTBEAT};
use crate::sources::Source;
use crate::stats::{bump, QuietLog, Refusal};
use crate::BoxError;

/// Candidates whose admission token proved the key, at most (only key holders reach
/// this table: it needs no per-source quota).
pub(crate) const PROTECTED_SLOTS: usize = 16;
/// How far an admission token's clock may be from the server's.
pub(crate) const ADMIT_WINDOW: Duration = Duration::from_secs(120);
/// Admission nonces remembered at most (see [`ReplayWindow`]).
const ADMIT_MEMORY: usize = 4096;

/// A candidate that sent (or failed to send) its admission token.
type Sorted = (
    CandidateId,
    SocketAddr,
    TcpStream,
    Result<Admitted, BoxError>,
);
/// A candidate that finished (or failed) TLS and the handshake.
type Proved = (CandidateId, SocketAddr, Result<(BoxIo, Session), BoxError>);

/// The control port's candidates in their two stages, and what runs them.
struct ControlPort {
    shared: Arc<Shared>,
    acceptor: Option<TlsAcceptor>,
    /// Waiting for the admission token: strangers land here.
    unsorted: Candidates,
    /// Token taken: TLS and the handshake under way, out of strangers' reach.
    protected: Candidates,
    sorting: JoinSet<Sorted>,
    proving: JoinSet<Proved>,
    aborts: HashMap<CandidateId, tokio::task::AbortHandle>,
    replay: ReplayWindow,
    /// When this server started (ms since the epoch): a token stamped earlier was
    /// made for an earlier process, whose replay window is gone.
    started_ms: u64,
    /// Refusals are logged at a bounded rate, whatever their reason.
    quiet: QuietLog,
    next: CandidateId,
}

impl ControlPort {
    fn id(&mut self) -> CandidateId {
        self.next += 1;
        self.next
    }

    fn evict(&mut self, gone: Option<CandidateId>) {
        if let Some(h) = gone.and_then(|g| self.aborts.remove(&g)) {
            h.abort();
            bump(&self.shared.stats.control_evicted);
        }
    }

    /// A new connection: it has `answer` to send its token.
    fn accepted(&mut self, tcp: TcpStream, peer: SocketAddr) {
        let id = self.id();
        let gone = self.unsorted.admit(id, Source::of(peer.ip()));
        self.evict(gone);
        let _ = self.shared.t.control_socket().apply_tcp(&tcp);
        let within = self.shared.t.answer;
        let key = self.shared.key.clone();
        let h = self.sorting.spawn(async move {
            let mut tcp = tcp;
            let res = read_token(&mut tcp, &key, within).await;
            (id, peer, tcp, res)
        });
        self.aborts.insert(id, h);
    }

    /// A token arrived (or did not): to the protected table, back to the unsorted one
    /// for the proof (a valid token with a skewed clock), or refused.
    fn sorted(&mut self, (id, peer, tcp, res): Sorted) {
        self.aborts.remove(&id);
        self.unsorted.remove(id);
        let source = Source::of(peer.ip());
        let token = match res {
            Ok(token) => token,
            Err(e) => {
                let why = if e.downcast_ref::<pool_tls::proof::ProofError>().is_some() {
                    Refusal::BadToken
                } else {
                    Refusal::NoToken
                };
                return self.refused(peer, why, &e);
            }
        };
        let id = self.id();
        let now = unix_ms();
        let window = ADMIT_WINDOW.as_millis() as u64;
        // Within the window but before this process: only an earlier process can have
        // seen it, and its memory is gone (a token further back is skewed anyway).
        let predated =
            token.unix_ms < self.started_ms && now.saturating_sub(token.unix_ms) <= window;
        let taken = if predated {
            Err(Refusal::Predated)
        } else {
            match self.replay.take(token, now) {
                Ok(()) => Ok(()),
                Err(Untaken::Replayed) => Err(Refusal::Replayed),
                Err(Untaken::Skewed(_)) => Err(Refusal::Skewed),
            }
        };
        match taken {
            Ok(()) => {
                bump(&self.shared.stats.control_admitted);
                let gone = self.protected.admit(id, source);
                self.evict(gone);
            }
            Err(Refusal::Replayed) => {
                bump(&self.shared.stats.control_replayed);
                let e = "its nonce was taken before";
                return self.refused(peer, Refusal::Replayed, &e);
            }
            Err(why) => {
                // A key holder whose clock is off, or who made its token before this
                // process started (a replay from before a restart, most likely): it
                // may still prove the key, but it competes with strangers for its slot.
                let (counter, e) = if why == Refusal::Predated {
                    let e = format!("stamped before this server started ({ADMIT_WINDOW:?} window)");
                    (&self.shared.stats.control_predated, e)
                } else {
                    let skew = i128::from(token.unix_ms) - i128::from(unix_ms());
                    let e = format!(
                        "the client's clock is {:+.1} s from ours (more than {ADMIT_WINDOW:?}); \
                         its connection is not protected from eviction",
                        skew as f64 / 1e3
                    );
                    (&self.shared.stats.control_skewed, e)
                };
                bump(counter);
                self.note(peer, why, &e);
                let gone = self.unsorted.admit(id, source);
                self.evict(gone);
            }
        }
        let shared = self.shared.clone();
        let acceptor = self.acceptor.clone();
        let h = self
            .proving
            .spawn(async move { (id, peer, authenticate(tcp, acceptor, &shared).await) });
        self.aborts.insert(id, h);
    }

    fn refused(&mut self, peer: SocketAddr, why: Refusal, e: &dyn std::fmt::Display) {
        bump(&self.shared.stats.control_refused);
        if let Some(c) = self.shared.stats.refusal(why) {
            bump(c);
        }
        self.note(peer, why, e);
    }

    /// Logs a refusal (or a token let through unprotected), at most once a
    /// [`QUIET_PERIOD`](crate::stats::QUIET_PERIOD) per reason.
    fn note(&mut self, peer: SocketAddr, why: Refusal, e: &dyn std::fmt::Display) {
        let Some(quiet) = self.quiet.note(why, std::time::Instant::now()) else {
            return;
        };
        let more = if quiet > 0 {
            format!(" ({quiet} more for this reason since the last line)")
        } else {
            String::new()
        };
        match why {
            // A key holder's clock is off: worth the operator's attention.
            Refusal::Skewed => warn!("control: {peer}: {}: {e}{more}", why.words()),
            _ => info!("control: {peer}: {}: {e}{more}", why.words()),
        }
    }
}

/// Accepts control candidates: each sends its admission token, then runs TLS and the
/// handshake in its own task under its deadlines; the winner runs as the control
/// connection. See [`crate::candidates`] for the two tables.
pub(super) async fn control_accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    filter: IpFilter,
    candidates: crate::config::CandidateLimits,
    started_ms: u64,
) {
    let mut port = ControlPort {
        shared: shared.clone(),
        acceptor,
        unsorted: Candidates::new(candidates.total, candidates.per_source),
        protected: Candidates::new(PROTECTED_SLOTS, PROTECTED_SLOTS),
        sorting: JoinSet::new(),
        proving: JoinSet::new(),
        aborts: HashMap::new(),
        replay: ReplayWindow::new(ADMIT_WINDOW, ADMIT_MEMORY),
        started_ms,
        quiet: QuietLog::default(),
        next: 0,
    };
    let mut controls = JoinSet::new();
    let mut backoff = Backoff::default();
    // After a failed accept, accepting pauses; candidates go on meanwhile.
    let mut paused: Option<Instant> = None;
    loop {
        while controls.try_join_next().is_some() {}
        tokio::select! {
            _ = async { tokio::time::sleep_until(paused.unwrap_or_else(Instant::now)).await },
                if paused.is_some() => paused = None,
            accepted = listener.accept(), if paused.is_none() => {
                let (tcp, peer) = match accepted {
                    Ok(x) => {
                        backoff.succeeded();
                        x
                    }
                    Err(e) => {
                        // Out of descriptors and the like: do not spin.
                        let pause = backoff.failed();
                        warn!("control: accept: {e}; pausing {pause:?}");
                        paused = Some(Instant::now() + pause);
                        continue;
                    }
                };
                if !filter.allows(peer.ip()) {
                    bump(&shared.stats.control_ip_refused);
                    debug!("control: {peer} refused by --client-ip");
                    continue;
                }
                port.accepted(tcp, peer);
            }
            Some(done) = port.sorting.join_next() => {
                if let Ok(sorted) = done {
                    port.sorted(sorted);
                } // else evicted
            }
            Some(done) = port.proving.join_next() => {
                let Ok((id, peer, res)) = done else { continue }; // evicted
                port.aborts.remove(&id);
                port.unsorted.remove(id);
                port.protected.remove(id);
                match res {
                    Ok((io, session)) => {
                        bump(&shared.stats.control_ok);
                        controls.spawn(serve_control(shared.clone(), io, peer, session));
                    }
                    Err(e) => port.refused(peer, Refusal::Handshake, &e),
                }
            }
        }
    }
}

/// TLS (if any) and the handshake, each under its deadline.
async fn authenticate(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    shared: &Shared,
) -> Result<(BoxIo, Session), BoxError> {
    let t = &shared.t;
    match acceptor {
        Some(a) => {
            let mut tls = timeout(t.tls, a.accept(tcp))
                .await
                .map_err(|_| "no TLS handshake in time")?
                .map_err(|e| format!("TLS: {e}"))?;
            let binding = pool_tls::tls_binding(tls.get_ref().1)?;
            let session = server_handshake_over(
                &mut tls,
                &shared.key,
                &binding,
                t.answer,
                shared.pool.transport(),
            )
            .await?;
            Ok((Box::new(tls), session))
        }
        None => {
            let mut tcp = tcp;
            let session = server_handshake_over(
                &mut tcp,
                &shared.key,
                &[],
                t.answer,
                shared.pool.transport(),
            )
            .await?;
            Ok((Box::new(tcp), session))
        }
    }
}

/// Runs one authenticated control connection until it breaks, falls silent, or is
/// replaced by a newer one. A control connection from a new client process (a session
/// tag not seen last) first closes every idle pooled connection: the previous process
/// made them, and would never accept a session on them (a crashed host's connections
/// stay open here until keep-alive gives up). The new process's own are dialed again
/// at once, as its pool sees them close.
async fn serve_control(shared: Arc<Shared>, io: BoxIo, peer: SocketAddr, session: Session) {
    let previous = lock(&shared.session).replace(session);
    if previous.is_some_and(|p| p != session) {
        let stale = shared.pool.idle();
        shared.pool.flush();
        bump(&shared.stats.client_restarts);
        info!("control: {peer} is a new client process: {stale} pooled connections of the previous one closed");
    }
    let gen = shared.next_gen.fetch_add(1, Relaxed) + 1;
    let (gone_tx, gone) = watch::channel(());
    let mut current = shared.control.subscribe();
    let old = shared.control.send_replace(Some(Control { gen, gone }));
    info!(
        "control: {peer} authenticated{}",
        if old.is_some() {
            ", replacing the previous control connection"
        } else {
            ""
        }
    );
    let (mut rd, mut wr) = tokio::io::split(io);
    let t = shared.t.clone();
    // Three watches run side by side, so that a heartbeat write that stalls never
    // keeps the others from noticing silence or a replacement.
    let writing = async {
        let mut heartbeat = tokio::time::interval(t.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            heartbeat.tick().await;
            if write_flush(&mut wr, &[HEARTBEAT], t.dead_after)
                .await
                .is_err()
            {
                return "write failed or stalled";
            }
        }
    };
    let reading = async {
        let mut buf = [0u8; 64];
        loop {
            match timeout(t.dead_after, rd.read(&mut buf)).await {
                Err(_) => {
                    bump(&shared.stats.control_silent);
                    return "no heartbeat from the client";
                }
                Ok(Ok(0)) => return "closed by the client",
                Ok(Ok(n)) if buf[..n].iter().all(|&b| b == HEARTBEAT) => {}
                Ok(Ok(_)) => return "unexpected bytes from the client",
                Ok(Err(_)) => return "read error",
            }
        }
    };
    let replaced = async {
        loop {
            let r = current.changed().await;
            let now = current.borrow_and_update().as_ref().map(|c| c.gen);
            if r.is_err() || now != Some(gen) {
                return "replaced by a newer control connection";
            }
        }
    };
    let reason = tokio::select! {
        r = writing => r,
        r = reading => r,
        r = replaced => r,
    };
    shared.control.send_if_modified(|c| {
        if c.as_ref().map(|c| c.gen) == Some(gen) {
            *c = None;
            true
        } else {
            false
        }
    });
    drop(gone_tx);
    info!("control: {peer} ended: {reason}");
}

async fn write_flush<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8], t: Duration) -> Result<(), ()> {
    match timeout(t, async {
        w.write_all(buf).await?;
        w.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
