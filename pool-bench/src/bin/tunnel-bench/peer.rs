//! rathole, the peer measured under the same harness with `--peer-rathole PATH`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use pool_testkit::proxy::{Fault, FaultProxy, Script};

use crate::procs::{free_addr, spawn, Proc};
use crate::Res;

/// rathole's two processes, with the same delay between them; the public address.
pub(crate) async fn rathole(
    path: &Path,
    dir: &Path,
    target: SocketAddr,
    delay: Duration,
    noise: bool,
) -> Res<(SocketAddr, Vec<Proc>, Vec<FaultProxy>)> {
    let (control, public) = (free_addr(), free_addr());
    let wan = FaultProxy::start(control, Script::always(Fault::Latency(delay))).await?;
    let procs = start(path, dir, (control, wan.addr()), public, target, noise)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((public, procs, vec![wan]))
}

/// Writes the two configurations and starts rathole's server on `control.0` and its
/// client dialing `control.1` (the server's address, or a proxy in front of it), for
/// one TCP service from `public` to `target`; with `noise`, over its Noise transport
/// (rathole's encrypted mode), with a key pair it makes.
pub(crate) fn start(
    path: &Path,
    dir: &Path,
    (control, remote): (SocketAddr, SocketAddr),
    public: SocketAddr,
    target: SocketAddr,
    noise: bool,
) -> Res<Vec<Proc>> {
    std::fs::create_dir_all(dir)?;
    let token = pool_tls::TunnelKey::generate()?.to_hex();
    let (server_noise, client_noise) = if noise {
        let out = std::process::Command::new(path).arg("--genkey").output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let after = |label: &str| {
            text.lines()
                .skip_while(|l| !l.starts_with(label))
                .find(|l| !l.trim().is_empty() && !l.starts_with(label))
                .map(|l| l.trim().to_owned())
                .ok_or("rathole --genkey printed no key")
        };
        let (private, public) = (after("Private Key")?, after("Public Key")?);
        (
            format!("[server.transport]\ntype = \"noise\"\n[server.transport.noise]\nlocal_private_key = \"{private}\"\n"),
            format!("[client.transport]\ntype = \"noise\"\n[client.transport.noise]\nremote_public_key = \"{public}\"\n"),
        )
    } else {
        (String::new(), String::new())
    };
    std::fs::write(
        dir.join("server.toml"),
        format!("[server]\nbind_addr = \"{control}\"\n{server_noise}[server.services.bench]\ntoken = \"{token}\"\nbind_addr = \"{public}\"\n"),
    )?;
    std::fs::write(
        dir.join("client.toml"),
        format!("[client]\nremote_addr = \"{remote}\"\n{client_noise}[client.services.bench]\ntoken = \"{token}\"\nlocal_addr = \"{target}\"\n"),
    )?;
    let s = spawn(
        path,
        &[
            "--server".into(),
            dir.join("server.toml").display().to_string(),
        ],
    )?;
    let c = spawn(
        path,
        &[
            "--client".into(),
            dir.join("client.toml").display().to_string(),
        ],
    )?;
    Ok(vec![s, c])
}
