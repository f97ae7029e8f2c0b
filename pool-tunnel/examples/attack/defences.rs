//! Attacks on the tunnel's own defences: an on-path relay, a control-port churn from
//! 200 sources against a restarting client 25 ms away, one source flooding or holding
//! the public port, the metrics port under a descriptor limit, a planted state
//! directory, and strangers' handshakes against a `--max` just above the client's.
//! Each returns one Markdown table row; each loop is bounded in count and time.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pool_testkit::proxy::{Fault, FaultProxy, Script};
use pool_testkit::stats::quantile;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::harness::{
    connect_from, descriptors, free_port, get, ms, requests, strangers, until_served, write_key,
    Proc, Res,
};
use crate::Setup;

/// Source `n` (a /24 of its own, none the users'): `127.<1 + n / 250>.<n % 250>.1`.
pub(crate) fn source_ip(n: usize) -> IpAddr {
    IpAddr::from([127, 1 + (n / 250) as u8, (n % 250) as u8, 1])
}

/// A copy of `setup` on fresh ports and its own state directory, for an attack that
/// needs its own pair of processes.
fn fresh(setup: &Setup, name: &str) -> Setup {
    let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    Setup {
        mode: setup.mode,
        dir: setup.dir.join(name),
        tunnel: port(),
        control: port(),
        public: port(),
        http: setup.http,
        key: setup.key.clone(),
        pin: None,
    }
}

