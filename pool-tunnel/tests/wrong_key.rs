//! A client with the wrong key: the server closes its control connection without a
//! word (a stranger learns nothing), and the client's log says what that usually means.

mod tunnel_common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool_tls::{ServerTls, TlsMode};
use pool_tunnel::{ClientConfig, ServerConfig};
use tunnel_common::*;

/// Log lines written by every task of this binary (its only test).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_explained_by_the_client_and_not_by_the_server() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let (echo, echo_task) = pool_testkit::load::start_echo().await.unwrap();
    for tls in [false, true] {
        let cert = ServerTls::self_signed(["localhost"]).unwrap();
        let fp = cert.fingerprint();
        let server = pool_tunnel::start_server(ServerConfig {
            tls: tls.then_some(cert),
            ..server_cfg(key())
        })
        .await
        .unwrap();
        let before = log.text().len();
        let mut cfg = ClientConfig {
            key: key(),
            ..client_cfg(&server, echo)
        };
        if tls {
            cfg.mode = TlsMode::SelfSigned;
            cfg.pin = Some(fp);
            cfg.hostname = Some("localhost".into());
        }
        let wrong = pool_tunnel::start_client(cfg).await.unwrap();
        assert!(!wrong.wait_control(Duration::from_secs(2)).await);
        assert!(wrong.stats().control_failed >= 1, "{:?}", wrong.stats());
        let text = log.text()[before..].to_owned();
        let what = if tls {
            "before TLS"
        } else {
            "before the greeting"
        };
        assert!(
            text.contains(&format!("the server closed the connection {what}"))
                && text.contains("wrong tunnel key")
                && text.contains("clock more than 120s off"),
            "tls {tls}: {text}"
        );
        assert_eq!(server.stats().control_ok, 0);
        wrong.shutdown().await;
        server.shutdown().await;
    }
    echo_task.abort();
}
