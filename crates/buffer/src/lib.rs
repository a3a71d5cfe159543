//! # sluice-buffer
//!
//! The core of the sluice ETL engine, usable on its own: a bounded buffer
//! used like a tokio channel — a [`Producer`] per source that waits for
//! room, a [`Consumer`] per stage — that bounds every record and byte
//! between them, globally, per pipeline stage and per source, so that a
//! flood never becomes an out-of-memory kill, a stall or a lost record.
//!
//! ```
//! use sluice_buffer::{Limit, Limits};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // At most 1,000 records in all, 400 per source.
//! let limits = Limits::records(1_000).per_source(Limit::records(400));
//! let (producers, consumer) = sluice_buffer::channel::<String>(limits)?;
//! let mut app = producers.producer("app")?;
//! drop(producers);
//! tokio::spawn(async move {
//!     for i in 0..10 {
//!         // Waits while a limit is full, on that limit only; hands every
//!         // record back if it fails.
//!         app.send(vec![format!("event {i}"); 100]).await?;
//!     }
//!     Ok::<_, sluice_buffer::SendError<String>>(())
//! });
//! let mut received = 0;
//! while let Some(batch) = consumer.recv().await {
//!     received += batch.len();
//!     consumer.complete(batch); // a record counts until it is completed
//! }
//! assert_eq!(received, 1_000); // ended: every producer gone, queue drained
//! # Ok::<_, Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
//!
//! A consumer receives a [`Batch`]: a `Vec` a producer sent, taken whole,
//! is that same `Vec`, numbered by its first record and completed as one
//! run, so the buffer writes no record between the two (see
//! [`Pending`] for the other layout, and BENCHMARKS.md).
//!
//! This crate has no gRPC or protobuf dependency and is generic over the
//! payload type (anything that implements [`ByteSize`], or sized by the
//! caller with [`Pending::push_sized`]). See the crate's README for limits
//! in records or bytes, errors and shutdown, and `examples/embed.rs`.
//!
//! Under the handles, the [`BufferManager`] is what the engine drives:
//! pipelines of several stages, credits (reservations), explicit sequence
//! numbers, retries with backoff, dead letters, cumulative acks. On top of
//! it, a [`BackpressureController`] grants credits fairly among sources and
//! tells each one to slow down, pause or resume through a hysteresis state
//! machine; a [`MemoryMonitor`] closes a memory gate near the process's
//! memory limit, which pauses every source. The [`metrics`] module names
//! the metrics they record. See `examples/memory_gate.rs`.
#![warn(missing_docs)]

mod channel;
mod error;
mod flow;
mod layout;
mod limits;
mod manager;
mod memory;
pub mod metrics;
mod pending;
mod queue;
mod record;
mod snapshot;
mod sync;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use flow::{
    BackpressureController, BackpressureSignal, ControllerConfig, ControllerError, Coverage,
    CreditMode, DEFAULT_CREDIT_LEASE, DEFAULT_EXPECTED_RECORD_BYTES, DEFAULT_GUARANTEED_RECORDS,
    DEFAULT_WINDOW_RECORDS, FlowEvent, SignalKind, SignalReason, SignalReceiver, SourceHandle,
    SourceState, SourceStatus,
};
pub use memory::{
    Gate, GateState, GateTransition, ManualProbe, Measured, MemoryError, MemoryMonitor,
    MemoryProbe, MemoryReading, MemorySource, ProbeError, SysinfoProbe,
};

pub use channel::{
    Batch, BatchIter, Consumer, DEFAULT_BATCH, Producer, Producers, RecordRef, Recv, Send,
    SendError, SendFailure, TryRecvError, TrySendError, channel,
};
pub use error::{AdmitError, BufferError, BuildError, Level, RejectReason, Unit};
pub use limits::{
    FieldError, FieldErrors, FieldRule, Limit, Limits, MemoryGateConfig, RetryPolicy, Watermarks,
};
pub use manager::{
    AckState, Admission, BatchSize, BufferManager, BufferManagerBuilder, Completion, Credit,
    PipelineInfo, Rejected, SeqRange, SourceProgress, StageInfo,
};
pub use pending::Pending;
pub use record::{BufferedRecord, ByteSize, DeadLetter, PipelineId, SourceId, StageId};
pub use snapshot::{LevelSnapshot, Pressure, Snapshot, SourceSnapshot, StageSnapshot};