/// Starts a server of `s` with `extra` arguments (and an optional descriptor limit),
/// reading its pin in mode 1; writes the client's key file.
async fn start_pair_server(s: &mut Setup, extra: &[&str], nofile: Option<u64>) -> Res<Proc> {
    std::fs::create_dir_all(&s.dir)?;
    write_key(&s.dir.join("client.key"), &format!("{}\n", s.key))?;
    write_key(&s.dir.join("server.key"), &format!("{}\n", s.key))?;
    let mut args = s.server_args();
    args.extend([
        "--tunnel-key-file".into(),
        s.dir.join("server.key").display().to_string(),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut p = Proc::spawn_limited(&args, nofile)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Some((_, l)) = p.wait_line("", Duration::from_secs(10)).await else {
            break;
        };
        if let Some(fp) = l.split("sha256 ").nth(1) {
            s.pin = fp.split_whitespace().next().map(String::from);
        }
        if l.contains("waiting for the client") {
            return Ok(p);
        }
    }
    Err("the server did not start".into())
}

/// The exit status and output of a process that should refuse to start.
async fn refused(args: &[String]) -> Res<(Option<i32>, String)> {
    let out = tokio::process::Command::new(crate::harness::bin())
        .args(args)
        .env_remove("POOL_TUNNEL_KEY")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    Ok((out.status.code(), text))
}

/// Attack 1: an on-path party. Mode 0 without the insecure word does not start; in
/// mode 1 a relay on the control path that injects `<id>\n` (what took a session in
/// mode 0) reaches nothing.
pub(crate) async fn on_path(setup: &Setup, client: &mut Option<Proc>) -> Res<String> {
    // Neither side starts in plain text without the word.
    let mut plain = setup.server_args();
    plain.retain(|a| a != "--insecure-plaintext");
    if let Some(i) = plain.iter().position(|a| a == "--tls") {
        plain[i + 1] = "0".into();
    }
    let (server_code, server_err) = refused(&plain).await?;
    let mut plain_c = setup.client_args(&setup.dir.join("client.key"), setup.http);
    plain_c.retain(|a| a != "--insecure-plaintext");
    if let Some(i) = plain_c.iter().position(|a| a == "--tls") {
        plain_c[i + 1] = "0".into();
    }
    let (client_code, _) = refused(&plain_c).await?;
    let word = server_err.contains("--insecure-plaintext");
    let mut row = format!(
        "| on-path relay (attack 1) | `--tls 0` without `--insecure-plaintext`: server exit {}, \
         client exit {} (the error names the word: {word})",
        server_code.map_or("-".into(), |c| c.to_string()),
        client_code.map_or("-".into(), |c| c.to_string()),
    );
    if setup.mode == 0 {
        row.push_str("; this run is mode 0 with the word, where an on-path party can take a session by design |");
        return Ok(row);
    }
    // Mode 1: the client's control goes through a relay that injects an id line.
    let relay = TcpListener::bind("127.0.0.1:0").await?;
    let relay_addr = relay.local_addr()?;
    let upstream = setup.control;
    let injected = Arc::new(AtomicU64::new(0));
    let inj = injected.clone();
    let relay_task = tokio::spawn(async move {
        let mut set = JoinSet::new();
        for _ in 0..20 {
            let Ok((down, _)) = relay.accept().await else {
                break;
            };
            let Ok(up) = TcpStream::connect(upstream).await else {
                continue;
            };
            let inj = inj.clone();
            set.spawn(async move {
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                let c2s = tokio::spawn(async move { tokio::io::copy(&mut dr, &mut uw).await });
                // Server to client: pass 1 s, then inject a line as if from the server.
                let start = Instant::now();
                let mut buf = vec![0u8; 16 * 1024];
                let mut done = false;
                while start.elapsed() < Duration::from_secs(15) {
                    let n =
                        match tokio::time::timeout(Duration::from_millis(100), ur.read(&mut buf))
                            .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(n)) => n,
                            Err(_) => 0,
                        };
                    if dw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if !done && start.elapsed() > Duration::from_secs(1) {
                        done = true;
                        inj.fetch_add(1, Relaxed);
                        if dw.write_all(b"0a0b0c0d\n").await.is_err() {
                            break;
                        }
                    }
                }
                c2s.abort();
            });
        }
    });
    if let Some(c) = client.take() {
        c.stop().await;
    }
    let mut args = setup.client_args(&setup.dir.join("client.key"), setup.http);
    if let Some(i) = args.iter().position(|a| a == "--control") {
        args[i + 1] = relay_addr.to_string();
    }
    let mut relayed = Proc::spawn(&args, None)?;
    let first = relayed
        .wait_line("control: connected", Duration::from_secs(10))
        .await;
    let broke = relayed.wait_line("control", Duration::from_secs(4)).await;
    let (ok, failed) = requests(setup.public, 40, 4).await;
    relayed.stop().await;
    relay_task.abort();
    *client = Some(setup.start_client().await?.0);
    row.push_str(&format!(
        "; mode 1, control through a relay injecting `<id>\\n` after 1 s: connected {}, {} injections, \
         then the client logged `{}`; GETs meanwhile {}/{} ok, none read by the relay (it sees TLS records only) |",
        if first.is_some() { "yes" } else { "no" },
        injected.load(Relaxed),
        broke.map(|(_, l)| uncoloured(&l).split(": ").skip(1).collect::<Vec<_>>().join(": "))
            .unwrap_or_else(|| "nothing".into()),
        ok.len(),
        ok.len() + failed
    ));
    Ok(row)
}

