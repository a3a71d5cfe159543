//! Records on their way into `admit`, possibly already in the buffer's
//! record layout.

use std::time::Instant;

use crate::record::{BufferedRecord, ByteSize, PipelineId, SourceId, StageId};

/// Payloads on their way into [`BufferManager::admit`](crate::BufferManager::admit):
/// a `Vec<T>` as it is, or a batch built straight into the layout the
/// stage queues keep records in.
///
/// Why it exists: a queued record is a [`BufferedRecord`], the payload plus
/// the buffer's bookkeeping. Admitting a `Vec<T>` writes every record once
/// more, into a new allocation. A receiver that builds its payloads straight
/// into a `Pending` (one [`push`](Self::push) per decoded record, into a
/// `Pending` made [`with_capacity`](Self::with_capacity)) has them admitted
/// in place: `admit` queues the allocation as it is, and the bookkeeping is
/// written when a consumer takes the records, outside the lock. The
/// engine's gRPC decoder does this (see BENCHMARKS.md).
///
/// A `Vec<T>` converts into a `Pending` for free and is laid out by `admit`
/// in one pass, so `admit` takes either. The charged size of each payload
/// ([`ByteSize`]) is taken at `push`, or at admission for a `Vec`.
///
/// A payload type that does not implement [`ByteSize`] (a type of another
/// crate, which a newtype would otherwise have to wrap) is sized by the
/// caller: [`push_sized`](Self::push_sized) with its size, or
/// [`from_vec_sized`](Self::from_vec_sized) with a sizing function.
///
/// ```
/// use sluice_buffer::Pending;
/// // std::net::SocketAddr does not implement ByteSize: size it here.
/// let addr: std::net::SocketAddr = "127.0.0.1:80".parse().unwrap();
/// let mut batch = Pending::with_capacity(2);
/// batch.push_sized(addr, 16);
/// assert_eq!(batch.bytes(), 16);
/// let batch = Pending::from_vec_sized(vec![addr, addr], |_| 16);
/// assert_eq!((batch.len(), batch.bytes()), (2, 32));
/// ```
///
/// ```
/// use sluice_buffer::{BufferManager, Limits, Pending};
///
/// let buffer = BufferManager::<String>::builder(Limits::default())
///     .pipeline("logs", ["sink"])
///     .build()
///     .unwrap();
/// let logs = buffer.pipeline_by_name("logs").unwrap().id;
/// let app = buffer.register_source("app", logs).unwrap();
///
/// let mut batch = Pending::with_capacity(2);
/// batch.push("a".to_string());
/// batch.push("bc".to_string());
/// assert_eq!(batch.sizes().sum::<u64>(), 3);
/// let out = buffer.admit(app, 1, batch).unwrap();
/// assert_eq!((out.admitted, out.admitted_bytes), (2, 3));
/// let out = buffer.admit(app, 3, vec!["def".to_string()]).unwrap();
/// assert_eq!((out.admitted, out.admitted_bytes), (1, 3));
/// ```
#[derive(Debug)]
pub struct Pending<T>(Kind<T>);

#[derive(Debug)]
enum Kind<T> {
    /// Payloads as handed in, with the function that sizes each; laid out
    /// at admission.
    Payloads(Vec<T>, fn(&T) -> usize),
    /// Records in the queues' layout. Bookkeeping other than `payload` and
    /// `size` is a placeholder until `admit` fills it in; a `Pending` never
    /// hands its records out, so no placeholder is ever seen.
    Records {
        records: Vec<BufferedRecord<T>>,
        /// The sum of the records' sizes, kept as they are pushed, so that
        /// admission can check a whole batch against a reservation at once.
        bytes: u64,
        /// The largest record's size.
        largest: u32,
        /// The placeholder admission time.
        created: Instant,
    },
}

/// Where and when admitted records enter: the bookkeeping `admit` fills in
/// (record `i` of a batch gets `first_seq + i`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingRecord {
    pub(crate) first_seq: u64,
    pub(crate) source: SourceId,
    pub(crate) pipeline: PipelineId,
    pub(crate) stage: StageId,
    pub(crate) now: Instant,
}

