//! Scenario: idle at scale, the two ends in two processes (a process of this machine
//! holds at most 20,000 descriptors, so 16,384 pairs do not fit in one).
//!
//! A server child (`--child scale-server N SECS`) binds, prints its address, and waits
//! for its pool to hold `N` connections; a client child (`--child scale-client ADDR N
//! SECS`) fills a client pool of capacity `N` against it. Each reports the fill time,
//! its resident memory per pair, and its CPU over `SECS` of idleness. Then the server
//! takes 1 % of `N` a second for 10 s (each get timed, the connection closed: its
//! client end sees its peer die, the hang-up watch reports it and the client refills).
//! Run at 4,096 and 16,384 pairs; the 16,384 figures carry the 4,096 ones as baseline,
//! so growth reads as the ratio.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pool_tokio::{ClientPool, ServerPool};

use crate::net::{runtime, Res, LOOPBACK};
use crate::report::Figure;
use crate::sys::{cpu_time, rss_bytes};
use crate::Sizes;
use pool_tokio::{AdmissionLimits, ClientConfig, ServerConfig};

/// After its churn, the client waits this long before it reads its counters; the server
/// stays up a second longer.
const SETTLE: Duration = Duration::from_secs(2);

/// CPU % of one core over `secs`.
async fn idle_cpu(secs: Duration) -> f64 {
    let (c0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(secs).await;
    100.0 * (cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

/// The server child: fill s, RSS bytes per pair, idle CPU %, get p50 and p99 (µs)
/// under churn.
pub(crate) fn server(n: usize, secs: Duration) -> Res<Vec<f64>> {
    runtime().block_on(async {
        let server =
            ServerPool::builder()
                .bind(LOOPBACK)
                .config(ServerConfig::builder().max_capacity(n + n / 10).admission(
                    AdmissionLimits {
                        max_handshakes: 1024,
                        pending_per_source: None,
                        ..AdmissionLimits::default()
                    },
                ))
                .build()?;
        let rss0 = rss_bytes();
        println!("ADDR {}", server.local_addr());
        let start = Instant::now();
        if !server.wait_idle(n, Duration::from_secs(120)).await {
            return Err(format!("server pool not full: {:?}", server.stats()).into());
        }
        let fill = start.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let per = rss_bytes().saturating_sub(rss0) as f64 / n as f64;
        let cpu = idle_cpu(secs).await;
        // Churn, as long as the idle measurement: 1 % of the pool a second leaves (its
        // client end sees the peer die).
        let every = Duration::from_secs_f64(100.0 / n as f64);
        let mut lat = Vec::new();
        let end = Instant::now() + secs;
        let mut next = tokio::time::Instant::now();
        while Instant::now() < end {
            next += every;
            tokio::time::sleep_until(next).await;
            let t0 = Instant::now();
            let got = server.get_timeout(Duration::from_secs(5)).await;
            lat.push(t0.elapsed());
            drop(got);
        }
        lat.sort();
        let q = |p: f64| crate::checkout::percentile(&lat, p);
        // Stay up while the client reads its counters.
        tokio::time::sleep(SETTLE + Duration::from_secs(1)).await;
        server.close().await;
        Ok(vec![fill, per, cpu, q(0.5), q(0.99)])
    })
}

/// The client child: fill s, RSS bytes per pair, idle CPU %, idle count after the churn.
pub(crate) fn client(addr: &str, n: usize, secs: Duration) -> Res<Vec<f64>> {
    runtime().block_on(async {
        let rss0 = rss_bytes();
        let start = Instant::now();
        let client = ClientPool::builder()
            .address(addr.parse::<std::net::SocketAddr>()?)
            .config(ClientConfig::builder().capacity(n, n).parallelism(64))
            .build()?;
        if !client.wait_idle(n, Duration::from_secs(120)).await {
            return Err(format!("client pool not full: {:?}", client.stats()).into());
        }
        let fill = start.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let per = rss_bytes().saturating_sub(rss0) as f64 / n as f64;
        let cpu = idle_cpu(secs).await;
        tokio::time::sleep(secs + SETTLE).await;
        let st = client.stats();
        server_gone().await;
        client.close().await;
        Ok(vec![
            fill,
            per,
            cpu,
            st.status.idle as f64,
            st.counters.evicted_dead as f64,
        ])
    })
}

/// A client child closes its connections only after the server child closed its own
/// ends (the parent closes the client's stdin once the server exited): the side that
/// closes first keeps each connection in TIME_WAIT, and 16,384 of them on the client's
/// ports would slow every later run's connects, the kernel skipping them in its search
/// for a free ephemeral port. Bounded: 60 s.
async fn server_gone() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own, left behind if the bound passes (the process exits soon).
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = tx.send(());
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), rx).await;
}

