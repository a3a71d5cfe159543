//! The `null` sink: accepts and discards every batch.

use super::contract::{Sink, SinkBatch, SinkFuture, Written};

/// Discards records.
#[derive(Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {
    fn describe(&self) -> String {
        "null".into()
    }
    fn write<'a>(&'a self, _batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
        Box::pin(async { Ok(Written::All) })
    }
    fn commit(&self) -> SinkFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}
