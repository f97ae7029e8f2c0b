//! nginx as a child process in front of a server pool, for the reverse-proxy tests and
//! the benches: a generated configuration in a temp dir (`daemon off`, `-c`, `-p`)
//! proxying the WebSocket upgrade (`proxy_http_version 1.1`, the `Upgrade` and
//! `Connection` headers, unbuffered, hour-long read and send timeouts); never the
//! system service.
//!
//! Plain by default: nginx takes `ws://` and forwards `ws://`, as an HTTP proxy in
//! front of a plain WebSocket server does. [`Nginx::terminating_tls`] makes it take
//! `wss://` with a certificate of its own and forward over a second TLS session
//! (`proxy_pass https://`), as a TLS-terminating proxy or CDN does.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The nginx binary on `PATH` or in the usual `sbin` directories.
pub fn binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// The nginx binary for a test that needs it: `None` (and a line saying the test
/// skips, naming `what`) where nginx is missing on a developer's machine.
///
/// # Panics
///
/// Where nginx is missing and `CI` is set: CI must run every nginx test.
pub fn for_test(what: &str) -> Option<PathBuf> {
    let bin = binary();
    if bin.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run {what}: install nginx"
        );
        eprintln!("nginx not found: skipping {what} (apt-get install nginx)");
    }
    bin
}

/// A certificate and its key, PEM files nginx serves `wss://` with.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

/// An nginx of the caller's own, proxying `listen` to `upstream` with the upgrade
/// headers passed on; stopped and its directory removed when dropped.
#[derive(Debug)]
pub struct Nginx {
    bin: PathBuf,
    dir: PathBuf,
    /// Where nginx listens (a loopback port, the same after a restart).
    pub listen: SocketAddr,
    child: Option<Child>,
}

impl Nginx {
    /// Plain: `ws://` in, `ws://` to `upstream`.
    pub fn new(bin: PathBuf, upstream: SocketAddr) -> Self {
        Self::with(bin, upstream, None)
    }

    /// TLS-terminating: `wss://` in with `tls`, a second TLS session to `upstream`
    /// (`proxy_pass https://`, the upstream's certificate not verified, nginx's default),
    /// TLS 1.2 and 1.3 both ways (nginx before 1.23.4 offers no TLS 1.3 unless told).
    pub fn terminating_tls(bin: PathBuf, upstream: SocketAddr, tls: &TlsFiles) -> Self {
        Self::with(bin, upstream, Some(tls))
    }

    fn with(bin: PathBuf, upstream: SocketAddr, tls: Option<&TlsFiles>) -> Self {
        // A free port, kept for the restart (nginx binds with address reuse).
        let listen = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        let name = format!("pool-nginx-{}-{}", std::process::id(), listen.port());
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).expect("nginx's temp dir");
        let d = dir.display();
        let (ssl, scheme) = match tls {
            Some(t) => {
                std::fs::write(dir.join("cert.pem"), &t.cert_pem).expect("cert.pem");
                std::fs::write(dir.join("key.pem"), &t.key_pem).expect("key.pem");
                (
                    format!(
                        " ssl;\n    ssl_certificate {d}/cert.pem;\n    ssl_certificate_key {d}/key.pem;\n    \
                         ssl_protocols TLSv1.2 TLSv1.3;\n    proxy_ssl_protocols TLSv1.2 TLSv1.3"
                    ),
                    "https",
                )
            }
            None => (String::new(), "http"),
        };
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             worker_rlimit_nofile 16384;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
               server {{\n    listen {listen}{ssl};\n    location / {{\n\
                   proxy_pass {scheme}://{upstream};\n      proxy_http_version 1.1;\n\
                   proxy_set_header Upgrade $http_upgrade;\n\
                   proxy_set_header Connection $connection_upgrade;\n\
                   proxy_set_header Host $host;\n      proxy_buffering off;\n\
                   proxy_read_timeout 1h;\n      proxy_send_timeout 1h;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("nginx.conf");
        Self {
            bin,
            dir,
            listen,
            child: None,
        }
    }

    fn args<'a>(&'a self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("logs/error.log"))
    }

    /// Starts nginx and waits until it accepts connections (at most 5 s).
    ///
    /// # Panics
    ///
    /// If nginx cannot be started or does not listen in time (its error log is in the
    /// message).
    pub async fn start(&mut self) {
        let mut cmd = Command::new(&self.bin);
        self.args(&mut cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.child = Some(cmd.spawn().expect("start nginx"));
        // Bounded: 200 tries, 25 ms apart.
        for _ in 0..200 {
            let dial = tokio::net::TcpStream::connect(self.listen);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), dial).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nginx did not start: {}", log(&self.dir));
    }

    /// Fast shutdown (`-s stop`, SIGTERM to this master by its pid file): every
    /// proxied connection is closed. Waits for the master to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let mut cmd = Command::new(&self.bin);
        let stopped = self
            .args(&mut cmd)
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
        if !stopped.is_ok_and(|s| s.success()) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        log(&self.dir)
    }
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("logs/error.log")).unwrap_or_default()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