/// The raw server child: accepts `n` connections (blocking accepts, on a listener with
/// the pool server's backlog), writes 8 bytes on each as the pool writes an id, and
/// holds them; the time from its address line to the last accept (s). Bounded: the
/// process ends after 120 s whatever happens.
pub(crate) fn raw_server(n: usize) -> Res<Vec<f64>> {
    use std::io::Write;
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("raw server: not every connection came in 120 s");
        std::process::exit(1);
    });
    let l = pool_net::bind_listener(LOOPBACK, 1024)?;
    l.set_nonblocking(false)?;
    println!("ADDR {}", l.local_addr()?);
    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let (mut c, _) = l.accept()?;
        c.write_all(b"0123abcd")?;
        held.push(c);
    }
    Ok(vec![start.elapsed().as_secs_f64()])
}

/// The raw client child: connects `n` times to `addr` and reads the 8 bytes each, 64
/// at once as the client pool dials, and holds them; the time to the last (s). Reading
/// the bytes paces it as the pool is paced, by the server's accepts: connects alone
/// would run ahead of them and overflow the listen queue.
pub(crate) fn raw_client(addr: &str, n: usize) -> Res<Vec<f64>> {
    use tokio::io::AsyncReadExt;
    let addr: std::net::SocketAddr = addr.parse()?;
    runtime().block_on(async {
        let start = Instant::now();
        let mut held = Vec::with_capacity(n);
        let mut dialing = tokio::task::JoinSet::new();
        let mut started = 0;
        while held.len() < n {
            while started < n && dialing.len() < 64 {
                dialing.spawn(async move {
                    let mut c = tokio::net::TcpStream::connect(addr).await?;
                    c.read_exact(&mut [0u8; 8]).await?;
                    Ok::<_, std::io::Error>(c)
                });
                started += 1;
            }
            let done = tokio::time::timeout(Duration::from_secs(120), dialing.join_next())
                .await
                .map_err(|_| format!("raw client: {} of {n} connected", held.len()))?;
            held.push(done.ok_or("no connect under way")???);
        }
        let took = start.elapsed().as_secs_f64();
        server_gone().await;
        drop(held);
        Ok(vec![took])
    })
}

