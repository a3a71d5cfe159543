//! Records on their way into `admit`, possibly already in the buffer's
//! record layout.

use std::time::Instant;

use crate::layout::{Layout, charged};
use crate::record::{BufferedRecord, ByteSize, PipelineId, SourceId, StageId};

/// Payloads on their way into [`BufferManager::admit`](crate::BufferManager::admit)
/// (and [`Producer::send`](crate::Producer::send)): a `Vec<T>` as it is,
/// or a batch built straight into the record layout the engine's stages
/// work on.
///
/// Which to use: a `Vec<T>` (it converts into a `Pending` for free) is
/// queued as it is, its bookkeeping kept once for the whole batch, and a
/// [`Consumer`](crate::Consumer) that takes it whole gets it as it is: the
/// fastest way through the handles (BENCHMARKS.md). A `Pending` built with [`push`](Self::push) (into one
/// made [`with_capacity`](Self::with_capacity)) lays each payload out as a
/// [`BufferedRecord`], the payload plus the buffer's per-record
/// bookkeeping, as it is pushed: for a receiver whose records are taken
/// as `BufferedRecord`s anyway ([`next_batch`](crate::BufferManager::next_batch),
/// the engine's gRPC decoder), which then get them without another copy;
/// the bookkeeping is written when they are taken, outside the lock. The
/// charged size of each payload ([`ByteSize`]) is taken at `push`, or at
/// admission for a `Vec` (and must not change while the buffer holds it).
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
    /// Payloads as handed in, with the function that sizes each and, once
    /// counted, their totals (counted where the payload type is known, so
    /// that the sizing is inlined: through the function pointer it was a
    /// call per record on the producer's core, BENCHMARKS.md; `None` once
    /// the payloads may have been rewritten, counted again at admission).
    Payloads(Vec<T>, fn(&T) -> usize, Option<Totals>),
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

/// The sum of a batch's charged sizes, and a bound on its largest.
#[derive(Debug, Clone, Copy)]
struct Totals {
    bytes: u64,
    /// At least the largest size (exact when counted; a refused tail keeps
    /// its whole batch's): what admission needs to decide a batch at once.
    largest: u32,
}

impl Totals {
    /// Counts `payloads`, each charged `size_of(payload)`: generic, so that
    /// a known sizing function is inlined into the loop.
    #[inline]
    fn count<T>(payloads: &[T], size_of: impl Fn(&T) -> usize) -> Self {
        let (mut bytes, mut largest) = (0u64, 0u32);
        for p in payloads {
            let size = charged(size_of(p));
            bytes += u64::from(size);
            largest = largest.max(size);
        }
        Totals { bytes, largest }
    }
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
    /// The bookkeeping of the records from the `at`-th on. (Saturating:
    /// the empty rest of a batch that ends at `u64::MAX` numbers nothing.)
    pub(crate) fn from(self, at: usize) -> Self {
        Self {
            first_seq: self.first_seq.saturating_add(at as u64),
            ..self
        }
    }

    /// The `i`-th record of a batch numbered from here, laid out.
    #[inline]
    pub(crate) fn record<T>(
        &self,
        i: usize,
        payload: T,
        size_of: fn(&T) -> usize,
    ) -> BufferedRecord<T> {
        BufferedRecord {
            size: charged(size_of(&payload)),
            payload,
            seq: self.first_seq + i as u64,
            source: self.source,
            pipeline: self.pipeline,
            stage: self.stage,
            buffered_at: self.now,
            retry: None,
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

/// Admitted records in the layout they are queued in, with their totals.
pub(crate) struct Laid<T> {
    pub(crate) layout: Layout<T>,
    /// The sum of their sizes.
    pub(crate) bytes: u64,
    /// The largest size.
    pub(crate) largest: u64,
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
                let Kind::Payloads(payloads, size_of, _) =
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
        let totals = Totals::count(&payloads, size_of);
        Self(Kind::Payloads(payloads, size_of, Some(totals)))
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        match &self.0 {
            Kind::Payloads(p, ..) => p.len(),
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
            Kind::Payloads(p, ..) => p.reserve(additional),
            Kind::Records { records, .. } => records.reserve(additional),
        }
    }

    /// How many records fit without reallocating.
    pub fn capacity(&self) -> usize {
        match &self.0 {
            Kind::Payloads(p, ..) => p.capacity(),
            Kind::Records { records, .. } => records.capacity(),
        }
    }

    /// Keeps the first `n` records and drops the rest.
    pub fn truncate(&mut self, n: usize) {
        match &mut self.0 {
            Kind::Payloads(p, _, totals) => {
                if n < p.len() {
                    p.truncate(n);
                    *totals = None;
                }
            }
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
            Kind::Payloads(p, _, totals) => {
                // Their sizes may change: counted again at admission.
                *totals = None;
                (p, &mut [])
            }
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
            Kind::Payloads(_, f, _) => *f,
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
            Kind::Payloads(p, ..) => (p, &[]),
            Kind::Records { records, .. } => (&[], records),
        }
    }

    /// The sum of the records' charged sizes.
    pub fn bytes(&self) -> u64 {
        match &self.0 {
            Kind::Payloads(_, _, Some(t)) => t.bytes,
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
            Kind::Payloads(p, ..) => p,
            Kind::Records { records, .. } => records.into_iter().map(|r| r.payload).collect(),
        }
    }

    /// Records `admit` could not take (a refused tail, a batch refused
    /// whole), back as a batch in the layout they came in, with their
    /// `bytes` and a bound on their largest size (the whole batch's): no
    /// copy, and the next attempt admits them in place again.
    pub(crate) fn from_laid(layout: Layout<T>, bytes: u64, largest: u64) -> Self {
        let largest = u32::try_from(largest).unwrap_or(u32::MAX);
        match layout {
            Layout::Payloads {
                payloads, size_of, ..
            } => Self(Kind::Payloads(
                payloads,
                size_of,
                Some(Totals { bytes, largest }),
            )),
            Layout::Records { records, .. } => Self(Kind::Records {
                // Exact, as `push` keeps it.
                largest: records.iter().map(|r| r.size).max().unwrap_or(0),
                records,
                bytes,
                created: Instant::now(),
            }),
        }
    }

    /// The records in the layout they are queued in, their bookkeeping to
    /// come from `at`: a `Vec<T>` as it is (its totals counted in one pass
    /// over the payloads), a built batch as it is (see [`Layout`]).
    pub(crate) fn lay_out(self, at: PendingRecord) -> Laid<T> {
        match self.0 {
            Kind::Payloads(payloads, size_of, totals) => {
                let Totals { bytes, largest } =
                    totals.unwrap_or_else(|| Totals::count(&payloads, size_of));
                Laid {
                    layout: Layout::Payloads {
                        payloads,
                        size_of,
                        at,
                    },
                    bytes,
                    largest: u64::from(largest),
                }
            }
            Kind::Records {
                records,
                bytes,
                largest,
                ..
            } => Laid {
                layout: Layout::Records {
                    records,
                    fill: Some(at),
                },
                bytes,
                largest: u64::from(largest),
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
        // Counted here, with `byte_size` known (inlined), not through the
        // stored function pointer.
        let totals = Totals::count(&payloads, T::byte_size);
        Self(Kind::Payloads(payloads, T::byte_size, Some(totals)))
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
            let laid = p.lay_out(entry);
            assert_eq!((laid.bytes, laid.largest), (3, 2));
            let records = laid.layout.into_records();
            let got: Vec<_> = records
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
