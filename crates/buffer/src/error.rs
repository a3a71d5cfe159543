//! Errors and rejection reasons.

use crate::pending::Pending;
use crate::record::{PipelineId, SourceId, StageId};

/// A level of limits, as named in rejections, snapshots and signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// The process-wide limit.
    Global,
    /// One stage's limit.
    Stage(StageId),
    /// One source's limit.
    Source(SourceId),
}

/// Which dimension of a [`Limit`](crate::Limit) was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// The record count.
    Records,
    /// The byte count.
    Bytes,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Level::Global => f.write_str("global"),
            Level::Stage(s) => write!(f, "stage {s}"),
            Level::Source(s) => write!(f, "source {s}"),
        }
    }
}

impl std::fmt::Display for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Unit::Records => "records",
            Unit::Bytes => "bytes",
        })
    }
}

/// Why records of an admission were not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// A level is full: retry once capacity frees up.
    #[error("{level} {unit} limit reached ({used} of {limit} in use)")]
    Limit {
        /// The level that is full.
        level: Level,
        /// The dimension that is full.
        unit: Unit,
        /// The limit of that level and unit.
        limit: u64,
        /// What was in use (reservations included) when the record was refused.
        used: u64,
    },
    /// The record is larger than a byte limit: it can never be admitted.
    #[error("record of {size} bytes exceeds the {level} byte limit of {limit}")]
    TooLarge {
        /// The level whose byte limit is smaller than the record.
        level: Level,
        /// The record's size.
        size: u64,
        /// That limit.
        limit: u64,
    },
}

impl RejectReason {
    /// True when retrying later can succeed (a full level), false when it never can.
    pub fn is_transient(&self) -> bool {
        matches!(self, RejectReason::Limit { .. })
    }
}

/// Errors of [`BufferManager`](crate::BufferManager) operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BufferError {
    /// The manager was shut down; nothing more is admitted or moved.
    #[error("the buffer is shut down")]
    Closed,
    /// A source id that this manager did not hand out.
    #[error("unknown source id {0}")]
    UnknownSource(SourceId),
    /// A stage id that this manager does not have.
    #[error("unknown stage id {0}")]
    UnknownStage(StageId),
    /// A pipeline id that this manager does not have.
    #[error("unknown pipeline id {0}")]
    UnknownPipeline(PipelineId),
    /// A source name was registered again for a different pipeline.
    #[error("source {name:?} is registered for pipeline {registered}, not {requested}")]
    PipelineMismatch {
        /// The source's name.
        name: String,
        /// The pipeline it was first registered with.
        registered: PipelineId,
        /// The pipeline asked for now.
        requested: PipelineId,
    },
    /// Sequence numbers must be contiguous per source: this batch leaves a gap.
    #[error("sequence gap for source {source_id}: expected seq {expected}, got {got}")]
    SequenceGap {
        /// The source.
        source_id: SourceId,
        /// The next sequence number the manager expects.
        expected: u64,
        /// The first sequence number of the batch.
        got: u64,
    },
    /// Sequence numbers start at 1.
    #[error("sequence numbers start at 1; got 0")]
    ZeroSequence,
    /// The batch's sequence numbers would pass `u64::MAX`.
    #[error("sequence numbers overflow u64 (first {first}, {count} records)")]
    SequenceOverflow {
        /// The first sequence number of the batch.
        first: u64,
        /// Its length.
        count: usize,
    },
    /// The record is to be moved to a stage of another pipeline.
    #[error("stage {stage} is not in pipeline {pipeline}")]
    WrongPipeline {
        /// The target stage.
        stage: StageId,
        /// The record's pipeline.
        pipeline: PipelineId,
    },
}

/// Errors building a [`BufferManager`](crate::BufferManager).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A limit of zero records or bytes admits nothing.
    #[error("the {0} limit is zero")]
    ZeroLimit(&'static str),
    /// A per-stage or per-source limit above the global one can never be reached.
    #[error("the {0} limit exceeds the global limit")]
    AboveGlobal(&'static str),
    /// The retry policy is out of range (see [`RetryPolicy::validate`](crate::RetryPolicy::validate)).
    #[error("invalid retry policy: {0}")]
    Retry(String),
    /// Two pipelines share a name.
    #[error("duplicate pipeline name {0:?}")]
    DuplicatePipeline(String),
    /// A pipeline with no stage has nowhere to put records.
    #[error("pipeline {0:?} has no stage")]
    EmptyPipeline(String),
    /// [`channel`](crate::BufferManagerBuilder::channel) builds one pipeline
    /// of one stage; this builder has more.
    #[error("a channel has one pipeline with one stage; build the manager and make its handles")]
    NotAChannel,
}

/// A [`BufferManager::admit`](crate::BufferManager::admit) that took nothing:
/// why, and every record handed in, back in the layout they were handed in
/// or laid out in (like tokio's `SendError<T>`). Nothing of the batch was
/// admitted or counted.
///
/// It converts into its [`BufferError`] (so `?` works where the records are
/// not needed).
#[derive(thiserror::Error)]
#[error("{error}")]
pub struct AdmitError<T> {
    /// Why nothing was admitted.
    pub error: BufferError,
    /// The records, all of them.
    pub records: Pending<T>,
}

impl<T> AdmitError<T> {
    /// The records back, as payloads.
    pub fn into_payloads(self) -> Vec<T> {
        self.records.into_payloads()
    }
}

impl<T> std::fmt::Debug for AdmitError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmitError")
            .field("error", &self.error)
            .field("records", &self.records.len())
            .finish()
    }
}

impl<T> From<AdmitError<T>> for BufferError {
    fn from(e: AdmitError<T>) -> Self {
        e.error
    }
}
