//! [`Batch`]: records a [`Consumer`](crate::Consumer) took, in the layout
//! they were queued in, and [`RecordRef`], one of them.

use std::time::Instant;

use crate::layout::{Layout, charged};
use crate::manager::{Credit, Run};
use crate::pending::PendingRecord;
use crate::queue::Taken;
use crate::record::{BufferedRecord, PipelineId, RetryState, SourceId, StageId, record_accessors};

/// Records taken from one stage by [`Consumer::recv`](crate::Consumer::recv),
/// counted against every limit until they are handed to
/// [`Consumer::complete`](crate::Consumer::complete) (or
/// [`retry`](crate::Consumer::retry)).
///
/// A batch a producer sent as a `Vec<T>` and the consumer took whole is
/// the producer's `Vec` itself, numbered by its first record: receiving
/// and completing it reads and writes no record (why: BENCHMARKS.md,
/// "sluice-buffer through the handles"). Other batches (several small
/// batches merged, retried records, records built into a [`Pending`](crate::Pending))
/// hold [`BufferedRecord`]s. Either way [`iter`](Self::iter) shows each
/// record with its bookkeeping.
///
/// The payloads are read-only here, since a record's charge was fixed at
/// admission: to rewrite them, or to retry some records and complete
/// others, take the batch apart with [`into_records`](Self::into_records)
/// (and complete or retry those; a `Vec<BufferedRecord<T>>` converts back
/// into a `Batch`).
///
/// ```
/// use sluice_buffer::Limits;
///
/// let (producers, consumer) = sluice_buffer::channel::<String>(Limits::records(100))?;
/// let mut app = producers.producer("app")?;
/// app.try_send(vec!["a".to_string(), "bc".to_string()])?;
/// let batch = consumer.try_recv()?;
/// assert_eq!((batch.len(), batch.bytes()), (2, 3));
/// let seen: Vec<(u64, &str)> = batch.iter().map(|r| (r.seq(), r.payload.as_str())).collect();
/// assert_eq!(seen, [(1, "a"), (2, "bc")]);
/// let done = consumer.complete(batch);
/// assert_eq!(done.sources[0].acked_through, 2);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Batch<T>(Form<T>);

#[derive(Debug)]
enum Form<T> {
    /// One chunk as its producer sent it: record `i` is `payloads[i]`,
    /// numbered `at.first_seq + i`, charged `size_of(payloads[i])`, and
    /// `bytes` in all.
    Run {
        payloads: Vec<T>,
        size_of: fn(&T) -> usize,
        at: PendingRecord,
        bytes: u64,
    },
    /// Records laid out, their bookkeeping written.
    Records(Vec<BufferedRecord<T>>),
}

impl<T> Batch<T> {
    /// The batch a take produced, its bookkeeping written here (after the
    /// lock) unless it is one chunk as its producer sent it.
    pub(crate) fn from_taken(taken: Taken<T>) -> Self {
        let bytes = taken.bytes;
        match taken.into_layout() {
            Layout::Payloads {
                payloads,
                size_of,
                at,
            } => Batch(Form::Run {
                payloads,
                size_of,
                at,
                bytes,
            }),
            records @ Layout::Records { .. } => Batch(Form::Records(records.into_records())),
        }
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        match &self.0 {
            Form::Run { payloads, .. } => payloads.len(),
            Form::Records(r) => r.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes its records are charged for, in all.
    pub fn bytes(&self) -> u64 {
        match &self.0 {
            Form::Run { bytes, .. } => *bytes,
            Form::Records(r) => r.iter().map(BufferedRecord::size).sum(),
        }
    }

    /// The records, in order, each with its bookkeeping.
    pub fn iter(&self) -> BatchIter<'_, T> {
        BatchIter(match &self.0 {
            Form::Run {
                payloads,
                size_of,
                at,
                ..
            } => IterForm::Run {
                payloads: payloads.iter().enumerate(),
                size_of: *size_of,
                at: *at,
            },
            Form::Records(r) => IterForm::Records(r.iter()),
        })
    }

    /// The payloads, in order.
    pub fn payloads(&self) -> impl Iterator<Item = &T> + '_ {
        self.iter().map(|r| r.payload)
    }