/// Both children of `kind` (`scale` for the pools, `scale-raw` for raw sockets) at `n`
/// pairs: (server values, client values), `len` values each.
fn run(kind: &str, n: usize, secs: f64, len: usize) -> Res<(Vec<f64>, Vec<f64>)> {
    let exe = std::env::current_exe()?;
    let mut server = Command::new(&exe)
        .args([
            "--child",
            &format!("{kind}-server"),
            &n.to_string(),
            &secs.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(server.stdout.take().ok_or("no stdout")?).lines();
    let addr = loop {
        let line = lines
            .next()
            .ok_or("the server child printed no address")??;
        if let Some(a) = line.strip_prefix("ADDR ") {
            break a.to_owned();
        }
    };
    let mut client = Command::new(&exe)
        .args([
            "--child",
            &format!("{kind}-client"),
            &addr,
            &n.to_string(),
            &secs.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let parse = |line: &str| -> Vec<f64> {
        line.split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect()
    };
    let mut s = None;
    for line in lines {
        if let Some(r) = line?.strip_prefix("RESULT ") {
            s = Some(parse(r));
        }
    }
    let _ = server.wait();
    // The server's ends are closed: the client may close its own (see `server_gone`).
    drop(client.stdin.take());
    let out = client.wait_with_output()?;
    let c = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("RESULT ").map(parse));
    match (s, c) {
        (Some(s), Some(c)) if s.len() == len && c.len() == len => Ok((s, c)),
        _ => Err(format!("{kind} children at {n} gave no result").into()),
    }
}

pub(crate) fn scale(sz: &Sizes, out: &mut Vec<Figure>) -> Res<()> {
    let (small, large, secs) = if sz.quick {
        (256, 1024, 2.0)
    } else {
        (4096, 16384, 10.0)
    };
    // Raw sockets first, at both sizes: what the kernel costs alone.
    let (rs4, rc4) = run("scale-raw", small, 0.0, 1)?;
    let (rs16, rc16) = run("scale-raw", large, 0.0, 1)?;
    let (raw4, raw16) = (rs4[0].max(rc4[0]), rs16[0].max(rc16[0]));
    eprintln!("  raw fill: {raw4:.3} s at {small}, {raw16:.3} s at {large}");
    let (s4, c4) = run("scale", small, secs, 5)?;
    let (s16, c16) = run("scale", large, secs, 5)?;
    eprintln!("  scale {small}: server {s4:?} client {c4:?}");
    eprintln!("  scale {large}: server {s16:?} client {c16:?}");
    let k = |n: usize| {
        if n >= 1024 {
            format!("{}k", n / 1024)
        } else {
            n.to_string()
        }
    };
    let (a, b) = (k(small), k(large));
    let note = |what: &str| format!("{what}; two processes; baseline: the same at {small}");
    out.push(
        Figure::vs(
            &format!("scale_fill_s_{b}"),
            s16[0].max(c16[0]),
            "s",
            s4[0].max(c4[0]),
        )
        .note(note(&format!(
            "time to {large} idle pairs, client pool dialing 64 at once"
        ))),
    );
    out.push(
        Figure::vs(
            &format!("scale_fill_vs_raw_s_{b}"),
            s16[0].max(c16[0]),
            "s",
            raw16,
        )
        .note(format!(
            "time to {large} idle pairs; baseline: {large} raw connects, accepts and 8-byte \
                 reads, 64 at once, two processes, same run (raw at {small}: {raw4:.3} s)"
        )),
    );
    out.push(
        Figure::vs(
            &format!("rss_pair_kib_server_{b}"),
            s16[1] / 1024.0,
            "KiB",
            s4[1] / 1024.0,
        )
        .note(note("server process RSS growth per idle pair")),
    );
    out.push(
        Figure::vs(
            &format!("rss_pair_kib_client_{b}"),
            c16[1] / 1024.0,
            "KiB",
            c4[1] / 1024.0,
        )
        .note(note("client process RSS growth per idle pair")),
    );
    out.push(
        Figure::vs(
            &format!("idle_cpu_pct_{b}"),
            s16[2] + c16[2],
            "%",
            s4[2] + c4[2],
        )
        .note(note(&format!(
            "both processes over {secs} s idle, % of one core ({a} and {b} runs)"
        ))),
    );
    out.push(
        Figure::vs(&format!("get_p99_churn{b}_us"), s16[4], "us", s4[4]).note(note(&format!(
            "server get over {secs} s while 1 % of the pool a second leaves and the client refills"
        ))),
    );
    eprintln!(
        "  after the churn the client held {} of {large} idle, {} dead found",
        c16[3], c16[4]
    );
    Ok(())
}
