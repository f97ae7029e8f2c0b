//! Model-based tests of the client and server machines.
//!
//! Random operation sequences are applied both to the real machine (with `u64` serial
//! numbers as connections) and to a small reference model. After every step the two
//! must agree on the idle set (in FIFO order, with idle ages), the outstanding tickets,
//! the waiting gets and every answer, the sweep batches, the connections to close, the
//! draws from the machine's generator and every counter; the machine must stay inside
//! its bounds; and a ledger built from the machine's outputs alone checks that every
//! connection leaves exactly once.
//!
//! The machine's generator is a scripted tape over a tiny id space, so drawn ids
//! collide with idle and pending ones and the redraws are checked.

mod client;
mod common;
mod outside;
mod server;

use proptest::collection::vec;
use proptest::prelude::*;

use client::{client_cfg, client_op, ClientHarness};
use server::{server_cfg, server_op, ServerHarness};

/// The numbers the machine's generator plays: mostly a tiny id space.
fn script() -> impl Strategy<Value = Vec<u32>> {
    vec(prop_oneof![6 => 0u32..16, 1 => any::<u32>()], 0..96)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn client_machine_follows_the_model(
        cfg in client_cfg(),
        script in script(),
        ops in vec(client_op(), 1..200),
    ) {
        let mut h = ClientHarness::new(cfg, script);
        for op in &ops {
            h.apply(op);
        }
        h.finish();
    }

    #[test]
    fn server_machine_follows_the_model(
        cfg in server_cfg(),
        script in script(),
        ops in vec(server_op(), 1..200),
    ) {
        let mut h = ServerHarness::new(cfg, script);
        for op in &ops {
            h.apply(op);
        }
        h.finish();
    }
}