    /// The records, laid out one by one (each payload with its own
    /// bookkeeping): to rewrite payloads, or to complete and retry
    /// records apart. Hand them back as they are, or any part of them,
    /// to [`Consumer::complete`](crate::Consumer::complete) or
    /// [`Consumer::retry`](crate::Consumer::retry).
    pub fn into_records(self) -> Vec<BufferedRecord<T>> {
        match self.0 {
            Form::Run {
                payloads,
                size_of,
                at,
                ..
            } => Layout::Payloads {
                payloads,
                size_of,
                at,
            }
            .into_records(),
            Form::Records(r) => r,
        }
    }

    /// The batch as one completed run (a producer's chunk: its payloads
    /// dropped here, outside the lock), or its records to coalesce.
    pub(crate) fn into_run(self) -> Result<Run, Vec<BufferedRecord<T>>> {
        match self.0 {
            Form::Run {
                payloads,
                at,
                bytes,
                ..
            } if !payloads.is_empty() => {
                let n = payloads.len() as u64;
                drop(payloads);
                Ok(Run {
                    source: at.source,
                    stage: at.stage,
                    start: at.first_seq,
                    // Its numbers were checked not to pass u64::MAX at
                    // admission.
                    end: at.first_seq + (n - 1),
                    used: Credit::new(n, bytes),
                })
            }
            Form::Run { .. } => Err(Vec::new()),
            Form::Records(r) => Err(r),
        }
    }
}

impl<'a, T> IntoIterator for &'a Batch<T> {
    type Item = RecordRef<'a, T>;
    type IntoIter = BatchIter<'a, T>;

    fn into_iter(self) -> BatchIter<'a, T> {
        self.iter()
    }
}

/// The records of a [`Batch`], in order ([`Batch::iter`]).
#[derive(Debug)]
pub struct BatchIter<'a, T>(IterForm<'a, T>);

#[derive(Debug)]
enum IterForm<'a, T> {
    Run {
        payloads: std::iter::Enumerate<std::slice::Iter<'a, T>>,
        size_of: fn(&T) -> usize,
        at: PendingRecord,
    },
    Records(std::slice::Iter<'a, BufferedRecord<T>>),
}

impl<'a, T> Iterator for BatchIter<'a, T> {
    type Item = RecordRef<'a, T>;

    fn next(&mut self) -> Option<RecordRef<'a, T>> {
        match &mut self.0 {
            IterForm::Run {
                payloads,
                size_of,
                at,
            } => payloads.next().map(|(i, payload)| RecordRef {
                payload,
                seq: at.first_seq + i as u64,
                source: at.source,
                pipeline: at.pipeline,
                stage: at.stage,
                size: charged(size_of(payload)),
                buffered_at: at.now,
                retry: None,
            }),
            IterForm::Records(records) => records.next().map(|r| RecordRef {
                payload: &r.payload,
                seq: r.seq,
                source: r.source,
                pipeline: r.pipeline,
                stage: r.stage,
                size: r.size,
                buffered_at: r.buffered_at,
                retry: r.retry.as_deref(),
            }),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            IterForm::Run { payloads, .. } => payloads.size_hint(),
            IterForm::Records(r) => r.size_hint(),
        }
    }
}

impl<T> ExactSizeIterator for BatchIter<'_, T> {}

impl<T> Default for Batch<T> {
    /// An empty batch (completing it does nothing).
    fn default() -> Self {
        Batch(Form::Records(Vec::new()))
    }
}

impl<T> From<Vec<BufferedRecord<T>>> for Batch<T> {
    /// Records taken apart ([`Batch::into_records`]), or taken by the
    /// lower-level calls, as a batch to complete or retry.
    fn from(records: Vec<BufferedRecord<T>>) -> Self {
        Batch(Form::Records(records))
    }
}

impl<T> From<Batch<T>> for Vec<BufferedRecord<T>> {
    /// [`Batch::into_records`].
    fn from(batch: Batch<T>) -> Self {
        batch.into_records()
    }
}

/// One record of a [`Batch`]: its payload and bookkeeping, as a
/// [`BufferedRecord`] has them.
#[derive(Debug)]
pub struct RecordRef<'a, T> {
    /// The record's data.
    pub payload: &'a T,
    seq: u64,
    source: SourceId,
    pipeline: PipelineId,
    stage: StageId,
    size: u32,
    buffered_at: Instant,
    retry: Option<&'a RetryState>,
}

impl<T> RecordRef<'_, T> {
    record_accessors!();
}
