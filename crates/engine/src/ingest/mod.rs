//! Ingest: the `sluice.v1.Ingest` service and everything between a source's
//! stream and the buffer.
//!
//! - `service`: [`IngestService`], the tonic service, served by hand so
//!   that requests are decoded by `wire` straight into buffer records;
//! - `context`: what the sessions share;
//! - `session`: one stream's state machine (Open, batches, credits,
//!   signals, acks, takeover, shutdown);
//! - `admission`: the only place the admission and credit policy is
//!   written (what a batch's credit covers, when credit may be granted);
//! - `streams`: the registry of open streams, one per source;
//! - `gate`: how much of a stream is read before its capacity is counted
//!   (the credit it holds, or the pool of `server.uncovered_message_bytes`);
//! - `rate`: a source's drain rate, sent with SLOW_DOWN;
//! - `convert`: the buffer's types in their proto form.
//!
//! Ingest sits on the [`runtime`](crate::runtime) (buffer, flow control,
//! acks, pipelines) and knows nothing of the server that serves it.

mod admission;
mod context;
mod convert;
mod gate;
mod rate;
mod service;
mod session;
mod streams;
pub(crate) mod wire;

pub(crate) use context::IngestContext;
pub use service::IngestService;
pub use session::MAX_NAME_BYTES;
pub(crate) use streams::Connection;
