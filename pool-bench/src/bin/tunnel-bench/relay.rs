//! The relay alone (in this process) and the relay chain (two processes of this
//! binary in series): the ceilings the tunnel's figures are read against.

use std::net::SocketAddr;
use std::time::Duration;

use pool_bench::report::Figure;
use tokio::net::{TcpListener, TcpStream};

use crate::measure::{alternated, download, sessions};
use crate::procs::{free_addr, spawn, Proc};
use crate::Res;

/// Which relay [`relay_mbps`] runs.
#[derive(Clone, Copy)]
pub(crate) enum Relay {
    /// `tokio::io::copy_bidirectional`: the raw relay.
    Raw,
    /// `pool_tunnel::relay::relay` (userspace copy, the TLS path).
    Copy,
    /// `pool_tunnel::relay::relay_tcp` (`splice(2)` on Linux, the plain path).
    Splice,
}

/// MB/s of `bytes` from the service through one in-process relay of kind `kind`.
pub(crate) async fn relay_mbps(service: SocketAddr, kind: Relay, bytes: u64) -> Res<f64> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let entry = l.local_addr()?;
    let relay = tokio::spawn(async move {
        let (mut user, _) = l.accept().await?;
        let mut up = TcpStream::connect(service).await?;
        let limits = pool_tunnel::relay::RelayLimits::default();
        let traffic = pool_tunnel::relay::Traffic::default();
        match kind {
            Relay::Raw => {
                tokio::io::copy_bidirectional(&mut user, &mut up).await?;
            }
            Relay::Copy => {
                pool_tunnel::relay::relay(user, up, limits, &traffic).await;
            }
            Relay::Splice => {
                pool_tunnel::relay::relay_tcp(user, up, limits, &traffic).await;
            }
        }
        Ok::<_, std::io::Error>(())
    });
    let mbps = download(entry, bytes).await;
    let _ = relay.await;
    Ok(mbps)
}

/// `--relay-child LISTEN UPSTREAM [copy]`: this binary as one link of the relay chain.
/// It accepts on `LISTEN`, connects to `UPSTREAM` for each connection and relays the
/// two with the tunnel's plain relay (`splice(2)`), or with `copy` with
/// `tokio::io::copy_bidirectional`, until it is killed, or for [`RELAY_CHILD_LIFE`] at
/// most (a child whose bench died does not outlive it for long).
pub(crate) async fn relay_child(listen: &str, upstream: &str, copy: bool) -> Res<()> {
    let l = TcpListener::bind(listen).await?;
    let upstream: SocketAddr = upstream.parse()?;
    println!("relay: ready");
    let serve = async {
        loop {
            let Ok((user, _)) = l.accept().await else {
                // Out of descriptors, say: wait for some to close, without spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(async move {
                let _ = user.set_nodelay(true);
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                if copy {
                    let (mut user, mut up) = (user, up);
                    let _ = tokio::io::copy_bidirectional(&mut user, &mut up).await;
                    return;
                }
                let traffic = pool_tunnel::relay::Traffic::default();
                let limits = pool_tunnel::relay::RelayLimits::default();
                pool_tunnel::relay::relay_tcp(user, up, limits, &traffic).await;
            });
        }
    };
    let _ = tokio::time::timeout(RELAY_CHILD_LIFE, serve).await;
    Ok(())
}

/// How long a `--relay-child` lives at most.
pub(crate) const RELAY_CHILD_LIFE: Duration = Duration::from_secs(600);

/// The relay chain in front of `target`: two `--relay-child` processes in series
/// (relaying with `copy_bidirectional` if `copy`), and the address a user connects to.
pub(crate) async fn relay_chain(target: SocketAddr, copy: bool) -> Res<(SocketAddr, [Proc; 2])> {
    let me = std::env::current_exe()?;
    let (near, far) = (free_addr(), free_addr());
    let mut procs = Vec::new();
    for (listen, up) in [(far, target), (near, far)] {
        let mut args = vec!["--relay-child".into(), listen.to_string(), up.to_string()];
        if copy {
            args.push("copy".into());
        }
        let mut p = spawn(&me, &args)?;
        p.wait_line("relay: ready", Duration::from_secs(10))
            .await
            .ok_or("a relay child did not start")?;
        procs.push(p);
    }
    let [a, b]: [Proc; 2] = procs.try_into().map_err(|_| "two relays")?;
    Ok((near, [a, b]))
}

/// Which figures [`chain_figures`] measures.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum ChainRun {
    Download,
    Sessions,
    Both,
}

/// `chain_mbps`, `chain_copy_mbps` and `chain_sessions_per_s` (see the module docs),
/// each against the direct baseline measured beside it.
pub(crate) async fn chain_figures(
    target: SocketAddr,
    run: ChainRun,
    bytes: u64,
    quick: bool,
    secs: f64,
) -> Res<Vec<Figure>> {
    let (entry, procs) = relay_chain(target, false).await?;
    let what = "two relay processes in series, accept + connect + relay per session, no pool";
    let mut out = Vec::new();
    if run != ChainRun::Sessions {
        let (copy_entry, copy_procs) = relay_chain(target, true).await?;
        let (rounds, chains, direct) = alternated(target, &[entry, copy_entry], bytes, quick).await;
        let (chain, copy) = (chains[0], chains[1]);
        let how = format!(
            "median of {rounds} alternated with the baseline; baseline: straight from the service"
        );
        out.push(
            Figure::vs("chain_mbps", chain, "MB/s", direct)
                .note(format!("{what} (the tunnel's splice relay); {how}")),
        );
        out.push(
            Figure::vs("chain_copy_mbps", copy, "MB/s", direct)
                .note(format!("{what} (tokio::io::copy_bidirectional); {how}")),
        );
        for p in copy_procs {
            p.kill().await;
        }
    }
    if run != ChainRun::Download {
        let base = sessions(target, 64, secs).await;
        let sps = sessions(entry, 64, secs).await;
        out.push(
            Figure::vs("chain_sessions_per_s", sps, "1/s", base).note(format!(
                "{what} (splice); 64 at once, 1 KiB each way; baseline: straight to the service"
            )),
        );
    }
    for p in procs {
        p.kill().await;
    }
    Ok(out)
}
