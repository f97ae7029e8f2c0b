//! nginx as a child process in front of a server pool, for the reverse-proxy test and
//! the bench: a generated config in a temp dir (`daemon off`, `-c`, `-p`), proxying the
//! WebSocket upgrade headers; never the system service.
#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener, TcpStream};
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

/// An nginx of this test's own, proxying `listen` to `upstream` with the upgrade
/// headers passed on.
pub struct Nginx {
    bin: PathBuf,
    dir: PathBuf,
    pub listen: SocketAddr,
    child: Option<Child>,
}

impl Nginx {
    pub fn new(bin: PathBuf, upstream: SocketAddr) -> Self {
        // A free port, kept for the restart (nginx binds with address reuse).
        let listen = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let name = format!("pool-ws-nginx-{}-{}", std::process::id(), listen.port());
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             worker_rlimit_nofile 16384;\n\
             events {{ worker_connections 8192; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
               server {{\n    listen {listen};\n    location / {{\n\
                   proxy_pass http://{upstream};\n      proxy_http_version 1.1;\n\
                   proxy_set_header Upgrade $http_upgrade;\n\
                   proxy_set_header Connection $connection_upgrade;\n\
                   proxy_set_header Host $host;\n      proxy_buffering off;\n\
                   proxy_read_timeout 1h;\n      proxy_send_timeout 1h;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
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

    /// Starts nginx and waits until it accepts connections.
    pub async fn start(&mut self) {
        let mut cmd = Command::new(&self.bin);
        self.args(&mut cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.child = Some(cmd.spawn().expect("start nginx"));
        // Bounded: 200 tries, 25 ms apart.
        for _ in 0..200 {
            if TcpStream::connect_timeout(&self.listen, Duration::from_millis(100)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nginx did not start: {}", log(&self.dir));
    }

    /// Fast shutdown (`-s stop`, SIGTERM to our master by its pid file): every
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
