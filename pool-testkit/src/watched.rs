//! A child process whose output is read line by line as it comes: the benchmarks and
//! the attack harness start `tunnel` processes and wait for what they print.

use std::io;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A child process, killed when dropped, whose stdout and stderr lines arrive on one
/// channel, each with the instant it was read.
#[derive(Debug)]
pub struct Watched {
    child: Child,
    lines: mpsc::UnboundedReceiver<(Instant, String)>,
}

impl Watched {
    /// Starts `cmd` with its stdout and stderr piped to this watcher.
    pub fn spawn(mut cmd: Command) -> io::Result<Self> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (tx, lines) = mpsc::unbounded_channel();
        let out = child.stdout.take().ok_or(io::ErrorKind::BrokenPipe)?;
        let err = child.stderr.take().ok_or(io::ErrorKind::BrokenPipe)?;
        for r in [
            Box::new(out) as Box<dyn AsyncRead + Unpin + Send>,
            Box::new(err),
        ] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(r).lines();
                while let Ok(Some(l)) = r.next_line().await {
                    let _ = tx.send((Instant::now(), l));
                }
            });
        }
        Ok(Self { child, lines })
    }

    /// The first line containing `needle` within `within` (lines before it are
    /// dropped), and when it was read; `None` at the deadline or when the output ends.
    pub async fn wait_line(&mut self, needle: &str, within: Duration) -> Option<(Instant, String)> {
        let end = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(end, self.lines.recv()).await {
                Ok(Some((t, l))) if l.contains(needle) => return Some((t, l)),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    /// The next line within `within`, if one comes.
    pub async fn next_line(&mut self, within: Duration) -> Option<(Instant, String)> {
        tokio::time::timeout(within, self.lines.recv())
            .await
            .ok()
            .flatten()
    }

    /// Forgets the lines read so far; how many there were.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.lines.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    /// The process id (0 once it has been reaped).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The child itself, to wait for it or signal it.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Kills the process and reaps it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
