//! The Go package v1.0.6 rules as a policy.

use std::time::Instant;

use super::{Adapt, Decision, RoundInput};
use crate::adjust::{CapacityPolicy, IntervalPolicy};

/// The Go package v1.0.6 rules: at each round the capacity moves by one by what the
/// previous round created ([`CapacityPolicy`]), then the interval moves by one step by
/// the fill level against the new capacity ([`IntervalPolicy`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoRules {
    /// The interval rule.
    pub interval: IntervalPolicy,
    /// The capacity rule.
    pub capacity: CapacityPolicy,
}

impl Adapt for GoRules {
    fn name(&self) -> &str {
        "gorules"
    }
    fn clone_box(&self) -> Box<dyn Adapt> {
        Box::new(*self)
    }
    fn round(&mut self, r: &RoundInput, _now: Instant) -> Decision {
        let capacity = match r.created {
            Some(created) => {
                self.capacity
                    .next(r.capacity, created, r.min_capacity, r.max_capacity)
            }
            None => r.capacity,
        };
        let interval =
            self.interval
                .next(r.interval, r.idle, capacity, r.min_interval, r.max_interval);
        Decision { capacity, interval }
    }
}
