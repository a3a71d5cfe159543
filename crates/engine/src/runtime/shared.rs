//! [`Runtime`]: the running pipelines and what they share.

use std::sync::Arc;

use sluice_buffer::{BackpressureController, GateState};
use tokio::sync::watch;

use super::acks::AckHub;
use super::pipeline::{Buffer, PipelineRuntime};
use super::timing::StageClocks;
use crate::record::EngineRecord;
use crate::record_memory::RecordMemory;

/// The running pipelines and what they share: the buffer, flow control, the
/// ack progress, each stage's clock. Built once by the server; ingest feeds
/// it, `Admin` and `/metrics` read it.
#[derive(Debug)]
pub(crate) struct Runtime {
    /// The buffer manager.
    pub(crate) buffer: Arc<Buffer>,
    /// Flow control over the buffer.
    pub(crate) controller: Arc<BackpressureController<EngineRecord>>,
    /// Completion progress per source.
    pub(crate) hub: Arc<AckHub>,
    /// The configured pipelines, the default one first.
    pub(crate) pipelines: Vec<Arc<PipelineRuntime>>,
    /// Busy / idle / backpressured time per stage.
    pub(crate) clocks: StageClocks,
    /// The memory gate's state.
    pub(crate) gate: watch::Receiver<GateState>,
    /// The memory behind records' bytes (batch copies still referenced).
    pub(crate) record_memory: Arc<RecordMemory>,
}
