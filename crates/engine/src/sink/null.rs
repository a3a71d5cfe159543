//! The `null` sink: accepts and discards every batch.

use super::contract::{Sink, SinkBatch, SinkFuture};

/// Discards records.
#[derive(Debug, Default)]
pub struct NullSink;

impl Sink for NullSink {
    fn describe(&self) -> String {
        "null".into()
    }
    fn write<'a>(&'a self, _batch: SinkBatch<'a>) -> SinkFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn commit(&self) -> SinkFuture<'_> {
        Box::pin(async { Ok(()) })
    }
}
