//! The sink contract: the [`Sink`] trait, the batch and records it is
//! handed ([`SinkBatch`], [`SinkRecord`]), what becomes of them
//! ([`Written`], [`RecordFailure`]) and the sink's own failures
//! ([`SinkError`]).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use sluice_buffer::{BufferedRecord, DeadLetter, SourceId};

use crate::record::EngineRecord;

/// The future a [`Sink`] returns: `T` ([`Written`] for
/// [`write`](Sink::write), `()` for [`commit`](Sink::commit)) or a
/// sink-level failure.
pub type SinkFuture<'a, T = ()> = Pin<Box<dyn Future<Output = Result<T, SinkError>> + Send + 'a>>;

/// What became of the records of a batch [`Sink::write`] took.
///
/// A batch whose every record was written is [`All`](Self::All), which
/// allocates nothing (the common case, and the fast path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Written {
    /// Every record was written.
    #[default]
    All,
    /// Every record was written except these, which the sink refused one
    /// by one (a value it cannot convert, a constraint the record
    /// violates). Each is retried on its own and, past `retry.max_retries`,
    /// dead-lettered with the sink's message; the rest of the batch is
    /// completed once [`commit`](Sink::commit) succeeds. In the order of
    /// the batch, each index at most once.
    Refused(Vec<RecordFailure>),
}

/// One record a sink refused: a record-level failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordFailure {
    /// The record's position in the batch ([`SinkBatch::iter`] order, from 0).
    pub index: usize,
    /// Why, in the sink's words (it becomes the dead letter's `error`).
    pub error: String,
}

/// A sink-level failure: the *sink* failed (database down, disk full,
/// directory gone, connection lost, timeout), not the records. Nothing is
/// charged to the records: the runtime keeps the batch, marks the sink
/// stalled (sources are paused with reason `SINK`), waits with backoff and
/// writes the same batch again until the sink takes it. A record the sink
/// cannot take is reported in [`Written::Refused`] instead.
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
    /// A failure of the service behind the sink (a database unreachable,
    /// refusing the login, lost mid-batch, timing out, without the table),
    /// naming the setting it concerns: `sink.table: relation "x" does not
    /// exist`.
    #[error("{setting}: {message}")]
    Setting {
        /// The setting, as `sink.<key>` (`sink.url`, `sink.password_env`).
        setting: String,
        /// What went wrong, in the service's words where it said.
        message: String,
    },
    /// A failure of the server a sink writes to (connection lost, timeout,
    /// storage full…), with the sink's own typed error as its source.
    #[error("{sink} sink: {source}")]
    Target {
        /// The sink's kind (`nats`).
        sink: &'static str,
        /// The sink's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An outage injected by a test ([`Outage`](super::Outage)).
    #[error("injected sink outage")]
    Injected,
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
/// pipeline, and completes the records only when both succeeded (acks
/// follow a commit only); a sink may let it write the next batches while a
/// commit runs ([`group_commit`](Self::group_commit)). Every record carries `(source, seq)`, an
/// idempotency key: a batch may be written again after a sink-level
/// failure, so a sink that can should use it.
///
/// Two kinds of failure, kept apart:
///
/// - **record-level**: `write` returns `Ok(`[`Written::Refused`]`)` naming
///   the records it refused and why; those go through retries to the
///   dead-letter sink, the rest of the batch is delivered;
/// - **sink-level**: `write` or `commit` returns `Err(`[`SinkError`]`)`:
///   the sink is unavailable. The records are not charged: the runtime
///   waits with backoff and writes the same batch again.
///
/// A sink that returns `Err` after writing part of a batch gets the whole
/// batch again.
///
/// ```
/// use sluice_engine::sink::{RecordFailure, Sink, SinkBatch, SinkFuture, Written};
///
/// /// Refuses empty payloads, one by one.
/// #[derive(Debug)]
/// struct NoEmpty;
///
/// impl Sink for NoEmpty {
///     fn describe(&self) -> String {
///         "no-empty".into()
///     }
///     fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written> {
///         Box::pin(async move {
///             let refused: Vec<RecordFailure> = batch
///                 .iter()
///                 .enumerate()
///                 .filter(|(_, r)| r.record.payload().is_empty())
///                 .map(|(index, _)| RecordFailure { index, error: "empty payload".into() })
///                 .collect();
///             Ok(if refused.is_empty() { Written::All } else { Written::Refused(refused) })
///         })
///     }
///     fn commit(&self) -> SinkFuture<'_> {
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// A short description (kind and target) for `Admin.Stats` and logs.
    fn describe(&self) -> String;
    /// Writes a batch (not necessarily durable yet): which records it
    /// refused, or a sink-level failure.
    fn write<'a>(&'a self, batch: SinkBatch<'a>) -> SinkFuture<'a, Written>;
    /// Makes everything written so far durable; an error is sink-level.
    fn commit(&self) -> SinkFuture<'_>;
    /// Group commit: how many batches the runtime may write while a commit
    /// runs (one commit then covers all of them). `1`, the default: the
    /// runtime writes, commits, writes… in turn.
    ///
    /// A sink returning more promises, and the runtime relies on it:
    ///
    /// - `write` may be called while a `commit` future is pending;
    /// - `commit` covers every batch whose `write` future completed before
    ///   `commit` was *called* (not first polled), and none of its effect
    ///   is lost to a `write` that completes later;
    /// - a batch written and then lost (the file removed, a failed write
    ///   whose error surfaces later) fails the first commit called after
    ///   its `write` completed.
    ///
    /// The runtime then completes (acks) a batch only after a commit called
    /// after its write returned `Ok`; after a failed commit it writes nothing
    /// new until every batch not known to be committed was written again, one
    /// by one (at-least-once: a batch may then be in the output twice).
    fn group_commit(&self) -> usize {
        1
    }
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