/// Attack 2: 200 sources churn the control port as fast as the harness can while the
/// client, 25 ms away each way, restarts.
pub(crate) async fn control_churn(setup: &Setup, client: &mut Option<Proc>) -> Res<String> {
    let wan = Script::always(Fault::Latency(Duration::from_millis(25)));
    let pool_wan = FaultProxy::start(setup.tunnel, wan.clone()).await?;
    let control_wan = FaultProxy::start(setup.control, wan).await?;
    if let Some(c) = client.take() {
        c.stop().await;
    }
    let mut args = setup.client_args(&setup.dir.join("client.key"), setup.http);
    for (flag, to) in [
        ("--tunnel", pool_wan.addr()),
        ("--control", control_wan.addr()),
    ] {
        if let Some(i) = args.iter().position(|a| a == flag) {
            args[i + 1] = to.to_string();
        }
    }
    let mut c = Proc::spawn(&args, None)?;
    c.wait_line("control: connected", Duration::from_secs(10))
        .await
        .ok_or("the delayed client did not connect")?;
    let stop = Arc::new(AtomicBool::new(false));
    let conns = Arc::new(AtomicU64::new(0));
    let mut churn = JoinSet::new();
    for i in 0..200usize {
        let (stop, conns, to) = (stop.clone(), conns.clone(), setup.control);
        churn.spawn_on(
            async move {
                // Connect, hold up to 3 s (or until closed), again; bounded by count.
                let mut held = std::collections::VecDeque::new();
                let mut n = 0;
                while !stop.load(Relaxed) && n < 20_000 {
                    n += 1;
                    if let Ok(s) = connect_from(source_ip(i), to).await {
                        conns.fetch_add(1, Relaxed);
                        held.push_back((Instant::now(), s));
                    }
                    while held
                        .front()
                        .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(3))
                    {
                        held.pop_front();
                    }
                    if held.len() > 64 {
                        held.pop_front();
                    }
                }
            },
            &strangers(),
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = conns.load(Relaxed);
    let t0 = Instant::now();
    c.stop().await;
    let started = Instant::now();
    let mut c = Proc::spawn(&args, None)?;
    let connected = c
        .wait_line("control: connected", Duration::from_secs(20))
        .await;
    let to_control = connected.map(|(t, _)| t.duration_since(started));
    let served = until_served(setup.public, Duration::from_secs(20)).await;
    let rate = (conns.load(Relaxed) - before) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    while churn.join_next().await.is_some() {}
    c.stop().await;
    *client = Some(setup.start_client().await?.0);
    Ok(format!(
        "| 200 sources churning the control port, client restarted 25 ms away (attack 2) | \
         {:.0} stranger connections/s; control again {} after the restart (process start included), \
         a GET served {} after that |",
        rate,
        match to_control {
            Some(d) => format!("{:.2} s", d.as_secs_f64()),
            None => "NEVER (20 s)".into(),
        },
        ms(served),
    ))
}

/// `n` GETs from 127.0.0.1, one every 50 ms (20 a second, well within one source's
/// rate), each timed: successes' latencies, failures, and why they failed.
async fn paced_gets(
    public: SocketAddr,
    n: u32,
) -> (
    Vec<Duration>,
    usize,
    std::collections::BTreeMap<String, usize>,
) {
    let start = tokio::time::Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_millis(50 * u64::from(i))).await;
        set.spawn(get(public, Duration::from_secs(10)));
    }
    let (mut ok, mut failed) = (Vec::new(), 0);
    let mut why = std::collections::BTreeMap::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(d)) => ok.push(d),
            Ok(Err(e)) => {
                failed += 1;
                *why.entry(e.chars().take(40).collect::<String>())
                    .or_default() += 1;
            }
            Err(_) => failed += 1,
        }
    }
    (ok, failed, why)
}

