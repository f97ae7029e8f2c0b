//! A side's long-running tasks (the server's accept loops, the client's control loop
//! and session acceptor): when one ends, all end, and the handle says why.

use std::collections::HashMap;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// Waits for the first of `loops` to end (they end only by a panic or an error they
/// cannot recover from), says which and why on `failed` and in the log, and stops the
/// others (dropping the set aborts them). `side` names what stops ("the server side").
pub(crate) async fn supervise(
    side: &'static str,
    mut loops: JoinSet<()>,
    names: HashMap<tokio::task::Id, &'static str>,
    failed: watch::Sender<Option<String>>,
) {
    let Some(end) = loops.join_next_with_id().await else {
        return;
    };
    let why = match end {
        Ok((id, ())) => format!("{} ended", names.get(&id).unwrap_or(&"a task")),
        Err(e) => {
            let name = names.get(&e.id()).unwrap_or(&"a task");
            if e.is_panic() {
                let p = e.into_panic();
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("{name} panicked: {msg}")
            } else {
                format!("{name} was cancelled")
            }
        }
    };
    tracing::error!("{why}; stopping {side}");
    loops.shutdown().await;
    failed.send_replace(Some(why));
}

/// Waits until a side's supervisor says why it stopped; never ends when it stopped
/// without a reason (a shutdown).
pub(crate) async fn failure(failed: &watch::Receiver<Option<String>>) -> String {
    let mut rx = failed.clone();
    let why = match rx.wait_for(Option::is_some).await {
        Ok(why) => why.clone(),
        Err(_) => None,
    };
    match why {
        Some(why) => why,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_stops_the_others_and_says_why() {
        let mut loops = JoinSet::new();
        let mut names = HashMap::new();
        let (alive_tx, mut alive) = watch::channel(());
        let h = loops.spawn(async move {
            let _alive = alive_tx; // dropped when this task is stopped
            std::future::pending::<()>().await
        });
        names.insert(h.id(), "the quiet loop");
        let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
        let h = loops.spawn(async move {
            let _ = go.await;
            panic!("out of luck");
        });
        names.insert(h.id(), "the failing loop");
        let (tx, mut failed) = watch::channel(None);
        let sup = tokio::spawn(supervise("the test side", loops, names, tx));
        go_tx.send(()).unwrap();
        let why = failed.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(
            why.as_deref(),
            Some("the failing loop panicked: out of luck")
        );
        // The quiet loop was stopped with it.
        assert!(alive.changed().await.is_err());
        sup.await.unwrap();
    }
}
