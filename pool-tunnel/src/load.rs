//! An echo service and a load generator whose every byte is checked: the demo, the
//! tests and the attack harness send users through the tunnel with these.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_core::{Random, SeededRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

/// Raises the soft descriptor limit to the hard one (as the `tunnel` binary does), for
/// harnesses that open many connections; the limit now in force (`None`: unlimited).
pub fn raise_nofile() -> std::io::Result<Option<u64>> {
    crate::limits::raise_nofile()
}

/// An echo server on loopback port 0: every byte comes back, then the write half
/// closes when the read half does.
pub async fn start_echo() -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = s.set_nodelay(true);
            conns.spawn(async move {
                let (mut r, mut w) = s.into_split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Ok((addr, task))
}

/// The pseudo-random bytes of one session: the workspace's seeded generator
/// ([`SeededRandom`]), seeded by the session number, drawn 4 bytes at a time so the
/// stream does not depend on how it is cut into buffers.
#[derive(Debug)]
pub struct Payload {
    rng: SeededRandom,
    word: [u8; 4],
    used: usize,
}

impl Payload {
    /// The stream of session `n`.
    pub fn for_session(n: u64) -> Self {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_le_bytes());
        seed[8..16].copy_from_slice(b"tunnel-l");
        Self {
            rng: SeededRandom::from_seed(seed),
            word: [0; 4],
            used: 4,
        }
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 4 {
                self.word = self.rng.next_u32().to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// The outcome of one user session: its latency, or why it failed.
pub type SessionResult = Result<Duration, String>;

/// One user: connects to `public`, sends `bytes` pseudo-random bytes (seeded by `n`)
/// and half-closes, while reading the echo back, checking every byte, and then the
/// end of stream.
pub async fn user_session_echo(
    public: SocketAddr,
    n: u64,
    bytes: usize,
    limit: Duration,
) -> SessionResult {
    let start = Instant::now();
    let run = async {
        let s = TcpStream::connect(public)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        let (mut r, mut w) = s.into_split();
        let send = async {
            let mut p = Payload::for_session(n);
            let mut buf = [0u8; 8192];
            let mut left = bytes;
            while left > 0 {
                let k = left.min(buf.len());
                p.fill(&mut buf[..k]);
                w.write_all(&buf[..k])
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                left -= k;
            }
            w.shutdown().await.map_err(|e| format!("half-close: {e}"))
        };
        let check = async {
            let mut p = Payload::for_session(n);
            let mut buf = [0u8; 8192];
            let mut want = [0u8; 8192];
            let mut got = 0usize;
            while got < bytes {
                let k = r
                    .read(&mut buf[..(bytes - got).min(8192)])
                    .await
                    .map_err(|e| format!("receive after {got} bytes: {e}"))?;
                if k == 0 {
                    return Err(format!("closed after {got} of {bytes} bytes"));
                }
                p.fill(&mut want[..k]);
                if let Some(i) = (0..k).find(|&i| buf[i] != want[i]) {
                    return Err(format!("byte {} differs", got + i));
                }
                got += k;
            }
            // The service closes after our half-close: that EOF must come back too.
            match r.read(&mut buf[..1]).await {
                Ok(0) => Ok(()),
                Ok(_) => Err(format!("bytes after the {bytes} expected")),
                Err(e) => Err(format!("no clean end: {e}")),
            }
        };
        tokio::try_join!(send, check)?;
        Ok::<_, String>(())
    };
    match timeout(limit, run).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("timed out after {limit:?}")),
    }
}

/// Progress of a load run, readable while it runs.
#[derive(Debug, Default)]
pub struct LoadProgress {
    /// Sessions finished (either way).
    pub done: AtomicU64,
    /// Sessions that failed.
    pub failed: AtomicU64,
}

/// The outcome of a load run.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Latency of each session that passed.
    pub latencies: Vec<Duration>,
    /// Errors of the sessions that failed (session number, error).
    pub errors: Vec<(u64, String)>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl LoadReport {
    /// The `q` quantile (0..=1) of the latencies, if any passed.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.latencies, q)
    }
}

/// The `q` quantile (0..=1) of `samples`, if any.
pub fn quantile(samples: &[Duration], q: f64) -> Option<Duration> {
    let mut v = samples.to_vec();
    v.sort_unstable();
    let last = v.len().checked_sub(1)?;
    let i = ((last as f64) * q).round() as usize;
    v.get(i.min(last)).copied()
}

/// Runs `sessions` echo sessions against `public`, `concurrency` at once.
pub async fn run_load(
    public: SocketAddr,
    sessions: u64,
    concurrency: usize,
    bytes: usize,
    limit: Duration,
    progress: Arc<LoadProgress>,
) -> LoadReport {
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for n in 0..sessions {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let progress = progress.clone();
        set.spawn(async move {
            let r = user_session_echo(public, n, bytes, limit).await;
            drop(permit);
            if r.is_err() {
                progress.failed.fetch_add(1, Relaxed);
            }
            progress.done.fetch_add(1, Relaxed);
            (n, r)
        });
    }
    let mut report = LoadReport::default();
    while let Some(j) = set.join_next().await {
        match j {
            Ok((_, Ok(d))) => report.latencies.push(d),
            Ok((n, Err(e))) => report.errors.push((n, e)),
            Err(e) => report.errors.push((u64::MAX, format!("task: {e}"))),
        }
    }
    report.errors.sort();
    report.elapsed = start.elapsed();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_does_not_depend_on_the_cuts() {
        let mut whole = [0u8; 100];
        Payload::for_session(3).fill(&mut whole);
        let mut cut = [0u8; 100];
        let mut p = Payload::for_session(3);
        for c in cut.chunks_mut(7) {
            p.fill(c);
        }
        assert_eq!(whole, cut);
        let mut other = [0u8; 100];
        Payload::for_session(4).fill(&mut other);
        assert_ne!(whole, other);
    }
}
