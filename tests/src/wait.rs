//! Waiting in tests: for a condition (polled, with a deadline), for a
//! test body (with a deadline), and what a running engine reports.

use std::time::Duration;

use sluice_engine::EngineHandle;
use sluice_proto::v1;

/// Polls `ready` every 10 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a test body within 50 s.
pub async fn within(body: impl std::future::Future<Output = ()>) {
    within_secs(50, body).await
}

/// Runs a test body within `secs` seconds (a test that kills and restarts
/// engines needs longer).
pub async fn within_secs(secs: u64, body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .expect("test timed out");
}

/// The first (default) pipeline's stats.
pub fn pipeline_stats(engine: &EngineHandle) -> v1::PipelineStats {
    engine
        .stats()
        .pipelines
        .into_iter()
        .next()
        .expect("a pipeline")
}

/// Record retries of every source, from the buffer.
pub fn retried(engine: &EngineHandle) -> u64 {
    engine
        .buffer()
        .snapshot()
        .sources
        .iter()
        .map(|s| s.retried)
        .sum()
}
