//! Test sinks: [`Refuse`], a sink that refuses chosen records one by one
//! (record-level failures) and writes the rest to another sink. The
//! sink-level outage is the engine's own [`Outage`] wrapper.

use std::sync::Arc;

pub use sluice_engine::sink::Outage;
use sluice_engine::sink::{RecordFailure, Sink, SinkBatch, SinkFuture, Written};

/// Refuses every record whose payload contains `marker`, with `error`, and
/// writes the others to `inner`.
#[derive(Debug)]
pub struct Refuse {
    inner: Arc<dyn Sink>,
    marker: Vec<u8>,
    error: String,
}

impl Refuse {
    /// Refuses records containing `marker` with `error`, writes the rest to `inner`.
    pub fn new(inner: Arc<dyn Sink>, marker: &str, error: &str) -> Arc<Self> {
        Arc::new(Self {
            inner,
            marker: marker.as_bytes().to_vec(),
            error: error.to_owned(),
        })
    }

    fn refuses(&self, payload: &[u8]) -> bool {
        payload
            .windows(self.marker.len())
            .any(|w| w == self.marker.as_slice())
    }
}

impl Sink for Refuse {
    fn describe(&self) -> String {
        format!(
            "refuse {:?} → {}",
            String::from_utf8_lossy(&self.marker),
            self.inner.describe()
        )
    }

    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
        Box::pin(async move {
            let (refused, kept): (Vec<_>, Vec<_>) = batch
                .iter()
                .enumerate()
                .partition(|(_, r)| self.refuses(r.record.payload()));
            let kept: Vec<_> = kept.into_iter().map(|(_, r)| r).collect();
            if !kept.is_empty() {
                // The inner sink refuses nothing in these tests.
                self.inner.write(kept[..].into()).await?;
            }
            if refused.is_empty() {
                return Ok(Written::All);
            }
            Ok(Written::Refused(
                refused
                    .into_iter()
                    .map(|(index, _)| RecordFailure {
                        index,
                        error: self.error.clone(),
                    })
                    .collect(),
            ))
        })
    }

    fn commit(&self) -> SinkFuture<'_> {
        self.inner.commit()
    }
}
