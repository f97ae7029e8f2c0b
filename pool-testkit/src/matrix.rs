//! The fault matrix's transport columns: each row is one fault case, with what it
//! means on the TCP pools (a [`Fault`] of the TCP fault proxy on half the
//! connections, [`soak::run_case`]) and on the QUIC pools (a [`QuicFault`] of the UDP
//! fault proxy, [`quic_soak::run_case`]); `None` where the case has no meaning on that
//! transport (a TCP proxy cannot drop or duplicate a datagram, and a TCP connection
//! cannot survive its client's address changing; a QUIC path has no id to corrupt,
//! since a changed datagram fails its authentication and is lost).
//!
//! Both columns count the same defects ([`SoakReport`]): bytes lost or changed in a
//! pair that both pools handed out, a worker that panicked or hung, a descriptor
//! left open.

use std::time::Duration;

use crate::proxy::Fault;
use crate::quic_soak::{self, QuicFault};
use crate::soak::{self, SoakReport};
use crate::udp_proxy::UdpStats;

/// One fault case and its meaning on each transport.
#[derive(Clone, Copy, Debug)]
pub struct Row {
    /// What the case is.
    pub name: &'static str,
    /// The TCP proxy's fault, on half the connections.
    pub tcp: Option<Fault>,
    /// The UDP proxy's fault.
    pub quic: Option<QuicFault>,
}

/// The rows, in the order the table prints them.
pub fn rows() -> Vec<Row> {
    let ms = Duration::from_millis;
    let row = |name, tcp, quic| Row { name, tcp, quic };
    vec![
        row(
            "delay 3 ms",
            Some(Fault::Latency(ms(3))),
            Some(QuicFault::Delay(ms(3))),
        ),
        row("loss 1 %", None, Some(QuicFault::Loss(0.01))),
        row("loss 5 %", None, Some(QuicFault::Loss(0.05))),
        row("duplication 5 %", None, Some(QuicFault::Duplicate(0.05))),
        row("reorder 5 %", None, Some(QuicFault::Reorder(0.05))),
        row(
            "stall 50 ms",
            Some(Fault::Stall(ms(50))),
            Some(QuicFault::Stall(ms(50))),
        ),
        row(
            "connection cut",
            Some(Fault::ResetAfter(3_000)),
            Some(QuicFault::KillShard),
        ),
        row("server restart", None, Some(QuicFault::ServerRestart)),
        row("client address change", None, Some(QuicFault::Rebind)),
        row("blackhole", Some(Fault::Blackhole), None),
        row("corrupted id", Some(Fault::CorruptId(0)), None),
    ]
}

/// What one row's cells saw.
#[derive(Clone, Copy, Debug)]
pub struct Cells {
    /// The TCP cell, if the row has one.
    pub tcp: Option<SoakReport>,
    /// The QUIC cell and what its proxy did to the datagrams, if the row has one.
    pub quic: Option<(SoakReport, UdpStats)>,
}

/// Runs a row's cells, one after the other: `pairs` pairs each, faults drawn from
/// `seed`, each cell counting the descriptors it left open.
pub fn run(row: &Row, pairs: u64, seed: u64) -> Cells {
    cells(row, pairs, seed, true)
}

fn cells(row: &Row, pairs: u64, seed: u64, count_fds: bool) -> Cells {
    Cells {
        tcp: row.tcp.map(|f| soak::case(f, pairs, seed, count_fds)),
        quic: row.quic.map(|f| quic_soak::case(f, pairs, seed, count_fds)),
    }
}

/// Every row's cells, and the descriptors left open by all of them.
#[derive(Clone, Debug)]
pub struct Matrix {
    /// Each row with its cells, in the order of [`rows`].
    pub rows: Vec<(Row, Cells)>,
    /// Descriptors open after every cell ended beyond those open before.
    pub leaked_fds: u64,
}

impl Matrix {
    /// The table: [`header`], then a [`line()`] per row, then the descriptors left open.
    pub fn table(&self) -> String {
        let mut out = header();
        for (row, cells) in &self.rows {
            out.push('\n');
            out.push_str(&line(row, cells));
        }
        out.push_str(&format!("\nleaked_fds (all cells): {}", self.leaked_fds));
        out
    }
}

/// Runs every row at once, each on a thread and runtimes of its own (the cells are
/// short and mostly wait), then counts the descriptors they left open, once for all:
/// a count per cell would see the cells beside it.
///
/// # Panics
///
/// When a cell panics (its panic goes on).
pub fn run_all(pairs: u64, seed: u64) -> Matrix {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // Taken with a runtime up: tokio's process-wide descriptors are not leaks.
    let baseline = crate::pair::open_fds();
    let threads: Vec<_> = rows()
        .into_iter()
        .map(|row| std::thread::spawn(move || (row, cells(&row, pairs, seed, false))))
        .collect();
    let rows = threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect();
    let leaked_fds = rt.block_on(soak::settle_fds(baseline));
    Matrix { rows, leaked_fds }
}

/// The table's header, for [`line()`].
pub fn header() -> String {
    format!(
        "{:<24}| {:<40}| {}",
        "case", "tcp: pairs excused defects faults", "quic: pairs excused defects faults"
    )
}

/// A row of the table: both cells' pairs, excused pairs, defects (mismatched + lost
/// bytes + leaked descriptors + panics) and faults.
pub fn line(row: &Row, cells: &Cells) -> String {
    let cell = |r: Option<&SoakReport>| {
        r.map_or("-".to_owned(), |r| {
            format!(
                "{} {} {} {}",
                r.pairs,
                r.excused,
                r.mismatched + r.lost_bytes + r.leaked_fds + r.panics,
                r.faults
            )
        })
    };
    format!(
        "{:<24}| {:<40}| {}",
        row.name,
        cell(cells.tcp.as_ref()),
        cell(cells.quic.as_ref().map(|q| &q.0))
    )
}
