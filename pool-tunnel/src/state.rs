//! The server's state directory: a self-signed certificate and a generated tunnel key,
//! made on the first start and reused on every later one, so that a client's `--pin`
//! and key survive a server restart.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use pool_tls::{ServerTls, TunnelKey};

use crate::BoxError;

/// File names inside the state directory.
pub const CERT_FILE: &str = "cert.pem";
/// See [`CERT_FILE`].
pub const KEY_FILE: &str = "key.pem";
/// See [`CERT_FILE`].
pub const TUNNEL_KEY_FILE: &str = "tunnel.key";

/// Whether a thing was found in the state directory or made now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from the directory.
    Loaded,
    /// Made now and written to the directory.
    Created,
}

/// Writes `bytes` to a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BoxError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()).into())
}

fn ensure_dir(dir: &Path) -> Result<(), BoxError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("--state-dir {}: {e}", dir.display()).into())
}

/// The certificate in `dir` (mode 1), made for `hostname` on the first call.
pub fn certificate(dir: &Path, hostname: &str) -> Result<(ServerTls, Origin), BoxError> {
    ensure_dir(dir)?;
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if cert.exists() || key.exists() {
        let tls = ServerTls::from_pem_files(&cert, &key)?;
        return Ok((tls, Origin::Loaded));
    }
    let pair = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    let made = params.self_signed(&pair)?;
    write_private(&key, pair.serialize_pem().as_bytes())?;
    write_private(&cert, made.pem().as_bytes())?;
    Ok((ServerTls::from_pem_files(&cert, &key)?, Origin::Created))
}

/// The tunnel key in `dir`, generated on the first call.
pub fn tunnel_key(dir: &Path) -> Result<(TunnelKey, Origin, PathBuf), BoxError> {
    ensure_dir(dir)?;
    let path = dir.join(TUNNEL_KEY_FILE);
    if path.exists() {
        return Ok((read_key_file(&path)?, Origin::Loaded, path));
    }
    let key = TunnelKey::generate()?;
    write_private(&path, format!("{}\n", key.to_hex()).as_bytes())?;
    Ok((key, Origin::Created, path))
}

/// A key from a file: its content without surrounding whitespace, as
/// [`TunnelKey::parse`] reads it (64 hex digits, or a passphrase of 16+ characters).
pub fn read_key_file(path: &Path) -> Result<TunnelKey, BoxError> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    TunnelKey::parse(text.trim()).map_err(|e| format!("{}: {e}", path.display()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_certificate_and_key_survive_a_restart() {
        let dir = std::env::temp_dir().join(format!("pool-tunnel-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (a, o) = certificate(&dir, "localhost").unwrap();
        assert_eq!(o, Origin::Created);
        let (b, o) = certificate(&dir, "localhost").unwrap();
        assert_eq!(o, Origin::Loaded);
        assert_eq!(a.fingerprint(), b.fingerprint());
        let (k1, o1, path) = tunnel_key(&dir).unwrap();
        let (k2, o2, _) = tunnel_key(&dir).unwrap();
        assert_eq!((o1, o2), (Origin::Created, Origin::Loaded));
        assert_eq!(k1.to_hex(), k2.to_hex());
        for f in [path, dir.join(KEY_FILE)] {
            let mode = fs::metadata(&f).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{} is readable by others", f.display());
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
