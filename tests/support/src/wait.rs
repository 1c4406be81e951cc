//! Bounded waiting: polling for a condition, and a time limit for a whole test.
//!
//! A cluster converges *eventually*, so tests poll instead of sleeping a guessed amount; and
//! since a bug in a distributed system often shows as a hang, every wait has a deadline that
//! turns it into a failure with a message saying what was awaited.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`wait_until`] checks again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `check` until it returns `Some`, and returns that value; panics after `timeout` with
/// `what` (a description of the awaited condition) in the message. A `check` that hangs is cut
/// off at the deadline too.
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(value)) = tokio::time::timeout_at(deadline, check()).await {
            return value;
        }
        if Instant::now() + POLL_INTERVAL >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Runs `test` with a time limit; panics if it is not done within `limit`.
///
/// The panic happens while `test` (and any cluster it owns) is still alive, so the nodes'
/// guards see a panicking thread when they are dropped and print the nodes' logs.
pub async fn within<T>(limit: Duration, test: impl Future<Output = T>) -> T {
    let mut test = std::pin::pin!(test);
    match tokio::time::timeout(limit, &mut test).await {
        Ok(value) => value,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_until_returns_the_first_value() {
        let mut calls = 0;
        let value = wait_until("three calls", Duration::from_secs(5), async || {
            calls += 1;
            (calls == 3).then_some(calls)
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the impossible")]
    async fn wait_until_panics_at_the_deadline() {
        wait_until("the impossible", Duration::from_millis(200), async || {
            None::<()>
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a hang")]
    async fn wait_until_cuts_off_a_hanging_check() {
        wait_until("a hang", Duration::from_millis(200), async || {
            std::future::pending::<Option<()>>().await
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "did not finish within")]
    async fn within_panics_on_time() {
        within(Duration::from_millis(100), std::future::pending::<()>()).await;
    }
}
