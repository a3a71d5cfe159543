//! The sink contract: the [`Sink`] trait, the batch and records it is
//! handed ([`SinkBatch`], [`SinkRecord`]), its errors.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use sluice_buffer::{BufferedRecord, DeadLetter, SourceId};

use crate::record::EngineRecord;

/// The future a [`Sink`] returns.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Why a sink failed. The runtime retries the batch with backoff and, past
/// `retry.max_retries`, dead-letters its records.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// An I/O error, with the file it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An I/O error on standard output.
    #[error("stdout: {0}")]
    Stdout(std::io::Error),
    /// A failure injected by the `fail_rate` test knob.
    #[error("injected sink failure (fail_rate {0})")]
    Injected(f64),
    /// Any other failure (custom sinks).
    #[error("{0}")]
    Other(String),
}

/// What a dead letter carries besides the record.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterInfo<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The stage where the record failed for the last time.
    pub stage: &'a str,
    /// The error of that failure.
    pub error: &'a str,
    /// How many retries it had.
    pub retries: u32,
}

/// One record handed to a sink.
#[derive(Debug, Clone, Copy)]
pub struct SinkRecord<'a> {
    /// The source's id (`Open.source_id`).
    pub source: &'a str,
    /// The record's sequence number; with `source`, an idempotency key.
    pub seq: u64,
    /// The record.
    pub record: &'a EngineRecord,
    /// Set for records written to a dead-letter sink.
    pub dead_letter: Option<DeadLetterInfo<'a>>,
}

/// A destination for records. Object-safe (`Arc<dyn Sink>`).
///
/// The runtime calls `write` then `commit` for each batch, from one task per
/// pipeline, and completes the records only when both succeeded.
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// A short description (kind and target) for `Admin.Stats` and logs.
    fn describe(&self) -> String;
    /// Writes a batch (not necessarily durable yet).
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a>;
    /// Makes everything written so far durable.
    fn commit(&self) -> SinkFuture<'_>;
}

/// The batch a [`Sink`] writes: its records in order, each made into a
/// [`SinkRecord`] as it is read.
///
/// Why not a slice of `SinkRecord`s: the runtime holds a batch as the parts
/// the buffer handed out, and building a `SinkRecord` for every record up
/// front cost every sink a pass and an allocation per batch, also sinks
/// that read no record (`null`, BENCHMARKS.md). A slice still converts:
///
/// ```
/// use sluice_engine::record::EngineRecord;
/// use sluice_engine::sink::{SinkBatch, SinkRecord};
///
/// let record = EngineRecord::from_payload(&b"{}"[..]);
/// let records = [SinkRecord { source: "app", seq: 1, record: &record, dead_letter: None }];
/// let batch = SinkBatch::from(&records[..]);
/// assert_eq!(batch.len(), 1);
/// assert_eq!(batch.iter().next().unwrap().seq, 1);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SinkBatch<'a>(Inner<'a>);

#[derive(Debug, Clone, Copy)]
enum Inner<'a> {
    /// Ready-made records.
    Records(&'a [SinkRecord<'a>]),
    /// Records as the buffer handed them out.
    Parts {
        parts: &'a [Vec<BufferedRecord<EngineRecord>>],
        names: &'a SourceNames,
    },
    /// Dead letters, with the name of the stage each failed at.
    Dead {
        dead: &'a [DeadLetter<EngineRecord>],
        stages: &'a [Arc<str>],
        names: &'a SourceNames,
        pipeline: &'a str,
    },
}

impl<'a> SinkBatch<'a> {
    /// A batch of the records in `parts`, in order.
    pub(crate) fn parts(
        parts: &'a [Vec<BufferedRecord<EngineRecord>>],
        names: &'a SourceNames,
    ) -> Self {
        Self(Inner::Parts { parts, names })
    }

    /// A batch of dead letters of `pipeline`; `stages[i]` names the stage
    /// where `dead[i]` failed.
    pub(crate) fn dead_letters(
        dead: &'a [DeadLetter<EngineRecord>],
        stages: &'a [Arc<str>],
        names: &'a SourceNames,
        pipeline: &'a str,
    ) -> Self {
        Self(Inner::Dead {
            dead,
            stages,
            names,
            pipeline,
        })
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        match self.0 {
            Inner::Records(records) => records.len(),
            Inner::Parts { parts, .. } => parts.iter().map(Vec::len).sum(),
            Inner::Dead { dead, .. } => dead.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records, in order.
    pub fn iter(&self) -> impl Iterator<Item = SinkRecord<'a>> + 'a {
        match self.0 {
            Inner::Records(records) => Iter::Records(records.iter()),
            Inner::Parts { parts, names } => Iter::Parts(parts.iter().flatten(), names),
            Inner::Dead {
                dead,
                stages,
                names,
                pipeline,
            } => Iter::Dead(dead.iter().zip(stages), names, pipeline),
        }
    }
}

/// [`SinkBatch::iter`].
enum Iter<'a> {
    Records(std::slice::Iter<'a, SinkRecord<'a>>),
    Parts(
        std::iter::Flatten<std::slice::Iter<'a, Vec<BufferedRecord<EngineRecord>>>>,
        &'a SourceNames,
    ),
    Dead(
        std::iter::Zip<
            std::slice::Iter<'a, DeadLetter<EngineRecord>>,
            std::slice::Iter<'a, Arc<str>>,
        >,
        &'a SourceNames,
        &'a str,
    ),
}

impl<'a> Iterator for Iter<'a> {
    type Item = SinkRecord<'a>;

    fn next(&mut self) -> Option<SinkRecord<'a>> {
        match self {
            Iter::Records(records) => records.next().copied(),
            Iter::Parts(records, names) => records.next().map(|r| SinkRecord {
                source: names.get(r.source()),
                seq: r.seq(),
                record: &r.payload,
                dead_letter: None,
            }),
            Iter::Dead(dead, names, pipeline) => dead.next().map(|(d, stage)| SinkRecord {
                source: names.get(d.record.source()),
                seq: d.record.seq(),
                record: &d.record.payload,
                dead_letter: Some(DeadLetterInfo {
                    pipeline,
                    stage,
                    error: &d.error,
                    retries: d.retries(),
                }),
            }),
        }
    }
}

impl<'a> From<&'a [SinkRecord<'a>]> for SinkBatch<'a> {
    fn from(records: &'a [SinkRecord<'a>]) -> Self {
        Self(Inner::Records(records))
    }
}

/// The names of a batch's sources (a handful), looked up once per batch.
#[derive(Debug)]
pub(crate) struct SourceNames(pub(crate) Vec<(SourceId, Arc<str>)>);

impl SourceNames {
    /// The name of `id`, which should be one of the looked-up sources.
    pub(crate) fn get(&self, id: SourceId) -> &str {
        self.0
            .iter()
            .find(|(s, _)| *s == id)
            .map_or("?", |(_, name)| name)
    }
}
