//! Hello, pool: both ends of a reverse tunnel in one process.
//!
//! A server pool (TLS mode 1, a self-signed certificate) and a client pool that pins
//! that certificate. 100 times: the server side takes a connection, "sends" its id to
//! the client side (here: a function argument; in a real tunnel, your control
//! channel), the client side takes the connection with that id, and a hello and its
//! echo cross it. Then both pools print their stats and close.
//!
//! Run it with `cargo run -p pool-tokio --example hello`; it exits non-zero on failure.

use std::process::ExitCode;
use std::time::Duration;

use pool_tokio::{ClientConfig, ClientTls, ServeTls};
use pool_tokio::{ClientPool, PoolError, ServerPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // What a user reads: the error and its causes, by their `Display`, not the
            // `Debug` dump that returning the error from `main` would print.
            // A cause that the message already quotes is not repeated.
            let mut said = e.to_string();
            eprintln!("hello: {said}");
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                let text = c.to_string();
                if !said.contains(&text) {
                    eprintln!("  caused by: {text}");
                    said = text;
                }
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), PoolError> {
    // The public side: listens for the client pool's connections.
    let server = ServerPool::builder()
        .bind(
            "127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .expect("an address"),
        )
        .tls(ServeTls::self_signed())
        .get_timeout(Duration::from_secs(5))
        .build()?;
    // The private side: dials ahead, and trusts only the server's certificate.
    let fingerprint = server.fingerprint().expect("mode 1 has a certificate");
    let client = ClientPool::builder()
        .address(server.local_addr())
        .config(ClientConfig::builder().capacity(8, 64))
        .tls(ClientTls::SelfSigned {
            pin: Some(fingerprint),
            name: None,
        })
        .get_timeout(Duration::from_secs(5))
        .build()?;

    for i in 0..100u32 {
        let (id, mut on_server) = server.get().await?;
        let mut on_client = client.get(id).await?; // the same stream, other end
        let hello = format!("hello {i:03}");
        on_server.write_all(hello.as_bytes()).await?;
        let mut got = vec![0u8; hello.len()];
        on_client.read_exact(&mut got).await?;
        on_client.write_all(&got).await?; // echo
        let mut echo = vec![0u8; hello.len()];
        on_server.read_exact(&mut echo).await?;
        if echo != hello.as_bytes() {
            eprintln!(
                "pair {i} ({id}): sent {hello:?}, echo {:?}",
                String::from_utf8_lossy(&echo)
            );
            std::process::exit(1);
        }
        // Close TLS cleanly (close_notify); dropping would close the socket too.
        on_server.shutdown().await?;
    }
    println!("100 pairs: hello and echo checked\n");
    println!("{}\n", server.stats());
    println!("{}", client.stats());
    client.close().await;
    server.close().await;
    Ok(())
}
