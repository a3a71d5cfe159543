//! # sluice-buffer
//!
//! The core of the sluice ETL engine, usable on its own: a [`BufferManager`]
//! that bounds every record and byte between a source and a sink — globally,
//! per pipeline stage and per source — with retry-counted records and dead
//! letters, so that a flood never becomes an out-of-memory kill, a stall or
//! a lost record.
//!
//! This crate has no gRPC or protobuf dependency and is generic over the
//! payload type (anything that implements [`ByteSize`]), so any Rust program
//! can embed the same limits the engine uses.
//!
//! ```
//! use sluice_buffer::{BufferManager, Limits};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let buffer = BufferManager::<String>::builder(Limits::default())
//!     .pipeline("logs", ["sink"])
//!     .build()
//!     .unwrap();
//! let logs = buffer.pipeline_by_name("logs").unwrap().clone();
//! let app = buffer.register_source("app", logs.id).unwrap();
//! let out = buffer.admit(app, 1, vec!["hello".to_string()]).unwrap();
//! assert!(out.rejected.is_none());
//! let batch = buffer.next_batch(logs.stages[0], 100).await.unwrap();
//! assert_eq!(batch[0].payload, "hello");
//! buffer.complete(batch);
//! assert_eq!(buffer.acked_through(app).unwrap(), 1);
//! # });
//! ```
//!
//! See `examples/embed.rs` for producers held back by their limits.
//!
//! On top of the manager, a [`BackpressureController`] grants credits
//! (reservations) fairly among sources and tells each one to slow down,
//! pause or resume through a hysteresis state machine; a [`MemoryMonitor`]
//! closes a memory gate near the process's memory limit, which pauses every
//! source. The [`metrics`] module names the metrics they record. See
//! `examples/memory_gate.rs`.
#![warn(missing_docs)]

mod channel;
mod error;
mod flow;
mod limits;
mod manager;
mod memory;
pub mod metrics;
mod pending;
mod queue;
mod record;
mod snapshot;
mod sync;

pub use flow::{
    BackpressureController, BackpressureSignal, ControllerConfig, ControllerError, Coverage,
    DEFAULT_EXPECTED_RECORD_BYTES, DEFAULT_WINDOW_RECORDS, SignalKind, SignalReason,
    SignalReceiver, SourceHandle, SourceState, SourceStatus,
};
pub use memory::{
    Gate, GateState, GateTransition, ManualProbe, Measured, MemoryError, MemoryMonitor,
    MemoryProbe, MemoryReading, MemorySource, ProbeError, SysinfoProbe,
};

pub use channel::{
    Consumer, DEFAULT_BATCH, Producer, Producers, Recv, Send, SendError, SendFailure, TryRecvError,
    TrySendError, channel,
};
pub use error::{AdmitError, BufferError, BuildError, Level, RejectReason, Unit};
pub use limits::{
    FieldError, FieldErrors, FieldRule, Limit, Limits, MemoryGateConfig, RetryPolicy, Watermarks,
};
pub use manager::{
    Admission, BatchSize, BufferManager, BufferManagerBuilder, Completion, Credit, PipelineInfo,
    Rejected, SourceProgress, StageInfo,
};
pub use pending::Pending;
pub use record::{BufferedRecord, ByteSize, DeadLetter, PipelineId, SourceId, StageId};
pub use snapshot::{LevelSnapshot, Pressure, Snapshot, SourceSnapshot, StageSnapshot};