/// The text of a log line, without its terminal colours.
fn uncoloured(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Attacks 3a and 3b: one source floods the public port with 1-byte connections, then
/// holds 4,096 of them; users on 127.0.0.1 meanwhile.
pub(crate) async fn one_source(setup: &Setup) -> Res<Vec<String>> {
    let public = setup.public;
    let (base, _, _) = paced_gets(public, 100).await;
    let base_p50 = quantile(&base, 0.5);
    let mut rows = Vec::new();
    // 3a: connect, one byte, close, as fast as it goes, while 200 users come at 20/s.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut flood = JoinSet::new();
    for _ in 0..16 {
        let (stop, sent) = (stop.clone(), sent.clone());
        flood.spawn_on(
            async move {
                let mut n = 0;
                while !stop.load(Relaxed) && n < 200_000 {
                    n += 1;
                    if let Ok(mut s) = connect_from(source_ip(300), public).await {
                        let _ = s.write_all(b"x").await;
                        sent.fetch_add(1, Relaxed);
                    }
                }
            },
            &strangers(),
        );
    }
    let start = Instant::now();
    let (ok, failed, why) = paced_gets(public, 200).await;
    let rate = sent.load(Relaxed) as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    while flood.join_next().await.is_some() {}
    rows.push(format!(
        "| one source: connect, 1 byte, close, as fast as it goes, 10 s (attack 3a) | \
         {rate:.0} connections/s; legit GETs {}/{} ok ({:.1} %), p50 {} (undisturbed {}){} |",
        ok.len(),
        ok.len() + failed,
        100.0 * ok.len() as f64 / (ok.len() + failed).max(1) as f64,
        ms(quantile(&ok, 0.5)),
        ms(base_p50),
        if why.is_empty() {
            String::new()
        } else {
            format!("; failures: {why:?}")
        }
    ));
    // 3b: 4,096 connections held, 1 byte each.
    let mut held = Vec::new();
    let t = Instant::now();
    while held.len() < 4096 && t.elapsed() < Duration::from_secs(20) {
        if let Ok(mut s) = connect_from(source_ip(301), public).await {
            let _ = s.write_all(b"x").await;
            held.push(s);
        }
    }
    let (ok, failed, _) = paced_gets(public, 80).await;
    // Which of them the server has closed by now (EOF or an error within 1 ms).
    let mut open = 0;
    for c in held.iter_mut() {
        let mut b = [0u8; 1];
        if tokio::time::timeout(Duration::from_millis(1), c.read(&mut b))
            .await
            .is_err()
        {
            open += 1;
        }
    }
    rows.push(format!(
        "| one source holds 4,096 connections with 1 byte each (attack 3b) | \
         {} opened, {open} still open at the end; legit GETs {}/{} ok ({:.1} %), p50 {} (undisturbed {}) |",
        held.len(),
        ok.len(),
        ok.len() + failed,
        100.0 * ok.len() as f64 / (ok.len() + failed).max(1) as f64,
        ms(quantile(&ok, 0.5)),
        ms(base_p50)
    ));
    drop(held);
    Ok(rows)
}

/// CPU seconds (user + system) a process used so far.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rsplit(')').next() else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Attack 4: a server under a 2,048-descriptor limit, its descriptors exhausted by
/// silent strangers on the tunnel port, and its metrics port hit 400 times a second.
pub(crate) async fn metrics_emfile(setup: &Setup) -> Res<String> {
    let mut s = fresh(setup, "metrics");
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let m = metrics.to_string();
    let mut server = start_pair_server(&mut s, &["--metrics", &m], Some(2048)).await?;
    let key = s.dir.join("client.key");
    let mut client = Proc::spawn(&s.client_args(&key, s.http), None)?;
    client
        .wait_line("control: connected", Duration::from_secs(10))
        .await
        .ok_or("the client did not connect")?;
    let _ = until_served(s.public, Duration::from_secs(10)).await;
    let pid = server.pid();
    let stop = Arc::new(AtomicBool::new(false));
    // 2,200 silent strangers from 40 sources: more than the descriptors left.
    let mut peers = silent_strangers(s.tunnel, (400, 40), 2200, 50, &stop);
    let hits = {
        let stop = stop.clone();
        strangers().spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_micros(2500));
            while !stop.load(Relaxed) && n < 20_000 {
                tick.tick().await;
                n += 1;
                tokio::spawn(async move {
                    if let Ok(mut c) = TcpStream::connect(metrics).await {
                        let _ = c.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
                        let mut sink = Vec::new();
                        let _ =
                            tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut sink))
                                .await;
                    }
                });
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.drain();
    let (cpu0, t0, fd_peak) = (cpu_secs(pid), Instant::now(), descriptors(pid));
    let (mut lat, mut failed) = (Vec::new(), 0);
    for _ in 0..50 {
        match get(s.public, Duration::from_secs(5)).await {
            Ok(d) => lat.push(d),
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok = lat.len();
    let cpu = 100.0 * (cpu_secs(pid) - cpu0) / t0.elapsed().as_secs_f64();
    let lines = server.drain();
    stop.store(true, Relaxed);
    let metrics_hits = hits.await.unwrap_or(0);
    while peers.join_next().await.is_some() {}
    client.stop().await;
    server.stop().await;
    Ok(format!(
        "| metrics port at 400/s, descriptors exhausted under a 2,048 limit (attack 4) | \
         {metrics_hits} metrics connections; server CPU {cpu:.1} % of a core over {:.0} s, {lines} log lines, \
         {fd_peak} descriptors; legit GETs {ok}/{} ok, p50 {}, p99 {} |",
        t0.elapsed().as_secs_f64(),
        ok + failed,
        ms(quantile(&lat, 0.5)),
        ms(quantile(&lat, 0.99))
    ))
}

/// `count` strangers on `to` from `sources.1` sources numbered from `sources.0`, on the
/// strangers' runtime: each connects, stays silent, and reconnects when closed, at most
/// `reconnects` times, until `stop`.
fn silent_strangers(
    to: SocketAddr,
    sources: (usize, usize),
    count: usize,
    reconnects: usize,
    stop: &Arc<AtomicBool>,
) -> JoinSet<()> {
    let mut peers = JoinSet::new();
    for i in 0..count {
        let stop = stop.clone();
        let from = source_ip(sources.0 + i % sources.1.max(1));
        peers.spawn_on(
            async move {
                let mut n = 0;
                while !stop.load(Relaxed) && n < reconnects {
                    n += 1;
                    let Ok(mut c) = connect_from(from, to).await else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let mut b = [0u8; 64];
                    while !stop.load(Relaxed) {
                        let read = tokio::time::timeout(Duration::from_millis(200), c.read(&mut b));
                        if matches!(read.await, Ok(Ok(0)) | Ok(Err(_))) {
                            break;
                        }
                    }
                }
            },
            &strangers(),
        );
    }
    peers
}

/// Attack 5: a world-writable state directory with a planted all-zero key.
pub(crate) async fn planted_state(setup: &Setup) -> Res<String> {
    use std::os::unix::fs::PermissionsExt;
    let s = fresh(setup, "planted");
    let state = s.dir.join("state");
    std::fs::create_dir_all(&state)?;
    std::fs::write(state.join("tunnel.key"), format!("{}\n", "0".repeat(64)))?;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777))?;
    let (code, err) = refused(&s.server_args()).await?;
    let said = |text: &str| {
        let line = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        // Without the log prefix (time, level, target).
        let line = line.rsplit("\u{1b}[0m ").next().unwrap_or(line);
        line.chars().take(120).collect::<String>()
    };
    let first = said(&err);
    // The same key as a raw key file for the client: refused as not random.
    let zero = s.dir.join("zero.key");
    write_key(&zero, &"0".repeat(64))?;
    let (ccode, cerr) = refused(&s.client_args(&zero, s.http)).await?;
    let cfirst = said(&cerr);
    Ok(format!(
        "| world-writable state dir with a planted zero key (attack 5) | server exit {}: `{}`; \
         a client given the zero key: exit {}: `{}` |",
        code.map_or("-".into(), |c| c.to_string()),
        first,
        ccode.map_or("-".into(), |c| c.to_string()),
        cfirst,
    ))
}

