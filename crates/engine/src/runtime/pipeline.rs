//! A pipeline as the runtime runs it: its stages, what each does, its sinks.

use std::sync::Arc;

use sluice_buffer::{BufferManager, PipelineId, StageId};
use sluice_config::BatchSettings;

use super::health::SinkHealth;
use crate::record::EngineRecord;
use crate::sink::Sink;
use crate::transform::Transform;

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
    /// The sink's health (stalls, failures).
    pub(crate) sink_health: Arc<SinkHealth>,
    /// The dead-letter sink's health.
    pub(crate) dead_letter_health: Arc<SinkHealth>,
    /// The work of each stage, in order (the last one is the sink stage).
    pub(crate) stages: Vec<(StageId, StageWork)>,
    /// Batching.
    pub(crate) batch: BatchSettings,
}
