//! What both roles answer alike, written once.

/// The methods both roles answer alike, each a call to the role's [`PoolCommon`]. A role
/// has no `Deref` to it: it exposes what its callers need, and nothing it wraps (a
/// caller who could reach around the role would skip what the role adds, as the
/// adaptation policy's view of every get).
macro_rules! shared_methods {
    () => {
        /// Idle connections ready to hand out (Go: `Active`).
        pub fn idle(&self) -> usize {
            self.common.idle()
        }
        /// Gets waiting for a connection.
        pub fn waiting(&self) -> usize {
            self.common.waiting()
        }
        /// Dials (client) or handshakes (server) under way.
        pub fn in_flight(&self) -> usize {
            self.common.in_flight()
        }
        /// The counters.
        pub fn counters(&self) -> $crate::Counters {
            self.common.counters()
        }
        /// Whether the machine was closed.
        pub fn is_closed(&self) -> bool {
            self.common.is_closed()
        }
        /// When the next sweep is due; `None` after close.
        pub fn sweep_at(&self) -> Option<Instant> {
            self.common.sweep_at()
        }
        /// Records an application error (Go: `AddError`).
        pub fn add_error(&mut self) {
            self.common.add_error();
        }
        /// Resets the application error count (Go, later releases: `ResetError`).
        pub fn reset_errors(&mut self) {
            self.common.reset_errors();
        }
        /// A waiting get was dropped by its caller ([`PoolCommon::cancel`]).
        pub fn cancel(&mut self, key: $crate::WaiterKey) -> bool {
            self.common.cancel(key)
        }
        /// A connection answered to a waiting get was dead when it got there
        /// ([`PoolCommon::handle_dead_answer`]).
        pub fn handle_dead_answer(&mut self, id: ConnId, conn: C, now: Instant) {
            self.common.handle_dead_answer(id, conn, now);
        }
        /// A sweep batch comes back, probed ([`PoolCommon::handle_probe`]).
        pub fn handle_probe(&mut self, probe: $crate::Probe<C>, now: Instant) {
            self.common.handle_probe(probe, now);
        }
        /// The shared part.
        pub(crate) fn common(&self) -> &PoolCommon<C> {
            &self.common
        }
        /// The shared part, mutably.
        pub(crate) fn common_mut(&mut self) -> &mut PoolCommon<C> {
            &mut self.common
        }
    };
}
pub(crate) use shared_methods;
