//! What the driver holds outside the machine, and the steps both harnesses take the
//! same way: following a get through its liveness checks, holding a check or a sweep
//! batch across other steps, and giving them back.

#[allow(unused_imports)]
use pool_core::testing::{Returned as _, SplitDials as _, SplitOutputs as _};
use std::time::Instant;

use pool_core::{Check, ConnId, Got, PoolCommon, Probe, Want};

use crate::common::{Common, Loc, Pred};

/// Connections the driver holds.
#[derive(Debug, Default)]
pub(crate) struct Outside {
    /// Candidates of gets, not yet reported.
    pub(crate) checks: Vec<(Check<u64>, Want, Instant)>,
    /// The sweep batch out for probing.
    pub(crate) probe: Option<Probe<u64>>,
    /// Connections handed to the application.
    pub(crate) app: Vec<(ConnId, u64)>,
}

impl Outside {
    /// Follows a get: checks each answer against the model and reports every candidate
    /// at once, unless `hold` keeps the first one out.
    pub(crate) fn follow(
        &mut self,
        m: &mut PoolCommon<u64>,
        c: &mut Common,
        (mut got, mut pred): (Got<u64>, Pred),
        (want, deadline): (Want, Instant),
        now: Instant,
        hold: bool,
    ) {
        loop {
            match (got, pred) {
                (Got::Check(mut ch), Pred::Check(id, v)) => {
                    assert_eq!((ch.id(), *ch.conn_mut()), (id, v), "another candidate");
                    if let Want::Id(w) = want {
                        assert_eq!(id, w, "a candidate of another id");
                    }
                    c.ledger.leave(v, Loc::Check);
                    if hold {
                        self.checks.push((ch, want, deadline));
                        return;
                    }
                    let alive = !c.dead.contains(&v);
                    c.ledger.enter(v, Some(Loc::Check));
                    got = m.handle_check(ch, alive, now);
                    pred = c.check((id, v), want, deadline, now);
                }
                (Got::Ready(id, v), Pred::Ready(mid, mv)) => {
                    assert_eq!((id, v), (mid, mv), "ready with the wrong connection");
                    c.ledger.leave(v, Loc::App);
                    self.app.push((id, v));
                    return;
                }
                (Got::Wait(key), Pred::Wait) => {
                    assert!(c.issued.insert(key), "waiter key {key:?} reused");
                    c.waiters.insert(key, (want, deadline));
                    return;
                }
                (Got::Failed(e), Pred::Failed(me)) => {
                    assert_eq!(e, me);
                    return;
                }
                (got, pred) => panic!("get gave {got:?}, model says {pred:?}"),
            }
        }
    }

    /// Reports a held candidate.
    pub(crate) fn report(
        &mut self,
        m: &mut PoolCommon<u64>,
        c: &mut Common,
        i: usize,
        now: Instant,
    ) {
        if self.checks.is_empty() {
            return;
        }
        let (mut ch, want, deadline) = self.checks.swap_remove(i % self.checks.len());
        let (id, v) = (ch.id(), *ch.conn_mut());
        let alive = !c.dead.contains(&v);
        c.ledger.enter(v, Some(Loc::Check));
        let got = m.handle_check(ch, alive, now);
        let pred = c.check((id, v), want, deadline, now);
        self.follow(m, c, (got, pred), (want, deadline), now, false);
    }

    /// Asks for a sweep batch and holds it.
    pub(crate) fn poll_probe(&mut self, m: &mut PoolCommon<u64>, c: &mut Common, now: Instant) {
        let got = m.poll_probe(now);
        let pred = c.poll_probe(now);
        match (got, pred) {
            (None, None) => {}
            (Some(mut probe), Some(items)) => {
                assert!(self.probe.is_none(), "a second batch while one is out");
                assert_eq!(probe.len(), items.len());
                assert!(!probe.is_empty());
                let mut seen = Vec::new();
                // Records the values; every one counts as alive until the real check.
                probe.check(|v| {
                    seen.push(*v);
                    true
                });
                let want: Vec<u64> = items.iter().map(|i| i.val).collect();
                assert_eq!(seen, want, "another batch, or another order");
                for v in seen {
                    c.ledger.leave(v, Loc::Probe);
                }
                self.probe = Some(probe);
            }
            (got, pred) => panic!("poll_probe gave {got:?}, model says {pred:?}"),
        }
    }

    /// Gives the held batch back, probed when `checked`.
    pub(crate) fn probe_back(
        &mut self,
        m: &mut PoolCommon<u64>,
        c: &mut Common,
        checked: bool,
        now: Instant,
    ) {
        let Some(mut probe) = self.probe.take() else {
            return;
        };
        if checked {
            let dead = &c.dead;
            probe.check(|v| !dead.contains(v));
        }
        for item in c.batch.iter().flatten() {
            c.ledger.enter(item.val, Some(Loc::Probe));
        }
        m.handle_probe(probe, now);
        c.handle_probe(checked);
    }

    /// Takes a connection back from the application.
    pub(crate) fn take_app(&mut self, c: &mut Common, i: usize) -> Option<(ConnId, u64)> {
        if self.app.is_empty() {
            return None;
        }
        let (id, v) = self.app.swap_remove(i % self.app.len());
        c.ledger.enter(v, Some(Loc::App));
        Some((id, v))
    }

    /// The id of a held candidate or of a batch connection, if any.
    pub(crate) fn out_id(&self, c: &Common, i: usize) -> Option<ConnId> {
        let mut ids: Vec<ConnId> = self.checks.iter().map(|(ch, _, _)| ch.id()).collect();
        ids.extend(c.batch.iter().flatten().map(|i| i.id));
        (!ids.is_empty()).then(|| ids[i % ids.len()])
    }

    /// Hands every held candidate and batch back (at the end of a run).
    pub(crate) fn give_back(&mut self, m: &mut PoolCommon<u64>, c: &mut Common, now: Instant) {
        while !self.checks.is_empty() {
            self.report(m, c, 0, now);
        }
        self.probe_back(m, c, true, now);
    }
}
