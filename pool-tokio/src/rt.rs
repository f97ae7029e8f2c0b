//! The clock and the seed, as both pools take them from tokio and the TLS provider.

use std::time::Instant;

use pool_core::SeededRandom;

use crate::error::BuildError;

/// The core's `now`, from tokio's clock so that paused-time tests drive the core too.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The seed of a machine's generator, from the TLS provider's secure generator. There
/// is no fallback: a pool whose ids could be guessed is not built.
pub(crate) fn seeded() -> Result<SeededRandom, BuildError> {
    let mut seed = [0u8; 32];
    pool_tls::provider()
        .secure_random
        .fill(&mut seed)
        .map_err(|_| BuildError::Random)?;
    Ok(SeededRandom::from_seed(seed))
}
