//! Polling instead of sleeping: wait for a condition, fail with a description after a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// The default time limit of a wait: generous, because CI machines are slow and shared.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// How often conditions are polled.
pub const POLL: Duration = Duration::from_millis(50);

/// Calls `check` every [`POLL`] until it returns `Some`, and returns that value. After `timeout`
/// it panics with `what` and the last error `check` returned (a description of what it saw).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => {
                if started.elapsed() > timeout {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
