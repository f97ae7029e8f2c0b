//! Idle map and client machine costs at 1k, 16k and 64k idle entries.
//!
//! `cargo bench -p pool-core --bench idle_map`. Each iteration takes one connection and
//! puts one back, so the map stays at its size. The client's get includes reporting
//! its liveness check (always alive here).

use std::time::Instant;

use divan::Bencher;
use pool_core::{ClientConfig, ClientMachine, ConnId, Got, IdleMap, SeededRandom};

const SIZES: &[usize] = &[1_024, 16_384, 65_536];

fn main() {
    divan::main();
}

fn id(n: usize) -> ConnId {
    ConnId::from_random((n as u32).wrapping_mul(2_654_435_761).to_be_bytes())
}

fn filled(n: usize) -> IdleMap<u64> {
    let mut m = IdleMap::new();
    for i in 0..n {
        m.insert(id(i), i as u64).unwrap();
    }
    m
}

#[divan::bench(args = SIZES)]
fn take_by_id_and_insert(b: Bencher<'_, '_>, n: usize) {
    let mut m = filled(n);
    let mut next = 0usize;
    b.bench_local(|| {
        let k = id(next % n);
        next += 1;
        let v = m.take(&k).unwrap();
        m.insert(k, v).unwrap();
    });
}

#[divan::bench(args = SIZES)]
fn take_oldest_and_insert(b: Bencher<'_, '_>, n: usize) {
    let mut m = filled(n);
    b.bench_local(|| {
        let (k, v) = m.take_oldest().unwrap();
        m.insert(k, v).unwrap();
    });
}

#[divan::bench(args = SIZES, sample_size = 1000)]
fn client_get_and_land(b: Bencher<'_, '_>, n: usize) {
    let now = Instant::now();
    let cfg = ClientConfig::builder().capacity(n, n).build().unwrap();
    let mut m: ClientMachine<u64> = ClientMachine::new(cfg, SeededRandom::from_seed([1; 32]), now);
    m.handle_timeout(now);
    let mut i = 0;
    while let Some(t) = m.poll_dial(now) {
        m.handle_dial_success(t, id(i), i as u64, now);
        i += 1;
    }
    let mut next = 0usize;
    b.bench_local(|| {
        let k = id(next % n);
        next += 1;
        if let Got::Check(check) = m.get(k, now, now) {
            if let Got::Ready(k, v) = m.handle_check(check, true, now) {
                // Back in through the path a fresh dial takes.
                m.put_back(k, v, now);
            }
        }
    });
}
