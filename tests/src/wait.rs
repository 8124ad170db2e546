//! Waiting with deadlines. Every wait in these tests ends: on success, or with an error that
//! names what was awaited.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::Instant;

/// How often [`poll_until`] looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Calls `check` every few milliseconds until it returns `Some`, or fails after `within`.
/// `what` names the awaited condition in the error.
pub async fn poll_until<T>(
    within: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Like [`poll_until`], for checks that must await (an HTTP request, a lock).
pub async fn poll_until_async<T, F, Fut>(within: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Awaits `fut` for at most `within`; the error names `what`.
pub async fn within<T>(within: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T> {
    match tokio::time::timeout(within, fut).await {
        Ok(value) => Ok(value),
        Err(_) => bail!("timed out after {within:?} waiting for {what}"),
    }
}