impl PendingRecord {
    /// The bookkeeping of the records from the `at`-th on.
    pub(crate) fn from(self, at: usize) -> Self {
        Self {
            first_seq: self.first_seq + at as u64,
            ..self
        }
    }

    /// Writes the bookkeeping into `records`, numbered from `first_seq`.
    #[inline]
    pub(crate) fn apply<T>(&self, records: &mut [BufferedRecord<T>]) {
        for (i, r) in records.iter_mut().enumerate() {
            r.seq = self.first_seq + i as u64;
            r.source = self.source;
            r.pipeline = self.pipeline;
            r.stage = self.stage;
            r.buffered_at = self.now;
        }
    }
}

/// Admitted records in the queues' layout, with their totals.
pub(crate) struct Laid<T> {
    pub(crate) records: Vec<BufferedRecord<T>>,
    /// The sum of their sizes.
    pub(crate) bytes: u64,
    /// The largest size.
    pub(crate) largest: u64,
    /// The bookkeeping still to write into `records` (`None`: written).
    /// Why deferred: a built batch is queued as it is, and its bookkeeping
    /// is written when a consumer takes it, outside the lock, on the core
    /// that reads the records next; written at admission, every record was
    /// touched on the producer's core and again on the consumer's
    /// (`lay_out` was 37 % of the workers' time, BENCHMARKS.md).
    pub(crate) fill: Option<PendingRecord>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<T> Pending<T> {
    /// An empty batch with room for `n` records.
    pub fn with_capacity(n: usize) -> Self {
        Self(Kind::empty(n))
    }

    /// Appends a payload, taking its charged size ([`ByteSize`]) now.
    #[inline]
    pub fn push(&mut self, payload: T)
    where
        T: ByteSize,
    {
        let size = payload.byte_size();
        self.push_sized(payload, size);
    }

    /// Appends a payload charged `size` bytes: for a payload type without a
    /// [`ByteSize`] implementation, or a size the caller knows better.
    #[inline]
    pub fn push_sized(&mut self, payload: T, size: usize) {
        match &mut self.0 {
            // Appending to a converted `Vec`: lay it out first (rare).
            Kind::Payloads(..) => {
                let Kind::Payloads(payloads, size_of) =
                    std::mem::replace(&mut self.0, Kind::empty(0))
                else {
                    return;
                };
                let mut laid = Self::with_capacity(payloads.len() + 1);
                for p in payloads {
                    let size = size_of(&p);
                    laid.push_sized(p, size);
                }
                *self = laid;
                self.push_sized(payload, size);
            }
            Kind::Records {
                records,
                bytes,
                largest,
                created,
            } => {
                let size = charged(size);
                *bytes += u64::from(size);
                *largest = (*largest).max(size);
                records.push(placeholder(payload, size, *created));
            }
        }
    }

    /// A batch of `payloads` charged `size_of(payload)` bytes each: the
    /// `Vec` form of [`push_sized`](Self::push_sized), laid out at admission
    /// in one pass like a `Vec` of [`ByteSize`] payloads.
    pub fn from_vec_sized(payloads: Vec<T>, size_of: fn(&T) -> usize) -> Self {
        Self(Kind::Payloads(payloads, size_of))
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        match &self.0 {
            Kind::Payloads(p, _) => p.len(),
            Kind::Records { records, .. } => records.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for at least `additional` more records.
    pub fn reserve(&mut self, additional: usize) {
        match &mut self.0 {
            Kind::Payloads(p, _) => p.reserve(additional),
            Kind::Records { records, .. } => records.reserve(additional),
        }
    }

    /// How many records fit without reallocating.
    pub fn capacity(&self) -> usize {
        match &self.0 {
            Kind::Payloads(p, _) => p.capacity(),
            Kind::Records { records, .. } => records.capacity(),
        }
    }

    /// Keeps the first `n` records and drops the rest.
    pub fn truncate(&mut self, n: usize) {
        match &mut self.0 {
            Kind::Payloads(p, _) => p.truncate(n),
            Kind::Records {
                records,
                bytes,
                largest,
                ..
            } => {
                if n < records.len() {
                    records.truncate(n);
                    *bytes = records.iter().map(|r| u64::from(r.size)).sum();
                    *largest = records.iter().map(|r| r.size).max().unwrap_or(0);
                }
            }
        }
    }

    /// The payloads, in order.
    pub fn payloads(&self) -> impl Iterator<Item = &T> {
        let (payloads, records) = self.forms();
        payloads.iter().chain(records.iter().map(|r| &r.payload))
    }

    /// The payloads, in order, to rewrite in place (a payload's charge
    /// stays the size it was pushed with; the engine moves a record's bytes
    /// into an allocation of its own this way).
    pub fn payloads_mut(&mut self) -> impl Iterator<Item = &mut T> {
        let (payloads, records): (&mut [T], &mut [BufferedRecord<T>]) = match &mut self.0 {
            Kind::Payloads(p, _) => (p, &mut []),
            Kind::Records { records, .. } => (&mut [], records),
        };
        payloads
            .iter_mut()
            .chain(records.iter_mut().map(|r| &mut r.payload))
    }

    /// The charged size of each record, in order (`u32::MAX` for a payload
    /// of 4 GiB or more).
    pub fn sizes(&self) -> impl Iterator<Item = u64> + '_ {
        let (payloads, records) = self.forms();
        let size_of = match &self.0 {
            Kind::Payloads(_, f) => *f,
            Kind::Records { .. } => |_: &T| 0,
        };
        payloads
            .iter()
            .map(move |p| u64::from(charged(size_of(p))))
            .chain(records.iter().map(|r| u64::from(r.size)))
    }

    /// The records as payloads or as laid-out records: one of the two is
    /// empty.
    fn forms(&self) -> (&[T], &[BufferedRecord<T>]) {
        match &self.0 {
            Kind::Payloads(p, _) => (p, &[]),
            Kind::Records { records, .. } => (&[], records),
        }
    }

    /// The sum of the records' charged sizes.
    pub fn bytes(&self) -> u64 {
        match &self.0 {
            Kind::Payloads(..) => self.sizes().sum(),
            Kind::Records { bytes, .. } => *bytes,
        }
    }

    /// The largest record's charged size (0 when empty).
    pub fn largest(&self) -> u64 {
        match &self.0 {
            Kind::Payloads(..) => self.sizes().max().unwrap_or(0),
            Kind::Records { largest, .. } => u64::from(*largest),
        }
    }

    /// Takes the payloads back out.
    pub fn into_payloads(self) -> Vec<T> {
        match self.0 {
            Kind::Payloads(p, _) => p,
            Kind::Records { records, .. } => records.into_iter().map(|r| r.payload).collect(),
        }
    }

    /// Records laid out earlier (a refused tail, a batch `admit` could not
    /// take), back as a batch in the same layout: no copy, and the next
    /// attempt admits them in place again.
    pub(crate) fn from_laid(records: Vec<BufferedRecord<T>>) -> Self {
        let (mut bytes, mut largest) = (0u64, 0u32);
        for r in &records {
            bytes += u64::from(r.size);
            largest = largest.max(r.size);
        }
        Self(Kind::Records {
            records,
            bytes,
            largest,
            created: Instant::now(),
        })
    }

    /// The records in the queues' layout: a `Vec<T>` laid out in one pass
    /// with its bookkeeping from `entry`, a built batch as it is, its
    /// bookkeeping (`Laid::fill`) left to write when it is taken.
    pub(crate) fn lay_out(self, entry: &PendingRecord) -> Laid<T> {
        match self.0 {
            Kind::Payloads(payloads, size_of) => {
                let (mut bytes, mut largest) = (0u64, 0u32);
                // One pass: each record written once, bookkeeping included.
                let records: Vec<_> = payloads
                    .into_iter()
                    .enumerate()
                    .map(|(i, payload)| {
                        let size = charged(size_of(&payload));
                        bytes += u64::from(size);
                        largest = largest.max(size);
                        BufferedRecord {
                            payload,
                            seq: entry.first_seq + i as u64,
                            source: entry.source,
                            pipeline: entry.pipeline,
                            stage: entry.stage,
                            size,
                            buffered_at: entry.now,
                            retry: None,
                        }
                    })
                    .collect();
                Laid {
                    records,
                    bytes,
                    largest: u64::from(largest),
                    fill: None,
                }
            }
            Kind::Records {
                records,
                bytes,
                largest,
                ..
            } => Laid {
                records,
                bytes,
                largest: u64::from(largest),
                fill: Some(*entry),
            },
        }
    }
}

impl<T: ByteSize> Extend<T> for Pending<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        let iter = iter.into_iter();
        self.reserve(iter.size_hint().0);
        for payload in iter {
            self.push(payload);
        }
    }
}

