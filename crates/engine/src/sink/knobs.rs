//! Test knobs around another sink: a pause before each batch and a
//! deterministic fraction of failing batches.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::contract::{Sink, SinkBatch, SinkError, SinkFuture};
use crate::transform::hits;

/// Wraps `sink` with the test knobs (unchanged when both are off).
pub fn with_knobs(sink: Arc<dyn Sink>, delay: Duration, fail_rate: f64) -> Arc<dyn Sink> {
    if delay.is_zero() && fail_rate <= 0.0 {
        return sink;
    }
    Arc::new(Knobs {
        inner: sink,
        delay,
        fail_rate,
        batches: AtomicU64::new(0),
    })
}

/// The `delay` / `fail_rate` test knobs around another sink: a pause before
/// each batch, and a deterministic fraction of batches that fail.
#[derive(Debug)]
pub struct Knobs {
    inner: Arc<dyn Sink>,
    delay: Duration,
    fail_rate: f64,
    batches: AtomicU64,
}

impl Sink for Knobs {
    fn describe(&self) -> String {
        format!(
            "{} (delay {:?}, fail_rate {})",
            self.inner.describe(),
            self.delay,
            self.fail_rate
        )
    }
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            let n = self.batches.fetch_add(1, Ordering::Relaxed);
            if hits(n, self.fail_rate) {
                return Err(SinkError::Injected(self.fail_rate));
            }
            self.inner.write(batch).await
        })
    }
    fn commit(&self) -> SinkFuture<'_> {
        self.inner.commit()
    }
}
