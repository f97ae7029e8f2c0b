//! The pool through a real reverse proxy: nginx in front of the server pool, proxying
//! the WebSocket upgrade, restarted mid-run.
//!
//! nginx runs as a child process of the test (`daemon off`, `-c` and `-p` in a temp
//! dir), never as the system service. Where nginx is missing the test says so and
//! passes; under CI (`CI` set) a missing nginx fails it.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{client_config, roundtrip, server_config, take, wait_until};
use pool_ws::{WsClientPool, WsServerPool};

fn nginx_binary() -> Option<PathBuf> {
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
struct Nginx {
    bin: PathBuf,
    dir: PathBuf,
    listen: SocketAddr,
    child: Option<Child>,
}

impl Nginx {
    fn new(bin: PathBuf, upstream: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("pool-ws-nginx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        // A free port, kept for the restart (nginx binds with address reuse).
        let listen = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 512; }}\n\
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
    async fn start(&mut self) {
        let mut cmd = Command::new(&self.bin);
        self.args(&mut cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        self.child = Some(cmd.spawn().expect("start nginx"));
        let listen = self.listen;
        let up =
            wait_until(|| TcpStream::connect_timeout(&listen, Duration::from_millis(100)).is_ok())
                .await;
        assert!(up, "nginx did not start: {}", log(&self.dir));
    }

    /// Fast shutdown (`-s stop`, SIGTERM to our master by its pid file): every
    /// proxied connection is closed. Waits for the master to exit.
    fn stop(&mut self) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_through_nginx_and_recovers_from_its_restart() {
    let Some(bin) = nginx_binary() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the nginx test: install nginx"
        );
        eprintln!("nginx not found: skipping the reverse-proxy test (apt-get install nginx)");
        return;
    };
    let server = WsServerPool::builder()
        .config(server_config(64))
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap();
    let mut nginx = Nginx::new(bin, server.local_addr());
    nginx.start().await;
    let client = WsClientPool::builder(nginx.listen)
        .host("localhost")
        .config(client_config(4))
        .build()
        .unwrap();
    assert!(client.url().starts_with("ws://localhost:"));
    for round in 0..4u8 {
        let (_, mut s, mut c) = take(&server, &client).await;
        roundtrip(&mut s, &mut c, 100_000, round).await;
    }
    assert!(
        wait_until(|| client.idle() == 4).await,
        "{:?}",
        client.status()
    );
    let before = client.counters();

    nginx.stop();
    // Every connection through nginx is gone; the client pool finds out by itself.
    assert!(
        wait_until(|| client.counters().evicted_dead > before.evicted_dead).await,
        "the client pool never saw nginx go: {:?}",
        client.counters()
    );
    nginx.start().await;

    // Recovered without help: pairs through the new nginx, byte-checked.
    for round in 0..4u8 {
        let (_, mut s, mut c) = take(&server, &client).await;
        roundtrip(&mut s, &mut c, 100_000, 10 + round).await;
    }
    assert!(
        wait_until(|| client.idle() == 4).await,
        "{:?}",
        client.status()
    );
    client.close().await;
    server.close().await;
}
