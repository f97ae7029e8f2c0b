//! The `--metrics` listener: Prometheus text over a minimal HTTP/1.0 exchange, on a
//! listener of our own rather than the exporter's, because it faces whoever can reach
//! the port.
//!
//! Every slot a stranger can take here has a bound, a deadline and a rule:
//! - at most [`MAX_CONNECTIONS`] connections are served at once; a connection past
//!   that is closed at once (counted, and warned about at most once every 10 s);
//! - each connection has [`DEADLINE`] in all to send its request and read the answer;
//!   a request longer than [`MAX_REQUEST`] bytes is cut off;
//! - an accept that fails (out of descriptors, say) is retried after the tunnel's
//!   accept back-off (doubling from 5 ms to 1 s), so the
//!   loop never spins and never floods the log.
//!
//! It binds loopback by default (the CLI warns when told to bind anything else).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::warn;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection's whole life.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// The longest request read.
pub const MAX_REQUEST: usize = 8 * 1024;

/// Installs the Prometheus recorder (before any pool is built: pools register their
/// metrics when they are) and serves it on `addr`; returns the bound address and the
/// task serving it, which ends only by a panic (a process should exit then, rather
/// than run on without its metrics).
///
/// # Errors
///
/// The recorder could not be installed, or the address could not be bound.
pub async fn serve(
    addr: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), crate::BoxError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("--metrics: {e}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--metrics {addr}: {e}"))?;
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        warn!(%local, "metrics served beyond loopback: anyone who reaches it can read the pool's counters");
    }
    // Histograms are drained on upkeep; the exporter's own listener would run it.
    let keep = handle.clone();
    let upkeep = async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            keep.run_upkeep();
        }
    };
    let task = tokio::spawn(async move {
        tokio::join!(upkeep, accept_loop(listener, handle));
    });
    Ok((local, task))
}

async fn accept_loop(listener: TcpListener, handle: PrometheusHandle) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = crate::limits::Backoff::default();
    let mut refused = Rate::default();
    let mut failed = Rate::default();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(pair) => {
                backoff.succeeded();
                pair
            }
            Err(e) => {
                let pause = backoff.failed();
                if failed.tick() {
                    warn!(error = %e, ?pause, "metrics accept failed; backing off");
                }
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if refused.tick() {
                warn!(
                    max = MAX_CONNECTIONS,
                    "metrics connections refused: all slots busy"
                );
            }
            drop(stream);
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(DEADLINE, answer(stream, &handle)).await;
            drop(slot);
        });
    }
}

/// Reads the request head (bounded), then writes the metrics and closes.
async fn answer(mut s: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut n = 0;
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let got = s.read(&mut buf[n..]).await?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let body = handle.render();
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await?;
    s.shutdown().await
}

/// Whether to log now: at most once every 10 s.
#[derive(Default)]
struct Rate {
    last: Option<tokio::time::Instant>,
}

impl Rate {
    fn tick(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// How often [`follow_server`] and [`follow_client`] copy the counters to the recorder
/// when the control connection does not change.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(1);

pub use series::{record_client, record_server, record_services};

mod series;

/// Keeps the recorder's `tunnel_*` series current: copies the counters every
/// [`FOLLOW_EVERY`], and at once when the control connection comes up or goes down
/// (each change seen counts in `tunnel_control_changes_total{to="up"|"down"}`; a
/// process starts with control down). `is_up` answers whether control is up;
/// `record(up)` copies the counters, and `up` as the gauge `tunnel_control_up`, after
/// the change is counted: a scrape that sees the gauge move sees the change counted.
/// `wait(up)` waits until control is `up`, or at most [`FOLLOW_EVERY`]. Never ends.
async fn follow<F>(
    role: &'static str,
    is_up: impl Fn() -> bool,
    record: impl Fn(bool),
    wait: impl Fn(bool) -> F,
) -> Infallible
where
    F: std::future::Future<Output = bool>,
{
    let mut up = false;
    loop {
        let now = is_up();
        if now != up {
            up = now;
            let to = if up { "up" } else { "down" };
            metrics::counter!("tunnel_control_changes_total", "role" => role, "to" => to)
                .increment(1);
        }
        record(up);
        wait(!up).await;
    }
}

/// Keeps the server side's `tunnel_*` series current (see [`record_server`]). Run it
/// beside the server when `--metrics` is on; it never ends.
pub async fn follow_server(s: &crate::ServerHandle) -> Infallible {
    follow(
        "server",
        || s.control_up(),
        |up| {
            record_server(&s.stats(), up);
            record_services("server", &s.service_stats());
        },
        |up| s.wait_control_state(up, FOLLOW_EVERY),
    )
    .await
}

/// Keeps the client side's `tunnel_*` series current (see [`record_client`]). Run it
/// beside the client when `--metrics` is on; it never ends.
pub async fn follow_client(c: &crate::ClientHandle) -> Infallible {
    follow(
        "client",
        || c.control_up(),
        |up| {
            record_client(&c.stats(), up);
            record_services("client", &c.service_stats());
        },
        |up| c.wait_control_state(up, FOLLOW_EVERY),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_are_bounded_and_the_port_keeps_serving() {
        let (addr, _task) = serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        metrics::counter!("tunnel_test_total").increment(1);
        assert!(get(addr).await.unwrap().contains("200 OK"));
        // Strangers take every slot and say nothing.
        let mut silent = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // Wait until the loop has accepted them all: the next one is closed at once.
        let start = Instant::now();
        let mut closed_at_once = false;
        while start.elapsed() < Duration::from_secs(3) {
            let mut extra = TcpStream::connect(addr).await.unwrap();
            let mut b = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_millis(200), extra.read(&mut b)).await;
            if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
                closed_at_once = true;
                break;
            }
        }
        assert!(closed_at_once, "a connection past the cap was served");
        // The strangers leave: the port serves again.
        drop(silent);
        let start = Instant::now();
        let mut served = false;
        while start.elapsed() < Duration::from_secs(3) {
            if get(addr)
                .await
                .is_ok_and(|b| b.contains("tunnel_test_total"))
            {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served, "the metrics port did not recover");
    }
}
