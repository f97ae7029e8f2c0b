//! The pools on tokio's paused clock (`start_paused`): time moves only when every task
//! waits on a timer, straight to the next one, so a get's deadline and a client's
//! back-off are read off the clock exactly, and an hour of them passes at once.
//!
//! What runs here waits on timers alone: a pool with no peer, a dialer that fails at
//! once. A paused clock also jumps to the next timer whenever the runtime waits for a
//! socket (it cannot know the bytes are coming), so a test on real connections would
//! see handshake and get deadlines fire early; those tests run on the real clock.

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pool_tokio::ClientConfig;
use pool_tokio::{ClientPool, ConnId, GetError};
use tokio::time::Instant;

const HOUR: Duration = Duration::from_secs(3600);

/// One millisecond: tokio's timer wheel rounds a deadline up to its next tick.
const TICK: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn a_get_times_out_at_its_deadline_on_the_paused_clock() {
    let server = server();
    let real = std::time::Instant::now();
    for timeout in [Duration::from_millis(250), Duration::from_secs(7), HOUR] {
        let t0 = Instant::now();
        let err = server.get_timeout(timeout).await.unwrap_err();
        let took = t0.elapsed();
        assert!(matches!(err, GetError::Timeout { .. }), "{err:?}");
        assert!(
            took >= timeout && took <= timeout + TICK,
            "a {timeout:?} get ended after {took:?} of tokio's time"
        );
    }
    let k = server.stats().counters;
    assert_eq!(k.get_timeouts, 3, "{k:?}");
    println!(
        "three gets timed out after 1 h 7.25 s of tokio's time, in {:?} of real time",
        real.elapsed()
    );
    server.close().await;
}

/// A client whose every dial fails at once, recording when each was made.
fn failing_client(min: Duration, max: Duration) -> (ClientPool, Arc<Mutex<Vec<Instant>>>) {
    let dials: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = dials.clone();
    let client = ClientPool::builder()
        .dialer(move || {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(Instant::now());
                Err::<tokio::net::TcpStream, _>(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "nobody there",
                ))
            }
        })
        .config(
            ClientConfig::builder()
                .capacity(2, 2)
                .parallelism(2)
                .interval(min, max),
        )
        .build()
        .unwrap();
    (client, dials)
}

/// The back-off after a run of failures, as pool-core's `backoff` draws it: the
/// minimum interval doubled per failure beyond the run, capped at the maximum, then
/// somewhere in its upper half, never under the minimum. Read off the paused clock,
/// every gap between two probes is inside that band, and the gaps reach the cap.
#[tokio::test(start_paused = true)]
async fn a_client_backs_off_by_the_schedule_while_every_dial_fails() {
    let (min, max) = (Duration::from_millis(100), Duration::from_millis(1600));
    let (client, dials) = failing_client(min, max);
    let t0 = Instant::now();
    // A get fails as soon as the first run of failures says the server is unreachable.
    let err = client
        .get_timeout(ConnId::from_random([1, 2, 3, 4]), HOUR)
        .await
        .unwrap_err();
    assert!(matches!(err, GetError::Unreachable(_)), "{err:?}");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let at: Vec<Duration> = dials.lock().unwrap().iter().map(|t| *t - t0).collect();
    println!("dials at {at:?}");
    // The first run: the dials made at once (the parallelism's worth, and one the get
    // for an id asked for), all failing.
    let run = at.iter().take_while(|t| **t == at[0]).count();
    assert!((2..=3).contains(&run), "{at:?}");
    assert!(at.len() > run + 8, "{at:?}");
    // Then one probe per round, each round at least the back-off of its failure run.
    let mut reached_cap = 0;
    for (k, gap) in at[run - 1..].windows(2).map(|w| w[1] - w[0]).enumerate() {
        let beyond = u32::try_from(k + 1).unwrap();
        let full = min.saturating_mul(1 << (beyond - 1).min(20)).min(max);
        let low = (full / 2).max(min);
        assert!(
            gap >= low && gap <= max + TICK,
            "probe {beyond} after {gap:?}: outside [{low:?}, {max:?}]; dials at {at:?}"
        );
        if gap >= max / 2 {
            reached_cap += 1;
        }
    }
    assert!(
        reached_cap >= 10,
        "the back-off never reached its cap: {at:?}"
    );
    let k = client.stats().counters;
    assert_eq!(k.dial_failures, at.len() as u64, "{k:?}");
    assert_eq!(k.dialed, at.len() as u64, "{k:?}");
    client.close().await;
}

/// An hour of a server that is never there passes at once: the attempts are as many as
/// the schedule allows, no more (no storm) and no fewer (the client keeps trying).
#[tokio::test(start_paused = true)]
async fn an_hour_of_failed_dials_costs_a_bounded_number_of_attempts() {
    let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
    let (client, dials) = failing_client(min, max);
    tokio::time::sleep(HOUR).await;
    let n = dials.lock().unwrap().len();
    // After the first run, never more than one probe per half the maximum interval.
    let most = 2 + (HOUR.as_millis() / (max / 2).as_millis()) as usize;
    let least = 2 + (HOUR.as_millis() / (max + TICK).as_millis()) as usize;
    println!("{n} dials in an hour of tokio's time (bounds {least}..={most})");
    assert!((least..=most).contains(&n), "{n} dials in an hour");
    client.close().await;
}

/// A dial that never answers is cut at its deadline, decided in the core and read off
/// tokio's clock: the get learns the server is unreachable exactly then.
#[tokio::test(start_paused = true)]
async fn a_dial_that_never_answers_is_cut_at_its_deadline() {
    let deadline = Duration::from_secs(5);
    let client = ClientPool::builder()
        .dialer(std::future::pending::<io::Result<tokio::net::TcpStream>>)
        .config(
            ClientConfig::builder()
                .capacity(1, 1)
                .parallelism(1)
                .handshake_timeout(deadline),
        )
        .build()
        .unwrap();
    let t0 = Instant::now();
    let err = client.get_any_timeout(HOUR).await.unwrap_err();
    let took = t0.elapsed();
    let GetError::Unreachable(f) = &err else {
        panic!("expected Unreachable, got {err:?}")
    };
    assert_eq!(f.stage, pool_tokio::Stage::Connect, "{err}");
    assert!(
        took >= deadline && took <= deadline + TICK,
        "the dial was cut after {took:?} of tokio's time"
    );
    let k = client.stats().counters;
    assert_eq!((k.dialed, k.dial_failures), (1, 1), "{k:?}");
    client.close().await;
}
