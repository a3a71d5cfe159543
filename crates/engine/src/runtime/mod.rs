//! The pipeline runtime: stage workers that move records from admission to
//! the sink, the ack progress they publish, and their timing.
//!
//! - `pipeline`: a pipeline as the runtime runs it, and its stages' work;
//! - `shared`: [`Runtime`](self), what every part shares;
//! - `worker`: one task per stage (transform or sink), described below;
//! - `acks`: the [`AckHub`], per-source completion progress the ingest
//!   sessions turn into `Ack`s;
//! - `health`: whether each sink is stalled, and its failure counters;
//! - `timing`: busy / idle / backpressured time per stage and its rates.
//!
//! Each configured pipeline becomes one [`BufferManager`](sluice_buffer::BufferManager) pipeline with one
//! stage per configured transform stage **plus a final stage named `sink`**
//! whose worker writes to the sink. (A separate sink stage, rather than
//! writing from the last transform's worker, gives the sink its own queue,
//! limit and metrics, so a slow sink shows up as a full `sink` stage and
//! slows the stages before it.) One worker task runs per stage.
//!
//! A worker loop: take a batch ([`BatchSettings`](sluice_config::BatchSettings): at most `max_records`
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
//!   [`BufferManager::retry_each`](sluice_buffer::BufferManager::retry_each);
//! - the sink stage writes the batch and commits it, then completes it.
//!   Records the sink refused one by one (record-level failures,
//!   [`Written::Refused`](crate::sink::Written)) are returned with
//!   `retry_each`, with the sink's message, and the rest of the batch is
//!   completed. A sink-level failure ([`SinkError`](crate::sink::SinkError))
//!   charges nothing to the records: the stage keeps the batch, marks the
//!   sink stalled (its `SinkHealth`, and
//!   `BackpressureController::set_stage_stalled`, which pauses the
//!   pipeline's sources with reason `Sink`), waits with the retry policy's
//!   backoff and writes the same batch again until the sink takes it; one
//!   WARN when the stall begins, one INFO when it ends. With a sink whose
//!   [`group_commit`](crate::sink::Sink::group_commit) is above 1 (the file
//!   sink), the stage writes the next batches while a commit runs and one
//!   commit covers them all; each batch is still completed only after a
//!   commit covering it returned (`worker/group_commit.rs`).
//!
//! Records past `retry.max_retries` come back as dead letters: they are
//! written to the pipeline's dead-letter sink, then completed as
//! dead-lettered. The dead-letter sink's own sink-level failure stalls the
//! stage the same way (until it succeeds or the engine stops). Every
//! completion is published to the [`AckHub`]. Workers stop when the buffer
//! manager shuts down.

mod acks;
mod health;
mod pipeline;
mod shared;
mod timing;
mod worker;

pub use acks::{AckHub, AckProgress, MAX_ACK_RANGES};
pub(crate) use health::HealthView;
pub(crate) use pipeline::{Buffer, PipelineRuntime, SINK_STAGE, StageWork};
pub(crate) use shared::Runtime;
pub(crate) use timing::StageClocks;
pub use timing::StageRates;
pub(crate) use worker::{WorkerEnv, spawn_workers};
