//! The scripted attacks of `TUNNEL.md` (those on the tunnel's own defences in
//! `defences.rs`), against the two `tunnel` processes, with a real HTTP service
//! (`python3 -m http.server`) behind the tunnel.
//!
//! ```text
//! cargo build --release -p pool-tunnel
//! cargo run --release -p pool-tunnel --example attack -- 0     # TLS mode 0
//! cargo run --release -p pool-tunnel --example attack -- 1     # TLS mode 1, pinned
//! ```
//!
//! The binary is `$TUNNEL_BIN`, else `$CARGO_TARGET_DIR/release/tunnel`, else
//! `target/release/tunnel`. Loopback only: the legitimate client and users on
//! 127.0.0.1, strangers bind 127.0.0.2 and up. Every loop is bounded in count and time. Prints one Markdown table row per attack;
//! `ATTACK_ONLY=defences` runs the baseline and the attacks of `defences.rs` only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_testkit::stats::quantile;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::task::JoinSet;

mod defences;
mod harness;

use harness::{
    connect_from, descriptors, free_port, get, ms, requests, signal, stranger_ip, strangers,
    until_served, write_key, Proc, Res,
};

/// One run's tunnel: its mode, directory, ports, key and pin, and the HTTP service.
struct Setup {
    mode: u8,
    dir: PathBuf,
    tunnel: SocketAddr,
    control: SocketAddr,
    public: SocketAddr,
    http: SocketAddr,
    key: String,
    pin: Option<String>,
}

/// The scripted attacks of TUNNEL.md against the two `tunnel` processes.
#[derive(clap::Parser)]
#[command(name = "attack")]
struct Args {
    /// The tunnel's TLS mode (1: pinned).
    #[arg(value_parser = clap::value_parser!(u8).range(0..=1))]
    mode: u8,
}

