//! The service every figure talks to, and the measurements that talk to it: first-byte
//! times, downloads (alternated with the direct baseline) and sessions a second.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pool_bench::report::Figure;
use pool_sim::stats::median;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::Res;

/// When the first byte of each tagged session reached the service.
pub(crate) type Arrivals = Arc<Mutex<HashMap<u64, Instant>>>;

/// The service: a command byte and an 8-byte tag, then
/// - `T`: records when the first byte arrived, answers one byte;
/// - `D` + size (8 bytes): sends that many bytes;
/// - `E`: reads 1 KiB, answers 1 KiB.
pub(crate) async fn service() -> Res<(SocketAddr, Arrivals)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let mut head = [0u8; 9];
                let n = s.read(&mut head).await.unwrap_or(0);
                let at = Instant::now();
                if n == 0 || s.read_exact(&mut head[n..]).await.is_err() {
                    return;
                }
                let tag = u64::from_be_bytes(head[1..9].try_into().unwrap_or_default());
                match head[0] {
                    b'T' => {
                        seen.lock().map(|mut m| m.insert(tag, at)).ok();
                        let _ = s.write_all(b"k").await;
                    }
                    b'D' => {
                        let mut size = [0u8; 8];
                        if s.read_exact(&mut size).await.is_err() {
                            return;
                        }
                        let mut left = u64::from_be_bytes(size);
                        let chunk = vec![7u8; 256 * 1024];
                        while left > 0 {
                            let n = left.min(chunk.len() as u64) as usize;
                            if s.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                    }
                    _ => {
                        let mut kib = vec![0u8; 1024];
                        if s.read_exact(&mut kib).await.is_ok() {
                            let _ = s.write_all(&kib).await;
                        }
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok((addr, arrivals))
}

pub(crate) fn head(cmd: u8, tag: u64) -> [u8; 9] {
    let mut h = [cmd; 9];
    h[1..].copy_from_slice(&tag.to_be_bytes());
    h
}

/// `n` sequential first-byte times through `entry` (a public port or a proxy).
pub(crate) async fn ttfb(
    entry: SocketAddr,
    arrivals: &Arrivals,
    n: u64,
    first_tag: u64,
) -> Vec<Duration> {
    let mut out = Vec::new();
    for i in 0..n {
        let tag = first_tag + i;
        let Ok(mut s) = TcpStream::connect(entry).await else {
            continue;
        };
        let _ = s.set_nodelay(true);
        let sent = Instant::now();
        if s.write_all(&head(b'T', tag)).await.is_err() {
            continue;
        }
        let mut k = [0u8; 1];
        let got = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut k)).await;
        if matches!(got, Ok(Ok(_))) {
            if let Some(at) = arrivals.lock().ok().and_then(|m| m.get(&tag).copied()) {
                out.push(at.saturating_duration_since(sent));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

/// One download of `bytes` through `entry`: MB/s (0 if it broke).
pub(crate) async fn download(entry: SocketAddr, bytes: u64) -> f64 {
    let run = async {
        let mut s = TcpStream::connect(entry).await?;
        let start = Instant::now();
        s.write_all(&head(b'D', 0)).await?;
        s.write_all(&bytes.to_be_bytes()).await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < bytes {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        Ok::<_, std::io::Error>((got, start.elapsed()))
    };
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok((got, took))) if got == bytes => bytes as f64 / 1e6 / took.as_secs_f64(),
        _ => 0.0,
    }
}

/// `tunnel_mbps`: downloads through the tunnel at `public` alternated with downloads
/// straight from `target`. One loopback download's rate swings by 2-3 x from run to run
/// on this machine (which cores the two ends land on), the baseline's as much as the
/// tunnel's: each figure is the median of five (one with `quick`).
pub(crate) async fn download_figure(
    target: SocketAddr,
    public: SocketAddr,
    bytes: u64,
    quick: bool,
    mode: u8,
) -> Figure {
    let (rounds, tunnel, direct) = alternated(target, &[public], bytes, quick).await;
    Figure::vs("tunnel_mbps", tunnel[0], "MB/s", direct).note(format!(
        "mode {mode}, a {} MB download, median of {rounds} alternated with the baseline; baseline: straight from the service",
        bytes / 1_000_000
    ))
}

/// Downloads of `bytes` through each of `entries`, alternated with downloads straight
/// from `target`, five rounds (one with `quick`): how many rounds, the median rate
/// through each entry, and the direct one's.
pub(crate) async fn alternated(
    target: SocketAddr,
    entries: &[SocketAddr],
    bytes: u64,
    quick: bool,
) -> (usize, Vec<f64>, f64) {
    let rounds = if quick { 1 } else { 5 };
    let (mut through, mut direct) = (vec![Vec::new(); entries.len()], Vec::new());
    for _ in 0..rounds {
        direct.push(download(target, bytes).await);
        for (runs, e) in through.iter_mut().zip(entries) {
            runs.push(download(*e, bytes).await);
        }
    }
    let medians = through.iter().map(|r| median(r).unwrap_or(0.0)).collect();
    (rounds, medians, median(&direct).unwrap_or(0.0))
}

/// Sessions a second through `entry`, `at_once` workers for `secs`.
pub(crate) async fn sessions(entry: SocketAddr, at_once: usize, secs: f64) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for _ in 0..at_once {
        set.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < end {
                let one = async {
                    let mut s = TcpStream::connect(entry).await?;
                    s.write_all(&head(b'E', 0)).await?;
                    s.write_all(&[1u8; 1024]).await?;
                    let mut back = vec![0u8; 1024];
                    s.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                };
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(5), one).await {
                    done += 1;
                }
            }
            done
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        total += r.unwrap_or(0);
    }
    total as f64 / secs
}

pub(crate) fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}
