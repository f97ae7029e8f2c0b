//! The clock, the seed and the steps of a dial or handshake, as both pools take them
//! from tokio and the TLS provider.

use std::future::Future;
use std::time::Instant;

use pool_core::{SeededRandom, Stage};
use tokio_util::sync::CancellationToken;

use crate::error::{BuildError, StepError};

/// The core's `now`, from tokio's clock so that paused-time tests drive the core too.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The seed of a machine's generator, from the TLS provider's secure generator. There
/// is no fallback: a pool whose ids could be guessed is not built.
pub(crate) fn seeded() -> Result<SeededRandom, BuildError> {
    let seed = pool_tls::secure_seed().map_err(|_| BuildError::Random)?;
    Ok(SeededRandom::from_seed(seed))
}

/// Runs one step of a dial or handshake until it ends or the core aborts it (its
/// deadline passed, it was evicted, or the pool closed): the step names the stage.
pub(crate) async fn step<T>(
    token: &CancellationToken,
    stage: Stage,
    fut: impl Future<Output = Result<T, StepError>>,
) -> Result<T, (Stage, StepError)> {
    tokio::select! {
        r = fut => r.map_err(|e| (stage, e)),
        _ = token.cancelled() => Err((stage, StepError::Timeout)),
    }
}