impl<T: ByteSize> FromIterator<T> for Pending<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut pending = Self::with_capacity(0);
        pending.extend(iter);
        pending
    }
}

impl<T: ByteSize> From<Vec<T>> for Pending<T> {
    fn from(payloads: Vec<T>) -> Self {
        Self::from_vec_sized(payloads, T::byte_size)
    }
}

impl<T> Kind<T> {
    fn empty(n: usize) -> Self {
        Kind::Records {
            records: Vec::with_capacity(n),
            bytes: 0,
            largest: 0,
            created: Instant::now(),
        }
    }
}

/// The size a payload is charged for; u32::MAX stands for "this size or
/// more" (4 GiB: larger than any byte limit can take, so refused `TooLarge`).
#[inline]
fn charged(size: usize) -> u32 {
    u32::try_from(size).unwrap_or(u32::MAX)
}

/// A record whose bookkeeping (but its size) `admit` fills in.
#[inline]
fn placeholder<T>(payload: T, size: u32, created: Instant) -> BufferedRecord<T> {
    BufferedRecord {
        payload,
        seq: 0,
        source: SourceId(0),
        pipeline: PipelineId(0),
        stage: StageId(0),
        size,
        buffered_at: created,
        retry: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_report_the_same_sizes_and_payloads() {
        let built: Pending<Vec<u8>> = vec![vec![1], vec![2, 2], vec![3, 3, 3]]
            .into_iter()
            .collect();
        let converted: Pending<Vec<u8>> = vec![vec![1], vec![2, 2], vec![3, 3, 3]].into();
        for mut p in [built, converted] {
            assert_eq!(p.len(), 3);
            assert_eq!(p.sizes().collect::<Vec<_>>(), vec![1, 2, 3]);
            assert_eq!((p.bytes(), p.largest()), (6, 3));
            p.truncate(2);
            assert_eq!((p.bytes(), p.largest()), (3, 2));
            assert_eq!(p.payloads().count(), 2);
            p.push(vec![4]);
            assert_eq!((p.bytes(), p.largest(), p.len()), (4, 2, 3));
            assert_eq!(p.into_payloads(), vec![vec![1], vec![2, 2], vec![4]]);
        }
        assert!(Pending::<Vec<u8>>::default().is_empty());
    }

    #[test]
    fn both_forms_are_laid_out_alike() {
        let entry = PendingRecord {
            first_seq: 7,
            source: SourceId(1),
            pipeline: PipelineId(2),
            stage: StageId(3),
            now: Instant::now(),
        };
        let built: Pending<Vec<u8>> = vec![vec![1], vec![2, 2]].into_iter().collect();
        let converted: Pending<Vec<u8>> = vec![vec![1], vec![2, 2]].into();
        for p in [built, converted] {
            let mut laid = p.lay_out(&entry);
            assert_eq!((laid.bytes, laid.largest), (3, 2));
            if let Some(fill) = laid.fill {
                fill.apply(&mut laid.records);
            }
            let got: Vec<_> = laid
                .records
                .iter()
                .map(|r| (r.seq, r.source, r.pipeline, r.stage, r.size, r.buffered_at))
                .collect();
            assert_eq!(
                got,
                vec![
                    (7, SourceId(1), PipelineId(2), StageId(3), 1, entry.now),
                    (8, SourceId(1), PipelineId(2), StageId(3), 2, entry.now),
                ]
            );
        }
    }
}