/// Attack 6: `--max 1100` against a client `--max 1024`, with 20 sources holding 64
/// silent handshakes each on the pool port; GETs over 20 s.
pub(crate) async fn max_vs_handshakes(setup: &Setup) -> Res<String> {
    let mut s = fresh(setup, "max");
    let mut server = start_pair_server(&mut s, &["--max", "1100"], None).await?;
    let key = s.dir.join("client.key");
    let mut args = s.client_args(&key, s.http);
    args.extend(["--min", "1024", "--max", "1024"].map(String::from));
    let mut client = Proc::spawn(&args, None)?;
    client
        .wait_line("control: connected", Duration::from_secs(10))
        .await
        .ok_or("the client did not connect")?;
    let _ = until_served(s.public, Duration::from_secs(10)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut peers = silent_strangers(s.tunnel, (500, 20), 1280, 100, &stop);
    let start = Instant::now();
    let (mut all, mut middle) = ((0, 0), (0, 0));
    for i in 0..160u32 {
        let at = start + Duration::from_millis(125 * u64::from(i));
        tokio::time::sleep_until(at.into()).await;
        let ok = get(s.public, Duration::from_secs(5)).await.is_ok();
        let in_middle = (5.0..15.0).contains(&start.elapsed().as_secs_f64());
        all.1 += 1;
        all.0 += usize::from(ok);
        if in_middle {
            middle.1 += 1;
            middle.0 += usize::from(ok);
        }
    }
    stop.store(true, Relaxed);
    while peers.join_next().await.is_some() {}
    client.stop().await;
    server.drain();
    server.stop().await;
    Ok(format!(
        "| `--max 1100`, client `--max 1024`, 20 sources holding 64 silent handshakes each (attack 6) | \
         GETs {}/{} ok, {}/{} in the middle 10 s |",
        all.0, all.1, middle.0, middle.1
    ))
}
