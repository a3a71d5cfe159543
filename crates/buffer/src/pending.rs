//! Records built for admission, already in the buffer's record layout.

use std::time::Instant;

use crate::record::{BufferedRecord, ByteSize, PipelineId, SourceId, StageId};

/// Payloads on their way into [`BufferManager::admit`](crate::BufferManager::admit),
/// stored in the layout the stage queues keep them in.
///
/// Why it exists: a queued record is a [`BufferedRecord`], the payload plus
/// the buffer's bookkeeping. Admitting a `Vec<T>` means writing every record
/// a second time into a new allocation; a receiver that builds its payloads
/// straight into a `Pending` (one [`push`](Self::push) per decoded record)
/// has them admitted in place: `admit` fills in the bookkeeping and queues
/// the allocation as it is. At millions of records per second that copy was
/// the largest single cost of admission (see BENCHMARKS.md).
///
/// The charged size of each payload ([`ByteSize`]) is taken at `push`.
/// A `Vec<T>` converts into a `Pending` (with that copy), so `admit` takes
/// either.
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
/// ```
#[derive(Debug)]
pub struct Pending<T> {
    /// Bookkeeping other than `payload` and `size` is a placeholder until
    /// `admit` fills it in; a `Pending` never hands its records out, so no
    /// placeholder is ever seen.
    pub(crate) records: Vec<BufferedRecord<T>>,
    /// The sum of the records' sizes, kept as they are pushed, so that
    /// admission can check a whole batch against a reservation at once.
    bytes: u64,
    /// The largest record's size.
    largest: u32,
    /// The placeholder admission time.
    created: Instant,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl<T> Pending<T> {
    /// An empty batch with room for `n` records.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            records: Vec::with_capacity(n),
            bytes: 0,
            largest: 0,
            created: Instant::now(),
        }
    }

    /// Appends a payload, taking its charged size now.
    pub fn push(&mut self, payload: T)
    where
        T: ByteSize,
    {
        // u32::MAX stands for "this size or more" (too large anyway; admit
        // asks the payload again).
        let size = u32::try_from(payload.byte_size()).unwrap_or(u32::MAX);
        self.bytes += u64::from(size);
        self.largest = self.largest.max(size);
        self.records.push(BufferedRecord {
            payload,
            seq: 0,
            source: SourceId(0),
            pipeline: PipelineId(0),
            stage: StageId(0),
            size,
            buffered_at: self.created,
            retry: None,
        });
    }

    /// The number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Makes room for at least `additional` more records.
    pub fn reserve(&mut self, additional: usize) {
        self.records.reserve(additional);
    }

    /// How many records fit without reallocating.
    pub fn capacity(&self) -> usize {
        self.records.capacity()
    }

    /// Keeps the first `n` records and drops the rest.
    pub fn truncate(&mut self, n: usize) {
        if n < self.records.len() {
            self.records.truncate(n);
            self.bytes = self.sizes().sum();
            self.largest = self.records.iter().map(|r| r.size).max().unwrap_or(0);
        }
    }

    /// The sum of the records' charged sizes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The largest record's charged size (0 when empty).
    pub fn largest(&self) -> u64 {
        u64::from(self.largest)
    }

    /// The payloads, in order.
    pub fn payloads(&self) -> impl ExactSizeIterator<Item = &T> {
        self.records.iter().map(|r| &r.payload)
    }

    /// The charged size of each record, in order (`u32::MAX` for a payload
    /// of 4 GiB or more).
    pub fn sizes(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.records.iter().map(|r| u64::from(r.size))
    }

    /// Takes the payloads back out.
    pub fn into_payloads(self) -> Vec<T> {
        self.records.into_iter().map(|r| r.payload).collect()
    }
}

impl<T: ByteSize> Extend<T> for Pending<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        let iter = iter.into_iter();
        self.records.reserve(iter.size_hint().0);
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
        payloads.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_taken_at_push_and_payloads_come_back_in_order() {
        let mut p: Pending<Vec<u8>> = vec![vec![1], vec![2, 2]].into();
        p.push(vec![3, 3, 3]);
        assert_eq!(p.len(), 3);
        assert_eq!(p.sizes().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!((p.bytes(), p.largest()), (6, 3));
        p.truncate(2);
        assert_eq!((p.bytes(), p.largest()), (3, 2));
        assert_eq!(p.payloads().count(), 2);
        assert_eq!(p.into_payloads(), vec![vec![1], vec![2, 2]]);
        assert!(Pending::<Vec<u8>>::default().is_empty());
    }
}
