//! Scenario 5: the core's hot operations at 1k, 16k and 64k entries, against a plain
//! `std::collections::HashMap<u64, u64>` remove + insert at the same size.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use pool_core::{
    Admission, ClientConfig, ClientMachine, ConnId, Got, Output, SeededRandom, ServerConfig,
    ServerMachine,
};

use crate::report::Figure;
use crate::Sizes;

const SIZES: [(usize, &str); 3] = [(1 << 10, "1k"), (1 << 14, "16k"), (1 << 16, "64k")];
const RUNS: usize = 3;

fn key(n: usize) -> u32 {
    (n as u32).wrapping_mul(2_654_435_761)
}

fn id(n: usize) -> ConnId {
    ConnId::from_random(key(n).to_be_bytes())
}

/// Best of `RUNS` runs of `ops` operations, in ns per operation.
fn best_ns(ops: usize, mut run: impl FnMut(usize)) -> f64 {
    (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            run(ops);
            t.elapsed().as_nanos() as f64 / ops as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn baseline(n: usize, ops: usize) -> f64 {
    let mut m: HashMap<u64, u64> = (0..n).map(|i| (u64::from(key(i)), i as u64)).collect();
    let mut next = 0usize;
    best_ns(ops, |ops| {
        for _ in 0..ops {
            let k = u64::from(key(next % n));
            next += 1;
            let v = m.remove(black_box(&k)).expect("present");
            m.insert(k, black_box(v));
        }
    })
}

/// A client machine with `n` idle connections, ids `id(0..n)`.
fn filled_client(n: usize, now: Instant) -> ClientMachine<u64> {
    let cfg = ClientConfig::builder()
        .capacity(n, n)
        .build()
        .expect("valid config");
    let mut m: ClientMachine<u64> = ClientMachine::new(cfg, SeededRandom::from_seed([0; 32]), now);
    m.handle_timeout(now);
    let mut i = 0;
    while let Output::Dial(t) = m.poll_output(now) {
        m.handle_dial_success(t, id(i), i as u64, now);
        i += 1;
    }
    assert_eq!(m.status().idle, n, "client machine filled");
    m
}

/// A server machine with `n` idle connections (no settle time, no sweep due).
fn filled_server(n: usize, now: Instant) -> ServerMachine<u64> {
    let cfg = ServerConfig::builder()
        .max_capacity(n)
        .settle(std::time::Duration::ZERO)
        .admission(pool_core::AdmissionLimits {
            pending_per_source: None,
            ..Default::default()
        })
        .build()
        .expect("valid config");
    let mut m: ServerMachine<u64> = ServerMachine::new(cfg, SeededRandom::from_seed([0; 32]), now);
    let peer = std::net::IpAddr::from([127, 0, 0, 1]);
    for i in 0..n {
        let Admission::Admit(mut t) = m.handle_accept(now, peer, true) else {
            panic!("refused at {i}");
        };
        m.assign_id(&mut t);
        m.handle_ready(t, i as u64, now);
    }
    assert_eq!(m.status().idle, n, "server machine filled");
    m
}

/// The idle map's take by id, as a client get by id reaches it: get, the liveness
/// verdict, and the connection back (no probe: the verdict is given).
fn take_by_id(n: usize, ops: usize) -> f64 {
    client_get(n, ops)
}

/// The idle map's oldest-first take, as a server get reaches it: get, the verdict,
/// and the connection back.
fn take_oldest(n: usize, ops: usize) -> f64 {
    let now = Instant::now();
    let mut m = filled_server(n, now);
    best_ns(ops, |ops| {
        for _ in 0..ops {
            let Got::Check(check) = m.get(now, now) else {
                panic!("nothing idle");
            };
            match m.handle_check(check, true, now) {
                Got::Ready(k, v) => m.put_back(black_box(k), black_box(v), now),
                _ => panic!("not served"),
            }
        }
    })
}

fn client_get(n: usize, ops: usize) -> f64 {
    let now = Instant::now();
    let mut m = filled_client(n, now);
    let mut next = 0usize;
    best_ns(ops, |ops| {
        for _ in 0..ops {
            let k = id(next % n);
            next += 1;
            // A warm get: one candidate, found alive by the driver's probe.
            let Got::Check(check) = m.get(black_box(k), now, now) else {
                panic!("id {k} not idle");
            };
            match m.handle_check(check, true, now) {
                Got::Ready(k, v) => m.put_back(k, black_box(v), now),
                _ => panic!("id {k} not served"),
            }
        }
    })
}

pub(crate) fn core(sz: &Sizes, out: &mut Vec<Figure>) {
    let ops = sz.core_ops;
    for (n, label) in SIZES {
        let base = baseline(n, ops);
        let note =
            format!("best of {RUNS} x {ops} ops; baseline std HashMap<u64,u64> remove+insert");
        out.push(
            Figure::vs(
                &format!("core_take_by_id_ns_{label}"),
                take_by_id(n, ops),
                "ns",
                base,
            )
            .note(format!(
                "ClientMachine get(id)+handle_check+put_back (the idle map's take by id), {note}"
            )),
        );
        out.push(
            Figure::vs(
                &format!("core_take_oldest_ns_{label}"),
                take_oldest(n, ops),
                "ns",
                base,
            )
            .note(format!(
                "ServerMachine get+handle_check+put_back (the idle map's oldest first), {note}"
            )),
        );
        out.push(
            Figure::vs(
                &format!("core_client_get_ns_{label}"),
                client_get(n, ops),
                "ns",
                base,
            )
            .note(format!(
                "ClientMachine get(id)+handle_check+put_back, {note}"
            )),
        );
    }
}
