//! The `stdout` sink: one JSON line per record on standard output.

use tokio::io::AsyncWriteExt;

use super::contract::{Sink, SinkBatch, SinkError, SinkFuture, Written};
use super::json::write_json_line;

/// JSON lines on standard output.
#[derive(Debug, Default)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn describe(&self) -> String {
        "stdout".into()
    }
    /// Every failure is an I/O error on standard output: sink-level.
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
        Box::pin(async move {
            let mut buf = Vec::with_capacity(batch.len() * 128);
            for r in batch.iter() {
                write_json_line(&mut buf, &r);
            }
            tokio::io::stdout()
                .write_all(&buf)
                .await
                .map_err(SinkError::Stdout)?;
            Ok(Written::All)
        })
    }
    fn commit(&self) -> SinkFuture<'_> {
        Box::pin(async { tokio::io::stdout().flush().await.map_err(SinkError::Stdout) })
    }
}