#[tokio::main]
async fn main() -> Res<()> {
    let Args { mode } = <Args as clap::Parser>::parse();
    let _ = pool_testkit::process::raise_nofile();
    let dir =
        std::env::temp_dir().join(format!("pool-tunnel-attack-{}-{mode}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www"))?;
    std::fs::write(dir.join("www/index.html"), "hello through the tunnel\n")?;

    // The service.
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut python = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &http.port().to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir.join("www"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut setup = Setup {
        mode,
        dir: dir.clone(),
        tunnel: SocketAddr::from(([127, 0, 0, 1], free_port())),
        control: SocketAddr::from(([127, 0, 0, 1], free_port())),
        public: SocketAddr::from(([127, 0, 0, 1], free_port())),
        http,
        key: String::new(),
        pin: None,
    };

    // The server generates the key (and in mode 1 the certificate) into its state dir.
    let mut server = Proc::spawn(&setup.server_args(), None)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && (setup.key.is_empty() || (mode == 1 && setup.pin.is_none()))
    {
        let Some((_, l)) = server.next_line(Duration::from_secs(10)).await else {
            break;
        };
        let t = l.trim();
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            setup.key = t.to_owned();
        }
        if let Some(fp) = l.split("sha256 ").nth(1) {
            setup.pin = fp.split_whitespace().next().map(String::from);
        }
    }
    if setup.key.is_empty() {
        return Err("the server printed no key".into());
    }
    write_key(&dir.join("client.key"), &format!("{}\n", setup.key))?;
    let _ = until_served(http, Duration::from_secs(5)).await; // python is up?
    let (mut client, _) = setup.start_client().await?;
    let public = setup.public;
    if until_served(public, Duration::from_secs(10))
        .await
        .is_none()
    {
        return Err("no request went through".into());
    }
    let mut rows = Vec::new();
    // `ATTACK_ONLY=defences` skips to the attacks of `defences.rs`.
    let full = std::env::var("ATTACK_ONLY").map_or(true, |v| v != "defences");

    // Baseline.
    let (base, failed) = requests(public, 400, 8).await;
    let base_p99 = quantile(&base, 0.99);
    rows.push(format!(
        "| baseline, mode {mode} | 400 GETs, 8 at once: {} ok, {failed} failed, p50 {}, p99 {} |",
        base.len(),
        ms(quantile(&base, 0.5)),
        ms(base_p99)
    ));

    // 1. 2,000 silent peers on the tunnel port, before and after the client starts.
    if full {
        client.stop().await;
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicU64::new(0));
        let mut peers = JoinSet::new();
        let spawn_peers = |peers: &mut JoinSet<()>, from: usize| {
            for i in from..from + 1000 {
                let (stop, held, to) = (stop.clone(), held.clone(), setup.tunnel);
                peers.spawn_on(
                    async move {
                        // Silent; reconnects when closed, for as long as the attack lasts.
                        let mut n = 0;
                        while !stop.load(Relaxed) && n < 100 {
                            n += 1;
                            let Ok(mut s) = connect_from(stranger_ip(1000 + i % 16), to).await
                            else {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            };
                            held.fetch_add(1, Relaxed);
                            let mut buf = [0u8; 256];
                            while !stop.load(Relaxed) {
                                match tokio::time::timeout(
                                    Duration::from_millis(200),
                                    s.read(&mut buf),
                                )
                                .await
                                {
                                    Ok(Ok(0)) | Ok(Err(_)) => break,
                                    _ => {}
                                }
                            }
                        }
                    },
                    &strangers(),
                );
            }
        };
        spawn_peers(&mut peers, 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (c, started) = setup.start_client().await?;
        client = c;
        let to_control = started.elapsed();
        spawn_peers(&mut peers, 1000);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (ok, failed) = requests(public, 400, 8).await;
        stop.store(true, Relaxed);
        while peers.join_next().await.is_some() {}
        let p99 = quantile(&ok, 0.99);
        let added = match (p99, base_p99) {
            (Some(a), Some(b)) => ms(Some(a.saturating_sub(b))),
            _ => "-".into(),
        };
        rows.push(format!(
            "| 2,000 silent peers on the tunnel port, before and after the client starts | \
             client control {:.2} s after start; 400 GETs: {}/400 ok ({failed} failed), p99 {} (+{added}); \
             {} stranger connections |",
            to_control.as_secs_f64(),
            ok.len(),
            ms(p99),
            held.load(Relaxed)
        ));
    }

    // 2. 64 reconnecting silent peers on the control port, then a client restart.
    if full {
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(AtomicU64::new(0));
        let mut peers = JoinSet::new();
        for i in 0..64 {
            let (stop, conns, to) = (stop.clone(), conns.clone(), setup.control);
            peers.spawn_on(
                async move {
                    let mut n = 0;
                    while !stop.load(Relaxed) && n < 1000 {
                        n += 1;
                        let Ok(mut s) = connect_from(stranger_ip(i), to).await else {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        };
                        conns.fetch_add(1, Relaxed);
                        let mut buf = [0u8; 64];
                        while !stop.load(Relaxed) {
                            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                                .await
                            {
                                Ok(Ok(0)) | Ok(Err(_)) => break,
                                _ => {}
                            }
                        }
                    }
                },
                &strangers(),
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        client.stop().await;
        let (c, started) = setup.start_client().await?;
        client = c;
        let took = started.elapsed();
        let served = until_served(public, Duration::from_secs(5)).await;
        stop.store(true, Relaxed);
        while peers.join_next().await.is_some() {}
        rows.push(format!(
            "| 64 reconnecting silent peers on the control port, then a client restart | \
             control again {:.2} s after the restart (process start included); first GET ok after {} more; \
             {} stranger connections |",
            took.as_secs_f64(),
            ms(served),
            conns.load(Relaxed)
        ));
    }

    // 3. A stranger that knows no key, on every port.
    if full {
        // A full client with a wrong key, whose target is a canary.
        let canary = TcpListener::bind("127.0.0.1:0").await?;
        let canary_addr = canary.local_addr()?;
        let canary_hits = Arc::new(AtomicU64::new(0));
        let hits = canary_hits.clone();
        let canary_task = tokio::spawn(async move {
            while let Ok((mut s, _)) = canary.accept().await {
                hits.fetch_add(1, Relaxed);
                let _ = s.shutdown().await;
            }
        });
        let wrong_key = pool_tls::TunnelKey::generate()?.to_hex();
        write_key(&dir.join("wrong.key"), &wrong_key)?;
        let mut wrong = Proc::spawn(
            &setup.client_args(&dir.join("wrong.key"), canary_addr),
            None,
        )?;
        // Raw strangers: the pool port (answering the challenge with zeros), the control
        // port (zeros for a token), the public port is for users anyway.
        let mut raw = JoinSet::new();
        for i in 0..50usize {
            let (tunnel, control) = (setup.tunnel, setup.control);
            raw.spawn_on(
                async move {
                    let to = if i % 2 == 0 { tunnel } else { control };
                    let Ok(mut s) = connect_from(stranger_ip(i), to).await else {
                        return (i % 2, 0usize);
                    };
                    let mut got = 0usize;
                    let mut buf = [0u8; 4096];
                    let _ = s.write_all(&[0u8; 64]).await;
                    let end = tokio::time::Instant::now() + Duration::from_secs(6);
                    while let Ok(Ok(n)) = tokio::time::timeout_at(end, s.read(&mut buf)).await {
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                    (i % 2, got)
                },
                &strangers(),
            );
        }
        let (ok, failed) = requests(public, 200, 8).await;
        let connected = wrong
            .wait_line("control: connected", Duration::from_secs(4))
            .await;
        let mut most = [0usize; 2];
        while let Some(Ok((port, got))) = raw.join_next().await {
            most[port] = most[port].max(got);
        }
        wrong.stop().await;
        canary_task.abort();
        rows.push(format!(
            "| a stranger that knows no key, on any port | wrong-key client control: {}; \
             its target reached {} times; raw strangers got at most {} B on the pool port \
             (id + challenge = 40) and {} B on control (nothing before a valid token); legit GETs meanwhile {}/200 ok ({failed} failed) |",
            if connected.is_some() { "YES" } else { "never" },
            canary_hits.load(Relaxed),
            most[0],
            most[1],
            ok.len()
        ));
    }

    // 4. Client SIGSTOP, then SIGCONT.
    if full {
        let pid = client.pid();
        signal(pid, "STOP");
        let stopped = Instant::now();
        let mut set = JoinSet::new();
        for i in 0..24u64 {
            set.spawn(async move {
                tokio::time::sleep(Duration::from_millis(250 * i)).await;
                let start = Instant::now();
                let r = get(public, Duration::from_secs(15)).await;
                (start.elapsed(), r.is_ok())
            });
        }
        let mut answers = Vec::new();
        while let Some(Ok((d, ok))) = set.join_next().await {
            answers.push((d, ok));
        }
        let stopped_for = stopped.elapsed();
        client.drain();
        signal(pid, "CONT");
        let recovery = until_served(public, Duration::from_secs(10)).await;
        let worst = answers.iter().map(|a| a.0).max();
        rows.push(format!(
            "| client SIGSTOP, then SIGCONT | stopped {:.1} s: 24 users answered (closed) within {} at worst, \
             {} served; after SIGCONT served again in {} |",
            stopped_for.as_secs_f64(),
            ms(worst),
            answers.iter().filter(|a| a.1).count(),
            ms(recovery)
        ));
    }

    // 5. A 20 s connect/close flood on the public port.
    if full {
        let spid = server.pid();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let base_fd = descriptors(spid);
        let stop = Arc::new(AtomicBool::new(false));
        let floods = Arc::new(AtomicU64::new(0));
        let mut flood = JoinSet::new();
        for i in 0..32 {
            let (stop, floods) = (stop.clone(), floods.clone());
            flood.spawn_on(
                async move {
                    while !stop.load(Relaxed) {
                        if connect_from(stranger_ip(500 + i), public).await.is_ok() {
                            floods.fetch_add(1, Relaxed);
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                },
                &strangers(),
            );
        }
        let start = Instant::now();
        let (mut ok, mut failed) = (0usize, 0usize);
        let mut peak_fd = base_fd;
        while start.elapsed() < Duration::from_secs(20) {
            let (o, f) = requests(public, 8, 4).await;
            ok += o.len();
            failed += f;
            peak_fd = peak_fd.max(descriptors(spid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Relaxed);
        while flood.join_next().await.is_some() {}
        let ended = Instant::now();
        let mut back = None;
        while ended.elapsed() < Duration::from_secs(30) {
            if descriptors(spid) <= base_fd + 64 {
                back = Some(ended.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        rows.push(format!(
            "| 20 s connect/close flood on the public port | {} flood connections; legit GETs {ok}/{} ok \
             ({:.1} %); server descriptors {base_fd} before, {peak_fd} at peak, within 64 of baseline {} after; {} at the end |",
            floods.load(Relaxed),
            ok + failed,
            100.0 * ok as f64 / (ok + failed).max(1) as f64,
            match back {
                Some(d) => format!("{:.1} s", d.as_secs_f64()),
                None => "NOT within 30 s".into(),
            },
            descriptors(spid)
        ));
    }

    // 6. Server restart (the state dir keeps key and certificate).
    if full {
        server.stop().await;
        let restarted = Instant::now();
        server = setup.start_server().await?;
        let served = until_served(public, Duration::from_secs(15)).await;
        rows.push(format!(
            "| server restart, mode {mode}{} | the unchanged client served again {} after the restart \
             (server start included) |",
            if mode == 1 { " with a pin" } else { "" },
            match served {
                Some(_) => format!("{:.2} s", restarted.elapsed().as_secs_f64()),
                None => "NEVER (15 s)".into(),
            }
        ));
    }

    // The attacks of `defences.rs`.
    let mut client = Some(client);
    rows.push(defences::on_path(&setup, &mut client).await?);
    rows.push(defences::control_churn(&setup, &mut client).await?);
    rows.extend(defences::one_source(&setup).await?);
    rows.push(defences::metrics_emfile(&setup).await?);
    rows.push(defences::planted_state(&setup).await?);
    rows.push(defences::max_vs_handshakes(&setup).await?);
    let client = client.ok_or("no client")?;

    println!("\n| attack (mode {mode}) | measured |\n|---|---|");
    for r in &rows {
        println!("{r}");
    }
    client.stop().await;
    server.stop().await;
    let _ = python.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
