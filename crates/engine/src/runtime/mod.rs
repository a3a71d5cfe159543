//! The pipeline runtime: stage workers that move records from admission to
//! the sink, the ack progress they publish, and their timing.
//!
//! - [`worker`]: one task per stage (transform or sink), described below;
//! - [`acks`]: the [`AckHub`], per-source completion progress the ingest
//!   sessions turn into `Ack`s;
//! - [`timing`]: busy / idle / backpressured time per stage and its rates.
//!
//! Each configured pipeline becomes one [`BufferManager`] pipeline with one
//! stage per configured transform stage **plus a final stage named `sink`**
//! whose worker writes to the sink. (A separate sink stage, rather than
//! writing from the last transform's worker, gives the sink its own queue,
//! limit and metrics, so a slow sink shows up as a full `sink` stage and
//! slows the stages before it.) One worker task runs per stage.
//!
//! A worker loop: take a batch ([`BatchSettings`]: at most `max_records`
//! records and `max_bytes` bytes, made of what is ready at once; when
//! partial, wait up to `linger` for more, but never while the pipeline is
//! backpressured — a level of the pipeline at or above the high watermark,
//! or the memory gate closed — because completing records is what frees
//! capacity). A batch is kept as the parts the buffer handed out (whole
//! queued batches), not copied into one `Vec`; then
//!
//! - a transform stage applies its transform per record: kept records are
//!   forwarded to the next stage (waiting while it is full), filtered ones
//!   completed (acked, counted as filtered), failed ones returned with
//!   [`BufferManager::retry_each`];
//! - the sink stage writes the batch and commits it, then completes it; on
//!   error the batch is returned with [`BufferManager::retry`].
//!
//! Records past `retry.max_retries` come back as dead letters: they are
//! written to the pipeline's dead-letter sink (retried with backoff until it
//! succeeds or the engine stops), then completed as dead-lettered. Every
//! completion is published to the [`AckHub`]. Workers stop when the buffer
//! manager shuts down.

use std::sync::Arc;

use sluice_buffer::{BufferManager, GateState, PipelineId, StageId};
use sluice_config::BatchSettings;
use tokio::sync::watch;

use crate::record::EngineRecord;
use crate::sink::Sink;
use crate::transform::Transform;

pub(crate) mod acks;
pub(crate) mod timing;
pub(crate) mod worker;

pub use acks::{AckHub, AckProgress};
pub(crate) use timing::StageClocks;
pub use timing::StageRates;
pub(crate) use worker::spawn_workers;

/// The buffer manager as the engine instantiates it.
pub type Buffer = BufferManager<EngineRecord>;

/// The name of the final stage of every pipeline, whose worker writes to the sink.
pub const SINK_STAGE: &str = "sink";

/// What one stage's worker does.
#[derive(Debug, Clone)]
pub(crate) enum StageWork {
    /// Applies a transform and forwards to the next stage.
    Transform(Transform),
    /// Writes to the sink and completes.
    Sink(Arc<dyn Sink>),
}

/// One pipeline as the runtime runs it.
#[derive(Debug, Clone)]
pub(crate) struct PipelineRuntime {
    /// The buffer's pipeline id.
    pub(crate) id: PipelineId,
    /// Its name.
    pub(crate) name: Arc<str>,
    /// The sink.
    pub(crate) sink: Arc<dyn Sink>,
    /// The dead-letter sink.
    pub(crate) dead_letter: Arc<dyn Sink>,
    /// The work of each stage, in order (the last one is the sink stage).
    pub(crate) stages: Vec<(StageId, StageWork)>,
    /// Batching.
    pub(crate) batch: BatchSettings,
}

/// Shared inputs of every worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerEnv {
    /// The buffer.
    pub(crate) buffer: Arc<Buffer>,
    /// Where completions are published.
    pub(crate) hub: Arc<AckHub>,
    /// The memory gate, if any.
    pub(crate) gate: Option<watch::Receiver<GateState>>,
    /// The high watermark (0–1).
    pub(crate) high_watermark: f64,
}

/// The running pipelines and what they share: the buffer, flow control, the
/// ack progress, each stage's clock. Built once by the server; ingest feeds
/// it, `Admin` and `/metrics` read it.
#[derive(Debug)]
pub(crate) struct Runtime {
    /// The buffer manager.
    pub(crate) buffer: Arc<Buffer>,
    /// Flow control over the buffer.
    pub(crate) controller: Arc<sluice_buffer::BackpressureController<EngineRecord>>,
    /// Completion progress per source.
    pub(crate) hub: Arc<AckHub>,
    /// The configured pipelines, the default one first.
    pub(crate) pipelines: Vec<Arc<PipelineRuntime>>,
    /// Busy / idle / backpressured time per stage.
    pub(crate) clocks: StageClocks,
    /// The memory gate's state.
    pub(crate) gate: watch::Receiver<GateState>,
}
