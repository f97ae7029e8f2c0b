//! The idle map's costs as the machines reach it, at 1k, 16k and 64k idle entries.
//!
//! `cargo bench -p pool-core --bench idle_map`. Each iteration takes one connection and
//! puts it back, so the pool stays at its size: a client get by id (the map's take by
//! id) and a server get (its oldest-first take), each with the liveness verdict the
//! driver reports (always alive here).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use divan::Bencher;
use pool_core::{
    Admission, ClientConfig, ClientMachine, ConnId, Got, Output, SeededRandom, ServerConfig,
    ServerMachine,
};

const SIZES: &[usize] = &[1_024, 16_384, 65_536];

fn main() {
    divan::main();
}

fn id(n: usize) -> ConnId {
    ConnId::from_random((n as u32).wrapping_mul(2_654_435_761).to_be_bytes())
}

#[divan::bench(args = SIZES, sample_size = 1000)]
fn client_get_by_id_and_put_back(b: Bencher<'_, '_>, n: usize) {
    let now = Instant::now();
    let cfg = ClientConfig::builder().capacity(n, n).build().unwrap();
    let mut m: ClientMachine<u64> = ClientMachine::new(cfg, SeededRandom::from_seed([1; 32]), now);
    m.handle_timeout(now);
    let mut i = 0;
    while let Output::Dial(t) = m.poll_output(now) {
        m.handle_dial_success(t, id(i), i as u64, now);
        i += 1;
    }
    let mut next = 0usize;
    b.bench_local(|| {
        let k = id(next % n);
        next += 1;
        if let Got::Check(check) = m.get(k, now, now) {
            if let Got::Ready(k, v) = m.handle_check(check, true, now) {
                m.put_back(k, v, now);
            }
        }
    });
}

#[divan::bench(args = SIZES, sample_size = 1000)]
fn server_get_oldest_and_put_back(b: Bencher<'_, '_>, n: usize) {
    let now = Instant::now();
    let cfg = ServerConfig::builder()
        .max_capacity(n)
        .settle(Duration::ZERO)
        .admission(pool_core::AdmissionLimits {
            pending_per_source: None,
            ..Default::default()
        })
        .build()
        .unwrap();
    let mut m: ServerMachine<u64> = ServerMachine::new(cfg, SeededRandom::from_seed([1; 32]), now);
    let peer = IpAddr::from([127, 0, 0, 1]);
    for i in 0..n {
        let Admission::Admit(mut t) = m.handle_accept(now, peer, true) else {
            panic!("refused");
        };
        m.assign_id(&mut t);
        m.handle_ready(t, i as u64, now);
    }
    b.bench_local(|| {
        if let Got::Check(check) = m.get(now, now) {
            if let Got::Ready(k, v) = m.handle_check(check, true, now) {
                m.put_back(k, v, now);
            }
        }
    });
}
