//! Test knobs around another sink: a pause before each batch, a
//! deterministic fraction of refused records (record-level failures), and a
//! switchable outage (a sink-level failure).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::contract::{RecordFailure, Sink, SinkBatch, SinkError, SinkFuture, Written};
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
        records: AtomicU64::new(0),
    })
}

/// The `delay` / `fail_rate` test knobs around another sink: a pause before
/// each batch, and a deterministic fraction of records that the sink
/// refuses (record-level failures: retried, then dead-lettered; the rest of
/// the batch is written).
#[derive(Debug)]
pub struct Knobs {
    inner: Arc<dyn Sink>,
    delay: Duration,
    fail_rate: f64,
    /// Records offered so far (each write attempt of a record counts).
    records: AtomicU64,
}

/// The error of a record refused by the `fail_rate` knob.
pub const INJECTED_RECORD_FAILURE: &str = "injected record failure (fail_rate)";

impl Sink for Knobs {
    fn describe(&self) -> String {
        format!(
            "{} (delay {:?}, fail_rate {})",
            self.inner.describe(),
            self.delay,
            self.fail_rate
        )
    }
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
        Box::pin(async move {
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            if self.fail_rate <= 0.0 {
                return self.inner.write(batch).await;
            }
            let n = batch.len();
            let first = self.records.fetch_add(n as u64, Ordering::Relaxed);
            let refused: Vec<RecordFailure> = (0..n)
                .filter(|&i| hits(first + i as u64, self.fail_rate))
                .map(|index| RecordFailure {
                    index,
                    error: INJECTED_RECORD_FAILURE.into(),
                })
                .collect();
            if refused.is_empty() {
                return self.inner.write(batch).await;
            }
            // The inner sink writes the others; what it refuses is added.
            let kept: Vec<_> = batch
                .iter()
                .enumerate()
                .filter(|(i, _)| refused.binary_search_by_key(i, |f| f.index).is_err())
                .collect();
            let records: Vec<_> = kept.iter().map(|(_, r)| *r).collect();
            let inner = self.inner.write(records[..].into()).await?;
            let mut all = refused;
            if let Written::Refused(more) = inner {
                all.extend(more.into_iter().map(|f| RecordFailure {
                    index: kept[f.index].0,
                    error: f.error,
                }));
                all.sort_by_key(|f| f.index);
            }
            Ok(Written::Refused(all))
        })
    }
    fn commit(&self) -> SinkFuture<'_> {
        self.inner.commit()
    }
    fn group_commit(&self) -> usize {
        self.inner.group_commit()
    }
}

/// A switchable sink-level outage around another sink, for tests: while it
/// is down, `write` and `commit` fail with [`SinkError::Injected`] and reach
/// nothing; once up, they go to the inner sink. Pass it to
/// [`EngineBuilder::sink`](crate::EngineBuilder::sink).
#[derive(Debug)]
pub struct Outage {
    inner: Arc<dyn Sink>,
    down: AtomicBool,
    /// Failed calls (write or commit) so far.
    failures: AtomicU64,
}

impl Outage {
    /// `inner`, up.
    pub fn new(inner: Arc<dyn Sink>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            down: AtomicBool::new(false),
            failures: AtomicU64::new(0),
        })
    }

    /// Takes the sink down (`true`) or brings it back (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Whether it is down.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// How many calls failed because it was down.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), SinkError> {
        if self.is_down() {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(SinkError::Injected);
        }
        Ok(())
    }
}

impl Sink for Outage {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
        Box::pin(async move {
            self.check()?;
            self.inner.write(batch).await
        })
    }
    fn commit(&self) -> SinkFuture<'_> {
        Box::pin(async move {
            self.check()?;
            self.inner.commit().await
        })
    }
    fn group_commit(&self) -> usize {
        self.inner.group_commit()
    }
}
