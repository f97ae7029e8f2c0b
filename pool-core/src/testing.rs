//! Test support (feature `test-util`): the machines' outputs one kind at a time.
//!
//! A driver has one way out of a machine, `poll_output`, and drains it in its order.
//! Model tests want more: they predict each kind of output separately (the answers, the
//! closes in order, the dials, the aborts, the next sweep batch) and compare them one
//! by one. These methods read the same queues `poll_output` drains; they are not for
//! drivers, and they exist only with the feature.

use std::time::Instant;

use crate::common::{Answer, PoolCommon, Probe};
use crate::{ClientMachine, ConnId, DialTicket, ServerMachine};

/// Outputs by kind, for tests.
pub trait SplitOutputs<C> {
    /// The next answer to a waiting get.
    fn poll_answer(&mut self) -> Option<Answer<C>>;
    /// The next connection to close, the last queued first.
    fn poll_close(&mut self) -> Option<(ConnId, C)>;
    /// Every connection queued for closing, in the order queued.
    fn take_closes(&mut self) -> Vec<(ConnId, C)>;
    /// The next serial to abort.
    fn poll_abort(&mut self) -> Option<u64>;
    /// The sweep's next batch (closes of connections too old are queued meanwhile).
    fn poll_probe(&mut self, now: Instant) -> Option<Probe<C>>;
}

impl<C> SplitOutputs<C> for PoolCommon<C> {
    fn poll_answer(&mut self) -> Option<Answer<C>> {
        self.answers.pop_front()
    }
    fn poll_close(&mut self) -> Option<(ConnId, C)> {
        self.to_close.pop()
    }
    fn take_closes(&mut self) -> Vec<(ConnId, C)> {
        std::mem::take(&mut self.to_close)
    }
    fn poll_abort(&mut self) -> Option<u64> {
        self.aborts.pop_front()
    }
    fn poll_probe(&mut self, now: Instant) -> Option<Probe<C>> {
        self.next_probe(now)
    }
}

/// A client's dials, for tests.
pub trait SplitDials {
    /// The next dial to start, if the machine wants one.
    fn poll_dial(&mut self, now: Instant) -> Option<DialTicket>;
}

impl<C> SplitDials for ClientMachine<C> {
    fn poll_dial(&mut self, now: Instant) -> Option<DialTicket> {
        self.next_dial(now)
    }
}

/// `flush` and `close` with the connections they queued, in order, for tests.
pub trait Returned<C> {
    /// Flushes and returns the connections queued for closing.
    fn flush_out(&mut self, now: Instant) -> Vec<(ConnId, C)>;
    /// Closes and returns the connections queued for closing.
    fn close_out(&mut self) -> Vec<(ConnId, C)>;
}

impl<C> Returned<C> for ClientMachine<C> {
    fn flush_out(&mut self, now: Instant) -> Vec<(ConnId, C)> {
        self.flush(now);
        self.take_closes()
    }
    fn close_out(&mut self) -> Vec<(ConnId, C)> {
        self.close();
        self.take_closes()
    }
}

impl<C> Returned<C> for ServerMachine<C> {
    fn flush_out(&mut self, _now: Instant) -> Vec<(ConnId, C)> {
        self.flush();
        self.take_closes()
    }
    fn close_out(&mut self) -> Vec<(ConnId, C)> {
        self.close();
        self.take_closes()
    }
}

macro_rules! split_through_common {
    ($machine:ident) => {
        impl<C> SplitOutputs<C> for $machine<C> {
            fn poll_answer(&mut self) -> Option<Answer<C>> {
                self.common_mut().poll_answer()
            }
            fn poll_close(&mut self) -> Option<(ConnId, C)> {
                self.common_mut().poll_close()
            }
            fn take_closes(&mut self) -> Vec<(ConnId, C)> {
                self.common_mut().take_closes()
            }
            fn poll_abort(&mut self) -> Option<u64> {
                self.common_mut().poll_abort()
            }
            fn poll_probe(&mut self, now: Instant) -> Option<Probe<C>> {
                self.common_mut().poll_probe(now)
            }
        }
    };
}

split_through_common!(ClientMachine);
split_through_common!(ServerMachine);

/// The shared part of a machine, for model tests that drive it below the role.
pub trait Shared<C> {
    /// The machine's [`PoolCommon`].
    fn shared_mut(&mut self) -> &mut PoolCommon<C>;
}

impl<C> Shared<C> for ClientMachine<C> {
    fn shared_mut(&mut self) -> &mut PoolCommon<C> {
        self.common_mut()
    }
}

impl<C> Shared<C> for ServerMachine<C> {
    fn shared_mut(&mut self) -> &mut PoolCommon<C> {
        self.common_mut()
    }
}

/// The next deadline alone, for tests that check it without draining the outputs (a
/// driver learns it from [`Output::Timeout`](crate::Output::Timeout), the one way).
pub trait NextDeadline {
    /// The instant [`Output::Timeout`](crate::Output::Timeout) would name now.
    fn next_deadline(&mut self) -> Option<Instant>;
}

impl<C> NextDeadline for ClientMachine<C> {
    fn next_deadline(&mut self) -> Option<Instant> {
        self.poll_timeout()
    }
}

impl<C> NextDeadline for ServerMachine<C> {
    fn next_deadline(&mut self) -> Option<Instant> {
        self.poll_timeout()
    }
}
