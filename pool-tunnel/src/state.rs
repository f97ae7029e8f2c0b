//! The server's state directory: a self-signed certificate and a generated tunnel key,
//! made on the first start and reused on every later one, so that a client's `--pin`
//! and key survive a server restart.
//!
//! What is read from it is trusted, so it is checked as ssh checks its files: the
//! directory and every file must belong to the user running the tunnel, nobody else may
//! write to them, and nobody else may read a private key (`tunnel.key`, `key.pem`, a
//! `--tunnel-key-file`). Anything else is refused with the path and the fix, never
//! used silently.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
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
        .map_err(|e| format!("--state-dir {}: {e}", dir.display()))?;
    check(dir, 0o022, "chmod go-w")
}

/// Refuses `path` unless the user running this owns it and no bit of `forbidden` is set
/// in its mode.
fn check(path: &Path, forbidden: u32, fix: &str) -> Result<(), BoxError> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() && !meta.is_dir() {
        // A FIFO would block the open until someone writes to it; a device or a
        // socket is no key either.
        return Err(not_regular(path));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} belongs to user {}, not to the user running the tunnel ({me}): another user \
             could have planted it; chown it, or use a directory of your own",
            path.display(),
            meta.uid()
        )
        .into());
    }
    let mode = meta.mode() & 0o777;
    if mode & forbidden != 0 {
        return Err(format!(
            "{} has mode {mode:03o}: other users can {} it; `{fix} {}` first",
            path.display(),
            if forbidden & 0o044 != 0 && mode & 0o044 != 0 {
                "read"
            } else {
                "write to"
            },
            path.display()
        )
        .into());
    }
    Ok(())
}

fn not_regular(path: &Path) -> BoxError {
    format!(
        "{} is not a regular file (a FIFO, a device or a socket): give a file",
        path.display()
    )
    .into()
}

/// Refuses a private key file that is not a regular file, or that another user owns,
/// or can read or write.
///
/// A file directly in systemd's credentials directory (`$CREDENTIALS_DIRECTORY`, filled
/// by `LoadCredential=`) may also belong to root and show group read: systemd makes it
/// readable by this service alone (by ownership or an ACL, whose mask shows as the group
/// bits), in a directory only the service can enter. It must still be unwritable by
/// group and others.
pub fn check_private_file(path: &Path) -> Result<(), BoxError> {
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(not_regular(path));
    }
    let credentials = std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|d| !d.is_empty())
        .is_some_and(|d| path.parent() == Some(Path::new(&d)));
    let me = rustix::process::geteuid().as_raw();
    if credentials && (meta.uid() == 0 || meta.uid() == me) && meta.mode() & 0o022 == 0 {
        return Ok(());
    }
    check(path, 0o077, "chmod 600")
}

/// The certificate in `dir` (mode 1), made for `hostname` on the first call.
pub fn certificate(dir: &Path, hostname: &str) -> Result<(ServerTls, Origin), BoxError> {
    ensure_dir(dir)?;
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if cert.exists() || key.exists() {
        check(&cert, 0o022, "chmod go-w")?;
        check_private_file(&key)?;
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
        check_private_file(&path)?;
        return Ok((read_key_file(&path)?, Origin::Loaded, path));
    }
    let key = TunnelKey::generate()?;
    write_private(&path, format!("{}\n", key.to_hex()).as_bytes())?;
    Ok((key, Origin::Created, path))
}

/// A key from a file: its content without surrounding whitespace, as
/// [`TunnelKey::parse`] reads it (64 hex digits, or a passphrase of 16+ characters).
pub fn read_key_file(path: &Path) -> Result<TunnelKey, BoxError> {
    use std::io::Read;
    // Checked before the open (which would block on a FIFO), and again on what was
    // opened (the path may have changed in between).
    let meta = fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(not_regular(path));
    }
    let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(not_regular(path));
    }
    let mut text = String::new();
    // A key is a line: a file far longer is not one (and is not read whole).
    f.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
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

    fn fresh(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pool-tunnel-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_directory_others_can_write_to_is_refused() {
        let dir = fresh("writable");
        tunnel_key(&dir).unwrap();
        chmod(&dir, 0o777);
        let e = tunnel_key(&dir).unwrap_err().to_string();
        assert!(e.contains("mode 777") && e.contains("write"), "{e}");
        chmod(&dir, 0o700);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_key_or_certificate_others_can_read_or_write_is_refused() {
        let dir = fresh("planted");
        let (_, _, path) = tunnel_key(&dir).unwrap();
        // A key file readable by others (as a planted one would be).
        chmod(&path, 0o644);
        let e = tunnel_key(&dir).unwrap_err().to_string();
        assert!(e.contains("read"), "{e}");
        chmod(&path, 0o600);
        certificate(&dir, "localhost").unwrap();
        chmod(&dir.join(CERT_FILE), 0o666);
        let e = certificate(&dir, "localhost").unwrap_err().to_string();
        assert!(e.contains("mode 666"), "{e}");
        chmod(&dir.join(CERT_FILE), 0o644);
        certificate(&dir, "localhost").unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_before_it_is_opened() {
        let dir = fresh("fifo");
        ensure_dir(&dir).unwrap();
        let path = dir.join("key.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        // Opening it for read would block until a writer comes: the test would hang.
        let e = check_private_file(&path).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = read_key_file(&path).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_all_zero_key_is_refused() {
        let dir = fresh("zero");
        ensure_dir(&dir).unwrap();
        let path = dir.join(TUNNEL_KEY_FILE);
        write_private(&path, format!("{}\n", "0".repeat(64)).as_bytes()).unwrap();
        let e = tunnel_key(&dir).unwrap_err().to_string();
        assert!(e.contains("does not look random"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
