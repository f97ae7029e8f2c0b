//! The fault matrix's two columns: each fault case on the TCP pools (through the TCP
//! fault proxy) and on the QUIC pools (through the UDP fault proxy), where the case has
//! a meaning there (`pool_testkit::matrix`). Every pair both pools hand out is checked
//! byte for byte; a cell passes when it checked pairs, its fault took effect, and no
//! byte was lost or changed and no worker panicked or hung; and no cell left a
//! descriptor open. The test prints the table (`cargo test -p pool-testkit --test
//! fault_matrix -- --nocapture`). pool-tokio's `fault_matrix.rs` goes through each
//! handshake stage of the TCP pools; the soaks run the same faults at random for
//! longer (`pool-soak`).

use pool_testkit::matrix::{rows, run_all};
use pool_testkit::quic_soak::QuicFault;
use pool_testkit::soak::SoakReport;

const PAIRS: u64 = 12;

fn check(what: &str, r: &SoakReport) {
    assert!(r.is_clean(), "{what}: defects: {r:?}");
    assert!(r.pairs > 0, "{what}: no pair was checked: {r:?}");
    assert!(r.faults > 0, "{what}: no fault was injected: {r:?}");
}

#[test]
fn every_case_on_both_transports_loses_nothing() {
    let m = run_all(PAIRS, 7);
    println!("{}", m.table());
    assert_eq!(m.rows.len(), rows().len());
    for (row, cells) in &m.rows {
        let name = row.name;
        if let Some(r) = &cells.tcp {
            check(&format!("{name} on TCP"), r);
        }
        if let (Some((r, datagrams)), Some(fault)) = (&cells.quic, row.quic) {
            let what = format!("{name} on QUIC");
            check(&what, r);
            // The fault reached the datagrams (a delay and a stall leave no count).
            let took = match fault {
                QuicFault::Loss(_) => datagrams.dropped > 0,
                QuicFault::Duplicate(_) => datagrams.duplicated > 0,
                QuicFault::Reorder(_) => datagrams.reordered > 0,
                QuicFault::Rebind => datagrams.rebinds == 2,
                QuicFault::Delay(_) | QuicFault::Stall(_) => datagrams.forwarded > 0,
                // Done twice, and pairs were checked after it.
                QuicFault::KillShard | QuicFault::ServerRestart => r.faults == 2,
            };
            assert!(took, "{what}: {datagrams:?} {r:?}");
        }
        assert!(
            cells.tcp.is_some() || cells.quic.is_some(),
            "{name}: no cell"
        );
    }
    assert_eq!(m.leaked_fds, 0, "descriptors left open by the cells");
}
